//! Snapshots and windows: cumulative measurements at an instant, and what happened
//! between two of them (the controller's checks read windows).

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::error::ErrorKind;

/// Cumulative measurements of one service version at an instant.
#[derive(Clone)]
pub struct VersionSnapshot {
    /// Service name.
    pub service: String,
    /// Version name.
    pub version: String,
    /// When it was taken.
    pub at: Instant,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx (5xx includes weir's own 502/504
    /// and exchanges that broke off or timed out after their headers).
    pub responses: [u64; 5],
    /// Upstream failures, indexed like [`ErrorKind::UPSTREAM`].
    pub failures: [u64; ErrorKind::UPSTREAM.len()],
    /// The clients' faults (not counted in `responses`), indexed like [`ErrorKind::CLIENT`].
    pub client_faults: [u64; ErrorKind::CLIENT.len()],
    /// Responses by status code (those seen), as recorded.
    pub codes: Vec<(u16, u64)>,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
}

impl std::fmt::Debug for VersionSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionSnapshot")
            .field("service", &self.service)
            .field("version", &self.version)
            .field("responses", &self.responses)
            .field("failures", &self.failures)
            .field("latency_count", &self.latency.len())
            .finish()
    }
}

impl VersionSnapshot {
    /// A version with nothing measured.
    pub fn empty(service: &str, version: &str) -> VersionSnapshot {
        VersionSnapshot {
            service: service.to_string(),
            version: version.to_string(),
            at: Instant::now(),
            responses: [0; 5],
            failures: [0; ErrorKind::UPSTREAM.len()],
            client_faults: [0; ErrorKind::CLIENT.len()],
            codes: Vec::new(),
            latency: super::latency::new_histogram(),
        }
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &VersionSnapshot) -> Window {
        let mut latency = self.latency.clone();
        // Counts only grow, so subtracting an earlier snapshot cannot underflow.
        if latency.subtract(&earlier.latency).is_err() {
            latency = self.latency.clone();
        }
        Window {
            duration: self.at.saturating_duration_since(earlier.at),
            responses: std::array::from_fn(|i| {
                self.responses[i].saturating_sub(earlier.responses[i])
            }),
            failures: std::array::from_fn(|i| self.failures[i].saturating_sub(earlier.failures[i])),
            client_faults: std::array::from_fn(|i| {
                self.client_faults[i].saturating_sub(earlier.client_faults[i])
            }),
            codes: self
                .codes
                .iter()
                .map(|(code, n)| {
                    let then = earlier
                        .codes
                        .iter()
                        .find(|c| c.0 == *code)
                        .map_or(0, |c| c.1);
                    (*code, n.saturating_sub(then))
                })
                .collect(),
            latency,
        }
    }

    /// Everything since the start, as a window.
    pub fn total(&self) -> Window {
        Window {
            duration: Duration::ZERO,
            responses: self.responses,
            failures: self.failures,
            client_faults: self.client_faults,
            codes: self.codes.clone(),
            latency: self.latency.clone(),
        }
    }
}

/// Measurements over a window (the difference of two snapshots).
#[derive(Clone)]
pub struct Window {
    /// Length of the window.
    pub duration: Duration,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
    /// Upstream failures, indexed like [`ErrorKind::UPSTREAM`].
    pub failures: [u64; ErrorKind::UPSTREAM.len()],
    /// The clients' faults (not counted in `responses`), indexed like [`ErrorKind::CLIENT`].
    pub client_faults: [u64; ErrorKind::CLIENT.len()],
    /// Responses by status code.
    pub codes: Vec<(u16, u64)>,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
}

impl Window {
    /// Responses in the window.
    pub fn requests(&self) -> u64 {
        self.responses.iter().sum()
    }

    /// 5xx responses, including weir's own 502/504.
    pub fn errors_5xx(&self) -> u64 {
        self.responses[4]
    }

    /// Failures of one kind (upstream or client).
    pub fn failures_of(&self, kind: ErrorKind) -> u64 {
        match (kind.upstream_index(), kind.client_index()) {
            (Some(i), _) => self.failures[i],
            (_, Some(i)) => self.client_faults[i],
            _ => 0,
        }
    }

    /// Percentage of non-5xx responses, as Flagger's `request-success-rate`; None without requests.
    pub fn success_rate(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| 100.0 * (n - self.errors_5xx()) as f64 / n as f64)
    }

    /// Responses whose status code `matches`.
    pub fn responses_where(&self, matches: impl Fn(u16) -> bool) -> u64 {
        self.codes
            .iter()
            .filter(|(code, _)| matches(*code))
            .map(|(_, n)| n)
            .sum()
    }

    /// Latency quantile (0.99 for p99) in milliseconds; None without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(q) as f64 / 1000.0)
    }
}
