//! The data plane's one error type: what went wrong, which side caused it, whether it is
//! safe to retry, and the one mapping to a status code, a metric label and a log message.

use std::error::Error as StdError;
use std::fmt;

use http::StatusCode;

/// Which side of the proxy caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: a bad request, a body too slow, a client gone.
    Client,
    /// The upstream version: refused, reset, timed out, spoke bad HTTP.
    Upstream,
    /// weir itself: no route for the request.
    Proxy,
}

/// What went wrong. Upstream kinds count against the version that caused them; client
/// kinds never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The endpoint refused the connection (or there is no route to it).
    ConnectRefused,
    /// Opening the connection took longer than the connect timeout.
    ConnectTimeout,
    /// The connection was reset or closed before the response headers.
    UpstreamReset,
    /// The response did not end within the route's timeout (counted from the end of the
    /// request body).
    UpstreamTimeout,
    /// The upstream spoke invalid HTTP.
    UpstreamProtocol,
    /// The response broke off after its headers: reset, or shorter than it said.
    UpstreamTruncated,
    /// Nothing moved for the route's idle timeout while weir waited on the upstream.
    UpstreamIdle,
    /// The TLS handshake with the endpoint failed (its certificate did not verify, say).
    UpstreamTls,
    /// The client's request body is malformed (bad chunked framing, say).
    ClientMalformed,
    /// Nothing moved for the route's idle timeout while weir waited on the client's body.
    ClientTimeout,
    /// The client went away before the exchange ended.
    ClientGone,
    /// The client stopped reading the response and weir closed its connection.
    ClientStalled,
    /// No service or rule matched the request.
    NoRoute,
    /// The request's Host is missing in a way weir cannot route, ambiguous or unreadable.
    BadHost,
    /// The request cannot be forwarded as it is (an invalid Host, say).
    BadRequest,
    /// The request asks to upgrade to a protocol its route does not allow.
    UpgradeRefused,
}

impl ErrorKind {
    /// The upstream failures, in the order of their metric label (`weir_upstream_errors_total`).
    pub const UPSTREAM: [ErrorKind; 8] = [
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectTimeout,
        ErrorKind::UpstreamReset,
        ErrorKind::UpstreamTimeout,
        ErrorKind::UpstreamProtocol,
        ErrorKind::UpstreamTruncated,
        ErrorKind::UpstreamIdle,
        ErrorKind::UpstreamTls,
    ];

    /// The client's faults, in the order of their metric label (`weir_client_errors_total`).
    pub const CLIENT: [ErrorKind; 4] = [
        ErrorKind::ClientMalformed,
        ErrorKind::ClientTimeout,
        ErrorKind::ClientGone,
        ErrorKind::ClientStalled,
    ];

    /// The side that caused it.
    pub const fn side(self) -> Side {
        match self {
            ErrorKind::ConnectRefused
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamTruncated
            | ErrorKind::UpstreamIdle
            | ErrorKind::UpstreamTls => Side::Upstream,
            ErrorKind::ClientMalformed
            | ErrorKind::ClientTimeout
            | ErrorKind::ClientGone
            | ErrorKind::ClientStalled
            | ErrorKind::BadHost
            | ErrorKind::BadRequest
            | ErrorKind::UpgradeRefused => Side::Client,
            ErrorKind::NoRoute => Side::Proxy,
        }
    }

    /// Safe to send again on a new connection: the request never reached the upstream.
    pub const fn retryable(self) -> bool {
        matches!(self, ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout)
    }

    /// The status code weir answers with (or, after the headers, the one the exchange
    /// amounts to: a broken body is a bad gateway, a stalled one a timeout).
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorKind::ConnectRefused
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamReset
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamTruncated
            | ErrorKind::UpstreamTls => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout | ErrorKind::UpstreamIdle => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::ClientMalformed | ErrorKind::BadHost | ErrorKind::BadRequest => {
                StatusCode::BAD_REQUEST
            }
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            // Envoy's answer to an upgrade its route does not allow.
            ErrorKind::UpgradeRefused => StatusCode::FORBIDDEN,
            // Nobody reads these: the client is gone. nginx's 499 names the case.
            ErrorKind::ClientGone | ErrorKind::ClientStalled => match StatusCode::from_u16(499) {
                Ok(s) => s,
                Err(_) => StatusCode::BAD_REQUEST,
            },
        }
    }

    /// The `reason` label value (of `weir_upstream_errors_total` or
    /// `weir_client_errors_total`), also the `x-weir-error` header of weir's answers.
    pub const fn label(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::UpstreamReset => "reset",
            ErrorKind::UpstreamTimeout => "timeout",
            ErrorKind::UpstreamProtocol => "protocol",
            ErrorKind::UpstreamTruncated => "truncated",
            ErrorKind::UpstreamIdle => "idle_timeout",
            ErrorKind::UpstreamTls => "tls",
            ErrorKind::ClientMalformed => "malformed",
            ErrorKind::ClientTimeout => "timeout",
            ErrorKind::ClientGone => "gone",
            ErrorKind::ClientStalled => "not_reading",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::BadHost => "bad_host",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UpgradeRefused => "upgrade_refused",
        }
    }

    /// What a person reads: the body of weir's answer and the log line.
    pub const fn message(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "upstream connection refused",
            ErrorKind::ConnectTimeout => "upstream connect timeout",
            ErrorKind::UpstreamReset => "upstream connection reset",
            ErrorKind::UpstreamTimeout => "upstream request timeout",
            ErrorKind::UpstreamProtocol => "upstream protocol error",
            ErrorKind::UpstreamTruncated => "upstream response broke off",
            ErrorKind::UpstreamIdle => "upstream stopped sending",
            ErrorKind::UpstreamTls => "upstream TLS handshake failed",
            ErrorKind::ClientMalformed => "malformed request body",
            ErrorKind::ClientTimeout => "request body too slow",
            ErrorKind::ClientGone => "client went away",
            ErrorKind::ClientStalled => "client stopped reading",
            ErrorKind::NoRoute => "no route",
            ErrorKind::BadHost | ErrorKind::BadRequest => "bad request",
            ErrorKind::UpgradeRefused => "upgrade not allowed",
        }
    }

    /// The index of an upstream kind in [`ErrorKind::UPSTREAM`].
    pub(crate) fn upstream_index(self) -> Option<usize> {
        ErrorKind::UPSTREAM.iter().position(|k| *k == self)
    }

    /// The index of a client kind in [`ErrorKind::CLIENT`].
    pub(crate) fn client_index(self) -> Option<usize> {
        ErrorKind::CLIENT.iter().position(|k| *k == self)
    }
}

/// A failure of one request, with the error behind it (formatted only when logged).
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The underlying error, for the log.
    pub source: Option<Box<dyn StdError + Send + Sync>>,
}

impl ProxyError {
    /// An error of `kind` caused by `source`.
    pub fn new(kind: ErrorKind, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        ProxyError {
            kind,
            source: Some(source.into()),
        }
    }

    /// An error of `kind` with nothing behind it.
    pub fn bare(kind: ErrorKind) -> Self {
        ProxyError { kind, source: None }
    }

    /// Classifies an error from talking to an upstream. `connect` says it happened while
    /// dialling.
    pub fn upstream(err: Box<dyn StdError + Send + Sync>, connect: bool) -> Self {
        let kind = classify(&*err, connect);
        ProxyError {
            kind,
            source: Some(err),
        }
    }
}

impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.message())?;
        let mut source = self
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static));
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// A TLS handshake with an endpoint that failed.
#[derive(Debug)]
pub(crate) struct TlsFailure(pub std::io::Error);

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS handshake: {}", self.0)
    }
}

impl StdError for TlsFailure {}

/// Walks an error's source chain for the first cause weir can name.
fn classify(err: &(dyn StdError + 'static), connect: bool) -> ErrorKind {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<TlsFailure>() {
            return ErrorKind::UpstreamTls;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut if connect => return ErrorKind::ConnectTimeout,
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
                    if connect =>
                {
                    return ErrorKind::ConnectRefused
                }
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return ErrorKind::UpstreamReset
                }
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return ErrorKind::UpstreamReset;
            }
            if h.is_parse() || h.is_parse_status() {
                return ErrorKind::UpstreamProtocol;
            }
        }
        source = e.source();
    }
    if connect {
        // A connect timeout carries TimedOut above; anything else failed to dial.
        ErrorKind::ConnectRefused
    } else {
        ErrorKind::UpstreamReset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds_by_phase() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ProxyError::upstream(Box::new(refused), true).kind,
            ErrorKind::ConnectRefused
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = ProxyError::upstream(Box::new(reset), false);
        assert_eq!(e.kind, ErrorKind::UpstreamReset);
        assert_eq!(e.kind.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.kind.side(), Side::Upstream);
        assert!(!e.kind.retryable());
        assert!(ErrorKind::ConnectTimeout.retryable());
        assert_eq!(
            ErrorKind::UpstreamTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(e.to_string(), "upstream connection reset: connection reset");
    }
}
