//! Traffic policies: what a controller says about a service's traffic (the weights of its
//! split, a mirror, a segment of matched requests routed first, session affinity), laid
//! over the service's own rules by [`ServiceRouting::with_policy`](super::ServiceRouting).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::{MatchConfig, MirrorConfig, SessionAffinityConfig};

/// A controller's say over one service's traffic.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Weights of the service's weighted rules (every `split` rule; without one, the first
    /// rule with no match condition, or a new catch-all rule). None keeps the file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<IndexMap<String, u32>>,
    /// Mirroring on the weighted rules (None: no mirror there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorPolicy>,
    /// Requests matching any of the segment's conditions are routed by it, before the
    /// service's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Segment>,
    /// Session affinity while the policy holds (replaces the service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinityConfig>,
    /// The affinity cookie's value for this rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_token: Option<String>,
}

/// Mirror a share of requests to a shadow version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorPolicy {
    /// The shadow version.
    pub version: String,
    /// Share of requests mirrored, 0 to 100.
    pub percent: f64,
}

/// A segment of requests (an A/B test's users, say) routed apart from the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// A request is in the segment when it meets every condition of any one of these.
    pub matches: Vec<MatchConfig>,
    /// Where the segment goes.
    pub target: SegmentTarget,
}

/// Where a segment's requests go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SegmentTarget {
    /// All to one version.
    Version(String),
    /// Split by weight, optionally mirrored.
    Split {
        weights: IndexMap<String, u32>,
        mirror: Option<MirrorPolicy>,
    },
}

impl MirrorPolicy {
    pub(crate) fn config(&self) -> MirrorConfig {
        MirrorConfig::to(&self.version, self.percent)
    }
}
