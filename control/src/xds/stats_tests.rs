//! `flush`: Envoy's running totals differenced per node into what each version gained.

use std::collections::HashMap;

use envoy_types::pb::io::prometheus::client::{
    Bucket, Counter as PbCounter, Gauge, Histogram, LabelPair, Metric, MetricFamily,
};
use weir_proxy::MeasurementDelta;

use super::{flush, Totals, Versions, NEW_NODE_UPTIME_S};

const CANARY: &str = "test_shop-canary_8080";

fn versions() -> Versions {
    HashMap::from([(
        CANARY.to_string(),
        ("shop".to_string(), "canary".to_string(), false),
    )])
}

fn family(name: &str, metric: Metric) -> MetricFamily {
    MetricFamily {
        name: Some(name.to_string()),
        metric: vec![metric],
        ..MetricFamily::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| LabelPair {
            name: Some(n.to_string()),
            value: Some(v.to_string()),
        })
        .collect()
}

/// One flush as Envoy's metrics service sends it.
#[derive(Default)]
struct Flush {
    uptime: f64,
    ok: Option<f64>,
    connect_fail: Option<f64>,
    connect_timeout: Option<f64>,
    /// Latencies under 1 ms in this flush.
    fast: Option<u64>,
}

impl Flush {
    fn at(uptime: f64) -> Flush {
        Flush {
            uptime,
            ..Flush::default()
        }
    }

    fn families(&self) -> Vec<MetricFamily> {
        let mut out = vec![family(
            "server.uptime",
            Metric {
                gauge: Some(Gauge {
                    value: Some(self.uptime),
                }),
                ..Metric::default()
            },
        )];
        let counter = |name: &str, extra: &[(&str, &str)], value: f64| {
            let mut pairs = vec![("envoy.cluster_name", CANARY)];
            pairs.extend_from_slice(extra);
            family(
                name,
                Metric {
                    label: labels(&pairs),
                    counter: Some(PbCounter {
                        value: Some(value),
                        ..PbCounter::default()
                    }),
                    ..Metric::default()
                },
            )
        };
        if let Some(v) = self.ok {
            out.push(counter(
                "cluster.upstream_rq",
                &[("envoy.response_code", "200")],
                v,
            ));
        }
        if let Some(v) = self.connect_fail {
            out.push(counter("cluster.upstream_cx_connect_fail", &[], v));
        }
        if let Some(v) = self.connect_timeout {
            out.push(counter("cluster.upstream_cx_connect_timeout", &[], v));
        }
        if let Some(n) = self.fast {
            out.push(family(
                "cluster.upstream_rq_time",
                Metric {
                    label: labels(&[("envoy.cluster_name", CANARY)]),
                    histogram: Some(Histogram {
                        sample_count: Some(n),
                        sample_sum: Some(0.5 * n as f64),
                        bucket: vec![Bucket {
                            cumulative_count: Some(n),
                            upper_bound: Some(1.0),
                            ..Bucket::default()
                        }],
                        ..Histogram::default()
                    }),
                    ..Metric::default()
                },
            ));
        }
        out
    }

    fn taken(&self, totals: &mut Totals) -> Vec<MeasurementDelta> {
        flush(&versions(), &self.families(), totals)
    }
}

fn codes(deltas: &[MeasurementDelta]) -> Vec<(u16, u64)> {
    deltas.iter().flat_map(|d| d.codes.clone()).collect()
}

fn failures(deltas: &[MeasurementDelta]) -> Vec<(String, u64)> {
    deltas.iter().flat_map(|d| d.failures.clone()).collect()
}

fn latencies(deltas: &[MeasurementDelta]) -> u64 {
    deltas.iter().flat_map(|d| &d.buckets).sum()
}

#[test]
fn an_old_node_s_first_flush_only_sets_the_baseline() {
    let mut totals = Totals::default();
    let first = Flush {
        ok: Some(100.0),
        connect_fail: Some(4.0),
        connect_timeout: Some(1.0),
        fast: Some(5),
        ..Flush::at(NEW_NODE_UPTIME_S + 50.0)
    };
    assert_eq!(first.taken(&mut totals), Vec::new());
    let second = Flush {
        ok: Some(103.0),
        fast: Some(3),
        ..first
    };
    let deltas = second.taken(&mut totals);
    assert_eq!(codes(&deltas), [(200, 3)]);
    assert_eq!(latencies(&deltas), 3);
    assert_eq!(deltas[0].service, "shop");
    assert_eq!(deltas[0].version, "canary");
}

#[test]
fn an_old_node_s_first_flush_adds_no_latencies() {
    let mut totals = Totals::default();
    let only_latencies = Flush {
        fast: Some(7),
        ..Flush::at(NEW_NODE_UPTIME_S + 1.0)
    };
    assert_eq!(only_latencies.taken(&mut totals), Vec::new());
    let deltas = only_latencies.taken(&mut totals);
    assert_eq!(latencies(&deltas), 7);
}

#[test]
fn a_new_node_counts_from_its_first_flush() {
    let mut totals = Totals::default();
    let deltas = Flush {
        ok: Some(7.0),
        fast: Some(7),
        ..Flush::at(NEW_NODE_UPTIME_S - 8.0)
    }
    .taken(&mut totals);
    assert_eq!(codes(&deltas), [(200, 7)]);
    assert_eq!(latencies(&deltas), 7);
    assert_eq!(deltas[0].sum_micros, 3500);
}

#[test]
fn an_old_node_s_second_flush_counts_when_its_first_had_no_counters() {
    let mut totals = Totals::default();
    let old = NEW_NODE_UPTIME_S + 100.0;
    assert_eq!(Flush::at(old).taken(&mut totals), Vec::new());
    let deltas = Flush {
        ok: Some(2.0),
        ..Flush::at(old + 1.0)
    }
    .taken(&mut totals);
    assert_eq!(codes(&deltas), [(200, 2)]);
}

#[test]
fn a_restarted_node_counts_its_new_totals_from_zero() {
    let mut totals = Totals::default();
    let old = NEW_NODE_UPTIME_S + 100.0;
    let ok = |uptime: f64, n: f64| Flush {
        ok: Some(n),
        ..Flush::at(uptime)
    };
    assert_eq!(ok(old, 50.0).taken(&mut totals), Vec::new());
    assert_eq!(codes(&ok(old + 1.0, 60.0).taken(&mut totals)), [(200, 10)]);
    // Up again for a second: everything it reports is since its restart, even a total
    // above the one before.
    assert_eq!(codes(&ok(1.0, 70.0).taken(&mut totals)), [(200, 70)]);
    assert_eq!(codes(&ok(2.0, 75.0).taken(&mut totals)), [(200, 5)]);
}

#[test]
fn a_timed_out_connect_counts_once_as_a_timeout() {
    let mut totals = Totals::default();
    let connect = |fail: f64, timeout: f64| Flush {
        connect_fail: Some(fail),
        connect_timeout: Some(timeout),
        ..Flush::at(1.0)
    };
    // Envoy's connect failures include its connect timeouts.
    assert_eq!(
        failures(&connect(3.0, 1.0).taken(&mut totals)),
        [
            ("connect_refused".to_string(), 2),
            ("connect_timeout".to_string(), 1)
        ]
    );
    assert_eq!(
        failures(&connect(5.0, 3.0).taken(&mut totals)),
        [("connect_timeout".to_string(), 2)]
    );
    // A flush that read the timeout before the failure it also is: counted once.
    assert_eq!(
        failures(&connect(5.0, 4.0).taken(&mut totals)),
        [("connect_timeout".to_string(), 1)]
    );
    assert_eq!(connect(6.0, 4.0).taken(&mut totals), Vec::new());
    assert_eq!(
        failures(&connect(7.0, 4.0).taken(&mut totals)),
        [("connect_refused".to_string(), 1)]
    );
}

#[test]
fn a_first_connect_timeout_without_its_failure_yet_counts_once() {
    let mut totals = Totals::default();
    let first = Flush {
        connect_timeout: Some(1.0),
        ..Flush::at(1.0)
    };
    assert_eq!(
        failures(&first.taken(&mut totals)),
        [("connect_timeout".to_string(), 1)]
    );
    let second = Flush {
        connect_fail: Some(1.0),
        ..first
    };
    assert_eq!(second.taken(&mut totals), Vec::new());
}
