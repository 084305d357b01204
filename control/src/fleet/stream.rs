//! The `Fleet.Sync` stream, controller side: a replica says Hello, gets the whole routing,
//! then the services that changed at every new version; it ACKs or NACKs each version and
//! reports its measurements, and hears which reports were taken.

use std::sync::Arc;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weir_protos::fleet as fb;

use super::{wire, Fleet};
use crate::auth::{Authorizer, Need};

/// The gRPC service replicas connect to.
pub struct FleetService {
    pub fleet: Arc<Fleet>,
    pub auth: Arc<Authorizer>,
}

type Pushes = ReceiverStream<Result<fb::ControllerMessage, Status>>;

fn message(m: fb::controller_message::Message) -> Result<fb::ControllerMessage, Status> {
    Ok(fb::ControllerMessage { message: Some(m) })
}

#[tonic::async_trait]
impl fb::fleet_server::Fleet for FleetService {
    type SyncStream = Pushes;

    async fn sync(
        &self,
        req: Request<Streaming<fb::ReplicaReport>>,
    ) -> Result<Response<Pushes>, Status> {
        self.auth.check(&req, "Sync", Need::Replica)?;
        let mut reports = req.into_inner();
        let hello = match reports.message().await? {
            Some(fb::ReplicaReport {
                report: Some(fb::replica_report::Report::Hello(h)),
            }) if !h.name.is_empty() => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a replica's first message is Hello with its name",
                ))
            }
        };
        let fleet = self.fleet.clone();
        let session = fleet.connected(&super::Hello {
            name: hello.name.clone(),
            address: hello.address.clone(),
            version: hello.version,
            incarnation: hello.incarnation,
        });
        let name = hello.name.clone();
        tracing::info!(replica = %name, address = %hello.address, version = hello.version, "replica connected");
        let (tx, rx) = mpsc::channel(16);
        // The version the replica last refused: what was sent since is no base for a delta.
        let (refused_tx, mut refused) = watch::channel(0u64);
        // The whole routing first, then at each new version what changed since what this
        // replica was sent (a replica that falls behind gets one delta to the newest). After
        // a refusal the whole routing again: at once when a newer version exists (a delta
        // may have gone out on the refused base), else with the next version.
        let (push_fleet, push_name, push_tx) = (fleet.clone(), name.clone(), tx.clone());
        let push = tokio::spawn(async move {
            let mut routing = push_fleet.subscribe();
            let mut sent: Option<Arc<weir_proxy::Routing>> = None;
            loop {
                let now = routing.borrow_and_update().clone();
                let delta = now.delta_from(sent.as_deref());
                let msg = wire::routing_to_pb(&delta);
                let bytes = msg.encoded_len();
                let routed = message(fb::controller_message::Message::Routing(msg));
                if push_tx.send(routed).await.is_err() {
                    return;
                }
                push_fleet.pushed(&push_name, session, now.version, bytes);
                sent = Some(now);
                loop {
                    tokio::select! {
                        c = routing.changed() => match c {
                            Ok(()) => break,
                            Err(_) => return,
                        },
                        c = refused.changed() => {
                            if c.is_err() {
                                return;
                            }
                            let nacked = *refused.borrow_and_update();
                            sent = None;
                            if routing.borrow().version > nacked {
                                break;
                            }
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let report = match reports.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(replica = %name, error = %e, "replica stream broke");
                        break;
                    }
                };
                let bytes = report.encoded_len();
                match report.report {
                    Some(fb::replica_report::Report::Applied(a)) => {
                        let refused = (!a.error.is_empty()).then_some(a.error.as_str());
                        fleet.applied(&name, session, a.version, refused);
                        if refused.is_some() {
                            refused_tx.send_replace(a.version);
                        }
                    }
                    Some(fb::replica_report::Report::Measurements(m)) => {
                        let sent = m.versions.len();
                        let deltas: Vec<_> = m
                            .versions
                            .into_iter()
                            .filter_map(wire::delta_from_pb)
                            .collect();
                        let report = super::Report {
                            malformed: sent - deltas.len(),
                            deltas,
                            bytes,
                        };
                        if let Some(seq) = fleet.measured(&name, session, m.seq, report) {
                            let taken = fb::controller_message::Message::ReportsTaken(seq);
                            if tx.send(message(taken)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(fb::replica_report::Report::Hello(_)) | None => {}
                }
            }
            push.abort();
            fleet.disconnected(&name, session);
            tracing::warn!(replica = %name, "replica disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
