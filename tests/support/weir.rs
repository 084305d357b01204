//! The real `weir` binary in a child process: its addresses, logs, signals and metrics.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "weir-test-{}-{}-{tag}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The real `weir` binary running `weir run -c <file>`.
pub struct Weir {
    pub child: Child,
    /// The first proxy listener.
    pub proxy: SocketAddr,
    /// Every proxy listener, in config order (`listen`, then `listeners`).
    pub proxies: Vec<SocketAddr>,
    pub admin: SocketAddr,
    /// The metrics-only listener, when the config has one.
    pub metrics: Option<SocketAddr>,
    pub config_path: PathBuf,
    pub stderr: Arc<Mutex<String>>,
    pub control: Option<SocketAddr>,
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// `weir check -c FILE` on `yaml` written to a fresh directory: exit code, and its
/// stdout (the verdict and notes) followed by its stderr (the errors).
pub fn weir_check(yaml: &str) -> (i32, String) {
    let file = temp_dir("check").join("weir.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let out = Command::new(weir_bin())
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run weir check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

impl Weir {
    /// Writes `yaml` (with `listen`/`admin` on port 0 unless given) and starts weir on it.
    pub fn start(yaml: &str) -> Weir {
        Weir::start_mode("run", yaml)
    }

    /// Like [`Weir::start`] with another subcommand (`proxy`: the data plane only).
    pub fn start_mode(mode: &str, yaml: &str) -> Weir {
        let dir = temp_dir("weir");
        let path = dir.join("weir.yaml");
        let mut text = String::new();
        if !yaml.contains("listen:") {
            text.push_str("listen: 127.0.0.1:0\n");
        }
        if !yaml.contains("admin:") {
            text.push_str("admin: 127.0.0.1:0\n");
        }
        text.push_str(yaml);
        std::fs::write(&path, text).expect("write config");
        Weir::spawn(mode, path)
    }

    /// The gRPC control address (`control: 127.0.0.1:0` in the config).
    pub fn control_url(&self) -> String {
        format!("http://{}", self.control.expect("the config sets control:"))
    }

    pub fn start_file(path: PathBuf) -> Weir {
        Weir::spawn("run", path)
    }

    fn spawn(mode: &str, path: PathBuf) -> Weir {
        Weir::spawn_args(&[mode], path)
    }

    /// `weir ARGS... -c PATH`, once it printed its addresses (the admin line comes last).
    /// A process with no proxy listener (`weir control`) has its admin address as `proxy`.
    pub fn spawn_args(args: &[&str], path: PathBuf) -> Weir {
        Weir::spawn_at(None, args, path)
    }

    /// Like [`Weir::spawn_args`], run in `dir`: relative paths in its config are read there.
    pub fn spawn_in(dir: &Path, args: &[&str], path: PathBuf) -> Weir {
        Weir::spawn_at(Some(dir), args, path)
    }

    fn spawn_at(dir: Option<&Path>, args: &[&str], path: PathBuf) -> Weir {
        let mut command = Command::new(weir_bin());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command
            .args(args)
            .arg("-c")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start weir");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut proxy = None;
        let mut proxies = Vec::new();
        let mut admin = None;
        let mut control = None;
        let mut metrics = None;
        // `ADDR` or `ADDR (scheme)`.
        let addr = |rest: &str| -> Option<SocketAddr> {
            rest.split_whitespace().next().and_then(|a| a.parse().ok())
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "weir did not report its addresses; stderr:\n{}",
                    stderr.lock().expect("lock")
                )
            });
            if let Some(a) = line.strip_prefix("weir: proxy listening on ") {
                proxies.extend(addr(a));
                proxy = proxy.or(addr(a));
            }
            if let Some(a) = line.strip_prefix("weir: admin listening on ") {
                admin = addr(a);
            }
            if let Some(a) = line.strip_prefix("weir: control listening on ") {
                control = addr(a);
            }
            if let Some(a) = line.strip_prefix("weir: metrics listening on ") {
                metrics = addr(a);
            }
        }
        let admin = admin.expect("admin address");
        Weir {
            child,
            proxy: proxy.unwrap_or(admin),
            proxies,
            admin,
            metrics,
            config_path: path,
            stderr,
            control,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Writes `text` as the config, sends SIGHUP and waits until weir counted the reload
    /// as rejected (`weir_config_reloads_total{result="error"}` higher; the file watch
    /// may count the same file too).
    pub async fn reload_rejected(&self, text: &str) {
        let labels = [("result", "error")];
        let before = self.metric("weir_config_reloads_total", &labels).await;
        std::fs::write(&self.config_path, text).expect("write config");
        self.signal("HUP");
        wait_for(
            "the reload to be rejected",
            Duration::from_secs(30),
            || async { self.metric("weir_config_reloads_total", &labels).await > before },
        )
        .await;
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits (generously) until weir's log contains `want`: the log is read by another
    /// thread, so a line weir wrote may not be in [`Weir::logs`] yet.
    pub fn wait_log(&self, want: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let logs = self.logs();
            if logs.contains(want) {
                return logs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {want:?} in the log:\n{logs}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Scrapes `/metrics` and returns the value of one series (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = get_text(&self.admin_url("/metrics")).await;
        metric_value(&text, name, labels)
    }

    /// Waits until the series `name` with `labels` equals `want`, or panics after `limit`.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
        limit: Duration,
    ) {
        let what = format!("{name} {labels:?} to be {want}");
        wait_for(&what, limit, move || async move {
            self.metric(name, labels).await == want
        })
        .await;
    }

    /// Peak resident memory of the process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

/// The value of a series in Prometheus text; labels must all match (others are ignored).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let parsed: HashMap<&str, &str> = label_text
            .split("\",")
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim_matches(','), v.trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| parsed.get(k) == Some(v)) {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}
