//! Upstreams: the endpoints of a version, used round robin, and how a request reaches one.
//!
//! HTTP/1.1 requests to an HTTP/1.1 version run on a pooled connection the request itself
//! drives (`pool`); requests to an HTTP/2 version are streams on connections each worker
//! keeps for itself (`multiplex`: its own runtime drives them, no request hops cores, and
//! a busy endpoint gets another connection every 100 streams); upgrades and CONNECT go
//! through hyper's pooled client, one per worker; mirror copies have a client of their
//! own, so shadow work never shares a connection (or the runtime driving it) with users'
//! requests.

mod connect;
mod multiplex;
mod pool;
mod resolved;
mod sweeper;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::RequestBody;
use crate::config::VersionConfig;
use crate::dns::{Dns, OnConnect};
use crate::error::ProxyError;
use crate::tls::{TlsWatch, UpstreamTls};
use connect::EndpointConnector;
use multiplex::{Multiplex, StreamGuard};
use pool::{Held, Pool};
use resolved::Resolved;

/// What a response body holds until it is done: its HTTP/1.1 connection (driven from the
/// body, back to the pool when complete), or its stream's place on an HTTP/2 connection.
pub(crate) enum Lease {
    Connection(Held),
    Stream(StreamGuard),
}

impl Lease {
    /// Makes progress on an HTTP/1.1 connection (the response body calls this before each
    /// read); an HTTP/2 connection has a task of its own.
    pub(crate) fn drive(&mut self, cx: &mut std::task::Context<'_>) {
        if let Lease::Connection(held) = self {
            held.drive(cx);
        }
    }

    /// The response is complete: an HTTP/1.1 connection goes back to the pool when it can
    /// take another request (dropping a lease instead closes it).
    pub(crate) fn release(self) {
        match self {
            Lease::Connection(held) => held.release(),
            Lease::Stream(stream) => drop(stream),
        }
    }
}

type EndpointClient = Client<EndpointConnector, RequestBody>;

/// An endpoint's own connections, as its version speaks.
enum Connections {
    /// HTTP/1.1 connections driven by the request that holds them.
    Pooled(Arc<Pool>),
    /// HTTP/2 connections, per worker.
    Multiplexed(Arc<Multiplex>),
}

/// One endpoint of a version.
pub(crate) struct Endpoint {
    /// `host:port`, as configured.
    pub address: String,
    /// The address dialled when `address` is a hostname resolved by weir; None when it is
    /// dialled as written.
    pub dialled: Option<SocketAddr>,
    /// Where its users' requests go.
    connections: Connections,
    /// Upgrades and CONNECT: hyper's pooled client, per worker (made at first use).
    clients: Box<[OnceLock<EndpointClient>]>,
    /// What the clients are made from.
    connector: EndpointConnector,
    settings: ClientSettings,
    /// Mirror copies: a client of their own.
    shadow: EndpointClient,
}

/// How hyper's clients of a version pool their connections.
#[derive(Clone, Copy)]
struct ClientSettings {
    idle_timeout: std::time::Duration,
    max_idle: usize,
    http2: bool,
}

impl ClientSettings {
    fn client(self, connector: &EndpointConnector) -> EndpointClient {
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(self.max_idle)
            .http2_only(self.http2)
            .set_host(true)
            .build(connector.clone())
    }
}

/// Where a version's requests go.
enum Members {
    /// Addresses: the same for the upstream's life.
    Listed(Vec<Endpoint>),
    /// Some hostnames: the set their answers make now.
    Resolved(Arc<Resolved>),
}

/// The endpoint a request goes to: borrowed from a fixed list, or held while the set it
/// came from may change.
pub(crate) enum Picked<'a> {
    Listed(&'a Endpoint),
    Resolved(Arc<Endpoint>),
}

impl Deref for Picked<'_> {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        match self {
            Picked::Listed(e) => e,
            Picked::Resolved(e) => e,
        }
    }
}

/// The endpoints of one version and how to reach them.
pub(crate) struct Upstream {
    members: Members,
    next: AtomicUsize,
    /// Speaks HTTP/2 to the endpoints.
    pub http2: bool,
    /// The settings it was built from.
    pub settings: VersionConfig,
    /// Its TLS (kept alive here; the watch holds it weakly).
    _tls: Option<Arc<UpstreamTls>>,
}

/// Why a version's upstream cannot be built: the field (under the version) and why.
pub(crate) struct BuildError {
    pub field: String,
    pub message: String,
}

impl Upstream {
    /// Builds the pools of a version (nothing is dialled until a request needs it); its
    /// TLS files are read now and watched for changes; hostname endpoints are resolved
    /// from now on. `name` is `service/version`.
    pub(crate) fn new(
        name: &str,
        cfg: &VersionConfig,
        watch: &TlsWatch,
        dns: &Arc<Dns>,
    ) -> Result<Upstream, BuildError> {
        let tls = match &cfg.tls {
            Some(t) => {
                let tls =
                    UpstreamTls::load(format!("upstream {name}"), t, cfg.http2).map_err(|e| {
                        BuildError {
                            field: format!("tls.{}", e.field),
                            message: e.message,
                        }
                    })?;
                watch.add_upstream(&tls);
                Some(tls)
            }
            None => None,
        };
        let written = cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, address)| {
                Endpoint::new(address, None, cfg, tls.as_ref(), dns).map_err(|message| BuildError {
                    field: format!("endpoints[{i}]"),
                    message,
                })
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        let named: Vec<usize> = (0..cfg.endpoints.len())
            .filter(|&i| cfg.endpoints[i].parse::<SocketAddr>().is_err())
            .collect();
        // Followed on the runtime; without one (a config checked, not served) the names
        // are dialled as written.
        let runtime = tokio::runtime::Handle::try_current();
        let members = if let (false, Ok(rt)) = (named.is_empty(), &runtime) {
            let (version, tls2, dns2) = (cfg.clone(), tls.clone(), dns.clone());
            let make: resolved::Make = Box::new(move |address, ip| {
                Endpoint::new(address, Some(ip), &version, tls2.as_ref(), &dns2)
            });
            let set = Resolved::new(written, make);
            for i in named {
                resolved::follow(rt, &set, i, cfg.endpoints[i].clone(), dns.clone());
            }
            Members::Resolved(set)
        } else {
            Members::Listed(written)
        };
        Ok(Upstream {
            members,
            next: AtomicUsize::new(0),
            http2: cfg.http2,
            settings: cfg.clone(),
            _tls: tls,
        })
    }

    /// The next endpoint, round robin over the current set.
    pub(crate) fn next_endpoint(&self) -> Picked<'_> {
        match &self.members {
            Members::Listed(list) if list.len() == 1 => Picked::Listed(&list[0]),
            Members::Listed(list) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
                Picked::Listed(&list[i])
            }
            Members::Resolved(set) => {
                let live = set.live.load();
                let i = self.next.fetch_add(1, Ordering::Relaxed) % live.len().max(1);
                match live.get(i) {
                    Some(e) => Picked::Resolved(e.clone()),
                    None => unreachable!("a resolved set always holds an endpoint"),
                }
            }
        }
    }

    /// The addresses requests go to now: a hostname's resolved addresses, or the name
    /// itself until its first answer.
    pub(crate) fn addresses(&self) -> Vec<String> {
        let shown = |e: &Endpoint| {
            e.dialled
                .map_or_else(|| e.address.clone(), |a| a.to_string())
        };
        match &self.members {
            Members::Listed(list) => list.iter().map(shown).collect(),
            Members::Resolved(set) => set.live.load().iter().map(|e| shown(e)).collect(),
        }
    }
}

impl Endpoint {
    /// An endpoint at `address` (`host:port`), dialled at `dialled` when given, with its
    /// version's pools, clients and TLS.
    fn new(
        address: &str,
        dialled: Option<SocketAddr>,
        cfg: &VersionConfig,
        tls: Option<&Arc<UpstreamTls>>,
        dns: &Arc<Dns>,
    ) -> Result<Endpoint, String> {
        let settings = ClientSettings {
            idle_timeout: cfg.idle_timeout.0,
            max_idle: cfg.max_idle_per_endpoint,
            http2: cfg.http2,
        };
        let connector = EndpointConnector::new(
            address,
            dialled,
            cfg.connect_timeout.0,
            tls,
            OnConnect(dns.clone()),
        )?;
        let connections = if cfg.http2 {
            Connections::Multiplexed(Multiplex::new(connector.clone(), cfg.idle_timeout.0))
        } else {
            Connections::Pooled(Pool::new(
                connector.clone(),
                cfg.idle_timeout.0,
                cfg.max_idle_per_endpoint,
            ))
        };
        Ok(Endpoint {
            address: address.to_string(),
            dialled,
            connections,
            clients: (0..crate::workers::slots())
                .map(|_| OnceLock::new())
                .collect(),
            shadow: settings.client(&connector),
            connector,
            settings,
        })
    }
}

/// How a request reaches an endpoint, which decides the form of its URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// A pooled HTTP/1.1 connection the request drives: origin-form URI.
    Pooled,
    /// A stream on one of the worker's HTTP/2 connections: absolute-form URI.
    Multiplexed,
    /// hyper's client (HTTP/1.1 upgrades, CONNECT): absolute-form URI.
    Client,
}

impl Endpoint {
    /// How a user's request gets here.
    pub(crate) fn path_for(&self, method: &http::Method, tunnel: bool) -> Path {
        match &self.connections {
            Connections::Multiplexed(_) => Path::Multiplexed,
            Connections::Pooled(_) if !tunnel && method != http::Method::CONNECT => Path::Pooled,
            Connections::Pooled(_) => Path::Client,
        }
    }

    /// Forwards a user's request on `path`; the lease (not on hyper's client) holds the
    /// connection, or the stream's place on it, until the response body is done.
    pub(crate) async fn forward(
        &self,
        req: Request<RequestBody>,
        path: Path,
    ) -> Result<(Response<Incoming>, Option<Lease>), ProxyError> {
        match (&self.connections, path) {
            (Connections::Pooled(pool), Path::Pooled) => {
                let (resp, held) = pool.send(req).await?;
                Ok((resp, Some(Lease::Connection(held))))
            }
            (Connections::Multiplexed(multiplex), Path::Multiplexed) => {
                let (resp, stream) = multiplex.send(req).await?;
                Ok((resp, Some(Lease::Stream(stream))))
            }
            _ => self
                .client()
                .request(req)
                .await
                .map(|resp| (resp, None))
                .map_err(client_error),
        }
    }

    /// This worker's client.
    fn client(&self) -> &EndpointClient {
        self.clients[crate::workers::slot(self.clients.len())]
            .get_or_init(|| self.settings.client(&self.connector))
    }

    /// Sends a mirror copy (absolute-form URI) on the shadow client.
    pub(crate) async fn send_shadow(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.shadow.request(req).await.map_err(client_error)
    }
}

fn client_error(e: hyper_util::client::legacy::Error) -> ProxyError {
    let connect = e.is_connect();
    ProxyError::upstream(Box::new(e), connect)
}
