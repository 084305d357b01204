//! The request path, as phases over one exchange:
//!
//! route -> build the upstream request (all Host, URI and header work, once) -> mirror
//! -> forward -> downstream response, and one `Exchange::finish` when the response ends
//! (in the body) or fails (here).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version as HttpVersion};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use std::sync::Arc;

use crate::body::{Progress, RequestBody, ResponseBody, Stage};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::exchange::Exchange;
use crate::headers::{
    add_forwarding, routed_host, strip_hop_by_hop, strip_inbound, switched_as_asked, Upgrade,
};
use crate::mirror::Shadow;
use crate::route::{Decision, RequestView};
use crate::state::ProxyState;
use crate::timeouts::BodyClock;
use crate::upstream::{Endpoint, Lease, Path};

/// The client connection a request came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer as `x-forwarded-for` carries it, made once for the connection.
    pub forwarded_for: HeaderValue,
    /// The connection is TLS (`x-forwarded-proto: https`).
    pub tls: bool,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            forwarded_for: crate::headers::forwarded_for(peer.ip()),
            tls,
        }
    }
}

/// Handles one request: route, forward, answer; its outcome is recorded once, at its end.
pub(crate) async fn handle(
    state: &ProxyState,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let routed = routed_host(req.uri(), req.headers())
        .and_then(|h| h.map(|h| host_value(h, req.headers())).transpose());
    let host = match routed {
        Ok(h) => h,
        Err(why) => {
            state.backends.families.rejected_host.inc();
            let text = format!("weir: bad request: {why}\n");
            return synthetic(ErrorKind::BadHost, text);
        }
    };
    let table = state.table.load_full();
    let routed = host.as_ref().and_then(|h| h.to_str().ok());
    let decision = match route(&table, routed, &req) {
        Some(d) => d,
        None => {
            state.backends.families.unrouted.inc();
            let shown = routed.unwrap_or("(none)");
            let text = format!(
                "weir: no route for host {shown} path {}\n",
                req.uri().path()
            );
            return synthetic(ErrorKind::NoRoute, text);
        }
    };
    let endpoint = decision.version.upstream.next_endpoint();
    let trusted = table.trusted.contains(conn.peer.ip());
    let from = From {
        conn,
        trusted,
        host,
    };
    let mut upstream = match upstream_request(&decision, &endpoint, from, req, start) {
        Ok(u) => u,
        Err(e) => {
            if e.kind == ErrorKind::UpgradeRefused {
                state.backends.families.rejected_upgrade.inc();
            }
            return refuse(&e);
        }
    };
    let mut exchange = Exchange::new(decision.version.metrics.users.clone(), start);
    mirror(&decision, &mut upstream, &mut exchange);
    let timeouts = decision.rule.timeouts;
    let progress = upstream.progress.clone();
    let sent = endpoint.forward(
        Request::from_parts(upstream.parts, upstream.body),
        upstream.path,
    );
    let forwarded = tokio::select! {
        result = sent => result,
        kind = timeouts.before_headers(progress.as_deref(), start, &state.upload) => Err(ProxyError::bare(kind)),
    };
    match forwarded {
        Ok((resp, lease)) => {
            if let Some(e) = unasked_switch(&resp, upstream.upgrade.as_ref()) {
                return answer_failure(e, exchange, &decision, &endpoint);
            }
            let clock = BodyClock::new(timeouts, progress, start);
            let end = End {
                lease,
                exchange,
                clock,
            };
            let upgrade = upstream.upgrade.map(|(client, _)| (client, timeouts.idle));
            downstream_response(resp, end, upgrade, decision.set_cookie)
        }
        Err(e) => answer_failure(
            blame(e, progress.as_deref()),
            exchange,
            &decision,
            &endpoint,
        ),
    }
}

/// A request whose own body broke failed by the client's doing, whatever the upstream
/// side reported.
fn blame(e: ProxyError, progress: Option<&Progress>) -> ProxyError {
    match progress.map(Progress::stage) {
        Some(Stage::Failed(kind)) => ProxyError {
            kind,
            source: e.source,
        },
        _ => e,
    }
}

/// Phase 1: which service, rule and version the request goes to.
fn route<'t>(
    table: &'t crate::route::RouteTable,
    host: Option<&str>,
    req: &Request<Incoming>,
) -> Option<Decision<'t>> {
    let view = RequestView {
        method: req.method(),
        path: req.uri().path(),
        headers: req.headers(),
    };
    table.route(host, &view)
}

/// Where a request came from, as the upstream is told.
struct From {
    conn: ConnInfo,
    /// The peer is a trusted proxy: its forwarding headers are kept.
    trusted: bool,
    /// The host routed on (the upstream gets exactly this Host).
    host: Option<HeaderValue>,
}

/// The routed host as a header value: the request's own Host header when it says exactly
/// that (no copy), else a new value.
fn host_value(host: &str, headers: &http::HeaderMap) -> Result<HeaderValue, &'static str> {
    match headers.get(header::HOST) {
        Some(v) if v.as_bytes() == host.as_bytes() => Ok(v.clone()),
        _ => HeaderValue::from_str(host).map_err(|_| "the host is not a valid header value"),
    }
}

/// The request as it goes upstream.
struct UpstreamRequest {
    parts: http::request::Parts,
    body: RequestBody,
    /// How it reaches the endpoint (which decided the URI's form).
    path: Path,
    /// The client's side of an HTTP/1.1 upgrade, and the protocols the upstream was
    /// offered.
    upgrade: Option<(OnUpgrade, HeaderValue)>,
    /// How far the client's body has come (None: it had none).
    progress: Option<Arc<Progress>>,
}

/// Phase 2: the upstream request, with all header, Host and URI work done once: hop-by-hop
/// and `x-weir-*` headers out, forwarding headers in; origin-form URI for a pooled
/// HTTP/1.1 connection, absolute-form for an HTTP/2 stream and hyper's client; exactly one
/// `Host` (the one routed on) for HTTP/1.1, `:authority` for HTTP/2.
fn upstream_request(
    d: &Decision<'_>,
    endpoint: &Endpoint,
    from: From,
    mut req: Request<Incoming>,
    start: Instant,
) -> Result<UpstreamRequest, ProxyError> {
    let http2 = d.version.upstream.http2;
    let asked = match req.version() == HttpVersion::HTTP_11 {
        true => crate::headers::upgrade(req.headers(), &d.rule.upgrades),
        false => Upgrade::Plain,
    };
    let offered = match asked {
        Upgrade::Plain => None,
        Upgrade::Tunnel(protocols) if !http2 => Some(protocols),
        Upgrade::Tunnel(protocols) => {
            return Err(ProxyError::new(
                ErrorKind::UpgradeRefused,
                format!(
                    "upgrade to {protocols:?} cannot reach version {} of service {}: it speaks HTTP/2 to its endpoints",
                    d.version.name, d.service.name,
                ),
            ));
        }
        Upgrade::Refused(protocol) => {
            let allowed: Vec<&str> = d.rule.upgrades.iter().map(|u| &**u).collect();
            return Err(ProxyError::new(
                ErrorKind::UpgradeRefused,
                format!(
                    "upgrade to {protocol:?} is not allowed for service {} (its route allows: {})",
                    d.service.name,
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    },
                ),
            ));
        }
    };
    let tunnel = offered.is_some();
    let upgrade = offered.map(|p| (hyper::upgrade::on(&mut req), p));
    let path = endpoint.path_for(req.method(), tunnel);
    let (mut parts, body) = req.into_parts();
    let host_header = match from.host {
        Some(h) => h,
        None => HeaderValue::from_str(&endpoint.address)
            .map_err(|_| bad_request(format!("invalid Host {:?}", endpoint.address)))?,
    };
    let host = host_header
        .to_str()
        .map_err(|_| bad_request("invalid Host".to_string()))?;
    match path {
        Path::Pooled => {
            if parts.uri.authority().is_some() {
                // Absolute-form (or h2's `:authority`): the request line gets the origin
                // form, the host goes in Host below.
                let mut origin = http::uri::Parts::default();
                origin.path_and_query = parts.uri.path_and_query().cloned();
                parts.uri = Uri::from_parts(origin)
                    .map_err(|e| bad_request(format!("invalid URI: {e}")))?;
            }
        }
        Path::Multiplexed | Path::Client => {
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(host)
                .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
                .build()
                .map_err(|_| bad_request(format!("invalid Host {host:?}")))?;
        }
    }
    strip_hop_by_hop(&mut parts.headers, tunnel);
    if let Some((_, protocols)) = &upgrade {
        parts.headers.insert(header::UPGRADE, protocols.clone());
    }
    strip_inbound(&mut parts.headers, from.trusted);
    let scheme = if from.conn.tls { "https" } else { "http" };
    add_forwarding(&mut parts.headers, &from.conn.forwarded_for, scheme);
    if http2 {
        parts.version = HttpVersion::HTTP_2;
        // `:authority` carries the host; a second `host` header would be a duplicate.
        parts.headers.remove(header::HOST);
    } else {
        parts.version = HttpVersion::HTTP_11;
        // Usually the client's own Host already: then nothing is rewritten.
        if parts.headers.get(header::HOST) != Some(&host_header) {
            parts.headers.insert(header::HOST, host_header);
        }
    }
    let progress = (!body.is_end_stream()).then(|| Arc::new(Progress::new(start)));
    Ok(UpstreamRequest {
        parts,
        body: RequestBody::stream(body, progress.clone()),
        path,
        upgrade,
        progress,
    })
}

/// A `101` the request did not ask for (no upgrade, or another protocol than those
/// offered): the upstream's protocol error, answered `502`, never a tunnel.
fn unasked_switch(
    resp: &Response<Incoming>,
    upgrade: Option<&(OnUpgrade, HeaderValue)>,
) -> Option<ProxyError> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    match upgrade {
        Some((_, offered)) if switched_as_asked(resp.headers(), offered) => None,
        _ => Some(ProxyError::new(
            ErrorKind::UpstreamProtocol,
            format!(
                "the upstream switched protocols to {:?}, which the request was not sent with",
                resp.headers().get(header::UPGRADE)
            ),
        )),
    }
}

/// A request that cannot be forwarded as it is, and why (the body of weir's answer).
fn bad_request(why: String) -> ProxyError {
    ProxyError::new(ErrorKind::BadRequest, why)
}

/// weir's answer to a request it refused before forwarding it: the reason in the body
/// (no version is blamed, and nothing is counted: the exchange never started).
fn refuse(e: &ProxyError) -> Response<ResponseBody> {
    let why = e
        .source
        .as_ref()
        .map_or_else(|| e.kind.message().to_string(), |w| w.to_string());
    synthetic(e.kind, format!("weir: {why}\n"))
}

/// Phase 3: a copy to the shadow version when the rule mirrors this request.
fn mirror(d: &Decision<'_>, up: &mut UpstreamRequest, exchange: &mut Exchange) {
    let Some(rule) = d.rule.mirror.as_ref() else {
        return;
    };
    if !crate::split::chance(rule.percent) {
        return;
    }
    let version = &d.service.versions[rule.version];
    let shadow = Shadow {
        upstream: version.upstream.clone(),
        metrics: version.metrics.shadow.clone(),
    };
    if let Some(tx) = rule.start(shadow, &up.parts, &mut up.body) {
        exchange.compare_with(tx);
    }
}

/// What the response body carries to the end of the exchange.
struct End {
    lease: Option<Lease>,
    exchange: Exchange,
    clock: BodyClock,
}

/// Phase 5: the upstream's answer, as the client gets it; the exchange ends with its body.
/// An upgrade the upstream accepted becomes a tunnel under the route's idle timeout.
fn downstream_response(
    mut resp: Response<Incoming>,
    mut end: End,
    client_upgrade: Option<(OnUpgrade, std::time::Duration)>,
    set_cookie: Option<HeaderValue>,
) -> Response<ResponseBody> {
    let status = resp.status();
    end.exchange.respond(status.as_u16());
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if let (Some((client, idle)), true) = (client_upgrade, switching) {
        crate::tunnel::spawn(client, hyper::upgrade::on(&mut resp), idle);
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    if let Some(cookie) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    resp.map(|body| ResponseBody::upstream(body, end.lease, end.exchange, end.clock))
}

/// The request failed before a response: weir answers itself (400 or 408 for the
/// client's own mistakes, 502 or 504 for the upstream's), and the exchange ends here.
fn answer_failure(
    e: ProxyError,
    mut exchange: Exchange,
    d: &Decision<'_>,
    endpoint: &Endpoint,
) -> Response<ResponseBody> {
    match e.kind.side() {
        Side::Client => {
            tracing::info!(service = %d.service.name, version = %d.version.name, reason = e.kind.label(), error = %e, "client error, not counted against the version")
        }
        _ if once_a_second() => {
            tracing::warn!(service = %d.service.name, version = %d.version.name, endpoint = %endpoint.address, reason = e.kind.label(), error = %e, "upstream failed (at most one such line a second; the rest at debug)")
        }
        _ => {
            tracing::debug!(service = %d.service.name, version = %d.version.name, endpoint = %endpoint.address, reason = e.kind.label(), error = %e, "upstream failed")
        }
    }
    exchange.finish(Some(e.kind));
    // The body names the service and version; the endpoint's address stays in the log.
    let text = format!(
        "weir: {}: service {} version {}\n",
        e.kind.message(),
        d.service.name,
        d.version.name,
    );
    synthetic(e.kind, text)
}

/// True at most once a second (process-wide): failures with addresses reach the log
/// without a failing version flooding it.
fn once_a_second() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    now != last
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

static X_WEIR_ERROR: header::HeaderName = header::HeaderName::from_static("x-weir-error");

/// A response weir makes itself: status, a one-line text body, and the reason in
/// `x-weir-error` for machines.
pub(crate) fn synthetic(kind: ErrorKind, text: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::synthetic(Bytes::from(text)));
    *resp.status_mut() = kind.status();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(X_WEIR_ERROR.clone(), HeaderValue::from_static(kind.label()));
    resp
}
