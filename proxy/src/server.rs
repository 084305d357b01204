//! The proxy listeners: accept, finish the TLS handshake (HTTPS listeners) or sniff
//! HTTP/1.1 or h2c (plain ones), serve each connection with its idle timeout, and drain
//! on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::activity::{ConnActivity, WatchedIo};
use crate::config::{Limits, ListenerTls};
use crate::handler::{handle, ConnInfo};
use crate::state::ProxyState;
use crate::tls::{ClientCerts, ServerTls, TlsError};
use crate::workers;

/// A bound proxy listener: plain, or HTTPS with its certificates.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<ServerTls>>,
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {address} ({field}): {source}")]
    Io {
        field: String,
        address: String,
        source: std::io::Error,
    },
    #[error("{field}.{error}")]
    Tls { field: String, error: TlsError },
}

/// The protocols a proxy listener offers by ALPN, preferred first (gRPC clients need h2).
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

impl Listener {
    /// A plaintext listener (HTTP/1.1 and h2c).
    pub fn plain(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }

    /// Binds `address`, with TLS when `tls` is set (`field` names the config key for errors).
    pub(crate) async fn bind(
        field: &str,
        address: &str,
        tls: Option<&ListenerTls>,
    ) -> Result<Listener, BindError> {
        let tls = match tls {
            Some(t) => {
                let name = format!("listener {address}");
                let tls_field = if field == "listen" {
                    "tls".to_string()
                } else {
                    format!("{field}.tls")
                };
                Some(
                    ServerTls::load(&name, t, ClientCerts::Required, &ALPN).map_err(|error| {
                        BindError::Tls {
                            field: tls_field,
                            error,
                        }
                    })?,
                )
            }
            None => None,
        };
        let tcp = TcpListener::bind(address)
            .await
            .map_err(|source| BindError::Io {
                field: field.to_string(),
                address: address.to_string(),
                source,
            })?;
        Ok(Listener { tcp, tls })
    }

    /// The bound address (the port, when the config said 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// True for an HTTPS listener.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub(crate) fn tls(&self) -> Option<&Arc<ServerTls>> {
        self.tls.as_ref()
    }
}

/// The HTTP/1.1 + h2c server settings from the limits.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_pending_accept_reset_streams(Some(100))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// A listening socket every worker accepts on.
struct SharedListener {
    tcp: std::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
    name: String,
}

/// Accepts connections on every listener, in every worker, until `shutdown` resolves,
/// then drains: open connections are told to finish (GOAWAY on HTTP/2, `Connection:
/// close` on HTTP/1) and in-flight requests get up to the drain timeout.
pub(crate) async fn serve(
    state: Arc<ProxyState>,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = state.limits.clone();
    let builder = Arc::new(builder(&limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shared = Vec::new();
    for l in listeners {
        let name = l
            .local_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        match l.tcp.into_std() {
            Ok(tcp) => shared.push(SharedListener {
                tcp,
                tls: l.tls,
                name,
            }),
            Err(e) => {
                tracing::error!(listener = %name, error = %e, "cannot hand the listener to the workers")
            }
        }
    }
    // Each worker gets its own handles on the sockets (the originals go to the first),
    // so the sockets close, and new connections are refused, once every worker stopped.
    let n = workers::count();
    let mut handles: Vec<Vec<SharedListener>> = (1..n)
        .map(|_| {
            shared
                .iter()
                .filter_map(|l| match l.tcp.try_clone() {
                    Ok(tcp) => Some(SharedListener {
                        tcp,
                        tls: l.tls.clone(),
                        name: l.name.clone(),
                    }),
                    Err(e) => {
                        tracing::error!(listener = %l.name, error = %e, "a worker cannot accept on the listener");
                        None
                    }
                })
                .collect()
        })
        .collect();
    handles.insert(0, shared);
    let handles: Arc<Vec<std::sync::Mutex<Vec<SharedListener>>>> =
        Arc::new(handles.into_iter().map(std::sync::Mutex::new).collect());
    let drain = limits.drain_timeout.0;
    let worker_state = state.clone();
    // Each worker reports here once it has stopped accepting and let go of its sockets.
    let (closed_tx, mut closed) = tokio::sync::mpsc::channel::<()>(n.max(1));
    let workers = tokio::spawn(workers::run(n, move |i| {
        let mine = handles
            .get(i)
            .map(|h| std::mem::take(&mut *h.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default();
        worker(
            worker_state.clone(),
            builder.clone(),
            mine,
            stop_rx.clone(),
            closed_tx.clone(),
            drain,
        )
    }));
    shutdown.await;
    let _ = stop_tx.send(true);
    // Not ready only once no worker accepts: from then on a new connection is refused.
    for _ in 0..n {
        if closed.recv().await.is_none() {
            break;
        }
    }
    state
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let left = workers.await.unwrap_or(0);
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain timeout reached; closing remaining connections"
        );
    } else {
        tracing::info!("drained all connections");
    }
}

/// One worker: accept loops on its own handles of the listeners until stopped (then it
/// says so on `closed`), then up to `drain` for the connections it accepted to finish.
/// Returns how many did not.
async fn worker(
    state: Arc<ProxyState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mine: Vec<SharedListener>,
    stop: watch::Receiver<bool>,
    closed: tokio::sync::mpsc::Sender<()>,
    drain: Duration,
) -> usize {
    let live = Arc::new(AtomicUsize::new(0));
    let mut accepting = JoinSet::new();
    for l in mine {
        let tcp = match TcpListener::from_std(l.tcp) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(listener = %l.name, error = %e, "a worker cannot accept on the listener");
                continue;
            }
        };
        // What a TLS listener's connections share, resolved once per listener.
        let secure = l.tls.map(|tls| {
            let failures = state
                .backends
                .families
                .tls_handshake_failures
                .with_label_values(&[l.name.as_str()]);
            Arc::new(Secure {
                tls,
                name: l.name,
                failures,
            })
        });
        let conn = Conn {
            state: state.clone(),
            builder: builder.clone(),
            stop: stop.clone(),
        };
        accepting.spawn(accept(conn, tcp, secure, live.clone()));
    }
    while accepting.join_next().await.is_some() {}
    let _ = closed.send(()).await;
    drop(closed);
    let deadline = Instant::now() + drain;
    while live.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    live.load(Ordering::SeqCst)
}

/// A TLS listener as its connections see it: the certificates, the listener's name and
/// its `weir_tls_handshake_failures_total` series.
struct Secure {
    tls: Arc<ServerTls>,
    name: String,
    failures: IntCounter,
}

/// One listener's accept loop in one worker; `live` counts the worker's connections.
async fn accept(conn: Conn, tcp: TcpListener, secure: Option<Arc<Secure>>, live: Arc<AtomicUsize>) {
    let mut stop = conn.stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            state: conn.state.clone(),
            builder: conn.builder.clone(),
            stop: stop.clone(),
        };
        let secure = secure.clone();
        let live = live.clone();
        live.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let state = conn.state.clone();
            state.backends.families.connections.inc();
            match secure {
                None => conn.plain(stream, peer).await,
                Some(secure) => conn.secure(stream, peer, &secure).await,
            }
            state.backends.families.connections.dec();
            live.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// What serving one connection needs.
struct Conn {
    state: Arc<ProxyState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
}

impl Conn {
    /// A plaintext connection: HTTP/1.1 or h2c, told apart by hyper.
    async fn plain(mut self, stream: TcpStream, peer: SocketAddr) {
        // The protocol sniffing has no timeout of its own: a client that connects and
        // says nothing is closed after the header read timeout.
        let wait = self.state.limits.header_read_timeout.0;
        let mut first = [0u8; 1];
        tokio::select! {
            r = tokio::time::timeout(wait, stream.peek(&mut first)) => {
                match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
            _ = self.stop.wait_for(|s| *s) => return,
        }
        self.serve(stream, ConnInfo::new(peer, false)).await
    }

    /// A TLS connection: the handshake (within the header read timeout), then HTTP/1.1 or
    /// h2 as ALPN chose.
    async fn secure(mut self, stream: TcpStream, peer: SocketAddr, secure: &Secure) {
        let name = secure.name.as_str();
        let wait = self.state.limits.header_read_timeout.0;
        let handshake = tokio::time::timeout(wait, secure.tls.acceptor().accept(stream));
        let stream = tokio::select! {
            r = handshake => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                    secure.failures.inc();
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                    secure.failures.inc();
                    return;
                }
            },
            _ = self.stop.wait_for(|s| *s) => return,
        };
        self.serve(stream, ConnInfo::new(peer, true)).await
    }

    /// Serves HTTP on a connection until it closes, idles out, or shutdown finishes it.
    async fn serve<I>(mut self, io: I, info: ConnInfo)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = ConnActivity::new();
        let svc_activity = activity.clone();
        let state = self.state.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            let info = info.clone();
            let guard = svc_activity.start();
            async move {
                // Boxed: the handler's future is kilobytes, and hyper moves the future it
                // is given (into a task per HTTP/2 stream): moving a pointer is cheaper.
                let resp = Box::pin(handle(&state, info, req)).await;
                Ok::<_, Infallible>(resp.map(|b| b.with_guard(guard)))
            }
        });
        let io = WatchedIo::new(io, activity.clone());
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut conn = pin!(conn);
        let idle = self.state.limits.idle_timeout.0;
        let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = false;
        // Made once: a future per wake-up would take the watch's shared lock every time.
        let mut stopped = pin!(self.stop.wait_for(|s| *s));
        loop {
            tokio::select! {
                biased;
                _ = conn.as_mut() => break,
                _ = stopped.as_mut(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tick.tick() => {
                    if activity.stopped_reading(idle) {
                        // The client stopped reading: its responses are abandoned.
                        break;
                    }
                    if !closing && activity.idle_for(idle) {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}
