//! The shipped Kubernetes packaging, rendered with the real `kubectl kustomize`: the
//! gateway overlay (controller + 3 replicas with autoscaler, disruption budget, probes,
//! drain, state volume, network policy) and the sidecar overlay; every weir.yaml and
//! replica.yaml in them passes `weir check` with their Secrets in place, keeps `/config`
//! on loopback, exposes only the metrics listener, and authenticates its control API
//! (without credentials the same file is refused).

mod support;

use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;
use support::pki::Pki;
use support::*;

/// `kubectl kustomize deploy/kubernetes/<dir>`, as documents.
fn render(dir: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .expect("run kubectl kustomize (Debian's kubectl)");
    assert!(
        out.status.success(),
        "kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).expect("valid YAML"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == *kind && d["metadata"]["name"] == *name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == *name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_gateway_overlay_renders_a_controller_and_scalable_replicas() {
    let docs = render("overlays/gateway");
    let gateway = find(&docs, "Deployment", "weir-gateway");
    assert_eq!(gateway["spec"]["replicas"], Value::from(3));
    let weir = container(gateway, "weir");
    let a = args(weir);
    assert_eq!(a.first().map(String::as_str), Some("proxy"));
    assert!(a.contains(&"--controller".to_string()), "{a:?}");
    assert_eq!(
        weir["readinessProbe"]["httpGet"]["path"],
        Value::from("/ready")
    );
    assert!(weir["lifecycle"]["preStop"].is_mapping(), "preStop drain");
    let env: Vec<&str> = weir["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        env.contains(&"POD_NAME"),
        "replica names from the pod: {env:?}"
    );
    let hpa = find(&docs, "HorizontalPodAutoscaler", "weir-gateway");
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["name"],
        Value::from("cpu")
    );
    find(&docs, "PodDisruptionBudget", "weir-gateway");
    let control = find(&docs, "Deployment", "weir-control");
    assert_eq!(control["spec"]["replicas"], Value::from(1));
    assert_eq!(control["spec"]["strategy"]["type"], Value::from("Recreate"));
    assert_eq!(args(container(control, "weir"))[0], "control");
    find(&docs, "PersistentVolumeClaim", "weir-control-state");
    find(&docs, "Service", "weir-control");
    find(&docs, "Service", "weir-gateway");
    find(&docs, "ServiceAccount", "weir-gateway");
    // Only replicas (and operators) reach the control port.
    let policy = find(&docs, "NetworkPolicy", "weir-control");
    let rule = &policy["spec"]["ingress"][0];
    assert_eq!(rule["ports"][0]["port"], Value::from(9090));
    assert_eq!(
        rule["from"][0]["podSelector"]["matchLabels"]["weir/role"],
        Value::from("replica")
    );
    let labels = &gateway["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["weir/role"], Value::from("replica"));
    for d in &docs {
        assert_eq!(
            d["metadata"]["namespace"].as_str().unwrap_or("weir"),
            "weir"
        );
    }
}

#[test]
fn the_sidecar_overlay_puts_a_replica_beside_the_app_and_no_gateway() {
    let docs = render("overlays/sidecar");
    assert!(!docs
        .iter()
        .any(|d| d["metadata"]["name"] == *"weir-gateway"));
    let app = docs
        .iter()
        .find(|d| d["kind"] == *"Deployment" && d["metadata"]["name"] != *"weir-control")
        .expect("the app's Deployment");
    let weir = container(app, "weir");
    assert!(args(weir).contains(&"--controller".to_string()));
    find(&docs, "Deployment", "weir-control");
}

#[test]
fn shipped_configs_check_clean_and_keep_config_and_control_closed() {
    let pki = Pki::new("manifests");
    let control = pki.issue("control", "weir-control", &["weir-control"]);
    let tokens = pki.dir.join("tokens");
    std::fs::write(
        &tokens,
        "gateway 0123456789abcdef0123456789abcdef replica\nci fedcba9876543210fedcba9876543210\n",
    )
    .expect("tokens");
    let token = pki.dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("token");
    let ca = pki.ca.clone();
    let secrets = [
        ("/etc/weir/control/tls.crt", &control.cert),
        ("/etc/weir/control/tls.key", &control.key),
        ("/etc/weir/control/tokens", &tokens),
        ("/etc/weir/control-ca/ca.crt", &ca),
        ("/etc/weir/control-token/token", &token),
    ];
    let (mut controllers, mut replicas) = (0, 0);
    for overlay in ["overlays/gateway", "overlays/sidecar"] {
        let docs = render(overlay);
        for doc in &docs {
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .into_iter()
                .flatten()
            {
                for port in c["ports"].as_sequence().into_iter().flatten() {
                    assert_ne!(
                        port["containerPort"],
                        Value::from(9901),
                        "{overlay}: the admin port is exposed"
                    );
                }
            }
            let Some(data) = doc["data"]
                .as_mapping()
                .filter(|_| doc["kind"] == *"ConfigMap")
            else {
                continue;
            };
            for (file, yaml) in data {
                let (Some(file), Some(yaml)) = (file.as_str(), yaml.as_str()) else {
                    continue;
                };
                let shown = format!("{overlay}: {file}");
                let parsed: Value = serde_yaml_ng::from_str(yaml).expect("parses");
                let admin = parsed["admin"].as_str().expect("admin is set");
                assert!(
                    admin.starts_with("127.0.0.1:"),
                    "{shown}: admin {admin} is off loopback"
                );
                let mut with_secrets = yaml.to_string();
                for (path, local) in &secrets {
                    with_secrets = with_secrets.replace(path, &local.display().to_string());
                }
                let (code, err) = weir_check(&with_secrets);
                assert_eq!(code, 0, "{shown}: {err}");
                if parsed.get("controller").is_some() {
                    replicas += 1;
                    let link = &parsed["controller"];
                    assert!(link["tokenFile"].is_string(), "{shown}: no replica token");
                    assert!(
                        link["tls"]["ca"].is_string(),
                        "{shown}: no TLS to the controller"
                    );
                    continue;
                }
                controllers += 1;
                let block = &parsed["control"];
                assert!(
                    block["tokenFile"].is_string() || block["tls"]["clientCa"].is_string(),
                    "{shown}: the control API has no credentials"
                );
                let mut open = parsed.clone();
                open["control"] = Value::from(block["address"].as_str().expect("address"));
                let (code, err) = weir_check(&serde_yaml_ng::to_string(&open).expect("yaml"));
                assert_eq!(code, 1, "{shown}: an open control API passed: {err}");
                assert!(err.contains("control.tokenFile"), "{err}");
            }
        }
    }
    assert!(
        controllers >= 2 && replicas >= 2,
        "{controllers} controllers, {replicas} replicas checked"
    );
}

#[test]
fn the_prometheus_config_and_grafana_dashboard_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    // Debian's promtool is built without Kubernetes discovery, so the scrape config is read
    // here: both jobs, and the controller's copy of the traffic families dropped.
    let prom: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("prometheus/prometheus.yml")).expect("prometheus.yml"),
    )
    .expect("prometheus.yml is YAML");
    let jobs: Vec<&Value> = prom["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .collect();
    for name in ["weir-replica", "weir-control"] {
        assert!(jobs.iter().any(|j| j["job_name"] == *name), "job {name}");
    }
    let control = jobs
        .iter()
        .find(|j| j["job_name"] == *"weir-control")
        .expect("control job");
    let drop = control["metric_relabel_configs"][0]["regex"]
        .as_str()
        .unwrap_or("");
    assert!(drop.contains("weir_requests_total"), "{drop}");
    let text = std::fs::read_to_string(root.join("grafana/weir.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().map_or(0, Vec::len);
    assert!(panels >= 6, "{panels} panels");
    for name in [
        "weir_requests_total",
        "weir_request_duration_seconds_bucket",
        "flagger_canary_weight",
        "flagger_canary_status",
        "weir_control_replicas",
    ] {
        assert!(text.contains(name), "the dashboard charts {name}");
    }
}
