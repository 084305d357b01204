//! Gates, hooks, deadlines and operator actions: approvals, failing hooks, skipped
//! analysis, inconclusive checks, retries, fast-fail and pause.

use super::*;

#[test]
fn confirm_rollout_gate_waits_then_starts_when_approved() {
    let mut r = Rollout::new(
        "interval: 10s\nthreshold: 2\nstepWeight: 10\nwebhooks:\n- name: gate\n  type: confirm-rollout\n",
    );
    r.tick();
    r.input.canary_revision = Some("2.0.0".into());
    r.run(3);
    assert_eq!(r.status.phase, Waiting);
    assert_eq!(r.status.waiting_gate, Some(HookKind::ConfirmRollout));
    let waits = r
        .alerts()
        .iter()
        .filter(|a| a.1 == "Canary is waiting for approval.")
        .count();
    assert_eq!(waits, 1, "the alert goes once, on entering Waiting");
    r.status.approvals.insert(HookKind::ConfirmRollout);
    r.tick();
    assert_eq!(r.status.phase, Progressing);
}

#[test]
fn closed_traffic_gate_holds_weight_without_rerunning_pre_rollout() {
    let mut r = Rollout::started(
        "interval: 10s\nthreshold: 2\nmaxWeight: 50\nstepWeight: 10\nwebhooks:\n- name: pre\n  type: pre-rollout\n  url: http://127.0.0.1:1/\n- name: step\n  type: confirm-traffic-increase\n  url: http://127.0.0.1:1/\n",
    );
    r.env
        .hooks
        .insert(HookKind::ConfirmTrafficIncrease, [failed("step")].into());
    r.run(3);
    assert_eq!(r.status.canary_weight, 0);
    let pre = r
        .env
        .calls
        .iter()
        .filter(|c| c.0 == HookKind::PreRollout)
        .count();
    assert_eq!(
        pre, 1,
        "a closed gate at weight 0 does not re-run pre-rollout (Flagger #1248)"
    );
    r.env.hooks.insert(
        HookKind::ConfirmTrafficIncrease,
        [HookOutcome::Passed].into(),
    );
    r.tick();
    assert_eq!(r.status.canary_weight, 10);
    r.env
        .hooks
        .insert(HookKind::ConfirmTrafficIncrease, [failed("step")].into());
    r.run(3);
    assert_eq!(r.status.canary_weight, 10);
    let pre_after = r
        .env
        .calls
        .iter()
        .filter(|c| c.0 == HookKind::PreRollout)
        .count();
    assert_eq!(pre_after, 1, "nor at weight > 0");
    assert!(r.events().contains(
        &"Halt podinfo.test advancement waiting for traffic increase approval step".to_string()
    ));
}

#[test]
fn confirm_promotion_gate_keeps_analysing_and_counts_failures() {
    let mut r = Rollout::started(
        "interval: 10s\nthreshold: 2\nmaxWeight: 10\nstepWeight: 10\nwebhooks:\n- name: promote\n  type: confirm-promotion\n",
    );
    r.run(2);
    assert_eq!(
        (r.status.phase, r.status.canary_weight),
        (WaitingPromotion, 10)
    );
    r.env.default_verdict = Some(Verdict::Fail);
    r.run(3);
    assert_eq!(
        r.status.phase, Failed,
        "the threshold still applies while waiting"
    );
}

#[test]
fn approved_promotion_gate_promotes() {
    let mut r = Rollout::started(
        "interval: 10s\nthreshold: 2\nmaxWeight: 10\nstepWeight: 10\nwebhooks:\n- name: promote\n  type: confirm-promotion\n",
    );
    r.run(2);
    r.status.approvals.insert(HookKind::ConfirmPromotion);
    r.tick();
    assert_eq!(r.status.phase, Promoting);
}

#[test]
fn pre_rollout_failure_counts_and_halts() {
    let mut r = Rollout::started(
        "interval: 10s\nthreshold: 2\nstepWeight: 10\nwebhooks:\n- name: smoke\n  type: pre-rollout\n  url: http://127.0.0.1:1/\n",
    );
    r.env
        .hooks
        .insert(HookKind::PreRollout, [failed("smoke")].into());
    r.run(3);
    assert_eq!(r.status.phase, Failed);
    assert!(r.events().contains(
        &"Halt podinfo.test advancement pre-rollout check smoke failed closed".to_string()
    ));
}

#[test]
fn rollback_hook_aborts_the_run() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 5\nstepWeight: 10\n");
    r.tick();
    r.env
        .hooks
        .insert(HookKind::Rollback, [failed("rb")].into());
    r.tick();
    assert_eq!(r.status.phase, Failed);
    assert!(r
        .events()
        .contains(&"Rolling back podinfo.test manual webhook invoked".to_string()));
}

#[test]
fn skip_analysis_promotes_at_once() {
    let mut r =
        Rollout::started("interval: 10s\nthreshold: 5\nstepWeight: 10\nskipAnalysis: true\n");
    r.tick();
    assert_eq!(r.status.phase, Succeeded);
    assert!(r.actions.contains(&Action::Finished {
        promoted: true,
        skipped: true
    }));
    assert!(r.events().contains(
        &"Promotion completed! Canary analysis was skipped for podinfo.test".to_string()
    ));
}

#[test]
fn inconclusive_holds_without_failing_until_the_deadline() {
    let mut r = Rollout::started(
        "interval: 10s\nthreshold: 1\nmaxWeight: 50\nstepWeight: 10\nprogressDeadlineSeconds: 60\n",
    );
    r.tick();
    r.env.default_verdict = Some(Verdict::Inconclusive);
    r.run(6);
    assert_eq!(
        (
            r.status.phase,
            r.status.canary_weight,
            r.status.failed_checks
        ),
        (Progressing, 10, 0)
    );
    r.tick();
    assert_eq!(r.status.phase, Failed);
    assert!(r.events().iter().any(|e| e.starts_with(
        "Rolling back podinfo.test progress deadline exceeded: no conclusive measurements for 60s"
    )));
}

#[test]
fn rolled_back_revision_needs_a_retry_and_the_primary_revision_never_starts() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 1\nstepWeight: 10\n");
    r.env.default_verdict = Some(Verdict::Fail);
    r.run(3);
    assert_eq!(r.status.phase, Failed);
    r.run(2);
    assert_eq!(r.status.phase, Failed);
    // Retry: forget the applied revision.
    r.status.last_applied = None;
    r.env.default_verdict = None;
    r.tick();
    assert_eq!(r.status.phase, Progressing);
    // The primary's own revision is not a new canary.
    let mut r = Rollout::new("interval: 10s\nthreshold: 1\nstepWeight: 10\n");
    r.run(3);
    assert_eq!(r.status.phase, Initialized);
}

#[test]
fn fast_fail_rolls_back_between_ticks() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 5\nstepWeight: 10\n");
    r.tick();
    let mut m = Machine::new(&r.target, &r.analysis, &mut r.status, 0);
    block_on(m.fast_fail("canary 5xx 20/20", &mut r.env));
    assert_eq!(r.status.phase, Failed);
    assert_eq!(r.status.canary_weight, 0);
}

#[test]
fn suspend_and_pause_freeze_everything() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 5\nstepWeight: 10\n");
    r.tick();
    r.status.paused = true;
    assert_eq!(r.run(3), [(Progressing, 10); 3]);
    r.status.paused = false;
    r.tick();
    assert_eq!(r.status.canary_weight, 20);
}

#[test]
fn status_metric_values_follow_flagger() {
    assert_eq!(Progressing.status_value(), 0);
    assert_eq!(Failed.status_value(), 2);
    assert_eq!(WaitingPromotion.status_value(), 1);
}
