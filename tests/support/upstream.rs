//! A real HTTP/1.1 + h2c upstream on loopback that records what it saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::*;

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
/// 200 `<name>`. Every answer carries `x-served-by`. An HTTP/1.1 upgrade request is
/// accepted whatever its path (`101`): `h2c` switches the connection to HTTP/2 (as h2c
/// servers do), any other protocol echoes the bytes it gets.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub connections: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Counts a connection as open until it is dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
    /// Answers one request in N with 500, the others 200.
    FailOneIn(usize),
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_with(name, Behaviour::Normal).await
    }

    pub async fn start_with(name: &str, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Upstream::serve(name, behaviour, listener)
    }

    /// An upstream at `addr` (another loopback address, say), or None when it is taken.
    pub async fn start_at(name: &str, behaviour: Behaviour, addr: SocketAddr) -> Option<Upstream> {
        let listener = TcpListener::bind(addr).await.ok()?;
        Some(Upstream::serve(name, behaviour, listener))
    }

    fn serve(name: &str, behaviour: Behaviour, listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, o, r, s, n) = (
            connections.clone(),
            open.clone(),
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
                let open = OpenGuard::new(o.clone());
                tokio::spawn(async move {
                    let _open = open;
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
            open,
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

/// Accepts an upgrade: `101` with the protocol asked for, then HTTP/2 on the connection
/// for `h2c`, an echo for anything else.
fn accept_upgrade(req: &mut Request<Incoming>, name: &str) -> Option<Response<TestBody>> {
    let protocol = req
        .headers()
        .get(http::header::UPGRADE)?
        .to_str()
        .ok()?
        .split(',')
        .next()?
        .trim()
        .to_string();
    let upgrading = hyper::upgrade::on(req);
    let (h2c, name) = (protocol.eq_ignore_ascii_case("h2c"), name.to_string());
    tokio::spawn(async move {
        let Ok(upgraded) = upgrading.await else {
            return;
        };
        if h2c {
            let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(Response::new(full(format!("{name} over h2c")))) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(upgraded, svc)
                .await;
        } else {
            let mut io = TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(http::header::CONNECTION, "upgrade".parse().ok()?);
    headers.insert(http::header::UPGRADE, protocol.parse().ok()?);
    Some(resp)
}

async fn answer(
    mut req: Request<Incoming>,
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Behaviour,
) -> Result<Response<TestBody>, std::io::Error> {
    if req.version() == http::Version::HTTP_11 && req.headers().contains_key(http::header::UPGRADE)
    {
        let seen_now = Seen {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            version: req.version(),
            headers: req.headers().clone(),
            body_len: 0,
        };
        if let Some(resp) = accept_upgrade(&mut req, &name) {
            seen.lock().expect("lock").push(seen_now);
            return Ok(resp);
        }
    }
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
    let nth = {
        let mut seen = seen.lock().expect("lock");
        seen.push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body_len,
        });
        seen.len()
    };
    let mut parts_iter = path.trim_start_matches('/').splitn(2, '/');
    let (head, arg) = match &behaviour {
        // The upstream's own metrics are served whatever the behaviour.
        _ if path == "/metrics" => ("metrics", String::new()),
        Behaviour::Status(code) => ("status", code.to_string()),
        Behaviour::FailOneIn(n) if nth % n == 0 => ("status", "500".to_string()),
        Behaviour::FailOneIn(_) => ("", String::new()),
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
