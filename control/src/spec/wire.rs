//! The analysis spec as it is written: Flagger's `analysis:` block field for field, plus
//! weir's additions (`minRequests`, `progressDeadlineSeconds`, `fastFail`, relative metrics,
//! `exec` hooks), and Flagger's AlertProvider. serde reads these; `validate` turns them
//! into the model.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use weir_proxy::config::{SessionAffinityConfig, StringMatch};

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
    /// Flagger's (deprecated) inline PromQL, run against `metricsServer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A `metricTemplates` entry to run (Flagger's MetricTemplate reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    /// `{{ variables.X }}` in the template's query.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub template_variables: BTreeMap<String, String>,
    /// weir: the status codes `request-status-rate` counts (`404`, or a class like `5xx`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<String>,
    /// weir: overrides the analysis' `minRequests` for this check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
}

/// A reference to a `metricTemplates` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateRef {
    pub name: String,
    /// Defaults to the service's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Flagger's MetricTemplate: a query for a metrics provider. weir.yaml's `metricTemplates`
/// takes this flat form or the Kubernetes object (`metadata` and `spec`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricTemplate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub provider: MetricProvider,
    /// The query, with Flagger's template variables (`{{ namespace }}`, `{{ target }}`,
    /// `{{ interval }}`, `{{ variables.X }}`, ...).
    pub query: String,
}

/// A MetricTemplate's provider.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricProvider {
    /// `prometheus` (Flagger's other providers are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The Prometheus HTTP API's base URL.
    #[serde(default)]
    pub address: String,
    /// Accepted for Flagger compatibility; certificates are always verified.
    #[serde(default)]
    pub insecure_skip_verify: bool,
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
    pub kind: Option<AlertKind>,
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
    /// Canary requests needed before the guard may fire (default 0: its guarantee
    /// holds from the first request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// The probability of ever rolling back a healthy canary in one run (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Accepted from earlier versions and ignored: the guard weighs the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// Where alerts go: Flagger's AlertProvider spec, plus a generic JSON webhook.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertProviderConfig {
    /// The name `providerRef.name` uses.
    pub name: String,
    /// Optional namespace `providerRef.namespace` uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// slack, msteams, discord, rocket, gchat or webhook.
    #[serde(rename = "type")]
    pub kind: AlertKind,
    /// The URL alerts are posted to.
    pub address: String,
    /// Slack-style channel (default `general`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Slack-style user name (default `flagger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
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
