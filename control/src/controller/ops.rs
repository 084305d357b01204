//! What the control API asks of a rollout: a new canary revision, a new analysis, and
//! the operators' operations. Each is refused with the reason, changing nothing, or done
//! and published.

use weir_proxy::config::VersionConfig;

use super::{Controller, Refusal};
use crate::clock::now_ms;
use crate::machine::{Op, Phase};
use crate::spec;
use crate::status::ServiceStatus;

impl Controller {
    /// Tells weir the service has a new canary revision (at these endpoints).
    pub async fn start_rollout(
        &self,
        service: &str,
        revision: &str,
        endpoints: &[String],
    ) -> Result<ServiceStatus, Refusal> {
        let handle = self.handle(service)?;
        if revision.trim().is_empty() {
            return Err(Refusal::Invalid("revision must not be empty".into()));
        }
        let mut r = handle.rollout.lock().await;
        refuse_if_lost(&r)?;
        if r.status.phase == Phase::Failed && r.status.last_applied.as_deref() == Some(revision) {
            return Err(Refusal::Precondition(format!(
                "revision {revision:?} of {service} was rolled back; run `weir ctl retry {service}` to analyse it again"
            )));
        }
        if r.primary.revision.as_deref() == Some(revision) {
            return Err(Refusal::Precondition(format!(
                "revision {revision:?} is already the primary of {service}"
            )));
        }
        // A first canary reaches its endpoints the way the primary does (HTTP/2, TLS,
        // timeouts); the rollout routes it from its start (weight 0 until the analysis
        // moves it).
        let mut canary = r.canary.clone().unwrap_or_else(|| VersionConfig {
            endpoints: Vec::new(),
            revision: None,
            ..r.primary.clone()
        });
        canary.revision = Some(revision.to_string());
        if !endpoints.is_empty() {
            canary.endpoints = endpoints.to_vec();
        }
        if canary.endpoints.is_empty() {
            return Err(Refusal::Invalid(format!(
                "{service} has no canary version yet: give the new revision's endpoints (--canary-endpoint)"
            )));
        }
        let previous = r.canary.replace(canary);
        if let Err(e) = self.route(&r) {
            r.canary = previous;
            return Err(Refusal::Invalid(e.to_string()));
        }
        match r.status.phase {
            // The revision found at the first start, never analysed: starting it is the
            // explicit change the rollout waits for.
            Phase::Initialized if r.status.last_applied.as_deref() == Some(revision) => {
                r.status.last_applied = None;
            }
            // Before the first wake-up, which takes the canary revision it finds as
            // deployed: it must find the one deployed until now (the canary's, else the
            // primary's, never this one), so this start stays a change.
            Phase::Initializing => {
                let deployed = previous
                    .as_ref()
                    .and_then(|c| c.revision.as_deref())
                    .filter(|deployed| *deployed != revision)
                    .or(r.primary.revision.as_deref());
                r.status.last_applied = Some(deployed.unwrap_or_default().to_string());
            }
            _ => {}
        }
        if previous.is_none() {
            // The canary version exists from now on: measure it.
            let canary = self.shared.proxy.version(service, &r.canary_name);
            r.measurements.attach_canary(canary);
        }
        let status = self.after_change(&handle, &r);
        drop(r);
        handle.kick.notify_one();
        Ok(status)
    }

    /// Replaces a service's analysis (Flagger's `analysis:` block as a JSON value).
    pub async fn apply_spec(
        &self,
        service: &str,
        value: serde_json::Value,
    ) -> Result<ServiceStatus, Refusal> {
        let handle = self.handle(service)?;
        let mut r = handle.rollout.lock().await;
        let analysis = {
            let refs = self.shared.refs.read().unwrap_or_else(|p| p.into_inner());
            spec::parse(&value, "analysis", &refs.catalog(&r.target.namespace))
                .map_err(|e| Refusal::Invalid(weir_proxy::ConfigErrors(e).joined()))?
        };
        // Both change together, and both go back if the proxy refuses the result.
        let previous = (
            std::mem::replace(&mut r.analysis, analysis),
            r.applied_spec.replace(value),
        );
        if let Err(e) = self.route(&r) {
            (r.analysis, r.applied_spec) = previous;
            return Err(Refusal::Invalid(e.to_string()));
        }
        let status = self.after_change(&handle, &r);
        drop(r);
        handle.kick.notify_one();
        Ok(status)
    }

    /// Promote, abort, pause, resume, retry, set-weight, approve or deny.
    pub async fn operate(&self, service: &str, op: Op) -> Result<ServiceStatus, Refusal> {
        let handle = self.handle(service)?;
        let mut r = handle.rollout.lock().await;
        refuse_if_lost(&r)?;
        let before = r.status.measure_from_ms;
        let (kick, actions) = {
            let (mut m, mut env) = r.machine(&self.shared.poster, now_ms());
            let kick = m
                .operate(&op, &mut env)
                .await
                .map_err(|e| Refusal::Precondition(e.0))?;
            (kick, m.actions)
        };
        self.apply(&mut r, actions, before);
        let status = self.after_change(&handle, &r);
        drop(r);
        if kick {
            handle.kick.notify_one();
        }
        Ok(status)
    }

    /// `weir ctl reset`: after its state was lost, the service starts over from weir.yaml
    /// (primary only) and takes rollouts again.
    pub async fn reset(&self, service: &str) -> Result<ServiceStatus, Refusal> {
        let handle = self.handle(service)?;
        let mut r = handle.rollout.lock().await;
        if r.status.state_lost.is_none() {
            return Err(Refusal::Precondition(format!(
                "{service}'s rollout state is not lost: there is nothing to reset"
            )));
        }
        r.status = crate::machine::Status {
            last_event: format!("Rollout state of {} reset by an operator", r.target),
            last_transition_ms: now_ms(),
            ..crate::machine::Status::default()
        };
        if let Err(e) = self.route(&r) {
            tracing::error!(service, error = %e, "cannot route the reset rollout");
        }
        let status = self.after_change(&handle, &r);
        drop(r);
        handle.kick.notify_one();
        Ok(status)
    }
}

/// Refuses rollout work on a service whose state weir lost.
fn refuse_if_lost(r: &super::rollout::Rollout) -> Result<(), Refusal> {
    match &r.status.state_lost {
        Some(why) => Err(Refusal::Precondition(format!(
            "{}'s rollout state was lost ({why}); it serves the primary only. Check which version should serve, then run `weir ctl reset {}`",
            r.service, r.service
        ))),
        None => Ok(()),
    }
}
