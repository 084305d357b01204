//! Metric checks over the proxy's own measurements: Flagger's built-ins, weir's relative
//! checks against the primary, and minimum sample sizes.

use serde::{Deserialize, Serialize};
use weir_proxy::Window;

use crate::spec::{BuiltinMetric, Metric, MetricKind};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Pass,
    Fail,
    /// Too few samples to decide: the step holds and no failed check is counted.
    Inconclusive,
}

impl Verdict {
    /// pass, fail or inconclusive.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One check's measured value, threshold and verdict (shown in status and logs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub verdict: Verdict,
    pub value: Option<f64>,
    /// `min 99`, `max 500`, `min 90 max 100`.
    pub threshold: String,
    /// Flagger's wording of the failure (`success rate 98.82% < 99%`) or why it is
    /// inconclusive (`3 requests < minRequests 20`).
    pub detail: String,
}

/// Request and 5xx counts of one version over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
}

impl Counts {
    /// The counts of a window.
    pub fn of(w: &Window) -> Counts {
        Counts {
            requests: w.requests(),
            errors: w.errors_5xx(),
        }
    }

    /// The failure rate (0 without requests).
    pub fn rate(self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// What happened since `earlier` (cumulative counters only grow).
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
        }
    }

    /// Both together.
    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests + other.requests,
            errors: self.errors + other.errors,
        }
    }
}

/// Formats milliseconds as Go's `time.Duration` prints them (`1.515s`, `250ms`), as
/// Flagger's messages do.
pub fn go_duration(ms: f64) -> String {
    if ms >= 1000.0 {
        let s = format!("{:.3}", ms / 1000.0);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        let s = format!("{ms:.3}");
        format!("{}ms", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn threshold_text(m: &Metric) -> String {
    match (m.min, m.max) {
        (Some(lo), Some(hi)) => format!("min {lo} max {hi}"),
        (Some(lo), None) => format!("min {lo}"),
        (None, Some(hi)) => format!("max {hi}"),
        (None, None) => String::new(),
    }
}

/// One metric's verdicts: its name, bounds and minimum sample in one place.
struct Judge<'m> {
    m: &'m Metric,
}

impl Judge<'_> {
    fn result(&self, verdict: Verdict, value: Option<f64>, detail: String) -> CheckResult {
        CheckResult {
            name: self.m.name.clone(),
            verdict,
            value,
            threshold: threshold_text(self.m),
            detail,
        }
    }

    /// Too few requests (`who` is "", "canary " or "primary "): inconclusive.
    fn too_few(&self, who: &str, n: u64) -> Option<CheckResult> {
        (n < self.m.min_requests).then(|| {
            self.result(
                Verdict::Inconclusive,
                None,
                format!("{who}{n} requests < minRequests {}", self.m.min_requests),
            )
        })
    }

    /// The verdict of `value` against the bounds, and its text (`x < min`, `x > max`),
    /// the value as `show` writes it and the bound as `bound` does (Flagger prints a
    /// custom metric's value with `%.2f` and its bound with `%v`).
    fn range(
        &self,
        value: f64,
        show: &dyn Fn(f64) -> String,
        bound: &dyn Fn(f64) -> String,
    ) -> (Verdict, String) {
        if let Some(lo) = self.m.min.filter(|lo| value < *lo) {
            return (Verdict::Fail, format!("{} < {}", show(value), bound(lo)));
        }
        if let Some(hi) = self.m.max.filter(|hi| value > *hi) {
            return (Verdict::Fail, format!("{} > {}", show(value), bound(hi)));
        }
        (Verdict::Pass, show(value))
    }
}

/// Evaluates one metric on the canary's window (and the primary's, for relative checks).
/// A query metric is run elsewhere (it asks Prometheus) and judged by [`judge_query`].
pub fn evaluate(m: &Metric, canary: &Window, primary: &Window) -> CheckResult {
    let j = Judge { m };
    let c = Counts::of(canary);
    let b = match &m.kind {
        MetricKind::Builtin(b) => *b,
        MetricKind::StatusRate(patterns) => {
            return j.too_few("", c.requests).unwrap_or_else(|| {
                let hits = canary.responses_where(|code| patterns.iter().any(|p| p.matches(code)));
                let value = 100.0 * hits as f64 / c.requests as f64;
                let (verdict, text) = j.range(value, &|v| format!("{v:.2}%"), &|v| format!("{v}%"));
                j.result(verdict, Some(value), format!("{} {text}", m.name))
            })
        }
        MetricKind::Query(_) => {
            return j.result(
                Verdict::Fail,
                None,
                format!("Metric query failed for {}: not run", m.name),
            )
        }
    };
    match b {
        BuiltinMetric::SuccessRate => j
            .too_few("", c.requests)
            .unwrap_or_else(|| success_rate(&j, c)),
        BuiltinMetric::Duration => j.too_few("", c.requests).unwrap_or_else(|| {
            // Flagger truncates the p99 to whole milliseconds.
            let value = canary.quantile_ms(0.99).unwrap_or(0.0).trunc();
            let (verdict, text) = j.range(value, &go_duration, &go_duration);
            j.result(verdict, Some(value), format!("request duration {text}"))
        }),
        BuiltinMetric::DurationVsPrimary => j
            .too_few("canary ", c.requests)
            .or_else(|| j.too_few("primary ", primary.requests()))
            .unwrap_or_else(|| duration_vs_primary(&j, canary, primary)),
        BuiltinMetric::ErrorRateVsPrimary => error_rate_vs_primary(&j, c, Counts::of(primary)),
        BuiltinMetric::Count5xx => {
            let value = c.errors as f64;
            let (verdict, text) = j.range(value, &|v| format!("{v}"), &|v| format!("{v}"));
            j.result(verdict, Some(value), format!("{} {text}", m.name))
        }
    }
}

/// What asking Prometheus gave: a value, no value (an empty result or NaN), or an error.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryOutcome {
    Value(f64),
    NoValues(String),
    Failed(String),
}

/// Judges a query metric's value, in Flagger's words: no value and a failed query are
/// failed checks (`no values found for custom metric: ...`, `Metric query failed for ...`).
pub fn judge_query(m: &Metric, outcome: QueryOutcome) -> CheckResult {
    let j = Judge { m };
    match outcome {
        QueryOutcome::Value(value) => {
            let (verdict, text) = j.range(value, &|v| format!("{v:.2}"), &|v| format!("{v}"));
            j.result(verdict, Some(value), format!("{} {text}", m.name))
        }
        QueryOutcome::NoValues(e) => j.result(
            Verdict::Fail,
            None,
            format!("no values found for custom metric: {}: {e}", m.name),
        ),
        QueryOutcome::Failed(e) => j.result(
            Verdict::Fail,
            None,
            format!("Metric query failed for {}: {e}", m.name),
        ),
    }
}

/// Fisher's exact test that the canary fails more often than the primary.
fn error_rate_vs_primary(j: &Judge<'_>, c: Counts, pc: Counts) -> CheckResult {
    if let Some(r) = j
        .too_few("canary ", c.requests)
        .or_else(|| j.too_few("primary ", pc.requests))
    {
        return r;
    }
    let value = fisher_greater(c, pc);
    let (verdict, text) = j.range(value, &|v| format!("p={v:.3e}"), &|v| format!("p={v:.3e}"));
    j.result(
        verdict,
        Some(value),
        format!(
            "{} {text} (canary 5xx {}/{} vs primary {}/{})",
            j.m.name, c.errors, c.requests, pc.errors, pc.requests
        ),
    )
}

/// Flagger's success rate, worded as Flagger words it (`success rate 98.82% < 99%`).
fn success_rate(j: &Judge<'_>, c: Counts) -> CheckResult {
    let value = 100.0 * (c.requests - c.errors) as f64 / c.requests as f64;
    let (verdict, text) = j.range(value, &|v| format!("{v:.2}%"), &|v| format!("{v}%"));
    j.result(verdict, Some(value), format!("success rate {text}"))
}

/// z for a two-sided 95% interval.
const Z95: f64 = 1.96;

/// The value at quantile `q` of a window's latency, in milliseconds, with the 95%
/// confidence interval of that order statistic (normal approximation to the binomial
/// rank): (low, point, high).
fn quantile_interval(w: &Window, q: f64) -> (f64, f64, f64) {
    let n = w.latency.len().max(1) as f64;
    let half = Z95 * (q * (1.0 - q) / n).sqrt();
    let at = |q: f64| w.latency.value_at_quantile(q.clamp(0.0, 1.0)) as f64 / 1000.0;
    (at(q - half), at(q), at(q + half))
}

/// The canary's p99 over the primary's in the same window. Both p99s are uncertain, so
/// the ratio is judged by its interval: it fails only when even its most favourable end
/// (canary low, primary high) is past the bound, so noise alone cannot fail a canary.
fn duration_vs_primary(j: &Judge<'_>, canary: &Window, primary: &Window) -> CheckResult {
    let (c_lo, cp, c_hi) = quantile_interval(canary, 0.99);
    let (p_lo, pp, p_hi) = quantile_interval(primary, 0.99);
    let ratio = |c: f64, p: f64| c / p.max(0.001);
    let (low, value, high) = (ratio(c_lo, p_hi), ratio(cp, pp), ratio(c_hi, p_lo));
    let verdict = match (j.m.min, j.m.max) {
        (_, Some(hi)) if low > hi => Verdict::Fail,
        (Some(lo), _) if high < lo => Verdict::Fail,
        _ => Verdict::Pass,
    };
    let bound = match (verdict, j.m.min, j.m.max) {
        (Verdict::Fail, _, Some(hi)) if low > hi => format!(" > {hi}"),
        (Verdict::Fail, Some(lo), _) => format!(" < {lo}"),
        _ => String::new(),
    };
    j.result(
        verdict,
        Some(value),
        format!(
            "{} {value:.2} (95% interval {low:.2}-{high:.2}){bound} (canary p99 {} vs primary {})",
            j.m.name,
            go_duration(cp),
            go_duration(pp)
        ),
    )
}

/// ln(n!) exactly for small n, by Stirling's series above.
fn ln_factorial(n: u64) -> f64 {
    if n < 16 {
        return (2..=n).map(|k| (k as f64).ln()).sum();
    }
    let x = n as f64;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x * x * x)
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// Sums `term(x)` from `start` stepping by `step` while in `lo..=hi`, stopping once the
/// terms no longer matter (they shrink monotonically away from the mode).
fn tail(start: u64, lo: u64, hi: u64, up: bool, term: impl Fn(u64) -> f64) -> f64 {
    let mut sum = 0.0;
    let mut x = start;
    loop {
        if x < lo || x > hi {
            break;
        }
        let t = term(x);
        sum += t;
        if t < sum * 1e-15 || t == 0.0 && sum > 0.0 {
            break;
        }
        if up {
            x += 1;
        } else if x == 0 {
            break;
        } else {
            x -= 1;
        }
    }
    sum
}

/// One-sided Fisher exact test: the probability, if both versions failed at the same
/// rate, of the canary seeing at least its number of 5xx. Small means the canary is worse.
pub fn fisher_greater(canary: Counts, primary: Counts) -> f64 {
    let n = canary.requests + primary.requests;
    let k = canary.errors + primary.errors;
    let n1 = canary.requests;
    let a = canary.errors;
    if k == 0 || n1 == 0 || n == n1 {
        return 1.0;
    }
    let lo = k.saturating_sub(n - n1);
    let hi = k.min(n1);
    let denom = ln_choose(n, n1);
    let pmf = |x: u64| (ln_choose(k, x) + ln_choose(n - k, n1 - x) - denom).exp();
    let mean = k as f64 * n1 as f64 / n as f64;
    if a as f64 >= mean {
        tail(a, lo, hi, true, pmf).min(1.0)
    } else if a == 0 {
        1.0
    } else {
        (1.0 - tail(a - 1, lo, hi, false, pmf)).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, errors: u64) -> Counts {
        Counts { requests, errors }
    }

    #[test]
    fn fisher_matches_known_values() {
        // Lady tasting tea: 3 of 4 vs 1 of 4, one-sided p = 17/70.
        let p = fisher_greater(counts(4, 3), counts(4, 1));
        assert!((p - 17.0 / 70.0).abs() < 1e-9, "{p}");
        assert_eq!(fisher_greater(counts(100, 0), counts(100, 5)), 1.0);
        let p = fisher_greater(counts(50, 50), counts(950, 0));
        assert!(p < 1e-60, "{p}");
        // Same rates: not significant.
        let p = fisher_greater(counts(1000, 10), counts(9000, 90));
        assert!(p > 0.3, "{p}");
    }

    #[test]
    fn go_durations_print_like_go() {
        assert_eq!(go_duration(1515.0), "1.515s");
        assert_eq!(go_duration(500.0), "500ms");
        assert_eq!(go_duration(2000.0), "2s");
    }
}
