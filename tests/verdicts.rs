//! Verdicts that count what users got: a canary whose bodies break off is rolled back, a
//! hostile client cannot fail a healthy canary, a service may declare only its primary
//! until a rollout brings the canary, and a status-code rate is checked in-process.

mod support;

use std::time::Duration;

use support::control::*;
use support::*;
use weir_protos::control as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_bodies_break_off_is_rolled_back_not_promoted() {
    let v1 = Upstream::start("v1").await;
    let broken = Upstream::start_with("broken", Behaviour::Truncate).await;
    let weir = Weir::start(&config(&v1, FAST, ""));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(20)).await;
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(120));
    start(&mut c, "2", &broken).await;
    let failed = wait_phase(&mut c, "Failed", Duration::from_secs(60)).await;
    assert_eq!(failed.canary_weight, 0);
    weir.wait_log("Rolling back podinfo.test");
    assert!(
        weir.metric(
            "weir_upstream_errors_total",
            &[("version", "canary"), ("reason", "truncated")]
        )
        .await
            > 0.0
    );
    assert_eq!(
        weir.metric(
            "weir_requests_total",
            &[("version", "canary"), ("code_class", "2xx")]
        )
        .await,
        0.0,
        "a broken body is never a success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_from_a_hostile_client_cannot_fail_a_healthy_canary() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let weir = Weir::start(&config(&v1, FAST, ""));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(20)).await;
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(120));
    // Eight malformed uploads a second, split between the versions like everyone else.
    let addr = weir.proxy;
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = answered.clone();
    let hostile = tokio::spawn(async move {
        for i in 0..2000u32 {
            let size = ["-1", "fffffffffffffffffffff", "0x3a"][i as usize % 3];
            let req = format!(
                "POST / HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n{size}\r\nx\r\n"
            );
            let out = raw(addr, req.as_bytes()).await;
            let line = out.text.lines().next().unwrap_or("").to_string();
            seen.lock().expect("lock").push(line);
            tokio::time::sleep(Duration::from_millis(125)).await;
        }
    });
    start(&mut c, "2", &v2).await;
    let done = wait_phase(&mut c, "Succeeded", Duration::from_secs(90)).await;
    assert_eq!(done.primary_revision, "2");
    hostile.abort();
    let lines = answered.lock().expect("lock").clone();
    assert!(!lines.is_empty());
    assert!(
        lines.iter().all(|l| l.starts_with("HTTP/1.1 400")),
        "every malformed upload got a 400: {lines:?}"
    );
    let malformed = weir
        .metric("weir_client_errors_total", &[("reason", "malformed")])
        .await;
    assert!(malformed > 0.0, "the hostile client was heard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_only_service_gets_its_canary_from_the_rollout() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let weir = Weir::start(&format!(
        r#"control: 127.0.0.1:0
services:
  - name: podinfo
    namespace: test
    hosts: ["*"]
    port: 9898
    versions:
      primary: {{ endpoints: ["{}"], revision: "1" }}
    analysis:
{FAST}
"#,
        v1.endpoint()
    ));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(20)).await;
    assert!(served_by(&weir, 20, &[]).await.iter().all(|s| s == "v1"));
    let refused = c
        .start_rollout(pb::StartRolloutRequest {
            service: "podinfo".into(),
            revision: "2".into(),
            canary_endpoints: vec![],
        })
        .await
        .expect_err("no canary endpoints");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("--canary-endpoint"),
        "{}",
        refused.message()
    );
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(120));
    start(&mut c, "2", &v2).await;
    let done = wait_phase(&mut c, "Succeeded", Duration::from_secs(90)).await;
    assert_eq!(done.primary_revision, "2");
    assert!(served_by(&weir, 20, &[]).await.iter().all(|s| s == "v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_404s_fails_the_request_status_rate_check() {
    let v1 = Upstream::start("v1").await;
    let missing = Upstream::start_with("missing", Behaviour::Status(404)).await;
    let analysis = checks_only(
        10,
        10,
        "        - name: request-status-rate\n          statusCodes: [\"404\"]\n          thresholdRange: { max: 5 }\n          interval: 2s",
    );
    let weir = Weir::start(&config(&v1, &analysis, ""));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(20)).await;
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(120));
    start(&mut c, "2", &missing).await;
    let failed = wait_phase(&mut c, "Failed", Duration::from_secs(60)).await;
    assert_eq!(failed.canary_weight, 0);
    weir.wait_log("Halt podinfo.test advancement request-status-rate 100.00% > 5%");
}
