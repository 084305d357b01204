//! The routing currency: one typed, complete snapshot per service (its versions and their
//! endpoints, its ordered rules with matches, weights, mirror and timeouts, stickiness and
//! session affinity), each with the version it was made at, and the whole routing as a
//! map of them with one version that only grows. weir.yaml's services compile into it, a
//! controller lays its policy over it, and every data plane serves it: the proxy builds
//! its route table from it, replicas receive the services that changed, Envoy nodes get it
//! translated into xDS.

mod compile;
mod policy;

use std::fmt;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::{
    Dur, MatchConfig, MirrorConfig, SessionAffinityConfig, StickyConfig, VersionConfig,
};

pub use policy::{MirrorPolicy, Segment, SegmentTarget, TrafficPolicy};

/// One service's routing, as every data plane serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRouting {
    pub name: String,
    pub namespace: String,
    /// Host names it answers; none (or `*`) makes it the default service.
    pub hosts: Vec<String>,
    /// The service port (in the Envoy cluster names).
    pub port: u16,
    /// Versions in order: the first is the primary.
    pub versions: IndexMap<String, VersionConfig>,
    /// Ordered rules, first match wins; never empty.
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<SessionAffinityConfig>,
    /// The session-affinity cookie's value, chosen by the controller for the rollout so
    /// every data plane sets and honours the same one (None: each proxy draws its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_token: Option<String>,
    /// The routing version this snapshot was made at.
    pub version: u64,
}

/// One rule of a service: where matching requests go, mirrored or not, under which clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions that must all hold; None matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<MatchConfig>,
    #[serde(flatten)]
    pub target: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// From the end of the request body to the end of the response; zero: no limit.
    pub timeout: Dur,
    /// Nothing moving either way for this long cuts the exchange.
    pub idle_timeout: Dur,
    /// HTTP/1.1 upgrade protocols let through (lower case).
    pub upgrades: Vec<String>,
}

/// Where a rule sends its requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// All to one version.
    To(String),
    /// By weight: a version's share is its weight over the sum.
    Split(IndexMap<String, u32>),
}

/// The whole routing: every service's snapshot and the version of the whole, which grows
/// with every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    pub version: u64,
    pub services: IndexMap<String, Arc<ServiceRouting>>,
}

/// What changes from one routing to the next: the services that changed (whole), the ones
/// removed, and the version it makes; `full` replaces every service (a replica that just
/// connected).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingDelta {
    pub version: u64,
    pub full: bool,
    pub services: Vec<Arc<ServiceRouting>>,
    pub removed: Vec<String>,
}

impl Routing {
    /// The delta that turns `from` into this routing (everything when `from` is None).
    pub fn delta_from(&self, from: Option<&Routing>) -> RoutingDelta {
        let Some(from) = from else {
            return RoutingDelta {
                version: self.version,
                full: true,
                services: self.services.values().cloned().collect(),
                removed: Vec::new(),
            };
        };
        let services = self
            .services
            .iter()
            .filter(|(name, s)| from.services.get(*name).is_none_or(|f| !Arc::ptr_eq(f, s)))
            .map(|(_, s)| s.clone())
            .collect();
        let removed = from
            .services
            .keys()
            .filter(|name| !self.services.contains_key(*name))
            .cloned()
            .collect();
        RoutingDelta {
            version: self.version,
            full: false,
            services,
            removed,
        }
    }

    /// This routing with `delta` applied (checked by whoever builds from it).
    pub fn applied(&self, delta: &RoutingDelta) -> Routing {
        let mut services = if delta.full {
            IndexMap::new()
        } else {
            self.services.clone()
        };
        for name in &delta.removed {
            services.shift_remove(name);
        }
        for s in &delta.services {
            services.insert(s.name.clone(), s.clone());
        }
        Routing {
            version: delta.version,
            services,
        }
    }
}

/// Why a service's routing cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingError {
    /// The service.
    pub service: String,
    /// What is wrong with it.
    pub problem: String,
}

impl RoutingError {
    pub(crate) fn new(service: &str, problem: impl Into<String>) -> RoutingError {
        RoutingError {
            service: service.to_string(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for RoutingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.service, self.problem)
    }
}

impl std::error::Error for RoutingError {}

/// Every problem a routing change has; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RoutingErrors(pub Vec<RoutingError>);

impl fmt::Display for RoutingErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&shown.join("; "))
    }
}

impl RoutingErrors {
    /// Each problem as a line.
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// Ok when there is no error.
    pub(crate) fn check(errors: Vec<RoutingError>) -> Result<(), RoutingErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RoutingErrors(errors))
        }
    }
}

impl From<RoutingError> for RoutingErrors {
    fn from(e: RoutingError) -> RoutingErrors {
        RoutingErrors(vec![e])
    }
}
