//! The admin listener (`/metrics`, `/ready`, `/live`, `/config`, and the pages whoever
//! drives the proxy adds, [`AdminPages`]) and the metrics listener (`/metrics`, `/ready`
//! and `/live` only, for Prometheus and probes off the pod).

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::ResponseBody;
use crate::state::ProxyState;

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::synthetic(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The effective routes and weights, as served on `/config`.
pub(crate) fn config_json(state: &ProxyState) -> serde_json::Value {
    let table = state.table.load_full();
    let services: Vec<serde_json::Value> = table
        .services
        .iter()
        .map(|svc| {
            let weights = svc.weights();
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            let versions: Vec<serde_json::Value> = svc
                .versions
                .iter()
                .zip(&weights)
                .map(|(v, w)| {
                    let share = if total == 0 {
                        0.0
                    } else {
                        100.0 * f64::from(*w) / total as f64
                    };
                    // The version as the service was last built (its revision too: the
                    // upstream is kept across changes that leave its connections alone).
                    let cfg = svc.routing.versions.get(&v.name);
                    serde_json::json!({
                        "name": v.name,
                        "weight": w,
                        "percent": share,
                        "endpoints": cfg.map(|c| &c.endpoints),
                        "addresses": v.upstream.addresses(),
                        "revision": cfg.and_then(|c| c.revision.as_ref()),
                        "http2": v.upstream.http2,
                    })
                })
                .collect();
            serde_json::json!({ "name": svc.name, "versions": versions })
        })
        .collect();
    let mut config = serde_json::to_value(state.listeners()).unwrap_or_default();
    if let Some(c) = config.as_object_mut() {
        c.remove("services");
    }
    crate::redact::json(&mut config);
    let routing = state.routing();
    let snapshots: Vec<serde_json::Value> = routing
        .services
        .values()
        .map(|s| serde_json::to_value(&**s).unwrap_or_default())
        .collect();
    let mut routing = serde_json::json!({ "version": routing.version, "services": snapshots });
    crate::redact::json(&mut routing);
    let mut out = serde_json::json!({ "services": services, "config": config, "routing": routing });
    if let Some(describe) = state.describe() {
        let mut more = describe();
        crate::redact::json(&mut more);
        if let (Some(out), serde_json::Value::Object(more)) = (out.as_object_mut(), more) {
            out.extend(more);
        }
    }
    out
}

/// A response body of the admin listener: whole, or a stream (server-sent events).
pub type AdminBody = BoxBody<Bytes, std::io::Error>;

/// More pages for the admin listener (never the metrics listener), from whoever drives
/// the proxy: the controller's dashboard.
pub trait AdminPages: Send + Sync {
    /// The response for a GET of `path`, or None when the path is not one of these pages.
    fn page(&self, path: &str) -> Option<Response<AdminBody>>;
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoints {
    /// Everything, `/config` included.
    Admin,
    /// `/metrics`, `/ready` and `/live` only.
    Metrics,
}

async fn handle(
    state: Arc<ProxyState>,
    endpoints: Endpoints,
    pages: Option<&dyn AdminPages>,
    req: Request<Incoming>,
) -> Response<AdminBody> {
    if let Some(pages) = pages.filter(|_| endpoints == Endpoints::Admin) {
        if req.method() == Method::GET {
            if let Some(resp) = pages.page(req.uri().path()) {
                return resp;
            }
        }
    }
    own(state, endpoints, req)
        .await
        .map(|b| b.map_err(std::io::Error::other).boxed())
}

async fn own(
    state: Arc<ProxyState>,
    endpoints: Endpoints,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "weir admin: only GET\n",
        );
    }
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.backends.families.render(),
        ),
        "/ready" => {
            if state.draining.load(Ordering::SeqCst) {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n")
            } else if state.awaiting_routing.load(Ordering::SeqCst) {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "NO ROUTING YET\n",
                )
            } else {
                reply(StatusCode::OK, "text/plain", "LIVE\n")
            }
        }
        "/live" => reply(StatusCode::OK, "text/plain", "OK\n"),
        "/config" | "/config_dump" if endpoints == Endpoints::Admin => {
            let body = serde_json::to_vec_pretty(&config_json(&state)).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body)
        }
        _ if endpoints == Endpoints::Metrics => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "weir metrics: try /metrics, /ready or /live\n",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "weir admin: try /metrics, /ready, /live or /config\n",
        ),
    }
}

/// Serves `endpoints` (and `pages`) until `shutdown` resolves.
pub(crate) async fn serve(
    state: Arc<ProxyState>,
    endpoints: Endpoints,
    pages: Option<Arc<dyn AdminPages>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        let builder = builder.clone();
        let pages = pages.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (state, pages) = (state.clone(), pages.clone());
                async move { Ok::<_, Infallible>(handle(state, endpoints, pages.as_deref(), req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
