//! The process around the proxy: SIGHUP reloads (a bad file changes nothing), SIGTERM
//! drains in-flight requests, the admin endpoints, and `weir check` naming every error.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_file_keeps_the_running_config_and_counts_the_failure() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(&primary, &canary, "      - to: primary"));
    let good = std::fs::read_to_string(&weir.config_path).expect("read config");
    let bad = good.replace("      - to: primary", "      - to: nightly\n      - match: { headers: { x: { regex: \"(\" } } }\n        to: canary");
    // The reload failure is counted.
    weir.reload_rejected(&bad).await;
    let logs = weir.wait_log("services[0].routes[1].match.headers.x.regex: unclosed group");
    assert!(
        logs.contains("services[0].routes[0].to: unknown version \\\"nightly\\\"")
            || logs.contains("services[0].routes[0].to: unknown version \"nightly\""),
        "{logs}"
    );
    assert_eq!(
        get(&weir.url("/"), &[]).await.headers["x-served-by"],
        "primary"
    );
    std::fs::write(
        &weir.config_path,
        good.replace("      - to: primary", "      - to: canary"),
    )
    .expect("write good config");
    weir.signal("HUP");
    wait_for("the new routes", Duration::from_secs(30), || async {
        get(&weir.url("/"), &[]).await.headers["x-served-by"] == "canary"
    })
    .await;
    let ok = [("result", "ok")];
    weir.wait_metric(
        "weir_config_reloads_total",
        &ok,
        1.0,
        Duration::from_secs(30),
    )
    .await;
    let config: serde_json::Value =
        serde_json::from_str(&get_text(&weir.admin_url("/config")).await).expect("json");
    assert_eq!(config["services"][0]["versions"][1]["weight"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_in_flight_requests() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let mut weir = Weir::start(&two_versions(&primary, &canary, "      - to: primary"));
    // In flight long enough to see the drain from outside, well within the drain timeout.
    let url = weir.url("/slow/8000");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    wait_for(
        "the slow request to reach the upstream",
        Duration::from_secs(30),
        || async { primary.count() > 0 },
    )
    .await;
    weir.signal("TERM");
    wait_for(
        "admin /ready to say draining",
        Duration::from_secs(30),
        || async {
            match tokio::time::timeout(Duration::from_secs(1), async {
                get(&weir.admin_url("/ready"), &[]).await.status
            })
            .await
            {
                Ok(s) => s == 503,
                Err(_) => false,
            }
        },
    )
    .await;
    assert!(
        tokio::net::TcpStream::connect(weir.proxy).await.is_err(),
        "new connections are refused while draining"
    );
    let got = in_flight.await.expect("join");
    assert_eq!(got.status, 200, "the in-flight request finished");
    assert_eq!(got.text(), "primary slow\n");
    let status = tokio::task::spawn_blocking(move || weir.child.wait().expect("wait"))
        .await
        .expect("join");
    assert!(status.success(), "weir exits 0 after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_liveness_readiness_and_config() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(
        &primary,
        &canary,
        "      - split: { primary: 999, canary: 1 }",
    ));
    assert_eq!(get(&weir.admin_url("/live"), &[]).await.status, 200);
    let ready = get(&weir.admin_url("/ready"), &[]).await;
    assert_eq!(
        (ready.status.as_u16(), ready.text().as_str()),
        (200, "LIVE\n")
    );
    let config: serde_json::Value =
        serde_json::from_str(&get_text(&weir.admin_url("/config")).await).expect("json");
    let canary_v = &config["services"][0]["versions"][1];
    assert_eq!(canary_v["name"], "canary");
    assert_eq!(canary_v["weight"], 1);
    assert_eq!(canary_v["percent"], 0.1);
    assert_eq!(
        weir.metric(
            "weir_route_weight",
            &[("service", "podinfo"), ("version", "primary")]
        )
        .await,
        999.0
    );
}

#[test]
fn weir_check_reports_every_error_with_its_field_path() {
    let (code, err) = weir_check(
        r#"services:
  - name: podinfo
    colour: blue
    versions:
      primary: { endpoints: ["127.0.0.1:1"] }
    routes:
      - match: { headers: { x-canary: { regex: "(abc" } } }
        to: primary
      - split: { primary: 0 }
"#,
    );
    assert!(code != 0);
    assert!(
        err.contains("services[0].colour: unknown field `colour`"),
        "{err}"
    );
    assert!(
        err.contains("services[0].routes[0].match.headers.x-canary.regex: unclosed group"),
        "{err}"
    );
    assert!(
        err.contains("services[0].routes[1].split: the weights sum to 0"),
        "{err}"
    );
    let (code, err) = weir_check(
        "services:\n  - name: ok\n    versions: { v1: { endpoints: [\"127.0.0.1:1\"] } }\n",
    );
    assert!(code == 0, "{err}");
}
