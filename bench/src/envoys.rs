//! weir-envoys: `weir control` driving real Envoy nodes over ADS. Starts the controller
//! with `--services` services (no analysis: the steps set their split) and `--nodes`
//! Envoys (`weir bootstrap envoy`, one worker each), waits until every node serves the
//! routing, then times `--steps` weight steps (SetWeight, one service at a time) from the
//! call to every node having ACKed the new version (the controller's own view, polled
//! every millisecond). Prints one TSV line: nodes, services, steps, ACK p50/p99 ms, the
//! controller's RSS with no node and with all of them, its CPU (cores) with none, with
//! the nodes connected and flushing their stats (every 250 ms, the bootstrap default), and
//! while stepping, its CPU per step above the nodes' flushes, and the xDS bytes each node
//! was sent per step (`weir_control_push_bytes_total`).

mod process;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tonic::transport::Channel;
use weir_protos::control as pb;
use weir_protos::control::control_client::ControlClient;

use process::{cores, cpu_seconds, free_port, memory_mib, metric, percentile, start_control, Proc};

#[derive(Parser)]
struct Args {
    /// The weir binary.
    #[arg(long)]
    weir: String,
    /// The Envoy binary.
    #[arg(long)]
    envoy: String,
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    #[arg(long, default_value_t = 20)]
    services: usize,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// A scratch directory.
    #[arg(long)]
    dir: String,
}

fn config(args: &Args, control: &str) -> String {
    let mut y = format!("admin: 127.0.0.1:0\ncontrol: {control}\nenvoy: {{}}\nservices:\n");
    for i in 0..args.services {
        y.push_str(&format!(
            "  - name: svc-{i}\n    hosts: [svc-{i}]\n    versions:\n      primary: {{ endpoints: [\"127.0.0.1:9\"] }}\n      canary: {{ endpoints: [\"127.0.0.1:9\"] }}\n    routes:\n      - split: {{ primary: 90, canary: 10 }}\n"
        ));
    }
    y
}

/// Envoy nodes that ACKed `version` (or later), by the controller's list.
async fn acked(api: &mut ControlClient<Channel>, version: u64) -> anyhow::Result<usize> {
    let list = api
        .list_replicas(pb::ListReplicasRequest {})
        .await?
        .into_inner();
    Ok(list
        .replicas
        .iter()
        .filter(|r| r.kind == "envoy" && r.generation >= version)
        .count())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::path::Path::new(&args.dir);
    let control = format!("127.0.0.1:{}", free_port()?);
    let (controller, admin) = start_control(&args.weir, dir, &config(&args, &control))?;
    let pid = controller.0.id();
    let mut api = ControlClient::new(
        Channel::from_shared(format!("http://{control}"))?
            .connect()
            .await?,
    );
    let rss_alone = memory_mib(pid, "VmRSS:");
    let cores_alone = cores(pid, Duration::from_secs(3)).await;
    let mut envoys = Vec::new();
    for n in 0..args.nodes {
        let (listen, admin) = (free_port()?, free_port()?);
        let boot = Command::new(&args.weir)
            .args(["bootstrap", "envoy", "--control", &control, "--node"])
            .arg(format!("node-{n}"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{listen}"))
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"))
            .output()?;
        if !boot.status.success() {
            bail!(
                "weir bootstrap envoy: {}",
                String::from_utf8_lossy(&boot.stderr)
            );
        }
        let file = dir.join(format!("envoy-{n}.yaml"));
        std::fs::write(&file, &boot.stdout)?;
        let e = Command::new(&args.envoy)
            .arg("-c")
            .arg(&file)
            .args([
                "--base-id",
                &admin.to_string(),
                "--concurrency",
                "1",
                "-l",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start envoy")?;
        envoys.push(Proc(e));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let version = api
            .list_replicas(pb::ListReplicasRequest {})
            .await?
            .into_inner()
            .generation;
        if acked(&mut api, version).await? == args.nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("not every Envoy node served the routing in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cores_nodes = cores(pid, Duration::from_secs(5)).await;
    let rss_nodes = memory_mib(pid, "VmRSS:");
    let mut times = Vec::with_capacity(args.steps);
    let (cpu0, wall0) = (cpu_seconds(pid), Instant::now());
    let bytes0 = metric(&admin, "weir_control_push_bytes_total")?;
    for step in 0..args.steps {
        let t0 = Instant::now();
        api.set_weight(pb::SetWeightRequest {
            service: format!("svc-{}", step % args.services),
            canary_weight: 5 + (step as u32 % 80),
            force: false,
            weights: Default::default(),
        })
        .await?;
        let version = api
            .list_replicas(pb::ListReplicasRequest {})
            .await?
            .into_inner()
            .generation;
        let deadline = t0 + Duration::from_secs(30);
        while acked(&mut api, version).await? < args.nodes {
            if Instant::now() > deadline {
                bail!("step {step}: not every node ACKed version {version} in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (cpu, wall) = (cpu_seconds(pid) - cpu0, wall0.elapsed().as_secs_f64());
    let pushed = metric(&admin, "weir_control_push_bytes_total")? - bytes0;
    let bytes_per_node_step = pushed / (args.nodes * times.len()) as f64;
    let cores_stepping = cpu / wall;
    // Above what the connected nodes cost with no step (their stats flushes).
    let cpu_ms_per_step = (cpu - cores_nodes * wall).max(0.0) * 1000.0 / times.len() as f64;
    times.sort_by(f64::total_cmp);
    println!(
        "{}\t{}\t{}\t{:.2}\t{:.2}\t{:.1}\t{:.1}\t{:.3}\t{:.3}\t{:.3}\t{:.2}\t{:.0}",
        args.nodes,
        args.services,
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        rss_alone,
        rss_nodes,
        cores_alone,
        cores_nodes,
        cores_stepping,
        cpu_ms_per_step,
        bytes_per_node_step,
    );
    Ok(())
}
