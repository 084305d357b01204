//! Measurement deltas: what each version's tallies gained since the last look, in a form
//! that travels. A replica sends them to its controller, which adds them to its own
//! measurements of the same versions, so the controller's counts and histograms are the
//! exact sum of the replicas'.

use std::collections::HashMap;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use super::families::Families;
use super::latency::new_histogram;
use super::tally::Tally;
use super::ENVOY_BUCKETS_MS;
use crate::error::ErrorKind;

/// What one version (users' or shadow traffic) measured between two looks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeasurementDelta {
    pub service: String,
    pub version: String,
    /// Shadow (mirrored) traffic rather than users'.
    pub mirrored: bool,
    /// Responses by class, 1xx .. 5xx.
    pub responses: [u64; 5],
    /// Upstream failures by reason label (`weir_upstream_errors_total`'s `reason`).
    pub failures: Vec<(String, u64)>,
    /// Client faults by reason label (`weir_client_errors_total`'s `reason`).
    pub client_faults: Vec<(String, u64)>,
    /// Responses by status code.
    pub codes: Vec<(u16, u64)>,
    /// Latencies per Envoy bucket (not cumulative; the last is past every bound).
    pub buckets: Vec<u64>,
    /// Sum of the latencies, in microseconds.
    pub sum_micros: u64,
    /// The latency histogram (microseconds), hdrhistogram's V2 serialization; empty when
    /// no latency was recorded.
    pub latency: Vec<u8>,
}

/// Why a delta could not be added.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("{what} has {got} entries, expected {want}")]
    Shape {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("unknown {what} reason {reason:?}")]
    Reason { what: &'static str, reason: String },
    #[error("latency histogram: {0}")]
    Latency(String),
}

/// What was last reported of each version, so the next look sends only what is new.
#[derive(Default)]
pub struct DeltaCursor {
    reported: HashMap<(String, String, bool), Tally>,
}

/// Points an Envoy histogram bucket's requests are spread over.
const SPREAD: u64 = 64;

impl Tally {
    /// What this cumulative tally gained over an earlier one of the same version.
    fn since(&self, earlier: &Tally) -> Tally {
        let sub = |a: u64, b: u64| a.saturating_sub(b);
        let mut latency = self.latency.clone();
        if let (Some(now), Some(then)) = (latency.as_mut(), earlier.latency.as_ref()) {
            // Counts only grow, so an earlier snapshot is always contained in a later one.
            if now.subtract(then).is_err() {
                latency = self.latency.clone();
            }
        }
        Tally {
            responses: std::array::from_fn(|i| sub(self.responses[i], earlier.responses[i])),
            failures: std::array::from_fn(|i| sub(self.failures[i], earlier.failures[i])),
            client_faults: std::array::from_fn(|i| {
                sub(self.client_faults[i], earlier.client_faults[i])
            }),
            codes: self
                .codes
                .iter()
                .map(|(code, n)| {
                    let then = earlier.codes.iter().find(|(c, _)| c == code);
                    (*code, sub(*n, then.map_or(0, |(_, m)| *m)))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            buckets: std::array::from_fn(|i| sub(self.buckets[i], earlier.buckets[i])),
            sum_micros: sub(self.sum_micros, earlier.sum_micros),
            latency,
        }
    }

    fn to_delta(&self, service: &str, version: &str, mirrored: bool) -> MeasurementDelta {
        let by_label = |kinds: &[ErrorKind], counts: &[u64]| -> Vec<(String, u64)> {
            kinds
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.label().to_string(), *n))
                .collect()
        };
        let mut latency = Vec::new();
        if let Some(h) = self.latency.as_ref().filter(|h| !h.is_empty()) {
            // Writing into a Vec cannot fail; an unencodable histogram is sent empty.
            if V2Serializer::new().serialize(h, &mut latency).is_err() {
                latency.clear();
            }
        }
        MeasurementDelta {
            service: service.to_string(),
            version: version.to_string(),
            mirrored,
            responses: self.responses,
            failures: by_label(&ErrorKind::UPSTREAM, &self.failures),
            client_faults: by_label(&ErrorKind::CLIENT, &self.client_faults),
            codes: self.codes.clone(),
            buckets: self.buckets.to_vec(),
            sum_micros: self.sum_micros,
            latency,
        }
    }
}

impl MeasurementDelta {
    /// What an Envoy node's flush adds to a version: responses by code (classes follow),
    /// upstream failures by weir's reason labels, the flush's histogram as counts per
    /// Envoy bucket (the last past every bound) and the latencies' sum. The latency
    /// histogram spreads each bucket's count evenly over the bucket's range, as
    /// Prometheus' `histogram_quantile` reads one.
    pub fn from_envoy(
        service: String,
        version: String,
        mirrored: bool,
        codes: Vec<(u16, u64)>,
        failures: Vec<(String, u64)>,
        buckets: Vec<u64>,
        sum_micros: u64,
    ) -> MeasurementDelta {
        let mut responses = [0u64; 5];
        for (code, n) in &codes {
            if let Some(class) = usize::from(*code / 100).checked_sub(1).filter(|c| *c < 5) {
                responses[class] += n;
            }
        }
        let mut h = super::latency::new_histogram();
        let mut lower = 0.0;
        for (i, n) in buckets.iter().enumerate() {
            // Past the last bound: at the last bound.
            let upper = ENVOY_BUCKETS_MS.get(i).copied().unwrap_or(lower);
            // Spread over the bucket at up to SPREAD points, so a flush costs the same
            // whatever its request count.
            let points = (*n).min(SPREAD);
            for k in 0..points {
                let ms = lower + (upper - lower) * (k as f64 + 0.5) / points as f64;
                let micros = super::latency::clamped(((ms * 1000.0) as u64).max(1));
                let count = *n / points + u64::from(k < *n % points);
                let _ = h.record_n(micros, count);
            }
            lower = upper;
        }
        let mut latency = Vec::new();
        if !h.is_empty() && V2Serializer::new().serialize(&h, &mut latency).is_err() {
            latency.clear();
        }
        MeasurementDelta {
            service,
            version,
            mirrored,
            responses,
            failures,
            client_faults: Vec::new(),
            codes,
            buckets,
            sum_micros,
            latency,
        }
    }

    /// The tally this delta adds, checked.
    fn to_tally(&self) -> Result<Tally, DeltaError> {
        let mut t = Tally {
            responses: self.responses,
            codes: self.codes.clone(),
            sum_micros: self.sum_micros,
            ..Tally::default()
        };
        if self.buckets.len() != ENVOY_BUCKETS_MS.len() + 1 {
            return Err(DeltaError::Shape {
                what: "buckets",
                got: self.buckets.len(),
                want: ENVOY_BUCKETS_MS.len() + 1,
            });
        }
        t.buckets.copy_from_slice(&self.buckets);
        place(
            &self.failures,
            &ErrorKind::UPSTREAM,
            &mut t.failures,
            "upstream",
        )?;
        place(
            &self.client_faults,
            &ErrorKind::CLIENT,
            &mut t.client_faults,
            "client",
        )?;
        if !self.latency.is_empty() {
            let h: hdrhistogram::Histogram<u64> = Deserializer::new()
                .deserialize(&mut self.latency.as_slice())
                .map_err(|e| DeltaError::Latency(format!("{e:?}")))?;
            let mut ours = new_histogram();
            ours.add(&h)
                .map_err(|e| DeltaError::Latency(format!("{e:?}")))?;
            t.latency = Some(ours);
        }
        Ok(t)
    }

    /// True when nothing happened.
    pub fn is_empty(&self) -> bool {
        self.responses.iter().all(|n| *n == 0) && self.client_faults.is_empty()
    }

    /// Responses counted (client faults excluded).
    pub fn requests(&self) -> u64 {
        self.responses.iter().sum()
    }
}

/// Puts counts by reason label into their slots.
fn place<const N: usize>(
    from: &[(String, u64)],
    kinds: &[ErrorKind; N],
    to: &mut [u64; N],
    what: &'static str,
) -> Result<(), DeltaError> {
    for (reason, n) in from {
        let i = kinds
            .iter()
            .position(|k| k.label() == reason)
            .ok_or_else(|| DeltaError::Reason {
                what,
                reason: reason.clone(),
            })?;
        to[i] += n;
    }
    Ok(())
}

impl Families {
    /// What every version measured since the cursor's last look (versions with nothing
    /// new are left out).
    pub fn deltas(&self, cursor: &mut DeltaCursor) -> Vec<MeasurementDelta> {
        let mut out = Vec::new();
        let mut seen = HashMap::with_capacity(cursor.reported.len());
        for ((service, version), handle) in self.versions_now() {
            for (mirrored, metrics) in [(false, &handle.users), (true, &handle.shadow)] {
                let key = (service.clone(), version.clone(), mirrored);
                let now = metrics.tally(true);
                let delta = match cursor.reported.get(&key) {
                    Some(then) => now.since(then),
                    None => now.clone(),
                };
                if !delta.is_empty() {
                    out.push(delta.to_delta(&service, &version, mirrored));
                }
                seen.insert(key, now);
            }
        }
        cursor.reported = seen;
        out
    }

    /// Adds a delta measured elsewhere to the version's measurements. A version this
    /// proxy does not have is skipped (`Ok(false)`).
    pub fn merge(&self, delta: &MeasurementDelta) -> Result<bool, DeltaError> {
        let tally = delta.to_tally()?;
        let Some(handle) = self.handle(&delta.service, &delta.version) else {
            return Ok(false);
        };
        let metrics = if delta.mirrored {
            &handle.shadow
        } else {
            &handle.users
        };
        metrics.merge(&tally);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::measure::tally::Outcome;

    fn outcome(status: u16, micros: u64, error: Option<ErrorKind>) -> Outcome {
        Outcome {
            status,
            error,
            elapsed: Duration::from_micros(micros),
        }
    }

    #[test]
    fn an_envoy_flush_becomes_a_delta_whose_quantiles_follow_its_buckets() {
        let mut buckets = vec![0u64; ENVOY_BUCKETS_MS.len() + 1];
        buckets[4] = 90; // (10, 25] ms
        buckets[8] = 10; // (250, 500] ms
        let d = MeasurementDelta::from_envoy(
            "api".into(),
            "canary".into(),
            false,
            vec![(200, 95), (503, 5)],
            vec![("reset".into(), 2)],
            buckets,
            100_000,
        );
        assert_eq!(d.responses, [0, 95, 0, 0, 5]);
        let controller = Families::new();
        let h = controller.version("api", "default", 80, "canary");
        assert!(controller.merge(&d).expect("well formed"));
        let w = h.snapshot(false).total();
        assert_eq!(w.requests(), 100);
        assert_eq!(w.errors_5xx(), 5);
        let p50 = w.quantile_ms(0.5).expect("p50");
        let p99 = w.quantile_ms(0.99).expect("p99");
        assert!((10.0..=25.0).contains(&p50), "{p50}");
        assert!((250.0..=500.0).contains(&p99), "{p99}");
        assert_eq!(w.failures_of(ErrorKind::UpstreamReset), 2);
    }

    #[test]
    fn deltas_carry_exactly_what_is_new_and_merge_exactly() {
        let replicas: Vec<Families> = (0..3).map(|_| Families::new()).collect();
        let controller = Families::new();
        controller.version("api", "default", 80, "canary");
        let mut cursors: Vec<DeltaCursor> = (0..3).map(|_| DeltaCursor::default()).collect();
        let mut all = Vec::new();
        for round in 0..3u64 {
            for (r, fams) in replicas.iter().enumerate() {
                let h = fams.version("api", "default", 80, "canary");
                for i in 0..200u64 {
                    let micros = 100 + (i * 131 + r as u64 * 977 + round * 53) % 90_000;
                    let (status, error) = match i % 50 {
                        0 => (502, Some(ErrorKind::UpstreamReset)),
                        1 => (400, Some(ErrorKind::ClientMalformed)),
                        2 => (503, None),
                        _ => (200, None),
                    };
                    h.users.record(&outcome(status, micros, error));
                    if error.is_none_or(|e| e.side() != crate::Side::Client) {
                        all.push(micros);
                    }
                }
                for d in fams.deltas(&mut cursors[r]) {
                    // Through the wire form's checks, as a controller gets it.
                    assert!(controller.merge(&d).unwrap_or(false), "{d:?}");
                }
            }
        }
        // Nothing new: nothing sent.
        assert!(replicas[0].deltas(&mut cursors[0]).is_empty());
        let merged = controller
            .handle("api", "canary")
            .map(|h| h.users.tally(true))
            .unwrap_or_default();
        assert_eq!(merged.requests(), 3 * 3 * 196);
        assert_eq!(merged.responses[4], 3 * 3 * 8);
        assert_eq!(
            merged.failures[ErrorKind::UpstreamReset.upstream_index().unwrap_or(0)],
            36
        );
        assert_eq!(merged.client_faults[0], 36);
        // The merged histogram equals one histogram of every request.
        let mut direct = new_histogram();
        for v in &all {
            let _ = direct.record(*v);
        }
        let h = merged.latency.unwrap_or_else(new_histogram);
        assert_eq!(h.len(), direct.len());
        for q in [0.5, 0.9, 0.99, 0.999] {
            assert_eq!(h.value_at_quantile(q), direct.value_at_quantile(q), "q {q}");
        }
    }

    #[test]
    fn bad_deltas_are_refused_and_change_nothing() {
        let fams = Families::new();
        fams.version("api", "default", 80, "v1");
        let good = MeasurementDelta {
            service: "api".into(),
            version: "v1".into(),
            responses: [0, 1, 0, 0, 0],
            buckets: vec![0; ENVOY_BUCKETS_MS.len() + 1],
            ..MeasurementDelta::default()
        };
        let mut short = good.clone();
        short.buckets.pop();
        assert!(matches!(fams.merge(&short), Err(DeltaError::Shape { .. })));
        let mut reason = good.clone();
        reason.failures = vec![("sneeze".into(), 1)];
        assert!(matches!(
            fams.merge(&reason),
            Err(DeltaError::Reason { .. })
        ));
        let mut garbage = good.clone();
        garbage.latency = vec![1, 2, 3];
        assert!(matches!(fams.merge(&garbage), Err(DeltaError::Latency(_))));
        let requests = fams.handle("api", "v1").map(|h| h.users.counts().0);
        assert_eq!(requests, Some(0));
        let mut unknown = good.clone();
        unknown.version = "v9".into();
        assert!(!fams.merge(&unknown).unwrap_or(true));
        assert!(fams.merge(&good).unwrap_or(false));
    }
}
