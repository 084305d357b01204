//! The Prometheus families weir's data plane exports, registered once per process, the
//! versions whose measurements it exports, and the text rendering of `/metrics`.

use prometheus::core::Collector;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::version::VersionMetrics;
use super::{Comparison, MirrorSkip, VersionHandle};

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
    mirror_skipped: IntCounterVec,
    mirror_comparisons: IntCounterVec,
    weight: IntGaugeVec,
    /// Every version's measurements, rendered by `export` on each scrape.
    versions: Mutex<BTreeMap<(String, String), VersionHandle>>,
    /// `weir_config_reloads_total{result}`: ok (applied) or error (rejected, nothing
    /// changed).
    pub reloads: IntCounterVec,
    /// `weir_unrouted_requests_total`: requests no service or rule matched (404).
    pub unrouted: IntCounter,
    /// `weir_downstream_connections_active`.
    pub connections: IntGauge,
    /// `weir_dns_resolutions_total{host,result}`: hostname endpoints asked of the resolver.
    pub(crate) dns_resolutions: IntCounterVec,
    /// `weir_tls_reloads_total{result}`: certificate files re-read, ok or rejected.
    pub(crate) tls_reloads: IntCounterVec,
    /// `weir_tls_handshake_failures_total{listener}`.
    pub(crate) tls_handshake_failures: IntCounterVec,
    /// `weir_rejected_requests_total{reason="host"}`: requests refused before routing
    /// because their Host was ambiguous or invalid.
    pub(crate) rejected_host: IntCounter,
    /// `weir_rejected_requests_total{reason="upgrade"}`: upgrades a route does not allow.
    pub(crate) rejected_upgrade: IntCounter,
}

impl Families {
    /// Creates and registers every family.
    pub fn new() -> Families {
        let r = Registry::new();
        let rejected = counter_vec(
            &r,
            "weir_rejected_requests_total",
            "Requests refused before they reached a version: host (400, conflicting Host headers, say), upgrade (403, a protocol the route does not allow).",
            &["reason"],
        );
        let reloads = counter_vec(
            &r,
            "weir_config_reloads_total",
            "Configuration reloads (SIGHUP or a change of the file): ok, or error when the new file was invalid and nothing changed.",
            &["result"],
        );
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        Families {
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
            reloads,
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
            dns_resolutions: counter_vec(
                &r,
                "weir_dns_resolutions_total",
                "Hostname endpoints resolved: ok, or error (the last good addresses stay in use).",
                &["host", "result"],
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
            rejected_host: rejected.with_label_values(&["host"]),
            rejected_upgrade: rejected.with_label_values(&["upgrade"]),
            versions: Mutex::default(),
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
        let handles: Vec<VersionHandle> = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        super::export::render(&handles, &mut out);
        out
    }

    /// The measurements of a version (users' and shadow traffic): the ones it has, or new
    /// ones, exported from now on. They last until [`Families::forget_version`].
    pub(crate) fn version(
        &self,
        service: &str,
        namespace: &str,
        port: u16,
        version: &str,
    ) -> VersionHandle {
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (service.to_string(), version.to_string());
        versions
            .entry(key)
            .or_insert_with(|| {
                let metrics = |mirrored| {
                    Arc::new(VersionMetrics::new(
                        service, namespace, port, version, mirrored,
                    ))
                };
                VersionHandle {
                    users: metrics(false),
                    shadow: metrics(true),
                    weight: self.weight.with_label_values(&[service, version]),
                }
            })
            .clone()
    }

    /// Every version's measurements, by (service, version).
    pub(crate) fn versions_now(&self) -> Vec<((String, String), VersionHandle)> {
        let versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        versions
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect()
    }

    /// The measurements of a version, if it exists.
    pub(crate) fn handle(&self, service: &str, version: &str) -> Option<VersionHandle> {
        let versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        versions
            .get(&(service.to_string(), version.to_string()))
            .cloned()
    }

    /// Removes every series of a version that is gone from the config.
    pub(crate) fn forget_version(&self, service: &str, version: &str) {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(service.to_string(), version.to_string()));
        let _ = self.weight.remove_label_values(&[service, version]);
        for reason in MirrorSkip::ALL {
            let _ = self
                .mirror_skipped
                .remove_label_values(&[service, version, reason.label()]);
        }
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
