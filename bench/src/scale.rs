//! Config load and weight-step cost of weir's proxy with N services, in process: parses
//! and builds the route table of a config (as `weir proxy` does at start and on SIGHUP),
//! then steps one service's weights through the controller's API (`set_policy`) again and
//! again, alternating services. Prints one JSON line; bench/scale runs it for 1, 100 and
//! 1,000 services.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use indexmap::IndexMap;
use weir_proxy::{Proxy, ProxyConfig, TrafficPolicy};

#[derive(Parser, Debug)]
#[command(about = "Config load and weight-step time of weir's proxy with N services")]
struct Args {
    /// Services, two versions each.
    #[arg(long, default_value_t = 1)]
    services: usize,
    /// Weight steps timed.
    #[arg(long, default_value_t = 500)]
    steps: u32,
}

/// `services` services named svc-0.., each with a primary and a canary split 90/10.
fn config(services: usize) -> String {
    let mut out = String::from("listen: 127.0.0.1:0\nservices:\n");
    for i in 0..services {
        out.push_str(&format!(
            "  - name: svc-{i}\n    hosts: [svc-{i}]\n    versions:\n      primary: {{ endpoints: [\"127.0.0.1:1\"] }}\n      canary: {{ endpoints: [\"127.0.0.1:2\"] }}\n    routes:\n      - split: {{ primary: 90, canary: 10 }}\n"
        ));
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = config(args.services);

    let t = Instant::now();
    let cfg = ProxyConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}", e.joined()))?;
    let proxy = Proxy::new(cfg.clone()).map_err(|e| anyhow::anyhow!("{}", e.joined()))?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    proxy
        .apply(ProxyConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}", e.joined()))?)
        .map_err(|e| anyhow::anyhow!("{}", e.joined()))?;
    let reload_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut steps = Histogram::<u64>::new(3).context("histogram")?;
    for i in 0..args.steps {
        let service = format!("svc-{}", i as usize % args.services);
        let canary = 5 + (i % 10) * 5;
        let weights = IndexMap::from([
            ("primary".to_string(), 100 - canary),
            ("canary".to_string(), canary),
        ]);
        let policy = TrafficPolicy {
            weights: Some(weights),
            ..TrafficPolicy::default()
        };
        let t = Instant::now();
        proxy
            .set_policy(&service, policy)
            .map_err(|e| anyhow::anyhow!("{}", e.joined()))?;
        let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        steps.record(nanos).context("recording a step")?;
    }
    println!(
        "{}",
        serde_json::json!({
            "services": args.services,
            "load_ms": load_ms,
            "reload_ms": reload_ms,
            "step_us_p50": steps.value_at_quantile(0.5) as f64 / 1e3,
            "step_us_p99": steps.value_at_quantile(0.99) as f64 / 1e3,
        })
    );
    Ok(())
}
