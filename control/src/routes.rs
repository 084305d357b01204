//! The controller's routing: the one currency every data plane serves, a snapshot per
//! service and one version that only grows (kept in the state file across restarts, and
//! lifted past any a replica reports). A change goes to the controller's own proxy first,
//! which checks and builds it (nothing changes when it refuses), then becomes the routing
//! the replicas' streams send on.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use weir_proxy::{Proxy, Routing, RoutingDelta, RoutingErrors, ServiceRouting};

/// The routing a controller publishes.
pub struct Routes {
    proxy: Proxy,
    current: watch::Sender<Arc<Routing>>,
    /// Orders commits: versions are handed out in the order changes reach the proxy.
    order: Mutex<()>,
}

impl Routes {
    /// The routing `proxy` serves now, published at a version above `floor` (the last
    /// one a previous run of the controller published).
    pub fn new(proxy: Proxy, floor: u64) -> Routes {
        let routing = proxy.routing();
        let first = Routing {
            version: routing.version.max(floor) + 1,
            services: routing.services.clone(),
        };
        renumber(&proxy, first.version);
        Routes {
            proxy,
            current: watch::Sender::new(Arc::new(first)),
            order: Mutex::new(()),
        }
    }

    /// The routing data planes should serve now.
    pub fn current(&self) -> Arc<Routing> {
        self.current.borrow().clone()
    }

    /// Wakes on every new routing.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Routing>> {
        self.current.subscribe()
    }

    /// Publishes these services (new or changed) and removals as the next version; a
    /// service whose routing did not change keeps its snapshot and version, and a commit
    /// that changes nothing publishes nothing. Returns the version in force.
    pub fn commit(
        &self,
        services: Vec<ServiceRouting>,
        removed: &[String],
    ) -> Result<u64, RoutingErrors> {
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current();
        let version = current.version + 1;
        let changed: Vec<Arc<ServiceRouting>> = services
            .into_iter()
            .filter(|s| {
                current
                    .services
                    .get(&s.name)
                    .is_none_or(|old| !old.same_routing(s))
            })
            .map(|s| Arc::new(ServiceRouting { version, ..s }))
            .collect();
        let removed: Vec<String> = removed
            .iter()
            .filter(|name| current.services.contains_key(*name))
            .cloned()
            .collect();
        if changed.is_empty() && removed.is_empty() {
            return Ok(current.version);
        }
        let delta = RoutingDelta {
            version,
            full: false,
            services: changed,
            removed,
        };
        self.proxy.commit(delta.clone())?;
        self.current.send_replace(Arc::new(current.applied(&delta)));
        Ok(version)
    }

    /// Raises the version past `seen` (a replica serving a routing from before this
    /// controller's restart), so versions keep growing.
    pub fn lift(&self, seen: u64) {
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current();
        if seen >= current.version {
            renumber(&self.proxy, seen + 1);
            self.current.send_replace(Arc::new(Routing {
                version: seen + 1,
                services: current.services.clone(),
            }));
        }
    }
}

/// The proxy's routing, unchanged, at `version`.
fn renumber(proxy: &Proxy, version: u64) {
    let delta = RoutingDelta {
        version,
        ..RoutingDelta::default()
    };
    if let Err(e) = proxy.commit(delta) {
        tracing::error!(error = %e, "cannot renumber the routing");
    }
}
