//! The validated analysis: every default resolved, every name turned into its enum. The
//! state machine, the checks, the hooks and the alerts read this, never the wire form.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::wire::AnalysisSpec;

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

/// The alert provider types weir can post to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Slack,
    MsTeams,
    Discord,
    Rocket,
    GChat,
    /// A generic JSON webhook.
    Webhook,
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
}
