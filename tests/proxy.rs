//! End to end: the real `weir` binary between real clients and real upstreams on loopback.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_cookie_and_weight_rules_route_to_the_right_version() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(
        &primary,
        &canary,
        r#"      - match: { headers: { x-canary: { exact: always } } }
        to: canary
      - match: { cookies: { beta: { present: true } } }
        to: canary
      - match: { path: { prefix: /v2/ }, method: POST }
        to: canary
      - split: { primary: 100, canary: 0 }"#,
    ));
    let served = |g: &Got| g.headers["x-served-by"].to_str().unwrap_or("").to_string();
    assert_eq!(served(&get(&weir.url("/"), &[]).await), "primary");
    assert_eq!(
        served(&get(&weir.url("/"), &[("x-canary", "always")]).await),
        "canary"
    );
    assert_eq!(
        served(&get(&weir.url("/"), &[("x-canary", "sometimes")]).await),
        "primary"
    );
    assert_eq!(
        served(&get(&weir.url("/"), &[("cookie", "a=1; beta=yes")]).await),
        "canary"
    );
    let post = Request::post(weir.url("/v2/items"))
        .body(full("x"))
        .expect("request");
    assert_eq!(served(&send(&http1_client(), post).await), "canary");
    assert_eq!(served(&get(&weir.url("/v2/items"), &[]).await), "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realised_split_over_100k_requests_is_within_binomial_noise() {
    let mut ups = Vec::new();
    let mut yaml = String::from("services:\n");
    for (i, (canary_w, primary_w)) in [(1u32, 999u32), (5, 95), (50, 50)].iter().enumerate() {
        let p = Upstream::start("primary").await;
        let c = Upstream::start("canary").await;
        yaml.push_str(&format!(
            "  - name: s{i}\n    hosts: [s{i}]\n    versions:\n      primary: {{ endpoints: [\"{}\"] }}\n      canary: {{ endpoints: [\"{}\"] }}\n    routes: [ {{ split: {{ primary: {primary_w}, canary: {canary_w} }} }} ]\n",
            p.endpoint(),
            c.endpoint()
        ));
        ups.push((p, c, *canary_w, *primary_w));
    }
    let weir = Weir::start(&yaml);
    let client = h2_client_to(weir.proxy);
    const N: usize = 100_000;
    for (i, (_, canary, cw, pw)) in ups.iter().enumerate() {
        let host = format!("s{i}");
        let url = format!("http://{host}/");
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..64 {
            let (client, url) = (client.clone(), url.clone());
            tasks.spawn(async move {
                let mut n = worker;
                while n < N {
                    let req = Request::get(&url)
                        .body(full(Bytes::new()))
                        .expect("request");
                    let resp = client.request(req).await.expect("response");
                    assert_eq!(resp.status(), 200);
                    http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .expect("body");
                    n += 64;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("worker");
        }
        let p = f64::from(*cw) / f64::from(cw + pw);
        let mean = N as f64 * p;
        let sd = (N as f64 * p * (1.0 - p)).sqrt();
        let hits = canary.count() as f64;
        assert!(
            (hits - mean).abs() <= 5.0 * sd,
            "canary weight {cw}/{}: {hits} of {N} requests, expected {mean} ± {:.0}",
            cw + pw,
            5.0 * sd
        );
        let counted = weir
            .metric(
                "weir_requests_total",
                &[("service", host.as_str()), ("version", "canary")],
            )
            .await;
        assert_eq!(
            counted, hits,
            "weir's own count matches what the canary saw"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_keep_host_and_lose_hop_by_hop_headers() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(&primary, &canary, "      - to: primary"));
    let req = Request::get(weir.url("/headers?x=1"))
        .header("host", "podinfo.test:9898")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-custom", "kept")
        .body(full(Bytes::new()))
        .expect("request");
    let got = send(&http1_client(), req).await;
    assert_eq!(got.status, 200);
    let seen = primary.last_seen();
    assert_eq!(seen.path, "/headers");
    assert_eq!(seen.headers["host"], "podinfo.test:9898");
    for gone in ["x-drop-me", "keep-alive", "proxy-connection"] {
        assert!(!seen.headers.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's x-forwarded-for is replaced"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    let id = seen.headers["x-request-id"].to_str().expect("ascii");
    assert_eq!(id.len(), 36, "generated request id {id}");
    let req = Request::get(weir.url("/"))
        .header("x-request-id", "given-id")
        .body(full(Bytes::new()))
        .expect("request");
    send(&http1_client(), req).await;
    assert_eq!(primary.last_seen().headers["x-request-id"], "given-id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_and_http2_upstreams_get_trailers_through() {
    let primary = Upstream::start("primary").await;
    let h2 = Upstream::start("h2").await;
    let weir = Weir::start(&format!(
        r#"services:
  - name: a
    hosts: [a]
    versions:
      v1: {{ endpoints: ["{}"] }}
  - name: b
    hosts: [b]
    versions:
      v1: {{ endpoints: ["{}"], http2: true }}
"#,
        primary.endpoint(),
        h2.endpoint()
    ));
    let client = h2_client_to(weir.proxy);
    // h2c client -> HTTP/1.1 upstream: `:authority` becomes Host.
    let req = Request::get("http://a/hello")
        .body(full(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(primary.last_seen().version, http::Version::HTTP_11);
    assert_eq!(primary.last_seen().headers["host"], "a");
    // h2c client -> h2c upstream with trailers.
    let req = Request::get("http://b/trailers")
        .header("te", "trailers")
        .body(full(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let collected = http_body_util::BodyExt::collect(body).await.expect("body");
    assert_eq!(parts.status, 200);
    assert_eq!(h2.last_seen().version, http::Version::HTTP_2);
    assert_eq!(
        collected.trailers().map(|t| t["x-checksum"].clone()),
        Some("abc123".parse().expect("value"))
    );
    assert_eq!(collected.to_bytes(), "with trailers\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_edge_cases_pass_transparently() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(&primary, &canary, "      - to: primary"));
    let addr = weir.proxy;
    let out = raw(addr, b"GET /one HTTP/1.0\r\n\r\n").await.text;
    assert!(
        out.starts_with("HTTP/1.0 200"),
        "HTTP/1.0 without Host: {out}"
    );
    assert!(out.ends_with("primary"), "{out}");
    let out = raw(addr, b"GET /two HTTP/1.0\r\nHost: podinfo\r\n\r\n")
        .await
        .text;
    assert!(out.starts_with("HTTP/1.0 200"), "HTTP/1.0 with Host: {out}");
    assert_eq!(primary.last_seen().headers["host"], "podinfo");
    let out = raw(addr, b"POST /upload HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await.text;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("11"),
        "chunked upload: {out}"
    );
    let out = raw(
        addr,
        b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .text;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\n0"),
        "content-length 0: {out}"
    );
    assert_eq!(primary.last_seen().headers["content-length"], "0");
    let head = Request::head(weir.url("/download/1000"))
        .body(full(Bytes::new()))
        .expect("request");
    let got = send(&http1_client(), head).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-length"], "1000");
    assert!(got.body.is_empty());
    let got = get(&weir.url("/status/204"), &[]).await;
    assert_eq!(got.status, 204);
    assert!(got.body.is_empty());
    let got = get(&weir.url("/status/304"), &[]).await;
    assert_eq!(got.status, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_upload_and_download_stream_with_flat_memory() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(&primary, &canary, "      - to: primary"));
    const SIZE: usize = 100 * 1024 * 1024;
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = (0..SIZE / chunk.len())
        .map(move |_| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone())));
    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
        futures_util::stream::iter(chunks),
    ));
    let req = Request::post(weir.url("/upload"))
        .body(body)
        .expect("request");
    let got = send(&http1_client(), req).await;
    assert_eq!(got.text(), SIZE.to_string());
    let resp = http1_client()
        .request(
            Request::get(weir.url(&format!("/download/{SIZE}")))
                .body(full(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("response");
    let mut body = resp.into_body();
    let mut n = 0usize;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Some(d) = frame.expect("frame").data_ref() {
            n += d.len();
        }
    }
    assert_eq!(n, SIZE);
    let peak = weir.peak_rss_kib();
    assert!(
        peak < 48 * 1024,
        "peak RSS {peak} KiB for 100 MiB each way: bodies were buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_502_504_and_are_counted_against_the_version() {
    let primary = Upstream::start("primary").await;
    let dead = closed_port();
    let weir = Weir::start(&format!(
        r#"services:
  - name: podinfo
    namespace: test
    port: 9898
    hosts: [podinfo]
    versions:
      primary: {{ endpoints: ["{}"] }}
      canary: {{ endpoints: ["127.0.0.1:{dead}"] }}
    routes:
      - match: {{ headers: {{ x-canary: {{ exact: always }} }} }}
        to: canary
      - match: {{ path: {{ prefix: /slow }} }}
        to: primary
        timeout: 200ms
      - to: primary
"#,
        primary.endpoint()
    ));
    let got = get(
        &weir.url("/"),
        &[("host", "podinfo"), ("x-canary", "always")],
    )
    .await;
    assert_eq!(got.status, 502);
    assert!(
        got.text().contains("service podinfo version canary"),
        "{}",
        got.text()
    );
    assert!(got.text().contains("refused"), "{}", got.text());
    let got = get(&weir.url("/slow/2000"), &[("host", "podinfo")]).await;
    assert_eq!(got.status, 504);
    assert!(
        got.text().contains("service podinfo version primary"),
        "{}",
        got.text()
    );
    let got = get(&weir.url("/reset"), &[("host", "podinfo")]).await;
    assert_eq!(got.status, 502);
    assert!(got.text().contains("reset"), "{}", got.text());
    let got = get(&weir.url("/"), &[("host", "unknown.example")]).await;
    assert_eq!(got.status, 404);
    assert!(got.text().contains("unknown.example"), "{}", got.text());

    for (version, reason) in [
        ("canary", "connect_refused"),
        ("primary", "timeout"),
        ("primary", "reset"),
    ] {
        let labels = [("version", version), ("reason", reason)];
        let n = weir.metric("weir_upstream_errors_total", &labels).await;
        assert_eq!(n, 1.0, "{labels:?}");
    }
    for (version, n) in [("canary", 1.0), ("primary", 2.0)] {
        let labels = [("version", version), ("code_class", "5xx")];
        assert_eq!(weir.metric("weir_requests_total", &labels).await, n);
    }
    let cluster = [
        ("envoy_cluster_name", "test_podinfo-canary_9898"),
        ("envoy_response_code", "502"),
    ];
    assert_eq!(
        weir.metric("envoy_cluster_upstream_rq", &cluster).await,
        1.0
    );
    assert_eq!(weir.metric("weir_unrouted_requests_total", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_pooled_and_endpoints_used_round_robin() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let weir = Weir::start(&format!(
        "services:\n  - name: s\n    versions:\n      v1: {{ endpoints: [\"{}\", \"{}\"] }}\n",
        a.endpoint(),
        b.endpoint()
    ));
    for _ in 0..100 {
        assert_eq!(get(&weir.url("/"), &[]).await.status, 200);
    }
    assert_eq!(a.count(), 50);
    assert_eq!(b.count(), 50);
    // Each worker thread (one per core) keeps its own idle connections.
    for up in [&a, &b] {
        let opened = up.connections.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=workers()).contains(&opened),
            "{opened} connections to {}: at most one pooled connection per worker",
            up.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_and_slow_clients_are_cut_off() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&format!(
        "limits: {{ maxHeaders: 20, headerReadTimeout: 500ms }}\n{}",
        two_versions(&primary, &canary, "      - to: primary")
    ));
    let addr = weir.proxy;
    let many: String = (0..40).map(|i| format!("x-h{i}: v\r\n")).collect();
    let out = raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: p\r\n{many}\r\n").as_bytes(),
    )
    .await
    .text;
    assert!(out.starts_with("HTTP/1.1 431"), "too many headers: {out}");
    // weir closes these connections itself (the reads below wait far longer).
    let out = raw(addr, b"GET / HTTP/1.1\r\nHost: p\r\nX-Slow:").await;
    assert!(out.closed, "a slowloris client is cut off: {out:?}");
    assert!(!out.text.contains("200 OK"));
    let out = raw(addr, b"").await;
    assert!(out.closed, "a silent client is cut off: {out:?}");
    assert_eq!(primary.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_upstream_closed_are_never_reused_into_a_failure() {
    // The upstream closes idle connections after 50 ms, well below weir's idle timeout
    // (a misconfiguration weir must survive): every request after a pause finds its
    // pooled connection closed and must still succeed, on a new one.
    let short = KeepAliveUpstream::start(Duration::from_millis(50), false).await;
    let closing = KeepAliveUpstream::start(Duration::from_secs(10), true).await;
    let weir = Weir::start(&format!(
        "services:\n  - name: short\n    hosts: [short.test]\n    versions:\n      v1: {{ endpoints: [\"{}\"], idleTimeout: 30s }}\n  - name: closing\n    hosts: [closing.test]\n    versions:\n      v1: {{ endpoints: [\"{}\"] }}\n",
        short.addr, closing.addr
    ));
    for i in 0..10 {
        let got = get(&weir.url("/"), &[("host", "short.test")]).await;
        assert_eq!(
            got.status, 200,
            "request {i} after the upstream closed idle"
        );
        assert_eq!(got.text(), "ok");
        wait_for(
            "the upstream's idle close",
            Duration::from_secs(30),
            || async { short.idle_closed() == i + 1 },
        )
        .await;
    }
    assert_eq!(short.accepted(), 10, "a closed connection is never reused");
    for i in 0..10 {
        let got = get(&weir.url("/"), &[("host", "closing.test")]).await;
        assert_eq!(
            got.status, 200,
            "request {i} after a `Connection: close` answer"
        );
    }
    assert_eq!(
        closing.accepted(),
        10,
        "one connection per `Connection: close` answer"
    );
    assert_eq!(
        weir.metric("weir_upstream_errors_total", &[]).await,
        0.0,
        "no upstream failure was counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_are_reused_then_closed_after_the_idle_timeout() {
    let upstream = KeepAliveUpstream::start(Duration::from_secs(60), false).await;
    let weir = Weir::start(&format!(
        "services:\n  - name: s\n    versions:\n      v1: {{ endpoints: [\"{}\"], idleTimeout: 2s }}\n",
        upstream.addr
    ));
    for _ in 0..20 {
        assert_eq!(get(&weir.url("/"), &[]).await.status, 200);
    }
    let opened = upstream.accepted();
    assert!(
        (1..=workers()).contains(&opened),
        "sequential requests share a connection per worker: {opened}"
    );
    assert_eq!(upstream.closed_by_weir(), 0);
    // Quiet for longer than the idle timeout: weir closes the connections itself.
    wait_for("the idle close", Duration::from_secs(30), || async {
        upstream.closed_by_weir() == opened
    })
    .await;
    assert_eq!(get(&weir.url("/"), &[]).await.status, 200);
    assert_eq!(
        upstream.accepted(),
        opened + 1,
        "a new connection after the idle close"
    );
}

/// A bare HTTP/1.1 upstream that answers `200 ok` and then either closes the connection
/// (`Connection: close`) or keeps it open until it has been idle for `keep_alive`.
/// Counts the connections it accepted and those weir closed first.
struct KeepAliveUpstream {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed_by_weir: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    idle_closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAliveUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeepAliveUpstream {
    async fn start(keep_alive: Duration, connection_close: bool) -> KeepAliveUpstream {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_weir = Arc::new(AtomicUsize::new(0));
        let idle_closed = Arc::new(AtomicUsize::new(0));
        let (a, c, i) = (
            accepted.clone(),
            closed_by_weir.clone(),
            idle_closed.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (c, i) = (c.clone(), i.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let read = tokio::time::timeout(keep_alive, stream.read(&mut chunk)).await;
                        match read {
                            // Idle past its keep-alive: the upstream closes.
                            Err(_) => {
                                drop(stream);
                                i.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(Ok(0)) => {
                                if buf.is_empty() {
                                    c.fetch_add(1, Ordering::SeqCst);
                                }
                                return;
                            }
                            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                            Ok(Err(_)) => return,
                        }
                        // Requests here have no body: the head ends the request.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer: &[u8] = if connection_close {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                            } else {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                            };
                            if stream.write_all(answer).await.is_err() || connection_close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        KeepAliveUpstream {
            addr,
            accepted,
            closed_by_weir,
            idle_closed,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections the upstream closed after they were idle past its keep-alive.
    fn idle_closed(&self) -> usize {
        self.idle_closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn closed_by_weir(&self) -> usize {
        self.closed_by_weir
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// weir's worker threads on this machine: one per core.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
