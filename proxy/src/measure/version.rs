//! The measurements of one (service, version): one [`Tally`] per worker, each written
//! only by its worker under its own (uncontended) lock and added up when read, so
//! recording a request touches no memory another core writes.

use std::sync::Mutex;

use super::latency::new_histogram;
use super::tally::{Outcome, Tally};
use super::window::VersionSnapshot;

/// One worker's share, on its own cache lines.
#[repr(align(128))]
struct Shard(Mutex<Tally>);

/// The measurement handles of one (service, version), users' or shadow traffic.
pub struct VersionMetrics {
    pub(super) service: String,
    pub(super) version: String,
    /// Measures shadow (mirrored) traffic rather than users' traffic.
    pub(super) mirrored: bool,
    /// Envoy cluster name used in the Envoy families.
    pub(super) cluster: String,
    shards: Box<[Shard]>,
    /// What other processes measured (a controller's replicas), added as they report.
    remote: Shard,
}

/// Contour's cluster name: `<namespace>_<service>-<version>_<port>`.
pub fn envoy_cluster_name(namespace: &str, service: &str, version: &str, port: u16) -> String {
    format!("{namespace}_{service}-{version}_{port}")
}

impl VersionMetrics {
    /// The measurements of one service version, empty.
    pub(super) fn new(
        service: &str,
        namespace: &str,
        port: u16,
        version: &str,
        mirrored: bool,
    ) -> VersionMetrics {
        VersionMetrics {
            service: service.to_string(),
            version: version.to_string(),
            mirrored,
            cluster: envoy_cluster_name(namespace, service, version, port),
            shards: (0..crate::workers::slots())
                .map(|_| Shard(Mutex::default()))
                .collect(),
            remote: Shard(Mutex::default()),
        }
    }

    /// Adds what another process measured (a replica's delta).
    pub(super) fn merge(&self, delta: &Tally) {
        let mut t = self.remote.0.lock().unwrap_or_else(|p| p.into_inner());
        t.add(delta, true);
    }

    fn all_shards(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter().chain(std::iter::once(&self.remote))
    }

    /// Records one finished exchange in this thread's share.
    pub(crate) fn record(&self, o: &Outcome) {
        let shard = &self.shards[crate::workers::slot(self.shards.len())];
        shard.0.lock().unwrap_or_else(|p| p.into_inner()).record(o);
    }

    /// Every worker's share added up; the latency histogram only if asked for.
    pub(super) fn tally(&self, with_latency: bool) -> Tally {
        let mut out = Tally::default();
        for shard in self.all_shards() {
            let t = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            out.add(&t, with_latency);
        }
        out.codes.sort_unstable();
        out
    }

    /// Cumulative (responses, 5xx responses), without copying the latency histogram.
    pub fn counts(&self) -> (u64, u64) {
        let mut total = 0;
        let mut errors = 0;
        for shard in self.all_shards() {
            let t = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            total += t.requests();
            errors += t.responses[4];
        }
        (total, errors)
    }

    /// Cumulative values now; a window is the difference of two snapshots.
    pub fn snapshot(&self) -> VersionSnapshot {
        let t = self.tally(true);
        VersionSnapshot {
            service: self.service.clone(),
            version: self.version.clone(),
            at: tokio::time::Instant::now(),
            responses: t.responses,
            failures: t.failures,
            client_faults: t.client_faults,
            codes: t.codes,
            latency: t.latency.unwrap_or_else(new_histogram),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorKind;
    use crate::measure::Families;

    fn outcome(status: u16, ms: u64) -> Outcome {
        Outcome {
            status,
            error: None,
            elapsed: Duration::from_millis(ms),
        }
    }

    #[test]
    fn window_is_the_difference_of_two_snapshots() {
        let m = VersionMetrics::new("podinfo", "test", 9898, "canary", false);
        for _ in 0..90 {
            m.record(&outcome(200, 1000));
        }
        let first = m.snapshot();
        for i in 0..100 {
            m.record(&Outcome {
                status: if i == 0 {
                    504
                } else if i < 5 {
                    503
                } else {
                    200
                },
                error: (i == 0).then_some(ErrorKind::UpstreamTimeout),
                elapsed: Duration::from_millis(if i < 99 { 10 } else { 250 }),
            });
        }
        let w = m.snapshot().since(&first);
        assert_eq!(w.requests(), 100);
        assert_eq!(w.errors_5xx(), 5);
        assert_eq!(w.success_rate(), Some(95.0));
        assert_eq!(w.failures_of(ErrorKind::UpstreamTimeout), 1);
        // Two significant digits: within 1%.
        let p50 = w.quantile_ms(0.5).unwrap_or_default();
        assert!((9.9..=10.1).contains(&p50), "p50 {p50}");
        let p99 = w.quantile_ms(0.99).unwrap_or_default();
        assert!((9.9..=10.1).contains(&p99), "p99 {p99}");
        let max = w.quantile_ms(1.0).unwrap_or_default();
        assert!((247.5..=252.5).contains(&max), "max {max}");
        assert_eq!(m.snapshot().total().requests(), 190);
    }

    #[test]
    fn empty_window_has_no_rate() {
        let m = VersionMetrics::new("a", "ns", 80, "v1", false);
        let s = m.snapshot();
        assert_eq!(s.since(&s).success_rate(), None);
        assert_eq!(s.since(&s).quantile_ms(0.99), None);
    }

    #[test]
    fn exported_families_use_envoy_names_and_labels() {
        let fams = Families::new();
        let h = fams.version("podinfo", "test", 9898, "canary");
        h.users.record(&outcome(503, 3));
        h.users.record(&outcome(200, 3));
        let text = fams.render();
        for want in [
            r#"envoy_cluster_upstream_rq{envoy_cluster_name="test_podinfo-canary_9898",envoy_response_code="503"} 1"#,
            r#"envoy_cluster_upstream_rq_xx{envoy_cluster_name="test_podinfo-canary_9898",envoy_response_code_class="5"} 1"#,
            r#"envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="test_podinfo-canary_9898",le="5"} 2"#,
            r#"envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="test_podinfo-canary_9898",le="1"} 0"#,
            r#"envoy_cluster_upstream_rq_time_count{envoy_cluster_name="test_podinfo-canary_9898"} 2"#,
            r#"weir_requests_total{code_class="5xx",mirrored="false",service="podinfo",version="canary"} 1"#,
            r#"weir_request_duration_seconds_bucket{mirrored="false",service="podinfo",version="canary",le="0.005"} 2"#,
            r#"weir_request_duration_seconds_bucket{mirrored="false",service="podinfo",version="canary",le="+Inf"} 2"#,
            r#"weir_request_duration_seconds_sum{mirrored="false",service="podinfo",version="canary"} 0.006"#,
            "# TYPE envoy_cluster_upstream_rq untyped\n",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // A shadow that never served is not exported.
        assert!(!text.contains(r#"mirrored="true""#), "{text}");
        fams.forget_version("podinfo", "canary");
        assert!(!fams.render().contains("test_podinfo-canary_9898"));
    }
}
