//! Webhooks with Flagger's payload and rules (success is a status <= 202, per-attempt
//! timeout, retries on connection errors, 5xx and 429), and local `exec` hooks.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::collections::BTreeMap;

use crate::analysis::Phase;
use crate::spec::{Hook, HookAction};

/// Flagger's `CanaryWebhookPayload`.
#[derive(Debug, Clone, Serialize)]
pub struct Payload {
    pub name: String,
    pub namespace: String,
    pub phase: String,
    /// Identifies the revision under test.
    pub checksum: String,
    pub metadata: BTreeMap<String, String>,
}

/// FNV-1a of the revision: the payload's checksum.
pub fn checksum(revision: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in revision.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// Posts JSON to webhooks and alert providers, over http or https (webpki roots).
#[derive(Clone)]
pub struct HttpPoster {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for HttpPoster {
    fn default() -> Self {
        Self::new()
    }
}

/// The answer to one POST.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl HttpPoster {
    /// A client with its own small connection pool.
    pub fn new() -> HttpPoster {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        HttpPoster {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
        }
    }

    /// POSTs `body` as JSON, within `timeout`.
    pub async fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let req = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("weir/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(1024)])
                .trim()
                .to_string();
            Ok(Answer { status, body: text })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("{url}: timed out after {timeout:?}")),
        }
    }
}

/// Runs one hook: Ok when it passed (HTTP status <= 202, or exit code 0).
pub async fn call(poster: &HttpPoster, hook: &Hook, payload: &Payload) -> Result<(), String> {
    let url = match &hook.action {
        HookAction::Http(url) => url,
        HookAction::Exec(argv) => return exec(hook, argv, payload).await,
        HookAction::Manual => return Err("waiting for `weir ctl approve`".into()),
    };
    let mut body = serde_json::to_value(payload).map_err(|e| e.to_string())?;
    if let Some(meta) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for (k, v) in &hook.metadata {
            meta.entry(k.clone()).or_insert_with(|| v.clone().into());
        }
    }
    let mut backoff = Duration::from_secs(1);
    let mut attempt = 0;
    loop {
        let outcome = poster.post(url, &body, hook.timeout).await;
        let retryable = match &outcome {
            Ok(a) if a.status <= 202 => return Ok(()),
            Ok(a) => a.status >= 500 || a.status == 429,
            Err(_) => true,
        };
        if !retryable || attempt >= hook.retries {
            return Err(match outcome {
                Ok(a) if a.body.is_empty() => format!("status {}", a.status),
                Ok(a) => a.body,
                Err(e) => e,
            });
        }
        attempt += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Runs a local command with the payload in `WEIR_HOOK_PAYLOAD`; exit code 0 passes.
async fn exec(hook: &Hook, argv: &[String], payload: &Payload) -> Result<(), String> {
    let [program, args @ ..] = argv else {
        return Err("an exec hook needs a command".into());
    };
    let json = serde_json::to_string(payload).map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("WEIR_HOOK_PAYLOAD", json)
        .env("WEIR_SERVICE", &payload.name)
        .env("WEIR_NAMESPACE", &payload.namespace)
        .env("WEIR_PHASE", &payload.phase)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    match tokio::time::timeout(hook.timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("timed out after {:?}", hook.timeout)),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail = stderr.trim().lines().last().unwrap_or("").to_string();
            let code = out
                .status
                .code()
                .map(|c| format!("exit code {c}"))
                .unwrap_or_else(|| "killed by a signal".into());
            Err(if tail.is_empty() {
                code
            } else {
                format!("{code}: {tail}")
            })
        }
    }
}

/// The payload for a hook call.
pub fn payload(name: &str, namespace: &str, phase: Phase, revision: Option<&str>) -> Payload {
    Payload {
        name: name.into(),
        namespace: namespace.into(),
        phase: phase.name().into(),
        checksum: checksum(revision.unwrap_or("")),
        metadata: BTreeMap::new(),
    }
}

/// An error and its causes on one line: `outer: inner: root`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    use std::fmt::Write;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let _ = write!(msg, ": {s}");
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::HookKind;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A real HTTP server on loopback answering with scripted statuses.
    async fn server(
        statuses: Vec<u16>,
    ) -> (
        String,
        Arc<AtomicUsize>,
        tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let statuses = statuses.clone();
                let counter = counter.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            let status = statuses[n.min(statuses.len() - 1)];
                            let tx = tx.clone();
                            async move {
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                if let Ok(v) = serde_json::from_slice(&body) {
                                    let _ = tx.send(v);
                                }
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"gate closed")))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}/"), hits, rx)
    }

    fn hook(url: &str, retries: u32) -> Hook {
        Hook {
            name: "h".into(),
            kind: HookKind::Rollout,
            action: HookAction::Http(url.into()),
            timeout: Duration::from_secs(2),
            retries,
            metadata: [("cmd".to_string(), "hey".to_string())].into(),
            mute_alert: false,
        }
    }

    #[tokio::test]
    async fn statuses_up_to_202_pass_and_203_fails() {
        let poster = HttpPoster::new();
        let p = payload("podinfo", "test", Phase::Progressing, Some("2.0.0"));
        for (status, ok) in [
            (200, true),
            (201, true),
            (202, true),
            (203, false),
            (204, false),
            (403, false),
        ] {
            let (url, _, mut rx) = server(vec![status]).await;
            let r = call(&poster, &hook(&url, 0), &p).await;
            assert_eq!(r.is_ok(), ok, "status {status}: {r:?}");
            let body = rx.recv().await.expect("payload");
            assert_eq!(body["name"], "podinfo");
            assert_eq!(body["namespace"], "test");
            assert_eq!(body["phase"], "Progressing");
            assert_eq!(body["checksum"], checksum("2.0.0"));
            assert_eq!(body["metadata"]["cmd"], "hey");
            if !ok && status != 204 {
                assert_eq!(r.err().as_deref(), Some("gate closed"));
            }
        }
    }

    #[tokio::test]
    async fn a_500_is_retried_when_retries_allow() {
        let poster = HttpPoster::new();
        let p = payload("podinfo", "test", Phase::Progressing, None);
        let (url, hits, _rx) = server(vec![500, 202]).await;
        assert!(call(&poster, &hook(&url, 1), &p).await.is_ok());
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        let (url, hits, _rx) = server(vec![500, 202]).await;
        assert!(call(&poster, &hook(&url, 0), &p).await.is_err());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let (url, hits, _rx) = server(vec![403, 202]).await;
        assert!(
            call(&poster, &hook(&url, 3), &p).await.is_err(),
            "4xx is not retried"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn https_urls_speak_tls() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let first = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut b = [0u8; 3];
            s.read_exact(&mut b).await.expect("read");
            b
        });
        let r = HttpPoster::new()
            .post(
                &format!("https://{addr}/"),
                &serde_json::json!({}),
                Duration::from_secs(1),
            )
            .await;
        assert!(r.is_err(), "nothing answers the handshake");
        let hello = tokio::time::timeout(Duration::from_secs(5), first)
            .await
            .unwrap_or_else(|_| panic!("no TLS connection was made: {r:?}"))
            .expect("server task");
        assert_eq!(hello[0], 0x16, "a TLS handshake record");
        assert_eq!(hello[1], 0x03);
    }

    #[tokio::test]
    async fn exec_hooks_pass_on_exit_code_zero_and_time_out() {
        let p = payload("podinfo", "test", Phase::Progressing, None);
        let mut h = hook("http://unused/", 0);
        h.action = HookAction::Exec(vec![
            "sh".into(),
            "-c".into(),
            "test \"$WEIR_SERVICE\" = podinfo".into(),
        ]);
        assert!(call(&HttpPoster::new(), &h, &p).await.is_ok());
        h.action = HookAction::Exec(vec![
            "sh".into(),
            "-c".into(),
            "echo boom >&2; exit 3".into(),
        ]);
        assert_eq!(
            call(&HttpPoster::new(), &h, &p).await.err().as_deref(),
            Some("exit code 3: boom")
        );
        h.action = HookAction::Exec(vec!["sleep".into(), "5".into()]);
        h.timeout = Duration::from_millis(100);
        assert!(call(&HttpPoster::new(), &h, &p)
            .await
            .err()
            .unwrap_or_default()
            .starts_with("timed out"));
    }
}
