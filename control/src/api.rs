//! The gRPC control API (tonic), with the standard health service and server
//! reflection so grpcurl and grpc_health_probe work.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use weir_protos::control as pb;
use weir_protos::control::control_server::{Control, ControlServer};

use crate::controller::{Controller, Notice, Op, Refusal};

/// The Control service over a [`Controller`].
pub struct Api {
    controller: Controller,
}

fn refusal(r: Refusal) -> Status {
    match r {
        Refusal::NotFound(m) => Status::not_found(m),
        Refusal::Invalid(m) => Status::invalid_argument(m),
        Refusal::Precondition(m) => Status::failed_precondition(m),
    }
}

fn need_service(service: &str) -> Result<(), Status> {
    if service.is_empty() {
        Err(Status::invalid_argument("service must be set"))
    } else {
        Ok(())
    }
}

/// The typed spec as the JSON a weir.yaml `analysis:` block would hold.
pub fn typed_to_json(t: &pb::AnalysisSpec) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    if !t.interval.is_empty() {
        put("interval", json!(t.interval));
    }
    if t.threshold != 0 {
        put("threshold", json!(t.threshold));
    }
    if t.max_weight != 0 {
        put("maxWeight", json!(t.max_weight));
    }
    if t.step_weight != 0 {
        put("stepWeight", json!(t.step_weight));
    }
    if !t.step_weights.is_empty() {
        put("stepWeights", json!(t.step_weights));
    }
    if t.step_weight_promotion != 0 {
        put("stepWeightPromotion", json!(t.step_weight_promotion));
    }
    if t.iterations != 0 {
        put("iterations", json!(t.iterations));
    }
    if !t.r#match.is_empty() {
        let matches: Vec<Value> = t
            .r#match
            .iter()
            .map(|mr| {
                let headers: Map<String, Value> = mr
                    .headers
                    .iter()
                    .map(|(k, sm)| {
                        let v = match &sm.r#match {
                            Some(pb::string_match::Match::Exact(s)) => json!({"exact": s}),
                            Some(pb::string_match::Match::Prefix(s)) => json!({"prefix": s}),
                            Some(pb::string_match::Match::Suffix(s)) => json!({"suffix": s}),
                            Some(pb::string_match::Match::Regex(s)) => json!({"regex": s}),
                            None => json!({}),
                        };
                        (k.clone(), v)
                    })
                    .collect();
                json!({ "headers": headers })
            })
            .collect();
        put("match", Value::Array(matches));
    }
    if t.mirror {
        put("mirror", json!(true));
    }
    if t.mirror_weight != 0 {
        put("mirrorWeight", json!(t.mirror_weight));
    }
    if let Some(sa) = &t.session_affinity {
        let mut v = json!({"cookieName": sa.cookie_name});
        if !sa.primary_cookie_name.is_empty() {
            v["primaryCookieName"] = json!(sa.primary_cookie_name);
        }
        if sa.max_age != 0 {
            v["maxAge"] = json!(sa.max_age);
        }
        put("sessionAffinity", v);
    }
    if !t.metrics.is_empty() {
        let metrics: Vec<Value> = t
            .metrics
            .iter()
            .map(|x| {
                let mut v = json!({"name": x.name});
                if !x.interval.is_empty() {
                    v["interval"] = json!(x.interval);
                }
                if let Some(r) = &x.threshold_range {
                    let mut range = Map::new();
                    if let Some(min) = r.min {
                        range.insert("min".into(), json!(min));
                    }
                    if let Some(max) = r.max {
                        range.insert("max".into(), json!(max));
                    }
                    v["thresholdRange"] = Value::Object(range);
                }
                if x.min_requests != 0 {
                    v["minRequests"] = json!(x.min_requests);
                }
                v
            })
            .collect();
        put("metrics", Value::Array(metrics));
    }
    if !t.webhooks.is_empty() {
        let hooks: Vec<Value> = t
            .webhooks
            .iter()
            .map(|h| {
                let mut v = json!({"name": h.name, "type": h.r#type});
                if !h.url.is_empty() {
                    v["url"] = json!(h.url);
                }
                if !h.exec.is_empty() {
                    v["exec"] = json!(h.exec);
                }
                if !h.timeout.is_empty() {
                    v["timeout"] = json!(h.timeout);
                }
                if h.retries != 0 {
                    v["retries"] = json!(h.retries);
                }
                if !h.metadata.is_empty() {
                    v["metadata"] = json!(h.metadata);
                }
                if h.mute_alert {
                    v["muteAlert"] = json!(true);
                }
                v
            })
            .collect();
        put("webhooks", Value::Array(hooks));
    }
    if !t.alerts.is_empty() {
        let alerts: Vec<Value> = t
            .alerts
            .iter()
            .map(|a| {
                let mut v = json!({"name": a.name, "severity": a.severity, "type": a.r#type, "address": a.url});
                if !a.channel.is_empty() {
                    v["channel"] = json!(a.channel);
                }
                if !a.username.is_empty() {
                    v["username"] = json!(a.username);
                }
                v
            })
            .collect();
        put("alerts", Value::Array(alerts));
    }
    if t.skip_analysis {
        put("skipAnalysis", json!(true));
    }
    if t.suspend {
        put("suspend", json!(true));
    }
    if t.min_requests != 0 {
        put("minRequests", json!(t.min_requests));
    }
    if t.progress_deadline_seconds != 0 {
        put(
            "progressDeadlineSeconds",
            json!(t.progress_deadline_seconds),
        );
    }
    if let Some(f) = &t.fast_fail {
        let mut v = json!({"disabled": f.disabled});
        if f.min_requests != 0 {
            v["minRequests"] = json!(f.min_requests);
        }
        if f.alpha != 0.0 {
            v["alpha"] = json!(f.alpha);
        }
        if !f.window.is_empty() {
            v["window"] = json!(f.window);
        }
        put("fastFail", v);
    }
    Value::Object(m)
}

type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

#[tonic::async_trait]
impl Control for Api {
    async fn apply_spec(
        &self,
        req: Request<pb::ApplySpecRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
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
            Some(pb::apply_spec_request::Spec::Typed(t)) => typed_to_json(&t),
            None => return Err(Status::invalid_argument("spec must be set (text or typed)")),
        };
        self.controller
            .apply_spec(&req.service, value)
            .await
            .map(Response::new)
            .map_err(refusal)
    }

    async fn start_rollout(
        &self,
        req: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let req = req.into_inner();
        need_service(&req.service)?;
        self.controller
            .start_rollout(&req.service, &req.revision, &req.canary_endpoints)
            .await
            .map(Response::new)
            .map_err(refusal)
    }

    async fn get_status(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let req = req.into_inner();
        need_service(&req.service)?;
        self.controller
            .status(&req.service)
            .map(Response::new)
            .map_err(refusal)
    }

    async fn list_rollouts(
        &self,
        _req: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsReply>, Status> {
        Ok(Response::new(pb::ListRolloutsReply {
            rollouts: self.controller.list(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = req.into_inner().service;
        let initial = if service.is_empty() {
            self.controller.list()
        } else {
            vec![self.controller.status(&service).map_err(refusal)?]
        };
        let mut notices = self.controller.subscribe();
        let (tx, rx) = mpsc::channel(256);
        let controller = self.controller.clone();
        tokio::spawn(async move {
            use pb::watch_event::Kind;
            for s in initial {
                if tx
                    .send(Ok(pb::WatchEvent {
                        kind: Some(Kind::Status(s)),
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
                        Ok(Notice::Event(e)) if service.is_empty() || e.service == service => Kind::Event(e),
                        Ok(Notice::Status(s)) if service.is_empty() || s.service == service => Kind::Status(*s),
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    },
                    _ = every.tick() => {
                        if service.is_empty() {
                            continue;
                        }
                        match controller.status(&service) {
                            Ok(s) => Kind::Status(s),
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
        self.op(req.into_inner().service, Op::Promote).await
    }

    async fn abort(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req.into_inner().service, Op::Abort).await
    }

    async fn pause(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req.into_inner().service, Op::Pause).await
    }

    async fn resume(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req.into_inner().service, Op::Resume).await
    }

    async fn retry(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        self.op(req.into_inner().service, Op::Retry).await
    }

    async fn set_weight(
        &self,
        req: Request<pb::SetWeightRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let req = req.into_inner();
        self.op(req.service, Op::SetWeight(req.canary_weight)).await
    }

    async fn approve(
        &self,
        req: Request<pb::GateRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let req = req.into_inner();
        self.op(req.service, Op::Approve(req.gate)).await
    }

    async fn deny(
        &self,
        req: Request<pb::GateRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let req = req.into_inner();
        self.op(req.service, Op::Deny(req.gate)).await
    }
}

impl Api {
    async fn op(&self, service: String, op: Op) -> Result<Response<pb::RolloutStatus>, Status> {
        need_service(&service)?;
        self.controller
            .operate(&service, op)
            .await
            .map(Response::new)
            .map_err(refusal)
    }
}

/// Serves the control API, health and reflection on `listener` until `shutdown`.
pub async fn serve(
    controller: Controller,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<ControlServer<Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weir_protos::CONTROL_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weir_protos::CONTROL_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;
    let shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown);
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(ControlServer::new(Api { controller }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| format!("control API: {e}"))
}
