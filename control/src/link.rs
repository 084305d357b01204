//! How a client reaches the control API (`weir ctl`, and a replica its controller):
//! plaintext or TLS (`https://`, a CA, a client certificate), a bearer token from a file
//! or `WEIR_CONTROL_TOKEN` (never printed), and what a refusal means in words.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use weir_protos::control::control_client::ControlClient;

use crate::http_client::error_chain;

/// The environment variable holding a bearer token.
pub const TOKEN_ENV: &str = "WEIR_CONTROL_TOKEN";

/// How to reach and authenticate to the control API.
#[derive(clap::Args, Debug, Clone)]
pub struct Access {
    /// Address of weir's control API (`host:port`, `http://...` or `https://...`).
    #[arg(long, global = true, default_value = crate::auth::DEFAULT_CONTROL)]
    pub control: String,
    /// A file holding the bearer token (its first line; a `name token` line works too).
    /// Without it, the `WEIR_CONTROL_TOKEN` variable is used when set.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA that signed the control API's certificate (PEM); implies https.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) for mTLS; needs --key.
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs --cert.
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// Why a `weir ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("--control {addr:?} is not an address: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("cannot reach weir's control API at {addr} ({reason}); is `weir run` running with `control:` set to that address?")]
    Unreachable { addr: String, reason: String },
    #[error("{0}")]
    Credentials(String),
    /// The API refused: `not found: ...`, `invalid: ...`, `refused: ...`,
    /// `not authenticated: ...`, `permission denied: ...`.
    #[error("{0}")]
    Refused(String),
    #[error("the control API closed the watch of {0}")]
    Closed(String),
    /// What answered is not a gRPC server with weir's control API.
    #[error("{0}")]
    NotControlApi(String),
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connected control client.
pub type Client = ControlClient<InterceptedService<Channel, Bearer>>;

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, CtlError> {
    std::fs::read(path)
        .map_err(|e| CtlError::Credentials(format!("cannot read {what} {}: {e}", path.display())))
}

/// The token from `--token-file` or the environment.
pub(crate) fn token(access: &Access) -> Result<Option<String>, CtlError> {
    let text = match &access.token_file {
        Some(path) => String::from_utf8(read(path, "--token-file")?).map_err(|_| {
            CtlError::Credentials(format!("--token-file {}: not UTF-8 text", path.display()))
        })?,
        None => match std::env::var(TOKEN_ENV) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        },
    };
    let line = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .ok_or_else(|| CtlError::Credentials("the token file or variable is empty".into()))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let token = if fields.len() >= 2 {
        fields[1]
    } else {
        fields[0]
    };
    Ok(Some(token.to_string()))
}

/// Connects to the control API as `access` says.
pub async fn connect(access: &Access) -> Result<Client, CtlError> {
    let (channel, bearer) = channel(access).await?;
    Ok(ControlClient::with_interceptor(channel, bearer))
}

/// A connection to the control API and the credentials to send on it.
pub async fn channel(access: &Access) -> Result<(Channel, Bearer), CtlError> {
    let addr = access.control.as_str();
    let secure = access.ca.is_some() || access.cert.is_some();
    let url = match addr.split_once("://") {
        Some(_) => addr.to_string(),
        None if secure => format!("https://{addr}"),
        None => format!("http://{addr}"),
    };
    let bad = |reason: String| CtlError::BadAddress {
        addr: addr.to_string(),
        reason,
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        // A replica's stream lives for days: pings find a controller that vanished
        // without closing the connection, so the replica reconnects.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &access.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "--ca")?)),
            None => tls.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&access.cert, &access.key) {
            let identity = Identity::from_pem(read(cert, "--cert")?, read(key, "--key")?);
            tls = tls.identity(identity);
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| bad(error_chain(&e)))?;
    } else if secure {
        return Err(bad("--ca, --cert and --key need https://".into()));
    }
    let bearer = match token(access)? {
        Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
            CtlError::Credentials("the token has characters a header cannot carry".into())
        })?),
        None => None,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CtlError::Unreachable {
            addr: addr.to_string(),
            reason: error_chain(&e),
        })?;
    Ok((channel, Bearer(bearer)))
}

/// A refusal in words; an answer that is not gRPC (an HTTP/1.1 port, say) or not weir's
/// service is told apart.
pub fn grpc_error(s: tonic::Status) -> CtlError {
    let message = s.message().to_ascii_lowercase();
    let foreign = [
        "invalid compression flag",
        "operation was canceled",
        "http2 error",
        "h2 protocol error",
        "invalid content-type",
        "unexpected content-type",
        "connection error",
    ];
    let not_grpc = matches!(
        s.code(),
        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && foreign.iter().any(|f| message.contains(f));
    if not_grpc || s.code() == tonic::Code::Unimplemented {
        return CtlError::NotControlApi(s.message().to_string());
    }
    let code = match s.code() {
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::FailedPrecondition => "refused",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::PermissionDenied => "permission denied",
        _ => "error",
    };
    CtlError::Refused(format!("{code}: {}", s.message()))
}
