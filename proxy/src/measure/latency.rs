//! Latency as hdrhistograms sharded by worker thread and merged on read: exact
//! percentiles over any window, and no lock shared by all requests.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency tracked exactly (larger values are clamped): 10 minutes.
const HDR_MAX_MICROS: u64 = 600_000_000;

/// hdrhistograms sharded by worker thread, merged on read.
pub(super) struct LatencyShards {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HDR_MAX_MICROS, 3).expect("static bounds are valid")
}

impl LatencyShards {
    pub(super) fn new() -> Self {
        // One shard per worker (the threads that record users' requests); any other
        // thread shares the last.
        LatencyShards {
            shards: (0..crate::workers::count())
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    pub(super) fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let shard = crate::workers::slot(self.shards.len());
        let mut h = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(micros);
    }

    pub(super) fn merged(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for shard in self.shards.iter() {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds on both sides: adding cannot fail.
            let _ = out.add(&*h);
        }
        out
    }
}
