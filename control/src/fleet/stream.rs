//! The `Fleet.Sync` stream, controller side: a replica says Hello, gets the current
//! routing and every later generation, and reports ACKs, NACKs and measurements.

use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weir_protos::control as pb;

use super::Fleet;
use crate::auth::{Authorizer, Need};

/// The gRPC service replicas connect to.
pub struct FleetService {
    pub fleet: Arc<Fleet>,
    pub auth: Arc<Authorizer>,
}

type Pushes = ReceiverStream<Result<pb::RoutingPush, Status>>;

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    type SyncStream = Pushes;

    async fn sync(
        &self,
        req: Request<Streaming<pb::ReplicaReport>>,
    ) -> Result<Response<Pushes>, Status> {
        self.auth.check(&req, "Sync", Need::Replica)?;
        let mut reports = req.into_inner();
        let hello = match reports.message().await? {
            Some(pb::ReplicaReport {
                report: Some(pb::replica_report::Report::Hello(h)),
            }) if !h.name.is_empty() => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a replica's first message is Hello with its name",
                ))
            }
        };
        let fleet = self.fleet.clone();
        let session = fleet.connected(&hello);
        let name = hello.name.clone();
        tracing::info!(replica = %name, address = %hello.address, generation = hello.generation, "replica connected");
        let (tx, rx) = mpsc::channel(4);
        // Pushes: the current routing now, then each new generation (a replica that
        // falls behind gets the latest, never a queue of old ones).
        let push_fleet = fleet.clone();
        let push_name = name.clone();
        let push = tokio::spawn(async move {
            let mut routing = push_fleet.subscribe();
            loop {
                let r = routing.borrow_and_update().clone();
                let msg = pb::RoutingPush {
                    generation: r.generation,
                    services_json: r.services_json.to_string(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                push_fleet.pushed(&push_name, session, r.generation);
                if routing.changed().await.is_err() {
                    return;
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
                    Some(pb::replica_report::Report::Applied(a)) => {
                        fleet.applied(&name, session, &a)
                    }
                    Some(pb::replica_report::Report::Measurements(m)) => {
                        fleet.measured(&name, session, m, bytes)
                    }
                    Some(pb::replica_report::Report::Hello(_)) | None => {}
                }
            }
            push.abort();
            fleet.disconnected(&name, session);
            tracing::warn!(replica = %name, "replica disconnected");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
