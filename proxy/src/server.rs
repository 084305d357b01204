//! The proxy listener: accept, sniff HTTP/1.1 or h2c, serve each connection with its idle
//! timeout, and drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::activity::{ConnActivity, WatchedIo};
use crate::config::Limits;
use crate::handler::handle;
use crate::state::ProxyState;

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

/// Accepts connections until `shutdown` resolves, then drains: open connections are told
/// to finish (GOAWAY on HTTP/2, `Connection: close` on HTTP/1) and in-flight requests get
/// up to the drain timeout.
pub(crate) async fn serve(
    state: Arc<ProxyState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let limits = state.limits.clone();
    let builder = Arc::new(builder(&limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            a = listener.accept() => a,
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
        let state = state.clone();
        let builder = builder.clone();
        let stop = stop_rx.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            state.backends.families.connections.inc();
            connection(state.clone(), builder, stream, peer, stop, &limits).await;
            state.backends.families.connections.dec();
        });
    }
    drop(listener);
    state
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + limits.drain_timeout.0;
    while state.backends.families.connections.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = state.backends.families.connections.get();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain timeout reached; closing remaining connections"
        );
    } else {
        tracing::info!("drained all connections");
    }
}

async fn connection(
    state: Arc<ProxyState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    limits: &Limits,
) {
    // The protocol sniffing has no timeout of its own: a client that connects and says
    // nothing is closed after the header read timeout.
    let mut first = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(limits.header_read_timeout.0, stream.peek(&mut first)) => {
            match r {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
        _ = stop.wait_for(|s| *s) => return,
    }
    let activity = ConnActivity::new();
    let svc_activity = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let guard = svc_activity.start();
        async move {
            let resp = handle(&state, peer, req).await;
            Ok::<_, Infallible>(resp.map(|b| b.with_guard(guard)))
        }
    });
    let io = WatchedIo::new(stream, activity.clone());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut conn = pin!(conn);
    let idle = limits.idle_timeout.0;
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = stop.wait_for(|s| *s), if !closing => {
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
