//! An upgraded connection (a WebSocket, say): bytes copied both ways until either side
//! closes, or until nothing moved either way for the route's idle timeout (Envoy's stream
//! idle timeout holds for upgraded streams too).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Copies bytes both ways once both sides of an upgrade are ready; closes both when
/// nothing moved for `idle`.
pub(crate) fn spawn(client: OnUpgrade, upstream: OnUpgrade, idle: Duration) {
    tokio::spawn(async move {
        let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
            return;
        };
        let activity = Activity::new();
        let mut c = Watched::new(TokioIo::new(c), activity.clone());
        let mut u = Watched::new(TokioIo::new(u), activity.clone());
        let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                _ = &mut copy => return,
                _ = tokio::time::sleep_until(activity.last() + idle) => {
                    if activity.last() + idle <= Instant::now() {
                        tracing::debug!(idle = ?idle, "upgraded connection idle: closed");
                        return;
                    }
                }
            }
        }
    });
}

/// When bytes last moved through a tunnel, in either direction.
#[derive(Clone)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of a tunnel, noting each read that brought bytes.
struct Watched<T> {
    io: T,
    activity: Activity,
}

impl<T> Watched<T> {
    fn new(io: T, activity: Activity) -> Watched<T> {
        Watched { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
