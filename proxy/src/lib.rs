//! weir's data plane: an L7 proxy that splits traffic between versions of a service by
//! weight or by header/cookie match, mirrors to shadow versions, and measures each
//! version itself.
//!
//! [`Proxy`] is the handle the binary and the controller use: serve, change traffic (a
//! [`RoutingDelta`] of [`ServiceRouting`] snapshots, each change atomic) and read
//! measurements ([`VersionHandle`]). Everything else is private to the crate.
#![forbid(unsafe_code)]

mod activity;
mod admin;
mod backends;
mod body;
pub mod config;
mod dns;
mod error;
mod exchange;
mod handler;
mod headers;
mod measure;
mod mirror;
pub mod redact;
mod route;
pub mod routing;
mod server;
mod split;
mod state;
mod timeouts;
pub mod tls;
mod tunnel;
mod upstream;
mod workers;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use admin::{AdminBody, AdminPages};
pub use config::{ConfigError, ConfigErrors, ProxyConfig};
pub use error::{ErrorKind, Side};
pub use measure::{
    counter_vec, envoy_cluster_name, gauge_vec, histogram_vec, register, DeltaCursor, DeltaError,
    Families, MeasurementDelta, VersionHandle, VersionSnapshot, Window, ENVOY_BUCKETS_MS,
};
pub use routing::{
    MirrorPolicy, Routing, RoutingDelta, RoutingError, RoutingErrors, Segment, SegmentTarget,
    ServiceRouting, TrafficPolicy,
};
pub use server::{BindError, Listener};

use state::ProxyState;

/// A handle to a running (or ready to run) proxy. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<ProxyState>,
}

impl Proxy {
    /// Builds a proxy from a config; nothing listens until [`Proxy::serve`].
    pub fn new(config: ProxyConfig) -> Result<Proxy, ConfigErrors> {
        Ok(Proxy {
            state: Arc::new(ProxyState::new(config)?),
        })
    }

    /// The listeners' part of the config (its services are the routing's).
    pub fn listeners(&self) -> ProxyConfig {
        self.state.listeners()
    }

    /// The routing being served: every service's snapshot and the routing version.
    pub fn routing(&self) -> Arc<Routing> {
        self.state.routing()
    }

    /// Applies a routing delta atomically; on error nothing changes.
    pub fn commit(&self, delta: RoutingDelta) -> Result<(), RoutingErrors> {
        self.state.commit(delta)
    }

    /// Replaces one service's routing (or adds it) as the next routing version.
    pub fn set_service(&self, service: ServiceRouting) -> Result<u64, RoutingErrors> {
        let version = self.routing().version + 1;
        let delta = RoutingDelta {
            version,
            full: false,
            services: vec![Arc::new(ServiceRouting { version, ..service })],
            removed: Vec::new(),
        };
        self.commit(delta).map(|()| version)
    }

    /// Takes a reloaded file's listener part: its trusted proxies now; listener addresses,
    /// TLS and limits only on restart (what `/config` shows follows the file).
    pub fn set_listeners(&self, config: &ProxyConfig) {
        self.state.set_listeners(config);
    }

    /// Serves a reloaded file (no controller): its services replace the routing, its
    /// trusted proxies take effect; listener addresses, TLS and limits only on restart.
    pub fn apply(&self, config: ProxyConfig) -> Result<(), RoutingErrors> {
        let version = self.routing().version + 1;
        let routing = state::compiled(&config, version);
        self.commit(routing.delta_from(None))?;
        self.state.set_listeners(&config);
        Ok(())
    }

    /// The measurements of one version, valid while the version exists.
    pub fn version(&self, service: &str, version: &str) -> Option<VersionHandle> {
        self.state.backends.handle(service, version)
    }

    /// What every version measured since `cursor`'s last look (a replica's report).
    pub fn measurement_deltas(&self, cursor: &mut DeltaCursor) -> Vec<MeasurementDelta> {
        self.families().deltas(cursor)
    }

    /// Adds what a replica measured to the same version here; `Ok(false)` when this
    /// proxy has no such version.
    pub fn merge_measurements(&self, delta: &MeasurementDelta) -> Result<bool, DeltaError> {
        self.families().merge(delta)
    }

    /// A replica that has no routing from its controller yet answers `/ready` with 503
    /// until this is turned off.
    pub fn set_awaiting_routing(&self, waiting: bool) {
        self.state
            .awaiting_routing
            .store(waiting, std::sync::atomic::Ordering::SeqCst);
    }

    /// The metric families (the controller registers its own next to them).
    pub fn families(&self) -> &Families {
        &self.state.backends.families
    }

    /// Counts and logs the outcome of a reload (`weir_config_reloads_total{result}`, one
    /// error line per problem).
    /// `result` holds every problem of a rejected reload.
    pub fn record_reload(&self, path: &Path, result: &Result<(), Vec<String>>) {
        let families = self.families();
        match result {
            Ok(()) => {
                families.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(path = %path.display(), "config reloaded");
            }
            Err(errors) => {
                families.reloads.with_label_values(&["error"]).inc();
                for e in errors {
                    tracing::error!(path = %path.display(), error = %e, "config reload rejected");
                }
                tracing::error!(path = %path.display(), errors = errors.len(), "config reload rejected; keeping the running config");
            }
        }
    }

    /// A version's endpoints as configured, and where its requests go now (a hostname
    /// endpoint's resolved addresses); None when there is no such version.
    pub fn addresses(&self, service: &str, version: &str) -> Option<(Vec<String>, Vec<String>)> {
        let table = self.state.table.load();
        let v = table
            .service(service)?
            .versions
            .iter()
            .find(|v| v.name == version)?;
        Some((
            v.upstream.settings.endpoints.clone(),
            v.upstream.addresses(),
        ))
    }

    /// The effective routes and weights as JSON (what `/config` serves).
    pub fn config_json(&self) -> serde_json::Value {
        admin::config_json(&self.state)
    }

    /// Adds what `f` returns to `/config` (secrets redacted there).
    pub fn describe_with(&self, f: impl Fn() -> serde_json::Value + Send + Sync + 'static) {
        self.state.set_describe(Arc::new(f));
    }

    /// Binds the proxy listeners of the config (`listen`, then `listeners`), reading their
    /// certificates; they are watched for changes from here on.
    pub async fn bind(&self) -> Result<Vec<Listener>, BindError> {
        let cfg = self.state.listeners();
        let mut out = vec![Listener::bind("listen", &cfg.listen, cfg.tls.as_ref()).await?];
        for (i, l) in cfg.listeners.iter().enumerate() {
            let field = format!("listeners[{i}]");
            out.push(Listener::bind(&field, &l.address, l.tls.as_ref()).await?);
        }
        for l in &out {
            if let Some(tls) = l.tls() {
                self.watch_tls(tls);
            }
        }
        Ok(out)
    }

    /// Re-reads `tls`'s files when they change (every [`tls::WATCH_EVERY`]) and on
    /// [`Proxy::reload_tls`], with every other certificate the proxy uses.
    pub fn watch_tls(&self, tls: &Arc<tls::ServerTls>) {
        self.state.backends.tls.add_server(tls);
    }

    /// Starts watching certificate files (serving does it too): for a process that
    /// serves no proxy listener, a controller with a TLS control API.
    pub fn watch_files(&self) {
        self.state.backends.tls.start();
    }

    /// Re-reads every certificate file now (SIGHUP): changed ones are swapped in, bad
    /// ones keep the previous certificates and are logged and counted.
    pub fn reload_tls(&self) {
        self.state.backends.tls.reload_all(true);
    }

    /// True once shutdown has begun.
    pub fn draining(&self) -> bool {
        self.state
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Serves proxy traffic (plaintext) on `listener` until `shutdown` resolves, then drains.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.serve_listeners(vec![Listener::plain(listener)], shutdown)
            .await
    }

    /// Serves proxy traffic on every listener until `shutdown` resolves, then drains.
    pub async fn serve_listeners(
        &self,
        listeners: Vec<Listener>,
        shutdown: impl Future<Output = ()>,
    ) {
        self.state.backends.tls.start();
        server::serve(self.state.clone(), listeners, shutdown).await
    }

    /// Serves the admin endpoints on `listener` until `shutdown` resolves.
    pub async fn serve_admin(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.serve_admin_with(listener, None, shutdown).await
    }

    /// Serves the admin endpoints and `pages` on `listener` until `shutdown` resolves.
    pub async fn serve_admin_with(
        &self,
        listener: TcpListener,
        pages: Option<Arc<dyn AdminPages>>,
        shutdown: impl Future<Output = ()>,
    ) {
        admin::serve(
            self.state.clone(),
            admin::Endpoints::Admin,
            pages,
            listener,
            shutdown,
        )
        .await
    }

    /// Serves `/metrics`, `/ready` and `/live` (no `/config`) until `shutdown` resolves.
    pub async fn serve_metrics(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        admin::serve(
            self.state.clone(),
            admin::Endpoints::Metrics,
            None,
            listener,
            shutdown,
        )
        .await
    }
}
