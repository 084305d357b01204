//! The state machine against Flagger's behaviours, with a fake clock and scripted hooks
//! and checks.

use std::collections::{HashMap, VecDeque};

use super::*;
use crate::checks::{CheckResult, Verdict};
use crate::spec;

mod gates;

/// Scripted world: hook outcomes per kind (default: pass) and check verdicts.
#[derive(Default)]
struct Fake {
    hooks: HashMap<HookKind, VecDeque<HookOutcome>>,
    calls: Vec<(HookKind, Phase)>,
    verdicts: VecDeque<Verdict>,
    default_verdict: Option<Verdict>,
}

impl Env for Fake {
    async fn hooks(&mut self, kind: HookKind, phase: Phase) -> HookOutcome {
        self.calls.push((kind, phase));
        self.hooks
            .get_mut(&kind)
            .and_then(|q| {
                if q.len() > 1 {
                    q.pop_front()
                } else {
                    q.front().cloned()
                }
            })
            .unwrap_or(HookOutcome::Passed)
    }

    async fn checks(&mut self) -> Vec<CheckResult> {
        let verdict = self
            .verdicts
            .pop_front()
            .or(self.default_verdict)
            .unwrap_or(Verdict::Pass);
        vec![CheckResult {
            name: "request-success-rate".into(),
            verdict,
            value: Some(if verdict == Verdict::Fail {
                50.0
            } else {
                100.0
            }),
            threshold: "min 99".into(),
            detail: match verdict {
                Verdict::Fail => "success rate 50.00% < 99%".into(),
                Verdict::Inconclusive => "3 requests < minRequests 20".into(),
                Verdict::Pass => "success rate 100.00%".into(),
            },
        }]
    }
}

fn failed(hook: &str) -> HookOutcome {
    HookOutcome::Failed {
        hook: hook.into(),
        error: "closed".into(),
    }
}

struct Rollout {
    target: Target,
    analysis: Analysis,
    status: Status,
    env: Fake,
    input: Input,
    /// The fake clock (Unix ms).
    now_ms: u64,
    actions: Vec<Action>,
}

impl Rollout {
    fn new(yaml: &str) -> Rollout {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        let analysis =
            spec::parse(&v, "analysis", &crate::spec::Catalog::default()).expect("valid analysis");
        Rollout {
            target: Target {
                name: "podinfo".into(),
                namespace: "test".into(),
            },
            analysis,
            status: Status::default(),
            env: Fake::default(),
            input: Input {
                canary_revision: Some("1.0.0".into()),
                primary_revision: Some("1.0.0".into()),
            },
            now_ms: 1_000_000,
            actions: Vec::new(),
        }
    }

    /// Initializes and starts a run of revision 2.0.0 (the detection tick).
    fn started(yaml: &str) -> Rollout {
        let mut r = Rollout::new(yaml);
        r.tick();
        assert_eq!(r.status.phase, Phase::Initialized);
        r.input.canary_revision = Some("2.0.0".into());
        r.tick();
        assert_eq!(r.status.phase, Phase::Progressing);
        r
    }

    fn tick(&mut self) -> Vec<Action> {
        self.now_ms += self.analysis.interval.as_millis() as u64;
        let mut m = Machine::new(&self.target, &self.analysis, &mut self.status, self.now_ms);
        block_on(m.tick(&self.input, &mut self.env));
        let actions = m.actions;
        self.actions.extend(actions.clone());
        actions
    }

    /// (phase, weight) after each of `n` ticks.
    fn run(&mut self, n: usize) -> Vec<(Phase, u32)> {
        (0..n)
            .map(|_| {
                self.tick();
                (self.status.phase, self.status.canary_weight)
            })
            .collect()
    }

    fn events(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn alerts(&self) -> Vec<(Severity, String)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Alert {
                    severity, message, ..
                } => Some((*severity, message.clone())),
                _ => None,
            })
            .collect()
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

use Phase::*;

#[test]
fn step_weight_sequence_runs_to_promotion() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 2\nmaxWeight: 30\nstepWeight: 10\n");
    let seen = r.run(7);
    assert_eq!(
        seen,
        [
            (Progressing, 10),
            (Progressing, 20),
            (Progressing, 30),
            (Promoting, 30),
            (Finalising, 0),
            (Succeeded, 0),
            (Succeeded, 0),
        ]
    );
    let events = r.events();
    for want in [
        "Initialization done! podinfo.test",
        "New revision detected! Starting canary analysis for podinfo.test",
        "Starting canary analysis for podinfo.test",
        "Advance podinfo.test canary weight 10",
        "Advance podinfo.test canary weight 30",
        "Promoting podinfo.test: the canary's endpoints and revision become the primary's",
        "Routing all traffic to primary",
        "Promotion completed! All traffic to the new primary of podinfo.test",
    ] {
        assert!(
            events.iter().any(|e| e == want),
            "missing {want:?} in {events:#?}"
        );
    }
    assert!(r.actions.contains(&Action::Promote));
    assert_eq!(r.status.last_promoted.as_deref(), Some("2.0.0"));
    assert!(r
        .env
        .calls
        .contains(&(HookKind::PostRollout, Phase::Succeeded)));
}

#[test]
fn last_step_is_capped_at_max_weight() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 2\nmaxWeight: 50\nstepWeight: 20\n");
    let weights: Vec<u32> = r.run(4).iter().map(|(_, w)| *w).collect();
    assert_eq!(weights, [20, 40, 50, 50], "never 60 as in Flagger");
    assert_eq!(r.status.phase, Promoting);
}

#[test]
fn step_weights_sequence() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 2\nstepWeights: [1, 2, 10, 80]\n");
    let seen = r.run(5);
    assert_eq!(
        seen,
        [
            (Progressing, 1),
            (Progressing, 2),
            (Progressing, 10),
            (Progressing, 80),
            (Promoting, 80)
        ]
    );
}

#[test]
fn bad_canary_rolls_back_on_the_tick_after_the_threshold() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 3\nmaxWeight: 50\nstepWeight: 5\n");
    r.env.default_verdict = Some(Verdict::Fail);
    let seen = r.run(5);
    // weight 5 set, then three failing checks, then rollback on the next tick.
    assert_eq!(
        seen,
        [
            (Progressing, 5),
            (Progressing, 5),
            (Progressing, 5),
            (Progressing, 5),
            (Failed, 0)
        ]
    );
    let events = r.events();
    assert!(events.contains(&"Halt podinfo.test advancement success rate 50.00% < 99%".to_string()));
    assert!(
        events.contains(&"Rolling back podinfo.test failed checks threshold reached 3".to_string())
    );
    assert!(events
        .contains(&"Canary failed! All traffic back to the primary of podinfo.test".to_string()));
    assert!(r
        .alerts()
        .contains(&(Severity::Error, "Failed checks threshold reached 3".into())));
    assert!(r
        .env
        .calls
        .contains(&(HookKind::PostRollout, Phase::Failed)));
    // Failed stays failed: the same revision does not start again by itself.
    assert_eq!(r.run(2), [(Failed, 0), (Failed, 0)]);
}

#[test]
fn failed_checks_are_cumulative_not_consecutive() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 2\nmaxWeight: 50\nstepWeight: 10\n");
    r.tick(); // weight 10
    r.env.verdicts = [Verdict::Fail, Verdict::Pass, Verdict::Fail].into();
    r.run(3);
    assert_eq!(
        r.status.failed_checks, 2,
        "a pass in between resets nothing"
    );
    assert_eq!(r.status.canary_weight, 20);
    r.tick();
    assert_eq!(r.status.phase, Failed);
}

#[test]
fn at_most_one_failed_check_per_tick() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 5\nmaxWeight: 50\nstepWeight: 10\n");
    r.tick();
    r.env
        .hooks
        .insert(HookKind::Rollout, [failed("load-test")].into());
    r.env.default_verdict = Some(Verdict::Fail);
    r.tick();
    assert_eq!(r.status.failed_checks, 1);
    assert!(r.events().contains(
        &"Halt podinfo.test advancement external check load-test failed closed".to_string()
    ));
}

#[test]
fn mirror_pre_step_then_weights() {
    let mut r = Rollout::started(
        "interval: 10s\nthreshold: 2\nmaxWeight: 20\nstepWeight: 10\nmirror: true\n",
    );
    let a = r.tick();
    assert!(a.contains(&Action::Route {
        canary_weight: 0,
        mirror: true,
        ab: false
    }));
    let a = r.tick();
    assert!(a.contains(&Action::Route {
        canary_weight: 10,
        mirror: false,
        ab: false
    }));
    assert!(!r.status.mirrored);
}

#[test]
fn blue_green_phases() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 2\niterations: 1\n");
    let seen = r.run(5);
    assert_eq!(
        seen,
        [
            (Progressing, 0),
            (Progressing, 100),
            (Promoting, 100),
            (Finalising, 0),
            (Succeeded, 0)
        ]
    );
    let events = r.events();
    assert!(events.contains(&"Advance podinfo.test canary iteration 1/1".to_string()));
    assert!(events.contains(&"Routing all traffic to canary".to_string()));
}

#[test]
fn blue_green_with_mirroring_mirrors_each_iteration() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 2\niterations: 2\nmirror: true\n");
    r.run(2);
    assert!(r.status.mirrored);
    assert_eq!(r.status.canary_weight, 0);
    r.tick();
    assert!(!r.status.mirrored);
    assert_eq!(r.status.canary_weight, 100);
    assert!(r
        .events()
        .contains(&"Stop traffic mirroring and route all traffic to canary".to_string()));
}

#[test]
fn ab_testing_runs_iterations_on_matched_traffic() {
    let mut r = Rollout::started(
        "interval: 10s\nthreshold: 2\niterations: 3\nmatch:\n- headers:\n    x-canary: {exact: insider}\n",
    );
    let seen = r.run(4);
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        [Progressing, Progressing, Progressing, Promoting]
    );
    assert!(r.actions.contains(&Action::Route {
        canary_weight: 0,
        mirror: false,
        ab: true
    }));
    assert!(r
        .events()
        .contains(&"Advance podinfo.test canary iteration 3/3".to_string()));
    r.tick();
    assert!(
        !r.status.ab_routed,
        "promotion sends matched users back to the primary"
    );
    assert_eq!(r.status.phase, Finalising);
}

#[test]
fn progressive_promotion() {
    let mut r =
        Rollout::started("interval: 10s\nthreshold: 2\nstepWeight: 100\nstepWeightPromotion: 50\n");
    let seen = r.run(5);
    assert_eq!(
        seen,
        [
            (Progressing, 100),
            (Promoting, 100),
            (Promoting, 50),
            (Finalising, 0),
            (Succeeded, 0)
        ]
    );
    assert!(r
        .events()
        .contains(&"Advance podinfo.test primary weight 50".to_string()));
}

#[test]
fn new_revision_mid_analysis_restarts() {
    let mut r = Rollout::started("interval: 10s\nthreshold: 3\nmaxWeight: 50\nstepWeight: 10\n");
    r.tick();
    r.env.verdicts = [Verdict::Fail].into();
    r.tick();
    assert_eq!((r.status.canary_weight, r.status.failed_checks), (10, 1));
    r.input.canary_revision = Some("3.0.0".into());
    r.tick();
    assert_eq!(r.status.phase, Progressing);
    assert_eq!((r.status.canary_weight, r.status.failed_checks), (0, 0));
    assert_eq!(r.status.last_applied.as_deref(), Some("3.0.0"));
    assert!(r
        .events()
        .contains(&"New revision detected! Restarting analysis for podinfo.test".to_string()));
    r.tick();
    assert!(
        r.events()
            .iter()
            .filter(|e| e.starts_with("Starting canary analysis"))
            .count()
            == 2
    );
}
