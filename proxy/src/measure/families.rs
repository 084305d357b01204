//! The Prometheus families weir's data plane exports, registered once per process, and
//! the text rendering of `/metrics`.

use prometheus::core::Collector;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::{Comparison, MirrorSkip};

/// Envoy's default histogram bucket bounds, in milliseconds.
pub const ENVOY_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Registers a collector and hands it back; the definitions are static, so a clash is a
/// programming error.
pub fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric definitions are static and unique");
    c
}

/// An `IntCounterVec` registered in `registry`.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    register(registry, c)
}

/// An `IntGaugeVec` registered in `registry`.
pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    register(registry, g)
}

/// A `HistogramVec` registered in `registry`.
pub fn histogram_vec(registry: &Registry, opts: HistogramOpts, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(opts, labels).expect("static metric definition");
    register(registry, h)
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("static metric definition"),
    )
}

/// The Prometheus families weir exports.
pub struct Families {
    registry: Registry,
    pub(super) requests: IntCounterVec,
    pub(super) duration: HistogramVec,
    pub(super) upstream_errors: IntCounterVec,
    pub(super) client_errors: IntCounterVec,
    pub(super) mirror_skipped: IntCounterVec,
    pub(super) mirror_comparisons: IntCounterVec,
    pub(super) weight: IntGaugeVec,
    pub(super) envoy_rq: IntCounterVec,
    pub(super) envoy_rq_xx: IntCounterVec,
    pub(super) envoy_rq_total: IntCounterVec,
    pub(super) envoy_rq_time: HistogramVec,
    /// `weir_config_reloads_total`.
    pub reloads: IntCounter,
    /// `weir_config_reload_failures_total`.
    pub reload_failures: IntCounter,
    /// `weir_unrouted_requests_total`: requests no service or rule matched (404).
    pub unrouted: IntCounter,
    /// `weir_downstream_connections_active`.
    pub connections: IntGauge,
    /// `weir_tls_reloads_total{result}`: certificate files re-read, ok or rejected.
    pub(crate) tls_reloads: IntCounterVec,
    /// `weir_tls_handshake_failures_total{listener}`.
    pub(crate) tls_handshake_failures: IntCounterVec,
    /// `weir_rejected_requests_total{reason}`: requests refused before routing.
    pub(crate) rejected: IntCounterVec,
}

impl Families {
    /// Creates and registers every family.
    pub fn new() -> Families {
        let r = Registry::new();
        let svm = &["service", "version", "mirrored"];
        let envoy_ms = || ENVOY_BUCKETS_MS.to_vec();
        Families {
            requests: counter_vec(
                &r,
                "weir_requests_total",
                "Responses sent for each service version, by status class.",
                &["service", "version", "code_class", "mirrored"],
            ),
            duration: histogram_vec(
                &r,
                HistogramOpts::new(
                    "weir_request_duration_seconds",
                    "Time from receiving a request to the end of its response, per service version.",
                )
                .buckets(envoy_ms().iter().map(|ms| ms / 1000.0).collect()),
                svm,
            ),
            upstream_errors: counter_vec(
                &r,
                "weir_upstream_errors_total",
                "Requests weir answered itself because the upstream failed, by reason.",
                &["service", "version", "reason", "mirrored"],
            ),
            client_errors: counter_vec(
                &r,
                "weir_client_errors_total",
                "Requests that failed by the client's doing (not counted against the version), by reason.",
                &["service", "version", "reason", "mirrored"],
            ),
            mirror_skipped: counter_vec(
                &r,
                "weir_mirror_skipped_total",
                "Requests that should have been mirrored but were not, by reason.",
                &["service", "version", "reason"],
            ),
            mirror_comparisons: counter_vec(
                &r,
                "weir_mirror_comparisons_total",
                "Shadow answers compared with the user's: match, status_mismatch or body_mismatch.",
                &["service", "result"],
            ),
            weight: gauge_vec(
                &r,
                "weir_route_weight",
                "Weight of each version in the service's weighted split.",
                &["service", "version"],
            ),
            envoy_rq: counter_vec(
                &r,
                "envoy_cluster_upstream_rq",
                "Upstream responses by status code (Envoy-compatible).",
                &["envoy_cluster_name", "envoy_response_code"],
            ),
            envoy_rq_xx: counter_vec(
                &r,
                "envoy_cluster_upstream_rq_xx",
                "Upstream responses by status class (Envoy-compatible).",
                &["envoy_cluster_name", "envoy_response_code_class"],
            ),
            envoy_rq_total: counter_vec(
                &r,
                "envoy_cluster_upstream_rq_total",
                "Upstream requests (Envoy-compatible).",
                &["envoy_cluster_name"],
            ),
            envoy_rq_time: histogram_vec(
                &r,
                HistogramOpts::new(
                    "envoy_cluster_upstream_rq_time",
                    "Upstream request time in milliseconds (Envoy-compatible).",
                )
                .buckets(envoy_ms()),
                &["envoy_cluster_name"],
            ),
            reloads: counter(
                &r,
                "weir_config_reloads_total",
                "Successful configuration reloads.",
            ),
            reload_failures: counter(
                &r,
                "weir_config_reload_failures_total",
                "Configuration reloads rejected because the new file was invalid.",
            ),
            unrouted: counter(
                &r,
                "weir_unrouted_requests_total",
                "Requests answered 404 because no service or rule matched.",
            ),
            connections: register(
                &r,
                IntGauge::new(
                    "weir_downstream_connections_active",
                    "Client connections currently open.",
                )
                .expect("static metric definition"),
            ),
            tls_reloads: counter_vec(
                &r,
                "weir_tls_reloads_total",
                "Certificate files re-read because they changed: ok, or error (the previous ones keep serving).",
                &["result"],
            ),
            tls_handshake_failures: counter_vec(
                &r,
                "weir_tls_handshake_failures_total",
                "Client TLS handshakes that failed or timed out, per listener.",
                &["listener"],
            ),
            rejected: counter_vec(
                &r,
                "weir_rejected_requests_total",
                "Requests answered 400 before routing (conflicting Host headers, say), by reason.",
                &["reason"],
            ),
            registry: r,
        }
    }

    /// The registry to add more families to (the controller adds its own).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every family in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
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

    /// `weir_mirror_skipped_total` of one shadow version and reason.
    pub(crate) fn mirror_skipped(
        &self,
        service: &str,
        version: &str,
        why: MirrorSkip,
    ) -> IntCounter {
        self.mirror_skipped
            .with_label_values(&[service, version, why.label()])
    }

    /// `weir_mirror_comparisons_total` of one service and result.
    pub(crate) fn mirror_comparisons(&self, service: &str, result: Comparison) -> IntCounter {
        self.mirror_comparisons
            .with_label_values(&[service, result.label()])
    }

    /// Removes a service's comparison series once the service is gone.
    pub(crate) fn forget_service(&self, service: &str) {
        for result in Comparison::ALL {
            let _ = self
                .mirror_comparisons
                .remove_label_values(&[service, result.label()]);
        }
    }
}

impl Default for Families {
    fn default() -> Self {
        Families::new()
    }
}
