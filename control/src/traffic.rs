//! What a rollout's status means for traffic: the [`TrafficPolicy`] the controller gives
//! the proxy for the service. Pure: no proxy, no clock.

use indexmap::IndexMap;
use weir_proxy::config::{MatchConfig, OneOrMany, PathMatch, SessionAffinityConfig};
use weir_proxy::{MirrorPolicy, Segment, SegmentTarget, TrafficPolicy};

use crate::spec::{Analysis, MatchRequest, Strategy};

/// How far a rollout exposes its canary: its share, mirroring, and the A/B segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposure {
    pub canary_weight: u32,
    pub mirror: bool,
    pub ab: bool,
}

/// The names of the primary and canary versions; a primary-only service has no canary
/// until a rollout brings one.
#[derive(Debug, Clone, Copy)]
pub struct Versions<'a> {
    pub primary: &'a str,
    pub canary: Option<&'a str>,
}

/// The policy for a rollout exposed as `routing`: the A/B matches go to the canary while
/// they route; a canary analysis with `match` ramps inside the matched segment only;
/// otherwise the service's weighted rules carry the canary's weight (and the mirror).
pub fn policy(analysis: &Analysis, v: Versions<'_>, routing: Exposure) -> TrafficPolicy {
    let Some(canary) = v.canary else {
        return TrafficPolicy {
            weights: Some([(v.primary.to_string(), 100)].into_iter().collect()),
            ..TrafficPolicy::default()
        };
    };
    let v = Pair {
        primary: v.primary,
        canary,
    };
    let split = |w: u32| -> IndexMap<String, u32> {
        [
            (v.primary.to_string(), 100 - w.min(100)),
            (v.canary.to_string(), w.min(100)),
        ]
        .into_iter()
        .collect()
    };
    let mirror = routing.mirror.then(|| MirrorPolicy {
        version: v.canary.to_string(),
        percent: analysis.mirror_percent,
    });
    let matches: Vec<MatchConfig> = analysis.spec.matches.iter().map(match_config).collect();
    let segmented = analysis.strategy == Strategy::Canary && !matches.is_empty();
    let segment = if routing.ab && !matches.is_empty() {
        Some(Segment {
            matches,
            target: SegmentTarget::Version(v.canary.to_string()),
        })
    } else if segmented {
        Some(Segment {
            matches,
            target: SegmentTarget::Split {
                weights: split(routing.canary_weight),
                mirror: mirror.clone(),
            },
        })
    } else {
        None
    };
    TrafficPolicy {
        weights: Some(split(if segmented { 0 } else { routing.canary_weight })),
        mirror: if segmented { None } else { mirror },
        segment,
        session_affinity: analysis
            .spec
            .session_affinity
            .as_ref()
            .map(|sa| SessionAffinityConfig {
                primary_max_age: analysis.interval.as_secs().max(1),
                ..sa.clone()
            }),
        affinity_token: None,
    }
}

struct Pair<'a> {
    primary: &'a str,
    canary: &'a str,
}

/// A Flagger (Istio) match condition as the proxy's: header names in lower case, `uri`
/// as the path, `method` exact.
fn match_config(m: &MatchRequest) -> MatchConfig {
    MatchConfig {
        headers: m
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        path: m.uri.as_ref().map(|u| PathMatch {
            exact: u.exact.clone(),
            prefix: u.prefix.clone(),
            regex: u.regex.clone(),
        }),
        method: m
            .method
            .as_ref()
            .and_then(|x| x.exact.clone())
            .map(OneOrMany::One),
        ..MatchConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(yaml: &str) -> Analysis {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        crate::spec::parse(&v, "analysis", &crate::spec::Catalog::default()).expect("valid")
    }

    const V: Versions<'static> = Versions {
        primary: "primary",
        canary: Some("canary"),
    };

    #[test]
    fn a_canary_step_sets_the_weights_and_the_mirror_pre_step_mirrors() {
        let a = analysis("interval: 10s\nstepWeight: 10\nmirror: true\nmirrorWeight: 50\n");
        let p = policy(
            &a,
            V,
            Exposure {
                canary_weight: 20,
                mirror: false,
                ab: false,
            },
        );
        let w = p.weights.expect("weights");
        assert_eq!((w["primary"], w["canary"]), (80, 20));
        assert!(p.mirror.is_none() && p.segment.is_none());
        let p = policy(
            &a,
            V,
            Exposure {
                canary_weight: 0,
                mirror: true,
                ab: false,
            },
        );
        assert_eq!(p.mirror.map(|m| m.percent), Some(50.0));
    }

    #[test]
    fn ab_routes_the_segment_to_the_canary_and_a_matched_canary_ramps_inside_it() {
        let ab = analysis(
            "interval: 10s\niterations: 3\nmatch:\n- headers: { X-Canary: { exact: insider } }\n",
        );
        let p = policy(
            &ab,
            V,
            Exposure {
                canary_weight: 0,
                mirror: false,
                ab: true,
            },
        );
        let seg = p.segment.expect("segment");
        assert_eq!(seg.target, SegmentTarget::Version("canary".into()));
        assert!(seg.matches[0].headers.contains_key("x-canary"));
        let ramp = analysis(
            "interval: 10s\nstepWeight: 10\nmatch:\n- headers: { x-canary: { exact: insider } }\n",
        );
        let p = policy(
            &ramp,
            V,
            Exposure {
                canary_weight: 30,
                mirror: false,
                ab: false,
            },
        );
        assert_eq!(p.weights.expect("weights")["canary"], 0);
        match p.segment.expect("segment").target {
            SegmentTarget::Split { weights, .. } => assert_eq!(weights["canary"], 30),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod primary_only {
    use super::*;

    #[test]
    fn a_service_without_a_canary_sends_everything_to_the_primary() {
        let v: serde_json::Value =
            serde_yaml_ng::from_str("interval: 10s\nstepWeight: 10\n").expect("yaml");
        let a =
            crate::spec::parse(&v, "analysis", &crate::spec::Catalog::default()).expect("valid");
        let v = Versions {
            primary: "primary",
            canary: None,
        };
        let routing = Exposure {
            canary_weight: 30,
            mirror: true,
            ab: false,
        };
        let p = policy(&a, v, routing);
        let w = p.weights.expect("weights");
        assert_eq!(w.len(), 1);
        assert_eq!(w["primary"], 100);
        assert!(p.mirror.is_none() && p.segment.is_none());
    }
}
