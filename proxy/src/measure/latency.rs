//! Latency histograms: microseconds at two significant digits (every value within 1% of
//! what was recorded, finer than Envoy's own histograms), growing only as far as the
//! largest latency seen, up to ten minutes (larger values are clamped).

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency tracked exactly: 10 minutes.
const HDR_MAX_MICROS: u64 = 600_000_000;

/// Significant digits kept: 1% resolution.
const SIGFIG: u8 = 2;

/// An empty latency histogram (a few hundred bytes until values arrive).
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGFIG).expect("static precision is valid")
}

/// A latency in whole microseconds, at least 1.
pub(super) fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The value the histogram records for `micros`.
pub(super) fn clamped(micros: u64) -> u64 {
    micros.min(HDR_MAX_MICROS)
}
