//! Envoy as the data plane: `weir control` serves real Envoy 1.40 nodes (bootstrapped by
//! `weir bootstrap envoy`) over ADS and judges canaries from the stats they push. A healthy
//! canary is promoted through two Envoys (each step held at a manual gate is in both config
//! dumps, every weight the controller set in order, no request fails, none is NR/NC, weir's totals equal Envoy's own); a dead canary is rolled
//! back by the fast-fail guard and a 5%-error canary by the analysis; A/B rules and
//! mirroring reach the right upstreams; a resource Envoy refuses is NACKed while the node
//! keeps serving; the controller killed mid-rollout costs no request and resumes.

mod support;

use std::time::Duration;

use support::control::start_args;
use support::envoy::{Controller, Envoy};
use support::*;

/// podinfo (every host) with its primary and canary at revision 1, `routes` and
/// `analysis` (each indented as in a service).
fn podinfo(primary: &Upstream, canary: &Upstream, routes: &str, analysis: &str) -> String {
    let tail = format!("    routes:\n{routes}\n    analysis:\n{analysis}\n");
    podinfo_yaml(
        &primary.endpoint(),
        &canary.endpoint(),
        ", revision: \"1\"",
        &tail,
    )
}

const SPLIT: &str = "      - split: { primary: 100, canary: 0 }";

fn analysis(step: u32, guard: bool) -> String {
    let guard = if guard {
        ""
    } else {
        "      fastFail: { disabled: true }\n"
    };
    format!(
        "      interval: 1s\n      threshold: 2\n      maxWeight: 60\n      stepWeight: {step}\n      minRequests: 10\n{guard}      metrics:\n        - name: request-success-rate\n          thresholdRange: {{ min: 99 }}\n          interval: 2s"
    )
}

const PRIMARY: &str = "cluster.test_podinfo-primary_9898.upstream_rq_total";
const CANARY: &str = "cluster.test_podinfo-canary_9898.upstream_rq_total";

/// Waits (generously) until `e`'s podinfo route splits as `want` (by version), and
/// fails with what it has otherwise.
async fn expect_weights(e: &Envoy, want: &[(&str, u64)]) {
    let want: Vec<(String, u64)> = want
        .iter()
        .map(|(v, w)| (format!("test_podinfo-{v}_9898"), *w))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = e.weights("podinfo").await;
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} routes {now:?}, not {want:?}",
            e.node
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests to `url` with `headers`: who served them.
async fn served(url: &str, headers: &[(&str, &str)], n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let got = get(url, headers).await;
        assert_eq!(got.status, 200, "{}", got.text());
        out.push(
            got.headers["x-served-by"]
                .to_str()
                .unwrap_or("?")
                .to_string(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_through_two_envoys_step_by_step() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let routes = "      - match: { headers: { x-canary: { exact: always } } }\n        to: canary\n      - match: { cookies: { beta: { present: true } } }\n        to: canary\n      - split: { primary: 100, canary: 0 }";
    // Manual gates hold each step (and the promotion) until approved, so every weight
    // the controller sets can be read in both Envoys however busy the machine is.
    let gates = "\n      webhooks:\n        - { name: step, type: confirm-traffic-increase }\n        - { name: promote, type: confirm-promotion }";
    let c = Controller::start(
        "envoy-promote",
        &podinfo(&v1, &v2, routes, &(analysis(20, true) + gates)),
    );
    let e1 = Envoy::start(&c.control, "gw-1", None).await;
    let e2 = Envoy::start(&c.control, "gw-2", None).await;

    // Header and cookie rules as Envoy routes, before any rollout.
    assert!(served(&e1.url("/"), &[], 5).await.iter().all(|s| s == "v1"));
    let ab = served(&e2.url("/"), &[("x-canary", "always")], 5).await;
    assert!(ab.iter().all(|s| s == "v2"), "{ab:?}");
    let cookie = served(&e1.url("/"), &[("cookie", "a=1; beta=yes")], 5).await;
    assert!(cookie.iter().all(|s| s == "v2"), "{cookie:?}");

    let loads = [
        Load::start(e1.url("/"), 40, Duration::from_secs(180)),
        Load::start(e2.url("/"), 40, Duration::from_secs(180)),
    ];
    let (code, _, err) = c.ctl(&start_args(&v2.endpoint()));
    assert_eq!(code, 0, "{err}");
    // Each weight the rollout holds at a gate is in both Envoys' routes before it moves on.
    let mut held: Vec<u32> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = c.rollout().await;
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        if s.phase == "Succeeded" {
            break;
        }
        if s.waiting_gate.is_empty() || held.last() == Some(&s.canary_weight) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let w = u64::from(s.canary_weight);
        for e in [&e1, &e2] {
            expect_weights(e, &[("primary", 100 - w), ("canary", w)]).await;
        }
        held.push(s.canary_weight);
        let (code, _, err) = c.ctl(&["approve", "podinfo"]);
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(held, [0, 20, 40, 60], "the weights held at the gates");
    // The controller set no weight but those: its own events, in order.
    let last = format!(
        "Advance podinfo.test canary weight {}",
        held[held.len() - 1]
    );
    let advanced: Vec<u32> = c
        .weir
        .wait_log(&last)
        .split("Advance podinfo.test canary weight ")
        .skip(1)
        .filter_map(|t| {
            t.split(|ch: char| !ch.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(advanced, held[1..], "the controller's Advance events");
    for e in [&e1, &e2] {
        expect_weights(e, &[("primary", 100), ("canary", 0)]).await;
    }
    assert!(served(&e1.url("/"), &[], 5).await.iter().all(|s| s == "v2"));
    let failed: usize = loads
        .iter()
        .map(|l| l.failed.load(std::sync::atomic::Ordering::SeqCst))
        .sum();
    drop(loads);
    assert_eq!(failed, 0, "no request failed while the weights moved");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, out, _) = c.ctl(&["replicas"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("gw-1") && out.contains("gw-2") && out.contains("envoy"),
        "{out}"
    );
    for e in [&e1, &e2] {
        assert!(
            e.stat(CANARY).await > 0,
            "canary traffic through {}",
            e.node
        );
        for flag in [
            "http.weir.no_route",
            "http.weir.no_cluster",
            "http.weir.downstream_rq_5xx",
        ] {
            assert_eq!(e.stat(flag).await, 0, "{flag} on {}", e.node);
        }
    }
    // weir's totals are the Envoys' own, once their last flushes are in.
    wait_for(
        "weir's per-version totals to equal Envoy's",
        Duration::from_secs(30),
        || async {
            let mut same = true;
            for (version, stat) in [("primary", PRIMARY), ("canary", CANARY)] {
                let envoys = e1.stat(stat).await + e2.stat(stat).await;
                let weir = c
                    .weir
                    .metric("weir_requests_total", &[("version", version)])
                    .await;
                same &= weir == envoys as f64 && envoys > 0;
            }
            same
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_canary_behind_envoy_is_rolled_back_by_the_fast_fail_guard() {
    let v1 = Upstream::start("v1").await;
    let dead = Upstream::start_with("dead", Behaviour::Status(500)).await;
    let c = Controller::start(
        "envoy-guard",
        &podinfo(&v1, &v1, SPLIT, &analysis(10, true)),
    );
    let e = Envoy::start(&c.control, "gw", None).await;
    let _load = Load::start(e.url("/"), 100, Duration::from_secs(90));
    let (code, _, err) = c.ctl(&start_args(&dead.endpoint()));
    assert_eq!(code, 0, "{err}");
    c.wait_phase("Failed", Duration::from_secs(60)).await;
    c.weir.wait_log("fast-fail");
    assert_eq!(c.weight(), 0);
    assert!(dead.count() > 0, "the canary served through Envoy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_five_percent_behind_envoy_is_rolled_back_by_the_analysis() {
    let v1 = Upstream::start("v1").await;
    let flaky = Upstream::start_with("flaky", Behaviour::FailOneIn(20)).await;
    let c = Controller::start(
        "envoy-checks",
        &podinfo(&v1, &v1, SPLIT, &analysis(30, false)),
    );
    let e = Envoy::start(&c.control, "gw", None).await;
    let _load = Load::start(e.url("/"), 150, Duration::from_secs(120));
    let (code, _, err) = c.ctl(&start_args(&flaky.endpoint()));
    assert_eq!(code, 0, "{err}");
    c.wait_phase("Failed", Duration::from_secs(90)).await;
    let logs = c
        .weir
        .wait_log("Halt podinfo.test advancement success rate");
    assert!(!logs.contains("fast-fail"), "the guard is off: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_reach_the_shadow_and_a_refused_route_keeps_the_node_serving() {
    let v1 = Upstream::start("v1").await;
    let shadow = Upstream::start("shadow").await;
    let routes = "      - split: { primary: 100, canary: 0 }\n        mirror: { version: canary, percent: 100 }";
    let services = podinfo_yaml(
        &v1.endpoint(),
        &shadow.endpoint(),
        "",
        &format!("    routes:\n{routes}\n"),
    );
    let c = Controller::start("envoy-mirror", &services);
    let e = Envoy::start(&c.control, "gw", None).await;
    assert!(served(&e.url("/"), &[], 10).await.iter().all(|s| s == "v1"));
    wait_for("10 mirrored copies", Duration::from_secs(20), || async {
        shadow.count() >= 10
    })
    .await;
    let host = shadow.last_seen().headers["host"]
        .to_str()
        .unwrap_or("")
        .to_string();
    let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    assert!(name.ends_with("-shadow"), "{host}");

    // A regex weir takes but Envoy's RE2 refuses (past its program size): the node NACKs
    // and keeps its routes.
    let text = std::fs::read_to_string(&c.path).expect("read config");
    let refused = text.replace(
        "    routes:\n",
        "    routes:\n      - match: { headers: { x-id: { regex: \"[a-z]{300}\" } } }\n        to: canary\n",
    );
    std::fs::write(&c.path, refused).expect("write config");
    c.weir.signal("HUP");
    wait_for("the NACK listed", Duration::from_secs(30), || async {
        let out = c.ctl(&["replicas"]).1;
        out.lines()
            .any(|l| l.contains("gw") && l.contains("stale") && l.to_lowercase().contains("regex"))
    })
    .await;
    c.weir.wait_log("Envoy node refused its configuration");
    assert!(served(&e.url("/"), &[("x-id", &"a".repeat(300))], 5)
        .await
        .iter()
        .all(|s| s == "v1"));
    assert!(e.stat("http.weir.no_route").await == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_killed_mid_rollout_costs_no_request_and_resumes() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let mut c = Controller::start("envoy-kill", &podinfo(&v1, &v1, SPLIT, &analysis(10, true)));
    let e = Envoy::start(&c.control, "gw", None).await;
    let load = Load::start(e.url("/"), 60, Duration::from_secs(120));
    let (code, _, err) = c.ctl(&start_args(&v2.endpoint()));
    assert_eq!(code, 0, "{err}");
    wait_for("weight 20", Duration::from_secs(60), || async {
        c.weight() >= 20
    })
    .await;
    let _ = c.weir.child.kill();
    let _ = c.weir.child.wait();
    // Envoy keeps its last routing: users see nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(e.stat(CANARY).await > 0);
    c.restart();
    c.wait_phase("Succeeded", Duration::from_secs(90)).await;
    let failed = load.failed.load(std::sync::atomic::Ordering::SeqCst);
    drop(load);
    assert_eq!(failed, 0, "no user request failed");
    assert_eq!(e.stat("http.weir.downstream_rq_5xx").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_need_credentials_and_serve_weirs_listener_certificate() {
    let pki = support::pki::Pki::new("envoy-tls");
    let control_cert = pki.issue("control", "localhost", &["localhost", "127.0.0.1"]);
    let site = pki.issue("site", "shop.test", &["shop.test"]);
    let tokens = pki.dir.join("tokens");
    std::fs::write(
        &tokens,
        "gw envoy-0123456789abcdef0123 replica\nops ops-0123456789abcdef01234 read\n",
    )
    .expect("write tokens");
    let token = pki.dir.join("gw.token");
    std::fs::write(&token, "envoy-0123456789abcdef0123\n").expect("write token");
    let ops = pki.dir.join("ops.token");
    std::fs::write(&ops, "ops-0123456789abcdef01234\n").expect("write token");
    let v1 = Upstream::start("v1").await;
    let dir = temp_dir("envoy-tls-control");
    let port = closed_port();
    let path = dir.join("weir.yaml");
    let yaml = format!(
        "admin: 127.0.0.1:0\ncontrol:\n  address: 127.0.0.1:{port}\n  tls: {{ cert: {}, key: {} }}\n  tokenFile: {}\ntls:\n  certificates:\n    - {{ cert: {}, key: {} }}\nenvoy: {{}}\n{}",
        control_cert.cert.display(),
        control_cert.key.display(),
        tokens.display(),
        site.cert.display(),
        site.key.display(),
        podinfo_yaml(&v1.endpoint(), &v1.endpoint(), "", &format!("    routes:\n{SPLIT}\n")),
    );
    std::fs::write(&path, yaml).expect("write config");
    let weir = Weir::spawn_args(&["control"], path);
    let control = format!("https://localhost:{port}");

    // Without a token the node is refused, and the refusal counted.
    let admin = closed_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let args = [
        "bootstrap",
        "envoy",
        "--control",
        &control,
        "--node",
        "anon",
        "--admin",
        &admin_addr,
        "--ca",
    ];
    let mut cmd = std::process::Command::new(weir_bin());
    cmd.args(args).arg(&pki.ca);
    let out = cmd.output().expect("weir bootstrap envoy");
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Bearer"));
    let anon_dir = temp_dir("envoy-anon");
    let mut anon = support::envoy::spawn(&out.stdout, admin, &anon_dir);
    let refused = || async {
        weir.metric(
            "weir_control_refused_total",
            &[("rpc", "StreamAggregatedResources")],
        )
        .await
            > 0.0
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !refused().await {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal counted; Envoy's log:\n{}",
            std::fs::read_to_string(anon_dir.join("envoy.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = anon.kill();
    let _ = anon.wait();

    // With the replica token over TLS, the node serves weir's own certificate by SNI.
    let e = Envoy::start_with(&control, "gw", Some(&token), Some(&pki.ca)).await;
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&pki.ca)
        .args([
            "--resolve",
            &format!("shop.test:{}:127.0.0.1", e.listen.port()),
        ])
        .arg(format!("https://shop.test:{}/", e.listen.port()))
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "v1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Envoy's last ACK reaches the controller on its own time.
    wait_for(
        "Envoy gw listed as synced",
        Duration::from_secs(60),
        || async {
            let (code, list, err) = ctl_env_tls(&control, &pki.ca, &ops);
            assert_eq!(code, 0, "{err}");
            list.lines()
                .any(|l| l.starts_with("envoy") && l.contains("gw") && l.contains("synced"))
        },
    )
    .await;
}

/// `weir ctl replicas` over TLS with a token file.
fn ctl_env_tls(
    control: &str,
    ca: &std::path::Path,
    token: &std::path::Path,
) -> (i32, String, String) {
    let ca = ca.display().to_string();
    let token = token.display().to_string();
    support::control::ctl_env(
        &[
            "--control",
            control,
            "--ca",
            &ca,
            "--token-file",
            &token,
            "replicas",
        ],
        &[],
    )
}

#[test]
fn weir_check_names_what_an_envoy_node_cannot_do() {
    let (code, err) = weir_check(
        "envoy: {}\nservices:\n  - name: a\n    sticky: { header: x-user }\n    versions:\n      primary: { endpoints: [\"127.0.0.1:1\"] }\n      canary: { endpoints: [\"127.0.0.1:2\"] }\n    routes:\n      - split: { primary: 90, canary: 10 }\n        mirror: { version: canary, percent: 5, compare: true }\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("services[0].sticky: Envoy picks a weighted cluster at random"),
        "{err}"
    );
    assert!(
        err.contains("services[0].routes[0].mirror.compare"),
        "{err}"
    );
}
