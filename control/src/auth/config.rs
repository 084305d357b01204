//! `control:` in weir.yaml: where the control API listens and who may use it. The plain
//! `control: ADDR` form stays valid on loopback; off loopback weir refuses to start
//! without client certificates or bearer tokens, unless `insecure: true`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use weir_proxy::config::{decode, socket_addr, CertificateFiles, ConfigError, ListenerTls};
use weir_proxy::tls::{ClientCerts, ServerTls};

use super::tokens::Tokens;

/// The control API's default address.
pub const DEFAULT_CONTROL: &str = "127.0.0.1:9090";

/// The control API's listener and credentials.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlConfig {
    /// `ip:port`.
    #[serde(default = "default_address")]
    pub address: String,
    /// TLS for the API; with `clientCa`, client certificates authenticate callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ControlTls>,
    /// Bearer tokens, one a line (`name token`, `name token read` for read-only, or a
    /// bare token); re-read when the file changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Serve off loopback without credentials (anyone who reaches the port may change
    /// traffic).
    #[serde(default)]
    pub insecure: bool,
}

fn default_address() -> String {
    DEFAULT_CONTROL.to_string()
}

/// The control API's TLS.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlTls {
    /// The API's certificate chain (PEM).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
    /// CAs that sign client certificates: callers may then authenticate with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// When set, only client certificates with one of these SANs (DNS or URI) are let in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_sans: Vec<String>,
}

impl ControlTls {
    /// As a listener's TLS block.
    pub fn listener(&self) -> ListenerTls {
        ListenerTls {
            certificates: vec![CertificateFiles {
                cert: self.cert.clone(),
                key: self.key.clone(),
            }],
            client_ca: self.client_ca.clone(),
        }
    }

    /// The server side of the API's TLS: h2 only (gRPC), client certificates optional
    /// at the handshake (health probes need none); each RPC then decides.
    pub fn load(&self) -> Result<std::sync::Arc<ServerTls>, ConfigError> {
        ServerTls::load(
            "control API",
            &self.listener(),
            ClientCerts::Optional,
            &[b"h2"],
        )
        .map_err(|e| {
            let field = match e.field.as_str() {
                "certificates[0].cert" => "cert",
                "certificates[0].key" => "key",
                other => other,
            };
            ConfigError::new(format!("control.tls.{field}"), e.message)
        })
    }
}

/// `control:` from weir.yaml (an address, or the block; absent is the loopback
/// default), validated; every problem goes to `errors` with its field path.
pub fn control_from(value: serde_json::Value, errors: &mut Vec<ConfigError>) -> ControlConfig {
    let (cfg, address_field) = match value {
        serde_json::Value::Null => (ControlConfig::at(DEFAULT_CONTROL), "control"),
        serde_json::Value::String(address) => (ControlConfig::at(&address), "control"),
        block => match decode::<ControlConfig>(block, "control", errors) {
            Some(cfg) => (cfg, "control.address"),
            None => return ControlConfig::at(DEFAULT_CONTROL),
        },
    };
    let field = |f: &str| format!("control.{f}");
    let addr = match socket_addr(&cfg.address) {
        Ok(a) => Some(a),
        Err(m) => {
            errors.push(ConfigError::new(address_field, m));
            None
        }
    };
    if let Some(tls) = &cfg.tls {
        if let Err(e) = tls.load() {
            errors.push(e);
        }
        if !tls.allowed_sans.is_empty() && tls.client_ca.is_none() {
            errors.push(ConfigError::new(
                field("tls.allowedSans"),
                "needs clientCa: SANs come from client certificates",
            ));
        }
    }
    if let Some(path) = &cfg.token_file {
        if let Err(e) = Tokens::read(path) {
            errors.push(ConfigError::new(field("tokenFile"), e.to_string()));
        }
    }
    if let Some(a) = addr {
        if let Some(m) = open_to_anyone(a, &cfg) {
            errors.push(ConfigError::new("control", m));
        }
    }
    cfg
}

impl ControlConfig {
    /// An address with no credentials (loopback use).
    pub fn at(address: &str) -> ControlConfig {
        ControlConfig {
            address: address.to_string(),
            tls: None,
            token_file: None,
            insecure: false,
        }
    }

    /// True when callers must show credentials.
    pub fn has_credentials(&self) -> bool {
        self.token_file.is_some() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}

/// Why an address reachable off this host may not serve without credentials.
fn open_to_anyone(addr: SocketAddr, cfg: &ControlConfig) -> Option<String> {
    if addr.ip().is_loopback() || cfg.has_credentials() || cfg.insecure {
        return None;
    }
    Some(format!(
        "the control API at {addr} would be reachable off this host with no credentials, \
         and anyone reaching it could change traffic: add control.tokenFile (bearer tokens) \
         or control.tls with clientCa (client certificates), or set control.insecure: true \
         to accept that"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let value: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        let mut errors = Vec::new();
        control_from(value, &mut errors);
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn off_loopback_needs_credentials_or_insecure() {
        assert!(errors("127.0.0.1:9090").is_empty());
        assert!(errors("\"[::1]:9090\"").is_empty());
        let open = errors("0.0.0.0:9090");
        assert_eq!(open.len(), 1, "{open:?}");
        assert!(
            open[0].starts_with("control: the control API at 0.0.0.0:9090")
                && open[0].contains("control.tokenFile")
                && open[0].contains("clientCa")
                && open[0].contains("insecure: true"),
            "{open:?}"
        );
        assert!(errors("{address: 0.0.0.0:9090, insecure: true}").is_empty());
        let missing = errors("{address: 0.0.0.0:9090, tokenFile: /nonexistent/tokens}");
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(
            missing[0].starts_with("control.tokenFile: cannot read /nonexistent/tokens"),
            "{missing:?}"
        );
        let typo = errors("{address: 127.0.0.1:9090, tokenfile: x}");
        assert!(
            typo[0].starts_with("control.tokenfile: unknown field"),
            "{typo:?}"
        );
        let sans = errors("{address: 127.0.0.1:9090, tls: {cert: /x, key: /y, allowedSans: [a]}}");
        assert!(
            sans.iter()
                .any(|e| e.starts_with("control.tls.cert: cannot read /x")),
            "{sans:?}"
        );
        assert!(
            sans.iter()
                .any(|e| e.starts_with("control.tls.allowedSans: needs clientCa")),
            "{sans:?}"
        );
    }
}
