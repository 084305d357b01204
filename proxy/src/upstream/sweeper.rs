//! The idle sweep a connection pool starts at its first idle connection: a task on the
//! runtime that sweeps the pool every half idle timeout (at least every 100 ms) for as
//! long as the pool lives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Starts `sweep` over `pool` unless `started` says it runs already (or there is no
/// runtime to run it on, and it is tried again next time).
pub(super) fn start<P: Send + Sync + 'static>(
    started: &AtomicBool,
    pool: &Arc<P>,
    idle_timeout: Duration,
    sweep: fn(&P),
) {
    if started.load(Ordering::Relaxed) || started.swap(true, Ordering::Relaxed) {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        started.store(false, Ordering::Relaxed);
        return;
    };
    let pool: Weak<P> = Arc::downgrade(pool);
    let every = (idle_timeout / 2).max(Duration::from_millis(100));
    rt.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(pool) = pool.upgrade() else { return };
            sweep(&pool);
        }
    });
}
