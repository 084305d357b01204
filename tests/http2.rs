//! HTTP/2 upstreams: streams multiplexed on connections each worker keeps, another
//! connection once one carries 128 streams, one dial at a time, and a failed dial failing
//! the requests that waited on it.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

/// A service whose only version speaks h2c to `endpoint`.
fn h2_service(endpoint: &str) -> String {
    format!(
        r#"services:
  - name: grpcish
    hosts: [grpcish]
    versions:
      v1: {{ endpoints: ["{endpoint}"], http2: true }}
"#
    )
}

/// `n` HTTP/1.1 requests at once (each on its own client connection, so both workers
/// take some), returning every status and body.
async fn concurrent(weir: &Weir, n: usize) -> Vec<Got> {
    let client = http1_client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        let url = weir.url(&format!("/r{i}"));
        tasks.spawn(async move {
            let req = http::Request::get(url)
                .header("host", "grpcish")
                .body(full(bytes::Bytes::new()))
                .expect("request");
            send(&client, req).await
        });
    }
    let mut out = Vec::new();
    while let Some(got) = tasks.join_next().await {
        out.push(got.expect("request task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_http2_endpoint_gets_more_connections_but_a_burst_does_not_dial_per_request() {
    let upstream = Upstream::start_with("h2", Behaviour::Delay(5000)).await;
    let weir = Weir::start(&h2_service(&upstream.endpoint()));
    // 300 streams in flight at once: more than one connection carries (128), however the
    // two workers share them out.
    let got = concurrent(&weir, 300).await;
    assert_eq!(got.len(), 300);
    for g in &got {
        assert_eq!(g.status, 200, "{}", g.text());
        assert_eq!(g.text(), "h2 slow\n");
    }
    assert_eq!(upstream.last_seen().version, http::Version::HTTP_2);
    assert_eq!(upstream.count(), 300);
    let connections = upstream.connections.load(Ordering::SeqCst);
    // However the workers share 300 streams out, one of them carries more than 128 and
    // opens a second connection (3 at least in all); at most what 300 streams need in
    // each worker (3), not one per request.
    assert!(
        (3..=6).contains(&connections),
        "300 concurrent streams opened {connections} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_http2_dial_fails_the_requests_waiting_on_it_and_counts_each() {
    let dead = closed_port();
    let weir = Weir::start(&h2_service(&format!("127.0.0.1:{dead}")));
    let got = tokio::time::timeout(Duration::from_secs(60), concurrent(&weir, 40))
        .await
        .expect("every request answered");
    for g in &got {
        assert_eq!(g.status, 502, "{}", g.text());
        assert_eq!(g.headers["x-weir-error"], "connect_refused");
        assert!(
            g.text().contains("upstream connection refused"),
            "{}",
            g.text()
        );
    }
    let labels = [("version", "v1"), ("reason", "connect_refused")];
    assert_eq!(
        weir.metric("weir_upstream_errors_total", &labels).await,
        40.0
    );
}
