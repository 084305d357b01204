//! What the controller benchmarks share (each binary uses a part of it): `weir control`
//! started on a config, a child process killed when dropped, a process's CPU time and
//! memory from /proc, a series of its /metrics, percentiles.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `weir control` on `yaml` (written into `dir`), once its admin listens, and the admin
/// address; its control address is the one `yaml` names.
pub fn start_control(weir: &str, dir: &Path, yaml: &str) -> anyhow::Result<(Proc, String)> {
    let path = dir.join("weir.yaml");
    std::fs::write(&path, yaml)?;
    let mut child = Command::new(weir)
        .args(["control", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start weir control")?;
    let out = child.stdout.take().context("stdout")?;
    let controller = Proc(child);
    for line in BufReader::new(out).lines() {
        if let Some(admin) = line?.strip_prefix("weir: admin listening on") {
            let admin = admin.trim().trim_start_matches("http://");
            return Ok((controller, admin.trim_end_matches('/').to_string()));
        }
    }
    bail!("weir control exited before listening")
}

/// The value of an unlabelled series on `admin`'s /metrics (0 when absent).
pub fn metric(admin: &str, name: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin)?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// CPU cores `pid` uses over `span`.
pub async fn cores(pid: u32, span: std::time::Duration) -> f64 {
    let (c0, t0) = (cpu_seconds(pid), std::time::Instant::now());
    tokio::time::sleep(span).await;
    (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64()
}

/// CPU seconds (user + system) of a process so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A memory figure of /proc/PID/status (`VmRSS:`, `VmHWM:`) in MiB.
pub fn memory_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
