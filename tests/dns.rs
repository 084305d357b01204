//! Hostname endpoints against a real DNS server (dnsmasq on loopback): every address of
//! the name serves, a changed answer is followed (new addresses get traffic, removed ones
//! drain: requests on them finish, their connections close), and when the server is gone
//! the last good answer stays in use. `/config` and `weir ctl status` show the addresses.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::control::{ctl, served_by};
use support::dns::{same_port, Dnsmasq};
use support::*;

const NAME: &str = "podinfo.test.svc";

fn records(ips: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    ips.iter().map(|ip| (NAME, *ip)).collect()
}

fn config(dns: &Dnsmasq, port: u16) -> String {
    format!(
        "control: 127.0.0.1:0\nresolver: {{ nameservers: [\"{}\"] }}\nservices:\n  - name: podinfo\n    versions:\n      primary: {{ endpoints: [\"{NAME}:{port}\"] }}\n    routes:\n      - {{ to: primary, timeout: 90s }}\n",
        dns.address()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_stands_for_all_its_addresses_and_follows_the_answer() {
    let (port, pods) = same_port(&["pod1", "pod2", "pod3", "pod4"]).await;
    let mut dns = Dnsmasq::start(&records(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]));
    let weir = Weir::start(&config(&dns, port));

    // Every address of the name serves, round robin.
    wait_for(
        "all three pods to serve",
        Duration::from_secs(60),
        || async {
            let seen = served_by(&weir, 12, &[]).await;
            ["pod1", "pod2", "pod3"]
                .iter()
                .all(|p| seen.iter().any(|s| s == p))
        },
    )
    .await;
    let cfg: serde_json::Value =
        serde_json::from_str(&get_text(&weir.admin_url("/config")).await).expect("json");
    let addresses = cfg["services"][0]["versions"][0]["addresses"].clone();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let want = serde_json::json!(format!("{ip}:{port}"));
        assert!(
            addresses.as_array().is_some_and(|a| a.contains(&want)),
            "{addresses}"
        );
    }
    let (code, out, err) = ctl(&weir, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "podinfo/primary: {NAME}:{port} -> 127.0.0.1:{port}, 127.0.0.2:{port}, 127.0.0.3:{port}"
        )),
        "{out}"
    );

    // Long requests in flight on every pod, then pod2 leaves the answer and pod4 joins.
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let url = weir.url("/slow/20000");
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    wait_for(
        "the slow requests to reach pod2",
        Duration::from_secs(30),
        || async {
            pods[1].count() > 0
                && pods[1]
                    .seen
                    .lock()
                    .expect("lock")
                    .iter()
                    .any(|s| s.path.starts_with("/slow"))
        },
    )
    .await;
    dns.set(&records(&["127.0.0.1", "127.0.0.3", "127.0.0.4"]));
    wait_for("pod4 to serve", Duration::from_secs(60), || async {
        served_by(&weir, 6, &[]).await.iter().any(|s| s == "pod4")
    })
    .await;
    let before = pods[1].count();
    let seen = served_by(&weir, 30, &[]).await;
    assert!(
        !seen.iter().any(|s| s == "pod2"),
        "pod2 left the answer: {seen:?}"
    );
    assert_eq!(pods[1].count(), before, "no new request reaches pod2");
    // The requests in flight on pod2 finish; then its connections close.
    for s in slow {
        let got = s.await.expect("slow request");
        assert_eq!(got.status, 200, "{}", got.text());
    }
    wait_for(
        "pod2's connections to close",
        Duration::from_secs(60),
        || async { pods[1].open.load(Ordering::SeqCst) == 0 },
    )
    .await;
    weir.wait_log("endpoint addresses changed");

    // The DNS server goes away: the last answer stays in use, the failures are counted.
    dns.stop();
    let errors = [("host", NAME), ("result", "error")];
    wait_for(
        "a failed resolution to be counted",
        Duration::from_secs(60),
        || async { weir.metric("weir_dns_resolutions_total", &errors).await >= 1.0 },
    )
    .await;
    let seen = served_by(&weir, 12, &[]).await;
    for p in ["pod1", "pod3", "pod4"] {
        assert!(seen.iter().any(|s| s == p), "{p} still serves: {seen:?}");
    }
    weir.wait_log("cannot resolve the endpoint");
    assert!(
        weir.metric(
            "weir_dns_resolutions_total",
            &[("host", NAME), ("result", "ok")]
        )
        .await
            >= 1.0
    );
}

#[test]
fn a_bad_nameserver_is_named() {
    let (code, err) = weir_check(
        "resolver: { nameservers: [\"127.0.0.1:53\", \"dns.local\"] }\nservices:\n  - name: a\n    versions: { v1: { endpoints: [\"a.svc:80\"] } }\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("resolver.nameservers[1]: \"dns.local\" is not an ip:port address"),
        "{err}"
    );
}
