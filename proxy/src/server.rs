//! The proxy listener and the request path.
//!
//! accept -> HTTP/1.1 or h2c (sniffed) -> route lookup (one `ArcSwap::load_full`) ->
//! version -> pooled upstream -> streamed response, measured when it ends.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version as HttpVersion};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::{ConnActivity, Measured, RequestBody, ResponseBody};
use crate::config::Limits;
use crate::headers::{add_forwarding, is_upgrade, strip_hop_by_hop};
use crate::measure::FailureReason;
use crate::route::RequestView;
use crate::Inner;

/// A response weir makes itself: status and a one-line text body.
fn local(status: StatusCode, text: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The one mapping from an upstream failure to status code and message.
fn failure_response(
    reason: FailureReason,
    service: &str,
    version: &str,
    endpoint: &str,
) -> Response<ResponseBody> {
    let (status, what) = match reason {
        FailureReason::ConnectRefused => (StatusCode::BAD_GATEWAY, "upstream connection refused"),
        FailureReason::ConnectTimeout => (StatusCode::BAD_GATEWAY, "upstream connect timeout"),
        FailureReason::Reset => (StatusCode::BAD_GATEWAY, "upstream connection reset"),
        FailureReason::Protocol => (StatusCode::BAD_GATEWAY, "upstream protocol error"),
        FailureReason::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
    };
    local(
        status,
        format!("weir: {what}: service {service} version {version} ({endpoint})\n"),
    )
}

/// The Host a request is for: `:authority` / absolute-form first, then the Host header.
fn host_of(req: &Request<Incoming>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Handles one request: route, forward, measure.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let table = inner.table.load_full();
    let host = host_of(&req);
    let view = RequestView {
        method: req.method(),
        path: req.uri().path(),
        headers: req.headers(),
    };
    let Some(decision) = table.route(host, &view) else {
        inner.resources.families.unrouted.inc();
        let text = format!(
            "weir: no route for host {} path {}\n",
            host.unwrap_or("(none)"),
            req.uri().path()
        );
        return local(StatusCode::NOT_FOUND, text);
    };
    let service = decision.service;
    let version = decision.version;
    let timeout = decision.rule.timeout;
    let metrics = version.metrics.clone();
    let upstream = &version.upstream;
    let endpoint = upstream.next_endpoint();

    let upgrade =
        req.version() == HttpVersion::HTTP_11 && !upstream.http2 && is_upgrade(req.headers());
    // Absolute form, with the user's host (or the endpoint's when there is none): hyper's
    // client and mirror copies take it as it is; HTTP/1.1 upstreams get origin form.
    let uri = Uri::builder()
        .scheme("http")
        .authority(host.unwrap_or(endpoint.address.as_str()))
        .path_and_query(req.uri().path_and_query().map_or("/", |p| p.as_str()))
        .build();
    let uri = match uri {
        Ok(u) => u,
        Err(_) => {
            let text = format!("weir: invalid Host {:?}\n", host.unwrap_or_default());
            return local(StatusCode::BAD_REQUEST, text);
        }
    };
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    add_forwarding(&mut parts.headers, peer.ip(), "http");
    if upstream.http2 {
        parts.version = HttpVersion::HTTP_2;
        // `:authority` carries the host; a second `host` header would be a duplicate.
        parts.headers.remove(header::HOST);
    } else {
        parts.version = HttpVersion::HTTP_11;
        if !parts.headers.contains_key(header::HOST) {
            let host = parts
                .uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(host) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    let (body, compare) = match &decision.rule.mirror {
        Some(m) if crate::split::chance(m.percent) => {
            let shadow = &service.versions[m.version];
            let shadow = crate::mirror::Shadow {
                upstream: shadow.upstream.clone(),
                metrics: shadow.mirror_metrics.clone(),
            };
            crate::mirror::start(m, shadow, &parts, body)
        }
        _ => (RequestBody::Stream(body), None),
    };
    let sent = endpoint.forward(Request::from_parts(parts, body), upgrade);
    let (mut resp, lease) = match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(forwarded)) => forwarded,
        Ok(Err(failure)) => {
            tracing::debug!(service = %service.name, version = %version.name, endpoint = %endpoint.address, reason = failure.reason.label(), error = %failure.error, "upstream failed");
            return fail(
                &metrics,
                failure.reason,
                start,
                &service.name,
                &version.name,
                &endpoint.address,
            );
        }
        Err(_) => {
            return fail(
                &metrics,
                FailureReason::Timeout,
                start,
                &service.name,
                &version.name,
                &endpoint.address,
            );
        }
    };
    let status = resp.status();
    metrics.record_status(status.as_u16());
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if let (Some(client), true) = (client_upgrade, switching) {
        let upstream_io = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(u)) = (client.await, upstream_io.await) {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            }
        });
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    if let Some(cookie) = decision.set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    resp.map(|b| {
        let measured = Measured::new(b, metrics, start).holding(lease);
        let measured = match compare {
            Some(tx) => measured.comparing(status.as_u16(), tx),
            None => measured,
        };
        ResponseBody::upstream(measured.check_done())
    })
}

fn fail(
    metrics: &crate::measure::VersionMetrics,
    reason: FailureReason,
    start: Instant,
    service: &str,
    version: &str,
    endpoint: &str,
) -> Response<ResponseBody> {
    let resp = failure_response(reason, service, version, endpoint);
    metrics.record_failure(reason);
    metrics.record_status(resp.status().as_u16());
    metrics.record_latency(start.elapsed());
    resp
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

/// Accepts connections until `shutdown` resolves, then drains: open connections are told
/// to finish (GOAWAY on HTTP/2, `Connection: close` on HTTP/1) and in-flight requests get
/// up to the drain timeout.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let limits = inner.limits.clone();
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
        let inner = inner.clone();
        let builder = builder.clone();
        let stop = stop_rx.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            inner.resources.families.connections.inc();
            connection(inner.clone(), builder, stream, peer, stop, &limits).await;
            inner.resources.families.connections.dec();
        });
    }
    drop(listener);
    inner
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + limits.drain_timeout.0;
    while inner.resources.families.connections.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = inner.resources.families.connections.get();
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
    inner: Arc<Inner>,
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
    let activity = Arc::new(ConnActivity::default());
    let opened = Instant::now();
    let svc_activity = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let inner = inner.clone();
        let guard = svc_activity.start();
        async move { Ok::<_, Infallible>(handle(inner, peer, req).await.map(|b| b.with_guard(guard))) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
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
            _ = tick.tick(), if !closing => {
                if activity.idle_for(idle, opened) {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
