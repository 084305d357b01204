//! Per-version measurements: status classes, upstream failures, latency.
//!
//! Counters are Prometheus handles resolved once, when a route table is built, so the hot
//! path only does atomic adds. Latency goes to three places: fixed-bound Prometheus
//! histograms (seconds for weir, milliseconds for Envoy's families) and a sharded
//! hdrhistogram that gives the controller exact percentiles over any window.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prometheus::{
    Histogram as PromHistogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Envoy's default histogram bucket bounds, in milliseconds.
pub const ENVOY_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Largest latency the hdrhistogram tracks exactly (larger values are clamped): 10 minutes.
const HDR_MAX_MICROS: u64 = 600_000_000;

/// Why a request to an upstream failed; one label value each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The endpoint refused the connection (or no route to it).
    ConnectRefused,
    /// Opening the connection took longer than the connect timeout.
    ConnectTimeout,
    /// The connection was reset or closed before a complete response.
    Reset,
    /// No response headers within the route's timeout.
    Timeout,
    /// The upstream spoke invalid HTTP.
    Protocol,
}

impl FailureReason {
    /// All reasons, in label order.
    pub const ALL: [FailureReason; 5] = [
        FailureReason::ConnectRefused,
        FailureReason::ConnectTimeout,
        FailureReason::Reset,
        FailureReason::Timeout,
        FailureReason::Protocol,
    ];

    /// The `reason` label value.
    pub const fn label(self) -> &'static str {
        match self {
            FailureReason::ConnectRefused => "connect_refused",
            FailureReason::ConnectTimeout => "connect_timeout",
            FailureReason::Reset => "reset",
            FailureReason::Timeout => "timeout",
            FailureReason::Protocol => "protocol",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const ENVOY_CLASSES: [&str; 5] = ["1", "2", "3", "4", "5"];

/// The Prometheus families weir exports, registered once per process.
pub struct Families {
    pub(crate) registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    /// `weir_mirror_skipped_total{service,version,reason}`.
    pub mirror_skipped: IntCounterVec,
    /// `weir_mirror_comparisons_total{service,result}`.
    pub mirror_comparisons: IntCounterVec,
    weight: IntGaugeVec,
    envoy_rq: IntCounterVec,
    envoy_rq_xx: IntCounterVec,
    envoy_rq_total: IntCounterVec,
    envoy_rq_time: HistogramVec,
    /// `weir_config_reloads_total`.
    pub reloads: IntCounter,
    /// `weir_config_reload_failures_total`.
    pub reload_failures: IntCounter,
    /// `weir_unrouted_requests_total`: requests no service or rule matched (404).
    pub unrouted: IntCounter,
    /// `weir_downstream_connections_active`.
    pub connections: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are static and valid")
}

impl Families {
    /// Creates and registers every family.
    pub fn new() -> Families {
        let registry = Registry::new();
        let sv = &["service", "version"];
        let svm = &["service", "version", "mirrored"];
        let requests = must(IntCounterVec::new(
            Opts::new(
                "weir_requests_total",
                "Responses sent for each service version, by status class.",
            ),
            &["service", "version", "code_class", "mirrored"],
        ));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "weir_request_duration_seconds",
                "Time from receiving a request to the end of its response, per service version.",
            )
            .buckets(ENVOY_BUCKETS_MS.iter().map(|ms| ms / 1000.0).collect()),
            svm,
        ));
        let upstream_errors = must(IntCounterVec::new(
            Opts::new(
                "weir_upstream_errors_total",
                "Requests weir answered itself because the upstream failed, by reason.",
            ),
            &["service", "version", "reason", "mirrored"],
        ));
        let mirror_skipped = must(IntCounterVec::new(
            Opts::new(
                "weir_mirror_skipped_total",
                "Requests that should have been mirrored but were not, by reason.",
            ),
            &["service", "version", "reason"],
        ));
        let mirror_comparisons = must(IntCounterVec::new(
            Opts::new(
                "weir_mirror_comparisons_total",
                "Shadow answers compared with the user's: match, status_mismatch or body_mismatch.",
            ),
            &["service", "result"],
        ));
        let weight = must(IntGaugeVec::new(
            Opts::new(
                "weir_route_weight",
                "Weight of each version in the service's weighted split.",
            ),
            sv,
        ));
        let envoy_rq = must(IntCounterVec::new(
            Opts::new(
                "envoy_cluster_upstream_rq",
                "Upstream responses by status code (Envoy-compatible).",
            ),
            &["envoy_cluster_name", "envoy_response_code"],
        ));
        let envoy_rq_xx = must(IntCounterVec::new(
            Opts::new(
                "envoy_cluster_upstream_rq_xx",
                "Upstream responses by status class (Envoy-compatible).",
            ),
            &["envoy_cluster_name", "envoy_response_code_class"],
        ));
        let envoy_rq_total = must(IntCounterVec::new(
            Opts::new(
                "envoy_cluster_upstream_rq_total",
                "Upstream requests (Envoy-compatible).",
            ),
            &["envoy_cluster_name"],
        ));
        let envoy_rq_time = must(HistogramVec::new(
            HistogramOpts::new(
                "envoy_cluster_upstream_rq_time",
                "Upstream request time in milliseconds (Envoy-compatible).",
            )
            .buckets(ENVOY_BUCKETS_MS.to_vec()),
            &["envoy_cluster_name"],
        ));
        let reloads = must(IntCounter::new(
            "weir_config_reloads_total",
            "Successful configuration reloads.",
        ));
        let reload_failures = must(IntCounter::new(
            "weir_config_reload_failures_total",
            "Configuration reloads rejected because the new file was invalid.",
        ));
        let unrouted = must(IntCounter::new(
            "weir_unrouted_requests_total",
            "Requests answered 404 because no service or rule matched.",
        ));
        let connections = must(IntGauge::new(
            "weir_downstream_connections_active",
            "Client connections currently open.",
        ));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(mirror_skipped.clone()),
            Box::new(mirror_comparisons.clone()),
            Box::new(weight.clone()),
            Box::new(envoy_rq.clone()),
            Box::new(envoy_rq_xx.clone()),
            Box::new(envoy_rq_total.clone()),
            Box::new(envoy_rq_time.clone()),
            Box::new(reloads.clone()),
            Box::new(reload_failures.clone()),
            Box::new(unrouted.clone()),
            Box::new(connections.clone()),
        ] {
            must(registry.register(c));
        }
        Families {
            registry,
            requests,
            duration,
            upstream_errors,
            mirror_skipped,
            mirror_comparisons,
            weight,
            envoy_rq,
            envoy_rq_xx,
            envoy_rq_total,
            envoy_rq_time,
            reloads,
            reload_failures,
            unrouted,
            connections,
        }
    }

    /// The registry to add more families to (the controller adds its own).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every family in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail for well-formed families.
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        // Envoy names these counters without `_total`. Declaring them untyped (the text
        // format's type for "not vouched for") keeps Envoy's names, satisfies
        // `promtool check metrics`, and `rate()` works on them the same.
        for family in ["envoy_cluster_upstream_rq", "envoy_cluster_upstream_rq_xx"] {
            out = out.replace(
                &format!("# TYPE {family} counter\n"),
                &format!("# TYPE {family} untyped\n"),
            );
        }
        out
    }

    /// Resolves the handles of one service version.
    pub(crate) fn version(
        &self,
        service: &str,
        namespace: &str,
        port: u16,
        version: &str,
        mirrored: bool,
    ) -> VersionMetrics {
        let cluster = envoy_cluster_name(namespace, service, version, port);
        let m = if mirrored { "true" } else { "false" };
        let class = |i: usize| {
            self.requests
                .with_label_values(&[service, version, CLASSES[i], m])
        };
        let xx = |i: usize| {
            self.envoy_rq_xx
                .with_label_values(&[cluster.as_str(), ENVOY_CLASSES[i]])
        };
        VersionMetrics {
            service: service.to_string(),
            version: version.to_string(),
            mirrored,
            cluster: cluster.clone(),
            classes: [class(0), class(1), class(2), class(3), class(4)],
            envoy_xx: [xx(0), xx(1), xx(2), xx(3), xx(4)],
            envoy_total: self.envoy_rq_total.with_label_values(&[cluster.as_str()]),
            envoy_codes: (0..500).map(|_| OnceLock::new()).collect(),
            envoy_rq: self.envoy_rq.clone(),
            errors: FailureReason::ALL.map(|r| {
                self.upstream_errors
                    .with_label_values(&[service, version, r.label(), m])
            }),
            seconds: self.duration.with_label_values(&[service, version, m]),
            millis: self.envoy_rq_time.with_label_values(&[cluster.as_str()]),
            weight: self.weight.with_label_values(&[service, version]),
            latency: LatencyShards::new(),
        }
    }

    /// Removes every series of a service version that is gone from the config.
    pub(crate) fn forget(&self, m: &VersionMetrics) {
        let (s, v, c) = (m.service.as_str(), m.version.as_str(), m.cluster.as_str());
        let mirrored = if m.mirrored { "true" } else { "false" };
        for class in CLASSES {
            let _ = self.requests.remove_label_values(&[s, v, class, mirrored]);
        }
        for r in FailureReason::ALL {
            let _ = self
                .upstream_errors
                .remove_label_values(&[s, v, r.label(), mirrored]);
        }
        for reason in crate::mirror::SKIP_REASONS {
            let _ = self.mirror_skipped.remove_label_values(&[s, v, reason]);
        }
        for result in crate::mirror::COMPARISON_RESULTS {
            let _ = self.mirror_comparisons.remove_label_values(&[s, result]);
        }
        let _ = self.duration.remove_label_values(&[s, v, mirrored]);
        let _ = self.weight.remove_label_values(&[s, v]);
        for class in ENVOY_CLASSES {
            let _ = self.envoy_rq_xx.remove_label_values(&[c, class]);
        }
        for (i, code) in m.envoy_codes.iter().enumerate() {
            if code.get().is_some() {
                let code = (i + 100).to_string();
                let _ = self.envoy_rq.remove_label_values(&[c, code.as_str()]);
            }
        }
        let _ = self.envoy_rq_total.remove_label_values(&[c]);
        let _ = self.envoy_rq_time.remove_label_values(&[c]);
    }
}

impl Default for Families {
    fn default() -> Self {
        Families::new()
    }
}

/// Contour's cluster name: `<namespace>_<service>-<version>_<port>`.
pub fn envoy_cluster_name(namespace: &str, service: &str, version: &str, port: u16) -> String {
    format!("{namespace}_{service}-{version}_{port}")
}

/// The measurement handles of one (service, version).
pub struct VersionMetrics {
    /// Service name.
    pub service: String,
    /// Version name.
    pub version: String,
    /// Measures shadow (mirrored) traffic rather than users' traffic.
    pub mirrored: bool,
    /// Envoy cluster name used in the Envoy families.
    pub cluster: String,
    classes: [IntCounter; 5],
    envoy_xx: [IntCounter; 5],
    envoy_total: IntCounter,
    envoy_codes: Box<[OnceLock<IntCounter>]>,
    envoy_rq: IntCounterVec,
    errors: [IntCounter; 5],
    seconds: PromHistogram,
    millis: PromHistogram,
    pub(crate) weight: IntGauge,
    latency: LatencyShards,
}

impl VersionMetrics {
    /// Counts a response sent for this version (from the upstream or made by weir).
    pub fn record_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        self.envoy_xx[class].inc();
        self.envoy_total.inc();
        if (100..600).contains(&status) {
            let slot = &self.envoy_codes[usize::from(status - 100)];
            slot.get_or_init(|| {
                self.envoy_rq
                    .with_label_values(&[self.cluster.as_str(), itoa(status).as_str()])
            })
            .inc();
        }
    }

    /// Counts an upstream failure weir answered itself.
    pub fn record_failure(&self, reason: FailureReason) {
        self.errors[reason.index()].inc();
    }

    /// Records the latency of a finished request.
    pub fn record_latency(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.seconds.observe(secs);
        self.millis.observe(secs * 1000.0);
        self.latency.record(elapsed);
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
            at: Instant::now(),
            responses: self.classes.each_ref().map(|c| c.get()),
            failures: self.errors.each_ref().map(|c| c.get()),
            latency: self.latency.merged(),
        }
    }
}

fn itoa(n: u16) -> String {
    n.to_string()
}

/// hdrhistograms sharded by worker thread, merged on read: no lock shared by all requests.
struct LatencyShards {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HDR_MAX_MICROS, 3).expect("static bounds are valid")
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}

impl LatencyShards {
    fn new() -> Self {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 64);
        LatencyShards {
            shards: (0..n).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let shard = SHARD.with(|s| *s) % self.shards.len();
        let mut h = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(micros);
    }

    fn merged(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for shard in self.shards.iter() {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds on both sides: adding cannot fail.
            let _ = out.add(&*h);
        }
        out
    }
}

/// Cumulative measurements of one service version at an instant.
#[derive(Clone)]
pub struct VersionSnapshot {
    /// Service name.
    pub service: String,
    /// Version name.
    pub version: String,
    /// When it was taken.
    pub at: Instant,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx (including weir's own 502/504).
    pub responses: [u64; 5],
    /// Upstream failures weir answered itself, indexed like [`FailureReason::ALL`].
    pub failures: [u64; 5],
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
            latency,
        }
    }

    /// Everything since the start, as a window.
    pub fn total(&self) -> Window {
        Window {
            duration: Duration::ZERO,
            responses: self.responses,
            failures: self.failures,
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
    /// Upstream failures weir answered itself, indexed like [`FailureReason::ALL`].
    pub failures: [u64; 5],
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

    /// Responses weir made itself because the upstream failed.
    pub fn proxy_failures(&self) -> u64 {
        self.failures.iter().sum()
    }

    /// Failures with one reason.
    pub fn failures_of(&self, reason: FailureReason) -> u64 {
        self.failures[reason.index()]
    }

    /// Percentage of non-5xx responses, as Flagger's `request-success-rate`; None without requests.
    pub fn success_rate(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| 100.0 * (n - self.errors_5xx()) as f64 / n as f64)
    }

    /// Latency quantile (0.99 for p99) in milliseconds; None without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(q) as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_the_difference_of_two_snapshots() {
        let fams = Families::new();
        let m = fams.version("podinfo", "test", 9898, "canary", false);
        for _ in 0..90 {
            m.record_status(200);
            m.record_latency(Duration::from_millis(1000));
        }
        let first = m.snapshot();
        for i in 0..100 {
            m.record_status(if i < 5 { 503 } else { 200 });
            m.record_latency(Duration::from_millis(if i < 99 { 10 } else { 250 }));
        }
        m.record_failure(FailureReason::Timeout);
        let w = m.snapshot().since(&first);
        assert_eq!(w.requests(), 100);
        assert_eq!(w.errors_5xx(), 5);
        assert_eq!(w.success_rate(), Some(95.0));
        assert_eq!(w.failures_of(FailureReason::Timeout), 1);
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
        let m = fams.version("a", "ns", 80, "v1", false);
        let s = m.snapshot();
        assert_eq!(s.since(&s).success_rate(), None);
        assert_eq!(s.since(&s).quantile_ms(0.99), None);
    }

    #[test]
    fn exported_families_use_envoy_names_and_labels() {
        let fams = Families::new();
        let m = fams.version("podinfo", "test", 9898, "canary", false);
        m.record_status(503);
        m.record_status(200);
        m.record_latency(Duration::from_millis(3));
        let text = fams.render();
        for want in [
            r#"envoy_cluster_upstream_rq{envoy_cluster_name="test_podinfo-canary_9898",envoy_response_code="503"} 1"#,
            r#"envoy_cluster_upstream_rq_xx{envoy_cluster_name="test_podinfo-canary_9898",envoy_response_code_class="5"} 1"#,
            r#"envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="test_podinfo-canary_9898",le="5"} 1"#,
            r#"envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="test_podinfo-canary_9898",le="1"} 0"#,
            r#"weir_requests_total{code_class="5xx",mirrored="false",service="podinfo",version="canary"} 1"#,
            r#"weir_request_duration_seconds_bucket{mirrored="false",service="podinfo",version="canary",le="0.005"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        fams.forget(&m);
        assert!(!fams.render().contains("test_podinfo-canary_9898"));
    }
}
