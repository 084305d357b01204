//! The proxy's state: the route table read by every request, the backends that outlive
//! it, the routing it was built from, and the listeners' part of the config. A routing
//! delta is checked and built whole before it replaces anything: nothing changes when
//! any part of it is refused, and a delta that changes one service rebuilds only that one.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::backends::Backends;
use crate::config::{validate, ConfigErrors, Limits, ProxyConfig};
use crate::route::{build_service, RouteTable, Service};
use crate::routing::{Routing, RoutingDelta, RoutingError, RoutingErrors, ServiceRouting};
use crate::timeouts::UploadLimits;

/// Shared state behind a `Proxy` handle.
pub(crate) struct ProxyState {
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) backends: Backends,
    pub(crate) draining: AtomicBool,
    pub(crate) limits: Limits,
    /// How a client must send its request body (from `limits`).
    pub(crate) upload: UploadLimits,
    /// The routing the table was built from; its lock orders commits.
    routing: Mutex<Arc<Routing>>,
    /// The listeners' part of the config (its services are the routing's).
    listeners: Mutex<ProxyConfig>,
    /// More of `/config`, from whoever drives the proxy (the controller's analyses).
    describe: Mutex<Option<Describe>>,
    /// A replica waiting for its first routing from a controller: `/ready` answers 503.
    pub(crate) awaiting_routing: AtomicBool,
}

/// A function adding to `/config`.
pub(crate) type Describe = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl ProxyState {
    /// The proxy of a (validated) config: its services compile into the first routing.
    pub(crate) fn new(config: ProxyConfig) -> Result<ProxyState, ConfigErrors> {
        ConfigErrors::check(validate::config(&config))?;
        let backends = Backends::new(config.resolver.clone());
        let routing = compiled(&config, 0);
        let services = build_all(&routing, None, &backends)
            .map_err(|e| ConfigErrors::one("services", e.to_string()))?;
        let table = RouteTable::new(services, &config.trusted_proxies);
        Ok(ProxyState {
            table: ArcSwap::from_pointee(table),
            backends,
            draining: AtomicBool::new(false),
            limits: config.limits.clone(),
            upload: UploadLimits::new(&config.limits),
            routing: Mutex::new(Arc::new(routing)),
            listeners: Mutex::new(ProxyConfig {
                services: Vec::new(),
                ..config
            }),
            describe: Mutex::new(None),
            awaiting_routing: AtomicBool::new(false),
        })
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

    /// The routing being served.
    pub(crate) fn routing(&self) -> Arc<Routing> {
        self.routing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The listeners' part of the config (no services).
    pub(crate) fn listeners(&self) -> ProxyConfig {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a reloaded file's listener part: the trusted proxies now, the rest (which
    /// needs a restart) only as what `/config` shows.
    pub(crate) fn set_listeners(&self, config: &ProxyConfig) {
        let _order = self.routing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table.load_full();
        self.table.store(Arc::new(RouteTable {
            services: current.services.clone(),
            hosts: current.hosts.clone(),
            trusted: Arc::new(crate::headers::TrustedProxies::parse(
                &config.trusted_proxies,
            )),
        }));
        *self.listeners.lock().unwrap_or_else(|p| p.into_inner()) = ProxyConfig {
            services: Vec::new(),
            ..config.clone()
        };
    }

    /// Applies a routing delta atomically: every changed service is checked and built
    /// first, and nothing changes when any is refused.
    pub(crate) fn commit(&self, delta: RoutingDelta) -> Result<(), RoutingErrors> {
        let mut routing = self.routing.lock().unwrap_or_else(|p| p.into_inner());
        let mut errors: Vec<RoutingError> = delta
            .services
            .iter()
            .filter_map(|s| s.check().err())
            .collect();
        let reshaped = delta.full
            || !delta.removed.is_empty()
            || delta.services.iter().any(|s| {
                routing.services.get(&s.name).is_none_or(|old| {
                    old.hosts != s.hosts || !old.versions.keys().eq(s.versions.keys())
                })
            });
        // A delta that adds, removes or re-hosts a service is checked and built whole; one
        // that changes services in place (a weight step) costs what it changes.
        let next = reshaped.then(|| routing.applied(&delta));
        if let Some(next) = &next {
            errors.extend(host_clashes(next));
        }
        RoutingErrors::check(errors)?;
        let current = self.table.load_full();
        let table = if let Some(next) = &next {
            let services = build_all(next, Some(&current), &self.backends)?;
            RouteTable {
                hosts: Arc::new(crate::route::HostIndex::new(&services)),
                services: crate::route::ServiceList::new(services),
                trusted: current.trusted.clone(),
            }
        } else {
            let mut services = current.services.clone();
            let mut errors = Vec::new();
            for s in &delta.services {
                let Some(i) = current.services.position(&s.name) else {
                    continue;
                };
                match build_service(s, &self.backends) {
                    Ok(built) => services = services.with(i, Arc::new(built)),
                    Err(mut e) => errors.append(&mut e),
                }
            }
            RoutingErrors::check(errors)?;
            RouteTable {
                services,
                hosts: current.hosts.clone(),
                trusted: current.trusted.clone(),
            }
        };
        for s in &delta.services {
            if let Some(built) = table.service(&s.name) {
                built.publish_weights();
            }
        }
        self.table.store(Arc::new(table));
        match next {
            Some(next) => {
                self.backends.retain(next.services.values().map(|s| &**s));
                *routing = Arc::new(next);
            }
            None => {
                // Usually the only holder: changed in place, not copied.
                let r = Arc::make_mut(&mut routing);
                for s in &delta.services {
                    r.services.insert(s.name.clone(), s.clone());
                }
                r.version = delta.version;
            }
        }
        Ok(())
    }
}

/// The services of a (validated) config compiled into a routing at `version`.
pub(crate) fn compiled(config: &ProxyConfig, version: u64) -> Routing {
    Routing {
        version,
        services: config
            .services
            .iter()
            .map(|svc| {
                let mut s = ServiceRouting::from_config(svc);
                s.version = version;
                (s.name.clone(), Arc::new(s))
            })
            .collect(),
    }
}

/// Hosts claimed by two services, and a second default service.
fn host_clashes(routing: &Routing) -> Vec<RoutingError> {
    let mut errors = Vec::new();
    let mut owners: HashMap<String, &str> = HashMap::new();
    for s in routing.services.values() {
        let hosts: Vec<String> = if s.hosts.is_empty() {
            vec!["*".into()]
        } else {
            s.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
        };
        for h in hosts {
            if let Some(other) = owners.insert(h.clone(), &s.name) {
                let what = if h == "*" {
                    "the default service (no hosts, or *)".to_string()
                } else {
                    format!("host {h:?}")
                };
                errors.push(RoutingError::new(
                    &s.name,
                    format!("{what} is already served by {other}"),
                ));
            }
        }
    }
    errors
}

/// Builds every service of `routing`; one whose snapshot is unchanged in `current` is
/// kept as it is.
fn build_all(
    routing: &Routing,
    current: Option<&RouteTable>,
    backends: &Backends,
) -> Result<Vec<Arc<Service>>, RoutingErrors> {
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(routing.services.len());
    for svc in routing.services.values() {
        let kept = current
            .and_then(|t| t.service(&svc.name))
            .filter(|s| Arc::ptr_eq(&s.routing, svc) || s.routing == *svc);
        if let Some(s) = kept {
            out.push(s.clone());
            continue;
        }
        match build_service(svc, backends) {
            Ok(s) => out.push(Arc::new(s)),
            Err(mut e) => errors.append(&mut e),
        }
    }
    RoutingErrors::check(errors)?;
    Ok(out)
}
