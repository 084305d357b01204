//! How far a client's request body has come: when it last moved, whether weir is waiting
//! on the client or on the upstream, when it ended, or how it failed. The request's timers
//! read it to start the route timeout at the end of the upload and to blame a stall on the
//! side that stalled.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::ErrorKind;

/// Waiting for the client to send more.
const WAITING_CLIENT: u8 = 0;
/// The client's data went upstream; waiting for the upstream to take more.
const WAITING_UPSTREAM: u8 = 1;
const ENDED: u8 = 2;
const MALFORMED: u8 = 3;
const GONE: u8 = 4;

/// A request body's progress, shared by the body (which writes it) and the timers.
pub(crate) struct Progress {
    start: Instant,
    state: AtomicU8,
    /// Milliseconds after `start` of the last frame (or of the end).
    last_ms: AtomicU64,
    /// Bytes of the body received so far.
    received: AtomicU64,
    changed: Notify,
}

/// Where a request body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Still streaming; `waiting_on_client` when weir waits for the client's next bytes.
    Streaming { waiting_on_client: bool },
    /// Complete, at this instant.
    Ended(Instant),
    /// The client broke it.
    Failed(ErrorKind),
}

impl Progress {
    pub(crate) fn new(start: Instant) -> Progress {
        Progress {
            start,
            state: AtomicU8::new(WAITING_CLIENT),
            last_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When the body last moved.
    pub(crate) fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Acquire))
    }

    pub(crate) fn stage(&self) -> Stage {
        match self.state.load(Ordering::Acquire) {
            WAITING_CLIENT => Stage::Streaming {
                waiting_on_client: true,
            },
            WAITING_UPSTREAM => Stage::Streaming {
                waiting_on_client: false,
            },
            ENDED => Stage::Ended(self.last()),
            MALFORMED => Stage::Failed(ErrorKind::ClientMalformed),
            _ => Stage::Failed(ErrorKind::ClientGone),
        }
    }

    /// Resolves at the next change of stage (create it before reading the stage).
    pub(crate) fn on_change(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    pub(crate) fn waiting_on_client(&self) {
        let _ = self.state.compare_exchange(
            WAITING_UPSTREAM,
            WAITING_CLIENT,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// When the request began (its headers were read).
    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// Bytes of the body received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// `bytes` more of the body arrived and went on.
    pub(crate) fn moved(&self, bytes: usize) {
        self.received
            .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::AcqRel);
        self.last_ms.store(self.ms(), Ordering::Release);
        let _ = self.state.compare_exchange(
            WAITING_CLIENT,
            WAITING_UPSTREAM,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(crate) fn ended(&self) {
        self.last_ms.store(self.ms(), Ordering::Release);
        self.state.store(ENDED, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// The client's body failed: bad framing, or the client went away.
    pub(crate) fn failed(&self, e: &hyper::Error) {
        self.state.store(client_fault(e), Ordering::Release);
        self.changed.notify_waiters();
    }
}

/// Bad framing (an invalid chunk size, say) is the client's malformed request; anything
/// else reading its body (a reset, an early close) means it went away.
fn client_fault(e: &hyper::Error) -> u8 {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            ) {
                return MALFORMED;
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() {
                return MALFORMED;
            }
        }
        source = err.source();
    }
    GONE
}
