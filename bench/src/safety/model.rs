//! What the replay draws from: a small seeded generator, the scenarios (error rates,
//! latencies, rates), and the previous guard (repeated one-sided Fisher tests on a 30 s
//! window at alpha 0.001) for comparison.

use std::collections::VecDeque;

use weir_control::checks::{fisher_greater, Counts};

/// xorshift64* with a few distributions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn poisson(&mut self, mean: f64) -> u64 {
        if mean > 30.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let limit = (-mean).exp();
        let (mut k, mut p) = (0u64, 1.0);
        loop {
            p *= self.uniform();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }

    /// Binomial(n, p): exact for small n, else Poisson or normal approximations.
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if p <= 0.0 || n == 0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if n <= 32 {
            return (0..n).filter(|_| self.uniform() < p).count() as u64;
        }
        let var = n as f64 * p * (1.0 - p);
        if var > 9.0 {
            let x = n as f64 * p + var.sqrt() * self.normal();
            return x.round().clamp(0.0, n as f64) as u64;
        }
        if p < 0.5 {
            self.poisson(n as f64 * p).min(n)
        } else {
            n - self.poisson(n as f64 * (1.0 - p)).min(n)
        }
    }
}

/// How one version behaves.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Share of requests answered 5xx.
    pub errors: f64,
    /// Share of requests whose body breaks off after a 200's headers.
    pub truncated: f64,
    /// Added to every request's latency, in milliseconds.
    pub extra_ms: f64,
}

impl Behaviour {
    pub const fn errors(rate: f64) -> Behaviour {
        Behaviour {
            errors: rate,
            truncated: 0.0,
            extra_ms: 0.0,
        }
    }
}

/// One scenario: the primary and the canary, and the success-rate floor of its analysis.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub healthy: bool,
    pub primary: Behaviour,
    pub canary: Behaviour,
    /// `request-success-rate` min: 99, or lower for a service that fails more than 1% of
    /// its requests when healthy (a 99% floor would reject it by design).
    pub min_success: f64,
}

/// Every scenario the replay runs.
pub fn scenarios() -> Vec<Scenario> {
    let healthy = |name, rate, min_success| Scenario {
        name,
        healthy: true,
        primary: Behaviour::errors(rate),
        canary: Behaviour::errors(rate),
        min_success,
    };
    let bad = |name, primary, canary| Scenario {
        name,
        healthy: false,
        primary: Behaviour::errors(primary),
        canary,
        min_success: 99.0,
    };
    vec![
        healthy("healthy 0.1% = 0.1%", 0.001, 99.0),
        healthy("healthy 1% = 1%", 0.01, 97.0),
        healthy("healthy 5% = 5%", 0.05, 90.0),
        bad("bad 100% 5xx", 0.001, Behaviour::errors(1.0)),
        bad("bad 5x errors (5% vs 1%)", 0.01, Behaviour::errors(0.05)),
        bad("bad +1 point (2% vs 1%)", 0.01, Behaviour::errors(0.02)),
        bad(
            "bad truncating bodies",
            0.001,
            Behaviour {
                errors: 0.001,
                truncated: 1.0,
                extra_ms: 0.0,
            },
        ),
        bad(
            "bad +100 ms",
            0.001,
            Behaviour {
                errors: 0.001,
                truncated: 0.0,
                extra_ms: 100.0,
            },
        ),
    ]
}

/// Latency in microseconds: 10 ms plus an exponential of mean 10 ms, plus `extra_ms`.
pub fn latency_us(rng: &mut Rng, extra_ms: f64) -> u64 {
    let exp = -(rng.uniform().max(1e-12)).ln() * 10.0;
    ((10.0 + exp + extra_ms) * 1000.0) as u64
}

/// The previous guard: a one-sided Fisher exact test of the canary's 5xx rate against the
/// primary's over a sliding 30 s window, at alpha 0.001, every 100 ms.
pub struct FisherGuard {
    marks: VecDeque<(u64, Counts, Counts)>,
}

impl FisherGuard {
    pub fn new() -> FisherGuard {
        FisherGuard {
            marks: VecDeque::new(),
        }
    }

    /// One look at the cumulative counters at `now_ms`; true when it would roll back.
    pub fn look(&mut self, now_ms: u64, canary: Counts, primary: Counts) -> bool {
        self.marks.push_back((now_ms, canary, primary));
        while self.marks.len() > 1 && self.marks.front().is_some_and(|m| m.0 + 30_000 < now_ms) {
            self.marks.pop_front();
        }
        let Some(&(_, c0, p0)) = self.marks.front() else {
            return false;
        };
        let (c, p) = (canary.since(c0), primary.since(p0));
        if c.requests < 20 || c.errors == 0 || p.requests < 20 || c.rate() <= p.rate() {
            return false;
        }
        fisher_greater(c, p) < 0.001
    }
}
