//! What weir believes and what it shows: ambiguous Host headers are refused, forged
//! forwarding and `x-weir-*` headers never reach an upstream (unless the peer is a trusted
//! proxy), error bodies carry no addresses, `/config` hides secrets, the metrics listener
//! serves only metrics, and a corrupt state file is set aside instead of stopping weir.

mod support;

use std::path::Path;

use support::control::{config, config_with_state, ctl, FAST};
use support::*;

fn one_service(up: &Upstream, extra: &str) -> String {
    format!(
        "{extra}\nservices:\n  - name: podinfo\n    hosts: [\"*\"]\n    versions:\n      primary: {{ endpoints: [\"{}\"] }}\n",
        up.endpoint()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_hosts_are_refused_before_any_upstream_sees_them() {
    let up = Upstream::start("primary").await;
    let weir = Weir::start(&one_service(&up, ""));
    for (what, request) in [
        (
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        ),
        (
            "a URI naming another host",
            "GET http://a/ HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let reply = raw(weir.proxy, request.as_bytes()).await;
        assert!(
            reply.text.starts_with("HTTP/1.1 400"),
            "{what}: {}",
            reply.text
        );
        assert!(
            reply.text.contains("x-weir-error: bad_host"),
            "{what}: {}",
            reply.text
        );
    }
    // HTTP/2: a `host` header that disagrees with `:authority`.
    let h2 = h2_client_to(weir.proxy);
    let req = http::Request::get("http://a/")
        .header("host", "evil.example")
        .body(full(bytes::Bytes::new()))
        .expect("request");
    let resp = h2.request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-weir-error"], "bad_host");
    assert_eq!(up.count(), 0, "no upstream saw an ambiguous request");
    assert_eq!(
        weir.metric("weir_rejected_requests_total", &[("reason", "host")])
            .await,
        3.0
    );
    let ok = raw(
        weir.proxy,
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.text.starts_with("HTTP/1.1 200"), "{}", ok.text);
    let hosts: Vec<_> = up
        .last_seen()
        .headers
        .get_all("host")
        .iter()
        .cloned()
        .collect();
    assert_eq!(hosts, ["a"], "exactly one Host, the one routed on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_are_replaced_unless_the_peer_is_trusted() {
    let forged = [
        ("x-forwarded-for", "10.9.9.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=10.9.9.9"),
        ("x-weir-shadow", "1"),
        ("x-weir-error", "tls"),
    ];
    let up = Upstream::start("primary").await;
    let weir = Weir::start(&one_service(&up, ""));
    assert_eq!(get(&weir.url("/"), &forged).await.status, 200);
    let seen = up.last_seen().headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    for gone in [
        "x-forwarded-host",
        "forwarded",
        "x-weir-shadow",
        "x-weir-error",
    ] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }

    let behind = Upstream::start("primary").await;
    let trusting = Weir::start(&one_service(&behind, "trustedProxies: [\"127.0.0.0/8\"]"));
    assert_eq!(get(&trusting.url("/"), &forged).await.status, 200);
    let seen = behind.last_seen().headers;
    assert_eq!(seen["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "evil.example");
    assert!(
        !seen.contains_key("x-weir-shadow"),
        "x-weir-* is weir's alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_name_the_version_and_keep_addresses_in_the_log() {
    let port = closed_port();
    let weir = Weir::start(&format!(
        "services:\n  - name: podinfo\n    hosts: [\"*\"]\n    versions:\n      primary: {{ endpoints: [\"127.0.0.1:{port}\"] }}\n"
    ));
    let got = get(&weir.url("/"), &[]).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.headers["x-weir-error"], "connect_refused");
    let body = got.text();
    assert!(body.contains("service podinfo version primary"), "{body}");
    assert!(
        !body.contains(&port.to_string()),
        "the address leaked: {body}"
    );
    weir.wait_log(&format!("127.0.0.1:{port}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_hides_secrets_and_the_metrics_listener_serves_only_metrics() {
    let primary = Upstream::start("primary").await;
    let analysis = format!(
        "{FAST}
      match: [ {{ headers: {{ x-canary: {{ exact: insider-7f3a9c }} }} }} ]
      webhooks:
        - name: smoke
          type: pre-rollout
          url: http://hooks:s3cret-pass@127.0.0.1:1/run?token=tok-9d8e7f6a
          metadata: {{ cmd: \"curl -H 'Authorization: Bearer meta-4c4c4c4c' x\" }}
        - name: local
          type: rollout
          exec: [\"deploy-check\", \"--password\", \"argv-5e5e5e5e\"]
      alerts:
        - name: on-call
          severity: error
          providerRef: {{ name: on-call }}"
    );
    let extra = "metrics: 127.0.0.1:0
alertProviders:
  - { name: on-call, type: slack, address: \"https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX\", channel: alerts }";
    let weir = Weir::start(&config(&primary, &analysis, extra));
    let shown = get_text(&weir.admin_url("/config")).await;
    for secret in [
        "s3cret-pass",
        "tok-9d8e7f6a",
        "meta-4c4c4c4c",
        "argv-5e5e5e5e",
        "--password",
        "XXXXXXXXXXXXXXXXXXXXXXXX",
        "insider-7f3a9c",
    ] {
        assert!(!shown.contains(secret), "/config shows {secret}: {shown}");
    }
    for kept in [
        "hooks.slack.com",
        "deploy-check",
        "<redacted>",
        "127.0.0.1:1/run",
    ] {
        assert!(shown.contains(kept), "/config lost {kept}: {shown}");
    }

    let metrics = weir.metrics.expect("a metrics listener");
    let scraped = get(&format!("http://{metrics}/metrics"), &[]).await;
    assert_eq!(scraped.status, 200);
    assert!(scraped.text().contains("weir_requests_total"));
    assert_eq!(
        get(&format!("http://{metrics}/ready"), &[]).await.status,
        200
    );
    for hidden in ["/config", "/reload"] {
        let got = get(&format!("http://{metrics}{hidden}"), &[]).await;
        assert_eq!(got.status, 404, "{hidden} on the metrics listener");
    }
}

fn set_aside(state: &Path) -> Vec<String> {
    let dir = state.parent().expect("dir");
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_without_a_copy_serves_the_primary_until_reset() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let (path, state) = config_with_state("state-lost", &primary, FAST);
    std::fs::write(&state, b"{\"version\": 1, \"services\": {\"podi").expect("corrupt");
    let weir = Weir::start_file(path);
    assert_eq!(get(&weir.url("/"), &[]).await.status, 200, "still serving");
    assert_eq!(set_aside(&state).len(), 1, "the corrupt file is kept aside");
    let (code, out, err) = ctl(&weir, &["status", "podinfo"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("StateLost"), "{out}");
    assert_eq!(
        weir.metric(
            "weir_rollout_state_lost",
            &[("name", "podinfo"), ("namespace", "test")]
        )
        .await,
        1.0
    );
    assert_eq!(weir.metric("weir_state_file_corrupt_total", &[]).await, 1.0);
    let canary_ep = canary.endpoint();
    let start = support::control::start_args(&canary_ep);
    let (code, _, err) = ctl(&weir, &start);
    assert_eq!(code, 1);
    assert!(err.contains("weir ctl reset podinfo"), "{err}");
    assert_eq!(canary.count(), 0);

    let (code, _, err) = ctl(&weir, &["reset", "podinfo"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(&weir, &start);
    assert_eq!(code, 0, "{err}");
    let mut c = support::control::client(&weir).await;
    support::control::wait_phase(&mut c, "Progressing", std::time::Duration::from_secs(30)).await;
    assert_eq!(
        weir.metric(
            "weir_rollout_state_lost",
            &[("name", "podinfo"), ("namespace", "test")]
        )
        .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_resumes_from_its_last_good_copy() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let (path, state) = config_with_state("state-backup", &primary, FAST);
    {
        let weir = Weir::start_file(path.clone());
        let mut c = support::control::client(&weir).await;
        support::control::wait_phase(&mut c, "Initialized", std::time::Duration::from_secs(30))
            .await;
        let canary_ep = canary.endpoint();
        let start = support::control::start_args(&canary_ep);
        let (code, _, err) = ctl(&weir, &start);
        assert_eq!(code, 0, "{err}");
        support::control::wait_phase(&mut c, "Progressing", std::time::Duration::from_secs(30))
            .await;
        let (code, _, err) = ctl(&weir, &["pause", "podinfo"]);
        assert_eq!(code, 0, "{err}");
    }
    assert!(state.with_extension("json.bak").exists(), "a copy is kept");
    std::fs::write(&state, b"\x00\x00 not json").expect("corrupt");
    let weir = Weir::start_file(path);
    let (code, out, err) = ctl(&weir, &["status", "podinfo"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("StateLost"), "{out}");
    assert!(out.contains("Progressing"), "{out}");
    assert_eq!(set_aside(&state).len(), 1);
    assert_eq!(weir.metric("weir_state_file_corrupt_total", &[]).await, 1.0);
    weir.wait_log("resuming from its last good copy");
}
