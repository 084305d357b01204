//! Flagger `Canary` objects as they are (deploy/kubernetes/examples/canaries: Flagger's
//! progressive, A/B, blue/green-with-mirroring and App Mesh tutorials) as `services:`
//! entries: `weir check` accepts each and names every field weir passes over, with why;
//! served end to end, the versions are Flagger's Services (`podinfo-primary.test`,
//! `podinfo-canary.test`, answered by a real DNS server), an A/B rollout sends the
//! insiders' header and cookie to the canary and a blue/green one mirrors every request.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::control::ctl;
use support::dns::{same_port, Dnsmasq};
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn manifest(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/examples/canaries")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The object as the first (and only) `services:` entry, indented under its dash.
fn as_service(object: &str) -> String {
    let mut out = String::from("services:\n");
    let lines = object.lines().filter(|l| !l.starts_with('#'));
    for (i, line) in lines.enumerate() {
        out.push_str(if i == 0 { "  - " } else { "    " });
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn flaggers_canaries_pass_weir_check_with_what_is_ignored_named() {
    let cases: &[(&str, &[&str])] = &[
        (
            "podinfo-progressive.yaml",
            &[
                "services[0].spec.autoscalerRef: ignored: weir does not scale workloads",
                "services[0].spec.service.gateways: ignored",
                "services[0].spec.service.retries: ignored: weir does not retry",
                "services[0].spec.service.trafficPolicy: ignored",
            ],
        ),
        (
            "podinfo-ab.yaml",
            &["services[0].spec.service.gateways: ignored", "services[0].spec.autoscalerRef: ignored"],
        ),
        ("podinfo-blue-green-mirror.yaml", &["services[0].spec.service.targetPort: ignored"]),
        (
            "podinfo-appmesh.yaml",
            &[
                "services[0].spec.provider: ignored: weir (or the Envoys it drives) routes the traffic itself",
                "services[0].metadata.annotations: ignored",
                "services[0].spec.service.timeout: ignored: set timeout on the service's routes",
                "services[0].spec.service.rewrite: ignored",
                "services[0].spec.service.match: ignored",
            ],
        ),
    ];
    for (file, notes) in cases {
        let (code, err) = weir_check(&as_service(&manifest(file)));
        assert_eq!(code, 0, "{file}: {err}");
        assert!(err.contains("ok (1 services, 2 versions)"), "{file}: {err}");
        for note in *notes {
            assert!(
                err.contains(&format!("note: {note}")),
                "{file}: no {note:?} in\n{err}"
            );
        }
        // Fields weir acts on are not called ignored.
        for used in [
            "spec.analysis",
            "spec.targetRef",
            "spec.service.port:",
            "progressDeadlineSeconds",
        ] {
            assert!(
                !err.contains(&format!("{used}: ignored")),
                "{file}: {used}\n{err}"
            );
        }
    }
}

#[test]
fn a_canary_with_a_mistake_is_refused_naming_its_own_field() {
    let bad = manifest("podinfo-ab.yaml")
        .replace("stepWeight", "stepWieght")
        .replace("threshold: 10", "threshold: ten");
    let (code, err) = weir_check(&as_service(&bad));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("services[0].spec.analysis.threshold"), "{err}");
}

/// weir serving one of the manifests as it is but for its port (`P`, free on both
/// addresses) and a 2s analysis interval (a test cannot wait out minutes): the primary's
/// Service answers at 127.0.0.1:P, the canary's at 127.0.0.2:P.
async fn serve(file: &str) -> (Weir, Vec<Upstream>, Dnsmasq) {
    let (port, pods) = same_port(&["primary", "canary"]).await;
    let dns = Dnsmasq::start(&[
        ("podinfo-primary.test", "127.0.0.1"),
        ("podinfo-canary.test", "127.0.0.2"),
    ]);
    let object = manifest(file)
        .replace("port: 9898", &format!("port: {port}"))
        .replace("targetPort: 9898", &format!("targetPort: {port}"))
        .replace(
            "    interval: 1m\n    threshold",
            "    interval: 2s\n    threshold",
        );
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncontrol: 127.0.0.1:0\nresolver: {{ nameservers: [\"{}\"] }}\n{}",
        dns.address(),
        as_service(&object)
    );
    (Weir::start(&yaml), pods, dns)
}

/// Who answered a request for app.example.com with `headers`.
async fn who(weir: &Weir, headers: &[(&str, &str)]) -> String {
    let mut all = vec![("host", "app.example.com")];
    all.extend_from_slice(headers);
    let got = get(&weir.url("/"), &all).await;
    assert_eq!(got.status, 200, "{}\n{}", got.text(), weir.logs());
    got.headers["x-served-by"]
        .to_str()
        .unwrap_or("?")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_canary_sends_insiders_to_the_new_version() {
    let (weir, pods, _dns) = serve("podinfo-ab.yaml").await;
    wait_for("the primary's Service to answer", LIMIT, || async {
        who(&weir, &[]).await == "primary"
    })
    .await;
    assert_eq!(
        who(&weir, &[("x-canary", "insider")]).await,
        "primary",
        "no rollout yet"
    );

    let (code, out, err) = ctl(&weir, &["start", "podinfo", "--revision", "6.7.1"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("an insider to reach the canary", LIMIT, || async {
        who(&weir, &[("x-canary", "an-insider-user")]).await == "canary"
    })
    .await;
    assert_eq!(
        who(&weir, &[("cookie", "canary=always; theme=dark")]).await,
        "canary"
    );
    for _ in 0..10 {
        assert_eq!(
            who(&weir, &[]).await,
            "primary",
            "everyone else stays on the primary"
        );
        assert_eq!(who(&weir, &[("cookie", "canary=never")]).await, "primary");
    }
    assert!(pods[1].count() > 0);
    let (code, out, err) = ctl(&weir, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("podinfo") && out.contains("Progressing"),
        "{out}"
    );
    assert!(
        out.contains("podinfo/canary: podinfo-canary.test:"),
        "the canary's Service and its address: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_canary_mirrors_every_request_to_the_new_version() {
    let (weir, pods, _dns) = serve("podinfo-blue-green-mirror.yaml").await;
    wait_for("the primary's Service to answer", LIMIT, || async {
        who(&weir, &[]).await == "primary"
    })
    .await;
    let (code, out, err) = ctl(&weir, &["start", "podinfo", "--revision", "6.7.1"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the canary to get mirrored copies", LIMIT, || async {
        assert_eq!(
            who(&weir, &[]).await,
            "primary",
            "the primary answers every request"
        );
        pods[1].count() >= 5
    })
    .await;
}
