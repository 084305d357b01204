//! Activity of one client connection, for its idle timeout: how many requests are in
//! flight, and when the last one ended.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Activity of one client connection.
pub(crate) struct ConnActivity {
    opened: Instant,
    inflight: AtomicUsize,
    /// Milliseconds after `opened` at which the last request ended.
    last_ms: AtomicU64,
}

impl ConnActivity {
    pub(crate) fn new() -> Arc<ConnActivity> {
        Arc::new(ConnActivity {
            opened: Instant::now(),
            inflight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
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

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.fetch_max(ms, Ordering::AcqRel);
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
