//! The data plane's configuration: listeners, limits and services. Every error names the
//! field path and the problem (`services[0].routes[1].match.headers.x-canary.regex:
//! unclosed group`), and every error in a file is reported, not only the first.

pub(crate) mod decode;
mod duration;
pub(crate) mod schema;
pub(crate) mod validate;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::tls::settings::{CertificateFiles, ListenerTls, UpstreamTls};
pub use decode::{decode, did_you_mean, join, parse_document, ConfigError, ConfigErrors};
pub use duration::Dur;
pub use schema::{
    MatchConfig, MirrorConfig, OneOrMany, PathMatch, RouteConfig, ServiceConfig,
    SessionAffinityConfig, StickyConfig, StringMatch, VersionConfig, DEFAULT_UPGRADES,
};
pub use validate::{endpoint, match_config, nameserver, socket_addr, string_match};

/// The data plane's configuration: where it listens, its limits, and its services.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Proxy listener: HTTP/1.1 and h2c on one port, or HTTPS (HTTP/1.1 and h2 by ALPN)
    /// with `tls`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// TLS for `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// More proxy listeners (plaintext and TLS side by side, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerConfig>,
    /// Admin listener: /metrics /ready /live /config (loopback by default: /config shows
    /// the routing).
    #[serde(default = "default_admin")]
    pub admin: String,
    /// A listener serving only /metrics, /ready and /live, for Prometheus and probes
    /// off the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-*` headers are kept and extended;
    /// everyone else's are replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Connection limits and timeouts of the proxy listener.
    #[serde(default)]
    pub limits: Limits,
    /// How hostname endpoints are resolved: /etc/resolv.conf unless nameservers are named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<ResolverConfig>,
    /// The services behind the proxy.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin() -> String {
    "127.0.0.1:9901".into()
}

/// `resolver:`: the nameservers hostname endpoints are resolved with.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolverConfig {
    /// `ip:port` (or `ip`, port 53) of each nameserver, asked in order.
    pub nameservers: Vec<String>,
}

/// One more proxy listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port`.
    pub address: String,
    /// TLS for this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
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
    /// The whole request must have arrived within this, counted from its headers (Envoy's
    /// `request_timeout`); `0s`, the default, turns it off. Answered `408`.
    pub request_timeout: Dur,
    /// Least upload rate in bytes a second, averaged over the upload so far, once
    /// `uploadGracePeriod` has passed (Apache's `mod_reqtimeout` `MinRate`); `0` turns it
    /// off. Answered `408`.
    pub upload_min_rate: u64,
    /// How long an upload may take before `uploadMinRate` applies (Apache's `body=20`).
    pub upload_grace_period: Dur,
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
            request_timeout: Dur::secs(0),
            upload_min_rate: 500,
            upload_grace_period: Dur::secs(20),
        }
    }
}

impl ProxyConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
        ProxyConfig::parse(&text)
    }

    /// Parses and validates YAML (or JSON) text, reporting every error found.
    pub fn parse(text: &str) -> Result<ProxyConfig, ConfigErrors> {
        ProxyConfig::from_value(parse_document(text)?)
    }

    /// Decodes and validates an already parsed document.
    pub fn from_value(value: serde_json::Value) -> Result<ProxyConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let decoded = ProxyConfig::decode(value, &mut errors);
        match decoded {
            Some(cfg) if errors.is_empty() => Ok(cfg),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Decodes and validates, adding every problem to `errors`.
    pub fn decode(value: serde_json::Value, errors: &mut Vec<ConfigError>) -> Option<ProxyConfig> {
        Self::decode_indexed(value, errors).map(|(cfg, _)| cfg)
    }

    /// Decodes and validates each service on its own, so one service's mistake hides no
    /// other's and every service that decoded is still validated; returns the config with
    /// those services and, for each, its index in the file.
    pub fn decode_indexed(
        mut value: serde_json::Value,
        errors: &mut Vec<ConfigError>,
    ) -> Option<(ProxyConfig, Vec<usize>)> {
        let services = value
            .as_object_mut()
            .and_then(|o| o.remove("services"))
            .unwrap_or(serde_json::Value::Null);
        let mut cfg: ProxyConfig = decode(value, "", errors)?;
        let mut indexes = Vec::new();
        match services {
            serde_json::Value::Null => {}
            serde_json::Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(s) =
                        decode::<ServiceConfig>(item, &format!("services[{i}]"), errors)
                    {
                        cfg.services.push(s);
                        indexes.push(i);
                    }
                }
            }
            _ => errors.push(ConfigError::new("services", "expected a list of services")),
        }
        errors.extend(validate::config_at(&cfg, &indexes));
        Some((cfg, indexes))
    }

    /// Checks everything serde cannot: addresses, names, weights, regexes, references.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        ConfigErrors::check(validate::config(self))
    }

    /// What a valid config sets that cannot take effect, each naming its field (said by
    /// `weir check` and at start).
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let l = &self.limits;
        if l.upload_min_rate == 0 && l.upload_grace_period != Limits::default().upload_grace_period
        {
            out.push(
                "limits.uploadGracePeriod has no effect: limits.uploadMinRate is 0 (no minimum upload rate)"
                    .into(),
            );
        }
        for (i, s) in self.services.iter().enumerate() {
            for (j, r) in s.routes.iter().enumerate() {
                if r.upgrades.as_ref().is_none_or(Vec::is_empty) {
                    continue;
                }
                let targets = r.to.iter().chain(r.split.iter().flat_map(|w| w.keys()));
                for v in targets {
                    if s.versions.get(v).is_some_and(|c| c.http2) {
                        out.push(format!(
                            "services[{i}].routes[{j}].upgrades: version {v} speaks HTTP/2 to its endpoints (http2: true), so an upgrade sent to it is refused (403 upgrade_refused)"
                        ));
                    }
                }
            }
        }
        out
    }

    /// The service with this name.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(yaml: &str) -> Vec<String> {
        match ProxyConfig::parse(yaml) {
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
    fn an_upgrade_to_h2c_or_a_non_token_is_refused_by_its_path() {
        let errs = errors_of(
            r#"
services:
  - name: podinfo
    versions: { primary: { endpoints: ["127.0.0.1:1"] } }
    routes:
      - to: primary
        upgrades: [websocket, H2C, "web socket"]
"#,
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("services[0].routes[0].upgrades[1]: h2c is never forwarded"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with(
                "services[0].routes[0].upgrades[2]: \"web socket\" is not a protocol name"
            ),
            "{errs:?}"
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
