//! The rollout state machine: Flagger's scheduler semantics as a pure function of
//! (analysis spec, status, revision, measurements, now) to actions.
//!
//! It never sleeps, reads the clock or does I/O: hooks and checks come through [`Env`],
//! time through [`Machine::new`], and everything it wants done comes back as [`Action`]s.
//! Where Flagger's code and docs disagree, the choices are documented on the functions.

mod operator;
mod status;
mod strategy;

pub use operator::{Op, Refused};
pub use status::{Phase, Status, Target};

use crate::checks::{CheckResult, Verdict};
use crate::spec::{Analysis, HookKind, Severity, Strategy};

/// What one tick sees of the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The canary's revision now (from weir.yaml or StartRollout).
    pub canary_revision: Option<String>,
    /// The primary's revision now.
    pub primary_revision: Option<String>,
}

/// The outcome of running the hooks of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Every hook passed (or there were none).
    Passed,
    /// A hook failed: its name and the error (for rollback hooks: the one that fired).
    Failed { hook: String, error: String },
}

/// Why a gate is closed; shown as the name of the hook holding it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GateClosed {
    /// A manual gate, open only once approved over the control API.
    #[error("{hook}")]
    Manual { hook: String },
    /// A hook of the gate did not pass.
    #[error("{hook}")]
    HookFailed { hook: String },
}

/// I/O the state machine asks for during a tick. Tests implement it with scripts.
#[allow(async_fn_in_trait)]
pub trait Env {
    /// Runs every hook of `kind` with Flagger's payload phase `phase`, in order, stopping
    /// at the first failure. For rollback hooks, `Failed` means one signalled a rollback.
    async fn hooks(&mut self, kind: HookKind, phase: Phase) -> HookOutcome;
    /// Evaluates every metric check on the current windows.
    async fn checks(&mut self) -> Vec<CheckResult>;
}

/// Something the machine wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Route `canary_weight`% to the canary (the rest to the primary); mirror to the
    /// canary; send the A/B matches to the canary.
    Route {
        canary_weight: u32,
        mirror: bool,
        ab: bool,
    },
    /// The canary's endpoints and revision become the primary's.
    Promote,
    /// An event (log line, event webhooks, Watch).
    Event { warning: bool, message: String },
    /// An alert for the analysis' alert providers.
    Alert {
        severity: Severity,
        message: String,
        metadata: bool,
    },
    /// The run ended (counters, duration histogram).
    Finished { promoted: bool, skipped: bool },
}

/// One rollout's machine: a target, its analysis and its status.
pub struct Machine<'a> {
    pub target: &'a Target,
    pub analysis: &'a Analysis,
    pub status: &'a mut Status,
    pub actions: Vec<Action>,
    now_ms: u64,
}

impl<'a> Machine<'a> {
    /// A machine over one status.
    pub fn new(
        target: &'a Target,
        analysis: &'a Analysis,
        status: &'a mut Status,
        now_ms: u64,
    ) -> Self {
        Machine {
            target,
            analysis,
            status,
            actions: Vec::new(),
            now_ms,
        }
    }

    pub(super) fn event(&mut self, warning: bool, message: String) {
        self.status.last_event = message.clone();
        self.actions.push(Action::Event { warning, message });
    }

    pub(super) fn alert(&mut self, severity: Severity, message: impl Into<String>, metadata: bool) {
        self.actions.push(Action::Alert {
            severity,
            message: message.into(),
            metadata,
        });
    }

    pub(super) fn set_phase(&mut self, phase: Phase) {
        if self.status.phase != phase {
            self.status.phase = phase;
            self.status.last_transition_ms = self.now_ms;
        }
    }

    pub(super) fn route(&mut self, canary_weight: u32, mirror: bool, ab: bool) {
        let s = &mut *self.status;
        if canary_weight > 0 && s.canary_weight == 0 && !s.ab_routed && !s.mirrored
            || (mirror || ab) && !(s.mirrored || s.ab_routed)
        {
            // The canary starts receiving traffic: measurements start here.
            s.measure_from_ms = Some(self.now_ms);
        }
        s.canary_weight = canary_weight;
        s.mirrored = mirror;
        s.ab_routed = ab;
        self.actions.push(Action::Route {
            canary_weight,
            mirror,
            ab,
        });
    }

    /// Resets the status for a new run of `revision` (Flagger's SyncStatus).
    fn start_run(&mut self, revision: Option<String>) {
        let s = &mut *self.status;
        s.canary_weight = 0;
        s.failed_checks = 0;
        s.iterations = 0;
        s.mirrored = false;
        s.ab_routed = false;
        s.approvals.clear();
        s.waiting_gate = None;
        s.inconclusive_since_ms = None;
        s.checks.clear();
        s.last_applied = revision;
        s.started_ms = Some(self.now_ms);
        s.measure_from_ms = None;
        s.pre_rollout_passed = false;
        s.paused = false;
    }

    /// A gate is open when approved over the control API, or when it has no manual
    /// hooks and all its hooks pass. The error names the hook holding it closed.
    pub(super) async fn gate<E: Env>(
        &mut self,
        kind: HookKind,
        env: &mut E,
    ) -> Result<(), GateClosed> {
        if self.status.approvals.contains(&kind) {
            return Ok(());
        }
        if let Some(manual) = self.analysis.hooks_of(kind).find(|h| h.is_manual()) {
            return Err(GateClosed::Manual {
                hook: manual.name.clone(),
            });
        }
        if self.analysis.hooks_of(kind).next().is_none() {
            return Ok(());
        }
        match env
            .hooks(kind, Phase::payload_phase(kind, self.status.phase))
            .await
        {
            HookOutcome::Passed => Ok(()),
            HookOutcome::Failed { hook, .. } => Err(GateClosed::HookFailed { hook }),
        }
    }

    pub(super) fn gate_muted(&self, kind: HookKind) -> bool {
        self.analysis.hooks_of(kind).any(|h| h.mute_alert)
    }

    /// One tick (Flagger's `advanceCanary`).
    pub async fn tick<E: Env>(&mut self, input: &Input, env: &mut E) {
        if self.analysis.spec.suspend || self.status.paused {
            return;
        }
        if self.status.phase == Phase::Initializing {
            self.initialize(input);
            return;
        }
        let revision = input.canary_revision.clone();
        // A revision equal to the primary's is not new: setting the canary back to the
        // promoted version never starts an analysis (Flagger ignores manual rollbacks).
        let changed = revision.is_some()
            && revision != self.status.last_applied
            && revision != input.primary_revision;
        let phase = self.status.phase;
        if !phase.is_active() && !changed {
            return;
        }
        if matches!(
            phase,
            Phase::Initialized | Phase::Succeeded | Phase::Failed | Phase::Waiting
        ) {
            self.begin(revision, env).await;
            return;
        }
        let target = self.target.to_string();
        if phase.is_analysing() && changed {
            self.event(
                false,
                format!("New revision detected! Restarting analysis for {target}"),
            );
            self.route(0, false, false);
            self.start_run(revision);
            self.set_phase(Phase::Progressing);
            return;
        }
        if self.analysis.spec.skip_analysis && phase.is_analysing() {
            self.route(0, false, false);
            self.promote_now();
            self.succeed(
                true,
                format!("Promotion completed! Canary analysis was skipped for {target}"),
                "Canary analysis was skipped, promotion finished.",
                env,
            )
            .await;
            return;
        }
        if phase.is_analysing() && self.rolled_back_by_hook(phase, env).await {
            return;
        }
        match phase {
            Phase::Promoting => self.promotion_traffic_shift(),
            Phase::Finalising => {
                self.succeed(
                    false,
                    format!("Promotion completed! All traffic to the new primary of {target}"),
                    "Canary analysis completed successfully, promotion finished.",
                    env,
                )
                .await
            }
            _ if self.status.failed_checks >= self.analysis.threshold => {
                let threshold = self.analysis.threshold;
                self.event(
                    true,
                    format!("Rolling back {target} failed checks threshold reached {threshold}"),
                );
                self.alert(
                    Severity::Error,
                    format!("Failed checks threshold reached {threshold}"),
                    false,
                );
                self.rollback(env).await;
            }
            _ => {
                if self.analysed(env).await {
                    self.advance(env).await;
                }
            }
        }
    }

    /// The first tick: the machine takes over the service's traffic. As Flagger does
    /// with a new Canary, the canary revision found now is taken as deployed, not as a
    /// change: the rollout starts when the revision changes (a reload, `weir ctl start`).
    fn initialize(&mut self, input: &Input) {
        self.set_phase(Phase::Initialized);
        if self.status.last_applied.is_none() {
            self.status.last_applied = input.canary_revision.clone();
        }
        self.event(false, format!("Initialization done! {}", self.target));
        self.alert(
            Severity::Info,
            "New service detected, initialization completed.",
            true,
        );
        if self.status.last_promoted.is_none() {
            self.status.last_promoted = input.primary_revision.clone();
        }
        self.route(0, false, false);
    }

    /// A new revision while idle (or waiting): the confirm-rollout gate, then a new run.
    async fn begin<E: Env>(&mut self, revision: Option<String>, env: &mut E) {
        let target = self.target.to_string();
        let phase = self.status.phase;
        // Decision: rollback hooks also run in Waiting (Flagger's docs say so; its code
        // cannot reach them).
        if phase == Phase::Waiting && self.rolled_back_by_hook(phase, env).await {
            return;
        }
        if let Err(hook) = self.gate(HookKind::ConfirmRollout, env).await {
            if self.status.phase != Phase::Waiting {
                self.set_phase(Phase::Waiting);
                self.status.last_applied = None;
                if !self.gate_muted(HookKind::ConfirmRollout) {
                    self.alert(Severity::Warn, "Canary is waiting for approval.", false);
                }
            }
            self.status.waiting_gate = Some(HookKind::ConfirmRollout);
            self.event(
                true,
                format!("Halt {target} advancement waiting for approval {hook}"),
            );
            return;
        }
        self.event(
            false,
            format!("New revision detected! Starting canary analysis for {target}"),
        );
        self.alert(
            Severity::Info,
            "New revision detected, progressing canary analysis.",
            true,
        );
        self.start_run(revision);
        self.set_phase(Phase::Progressing);
        self.route(0, false, false);
    }

    /// The analysis part of a tick: the pre-rollout hooks before the first step, then
    /// the rollout hooks and the checks. True when the rollout may advance.
    async fn analysed<E: Env>(&mut self, env: &mut E) -> bool {
        let target = self.target.to_string();
        let s = &*self.status;
        let first = s.canary_weight == 0
            && s.iterations == 0
            && !s.ab_routed
            && !(self.analysis.spec.mirror && s.mirrored);
        if first {
            if s.pre_rollout_passed {
                return true;
            }
            self.event(false, format!("Starting canary analysis for {target}"));
            if self
                .halted_by_hook(HookKind::PreRollout, "pre-rollout", env)
                .await
            {
                return false;
            }
            self.status.pre_rollout_passed = true;
            return true;
        }
        if self
            .halted_by_hook(HookKind::Rollout, "external", env)
            .await
        {
            return false;
        }
        let results = env.checks().await;
        self.status.checks = results.clone();
        if let Some(failed) = results.iter().find(|r| r.verdict == Verdict::Fail) {
            // At most one failed check per tick, as Flagger counts them.
            self.status.failed_checks += 1;
            self.status.inconclusive_since_ms = None;
            self.event(true, format!("Halt {target} advancement {}", failed.detail));
            return false;
        }
        if let Some(unsure) = results.iter().find(|r| r.verdict == Verdict::Inconclusive) {
            self.inconclusive(unsure, env).await;
            return false;
        }
        self.status.inconclusive_since_ms = None;
        true
    }

    /// Every check inconclusive: the step holds until the progress deadline, then the
    /// rollout is rolled back with the reason.
    async fn inconclusive<E: Env>(&mut self, unsure: &CheckResult, env: &mut E) {
        let target = self.target.to_string();
        let since = *self.status.inconclusive_since_ms.get_or_insert(self.now_ms);
        let deadline = self.analysis.progress_deadline.as_millis() as u64;
        if self.now_ms.saturating_sub(since) < deadline {
            self.event(
                false,
                format!(
                    "Halt {target} advancement {} inconclusive: {}",
                    unsure.name, unsure.detail
                ),
            );
            return;
        }
        let secs = deadline / 1000;
        self.event(
            true,
            format!(
                "Rolling back {target} progress deadline exceeded: no conclusive measurements for {secs}s ({} {})",
                unsure.name, unsure.detail
            ),
        );
        self.alert(
            Severity::Error,
            format!(
                "Progress deadline exceeded: {} {}",
                unsure.name, unsure.detail
            ),
            false,
        );
        self.rollback(env).await;
    }

    /// The next step of the strategy.
    async fn advance<E: Env>(&mut self, env: &mut E) {
        match self.analysis.strategy {
            Strategy::AbTesting => self.run_ab(env).await,
            Strategy::BlueGreen => self.run_blue_green(env).await,
            Strategy::Canary => self.run_canary(env).await,
        }
    }

    /// Copies the canary to the primary and enters Promoting; traffic stays as it is
    /// until the next tick.
    pub(super) fn promote_now(&mut self) {
        let t = self.target;
        self.event(
            false,
            format!(
                "Promoting {}.{}: the canary's endpoints and revision become the primary's",
                t.name, t.namespace
            ),
        );
        self.actions.push(Action::Promote);
        self.status.waiting_gate = None;
        self.set_phase(Phase::Promoting);
    }

    /// Promoting: all traffic back to the (now promoted) primary, at once or by
    /// stepWeightPromotion. A/B and mirrored runs move back in one step.
    fn promotion_traffic_shift(&mut self) {
        let step = self.analysis.step_weight_promotion;
        let weight = self.status.canary_weight;
        if step == 0 || self.status.ab_routed || weight == 0 {
            self.event(false, "Routing all traffic to primary".into());
            self.route(0, false, false);
            self.set_phase(Phase::Finalising);
            return;
        }
        let primary = (100 - weight + step).min(100);
        let canary = 100 - primary;
        self.route(canary, false, false);
        self.event(
            false,
            format!("Advance {} primary weight {primary}", self.target),
        );
        if canary == 0 {
            self.set_phase(Phase::Finalising);
        }
    }

    /// Sends all traffic back to the primary and marks the run failed.
    /// Runs the rollback hooks; when one signals, rolls back and returns true.
    async fn rolled_back_by_hook<E: Env>(&mut self, phase: Phase, env: &mut E) -> bool {
        if let HookOutcome::Passed = env.hooks(HookKind::Rollback, phase).await {
            return false;
        }
        self.event(
            true,
            format!("Rolling back {} manual webhook invoked", self.target),
        );
        self.alert(Severity::Warn, "Rolling back manual webhook invoked", false);
        self.rollback(env).await;
        true
    }

    /// Runs one kind of check hook during the analysis; a failure counts a failed check,
    /// halts the step and returns true.
    async fn halted_by_hook<E: Env>(&mut self, kind: HookKind, what: &str, env: &mut E) -> bool {
        let HookOutcome::Failed { hook, error } = env.hooks(kind, Phase::Progressing).await else {
            return false;
        };
        self.status.failed_checks += 1;
        self.event(
            true,
            format!(
                "Halt {} advancement {what} check {hook} failed {error}",
                self.target
            ),
        );
        true
    }

    /// The rollout succeeded (promoted, or analysis skipped): record it, run the
    /// post-rollout hooks and tell.
    async fn succeed<E: Env>(&mut self, skipped: bool, event: String, alert: &str, env: &mut E) {
        self.set_phase(Phase::Succeeded);
        self.status.last_promoted = self.status.last_applied.clone();
        self.status.waiting_gate = None;
        self.actions.push(Action::Finished {
            promoted: true,
            skipped,
        });
        let _ = env.hooks(HookKind::PostRollout, Phase::Succeeded).await;
        self.event(false, event);
        self.alert(Severity::Info, alert, false);
    }

    pub(super) async fn rollback<E: Env>(&mut self, env: &mut E) {
        self.route(0, false, false);
        self.event(
            true,
            format!(
                "Canary failed! All traffic back to the primary of {}",
                self.target
            ),
        );
        self.set_phase(Phase::Failed);
        self.status.paused = false;
        self.status.failed_checks = 0;
        self.status.iterations = 0;
        self.status.waiting_gate = None;
        self.status.inconclusive_since_ms = None;
        self.actions.push(Action::Finished {
            promoted: false,
            skipped: false,
        });
        let _ = env.hooks(HookKind::PostRollout, Phase::Failed).await;
    }

    /// The fast-fail guard fired: roll back at once, without waiting for the tick.
    pub async fn fast_fail<E: Env>(&mut self, reason: &str, env: &mut E) {
        if !self.status.phase.is_analysing() || self.status.paused {
            return;
        }
        self.event(
            true,
            format!("Rolling back {} fast-fail: {reason}", self.target),
        );
        self.alert(Severity::Error, format!("Fast-fail: {reason}"), false);
        self.rollback(env).await;
    }
}

#[cfg(test)]
mod tests;
