//! Upstream pools: one pooled keep-alive client per endpoint of a version, used round robin.
//!
//! Each endpoint has its own client whose connector always dials that endpoint, so the
//! request URI can carry the user's Host (HTTP/1 `Host`, HTTP/2 `:authority`) unchanged.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::config::VersionConfig;
use crate::measure::FailureReason;
use crate::pool::{Lease, Pool};

/// Dials one fixed endpoint whatever the request URI says.
#[derive(Clone)]
pub struct EndpointConnector {
    inner: HttpConnector,
    target: Uri,
}

impl tower_service::Service<Uri> for EndpointConnector {
    type Response = TokioIo<TcpStream>;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = <HttpConnector as tower_service::Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        self.inner.call(self.target.clone())
    }
}

type EndpointClient = Client<EndpointConnector, RequestBody>;

/// One endpoint of a version.
pub struct Endpoint {
    /// `host:port`.
    pub address: String,
    /// HTTP/1.1 requests to an HTTP/1.1 version: connections driven by the request that
    /// holds them (none for an HTTP/2 version).
    pool: Option<Arc<Pool>>,
    /// HTTP/2, upgrades, CONNECT and mirror copies: hyper's pooled client.
    client: EndpointClient,
}

/// The endpoints of one version and how to reach them.
pub struct Upstream {
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    /// Speaks HTTP/2 to the endpoints.
    pub http2: bool,
    /// The settings it was built from (a reload reuses the pools when they are unchanged).
    pub settings: VersionConfig,
}

impl Upstream {
    /// Builds the pools of a version.
    pub fn new(cfg: &VersionConfig) -> Result<Upstream, String> {
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|address| {
                let target: Uri = format!("http://{address}")
                    .parse()
                    .map_err(|e| format!("endpoint {address:?}: {e}"))?;
                let mut http = HttpConnector::new();
                http.set_nodelay(true);
                http.set_connect_timeout(Some(cfg.connect_timeout.0));
                http.enforce_http(false);
                http.set_keepalive(Some(Duration::from_secs(30)));
                let connector = EndpointConnector {
                    inner: http,
                    target,
                };
                let pool = (!cfg.http2).then(|| {
                    Pool::new(
                        connector.clone(),
                        cfg.idle_timeout.0,
                        cfg.max_idle_per_endpoint,
                    )
                });
                let client = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(cfg.idle_timeout.0)
                    .pool_max_idle_per_host(cfg.max_idle_per_endpoint)
                    .http2_only(cfg.http2)
                    .set_host(true)
                    .build(connector);
                Ok(Endpoint {
                    address: address.clone(),
                    pool,
                    client,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Upstream {
            endpoints,
            next: AtomicUsize::new(0),
            http2: cfg.http2,
            settings: cfg.clone(),
        })
    }

    /// The next endpoint, round robin.
    pub fn next_endpoint(&self) -> &Endpoint {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        &self.endpoints[i]
    }
}

/// A response from an endpoint, with the connection it holds until its body is done.
pub type Forwarded = (http::Response<hyper::body::Incoming>, Option<Lease>);

impl Endpoint {
    /// Forwards a user's request. HTTP/1.1 requests to an HTTP/1.1 upstream run on a
    /// connection the request itself drives; `tunnel` (an upgrade), CONNECT and HTTP/2
    /// upstreams go through hyper's pooled client.
    pub async fn forward(
        &self,
        req: http::Request<RequestBody>,
        tunnel: bool,
    ) -> Result<Forwarded, SendFailure> {
        match &self.pool {
            Some(pool) if !tunnel && req.method() != http::Method::CONNECT => {
                let (resp, lease) = pool.send(req).await?;
                Ok((resp, Some(lease)))
            }
            _ => match self.client.request(req).await {
                Ok(resp) => Ok((resp, None)),
                Err(e) => Err(SendFailure {
                    reason: classify(&e),
                    error: Box::new(e),
                }),
            },
        }
    }

    /// Sends a request on hyper's pooled client (mirror copies).
    pub fn send(
        &self,
        req: http::Request<RequestBody>,
    ) -> impl Future<
        Output = Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
    > + Send
           + 'static {
        self.client.request(req)
    }
}

/// Why a request could not be forwarded, and the error behind it (for the log).
pub struct SendFailure {
    /// What counts against the version.
    pub reason: FailureReason,
    /// The underlying error (formatted only when it is logged).
    pub error: Box<dyn StdError + Send + Sync>,
}

/// Classifies a client error into a failure reason.
pub fn classify(err: &hyper_util::client::legacy::Error) -> FailureReason {
    classify_chain(err, err.is_connect())
}

/// Walks an error's source chain for the first cause weir can name.
pub(crate) fn classify_chain(err: &(dyn StdError + 'static), connect: bool) -> FailureReason {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut if connect => return FailureReason::ConnectTimeout,
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
                    if connect =>
                {
                    return FailureReason::ConnectRefused
                }
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return FailureReason::Reset
                }
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return FailureReason::Reset;
            }
            if h.is_parse() || h.is_parse_status() {
                return FailureReason::Protocol;
            }
        }
        source = e.source();
    }
    if connect {
        // A connect timeout carries TimedOut above; anything else failed to dial.
        FailureReason::ConnectRefused
    } else {
        FailureReason::Reset
    }
}
