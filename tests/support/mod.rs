//! Test support: real upstream servers on loopback, the real `weir` binary, HTTP clients,
//! `/metrics` scraping and waiting for conditions with a deadline.
#![allow(dead_code)]

pub mod browser;
pub mod control;
pub mod dns;
pub mod envoy;
pub mod nginx;
pub mod pki;
mod upstream;
mod weir;

pub use upstream::*;
pub use weir::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type TestBody = BoxBody<Bytes, Infallible>;

/// A body from bytes.
pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// An HTTP/1.1 client (keep-alive pool).
pub fn http1_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client that dials the proxy at `addr` whatever the
/// URI's host is (see [`ResolveToProxy`]).
pub fn h2_client_to(addr: SocketAddr) -> Client<ResolveToProxy, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(ResolveToProxy(addr))
}

/// A response read whole.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a request and reads the whole response (with trailers).
pub async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
    req: Request<TestBody>,
) -> Got {
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response within 30s")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// GET with optional headers over HTTP/1.1.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        &http1_client(),
        b.body(full(Bytes::new())).expect("request"),
    )
    .await
}

/// GET a URL and return the body as text.
pub async fn get_text(url: &str) -> String {
    get(url, &[]).await.text()
}

/// Waits until `check` returns true, or panics after `limit` with `what`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A loopback port nothing listens on (bound then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The standard two-version service config used by many tests.
pub fn two_versions(primary: &Upstream, canary: &Upstream, routes: &str) -> String {
    podinfo_yaml(
        &primary.endpoint(),
        &canary.endpoint(),
        "",
        &format!("    routes:\n{routes}\n"),
    )
}

/// `services:` with podinfo (namespace test, every host, port 9898), its primary and
/// canary at these endpoints (`settings` added to each, like `, revision: "1"`), then
/// `tail` (its routes or analysis, indented four spaces).
pub fn podinfo_yaml(primary: &str, canary: &str, settings: &str, tail: &str) -> String {
    format!(
        r#"services:
  - name: podinfo
    namespace: test
    hosts: ["*"]
    port: 9898
    versions:
      primary: {{ endpoints: ["{primary}"]{settings} }}
      canary: {{ endpoints: ["{canary}"]{settings} }}
{tail}"#
    )
}

/// Dials the proxy whatever the URI's host is, so a test can send `:authority: b`.
#[derive(Clone)]
pub struct ResolveToProxy(pub std::net::SocketAddr);

impl tower_service::Service<http::Uri> for ResolveToProxy {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::TcpStream::connect(addr).await?,
            ))
        })
    }
}

/// A loopback HTTP server that records the JSON bodies posted to it (webhooks, alerts)
/// and answers 200.
pub struct Capture {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Capture {
    pub async fn start() -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind capture");
        let addr = listener.local_addr().expect("addr");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let b = b.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let b = b.clone();
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let v =
                                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                            b.lock().expect("lock").push(v);
                            Ok::<_, Infallible>(Response::new(full("ok")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Capture { addr, bodies, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().expect("lock").clone()
    }
}

/// A bounded background load: `rps` GETs per second to `url` until dropped or `limit`.
pub struct Load {
    pub failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Load {
    pub fn start(url: String, rps: u64, limit: Duration) -> Load {
        let failed = Arc::new(AtomicUsize::new(0));
        let f = failed.clone();
        let task = tokio::spawn(async move {
            let client = http1_client();
            let gap = Duration::from_secs_f64(1.0 / rps.max(1) as f64);
            let start = tokio::time::Instant::now();
            let mut i: u32 = 0;
            while start.elapsed() < limit {
                tokio::time::sleep_until(start + gap * i).await;
                i += 1;
                let (client, url, f) = (client.clone(), url.clone(), f.clone());
                tokio::spawn(async move {
                    let req = Request::get(url).body(full("")).expect("request");
                    let ok =
                        match tokio::time::timeout(Duration::from_secs(30), client.request(req))
                            .await
                        {
                            Ok(Ok(resp)) => {
                                let ok = resp.status().is_success();
                                ok && resp.into_body().collect().await.is_ok()
                            }
                            _ => false,
                        };
                    if !ok {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Load { failed, task }
    }
}

/// What a raw exchange read: the text, and whether the server closed the connection (as
/// opposed to the reader giving up after a generous minute).
#[derive(Debug)]
pub struct RawReply {
    pub text: String,
    pub closed: bool,
}

/// Sends raw bytes on a fresh connection and reads until the server closes (or a minute).
pub async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> RawReply {
    use std::io::{Read, Write};
    let request = request.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        s.write_all(&request).expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    break e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut
                }
            }
        };
        RawReply {
            text: String::from_utf8_lossy(&out).into_owned(),
            closed,
        }
    })
    .await
    .expect("raw exchange")
}
