//! weir's data plane: an L7 proxy that splits traffic between versions of a service by
//! weight or by header/cookie match, and measures each version itself.
//!
//! The route table is immutable and swapped whole; [`Proxy`] is the handle the binary and
//! the controller use to serve, reload, change weights and read measurements.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod config;
pub mod headers;
pub mod measure;
pub mod mirror;
pub mod pool;
pub mod route;
pub mod server;
pub mod split;
pub mod upstream;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::measure::VersionMetrics;

use arc_swap::ArcSwap;
use indexmap::IndexMap;
use tokio::net::TcpListener;

pub use config::{Config, ConfigError, ConfigErrors, MirrorConfig, RouteConfig};
pub use measure::{FailureReason, VersionSnapshot, Window};
pub use route::RouteTable;

/// Shared state behind a [`Proxy`] handle.
pub struct Inner {
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) resources: route::Resources,
    pub(crate) draining: AtomicBool,
    pub(crate) limits: config::Limits,
    /// Serialises writers so read-modify-write changes never interleave.
    write: Mutex<()>,
}

/// A handle to a running (or ready to run) proxy. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl Proxy {
    /// Builds a proxy from a config; nothing listens until [`Proxy::serve`].
    pub fn new(config: Config) -> Result<Proxy, ConfigErrors> {
        let resources = route::Resources::new();
        let table = resources.build(&config)?;
        Ok(Proxy {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(table),
                resources,
                draining: AtomicBool::new(false),
                limits: config.limits.clone(),
                write: Mutex::new(()),
            }),
        })
    }

    /// The current route table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.inner.table.load_full()
    }

    /// The effective config (the file plus every change made through this API).
    pub fn config(&self) -> Arc<Config> {
        self.table().config.clone()
    }

    /// The metric families (the controller registers its own next to them).
    pub fn families(&self) -> &measure::Families {
        &self.inner.resources.families
    }

    /// Replaces the whole config atomically. On error nothing changes.
    /// Listener addresses and limits only take effect on restart.
    pub fn apply(&self, config: Config) -> Result<(), ConfigErrors> {
        self.update(|c| {
            *c = config;
            Ok(())
        })
    }

    /// Edits a copy of the effective config and swaps it in whole if it is valid.
    pub fn update(
        &self,
        edit: impl FnOnce(&mut Config) -> Result<(), ConfigErrors>,
    ) -> Result<(), ConfigErrors> {
        let _writer = self.inner.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = (*self.config()).clone();
        edit(&mut next)?;
        let table = self.inner.resources.build(&next)?;
        self.inner.table.store(Arc::new(table));
        Ok(())
    }

    /// Sets the weights of a service's weighted split (every `split` rule; or the first
    /// rule without a match condition when there is no split yet), atomically.
    pub fn set_weights(&self, service: &str, weights: &[(&str, u32)]) -> Result<(), ConfigErrors> {
        let split: IndexMap<String, u32> =
            weights.iter().map(|(v, w)| (v.to_string(), *w)).collect();
        self.update(|c| {
            for route in config::weighted_rules(&mut find_service(c, service)?.routes) {
                route.split = Some(split.clone());
            }
            Ok(())
        })
    }

    /// Sets the split weights and the mirror of a service's weighted rules in one atomic
    /// change (the controller's blue/green-with-mirroring and mirror pre-step use it);
    /// `mirror: None` turns mirroring off.
    pub fn set_traffic(
        &self,
        service: &str,
        weights: &[(&str, u32)],
        mirror: Option<config::MirrorConfig>,
    ) -> Result<(), ConfigErrors> {
        let split: IndexMap<String, u32> =
            weights.iter().map(|(v, w)| (v.to_string(), *w)).collect();
        self.update(|c| {
            for route in config::weighted_rules(&mut find_service(c, service)?.routes) {
                route.split = Some(split.clone());
                route.mirror = mirror.clone();
            }
            Ok(())
        })
    }

    /// Replaces one version of a service (its endpoints and settings) atomically.
    pub fn set_version(
        &self,
        service: &str,
        version: &str,
        settings: config::VersionConfig,
    ) -> Result<(), ConfigErrors> {
        self.update(|c| {
            find_service(c, service)?
                .versions
                .insert(version.to_string(), settings);
            Ok(())
        })
    }

    /// Replaces a service's rules atomically.
    pub fn set_routes(&self, service: &str, routes: Vec<RouteConfig>) -> Result<(), ConfigErrors> {
        self.update(|c| {
            find_service(c, service)?.routes = routes;
            Ok(())
        })
    }

    /// The measurements of one version's users' (`mirrored: false`) or shadow
    /// (`mirrored: true`) traffic.
    fn version_metrics(
        &self,
        service: &str,
        version: &str,
        mirrored: bool,
    ) -> Option<Arc<VersionMetrics>> {
        let table = self.table();
        let svc = table.services().iter().find(|s| s.name == service)?;
        let v = svc.versions.iter().find(|v| v.name == version)?;
        Some(if mirrored {
            v.mirror_metrics.clone()
        } else {
            v.metrics.clone()
        })
    }

    /// Cumulative measurements of one service version.
    pub fn snapshot(&self, service: &str, version: &str) -> Option<VersionSnapshot> {
        self.measurements(service, version, false)
    }

    /// Cumulative measurements of one version's users' (`mirrored: false`) or shadow
    /// (`mirrored: true`) traffic.
    pub fn measurements(
        &self,
        service: &str,
        version: &str,
        mirrored: bool,
    ) -> Option<VersionSnapshot> {
        Some(self.version_metrics(service, version, mirrored)?.snapshot())
    }

    /// Cumulative (responses, 5xx responses) of one version, cheap enough to poll often.
    pub fn counts(&self, service: &str, version: &str, mirrored: bool) -> Option<(u64, u64)> {
        Some(self.version_metrics(service, version, mirrored)?.counts())
    }

    /// Re-reads a config file; an invalid file is rejected with all its errors logged,
    /// the running config is kept and `weir_config_reload_failures_total` counts it.
    pub fn reload_from(&self, path: &Path) -> Result<(), ConfigErrors> {
        let result = Config::load(path).and_then(|cfg| {
            let old = self.config();
            if cfg.listen != old.listen || cfg.admin != old.admin || cfg.limits != old.limits {
                tracing::warn!("listen, admin and limits changes take effect on restart");
            }
            self.apply(cfg)
        });
        self.record_reload(path, &result);
        result
    }

    /// Counts and logs the outcome of a reload (`weir_config_reloads_total`,
    /// `weir_config_reload_failures_total`, one error line per problem).
    pub fn record_reload(&self, path: &Path, result: &Result<(), ConfigErrors>) {
        let families = self.families();
        match result {
            Ok(()) => {
                families.reloads.inc();
                tracing::info!(path = %path.display(), "config reloaded");
            }
            Err(errors) => {
                families.reload_failures.inc();
                for e in &errors.0 {
                    tracing::error!(path = %path.display(), error = %e, "config reload rejected");
                }
                tracing::error!(path = %path.display(), errors = errors.0.len(), "config reload rejected; keeping the running config");
            }
        }
    }

    /// The effective routes and weights as JSON (what `/config` serves).
    pub fn config_json(&self) -> serde_json::Value {
        admin::config_json(&self.inner)
    }

    /// True once shutdown has begun.
    pub fn draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Serves proxy traffic on `listener` until `shutdown` resolves, then drains.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        server::serve(self.inner.clone(), listener, shutdown).await
    }

    /// Serves the admin endpoints on `listener` until `shutdown` resolves.
    pub async fn serve_admin(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        admin::serve(self.inner.clone(), listener, shutdown).await
    }
}

fn find_service<'c>(
    c: &'c mut Config,
    name: &str,
) -> Result<&'c mut config::ServiceConfig, ConfigErrors> {
    c.services
        .iter_mut()
        .find(|s| s.name == name)
        .ok_or_else(|| ConfigErrors::one("services", format!("unknown service {name:?}")))
}
