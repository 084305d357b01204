//! `weir demo`: two built-in upstream versions on loopback, the proxy at 90/10 in front, a
//! built-in load loop, and a live view of the split and each version's success rate and p99.

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
use weir_proxy::{Config, Proxy};

/// Options of `weir demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long the load loop runs, in seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Requests per second sent through the proxy.
    #[arg(long, default_value_t = 400)]
    pub rate: u64,
    /// Make v2 (the canary) answer 500 to a third of its requests.
    #[arg(long)]
    pub faulty: bool,
}

/// A built-in upstream version: answers `hello from <name>` after a short delay.
struct Upstream {
    addr: SocketAddr,
}

async fn start_upstream(
    name: &'static str,
    faulty: bool,
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
                            let (status, text) = if faulty && n.is_multiple_of(3) {
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

/// Runs the demo.
pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let v1 = start_upstream("v1", false, stop_rx.clone()).await?;
    let v2 = start_upstream("v2", args.faulty, stop_rx.clone()).await?;
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
      primary: {{ endpoints: ["{}"], revision: v1 }}
      canary: {{ endpoints: ["{}"], revision: v2 }}
    routes:
      - match: {{ headers: {{ x-canary: {{ exact: always }} }} }}
        to: canary
      - split: {{ primary: 90, canary: 10 }}
"#,
        v1.addr, v2.addr
    );
    let cfg = Config::parse(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = Proxy::new(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = listener.local_addr()?;
    println!(
        "weir demo: v1 (primary) on {}, v2 (canary) on {}",
        v1.addr, v2.addr
    );
    println!(
        "weir demo: proxy on http://{proxy_addr}, metrics on http://{}/metrics",
        admin.local_addr()?
    );
    println!(
        "weir demo: sending {} req/s for {}s at a 90/10 split{}",
        args.rate,
        args.seconds,
        if args.faulty {
            "; v2 fails a third of its requests"
        } else {
            ""
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

    let load = tokio::spawn(load_loop(
        proxy_addr,
        args.rate,
        Duration::from_secs(args.seconds),
    ));
    let started = Instant::now();
    let first = (snapshot(&proxy, "primary"), snapshot(&proxy, "canary"));
    let mut last = first.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !load.is_finished() {
        tick.tick().await;
        let now = (snapshot(&proxy, "primary"), snapshot(&proxy, "canary"));
        if let (Some(p0), Some(c0), Some(p1), Some(c1)) = (&last.0, &last.1, &now.0, &now.1) {
            println!(
                "{}",
                view_line(started.elapsed(), &p1.since(p0), &c1.since(c0))
            );
        }
        last = now;
    }
    let failed_requests = load.await.unwrap_or(0);
    let end = (snapshot(&proxy, "primary"), snapshot(&proxy, "canary"));
    if let (Some(p0), Some(c0), Some(p1), Some(c1)) = (&first.0, &first.1, &end.0, &end.1) {
        println!(
            "total: {}",
            view_line(started.elapsed(), &p1.since(p0), &c1.since(c0))
        );
    }
    println!("weir demo: {failed_requests} user requests failed");
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
    primary: &weir_proxy::Window,
    canary: &weir_proxy::Window,
) -> String {
    let total = (primary.requests() + canary.requests()).max(1) as f64;
    let pct = |w: &weir_proxy::Window| 100.0 * w.requests() as f64 / total;
    let bar_len = 20usize;
    let filled = ((pct(canary) / 100.0) * bar_len as f64).round() as usize;
    let bar: String = "#".repeat(filled.min(bar_len)) + &".".repeat(bar_len - filled.min(bar_len));
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
        "[{:>3}s] canary [{bar}] {:>5.1}% | primary {} | canary {}",
        elapsed.as_secs(),
        pct(canary),
        fmt(primary),
        fmt(canary)
    )
}

/// Sends `rate` requests per second for `duration`; returns how many failed (non-2xx or
/// transport error). Bounded in time and count.
async fn load_loop(addr: SocketAddr, rate: u64, duration: Duration) -> u64 {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let failed = Arc::new(AtomicU64::new(0));
    let total = rate.saturating_mul(duration.as_secs()).max(1);
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let uri: hyper::Uri = match format!("http://{addr}/").parse() {
        Ok(u) => u,
        Err(_) => return total,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
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
