//! Each rollout's task: a tick every analysis interval (at once when kicked), the
//! fast-fail guard every 100 ms between ticks, and the machine's actions carried out.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Controller, RolloutHandle};
use crate::clock::now_ms;
use crate::controller::rollout::Rollout;
use crate::machine::{Action, Input, Phase};
use crate::spec::{BuiltinMetric, MetricKind};
use crate::traffic::Exposure;
use weir_proxy::RoutingErrors;

/// How often the fast-fail guard looks at the counters (cheap: a few atomic loads).
pub const GUARD_EVERY: Duration = Duration::from_millis(100);
/// Status (with its histogram windows) is refreshed every this many guard looks.
const PUBLISH_EVERY: u32 = 5;

impl Controller {
    /// One rollout's loop: ticks every interval (at once when kicked), the guard between.
    pub(super) async fn drive(self, handle: Arc<RolloutHandle>, resume: bool) {
        let interval = {
            let mut r = handle.rollout.lock().await;
            r.checkpoint();
            self.publish(&handle, &r);
            r.analysis.interval
        };
        let mut next = Instant::now() + if resume { interval } else { Duration::ZERO };
        let mut guard = tokio::time::interval(GUARD_EVERY);
        guard.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut looks = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = handle.kick.notified() => {}
                _ = guard.tick() => {
                    looks = looks.wrapping_add(1);
                    self.guard(&handle, looks.is_multiple_of(PUBLISH_EVERY)).await;
                    continue;
                }
                _ = handle.stop.notified() => return,
            }
            let before = self.shared.routes.current().version;
            let interval = self.tick(&handle).await;
            let after = self.shared.routes.current().version;
            if after != before && self.shared.fleet.has_replicas() {
                // The next window starts once every live replica serves the new routing:
                // what they served before has been reported by then.
                self.shared.fleet.settle(after).await;
                handle.rollout.lock().await.checkpoint();
            }
            next = Instant::now() + interval;
        }
    }

    /// One tick of the machine; returns the interval to the next. A rollout whose state
    /// is lost does not move until it is reset.
    async fn tick(&self, handle: &RolloutHandle) -> Duration {
        let started = Instant::now();
        let mut r = handle.rollout.lock().await;
        if r.status.state_lost.is_some() {
            self.publish(handle, &r);
            return r.analysis.interval;
        }
        r.checkpoint();
        let input = Input {
            canary_revision: r.canary_revision().map(str::to_string),
            primary_revision: r.primary.revision.clone(),
        };
        let before = r.status.measure_from_ms;
        let actions = {
            let (mut m, mut env) = r.machine(&self.shared.poster, now_ms());
            m.tick(&input, &mut env).await;
            m.actions
        };
        let analysing = r.status.phase.is_analysing() || r.status.phase == Phase::Waiting;
        self.apply(&mut r, actions, before);
        if analysing {
            self.shared
                .metrics
                .tick_seconds
                .with_label_values(&[&r.target.name, &r.target.namespace])
                .observe(started.elapsed().as_secs_f64());
        }
        self.publish(handle, &r);
        self.persist();
        r.analysis.interval
    }

    /// The fast-fail guard: rolls the canary back between ticks when it fails
    /// significantly worse than the primary.
    async fn guard(&self, handle: &RolloutHandle, refresh: bool) {
        let mut r = handle.rollout.lock().await;
        let reason = match r.status.state_lost {
            Some(_) => None,
            None => fast_fail_reason(&mut r),
        };
        let Some(reason) = reason else {
            if refresh {
                self.publish(handle, &r);
            }
            return;
        };
        let before = r.status.measure_from_ms;
        let actions = {
            let (mut m, mut env) = r.machine(&self.shared.poster, now_ms());
            m.fast_fail(&reason, &mut env).await;
            m.actions
        };
        self.apply(&mut r, actions, before);
        self.publish(handle, &r);
        self.persist();
    }

    /// Carries out the machine's actions.
    pub(super) fn apply(&self, r: &mut Rollout, actions: Vec<Action>, measure_before: Option<u64>) {
        let shared = &self.shared;
        for action in actions {
            match action {
                Action::Route {
                    canary_weight,
                    mirror,
                    ab,
                } => {
                    let exposure = Exposure {
                        canary_weight,
                        mirror,
                        ab,
                    };
                    let routed = r
                        .routing_at(exposure)
                        .map_err(RoutingErrors::from)
                        .and_then(|s| shared.routes.commit(vec![s], &[]));
                    if let Err(e) = routed {
                        tracing::error!(service = %r.service, error = %e, "cannot route the rollout's weights");
                    }
                }
                Action::Promote => {
                    let Some(canary) = r.canary.clone() else {
                        continue;
                    };
                    r.primary = canary;
                    if let Err(e) = self.route(r) {
                        tracing::error!(service = %r.service, error = %e, "cannot promote the canary");
                    }
                }
                Action::Event { warning, message } => {
                    shared.notifier.event(&r.about(), warning, message)
                }
                Action::Alert {
                    severity,
                    message,
                    metadata,
                } => shared
                    .notifier
                    .alert(&r.about(), severity, &message, metadata),
                Action::Finished { promoted, skipped } => self.finished(r, promoted, skipped),
            }
        }
        if r.status.measure_from_ms != measure_before {
            r.restart_measurements();
        }
    }

    /// A run ended: Flagger's counters and weir's duration histogram.
    fn finished(&self, r: &Rollout, promoted: bool, skipped: bool) {
        let m = &self.shared.metrics;
        let labels = [
            r.target.name.as_str(),
            r.target.namespace.as_str(),
            r.analysis.strategy.label(),
            if skipped { "skipped" } else { "completed" },
        ];
        if promoted {
            m.successes.with_label_values(&labels).inc();
        } else {
            m.failures.with_label_values(&labels).inc();
        }
        if let Some(start) = r.status.started_ms {
            let secs = now_ms().saturating_sub(start) as f64 / 1000.0;
            m.rollout_seconds
                .with_label_values(&[
                    r.service.as_str(),
                    r.target.namespace.as_str(),
                    if promoted { "promoted" } else { "failed" },
                ])
                .observe(secs);
        }
    }
}

/// One look of the fast-fail guard: why the canary must be rolled back now, if it must.
fn fast_fail_reason(r: &mut Rollout) -> Option<String> {
    let Some(ff) = r.analysis.fast_fail else {
        r.measurements.reset_guard();
        return None;
    };
    let s = &r.status;
    if !s.phase.is_analysing() || s.paused || r.analysis.spec.suspend {
        return None;
    }
    let allowed = r
        .analysis
        .metrics
        .iter()
        .find(|m| m.kind == MetricKind::Builtin(BuiltinMetric::SuccessRate))
        .and_then(|m| m.min)
        .map(|min| ((100.0 - min) / 100.0).max(0.0));
    let (run, mirrored) = (s.started_ms, s.mirrored);
    r.measurements.guard(&ff, run, mirrored, allowed)
}
