//! Re-reading weir.yaml (SIGHUP): an invalid file changes nothing; a changed canary
//! revision starts a rollout; the controller's weights, promotions and API-set analyses
//! are kept unless the file edited that very thing.

use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;

use weir_proxy::config::ServiceConfig;
use weir_proxy::{RoutingErrors, ServiceRouting, TrafficPolicy};

use super::rollout::{effective_version, Rollout};
use super::{Controller, RolloutHandle};
use crate::config::{AnalysisBlock, WeirConfig};
use crate::traffic::{self, Exposure, Versions};

impl Controller {
    /// Re-reads weir.yaml; counts and logs the outcome (every problem, on failure).
    pub async fn reload(&self, path: &Path) -> Result<(), Vec<String>> {
        let result = match WeirConfig::load(path) {
            Ok(cfg) => self.reload_config(cfg).await.map_err(|e| e.lines()),
            Err(e) => Err(e.lines()),
        };
        self.shared.proxy.record_reload(path, &result);
        result
    }

    async fn reload_config(&self, cfg: WeirConfig) -> Result<(), RoutingErrors> {
        let handles: Vec<_> = self
            .shared
            .rollouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut live = Vec::new();
        for (name, h) in &handles {
            live.push((name.clone(), h.clone(), h.rollout.lock().await));
        }
        // Stage every change on copies; commit only if the proxy accepts the result.
        let mut staged: Vec<Rollout> = Vec::new();
        let mut fresh = Vec::new();
        let mut services: Vec<ServiceRouting> = Vec::new();
        for (name, block) in &cfg.analyses {
            let Some(svc) = cfg.proxy.service(name) else {
                continue;
            };
            let current = live.iter().find(|l| l.0 == *name);
            let Some(mut next) = current.and_then(|l| l.2.staged(&self.shared.proxy)) else {
                services.push(initial_routing(svc, block)?);
                fresh.push(name.clone());
                continue;
            };
            follow_file(&mut next, svc, block);
            services.push(next.routing()?);
            staged.push(next);
        }
        let statics = self.stage_statics(&cfg, &IndexMap::new());
        services.extend(statics.routings()?);
        let removed: Vec<String> = self
            .shared
            .routes
            .current()
            .services
            .keys()
            .filter(|name| cfg.proxy.service(name).is_none())
            .cloned()
            .collect();
        self.shared.routes.commit(services, &removed)?;
        self.shared.proxy.set_listeners(&cfg.proxy);
        let envoy = cfg.envoy_settings();
        self.shared.envoy.send_if_modified(|now| {
            let changed = now.as_deref() != envoy.as_deref();
            if changed {
                *now = envoy;
            }
            changed
        });
        self.install_statics(statics);
        *self.shared.refs.write().unwrap_or_else(|p| p.into_inner()) = cfg.refs.clone();
        for mut next in staged {
            if let Some((_, h, r)) = live.iter_mut().find(|l| l.0 == next.service) {
                std::mem::swap(&mut next.measurements, &mut r.measurements);
                let canary = self.shared.proxy.version(&next.service, &next.canary_name);
                next.measurements.attach_canary(canary);
                **r = next;
                h.kick.notify_one();
            }
        }
        drop(live);
        self.replace_rollouts(&cfg, handles, fresh);
        Ok(())
    }

    /// Stops the rollouts whose analysis is gone (or must start over) and starts the new.
    fn replace_rollouts(
        &self,
        cfg: &WeirConfig,
        handles: Vec<(String, Arc<RolloutHandle>)>,
        fresh: Vec<String>,
    ) {
        for (name, h) in handles {
            if !cfg.analyses.contains_key(&name) || fresh.contains(&name) {
                h.stop.notify_one();
                self.shared
                    .rollouts
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .shift_remove(&name);
            }
        }
        for name in fresh {
            let (Some(svc), Some(block)) = (cfg.proxy.service(&name), cfg.analyses.get(&name))
            else {
                continue;
            };
            match Rollout::new(svc, block, &self.shared.proxy) {
                Ok(r) => self.spawn(r),
                Err(e) => tracing::error!(service = %name, error = %e, "cannot start the rollout"),
            }
        }
        self.count_rollouts();
        self.persist();
    }
}

/// A kept rollout after the file changed: the file's analysis when it was edited (or none
/// was set over the API), the file's version entries when they were edited.
fn follow_file(next: &mut Rollout, svc: &ServiceConfig, block: &AnalysisBlock) {
    next.file = svc.clone();
    if next.written != block.written || next.applied_spec.is_none() {
        next.analysis = block.analysis.clone();
        next.applied_spec = None;
    }
    next.written = block.written.clone();
    if let Some(fp) = svc.versions.get(&next.primary_name) {
        next.primary = effective_version(&next.primary, &next.file_primary, fp);
        next.file_primary = fp.clone();
    }
    let fc = svc.versions.get(&next.canary_name).cloned();
    next.canary = effective_version(&next.canary, &next.file_canary, &fc);
    next.file_canary = fc;
}

/// A new rollout's routing: all traffic to the primary.
fn initial_routing(
    svc: &ServiceConfig,
    block: &AnalysisBlock,
) -> Result<ServiceRouting, RoutingErrors> {
    let base = ServiceRouting::from_config(svc);
    let mut names = svc.versions.keys();
    let Some(primary) = names.next() else {
        return Ok(base);
    };
    let v = Versions {
        primary,
        canary: names.next().map(String::as_str),
    };
    let exposure = Exposure {
        canary_weight: 0,
        mirror: false,
        ab: false,
    };
    let policy: TrafficPolicy = traffic::policy(&block.analysis, v, exposure);
    Ok(base.with_policy(&policy)?)
}
