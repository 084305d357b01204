//! Config load and weight-step cost of weir's proxy, in process: parses and builds the
//! route table of a config file (as `weir proxy` does at start and on SIGHUP), then
//! applies one service's new routing snapshot (a weight step, as a replica applies a
//! controller's one-service delta) again and again, going round the services; only the
//! apply is timed. Prints one JSON line; bench/scale runs it on its 1-, 100- and
//! 1,000-service files (every service with versions `primary` and `canary`).

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use indexmap::IndexMap;
use weir_proxy::{Proxy, ProxyConfig, ServiceRouting, TrafficPolicy};

#[derive(Parser, Debug)]
#[command(about = "Config load and weight-step time of weir's proxy")]
struct Args {
    /// A weir config whose services have versions `primary` and `canary`.
    #[arg(long)]
    config: std::path::PathBuf,
    /// Weight steps timed.
    #[arg(long, default_value_t = 500)]
    steps: u32,
    /// Step the first service every time instead of going round them all: what the table
    /// size costs, apart from each step's service being cold in the CPU's caches.
    #[arg(long)]
    one_service: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;

    let t = Instant::now();
    let cfg = ProxyConfig::parse(&text)?;
    let proxy = Proxy::new(cfg.clone())?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    proxy.apply(ProxyConfig::parse(&text)?)?;
    let reload_ms = t.elapsed().as_secs_f64() * 1e3;

    let services: Vec<ServiceRouting> = cfg
        .services
        .iter()
        .map(ServiceRouting::from_config)
        .collect();
    anyhow::ensure!(
        !services.is_empty(),
        "{} has no services",
        args.config.display()
    );
    let mut steps = Histogram::<u64>::new(3).context("histogram")?;
    let stepped = if args.one_service {
        &services[..1]
    } else {
        &services[..]
    };
    for (i, service) in (0..args.steps).zip(stepped.iter().cycle()) {
        let canary = 5 + (i % 10) * 5;
        let weights = IndexMap::from([
            ("primary".to_string(), 100 - canary),
            ("canary".to_string(), canary),
        ]);
        let policy = TrafficPolicy {
            weights: Some(weights),
            ..TrafficPolicy::default()
        };
        let step = service.with_policy(&policy)?;
        let t = Instant::now();
        proxy.set_service(step)?;
        let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        steps.record(nanos).context("recording a step")?;
    }
    println!(
        "{}",
        serde_json::json!({
            "services": services.len(),
            "one_service": args.one_service,
            "load_ms": load_ms,
            "reload_ms": reload_ms,
            "step_us_p50": steps.value_at_quantile(0.5) as f64 / 1e3,
            "step_us_p99": steps.value_at_quantile(0.99) as f64 / 1e3,
        })
    );
    Ok(())
}
