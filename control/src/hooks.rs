//! Webhooks with Flagger's payload and rules (success is a status <= 202, per-attempt
//! timeout, retries on connection errors, 5xx and 429), and local `exec` hooks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::http_client::{HttpPoster, PostError};
use crate::machine::Phase;
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

/// Why a hook did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The webhook answered with a status above 202: its body, or the status.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Post(#[from] PostError),
    /// A manual gate: only `weir ctl approve` opens it.
    #[error("waiting for `weir ctl approve`")]
    Manual,
    #[error("cannot run {program:?}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The command exited with an error: the exit code and its last line on stderr.
    #[error("{0}")]
    Failed(String),
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

/// Runs one hook: Ok when it passed (HTTP status <= 202, or exit code 0).
pub async fn call(poster: &HttpPoster, hook: &Hook, payload: &Payload) -> Result<(), HookError> {
    let url = match &hook.action {
        HookAction::Http(url) => url,
        HookAction::Exec(argv) => return exec(hook, argv, payload).await,
        HookAction::Manual => return Err(HookError::Manual),
    };
    let mut body = serde_json::to_value(payload).unwrap_or_default();
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
                Ok(a) if a.body.is_empty() => HookError::Refused(format!("status {}", a.status)),
                Ok(a) => HookError::Refused(a.body),
                Err(e) => HookError::Post(e),
            });
        }
        attempt += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Runs a local command with the payload in `WEIR_HOOK_PAYLOAD`; exit code 0 passes.
async fn exec(hook: &Hook, argv: &[String], payload: &Payload) -> Result<(), HookError> {
    let [program, args @ ..] = argv else {
        return Err(HookError::Failed("an exec hook needs a command".into()));
    };
    let json = serde_json::to_string(payload).unwrap_or_default();
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
    let child = cmd.spawn().map_err(|e| HookError::Spawn {
        program: program.clone(),
        reason: e.to_string(),
    })?;
    let out = match tokio::time::timeout(hook.timeout, child.wait_with_output()).await {
        Err(_) => return Err(HookError::TimedOut(hook.timeout)),
        Ok(Err(e)) => return Err(HookError::Failed(e.to_string())),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = stderr.trim().lines().last().unwrap_or("").to_string();
    let code = out
        .status
        .code()
        .map(|c| format!("exit code {c}"))
        .unwrap_or_else(|| "killed by a signal".into());
    Err(HookError::Failed(if tail.is_empty() {
        code
    } else {
        format!("{code}: {tail}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::HookKind;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
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
                assert_eq!(
                    r.err().map(|e| e.to_string()).as_deref(),
                    Some("gate closed")
                );
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
            call(&HttpPoster::new(), &h, &p)
                .await
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("exit code 3: boom")
        );
        h.action = HookAction::Exec(vec!["sleep".into(), "5".into()]);
        h.timeout = Duration::from_millis(100);
        assert!(call(&HttpPoster::new(), &h, &p)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .starts_with("timed out"));
    }
}
