//! Shadow mirroring: a copy of the user's request goes to a shadow version whose answer is
//! read to the end and discarded (or compared). The user never waits for the shadow.
//!
//! Bounds: the request body is copied only up to `maxBodyBytes` (a larger body, or one
//! with no length that runs past it, is served but not mirrored); at most `maxInFlight`
//! mirrors per service (more are dropped); each mirror has its own timeout; the shadow's
//! answer is streamed and dropped frame by frame, never held.

use std::collections::VecDeque;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::body::{Copy, RequestBody};
use crate::error::ErrorKind;
use crate::exchange::{body_hasher, Exchange, PrimaryOutcome};
use crate::headers::shadow_host;
use crate::measure::{Comparison, MirrorSkip, VersionMetrics};
use crate::upstream::Upstream;

/// The `x-weir-shadow` header added to mirrored requests.
pub(crate) static X_WEIR_SHADOW: header::HeaderName =
    header::HeaderName::from_static("x-weir-shadow");

/// A rule's mirror settings, resolved when the route table is built.
pub(crate) struct MirrorRule {
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
    /// Skip counters, indexed like [`MirrorSkip::ALL`].
    pub skipped: [IntCounter; 3],
    /// Comparison counters, indexed like [`Comparison::ALL`].
    pub comparisons: [IntCounter; 3],
}

/// The shadow version a mirror goes to.
pub(crate) struct Shadow {
    /// Its endpoints.
    pub upstream: Arc<Upstream>,
    /// Its mirrored-traffic measurements.
    pub metrics: Arc<VersionMetrics>,
}

impl MirrorRule {
    fn skip(&self, why: MirrorSkip) {
        self.skipped[why as usize].inc();
    }

    /// Starts a mirror of the request whose upstream head is `head` and whose body is
    /// `body` (a copy is attached to it when needed); returns the sender the user's
    /// response reports its outcome on when comparing.
    pub(crate) fn start(
        &self,
        shadow: Shadow,
        head: &http::request::Parts,
        body: &mut RequestBody,
    ) -> Option<oneshot::Sender<PrimaryOutcome>> {
        if body
            .size_hint()
            .exact()
            .is_some_and(|n| n > self.max_body as u64)
        {
            self.skip(MirrorSkip::BodyTooLarge);
            return None;
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.skip(MirrorSkip::Saturated);
            return None;
        };
        let empty = body.is_end_stream();
        let source = match body {
            _ if empty => BodySource::Ready,
            RequestBody::Stream { copy, .. } => {
                let (tx, rx) = oneshot::channel();
                let too_large = self.skipped[MirrorSkip::BodyTooLarge as usize].clone();
                *copy = Some(Box::new(Copy::new(self.max_body, tx, too_large)));
                BodySource::Pending(rx)
            }
            RequestBody::Chunks(chunks) => BodySource::Held(chunks.clone()),
        };
        let (compare_tx, compare) = if self.compare {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some((rx, self.comparisons.clone())))
        } else {
            (None, None)
        };
        let job = Job {
            head: shadow_head(head, shadow.upstream.http2),
            shadow,
            source,
            timeout: self.timeout,
            compare,
            aborted: self.skipped[MirrorSkip::Aborted as usize].clone(),
            _permit: permit,
        };
        mirror_runtime().spawn(job.run());
        compare_tx
    }
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
    let host = crate::headers::authority_of(&head.uri, &head.headers).map(shadow_host);
    let pq = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(host.as_deref().unwrap_or("shadow"))
        .path_and_query(pq)
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://shadow/"));
    parts.headers.remove(header::HOST);
    if !http2 {
        if let Some(v) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    parts
        .headers
        .insert(X_WEIR_SHADOW.clone(), HeaderValue::from_static("1"));
    parts
}

enum BodySource {
    /// No body.
    Ready,
    /// A body weir already holds.
    Held(VecDeque<Bytes>),
    /// The copy arrives when the user's body is complete (None: past the limit, already
    /// counted); a dropped sender means the user's request never completed.
    Pending(oneshot::Receiver<Option<Vec<Bytes>>>),
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
            BodySource::Ready => VecDeque::new(),
            BodySource::Held(chunks) => chunks,
            BodySource::Pending(rx) => match rx.await {
                Ok(Some(chunks)) => chunks.into(),
                Ok(None) => return,
                Err(_) => {
                    self.aborted.inc();
                    return;
                }
            },
        };
        let mut exchange = Exchange::new(self.shadow.metrics.clone(), Instant::now());
        let endpoint = self.shadow.upstream.next_endpoint();
        let req = Request::from_parts(self.head, RequestBody::Chunks(body));
        let answer = tokio::time::timeout(self.timeout, async {
            let resp = endpoint.send_shadow(req).await.map_err(|e| e.kind)?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut hasher = body_hasher();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| ErrorKind::UpstreamReset)?;
                if let Some(d) = frame.data_ref() {
                    hasher.write(d);
                }
            }
            Ok::<_, ErrorKind>((status, hasher.finish()))
        })
        .await
        .unwrap_or(Err(ErrorKind::UpstreamTimeout));
        let (status, hash) = match answer {
            Ok(a) => a,
            Err(kind) => {
                exchange.finish(Some(kind));
                return;
            }
        };
        exchange.respond(status);
        exchange.finish(None);
        if let Some((rx, counters)) = self.compare {
            if let Ok((user_status, user_hash)) = rx.await {
                let result = if user_status != status {
                    Comparison::StatusMismatch
                } else if user_hash != hash {
                    Comparison::BodyMismatch
                } else {
                    Comparison::Match
                };
                counters[result as usize].inc();
            }
        }
    }
}
