//! The controller's proxy replicas (`weir proxy --controller`): the routing they should
//! serve (a generation per change of the controller's proxy), what each has ACKed, and
//! their measurements added to the controller's own, so checks read the exact sum.
//!
//! States: a connected replica is `synced` once it ACKed the current generation,
//! `syncing` while it has had less than [`STALE_AFTER`] to do so, and `stale` after that,
//! when it refused (NACKed) the push, or when nothing came from it for [`STALE_AFTER`];
//! `disconnected` once its stream ended (listed for [`FORGET_AFTER`]). A step counts as
//! applied when every connected replica that is not stale has ACKed it; a stale replica's
//! measurements are not merged (it serves other weights than the rollout is judging).

mod stream;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use tokio::sync::watch;
use tokio::time::Instant;
use weir_protos::control as pb;
use weir_proxy::{MeasurementDelta, Proxy};

pub use stream::FleetService;

/// A replica that has not ACKed the current generation this long after it was pushed is
/// stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// A disconnected replica is listed this long, then forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Requests per second are counted over windows this long.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// The routing replicas should serve.
#[derive(Debug)]
pub struct Routing {
    /// Counts the routings published (monotonic, also across controller restarts: a
    /// replica reporting a higher one lifts it).
    pub generation: u64,
    /// The proxy change this routing reflects ([`Proxy::changes`]).
    pub change: u64,
    /// The effective services as JSON.
    pub services_json: Arc<str>,
}

/// How a replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    Synced,
    Syncing,
    Stale,
    Disconnected,
}

impl ReplicaState {
    pub const ALL: [ReplicaState; 4] = [
        ReplicaState::Synced,
        ReplicaState::Syncing,
        ReplicaState::Stale,
        ReplicaState::Disconnected,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            ReplicaState::Synced => "synced",
            ReplicaState::Syncing => "syncing",
            ReplicaState::Stale => "stale",
            ReplicaState::Disconnected => "disconnected",
        }
    }
}

/// One replica as the controller knows it.
struct Entry {
    address: String,
    /// The stream it talks on now (a reconnect replaces the older one).
    session: u64,
    connected: bool,
    /// The last generation it ACKed.
    acked: u64,
    /// Why it refused the last push.
    error: Option<String>,
    /// The generation pushed to it last and when.
    pushed: Option<(u64, Instant)>,
    last_seen: Instant,
    /// Requests in the current rate window, and the last full window's rate.
    window: (Instant, u64),
    rate: f64,
}

impl Entry {
    fn state(&self, now: Instant) -> ReplicaState {
        if !self.connected {
            return ReplicaState::Disconnected;
        }
        // A live replica reports at least every second: silence means a stream that no
        // longer reaches it.
        if now.duration_since(self.last_seen) >= STALE_AFTER {
            return ReplicaState::Stale;
        }
        match self.pushed {
            _ if self.error.is_some() => ReplicaState::Stale,
            Some((generation, _)) if self.acked >= generation => ReplicaState::Synced,
            Some((_, at)) if now.duration_since(at) < STALE_AFTER => ReplicaState::Syncing,
            None => ReplicaState::Syncing,
            Some(_) => ReplicaState::Stale,
        }
    }
}

struct FleetMetrics {
    replicas: IntGaugeVec,
    generation: IntGauge,
    pushes: IntCounter,
    nacks: IntCounter,
    report_bytes: IntCounter,
    dropped: IntCounterVec,
}

impl FleetMetrics {
    fn new(registry: &prometheus::Registry) -> FleetMetrics {
        let gauge = |name: &str, help: &str| {
            weir_proxy::register(
                registry,
                IntGauge::new(name, help).expect("static metric definition is valid"),
            )
        };
        let counter = |name: &str, help: &str| {
            weir_proxy::register(
                registry,
                IntCounter::new(name, help).expect("static metric definition is valid"),
            )
        };
        FleetMetrics {
            replicas: weir_proxy::gauge_vec(
                registry,
                "weir_control_replicas",
                "Proxy replicas by state (synced, syncing, stale, disconnected).",
                &["state"],
            ),
            generation: gauge(
                "weir_control_generation",
                "The routing generation replicas should serve.",
            ),
            pushes: counter(
                "weir_control_pushes_total",
                "Routing generations pushed to replicas.",
            ),
            nacks: counter(
                "weir_control_nacks_total",
                "Pushes a replica refused (it kept its routing).",
            ),
            report_bytes: counter(
                "weir_control_report_bytes_total",
                "Bytes of measurement reports received from replicas.",
            ),
            dropped: weir_proxy::counter_vec(
                registry,
                "weir_control_measurements_dropped_total",
                "Replica measurements not merged: from a stale replica, or malformed.",
                &["reason"],
            ),
        }
    }
}

/// The replicas of one controller.
pub struct Fleet {
    proxy: Proxy,
    routing: watch::Sender<Arc<Routing>>,
    replicas: Mutex<BTreeMap<String, Entry>>,
    sessions: AtomicU64,
    /// `weir control`: status always shows the replicas, even none.
    dedicated: bool,
    metrics: FleetMetrics,
}

impl Fleet {
    /// The fleet of `proxy`'s routing; publishes a generation on every change.
    pub fn start(proxy: Proxy, dedicated: bool) -> Arc<Fleet> {
        let first = Routing {
            generation: 1,
            change: *proxy.changes().borrow(),
            services_json: services_json(&proxy),
        };
        let fleet = Arc::new(Fleet {
            metrics: FleetMetrics::new(proxy.families().registry()),
            proxy,
            routing: watch::Sender::new(Arc::new(first)),
            replicas: Mutex::new(BTreeMap::new()),
            sessions: AtomicU64::new(0),
            dedicated,
        });
        fleet.metrics.generation.set(1);
        let weak = Arc::downgrade(&fleet);
        let mut changes = fleet.proxy.changes();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let change = *changes.borrow_and_update();
                let Some(fleet) = weak.upgrade() else { return };
                fleet.publish(change, 0);
            }
        });
        let weak = Arc::downgrade(&fleet);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let Some(fleet) = weak.upgrade() else { return };
                fleet.housekeeping();
            }
        });
        fleet
    }

    /// Publishes the proxy's routing as a new generation (above `at_least`).
    fn publish(&self, change: u64, at_least: u64) {
        let services_json = services_json(&self.proxy);
        self.routing.send_modify(|r| {
            let generation = r.generation.max(at_least) + 1;
            *r = Arc::new(Routing {
                generation,
                change: change.max(r.change),
                services_json,
            });
        });
        self.metrics
            .generation
            .set(i64::try_from(self.routing.borrow().generation).unwrap_or(i64::MAX));
    }

    /// The routing replicas should serve now.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Routing>> {
        self.routing.subscribe()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A replica opened a stream: returns its session. A replica serving a generation
    /// at or above ours (a restarted controller) lifts ours past it.
    fn connected(&self, hello: &pb::Hello) -> u64 {
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let routing = self.routing();
        if hello.generation >= routing.generation {
            self.publish(routing.change, hello.generation);
        }
        let now = Instant::now();
        // A reconnect replaces what was known of the replica's older stream.
        self.entries().insert(
            hello.name.clone(),
            Entry {
                address: hello.address.clone(),
                session,
                connected: true,
                acked: hello.generation,
                error: None,
                pushed: None,
                last_seen: now,
                window: (now, 0),
                rate: 0.0,
            },
        );
        self.housekeeping();
        session
    }

    /// Runs `f` on the replica if `session` is still its stream.
    fn with<R>(&self, name: &str, session: u64, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut entries = self.entries();
        let e = entries.get_mut(name).filter(|e| e.session == session)?;
        e.last_seen = Instant::now();
        Some(f(e))
    }

    fn pushed(&self, name: &str, session: u64, generation: u64) {
        self.metrics.pushes.inc();
        self.with(name, session, |e| {
            e.pushed = Some((generation, Instant::now()));
            e.error = None;
        });
    }

    fn applied(&self, name: &str, session: u64, a: &pb::Applied) {
        if !a.error.is_empty() {
            self.metrics.nacks.inc();
            tracing::error!(replica = name, generation = a.generation, error = %a.error, "replica refused the routing; it keeps serving its previous routing");
        }
        self.with(name, session, |e| {
            if a.error.is_empty() {
                e.acked = e.acked.max(a.generation);
                e.error = None;
            } else {
                e.error = Some(a.error.clone());
            }
        });
        self.housekeeping();
    }

    /// Adds a replica's measurements to the controller's, unless it is stale.
    fn measured(&self, name: &str, session: u64, report: pb::Measurements, bytes: usize) {
        self.metrics
            .report_bytes
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
        let sent = report.versions.len();
        let deltas: Vec<MeasurementDelta> = report
            .versions
            .into_iter()
            .filter_map(wire::from_pb)
            .collect();
        if deltas.len() < sent {
            let malformed = u64::try_from(sent - deltas.len()).unwrap_or(u64::MAX);
            self.metrics
                .dropped
                .with_label_values(&["invalid"])
                .inc_by(malformed);
        }
        let requests: u64 = deltas.iter().map(MeasurementDelta::requests).sum();
        let now = Instant::now();
        let state = self.with(name, session, |e| {
            e.window.1 += requests;
            let span = now.duration_since(e.window.0);
            if span >= RATE_WINDOW {
                e.rate = e.window.1 as f64 / span.as_secs_f64();
                e.window = (now, 0);
            }
            e.state(now)
        });
        match state {
            None => {}
            Some(ReplicaState::Stale) => self.metrics.dropped.with_label_values(&["stale"]).inc(),
            Some(_) => {
                for d in &deltas {
                    if let Err(e) = self.proxy.merge_measurements(d) {
                        self.metrics.dropped.with_label_values(&["invalid"]).inc();
                        tracing::warn!(replica = name, service = %d.service, version = %d.version, error = %e, "replica measurements refused");
                    }
                }
            }
        }
    }

    fn disconnected(&self, name: &str, session: u64) {
        self.with(name, session, |e| e.connected = false);
        self.housekeeping();
    }

    /// Forgets long-gone replicas and refreshes the replica gauges.
    fn housekeeping(&self) {
        let now = Instant::now();
        let mut counts = [0i64; ReplicaState::ALL.len()];
        let mut entries = self.entries();
        entries.retain(|_, e| e.connected || now.duration_since(e.last_seen) < FORGET_AFTER);
        for e in entries.values() {
            let i = ReplicaState::ALL
                .iter()
                .position(|s| *s == e.state(now))
                .unwrap_or(0);
            counts[i] += 1;
        }
        drop(entries);
        for (state, n) in ReplicaState::ALL.iter().zip(counts) {
            self.metrics
                .replicas
                .with_label_values(&[state.label()])
                .set(n);
        }
    }

    /// True while some replica is connected.
    pub fn has_replicas(&self) -> bool {
        self.entries().values().any(|e| e.connected)
    }

    /// True when every connected replica that is not stale serves the routing of proxy
    /// change `change` (or later).
    pub fn applied_everywhere(&self, change: u64) -> bool {
        let routing = self.routing();
        if routing.change < change {
            return false;
        }
        let now = Instant::now();
        self.entries().values().all(|e| match e.state(now) {
            ReplicaState::Synced => e.acked >= routing.generation,
            ReplicaState::Syncing => false,
            ReplicaState::Stale | ReplicaState::Disconnected => true,
        })
    }

    /// Waits until the proxy's latest change is served by every live replica (those that
    /// do not ACK within [`STALE_AFTER`] turn stale and stop holding it up).
    pub async fn settle(&self) {
        let change = *self.proxy.changes().borrow();
        let deadline = Instant::now() + STALE_AFTER + Duration::from_secs(1);
        while !self.applied_everywhere(change) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The replicas, by name.
    pub fn list(&self) -> pb::ListReplicasReply {
        let now = Instant::now();
        let replicas = self
            .entries()
            .iter()
            .map(|(name, e)| pb::Replica {
                name: name.clone(),
                address: e.address.clone(),
                generation: e.acked,
                state: e.state(now).label().to_string(),
                last_seen_ms: u64::try_from(now.duration_since(e.last_seen).as_millis())
                    .unwrap_or(u64::MAX),
                requests_per_second: e.rate,
                error: e.error.clone().unwrap_or_default(),
            })
            .collect();
        pb::ListReplicasReply {
            generation: self.routing().generation,
            replicas,
        }
    }

    /// `replicas: 3/3 at generation 17` for status; None when weir serves alone.
    pub fn summary(&self) -> Option<pb::ReplicaSummary> {
        let now = Instant::now();
        let entries = self.entries();
        if entries.is_empty() && !self.dedicated {
            return None;
        }
        let generation = self.routing().generation;
        let live = entries.values().filter(|e| e.connected).count();
        let synced = entries
            .values()
            .filter(|e| e.state(now) == ReplicaState::Synced && e.acked >= generation)
            .count();
        Some(pb::ReplicaSummary {
            synced: u32::try_from(synced).unwrap_or(u32::MAX),
            live: u32::try_from(live).unwrap_or(u32::MAX),
            generation,
        })
    }
}

/// The proxy's effective services as JSON.
fn services_json(proxy: &Proxy) -> Arc<str> {
    match serde_json::to_string(&proxy.config().services) {
        Ok(s) => s.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the routing");
            "[]".into()
        }
    }
}
