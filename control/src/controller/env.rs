//! The state machine's hooks and checks against the live world: webhooks over HTTP (or
//! local commands), checks over the rollout's measurement windows.

use weir_proxy::config::Dur;

use crate::checks::{self, CheckResult, QueryOutcome};
use crate::hooks;
use crate::http_client::HttpPoster;
use crate::machine::{Env, HookOutcome, Phase, Target};
use crate::measurements::Measurements;
use crate::prometheus;
use crate::spec::{render, Analysis, HookKind, Metric, MetricKind, Query, Vars};

/// Hooks and checks for one rollout's machine.
pub(crate) struct LiveEnv<'a> {
    pub poster: &'a HttpPoster,
    pub target: &'a Target,
    pub analysis: &'a Analysis,
    pub measurements: &'a Measurements,
    /// The canary is measured on its shadow traffic.
    pub mirrored: bool,
    /// The revision under analysis (the payload's checksum).
    pub revision: Option<String>,
}

impl Env for LiveEnv<'_> {
    async fn hooks(&mut self, kind: HookKind, phase: Phase) -> HookOutcome {
        let payload = hooks::payload(
            &self.target.name,
            &self.target.namespace,
            phase,
            self.revision.as_deref(),
        );
        for hook in self.analysis.hooks_of(kind) {
            let result = hooks::call(self.poster, hook, &payload).await;
            match (kind, result) {
                (HookKind::Rollback, Ok(())) => {
                    return HookOutcome::Failed {
                        hook: hook.name.clone(),
                        error: "rollback signalled".into(),
                    }
                }
                (HookKind::Rollback, Err(_)) => {
                    tracing::debug!(hook = %hook.name, "Rollback hook {} not signaling a rollback", hook.name);
                }
                (HookKind::PostRollout, Err(e)) => {
                    tracing::warn!(canary = %self.target, "Post-rollout hook {} failed {e}", hook.name);
                }
                (_, Ok(())) => {
                    if let Some(stage) = stage(kind) {
                        tracing::info!(canary = %self.target, "{stage} check {} passed", hook.name);
                    }
                }
                (_, Err(error)) => {
                    return HookOutcome::Failed {
                        hook: hook.name.clone(),
                        error: error.to_string(),
                    }
                }
            }
        }
        HookOutcome::Passed
    }

    async fn checks(&mut self) -> Vec<CheckResult> {
        let mut out = Vec::with_capacity(self.analysis.metrics.len());
        for m in &self.analysis.metrics {
            let r = match &m.kind {
                MetricKind::Query(q) => checks::judge_query(m, self.query(q, m).await),
                _ => {
                    let w = self.measurements.window(m.window, self.mirrored);
                    checks::evaluate(m, &w.canary, &w.primary)
                }
            };
            tracing::info!(canary = %self.target, check = %r.name, verdict = r.verdict.name(), value = ?r.value, threshold = %r.threshold, "{}", r.detail);
            out.push(r);
        }
        out
    }
}

impl LiveEnv<'_> {
    /// Renders and runs a query metric.
    async fn query(&self, q: &Query, m: &Metric) -> QueryOutcome {
        let vars = Vars {
            name: &self.target.name,
            namespace: &self.target.namespace,
            interval: Dur(m.window),
        };
        match render(q, &vars) {
            Ok(promql) => prometheus::query(self.poster, &q.address, &promql).await,
            Err(e) => QueryOutcome::Failed(e.to_string()),
        }
    }
}

/// How Flagger names a hook stage in its "check passed" line.
fn stage(kind: HookKind) -> Option<&'static str> {
    Some(match kind {
        HookKind::PreRollout => "Pre-rollout",
        HookKind::ConfirmRollout => "Confirm-rollout",
        HookKind::ConfirmTrafficIncrease => "Confirm-traffic-increase",
        HookKind::ConfirmPromotion => "Confirm-promotion",
        HookKind::PostRollout => "Post-rollout",
        _ => return None,
    })
}
