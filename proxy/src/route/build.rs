//! Building one service of the route table from its routing snapshot: versions with
//! their long-lived backends, rules with matchers, split tables and mirrors resolved,
//! stickiness and session affinity. A snapshot that passed its own check can still fail
//! here (a regex that does not compile, an endpoint that is not an address, a TLS file
//! that does not load): each such problem names the service and where in it.

use std::sync::Arc;

use http::HeaderName;

use super::matcher::Matcher;
use super::table::{weights, Rule, Service, StickyKey, Target, Version};
use crate::backends::Backends;
use crate::config::ConfigError;
use crate::headers::affinity::{Affinity, CANARY};
use crate::measure::{Comparison, MirrorSkip};
use crate::mirror::MirrorRule;
use crate::routing::{self, RoutingError, ServiceRouting};
use crate::split::WeightTable;
use crate::timeouts::Timeouts;

/// Default bound of mirrors in flight per service.
const DEFAULT_MIRROR_SLOTS: usize = 1024;

/// Builds a service from its snapshot.
pub(crate) fn service(
    svc: &Arc<ServiceRouting>,
    backends: &Backends,
) -> Result<Service, Vec<RoutingError>> {
    let mut errors = Vec::new();
    let mut versions = Vec::with_capacity(svc.versions.len());
    for (name, vcfg) in &svc.versions {
        match backends.version(svc, name, vcfg) {
            Ok((upstream, metrics)) => versions.push(Version {
                name: name.clone(),
                upstream,
                metrics,
            }),
            Err(e) => errors.push(RoutingError::new(
                &svc.name,
                format!("version {name}: {}: {}", e.field, e.message),
            )),
        }
    }
    let slots_size = svc
        .rules
        .iter()
        .filter_map(|r| r.mirror.as_ref().map(|m| m.max_in_flight))
        .max()
        .unwrap_or(DEFAULT_MIRROR_SLOTS);
    let slots = backends.mirror_slots(&svc.name, slots_size);
    let mut rules = Vec::with_capacity(svc.rules.len());
    let mut problems: Vec<ConfigError> = Vec::new();
    for (r, route) in svc.rules.iter().enumerate() {
        if let Some(rule) = rule(
            svc,
            route,
            &format!("rules[{r}]"),
            backends,
            &slots,
            &mut problems,
        ) {
            rules.push(rule);
        }
    }
    errors.extend(
        problems
            .into_iter()
            .map(|e| RoutingError::new(&svc.name, e.to_string())),
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let sticky = svc
        .sticky
        .as_ref()
        .and_then(|s| match (&s.header, &s.cookie) {
            (Some(h), _) => HeaderName::from_bytes(h.as_bytes())
                .ok()
                .map(StickyKey::Header),
            (None, Some(c)) => Some(StickyKey::Cookie(c.clone())),
            (None, None) => None,
        });
    let affinity = svc.affinity.as_ref().and_then(|sa| {
        let canary = svc.versions.get_index(CANARY)?.1;
        let active = weights(&rules, versions.len())
            .get(CANARY)
            .is_some_and(|w| *w > 0)
            && rules.iter().any(|r| matches!(r.target, Target::Split(_)));
        let token = match &svc.affinity_token {
            Some(t) => t.clone(),
            None => backends.tokens.token(&svc.name, &canary.revision, active),
        };
        Affinity::new(sa, token, active)
    });
    Ok(Service {
        name: svc.name.clone(),
        versions,
        rules,
        sticky,
        affinity,
        routing: svc.clone(),
    })
}

fn rule(
    svc: &ServiceRouting,
    route: &routing::Rule,
    rp: &str,
    backends: &Backends,
    slots: &Arc<tokio::sync::Semaphore>,
    errors: &mut Vec<ConfigError>,
) -> Option<Rule> {
    let index = |v: &str| svc.versions.get_index_of(v);
    let target = match &route.target {
        routing::Target::To(to) => Target::One(index(to)?),
        routing::Target::Split(split) => {
            let weights: Option<Vec<(usize, u32)>> =
                split.iter().map(|(v, w)| Some((index(v)?, *w))).collect();
            Target::Split(WeightTable::new(&weights?, 0)?)
        }
    };
    let matcher = match &route.matches {
        Some(m) => Matcher::build(m, &format!("{rp}.match"), errors)?,
        None => Matcher::default(),
    };
    let mirror = match &route.mirror {
        Some(m) if m.percent > 0.0 => {
            let version = index(&m.version)?;
            let f = &backends.families;
            Some(MirrorRule {
                version,
                percent: m.percent,
                compare: m.compare,
                max_body: m.max_body_bytes,
                timeout: m.timeout.0,
                slots: slots.clone(),
                skipped: MirrorSkip::ALL.map(|r| f.mirror_skipped(&svc.name, &m.version, r)),
                comparisons: Comparison::ALL.map(|r| f.mirror_comparisons(&svc.name, r)),
            })
        }
        _ => None,
    };
    Some(Rule {
        matcher,
        target,
        timeouts: Timeouts {
            route: (!route.timeout.0.is_zero()).then_some(route.timeout.0),
            idle: route.idle_timeout.0,
        },
        mirror,
        upgrades: route
            .upgrades
            .iter()
            .map(|u| Box::from(u.as_str()))
            .collect(),
    })
}
