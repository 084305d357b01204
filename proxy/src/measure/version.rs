//! The measurement handles of one (service, version): resolved once when a route table is
//! built, so recording a request only does atomic adds and one histogram record.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use super::families::Families;
use super::latency::LatencyShards;
use super::window::VersionSnapshot;
use super::MirrorSkip;
use crate::error::ErrorKind;

pub(super) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
pub(super) const ENVOY_CLASSES: [&str; 5] = ["1", "2", "3", "4", "5"];

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

/// The measurement handles of one (service, version).
pub struct VersionMetrics {
    pub(super) service: String,
    pub(super) version: String,
    /// Measures shadow (mirrored) traffic rather than users' traffic.
    pub(super) mirrored: bool,
    /// Envoy cluster name used in the Envoy families.
    pub(super) cluster: String,
    classes: [IntCounter; 5],
    envoy_xx: [IntCounter; 5],
    envoy_total: IntCounter,
    envoy_codes: Box<[OnceLock<IntCounter>]>,
    envoy_rq: IntCounterVec,
    errors: [IntCounter; ErrorKind::UPSTREAM.len()],
    client: [IntCounter; ErrorKind::CLIENT.len()],
    seconds: Histogram,
    millis: Histogram,
    pub(crate) weight: IntGauge,
    latency: LatencyShards,
}

/// Contour's cluster name: `<namespace>_<service>-<version>_<port>`.
pub fn envoy_cluster_name(namespace: &str, service: &str, version: &str, port: u16) -> String {
    format!("{namespace}_{service}-{version}_{port}")
}

impl VersionMetrics {
    /// Resolves the handles of one service version.
    pub(crate) fn new(
        f: &Families,
        service: &str,
        namespace: &str,
        port: u16,
        version: &str,
        mirrored: bool,
    ) -> VersionMetrics {
        let cluster = envoy_cluster_name(namespace, service, version, port);
        let m = if mirrored { "true" } else { "false" };
        let c = cluster.as_str();
        VersionMetrics {
            classes: CLASSES
                .map(|class| f.requests.with_label_values(&[service, version, class, m])),
            envoy_xx: ENVOY_CLASSES.map(|class| f.envoy_rq_xx.with_label_values(&[c, class])),
            envoy_total: f.envoy_rq_total.with_label_values(&[c]),
            envoy_codes: (0..500).map(|_| OnceLock::new()).collect(),
            envoy_rq: f.envoy_rq.clone(),
            errors: ErrorKind::UPSTREAM.map(|k| {
                f.upstream_errors
                    .with_label_values(&[service, version, k.label(), m])
            }),
            client: ErrorKind::CLIENT.map(|k| {
                f.client_errors
                    .with_label_values(&[service, version, k.label(), m])
            }),
            seconds: f.duration.with_label_values(&[service, version, m]),
            millis: f.envoy_rq_time.with_label_values(&[c]),
            weight: f.weight.with_label_values(&[service, version]),
            latency: LatencyShards::new(),
            service: service.to_string(),
            version: version.to_string(),
            mirrored,
            cluster,
        }
    }

    /// Records one finished exchange. A client's fault is counted apart and nowhere
    /// else; an upstream failure counts as the 502 or 504 it amounts to (also when it
    /// came after a 200's headers); every other exchange by its status.
    pub(crate) fn record(&self, o: &Outcome) {
        let mut status = o.status;
        if let Some(kind) = o.error {
            if let Some(i) = kind.client_index() {
                self.client[i].inc();
                return;
            }
            if let Some(i) = kind.upstream_index() {
                self.errors[i].inc();
                status = kind.status().as_u16();
            }
        }
        self.record_status(status);
        let secs = o.elapsed.as_secs_f64();
        self.seconds.observe(secs);
        self.millis.observe(secs * 1000.0);
        self.latency.record(o.elapsed);
    }

    fn record_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        self.envoy_xx[class].inc();
        self.envoy_total.inc();
        if (100..600).contains(&status) {
            let slot = &self.envoy_codes[usize::from(status - 100)];
            slot.get_or_init(|| {
                self.envoy_rq
                    .with_label_values(&[self.cluster.as_str(), status.to_string().as_str()])
            })
            .inc();
        }
    }

    /// Removes every series of this version (it is gone from the config).
    pub(crate) fn forget(&self, f: &Families) {
        let (s, v, c) = (
            self.service.as_str(),
            self.version.as_str(),
            self.cluster.as_str(),
        );
        let mirrored = if self.mirrored { "true" } else { "false" };
        for class in CLASSES {
            let _ = f.requests.remove_label_values(&[s, v, class, mirrored]);
        }
        for kind in ErrorKind::UPSTREAM {
            let _ = f
                .upstream_errors
                .remove_label_values(&[s, v, kind.label(), mirrored]);
        }
        for kind in ErrorKind::CLIENT {
            let _ = f
                .client_errors
                .remove_label_values(&[s, v, kind.label(), mirrored]);
        }
        for reason in MirrorSkip::ALL {
            let _ = f
                .mirror_skipped
                .remove_label_values(&[s, v, reason.label()]);
        }
        let _ = f.duration.remove_label_values(&[s, v, mirrored]);
        let _ = f.weight.remove_label_values(&[s, v]);
        for class in ENVOY_CLASSES {
            let _ = f.envoy_rq_xx.remove_label_values(&[c, class]);
        }
        for code in self.codes_seen() {
            let _ = f.envoy_rq.remove_label_values(&[c, code.as_str()]);
        }
        let _ = f.envoy_rq_total.remove_label_values(&[c]);
        let _ = f.envoy_rq_time.remove_label_values(&[c]);
    }

    /// The status codes recorded so far (their `envoy_cluster_upstream_rq` series).
    pub(super) fn codes_seen(&self) -> impl Iterator<Item = String> + '_ {
        self.envoy_codes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.get().is_some())
            .map(|(i, _)| (i + 100).to_string())
    }

    /// Cumulative (responses, 5xx responses), without copying the latency histogram.
    pub fn counts(&self) -> (u64, u64) {
        let total = self.classes.iter().map(|c| c.get()).sum();
        (total, self.classes[4].get())
    }

    /// Cumulative values now; a window is the difference of two snapshots.
    pub fn snapshot(&self) -> VersionSnapshot {
        VersionSnapshot {
            service: self.service.clone(),
            version: self.version.clone(),
            at: tokio::time::Instant::now(),
            responses: self.classes.each_ref().map(|c| c.get()),
            failures: self.errors.each_ref().map(|c| c.get()),
            client_faults: self.client.each_ref().map(|c| c.get()),
            codes: self
                .envoy_codes
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((i as u16 + 100, c.get()?.get())))
                .collect(),
            latency: self.latency.merged(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16, ms: u64) -> Outcome {
        Outcome {
            status,
            error: None,
            elapsed: Duration::from_millis(ms),
        }
    }

    #[test]
    fn window_is_the_difference_of_two_snapshots() {
        let fams = Families::new();
        let m = VersionMetrics::new(&fams, "podinfo", "test", 9898, "canary", false);
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
        let p50 = w.quantile_ms(0.5).unwrap_or_default();
        assert!((9.99..=10.02).contains(&p50), "p50 {p50}");
        let p99 = w.quantile_ms(0.99).unwrap_or_default();
        assert!((9.99..=10.02).contains(&p99), "p99 {p99}");
        let max = w.quantile_ms(1.0).unwrap_or_default();
        assert!((249.0..=251.0).contains(&max), "max {max}");
        assert_eq!(m.snapshot().total().requests(), 190);
    }

    #[test]
    fn empty_window_has_no_rate() {
        let fams = Families::new();
        let m = VersionMetrics::new(&fams, "a", "ns", 80, "v1", false);
        let s = m.snapshot();
        assert_eq!(s.since(&s).success_rate(), None);
        assert_eq!(s.since(&s).quantile_ms(0.99), None);
    }

    #[test]
    fn exported_families_use_envoy_names_and_labels() {
        let fams = Families::new();
        let m = VersionMetrics::new(&fams, "podinfo", "test", 9898, "canary", false);
        m.record(&outcome(503, 3));
        m.record(&outcome(200, 3));
        let text = fams.render();
        for want in [
            r#"envoy_cluster_upstream_rq{envoy_cluster_name="test_podinfo-canary_9898",envoy_response_code="503"} 1"#,
            r#"envoy_cluster_upstream_rq_xx{envoy_cluster_name="test_podinfo-canary_9898",envoy_response_code_class="5"} 1"#,
            r#"envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="test_podinfo-canary_9898",le="5"} 2"#,
            r#"envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="test_podinfo-canary_9898",le="1"} 0"#,
            r#"weir_requests_total{code_class="5xx",mirrored="false",service="podinfo",version="canary"} 1"#,
            r#"weir_request_duration_seconds_bucket{mirrored="false",service="podinfo",version="canary",le="0.005"} 2"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        m.forget(&fams);
        assert!(!fams.render().contains("test_podinfo-canary_9898"));
    }
}
