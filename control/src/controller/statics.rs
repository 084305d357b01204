//! Services without an analysis, as the control API shows and changes them: phase
//! `Static`, each version's weight and revision, their traffic since weir started; and
//! their split set by an operator (`weir ctl set-weight`), through the same commit,
//! audit line and Watch notices as a rollout's operator actions. An operator's split is
//! kept in the state file and over reloads until the file edits that service's routes or
//! versions.

use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use weir_proxy::config::ServiceConfig;
use weir_proxy::{Proxy, RoutingError, ServiceRouting, TrafficPolicy};

use super::{Controller, Refusal};
use crate::clock::now_ms;
use crate::config::WeirConfig;
use crate::status::{ServiceStatus, Traffic, VersionWeight};
use crate::store::{self, SavedStatic};
use weir_proxy::RoutingErrors;

/// The phase a service without an analysis shows.
pub const STATIC_PHASE: &str = "Static";

/// One service without an analysis.
pub(crate) struct Static {
    /// The service as weir.yaml last said.
    pub file: ServiceConfig,
    /// The split an operator set, by version; None: the file's.
    pub weights: Option<IndexMap<String, u32>>,
    pub last_transition_ms: u64,
    pub last_event: String,
}

impl Static {
    /// A service as the file has it, with an operator's split kept from `saved` unless
    /// the file edited its routes or versions since.
    pub fn new(file: ServiceConfig, saved: Option<&SavedStatic>) -> Static {
        let weights = saved
            .filter(|s| same_file(s, &file))
            .map(|s| s.weights.clone());
        Static {
            file,
            weights,
            last_transition_ms: now_ms(),
            last_event: String::new(),
        }
    }

    /// What the state file keeps: the operator's split, if there is one.
    pub fn saved(&self) -> Option<SavedStatic> {
        Some(SavedStatic {
            weights: self.weights.clone()?,
            file_routes: self.file.routes.clone(),
            file_versions: self.file.versions.keys().cloned().collect(),
        })
    }

    /// The service as it routes: the file's, with the operator's split (if any) on its
    /// weighted rules.
    pub fn routing(&self) -> Result<ServiceRouting, RoutingError> {
        let base = ServiceRouting::from_config(&self.file);
        match &self.weights {
            Some(w) => base.with_policy(&TrafficPolicy {
                weights: Some(w.clone()),
                ..TrafficPolicy::default()
            }),
            None => Ok(base),
        }
    }

    /// The split as it serves: the operator's, else the file's first split rule, else
    /// everything to the version its catch-all rule names (the primary by default).
    pub fn split(&self) -> IndexMap<String, u32> {
        if let Some(w) = &self.weights {
            return w.clone();
        }
        let svc = &self.file;
        if let Some(split) = svc.routes.iter().find_map(|r| r.split.as_ref()) {
            return svc
                .versions
                .keys()
                .map(|v| (v.clone(), split.get(v).copied().unwrap_or(0)))
                .collect();
        }
        let all = svc
            .routes
            .iter()
            .find(|r| r.matches.is_none())
            .and_then(|r| r.to.as_deref())
            .or_else(|| svc.versions.keys().next().map(String::as_str));
        svc.versions
            .keys()
            .map(|v| (v.clone(), if Some(v.as_str()) == all { 100 } else { 0 }))
            .collect()
    }

    /// The status the API shows: each version's weight, revision and traffic.
    pub fn status(&self, proxy: &Proxy) -> ServiceStatus {
        let svc = &self.file;
        let split = self.split();
        let stats = |i: usize| {
            let (name, _) = svc.versions.get_index(i)?;
            let handle = proxy.version(&svc.name, name)?;
            Some(Traffic::of(&handle.snapshot(false).total()))
        };
        let revision = |i: usize| {
            svc.versions
                .get_index(i)
                .and_then(|(_, v)| v.revision.clone())
                .unwrap_or_default()
        };
        ServiceStatus {
            service: svc.name.clone(),
            namespace: svc.namespace.clone(),
            phase: STATIC_PHASE.into(),
            canary_weight: split.get_index(1).map_or(0, |(_, w)| *w),
            primary_revision: revision(0),
            canary_revision: revision(1),
            last_transition_ms: self.last_transition_ms,
            message: "No analysis: the split is the file's or set with weir ctl set-weight".into(),
            last_event: self.last_event.clone(),
            primary: stats(0),
            canary: stats(1),
            versions: svc
                .versions
                .iter()
                .map(|(name, v)| VersionWeight {
                    name: name.clone(),
                    weight: split.get(name).copied().unwrap_or(0),
                    revision: v.revision.clone().unwrap_or_default(),
                    ..VersionWeight::default()
                })
                .collect(),
            ..ServiceStatus::default()
        }
    }

    /// The split `weir ctl set-weight` asks for: each version's weight, or the canary's
    /// (the second version; the first gets the rest).
    pub fn asked(
        &self,
        canary: u32,
        weights: IndexMap<String, u32>,
    ) -> Result<IndexMap<String, u32>, Refusal> {
        let svc = &self.file;
        let names: Vec<&str> = svc.versions.keys().map(String::as_str).collect();
        if !weights.is_empty() {
            if let Some(unknown) = weights.keys().find(|v| !svc.versions.contains_key(*v)) {
                return Err(Refusal::Invalid(format!(
                    "{}: unknown version {unknown:?} (it has {})",
                    svc.name,
                    names.join(", ")
                )));
            }
            if weights.values().all(|w| *w == 0) {
                return Err(Refusal::Invalid(format!(
                    "{}: the weights sum to 0; at least one must be positive",
                    svc.name
                )));
            }
            return Ok(svc
                .versions
                .keys()
                .map(|v| (v.clone(), weights.get(v).copied().unwrap_or(0)))
                .collect());
        }
        if names.len() < 2 {
            return Err(Refusal::Precondition(format!(
                "{} has one version ({}): there is no canary to weigh",
                svc.name,
                names.join(", ")
            )));
        }
        if canary > 100 {
            return Err(Refusal::Invalid(format!(
                "canary weight {canary} is not between 0 and 100"
            )));
        }
        Ok(svc
            .versions
            .keys()
            .enumerate()
            .map(|(i, v)| {
                let w = match i {
                    0 => 100 - canary,
                    1 => canary,
                    _ => 0,
                };
                (v.clone(), w)
            })
            .collect())
    }
}

/// True when `file` still has the routes and versions a saved split was laid over.
fn same_file(saved: &SavedStatic, file: &ServiceConfig) -> bool {
    saved.file_routes == file.routes && saved.file_versions.iter().eq(file.versions.keys())
}

/// `primary 80, canary 20`.
fn shown(weights: &IndexMap<String, u32>) -> String {
    weights
        .iter()
        .map(|(v, w)| format!("{v} {w}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Controller {
    /// `weir ctl set-weight` on a service without an analysis: its split, set now.
    pub(super) fn set_static_weights(
        &self,
        service: &str,
        canary: u32,
        weights: IndexMap<String, u32>,
    ) -> Result<ServiceStatus, Refusal> {
        let handle = self.static_handle(service)?;
        let mut s = handle.lock().unwrap_or_else(|p| p.into_inner());
        let split = s.asked(canary, weights)?;
        let before = s.weights.replace(split);
        let routed = s
            .routing()
            .map_err(RoutingErrors::from)
            .and_then(|r| self.shared.routes.commit(vec![r], &[]));
        if let Err(e) = routed {
            s.weights = before;
            return Err(Refusal::Invalid(e.to_string()));
        }
        s.last_transition_ms = now_ms();
        s.last_event = format!(
            "Split of {}.{} set to {}",
            s.file.name,
            s.file.namespace,
            shown(&s.split())
        );
        self.shared
            .notifier
            .plain_event(service, s.last_event.clone());
        let status = s.status(&self.shared.proxy);
        drop(s);
        self.shared.notifier.status(status.clone());
        self.persist();
        Ok(status)
    }
}

/// Services without an analysis, staged for a start or a reload.
pub(super) struct StagedStatics {
    statics: IndexMap<String, Static>,
    order: Vec<String>,
}

impl StagedStatics {
    /// Their routing, each with its operator's split laid over.
    pub(super) fn routings(&self) -> Result<Vec<ServiceRouting>, RoutingErrors> {
        self.statics
            .values()
            .map(|s| s.routing().map_err(RoutingErrors::from))
            .collect()
    }
}

impl Controller {
    /// The services without an analysis as `config` has them (an operator's split kept
    /// unless the file edited it since: from `saved` at start, from the running ones on a
    /// reload), with the policy each lays over its service. Installed by
    /// [`Controller::install_statics`] once the proxy took the change.
    pub(super) fn stage_statics(
        &self,
        config: &WeirConfig,
        saved: &IndexMap<String, store::SavedStatic>,
    ) -> StagedStatics {
        let running = self
            .shared
            .statics
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut statics = IndexMap::new();
        for svc in &config.proxy.services {
            if config.analyses.contains_key(&svc.name) {
                continue;
            }
            let kept = running
                .get(&svc.name)
                .and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).saved());
            let s = Static::new(svc.clone(), kept.as_ref().or(saved.get(&svc.name)));
            statics.insert(svc.name.clone(), s);
        }
        StagedStatics {
            statics,
            order: config
                .proxy
                .services
                .iter()
                .map(|s| s.name.clone())
                .collect(),
        }
    }

    /// The staged services without an analysis, in force from now on.
    pub(super) fn install_statics(&self, staged: StagedStatics) {
        *self
            .shared
            .statics
            .write()
            .unwrap_or_else(|p| p.into_inner()) = staged
            .statics
            .into_iter()
            .map(|(k, v)| (k, Arc::new(Mutex::new(v))))
            .collect();
        *self.shared.order.write().unwrap_or_else(|p| p.into_inner()) = staged.order;
    }
}
