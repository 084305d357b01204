//! Body types: requests and responses are streamed frame by frame, never buffered whole.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::measure::{FailureReason, VersionMetrics};
use crate::pool::Lease;

/// The body weir sends upstream.
pub enum RequestBody {
    /// The client's body, streamed.
    Stream(Incoming),
    /// A body weir already holds (a mirror copy).
    Full(Option<Bytes>),
    /// The client's body, streamed, with a bounded copy kept for a mirror.
    Tee(Box<crate::mirror::Tee>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Tee(t) => Pin::new(t.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Tee(t) => t.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Tee(t) => t.size_hint(),
            RequestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// The body weir sends to the client.
pub struct ResponseBody {
    kind: ResponseKind,
    guard: Option<ActivityGuard>,
}

enum ResponseKind {
    Upstream(Measured),
    Local(Option<Bytes>),
}

impl ResponseBody {
    /// A body from bytes weir made.
    pub fn local(b: impl Into<Bytes>) -> ResponseBody {
        let b = b.into();
        ResponseBody {
            kind: ResponseKind::Local((!b.is_empty()).then_some(b)),
            guard: None,
        }
    }

    /// An upstream body, measured when it ends.
    pub fn upstream(m: Measured) -> ResponseBody {
        ResponseBody {
            kind: ResponseKind::Upstream(m),
            guard: None,
        }
    }

    /// Keeps the connection marked busy until this body is done.
    pub fn with_guard(mut self, guard: ActivityGuard) -> ResponseBody {
        self.guard = Some(guard);
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            ResponseKind::Upstream(m) => Pin::new(m).poll_frame(cx),
            ResponseKind::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        if let Poll::Ready(None) = polled {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Upstream(m) => m.is_end_stream(),
            ResponseKind::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Upstream(m) => m.size_hint(),
            ResponseKind::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseKind::Local(None) => SizeHint::with_exact(0),
        }
    }
}

/// Activity of one client connection, for its idle timeout.
#[derive(Default)]
pub struct ConnActivity {
    inflight: AtomicUsize,
    last: std::sync::Mutex<Option<Instant>>,
}

impl ConnActivity {
    /// Marks a request as started; the guard marks it done when dropped.
    pub fn start(self: &Arc<Self>) -> ActivityGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    /// True when nothing is in flight and nothing happened for `idle`.
    pub fn idle_for(&self, idle: std::time::Duration, since: Instant) -> bool {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let last = self
            .last
            .lock()
            .map(|l| *l)
            .unwrap_or(None)
            .unwrap_or(since);
        last.elapsed() >= idle
    }
}

/// Marks a request in flight on its connection until dropped.
pub struct ActivityGuard(Arc<ConnActivity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if let Ok(mut last) = self.0.last.lock() {
            *last = Some(Instant::now());
        }
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An upstream response body that records the request's latency when it ends (or is
/// dropped), and counts a reset when the upstream breaks off mid-body.
pub struct Measured {
    inner: Incoming,
    done: Option<(Arc<VersionMetrics>, Instant)>,
    compare: Option<Compare>,
    /// The upstream connection this body arrives on, driven from here and pooled again
    /// when the body ends; dropped (closed) if the body is abandoned.
    lease: Option<Lease>,
}

/// Hashes the user's response as it streams, for a mirror comparison.
struct Compare {
    status: u16,
    hasher: crate::mirror::BodyHasher,
    tx: tokio::sync::oneshot::Sender<crate::mirror::PrimaryOutcome>,
}

impl Measured {
    /// Wraps a body; latency is measured from `start`.
    pub fn new(inner: Incoming, metrics: Arc<VersionMetrics>, start: Instant) -> Measured {
        let done = Some((metrics, start));
        Measured {
            inner,
            done,
            compare: None,
            lease: None,
        }
    }

    /// Drives `lease` while the body streams and returns it to its pool at the end.
    pub fn holding(mut self, lease: Option<Lease>) -> Measured {
        self.lease = lease;
        self
    }

    /// Also reports (status, body hash) on `tx` when the body completes.
    pub fn comparing(
        mut self,
        status: u16,
        tx: tokio::sync::oneshot::Sender<crate::mirror::PrimaryOutcome>,
    ) -> Measured {
        self.compare = Some(Compare {
            status,
            hasher: crate::mirror::body_hasher(),
            tx,
        });
        self
    }

    /// Records at once when the body is already complete (an empty body).
    pub fn check_done(mut self) -> Measured {
        if self.inner.is_end_stream() {
            self.complete();
        }
        self
    }

    /// The body ended normally: record, and report to a comparison.
    fn complete(&mut self) {
        if let Some(c) = self.compare.take() {
            use std::hash::Hasher;
            let _ = c.tx.send((c.status, c.hasher.finish()));
        }
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
        self.finish();
    }

    fn finish(&mut self) {
        if let Some((metrics, start)) = self.done.take() {
            metrics.record_latency(start.elapsed());
        }
    }
}

impl Body for Measured {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(lease) = self.lease.as_mut() {
            lease.drive(cx);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.complete(),
            Poll::Ready(Some(Err(_))) => {
                self.lease = None;
                if let Some((metrics, _)) = &self.done {
                    metrics.record_failure(FailureReason::Reset);
                }
                self.compare = None;
                self.finish();
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(c), Some(d)) = (self.compare.as_mut(), frame.data_ref()) {
                    use std::hash::Hasher;
                    c.hasher.write(d);
                }
                if self.inner.is_end_stream() {
                    self.complete();
                }
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

impl Drop for Measured {
    fn drop(&mut self) {
        self.finish();
    }
}
