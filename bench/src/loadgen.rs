//! An open-loop, fixed-rate HTTP/1.1 load generator that corrects for coordinated
//! omission: request i is due at start + i/rate, and its latency is charged from that
//! intended time, so a stalled server shows up in the percentiles instead of slowing the
//! generator down. Prints one JSON line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Open-loop fixed-rate HTTP/1.1 load generator (coordinated-omission corrected)")]
struct Args {
    /// Target URL (http://127.0.0.1:PORT/path).
    #[arg(long)]
    url: hyper::Uri,
    /// Requests per second.
    #[arg(long, default_value_t = 4000)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Host header to send (defaults to the URL's authority).
    #[arg(long)]
    host: Option<String>,
    /// Spread the connections over N hosts: connection i sends `HOST{i % N}` (0: one host).
    #[arg(long, default_value_t = 0)]
    host_spread: usize,
}

struct Shared {
    next: AtomicU64,
    total: u64,
    start: Instant,
    gap: Duration,
    deadline: Instant,
    ok: AtomicU64,
    errors: AtomicU64,
    histogram: Mutex<Histogram<u64>>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let authority = args
        .url
        .authority()
        .context("the URL needs host:port")?
        .clone();
    let host = args.host.clone().unwrap_or_else(|| authority.to_string());
    let path = args
        .url
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let total = args.rate.max(1) * args.duration.max(1);
    let start = Instant::now() + Duration::from_millis(200);
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        total,
        start,
        gap: Duration::from_secs_f64(1.0 / args.rate.max(1) as f64),
        deadline: start + Duration::from_secs(args.duration + 5),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        histogram: Mutex::new(
            Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
        ),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections.max(1) {
        let shared = shared.clone();
        let host = match args.host_spread {
            0 => host.clone(),
            n => format!("{host}{}", i % n),
        };
        let (addr, path) = (authority.to_string(), path.clone());
        tasks.spawn(async move { connection(shared, addr, host, path).await });
    }
    while tasks.join_next().await.is_some() {}
    let sent = shared.next.load(Ordering::SeqCst).min(total);
    let ok = shared.ok.load(Ordering::SeqCst);
    let errors = shared.errors.load(Ordering::SeqCst)
        + total.saturating_sub(ok + shared.errors.load(Ordering::SeqCst));
    let h = shared
        .histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{{\"rate\":{},\"sent\":{sent},\"ok\":{ok},\"errors\":{errors},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        args.rate,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    Ok(())
}

/// One keep-alive connection: takes the next due request, waits for its time, sends it.
async fn connection(shared: Arc<Shared>, addr: String, host: String, path: String) {
    let mut sender = None;
    loop {
        let i = shared.next.fetch_add(1, Ordering::SeqCst);
        if i >= shared.total {
            return;
        }
        let due = shared.start + shared.gap.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        if Instant::now() > shared.deadline {
            shared.errors.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        if sender.is_none() {
            sender = connect(&addr).await;
        }
        let Some(s) = sender.as_mut() else {
            shared.errors.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let req = match Request::get(path.as_str())
            .header("host", host.as_str())
            .body(Empty::<Bytes>::new())
        {
            Ok(r) => r,
            Err(_) => return,
        };
        let left = shared.deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout(left, async {
            let resp = s.send_request(req).await?;
            let ok = resp.status().is_success();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(ok)
        })
        .await;
        match result {
            Ok(Ok(true)) => {
                let micros = u64::try_from(due.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                if let Ok(mut h) = shared.histogram.lock() {
                    h.saturating_record(micros);
                }
                shared.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok(false)) => {
                shared.errors.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                shared.errors.fetch_add(1, Ordering::SeqCst);
                sender = None;
            }
        }
    }
}

async fn connect(addr: &str) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}
