//! The TLS blocks of weir.yaml (re-exported by `config`): a listener's certificates
//! (chosen by SNI) and optional client CA, and a version's upstream TLS (CA, server name,
//! client certificate).

use serde::{Deserialize, Serialize};

/// TLS for a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates, chosen by the client's SNI against each one's DNS names (wildcards
    /// too); the first is served when nothing matches or the client sends no SNI.
    pub certificates: Vec<CertificateFiles>,
    /// PEM file of the CAs client certificates must chain to: when set, every client
    /// must present one (downstream mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateFiles {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// TLS to a version's endpoints.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of the CAs the endpoints' certificates must chain to (default: the
    /// Mozilla root store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The name the endpoints' certificates must carry, also sent as SNI (default: the
    /// endpoint's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Client certificate chain (PEM) for upstream mTLS; needs `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The client certificate's private key (PEM); needs `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}
