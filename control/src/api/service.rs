//! The Control service: each RPC is checked against the caller's credentials (reads and
//! changes apart), then is a controller call; each refusal is a gRPC status, each
//! accepted change is logged with who made it.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weir_protos::control as pb;
use weir_protos::control::control_server::Control;

use super::convert;
use crate::auth::{Authorizer, Identity, Need};
use crate::controller::{Controller, Notice, Refusal};
use crate::machine::Op;
use crate::status::ServiceStatus;

/// The Control service over a [`Controller`].
pub struct Api {
    pub(super) controller: Controller,
    pub(super) auth: std::sync::Arc<Authorizer>,
}

/// A change RPC whose caller was let in.
struct Change {
    rpc: &'static str,
    who: Identity,
}

impl Change {
    /// The controller's answer as the RPC's; an accepted change is logged with its caller,
    /// a refused one names the action and the service (`SetWeight refused: podinfo: ...`).
    fn answer(
        &self,
        service: &str,
        result: Result<ServiceStatus, Refusal>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        if result.is_ok() {
            tracing::info!(rpc = self.rpc, service, caller = %self.who, "control operation accepted");
        }
        result
            .map(|s| Response::new(convert::status(s)))
            .map_err(|r| Status::from(r.named(self.rpc, service)))
    }
}

impl Refusal {
    /// The refusal with the action and the service in front of its reason (the service
    /// once: not again when the reason names it).
    fn named(self, rpc: &str, service: &str) -> Refusal {
        let name = |m: String| match m.contains(service) {
            true => format!("{rpc} refused: {m}"),
            false => format!("{rpc} refused: {service}: {m}"),
        };
        match self {
            Refusal::NotFound(m) => Refusal::NotFound(name(m)),
            Refusal::Invalid(m) => Refusal::Invalid(name(m)),
            Refusal::Precondition(m) => Refusal::Precondition(name(m)),
        }
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match r {
            Refusal::NotFound(m) => Status::not_found(m),
            Refusal::Invalid(m) => Status::invalid_argument(m),
            Refusal::Precondition(m) => Status::failed_precondition(m),
        }
    }
}

fn need_service(service: &str) -> Result<(), Status> {
    if service.is_empty() {
        Err(Status::invalid_argument("service must be set"))
    } else {
        Ok(())
    }
}

type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

#[tonic::async_trait]
impl Control for Api {
    async fn apply_spec(
        &self,
        req: Request<pb::ApplySpecRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let change = self.change(&req, "ApplySpec")?;
        let req = req.into_inner();
        need_service(&req.service)?;
        let value = match req.spec {
            Some(pb::apply_spec_request::Spec::Text(text)) => {
                let v: serde_json::Value = serde_yaml_ng::from_str(&text).map_err(|e| {
                    Status::invalid_argument(format!("analysis: not valid YAML or JSON: {e}"))
                })?;
                // A whole Canary manifest or its spec works too: take its analysis.
                v.pointer("/spec/analysis")
                    .or_else(|| v.pointer("/analysis"))
                    .cloned()
                    .unwrap_or(v)
            }
            Some(pb::apply_spec_request::Spec::Typed(t)) => {
                let spec = convert::analysis_spec(&t)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                serde_json::to_value(spec).map_err(|e| Status::internal(e.to_string()))?
            }
            None => return Err(Status::invalid_argument("spec must be set (text or typed)")),
        };
        let result = self.controller.apply_spec(&req.service, value).await;
        change.answer(&req.service, result)
    }

    async fn start_rollout(
        &self,
        req: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let change = self.change(&req, "StartRollout")?;
        let req = req.into_inner();
        need_service(&req.service)?;
        let result = self
            .controller
            .start_rollout(&req.service, &req.revision, &req.canary_endpoints)
            .await;
        change.answer(&req.service, result)
    }

    async fn get_status(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.auth.check(&req, "GetStatus", Need::Read)?;
        let req = req.into_inner();
        need_service(&req.service)?;
        self.controller
            .status(&req.service)
            .map(|s| Response::new(convert::status(s)))
            .map_err(Status::from)
    }

    async fn list_rollouts(
        &self,
        req: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsReply>, Status> {
        self.auth.check(&req, "ListRollouts", Need::Read)?;
        Ok(Response::new(pb::ListRolloutsReply {
            rollouts: self
                .controller
                .list()
                .into_iter()
                .map(convert::status)
                .collect(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.auth.check(&req, "Watch", Need::Read)?;
        let service = req.into_inner().service;
        let initial = if service.is_empty() {
            self.controller.list()
        } else {
            vec![self.controller.status(&service)?]
        };
        let mut notices = self.controller.subscribe();
        let (tx, rx) = mpsc::channel(256);
        let controller = self.controller.clone();
        tokio::spawn(async move {
            use pb::watch_event::Kind;
            for s in initial {
                if tx
                    .send(Ok(pb::WatchEvent {
                        kind: Some(Kind::Status(convert::status(s))),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Live numbers change without a transition: a status every second too.
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                let item = tokio::select! {
                    n = notices.recv() => match n {
                        Ok(Notice::Event(e)) if service.is_empty() || e.service == service => Kind::Event(convert::event(e)),
                        Ok(Notice::Status(s)) if service.is_empty() || s.service == service => Kind::Status(convert::status(*s)),
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    },
                    _ = every.tick() => {
                        if service.is_empty() {
                            continue;
                        }
                        match controller.status(&service) {
                            Ok(s) => Kind::Status(convert::status(s)),
                            Err(_) => return,
                        }
                    }
                    _ = tx.closed() => return,
                };
                if tx
                    .send(Ok(pb::WatchEvent { kind: Some(item) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn promote(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req, "Promote", |r| (r.service, Op::Promote)).await
    }

    async fn abort(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req, "Abort", |r| (r.service, Op::Abort)).await
    }

    async fn pause(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req, "Pause", |r| (r.service, Op::Pause)).await
    }

    async fn resume(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req, "Resume", |r| (r.service, Op::Resume)).await
    }

    async fn retry(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req, "Retry", |r| (r.service, Op::Retry)).await
    }

    async fn set_weight(
        &self,
        req: Request<pb::SetWeightRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let change = self.change(&req, "SetWeight")?;
        let r = req.into_inner();
        need_service(&r.service)?;
        // Versions in name order: the request's map has no order of its own.
        let mut weights: Vec<(String, u32)> = r.weights.into_iter().collect();
        weights.sort();
        let result = self
            .controller
            .set_weight(
                &r.service,
                r.canary_weight,
                weights.into_iter().collect(),
                r.force,
            )
            .await;
        change.answer(&r.service, result)
    }

    async fn approve(
        &self,
        req: Request<pb::GateRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req, "Approve", |r| (r.service, Op::Approve(r.gate)))
            .await
    }

    async fn deny(
        &self,
        req: Request<pb::GateRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req, "Deny", |r| (r.service, Op::Deny(r.gate)))
            .await
    }

    async fn reset(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let change = self.change(&req, "Reset")?;
        let service = req.into_inner().service;
        need_service(&service)?;
        let result = self.controller.reset(&service).await;
        change.answer(&service, result)
    }

    async fn list_replicas(
        &self,
        req: Request<pb::ListReplicasRequest>,
    ) -> Result<Response<pb::ListReplicasReply>, Status> {
        self.auth.check(&req, "ListReplicas", Need::Read)?;
        Ok(Response::new(convert::replicas(
            self.controller.fleet().list(),
        )))
    }
}

impl Api {
    /// Lets the caller of the change RPC `rpc` in, or refuses them.
    fn change<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<Change, Status> {
        let who = self.auth.check(req, rpc, Need::Change)?;
        Ok(Change { rpc, who })
    }

    /// The operation `f` makes of the request, on the service it names.
    async fn op<T>(
        &self,
        req: Request<T>,
        rpc: &'static str,
        f: impl FnOnce(T) -> (String, Op),
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let change = self.change(&req, rpc)?;
        let (service, op) = f(req.into_inner());
        need_service(&service)?;
        let result = self.controller.operate(&service, op).await;
        change.answer(&service, result)
    }
}
