//! What the controller says of each service, for every reader (the control API and its
//! Watch stream, the demo, the dashboard): phase, each version's weight and revision,
//! checks, traffic, replicas; and the events it tells. The control API turns these into
//! its protobuf messages at the edge (`api::convert`).

use weir_proxy::Window;

use crate::machine::{Status, Target};
use crate::measurements::Windows;
use crate::spec::Analysis;

/// One service as the controller reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStatus {
    pub service: String,
    pub namespace: String,
    /// Flagger's phase name; `Static` for a service without an analysis.
    pub phase: String,
    /// The canary weight actually routed.
    pub canary_weight: u32,
    pub failed_checks: u32,
    pub iterations: u32,
    pub mirrored: bool,
    pub paused: bool,
    pub canary_revision: String,
    pub primary_revision: String,
    /// Unix milliseconds.
    pub last_transition_ms: u64,
    /// The Promoted condition's message.
    pub message: String,
    pub checks: Vec<CheckStatus>,
    pub last_event: String,
    /// Each version's traffic since the canary's began (since weir started, static).
    pub primary: Option<Traffic>,
    pub canary: Option<Traffic>,
    /// The gate the rollout waits on, if any.
    pub waiting_gate: String,
    pub threshold: u32,
    pub max_weight: u32,
    /// weir lost the rollout's state: primary only until `weir ctl reset`.
    pub state_lost: bool,
    /// The data planes serving the controller's routing (None when weir serves alone).
    pub replicas: Option<ReplicaSummary>,
    /// Each version as it serves now.
    pub versions: Vec<VersionWeight>,
    /// The fast-fail guard's evidence against the canary in this run, and the bound at
    /// which it rolls back (`1/alpha`); 0 and 0 when the guard is off.
    pub guard_evidence: f64,
    pub guard_bound: f64,
}

/// The last result of one metric check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckStatus {
    pub name: String,
    /// pass, fail or inconclusive.
    pub verdict: String,
    /// NaN when there was nothing to measure.
    pub value: f64,
    pub threshold: String,
    pub detail: String,
}

/// A version's traffic over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    pub requests: u64,
    pub success_rate: f64,
    pub p99_ms: f64,
    pub has_data: bool,
}

impl Traffic {
    /// A window's requests, success rate and p99.
    pub fn of(w: &Window) -> Traffic {
        Traffic {
            requests: w.requests(),
            success_rate: w.success_rate().unwrap_or(0.0),
            p99_ms: w.quantile_ms(0.99).unwrap_or(0.0),
            has_data: w.requests() > 0,
        }
    }
}

/// How many live data planes serve the current routing version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaSummary {
    pub synced: u32,
    pub live: u32,
    pub version: u64,
}

/// One data plane (a weir replica) serving the controller's routing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataPlane {
    /// `weir` (a replica) or `envoy`.
    pub kind: &'static str,
    pub name: String,
    pub address: String,
    /// The last routing version it ACKed.
    pub version: u64,
    /// synced, syncing, stale or disconnected.
    pub state: String,
    pub last_seen_ms: u64,
    pub requests_per_second: f64,
    /// Why it refused the last routing, if it did.
    pub error: String,
}

/// The data planes and the routing version they should serve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataPlanes {
    pub version: u64,
    pub planes: Vec<DataPlane>,
}

/// A version's weight in its service's split, and the revision it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionWeight {
    pub name: String,
    pub weight: u32,
    pub revision: String,
    /// The endpoints as configured.
    pub endpoints: Vec<String>,
    /// Where requests go now (a hostname's resolved addresses).
    pub addresses: Vec<String>,
}

/// Something that happened to a service, in Flagger's words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub service: String,
    pub warning: bool,
    pub message: String,
    /// Unix milliseconds.
    pub timestamp_ms: u64,
}

/// What the status shows of a rollout.
pub struct RolloutView<'a> {
    pub target: &'a Target,
    pub status: &'a Status,
    pub analysis: &'a Analysis,
    pub primary_revision: Option<&'a str>,
    pub canary_revision: Option<&'a str>,
    pub primary_name: &'a str,
    /// None until a rollout brings a canary.
    pub canary_name: Option<&'a str>,
}

/// A rollout's status; `stats` are the versions' windows since the canary's traffic
/// began.
pub fn rollout_status(r: &RolloutView<'_>, stats: &Windows) -> ServiceStatus {
    let s = r.status;
    let weight = s.canary_weight.min(100);
    let versions = std::iter::once((r.primary_name, 100 - weight, r.primary_revision))
        .chain(r.canary_name.map(|c| (c, weight, r.canary_revision)))
        .map(|(name, weight, revision)| VersionWeight {
            name: name.to_string(),
            weight,
            revision: revision.unwrap_or_default().to_string(),
            ..VersionWeight::default()
        })
        .collect();
    ServiceStatus {
        service: r.target.name.clone(),
        namespace: r.target.namespace.clone(),
        phase: s.phase.name().into(),
        canary_weight: s.canary_weight,
        failed_checks: s.failed_checks,
        iterations: s.iterations,
        mirrored: s.mirrored,
        paused: s.paused || r.analysis.spec.suspend,
        canary_revision: r.canary_revision.unwrap_or_default().to_string(),
        primary_revision: r.primary_revision.unwrap_or_default().to_string(),
        last_transition_ms: s.last_transition_ms,
        message: match &s.state_lost {
            Some(why) => format!(
                "Rollout state lost: {why}. Serving the primary only until `weir ctl reset`."
            ),
            None => s.phase.condition_message().into(),
        },
        checks: s
            .checks
            .iter()
            .map(|c| CheckStatus {
                name: c.name.clone(),
                verdict: c.verdict.name().into(),
                value: c.value.unwrap_or(f64::NAN),
                threshold: c.threshold.clone(),
                detail: c.detail.clone(),
            })
            .collect(),
        last_event: s.last_event.clone(),
        primary: Some(Traffic::of(&stats.primary)),
        canary: Some(Traffic::of(&stats.canary)),
        waiting_gate: s
            .waiting_gate
            .map(|g| g.name().to_string())
            .unwrap_or_default(),
        threshold: r.analysis.threshold,
        max_weight: r.analysis.max_weight,
        state_lost: s.state_lost.is_some(),
        replicas: None,
        guard_evidence: 0.0,
        guard_bound: 0.0,
        versions,
    }
}
