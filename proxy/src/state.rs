//! The proxy's state: the route table read by every request, the backends that outlive
//! it, and the desired configuration (the file's services, the versions set since, the
//! controller's policies) from which a change builds the next table.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::backends::Backends;
use crate::config::{
    validate, ConfigError, ConfigErrors, Limits, ProxyConfig, ServiceConfig, VersionConfig,
};
use crate::policy::{self, TrafficPolicy};
use crate::route::{build_service, RouteTable, Service};
use crate::timeouts::UploadLimits;

/// A set of changes applied at once: one validation, one build of the services they
/// touch, one swap. Nothing changes when any part is invalid.
#[derive(Debug, Clone, Default)]
pub struct Change {
    config: Option<ProxyConfig>,
    versions: Vec<(String, String, VersionConfig)>,
    policies: Vec<(String, Option<TrafficPolicy>)>,
}

impl Change {
    /// An empty change.
    pub fn new() -> Change {
        Change::default()
    }

    /// Replaces the services (a reloaded file); the policies of services that remain are
    /// kept. Listener addresses and limits only take effect on restart.
    pub fn config(mut self, config: ProxyConfig) -> Change {
        self.config = Some(config);
        self
    }

    /// Sets one version of a service (its endpoints, revision and settings).
    pub fn version(mut self, service: &str, version: &str, settings: VersionConfig) -> Change {
        self.versions
            .push((service.to_string(), version.to_string(), settings));
        self
    }

    /// Sets (or with None, clears) a service's traffic policy.
    pub fn policy(mut self, service: &str, policy: Option<TrafficPolicy>) -> Change {
        self.policies.push((service.to_string(), policy));
        self
    }
}

/// What the table is built from.
struct Desired {
    config: ProxyConfig,
    policies: HashMap<String, TrafficPolicy>,
}

/// Shared state behind a `Proxy` handle.
pub(crate) struct ProxyState {
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) backends: Backends,
    pub(crate) draining: AtomicBool,
    pub(crate) limits: Limits,
    /// How a client must send its request body (from `limits`).
    pub(crate) upload: UploadLimits,
    /// Serialises changes so read-modify-write changes never interleave.
    desired: Mutex<Desired>,
    /// More of `/config`, from whoever drives the proxy (the controller's analyses).
    describe: Mutex<Option<Describe>>,
    /// Counts the changes applied (each successful commit adds one); watchers wake on it.
    generation: tokio::sync::watch::Sender<u64>,
    /// A replica waiting for its first routing from a controller: `/ready` answers 503.
    pub(crate) awaiting_routing: AtomicBool,
}

/// A function adding to `/config`.
pub(crate) type Describe = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl ProxyState {
    pub(crate) fn new(config: ProxyConfig) -> Result<ProxyState, ConfigErrors> {
        ConfigErrors::check(validate::config(&config))?;
        let backends = Backends::default();
        let services = build_all(&config.services, None, &backends)?;
        let table = RouteTable::new(services, &config.trusted_proxies);
        Ok(ProxyState {
            table: ArcSwap::from_pointee(table),
            backends,
            draining: AtomicBool::new(false),
            limits: config.limits.clone(),
            upload: UploadLimits::new(&config.limits),
            desired: Mutex::new(Desired {
                config,
                policies: HashMap::new(),
            }),
            describe: Mutex::new(None),
            generation: tokio::sync::watch::Sender::new(0),
            awaiting_routing: AtomicBool::new(false),
        })
    }

    /// Wakes on every change applied; the value counts them.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Sets what `/config` shows besides the proxy's own config.
    pub(crate) fn set_describe(&self, f: Describe) {
        *self.describe.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    pub(crate) fn describe(&self) -> Option<Describe> {
        self.describe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The effective config: the file's services as they route now.
    pub(crate) fn config(&self) -> ProxyConfig {
        let desired = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        let table = self.table.load();
        ProxyConfig {
            services: table.services.iter().map(|s| s.config.clone()).collect(),
            ..desired.config.clone_listeners()
        }
    }

    /// Applies a change atomically.
    pub(crate) fn commit(&self, change: Change) -> Result<(), ConfigErrors> {
        let mut desired = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table.load_full();
        let result = match change.config {
            Some(config) => self.replace(
                &mut desired,
                &current,
                config,
                change.versions,
                change.policies,
            ),
            None => self.edit(&mut desired, &current, change.versions, change.policies),
        };
        if result.is_ok() {
            // Under the lock: watchers see changes in the order they were applied.
            self.generation.send_modify(|g| *g += 1);
        }
        result
    }

    /// A new set of services: everything is validated, services whose effective config
    /// is unchanged keep their built form.
    fn replace(
        &self,
        desired: &mut Desired,
        current: &RouteTable,
        mut config: ProxyConfig,
        versions: Vec<(String, String, VersionConfig)>,
        edits: Vec<(String, Option<TrafficPolicy>)>,
    ) -> Result<(), ConfigErrors> {
        let mut policies: HashMap<String, TrafficPolicy> = desired
            .policies
            .iter()
            .filter(|(s, _)| config.service(s).is_some())
            .map(|(s, p)| (s.clone(), p.clone()))
            .collect();
        for (service, version, settings) in versions {
            find(&mut config.services, &service)?
                .1
                .versions
                .insert(version, settings);
        }
        for (service, policy) in edits {
            find(&mut config.services, &service)?;
            match policy {
                Some(p) => policies.insert(service, p),
                None => policies.remove(&service),
            };
        }
        let mut check = config.clone();
        for svc in &mut check.services {
            if let Some(p) = policies.get(&svc.name) {
                *svc = policy::effective(svc, p);
            }
        }
        ConfigErrors::check(validate::config(&check))?;
        let services = build_all(&check.services, Some(current), &self.backends)?;
        let table = RouteTable::new(services, &config.trusted_proxies);
        self.table.store(Arc::new(table));
        self.backends.retain(check.services.iter());
        *desired = Desired { config, policies };
        Ok(())
    }

    /// Versions and policies of some services: only those are validated and rebuilt.
    fn edit(
        &self,
        desired: &mut Desired,
        current: &RouteTable,
        versions: Vec<(String, String, VersionConfig)>,
        edits: Vec<(String, Option<TrafficPolicy>)>,
    ) -> Result<(), ConfigErrors> {
        let mut bases: HashMap<String, (usize, ServiceConfig)> = HashMap::new();
        let mut policies: HashMap<String, Option<TrafficPolicy>> = HashMap::new();
        for (service, version, settings) in versions {
            base(&desired.config, current, &mut bases, &service)?
                .1
                .versions
                .insert(version, settings);
        }
        for (service, policy) in edits {
            base(&desired.config, current, &mut bases, &service)?;
            policies.insert(service, policy);
        }
        let mut errors = Vec::new();
        let mut built = Vec::new();
        for (name, (i, svc)) in &bases {
            let policy = match policies.get(name) {
                Some(p) => p.as_ref(),
                None => desired.policies.get(name),
            };
            let effective = match policy {
                Some(p) => policy::effective(svc, p),
                None => svc.clone(),
            };
            let p = format!("services[{i}]");
            let before = errors.len();
            validate::service(&effective, &p, &mut errors);
            if errors.len() > before {
                continue;
            }
            match build_service(&effective, &p, &self.backends) {
                Ok(s) => built.push((*i, Arc::new(s))),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            errors.sort_by(|a, b| a.path.cmp(&b.path));
            return Err(ConfigErrors(errors));
        }
        let mut services = current.services.clone();
        for (i, s) in built {
            s.publish_weights();
            services = services.with(i, s);
        }
        self.table.store(Arc::new(RouteTable {
            services,
            hosts: current.hosts.clone(),
            trusted: current.trusted.clone(),
        }));
        for (name, (i, svc)) in bases {
            desired.config.services[i] = svc;
            match policies.remove(&name) {
                Some(Some(p)) => {
                    desired.policies.insert(name, p);
                }
                Some(None) => {
                    desired.policies.remove(&name);
                }
                None => {}
            }
        }
        Ok(())
    }
}

impl ProxyConfig {
    /// The listener part, without services.
    fn clone_listeners(&self) -> ProxyConfig {
        ProxyConfig {
            listen: self.listen.clone(),
            tls: self.tls.clone(),
            listeners: self.listeners.clone(),
            admin: self.admin.clone(),
            metrics: self.metrics.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            limits: self.limits.clone(),
            services: Vec::new(),
        }
    }
}

fn unknown(service: &str) -> ConfigErrors {
    ConfigErrors::one("services", format!("unknown service {service:?}"))
}

fn find<'c>(
    services: &'c mut [ServiceConfig],
    name: &str,
) -> Result<(usize, &'c mut ServiceConfig), ConfigErrors> {
    services
        .iter_mut()
        .enumerate()
        .find(|(_, s)| s.name == name)
        .ok_or_else(|| unknown(name))
}

/// The working copy of one service's base config in an edit.
fn base<'b>(
    config: &ProxyConfig,
    current: &RouteTable,
    bases: &'b mut HashMap<String, (usize, ServiceConfig)>,
    name: &str,
) -> Result<(usize, &'b mut ServiceConfig), ConfigErrors> {
    if !bases.contains_key(name) {
        // The table's services are the file's, in the file's order.
        let i = current
            .services
            .position(name)
            .filter(|i| config.services.get(*i).is_some_and(|s| s.name == name))
            .ok_or_else(|| unknown(name))?;
        bases.insert(name.to_string(), (i, config.services[i].clone()));
    }
    let (i, svc) = bases.get_mut(name).expect("inserted above");
    Ok((*i, svc))
}

/// Builds every service; one whose effective config equals its built form in `current`
/// is kept as it is.
/// Builds every service from its effective config (policies already laid over it),
/// keeping the current table's service where nothing changed.
fn build_all(
    effective: &[ServiceConfig],
    current: Option<&RouteTable>,
    backends: &Backends,
) -> Result<Vec<Arc<Service>>, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut out = Vec::with_capacity(effective.len());
    for (i, svc) in effective.iter().enumerate() {
        let kept = current
            .and_then(|t| t.service(&svc.name))
            .filter(|s| s.config == *svc);
        if let Some(s) = kept {
            out.push(s.clone());
            continue;
        }
        match build_service(svc, &format!("services[{i}]"), backends) {
            Ok(s) => out.push(Arc::new(s)),
            Err(mut e) => errors.append(&mut e),
        }
    }
    ConfigErrors::check(errors)?;
    Ok(out)
}
