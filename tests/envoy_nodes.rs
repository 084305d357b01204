//! Envoy nodes as the controller admits them, and what it sends them: TLS to an upstream
//! named by its IP address (checked against the certificate's IP SAN, no SNI) and HTTP/2
//! to upstreams, over TLS and h2c; a second Envoy under a live node's id is refused while
//! the first keeps serving (and admitted once the first is gone); an Envoy with a wrong
//! token is refused, counted, and gets nothing; a cluster changed in place (its
//! endpoints the same) finishes warming and serves.

mod support;

use std::time::Duration;

use support::envoy::{Controller, Envoy};
use support::nginx::Nginx;
use support::pki::Pki;
use support::*;

const SPLIT: &str = "      - split: { primary: 100, canary: 0 }";
const PRIMARY: &str = "cluster.test_podinfo-primary_9898.upstream_rq_total";

/// GET `/` through `e` with `Host: host`: status and body.
async fn through(e: &Envoy, host: &str) -> (u16, String) {
    let got = get(&e.url("/"), &[("host", host)]).await;
    (got.status.as_u16(), got.text())
}

/// nginx over TLS (h2 and http/1.1 by ALPN) on 127.0.0.1 with `leaf`, answering its
/// name and the protocol it spoke.
fn tls_upstream(leaf: &support::pki::Leaf, name: &str) -> Nginx {
    Nginx::start(&format!(
        "server {{ listen 127.0.0.1:{{port}} ssl http2; ssl_certificate {}; ssl_certificate_key {}; location / {{ return 200 \"{name} $server_protocol\"; }} }}",
        leaf.cert.display(),
        leaf.key.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_speaks_tls_to_an_ip_endpoint_and_http2_to_upstreams() {
    let pki = Pki::new("envoy-upstream-tls");
    let by_ip = tls_upstream(&pki.issue("by-ip", "127.0.0.1", &["127.0.0.1"]), "by-ip");
    let other = tls_upstream(&pki.issue("other", "other.test", &["other.test"]), "other");
    let h2c = Upstream::start("h2c").await;
    let ca = pki.ca.display();
    let svc = |name: &str, port: u16, settings: &str| {
        format!("  - name: {name}\n    hosts: [{name}]\n    versions:\n      v1: {{ endpoints: [\"127.0.0.1:{port}\"]{settings} }}\n")
    };
    let tls = format!(", tls: {{ ca: {ca} }}");
    let services = format!(
        "services:\n{}{}{}{}",
        svc("secure", by_ip.port, &tls),
        svc("secure2", by_ip.port, &format!(", http2: true{tls}")),
        svc("wrongsan", other.port, &tls),
        svc("cleartext2", h2c.addr.port(), ", http2: true"),
    );
    let c = Controller::start("envoy-upstream-tls", &services);
    let e = Envoy::start(&c.control, "gw", None).await;

    // The certificate's IP SAN is what Envoy checks: no SNI can name 127.0.0.1.
    assert_eq!(through(&e, "secure").await, (200, "by-ip HTTP/1.1".into()));
    assert_eq!(through(&e, "secure2").await, (200, "by-ip HTTP/2.0".into()));
    let (code, body) = through(&e, "wrongsan").await;
    assert_eq!(
        code, 503,
        "a certificate without 127.0.0.1 is refused: {body}"
    );
    assert!(
        e.stat("cluster.default_wrongsan-v1_80.ssl.fail_verify_san")
            .await
            > 0,
        "refused for its SAN"
    );
    assert_eq!(
        e.stat("cluster.default_secure-v1_80.ssl.fail_verify_san")
            .await,
        0
    );
    assert_eq!(through(&e, "cleartext2").await, (200, "h2c".into()));
    assert_eq!(h2c.last_seen().version, http::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_envoy_under_a_live_node_id_is_refused_and_the_first_keeps_serving() {
    let v1 = Upstream::start("v1").await;
    let c = Controller::start("envoy-same-id", &two_versions(&v1, &v1, SPLIT));
    let first = Envoy::start(&c.control, "gw", None).await;
    let second = Envoy::launch(&c.control, "gw", None, None);
    let refused = "a second Envoy reports stats under a live node's id: refused";
    wait_for(refused, Duration::from_secs(60), || async {
        c.weir.logs().contains(refused)
    })
    .await;
    let rows = c.replicas_named("gw");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].contains(&first.listen.to_string()) && rows[0].contains("synced"),
        "the first node's row: {rows:?}"
    );
    assert_eq!(second.dynamic_resources().await, 0, "{}", second.log());
    assert!(!second.listening());

    // The first serves, and weir counts its requests alone.
    assert_eq!(through(&first, "podinfo").await, (200, "v1".into()));
    wait_for(
        "weir's total to be the first node's own",
        Duration::from_secs(30),
        || async {
            let own = first.stat(PRIMARY).await;
            let weir = c
                .weir
                .metric("weir_requests_total", &[("version", "primary")])
                .await;
            own > 0 && weir == own as f64
        },
    )
    .await;
    assert_eq!(second.dynamic_resources().await, 0, "{}", second.log());

    // Once the first is gone, its id is free: the second is admitted on its next try.
    let first_listen = first.listen.to_string();
    drop(first);
    second.wait_serving().await;
    assert_eq!(through(&second, "podinfo").await, (200, "v1".into()));
    wait_for("the second node's row", Duration::from_secs(30), || async {
        let rows = c.replicas_named("gw");
        rows.len() == 1 && rows[0].contains(&second.listen.to_string())
    })
    .await;
    assert!(!c.ctl(&["replicas"]).1.contains(&first_listen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_with_a_wrong_token_is_refused_counted_and_gets_nothing() {
    let v1 = Upstream::start("v1").await;
    let tokens = "gw envoy-0123456789abcdef0123 replica\nops ops-0123456789abcdef01234 read\n";
    let c = Controller::start_with(
        "envoy-wrong-token",
        &two_versions(&v1, &v1, SPLIT),
        Some((tokens, "ops-0123456789abcdef01234")),
    );
    let (good, bad) = (c.dir.join("gw.token"), c.dir.join("bad.token"));
    std::fs::write(&good, "envoy-0123456789abcdef0123\n").expect("write token");
    std::fs::write(&bad, "envoy-not-the-token-0000000\n").expect("write token");
    let labels = [("rpc", "StreamAggregatedResources")];

    let gw = Envoy::start(&c.control, "gw", Some(&good)).await;
    assert_eq!(through(&gw, "podinfo").await, (200, "v1".into()));
    assert_eq!(
        c.weir.metric("weir_control_refused_total", &labels).await,
        0.0
    );

    let intruder = Envoy::launch(&c.control, "intruder", Some(&bad), None);
    // Refused on its first try and again on the next: the refusal holds.
    wait_for("two refusals counted", Duration::from_secs(60), || async {
        c.weir.metric("weir_control_refused_total", &labels).await >= 2.0
    })
    .await;
    assert_eq!(intruder.dynamic_resources().await, 0, "{}", intruder.log());
    assert!(!intruder.listening());
    assert!(c.replicas_named("intruder").is_empty());
    assert_eq!(c.replicas_named("gw").len(), 1);
    assert_eq!(through(&gw, "podinfo").await, (200, "v1".into()));
}

/// The `connect_timeout` of each of Envoy's active and warming clusters named `name`.
async fn cluster_timeouts(e: &Envoy, name: &str) -> (Vec<String>, Vec<String>) {
    let dump = e.config_dump().await;
    let of = |key: &str| -> Vec<String> {
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c[key].as_array().cloned().unwrap_or_default())
            .filter(|c| c["cluster"]["name"] == name)
            .map(|c| {
                c["cluster"]["connect_timeout"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    (
        of("dynamic_active_clusters"),
        of("dynamic_warming_clusters"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_changed_in_place_finishes_warming_and_serves() {
    let v1 = Upstream::start("v1").await;
    let yaml = |settings: &str| {
        podinfo_yaml(
            &v1.endpoint(),
            &v1.endpoint(),
            settings,
            &format!("    routes:\n{SPLIT}\n"),
        )
    };
    let c = Controller::start("envoy-rewarm", &yaml(""));
    let e = Envoy::start(&c.control, "gw", None).await;
    assert_eq!(through(&e, "podinfo").await, (200, "v1".into()));
    // The same endpoints, another connect timeout: Envoy takes the cluster anew and warms
    // it until its endpoints come again.
    let head = std::fs::read_to_string(&c.path).expect("read config");
    let head = &head[..head.find("services:").expect("services")];
    std::fs::write(&c.path, format!("{head}{}", yaml(", connectTimeout: 7s"))).expect("write");
    c.weir.signal("HUP");
    let cluster = "test_podinfo-primary_9898";
    wait_for(
        "the changed cluster active",
        Duration::from_secs(60),
        || async { cluster_timeouts(&e, cluster).await == (vec!["7s".to_string()], vec![]) },
    )
    .await;
    assert_eq!(e.stat("cluster_manager.warming_clusters").await, 0);
    assert_eq!(through(&e, "podinfo").await, (200, "v1".into()));
}
