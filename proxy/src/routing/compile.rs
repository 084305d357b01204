//! How snapshots are made: a service of weir.yaml (already validated) compiles into one
//! with every default resolved; a controller's policy is laid over one; and a snapshot
//! is checked for what only its own fields can get wrong (what a replica checks of a pushed
//! one before it builds it).

use indexmap::IndexMap;

use super::{RoutingError, Rule, ServiceRouting, Target, TrafficPolicy};
use crate::config::{Dur, MatchConfig, RouteConfig, ServiceConfig, StickyConfig, DEFAULT_UPGRADES};
use crate::timeouts::{DEFAULT_IDLE_TIMEOUT, DEFAULT_ROUTE_TIMEOUT};

impl ServiceRouting {
    /// A service of weir.yaml (validated) as it routes with nothing laid over it: a
    /// service without routes sends everything to its primary.
    pub fn from_config(svc: &ServiceConfig) -> ServiceRouting {
        let mut rules: Vec<Rule> = svc.routes.iter().filter_map(rule).collect();
        if rules.is_empty() {
            if let Some(primary) = svc.versions.keys().next() {
                rules.push(Rule::to(primary));
            }
        }
        ServiceRouting {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
            hosts: svc.hosts.clone(),
            port: svc.port,
            versions: svc.versions.clone(),
            rules,
            sticky: svc.sticky.clone(),
            affinity: svc.session_affinity.clone(),
            affinity_token: None,
            version: 0,
        }
    }

    /// The service as it routes under a controller's `policy`: the segment's rules first,
    /// then its own rules with the policy's weights and mirror on the weighted ones (every
    /// split rule; without one, the first rule with no match condition, or a new
    /// catch-all), and the policy's session affinity.
    pub fn with_policy(&self, policy: &TrafficPolicy) -> Result<ServiceRouting, RoutingError> {
        let mut out = self.clone();
        let mut rules = Vec::new();
        if let Some(seg) = &policy.segment {
            for (i, m) in seg.matches.iter().enumerate() {
                let mut rule = match &seg.target {
                    super::SegmentTarget::Version(v) => Rule::to(v),
                    super::SegmentTarget::Split { weights, mirror } => Rule {
                        mirror: mirror.as_ref().map(super::MirrorPolicy::config),
                        ..Rule::split(weights.clone())
                    },
                };
                rule.name = Some(format!("segment-{i}"));
                rule.matches = Some(m.clone());
                rules.push(rule);
            }
        }
        let mut own = std::mem::take(&mut out.rules);
        if let Some(weights) = &policy.weights {
            let mirror = policy.mirror.as_ref().map(super::MirrorPolicy::config);
            if !own.iter().any(|r| matches!(r.target, Target::Split(_))) {
                match own.iter_mut().find(|r| r.matches.is_none()) {
                    Some(r) => r.target = Target::Split(IndexMap::new()),
                    None => own.push(Rule::split(IndexMap::new())),
                }
            }
            for r in &mut own {
                if let Target::Split(w) = &mut r.target {
                    *w = weights.clone();
                    r.mirror = mirror.clone();
                }
            }
        }
        rules.extend(own);
        out.rules = rules;
        if let Some(sa) = &policy.session_affinity {
            out.affinity = Some(sa.clone());
        }
        if let Some(t) = &policy.affinity_token {
            out.affinity_token = Some(t.clone());
        }
        out.check()?;
        Ok(out)
    }

    /// What only a snapshot's own fields can get wrong: versions its rules name that it
    /// does not have, weights that sum to nothing, percentages out of range. The first
    /// problem is returned, naming the service.
    pub fn check(&self) -> Result<(), RoutingError> {
        let err = |p: String| Err(RoutingError::new(&self.name, p));
        if self.versions.is_empty() {
            return err("it has no version".into());
        }
        if self.rules.is_empty() {
            return err("it has no rule".into());
        }
        for (name, v) in &self.versions {
            if v.endpoints.is_empty() {
                return err(format!(
                    "version {name}: a version needs at least one endpoint"
                ));
            }
            for (i, ep) in v.endpoints.iter().enumerate() {
                if let Err(why) = crate::config::endpoint(ep) {
                    return err(format!("version {name}: endpoints[{i}]: {why}"));
                }
            }
        }
        let unknown = |v: &str| {
            let have: Vec<&str> = self.versions.keys().map(String::as_str).collect();
            format!("unknown version {v:?} (it has {})", have.join(", "))
        };
        for (i, r) in self.rules.iter().enumerate() {
            let at = |p: String| match &r.name {
                Some(n) => format!("rule {n}: {p}"),
                None => format!("rule {i}: {p}"),
            };
            match &r.target {
                Target::To(v) if !self.versions.contains_key(v) => return err(at(unknown(v))),
                Target::To(_) => {}
                Target::Split(w) => {
                    if let Some(v) = w.keys().find(|v| !self.versions.contains_key(*v)) {
                        return err(at(unknown(v)));
                    }
                    let sum: u64 = w.values().map(|w| u64::from(*w)).sum();
                    if sum == 0 {
                        return err(at(
                            "the weights sum to 0; at least one must be positive".into()
                        ));
                    }
                    if sum > u64::from(u32::MAX) {
                        return err(at("the weights sum past 4294967295".into()));
                    }
                }
            }
            if let Some(m) = &r.mirror {
                if !self.versions.contains_key(&m.version) {
                    return err(at(format!("mirror: {}", unknown(&m.version))));
                }
                if !(0.0..=100.0).contains(&m.percent) {
                    return err(at(format!(
                        "mirror: {} is not between 0 and 100",
                        m.percent
                    )));
                }
            }
            if r.idle_timeout.0.is_zero() {
                return err(at("the idle timeout must be greater than 0".into()));
            }
        }
        if let Some(StickyConfig { header, cookie }) = &self.sticky {
            if header.is_some() == cookie.is_some() {
                return err("sticky: set exactly one of header or cookie".into());
            }
        }
        Ok(())
    }

    /// The weight of each version (by name) in the first rule without a match condition,
    /// the one that carries ordinary traffic.
    pub fn weights(&self) -> IndexMap<String, u32> {
        let mut out: IndexMap<String, u32> = self.versions.keys().map(|v| (v.clone(), 0)).collect();
        if let Some(r) = self.rules.iter().find(|r| r.matches.is_none()) {
            match &r.target {
                Target::To(v) => {
                    out.insert(v.clone(), 100);
                }
                Target::Split(w) => {
                    for (v, w) in w {
                        out.insert(v.clone(), *w);
                    }
                }
            }
        }
        out
    }

    /// True when `other` routes exactly as this one does (whatever their versions).
    pub fn same_routing(&self, other: &ServiceRouting) -> bool {
        ServiceRouting {
            version: other.version,
            ..self.clone()
        } == *other
    }
}

impl Rule {
    /// Everything to `version`, with the default clocks.
    fn to(version: &str) -> Rule {
        Rule::new(Target::To(version.to_string()))
    }

    /// Split by `weights`, with the default clocks.
    fn split(weights: IndexMap<String, u32>) -> Rule {
        Rule::new(Target::Split(weights))
    }

    fn new(target: Target) -> Rule {
        Rule {
            name: None,
            matches: None::<MatchConfig>,
            target,
            mirror: None,
            timeout: Dur(DEFAULT_ROUTE_TIMEOUT),
            idle_timeout: Dur(DEFAULT_IDLE_TIMEOUT),
            upgrades: DEFAULT_UPGRADES.iter().map(|u| u.to_string()).collect(),
        }
    }
}

/// A route of weir.yaml as a rule, defaults resolved; a mirror at 0% is none.
fn rule(r: &RouteConfig) -> Option<Rule> {
    let target = match (&r.to, &r.split) {
        (Some(v), _) => Target::To(v.clone()),
        (None, Some(w)) => Target::Split(w.clone()),
        (None, None) => return None,
    };
    let mut rule = Rule::new(target);
    rule.name = r.name.clone();
    rule.matches = r.matches.clone();
    rule.mirror = r.mirror.clone().filter(|m| m.percent > 0.0);
    if let Some(t) = r.timeout {
        rule.timeout = t;
    }
    if let Some(t) = r.idle_timeout {
        rule.idle_timeout = t;
    }
    if let Some(u) = &r.upgrades {
        rule.upgrades = u.iter().map(|u| u.to_ascii_lowercase()).collect();
    }
    Some(rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{MirrorPolicy, Segment, SegmentTarget};

    fn service(routes: &str) -> ServiceRouting {
        let svc: ServiceConfig = serde_yaml_ng::from_str(&format!(
            "name: a\nversions: {{ primary: {{ endpoints: [\"127.0.0.1:1\"] }}, canary: {{ endpoints: [\"127.0.0.1:2\"] }} }}\nroutes: {routes}\n"
        ))
        .expect("service");
        ServiceRouting::from_config(&svc)
    }

    fn weights(p: u32, c: u32) -> IndexMap<String, u32> {
        [("primary".to_string(), p), ("canary".to_string(), c)]
            .into_iter()
            .collect()
    }

    #[test]
    fn a_service_without_routes_sends_everything_to_its_primary() {
        let s = service("[]");
        assert_eq!(s.rules.len(), 1);
        assert_eq!(s.rules[0].target, Target::To("primary".into()));
        assert_eq!(s.weights(), weights(100, 0));
    }

    #[test]
    fn weights_land_on_every_split_rule_or_the_catch_all() {
        let policy = TrafficPolicy {
            weights: Some(weights(80, 20)),
            ..TrafficPolicy::default()
        };
        let s = service("[ { match: { headers: { x: {} } }, to: canary }, { to: primary } ]")
            .with_policy(&policy)
            .expect("valid");
        assert_eq!(s.rules[0].target, Target::To("canary".into()));
        assert_eq!(s.rules[1].target, Target::Split(weights(80, 20)));
        let s = service("[]").with_policy(&policy).expect("valid");
        assert_eq!(s.rules.len(), 1);
        assert_eq!(s.weights(), weights(80, 20));
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
        let s = service("[ { split: { primary: 90, canary: 10 } } ]")
            .with_policy(&policy)
            .expect("valid");
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.rules[0].name.as_deref(), Some("segment-0"));
        assert_eq!(s.rules[0].target, Target::Split(weights(50, 50)));
        assert!(s.rules[0].mirror.is_some());
        assert_eq!(s.rules[1].target, Target::Split(weights(100, 0)));
        assert!(s.rules[1].mirror.is_none());
    }

    #[test]
    fn a_policy_that_cannot_route_is_refused_naming_the_service_not_a_yaml_path() {
        let zero = TrafficPolicy {
            weights: Some(weights(0, 0)),
            ..TrafficPolicy::default()
        };
        let e = service("[]").with_policy(&zero).expect_err("zero sum");
        assert_eq!(
            e.to_string(),
            "a: rule 0: the weights sum to 0; at least one must be positive"
        );
        let ghost = TrafficPolicy {
            weights: Some([("ghost".to_string(), 1)].into_iter().collect()),
            ..TrafficPolicy::default()
        };
        let e = service("[]").with_policy(&ghost).expect_err("unknown");
        assert!(
            e.to_string()
                .contains("unknown version \"ghost\" (it has primary, canary)"),
            "{e}"
        );
    }
}
