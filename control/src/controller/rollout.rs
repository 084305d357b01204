//! One service's rollout as the controller holds it: its analysis (from the file or set
//! over the API), its status, the primary's and canary's effective versions, and its
//! measurement windows; and how it is created, restored from the state file and saved.

use std::time::Duration;

use weir_proxy::config::{ServiceConfig, VersionConfig};
use weir_proxy::{Proxy, RoutingError, ServiceRouting, TrafficPolicy};

use crate::clock::now_ms;
use crate::config::{AnalysisBlock, References};
use crate::machine::{Phase, Status, Target};
use crate::measurements::Measurements;
use crate::spec::{self, Analysis, DEFAULT_METRIC_INTERVAL};
use crate::store;
use crate::traffic::{self, Exposure, Versions};

/// The canary's name in a service that declares only its primary.
pub const DEFAULT_CANARY: &str = "canary";

/// One service's rollout.
pub(crate) struct Rollout {
    pub service: String,
    /// The service as weir.yaml last said (its routes, hosts and settings).
    pub file: ServiceConfig,
    pub target: Target,
    pub analysis: Analysis,
    /// The analysis block as the file has it (a reload compares it to tell an edit).
    pub written: serde_json::Value,
    /// An analysis set over the control API, replacing the file's.
    pub applied_spec: Option<serde_json::Value>,
    pub status: Status,
    pub primary_name: String,
    pub canary_name: String,
    /// The versions as they run (promotions and StartRollout change them); a
    /// primary-only service has no canary until a rollout brings one.
    pub primary: VersionConfig,
    pub canary: Option<VersionConfig>,
    /// The versions as weir.yaml last said, to tell a file edit apart.
    pub file_primary: VersionConfig,
    pub file_canary: Option<VersionConfig>,
    pub measurements: Measurements,
}

/// Why a rollout could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("service {0:?}: an analysis needs a primary version")]
    Versions(String),
    #[error("service {0:?}: the proxy does not know its versions")]
    NotRouted(String),
}

impl Rollout {
    /// A new rollout for a service of the file (its first version the primary, its
    /// second the canary).
    pub fn new(
        svc: &ServiceConfig,
        block: &AnalysisBlock,
        proxy: &Proxy,
    ) -> Result<Rollout, RolloutError> {
        let mut versions = svc.versions.iter();
        let Some((primary_name, primary)) = versions.next() else {
            return Err(RolloutError::Versions(svc.name.clone()));
        };
        let (canary_name, canary) = match versions.next() {
            Some((n, v)) => (n.clone(), Some(v.clone())),
            None => (DEFAULT_CANARY.to_string(), None),
        };
        let handle = |v: &str| {
            proxy
                .version(&svc.name, v)
                .ok_or_else(|| RolloutError::NotRouted(svc.name.clone()))
        };
        Ok(Rollout {
            service: svc.name.clone(),
            file: svc.clone(),
            target: Target {
                name: svc.name.clone(),
                namespace: svc.namespace.clone(),
            },
            analysis: block.analysis.clone(),
            written: block.written.clone(),
            applied_spec: None,
            status: Status::default(),
            measurements: Measurements::new(
                handle(primary_name)?,
                proxy.version(&svc.name, &canary_name),
            ),
            primary_name: primary_name.clone(),
            canary_name,
            file_primary: primary.clone(),
            file_canary: canary.clone(),
            primary: primary.clone(),
            canary,
        })
    }

    /// Resumes a saved rollout; a file edit made while weir was down wins for that version.
    pub fn restore(&mut self, s: &store::Saved, refs: &References) {
        self.status = s.status.clone();
        self.primary = effective_version(&s.primary, &s.file_primary, &self.file_primary);
        self.canary = effective_version(&s.canary, &s.file_canary, &self.file_canary);
        if let Some(spec) = &s.spec {
            match spec::parse(spec, "state.spec", &refs.catalog(&self.target.namespace)) {
                Ok(a) => {
                    self.analysis = a;
                    self.applied_spec = Some(spec.clone());
                }
                Err(e) => {
                    let e = weir_proxy::ConfigErrors(e);
                    tracing::warn!(error = %e.joined(), "ignoring the saved analysis");
                }
            }
        }
        // The canary's measurements restart with the process.
        self.status.measure_from_ms = Some(now_ms());
        if self.analysis.spec.revert_on_restart && self.status.phase.is_active() {
            tracing::warn!(canary = %self.target, "weir restarted mid-rollout and revertOnRestart is set: routing all traffic to the primary");
            let s = &mut self.status;
            s.phase = Phase::Failed;
            s.canary_weight = 0;
            s.mirrored = false;
            s.ab_routed = false;
            s.failed_checks = 0;
            s.last_event = format!(
                "Canary failed! All traffic back to the primary of {}",
                self.target
            );
            s.last_transition_ms = now_ms();
        } else if self.status.phase.is_active() {
            tracing::info!(canary = %self.target, phase = self.status.phase.name(), weight = self.status.canary_weight, "resuming the rollout");
        }
    }

    /// weir lost this rollout's state: it keeps the primary only (as a new rollout does)
    /// and takes no rollout until an operator resets it.
    pub fn lose_state(&mut self, why: &str) {
        let s = &mut self.status;
        s.state_lost = Some(why.to_string());
        s.last_event = format!(
            "Rollout state of {} lost: {why}; serving the primary only. Check which version should serve, then run `weir ctl reset {}`",
            self.target, self.service
        );
        s.last_transition_ms = now_ms();
    }

    /// What the state file keeps of this rollout.
    pub fn saved(&self) -> store::Saved {
        store::Saved {
            status: self.status.clone(),
            primary: self.primary.clone(),
            canary: self.canary.clone(),
            file_primary: self.file_primary.clone(),
            file_canary: self.file_canary.clone(),
            spec: self.applied_spec.clone(),
        }
    }

    /// The canary's revision, when there is a canary.
    pub fn canary_revision(&self) -> Option<&str> {
        self.canary.as_ref()?.revision.as_deref()
    }

    /// The service as it routes now: the file's entry with the versions as they run,
    /// the rollout's traffic laid over it.
    pub fn routing(&self) -> Result<ServiceRouting, RoutingError> {
        self.routing_at(self.exposure())
    }

    /// The service routed as `exposure` says.
    pub fn routing_at(&self, exposure: Exposure) -> Result<ServiceRouting, RoutingError> {
        let mut svc = self.file.clone();
        svc.versions
            .insert(self.primary_name.clone(), self.primary.clone());
        match &self.canary {
            Some(c) => {
                svc.versions.insert(self.canary_name.clone(), c.clone());
            }
            None => {
                svc.versions.shift_remove(&self.canary_name);
            }
        }
        ServiceRouting::from_config(&svc).with_policy(&self.policy_for(exposure))
    }

    /// How far the status exposes the canary now.
    pub fn exposure(&self) -> Exposure {
        let s = &self.status;
        Exposure {
            canary_weight: s.canary_weight,
            mirror: s.mirrored,
            ab: s.ab_routed,
        }
    }

    /// The rollout's traffic exposed as `exposure`.
    fn policy_for(&self, exposure: Exposure) -> TrafficPolicy {
        let versions = Versions {
            primary: &self.primary_name,
            canary: self.canary.as_ref().map(|_| self.canary_name.as_str()),
        };
        let mut policy = traffic::policy(&self.analysis, versions, exposure);
        if policy.session_affinity.is_some() {
            policy.affinity_token = Some(self.affinity_token());
        }
        policy
    }

    /// The affinity cookie's value for this run of the rollout: the same on every data
    /// plane (derived, not drawn), new with each revision and each run.
    fn affinity_token(&self) -> String {
        // FNV-1a: stable across processes and releases, unlike the std hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let started = self.status.started_ms.unwrap_or(0).to_string();
        for part in [
            self.service.as_str(),
            self.canary_revision().unwrap_or(""),
            started.as_str(),
        ] {
            for b in part.bytes().chain([0]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// How long checkpoints are kept: the longest metric window plus one interval.
    pub fn keep(&self) -> Duration {
        self.analysis
            .metrics
            .iter()
            .map(|m| m.window)
            .max()
            .unwrap_or(DEFAULT_METRIC_INTERVAL)
            + self.analysis.interval
    }

    /// Takes a measurement checkpoint.
    pub fn checkpoint(&mut self) {
        let (shadow, keep) = (self.analysis.spec.mirror, self.keep());
        self.measurements.checkpoint(shadow, keep);
    }

    /// Drops measurements from before the canary's current traffic began.
    pub fn restart_measurements(&mut self) {
        let (shadow, keep) = (self.analysis.spec.mirror, self.keep());
        self.measurements.restart(shadow, keep);
    }

    /// A copy for staging a change (its measurements are carried over on commit).
    pub fn staged(&self, proxy: &Proxy) -> Option<Rollout> {
        Some(Rollout {
            service: self.service.clone(),
            file: self.file.clone(),
            target: self.target.clone(),
            analysis: self.analysis.clone(),
            written: self.written.clone(),
            applied_spec: self.applied_spec.clone(),
            status: self.status.clone(),
            primary_name: self.primary_name.clone(),
            canary_name: self.canary_name.clone(),
            primary: self.primary.clone(),
            canary: self.canary.clone(),
            file_primary: self.file_primary.clone(),
            file_canary: self.file_canary.clone(),
            measurements: Measurements::new(
                proxy.version(&self.service, &self.primary_name)?,
                proxy.version(&self.service, &self.canary_name),
            ),
        })
    }
}

/// A version after the file changed under a rollout: the file's entry when it was
/// edited, otherwise the rollout's effective one (promotions, StartRollout endpoints).
pub(crate) fn effective_version<V: PartialEq + Clone>(
    effective: &V,
    file_then: &V,
    file_now: &V,
) -> V {
    if file_then == file_now {
        effective.clone()
    } else {
        file_now.clone()
    }
}
