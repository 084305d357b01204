//! bench/safety's replay: random request outcomes fed through weir's real state machine,
//! checks and fast-fail guard on a simulated clock, many Flagger-style rollouts a
//! scenario; prints how often healthy canaries are rolled back and how fast (and at what
//! cost in failed requests) bad ones are, beside the previous guard and Flagger's bound.

mod model;
mod sim;

use clap::Parser;
use weir_control::spec::{self, Analysis};

use model::{scenarios, Rng, Scenario};
use sim::{rollout, Outcome, Variant};

#[derive(Parser, Debug)]
#[command(about = "Verdict quality of weir's analysis: false rollbacks, detection time and damage")]
struct Args {
    /// Rollouts per scenario, rate and variant.
    #[arg(long, default_value_t = 1000)]
    rollouts: usize,
    /// Request rates (req/s), comma separated.
    #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
    rates: Vec<u64>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seed of the first rollout.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The analysis, with the scenario's success-rate floor.
fn analysis(min_success: f64) -> anyhow::Result<Analysis> {
    let yaml = ANALYSIS.replace("MIN_SUCCESS", &min_success.to_string());
    let v: serde_json::Value = serde_yaml_ng::from_str(&yaml)?;
    spec::parse(&v, "analysis", &spec::Catalog::default())
        .map_err(|e| anyhow::anyhow!("{}", weir_proxy::ConfigErrors(e)))
}

const ANALYSIS: &str = "
interval: 1m
threshold: 5
maxWeight: 50
stepWeight: 5
metrics:
  - name: request-success-rate
    thresholdRange: { min: MIN_SUCCESS }
    interval: 1m
  - name: request-duration
    thresholdRange: { max: 500 }
    interval: 1m
  - name: request-duration-vs-primary
    thresholdRange: { max: 1.5 }
    interval: 1m
";

fn median_p95(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

/// Runs `n` rollouts on `threads` threads.
fn run(
    n: usize,
    threads: usize,
    seed: u64,
    s: &Scenario,
    rate: u64,
    a: &Analysis,
    v: Variant,
) -> Vec<Outcome> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .expect("a runtime");
                    (t..n)
                        .step_by(threads)
                        .map(|i| {
                            let mut rng = Rng::new(seed.wrapping_add(i as u64 * 7919 + rate));
                            rt.block_on(rollout(&mut rng, s, rate, a, v))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    })
}

fn summary(s: &Scenario, out: &[Outcome]) -> String {
    let n = out.len() as f64;
    let back = out.iter().filter(|o| o.rolled_back).count() as f64;
    let guard = out.iter().filter(|o| o.by_guard).count() as f64;
    if s.healthy {
        return format!(
            "false rollback {:>5.1}% (guard {:>5.1}%, checks {:>5.1}%)",
            100.0 * back / n,
            100.0 * guard / n,
            100.0 * (back - guard) / n
        );
    }
    let caught: Vec<&Outcome> = out.iter().filter(|o| o.rolled_back).collect();
    let (t50, t95) = median_p95(caught.iter().map(|o| o.seconds).collect());
    let (f50, f95) = median_p95(caught.iter().map(|o| o.failed as f64).collect());
    format!(
        "detected {:>5.1}% (guard {:>5.1}%)  time p50 {t50:>6.1}s p95 {t95:>6.1}s  failed p50 {f50:>6.0} p95 {f95:>6.0}",
        100.0 * back / n,
        100.0 * guard / n
    )
}

/// Flagger's bound for a bad canary: interval x (threshold + 1) + the 1m query window, at
/// the first step's weight (5%).
fn flagger_bound(s: &Scenario, rate: u64, a: &Analysis) -> String {
    let secs = a.interval.as_secs_f64() * f64::from(a.threshold + 1) + 60.0;
    let bad = s.canary.errors.max(s.canary.truncated).max(0.0);
    let failed = rate as f64 * 0.05 * bad * secs;
    format!("flagger {secs:.0}s, ~{failed:.0} failed")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "bench/safety: {} Flagger-style rollouts a scenario (stepWeight 5 -> 50, interval 1m, threshold 5, success rate >= 99 (97 and 90 for the healthy 1% and 5% services), p99 <= 500 ms, p99 <= 1.5x primary's); fast-fail alpha 0.01",
        args.rollouts
    );
    for &rate in &args.rates {
        println!("\n{rate} req/s");
        for s in scenarios() {
            let analysis = analysis(s.min_success)?;
            let [current, previous] = [Variant::Current, Variant::Previous].map(|v| {
                run(
                    args.rollouts,
                    args.threads,
                    args.seed,
                    &s,
                    rate,
                    &analysis,
                    v,
                )
            });
            println!("  {:<24} weir     {}", s.name, summary(&s, &current));
            let bound = if s.healthy {
                String::new()
            } else {
                format!("  | {}", flagger_bound(&s, rate, &analysis))
            };
            println!("  {:<24} previous {}{bound}", "", summary(&s, &previous));
        }
    }
    Ok(())
}
