//! `/metrics` text for the per-version families, written straight from the versions'
//! tallies (read once per scrape) rather than kept as Prometheus objects updated on every
//! request. Label names are in alphabetical order, as the Prometheus client writes them.

use std::fmt::{Display, Write};

use super::tally::Tally;
use super::{VersionHandle, ENVOY_BUCKETS_MS};
use crate::error::ErrorKind;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const ENVOY_CLASSES: [&str; 5] = ["1", "2", "3", "4", "5"];

/// A users' or shadow tally with its labels, made once per scrape.
struct Series {
    /// `mirrored="..."`.
    mirrored: String,
    /// `service="...",version="..."`.
    service_version: String,
    /// Both, `mirrored="...",service="...",version="..."`.
    labels: String,
    tally: Tally,
}

/// A version's users' and shadow traffic together, as Envoy counts a cluster.
struct Cluster {
    /// `envoy_cluster_name="..."`.
    name: String,
    tally: Tally,
}

/// Appends every per-version family to `out`.
pub(super) fn render(handles: &[VersionHandle], out: &mut String) {
    let (series, clusters) = tallies(handles);
    weir_families(out, &series);
    envoy_families(out, &clusters);
}

/// Reads every version's tallies once: per (version, mirrored) series, and per Envoy
/// cluster (users' and shadow traffic together).
fn tallies(handles: &[VersionHandle]) -> (Vec<Series>, Vec<Cluster>) {
    let mut series = Vec::with_capacity(handles.len());
    let mut clusters = Vec::with_capacity(handles.len());
    for h in handles {
        let (users, shadow) = (h.users.tally(false), h.shadow.tally(false));
        let mut cluster = users.clone();
        cluster.add(&shadow, false);
        cluster.codes.sort_unstable();
        clusters.push(Cluster {
            name: format!("envoy_cluster_name=\"{}\"", escape(&h.users.cluster)),
            tally: cluster,
        });
        // A shadow's series appear once it has been mirrored to.
        let shadow = (!shadow.is_empty()).then_some(shadow);
        for (m, tally) in [(&h.users, Some(users)), (&h.shadow, shadow)] {
            if let Some(tally) = tally {
                let mirrored = format!("mirrored=\"{}\"", m.mirrored);
                let service_version = format!(
                    "service=\"{}\",version=\"{}\"",
                    escape(&m.service),
                    escape(&m.version)
                );
                series.push(Series {
                    labels: format!("{mirrored},{service_version}"),
                    mirrored,
                    service_version,
                    tally,
                });
            }
        }
    }
    (series, clusters)
}

/// A by-reason family: name, help, the kinds in label order, and their counts in a tally.
type ReasonFamily = (
    &'static str,
    &'static str,
    &'static [ErrorKind],
    fn(&Tally) -> &[u64],
);

/// weir's own families: responses, upstream and client errors, request duration.
fn weir_families(out: &mut String, series: &[Series]) {
    let name = "weir_requests_total";
    header(
        out,
        name,
        "counter",
        "Responses sent for each service version, by status class.",
    );
    for s in series {
        let values = CLASSES.iter().zip(s.tally.responses);
        by_label(out, name, "", "code_class", &s.labels, values);
    }
    let reasons: [ReasonFamily; 2] = [
        (
            "weir_upstream_errors_total",
            "Requests weir answered itself because the upstream failed, by reason.",
            &ErrorKind::UPSTREAM,
            |t| &t.failures,
        ),
        (
            "weir_client_errors_total",
            "Requests that failed by the client's doing (not counted against the version), by reason.",
            &ErrorKind::CLIENT,
            |t| &t.client_faults,
        ),
    ];
    for (name, help, kinds, counts) in reasons {
        header(out, name, "counter", help);
        for s in series {
            let values = kinds
                .iter()
                .map(|k| k.label())
                .zip(counts(&s.tally).iter().copied());
            by_label(out, name, &s.mirrored, "reason", &s.service_version, values);
        }
    }
    let le_seconds: Vec<String> = ENVOY_BUCKETS_MS
        .iter()
        .map(|ms| (ms / 1000.0).to_string())
        .collect();
    let name = "weir_request_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Time from receiving a request to the end of its response, per service version.",
    );
    for s in series {
        let sum = s.tally.sum_micros as f64 / 1e6;
        histogram(out, name, &s.labels, &le_seconds, &s.tally, sum);
    }
}

/// The Envoy-compatible cluster families (what Flagger's built-in queries read).
fn envoy_families(out: &mut String, clusters: &[Cluster]) {
    let name = "envoy_cluster_upstream_rq";
    header(
        out,
        name,
        "untyped",
        "Upstream responses by status code (Envoy-compatible).",
    );
    for c in clusters {
        let values = c.tally.codes.iter().copied();
        by_label(out, name, &c.name, "envoy_response_code", "", values);
    }
    let name = "envoy_cluster_upstream_rq_total";
    header(
        out,
        name,
        "counter",
        "Upstream requests (Envoy-compatible).",
    );
    for c in clusters {
        let _ = writeln!(out, "{name}{{{}}} {}", c.name, c.tally.requests());
    }
    let le_ms: Vec<String> = ENVOY_BUCKETS_MS.iter().map(f64::to_string).collect();
    let name = "envoy_cluster_upstream_rq_time";
    header(
        out,
        name,
        "histogram",
        "Upstream request time in milliseconds (Envoy-compatible).",
    );
    for c in clusters {
        let sum = c.tally.sum_micros as f64 / 1e3;
        histogram(out, name, &c.name, &le_ms, &c.tally, sum);
    }
    let name = "envoy_cluster_upstream_rq_xx";
    header(
        out,
        name,
        "untyped",
        "Upstream responses by status class (Envoy-compatible).",
    );
    for c in clusters {
        let values = ENVOY_CLASSES.iter().zip(c.tally.responses);
        by_label(out, name, &c.name, "envoy_response_code_class", "", values);
    }
}

/// `# HELP` and `# TYPE`. Envoy names its counters without `_total`; declaring those
/// untyped (the text format's "not vouched for") keeps Envoy's names and satisfies
/// `promtool check metrics`, and `rate()` works on them the same.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One line per (value, count): `name{before,key="value",after} count`, where `before`
/// and `after` are the labels that sort before and after `key` (either may be empty).
fn by_label<V: Display>(
    out: &mut String,
    name: &str,
    before: &str,
    key: &str,
    after: &str,
    values: impl Iterator<Item = (V, u64)>,
) {
    let (comma_before, comma_after) = (
        if before.is_empty() { "" } else { "," },
        if after.is_empty() { "" } else { "," },
    );
    for (value, n) in values {
        let _ = writeln!(
            out,
            "{name}{{{before}{comma_before}{key}=\"{value}\"{comma_after}{after}}} {n}"
        );
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, le: &[String], t: &Tally, sum: f64) {
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
