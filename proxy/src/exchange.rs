//! One request's context from routing to the end of its response, and the single place
//! where its outcome is recorded: [`Exchange::finish`].

use std::hash::Hasher;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ErrorKind;
use crate::measure::{Outcome, VersionMetrics};

/// What the user's side reports for a mirror comparison: status and body hash.
pub(crate) type PrimaryOutcome = (u16, u64);

/// The hash both sides of a comparison use (SipHash; not for secrets).
#[allow(deprecated)]
pub(crate) type BodyHasher = std::hash::SipHasher;

/// A fresh body hasher with fixed keys, so both sides agree.
pub(crate) fn body_hasher() -> BodyHasher {
    #[allow(deprecated)]
    BodyHasher::new_with_keys(1, 2)
}

/// The measured side of one request: which version it counts for, since when, the status
/// the client got, and the mirror comparison waiting for the user's answer.
pub(crate) struct Exchange {
    metrics: Arc<VersionMetrics>,
    start: Instant,
    status: u16,
    compare: Option<Compare>,
    done: bool,
}

/// Hashes the user's response as it streams, for a mirror comparison.
struct Compare {
    hasher: BodyHasher,
    tx: oneshot::Sender<PrimaryOutcome>,
}

impl Exchange {
    /// A request that counts for `metrics`, received at `start`.
    pub(crate) fn new(metrics: Arc<VersionMetrics>, start: Instant) -> Exchange {
        Exchange {
            metrics,
            start,
            status: 0,
            compare: None,
            done: false,
        }
    }

    /// Reports (status, body hash) on `tx` when the response completes.
    pub(crate) fn compare_with(&mut self, tx: oneshot::Sender<PrimaryOutcome>) {
        self.compare = Some(Compare {
            hasher: body_hasher(),
            tx,
        });
    }

    /// The response head the client gets.
    pub(crate) fn respond(&mut self, status: u16) {
        self.status = status;
    }

    /// A piece of the response body went to the client.
    pub(crate) fn observe(&mut self, data: &[u8]) {
        if let Some(c) = self.compare.as_mut() {
            c.hasher.write(data);
        }
    }

    /// The exchange ended: complete (`None`) or failed with `error`, caused by the
    /// upstream (it counts against the version as the 502 or 504 it amounts to) or by the
    /// client (counted apart, never against the version). Records what happened and the
    /// latency, and completes the mirror comparison.
    pub(crate) fn finish(&mut self, error: Option<ErrorKind>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let (Some(c), None) = (self.compare.take(), error) {
            let _ = c.tx.send((self.status, c.hasher.finish()));
        }
        self.metrics.record(&Outcome {
            status: self.status,
            error,
            elapsed: self.start.elapsed(),
        });
    }
}

impl Drop for Exchange {
    /// An exchange dropped before its end was abandoned by the client (the connection
    /// closed while weir waited on the upstream).
    fn drop(&mut self) {
        self.finish(Some(ErrorKind::ClientGone));
    }
}
