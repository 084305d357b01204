//! The route table: immutable, swapped whole, read without locks. Host selects a service
//! (exact, then `*.suffix`, then the `*` default); the service's ordered rules are tried in
//! turn and the first match wins; its target is one version or a weighted split (sticky
//! when the service says so, pinned by session affinity while a canary takes a share).

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::matcher::{Matcher, RequestView};
use crate::headers::affinity::Affinity;
use crate::headers::{cookie, strip_port};
use crate::measure::VersionHandle;
use crate::mirror::MirrorRule;
use crate::split::WeightTable;
use crate::timeouts::Timeouts;
use crate::upstream::Upstream;

/// An immutable, fully resolved routing snapshot.
pub(crate) struct RouteTable {
    pub(crate) services: super::ServiceList,
    pub(crate) hosts: Arc<HostIndex>,
    /// Peers whose forwarding headers are believed.
    pub(crate) trusted: Arc<crate::headers::TrustedProxies>,
}

/// Which service answers which host.
#[derive(Default)]
pub(crate) struct HostIndex {
    by_host: HashMap<String, usize>,
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

/// One service, resolved.
pub(crate) struct Service {
    /// Service name.
    pub name: String,
    /// Versions in config order; index 0 is the primary.
    pub versions: Vec<Version>,
    pub(super) rules: Vec<Rule>,
    pub(super) sticky: Option<StickyKey>,
    pub(super) affinity: Option<Affinity>,
    /// The snapshot it was built from.
    pub routing: Arc<crate::routing::ServiceRouting>,
}

/// One version with its endpoints and measurement handles.
pub(crate) struct Version {
    /// Version name.
    pub name: String,
    /// Its endpoints.
    pub upstream: Arc<Upstream>,
    /// Its measurements (users' and shadow traffic).
    pub metrics: VersionHandle,
}

/// One resolved rule.
pub(crate) struct Rule {
    pub(super) matcher: Matcher,
    pub(super) target: Target,
    /// The route timeout and the idle timeout.
    pub timeouts: Timeouts,
    /// Mirror settings.
    pub mirror: Option<MirrorRule>,
    /// HTTP/1.1 upgrade protocols let through (lower case).
    pub upgrades: Box<[Box<str>]>,
}

pub(super) enum Target {
    One(usize),
    Split(WeightTable),
}

pub(super) enum StickyKey {
    Header(HeaderName),
    Cookie(String),
}

/// What routing decided.
pub(crate) struct Decision<'t> {
    /// The service.
    pub service: &'t Service,
    /// The rule that matched.
    pub rule: &'t Rule,
    /// The chosen version.
    pub version: &'t Version,
    /// A `Set-Cookie` for the response (session affinity).
    pub set_cookie: Option<HeaderValue>,
}

impl HostIndex {
    /// Indexes the hosts of `services` (validated: no host is claimed twice).
    pub(crate) fn new(services: &[Arc<Service>]) -> HostIndex {
        let mut index = HostIndex::default();
        for (i, svc) in services.iter().enumerate() {
            if svc.routing.hosts.is_empty() {
                index.default = Some(i);
            }
            for host in &svc.routing.hosts {
                let host = host.to_ascii_lowercase();
                if host == "*" {
                    index.default = Some(i);
                } else if let Some(suffix) = host.strip_prefix('*') {
                    index.wildcards.push((suffix.to_string(), i));
                } else {
                    index.by_host.insert(host, i);
                }
            }
        }
        // Longest suffix first, so `*.a.example.com` wins over `*.example.com`.
        index
            .wildcards
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        index
    }

    fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.by_host.get(host) {
            return Some(*i);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, i)| *i)
    }
}

impl RouteTable {
    /// A table over `services`, with their weights published as metrics.
    pub(crate) fn new(services: Vec<Arc<Service>>, trusted_proxies: &[String]) -> RouteTable {
        services.iter().for_each(|s| s.publish_weights());
        RouteTable {
            hosts: Arc::new(HostIndex::new(&services)),
            services: super::ServiceList::new(services),
            trusted: Arc::new(crate::headers::TrustedProxies::parse(trusted_proxies)),
        }
    }

    /// The service for a Host value (port and case ignored).
    pub(crate) fn service_for(&self, host: Option<&str>) -> Option<&Service> {
        let idx = host
            .map(strip_port)
            .and_then(|h| {
                if h.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.hosts.lookup(&h.to_ascii_lowercase())
                } else {
                    self.hosts.lookup(h)
                }
            })
            .or(self.hosts.default)?;
        self.services.get(idx).map(|s| &**s)
    }

    /// Routes a request: service by host, then the first matching rule, then its version.
    pub(crate) fn route<'t>(
        &'t self,
        host: Option<&str>,
        req: &RequestView<'_>,
    ) -> Option<Decision<'t>> {
        let service = self.service_for(host)?;
        let (rule, version, set_cookie) = service.choose(req)?;
        Some(Decision {
            service,
            rule,
            version: &service.versions[version],
            set_cookie,
        })
    }

    /// The service with this name.
    pub(crate) fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(self.services.position(name)?)
    }
}

impl Service {
    fn choose(&self, req: &RequestView<'_>) -> Option<(&Rule, usize, Option<HeaderValue>)> {
        let rule = self.rules.iter().find(|r| r.matcher.matches(req))?;
        let table = match &rule.target {
            Target::One(v) => {
                let expire = self
                    .affinity
                    .as_ref()
                    .and_then(|a| a.expire_stale(req.headers));
                return Some((rule, *v, expire));
            }
            Target::Split(table) => table,
        };
        if let Some(v) = self.affinity.as_ref().and_then(|a| a.pinned(req.headers)) {
            return Some((rule, v, None));
        }
        let version = match self.sticky.as_ref().and_then(|k| k.key(req.headers)) {
            Some(key) => table.pick_sticky(key),
            None => table.pick(),
        };
        let set_cookie = self
            .affinity
            .as_ref()
            .and_then(|a| a.set_cookie(version, req.headers));
        Some((rule, version, set_cookie))
    }

    /// The weight of each version (by index) in the first rule without a match condition,
    /// the one that carries ordinary traffic.
    pub(crate) fn weights(&self) -> Vec<u32> {
        weights(&self.rules, self.versions.len())
    }

    /// Sets `weir_route_weight` of each version from the catch-all rule.
    pub(crate) fn publish_weights(&self) {
        for (version, w) in self.versions.iter().zip(self.weights()) {
            version.metrics.weight.set(i64::from(w));
        }
    }
}

/// The weight of each version in the first rule without a match condition.
pub(super) fn weights(rules: &[Rule], versions: usize) -> Vec<u32> {
    let mut out = vec![0; versions];
    if let Some(rule) = rules.iter().find(|r| r.matcher.is_empty()) {
        match &rule.target {
            Target::One(v) => out[*v] = 100,
            Target::Split(t) => {
                for (v, w) in t.entries() {
                    out[*v] = *w;
                }
            }
        }
    }
    out
}

impl StickyKey {
    fn key<'a>(&self, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        match self {
            StickyKey::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty()),
            StickyKey::Cookie(name) => cookie(headers, name),
        }
    }
}
