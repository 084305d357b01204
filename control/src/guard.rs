//! The fast-fail guard: a sequential test that may look at the counters as often as it
//! likes (every 100 ms) and still rolls back a healthy canary with probability at most
//! `alpha` over the whole rollout.
//!
//! Counts are gathered into batches: a batch closes at the first look at which both
//! versions have served (a rule that depends on the traffic, not on its failures). In a
//! batch the canary served `n_c` responses with `e_c` 5xx and the primary `n_p` with
//! `e_p`. If both fail at the same rate, each of the `e_c + e_p` failures came from the
//! canary with probability `q = n_c / (n_c + n_p)`, the canary's share of the traffic in
//! that batch, whatever the common rate and however the traffic moved. If the
//! canary fails `k` times as often, that probability is `θ(k) = kq / (kq + 1 - q)`. The
//! likelihood ratio of a batch, `(θ/q)^e_c ((1-θ)/(1-q))^e_p`, has expectation 1 under
//! equal rates (and at most 1 when the canary is better, or when failures are per-request
//! Bernoulli draws rather than Poisson: the hypergeometric is smaller in convex order),
//! so the product over batches is a nonnegative supermartingale. A mixture over `k` of
//! such products is one too (the mixture SPRT), and by Ville's inequality it ever reaches
//! `1/alpha` with probability at most `alpha`. When the primary has no traffic in a batch
//! for a while (blue/green, say: a batch reaches `ALONE` canary responses and none of the
//! primary's), the canary's own counts are tested against the failure rate the
//! success-rate check allows: `(ρ/p0)^e ((1-ρ)/(1-p0))^(n-e)` with `ρ = min(k·p0, 0.999)`,
//! again expectation at most 1 when the canary is within the allowance.

use crate::checks::Counts;

/// Failure-rate multiples the mixture spreads its weight over (equal weights).
const MULTIPLES: [f64; 9] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0, 1000.0];

/// Canary responses with none of the primary's that make a batch of the canary alone.
const ALONE: u64 = 100;

/// The guard's evidence against the canary over one run.
#[derive(Debug, Clone)]
pub struct Guard {
    alpha: f64,
    /// Log likelihood ratio of each mixture component.
    log_lr: [f64; MULTIPLES.len()],
    /// Totals over the run, for the reason.
    canary: Counts,
    primary: Counts,
    /// Cumulative counters at the last look.
    last: Option<(Counts, Counts)>,
    /// The open batch: (canary, primary) since it opened.
    pending: (Counts, Counts),
}

impl Guard {
    /// A guard that rolls back at evidence `1/alpha`.
    pub fn new(alpha: f64) -> Guard {
        Guard {
            alpha,
            log_lr: [0.0; MULTIPLES.len()],
            canary: Counts::default(),
            primary: Counts::default(),
            last: None,
            pending: (Counts::default(), Counts::default()),
        }
    }

    /// The canary's responses in the run so far.
    pub fn canary_requests(&self) -> u64 {
        self.canary.requests
    }

    /// The evidence so far: the mixture's likelihood ratio (an e-value).
    pub fn evidence(&self) -> f64 {
        let n = MULTIPLES.len() as f64;
        self.log_lr.iter().map(|l| l.exp() / n).sum()
    }

    /// One look at the cumulative (responses, 5xx) counters of both versions; `allowed`
    /// is the failure rate the success-rate check allows, if it has one. Some(reason) when
    /// the canary must be rolled back now.
    pub fn look(
        &mut self,
        canary: Counts,
        primary: Counts,
        allowed: Option<f64>,
    ) -> Option<String> {
        let (c0, p0) = self.last.replace((canary, primary))?;
        let (c, p) = &mut self.pending;
        *c = c.plus(canary.since(c0));
        *p = p.plus(primary.since(p0));
        let (c, p) = self.pending;
        if (c.requests > 0 && p.requests > 0) || (c.requests >= ALONE && p.requests == 0) {
            self.pending = (Counts::default(), Counts::default());
            self.add(c, p, allowed);
        }
        (self.evidence() >= 1.0 / self.alpha).then(|| self.reason(allowed))
    }

    /// The counters looked at change (shadow traffic instead of users', say): the next
    /// look starts a batch instead of ending one. The evidence so far stays.
    pub fn rebase(&mut self) {
        self.last = None;
    }

    /// Adds one closed batch of counts.
    pub fn add(&mut self, dc: Counts, dp: Counts, allowed: Option<f64>) {
        self.canary = self.canary.plus(dc);
        self.primary = self.primary.plus(dp);
        if dc.requests == 0 {
            return;
        }
        if dp.requests > 0 {
            if dc.errors + dp.errors == 0 {
                return;
            }
            let q = dc.requests as f64 / (dc.requests + dp.requests) as f64;
            for (l, k) in self.log_lr.iter_mut().zip(MULTIPLES) {
                let theta = k * q / (k * q + 1.0 - q);
                *l += dc.errors as f64 * (theta / q).ln()
                    + dp.errors as f64 * ((1.0 - theta) / (1.0 - q)).ln();
            }
        } else if let Some(p0) = allowed {
            let p0 = p0.clamp(1e-6, 0.999);
            let (e, ok) = (dc.errors as f64, (dc.requests - dc.errors) as f64);
            for (l, k) in self.log_lr.iter_mut().zip(MULTIPLES) {
                let rho = (k * p0).min(0.999).max(p0);
                *l += e * (rho / p0).ln() + ok * ((1.0 - rho) / (1.0 - p0)).ln();
            }
        }
    }

    fn reason(&self, allowed: Option<f64>) -> String {
        let pct = |c: Counts| 100.0 * c.rate();
        let (c, p) = (self.canary, self.primary);
        let against = if p.requests > 0 {
            format!("primary {}/{} ({:.2}%)", p.errors, p.requests, pct(p))
        } else {
            format!("{:.2}% allowed", 100.0 * allowed.unwrap_or(0.0))
        };
        format!(
            "canary 5xx {}/{} ({:.2}%) vs {against}, evidence {:.3e} >= 1/alpha {}",
            c.errors,
            c.requests,
            pct(c),
            self.evidence(),
            1.0 / self.alpha
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, errors: u64) -> Counts {
        Counts { requests, errors }
    }

    /// A small deterministic generator for the simulations (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }

        fn binomial(&mut self, n: u64, p: f64) -> u64 {
            (0..n).filter(|_| self.uniform() < p).count() as u64
        }
    }

    /// Runs one simulated rollout of `looks` looks at `rate` req/s (10 looks a second),
    /// the canary taking `share` of it; true when the guard fired.
    fn fires(rng: &mut Rng, looks: usize, rate: u64, share: f64, pc: f64, pp: f64) -> bool {
        let mut g = Guard::new(0.01);
        let per_look = rate / 10;
        let nc = (per_look as f64 * share).round() as u64;
        let np = per_look - nc;
        let (mut c, mut p) = (Counts::default(), Counts::default());
        g.look(c, p, Some(0.01));
        for _ in 0..looks {
            c = c.plus(counts(nc, rng.binomial(nc, pc)));
            p = p.plus(counts(np, rng.binomial(np, pp)));
            if g.look(c, p, Some(0.01)).is_some() {
                return true;
            }
        }
        false
    }

    #[test]
    fn equal_rates_almost_never_fire_however_often_it_looks() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let fired = (0..200)
            .filter(|_| fires(&mut rng, 3000, 200, 0.2, 0.01, 0.01))
            .count();
        // alpha is 1%: 200 rollouts of 3,000 looks each; 6 or more would be a 1-in-1000 event.
        assert!(fired <= 6, "{fired} of 200 healthy rollouts rolled back");
    }

    #[test]
    fn a_canary_failing_everything_is_caught_in_a_handful_of_failures() {
        let mut g = Guard::new(0.01);
        g.look(Counts::default(), Counts::default(), Some(0.01));
        let mut c = Counts::default();
        let mut p = Counts::default();
        let mut looks = 0;
        loop {
            looks += 1;
            // 1,000 req/s, 5% to the canary, every canary request a 5xx.
            c = c.plus(counts(5, 5));
            p = p.plus(counts(95, 0));
            if g.look(c, p, Some(0.01)).is_some() {
                break;
            }
            assert!(looks < 100, "not caught after {looks} looks");
        }
        assert!(
            c.errors < 30,
            "{} failed requests before the rollback",
            c.errors
        );
    }

    #[test]
    fn five_times_the_primarys_errors_is_caught_within_two_minutes() {
        let mut rng = Rng(42);
        for _ in 0..20 {
            let mut g = Guard::new(0.01);
            let (mut c, mut p) = (Counts::default(), Counts::default());
            g.look(c, p, Some(0.01));
            let caught = (0..1200).any(|_| {
                c = c.plus(counts(10, rng.binomial(10, 0.05)));
                p = p.plus(counts(90, rng.binomial(90, 0.01)));
                g.look(c, p, Some(0.01)).is_some()
            });
            assert!(
                caught,
                "5% vs 1% at 100 canary req/s not caught in 2 minutes"
            );
        }
    }

    #[test]
    fn without_primary_traffic_the_canary_is_held_to_the_allowed_rate() {
        let mut g = Guard::new(0.01);
        g.add(counts(1000, 10), Counts::default(), Some(0.01));
        assert!(
            g.evidence() < 100.0,
            "1% against 1% allowed: {}",
            g.evidence()
        );
        let mut g = Guard::new(0.01);
        let why = (0..50).find_map(|_| {
            g.add(counts(100, 20), Counts::default(), Some(0.01));
            (g.evidence() >= 100.0).then(|| g.reason(Some(0.01)))
        });
        let why = why.expect("20% against 1% allowed fires");
        assert!(why.contains("vs 1.00% allowed"), "{why}");
    }
}
