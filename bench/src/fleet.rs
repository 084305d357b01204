//! weir-fleet: the controller (`weir control`, a real process) with many replicas, played
//! by streams from this one process. Each stream is a replica as the controller sees it:
//! Hello, an ACK for every routing delta the moment it arrives, and every 250 ms a
//! measurement report for the first `--report-services` services' two versions (request
//! counts by class and code, Envoy buckets and an hdrhistogram of realistic latencies,
//! V2-serialized, as `weir proxy` sends). Rollouts run on every service; the bench steps
//! one service's weight at a time with SetWeight and times the step from the call to the
//! last replica's ACK. Prints one TSV line: replicas, services, steps, ACK p50/p99 ms,
//! controller CPU (cores) and RSS, report bytes per replica per second, routing bytes per
//! replica per step, and the controller's CPU per step (over what it spends on reports
//! alone in an equally long quiet phase before).

mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use process::{cores, cpu_seconds, free_port, memory_mib, percentile, start_control, Proc};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use weir_protos::control as pb;
use weir_protos::control::control_client::ControlClient;
use weir_protos::fleet as fb;
use weir_protos::fleet::fleet_client::FleetClient;

#[derive(Parser)]
struct Args {
    /// The weir binary.
    #[arg(long)]
    weir: String,
    #[arg(long, default_value_t = 100)]
    replicas: usize,
    #[arg(long, default_value_t = 20)]
    services: usize,
    /// Weight steps timed.
    #[arg(long, default_value_t = 60)]
    steps: usize,
    /// Requests per second each replica serves per service (shapes the reports).
    #[arg(long, default_value_t = 50)]
    rps: u64,
    /// Services each replica reports measurements for (default: all).
    #[arg(long)]
    report_services: Option<usize>,
    /// Services without an analysis (the steps set their split): no rollout tasks, for
    /// the routing's cost at thousands of services.
    #[arg(long)]
    r#static: bool,
    /// A scratch directory for the controller's files.
    #[arg(long)]
    dir: String,
}

/// Envoy's bucket bounds in ms (as weir's /metrics), for the bucket counts of a report.
const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// What the replicas saw: per replica, the newest routing version pushed and when.
struct Seen {
    pushes: Vec<Mutex<(u64, Option<Instant>)>>,
    report_bytes: AtomicU64,
    /// Bytes of routing deltas received, all replicas together.
    push_bytes: AtomicU64,
}

fn controller_config(args: &Args, control: &str) -> String {
    let mut y = format!("admin: 127.0.0.1:0\ncontrol: {control}\nservices:\n");
    let analysis = "    analysis:\n      interval: 1h\n      threshold: 5\n      maxWeight: 90\n      stepWeight: 1\n      metrics:\n        - name: request-success-rate\n          thresholdRange: { min: 99 }\n          interval: 1m\n";
    for i in 0..args.services {
        y.push_str(&format!(
            "  - name: svc-{i}\n    hosts: [svc-{i}]\n    versions:\n      primary: {{ endpoints: [\"127.0.0.1:9\"], revision: \"1\" }}\n      canary: {{ endpoints: [\"127.0.0.1:9\"], revision: \"1\" }}\n"
        ));
        if !args.r#static {
            y.push_str(analysis);
        }
    }
    y
}

/// One report's delta for one version: `n` requests, ~1% 5xx, latencies around 20 ms.
fn delta(service: &str, version: &str, n: u64, seed: u64) -> fb::VersionDelta {
    let mut h = Histogram::<u64>::new(2).expect("precision");
    let mut buckets = vec![0u64; BUCKETS_MS.len() + 1];
    let mut sum = 0;
    let mut errors = 0;
    for i in 0..n {
        let x = splitmix(seed ^ splitmix(i));
        let micros = 2_000 + (x % 40_000) + if x.is_multiple_of(97) { 200_000 } else { 0 };
        let _ = h.record(micros);
        sum += micros;
        let ms = micros as f64 / 1000.0;
        buckets[BUCKETS_MS.partition_point(|b| *b < ms)] += 1;
        errors += u64::from(x.is_multiple_of(100));
    }
    let mut latency = Vec::new();
    if n > 0 {
        let _ = V2Serializer::new().serialize(&h, &mut latency);
    }
    let mut codes = std::collections::HashMap::new();
    codes.insert(200, n - errors);
    if errors > 0 {
        codes.insert(503, errors);
    }
    fb::VersionDelta {
        service: service.into(),
        version: version.into(),
        mirrored: false,
        responses: vec![0, n - errors, 0, 0, errors],
        failures: Default::default(),
        client_faults: Default::default(),
        codes,
        buckets,
        sum_micros: sum,
        latency,
    }
}

/// A well-mixed 64-bit hash (splitmix64's finalizer).
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn report(r: fb::replica_report::Report) -> fb::ReplicaReport {
    fb::ReplicaReport { report: Some(r) }
}

/// One replica's stream, until the process ends.
async fn replica(i: usize, url: String, args: Arc<Args>, seen: Arc<Seen>) -> anyhow::Result<()> {
    let channel = Channel::from_shared(url)?.connect().await?;
    let mut client = FleetClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(64);
    tx.send(report(fb::replica_report::Report::Hello(fb::Hello {
        name: format!("replica-{i}"),
        address: format!("10.0.{}.{}:8080", i / 250, i % 250),
        version: 0,
        incarnation: i as u64 + 1,
    })))
    .await?;
    let mut pushes = client.sync(ReceiverStream::new(rx)).await?.into_inner();
    let ack_tx = tx.clone();
    let ack_seen = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = pushes.message().await {
            let Some(fb::controller_message::Message::Routing(delta)) = msg.message else {
                continue;
            };
            let at = Instant::now();
            ack_seen
                .push_bytes
                .fetch_add(delta.encoded_len() as u64, Ordering::Relaxed);
            let _ = ack_tx
                .send(report(fb::replica_report::Report::Applied(fb::Applied {
                    version: delta.version,
                    error: String::new(),
                })))
                .await;
            if let Ok(mut s) = ack_seen.pushes[i].lock() {
                *s = (delta.version, Some(at));
            }
        }
    });
    let mut every = tokio::time::interval(Duration::from_millis(250));
    let mut tick = 0u64;
    let per_tick = args.rps / 4;
    let reported = args
        .report_services
        .unwrap_or(args.services)
        .min(args.services);
    loop {
        every.tick().await;
        tick += 1;
        let mut versions = Vec::with_capacity(reported * 2);
        for s in 0..reported {
            let svc = format!("svc-{s}");
            let canary = per_tick / 10;
            let seed = (i as u64) << 32 | (s as u64) << 16 | tick;
            versions.push(delta(&svc, "primary", per_tick - canary, seed));
            versions.push(delta(&svc, "canary", canary, seed ^ 0xabcdef));
        }
        let version = seen.pushes[i].lock().map(|s| s.0).unwrap_or(0);
        let m = report(fb::replica_report::Report::Measurements(fb::Measurements {
            version,
            seq: tick,
            versions,
        }));
        seen.report_bytes
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
        if tx.send(m).await.is_err() {
            bail!("replica {i}: stream closed");
        }
    }
}

/// `weir control` on this run's config, and its control address.
fn start_controller(args: &Args) -> anyhow::Result<(Proc, String)> {
    let control = format!("127.0.0.1:{}", free_port()?);
    let yaml = controller_config(args, &control);
    let (ctl, _admin) = start_control(&args.weir, std::path::Path::new(&args.dir), &yaml)?;
    Ok((ctl, control))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let (ctl, control) = start_controller(&args)?;
    let pid = ctl.0.id();
    let url = format!("http://{control}");
    let mut api = ControlClient::new(Channel::from_shared(url.clone())?.connect().await?);
    for s in (0..args.services).filter(|_| !args.r#static) {
        api.start_rollout(pb::StartRolloutRequest {
            service: format!("svc-{s}"),
            revision: "2".into(),
            canary_endpoints: vec![],
        })
        .await?;
    }
    let seen = Arc::new(Seen {
        pushes: (0..args.replicas).map(|_| Mutex::new((0, None))).collect(),
        report_bytes: AtomicU64::new(0),
        push_bytes: AtomicU64::new(0),
    });
    for i in 0..args.replicas {
        let (url, args, seen) = (url.clone(), args.clone(), seen.clone());
        tokio::spawn(async move {
            if let Err(e) = replica(i, url, args, seen).await {
                eprintln!("weir-fleet: {e:#}");
            }
        });
    }
    let newest = || -> (u64, u64) {
        let gens: Vec<u64> = seen
            .pushes
            .iter()
            .map(|p| p.lock().map(|s| s.0).unwrap_or(0))
            .collect();
        (
            gens.iter().copied().min().unwrap_or(0),
            gens.iter().copied().max().unwrap_or(0),
        )
    };
    // Every replica connected and at the current routing.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = api
            .list_replicas(pb::ListReplicasRequest {})
            .await?
            .into_inner();
        let synced = list.replicas.iter().filter(|r| r.state == "synced").count();
        if synced == args.replicas && newest().0 == list.generation {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {synced} of {} replicas synced", args.replicas);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A quiet phase as long as the stepping will be: what reports and the guard cost.
    let quiet = Duration::from_millis(300) * args.steps as u32;
    let quiet_cores = cores(pid, quiet).await;
    let (cpu0, wall0, bytes0, push0) = (
        cpu_seconds(pid),
        Instant::now(),
        seen.report_bytes.load(Ordering::Relaxed),
        seen.push_bytes.load(Ordering::Relaxed),
    );
    let mut times = Vec::with_capacity(args.steps);
    for step in 0..args.steps {
        let before = newest().1;
        let t0 = Instant::now();
        api.set_weight(pb::SetWeightRequest {
            service: format!("svc-{}", step % args.services),
            canary_weight: 2 + (step as u32 % 80),
            force: false,
            weights: Default::default(),
        })
        .await?;
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let last = seen
                .pushes
                .iter()
                .map(|p| p.lock().map(|s| *s).unwrap_or((0, None)))
                .try_fold(t0, |latest, (g, at)| match at {
                    Some(at) if g > before => Some(latest.max(at)),
                    _ => None,
                });
            if let Some(last) = last {
                times.push(last.duration_since(t0).as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                bail!("step {step}: not every replica got the new routing version in 30 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let cores = cpu / wall;
    let per_step_ms = ((cpu - quiet_cores * wall) / args.steps as f64 * 1000.0).max(0.0);
    let bytes =
        (seen.report_bytes.load(Ordering::Relaxed) - bytes0) as f64 / wall / args.replicas as f64;
    let push_bytes = (seen.push_bytes.load(Ordering::Relaxed) - push0) as f64
        / args.steps as f64
        / args.replicas as f64;
    let list = api
        .list_replicas(pb::ListReplicasRequest {})
        .await?
        .into_inner();
    let synced = list.replicas.iter().filter(|r| r.state == "synced").count();
    times.sort_by(f64::total_cmp);
    println!(
        "{}\t{}\t{}\t{:.2}\t{:.2}\t{:.3}\t{:.1}\t{:.1}\t{:.0}\t{}\t{:.0}\t{:.3}",
        args.replicas,
        args.services,
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        cores,
        memory_mib(pid, "VmRSS:"),
        memory_mib(pid, "VmHWM:"),
        bytes,
        synced,
        push_bytes,
        per_step_ms,
    );
    Ok(())
}
