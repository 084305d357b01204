//! Building one service of the route table from its (validated) config: versions with
//! their long-lived backends, rules with matchers, split tables and mirrors resolved,
//! stickiness and session affinity.

use std::sync::Arc;

use http::HeaderName;

use super::matcher::Matcher;
use super::table::{weights, Rule, Service, StickyKey, Target, Version};
use crate::backends::Backends;
use crate::config::{ConfigError, RouteConfig, ServiceConfig, DEFAULT_UPGRADES};
use crate::headers::affinity::{Affinity, CANARY};
use crate::measure::{Comparison, MirrorSkip};
use crate::mirror::MirrorRule;
use crate::split::WeightTable;
use crate::timeouts::{Timeouts, DEFAULT_IDLE_TIMEOUT, DEFAULT_ROUTE_TIMEOUT};

/// Default bound of mirrors in flight per service.
const DEFAULT_MIRROR_SLOTS: usize = 1024;

/// Builds a service from a config that passed validation; `p` is its path
/// (`services[3]`) for the few problems only building finds (an endpoint that is not a URI).
pub(crate) fn service(
    svc: &ServiceConfig,
    p: &str,
    backends: &Backends,
) -> Result<Service, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut versions = Vec::with_capacity(svc.versions.len());
    for (name, vcfg) in &svc.versions {
        match backends.version(svc, name, vcfg) {
            Ok((upstream, metrics)) => versions.push(Version {
                name: name.clone(),
                upstream,
                metrics,
            }),
            Err(e) => errors.push(ConfigError::new(
                format!("{p}.versions.{name}.{}", e.field),
                e.message,
            )),
        }
    }
    let default_route = [RouteConfig {
        to: svc.versions.keys().next().cloned(),
        ..RouteConfig::default()
    }];
    let routes: &[RouteConfig] = if svc.routes.is_empty() {
        &default_route
    } else {
        &svc.routes
    };
    let slots_size = routes
        .iter()
        .filter_map(|r| r.mirror.as_ref().map(|m| m.max_in_flight))
        .max()
        .unwrap_or(DEFAULT_MIRROR_SLOTS);
    let slots = backends.mirror_slots(&svc.name, slots_size);
    let mut rules = Vec::with_capacity(routes.len());
    for (r, route) in routes.iter().enumerate() {
        if let Some(rule) = rule(
            svc,
            route,
            &format!("{p}.routes[{r}]"),
            backends,
            &slots,
            &mut errors,
        ) {
            rules.push(rule);
        }
    }
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
    let affinity = svc.session_affinity.as_ref().and_then(|sa| {
        let canary = svc.versions.get_index(CANARY)?.1;
        let active = weights(&rules, versions.len())
            .get(CANARY)
            .is_some_and(|w| *w > 0)
            && rules.iter().any(|r| matches!(r.target, Target::Split(_)));
        let token = backends.tokens.token(&svc.name, &canary.revision, active);
        Affinity::new(sa, token, active)
    });
    Ok(Service {
        name: svc.name.clone(),
        versions,
        rules,
        sticky,
        affinity,
        config: svc.clone(),
    })
}

fn rule(
    svc: &ServiceConfig,
    route: &RouteConfig,
    rp: &str,
    backends: &Backends,
    slots: &Arc<tokio::sync::Semaphore>,
    errors: &mut Vec<ConfigError>,
) -> Option<Rule> {
    let index = |v: &str| svc.versions.get_index_of(v);
    let target = match (&route.to, &route.split) {
        (Some(to), _) => Target::One(index(to)?),
        (None, Some(split)) => {
            let weights: Option<Vec<(usize, u32)>> =
                split.iter().map(|(v, w)| Some((index(v)?, *w))).collect();
            Target::Split(WeightTable::new(&weights?, 0)?)
        }
        (None, None) => return None,
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
            route: match route.timeout {
                None => Some(DEFAULT_ROUTE_TIMEOUT),
                Some(d) if d.0.is_zero() => None,
                Some(d) => Some(d.0),
            },
            idle: route.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
        },
        mirror,
        upgrades: match &route.upgrades {
            Some(list) => list.iter().map(|u| u.to_ascii_lowercase().into()).collect(),
            None => DEFAULT_UPGRADES.iter().map(|u| Box::from(*u)).collect(),
        },
    })
}
