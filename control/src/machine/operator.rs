//! What operators do to a rollout (promote, abort, pause, resume, retry, set the weight,
//! open or refuse a gate), as transitions of the pure machine: each either changes the
//! status and emits actions, or is refused with the reason and changes nothing.

use super::{Env, Machine, Phase};
use crate::spec::{HookKind, Severity};

/// A manual operation over the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Promote,
    Abort,
    Pause,
    Resume,
    Retry,
    /// Set the canary's weight; above the analysis' maxWeight only when forced.
    SetWeight {
        weight: u32,
        force: bool,
    },
    /// Open a gate: the one named, or (empty) the one the rollout waits on.
    Approve(String),
    /// Refuse a gate: the rollout is rolled back.
    Deny(String),
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(message: String) -> Refused {
    Refused(message)
}

impl Machine<'_> {
    /// Carries out an operation. Ok(true) when the rollout should tick at once.
    pub async fn operate<E: Env>(&mut self, op: &Op, env: &mut E) -> Result<bool, Refused> {
        let service = self.target.name.clone();
        let phase = self.status.phase;
        match op {
            Op::Promote => self.promote().map(|()| false),
            Op::Abort => self.abort("manual abort", env).await.map(|()| false),
            Op::Pause if !phase.is_active() => Err(refused(format!(
                "{service} is {}: there is no rollout to pause",
                phase.name()
            ))),
            Op::Pause if self.status.paused => Err(refused(format!("{service} is already paused"))),
            Op::Pause => {
                self.status.paused = true;
                Ok(false)
            }
            Op::Resume if !self.status.paused => Err(refused(format!("{service} is not paused"))),
            Op::Resume => {
                self.status.paused = false;
                Ok(false)
            }
            Op::Retry if phase != Phase::Failed => Err(refused(format!(
                "{service} is {}: only a failed rollout can be retried",
                phase.name()
            ))),
            Op::Retry => {
                self.status.last_applied = None;
                Ok(true)
            }
            Op::SetWeight { weight, force } => self.set_weight(*weight, *force).map(|()| false),
            Op::Approve(gate) | Op::Deny(gate) => {
                let kind = self.gate_named(gate)?;
                if !phase.is_active() {
                    return Err(refused(format!(
                        "{service} is {}: there is no rollout at a gate",
                        phase.name()
                    )));
                }
                if matches!(op, Op::Approve(_)) {
                    self.status.approvals.insert(kind);
                    Ok(true)
                } else {
                    let why = format!("gate {} denied", kind.name());
                    self.abort(&why, env).await.map(|()| false)
                }
            }
        }
    }

    /// The gate an approve or deny names (empty: the one the rollout waits on).
    fn gate_named(&self, gate: &str) -> Result<HookKind, Refused> {
        if gate.is_empty() {
            return self.status.waiting_gate.ok_or_else(|| {
                refused(format!(
                    "{} is not waiting on a gate (phase {})",
                    self.target.name,
                    self.status.phase.name()
                ))
            });
        }
        HookKind::parse(gate).filter(|k| k.is_gate()).ok_or_else(|| {
            refused(format!(
                "{gate:?} is not a gate; gates are confirm-rollout, confirm-traffic-increase, confirm-promotion"
            ))
        })
    }

    /// `weir ctl abort` (or a denied gate): roll back now.
    async fn abort<E: Env>(&mut self, why: &str, env: &mut E) -> Result<(), Refused> {
        if !self.status.phase.is_active() || self.status.phase == Phase::Finalising {
            return Err(refused(format!(
                "{} is {}: there is no rollout to abort",
                self.target,
                self.status.phase.name()
            )));
        }
        if self.status.phase == Phase::Promoting {
            return Err(refused(format!(
                "{} is Promoting: the canary is already the primary",
                self.target
            )));
        }
        self.event(true, format!("Rolling back {} {why}", self.target));
        self.alert(Severity::Warn, format!("Rolling back {why}"), false);
        self.rollback(env).await;
        Ok(())
    }

    /// `weir ctl promote`: skip the rest of the analysis.
    fn promote(&mut self) -> Result<(), Refused> {
        if !matches!(
            self.status.phase,
            Phase::Progressing | Phase::WaitingPromotion | Phase::Waiting
        ) {
            return Err(refused(format!(
                "{} is {}: only a rollout in Waiting, Progressing or WaitingPromotion can be promoted",
                self.target,
                self.status.phase.name()
            )));
        }
        self.status.paused = false;
        self.promote_now();
        Ok(())
    }

    /// `weir ctl set-weight`: move the canary's weight by hand during the analysis, within
    /// the analysis' maxWeight unless forced.
    fn set_weight(&mut self, weight: u32, force: bool) -> Result<(), Refused> {
        if weight > 100 {
            return Err(refused(format!("canary weight {weight} is above 100")));
        }
        let max = self.analysis.max_weight;
        if weight > max && !force {
            return Err(refused(format!(
                "canary weight {weight} is above {}'s maxWeight {max}; add --force to go past it",
                self.target.name
            )));
        }
        if !self.status.phase.is_analysing() {
            return Err(refused(format!(
                "{} is {}: weights can be set during Progressing or WaitingPromotion",
                self.target,
                self.status.phase.name()
            )));
        }
        self.route(weight, false, self.status.ab_routed);
        self.event(
            false,
            format!(
                "Advance {} canary weight {weight} (set by hand{})",
                self.target,
                if weight > max { ", past maxWeight" } else { "" }
            ),
        );
        Ok(())
    }
}
