//! weir.yaml: the configuration file, its validation and its error messages.
//!
//! Every error names the field path and the problem
//! (`services[0].routes[1].match.headers.x-canary.regex: unclosed group`), and every error
//! in a file is reported, not only the first.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole weir.yaml.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Proxy listener (HTTP/1.1 and h2c on one port).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin listener: /metrics /ready /live /config.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// gRPC control listener (used by the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// Rollout state file (used by the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Connection limits and timeouts of the proxy listener.
    #[serde(default)]
    pub limits: Limits,
    /// The services behind the proxy.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Alert providers an analysis `alerts[].providerRef` names (Flagger's AlertProvider).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_providers: Vec<AlertProviderConfig>,
}

/// Where alerts go: Flagger's AlertProvider spec, plus a generic JSON webhook.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertProviderConfig {
    /// The name `providerRef.name` uses.
    pub name: String,
    /// Optional namespace `providerRef.namespace` uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// slack, msteams, discord, rocket, gchat or webhook.
    #[serde(rename = "type")]
    pub kind: String,
    /// The URL alerts are posted to.
    pub address: String,
    /// Slack-style channel (default `general`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Slack-style user name (default `flagger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin() -> String {
    "127.0.0.1:9901".into()
}

/// Listener limits: header sizes, slowloris and idle timeouts, drain.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line plus headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431.
    pub max_headers: usize,
    /// Time allowed for a client to send a complete request head (slowloris guard).
    pub header_read_timeout: Dur,
    /// A client connection with no request in flight is closed after this long.
    pub idle_timeout: Dur,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub drain_timeout: Dur,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
            drain_timeout: Dur::secs(30),
            max_concurrent_streams: 1024,
        }
    }
}

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
    /// Flagger's `analysis:` block, read by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<serde_json::Value>,
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
    /// Time allowed for the upstream to answer with response headers (default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// Request conditions of a rule.
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
/// present (none means present), optionally inverted.
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
    /// The values as a slice-like list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
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
    /// Mirror everything to `version` with the default bounds.
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
}

fn default_max_age() -> u64 {
    86400
}

/// A duration written as Flagger and Go write them: `500ms`, `15s`, `1m`, `1h`, `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Whole seconds.
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    /// Parses `500ms`, `15s`, `1m`, `2h`, `1m30s`, `0`.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        let bad = || {
            format!("invalid duration {s:?}: expected a number and a unit (ms, s, m, h), like 15s or 1m30s")
        };
        let mut total = Duration::ZERO;
        let mut rest = s;
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            if num_len == 0 {
                return Err(bad());
            }
            let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            total += Duration::from_secs_f64(value * scale);
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) || ms == 0 {
            write!(f, "{ms}ms")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One problem in a config, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path, like `services[0].routes[1].split`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} error{} in config", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single error.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    /// Parses and validates YAML (or JSON) text, reporting every error found.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let value: serde_json::Value = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigErrors::one("", format!("not valid YAML: {e}")))?;
        Config::from_value(value)
    }

    /// Decodes and validates an already parsed document.
    pub fn from_value(mut value: serde_json::Value) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        // serde stops at the first error; to report them all, each bad field is recorded,
        // removed, and decoding retried, so later fields are still checked.
        let mut decoded = None;
        let mut removed: Option<(String, String)> = None;
        for _ in 0..100 {
            match serde_path_to_error::deserialize::<_, Config>(&value) {
                Ok(cfg) => {
                    decoded = Some(cfg);
                    break;
                }
                Err(e) => {
                    let segments: Vec<serde_path_to_error::Segment> =
                        e.path().iter().cloned().collect();
                    let message = e.inner().to_string();
                    let path = render_path(&segments);
                    if let Some((parent, key)) = &removed {
                        // A required field removed in the previous round: already reported.
                        if *parent == path && message.contains(&format!("missing field `{key}`")) {
                            break;
                        }
                    }
                    let unknown = unknown_field(&message);
                    let mut target = segments.clone();
                    if let Some(field) = &unknown {
                        if !matches!(target.last(), Some(serde_path_to_error::Segment::Map { key }) if key == field)
                        {
                            target.push(serde_path_to_error::Segment::Map { key: field.clone() });
                        }
                    }
                    let shown = render_path(&target);
                    errors.push(ConfigError {
                        path: shown,
                        message: clean_serde_message(&message),
                    });
                    match remove_at(&mut value, &target) {
                        Some(key) => {
                            removed = Some((render_path(&target[..target.len() - 1]), key))
                        }
                        None => break,
                    }
                }
            }
        }
        if let Some(cfg) = &decoded {
            cfg.validate_into(&mut errors);
        }
        match decoded {
            Some(cfg) if errors.is_empty() => Ok(cfg),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Checks everything serde cannot: addresses, names, weights, regexes, references.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        self.validate_into(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn validate_into(&self, errors: &mut Vec<ConfigError>) {
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
        for (field, addr) in [("listen", &self.listen), ("admin", &self.admin)] {
            if addr.parse::<SocketAddr>().is_err() {
                err(field.into(), format!("{addr:?} is not an ip:port address"));
            }
        }
        if let Some(control) = &self.control {
            if control.parse::<SocketAddr>().is_err() {
                err(
                    "control".into(),
                    format!("{control:?} is not an ip:port address"),
                );
            }
        }
        if self.limits.max_headers == 0 {
            err("limits.maxHeaders".into(), "must be at least 1".into());
        }
        if self.limits.max_header_bytes < 1024 {
            err(
                "limits.maxHeaderBytes".into(),
                "must be at least 1024".into(),
            );
        }
        let mut names = std::collections::HashMap::new();
        let mut hosts = std::collections::HashMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            let p = format!("services[{i}]");
            if svc.name.is_empty()
                || !svc
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                err(
                    format!("{p}.name"),
                    format!(
                        "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                        svc.name
                    ),
                );
            }
            if let Some(j) = names.insert(svc.name.clone(), i) {
                err(
                    format!("{p}.name"),
                    format!("service {:?} is already defined at services[{j}]", svc.name),
                );
            }
            if svc.hosts.is_empty() {
                if let Some(j) = hosts.insert("*".to_string(), i) {
                    err(
                        format!("{p}.hosts"),
                        format!(
                            "no hosts makes this the default service, but services[{j}] already is"
                        ),
                    );
                }
            }
            for (h, host) in svc.hosts.iter().enumerate() {
                let key = host.to_ascii_lowercase();
                if let Some(j) = hosts.insert(key, i) {
                    err(
                        format!("{p}.hosts[{h}]"),
                        format!("host {host:?} is already served by services[{j}]"),
                    );
                }
            }
            if svc.versions.is_empty() {
                err(
                    format!("{p}.versions"),
                    "a service needs at least one version".into(),
                );
            }
            for (name, v) in &svc.versions {
                let vp = format!("{p}.versions.{name}");
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                {
                    err(
                        vp.clone(),
                        "a version name must be letters, digits, '-', '_' or '.'".into(),
                    );
                }
                if v.endpoints.is_empty() {
                    err(
                        format!("{vp}.endpoints"),
                        "a version needs at least one endpoint".into(),
                    );
                }
                for (e, ep) in v.endpoints.iter().enumerate() {
                    if let Err(m) = check_endpoint(ep) {
                        err(format!("{vp}.endpoints[{e}]"), m);
                    }
                }
                if v.connect_timeout.0.is_zero() {
                    err(
                        format!("{vp}.connectTimeout"),
                        "must be greater than 0".into(),
                    );
                }
            }
            let known = |v: &str| svc.versions.contains_key(v);
            for (r, route) in svc.routes.iter().enumerate() {
                let rp = format!("{p}.routes[{r}]");
                match (&route.to, &route.split) {
                    (Some(_), Some(_)) => {
                        err(rp.clone(), "set either `to` or `split`, not both".into())
                    }
                    (None, None) => err(
                        rp.clone(),
                        "a route needs `to` (one version) or `split` (weights)".into(),
                    ),
                    (Some(to), None) => {
                        if !known(to) {
                            err(format!("{rp}.to"), unknown_version(to, svc));
                        }
                    }
                    (None, Some(split)) => {
                        if split.is_empty() {
                            err(
                                format!("{rp}.split"),
                                "a split needs at least one version".into(),
                            );
                        }
                        let mut sum: u64 = 0;
                        for (v, w) in split {
                            if !known(v) {
                                err(format!("{rp}.split.{v}"), unknown_version(v, svc));
                            }
                            sum += u64::from(*w);
                        }
                        if !split.is_empty() && sum == 0 {
                            err(
                                format!("{rp}.split"),
                                "the weights sum to 0; at least one must be positive".into(),
                            );
                        }
                        if sum > u64::from(u32::MAX) {
                            err(
                                format!("{rp}.split"),
                                "the weights sum past 4294967295".into(),
                            );
                        }
                    }
                }
                if let Some(m) = &route.mirror {
                    if !known(&m.version) {
                        err(
                            format!("{rp}.mirror.version"),
                            unknown_version(&m.version, svc),
                        );
                    }
                    if !(0.0..=100.0).contains(&m.percent) || m.percent.is_nan() {
                        err(
                            format!("{rp}.mirror.percent"),
                            format!("{} is not between 0 and 100", m.percent),
                        );
                    }
                }
                if let Some(t) = route.timeout {
                    if t.0.is_zero() {
                        err(format!("{rp}.timeout"), "must be greater than 0".into());
                    }
                }
                if let Some(m) = &route.matches {
                    let mp = format!("{rp}.match");
                    if let Some(path) = &m.path {
                        let set = [
                            path.exact.is_some(),
                            path.prefix.is_some(),
                            path.regex.is_some(),
                        ];
                        if set.iter().filter(|b| **b).count() != 1 {
                            err(
                                format!("{mp}.path"),
                                "set exactly one of exact, prefix or regex".into(),
                            );
                        }
                        if let Some(re) = &path.regex {
                            if let Err(e) = regex::Regex::new(re) {
                                err(format!("{mp}.path.regex"), regex_message(&e));
                            }
                        }
                        for s in [&path.exact, &path.prefix].into_iter().flatten() {
                            if !s.starts_with('/') {
                                err(format!("{mp}.path"), format!("{s:?} must start with '/'"));
                            }
                        }
                    }
                    if let Some(methods) = &m.method {
                        for (k, method) in methods.to_vec().iter().enumerate() {
                            if http::Method::from_bytes(method.as_bytes()).is_err() {
                                err(
                                    format!("{mp}.method[{k}]"),
                                    format!("{method:?} is not an HTTP method"),
                                );
                            }
                        }
                    }
                    for (kind, map) in [("headers", &m.headers), ("cookies", &m.cookies)] {
                        for (name, sm) in map {
                            let sp = format!("{mp}.{kind}.{name}");
                            if kind == "headers"
                                && http::HeaderName::from_bytes(name.as_bytes()).is_err()
                            {
                                err(sp.clone(), format!("{name:?} is not a valid header name"));
                            }
                            check_string_match(sm, &sp, &mut err);
                        }
                    }
                }
            }
            if let Some(s) = &svc.sticky {
                if s.header.is_some() == s.cookie.is_some() {
                    err(
                        format!("{p}.sticky"),
                        "set exactly one of header or cookie".into(),
                    );
                }
                if let Some(h) = &s.header {
                    if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                        err(
                            format!("{p}.sticky.header"),
                            format!("{h:?} is not a valid header name"),
                        );
                    }
                }
            }
            if let Some(sa) = &svc.session_affinity {
                if sa.cookie_name.is_empty() {
                    err(
                        format!("{p}.sessionAffinity.cookieName"),
                        "must not be empty".into(),
                    );
                }
                if let Some(ss) = &sa.same_site {
                    if !["Strict", "Lax", "None"].contains(&ss.as_str()) {
                        err(
                            format!("{p}.sessionAffinity.sameSite"),
                            format!("{ss:?} is not Strict, Lax or None"),
                        );
                    }
                }
            }
        }
    }

    /// The service with this name.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The rules a service's weighted split applies to: every `split` rule, or, when there
/// is none, the first rule without a match condition (made a split rule) or a new
/// catch-all rule at the end. Callers set the weights on what it yields.
pub fn weighted_rules(routes: &mut Vec<RouteConfig>) -> impl Iterator<Item = &mut RouteConfig> {
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

impl ServiceConfig {
    /// `analysis.interval` (Flagger's default 1m when absent or unreadable).
    pub fn analysis_interval(&self) -> Dur {
        self.analysis
            .as_ref()
            .and_then(|a| a.get("interval"))
            .and_then(|i| i.as_str())
            .and_then(|i| Dur::parse(i).ok())
            .unwrap_or(Dur::secs(60))
    }
}

impl Config {
    /// The service with this name (mutable).
    pub fn service_mut(&mut self, name: &str) -> Option<&mut ServiceConfig> {
        self.services.iter_mut().find(|s| s.name == name)
    }
}

fn check_string_match(sm: &StringMatch, sp: &str, err: &mut impl FnMut(String, String)) {
    let set = [
        sm.exact.is_some(),
        sm.prefix.is_some(),
        sm.suffix.is_some(),
        sm.regex.is_some(),
        sm.present.is_some(),
    ];
    if set.iter().filter(|b| **b).count() > 1 {
        err(
            sp.into(),
            "set at most one of exact, prefix, suffix, regex or present".into(),
        );
    }
    if let Some(re) = &sm.regex {
        if let Err(e) = regex::bytes::Regex::new(re) {
            err(format!("{sp}.regex"), regex_message(&e));
        }
    }
}

fn unknown_version(v: &str, svc: &ServiceConfig) -> String {
    let known: Vec<&str> = svc.versions.keys().map(String::as_str).collect();
    format!(
        "unknown version {v:?} (the service has {})",
        known.join(", ")
    )
}

/// The short reason of a regex error, like `unclosed group`.
pub fn regex_message(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => s
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .unwrap_or(s)
            .to_string(),
        other => other.to_string(),
    }
}

fn check_endpoint(ep: &str) -> Result<(), String> {
    let (host, port) = ep
        .rsplit_once(':')
        .ok_or_else(|| format!("{ep:?} is not host:port"))?;
    if host.is_empty() {
        return Err(format!("{ep:?} has no host"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{ep:?} has no valid port"))?;
    if ep.contains('/') {
        return Err(format!(
            "{ep:?} must be host:port, without a scheme or path"
        ));
    }
    Ok(())
}

fn render_path(segments: &[serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    out
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn clean_serde_message(message: &str) -> String {
    if let Some(field) = unknown_field(message) {
        let expected = message
            .split_once(", expected ")
            .map(|(_, e)| e)
            .unwrap_or("");
        return format!("unknown field `{field}` (expected {expected})");
    }
    message.to_string()
}

/// Removes the node at `path`; returns the removed key, or None when it cannot.
fn remove_at(
    value: &mut serde_json::Value,
    path: &[serde_path_to_error::Segment],
) -> Option<String> {
    use serde_path_to_error::Segment;
    let (last, parents) = path.split_last()?;
    let mut node = value;
    for s in parents {
        node = match s {
            Segment::Seq { index } => node.get_mut(*index)?,
            Segment::Map { key } => node.get_mut(key.as_str())?,
            _ => return None,
        };
    }
    match last {
        Segment::Map { key } => node
            .as_object_mut()?
            .remove(key.as_str())
            .map(|_| key.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_YAML: &str = r#"
listen: 127.0.0.1:8080
admin: 127.0.0.1:9901
control: 127.0.0.1:9090
state: ./weir-state.json
services:
  - name: podinfo
    namespace: test
    hosts: ["podinfo", "podinfo.test"]
    port: 9898
    versions:
      primary: { endpoints: ["127.0.0.1:18081"] }
      canary:  { endpoints: ["127.0.0.1:18082"], revision: "5.0.1" }
    routes:
      - match: { headers: { x-canary: { exact: always } } }
        to: canary
      - split: { primary: 90, canary: 10 }
        mirror: { version: canary, percent: 0 }
    sessionAffinity: { cookieName: canary-cookie, maxAge: 86400 }
    analysis:
      interval: 15s
      threshold: 5
      maxWeight: 50
      stepWeight: 5
      metrics:
        - name: request-success-rate
          thresholdRange: { min: 99 }
          interval: 1m
      webhooks:
        - name: smoke
          type: pre-rollout
          url: http://127.0.0.1:8888/
          timeout: 5s
"#;

    #[test]
    fn design_example_parses_as_written() {
        let cfg = Config::parse(DESIGN_YAML).expect("the design's weir.yaml is valid");
        let svc = &cfg.services[0];
        assert_eq!(
            svc.versions.keys().collect::<Vec<_>>(),
            ["primary", "canary"]
        );
        assert_eq!(svc.routes[1].split.as_ref().map(|s| s["canary"]), Some(10));
        assert_eq!(svc.versions["canary"].revision.as_deref(), Some("5.0.1"));
        assert!(svc.analysis.is_some());
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(Dur::parse("15s").map(|d| d.0), Ok(Duration::from_secs(15)));
        assert_eq!(
            Dur::parse("500ms").map(|d| d.0),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            Dur::parse("1m30s").map(|d| d.0),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(Dur::parse("2h").map(|d| d.0), Ok(Duration::from_secs(7200)));
        assert!(Dur::parse("15").is_err());
        assert!(Dur::parse("s").is_err());
        assert!(Dur::parse("3 days").is_err());
        assert_eq!(Dur::secs(90).to_string(), "90s");
        assert_eq!(Dur::secs(120).to_string(), "2m");
    }

    fn errors_of(yaml: &str) -> Vec<String> {
        match Config::parse(yaml) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn regex_error_names_the_field_path_and_problem() {
        let errs = errors_of(
            r#"
services:
  - name: podinfo
    versions: { primary: { endpoints: ["127.0.0.1:1"] } }
    routes:
      - to: primary
      - match: { headers: { x-canary: { regex: "(abc" } } }
        to: primary
"#,
        );
        assert_eq!(
            errs,
            ["services[0].routes[1].match.headers.x-canary.regex: unclosed group"]
        );
    }

    #[test]
    fn every_error_is_reported_not_only_the_first() {
        let errs = errors_of(
            r#"
listen: nowhere
bogus: 1
services:
  - name: podinfo
    colour: blue
    versions:
      primary: { endpoints: ["127.0.0.1:1"], connectTimeout: "soon" }
      canary: { endpoints: [] }
    routes:
      - split: { primary: 0, canary: 0 }
      - to: nightly
      - to: primary
        split: { primary: 1 }
"#,
        );
        let joined = errs.join("\n");
        for want in [
            "bogus: unknown field `bogus`",
            "services[0].colour: unknown field `colour`",
            "services[0].versions.primary.connectTimeout: invalid duration \"soon\"",
            "listen: \"nowhere\" is not an ip:port address",
            "services[0].versions.canary.endpoints: a version needs at least one endpoint",
            "services[0].routes[0].split: the weights sum to 0",
            "services[0].routes[1].to: unknown version \"nightly\"",
            "services[0].routes[2]: set either `to` or `split`, not both",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
        assert_eq!(errs.len(), 8, "{joined}");
    }

    #[test]
    fn type_errors_name_the_path() {
        let errs = errors_of(
            r#"
services:
  - name: podinfo
    port: eighty
    versions: { primary: { endpoints: ["127.0.0.1:1"] } }
"#,
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("services[0].port: invalid type"),
            "{errs:?}"
        );
    }

    #[test]
    fn missing_required_field_is_reported_once() {
        let errs =
            errors_of("services:\n  - name: a\n    versions: { primary: { endpoints: 5 } }\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("services[0].versions.primary.endpoints: invalid type"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_endpoints_and_matchers_are_rejected() {
        let errs = errors_of(
            r#"
services:
  - name: a
    hosts: [a]
    versions: { primary: { endpoints: ["http://x:1", "x", "x:0"] } }
    routes:
      - match:
          path: { prefix: "/a", exact: "/b" }
          method: [GEt, "BAD METHOD"]
          headers: { "bad header": { exact: x, prefix: y } }
        to: primary
  - name: b
    hosts: [A]
    versions: { primary: { endpoints: ["x:1"] } }
    sticky: { header: x, cookie: y }
"#,
        );
        let joined = errs.join("\n");
        for want in [
            "services[0].versions.primary.endpoints[0]",
            "services[0].versions.primary.endpoints[1]",
            "services[0].versions.primary.endpoints[2]",
            "services[0].routes[0].match.path: set exactly one",
            "services[0].routes[0].match.method[1]",
            "services[0].routes[0].match.headers.bad header: \"bad header\" is not a valid header name",
            "services[0].routes[0].match.headers.bad header: set at most one",
            "services[1].hosts[0]: host \"A\" is already served by services[0]",
            "services[1].sticky: set exactly one of header or cookie",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
    }
}
