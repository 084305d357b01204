//! A replica that refuses a one-service delta from a real controller keeps serving what
//! it had: the controller takes a change its replicas cannot (a CA file the controller
//! reads but the replica does not have), the replica NACKs it, the controller lists the
//! refusal, and the replica's routing stays as it was; a later step of another service
//! sends it the whole routing again, never a delta on the base it refused.

mod support;

use std::time::Duration;

use support::control::{ctl_at, served_by};
use support::pki::Pki;
use support::*;
use tonic::transport::Channel;
use weir_protos::control as pb;
use weir_protos::control::control_client::ControlClient;

/// podinfo for every host, split 50/50 (`podinfo_canary`: its canary's extra settings),
/// and `other` for host `other` (both its versions on one upstream).
fn services(
    primary: &Upstream,
    canary: &Upstream,
    other: &Upstream,
    podinfo_canary: &str,
) -> String {
    format!(
        r#"services:
  - name: podinfo
    hosts: ["*"]
    versions:
      primary: {{ endpoints: ["{}"] }}
      canary: {{ endpoints: ["{}"]{podinfo_canary} }}
    routes:
      - split: {{ primary: 50, canary: 50 }}
  - name: other
    hosts: [other]
    versions:
      primary: {{ endpoints: ["{other}"] }}
      canary: {{ endpoints: ["{other}"] }}
    routes:
      - split: {{ primary: 100, canary: 0 }}
"#,
        primary.endpoint(),
        canary.endpoint(),
        other = other.endpoint()
    )
}

async fn replicas(control: &str) -> pb::ListReplicasReply {
    let channel = Channel::from_shared(format!("http://{control}"))
        .expect("control url")
        .connect()
        .await
        .expect("connect to the controller");
    ControlClient::new(channel)
        .list_replicas(pb::ListReplicasRequest {})
        .await
        .expect("ListReplicas")
        .into_inner()
}

/// Which upstreams answer `n` requests for `host` through `w` (weir's own answers carry
/// no `x-served-by`: they show as `?`).
async fn answers(w: &Weir, host: &str, n: usize) -> Vec<String> {
    let mut out = served_by(w, n, &[("host", host)]).await;
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_one_service_delta_changes_nothing_on_the_replica() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let other = Upstream::start("other").await;
    // The controller runs where `ca.pem` is; the replica elsewhere (another machine).
    let dir = temp_dir("fleet-nack-delta");
    std::fs::copy(Pki::new("fleet-nack").ca, dir.join("ca.pem")).expect("copy the CA");
    let elsewhere = dir.join("replica");
    std::fs::create_dir_all(&elsewhere).expect("replica dir");
    let control = format!("127.0.0.1:{}", closed_port());
    let config = dir.join("weir.yaml");
    let head = format!("admin: 127.0.0.1:0\ncontrol: {control}\n");
    let plain = services(&primary, &canary, &other, "");
    std::fs::write(&config, format!("{head}{plain}")).expect("write config");
    let controller = Weir::spawn_in(&dir, &["control"], config.clone());
    let replica_config = elsewhere.join("replica.yaml");
    std::fs::write(
        &replica_config,
        format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncontroller: {{ address: http://{control} }}\n"),
    )
    .expect("write replica config");
    let replica = Weir::spawn_in(&elsewhere, &["proxy", "--name", "r0"], replica_config);
    wait_for("the replica synced", Duration::from_secs(30), || async {
        let list = replicas(&control).await;
        list.replicas
            .iter()
            .any(|r| r.state == "synced" && r.generation == list.generation)
    })
    .await;
    let acked = replicas(&control).await.generation;
    let before = get_text(&replica.admin_url("/config")).await;
    assert_eq!(
        answers(&replica, "podinfo", 40).await,
        ["canary", "primary"]
    );
    assert_eq!(answers(&replica, "other", 5).await, ["other"]);

    // podinfo's canary now speaks TLS, checked against ca.pem: the controller reads it
    // (and takes the change), the replica has no such file.
    let tls = ", tls: { ca: ca.pem, serverName: upstream.internal }";
    let text = format!("{head}{}", services(&primary, &canary, &other, tls));
    std::fs::write(&config, text).expect("write config");
    controller.signal("HUP");
    wait_for("the replica's NACK", Duration::from_secs(30), || async {
        replicas(&control)
            .await
            .replicas
            .iter()
            .any(|r| !r.error.is_empty())
    })
    .await;
    let list = replicas(&control).await;
    assert!(
        list.generation > acked,
        "the controller took the change: {list:?}"
    );
    let r0 = &list.replicas[0];
    assert_eq!(r0.name, "r0");
    assert_eq!(r0.generation, acked, "r0 ACKed nothing newer: {list:?}");
    assert_eq!(r0.state, "stale", "{list:?}");
    assert!(
        r0.error.contains("podinfo") && r0.error.contains("ca.pem"),
        "the NACK names the service and the file: {}",
        r0.error
    );
    let (code, out, err) = ctl_at(&control, &["replicas"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["weir", "r0"]))
        .unwrap_or_default();
    assert!(line.contains("stale") && line.contains("ca.pem"), "{out}");
    let nacks = controller.metric("weir_control_nacks_total", &[]).await;
    assert!(nacks >= 1.0, "weir_control_nacks_total {nacks}");

    // The replica routes exactly as before: plain HTTP to both halves of the split.
    assert_eq!(get_text(&replica.admin_url("/config")).await, before);
    assert_eq!(
        answers(&replica, "podinfo", 40).await,
        ["canary", "primary"]
    );
    assert_eq!(answers(&replica, "other", 5).await, ["other"]);

    // A step of another service is no delta on the refused base: the replica is sent the
    // whole routing again, refuses it again, and is never shown synced without podinfo's
    // change.
    let (code, _, err) = ctl_at(&control, &["set-weight", "other", "--canary", "10"]);
    assert_eq!(code, 0, "{err}");
    wait_for(
        "the replica's second NACK",
        Duration::from_secs(30),
        || async { controller.metric("weir_control_nacks_total", &[]).await >= 2.0 },
    )
    .await;
    let list = replicas(&control).await;
    let r0 = &list.replicas[0];
    assert_eq!(r0.generation, acked, "r0 ACKed nothing newer: {list:?}");
    assert_eq!(r0.state, "stale", "{list:?}");
    assert!(r0.error.contains("podinfo"), "{}", r0.error);
    assert_eq!(get_text(&replica.admin_url("/config")).await, before);
}
