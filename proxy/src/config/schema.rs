//! The data plane's part of weir.yaml, as serde reads it: services, versions, routes,
//! matchers, mirrors, stickiness and session affinity.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::UpstreamTls;

/// One service: the hosts it answers, its versions and its routes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name (used in metric labels and the Envoy cluster name).
    pub name: String,
    /// Namespace (the Envoy cluster name is `<namespace>_<name>-<version>_<port>`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Host names this service answers; `*` (or no hosts at all) makes it the default
    /// service, `*.example.com` matches any subdomain.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The service port, used in the Envoy cluster name.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Versions by name; the first one is the primary.
    pub versions: IndexMap<String, VersionConfig>,
    /// Ordered rules, first match wins. Without rules, all traffic goes to the primary.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Sticky assignment: a header or cookie value decides the version by hashing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyConfig>,
    /// Flagger-style session affinity during a weighted canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinityConfig>,
}

fn default_namespace() -> String {
    "default".into()
}
fn default_port() -> u16 {
    80
}

/// One version of a service (primary, canary, ...).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionConfig {
    /// `host:port` addresses, used round robin.
    pub endpoints: Vec<String>,
    /// The revision running at these endpoints (the controller watches it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Speak HTTP/2 (prior knowledge) to this version's endpoints.
    #[serde(default)]
    pub http2: bool,
    /// Time allowed to open a connection to an endpoint.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Pooled idle connections are closed after this long; keep it below the upstream's
    /// own keep-alive timeout so weir never reuses a connection the upstream is closing.
    #[serde(default = "default_upstream_idle")]
    pub idle_timeout: Dur,
    /// Most idle pooled connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// Speak TLS to the endpoints (verified against `ca` and `serverName`; a client
    /// certificate for mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

impl VersionConfig {
    /// Endpoints with every other setting at its default.
    pub fn at(endpoints: Vec<String>) -> VersionConfig {
        VersionConfig {
            endpoints,
            revision: None,
            http2: false,
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_upstream_idle(),
            max_idle_per_endpoint: default_max_idle(),
            tls: None,
        }
    }

    /// True when `other` reaches the same endpoints the same way, so its connection pools
    /// can be kept (a new revision at the same endpoints keeps them).
    pub(crate) fn same_connections(&self, other: &VersionConfig) -> bool {
        self.endpoints == other.endpoints
            && self.http2 == other.http2
            && self.connect_timeout == other.connect_timeout
            && self.idle_timeout == other.idle_timeout
            && self.max_idle_per_endpoint == other.max_idle_per_endpoint
            && self.tls == other.tls
    }
}

fn default_connect_timeout() -> Dur {
    Dur::secs(2)
}
fn default_upstream_idle() -> Dur {
    Dur::secs(3)
}
fn default_max_idle() -> usize {
    256
}

/// A routing rule: an optional match and either one version or a weighted split.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// Optional name, shown in /config and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions that must all hold; absent matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<MatchConfig>,
    /// Send matching requests to this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Split matching requests by weight; a version's share is its weight over the sum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<IndexMap<String, u32>>,
    /// Mirror a share of matching requests to another version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// Time allowed from the end of the request body to the end of the response (default
    /// 15s, Envoy's route timeout); `0s` turns it off (long streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// An exchange in which nothing moves for this long is cut (default 5m, Envoy's
    /// stream idle timeout); blamed on the side weir was waiting on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// HTTP/1.1 upgrade protocols this rule lets through (Envoy's `upgrade_configs`);
    /// default `[websocket]`. `h2c` is never forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrades: Option<Vec<String>>,
}

/// The upgrades a rule allows when it names none.
pub const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];

/// Request conditions of a rule; all must hold.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchConfig {
    /// Path condition (query excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Allowed methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<OneOrMany>,
    /// Header conditions by header name.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, StringMatch>,
    /// Cookie conditions by cookie name.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub cookies: IndexMap<String, StringMatch>,
}

/// Path condition: exactly one of exact, prefix or regex (whole path).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Header or cookie value condition: at most one of exact, prefix, suffix, regex or
/// present (none means present), optionally inverted. Flagger's (Istio's) StringMatch is
/// the same shape, so an analysis `match:` uses this type too.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        let slice: &[String] = match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        };
        slice.iter()
    }
}

/// Mirror a share of a rule's traffic to a shadow version.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    /// The shadow version.
    pub version: String,
    /// Share of requests mirrored, 0 to 100 (fractions allowed).
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
    /// Compare the shadow's answer with the user's (status and a hash of the body).
    #[serde(default)]
    pub compare: bool,
    /// Largest request body copied for the shadow; larger requests are not mirrored.
    #[serde(default = "default_mirror_body")]
    pub max_body_bytes: usize,
    /// Most mirror requests in flight for the service; past that a mirror is dropped.
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: usize,
    /// Time allowed for the shadow's whole answer.
    #[serde(default = "default_mirror_timeout")]
    pub timeout: Dur,
}

fn default_mirror_percent() -> f64 {
    100.0
}
fn default_mirror_body() -> usize {
    1024 * 1024
}
fn default_mirror_in_flight() -> usize {
    1024
}
fn default_mirror_timeout() -> Dur {
    Dur::secs(5)
}

impl MirrorConfig {
    /// Mirror `percent` of the traffic to `version` with the default bounds.
    pub fn to(version: &str, percent: f64) -> MirrorConfig {
        MirrorConfig {
            version: version.to_string(),
            percent,
            compare: false,
            max_body_bytes: default_mirror_body(),
            max_in_flight: default_mirror_in_flight(),
            timeout: default_mirror_timeout(),
        }
    }
}

/// Where the sticky key comes from: exactly one of header or cookie.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// Flagger's `sessionAffinity`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionAffinityConfig {
    pub cookie_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_cookie_name: Option<String>,
    #[serde(default = "default_max_age")]
    pub max_age: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub http_only: bool,
    #[serde(default)]
    pub secure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
    /// Max-Age of the primary cookie in seconds: Flagger's is the analysis interval, which
    /// weir fills in for a service with an `analysis` (default 60).
    #[serde(default = "default_primary_max_age")]
    pub primary_max_age: u64,
}

impl SessionAffinityConfig {
    /// Max-Age of the canary cookie when none is given: a day.
    pub const DEFAULT_MAX_AGE: u64 = 86400;
    /// Max-Age of the primary cookie when none is given.
    pub const DEFAULT_PRIMARY_MAX_AGE: u64 = 60;
}

fn default_max_age() -> u64 {
    SessionAffinityConfig::DEFAULT_MAX_AGE
}
fn default_primary_max_age() -> u64 {
    SessionAffinityConfig::DEFAULT_PRIMARY_MAX_AGE
}
