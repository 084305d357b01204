//! Envoy nodes as the fleet knows them: connected over ADS, serving a routing version
//! once every resource type is ACKed at it, refusing (NACK) with Envoy's own error, and
//! measured through their stats stream, which is also their sign of life.

use tokio::time::Instant;
use weir_proxy::MeasurementDelta;

use super::{Entry, Fleet, Kind};

impl Fleet {
    /// An Envoy node opened its ADS stream: its session, or why it is refused (a node of
    /// that id is connected already: ids must be unique).
    pub(crate) fn connected_envoy(&self, name: &str, listen: &str) -> Result<u64, String> {
        let session = self
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.get(name).is_some_and(|e| e.connected) {
            return Err(format!(
                "node {name:?} is connected already: give each Envoy its own node id"
            ));
        }
        entries.insert(
            name.to_string(),
            Entry::connected(Kind::Envoy, listen.to_string(), session, now),
        );
        drop(entries);
        self.housekeeping();
        Ok(session)
    }

    /// The node serves `version`: every resource type ACKed at it.
    pub(crate) fn envoy_applied(&self, name: &str, session: u64, version: u64) {
        let changed = self.with(name, session, |e| {
            let before = (e.acked, e.error.is_some());
            e.acked = e.acked.max(version);
            e.error = None;
            before != (e.acked, false)
        });
        if changed == Some(true) {
            self.housekeeping();
            self.standing.send_replace(());
        }
    }

    /// The node refused what it was sent (or it cannot be translated for it); it keeps
    /// what it had.
    pub(crate) fn envoy_refused(&self, name: &str, session: u64, error: &str) {
        self.metrics.nacks.inc();
        self.with(name, session, |e| e.error = Some(error.to_string()));
        self.housekeeping();
        self.standing.send_replace(());
    }

    /// A flush of the node's stats: its versions' gains, merged unless it is stale.
    pub(crate) fn envoy_measured(&self, name: &str, deltas: Vec<MeasurementDelta>) {
        let state = {
            let mut entries = self.entries();
            let Some(e) = entries
                .get_mut(name)
                .filter(|e| e.kind == Kind::Envoy && e.connected)
            else {
                self.metrics.dropped.with_label_values(&["unknown"]).inc();
                return;
            };
            e.heartbeat = true;
            e.counted(&deltas)
        };
        self.merge(name, state, &deltas);
    }
}
