//! The data plane's threads: one current-thread runtime per core. Every worker accepts on
//! every proxy listener (each holds its own handle on the listening socket) and serves the
//! connections it accepted from start to finish, so a request never changes threads: no
//! work stealing and no cross-thread wake-ups on its path.

use std::cell::Cell;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread is, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker running on this thread, if this thread is one.
pub(crate) fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// How many per-thread slots a structure sharded by thread keeps: one per worker, and one
/// shared by every other thread (mirror, admin, controller).
pub(crate) fn slots() -> usize {
    count() + 1
}

/// This thread's slot among `len`: its worker's, or the last (shared) one.
pub(crate) fn slot(len: usize) -> usize {
    let last = len.saturating_sub(1);
    current().map_or(last, |w| w.min(last))
}

/// How many workers: one per core the process may use (cgroup limits included), read
/// once (the standard library reads the cgroup files on every call).
pub(crate) fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `work(i)` for `i` in `0..n`, each on its own thread in its own current-thread
/// runtime; resolves when every one has finished, with the sum of what they returned.
pub(crate) async fn run<F, Fut>(n: usize, work: F) -> usize
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = usize> + 'static,
{
    let work = Arc::new(work);
    let mut finished = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = oneshot::channel();
        let work = work.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("weir-worker-{i}"))
            .spawn(move || {
                WORKER.with(|w| w.set(Some(i)));
                let left = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(work(i)),
                    Err(e) => {
                        tracing::error!(worker = i, error = %e, "cannot start a worker runtime");
                        0
                    }
                };
                let _ = tx.send(left);
            });
        match spawned {
            Ok(_) => finished.push(rx),
            Err(e) => tracing::error!(worker = i, error = %e, "cannot start a worker thread"),
        }
    }
    let mut left = 0;
    for rx in finished {
        left += rx.await.unwrap_or(0);
    }
    left
}
