//! A rollout's persisted state: Flagger's phases and Canary status, plus weir's fields,
//! and the name of the target.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::checks::CheckResult;
use crate::spec::HookKind;

/// Flagger's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Initializing,
    Initialized,
    Waiting,
    Progressing,
    WaitingPromotion,
    Promoting,
    Finalising,
    Succeeded,
    Failed,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 9] = [
        Phase::Initializing,
        Phase::Initialized,
        Phase::Waiting,
        Phase::Progressing,
        Phase::WaitingPromotion,
        Phase::Promoting,
        Phase::Finalising,
        Phase::Succeeded,
        Phase::Failed,
    ];

    /// The phase Flagger writes as `name`.
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The phase as Flagger writes it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Initialized => "Initialized",
            Phase::Waiting => "Waiting",
            Phase::Progressing => "Progressing",
            Phase::WaitingPromotion => "WaitingPromotion",
            Phase::Promoting => "Promoting",
            Phase::Finalising => "Finalising",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    /// `flagger_canary_status`: Progressing 0, Failed 2, everything else 1.
    pub fn status_value(self) -> i64 {
        match self {
            Phase::Progressing => 0,
            Phase::Failed => 2,
            _ => 1,
        }
    }

    /// True while a canary revision is being analysed or promoted.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Progressing
                | Phase::Waiting
                | Phase::WaitingPromotion
                | Phase::Promoting
                | Phase::Finalising
        )
    }

    /// True while checks run and the threshold applies.
    pub fn is_analysing(self) -> bool {
        matches!(self, Phase::Progressing | Phase::WaitingPromotion)
    }

    /// The `Promoted` condition's message (Flagger's MakeStatusConditions).
    pub fn condition_message(self) -> &'static str {
        match self {
            Phase::Initializing => "New service detected, starting initialization.",
            Phase::Initialized => "Deployment initialization completed.",
            Phase::Waiting | Phase::WaitingPromotion => "Waiting for approval.",
            Phase::Progressing => "New revision detected, progressing canary analysis.",
            Phase::Promoting => "Canary analysis completed, starting primary rolling update.",
            Phase::Finalising => "Canary analysis completed, routing all traffic to primary.",
            Phase::Succeeded => "Canary analysis completed successfully, promotion finished.",
            Phase::Failed => "Canary analysis failed, Deployment scaled to zero.",
        }
    }
}

/// A rollout's status: what Flagger keeps in the Canary status, plus weir's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub phase: Phase,
    /// The canary weight actually routed.
    pub canary_weight: u32,
    pub failed_checks: u32,
    pub iterations: u32,
    /// Shadow traffic goes to the canary.
    pub mirrored: bool,
    /// The A/B match rules send matching requests to the canary.
    pub ab_routed: bool,
    /// The revision under (or last through) analysis.
    pub last_applied: Option<String>,
    /// The revision most recently promoted.
    pub last_promoted: Option<String>,
    /// Unix milliseconds of the last phase change.
    pub last_transition_ms: u64,
    /// Frozen by `weir ctl pause` (or `suspend` in the spec).
    pub paused: bool,
    /// Gates opened by `weir ctl approve` for this run.
    pub approvals: BTreeSet<HookKind>,
    /// The gate the rollout waits on.
    pub waiting_gate: Option<HookKind>,
    /// Since when every check has been inconclusive (Unix ms).
    pub inconclusive_since_ms: Option<u64>,
    /// When this run started (Unix ms), for the rollout-duration histogram.
    pub started_ms: Option<u64>,
    /// When the canary's current measurements began (Unix ms): windows never reach
    /// back before it, so an earlier revision's requests never count.
    pub measure_from_ms: Option<u64>,
    /// The latest check results.
    pub checks: Vec<CheckResult>,
    /// The latest event message.
    pub last_event: String,
    /// The pre-rollout hooks passed for this run (a closed traffic gate at weight 0
    /// never runs them again).
    pub pre_rollout_passed: bool,
    /// Why weir no longer knows this rollout's state (a corrupt state file): it serves
    /// the primary only and takes no rollout until an operator resets it.
    pub state_lost: Option<String>,
}

/// Names a service as Flagger names the target: `podinfo.test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub namespace: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

impl Phase {
    /// The phase Flagger sends in a hook's payload: Progressing for the analysis hooks,
    /// the current phase for confirm-rollout and rollback.
    pub(super) fn payload_phase(kind: HookKind, current: Phase) -> Phase {
        match kind {
            HookKind::ConfirmRollout | HookKind::Rollback => current,
            _ => Phase::Progressing,
        }
    }
}
