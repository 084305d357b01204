//! weir-envoys: `weir control` driving real Envoy nodes over ADS. Starts the controller
//! with `--services` services (no analysis: the steps set their split) and `--nodes`
//! Envoys (`weir bootstrap envoy`, one worker each), waits until every node serves the
//! routing, then times `--steps` weight steps (SetWeight, one service at a time) from the
//! call to every node having ACKed the new version (the controller's own view, polled
//! every millisecond). Prints one TSV line: nodes, services, steps, ACK p50/p99 ms, the
//! controller's RSS with no node and with all of them, its CPU (cores) with the nodes
//! connected and flushing their stats (every 250 ms, the bootstrap default) and with none.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tonic::transport::Channel;
use weir_protos::control as pb;
use weir_protos::control::control_client::ControlClient;

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

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU cores `pid` uses over `span`.
async fn cores(pid: u32, span: Duration) -> f64 {
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(span).await;
    (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64()
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

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
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
    let path = dir.join("weir.yaml");
    std::fs::write(&path, config(&args, &control))?;
    let mut child = Command::new(&args.weir)
        .args(["control", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start weir control")?;
    let out = child.stdout.take().context("stdout")?;
    let controller = Proc(child);
    let pid = controller.0.id();
    for line in BufReader::new(out).lines() {
        if line?.starts_with("weir: admin listening on") {
            break;
        }
    }
    let mut api = ControlClient::new(
        Channel::from_shared(format!("http://{control}"))?
            .connect()
            .await?,
    );
    let rss_alone = rss_mib(pid);
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
    let rss_nodes = rss_mib(pid);
    let mut times = Vec::with_capacity(args.steps);
    for step in 0..args.steps {
        let t0 = Instant::now();
        let status = api
            .set_weight(pb::SetWeightRequest {
                service: format!("svc-{}", step % args.services),
                canary_weight: 5 + (step as u32 % 80),
                force: false,
                weights: Default::default(),
            })
            .await?
            .into_inner();
        let _ = status;
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
    times.sort_by(f64::total_cmp);
    println!(
        "{}\t{}\t{}\t{:.2}\t{:.2}\t{:.1}\t{:.1}\t{:.3}\t{:.3}",
        args.nodes,
        args.services,
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        rss_alone,
        rss_nodes,
        cores_alone,
        cores_nodes,
    );
    drop(envoys);
    drop(controller);
    Ok(())
}
