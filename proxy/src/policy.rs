//! Traffic policies: what a controller says about a service's traffic (the weights of its
//! split, a mirror, a segment of matched requests routed first, session affinity), laid
//! over the service's own rules. The proxy keeps the policy and the service's config apart,
//! so a reload of the file keeps the controller's weights and a policy change touches
//! only its service.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::{MatchConfig, MirrorConfig, RouteConfig, ServiceConfig, SessionAffinityConfig};

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
    fn config(&self) -> MirrorConfig {
        MirrorConfig::to(&self.version, self.percent)
    }
}

/// The service as it routes under `policy`: the segment's rules first, then the service's
/// own rules with the policy's weights and mirror on the weighted ones.
pub(crate) fn effective(base: &ServiceConfig, policy: &TrafficPolicy) -> ServiceConfig {
    let mut svc = base.clone();
    let mut routes = Vec::new();
    if let Some(seg) = &policy.segment {
        for (i, m) in seg.matches.iter().enumerate() {
            let mut route = RouteConfig {
                name: Some(format!("segment-{i}")),
                matches: Some(m.clone()),
                ..RouteConfig::default()
            };
            match &seg.target {
                SegmentTarget::Version(v) => route.to = Some(v.clone()),
                SegmentTarget::Split { weights, mirror } => {
                    route.split = Some(weights.clone());
                    route.mirror = mirror.as_ref().map(MirrorPolicy::config);
                }
            }
            routes.push(route);
        }
    }
    let mut own = std::mem::take(&mut svc.routes);
    if let Some(weights) = &policy.weights {
        let mirror = policy.mirror.as_ref().map(MirrorPolicy::config);
        for route in weighted_rules(&mut own) {
            route.split = Some(weights.clone());
            route.mirror = mirror.clone();
        }
    }
    routes.extend(own);
    svc.routes = routes;
    if let Some(sa) = &policy.session_affinity {
        svc.session_affinity = Some(sa.clone());
    }
    svc
}

/// The rules a service's weighted split applies to: every `split` rule, or, when there
/// is none, the first rule without a match condition (made a split rule) or a new
/// catch-all rule at the end.
fn weighted_rules(routes: &mut Vec<RouteConfig>) -> impl Iterator<Item = &mut RouteConfig> {
    if !routes.iter().any(|r| r.split.is_some()) {
        match routes.iter_mut().find(|r| r.matches.is_none()) {
            Some(route) => {
                route.to = None;
                route.split = Some(IndexMap::new());
            }
            None => routes.push(RouteConfig {
                split: Some(IndexMap::new()),
                ..RouteConfig::default()
            }),
        }
    }
    routes.iter_mut().filter(|r| r.split.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(routes: &str) -> ServiceConfig {
        serde_yaml_ng::from_str(&format!(
            "name: a\nversions: {{ primary: {{ endpoints: [\"127.0.0.1:1\"] }}, canary: {{ endpoints: [\"127.0.0.1:2\"] }} }}\nroutes: {routes}\n"
        ))
        .expect("service")
    }

    fn weights(p: u32, c: u32) -> IndexMap<String, u32> {
        [("primary".to_string(), p), ("canary".to_string(), c)]
            .into_iter()
            .collect()
    }

    #[test]
    fn weights_land_on_every_split_rule_or_the_catch_all() {
        let policy = TrafficPolicy {
            weights: Some(weights(80, 20)),
            ..TrafficPolicy::default()
        };
        let svc = effective(
            &service("[ { match: { headers: { x: {} } }, to: canary }, { to: primary } ]"),
            &policy,
        );
        assert_eq!(svc.routes[0].to.as_deref(), Some("canary"));
        assert_eq!(svc.routes[1].split, Some(weights(80, 20)));
        assert_eq!(svc.routes[1].to, None);
        let svc = effective(&service("[]"), &policy);
        assert_eq!(svc.routes.len(), 1);
        assert_eq!(svc.routes[0].split, Some(weights(80, 20)));
    }

    #[test]
    fn a_segment_routes_first_and_the_rest_keeps_its_weights() {
        let policy = TrafficPolicy {
            weights: Some(weights(100, 0)),
            segment: Some(Segment {
                matches: vec![
                    serde_yaml_ng::from_str("headers: { x-canary: { exact: insider } }")
                        .expect("match"),
                ],
                target: SegmentTarget::Split {
                    weights: weights(50, 50),
                    mirror: Some(MirrorPolicy {
                        version: "canary".into(),
                        percent: 100.0,
                    }),
                },
            }),
            ..TrafficPolicy::default()
        };
        let svc = effective(
            &service("[ { split: { primary: 90, canary: 10 } } ]"),
            &policy,
        );
        assert_eq!(svc.routes.len(), 2);
        assert_eq!(svc.routes[0].name.as_deref(), Some("segment-0"));
        assert_eq!(svc.routes[0].split, Some(weights(50, 50)));
        assert!(svc.routes[0].mirror.is_some());
        assert_eq!(svc.routes[1].split, Some(weights(100, 0)));
        assert!(svc.routes[1].mirror.is_none());
    }
}
