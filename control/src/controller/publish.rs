//! What the controller shows and keeps after a change: a rollout's routing committed to
//! every data plane, its status published (Flagger's metrics, the API's status, a Watch
//! notice), `/config`'s analyses, `flagger_canary_total`, and the state file.

use indexmap::IndexMap;
use weir_proxy::RoutingErrors;

use super::rollout::Rollout;
use super::{Controller, RolloutHandle};
use crate::status::{self, ServiceStatus};
use crate::store;

impl Controller {
    /// Publishes a rollout's status: Flagger's metrics, the status read by the API, and a
    /// Watch notice when something a user sees changed.
    pub(super) fn publish(&self, handle: &RolloutHandle, r: &Rollout) {
        let stats = r.measurements.since_start(r.status.mirrored);
        let view = status::RolloutView {
            target: &r.target,
            status: &r.status,
            analysis: &r.analysis,
            primary_revision: r.primary.revision.as_deref(),
            canary_revision: r.canary_revision(),
            primary_name: &r.primary_name,
            canary_name: r.canary.as_ref().map(|_| r.canary_name.as_str()),
        };
        let mut status = status::rollout_status(&view, &stats);
        status.replicas = self.shared.fleet.summary();
        if let Some(ff) = &r.analysis.fast_fail {
            status.guard_evidence = r.measurements.guard_evidence();
            status.guard_bound = 1.0 / ff.alpha;
        }
        let m = &self.shared.metrics;
        let (name, ns) = (r.target.name.as_str(), r.target.namespace.as_str());
        m.state_lost
            .with_label_values(&[name, ns])
            .set(i64::from(r.status.state_lost.is_some()));
        m.status
            .with_label_values(&[name, ns])
            .set(r.status.phase.status_value());
        m.weight
            .with_label_values(&[&format!("{name}-primary"), ns])
            .set(i64::from(100 - r.status.canary_weight.min(100)));
        m.weight
            .with_label_values(&[name, ns])
            .set(i64::from(r.status.canary_weight));
        for c in &r.status.checks {
            if let Some(v) = c.value {
                // Flagger reports request-duration in seconds.
                let v = if c.name == "request-duration" {
                    v / 1000.0
                } else {
                    v
                };
                m.analysis.with_label_values(&[name, ns, &c.name]).set(v);
            }
        }
        {
            let written = r.applied_spec.as_ref().unwrap_or(&r.written);
            let mut spec = handle.spec.lock().unwrap_or_else(|p| p.into_inner());
            if *spec != *written {
                *spec = written.clone();
            }
        }
        let mut published = handle.published.lock().unwrap_or_else(|p| p.into_inner());
        let old = &published.0;
        let changed = old.phase != status.phase
            || old.canary_weight != status.canary_weight
            || old.failed_checks != status.failed_checks
            || old.last_event != status.last_event
            || old.paused != status.paused
            || old.waiting_gate != status.waiting_gate
            || old.state_lost != status.state_lost;
        *published = (status.clone(), r.saved());
        drop(published);
        if changed {
            self.shared.notifier.status(status);
        }
    }

    /// The analyses in force and what they refer to, for `/config` (which redacts them).
    pub(super) fn describe(&self) -> serde_json::Value {
        let analyses: serde_json::Map<String, serde_json::Value> = self
            .shared
            .rollouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, h)| {
                let spec = h.spec.lock().unwrap_or_else(|p| p.into_inner()).clone();
                (name.clone(), spec)
            })
            .collect();
        let refs = self.shared.refs.read().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "analyses": analyses,
            "alertProviders": refs.alert_providers,
            "metricsServer": refs.metrics_server,
        })
    }

    /// `flagger_canary_total` per namespace (set when rollouts are added or removed).
    pub(super) fn count_rollouts(&self) {
        let rollouts = self
            .shared
            .rollouts
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut per_ns: IndexMap<&str, i64> = IndexMap::new();
        for h in rollouts.values() {
            *per_ns.entry(h.namespace.as_str()).or_default() += 1;
        }
        for (ns, n) in per_ns {
            self.shared.metrics.total.with_label_values(&[ns]).set(n);
        }
    }

    /// Writes every rollout's state to the state file (atomically), when it changed.
    pub(super) fn persist(&self) {
        let Some(path) = &self.shared.state_path else {
            return;
        };
        let mut saved = self.shared.saved.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = store::State {
            version: 1,
            routing_version: self.shared.routes.current().version,
            ..store::State::default()
        };
        for (name, h) in self
            .shared
            .rollouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let p = h.published.lock().unwrap_or_else(|p| p.into_inner());
            state.services.insert(name.clone(), p.1.clone());
        }
        for (name, s) in self
            .shared
            .statics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some(saved) = s.lock().unwrap_or_else(|p| p.into_inner()).saved() {
                state.statics.insert(name.clone(), saved);
            }
        }
        if saved.as_ref() == Some(&state) {
            return;
        }
        match store::save(path, &state) {
            Ok(()) => *saved = Some(state),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot write the rollout state")
            }
        }
    }

    /// Publishes a rollout's routing as it stands, to the controller's proxy and every
    /// data plane; the routing version in force.
    pub(super) fn route(&self, r: &Rollout) -> Result<u64, RoutingErrors> {
        let routing = r.routing().map_err(RoutingErrors::from)?;
        self.shared.routes.commit(vec![routing], &[])
    }

    /// Publishes and persists after a change; the status as published.
    pub(super) fn after_change(&self, handle: &RolloutHandle, r: &Rollout) -> ServiceStatus {
        self.publish(handle, r);
        self.persist();
        handle
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }
}
