//! A proxy replica (`weir proxy --controller`): its file holds only listeners, admin,
//! limits and TLS plus how to reach the controller; all routing comes over one stream it
//! opens to the controller, as the services that changed. It applies each routing version
//! (ACK) or keeps what it had and says why (NACK), and reports its measurements every
//! [`REPORT_EVERY`], keeping each report until the controller says it took it, so a
//! broken stream loses none. When the controller is gone it keeps serving the last
//! routing it had and reconnects with backoff and jitter; `/ready` answers 503 until the
//! first routing arrived.

mod config;

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use weir_protos::fleet as fb;
use weir_protos::fleet::fleet_client::FleetClient;
use weir_proxy::{DeltaCursor, Proxy};

pub use config::{is_replica_file, replica_name, ReplicaConfig};

use crate::fleet::wire;
use crate::link::{self, Access, CtlError};

/// How often measurements are reported.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
/// With nothing measured, a report still goes out this often (the controller's "last
/// seen").
const HEARTBEAT_EVERY: u32 = 4;
/// Reports kept for sending again at most (ten minutes of them); past that the oldest is
/// dropped, and the log says so.
const MAX_UNTAKEN: usize = 2400;
/// Reconnect backoff: from this ...
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ... doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a session with the controller ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] CtlError),
    #[error("{0}")]
    Stream(#[from] tonic::Status),
    #[error("the controller closed the stream")]
    Closed,
}

/// The replica's side of the stream.
pub struct Replica {
    proxy: Proxy,
    access: Access,
    name: String,
    /// Where it serves users, as the controller lists it.
    address: String,
}

/// What a replica carries from one session to the next.
struct Progress {
    /// The routing version it serves (0: none yet).
    applied: u64,
    cursor: DeltaCursor,
    /// This process's number: its reports are numbered within it.
    incarnation: u64,
    /// The last report's number.
    seq: u64,
    /// Reports sent that the controller has not said it took, oldest first: sent again on
    /// the next stream.
    untaken: VecDeque<fb::Measurements>,
}

impl Replica {
    /// The replica of `proxy` (built from `local`), named `name`, serving at `address`.
    /// From here on its `/ready` answers 503 until the first routing is applied: make it
    /// before anything serves, so no probe sees a replica without routing as ready.
    pub fn new(proxy: Proxy, access: Access, name: String, address: String) -> Replica {
        proxy.set_awaiting_routing(true);
        Replica {
            proxy,
            access,
            name,
            address,
        }
    }

    /// Talks to the controller until `stop` turns true, reconnecting as needed.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut progress = Progress {
            applied: 0,
            cursor: DeltaCursor::default(),
            incarnation: incarnation(&self.name),
            seq: 0,
            untaken: VecDeque::new(),
        };
        let mut failures = 0u32;
        loop {
            let started = tokio::time::Instant::now();
            match self.session(&mut progress, &mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    if started.elapsed() > BACKOFF_MAX {
                        failures = 0;
                    }
                    tracing::warn!(controller = %self.access.control, error = %e, serving = progress.applied, "no controller stream; serving the last routing and reconnecting");
                }
            }
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures, &self.name)) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    async fn session(
        &self,
        progress: &mut Progress,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let (channel, bearer) = link::channel(&self.access).await?;
        let mut client = FleetClient::with_interceptor(channel, bearer);
        let (tx, rx) = mpsc::channel(16);
        let hello = fb::replica_report::Report::Hello(fb::Hello {
            name: self.name.clone(),
            address: self.address.clone(),
            version: progress.applied,
            incarnation: progress.incarnation,
        });
        let _ = tx.send(report(hello)).await;
        // What the last stream did not see taken goes again, in order.
        for m in &progress.untaken {
            let _ = tx
                .send(report(fb::replica_report::Report::Measurements(m.clone())))
                .await;
        }
        let mut pushes = client.sync(ReceiverStream::new(rx)).await?.into_inner();
        tracing::info!(controller = %self.access.control, name = %self.name, "connected to the controller");
        let mut every = tokio::time::interval(REPORT_EVERY);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                msg = pushes.message() => {
                    let msg = msg?.ok_or(SessionError::Closed)?;
                    match msg.message {
                        Some(fb::controller_message::Message::Routing(delta)) => {
                            // What was served under the old version goes first.
                            self.report(progress, &tx, true).await;
                            let applied = self.apply(progress, delta);
                            if tx.send(report(applied)).await.is_err() {
                                return Err(SessionError::Closed);
                            }
                        }
                        Some(fb::controller_message::Message::ReportsTaken(seq)) => {
                            while progress.untaken.front().is_some_and(|m| m.seq <= seq) {
                                progress.untaken.pop_front();
                            }
                        }
                        None => {}
                    }
                }
                _ = every.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let heartbeat = ticks.is_multiple_of(HEARTBEAT_EVERY);
                    self.report(progress, &tx, heartbeat).await;
                }
                _ = stopped(stop) => {
                    self.report(progress, &tx, false).await;
                    return Ok(());
                }
            }
        }
    }

    /// Sends what was measured since the last report (an empty one too when `always`),
    /// keeping it until the controller says it took it.
    async fn report(
        &self,
        progress: &mut Progress,
        tx: &mpsc::Sender<fb::ReplicaReport>,
        always: bool,
    ) {
        let versions: Vec<fb::VersionDelta> = self
            .proxy
            .measurement_deltas(&mut progress.cursor)
            .into_iter()
            .map(wire::delta_to_pb)
            .collect();
        if versions.is_empty() && !always {
            return;
        }
        progress.seq += 1;
        let m = fb::Measurements {
            version: progress.applied,
            seq: progress.seq,
            versions,
        };
        if progress.untaken.len() >= MAX_UNTAKEN {
            progress.untaken.pop_front();
            tracing::warn!(
                kept = MAX_UNTAKEN,
                "the controller has not taken this replica's reports for long: the oldest is dropped"
            );
        }
        progress.untaken.push_back(m.clone());
        let _ = tx
            .send(report(fb::replica_report::Report::Measurements(m)))
            .await;
    }

    /// Applies a routing delta: ACK, or NACK with the reason (nothing changes).
    fn apply(
        &self,
        progress: &mut Progress,
        delta: fb::RoutingDelta,
    ) -> fb::replica_report::Report {
        let version = delta.version;
        let result = wire::routing_from_pb(delta)
            .map_err(|e| format!("the routing is malformed: {e}"))
            .and_then(|d| self.proxy.commit(d).map_err(|e| e.to_string()));
        let error = match result {
            Ok(()) => {
                progress.applied = version;
                self.proxy.set_awaiting_routing(false);
                tracing::info!(version, "routing applied");
                String::new()
            }
            Err(e) => {
                tracing::error!(version, error = %e, "routing refused; keeping the previous routing");
                e
            }
        };
        fb::replica_report::Report::Applied(fb::Applied { version, error })
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn report(r: fb::replica_report::Report) -> fb::ReplicaReport {
    fb::ReplicaReport { report: Some(r) }
}

/// A number for this replica process, different at each start.
fn incarnation(name: &str) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((
        name,
        std::time::SystemTime::now(),
        std::process::id(),
    ))
}

/// The wait before reconnect attempt `n` (1, 2, ...): exponential, capped, and spread
/// over its upper half by the replica's name and the clock, so replicas that lost the
/// same controller do not all come back at once.
fn backoff(n: u32, name: &str) -> Duration {
    use std::hash::BuildHasher;
    let cap = BACKOFF_MIN
        .saturating_mul(1u32 << n.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    let seed = std::collections::hash_map::RandomState::new().hash_one((
        name,
        std::time::SystemTime::now(),
        n,
    ));
    let half = cap / 2;
    half + half.mul_f64((seed % 1000) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        for n in 1..20 {
            let b = backoff(n, "r");
            let cap = BACKOFF_MIN
                .saturating_mul(1 << (n.min(16) - 1))
                .min(BACKOFF_MAX);
            assert!(
                b >= cap / 2 && b <= cap,
                "attempt {n}: {b:?} vs cap {cap:?}"
            );
        }
        assert!(backoff(30, "r") <= BACKOFF_MAX);
    }
}
