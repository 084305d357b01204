//! What the dashboard samples each second: every version's traffic since the last look
//! (from the proxy's own counters and histograms, so a replica fleet's merged numbers
//! too), the services whose status changed, and a few minutes of history per version.

use std::collections::{HashMap, VecDeque};

use weir_proxy::{Proxy, VersionSnapshot};

use crate::clock::now_ms;
use crate::status::ServiceStatus;

/// Samples kept per version: five minutes at one a second.
const KEPT: usize = 300;

/// One version's traffic over the last second.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Point {
    pub service: String,
    pub version: String,
    /// Unix seconds.
    pub at: u64,
    pub rps: f64,
    /// Percent of non-5xx responses; None without requests.
    pub success: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// `[unix s, req/s, success %, p99 ms]`.
pub(super) fn point(p: &Point) -> serde_json::Value {
    serde_json::json!([
        p.at,
        round(p.rps, 1),
        p.success.map_or(serde_json::Value::Null, |s| round(s, 2)),
        p.p99_ms.map_or(serde_json::Value::Null, |l| round(l, 1)),
    ])
}

/// `x` to `places` decimals; null when not a number.
pub(super) fn round(x: f64, places: i32) -> serde_json::Value {
    if !x.is_finite() {
        return serde_json::Value::Null;
    }
    let k = 10f64.powi(places);
    serde_json::json!((x * k).round() / k)
}

/// What the last look saw.
#[derive(Default)]
pub(super) struct Last {
    snapshots: HashMap<(String, String), (std::time::Instant, VersionSnapshot)>,
    statuses: HashMap<String, ServiceStatus>,
}

impl Last {
    /// Each version's traffic since the last look (none for a version seen the first time).
    pub(super) fn sample(&mut self, proxy: &Proxy, services: &[ServiceStatus]) -> Vec<Point> {
        let at = now_ms() / 1000;
        let now = std::time::Instant::now();
        let mut points = Vec::new();
        let mut seen = HashMap::with_capacity(self.snapshots.len());
        for s in services {
            for v in &s.versions {
                let Some(handle) = proxy.version(&s.service, &v.name) else {
                    continue;
                };
                let snap = handle.snapshot(false);
                let key = (s.service.clone(), v.name.clone());
                if let Some((then, before)) = self.snapshots.remove(&key) {
                    let w = snap.since(&before);
                    let secs = now.duration_since(then).as_secs_f64().max(0.001);
                    points.push(Point {
                        service: s.service.clone(),
                        version: v.name.clone(),
                        at,
                        rps: w.requests() as f64 / secs,
                        success: w.success_rate(),
                        p99_ms: w.quantile_ms(0.99),
                    });
                }
                seen.insert(key, (now, snap));
            }
        }
        self.snapshots = seen;
        points
    }

    /// The services whose status is not what the last look saw (traffic totals aside:
    /// the page charts the traffic points).
    pub(super) fn changed(&mut self, services: &[ServiceStatus]) -> Vec<ServiceStatus> {
        let mut out = Vec::new();
        let mut next = HashMap::with_capacity(services.len());
        for s in services {
            let s = ServiceStatus {
                primary: None,
                canary: None,
                ..s.clone()
            };
            if self.statuses.get(&s.service) != Some(&s) {
                out.push(s.clone());
            }
            next.insert(s.service.clone(), s);
        }
        self.statuses = next;
        out
    }
}

/// The last few minutes of each version's traffic (versions that had any).
#[derive(Default)]
pub(super) struct History {
    series: HashMap<(String, String), VecDeque<Point>>,
}

impl History {
    pub(super) fn add(&mut self, points: &[Point]) {
        for p in points {
            let key = (p.service.clone(), p.version.clone());
            if p.rps == 0.0 && !self.series.contains_key(&key) {
                continue;
            }
            let series = self.series.entry(key).or_default();
            if series.len() == KEPT {
                series.pop_front();
            }
            series.push_back(p.clone());
        }
        // A series with no traffic left in it is dropped.
        self.series.retain(|_, s| s.iter().any(|p| p.rps > 0.0));
    }

    /// `{service: {version: [[unix s, req/s, success %, p99 ms], ...]}}`.
    pub(super) fn json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ((service, version), series) in &self.series {
            let rows: Vec<serde_json::Value> = series.iter().map(point).collect();
            let entry = out
                .entry(service.clone())
                .or_insert_with(|| serde_json::json!({}));
            if let Some(o) = entry.as_object_mut() {
                o.insert(version.clone(), serde_json::Value::Array(rows));
            }
        }
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(rps: f64) -> Point {
        Point {
            service: "podinfo".into(),
            version: "canary".into(),
            at: 1,
            rps,
            success: None,
            p99_ms: None,
        }
    }

    #[test]
    fn history_keeps_minutes_of_versions_with_traffic() {
        let mut h = History::default();
        h.add(&[point(0.0)]);
        assert_eq!(h.json(), serde_json::json!({}), "no traffic, no series");
        for _ in 0..KEPT + 10 {
            h.add(&[point(5.0)]);
        }
        let rows = &h.json()["podinfo"]["canary"];
        assert_eq!(rows.as_array().map(Vec::len), Some(KEPT));
        for _ in 0..KEPT {
            h.add(&[point(0.0)]);
        }
        assert_eq!(h.json(), serde_json::json!({}), "an idle series goes");
    }
}
