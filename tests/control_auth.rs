//! Who may change traffic: the control API over TLS with bearer tokens (read-only ones
//! too) or client certificates limited to listed SANs, driven by the real `weir ctl`;
//! refusals change nothing and are counted; health stays open; an address off loopback
//! without credentials keeps weir from starting; maxWeight holds unless forced.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::control::{config, ctl_env, FAST};
use support::pki::Pki;
use support::*;

const CI_TOKEN: &str = "ci-0123456789abcdef0123456789";
const VIEWER_TOKEN: &str = "viewer-fedcba9876543210fedcba";

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Polls `weir ctl status podinfo` until its output contains `want`.
fn wait_status(base: &[&str], env: &[(&str, &str)], want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut args = base.to_vec();
        args.extend(["status", "podinfo"]);
        let (code, out, err) = ctl_env(&args, env);
        if code == 0 && out.contains(want) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "no {want:?} in status: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_gate_every_call_and_read_only_tokens_only_read() {
    let pki = Pki::new("control-tokens");
    let server = pki.issue("control", "localhost", &["localhost", "127.0.0.1"]);
    let tokens = pki.dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("# who may drive rollouts\nci {CI_TOKEN}\nviewer {VIEWER_TOKEN} read\n"),
    )
    .expect("write tokens");
    let viewer_file = pki.dir.join("viewer.token");
    std::fs::write(&viewer_file, format!("{VIEWER_TOKEN}\n")).expect("write");
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let control = format!(
        "control:\n  address: 127.0.0.1:0\n  tls: {{ cert: {}, key: {} }}\n  tokenFile: {}",
        p(&server.cert),
        p(&server.key),
        p(&tokens)
    );
    let yaml = config(&primary, FAST, "").replace("control: 127.0.0.1:0", &control);
    let weir = Weir::start(&yaml);
    let addr = format!(
        "https://127.0.0.1:{}",
        weir.control.expect("control").port()
    );
    let ca = p(&pki.ca);
    let base = ["--control", addr.as_str(), "--ca", ca.as_str()];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let evil = [
        "start",
        "podinfo",
        "--revision",
        "evil-1",
        "--canary-endpoint",
        "127.0.0.1:1",
    ];

    // No credentials: refused, nothing changes.
    let (code, _, err) = ctl_env(&with(&evil), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not authenticated: credentials required"),
        "{err}"
    );
    let (code, _, err) = ctl_env(&with(&["status"]), &[]);
    assert_eq!(code, 1, "reads need credentials too: {err}");
    let ci_env = [("WEIR_CONTROL_TOKEN", CI_TOKEN)];
    let status = wait_status(&base, &ci_env, "podinfo");
    assert!(!status.contains("Progressing"), "{status}");
    let (_, _, err) = ctl_env(
        &with(&evil),
        &[("WEIR_CONTROL_TOKEN", "not-the-token-0123456789")],
    );
    assert!(
        err.contains("not authenticated: invalid bearer token"),
        "{err}"
    );

    // A read-only token reads and may not change anything.
    let viewer = p(&viewer_file);
    let mut args = with(&["status", "podinfo"]);
    args.extend(["--token-file", viewer.as_str()]);
    let (code, out, err) = ctl_env(&args, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("podinfo"), "{out}");
    let mut args = with(&evil);
    args.extend(["--token-file", viewer.as_str()]);
    let (code, _, err) = ctl_env(&args, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("permission denied: token viewer may only read"),
        "{err}"
    );
    assert_eq!(canary.count() + primary.count(), 0, "no traffic moved");

    // The CI token drives a rollout; maxWeight holds unless forced.
    let canary_ep = canary.endpoint();
    let mut start = with(&["start", "podinfo", "--revision", "2", "--canary-endpoint"]);
    start.push(canary_ep.as_str());
    let (code, _, err) = ctl_env(&start, &ci_env);
    assert_eq!(code, 0, "{err}");
    wait_status(&base, &ci_env, "Progressing");
    let (code, _, err) = ctl_env(
        &with(&["set-weight", "podinfo", "--canary", "100"]),
        &ci_env,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("above podinfo's maxWeight 30; add --force"),
        "{err}"
    );
    let (code, out, err) = ctl_env(
        &with(&["set-weight", "podinfo", "--canary", "100", "--force"]),
        &ci_env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" 100 "), "{out}");
    let served = support::control::served_by(&weir, 20, &[]).await;
    assert!(served.iter().all(|s| s == "canary"), "{served:?}");

    // Health stays open to probes without credentials.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&pki.ca).expect("CA"),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(addr.clone())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect over TLS");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without credentials")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    // Refusals are counted; accepted changes name the caller; tokens never reach the log.
    let refused = |rpc: &'static str, code: &'static str| {
        let weir = &weir;
        async move {
            weir.metric(
                "weir_control_refused_total",
                &[("rpc", rpc), ("code", code)],
            )
            .await
        }
    };
    assert_eq!(refused("StartRollout", "unauthenticated").await, 2.0);
    assert_eq!(refused("StartRollout", "permission_denied").await, 1.0);
    weir.wait_log("control operation accepted");
    let logs = weir.wait_log("token ci");
    assert!(
        !logs.contains(CI_TOKEN) && !logs.contains(VIEWER_TOKEN),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_and_san_lists_authorize() {
    let pki = Pki::new("control-mtls");
    let server = pki.issue("control", "localhost", &["localhost", "127.0.0.1"]);
    let ci = pki.issue_uri("ci", "spiffe://weir.test/ci");
    let intruder = pki.issue_uri("intruder", "spiffe://weir.test/intruder");
    let foreign = Pki::new("foreign").issue_uri("ci", "spiffe://weir.test/ci");
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let control = format!(
        "control:\n  address: 127.0.0.1:0\n  tls:\n    cert: {}\n    key: {}\n    clientCa: {}\n    allowedSans: [\"spiffe://weir.test/ci\"]",
        p(&server.cert),
        p(&server.key),
        p(&pki.ca)
    );
    let yaml = config(&primary, FAST, "").replace("control: 127.0.0.1:0", &control);
    let weir = Weir::start(&yaml);
    let addr = format!(
        "https://localhost:{}",
        weir.control.expect("control").port()
    );
    let ca = p(&pki.ca);
    let as_cert = |leaf: &support::pki::Leaf, args: &[&str]| {
        let (cert, key) = (p(&leaf.cert), p(&leaf.key));
        let mut all = vec![
            "--control",
            &addr,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ];
        all.extend(args);
        ctl_env(&all, &[])
    };
    let pause = ["pause", "podinfo"];

    let (code, _, err) = ctl_env(&["--control", &addr, "--ca", &ca, "pause", "podinfo"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("not authenticated"), "{err}");
    let (code, _, err) = as_cert(&intruder, &pause);
    assert_eq!(code, 1);
    assert!(
        err.contains("permission denied") && err.contains("spiffe://weir.test/intruder"),
        "{err}"
    );
    let (code, _, err) = as_cert(&foreign, &pause);
    assert_ne!(code, 0, "a certificate from another CA: {err}");

    let canary_ep = canary.endpoint();
    let start = support::control::start_args(&canary_ep);
    let (code, _, err) = as_cert(&ci, &start);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = as_cert(&ci, &["status", "podinfo"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("podinfo"), "{out}");
    weir.wait_log("certificate spiffe://weir.test/ci");
    assert_eq!(
        weir.metric(
            "weir_control_refused_total",
            &[("rpc", "Pause"), ("code", "permission_denied")]
        )
        .await,
        1.0
    );
}

#[test]
fn an_open_control_address_off_loopback_refuses_to_start() {
    let dir = temp_dir("open-control");
    let file = dir.join("weir.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncontrol: 0.0.0.0:0\nservices:\n  - name: a\n    versions: { v1: { endpoints: [\"127.0.0.1:1\"] } }\n    analysis: { interval: 1s }\n",
    )
    .expect("write");
    let mut child = Command::new(weir_bin())
        .args(["run", "-c"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weir run");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("weir started with an open control API off loopback");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    assert_eq!(status.code(), Some(1), "{err}");
    for want in [
        "control: the control API at 0.0.0.0:0",
        "control.tokenFile",
        "clientCa",
        "insecure: true",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}
