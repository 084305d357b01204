//! The aggregated discovery service (state of the world) on the control port. Each Envoy
//! node's stream is a small state machine that brings the node to the current routing
//! version make-before-break: clusters first (new ones beside those its routes still
//! use), their endpoints, then the listener and the routes, and only then the clusters
//! nothing routes to any more go. One response per type is in flight at a time; an ACK
//! moves the node on, a NACK keeps it on what it has (logged with Envoy's error, shown
//! per node) and that content is not sent again. Every response carries the routing
//! version as `version_info`; the node counts as serving a version once every type is
//! ACKed at it.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{translate, EnvoySettings, Resources, CLUSTER, ENDPOINTS, LISTENERS, ROUTES};
use crate::auth::{Authorizer, Need};
use crate::fleet::Fleet;
use crate::routes::Routes;

/// The ADS served to Envoy nodes.
pub struct AdsService {
    pub routes: Arc<Routes>,
    pub fleet: Arc<Fleet>,
    pub auth: Arc<Authorizer>,
    /// The `envoy:` block and listener settings (None: this controller serves no Envoy).
    pub settings: watch::Receiver<Option<Arc<EnvoySettings>>>,
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

/// The order a change reaches a node in.
const ORDER: [&str; 4] = [CLUSTER, ENDPOINTS, LISTENERS, ROUTES];

/// One type's exchange with a node.
#[derive(Default)]
struct Exchange {
    /// Names the node asked for; None until it asks (clusters and listeners: all).
    subscribed: Option<BTreeSet<String>>,
    /// What is in flight: its nonce and resources.
    sent: Option<(String, BTreeMap<String, Any>)>,
    /// What the node has (last ACKed).
    acked: BTreeMap<String, Any>,
    /// Content the node refused: not sent again.
    refused: Option<BTreeMap<String, Any>>,
}

/// A node's stream.
struct NodeSync {
    name: String,
    session: u64,
    listen: Option<String>,
    nonce: u64,
    types: BTreeMap<&'static str, Exchange>,
    version: u64,
    desired: Resources,
    /// The settings the desired resources were made with.
    made_with: Option<Arc<EnvoySettings>>,
    /// A routing version that could not be translated (said once).
    untranslatable: Option<u64>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        self.auth
            .check(&req, "StreamAggregatedResources", Need::Replica)?;
        if self.settings.borrow().is_none() {
            return Err(Status::failed_precondition(
                "this controller serves no Envoy node: weir.yaml has no `envoy:` block",
            ));
        }
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        let node = first
            .node
            .clone()
            .filter(|n| !n.id.is_empty())
            .ok_or_else(|| Status::invalid_argument("the first request names no node (node.id)"))?;
        let listen = node
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("weir.listen"))
            .and_then(|v| match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                    Some(s.clone())
                }
                _ => None,
            });
        let session = self
            .fleet
            .connected_envoy(&node.id, listen.as_deref().unwrap_or(""))
            .map_err(|why| {
                tracing::warn!(node = %node.id, "a second Envoy asks for configuration under a live node's id: refused");
                Status::already_exists(why)
            })?;
        tracing::info!(node = %node.id, cluster = %node.cluster, "Envoy node connected");
        let (tx, rx) = mpsc::channel(8);
        let mut sync = NodeSync::new(&node.id, session, listen);
        let (routes, fleet, mut settings) = (
            self.routes.clone(),
            self.fleet.clone(),
            self.settings.clone(),
        );
        tokio::spawn(async move {
            let mut routing = routes.subscribe();
            let mut pending = Some(first);
            loop {
                if let Some(r) = pending.take() {
                    sync.received(r, &fleet);
                }
                sync.retarget(
                    &routing.borrow_and_update().clone(),
                    &settings.borrow_and_update().clone(),
                    &fleet,
                );
                let out = sync.advance(&fleet);
                sync.sent(&fleet, &out);
                for out in out {
                    if tx.send(Ok(out)).await.is_err() {
                        fleet.disconnected(&sync.name, sync.session);
                        return;
                    }
                }
                tokio::select! {
                    r = inbound.message() => match r {
                        Ok(Some(r)) => pending = Some(r),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(node = %sync.name, error = %e, "Envoy node's stream broke");
                            break;
                        }
                    },
                    c = routing.changed() => if c.is_err() { break },
                    c = settings.changed() => if c.is_err() { break },
                }
            }
            fleet.disconnected(&sync.name, sync.session);
            tracing::warn!(node = %sync.name, "Envoy node disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented(
            "weir serves state-of-the-world ADS (api_type: GRPC); `weir bootstrap envoy` writes it",
        ))
    }
}

impl NodeSync {
    /// The stream of node `name` (listening on `listen`), session `session`: nothing
    /// asked for or sent yet.
    fn new(name: &str, session: u64, listen: Option<String>) -> NodeSync {
        NodeSync {
            name: name.to_string(),
            session,
            listen,
            nonce: 0,
            types: ORDER.iter().map(|t| (*t, Exchange::default())).collect(),
            version: 0,
            desired: Resources::default(),
            made_with: None,
            untranslatable: None,
        }
    }

    /// A request from the node: an ACK or NACK of what was sent, and what it asks for.
    fn received(&mut self, r: DiscoveryRequest, fleet: &Fleet) {
        let Some(t) = self.types.get_mut(r.type_url.as_str()) else {
            return;
        };
        if matches!(r.type_url.as_str(), ENDPOINTS | ROUTES) {
            t.subscribed = Some(r.resource_names.iter().cloned().collect());
        } else {
            t.subscribed = Some(BTreeSet::new());
        }
        let answered = match &t.sent {
            Some((nonce, _)) if *nonce == r.response_nonce => t.sent.take(),
            // A stale nonce: an answer to something superseded.
            Some(_) if !r.response_nonce.is_empty() => return,
            _ => None,
        };
        if let Some((_, resources)) = answered {
            match &r.error_detail {
                Some(e) => {
                    tracing::error!(node = %self.name, type_url = %r.type_url, error = %e.message, "Envoy node refused its configuration; it keeps what it had");
                    fleet.envoy_refused(&self.name, self.session, &e.message);
                    t.refused = Some(resources);
                }
                None => {
                    let old = std::mem::replace(&mut t.acked, resources);
                    if r.type_url == CLUSTER {
                        self.rewarm(&old);
                    }
                }
            }
        }
    }

    /// A cluster Envoy took anew warms until it gets its endpoints again: those of every
    /// cluster that changed from `before` count as not sent, so they go out even when
    /// they are the same.
    fn rewarm(&mut self, before: &BTreeMap<String, Any>) {
        let changed: Vec<String> = self.types[CLUSTER]
            .acked
            .iter()
            .filter(|(n, v)| before.get(*n).is_some_and(|old| old != *v))
            .map(|(n, _)| n.clone())
            .collect();
        if let Some(endpoints) = self.types.get_mut(ENDPOINTS) {
            for n in changed {
                endpoints.acked.remove(&n);
            }
        }
    }

    /// The resources of the current routing for this node.
    fn retarget(
        &mut self,
        routing: &weir_proxy::Routing,
        settings: &Option<Arc<EnvoySettings>>,
        fleet: &Fleet,
    ) {
        let Some(settings) = settings else {
            return;
        };
        let same_settings = self
            .made_with
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, settings));
        let known = routing.version == self.version || self.untranslatable == Some(routing.version);
        if known && same_settings {
            return;
        }
        self.made_with = Some(settings.clone());
        match translate(routing, settings, self.listen.as_deref()) {
            Ok(r) => {
                self.desired = r;
                self.version = routing.version;
                self.untranslatable = None;
                for t in self.types.values_mut() {
                    t.refused = None;
                }
            }
            Err(p) => {
                self.untranslatable = Some(routing.version);
                tracing::error!(node = %self.name, error = %p, "the routing cannot be translated for Envoy; the node keeps what it has");
                fleet.envoy_refused(&self.name, self.session, &p.0);
            }
        }
    }

    /// What to send now, make before break; and whether the node serves the version.
    fn advance(&mut self, fleet: &Fleet) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        if self.version == 0 {
            return out;
        }
        let d = self.desired.clone();
        let routed = self.done(LISTENERS, &d) && self.done(ROUTES, &d);
        // Clusters: the new beside the old until the routes moved, then the new alone.
        let mut clusters = d.clusters.clone();
        if !routed {
            for (k, v) in &self.types[CLUSTER].acked {
                clusters.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if !self.offer(CLUSTER, clusters, &mut out) {
            return out;
        }
        // Endpoints of every cluster the node asked for.
        let asked = self.types[ENDPOINTS].subscribed.clone().unwrap_or_default();
        let endpoints: BTreeMap<String, Any> = asked
            .iter()
            .filter_map(|n| {
                let v = d
                    .endpoints
                    .get(n)
                    .or_else(|| self.types[ENDPOINTS].acked.get(n))?;
                Some((n.clone(), v.clone()))
            })
            .collect();
        if !self.offer(ENDPOINTS, endpoints, &mut out) {
            return out;
        }
        let warm = d
            .endpoints
            .iter()
            .all(|(n, v)| self.types[ENDPOINTS].acked.get(n) == Some(v));
        if !warm {
            return out;
        }
        if !self.offer(LISTENERS, d.listeners.clone(), &mut out) || !self.done(LISTENERS, &d) {
            return out;
        }
        let routes_asked = self.types[ROUTES].subscribed.clone().unwrap_or_default();
        let routes: BTreeMap<String, Any> = d
            .routes
            .iter()
            .filter(|(n, _)| routes_asked.contains(*n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        if !self.offer(ROUTES, routes, &mut out) {
            return out;
        }
        if self.types[CLUSTER].acked == d.clusters
            && self.done(LISTENERS, &d)
            && (d.listeners.is_empty() || self.done(ROUTES, &d))
        {
            fleet.envoy_applied(&self.name, self.session, self.version);
        }
        out
    }

    /// Sends what `advance` made, counting it as pushed.
    fn sent(&self, fleet: &Fleet, out: &[DiscoveryResponse]) {
        for r in out {
            fleet.pushed(&self.name, self.session, self.version, r.encoded_len());
        }
    }

    /// True when the node has every resource of `type_url` it should.
    fn done(&self, type_url: &str, d: &Resources) -> bool {
        let t = &self.types[type_url];
        match type_url {
            ROUTES => {
                let asked = t.subscribed.clone().unwrap_or_default();
                d.routes
                    .iter()
                    .filter(|(n, _)| asked.contains(*n))
                    .all(|(n, v)| t.acked.get(n) == Some(v))
                    && !asked.is_empty()
            }
            _ => t.acked == *d.of(type_url),
        }
    }

    /// Sends `resources` of `type_url` unless the node has them, refused them, has not
    /// asked yet, or an answer is awaited. True when nothing of this type is in flight.
    fn offer(
        &mut self,
        type_url: &'static str,
        resources: BTreeMap<String, Any>,
        out: &mut Vec<DiscoveryResponse>,
    ) -> bool {
        let version = self.version;
        let nonce = {
            self.nonce += 1;
            self.nonce.to_string()
        };
        let t = self
            .types
            .get_mut(type_url)
            .expect("every type has an exchange");
        if t.sent.is_some() {
            return false;
        }
        if t.subscribed.is_none() || t.acked == resources || t.refused.as_ref() == Some(&resources)
        {
            return true;
        }
        let response = DiscoveryResponse {
            version_info: version.to_string(),
            resources: resources.values().cloned().collect(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            ..DiscoveryResponse::default()
        };
        t.sent = Some((nonce, resources));
        out.push(response);
        false
    }
}

#[cfg(test)]
#[path = "ads_tests.rs"]
mod tests;
