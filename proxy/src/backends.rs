//! What outlives a route table: each version's endpoints and measurement handles, each
//! service's mirror bound and affinity token, and the metric families. A reload or a
//! weight change builds a new table from these, so it never resets a connection pool or
//! a counter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::config::{ResolverConfig, VersionConfig};
use crate::dns::Dns;
use crate::headers::affinity::Tokens;
use crate::measure::{Families, VersionHandle};
use crate::routing::ServiceRouting;
use crate::tls::TlsWatch;
use crate::upstream::{BuildError, Upstream};

/// (service, version).
type VersionKey = (String, String);

/// Long-lived pools, metric handles, mirror bounds, affinity tokens and the watch over
/// TLS files.
pub(crate) struct Backends {
    pub(crate) families: Families,
    pub(crate) tls: Arc<TlsWatch>,
    /// Resolves hostname endpoints.
    dns: Arc<Dns>,
    /// Each version's endpoints (its measurements are kept by `families`).
    versions: Mutex<HashMap<VersionKey, Arc<Upstream>>>,
    /// Per service: the mirror in-flight bound and its size.
    mirror_slots: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    pub(crate) tokens: Tokens,
}

impl Default for Backends {
    fn default() -> Self {
        Backends::new(None)
    }
}

impl Backends {
    /// Backends resolving hostname endpoints with `resolver` (the system's when None).
    pub(crate) fn new(resolver: Option<ResolverConfig>) -> Self {
        let families = Families::new();
        Backends {
            tls: Arc::new(TlsWatch::new(families.tls_reloads.clone())),
            dns: Arc::new(Dns::new(resolver, families.dns_resolutions.clone())),
            families,
            versions: Mutex::default(),
            mirror_slots: Mutex::default(),
            tokens: Tokens::default(),
        }
    }

    /// The endpoints and measurements of one version: the pools are kept while the
    /// connection settings are unchanged, the measurements as long as the version exists.
    pub(crate) fn version(
        &self,
        svc: &ServiceRouting,
        name: &str,
        cfg: &VersionConfig,
    ) -> Result<(Arc<Upstream>, VersionHandle), BuildError> {
        let mut cache = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (svc.name.clone(), name.to_string());
        let upstream = match cache.get(&key) {
            Some(u) if u.settings.same_connections(cfg) => u.clone(),
            _ => {
                let who = format!("{}/{name}", svc.name);
                let u = Arc::new(Upstream::new(&who, cfg, &self.tls, &self.dns)?);
                cache.insert(key, u.clone());
                u
            }
        };
        let metrics = self
            .families
            .version(&svc.name, &svc.namespace, svc.port, name);
        Ok((upstream, metrics))
    }

    /// The measurements of a version, if it exists.
    pub(crate) fn handle(&self, service: &str, version: &str) -> Option<VersionHandle> {
        self.families.handle(service, version)
    }

    /// The service's mirror bound, kept across tables unless its size changes.
    pub(crate) fn mirror_slots(&self, service: &str, size: usize) -> Arc<Semaphore> {
        let mut slots = self.mirror_slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(service) {
            Some((n, s)) if *n == size => s.clone(),
            _ => {
                let s = Arc::new(Semaphore::new(size));
                slots.insert(service.to_string(), (size, s.clone()));
                s
            }
        }
    }

    /// Forgets the versions and services that are gone, and their metric series.
    pub(crate) fn retain<'a>(&self, live: impl Iterator<Item = &'a ServiceRouting>) {
        let mut names: HashMap<&str, Vec<&str>> = HashMap::new();
        for svc in live {
            names
                .entry(svc.name.as_str())
                .or_default()
                .extend(svc.versions.keys().map(String::as_str));
        }
        let mut cache = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|(s, v), _| {
            let keep = names
                .get(s.as_str())
                .is_some_and(|vs| vs.contains(&v.as_str()));
            if !keep {
                self.families.forget_version(s, v);
            }
            keep
        });
        drop(cache);
        let mut slots = self.mirror_slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|s, _| {
            let keep = names.contains_key(s.as_str());
            if !keep {
                self.families.forget_service(s);
            }
            keep
        });
        self.tokens.retain(|s| names.contains_key(s));
    }
}
