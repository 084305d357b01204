//! `NodeSync` against a simulated Envoy node: requests in, responses out, no network.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use weir_proxy::config::Limits;
use weir_proxy::{Proxy, ProxyConfig, Routing, ServiceRouting};

use super::NodeSync;
use crate::fleet::Fleet;
use crate::routes::Routes;
use crate::xds::{EnvoyConfig, EnvoySettings, CLUSTER, ENDPOINTS, LISTENERS, ROUTES, ROUTE_CONFIG};

const NODE: &str = "gw-1";
const LISTEN: &str = "127.0.0.1:10000";
const PRIMARY: &str = "test_shop-primary_8080";
const CANARY: &str = "test_shop-canary_8080";
const NEXT: &str = "test_shop-next_8080";

/// The shop service with these versions (`name: endpoint`) and routes.
fn routing(version: u64, versions: &[(&str, &str)], routes: &str) -> Routing {
    let versions: Vec<String> = versions
        .iter()
        .map(|(name, ep)| format!("      {name}: {{ endpoints: [\"{ep}\"] }}\n"))
        .collect();
    routing_of(version, &versions.concat(), routes)
}

/// The shop service with its `versions:` block as written, and routes.
fn routing_of(version: u64, versions: &str, routes: &str) -> Routing {
    let yaml = format!(
        "services:\n  - name: shop\n    namespace: test\n    port: 8080\n    versions:\n{versions}{routes}"
    );
    let cfg = ProxyConfig::parse(&yaml).expect("valid test config");
    Routing {
        version,
        services: cfg
            .services
            .iter()
            .map(|s| (s.name.clone(), Arc::new(ServiceRouting::from_config(s))))
            .collect(),
    }
}

fn primary_only(version: u64) -> Routing {
    routing(version, &[("primary", "127.0.0.1:1")], "")
}

fn split(version: u64, canary: u32) -> Routing {
    routing(
        version,
        &[("primary", "127.0.0.1:1"), ("canary", "127.0.0.1:2")],
        &format!(
            "    routes:\n      - split: {{ primary: {}, canary: {canary} }}\n",
            100 - canary
        ),
    )
}

/// A controller's fleet, as `weir control` starts it.
fn fleet() -> Arc<Fleet> {
    let cfg = ProxyConfig::parse("services: []\n").expect("valid empty config");
    let proxy = Proxy::new(cfg).expect("proxy");
    let routes = Arc::new(Routes::new(proxy.clone(), 0));
    Fleet::start(routes, proxy, true)
}

/// The names of a response's resources.
fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|any| {
            let bytes = any.value.as_slice();
            match r.type_url.as_str() {
                CLUSTER => Cluster::decode(bytes).expect("cluster").name,
                ENDPOINTS => {
                    ClusterLoadAssignment::decode(bytes)
                        .expect("assignment")
                        .cluster_name
                }
                LISTENERS => Listener::decode(bytes).expect("listener").name,
                _ => RouteConfiguration::decode(bytes).expect("routes").name,
            }
        })
        .collect()
}

fn type_of(type_url: &str) -> &'static str {
    [CLUSTER, ENDPOINTS, LISTENERS, ROUTES]
        .into_iter()
        .find(|t| *t == type_url)
        .expect("a type weir serves")
}

/// An Envoy node as the ADS stream sees it: it ACKs what it is sent (or NACKs the types
/// it is told to refuse), asks for the endpoints of its clusters and for the routes of
/// its listener, as Envoy does.
struct Envoy {
    sync: NodeSync,
    fleet: Arc<Fleet>,
    settings: Option<Arc<EnvoySettings>>,
    /// Per type: the last nonce received, the last version accepted, the names asked.
    nonce: HashMap<&'static str, String>,
    version: HashMap<&'static str, String>,
    asked: HashMap<&'static str, Vec<String>>,
    refuse: HashSet<&'static str>,
    /// Every response: its type, its resources' names and its nonce.
    log: Vec<(&'static str, Vec<String>, String)>,
}

impl Envoy {
    fn connect(fleet: &Arc<Fleet>) -> Envoy {
        let session = fleet.connected_envoy(NODE, LISTEN).expect("a new node");
        let settings = EnvoySettings {
            envoy: EnvoyConfig::default(),
            tls: None,
            limits: Limits::default(),
        };
        let mut envoy = Envoy {
            sync: NodeSync::new(NODE, session, Some(LISTEN.to_string())),
            fleet: fleet.clone(),
            settings: Some(Arc::new(settings)),
            nonce: HashMap::new(),
            version: HashMap::new(),
            asked: HashMap::new(),
            refuse: HashSet::new(),
            log: Vec::new(),
        };
        envoy.request(CLUSTER, None);
        envoy.request(LISTENERS, None);
        envoy
    }

    fn request(&mut self, type_url: &'static str, error: Option<&str>) {
        let r = DiscoveryRequest {
            version_info: self.version.get(type_url).cloned().unwrap_or_default(),
            resource_names: self.asked.get(type_url).cloned().unwrap_or_default(),
            type_url: type_url.to_string(),
            response_nonce: self.nonce.get(type_url).cloned().unwrap_or_default(),
            error_detail: error.map(|e| RpcStatus {
                code: 3,
                message: e.to_string(),
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        };
        self.sync.received(r, &self.fleet);
    }

    /// What the controller sends now for `routing`, as the stream's loop makes it.
    fn push(&mut self, routing: &Routing) -> Vec<DiscoveryResponse> {
        self.sync.retarget(routing, &self.settings, &self.fleet);
        let out = self.sync.advance(&self.fleet);
        self.sync.sent(&self.fleet, &out);
        for r in &out {
            self.log
                .push((type_of(&r.type_url), names(r), r.nonce.clone()));
        }
        out
    }

    /// The node's answer to a response, and what it asks for next.
    fn answer(&mut self, r: &DiscoveryResponse) {
        let t = type_of(&r.type_url);
        self.nonce.insert(t, r.nonce.clone());
        if self.refuse.contains(t) {
            self.request(t, Some("refused by the test"));
            return;
        }
        self.version.insert(t, r.version_info.clone());
        self.request(t, None);
        match t {
            CLUSTER => {
                self.asked.insert(ENDPOINTS, names(r));
                self.request(ENDPOINTS, None);
            }
            LISTENERS if !self.asked.contains_key(ROUTES) => {
                self.asked.insert(ROUTES, vec![ROUTE_CONFIG.to_string()]);
                self.request(ROUTES, None);
            }
            _ => {}
        }
    }

    /// Exchanges until the controller has nothing more to send.
    fn run(&mut self, routing: &Routing) {
        for _ in 0..50 {
            let out = self.push(routing);
            if out.is_empty() {
                return;
            }
            for r in &out {
                self.answer(r);
            }
        }
        panic!("the exchange did not settle: {:?}", self.log);
    }

    /// The types and names sent since the last call.
    fn sent(&mut self) -> Vec<(&'static str, Vec<String>)> {
        self.log.drain(..).map(|(t, n, _)| (t, n)).collect()
    }

    /// The version the fleet has the node serving, and its error.
    fn standing(&self) -> (u64, String) {
        let list = self.fleet.list();
        let p = list
            .planes
            .iter()
            .find(|p| p.name == NODE)
            .expect("the node is listed");
        (p.version, p.error.clone())
    }
}

fn named(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn a_node_serves_a_version_only_once_every_type_is_acked() {
    let fleet = fleet();
    let mut envoy = Envoy::connect(&fleet);
    let v1 = primary_only(7);
    for expected in [CLUSTER, ENDPOINTS, LISTENERS, ROUTES] {
        let out = envoy.push(&v1);
        assert_eq!(out.len(), 1, "one response at a time");
        assert_eq!(out[0].type_url, expected);
        assert_eq!(out[0].version_info, "7");
        assert_eq!(
            envoy.standing().0,
            0,
            "not serving 7 before {expected} is ACKed"
        );
        envoy.answer(&out[0]);
    }
    assert_eq!(envoy.push(&v1), Vec::new());
    assert_eq!(envoy.standing(), (7, String::new()));
}

#[tokio::test]
async fn a_change_reaches_a_node_make_before_break() {
    let fleet = fleet();
    let mut envoy = Envoy::connect(&fleet);
    envoy.run(&primary_only(1));
    envoy.sent();
    // The service's only version is replaced: its routes move to the new cluster.
    let v2 = routing(2, &[("next", "127.0.0.1:3")], "");
    envoy.run(&v2);
    assert_eq!(
        envoy.sent(),
        [
            // The new cluster beside the old one its routes still use, and their endpoints.
            (CLUSTER, named(&[NEXT, PRIMARY])),
            (ENDPOINTS, named(&[NEXT, PRIMARY])),
            // The routes move once the new cluster is warm.
            (ROUTES, named(&["weir"])),
            // The old cluster goes only once the routes were ACKed.
            (CLUSTER, named(&[NEXT])),
            (ENDPOINTS, named(&[NEXT])),
        ]
    );
    assert_eq!(envoy.standing(), (2, String::new()));
}

#[tokio::test]
async fn a_stale_nonce_is_ignored() {
    let fleet = fleet();
    let mut envoy = Envoy::connect(&fleet);
    envoy.run(&primary_only(1));
    let old_nonce = envoy
        .log
        .iter()
        .find(|(t, _, _)| *t == CLUSTER)
        .map(|(_, _, n)| n.clone())
        .expect("clusters were sent");
    let v2 = split(2, 10);
    let out = envoy.push(&v2);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].type_url, CLUSTER);
    // An answer to the clusters sent before: neither an ACK nor a NACK of the new ones.
    envoy.nonce.insert(CLUSTER, old_nonce);
    envoy.request(CLUSTER, Some("about an older response"));
    assert_eq!(envoy.standing(), (1, String::new()));
    assert_eq!(
        envoy.push(&v2),
        Vec::new(),
        "the new clusters are still awaited"
    );
    envoy.answer(&out[0]);
    envoy.run(&v2);
    assert_eq!(envoy.standing(), (2, String::new()));
}

#[tokio::test]
async fn refused_routes_are_not_sent_again_until_the_routing_changes() {
    let fleet = fleet();
    let mut envoy = Envoy::connect(&fleet);
    envoy.run(&primary_only(1));
    envoy.sent();
    envoy.refuse.insert(ROUTES);
    let v2 = split(2, 10);
    envoy.run(&v2);
    assert_eq!(
        envoy.sent(),
        [
            (CLUSTER, named(&[CANARY, PRIMARY])),
            (ENDPOINTS, named(&[CANARY, PRIMARY])),
            (ROUTES, named(&["weir"])),
        ]
    );
    assert_eq!(envoy.standing(), (1, "refused by the test".to_string()));
    // The node asks again (as after a NACK): the same content is not sent again.
    envoy.request(ROUTES, None);
    assert_eq!(envoy.push(&v2), Vec::new());
    assert_eq!(envoy.standing().0, 1);
    // A new routing is offered.
    envoy.refuse.clear();
    envoy.run(&split(3, 50));
    let sent = envoy.sent();
    assert!(
        sent.contains(&(ROUTES, named(&["weir"]))),
        "the new routes are sent: {sent:?}"
    );
    assert_eq!(envoy.standing(), (3, String::new()));
}

#[tokio::test]
async fn a_changed_cluster_gets_its_endpoints_again_to_finish_warming() {
    let fleet = fleet();
    let mut envoy = Envoy::connect(&fleet);
    envoy.run(&primary_only(1));
    envoy.sent();
    // The same endpoint, another connect timeout: Envoy warms the changed cluster until
    // its endpoints come again.
    let v2 = routing_of(
        2,
        "      primary: { endpoints: [\"127.0.0.1:1\"], connectTimeout: 5s }\n",
        "",
    );
    envoy.run(&v2);
    assert_eq!(
        envoy.sent(),
        [(CLUSTER, named(&[PRIMARY])), (ENDPOINTS, named(&[PRIMARY])),]
    );
    assert_eq!(envoy.standing(), (2, String::new()));
}
