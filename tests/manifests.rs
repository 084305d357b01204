//! The shipped Kubernetes manifests: each ConfigMap's weir.yaml passes `weir check` with
//! its Secrets in place, keeps `/config` on loopback, exposes only the metrics listener,
//! and authenticates its control API (without credentials the same file is refused).

mod support;

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;
use support::pki::Pki;
use support::*;

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    text.split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).expect("valid YAML"))
        .collect()
}

#[test]
fn shipped_manifests_check_clean_and_keep_config_and_control_closed() {
    let pki = Pki::new("manifests");
    let control = pki.issue(
        "control",
        "podinfo-weir-control.test",
        &["podinfo-weir-control.test"],
    );
    let tokens = pki.dir.join("tokens");
    std::fs::write(&tokens, "ci 0123456789abcdef0123456789abcdef\n").expect("tokens");
    let mut configs = 0;
    for path in manifests() {
        let shown = path.display().to_string();
        for doc in documents(&path) {
            for port in doc["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_sequence().cloned().unwrap_or_default())
            {
                assert_ne!(
                    port["containerPort"],
                    Value::from(9901),
                    "{shown}: the admin port is exposed"
                );
            }
            let Some(yaml) = doc["data"]["weir.yaml"].as_str() else {
                continue;
            };
            configs += 1;
            let parsed: Value = serde_yaml_ng::from_str(yaml).expect("weir.yaml parses");
            let admin = parsed["admin"].as_str().expect("admin is set");
            assert!(
                admin.starts_with("127.0.0.1:"),
                "{shown}: admin {admin} is off loopback"
            );
            let with_secrets = yaml
                .replace(
                    "/etc/weir/control-tls/tls.crt",
                    &control.cert.display().to_string(),
                )
                .replace(
                    "/etc/weir/control-tls/tls.key",
                    &control.key.display().to_string(),
                )
                .replace(
                    "/etc/weir/control-tokens/tokens",
                    &tokens.display().to_string(),
                );
            let (code, err) = weir_check(&with_secrets);
            assert_eq!(code, 0, "{shown}: {err}");
            if parsed.get("control").is_some() {
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
    assert!(configs >= 2, "every manifest's weir.yaml was checked");
}
