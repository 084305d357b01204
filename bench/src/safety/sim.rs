//! One simulated rollout: Flagger-style steps driven by weir's own state machine, checks
//! and guard, fed with random request outcomes on a simulated clock (100 ms batches).

use hdrhistogram::Histogram;
use weir_control::checks::{self, CheckResult, Counts, Verdict};
use weir_control::guard::Guard;
use weir_control::machine::{Env, HookOutcome, Input, Machine, Phase, Status, Target};
use weir_control::spec::{Analysis, BuiltinMetric, HookKind, Metric, MetricKind};
use weir_proxy::Window;

use crate::model::{latency_us, Behaviour, FisherGuard, Rng, Scenario};

/// Which fast-fail guard runs, and how the canary's responses are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// This weir: counted at the end of the exchange, the anytime-valid guard.
    Current,
    /// The previous weir: counted at the headers (a body that breaks off is a success),
    /// repeated Fisher tests.
    Previous,
}

/// How a rollout ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub rolled_back: bool,
    pub by_guard: bool,
    /// Seconds from the canary's first request to the decision.
    pub seconds: f64,
    /// Canary requests users got wrong (5xx or broken bodies) before the decision.
    pub failed: u64,
}

/// One window's counts and latencies for a version.
struct Acc {
    ok: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Acc {
    fn new() -> Acc {
        Acc {
            ok: 0,
            errors: 0,
            latency: Histogram::new_with_bounds(1, 600_000_000, 2).expect("static bounds"),
        }
    }

    fn window(&self) -> Window {
        let mut responses = [0; 5];
        responses[1] = self.ok;
        responses[4] = self.errors;
        Window {
            duration: std::time::Duration::ZERO,
            responses,
            failures: [0; weir_proxy::ErrorKind::UPSTREAM.len()],
            client_faults: [0; 4],
            codes: vec![(200, self.ok), (500, self.errors)],
            latency: self.latency.clone(),
        }
    }
}

struct SimEnv<'a> {
    analysis: &'a Analysis,
    variant: Variant,
    canary: Window,
    primary: Window,
}

impl<'a> SimEnv<'a> {
    /// The environment of one decision: the windows counted so far this interval.
    fn new(analysis: &'a Analysis, variant: Variant, canary: &Acc, primary: &Acc) -> Self {
        SimEnv {
            analysis,
            variant,
            canary: canary.window(),
            primary: primary.window(),
        }
    }
}

impl Env for SimEnv<'_> {
    async fn hooks(&mut self, _kind: HookKind, _phase: Phase) -> HookOutcome {
        HookOutcome::Passed
    }

    async fn checks(&mut self) -> Vec<CheckResult> {
        self.analysis
            .metrics
            .iter()
            .map(|m| {
                let relative = m.kind == MetricKind::Builtin(BuiltinMetric::DurationVsPrimary);
                match (self.variant, relative) {
                    (Variant::Previous, true) => point_ratio(m, &self.canary, &self.primary),
                    _ => checks::evaluate(m, &self.canary, &self.primary),
                }
            })
            .collect()
    }
}

/// The previous relative latency check: one p99 over the other, against the bound.
fn point_ratio(m: &Metric, canary: &Window, primary: &Window) -> CheckResult {
    let mut r = checks::evaluate(m, canary, primary);
    if r.verdict == Verdict::Inconclusive {
        return r;
    }
    let ratio = canary.quantile_ms(0.99).unwrap_or(0.0)
        / primary.quantile_ms(0.99).unwrap_or(0.0).max(0.001);
    r.value = Some(ratio);
    r.verdict = if m.max.is_some_and(|hi| ratio > hi) {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    r
}

/// A batch of one version's requests: (requests, failures the checks see, failures users
/// got), with latencies recorded into `acc`.
fn serve(rng: &mut Rng, n: u64, b: Behaviour, variant: Variant, acc: &mut Acc) -> (u64, u64, u64) {
    let errors = rng.binomial(n, b.errors);
    let broken = rng.binomial(n - errors, b.truncated);
    let seen = match variant {
        Variant::Current => errors + broken,
        Variant::Previous => errors,
    };
    acc.ok += n - seen;
    acc.errors += seen;
    // At most 10 latencies drawn a batch, each standing for its share.
    let k = n.min(10);
    for _ in 0..k {
        let us = latency_us(rng, b.extra_ms);
        let _ = acc.latency.record_n(us, n / k.max(1));
    }
    (n, seen, errors + broken)
}

/// How a rollout decided at `now` (ms) ended; `first`: when the canary got its first
/// request.
fn decided(
    rolled_back: bool,
    by_guard: bool,
    first: Option<u64>,
    now: u64,
    failed: u64,
) -> Outcome {
    Outcome {
        rolled_back,
        by_guard,
        seconds: first.map_or(0.0, |f| (now - f) as f64 / 1000.0),
        failed,
    }
}

/// Runs one rollout of `s` at `rate` req/s.
pub async fn rollout(
    rng: &mut Rng,
    s: &Scenario,
    rate: u64,
    analysis: &Analysis,
    variant: Variant,
) -> Outcome {
    let target = Target {
        name: "podinfo".into(),
        namespace: "test".into(),
    };
    let mut status = Status::default();
    let input = Input {
        canary_revision: Some("2".into()),
        primary_revision: Some("1".into()),
    };
    let interval_ms = analysis.interval.as_millis() as u64;
    let per_batch = (rate as f64 / 10.0).max(0.0);
    let (mut c_acc, mut p_acc) = (Acc::new(), Acc::new());
    let (mut c_cum, mut p_cum) = (Counts::default(), Counts::default());
    let mut guard = Guard::new(analysis.fast_fail.map_or(0.01, |f| f.alpha));
    let allowed = (100.0 - s.min_success) / 100.0;
    let mut fisher = FisherGuard::new();
    let mut carry = 0.0;
    let (mut first, mut failed) = (None::<u64>, 0u64);
    let mut next_tick = 0u64;
    let mut now = 0u64;
    while now < 3_600_000 {
        if now >= next_tick {
            let mut env = SimEnv::new(analysis, variant, &c_acc, &p_acc);
            let mut m = Machine::new(&target, analysis, &mut status, now);
            m.tick(&input, &mut env).await;
            c_acc = Acc::new();
            p_acc = Acc::new();
            next_tick = now + interval_ms;
            if matches!(status.phase, Phase::Succeeded | Phase::Failed) {
                return decided(status.phase == Phase::Failed, false, first, now, failed);
            }
        }
        // One 100 ms batch.
        carry += per_batch;
        let n = carry.floor() as u64;
        carry -= n as f64;
        let nc = rng.binomial(n, f64::from(status.canary_weight) / 100.0);
        if nc > 0 && first.is_none() {
            first = Some(now);
        }
        let (cn, cseen, cbad) = serve(rng, nc, s.canary, variant, &mut c_acc);
        let (pn, pseen, _) = serve(rng, n - nc, s.primary, variant, &mut p_acc);
        failed += cbad;
        c_cum = c_cum.plus(Counts {
            requests: cn,
            errors: cseen,
        });
        p_cum = p_cum.plus(Counts {
            requests: pn,
            errors: pseen,
        });
        now += 100;
        if status.phase.is_analysing() {
            let fire = match variant {
                Variant::Current => guard.look(c_cum, p_cum, Some(allowed)),
                Variant::Previous => fisher.look(now, c_cum, p_cum).then(|| "fisher".to_string()),
            };
            if let Some(why) = fire {
                let mut env = SimEnv::new(analysis, variant, &c_acc, &p_acc);
                let mut m = Machine::new(&target, analysis, &mut status, now);
                m.fast_fail(&why, &mut env).await;
                return decided(true, true, first, now, failed);
            }
        }
    }
    Outcome {
        rolled_back: false,
        by_guard: false,
        seconds: 0.0,
        failed,
    }
}
