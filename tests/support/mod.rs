//! Test support: real upstream servers on loopback, the real `weir` binary, HTTP clients,
//! `/metrics` scraping and waiting for conditions with a deadline.
#![allow(dead_code)]

pub mod control;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type TestBody = BoxBody<Bytes, Infallible>;

/// A body from bytes.
pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A real HTTP/1.1 + h2c upstream on 127.0.0.1:0.
///
/// Paths: `/status/N` answers N; `/slow/MS` waits MS first; `/download/N` streams N bytes;
/// `/upload` counts the request body; `/trailers` answers with trailers; `/reset` drops the
/// connection; `/truncate/N` promises N bytes, sends 10 and closes; `/stall` sends its
/// headers and then nothing; `/trickle/N` sends N bytes one a second; anything else answers
/// 200 `<name>`. Every answer carries `x-served-by`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How an upstream answers every request (overriding the paths above).
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// The paths described on [`Upstream`].
    Normal,
    /// Accepts the connection and never answers.
    Stall,
    /// Answers every request with this status.
    Status(u16),
    /// Answers every request 200 with this body.
    Body(String),
    /// Answers every request with this many bytes.
    Huge(usize),
    /// Answers every request 200 after this many milliseconds.
    Delay(u64),
    /// Answers every request like `/truncate/1000`.
    Truncate,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_with(name, Behaviour::Normal).await
    }

    pub async fn start_with(name: &str, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, r, s, n) = (
            connections.clone(),
            requests.clone(),
            seen.clone(),
            name.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, s, n, b) = (r.clone(), s.clone(), n.clone(), behaviour.clone());
                tokio::spawn(async move {
                    if let Behaviour::Stall = b {
                        r.fetch_add(1, Ordering::SeqCst);
                        let _hold = stream;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let svc = hyper::service::service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        answer(req, n.clone(), s.clone(), b.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            connections,
            requests,
            seen,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request reached the upstream")
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Behaviour,
) -> Result<Response<TestBody>, std::io::Error> {
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    let mut body_len = 0usize;
    let mut body = body;
    // Read the body as a stream, never holding it whole.
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len();
                }
            }
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    seen.lock().expect("lock").push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len,
    });
    let mut parts_iter = path.trim_start_matches('/').splitn(2, '/');
    let (head, arg) = match &behaviour {
        // The upstream's own metrics are served whatever the behaviour.
        _ if path == "/metrics" => ("metrics", String::new()),
        Behaviour::Status(code) => ("status", code.to_string()),
        Behaviour::Huge(n) => ("download", n.to_string()),
        Behaviour::Body(b) => ("body", b.clone()),
        Behaviour::Delay(ms) => ("slow", ms.to_string()),
        Behaviour::Truncate => ("truncate", "1000".to_string()),
        _ => (
            parts_iter.next().unwrap_or(""),
            parts_iter.next().unwrap_or("").to_string(),
        ),
    };
    let arg = arg.as_str();
    let mut resp = match head {
        "status" => {
            let mut r = Response::new(full(format!("{name} status {arg}\n")));
            *r.status_mut() = arg
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            r
        }
        "slow" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(1000))).await;
            Response::new(full(format!("{name} slow\n")))
        }
        "download" => {
            let total: usize = arg.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = (0..total.div_ceil(64 * 1024)).map(move |i| {
                let len = (total - i * 64 * 1024).min(64 * 1024);
                Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
            });
            let stream = futures_util::stream::iter(chunks);
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert("content-length", total.into());
            r
        }
        "upload" => Response::new(full(format!("{body_len}"))),
        "metrics" => {
            // The upstream's own metrics, as an application exposes them.
            let served = seen.lock().expect("lock").len();
            Response::new(full(format!(
                "# TYPE upstream_requests_total counter\nupstream_requests_total{{name=\"{name}\"}} {served}\n"
            )))
        }
        "truncate" => {
            // Promises `arg` bytes and sends 10 (flushed with the headers); then the body
            // ends short and the connection closes mid-body.
            let chunk = futures_util::stream::unfold(0u8, |i| async move {
                match i {
                    0 => Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"0123456789"))),
                        1,
                    )),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        None
                    }
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(chunk)));
            r.headers_mut()
                .insert("content-length", arg.parse().unwrap_or(1000u64).into());
            r
        }
        "stall" => {
            let never = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
            Response::new(BodyExt::boxed(StreamBody::new(never)))
        }
        "trickle" => {
            let n: usize = arg.parse().unwrap_or(10);
            let bytes = futures_util::stream::unfold(0usize, move |i| async move {
                if i >= n {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x"))),
                    i + 1,
                ))
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(bytes)));
            r.headers_mut().insert("content-length", n.into());
            r
        }
        "body" => Response::new(full(arg.to_string())),
        "trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().expect("value"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"with trailers\n"))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
        }
        "reset" => return Err(std::io::Error::other("reset on purpose")),
        _ => Response::new(full(name.clone())),
    };
    resp.headers_mut()
        .insert("x-served-by", name.parse().expect("name is a header value"));
    Ok(resp)
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "weir-test-{}-{}-{tag}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The real `weir` binary running `weir run -c <file>`.
pub struct Weir {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub stderr: Arc<Mutex<String>>,
    pub control: Option<SocketAddr>,
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

impl Weir {
    /// Writes `yaml` (with `listen`/`admin` on port 0 unless given) and starts weir on it.
    pub fn start(yaml: &str) -> Weir {
        Weir::start_mode("run", yaml)
    }

    /// Like [`Weir::start`] with another subcommand (`proxy`: the data plane only).
    pub fn start_mode(mode: &str, yaml: &str) -> Weir {
        let dir = temp_dir("weir");
        let path = dir.join("weir.yaml");
        let mut text = String::new();
        if !yaml.contains("listen:") {
            text.push_str("listen: 127.0.0.1:0\n");
        }
        if !yaml.contains("admin:") {
            text.push_str("admin: 127.0.0.1:0\n");
        }
        text.push_str(yaml);
        std::fs::write(&path, text).expect("write config");
        Weir::spawn(mode, path)
    }

    /// The gRPC control address (`control: 127.0.0.1:0` in the config).
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control.expect("the config sets control:"))
    }

    pub fn start_file(path: PathBuf) -> Weir {
        Weir::spawn("run", path)
    }

    fn spawn(mode: &str, path: PathBuf) -> Weir {
        let mut child = Command::new(weir_bin())
            .args([mode, "-c"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start weir");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut proxy = None;
        let mut admin = None;
        let mut control = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while proxy.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "weir did not report its addresses; stderr:\n{}",
                    stderr.lock().expect("lock")
                )
            });
            if let Some(a) = line.strip_prefix("weir: proxy listening on ") {
                proxy = a.parse().ok();
            }
            if let Some(a) = line.strip_prefix("weir: admin listening on ") {
                admin = a.parse().ok();
            }
            if let Some(a) = line.strip_prefix("weir: control listening on ") {
                control = a.parse().ok();
            }
        }
        Weir {
            child,
            proxy: proxy.expect("proxy address"),
            admin: admin.expect("admin address"),
            config_path: path,
            stderr,
            control,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Scrapes `/metrics` and returns the value of one series (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = get_text(&self.admin_url("/metrics")).await;
        metric_value(&text, name, labels)
    }

    /// Peak resident memory of the process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

/// The value of a series in Prometheus text; labels must all match (others are ignored).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let parsed: HashMap<&str, &str> = label_text
            .split("\",")
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim_matches(','), v.trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| parsed.get(k) == Some(v)) {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
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
    format!(
        r#"services:
  - name: podinfo
    namespace: test
    hosts: ["*"]
    port: 9898
    versions:
      primary: {{ endpoints: ["{}"] }}
      canary: {{ endpoints: ["{}"] }}
    routes:
{routes}
"#,
        primary.endpoint(),
        canary.endpoint()
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
                        match tokio::time::timeout(Duration::from_secs(10), client.request(req))
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
