//! Shadow mirroring: a copy of the user's request goes to a shadow version whose answer is
//! read to the end and discarded (or compared). The user never waits for the shadow.
//!
//! Bounds: the request body is copied only up to `maxBodyBytes` (a larger body, or one
//! with no length that runs past it, is served but not mirrored); at most `maxInFlight`
//! mirrors per service (more are dropped); each mirror has its own timeout; the shadow's
//! answer is streamed and dropped frame by frame, never held.

use std::hash::Hasher;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus::IntCounter;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::body::RequestBody;
use crate::measure::{FailureReason, VersionMetrics};
use crate::upstream::{classify, Upstream};

/// `reason` values of `weir_mirror_skipped_total`.
pub const SKIP_REASONS: [&str; 3] = ["body_too_large", "saturated", "aborted"];
/// `result` values of `weir_mirror_comparisons_total`.
pub const COMPARISON_RESULTS: [&str; 3] = ["match", "status_mismatch", "body_mismatch"];

/// The `x-weir-shadow` header added to mirrored requests.
pub static X_WEIR_SHADOW: header::HeaderName = header::HeaderName::from_static("x-weir-shadow");

/// A rule's mirror settings, resolved.
pub struct MirrorRule {
    /// Shadow version index.
    pub version: usize,
    /// Share of requests mirrored, in percent.
    pub percent: f64,
    /// Compare the shadow's answer with the user's.
    pub compare: bool,
    /// Largest body copied.
    pub max_body: usize,
    /// Time allowed for the shadow's whole answer.
    pub timeout: Duration,
    /// The service's in-flight bound.
    pub slots: Arc<Semaphore>,
    /// Skip counters, indexed like [`SKIP_REASONS`].
    pub skipped: [IntCounter; 3],
    /// Comparison counters, indexed like [`COMPARISON_RESULTS`].
    pub comparisons: [IntCounter; 3],
}

/// What the primary side reports for a comparison: status and body hash.
pub type PrimaryOutcome = (u16, u64);

/// The shadow version a mirror goes to.
pub struct Shadow {
    /// Its pools.
    pub upstream: Arc<Upstream>,
    /// Its mirrored-traffic measurements.
    pub metrics: Arc<VersionMetrics>,
}

/// Starts a mirror of a request whose head is `head`; returns the body to send to the
/// user's upstream (a tee when the body must be copied) and, when comparing, the sender
/// the user's response reports its outcome on.
pub fn start(
    rule: &MirrorRule,
    shadow: Shadow,
    head: &http::request::Parts,
    body: Incoming,
) -> (RequestBody, Option<oneshot::Sender<PrimaryOutcome>>) {
    let known_len = body.size_hint().exact();
    if known_len.is_some_and(|n| n > rule.max_body as u64) {
        rule.skipped[0].inc();
        return (RequestBody::Stream(body), None);
    }
    let Ok(permit) = rule.slots.clone().try_acquire_owned() else {
        rule.skipped[1].inc();
        return (RequestBody::Stream(body), None);
    };
    let shadow_head = shadow_head(head, shadow.upstream.http2);
    let (compare_tx, compare_rx) = if rule.compare {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (source, user_body) = if body.is_end_stream() {
        (BodySource::Ready(Bytes::new()), RequestBody::Stream(body))
    } else {
        let (tx, rx) = oneshot::channel();
        let tee = Tee {
            inner: body,
            copied: Vec::new(),
            size: 0,
            limit: rule.max_body,
            tx: Some(tx),
            too_large: rule.skipped[0].clone(),
        };
        (BodySource::Pending(rx), RequestBody::Tee(Box::new(tee)))
    };
    let job = Job {
        shadow,
        head: shadow_head,
        source,
        timeout: rule.timeout,
        compare: compare_rx.map(|rx| (rx, rule.comparisons.clone())),
        aborted: rule.skipped[2].clone(),
        _permit: permit,
    };
    mirror_runtime().spawn(job.run());
    (user_body, compare_tx)
}

/// Mirrors run on their own single-threaded runtime, so a burst of shadow work (1,024
/// connections opening to a stalled shadow, say) never queues in front of users' tasks;
/// the OS shares the cores instead.
fn mirror_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("weir-mirror".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = tx.send(Some(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(_) => {
                        let _ = tx.send(None);
                    }
                }
            });
        let own = spawned.ok().and_then(|_| rx.recv().ok().flatten());
        // Without a thread of its own, mirrors share the caller's runtime.
        own.unwrap_or_else(tokio::runtime::Handle::current)
    })
}

/// The shadow's copy of the request head: Host gets `-shadow` (before any port), and
/// `x-weir-shadow: 1` marks it so the shadow can suppress side effects.
fn shadow_head(head: &http::request::Parts, http2: bool) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = head.method.clone();
    parts.headers = head.headers.clone();
    parts.version = if http2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let host = head
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            head.headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let shadow_host = host.map(|h| match h.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty()
                && !name.contains(':')
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{h}-shadow"),
    });
    let pq = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let authority = shadow_host.clone().unwrap_or_else(|| "shadow".to_string());
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(pq)
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://shadow/"));
    parts.headers.remove(header::HOST);
    if !http2 {
        if let Some(v) = shadow_host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    parts
        .headers
        .insert(X_WEIR_SHADOW.clone(), HeaderValue::from_static("1"));
    parts
}

enum BodySource {
    Ready(Bytes),
    /// The tee sends the copy (None when the body ran past the limit) once the user's
    /// body is complete; a dropped sender means the user's request never completed.
    Pending(oneshot::Receiver<Option<Bytes>>),
}

struct Job {
    shadow: Shadow,
    head: http::request::Parts,
    source: BodySource,
    timeout: Duration,
    compare: Option<(oneshot::Receiver<PrimaryOutcome>, [IntCounter; 3])>,
    aborted: IntCounter,
    _permit: OwnedSemaphorePermit,
}

impl Job {
    async fn run(self) {
        let body = match self.source {
            BodySource::Ready(b) => b,
            BodySource::Pending(rx) => match rx.await {
                Ok(Some(b)) => b,
                // Too large: already counted.
                Ok(None) => return,
                Err(_) => {
                    self.aborted.inc();
                    return;
                }
            },
        };
        let start = Instant::now();
        let metrics = &self.shadow.metrics;
        let endpoint = self.shadow.upstream.next_endpoint();
        let req = Request::from_parts(
            self.head,
            RequestBody::Full((!body.is_empty()).then_some(body)),
        );
        let sent = endpoint.send(req);
        let outcome = tokio::time::timeout(self.timeout, async move {
            let resp = sent.await.map_err(|e| classify(&e))?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut hasher = body_hasher();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| FailureReason::Reset)?;
                if let Some(d) = frame.data_ref() {
                    hasher.write(d);
                }
            }
            Ok::<_, FailureReason>((status, hasher.finish()))
        })
        .await
        .unwrap_or(Err(FailureReason::Timeout));
        match outcome {
            Ok((status, hash)) => {
                metrics.record_status(status);
                metrics.record_latency(start.elapsed());
                if let Some((rx, counters)) = self.compare {
                    if let Ok((primary_status, primary_hash)) = rx.await {
                        let result = if primary_status != status {
                            1
                        } else if primary_hash != hash {
                            2
                        } else {
                            0
                        };
                        counters[result].inc();
                    }
                }
            }
            Err(reason) => {
                metrics.record_failure(reason);
                metrics.record_status(if reason == FailureReason::Timeout {
                    504
                } else {
                    502
                });
                metrics.record_latency(start.elapsed());
            }
        }
    }
}

/// The hash both sides of a comparison use (SipHash; not for secrets).
#[allow(deprecated)]
pub type BodyHasher = std::hash::SipHasher;

/// A fresh body hasher with fixed keys, so both sides agree.
pub fn body_hasher() -> BodyHasher {
    #[allow(deprecated)]
    BodyHasher::new_with_keys(1, 2)
}

/// The user's request body, streamed to the user's upstream while a bounded copy is kept
/// for the shadow.
pub struct Tee {
    inner: Incoming,
    copied: Vec<Bytes>,
    size: usize,
    limit: usize,
    tx: Option<oneshot::Sender<Option<Bytes>>>,
    too_large: IntCounter,
}

impl Tee {
    fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let mut all = BytesMut::with_capacity(self.size);
            for b in self.copied.drain(..) {
                all.extend_from_slice(&b);
            }
            let _ = tx.send(Some(all.freeze()));
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), true) = (frame.data_ref(), self.tx.is_some()) {
                    self.size += d.len();
                    if self.size > self.limit {
                        if let Some(tx) = self.tx.take() {
                            let _ = tx.send(None);
                        }
                        self.copied = Vec::new();
                        self.too_large.inc();
                    } else {
                        let d = d.clone();
                        self.copied.push(d);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => {
                self.tx = None;
                self.copied = Vec::new();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
