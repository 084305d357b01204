//! What a version's finished exchanges add up to: responses by class and code, failures
//! by reason, latency in Envoy's buckets and as an hdrhistogram. One worker's share is
//! written under its own lock; a reader adds the shares up.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::latency::{clamped, micros, new_histogram};
use super::ENVOY_BUCKETS_MS;
use crate::error::ErrorKind;

/// How one exchange ended, as the version's measurements record it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// The status of the response (weir's own 502/504 included).
    pub status: u16,
    /// What failed, when something did.
    pub error: Option<ErrorKind>,
    /// From receiving the request to the end of its response.
    pub elapsed: Duration,
}

/// Envoy's bucket bounds in microseconds: a latency `v` falls in the first bucket whose
/// bound is >= `v` (Prometheus's `le`), or past the last.
const BOUNDS_MICROS: [u64; ENVOY_BUCKETS_MS.len()] = {
    let mut out = [0; ENVOY_BUCKETS_MS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = (ENVOY_BUCKETS_MS[i] * 1000.0) as u64;
        i += 1;
    }
    out
};

/// Cumulative measurements of one version (one worker's share, or all of them added).
#[derive(Clone, Default)]
pub(crate) struct Tally {
    /// Responses by status class: 1xx .. 5xx (upstream failures as their 502/504).
    pub responses: [u64; 5],
    /// Upstream failures, indexed like [`ErrorKind::UPSTREAM`].
    pub failures: [u64; ErrorKind::UPSTREAM.len()],
    /// The clients' faults (counted nowhere else), indexed like [`ErrorKind::CLIENT`].
    pub client_faults: [u64; ErrorKind::CLIENT.len()],
    /// Responses by status code, in the order first seen.
    pub codes: Vec<(u16, u64)>,
    /// Latencies per Envoy bucket (not cumulative); the last counts those past every bound.
    pub buckets: [u64; ENVOY_BUCKETS_MS.len() + 1],
    /// Sum of the latencies, in microseconds.
    pub sum_micros: u64,
    /// Latency in microseconds; allocated at the first recorded latency.
    pub latency: Option<Histogram<u64>>,
}

impl Tally {
    /// Records one finished exchange. A client's fault is counted apart and nowhere
    /// else; an upstream failure counts as the 502 or 504 it amounts to (also when it
    /// came after a 200's headers); every other exchange by its status.
    pub(crate) fn record(&mut self, o: &Outcome) {
        let mut status = o.status;
        if let Some(kind) = o.error {
            if let Some(i) = kind.client_index() {
                self.client_faults[i] += 1;
                return;
            }
            if let Some(i) = kind.upstream_index() {
                self.failures[i] += 1;
                status = kind.status().as_u16();
            }
        }
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class] += 1;
        if (100..600).contains(&status) {
            match self.codes.iter_mut().find(|(c, _)| *c == status) {
                Some((_, n)) => *n += 1,
                None => self.codes.push((status, 1)),
            }
        }
        let v = micros(o.elapsed);
        self.sum_micros = self.sum_micros.saturating_add(v);
        self.buckets[BOUNDS_MICROS.partition_point(|b| *b < v)] += 1;
        // The histogram grows to the value (clamped to its largest): recording cannot fail.
        let _ = self
            .latency
            .get_or_insert_with(new_histogram)
            .record(clamped(v));
    }

    /// Adds another share (counts only, or with its latency histogram).
    pub(crate) fn add(&mut self, other: &Tally, with_latency: bool) {
        add_each(&mut self.responses, &other.responses);
        add_each(&mut self.failures, &other.failures);
        add_each(&mut self.client_faults, &other.client_faults);
        add_each(&mut self.buckets, &other.buckets);
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
        for (code, n) in &other.codes {
            match self.codes.iter_mut().find(|(c, _)| c == code) {
                Some((_, m)) => *m += n,
                None => self.codes.push((*code, *n)),
            }
        }
        if let (true, Some(h)) = (with_latency, &other.latency) {
            // Auto-resizing histograms of the same precision: adding cannot fail.
            let _ = self.latency.get_or_insert_with(new_histogram).add(h);
        }
    }

    /// Responses counted (client faults excluded).
    pub(crate) fn requests(&self) -> u64 {
        self.responses.iter().sum()
    }

    /// Nothing was ever recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.requests() == 0 && self.client_faults.iter().all(|n| *n == 0)
    }

    /// Cumulative bucket counts, as Prometheus's `_bucket{le}` series (without +Inf).
    pub(crate) fn cumulative_buckets(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets[..BOUNDS_MICROS.len()]
            .iter()
            .scan(0, |sum, n| {
                *sum += n;
                Some(*sum)
            })
    }
}

fn add_each<const N: usize>(to: &mut [u64; N], from: &[u64; N]) {
    for (a, b) in to.iter_mut().zip(from) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: f64) -> Outcome {
        Outcome {
            status: 200,
            error: None,
            elapsed: Duration::from_secs_f64(ms / 1000.0),
        }
    }

    #[test]
    fn buckets_follow_prometheus_le() {
        let mut t = Tally::default();
        for ms in [0.5, 0.501, 1.0, 4.0, 5.0, 5.001, 7_200_000.0] {
            t.record(&at(ms));
        }
        let cumulative: Vec<u64> = t.cumulative_buckets().take(4).collect();
        // le=0.5: 0.5; le=1: +0.501, 1.0; le=5: +4, 5; le=10: +5.001.
        assert_eq!(cumulative, [1, 3, 5, 6]);
        assert_eq!(t.buckets[ENVOY_BUCKETS_MS.len()], 1, "past the last bound");
        assert_eq!(t.requests(), 7);
    }

    #[test]
    fn shares_add_up_exactly() {
        let (mut a, mut b) = (Tally::default(), Tally::default());
        for i in 0..1000u64 {
            let t = if i % 2 == 0 { &mut a } else { &mut b };
            t.record(&Outcome {
                status: if i % 100 == 0 { 503 } else { 200 },
                error: None,
                elapsed: Duration::from_micros(100 + i * 37),
            });
        }
        let mut all = Tally::default();
        all.add(&a, true);
        all.add(&b, true);
        assert_eq!(all.requests(), 1000);
        assert_eq!(all.responses[4], 10);
        assert_eq!(all.codes, vec![(503, 10), (200, 990)]);
        let h = all.latency.as_ref().map_or(0, |h| h.len());
        assert_eq!(h, 1000);
        // hdr at 2 significant digits: within 1% of the exact 99th percentile.
        let p99 = all
            .latency
            .as_ref()
            .map_or(0, |h| h.value_at_quantile(0.99));
        let exact = 100 + 989 * 37;
        assert!(p99.abs_diff(exact) * 100 <= exact, "p99 {p99} vs {exact}");
    }

    #[test]
    fn client_faults_count_nowhere_else() {
        let mut t = Tally::default();
        t.record(&Outcome {
            status: 400,
            error: Some(ErrorKind::ClientMalformed),
            elapsed: Duration::from_millis(3),
        });
        assert_eq!(t.requests(), 0);
        assert!(t.latency.is_none());
        assert!(!t.is_empty());
    }
}
