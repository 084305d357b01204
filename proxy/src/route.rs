//! The route table: built and validated off the hot path, swapped whole, read without locks.
//!
//! Host selects a service (exact, then `*.suffix`, then the `*` default); the service's
//! ordered rules are tried in turn and the first match wins; its target is one version or a
//! weighted split (sticky when the service says so).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{Config, ConfigError, ConfigErrors, RouteConfig, StringMatch};
use crate::measure::{Families, VersionMetrics};
use crate::mirror::MirrorRule;
use crate::split::WeightTable;
use crate::upstream::Upstream;

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// An immutable, fully resolved routing snapshot.
pub struct RouteTable {
    services: Vec<Service>,
    by_host: HashMap<String, usize>,
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
    /// The config this table was built from.
    pub config: Arc<Config>,
}

/// One service, resolved.
pub struct Service {
    /// Service name.
    pub name: String,
    /// Versions in config order; index 0 is the primary.
    pub versions: Vec<Version>,
    rules: Vec<Rule>,
    sticky: Option<StickyKey>,
    affinity: Option<Affinity>,
}

/// Session affinity while a canary takes a weighted share (Flagger's `sessionAffinity`).
struct Affinity {
    cookie_name: String,
    primary_cookie_name: Option<String>,
    token: String,
    /// The canary's index (the second version).
    canary: usize,
    /// The canary takes a share of the split right now.
    active: bool,
    set_canary: HeaderValue,
    set_primary: Option<HeaderValue>,
    attributes: String,
}

/// One version with its pool and measurement handles.
pub struct Version {
    /// Version name.
    pub name: String,
    /// Its endpoints' pools.
    pub upstream: Arc<Upstream>,
    /// Its measurement handles.
    pub metrics: Arc<VersionMetrics>,
    /// Its measurement handles for shadow (mirrored) traffic.
    pub mirror_metrics: Arc<VersionMetrics>,
}

/// One resolved rule.
pub struct Rule {
    matcher: Matcher,
    target: Target,
    /// Time allowed for response headers.
    pub timeout: Duration,
    /// Mirror settings.
    pub mirror: Option<MirrorRule>,
}

enum Target {
    One(usize),
    Split(WeightTable),
}

#[derive(Default)]
struct Matcher {
    path: Option<PathMatcher>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    cookies: Vec<(String, ValueMatcher)>,
}

enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

struct ValueMatcher {
    kind: ValueKind,
    invert: bool,
}

enum ValueKind {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Regex(regex::bytes::Regex),
    Present(bool),
}

enum StickyKey {
    Header(HeaderName),
    Cookie(String),
}

/// The parts of a request routing looks at.
pub struct RequestView<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Path without the query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// What routing decided.
pub struct Decision<'t> {
    /// The service.
    pub service: &'t Service,
    /// The rule that matched.
    pub rule: &'t Rule,
    /// The chosen version.
    pub version: &'t Version,
    /// A `Set-Cookie` for the response (session affinity).
    pub set_cookie: Option<HeaderValue>,
}

impl RouteTable {
    /// The service for a Host value (port and case ignored).
    pub fn service_for(&self, host: Option<&str>) -> Option<&Service> {
        let idx = host
            .map(strip_port)
            .and_then(|h| {
                if h.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.lookup(&h.to_ascii_lowercase())
                } else {
                    self.lookup(h)
                }
            })
            .or(self.default)?;
        self.services.get(idx)
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

    /// Routes a request: service by host, then the first matching rule, then its version.
    pub fn route<'t>(&'t self, host: Option<&str>, req: &RequestView<'_>) -> Option<Decision<'t>> {
        let service = self.service_for(host)?;
        let (rule, version, set_cookie) = service.choose(req)?;
        Some(Decision {
            service,
            rule,
            version: &service.versions[version],
            set_cookie,
        })
    }

    /// Resolved services.
    pub fn services(&self) -> &[Service] {
        &self.services
    }
}

impl Service {
    fn choose(&self, req: &RequestView<'_>) -> Option<(&Rule, usize, Option<HeaderValue>)> {
        let rule = self.rules.iter().find(|r| r.matcher.matches(req))?;
        let table = match &rule.target {
            Target::One(v) => return Some((rule, *v, self.expire_stale(req.headers))),
            Target::Split(table) => table,
        };
        if let Some(a) = self.affinity.as_ref().filter(|a| a.active) {
            let token = a.token.as_bytes();
            if cookie(req.headers, &a.cookie_name) == Some(token) {
                return Some((rule, a.canary, None));
            }
            if let Some(p) = &a.primary_cookie_name {
                if cookie(req.headers, p) == Some(token) {
                    return Some((rule, 0, None));
                }
            }
        }
        let version = match self.sticky.as_ref().and_then(|k| k.key(req.headers)) {
            Some(key) => table.pick_sticky(key),
            None => table.pick(),
        };
        let set_cookie = match self.affinity.as_ref().filter(|a| a.active) {
            Some(a) if version == a.canary => Some(a.set_canary.clone()),
            Some(a) if version == 0 => a
                .set_primary
                .clone()
                .or_else(|| self.expire_stale(req.headers)),
            Some(_) => None,
            None => self.expire_stale(req.headers),
        };
        Some((rule, version, set_cookie))
    }

    /// A canary cookie that no longer pins anyone (the canary is at weight 0, or the cookie
    /// is from an earlier rollout) is expired with `Max-Age=-1`.
    fn expire_stale(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let a = self.affinity.as_ref()?;
        let value = cookie(headers, &a.cookie_name)?;
        if a.active && value == a.token.as_bytes() {
            return None;
        }
        let value = String::from_utf8_lossy(value);
        HeaderValue::from_str(&format!(
            "{}={value}; Max-Age=-1{}",
            a.cookie_name, a.attributes
        ))
        .ok()
    }

    /// The version index by name.
    pub fn version_index(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| v.name == name)
    }
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

/// The value of a cookie, from any `cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

impl Matcher {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(p) = &self.path {
            let ok = match p {
                PathMatcher::Exact(s) => req.path == s,
                PathMatcher::Prefix(s) => req.path.starts_with(s.as_str()),
                PathMatcher::Regex(re) => re.is_match(req.path),
            };
            if !ok {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return false;
        }
        for (name, m) in &self.headers {
            let mut values = req
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes())
                .peekable();
            let found = values.peek().is_some();
            if !m.check(found, values) {
                return false;
            }
        }
        for (name, m) in &self.cookies {
            let value = cookie(req.headers, name);
            if !m.check(value.is_some(), value.into_iter()) {
                return false;
            }
        }
        true
    }
}

impl ValueMatcher {
    fn check<'a>(&self, present: bool, mut values: impl Iterator<Item = &'a [u8]>) -> bool {
        let hit = match &self.kind {
            ValueKind::Present(want) => present == *want,
            ValueKind::Exact(s) => values.any(|v| v == s.as_slice()),
            ValueKind::Prefix(s) => values.any(|v| v.starts_with(s)),
            ValueKind::Suffix(s) => values.any(|v| v.ends_with(s)),
            ValueKind::Regex(re) => values.any(|v| re.is_match(v)),
        };
        hit != self.invert
    }

    fn build(sm: &StringMatch) -> Result<ValueMatcher, String> {
        let anchored = |re: &str| format!("^(?:{re})$");
        let kind = if let Some(s) = &sm.exact {
            ValueKind::Exact(s.as_bytes().to_vec())
        } else if let Some(s) = &sm.prefix {
            ValueKind::Prefix(s.as_bytes().to_vec())
        } else if let Some(s) = &sm.suffix {
            ValueKind::Suffix(s.as_bytes().to_vec())
        } else if let Some(re) = &sm.regex {
            ValueKind::Regex(regex::bytes::Regex::new(&anchored(re)).map_err(|e| e.to_string())?)
        } else {
            ValueKind::Present(sm.present.unwrap_or(true))
        };
        Ok(ValueMatcher {
            kind,
            invert: sm.invert,
        })
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// (service, version).
type VersionKey = (String, String);
/// A version's pool and measurement handles.
type VersionParts = (Arc<Upstream>, Arc<VersionMetrics>, Arc<VersionMetrics>);

/// (canary revision, token, canary active) of a service's session affinity.
type AffinityToken = (Option<String>, String, bool);

/// Long-lived pools and metric handles, kept across route tables so a reload or a weight
/// change never resets a connection pool or a counter.
pub struct Resources {
    pub(crate) families: Families,
    versions: Mutex<HashMap<VersionKey, VersionParts>>,
    /// Per service: the mirror in-flight bound.
    mirror_slots: Mutex<HashMap<String, (usize, Arc<tokio::sync::Semaphore>)>>,
    /// Per service: (canary revision, affinity token, canary active).
    tokens: Mutex<HashMap<String, AffinityToken>>,
}

impl Resources {
    /// Empty resources with freshly registered metric families.
    pub fn new() -> Resources {
        Resources {
            families: Families::new(),
            versions: Mutex::new(HashMap::new()),
            mirror_slots: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The metric families.
    pub fn families(&self) -> &Families {
        &self.families
    }

    /// Builds a table from a validated config, reusing pools and metrics where unchanged.
    /// Nothing changes when it fails.
    pub fn build(&self, config: &Config) -> Result<RouteTable, ConfigErrors> {
        config.validate()?;
        let mut cache = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let mut errors = Vec::new();
        let mut services = Vec::with_capacity(config.services.len());
        let mut by_host = HashMap::new();
        let mut wildcards = Vec::new();
        let mut default = None;
        let mut created = Vec::new();
        for (i, svc) in config.services.iter().enumerate() {
            let mut versions = Vec::new();
            for (name, vcfg) in &svc.versions {
                let key = (svc.name.clone(), name.clone());
                let cached = cache
                    .get(&key)
                    .filter(|(u, _, _)| u.settings == *vcfg)
                    .cloned();
                let (upstream, metrics, mirror_metrics) = match cached {
                    Some(parts) => parts,
                    None => {
                        let upstream = match Upstream::new(vcfg) {
                            Ok(u) => Arc::new(u),
                            Err(message) => {
                                errors.push(ConfigError {
                                    path: format!("services[{i}].versions.{name}.endpoints"),
                                    message,
                                });
                                continue;
                            }
                        };
                        let (metrics, mirror_metrics) = match cache.get(&key) {
                            Some((_, m, mm)) => (m.clone(), mm.clone()),
                            None => (
                                Arc::new(self.families.version(
                                    &svc.name,
                                    &svc.namespace,
                                    svc.port,
                                    name,
                                    false,
                                )),
                                Arc::new(self.families.version(
                                    &svc.name,
                                    &svc.namespace,
                                    svc.port,
                                    name,
                                    true,
                                )),
                            ),
                        };
                        created.push((
                            key,
                            (upstream.clone(), metrics.clone(), mirror_metrics.clone()),
                        ));
                        (upstream, metrics, mirror_metrics)
                    }
                };
                versions.push(Version {
                    name: name.clone(),
                    upstream,
                    metrics,
                    mirror_metrics,
                });
            }
            let index = |v: &str| svc.versions.get_index_of(v);
            let defaults = [RouteConfig {
                to: svc.versions.keys().next().cloned(),
                ..RouteConfig::default()
            }];
            let routes: &[RouteConfig] = if svc.routes.is_empty() {
                &defaults
            } else {
                &svc.routes
            };
            let slots = self.mirror_slots(&svc.name, routes);
            let mirror_parts = MirrorParts {
                families: &self.families,
                service: &svc.name,
                slots,
            };
            let mut rules = Vec::new();
            for (r, route) in routes.iter().enumerate() {
                match build_rule(route, index, &mirror_parts) {
                    Ok(rule) => rules.push(rule),
                    Err((field, message)) => errors.push(ConfigError {
                        path: format!("services[{i}].routes[{r}]{field}"),
                        message,
                    }),
                }
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
            if svc.hosts.is_empty() {
                default = Some(i);
            }
            for host in &svc.hosts {
                let host = host.to_ascii_lowercase();
                if host == "*" {
                    default = Some(i);
                } else if let Some(suffix) = host.strip_prefix('*') {
                    wildcards.push((suffix.to_string(), i));
                } else {
                    by_host.insert(host, i);
                }
            }
            let mut service = Service {
                name: svc.name.clone(),
                versions,
                rules,
                sticky,
                affinity: None,
            };
            service.affinity = self.affinity(svc, &service);
            services.push(service);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Longest suffix first, so `*.a.example.com` wins over `*.example.com`.
        wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        cache.extend(created);
        // Forget versions that are gone.
        let live: std::collections::HashSet<(String, String)> = config
            .services
            .iter()
            .flat_map(|s| s.versions.keys().map(|v| (s.name.clone(), v.clone())))
            .collect();
        cache.retain(|key, (_, metrics, mirror_metrics)| {
            let keep = live.contains(key);
            if !keep {
                self.families.forget(metrics);
                self.families.forget(mirror_metrics);
            }
            keep
        });
        let table = RouteTable {
            services,
            by_host,
            wildcards,
            default,
            config: Arc::new(config.clone()),
        };
        table.publish_weights();
        Ok(table)
    }
}

struct MirrorParts<'a> {
    families: &'a Families,
    service: &'a str,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Resources {
    /// The service's mirror bound, kept across tables unless its size changes.
    fn mirror_slots(&self, service: &str, routes: &[RouteConfig]) -> Arc<tokio::sync::Semaphore> {
        let size = routes
            .iter()
            .filter_map(|r| r.mirror.as_ref().map(|m| m.max_in_flight))
            .max()
            .unwrap_or(1024);
        let mut slots = self.mirror_slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(service) {
            Some((n, s)) if *n == size => s.clone(),
            _ => {
                let s = Arc::new(tokio::sync::Semaphore::new(size));
                slots.insert(service.to_string(), (size, s.clone()));
                s
            }
        }
    }

    /// Session affinity for a service: the token changes with each rollout (a new canary
    /// revision, or the canary taking traffic again after weight 0).
    fn affinity(&self, cfg: &crate::config::ServiceConfig, svc: &Service) -> Option<Affinity> {
        let sa = cfg.session_affinity.as_ref()?;
        let canary = 1;
        let canary_cfg = cfg.versions.get_index(canary)?.1;
        let active = svc.weights().get(canary).is_some_and(|w| *w > 0)
            && svc
                .rules
                .iter()
                .any(|r| matches!(r.target, Target::Split(_)));
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let token = match tokens.get(&cfg.name) {
            Some((rev, token, was_active))
                if *rev == canary_cfg.revision && (*was_active || !active) =>
            {
                token.clone()
            }
            _ => crate::headers::request_id().replace('-', ""),
        };
        tokens.insert(
            cfg.name.clone(),
            (canary_cfg.revision.clone(), token.clone(), active),
        );
        let mut attributes = String::new();
        if let Some(d) = &sa.domain {
            attributes.push_str(&format!("; Domain={d}"));
        }
        if let Some(p) = &sa.path {
            attributes.push_str(&format!("; Path={p}"));
        }
        if sa.http_only {
            attributes.push_str("; HttpOnly");
        }
        if sa.secure {
            attributes.push_str("; Secure");
        }
        if let Some(s) = &sa.same_site {
            attributes.push_str(&format!("; SameSite={s}"));
        }
        let set_canary = HeaderValue::from_str(&format!(
            "{}={token}; Max-Age={}{attributes}",
            sa.cookie_name, sa.max_age
        ))
        .ok()?;
        let set_primary = sa.primary_cookie_name.as_ref().and_then(|p| {
            let interval = cfg.analysis_interval().0.as_secs().max(1);
            HeaderValue::from_str(&format!("{p}={token}; Max-Age={interval}{attributes}")).ok()
        });
        Some(Affinity {
            cookie_name: sa.cookie_name.clone(),
            primary_cookie_name: sa.primary_cookie_name.clone(),
            token,
            canary,
            active,
            set_canary,
            set_primary,
            attributes,
        })
    }
}

impl Default for Resources {
    fn default() -> Self {
        Resources::new()
    }
}

impl RouteTable {
    /// Sets `weir_route_weight` from each service's catch-all rule.
    fn publish_weights(&self) {
        for svc in &self.services {
            let weights = svc.weights();
            for (v, version) in svc.versions.iter().enumerate() {
                version.metrics.weight.set(i64::from(weights[v]));
            }
        }
    }
}

impl Service {
    /// The weight of each version (by index) in the first rule without a match condition,
    /// the one that carries ordinary traffic.
    pub fn weights(&self) -> Vec<u32> {
        let mut out = vec![0; self.versions.len()];
        if let Some(rule) = self.rules.iter().find(|r| r.matcher.is_empty()) {
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
}

impl Matcher {
    fn is_empty(&self) -> bool {
        self.path.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
            && self.cookies.is_empty()
    }
}

fn build_rule(
    route: &RouteConfig,
    index: impl Fn(&str) -> Option<usize>,
    parts: &MirrorParts<'_>,
) -> Result<Rule, (String, String)> {
    let missing = |v: &str| (String::new(), format!("unknown version {v:?}"));
    let target = match (&route.to, &route.split) {
        (Some(to), None) => Target::One(index(to).ok_or_else(|| missing(to))?),
        (None, Some(split)) => {
            let mut weights = Vec::new();
            for (v, w) in split {
                weights.push((index(v).ok_or_else(|| missing(v))?, *w));
            }
            Target::Split(
                WeightTable::new(&weights, 0)
                    .ok_or((".split".to_string(), "the weights sum to 0".to_string()))?,
            )
        }
        _ => {
            return Err((
                String::new(),
                "a route needs exactly one of `to` or `split`".into(),
            ))
        }
    };
    let mut matcher = Matcher::default();
    if let Some(m) = &route.matches {
        if let Some(p) = &m.path {
            matcher.path = Some(if let Some(s) = &p.exact {
                PathMatcher::Exact(s.clone())
            } else if let Some(s) = &p.prefix {
                PathMatcher::Prefix(s.clone())
            } else if let Some(re) = &p.regex {
                PathMatcher::Regex(
                    regex::Regex::new(&format!("^(?:{re})$"))
                        .map_err(|e| (".match.path.regex".to_string(), e.to_string()))?,
                )
            } else {
                return Err((
                    ".match.path".into(),
                    "set exactly one of exact, prefix or regex".into(),
                ));
            });
        }
        if let Some(methods) = &m.method {
            for method in methods.to_vec() {
                matcher
                    .methods
                    .push(Method::from_bytes(method.as_bytes()).map_err(|_| {
                        (
                            ".match.method".to_string(),
                            format!("{method:?} is not an HTTP method"),
                        )
                    })?);
            }
        }
        for (name, sm) in &m.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                (
                    format!(".match.headers.{name}"),
                    "not a valid header name".to_string(),
                )
            })?;
            let vm = ValueMatcher::build(sm).map_err(|e| (format!(".match.headers.{name}"), e))?;
            matcher.headers.push((header, vm));
        }
        for (name, sm) in &m.cookies {
            let vm = ValueMatcher::build(sm).map_err(|e| (format!(".match.cookies.{name}"), e))?;
            matcher.cookies.push((name.clone(), vm));
        }
    }
    let mirror = match &route.mirror {
        Some(m) if m.percent > 0.0 => {
            let version = index(&m.version).ok_or_else(|| missing(&m.version))?;
            let skipped = crate::mirror::SKIP_REASONS.map(|r| {
                parts.families.mirror_skipped.with_label_values(&[
                    parts.service,
                    m.version.as_str(),
                    r,
                ])
            });
            let comparisons = crate::mirror::COMPARISON_RESULTS.map(|r| {
                parts
                    .families
                    .mirror_comparisons
                    .with_label_values(&[parts.service, r])
            });
            Some(MirrorRule {
                version,
                percent: m.percent,
                compare: m.compare,
                max_body: m.max_body_bytes,
                timeout: m.timeout.0,
                slots: parts.slots.clone(),
                skipped,
                comparisons,
            })
        }
        _ => None,
    };
    Ok(Rule {
        matcher,
        target,
        timeout: route.timeout.map(|d| d.0).unwrap_or(DEFAULT_ROUTE_TIMEOUT),
        mirror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn table(yaml: &str) -> RouteTable {
        let cfg = Config::parse(yaml).expect("valid test config");
        Resources::new().build(&cfg).expect("builds")
    }

    fn pick(
        t: &RouteTable,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let view = RequestView {
            method: &method,
            path,
            headers: &map,
        };
        t.route(Some(host), &view)
            .map(|d| format!("{}/{}", d.service.name, d.version.name))
    }

    const RULES: &str = r#"
services:
  - name: shop
    hosts: [shop.example.com, "*.shop.example.com"]
    versions:
      primary: { endpoints: ["127.0.0.1:1"] }
      canary: { endpoints: ["127.0.0.1:2"] }
    routes:
      - match: { headers: { x-canary: { exact: always } } }
        to: canary
      - match: { cookies: { flavour: { regex: "choc.*" } } }
        to: canary
      - match: { path: { prefix: /api/v2 }, method: [POST, PUT] }
        to: canary
      - match: { path: { regex: "/items/[0-9]+" }, headers: { x-beta: { present: true } } }
        to: canary
      - match: { headers: { user-agent: { suffix: Firefox, invert: true }, x-region: { prefix: eu- } } }
        to: canary
      - to: primary
  - name: fallback
    hosts: ["*"]
    versions:
      v1: { endpoints: ["127.0.0.1:3"] }
"#;

    #[test]
    fn header_cookie_path_and_method_rules_first_match_wins() {
        let t = table(RULES);
        let h = "shop.example.com";
        assert_eq!(
            pick(&t, h, "GET", "/", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/", &[("x-canary", "always")]).as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/", &[("x-canary", "never")]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/", &[("cookie", "a=1; flavour=chocolate")]).as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/", &[("cookie", "flavour=vanilla")]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "POST", "/api/v2/x", &[]).as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/api/v2/x", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/items/42", &[("x-beta", "")]).as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/items/42x", &[("x-beta", "1")]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, h, "GET", "/items/42", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(
                &t,
                h,
                "GET",
                "/",
                &[("user-agent", "Chrome"), ("x-region", "eu-west")]
            )
            .as_deref(),
            Some("shop/canary")
        );
        assert_eq!(
            pick(
                &t,
                h,
                "GET",
                "/",
                &[("user-agent", "Mozilla Firefox"), ("x-region", "eu-west")]
            )
            .as_deref(),
            Some("shop/primary")
        );
    }

    #[test]
    fn hosts_select_services_with_wildcards_ports_case_and_default() {
        let t = table(RULES);
        assert_eq!(
            pick(&t, "SHOP.example.com:8080", "GET", "/", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, "eu.shop.example.com", "GET", "/", &[]).as_deref(),
            Some("shop/primary")
        );
        assert_eq!(
            pick(&t, "other.example.com", "GET", "/", &[]).as_deref(),
            Some("fallback/v1")
        );
        assert_eq!(
            pick(&t, "[::1]:80", "GET", "/", &[]).as_deref(),
            Some("fallback/v1")
        );
    }

    #[test]
    fn no_default_and_no_matching_rule_route_nowhere() {
        let t = table(
            r#"
services:
  - name: a
    hosts: [a]
    versions: { v1: { endpoints: ["127.0.0.1:1"] } }
    routes: [ { match: { path: { exact: /only } }, to: v1 } ]
  - name: b
    hosts: [b]
    versions: { v1: { endpoints: ["127.0.0.1:1"] } }
"#,
        );
        assert_eq!(pick(&t, "nowhere", "GET", "/", &[]), None);
        assert_eq!(pick(&t, "a", "GET", "/other", &[]), None);
        assert_eq!(pick(&t, "a", "GET", "/only", &[]).as_deref(), Some("a/v1"));
        assert_eq!(
            pick(&t, "b", "GET", "/anything", &[]).as_deref(),
            Some("b/v1")
        );
    }

    #[test]
    fn sticky_cookie_keeps_a_user_on_one_version() {
        let t = table(
            r#"
services:
  - name: a
    versions: { primary: { endpoints: ["127.0.0.1:1"] }, canary: { endpoints: ["127.0.0.1:2"] } }
    routes: [ { split: { primary: 50, canary: 50 } } ]
    sticky: { cookie: user }
"#,
        );
        for user in 0..200 {
            let cookie = format!("user={user}");
            let first = pick(&t, "a", "GET", "/", &[("cookie", &cookie)]);
            for _ in 0..5 {
                assert_eq!(pick(&t, "a", "GET", "/", &[("cookie", &cookie)]), first);
            }
        }
    }

    #[test]
    fn cookie_parsing_handles_spaces_and_many_headers() {
        let mut map = HeaderMap::new();
        map.append(http::header::COOKIE, HeaderValue::from_static("a=1;b = 2"));
        map.append(http::header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(cookie(&map, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&map, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&map, "d"), None);
    }

    #[test]
    fn weights_are_published_per_version() {
        let t = table(
            r#"
services:
  - name: a
    versions: { primary: { endpoints: ["127.0.0.1:1"] }, canary: { endpoints: ["127.0.0.1:2"] } }
    routes: [ { match: { headers: { x: {} } }, to: canary }, { split: { primary: 999, canary: 1 } } ]
"#,
        );
        assert_eq!(t.services()[0].weights(), vec![999, 1]);
    }
}
