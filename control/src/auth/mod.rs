//! Who may use the control API. A caller is identified by a bearer token
//! (`control.tokenFile`) or a client certificate (`control.tls.clientCa`, optionally
//! limited to `allowedSans`); each RPC says whether it reads or changes, read-only tokens
//! may only read. Refusals are logged (never with the token) and counted in
//! `weir_control_refused_total{rpc,code}`. With no credentials configured (loopback, or
//! `insecure: true`) everyone is let in.

mod config;
mod tokens;

use std::fmt;

use prometheus::{IntCounterVec, Registry};
use tonic::Status;

pub use config::{control_from, ControlConfig, DEFAULT_CONTROL};
pub use tokens::TokenFileError;
use tokens::{Role, Tokens};

/// What an RPC does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Status, list, watch.
    Read,
    /// Anything that can change traffic or a rollout.
    Change,
    /// A proxy replica's stream: its routing out, its measurements in.
    Replica,
}

/// Who called, as the log names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(String);

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The control API's gatekeeper.
pub struct Authorizer {
    tokens: Option<Tokens>,
    required: bool,
    allowed_sans: Vec<String>,
    refused: IntCounterVec,
}

fn unauthenticated(m: impl Into<String>) -> Status {
    Status::unauthenticated(m.into())
}

/// The DNS and URI SANs of a certificate.
fn sans_of(leaf: &rustls_pki_types::CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) => cert
            .valid_uri_names()
            .chain(cert.valid_dns_names())
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}

impl Authorizer {
    /// The gatekeeper of `cfg` (its token file is read now).
    pub fn new(cfg: &ControlConfig, registry: &Registry) -> Result<Authorizer, TokenFileError> {
        let tokens = cfg.token_file.as_deref().map(Tokens::open).transpose()?;
        Ok(Authorizer {
            tokens,
            required: cfg.has_credentials(),
            allowed_sans: cfg
                .tls
                .as_ref()
                .map(|t| t.allowed_sans.clone())
                .unwrap_or_default(),
            refused: weir_proxy::counter_vec(
                registry,
                "weir_control_refused_total",
                "Control API calls refused for missing, invalid or insufficient credentials.",
                &["rpc", "code"],
            ),
        })
    }

    /// True when callers must show credentials.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Lets a call through, or refuses it (logged and counted).
    pub fn check<T>(
        &self,
        req: &tonic::Request<T>,
        rpc: &'static str,
        need: Need,
    ) -> Result<Identity, Status> {
        if !self.required() {
            return Ok(Identity("anyone (no credentials configured)".into()));
        }
        let result = self.identify(req, need);
        if let Err(status) = &result {
            let code = match status.code() {
                tonic::Code::PermissionDenied => "permission_denied",
                _ => "unauthenticated",
            };
            let peer = req
                .remote_addr()
                .map_or_else(|| "?".to_string(), |a| a.to_string());
            tracing::warn!(
                rpc,
                peer,
                code,
                reason = status.message(),
                "control call refused"
            );
            self.refused.with_label_values(&[rpc, code]).inc();
        }
        result
    }

    fn identify<T>(&self, req: &tonic::Request<T>, need: Need) -> Result<Identity, Status> {
        if let Some(value) = req.metadata().get("authorization") {
            let value = value
                .to_str()
                .map_err(|_| unauthenticated("the authorization header is not text"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| unauthenticated("authorization must be `Bearer <token>`"))?;
            let Some(tokens) = &self.tokens else {
                return Err(unauthenticated(
                    "this weir takes no bearer tokens (control.tokenFile is not set); use a client certificate",
                ));
            };
            let (name, role) = tokens
                .find(token.trim().as_bytes())
                .ok_or_else(|| unauthenticated("invalid bearer token"))?;
            match (role, need) {
                (Role::Write, _) | (Role::Read, Need::Read) | (Role::Replica, Need::Replica) => {}
                (Role::Read, _) => {
                    return Err(Status::permission_denied(format!(
                        "token {name} may only read (status, list, watch)"
                    )))
                }
                (Role::Replica, _) => {
                    return Err(Status::permission_denied(format!(
                        "token {name} is a replica's: it may only open the fleet stream"
                    )))
                }
            }
            return Ok(Identity(format!("token {name}")));
        }
        if let Some(leaf) = req.peer_certs().as_deref().and_then(|c| c.first()) {
            let sans = sans_of(leaf);
            if !self.allowed_sans.is_empty() && !sans.iter().any(|s| self.allowed_sans.contains(s))
            {
                return Err(Status::permission_denied(format!(
                    "client certificate {sans:?} has no SAN listed in control.tls.allowedSans"
                )));
            }
            let who = sans.first().map_or("(no SAN)", String::as_str);
            return Ok(Identity(format!("certificate {who}")));
        }
        Err(unauthenticated(
            "credentials required: a bearer token (weir ctl --token-file or WEIR_CONTROL_TOKEN) \
             or a client certificate (weir ctl --cert and --key)",
        ))
    }
}
