//! A proxy replica (`weir proxy --controller`): its file holds only listeners, admin,
//! limits and TLS plus how to reach the controller; all routing comes over one stream it
//! opens to the controller. It applies each pushed generation (ACK) or keeps what it had
//! and says why (NACK), and reports its measurements every [`REPORT_EVERY`]. When the
//! controller is gone it keeps serving the last routing it had and reconnects with
//! backoff and jitter; `/ready` answers 503 until the first routing arrived.

mod config;

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use weir_protos::control as pb;
use weir_protos::control::fleet_client::FleetClient;
use weir_proxy::config::ServiceConfig;
use weir_proxy::{DeltaCursor, Proxy, ProxyConfig};

pub use config::{is_replica_file, replica_name, ControllerLink, ReplicaConfig};

use crate::fleet::wire;
use crate::link::{self, Access, CtlError};

/// How often measurements are reported.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
/// With nothing measured, a report still goes out this often (the controller's "last
/// seen").
const HEARTBEAT_EVERY: u32 = 4;
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
    /// The replica's file (services always empty): each push is laid over it.
    local: ProxyConfig,
    access: Access,
    name: String,
    /// Where it serves users, as the controller lists it.
    address: String,
}

/// What a replica carries from one session to the next.
struct Progress {
    /// The generation it serves (0: none yet).
    applied: u64,
    cursor: DeltaCursor,
}

impl Replica {
    /// The replica of `proxy` (built from `local`), named `name`, serving at `address`.
    /// From here on its `/ready` answers 503 until the first routing is applied: make it
    /// before anything serves, so no probe sees a replica without routing as ready.
    pub fn new(
        proxy: Proxy,
        local: ProxyConfig,
        access: Access,
        name: String,
        address: String,
    ) -> Replica {
        proxy.set_awaiting_routing(true);
        Replica {
            proxy,
            local,
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
        let hello = pb::replica_report::Report::Hello(pb::Hello {
            name: self.name.clone(),
            address: self.address.clone(),
            generation: progress.applied,
        });
        let _ = tx.send(report(hello)).await;
        let mut pushes = client.sync(ReceiverStream::new(rx)).await?.into_inner();
        tracing::info!(controller = %self.access.control, name = %self.name, "connected to the controller");
        let mut every = tokio::time::interval(REPORT_EVERY);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                push = pushes.message() => {
                    let push = push?.ok_or(SessionError::Closed)?;
                    // What was served under the old generation goes first.
                    self.report(progress, &tx, true).await;
                    let applied = self.apply(progress, &push);
                    if tx.send(report(applied)).await.is_err() {
                        return Err(SessionError::Closed);
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

    /// Sends what was measured since the last report (an empty one too when `always`).
    async fn report(
        &self,
        progress: &mut Progress,
        tx: &mpsc::Sender<pb::ReplicaReport>,
        always: bool,
    ) {
        let versions: Vec<pb::VersionDelta> = self
            .proxy
            .measurement_deltas(&mut progress.cursor)
            .into_iter()
            .map(wire::to_pb)
            .collect();
        if versions.is_empty() && !always {
            return;
        }
        let m = pb::Measurements {
            generation: progress.applied,
            versions,
        };
        let _ = tx
            .send(report(pb::replica_report::Report::Measurements(m)))
            .await;
    }

    /// Applies a pushed routing: ACK, or NACK with the reason (nothing changes).
    fn apply(&self, progress: &mut Progress, push: &pb::RoutingPush) -> pb::replica_report::Report {
        let result = serde_json::from_str::<Vec<ServiceConfig>>(&push.services_json)
            .map_err(|e| format!("the routing is not a list of services: {e}"))
            .and_then(|services| {
                let mut config = self.local.clone();
                config.services = services;
                self.proxy.apply(config).map_err(|e| e.to_string())
            });
        let error = match result {
            Ok(()) => {
                progress.applied = push.generation;
                self.proxy.set_awaiting_routing(false);
                tracing::info!(generation = push.generation, "routing applied");
                String::new()
            }
            Err(e) => {
                tracing::error!(generation = push.generation, error = %e, "routing refused; keeping the previous routing");
                e
            }
        };
        pb::replica_report::Report::Applied(pb::Applied {
            generation: push.generation,
            error,
        })
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn report(r: pb::replica_report::Report) -> pb::ReplicaReport {
    pb::ReplicaReport { report: Some(r) }
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
