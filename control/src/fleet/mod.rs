//! The controller's proxy replicas (`weir proxy --controller`): what each has ACKed of the
//! controller's routing, and their measurements added to the controller's own, each
//! report once, so checks read the exact sum.
//!
//! States: a connected replica is `synced` once it ACKed the current routing version,
//! `syncing` while it has had less than [`STALE_AFTER`] to do so, and `stale` after that,
//! when it refused (NACKed) the push, or when nothing came from it for [`STALE_AFTER`];
//! `disconnected` once its stream ended (listed for [`FORGET_AFTER`]). A step counts as
//! applied when every connected replica that is not stale has ACKed it; a stale replica's
//! measurements are not merged (it serves other weights than the rollout is judging).

mod envoy;
mod stream;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use tokio::sync::watch;
use tokio::time::Instant;
use weir_proxy::{MeasurementDelta, Proxy};

use crate::routes::Routes;
use crate::status::{DataPlane, DataPlanes, ReplicaSummary};

pub use stream::FleetService;

/// A replica that has not ACKed the current routing version this long after it was pushed is
/// stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// A disconnected replica is listed this long, then forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Requests per second are counted over windows this long.
const RATE_WINDOW: Duration = Duration::from_secs(5);

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

/// What serves the routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `weir proxy --controller`.
    Weir,
    /// An Envoy node on ADS.
    Envoy,
}

/// One data plane (a replica or an Envoy node) as the controller knows it.
struct Entry {
    kind: Kind,
    /// It reports at least every second (a replica; an Envoy node once its stats come):
    /// silence then means a stream that no longer reaches it.
    heartbeat: bool,
    address: String,
    /// The stream it talks on now (a reconnect replaces the older one).
    session: u64,
    /// The replica process's own number: its reports are numbered within it.
    incarnation: u64,
    /// The last report taken (applied, or dropped for a counted reason).
    taken: u64,
    connected: bool,
    /// The last routing version it ACKed.
    acked: u64,
    /// Why it refused the last push.
    error: Option<String>,
    /// The routing version pushed to it last and when.
    pushed: Option<(u64, Instant)>,
    last_seen: Instant,
    /// Requests in the current rate window, and the last full window's rate.
    window: (Instant, u64),
    rate: f64,
}

impl Entry {
    /// A data plane that just opened stream `session`: nothing ACKed, pushed or measured
    /// yet.
    fn connected(kind: Kind, address: String, session: u64, now: Instant) -> Entry {
        Entry {
            kind,
            heartbeat: false,
            address,
            session,
            incarnation: 0,
            taken: 0,
            connected: true,
            acked: 0,
            error: None,
            pushed: None,
            last_seen: now,
            window: (now, 0),
            rate: 0.0,
        }
    }

    /// Notes measured requests (for its rate) and a sign of life; its state now.
    fn counted(&mut self, deltas: &[MeasurementDelta]) -> ReplicaState {
        let requests: u64 = deltas.iter().map(MeasurementDelta::requests).sum();
        let now = Instant::now();
        self.last_seen = now;
        self.window.1 += requests;
        let span = now.duration_since(self.window.0);
        if span >= RATE_WINDOW {
            self.rate = self.window.1 as f64 / span.as_secs_f64();
            self.window = (now, 0);
        }
        self.state(now)
    }

    fn state(&self, now: Instant) -> ReplicaState {
        if !self.connected {
            return ReplicaState::Disconnected;
        }
        if self.heartbeat && now.duration_since(self.last_seen) >= STALE_AFTER {
            return ReplicaState::Stale;
        }
        match self.pushed {
            _ if self.error.is_some() => ReplicaState::Stale,
            Some((version, _)) if self.acked >= version => ReplicaState::Synced,
            Some((_, at)) if now.duration_since(at) < STALE_AFTER => ReplicaState::Syncing,
            None => ReplicaState::Syncing,
            Some(_) => ReplicaState::Stale,
        }
    }
}

struct FleetMetrics {
    replicas: IntGaugeVec,
    version: IntGauge,
    pushes: IntCounter,
    push_bytes: IntCounter,
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
            version: gauge(
                "weir_control_routing_version",
                "The routing version data planes should serve; it grows with every change.",
            ),
            pushes: counter(
                "weir_control_pushes_total",
                "Routing deltas pushed to replicas.",
            ),
            push_bytes: counter(
                "weir_control_push_bytes_total",
                "Bytes of routing deltas pushed to replicas (protobuf, as encoded).",
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
                "Replica measurement reports not merged: from a stale replica, malformed, or a report sent again that was already taken.",
                &["reason"],
            ),
        }
    }
}

/// The replicas of one controller.
pub struct Fleet {
    routes: Arc<Routes>,
    proxy: Proxy,
    replicas: Mutex<BTreeMap<String, Entry>>,
    sessions: AtomicU64,
    /// `weir control`: status always shows the replicas, even none.
    dedicated: bool,
    metrics: FleetMetrics,
    /// Wakes whoever waits for ACKs ([`Fleet::settle`]) when a replica's standing changes.
    standing: watch::Sender<()>,
}

/// A replica's greeting, as its stream opened.
struct Hello {
    name: String,
    address: String,
    /// The routing version it serves.
    version: u64,
    /// Its process (a reconnect of the same process keeps what was taken of its reports).
    incarnation: u64,
}

/// One measurement report of a replica, read off the wire.
struct Report {
    deltas: Vec<MeasurementDelta>,
    /// Versions of it that could not be read.
    malformed: usize,
    /// Its size on the wire.
    bytes: usize,
}

impl Fleet {
    /// The fleet serving `routes`; replicas' measurements go into `proxy`'s.
    pub fn start(routes: Arc<Routes>, proxy: Proxy, dedicated: bool) -> Arc<Fleet> {
        let fleet = Arc::new(Fleet {
            metrics: FleetMetrics::new(proxy.families().registry()),
            routes,
            proxy,
            replicas: Mutex::new(BTreeMap::new()),
            sessions: AtomicU64::new(0),
            dedicated,
            standing: watch::Sender::new(()),
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

    /// The routing replicas should serve now, and its changes.
    fn subscribe(&self) -> watch::Receiver<Arc<weir_proxy::Routing>> {
        self.routes.subscribe()
    }

    /// The routing version replicas should serve.
    fn version(&self) -> u64 {
        self.routes.current().version
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A replica opened a stream: returns its session. A replica serving a version at or
    /// above ours (a restarted controller) lifts ours past it. A reconnect of the same
    /// replica process keeps what was taken of its reports.
    fn connected(&self, hello: &Hello) -> u64 {
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.routes.lift(hello.version);
        let now = Instant::now();
        let mut entries = self.entries();
        let taken = entries
            .get(&hello.name)
            .filter(|e| e.incarnation == hello.incarnation)
            .map_or(0, |e| e.taken);
        entries.insert(
            hello.name.clone(),
            Entry {
                heartbeat: true,
                incarnation: hello.incarnation,
                taken,
                acked: hello.version,
                ..Entry::connected(Kind::Weir, hello.address.clone(), session, now)
            },
        );
        drop(entries);
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

    pub(crate) fn pushed(&self, name: &str, session: u64, version: u64, bytes: usize) {
        self.metrics.pushes.inc();
        self.metrics
            .push_bytes
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
        self.with(name, session, |e| {
            e.pushed = Some((version, Instant::now()));
            e.error = None;
        });
    }

    fn applied(&self, name: &str, session: u64, version: u64, refused: Option<&str>) {
        if let Some(error) = refused {
            self.metrics.nacks.inc();
            tracing::error!(
                replica = name,
                version,
                error,
                "replica refused the routing; it keeps serving its previous routing"
            );
        }
        self.with(name, session, |e| match refused {
            None => {
                e.acked = e.acked.max(version);
                e.error = None;
            }
            Some(error) => e.error = Some(error.to_string()),
        });
        self.housekeeping();
        self.standing.send_replace(());
    }

    /// Takes a replica's report number `seq`: added to the controller's measurements
    /// unless the replica is stale, once (a report sent again after a reconnect is
    /// skipped). Returns the number of the last report taken, for the replica to forget.
    fn measured(&self, name: &str, session: u64, seq: u64, report: Report) -> Option<u64> {
        self.metrics
            .report_bytes
            .inc_by(u64::try_from(report.bytes).unwrap_or(u64::MAX));
        let fresh = self.with(name, session, |e| {
            let fresh = seq > e.taken;
            e.taken = e.taken.max(seq);
            fresh
        })?;
        if !fresh {
            self.metrics.dropped.with_label_values(&["duplicate"]).inc();
            return Some(seq);
        }
        let deltas = report.deltas;
        if report.malformed > 0 {
            let malformed = u64::try_from(report.malformed).unwrap_or(u64::MAX);
            self.metrics
                .dropped
                .with_label_values(&["invalid"])
                .inc_by(malformed);
        }
        let state = self.with(name, session, |e| e.counted(&deltas))?;
        self.merge(name, state, &deltas);
        Some(seq)
    }

    /// Adds a data plane's measurements to the controller's, unless it is stale (it
    /// serves other weights than the ones being judged).
    fn merge(&self, name: &str, state: ReplicaState, deltas: &[MeasurementDelta]) {
        if state == ReplicaState::Stale {
            self.metrics.dropped.with_label_values(&["stale"]).inc();
            return;
        }
        for d in deltas {
            if let Err(e) = self.proxy.merge_measurements(d) {
                self.metrics.dropped.with_label_values(&["invalid"]).inc();
                tracing::warn!(data_plane = name, service = %d.service, version = %d.version, error = %e, "measurements refused");
            }
        }
    }

    pub(crate) fn disconnected(&self, name: &str, session: u64) {
        self.with(name, session, |e| e.connected = false);
        self.housekeeping();
        self.standing.send_replace(());
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
        self.metrics
            .version
            .set(i64::try_from(self.version()).unwrap_or(i64::MAX));
    }

    /// True while some replica is connected.
    pub fn has_replicas(&self) -> bool {
        self.entries().values().any(|e| e.connected)
    }

    /// True when every connected replica that is not stale serves routing version
    /// `version` (or later).
    pub fn applied_everywhere(&self, version: u64) -> bool {
        let now = Instant::now();
        self.entries().values().all(|e| match e.state(now) {
            ReplicaState::Synced => e.acked >= version,
            ReplicaState::Syncing => false,
            ReplicaState::Stale | ReplicaState::Disconnected => true,
        })
    }

    /// Waits until routing version `version` is served by every live replica: woken by
    /// their ACKs, never polling; those that do not ACK within [`STALE_AFTER`] turn stale
    /// and stop holding it up.
    pub async fn settle(&self, version: u64) {
        let deadline = Instant::now() + STALE_AFTER + Duration::from_secs(1);
        let mut standing = self.standing.subscribe();
        while !self.applied_everywhere(version) {
            match tokio::time::timeout_at(deadline, standing.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// The replicas, by name.
    pub fn list(&self) -> DataPlanes {
        let now = Instant::now();
        let replicas = self
            .entries()
            .iter()
            .map(|(name, e)| DataPlane {
                kind: match e.kind {
                    Kind::Weir => "weir",
                    Kind::Envoy => "envoy",
                },
                name: name.clone(),
                address: e.address.clone(),
                version: e.acked,
                state: e.state(now).label().to_string(),
                last_seen_ms: u64::try_from(now.duration_since(e.last_seen).as_millis())
                    .unwrap_or(u64::MAX),
                requests_per_second: e.rate,
                error: e.error.clone().unwrap_or_default(),
            })
            .collect();
        DataPlanes {
            version: self.version(),
            planes: replicas,
        }
    }

    /// `replicas: 3/3 at version 17` for status; None when weir serves alone.
    pub fn summary(&self) -> Option<ReplicaSummary> {
        let now = Instant::now();
        let entries = self.entries();
        if entries.is_empty() && !self.dedicated {
            return None;
        }
        let version = self.version();
        let live = entries.values().filter(|e| e.connected).count();
        let synced = entries
            .values()
            .filter(|e| e.state(now) == ReplicaState::Synced && e.acked >= version)
            .count();
        Some(ReplicaSummary {
            synced: u32::try_from(synced).unwrap_or(u32::MAX),
            live: u32::try_from(live).unwrap_or(u32::MAX),
            version,
        })
    }
}
