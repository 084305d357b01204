//! `/metrics` text for the per-version families, written straight from the versions'
//! tallies (read once per scrape) rather than kept as Prometheus objects updated on every
//! request. Label names are in alphabetical order, as the Prometheus client writes them.

use std::fmt::Write;

use super::tally::Tally;
use super::version::VersionMetrics;
use super::VersionHandle;
use crate::error::ErrorKind;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const ENVOY_CLASSES: [&str; 5] = ["1", "2", "3", "4", "5"];

/// Envoy's bucket bounds (`super::ENVOY_BUCKETS_MS`) as `le` labels, in ms and seconds.
const LE_MS: [&str; 19] = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
    "30000", "60000", "300000", "600000", "1800000", "3600000",
];
const LE_SECONDS: [&str; 19] = [
    "0.0005", "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
    "10", "30", "60", "300", "600", "1800", "3600",
];

/// One version's tallies as read for a scrape.
struct Read<'a> {
    users: (&'a VersionMetrics, Tally),
    shadow: Option<(&'a VersionMetrics, Tally)>,
    /// Users' and shadow traffic together, as Envoy counts a cluster.
    cluster: Tally,
}

/// Appends every per-version family to `out`.
pub(super) fn render(handles: &[VersionHandle], out: &mut String) {
    let reads: Vec<Read> = handles.iter().map(read).collect();
    let weir = || {
        reads
            .iter()
            .flat_map(|r| std::iter::once(&r.users).chain(r.shadow.as_ref()))
    };

    header(
        out,
        "weir_requests_total",
        "counter",
        "Responses sent for each service version, by status class.",
    );
    for (m, t) in weir() {
        for (class, n) in CLASSES.iter().zip(t.responses) {
            let _ = writeln!(
                out,
                "weir_requests_total{{code_class=\"{class}\",{}}} {n}",
                svm(m)
            );
        }
    }
    reasons(
        out,
        "weir_upstream_errors_total",
        "Requests weir answered itself because the upstream failed, by reason.",
        &ErrorKind::UPSTREAM,
        weir().map(|(m, t)| (*m, &t.failures[..])),
    );
    reasons(
        out,
        "weir_client_errors_total",
        "Requests that failed by the client's doing (not counted against the version), by reason.",
        &ErrorKind::CLIENT,
        weir().map(|(m, t)| (*m, &t.client_faults[..])),
    );
    let name = "weir_request_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Time from receiving a request to the end of its response, per service version.",
    );
    for (m, t) in weir() {
        let labels = svm(m);
        histogram(
            out,
            name,
            &labels,
            &LE_SECONDS,
            t,
            t.sum_micros as f64 / 1e6,
        );
    }

    header(
        out,
        "envoy_cluster_upstream_rq",
        "untyped",
        "Upstream responses by status code (Envoy-compatible).",
    );
    for r in &reads {
        let c = escape(&r.users.0.cluster);
        for (code, n) in &r.cluster.codes {
            let _ = writeln!(out, "envoy_cluster_upstream_rq{{envoy_cluster_name=\"{c}\",envoy_response_code=\"{code}\"}} {n}");
        }
    }
    header(
        out,
        "envoy_cluster_upstream_rq_total",
        "counter",
        "Upstream requests (Envoy-compatible).",
    );
    for r in &reads {
        let c = escape(&r.users.0.cluster);
        let _ = writeln!(
            out,
            "envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"{c}\"}} {}",
            r.cluster.requests()
        );
    }
    let name = "envoy_cluster_upstream_rq_time";
    header(
        out,
        name,
        "histogram",
        "Upstream request time in milliseconds (Envoy-compatible).",
    );
    for r in &reads {
        let labels = format!("envoy_cluster_name=\"{}\"", escape(&r.users.0.cluster));
        histogram(
            out,
            name,
            &labels,
            &LE_MS,
            &r.cluster,
            r.cluster.sum_micros as f64 / 1e3,
        );
    }
    header(
        out,
        "envoy_cluster_upstream_rq_xx",
        "untyped",
        "Upstream responses by status class (Envoy-compatible).",
    );
    for r in &reads {
        let c = escape(&r.users.0.cluster);
        for (class, n) in ENVOY_CLASSES.iter().zip(r.cluster.responses) {
            let _ = writeln!(out, "envoy_cluster_upstream_rq_xx{{envoy_cluster_name=\"{c}\",envoy_response_code_class=\"{class}\"}} {n}");
        }
    }
}

/// Reads a version's users' and shadow tallies; the shadow only once it has served.
fn read(h: &VersionHandle) -> Read<'_> {
    let users = h.users.tally(false);
    let shadow = h.shadow.tally(false);
    let mut cluster = users.clone();
    cluster.add(&shadow, false);
    cluster.codes.sort_unstable();
    Read {
        users: (&h.users, users),
        shadow: (!shadow.is_empty()).then_some((&h.shadow, shadow)),
        cluster,
    }
}

/// `# HELP` and `# TYPE`. Envoy names its counters without `_total`; declaring those
/// untyped (the text format's "not vouched for") keeps Envoy's names and satisfies
/// `promtool check metrics`, and `rate()` works on them the same.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `mirrored`, `service` and `version` labels.
fn svm(m: &VersionMetrics) -> String {
    format!(
        "mirrored=\"{}\",service=\"{}\",version=\"{}\"",
        m.mirrored,
        escape(&m.service),
        escape(&m.version)
    )
}

/// A counter family by `reason`: each version's counts, indexed like `kinds`.
fn reasons<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    kinds: &[ErrorKind],
    rows: impl Iterator<Item = (&'a VersionMetrics, &'a [u64])>,
) {
    header(out, name, "counter", help);
    for (m, counts) in rows {
        for (kind, n) in kinds.iter().zip(counts) {
            let _ = writeln!(
                out,
                "{name}{{mirrored=\"{}\",reason=\"{}\",service=\"{}\",version=\"{}\"}} {n}",
                m.mirrored,
                kind.label(),
                escape(&m.service),
                escape(&m.version)
            );
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, le: &[&str; 19], t: &Tally, sum: f64) {
    for (bound, n) in le.iter().zip(t.cumulative_buckets()) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let count = t.requests();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}
