//! The validated analysis: every default resolved, every name turned into its enum. The
//! state machine, the checks, the hooks and the alerts read this, never the wire form.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::wire::{AlertKind, AnalysisSpec};

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
/// The fast-fail guard's probability of ever rolling back a healthy canary in one run.
pub const DEFAULT_FAST_FAIL_ALPHA: f64 = 0.01;
/// Flagger's `progressDeadlineSeconds` default.
pub const DEFAULT_PROGRESS_DEADLINE: u64 = 600;

/// What a metric check measures.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricKind {
    /// A built-in over weir's own measurements.
    Builtin(BuiltinMetric),
    /// `request-status-rate`: percent of responses whose status matches one of these.
    StatusRate(Vec<StatusPattern>),
    /// A PromQL query against a Prometheus HTTP API.
    Query(Query),
}

/// A status code (`404`) or class (`4xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPattern {
    Code(u16),
    Class(u16),
}

impl StatusPattern {
    /// Parses `404` or `4xx`.
    pub fn parse(s: &str) -> Option<StatusPattern> {
        match s.as_bytes() {
            [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                Some(StatusPattern::Class(u16::from(d - b'0')))
            }
            _ => s
                .parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
                .map(StatusPattern::Code),
        }
    }

    /// True when `code` matches.
    pub fn matches(self, code: u16) -> bool {
        match self {
            StatusPattern::Code(c) => c == code,
            StatusPattern::Class(c) => code / 100 == c,
        }
    }
}

/// A PromQL query to run at each check.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The Prometheus HTTP API's base URL.
    pub address: String,
    /// The query with Flagger's template variables, rendered at each check.
    pub template: String,
    /// `{{ variables.X }}`.
    pub variables: BTreeMap<String, String>,
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
    /// Every built-in metric name (`request-status-rate` too).
    pub const NAMES: [&'static str; 6] = [
        "request-success-rate",
        "request-duration",
        "request-duration-vs-primary",
        "error-rate-vs-primary",
        "request-5xx-count",
        "request-status-rate",
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
    pub kind: AlertKind,
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
    pub progress_deadline: Duration,
    pub fast_fail: Option<FastFail>,
    /// Mirror percentage (1..=100).
    pub mirror_percent: f64,
}

/// A validated metric check.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
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
    /// The guard never fires before the canary served this many requests in the run.
    pub min_requests: u64,
    /// The probability of ever rolling back a healthy canary during a run.
    pub alpha: f64,
}

impl Analysis {
    /// The hooks of one kind, in spec order.
    pub fn hooks_of(&self, kind: HookKind) -> impl Iterator<Item = &Hook> {
        self.hooks.iter().filter(move |h| h.kind == kind)
    }
}
