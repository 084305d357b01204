//! The three strategies as Flagger runs them: canary weight steps, A/B iterations over a
//! matched segment, blue/green iterations (optionally mirrored); the promotion gate; and
//! the step arithmetic.

use super::{Env, Machine, Phase};
use crate::spec::{Analysis, HookKind, Severity};

impl Machine<'_> {
    /// Canary strategy: step the weight, then promote at maxWeight.
    pub(super) async fn run_canary<E: Env>(&mut self, env: &mut E) {
        let target = self.target.to_string();
        let weight = self.status.canary_weight;
        let max = self.analysis.max_weight;
        if weight < max {
            if self.analysis.spec.mirror && weight == 0 && !self.status.mirrored {
                // The one-interval mirror pre-step.
                self.route(0, true, false);
                self.event(false, format!("Start traffic mirroring for {target}"));
                return;
            }
            // Decision: a closed traffic gate only holds the weight; it never re-runs
            // the pre-rollout hooks (Flagger #1248).
            if !self.status.mirrored && self.status.phase == Phase::Progressing {
                if let Err(hook) = self.gate(HookKind::ConfirmTrafficIncrease, env).await {
                    self.status.waiting_gate = Some(HookKind::ConfirmTrafficIncrease);
                    if !self.gate_muted(HookKind::ConfirmTrafficIncrease) {
                        self.alert(
                            Severity::Warn,
                            "Canary traffic increase is waiting for approval.",
                            false,
                        );
                    }
                    self.event(
                        true,
                        format!(
                            "Halt {target} advancement waiting for traffic increase approval {hook}"
                        ),
                    );
                    return;
                }
                // An approval opens one step.
                self.status
                    .approvals
                    .remove(&HookKind::ConfirmTrafficIncrease);
            }
            self.status.waiting_gate = None;
            let next = self.analysis.next_weight(weight);
            self.route(next, false, false);
            self.event(false, format!("Advance {target} canary weight {next}"));
            return;
        }
        self.confirm_promotion_then_promote(env).await;
    }

    /// A/B: matched requests go to the canary for `iterations` ticks.
    pub(super) async fn run_ab<E: Env>(&mut self, env: &mut E) {
        let n = self.analysis.iterations;
        if self.status.iterations < n {
            self.route(0, false, true);
            self.status.iterations += 1;
            let i = self.status.iterations;
            self.event(
                false,
                format!("Advance {} canary iteration {i}/{n}", self.target),
            );
            return;
        }
        self.confirm_promotion_then_promote(env).await;
    }

    /// Blue/green (optionally mirrored): iterations on the side, then all traffic to the
    /// canary for one more analysed tick, then promotion.
    pub(super) async fn run_blue_green<E: Env>(&mut self, env: &mut E) {
        let n = self.analysis.iterations;
        let target = self.target.to_string();
        if self.status.iterations < n {
            if self.analysis.spec.mirror {
                if !self.status.mirrored {
                    self.event(false, format!("Start traffic mirroring for {target}"));
                }
                self.route(0, true, false);
            }
            self.status.iterations += 1;
            let i = self.status.iterations;
            self.event(false, format!("Advance {target} canary iteration {i}/{n}"));
            return;
        }
        if self.status.iterations == n {
            if !self.confirm_promotion(env).await {
                return;
            }
            let text = if self.analysis.spec.mirror {
                "Stop traffic mirroring and route all traffic to canary"
            } else {
                "Routing all traffic to canary"
            };
            self.event(false, text.to_string());
            self.route(100, false, false);
            self.status.iterations = n + 1;
            return;
        }
        self.promote_now();
    }

    /// Flagger's confirm-promotion gate. Decision: the status keeps reporting the weight
    /// actually routed while waiting (Flagger zeroes it).
    pub(super) async fn confirm_promotion<E: Env>(&mut self, env: &mut E) -> bool {
        match self.gate(HookKind::ConfirmPromotion, env).await {
            Ok(()) => {
                self.status.waiting_gate = None;
                true
            }
            Err(hook) => {
                if self.status.phase != Phase::WaitingPromotion {
                    self.set_phase(Phase::WaitingPromotion);
                    if !self.gate_muted(HookKind::ConfirmPromotion) {
                        self.alert(
                            Severity::Warn,
                            "Canary promotion is waiting for approval.",
                            false,
                        );
                    }
                }
                self.status.waiting_gate = Some(HookKind::ConfirmPromotion);
                self.event(
                    true,
                    format!(
                        "Halt {} advancement waiting for promotion approval {hook}",
                        self.target
                    ),
                );
                false
            }
        }
    }

    async fn confirm_promotion_then_promote<E: Env>(&mut self, env: &mut E) {
        if self.confirm_promotion(env).await {
            self.promote_now();
        }
    }
}

impl Analysis {
    /// Flagger's `nextStepWeight`, with weir's cap at maxWeight.
    pub fn next_step_weight(&self, weight: u32) -> u32 {
        if let Some(step) = self.step_weight {
            return step;
        }
        if self.step_weights.is_empty() {
            return 100u32.saturating_sub(weight).max(1);
        }
        if weight == 0 {
            return self.step_weights[0].min(100 - weight.min(100));
        }
        match self.step_weights.iter().position(|&w| w == weight) {
            Some(i) if i + 1 < self.step_weights.len() => {
                (self.step_weights[i + 1] - weight).min(100 - weight)
            }
            _ if weight >= 100 => 1,
            _ => 100 - weight,
        }
    }

    /// The weight the next step moves to: never past maxWeight (weir caps the last step).
    pub fn next_weight(&self, weight: u32) -> u32 {
        (weight + self.next_step_weight(weight)).min(self.max_weight)
    }
}

#[cfg(test)]
mod tests {
    use crate::spec;

    fn analysis(yaml: &str) -> Result<spec::Analysis, Vec<weir_proxy::ConfigError>> {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("test yaml");
        spec::parse(&v, "analysis", &crate::spec::Catalog::default())
    }

    #[test]
    fn step_weights_progress_as_flagger_and_never_pass_max_weight() {
        let a =
            analysis("interval: 1m\nthreshold: 1\nstepWeights: [1, 2, 10, 80]\n").expect("valid");
        let mut w = 0;
        let mut seen = vec![];
        while w < a.max_weight {
            w = a.next_weight(w);
            seen.push(w);
        }
        assert_eq!(seen, [1, 2, 10, 80]);
        let a =
            analysis("interval: 1m\nthreshold: 1\nstepWeight: 20\nmaxWeight: 50\n").expect("valid");
        let mut w = 0;
        let mut seen = vec![];
        while w < a.max_weight {
            w = a.next_weight(w);
            seen.push(w);
        }
        assert_eq!(seen, [20, 40, 50], "weir caps the last step at maxWeight");
    }
}
