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
use weir_proxy::config::ConfigErrors;
use weir_proxy::{Config, Proxy};

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

/// Runs the demo: a full canary rollout of v2 through the controller.
pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let fail_ratio = if args.faulty { args.fail_ratio } else { 0.0 };
    let v1 = start_upstream("v1", 0.0, stop_rx.clone()).await?;
    let v2 = start_upstream("v2", fail_ratio, stop_rx.clone()).await?;
    let yaml = format!(
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
        v1 = v1.addr,
        interval = args.interval,
        threshold = args.threshold,
        max_weight = args.max_weight,
        step = args.step_weight,
        window = args.metric_interval,
    );
    let cfg = Config::parse(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let analyses =
        crate::spec::analyses(&cfg).map_err(|e| anyhow::anyhow!("{}", ConfigErrors(e)))?;
    let interval = analyses
        .get("podinfo")
        .map(|a| a.interval)
        .unwrap_or(Duration::from_secs(2));
    let proxy = Proxy::new(cfg.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let controller = Controller::start(proxy.clone(), &cfg, analyses, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut notices = controller.subscribe();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = listener.local_addr()?;
    println!(
        "weir demo: v1 (primary) on {}, v2 (new canary) on {}",
        v1.addr, v2.addr
    );
    println!(
        "weir demo: proxy on http://{proxy_addr}, metrics on http://{}/metrics",
        admin.local_addr()?
    );
    println!(
        "weir demo: {} req/s; analysis every {}, step {}% up to {}%, threshold {}{}",
        args.rate,
        args.interval,
        args.step_weight,
        args.max_weight,
        args.threshold,
        if args.faulty {
            format!("; v2 fails {:.0}% of its requests", 100.0 * fail_ratio)
        } else {
            String::new()
        }
    );
    let server = {
        let proxy = proxy.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            proxy
                .serve(listener, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let admin_task = {
        let proxy = proxy.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            proxy
                .serve_admin(admin, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let failed = Arc::new(AtomicU64::new(0));
    let (load_stop_tx, load_stop) = watch::channel(false);
    let load = tokio::spawn(load_loop(
        proxy_addr,
        args.rate,
        Duration::from_secs(args.seconds),
        failed.clone(),
        load_stop,
    ));
    // The first request the canary answers starts the blast-radius clock.
    let first_canary = Arc::new(std::sync::Mutex::new(None::<(Instant, u64)>));
    {
        let proxy = proxy.clone();
        let first = first_canary.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            loop {
                if proxy
                    .counts("podinfo", "canary", false)
                    .is_some_and(|c| c.0 > 0)
                {
                    if let Ok(mut f) = first.lock() {
                        *f = Some((Instant::now(), failed.load(Ordering::Relaxed)));
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    // Let the primary take traffic for a moment, then tell weir about v2, as CI would.
    tokio::time::sleep(interval.min(Duration::from_secs(2))).await;
    let started = Instant::now();
    let revision = "v2";
    controller
        .start_rollout("podinfo", revision, &[v2.addr.to_string()])
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut last = (snapshot(&proxy, "primary"), snapshot(&proxy, "canary"));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut outcome = None;
    while !load.is_finished() {
        tokio::select! {
            n = notices.recv() => match n {
                Ok(Notice::Event(e)) => {
                    println!("[{:>3}s] {}: {}", started.elapsed().as_secs(), crate::ctl::event_label(&e), e.message);
                }
                Ok(Notice::Status(s)) if outcome.is_none() && (s.phase == "Succeeded" || s.phase == "Failed") => {
                    outcome = Some((s.phase.clone(), failed.load(Ordering::Relaxed), Instant::now()));
                }
                _ => {}
            },
            _ = tick.tick() => {
                let now = (snapshot(&proxy, "primary"), snapshot(&proxy, "canary"));
                if let (Some(p0), Some(c0), Some(p1), Some(c1)) = (&last.0, &last.1, &now.0, &now.1) {
                    let status = controller.status("podinfo").ok();
                    let (phase, weight) = status.map(|s| (s.phase, s.canary_weight)).unwrap_or_default();
                    println!("{}", view_line(started.elapsed(), weight, &phase, &p1.since(p0), &c1.since(c0)));
                }
                last = now;
                // Keep the load going two seconds past the end, then stop.
                if outcome.as_ref().is_some_and(|o| o.2.elapsed() >= Duration::from_secs(2)) {
                    let _ = load_stop_tx.send(true);
                }
            }
        }
    }
    let total_failed = load.await.unwrap_or(0);
    let first = first_canary.lock().ok().and_then(|f| *f);
    match outcome {
        Some((phase, failed_then, at)) => {
            let (since_first, before_first) = match first {
                Some((t, f)) => (at.saturating_duration_since(t).as_secs_f64(), f),
                None => (0.0, 0),
            };
            if phase == "Succeeded" {
                println!(
                    "weir demo: v2 promoted in {:.1}s; {total_failed} user requests failed",
                    at.duration_since(started).as_secs_f64()
                );
            } else {
                println!(
                    "weir demo: v2 rolled back {since_first:.2}s after its first request; {} user requests failed before the rollback ({total_failed} in all)",
                    failed_then.saturating_sub(before_first)
                );
            }
            println!(
                "weir demo: result phase={phase} failed_before_rollback={} seconds_to_decision={since_first:.3} failed_total={total_failed}",
                failed_then.saturating_sub(before_first)
            );
        }
        None => println!("weir demo: the load loop ended before the rollout finished; {total_failed} user requests failed"),
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = admin_task.await;
    Ok(ExitCode::SUCCESS)
}

fn snapshot(proxy: &Proxy, version: &str) -> Option<weir_proxy::VersionSnapshot> {
    proxy.snapshot("podinfo", version)
}

fn view_line(
    elapsed: Duration,
    weight: u32,
    phase: &str,
    primary: &weir_proxy::Window,
    canary: &weir_proxy::Window,
) -> String {
    let total = (primary.requests() + canary.requests()).max(1) as f64;
    let pct = |w: &weir_proxy::Window| 100.0 * w.requests() as f64 / total;
    let bar = crate::ctl::weight_bar(weight, 20);
    let fmt = |w: &weir_proxy::Window| {
        format!(
            "{:>5} req  ok {:>7}  p99 {:>8}",
            w.requests(),
            w.success_rate()
                .map(|r| format!("{r:.2}%"))
                .unwrap_or_else(|| "-".into()),
            w.quantile_ms(0.99)
                .map(|p| format!("{p:.2}ms"))
                .unwrap_or_else(|| "-".into())
        )
    };
    format!(
        "[{:>3}s] {phase:<16} weight [{bar}] {weight:>3}% (seen {:>5.1}%) | primary {} | canary {}",
        elapsed.as_secs(),
        pct(canary),
        fmt(primary),
        fmt(canary)
    )
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
