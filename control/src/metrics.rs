//! Flagger's controller metrics, plus weir's rollout-duration histogram.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use weir_proxy::{counter_vec, gauge_vec, histogram_vec, register};

/// The controller's families, registered next to the proxy's.
pub struct Metrics {
    /// `flagger_canary_total{namespace}`.
    pub total: IntGaugeVec,
    /// `flagger_canary_status{name,namespace}`.
    pub status: IntGaugeVec,
    /// `flagger_canary_weight{workload,namespace}`.
    pub weight: IntGaugeVec,
    /// `flagger_canary_metric_analysis{name,namespace,metric}`.
    pub analysis: GaugeVec,
    /// `flagger_canary_successes_total`.
    pub successes: IntCounterVec,
    /// `flagger_canary_failures_total`.
    pub failures: IntCounterVec,
    /// `flagger_canary_duration_seconds`: one tick.
    pub tick_seconds: HistogramVec,
    /// `weir_rollout_duration_seconds{service,namespace,result}`.
    pub rollout_seconds: HistogramVec,
    /// `weir_rollout_state_lost{name,namespace}`: 1 while a rollout's state is lost.
    pub state_lost: IntGaugeVec,
    /// `weir_state_file_corrupt_total`: corrupt state files set aside.
    pub state_corrupt: IntCounter,
}

impl Metrics {
    /// Registers every family in `r`.
    pub fn new(r: &Registry) -> Metrics {
        let outcome = &[
            "name",
            "namespace",
            "deployment_strategy",
            "analysis_status",
        ];
        Metrics {
            total: gauge_vec(
                r,
                "flagger_canary_total",
                "Number of canaries per namespace.",
                &["namespace"],
            ),
            status: gauge_vec(
                r,
                "flagger_canary_status",
                "Last canary analysis result: 0 Progressing, 1 done or waiting, 2 Failed.",
                &["name", "namespace"],
            ),
            weight: gauge_vec(
                r,
                "flagger_canary_weight",
                "The virtual service destination weight.",
                &["workload", "namespace"],
            ),
            analysis: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "flagger_canary_metric_analysis",
                        "Last canary analysis value per metric (request-duration in seconds).",
                    ),
                    &["name", "namespace", "metric"],
                )
                .expect("static metric definition"),
            ),
            successes: counter_vec(
                r,
                "flagger_canary_successes_total",
                "Successful canary promotions.",
                outcome,
            ),
            failures: counter_vec(
                r,
                "flagger_canary_failures_total",
                "Canary rollbacks.",
                outcome,
            ),
            tick_seconds: histogram_vec(
                r,
                HistogramOpts::new(
                    "flagger_canary_duration_seconds",
                    "Wall time of one canary analysis tick.",
                ),
                &["name", "namespace"],
            ),
            rollout_seconds: histogram_vec(
                r,
                HistogramOpts::new(
                    "weir_rollout_duration_seconds",
                    "Time from a new revision to its promotion or rollback.",
                )
                .buckets(vec![
                    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
                ]),
                &["service", "namespace", "result"],
            ),
            state_lost: gauge_vec(
                r,
                "weir_rollout_state_lost",
                "1 while weir has lost a rollout's state (corrupt state file) and refuses rollouts until `weir ctl reset`.",
                &["name", "namespace"],
            ),
            state_corrupt: register(
                r,
                IntCounter::new(
                    "weir_state_file_corrupt_total",
                    "Corrupt state files set aside at start.",
                )
                .expect("static metric definition"),
            ),
        }
    }
}
