//! Envoy as a data plane: the controller's routing translated into Envoy's discovery
//! resources (clusters and their endpoints, a listener, the routes) and served over ADS on
//! the control port (`ads`), and Envoy's own per-cluster counters and latency histograms,
//! pushed by its metrics-service stat sink, added to the same per-version measurements
//! weir's replicas feed (`stats`). What weir.yaml can say that Envoy cannot do is named by
//! `check`.

mod ads;
pub mod check;
mod clusters;
mod listener;
mod routes;
mod stats;

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    config_source, data_source, transport_socket, AggregatedConfigSource, ApiVersion, ConfigSource,
    DataSource, TransportSocket,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use envoy_types::util::pack_any;
use serde::{Deserialize, Serialize};
use weir_proxy::config::{Limits, ListenerTls};
use weir_proxy::{Routing, ServiceRouting};

pub use ads::AdsService;
pub use clusters::SYSTEM_CAS;
pub use stats::StatsService;

/// The route configuration every node's listener takes over RDS.
pub const ROUTE_CONFIG: &str = "weir";
/// The listener's name.
pub const LISTENER: &str = "weir";
/// The upgrades a route may allow (each route enables its own).
pub const UPGRADES: [&str; 2] = ["websocket", "connect-udp"];

/// Type URLs of the resources served, in the order a change reaches a node.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENERS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTES: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// `envoy:` in weir.yaml: Envoy nodes may take their routing from this controller.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfig {
    /// Where a node listens when its bootstrap names no address (`weir bootstrap envoy
    /// --listen` puts one in the node's metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// What the translation needs besides the routing: the `envoy:` block and the listener
/// part of weir.yaml (TLS, limits), as the file last said.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoySettings {
    pub envoy: EnvoyConfig,
    pub tls: Option<ListenerTls>,
    pub limits: Limits,
}

/// What a translation cannot do, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem(pub String);

impl Problem {
    pub fn new(p: impl Into<String>) -> Problem {
        Problem(p.into())
    }

    /// The problem under `what` (`rule 2: ...`).
    pub fn at(self, what: &str) -> Problem {
        Problem(format!("{what}: {}", self.0))
    }

    /// The problem of service `name`.
    pub fn of(self, name: &str) -> Problem {
        Problem(format!("service {name}: {}", self.0))
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node's resources, by type and name, each packed as Envoy receives it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub clusters: BTreeMap<String, Any>,
    pub endpoints: BTreeMap<String, Any>,
    pub listeners: BTreeMap<String, Any>,
    pub routes: BTreeMap<String, Any>,
}

impl Resources {
    /// The resources of one type.
    pub fn of(&self, type_url: &str) -> &BTreeMap<String, Any> {
        match type_url {
            CLUSTER => &self.clusters,
            ENDPOINTS => &self.endpoints,
            LISTENERS => &self.listeners,
            _ => &self.routes,
        }
    }
}

/// The routing as a node listening on `listen` serves it.
pub fn translate(
    routing: &Routing,
    settings: &EnvoySettings,
    listen: Option<&str>,
) -> Result<Resources, Problem> {
    let mut out = Resources::default();
    for svc in routing.services.values() {
        for (version, v) in &svc.versions {
            let name = cluster_name(svc, version);
            let c = clusters::cluster(version, v, &name).map_err(|p| p.of(&svc.name))?;
            if let Some(e) = c.endpoints {
                out.endpoints.insert(name.clone(), pack_any(e));
            }
            out.clusters.insert(name, pack_any(c.cluster));
        }
    }
    if let Some(addr) = listen.or(settings.envoy.listen.as_deref()) {
        let l = listener::listener(addr, settings.tls.as_ref(), &settings.limits)?;
        out.listeners.insert(LISTENER.into(), pack_any(l));
    }
    let rc = routes::route_configuration(routing)?;
    out.routes.insert(ROUTE_CONFIG.into(), pack_any(rc));
    Ok(out)
}

/// An `ip:port` a node can listen on, or why not.
pub fn check_listen(addr: &str) -> Result<(), String> {
    weir_proxy::config::socket_addr(addr).map(|_| ())
}

/// The Envoy cluster of a version: `<namespace>_<service>-<version>_<port>` as weir's own
/// Envoy families name it, with no dot (Envoy's tag extraction splits names on dots).
pub fn cluster_name(svc: &ServiceRouting, version: &str) -> String {
    weir_proxy::envoy_cluster_name(&svc.namespace, &svc.name, version, svc.port).replace('.', "-")
}

/// Resources of every type come over the node's one ADS stream.
fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    }
}

fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A file's contents inline (the node needs no copy of weir's files); `field` names it
/// when it cannot be read.
fn data(path: &str, field: &str) -> Result<DataSource, Problem> {
    let bytes = std::fs::read(path)
        .map_err(|e| Problem::new(format!("{field}: cannot read {path}: {e}")))?;
    Ok(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..DataSource::default()
    })
}

/// A file on the node itself.
fn file_source(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..DataSource::default()
    }
}

fn tls_socket(context: Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(context)),
    }
}
