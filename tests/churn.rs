//! The Rust API the controller uses: a service's routing snapshot with a traffic policy
//! (weights, an A/B segment, a mirror) laid over it, replaced atomically while traffic
//! flows, with no request lost or failed.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use support::*;
use weir_proxy::{
    MirrorPolicy, Proxy, ProxyConfig, Segment, SegmentTarget, ServiceRouting, TrafficPolicy,
};

fn weights(primary: u32, canary: u32) -> TrafficPolicy {
    TrafficPolicy {
        weights: Some(
            [
                ("primary".to_string(), primary),
                ("canary".to_string(), canary),
            ]
            .into_iter()
            .collect(),
        ),
        ..TrafficPolicy::default()
    }
}

/// Requests with `x-canary: always` go to the canary, the rest by weight.
fn segmented(primary: u32, canary: u32) -> TrafficPolicy {
    TrafficPolicy {
        segment: Some(Segment {
            matches: vec![serde_json::from_value(serde_json::json!(
                { "headers": { "x-canary": { "exact": "always" } } }
            ))
            .expect("match")],
            target: SegmentTarget::Version("canary".into()),
        }),
        ..weights(primary, canary)
    }
}

/// `base` with `policy` laid over it, served as the next routing version.
fn set(proxy: &Proxy, base: &ServiceRouting, policy: TrafficPolicy) -> Result<u64, String> {
    let routing = base.with_policy(&policy).map_err(|e| e.to_string())?;
    proxy.set_service(routing).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_weights_every_10ms_under_load_fails_no_request() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\n{}",
        two_versions(
            &primary,
            &canary,
            "      - split: { primary: 90, canary: 10 }"
        )
    );
    let cfg = ProxyConfig::parse(&yaml).expect("config");
    let base = ServiceRouting::from_config(&cfg.services[0]);
    let proxy = Proxy::new(cfg).expect("proxy");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            proxy
                .serve(listener, async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await
        })
    };

    let done = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..8u32 {
        let (done, ok) = (done.clone(), ok.clone());
        let client = if i.is_multiple_of(2) {
            http1_client()
        } else {
            h2_client()
        };
        let url = format!("http://{addr}/");
        clients.spawn(async move {
            let mut failures = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let req = http::Request::get(&url)
                    .body(full(Bytes::new()))
                    .expect("request");
                match client.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(resp) => failures.push(format!("status {}", resp.status())),
                    Err(e) => failures.push(format!("error {e}")),
                }
            }
            failures
        });
    }
    // Changes go on until 300 of them have been made and 500 requests served (or a
    // generous minute), whatever the machine's speed.
    let mut changes = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (changes < 300 || ok.load(Ordering::SeqCst) < 500)
        && tokio::time::Instant::now() < deadline
    {
        let w = changes % 101;
        set(&proxy, &base, weights(100 - w, w)).expect("valid weights");
        if changes.is_multiple_of(10) {
            // A segment routed first too, as the controller sets for A/B.
            set(&proxy, &base, segmented(100 - w, w)).expect("valid segment");
        }
        changes += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    while let Some(r) = clients.join_next().await {
        failures.extend(r.expect("client task"));
    }
    assert!(changes >= 100, "only {changes} weight changes");
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let served = ok.load(Ordering::SeqCst);
    assert!(served > 500, "only {served} requests under churn");
    assert!(primary.count() > 0 && canary.count() > 0);
    assert_eq!(primary.count() + canary.count(), served);

    // An invalid change is refused naming the service and its rule, and changes nothing.
    let before = proxy.routing();
    let err = set(&proxy, &base, segmented(0, 0)).expect_err("zero sum");
    assert_eq!(
        err,
        "podinfo: rule 1: the weights sum to 0; at least one must be positive"
    );
    let clash = ServiceRouting {
        name: "nope".into(),
        ..base.clone()
    };
    let err = proxy
        .set_service(clash)
        .expect_err("host clash")
        .to_string();
    assert!(
        err.contains("nope: the default service (no hosts, or *) is already served by podinfo"),
        "{err}"
    );
    assert_eq!(proxy.routing(), before);

    // Snapshots give windows: success rate and percentiles from the difference.
    let primary_version = proxy.version("podinfo", "primary").expect("primary");
    let s0 = primary_version.snapshot(false);
    set(&proxy, &base, weights(1, 0)).expect("weights");
    for _ in 0..20 {
        let got = get(&format!("http://{addr}/"), &[]).await;
        assert_eq!(got.status, 200);
    }
    let w = primary_version.snapshot(false).since(&s0);
    assert_eq!(w.requests(), 20);
    assert_eq!(w.success_rate(), Some(100.0));
    assert!(w.quantile_ms(0.99).is_some_and(|p| p > 0.0));

    // Weights and mirroring change together: 100% to the primary, mirrored to the canary.
    let before = canary.count();
    let mirrored = TrafficPolicy {
        mirror: Some(MirrorPolicy {
            version: "canary".into(),
            percent: 100.0,
        }),
        ..weights(100, 0)
    };
    set(&proxy, &base, mirrored).expect("weights and mirror");
    for _ in 0..10 {
        assert_eq!(
            get(&format!("http://{addr}/"), &[]).await.headers["x-served-by"],
            "primary"
        );
    }
    wait_for("10 mirrors", Duration::from_secs(30), || async {
        canary.count() == before + 10
    })
    .await;
    assert_eq!(canary.last_seen().headers["x-weir-shadow"], "1");
    set(&proxy, &base, weights(100, 0)).expect("mirror off");
    for _ in 0..10 {
        get(&format!("http://{addr}/"), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(canary.count(), before + 10, "mirroring is off");

    let _ = stop_tx.send(true);
    server.await.expect("server");
}
