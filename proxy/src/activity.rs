//! Activity of one client connection, for its idle timeout: how many requests are in
//! flight, when the last one ended, and whether the client stopped reading.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::time::Instant;

/// Activity of one client connection.
pub(crate) struct ConnActivity {
    opened: Instant,
    inflight: AtomicUsize,
    /// Milliseconds after `opened` at which the last request ended.
    last_ms: AtomicU64,
    /// Milliseconds after `opened` since which writes to the client block (0: they don't).
    blocked_ms: AtomicU64,
    /// weir closed the connection because the client stopped reading.
    stalled: AtomicBool,
}

impl ConnActivity {
    pub(crate) fn new() -> Arc<ConnActivity> {
        Arc::new(ConnActivity {
            opened: Instant::now(),
            inflight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            blocked_ms: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
        })
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A write to the client would block (its receive window is full).
    pub(crate) fn write_blocked(&self) {
        let _ = self.blocked_ms.compare_exchange(
            0,
            self.ms().max(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// A write to the client went through.
    pub(crate) fn wrote(&self) {
        if self.blocked_ms.load(Ordering::Relaxed) != 0 {
            self.blocked_ms.store(0, Ordering::Release);
        }
    }

    /// True when writes have blocked for `limit` with a request in flight: the client
    /// stopped reading. The connection is then marked stalled.
    pub(crate) fn stopped_reading(&self, limit: Duration) -> bool {
        let since = self.blocked_ms.load(Ordering::Acquire);
        let stuck = since != 0
            && self.inflight.load(Ordering::Acquire) > 0
            && self.ms().saturating_sub(since)
                >= u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        if stuck {
            self.stalled.store(true, Ordering::Release);
        }
        stuck
    }

    /// Marks a request as started; the guard marks it done when dropped.
    pub(crate) fn start(self: &Arc<Self>) -> ActivityGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    /// True when nothing is in flight and nothing happened for `idle`.
    pub(crate) fn idle_for(&self, idle: Duration) -> bool {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        self.opened.elapsed().saturating_sub(last) >= idle
    }
}

/// Marks a request in flight on its connection until dropped.
pub(crate) struct ActivityGuard(Arc<ConnActivity>);

impl ActivityGuard {
    /// weir closed the connection because the client stopped reading.
    pub(crate) fn stalled(&self) -> bool {
        self.0.stalled.load(Ordering::Acquire)
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.last_ms.fetch_max(self.0.ms(), Ordering::AcqRel);
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client connection's socket, noting when writes to the client block and unblock.
pub(crate) struct WatchedIo<T> {
    inner: T,
    activity: Arc<ConnActivity>,
}

impl<T> WatchedIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<ConnActivity>) -> Self {
        WatchedIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T> WatchedIo<T> {
    fn note(&self, blocked: bool) {
        if blocked {
            self.activity.write_blocked();
        } else {
            self.activity.wrote();
        }
    }
}
