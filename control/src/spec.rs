//! The analysis spec: Flagger's `analysis:` block field for field, plus weir's additions
//! (`minRequests`, `progressDeadlineSeconds`, `fastFail`, relative metrics, `exec` hooks),
//! and its validation with errors that name the field.

use std::collections::BTreeMap;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use weir_proxy::config::{
    regex_message, AlertProviderConfig, ConfigError, Dur, SessionAffinityConfig,
};
use weir_proxy::Config;

/// Weir's shortest analysis interval (Flagger clamps at 10s; weir decides in seconds).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Flagger's interval when the field is empty.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Flagger's default metric window.
pub const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(60);
/// Fewer requests than this in a check's window make it inconclusive.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// A webhook's timeout when the spec gives none (Flagger's).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// The fast-fail guard's sliding window when the spec gives none.
pub const DEFAULT_FAST_FAIL_WINDOW: Duration = Duration::from_secs(30);
/// Flagger's `progressDeadlineSeconds` default.
pub const DEFAULT_PROGRESS_DEADLINE: u64 = 600;

/// Flagger's `analysis:` block.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisSpec {
    /// Tick period (`15s`, `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Failed checks before rollback (cumulative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<i64>,
    /// Weight at which promotion starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<i64>,
    /// Linear weight increment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<i64>,
    /// Explicit weight steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_weights: Vec<i64>,
    /// Increment for moving traffic back to the primary while promoting (0: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight_promotion: Option<i64>,
    /// Ticks of an A/B or blue/green analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<i64>,
    /// A/B conditions (Istio's HTTPMatchRequest; items ORed, headers within one ANDed).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRequest>,
    /// Shadow traffic to the canary (pre-step of a canary, or the whole blue/green run).
    #[serde(default)]
    pub mirror: bool,
    /// Percentage of requests mirrored (0 means 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_weight: Option<i64>,
    /// Cookie stickiness during a weighted canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinityConfig>,
    /// Accepted for Flagger compatibility; weir has no replicas to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_ready_threshold: Option<i64>,
    /// Accepted for Flagger compatibility; weir has no replicas to count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_ready_threshold: Option<i64>,
    /// KPI checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSpec>,
    /// Gates, tests and notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSpec>,
    /// Alerts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertSpec>,
    /// Promote without hooks or metrics.
    #[serde(default)]
    pub skip_analysis: bool,
    /// Freeze the rollout where it is.
    #[serde(default)]
    pub suspend: bool,
    /// weir: fewer requests in a check's window make it inconclusive (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// weir: a rollout that stays inconclusive this long fails (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<u64>,
    /// weir: the every-second guard against a canary failing worse than the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_fail: Option<FastFailSpec>,
    /// weir: after a restart, send all traffic back to the primary instead of resuming.
    #[serde(default)]
    pub revert_on_restart: bool,
}

/// One A/B condition.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchRequest {
    /// Header name (lower case) to condition; all must hold.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, StringMatch>,
    /// Path condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// Method condition (exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
}

/// Exactly one of exact, prefix, suffix, regex.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Pass when min <= value <= max.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThresholdRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// One KPI check.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSpec {
    /// A built-in metric name (see [`BuiltinMetric`]).
    pub name: String,
    /// The measurement window (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<ThresholdRange>,
    /// Deprecated Flagger field: success rate min, or duration/custom max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Flagger's PromQL; not supported (weir measures itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Flagger's MetricTemplate reference; not supported (weir measures itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_variables: Option<serde_json::Value>,
    /// weir: overrides the analysis' `minRequests` for this check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
}

/// A webhook: an HTTP call (Flagger's payload) or a local command (`exec`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    /// confirm-rollout, pre-rollout, rollout (or empty), confirm-traffic-increase,
    /// confirm-promotion, post-rollout, rollback, event.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// weir: a command run locally; exit code 0 passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    /// Per-attempt timeout (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Extra attempts on connection errors, 5xx and 429.
    #[serde(default)]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Suppresses the "waiting for approval" alerts of a gate.
    #[serde(default)]
    pub mute_alert: bool,
    /// Accepted for Flagger compatibility; weir always verifies certificates.
    #[serde(default, rename = "disableTLS")]
    pub disable_tls: bool,
}

/// An alert: a provider (by reference or inline) and a severity.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertSpec {
    pub name: String,
    /// info (everything), warn (warn and error) or error; empty means info.
    #[serde(default)]
    pub severity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<ProviderRef>,
    /// weir: an inline provider type instead of a reference.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// weir: an inline provider address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// A reference to an entry of weir.yaml's `alertProviders`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The fast-fail guard.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FastFailSpec {
    #[serde(default)]
    pub disabled: bool,
    /// Canary requests needed before the guard may fire (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Significance of the one-sided exact test (default 0.001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Sliding window of the guard (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// The built-in metrics weir computes from its own measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinMetric {
    /// Percent of non-5xx responses (Flagger's).
    SuccessRate,
    /// p99 in milliseconds (Flagger's).
    Duration,
    /// Canary p99 over the primary's p99 in the same window.
    DurationVsPrimary,
    /// p-value of "the canary's error rate is above the primary's" (Fisher's exact test).
    ErrorRateVsPrimary,
    /// Number of 5xx responses in the window.
    Count5xx,
}

impl BuiltinMetric {
    /// Every built-in metric name.
    pub const NAMES: [&'static str; 5] = [
        "request-success-rate",
        "request-duration",
        "request-duration-vs-primary",
        "error-rate-vs-primary",
        "request-5xx-count",
    ];

    /// The metric a name refers to.
    pub fn from_name(name: &str) -> Option<BuiltinMetric> {
        Some(match name {
            "request-success-rate" => BuiltinMetric::SuccessRate,
            "request-duration" => BuiltinMetric::Duration,
            "request-duration-vs-primary" => BuiltinMetric::DurationVsPrimary,
            "error-rate-vs-primary" => BuiltinMetric::ErrorRateVsPrimary,
            "request-5xx-count" => BuiltinMetric::Count5xx,
            _ => return None,
        })
    }
}

/// Which webhooks run when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HookKind {
    ConfirmRollout,
    PreRollout,
    Rollout,
    ConfirmTrafficIncrease,
    ConfirmPromotion,
    PostRollout,
    Rollback,
    Event,
}

impl HookKind {
    /// The Flagger type name.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::ConfirmRollout => "confirm-rollout",
            HookKind::PreRollout => "pre-rollout",
            HookKind::Rollout => "rollout",
            HookKind::ConfirmTrafficIncrease => "confirm-traffic-increase",
            HookKind::ConfirmPromotion => "confirm-promotion",
            HookKind::PostRollout => "post-rollout",
            HookKind::Rollback => "rollback",
            HookKind::Event => "event",
        }
    }

    /// Parses a Flagger type (empty is `rollout`).
    pub fn parse(s: &str) -> Option<HookKind> {
        Some(match s {
            "confirm-rollout" => HookKind::ConfirmRollout,
            "pre-rollout" => HookKind::PreRollout,
            "" | "rollout" => HookKind::Rollout,
            "confirm-traffic-increase" => HookKind::ConfirmTrafficIncrease,
            "confirm-promotion" => HookKind::ConfirmPromotion,
            "post-rollout" => HookKind::PostRollout,
            "rollback" => HookKind::Rollback,
            "event" => HookKind::Event,
            _ => return None,
        })
    }

    /// True for the three gates approve/deny act on.
    pub fn is_gate(self) -> bool {
        matches!(
            self,
            HookKind::ConfirmRollout
                | HookKind::ConfirmTrafficIncrease
                | HookKind::ConfirmPromotion
        )
    }
}

/// The analysis strategy, chosen as Flagger chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Canary,
    AbTesting,
    BlueGreen,
}

impl Strategy {
    /// The `deployment_strategy` label value.
    pub fn label(self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::AbTesting => "ab-testing",
            Strategy::BlueGreen => "blue-green",
        }
    }
}

/// Severity of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warn,
    Error,
}

impl Severity {
    /// The name used in specs and payloads.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

/// A resolved alert target.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertTarget {
    pub name: String,
    /// Lowest severity delivered.
    pub severity: Severity,
    pub kind: String,
    pub address: String,
    pub channel: String,
    pub username: String,
}

/// A validated analysis with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The spec as written (what status and ApplySpec echo).
    pub spec: AnalysisSpec,
    pub interval: Duration,
    pub threshold: u32,
    pub max_weight: u32,
    pub step_weight: Option<u32>,
    pub step_weights: Vec<u32>,
    pub step_weight_promotion: u32,
    pub iterations: u32,
    pub strategy: Strategy,
    pub metrics: Vec<Metric>,
    pub hooks: Vec<Hook>,
    pub alerts: Vec<AlertTarget>,
    pub min_requests: u64,
    pub progress_deadline: Duration,
    pub fast_fail: Option<FastFail>,
    /// Mirror percentage (1..=100).
    pub mirror_percent: f64,
}

/// A validated metric check.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub kind: BuiltinMetric,
    pub window: Duration,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub min_requests: u64,
}

/// A validated webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub name: String,
    pub kind: HookKind,
    pub action: HookAction,
    pub timeout: Duration,
    pub retries: u32,
    pub metadata: BTreeMap<String, String>,
    pub mute_alert: bool,
}

/// What a webhook does.
#[derive(Debug, Clone, PartialEq)]
pub enum HookAction {
    /// POST Flagger's payload to this URL.
    Http(String),
    /// Run this command (program and arguments, never empty).
    Exec(Vec<String>),
    /// A gate only `weir ctl approve` opens.
    Manual,
}

impl Hook {
    /// A gate that waits for `weir ctl approve`.
    pub fn is_manual(&self) -> bool {
        self.action == HookAction::Manual
    }
}

/// A validated fast-fail guard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastFail {
    pub min_requests: u64,
    pub alpha: f64,
    pub window: Duration,
}

impl Analysis {
    /// The hooks of one kind, in spec order.
    pub fn hooks_of(&self, kind: HookKind) -> impl Iterator<Item = &Hook> {
        self.hooks.iter().filter(move |h| h.kind == kind)
    }

    /// Flagger's `nextStepWeight`, with weir's cap at maxWeight.
    pub fn next_step_weight(&self, weight: u32) -> u32 {
        if let Some(step) = self.step_weight {
            return step;
        }
        if self.step_weights.is_empty() {
            return 100u32.saturating_sub(weight).max(1);
        }
        if weight == 0 {
            return self.step_weights[0].min(100 - weight.min(100));
        }
        match self.step_weights.iter().position(|&w| w == weight) {
            Some(i) if i + 1 < self.step_weights.len() => {
                (self.step_weights[i + 1] - weight).min(100 - weight)
            }
            _ if weight >= 100 => 1,
            _ => 100 - weight,
        }
    }

    /// The weight the next step moves to: never past maxWeight (weir caps the last step).
    pub fn next_weight(&self, weight: u32) -> u32 {
        (weight + self.next_step_weight(weight)).min(self.max_weight)
    }

    /// A short description of the traffic routing, for alert metadata.
    pub fn routing_summary(&self) -> String {
        match self.strategy {
            Strategy::AbTesting => "A/B Testing".into(),
            Strategy::BlueGreen => "Blue/Green".into(),
            Strategy::Canary if !self.step_weights.is_empty() => format!(
                "Weight steps: {} max: {}",
                self.step_weights
                    .iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                self.max_weight
            ),
            Strategy::Canary => format!(
                "Weight step: {} max: {}",
                self.step_weight.unwrap_or(0),
                self.max_weight
            ),
        }
    }
}

/// An optional duration field: `default` when absent or empty, and when it does not
/// parse (after reporting the error on `field`).
fn opt_duration(
    v: Option<&str>,
    default: Duration,
    field: &str,
    err: &mut dyn FnMut(&str, String),
) -> Duration {
    match v {
        None | Some("") => default,
        Some(s) => Dur::parse(s).map(|d| d.0).unwrap_or_else(|e| {
            err(field, e);
            default
        }),
    }
}

/// Decodes and validates an analysis block; every error names its field under `path`.
pub fn parse(
    value: &serde_json::Value,
    path: &str,
    providers: &[AlertProviderConfig],
) -> Result<Analysis, Vec<ConfigError>> {
    let spec: AnalysisSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let at = if inner == "." || inner.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        vec![ConfigError {
            path: at,
            message: e.inner().to_string(),
        }]
    })?;
    validate(spec, path, providers)
}

/// Validates a decoded spec as Flagger's CRD would, plus weir's own rules.
pub fn validate(
    spec: AnalysisSpec,
    path: &str,
    providers: &[AlertProviderConfig],
) -> Result<Analysis, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(ConfigError {
            path: if field.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{field}")
            },
            message,
        })
    };
    let interval = opt_duration(
        spec.interval.as_deref(),
        DEFAULT_INTERVAL,
        "interval",
        &mut err,
    )
    .max(MIN_INTERVAL);
    let modes = [
        spec.step_weight.is_some(),
        !spec.step_weights.is_empty(),
        spec.iterations.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        err(
            "",
            "exactly one of stepWeight, stepWeights or iterations must be set".into(),
        );
    }
    let pct = |field: &str, v: i64, lo: i64, err: &mut dyn FnMut(&str, String)| -> u32 {
        if v < lo || v > 100 {
            err(field, format!("{v} is not between {lo} and 100"));
        }
        v.clamp(0, 100) as u32
    };
    let step_weight = spec.step_weight.map(|v| pct("stepWeight", v, 1, &mut err));
    let mut step_weights = Vec::new();
    for (i, &w) in spec.step_weights.iter().enumerate() {
        let w = pct(&format!("stepWeights[{i}]"), w, 1, &mut err);
        if let Some(&prev) = step_weights.last() {
            if w <= prev {
                err(
                    &format!("stepWeights[{i}]"),
                    format!("{w} must be larger than the step before it ({prev})"),
                );
            }
        }
        step_weights.push(w);
    }
    // Flagger ignores maxWeight when stepWeights is set.
    let max_weight = if let Some(&last) = step_weights.last() {
        last.min(100)
    } else {
        spec.max_weight
            .map(|v| pct("maxWeight", v, 1, &mut err))
            .unwrap_or(100)
    };
    let step_weight_promotion = spec
        .step_weight_promotion
        .map(|v| pct("stepWeightPromotion", v, 0, &mut err))
        .unwrap_or(0);
    let iterations = match spec.iterations {
        Some(n) if n < 1 => {
            err("iterations", format!("{n} must be at least 1"));
            1
        }
        Some(n) => n.min(i64::from(u32::MAX)) as u32,
        None => 0,
    };
    let threshold = spec.threshold.unwrap_or(1).clamp(1, i64::from(u32::MAX)) as u32;
    let mirror_percent = match spec.mirror_weight {
        None | Some(0) => 100.0,
        Some(v) => f64::from(pct("mirrorWeight", v, 0, &mut err)),
    };
    let strategy = if !spec.matches.is_empty() && iterations > 0 {
        Strategy::AbTesting
    } else if iterations > 0 {
        Strategy::BlueGreen
    } else {
        Strategy::Canary
    };
    if strategy == Strategy::AbTesting && spec.mirror {
        err(
            "mirror",
            "mirroring applies to canary and blue/green analyses, not A/B".into(),
        );
    }
    for (i, m) in spec.matches.iter().enumerate() {
        if m.headers.is_empty() && m.uri.is_none() && m.method.is_none() {
            err(
                &format!("match[{i}]"),
                "a condition needs headers, uri or method".into(),
            );
        }
        for (name, sm) in &m.headers {
            check_match(&format!("match[{i}].headers.{name}"), sm, &mut err);
        }
        if let Some(sm) = &m.uri {
            check_match(&format!("match[{i}].uri"), sm, &mut err);
            if sm.suffix.is_some() {
                err(
                    &format!("match[{i}].uri.suffix"),
                    "uri matches are exact, prefix or regex".into(),
                );
            }
        }
        if let Some(sm) = &m.method {
            check_match(&format!("match[{i}].method"), sm, &mut err);
            if sm.exact.is_none() {
                err(
                    &format!("match[{i}].method"),
                    "method matches are exact".into(),
                );
            }
        }
    }
    if let Some(sa) = &spec.session_affinity {
        if sa.cookie_name.is_empty() {
            err("sessionAffinity.cookieName", "must not be empty".into());
        }
        if sa.primary_cookie_name.as_deref() == Some(sa.cookie_name.as_str()) {
            err(
                "sessionAffinity.primaryCookieName",
                "must differ from cookieName".into(),
            );
        }
    }
    let min_requests = spec.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    let mut metrics = Vec::new();
    for (i, m) in spec.metrics.iter().enumerate() {
        let at = format!("metrics[{i}]");
        if m.query.is_some() || m.template_ref.is_some() {
            err(
                &at,
                format!(
                    "{:?}: PromQL queries and metric templates are not supported; weir measures {} itself",
                    m.name,
                    BuiltinMetric::NAMES.join(", ")
                ),
            );
            continue;
        }
        let Some(kind) = BuiltinMetric::from_name(&m.name) else {
            err(
                &format!("{at}.name"),
                format!(
                    "unknown metric {:?}; built-in metrics are {}",
                    m.name,
                    BuiltinMetric::NAMES.join(", ")
                ),
            );
            continue;
        };
        let window = opt_duration(
            m.interval.as_deref(),
            DEFAULT_METRIC_INTERVAL,
            &format!("{at}.interval"),
            &mut err,
        );
        let (mut min, mut max) = m
            .threshold_range
            .map(|r| (r.min, r.max))
            .unwrap_or((None, None));
        if let (None, None, Some(t)) = (min, max, m.threshold) {
            // Flagger's deprecated `threshold`.
            if kind == BuiltinMetric::SuccessRate {
                min = Some(t);
            } else {
                max = Some(t);
            }
        }
        if min.is_none() && max.is_none() {
            err(
                &format!("{at}.thresholdRange"),
                "a metric needs thresholdRange.min or thresholdRange.max".into(),
            );
        }
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo > hi {
                err(
                    &format!("{at}.thresholdRange"),
                    format!("min {lo} is above max {hi}"),
                );
            }
        }
        metrics.push(Metric {
            name: m.name.clone(),
            kind,
            window,
            min,
            max,
            min_requests: m.min_requests.unwrap_or(min_requests),
        });
    }
    let mut hooks = Vec::new();
    for (i, h) in spec.webhooks.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        if h.name.is_empty() {
            err(&format!("{at}.name"), "must not be empty".into());
        }
        let Some(kind) = HookKind::parse(&h.kind) else {
            err(
                &format!("{at}.type"),
                format!(
                    "unknown webhook type {:?}; types are confirm-rollout, pre-rollout, rollout, confirm-traffic-increase, confirm-promotion, post-rollout, rollback, event",
                    h.kind
                ),
            );
            continue;
        };
        match (&h.url, h.exec.is_empty()) {
            (Some(_), false) => err(&at, "set url or exec, not both".into()),
            (None, true) if !kind.is_gate() => err(
                &at,
                "a webhook needs url or exec (only gates may have neither: they wait for `weir ctl approve`)".into(),
            ),
            (Some(url), true)
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.parse::<http::Uri>().is_err() =>
            {
                err(&format!("{at}.url"), format!("{url:?} is not an http(s) URL"));
            }
            _ => {}
        }
        if kind == HookKind::Event && !h.exec.is_empty() {
            err(&format!("{at}.exec"), "event hooks are HTTP only".into());
        }
        let timeout = opt_duration(
            h.timeout.as_deref(),
            DEFAULT_HOOK_TIMEOUT,
            &format!("{at}.timeout"),
            &mut err,
        );
        let action = match &h.url {
            Some(url) => HookAction::Http(url.clone()),
            None if h.exec.is_empty() => HookAction::Manual,
            None => HookAction::Exec(h.exec.clone()),
        };
        hooks.push(Hook {
            name: h.name.clone(),
            kind,
            action,
            timeout,
            retries: h.retries,
            metadata: h.metadata.clone(),
            mute_alert: h.mute_alert,
        });
    }
    let mut alerts = Vec::new();
    for (i, a) in spec.alerts.iter().enumerate() {
        let at = format!("alerts[{i}]");
        let severity = match a.severity.as_str() {
            "" | "info" => Severity::Info,
            "warn" => Severity::Warn,
            "error" => Severity::Error,
            s => {
                err(
                    &format!("{at}.severity"),
                    format!("{s:?} is not info, warn or error"),
                );
                Severity::Info
            }
        };
        let provider = match (&a.provider_ref, &a.kind, &a.address) {
            (Some(r), None, None) => {
                match providers.iter().find(|p| {
                    p.name == r.name && (r.namespace.is_none() || p.namespace == r.namespace)
                }) {
                    Some(p) => Some((
                        p.kind.clone(),
                        p.address.clone(),
                        p.channel.clone(),
                        p.username.clone(),
                    )),
                    None => {
                        err(
                            &format!("{at}.providerRef"),
                            format!("no alertProviders entry named {:?}", r.name),
                        );
                        None
                    }
                }
            }
            (None, Some(kind), Some(address)) => Some((
                kind.clone(),
                address.clone(),
                a.channel.clone(),
                a.username.clone(),
            )),
            _ => {
                err(
                    &at,
                    "an alert needs providerRef, or type and address (not both)".into(),
                );
                None
            }
        };
        if let Some((kind, address, channel, username)) = provider {
            if !crate::alerts::KINDS.contains(&kind.as_str()) {
                err(
                    &format!("{at}.type"),
                    format!(
                        "unknown alert provider type {kind:?}; types are {}",
                        crate::alerts::KINDS.join(", ")
                    ),
                );
            }
            if address.parse::<http::Uri>().is_err() || !address.starts_with("http") {
                err(
                    &format!("{at}.address"),
                    format!("{address:?} is not an http(s) URL"),
                );
            }
            alerts.push(AlertTarget {
                name: a.name.clone(),
                severity,
                kind,
                address,
                channel: channel.unwrap_or_else(|| "general".into()),
                username: username.unwrap_or_else(|| "flagger".into()),
            });
        }
    }
    let fast_fail = match &spec.fast_fail {
        Some(f) if f.disabled => None,
        f => {
            let f = f.clone().unwrap_or_default();
            let alpha = f.alpha.unwrap_or(0.001);
            if !(alpha > 0.0 && alpha < 1.0) {
                err("fastFail.alpha", format!("{alpha} is not between 0 and 1"));
            }
            let window = opt_duration(
                f.window.as_deref(),
                DEFAULT_FAST_FAIL_WINDOW,
                "fastFail.window",
                &mut err,
            );
            Some(FastFail {
                min_requests: f.min_requests.unwrap_or(min_requests).max(1),
                alpha,
                window,
            })
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Analysis {
        interval,
        threshold,
        max_weight,
        step_weight,
        step_weights,
        step_weight_promotion,
        iterations,
        strategy,
        metrics,
        hooks,
        alerts,
        min_requests,
        progress_deadline: Duration::from_secs(
            spec.progress_deadline_seconds
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE),
        ),
        fast_fail,
        mirror_percent,
        spec,
    })
}

fn check_match(field: &str, sm: &StringMatch, err: &mut dyn FnMut(&str, String)) {
    let set = [&sm.exact, &sm.prefix, &sm.suffix, &sm.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set != 1 {
        err(
            field,
            "exactly one of exact, prefix, suffix or regex must be set".into(),
        );
    }
    if let Some(re) = &sm.regex {
        if let Err(e) = regex::Regex::new(re) {
            err(&format!("{field}.regex"), regex_message(&e));
        }
    }
}

/// Every service's validated analysis, by service name.
pub type Analyses = IndexMap<String, Analysis>;

/// Validates the analysis blocks of a config (the proxy validated everything else).
pub fn analyses(config: &Config) -> Result<Analyses, Vec<ConfigError>> {
    let mut out = IndexMap::new();
    let mut errors = Vec::new();
    for (i, svc) in config.services.iter().enumerate() {
        let Some(value) = &svc.analysis else { continue };
        let path = format!("services[{i}].analysis");
        if svc.versions.len() < 2 {
            errors.push(ConfigError {
                path: format!("services[{i}].versions"),
                message:
                    "an analysis needs two versions: the primary (first) and the canary (second)"
                        .into(),
            });
            continue;
        }
        match parse(value, &path, &config.alert_providers) {
            Ok(a) => {
                out.insert(svc.name.clone(), a);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(yaml: &str) -> Result<Analysis, Vec<ConfigError>> {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("test yaml");
        parse(&v, "analysis", &[])
    }

    fn messages(r: Result<Analysis, Vec<ConfigError>>) -> Vec<String> {
        r.err()
            .expect("an error")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn flagger_canary_manifest_block_is_accepted() {
        let a = analysis(
            "interval: 1m\nthreshold: 5\nmaxWeight: 50\nstepWeight: 10\nmetrics:\n- name: request-success-rate\n  thresholdRange: {min: 99}\n  interval: 1m\n- name: request-duration\n  thresholdRange: {max: 500}\n  interval: 30s\nwebhooks:\n- name: acceptance-test\n  type: pre-rollout\n  url: http://flagger-loadtester.test/\n  timeout: 30s\n  metadata: {type: bash, cmd: \"curl -sd 'test' http://podinfo-canary:9898/token | grep token\"}\n- name: load-test\n  url: http://flagger-loadtester.test/\n  timeout: 5s\n  metadata: {cmd: \"hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/\"}\n",
        )
        .expect("valid");
        assert_eq!(a.interval, Duration::from_secs(60));
        assert_eq!(a.threshold, 5);
        assert_eq!(a.max_weight, 50);
        assert_eq!(a.strategy, Strategy::Canary);
        assert_eq!(a.metrics.len(), 2);
        assert_eq!(a.hooks[1].kind, HookKind::Rollout);
        assert_eq!(a.hooks[0].timeout, Duration::from_secs(30));
    }

    #[test]
    fn exactly_one_progression_mode_is_required() {
        let m = messages(analysis(
            "interval: 1m\nthreshold: 5\nstepWeight: 5\niterations: 10\n",
        ));
        assert_eq!(
            m,
            ["analysis: exactly one of stepWeight, stepWeights or iterations must be set"]
        );
        assert!(analysis("interval: 1m\nthreshold: 5\n").is_err());
    }

    #[test]
    fn errors_name_their_fields() {
        let m = messages(analysis(
            "interval: soon\nthreshold: 2\nstepWeight: 120\nmetrics:\n- name: request-success-rate\n- name: p95\n  thresholdRange: {max: 1}\nwebhooks:\n- name: x\n  type: pre-rolout\n  url: http://a/\n",
        ));
        let joined = m.join("\n");
        assert!(joined.contains("analysis.interval:"), "{joined}");
        assert!(
            joined.contains("analysis.stepWeight: 120 is not between 1 and 100"),
            "{joined}"
        );
        assert!(
            joined.contains("analysis.metrics[0].thresholdRange:"),
            "{joined}"
        );
        assert!(
            joined.contains("analysis.metrics[1].name: unknown metric \"p95\""),
            "{joined}"
        );
        assert!(
            joined.contains("analysis.webhooks[0].type: unknown webhook type"),
            "{joined}"
        );
        let m = messages(analysis(
            "interval: 1m\nthreshold: 1\nstepWeight: 5\nmaxWeigth: 50\n",
        ));
        assert!(m[0].contains("maxWeigth"), "{m:?}");
    }

    #[test]
    fn interval_defaults_and_is_clamped() {
        let a = analysis("interval: \"\"\nthreshold: 1\nstepWeight: 5\n").expect("valid");
        assert_eq!(a.interval, DEFAULT_INTERVAL);
        let a = analysis("interval: 100ms\nthreshold: 0\nstepWeight: 5\n").expect("valid");
        assert_eq!(a.interval, MIN_INTERVAL);
        assert_eq!(a.threshold, 1, "Flagger turns threshold <= 0 into 1");
    }

    #[test]
    fn strategy_is_chosen_as_flagger_chooses() {
        let ab = analysis(
            "interval: 1m\nthreshold: 1\niterations: 10\nmatch:\n- headers:\n    x-canary: {exact: insider}\n",
        )
        .expect("valid");
        assert_eq!(ab.strategy, Strategy::AbTesting);
        let bg =
            analysis("interval: 1m\nthreshold: 1\niterations: 10\nmirror: true\n").expect("valid");
        assert_eq!(bg.strategy, Strategy::BlueGreen);
        let sw =
            analysis("interval: 1m\nthreshold: 1\nstepWeights: [1, 2, 10, 80]\nmaxWeight: 30\n")
                .expect("valid");
        assert_eq!(sw.max_weight, 80, "maxWeight is ignored with stepWeights");
    }

    #[test]
    fn step_weights_progress_as_flagger_and_never_pass_max_weight() {
        let a =
            analysis("interval: 1m\nthreshold: 1\nstepWeights: [1, 2, 10, 80]\n").expect("valid");
        let mut w = 0;
        let mut seen = vec![];
        while w < a.max_weight {
            w = a.next_weight(w);
            seen.push(w);
        }
        assert_eq!(seen, [1, 2, 10, 80]);
        let a =
            analysis("interval: 1m\nthreshold: 1\nstepWeight: 20\nmaxWeight: 50\n").expect("valid");
        let mut w = 0;
        let mut seen = vec![];
        while w < a.max_weight {
            w = a.next_weight(w);
            seen.push(w);
        }
        assert_eq!(seen, [20, 40, 50], "weir caps the last step at maxWeight");
    }

    #[test]
    fn alerts_resolve_provider_refs() {
        let providers = vec![AlertProviderConfig {
            name: "on-call".into(),
            namespace: Some("flagger".into()),
            kind: "slack".into(),
            address: "http://127.0.0.1:1/hook".into(),
            channel: None,
            username: None,
        }];
        let v: serde_json::Value = serde_yaml_ng::from_str(
            "interval: 1m\nthreshold: 1\nstepWeight: 5\nalerts:\n- name: on-call\n  severity: error\n  providerRef: {name: on-call, namespace: flagger}\n- name: dev\n  providerRef: {name: dev}\n",
        )
        .expect("yaml");
        let e = parse(&v, "a", &providers).err().expect("dev is unknown");
        assert_eq!(
            e[0].to_string(),
            "a.alerts[1].providerRef: no alertProviders entry named \"dev\""
        );
    }
}
