//! `weir demo`: two built-in upstream versions on loopback, the proxy and the controller in
//! front, a built-in load loop, and a full canary rollout of v2 with Flagger's log lines and
//! a live view of the weight, the split and each version's success rate and p99.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_proxy::{Proxy, VersionHandle};

use super::render::{event_label, view_line};
use super::run::until;
use crate::config::WeirConfig;
use crate::controller::{Controller, Notice};

/// Options of `weir demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Longest the load loop runs, in seconds (it stops two seconds after the rollout ends).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Requests per second sent through the proxy.
    #[arg(long, default_value_t = 400)]
    pub rate: u64,
    /// Make v2 (the canary) fail: weir rolls it back automatically.
    #[arg(long)]
    pub faulty: bool,
    /// With --faulty, the share of v2's requests that answer 500.
    #[arg(long, default_value_t = 1.0 / 3.0, value_parser = ratio)]
    pub fail_ratio: f64,
    /// Analysis interval.
    #[arg(long, default_value = "2s")]
    pub interval: String,
    /// Metric window.
    #[arg(long, default_value = "4s")]
    pub metric_interval: String,
    /// Canary weight step (percent).
    #[arg(long, default_value_t = 10)]
    pub step_weight: u32,
    /// Weight at which promotion starts (percent).
    #[arg(long, default_value_t = 50)]
    pub max_weight: u32,
    /// Failed checks before rollback.
    #[arg(long, default_value_t = 2)]
    pub threshold: u32,
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1")),
    }
}

/// A built-in upstream version: answers `hello from <name>` after a short delay.
struct Upstream {
    addr: SocketAddr,
}

async fn start_upstream(
    name: &'static str,
    fail_ratio: f64,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Upstream> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counter = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        let mut stop = stop;
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        async move {
                            // A little work: 1-3 ms.
                            tokio::time::sleep(Duration::from_micros(1000 + (n * 7919) % 2000))
                                .await;
                            // Spread failures evenly: request n fails when the running
                            // share of failures would fall below the ratio.
                            let fails = ((n + 1) as f64 * fail_ratio).floor()
                                > (n as f64 * fail_ratio).floor();
                            let (status, text) = if fails {
                                (
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    format!("{name} failed\n"),
                                )
                            } else {
                                (StatusCode::OK, format!("hello from {name}\n"))
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Upstream { addr })
}

/// The demo's weir.yaml: v1 as primary and (until the rollout) canary, the analysis
/// from the command line.
fn config(args: &DemoArgs, v1: SocketAddr) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: 127.0.0.1:0
services:
  - name: podinfo
    namespace: demo
    hosts: ["*"]
    port: 9898
    versions:
      primary: {{ endpoints: ["{v1}"], revision: v1 }}
      canary: {{ endpoints: ["{v1}"], revision: v1 }}
    routes:
      - match: {{ headers: {{ x-canary: {{ exact: always }} }} }}
        to: canary
      - split: {{ primary: 100, canary: 0 }}
    analysis:
      interval: {interval}
      threshold: {threshold}
      maxWeight: {max_weight}
      stepWeight: {step}
      metrics:
        - name: request-success-rate
          thresholdRange: {{ min: 99 }}
          interval: {window}
        - name: request-duration
          thresholdRange: {{ max: 500 }}
          interval: {window}
"#,
        interval = args.interval,
        threshold = args.threshold,
        max_weight = args.max_weight,
        step = args.step_weight,
        window = args.metric_interval,
    )
}

/// The proxy's listeners, served until `stop`.
async fn serve(
    proxy: &Proxy,
    ctl: &Controller,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, SocketAddr, JoinSet<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let addrs = (listener.local_addr()?, admin.local_addr()?);
    let mut tasks = JoinSet::new();
    let (p, rx) = (proxy.clone(), stop.clone());
    tasks.spawn(async move { p.serve(listener, until(rx)).await });
    let (p, rx) = (proxy.clone(), stop.clone());
    let pages = super::run::dashboard_pages(ctl, proxy);
    tasks.spawn(async move { p.serve_admin_with(admin, Some(pages), until(rx)).await });
    Ok((addrs.0, addrs.1, tasks))
}

/// When the canary answered its first request, and how many requests had failed then.
type FirstRequest = Arc<std::sync::Mutex<Option<(Instant, u64)>>>;

/// Notes the first request the canary answers: the blast-radius clock starts there.
fn watch_first_request(canary: VersionHandle, failed: Arc<AtomicU64>) -> FirstRequest {
    let first: FirstRequest = Arc::new(std::sync::Mutex::new(None));
    let seen = first.clone();
    tokio::spawn(async move {
        while canary.counts(false).0 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Ok(mut f) = seen.lock() {
            *f = Some((Instant::now(), failed.load(Ordering::Relaxed)));
        }
    });
    first
}

/// How the rollout ended: its phase, the failed requests by then, and when.
type Outcome = (String, u64, Instant);

/// Runs the demo: a full canary rollout of v2 through the controller.
pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let fail_ratio = if args.faulty { args.fail_ratio } else { 0.0 };
    let v1 = start_upstream("v1", 0.0, stop_rx.clone()).await?;
    let v2 = start_upstream("v2", fail_ratio, stop_rx.clone()).await?;
    let cfg = WeirConfig::parse(&config(&args, v1.addr))?;
    let interval = cfg
        .analyses
        .get("podinfo")
        .map(|a| a.analysis.interval)
        .unwrap_or(Duration::from_secs(2));
    let proxy = Proxy::new(cfg.proxy.clone())?;
    let controller = Controller::start(proxy.clone(), &cfg)?;
    let version = |name: &str| {
        proxy
            .version("podinfo", name)
            .ok_or_else(|| anyhow::anyhow!("the demo's {name} version is not routed"))
    };
    let (primary, canary) = (version("primary")?, version("canary")?);
    let notices = controller.subscribe();
    let (proxy_addr, admin_addr, mut servers) = serve(&proxy, &controller, &stop_rx).await?;
    println!(
        "weir demo: v1 (primary) on {}, v2 (new canary) on {}",
        v1.addr, v2.addr
    );
    println!("weir demo: proxy on http://{proxy_addr}, dashboard on http://{admin_addr}/ui/");
    println!(
        "weir demo: {} req/s; analysis every {}, step +{}% to {}%, threshold {}{}",
        args.rate,
        args.interval,
        args.step_weight,
        args.max_weight,
        args.threshold,
        if args.faulty {
            format!("; v2 fails {:.0}%", 100.0 * fail_ratio)
        } else {
            String::new()
        }
    );
    let failed = Arc::new(AtomicU64::new(0));
    let (load_stop_tx, load_stop) = watch::channel(false);
    let load = tokio::spawn(load_loop(
        proxy_addr,
        args.rate,
        Duration::from_secs(args.seconds),
        failed.clone(),
        load_stop,
    ));
    let first = watch_first_request(canary.clone(), failed.clone());
    // Let the primary take traffic for a moment, then tell weir about v2, as CI would.
    tokio::time::sleep(interval.min(Duration::from_secs(2))).await;
    let started = Instant::now();
    controller
        .start_rollout("podinfo", "v2", &[v2.addr.to_string()])
        .await?;
    let live = Live {
        controller: &controller,
        primary: &primary,
        canary: &canary,
        failed: &failed,
        started,
    };
    let outcome = live.follow(notices, &load, &load_stop_tx).await;
    let total_failed = load.await.unwrap_or(0);
    let first = first.lock().ok().and_then(|f| *f);
    report(outcome, first, started, total_failed);
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    Ok(ExitCode::SUCCESS)
}

/// What the live view reads.
struct Live<'a> {
    controller: &'a Controller,
    primary: &'a VersionHandle,
    canary: &'a VersionHandle,
    failed: &'a AtomicU64,
    started: Instant,
}

impl Live<'_> {
    /// Prints events and a line a second until the load ends (two seconds after the
    /// rollout's decision); returns the decision.
    async fn follow(
        &self,
        mut notices: tokio::sync::broadcast::Receiver<Notice>,
        load: &tokio::task::JoinHandle<u64>,
        load_stop: &watch::Sender<bool>,
    ) -> Option<Outcome> {
        let snapshots = || (self.primary.snapshot(false), self.canary.snapshot(false));
        let mut last = snapshots();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut outcome: Option<Outcome> = None;
        println!("{}", super::render::VIEW_HEADER);
        while !load.is_finished() {
            tokio::select! {
                n = notices.recv() => match n {
                    Ok(Notice::Event(e)) => {
                        let line = format!("[{:>3}s] {}: {}", self.started.elapsed().as_secs(), event_label(e.warning), e.message);
                        println!("{}", wrap(&line, COLUMNS, "        "));
                    }
                    Ok(Notice::Status(s)) if outcome.is_none() && (s.phase == "Succeeded" || s.phase == "Failed") => {
                        outcome = Some((s.phase.clone(), self.failed.load(Ordering::Relaxed), Instant::now()));
                    }
                    _ => {}
                },
                _ = tick.tick() => {
                    let now = snapshots();
                    let status = self.controller.status("podinfo").ok();
                    let (phase, weight) = status.map(|s| (s.phase, s.canary_weight)).unwrap_or_default();
                    println!("{}", view_line(self.started.elapsed(), weight, &phase, &now.0.since(&last.0), &now.1.since(&last.1)));
                    last = now;
                    if outcome.as_ref().is_some_and(|o| o.2.elapsed() >= Duration::from_secs(2)) {
                        let _ = load_stop.send(true);
                    }
                }
            }
        }
        outcome
    }
}

/// The closing lines: promoted in how long, or rolled back how soon after the canary's
/// first request and at the cost of how many failed requests.
fn report(
    outcome: Option<Outcome>,
    first: Option<(Instant, u64)>,
    started: Instant,
    total_failed: u64,
) {
    let Some((phase, failed_then, at)) = outcome else {
        println!("weir demo: the load loop ended before the rollout finished; {total_failed} user requests failed");
        return;
    };
    let (since_first, before_first) = match first {
        Some((t, f)) => (at.saturating_duration_since(t).as_secs_f64(), f),
        None => (0.0, 0),
    };
    let failed_before = failed_then.saturating_sub(before_first);
    // One time each way: a promotion from the start, a rollback from the canary's first
    // request (what its users felt).
    let seconds = if phase == "Succeeded" {
        let s = at.duration_since(started).as_secs_f64();
        println!("weir demo: v2 promoted {s:.1}s after the rollout started; {total_failed} user requests failed");
        s
    } else {
        println!(
            "weir demo: v2 rolled back {since_first:.1}s after its first request; {failed_before} user requests failed first ({total_failed} in all)"
        );
        since_first
    };
    println!(
        "weir demo: result phase={phase} seconds={seconds:.1} failed_before_rollback={failed_before} failed_total={total_failed}"
    );
}

/// Sends `rate` requests per second for `duration` (or until `stop`); returns how many
/// failed (non-2xx or transport error). Bounded in time and count.
async fn load_loop(
    addr: SocketAddr,
    rate: u64,
    duration: Duration,
    failed: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
) -> u64 {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let total = rate.saturating_mul(duration.as_secs()).max(1);
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let uri: hyper::Uri = match format!("http://{addr}/").parse() {
        Ok(u) => u,
        Err(_) => return total,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        if *stop.borrow() {
            break;
        }
        tokio::time::sleep_until(start + gap * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let client = client.clone();
        let failed = failed.clone();
        let uri = uri.clone();
        tasks.spawn(async move {
            let ok = match tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await {
                Ok(Ok(resp)) => {
                    let ok = resp.status().is_success();
                    ok && resp.into_body().collect().await.is_ok()
                }
                _ => false,
            };
            if !ok {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    failed.load(Ordering::Relaxed)
}

/// The terminal width the demo's output fits.
const COLUMNS: usize = 100;

/// `line` broken at spaces into lines of at most `width` characters (a longer word stays
/// whole), each line after the first starting with `indent`.
fn wrap(line: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut len = 0;
    for word in line.split(' ') {
        let n = word.chars().count();
        if len > 0 && len + 1 + n > width {
            out.push('\n');
            out.push_str(indent);
            len = indent.chars().count();
        } else if len > 0 {
            out.push(' ');
            len += 1;
        }
        out.push_str(word);
        len += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn long_lines_wrap_at_spaces_with_an_indent() {
        let text = wrap("aaa bbb ccc dd", 8, "  ");
        assert_eq!(text, "aaa bbb\n  ccc dd");
        assert!(text.lines().all(|l| l.chars().count() <= 8));
        assert_eq!(wrap("short", 80, "  "), "short");
    }
}
