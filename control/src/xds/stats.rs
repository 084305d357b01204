//! Envoy's own measurements into weir's: the `envoy.stat_sinks.metrics_service` stream of
//! each node (flushed every 250 ms by the bootstrap weir writes), mapped from each
//! version's cluster (`cluster.upstream_rq` by code, timeouts, connect failures, resets,
//! the `upstream_rq_time` histogram) into the same per-version measurements replicas feed,
//! so the analysis, the guard, `weir ctl` and `/metrics` read Envoy's traffic unchanged.
//!
//! Counters come as running totals and are differenced per node, so a flush lost with a
//! broken stream is made good by the next; a total that goes down (or `server.uptime`
//! that does) is a restarted Envoy, whose totals are all new. A node this controller has
//! not seen before counts from its first flush unless it has been up for a while (its
//! totals are then from before this controller: they only set the baseline, and that
//! flush's latencies are left out with them). Histograms cover one flush each. A timed-out
//! connect is among Envoy's connect failures too: weir counts it once, as a timeout. A
//! node id is one Envoy: a second stream under a live one's id is refused, so two
//! Envoys' totals never mix.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::MetricsService;
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use envoy_types::pb::io::prometheus::client::{Metric, MetricFamily};
use tonic::{Request, Response, Status, Streaming};
use weir_proxy::routing::Target;
use weir_proxy::{MeasurementDelta, Routing, ENVOY_BUCKETS_MS};

use super::cluster_name;
use crate::auth::{Authorizer, Need};
use crate::fleet::Fleet;
use crate::routes::Routes;

/// A node up for less than this at its first flush is new: its totals are all its own.
const NEW_NODE_UPTIME_S: f64 = 10.0;

/// The metrics service Envoy nodes push their stats to.
pub struct StatsService {
    pub routes: Arc<Routes>,
    pub fleet: Arc<Fleet>,
    pub auth: Arc<Authorizer>,
    /// Per node: the running totals last seen, kept across its streams.
    totals: Mutex<HashMap<String, Totals>>,
    /// Nodes with a stats stream open now.
    live: Mutex<HashSet<String>>,
    /// The cluster map of the routing it was made from (remade when the routing changes).
    versions: Mutex<Option<(Arc<Routing>, Arc<Versions>)>>,
}

impl StatsService {
    pub fn new(routes: Arc<Routes>, fleet: Arc<Fleet>, auth: Arc<Authorizer>) -> StatsService {
        StatsService {
            routes,
            fleet,
            auth,
            totals: Mutex::default(),
            live: Mutex::default(),
            versions: Mutex::default(),
        }
    }
}

/// Every version's cluster: its service, its version, and whether only mirrored copies
/// reach it.
type Versions = HashMap<String, (String, String, bool)>;

/// One node's running totals by (cluster, counter) and its uptime.
#[derive(Default, Clone)]
struct Totals {
    counters: HashMap<(String, Counter), f64>,
    uptime: f64,
    /// A flush of this node was taken already (its first only sets the baseline of an
    /// Envoy up from before).
    seen: bool,
}

/// A running total weir reads per cluster.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Counter {
    /// `upstream_rq` with this response code.
    Code(u16),
    /// A failure, by weir's reason label.
    Failure(&'static str),
}

/// What one flush adds to one version.
#[derive(Default)]
struct Gained {
    codes: HashMap<u16, u64>,
    failures: HashMap<&'static str, u64>,
    /// Per Envoy bucket, not cumulative; the last is past every bound.
    buckets: Vec<u64>,
    sum_ms: f64,
}

#[tonic::async_trait]
impl MetricsService for StatsService {
    async fn stream_metrics(
        &self,
        req: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        self.auth.check(&req, "StreamMetrics", Need::Replica)?;
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first message"))?;
        let node = first
            .identifier
            .as_ref()
            .and_then(|i| i.node.as_ref())
            .map(|n| n.id.clone())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Status::invalid_argument("the first message names no node"))?;
        if !self.lock_live().insert(node.clone()) {
            tracing::error!(node = %node, "a second Envoy reports stats under a live node's id: refused (node ids must be unique)");
            return Err(Status::already_exists(format!(
                "node {node:?} already reports its stats on another stream: give each Envoy its own node id"
            )));
        }
        let mut totals = self
            .totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned();
        let mut next = Some(first);
        let result = loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
            };
            let t = totals.get_or_insert_with(Totals::default);
            let deltas = flush(&self.versions(), &msg.envoy_metrics, t);
            self.fleet.envoy_measured(&node, deltas);
        };
        // Kept for the node's next stream (only one is open at a time).
        if let Some(t) = totals {
            self.totals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node.clone(), t);
        }
        self.lock_live().remove(&node);
        if let Err(e) = result {
            tracing::warn!(node = %node, error = %e, "Envoy node's stats stream broke");
        }
        Ok(Response::new(StreamMetricsResponse {}))
    }
}

impl StatsService {
    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every version's cluster in the current routing (made once per routing).
    fn versions(&self) -> Arc<Versions> {
        let routing = self.routes.current();
        let mut cached = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made_from, v)) = cached.as_ref() {
            if Arc::ptr_eq(made_from, &routing) {
                return v.clone();
            }
        }
        let v = Arc::new(cluster_versions(&routing));
        *cached = Some((routing, v.clone()));
        v
    }
}

/// Every version's cluster in `routing`: its service, its version, and whether only
/// mirrored copies reach it (a mirror target no rule sends users to: its traffic is the
/// shadow's).
fn cluster_versions(routing: &Routing) -> Versions {
    let mut out = HashMap::new();
    for svc in routing.services.values() {
        for version in svc.versions.keys() {
            let users = svc.rules.iter().any(|r| match &r.target {
                Target::To(v) => v == version,
                Target::Split(w) => w.get(version).is_some_and(|w| *w > 0),
            });
            let mirrored = svc
                .rules
                .iter()
                .any(|r| r.mirror.as_ref().is_some_and(|m| &m.version == version));
            out.insert(
                cluster_name(svc, version),
                (svc.name.clone(), version.clone(), mirrored && !users),
            );
        }
    }
    out
}

/// Takes one flush of a node: its counters differenced against `totals`, its histograms
/// as they are; returns what each version gained. The first flush of a node up from
/// before only sets the baseline: neither its counters nor its latencies count.
fn flush(
    versions: &Versions,
    families: &[MetricFamily],
    totals: &mut Totals,
) -> Vec<MeasurementDelta> {
    let uptime = families
        .iter()
        .filter(|f| f.name() == "server.uptime")
        .flat_map(|f| &f.metric)
        .find_map(|m| m.gauge.as_ref().and_then(|g| g.value))
        .unwrap_or(totals.uptime);
    let restarted = uptime < totals.uptime;
    // A node first seen: its totals count only if it is new itself.
    let baseline_only = !totals.seen && uptime >= NEW_NODE_UPTIME_S;
    totals.seen = true;
    if restarted {
        totals.counters.clear();
    }
    totals.uptime = uptime;
    let mut gained: HashMap<&str, Gained> = HashMap::new();
    // (cluster, counter, running total, derived by weir).
    let mut readings: Vec<(&str, Counter, f64, bool)> = Vec::new();
    // Per cluster: Envoy's connect failures and its connect timeouts, which are among them.
    let mut connect: HashMap<&str, (Option<f64>, Option<f64>)> = HashMap::new();
    for f in families {
        for m in &f.metric {
            let Some(cluster) = label(m, "envoy.cluster_name") else {
                continue;
            };
            if !versions.contains_key(cluster) {
                continue;
            }
            let total = m.counter.as_ref().and_then(|c| c.value);
            let counter = match f.name() {
                "cluster.upstream_rq" => {
                    match label(m, "envoy.response_code").and_then(|c| c.parse().ok()) {
                        Some(code) => Counter::Code(code),
                        None => continue,
                    }
                }
                "cluster.upstream_rq_timeout" => Counter::Failure("timeout"),
                "cluster.upstream_rq_rx_reset" => Counter::Failure("reset"),
                "cluster.upstream_cx_connect_fail" => {
                    connect.entry(cluster).or_default().0 = total;
                    continue;
                }
                "cluster.upstream_cx_connect_timeout" => {
                    connect.entry(cluster).or_default().1 = total;
                    continue;
                }
                "cluster.upstream_rq_time" => {
                    if let Some(h) = m.histogram.as_ref().filter(|_| !baseline_only) {
                        let g = gained.entry(cluster).or_default();
                        g.sum_ms += h.sample_sum.unwrap_or(0.0);
                        g.buckets = per_bucket(h);
                    }
                    continue;
                }
                _ => continue,
            };
            if let Some(total) = total {
                readings.push((cluster, counter, total, false));
            }
        }
    }
    // A timed-out connect is one of Envoy's connect failures too: it counts once, as a
    // timeout, and the failures beside the timeouts as refused.
    for (cluster, (fail, timeout)) in connect {
        if let Some(t) = timeout {
            readings.push((cluster, Counter::Failure("connect_timeout"), t, false));
        }
        if let Some(f) = fail {
            let refused = (f - timeout.unwrap_or(0.0)).max(0.0);
            readings.push((cluster, Counter::Failure("connect_refused"), refused, true));
        }
    }
    for (cluster, counter, total, derived) in readings {
        let key = (cluster.to_string(), counter);
        let (new, keep) = match totals.counters.get(&key).copied() {
            Some(last) if total >= last => (total - last, total),
            // One weir derives from two of Envoy's totals, which a flush may read a
            // moment apart: it may dip, and counts only past its highest.
            Some(last) if derived => (0.0, last),
            // A total that went down is a restarted Envoy's: all of it is new.
            _ => (total, total),
        };
        totals.counters.insert(key, keep);
        if baseline_only || new <= 0.0 {
            continue;
        }
        let g = gained.entry(cluster).or_default();
        let n = new.round() as u64;
        match counter {
            Counter::Code(code) => *g.codes.entry(code).or_default() += n,
            Counter::Failure(reason) => *g.failures.entry(reason).or_default() += n,
        }
    }
    gained
        .into_iter()
        .filter_map(|(cluster, g)| {
            let (service, version, mirrored) = versions.get(cluster)?.clone();
            let mut codes: Vec<(u16, u64)> = g.codes.into_iter().collect();
            codes.sort_unstable();
            let mut failures: Vec<(String, u64)> = g
                .failures
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            failures.sort_unstable();
            Some(MeasurementDelta::from_envoy(
                service,
                version,
                mirrored,
                codes,
                failures,
                g.buckets,
                (g.sum_ms * 1000.0).round() as u64,
            ))
        })
        .collect()
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;

fn label<'m>(m: &'m Metric, name: &str) -> Option<&'m str> {
    m.label.iter().find(|l| l.name() == name).map(|l| l.value())
}

/// A flush's histogram as counts per Envoy bucket (its buckets are cumulative within the
/// flush); the last is past every bound.
fn per_bucket(h: &envoy_types::pb::io::prometheus::client::Histogram) -> Vec<u64> {
    let mut out = vec![0u64; ENVOY_BUCKETS_MS.len() + 1];
    let mut before = 0u64;
    for b in &h.bucket {
        let bound = b.upper_bound.unwrap_or(f64::INFINITY);
        let cumulative = b.cumulative_count.unwrap_or(0);
        let i = ENVOY_BUCKETS_MS.partition_point(|x| *x < bound - 1e-9);
        if i < ENVOY_BUCKETS_MS.len() && (ENVOY_BUCKETS_MS[i] - bound).abs() < 1e-6 {
            out[i] += cumulative.saturating_sub(before);
            before = before.max(cumulative);
        }
    }
    let total = h.sample_count.unwrap_or(before);
    out[ENVOY_BUCKETS_MS.len()] += total.saturating_sub(before);
    out
}
