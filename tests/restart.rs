//! Restarts: `kill -9` mid-rollout resumes at the same step from the state file;
//! `revertOnRestart` sends traffic back to the primary; a controller restarted on its
//! state file publishes routing versions above the ones it published before.

mod support;

use std::time::Duration;

use support::control::*;
use support::*;
use weir_protos::control as pb;
use weir_protos::control::control_client::ControlClient;

/// Starts weir with a state file, rolls out `canary` under load until its weight reaches
/// `weight`, and kills weir with SIGKILL. Returns the config and state file paths.
async fn kill_9_at_weight(
    tag: &str,
    analysis: &str,
    primary: &Upstream,
    canary: &Upstream,
    weight: u32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (path, state) = config_with_state(tag, primary, analysis);
    let mut weir = Weir::start_file(path.clone());
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(30)).await;
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(60));
    start(&mut c, "2", canary).await;
    wait_weight(&c, weight, Duration::from_secs(30)).await;
    // A step is written to the state file just after it is shown.
    wait_for(
        "the state file at the weight",
        Duration::from_secs(30),
        || async {
            saved_status(&state)
                .and_then(|s| s["canary_weight"].as_u64())
                .is_some_and(|w| w >= u64::from(weight))
        },
    )
    .await;
    weir.signal("KILL");
    let _ = weir.child.wait();
    (path, state)
}

/// podinfo's status as the state file holds it (None while there is no file yet).
fn saved_status(state: &std::path::Path) -> Option<serde_json::Value> {
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(state).ok()?).ok()?;
    Some(saved["services"]["podinfo"]["status"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_resumes_at_the_same_step() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let analysis = FAST
        .replace("interval: 1s", "interval: 2s")
        .replace("maxWeight: 30", "maxWeight: 60");
    let (path, state) = kill_9_at_weight("resume", &analysis, &v1, &v2, 20).await;
    let saved = saved_status(&state).expect("the state file holds podinfo's status");
    let weight = saved["canary_weight"].as_u64().expect("saved weight");
    assert_eq!(saved["phase"], "Progressing");
    assert!(weight >= 20);

    let weir = Weir::start_file(path);
    let mut c = client(&weir).await;
    let resumed = status(&mut c).await;
    assert_eq!(resumed.phase, "Progressing");
    assert_eq!(u64::from(resumed.canary_weight), weight, "same step");
    assert_eq!(
        resumed.canary_revision, "2",
        "the StartRollout endpoints survive"
    );
    let shares = served_by(&weir, 60, &[]).await;
    assert!(
        shares.iter().any(|s| s == "v2"),
        "the canary is routed at once: {shares:?}"
    );
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(60));
    let done = wait_phase(&mut c, "Succeeded", Duration::from_secs(40)).await;
    assert_eq!(done.primary_revision, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_on_restart_sends_traffic_back_to_the_primary() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let analysis = format!(
        "{}\n      revertOnRestart: true",
        FAST.replace("maxWeight: 30", "maxWeight: 90")
    );
    let (path, _) = kill_9_at_weight("revert", &analysis, &v1, &v2, 10).await;
    let weir = Weir::start_file(path);
    let mut c = client(&weir).await;
    let s = status(&mut c).await;
    assert_eq!((s.phase.as_str(), s.canary_weight), ("Failed", 0));
    assert!(served_by(&weir, 30, &[]).await.iter().all(|s| s == "v1"));
}

/// `weir control` on `config` (its state file inside), on the address it names.
fn controller(config: &std::path::Path) -> Weir {
    Weir::spawn_args(&["control"], config.to_path_buf())
}

/// SIGTERM, and the exit it must make.
async fn terminate(w: &mut Weir) {
    w.signal("TERM");
    wait_for("the controller to exit", Duration::from_secs(30), || {
        let exited = w.child.try_wait().expect("wait").is_some();
        async move { exited }
    })
    .await;
    assert!(w.child.wait().expect("status").success());
}

/// The routing version ListReplicas shows, once `/metrics` shows it too (the gauge is
/// refreshed every second).
async fn routing_version(w: &Weir) -> u64 {
    let listed = ControlClient::new(channel(w).await)
        .list_replicas(pb::ListReplicasRequest {})
        .await
        .expect("ListReplicas")
        .into_inner()
        .generation;
    w.wait_metric(
        "weir_control_routing_version",
        &[],
        listed as f64,
        Duration::from_secs(30),
    )
    .await;
    listed
}

/// `weir ctl set-weight podinfo --canary N`.
fn step(w: &Weir, canary: u32) {
    let (code, out, err) = ctl(
        w,
        &["set-weight", "podinfo", "--canary", &canary.to_string()],
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// Waits until the replica serves the canary at `weight` and the controller lists it
/// synced at the current version.
async fn synced_at(c: &Weir, replica: &Weir, weight: u32) {
    let want = format!("\"canary\":{weight}");
    wait_for(
        &format!("the replica at {weight}"),
        Duration::from_secs(30),
        || async {
            let config = get_text(&replica.admin_url("/config")).await;
            let config: serde_json::Value = serde_json::from_str(&config).expect("json");
            let list = ControlClient::new(channel(c).await)
                .list_replicas(pb::ListReplicasRequest {})
                .await
                .expect("ListReplicas")
                .into_inner();
            config.to_string().contains(&want)
                && list
                    .replicas
                    .iter()
                    .any(|r| r.state == "synced" && r.generation == list.generation)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_version_only_grows_across_a_controller_restart() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let dir = temp_dir("restart-version");
    let control = format!("127.0.0.1:{}", closed_port());
    let config = dir.join("weir.yaml");
    let services = podinfo_yaml(
        &primary.endpoint(),
        &canary.endpoint(),
        "",
        "    routes:\n      - split: { primary: 90, canary: 10 }\n",
    );
    let yaml = format!(
        "admin: 127.0.0.1:0\ncontrol: {control}\nstate: {}\n{services}",
        dir.join("state.json").display()
    );
    std::fs::write(&config, yaml).expect("write config");

    // No replica yet: nothing but the state file can carry the version over.
    let mut c = controller(&config);
    step(&c, 20);
    let before = routing_version(&c).await;
    terminate(&mut c).await;
    let mut c = controller(&config);
    let after = routing_version(&c).await;
    assert!(
        after >= before,
        "{after} after the restart, {before} before"
    );
    step(&c, 30);
    let next = routing_version(&c).await;
    assert!(
        next > after,
        "a step after the restart: {next}, not above {after}"
    );

    // A replica connected across a restart keeps serving, and versions keep growing.
    let replica_config = dir.join("replica.yaml");
    std::fs::write(
        &replica_config,
        format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncontroller: {{ address: http://{control} }}\n"),
    )
    .expect("write replica config");
    let replica = Weir::spawn_args(&["proxy", "--name", "r0"], replica_config);
    synced_at(&c, &replica, 30).await;
    let load = Load::start(replica.url("/"), 50, Duration::from_secs(120));
    step(&c, 40);
    synced_at(&c, &replica, 40).await;
    let before = routing_version(&c).await;
    terminate(&mut c).await;
    for _ in 0..20 {
        assert_eq!(get(&replica.url("/"), &[]).await.status, 200);
    }
    let c = controller(&config);
    let after = routing_version(&c).await;
    assert!(
        after >= before,
        "{after} after the restart, {before} before"
    );
    synced_at(&c, &replica, 40).await;
    step(&c, 50);
    synced_at(&c, &replica, 50).await;
    let next = routing_version(&c).await;
    assert!(
        next > after,
        "a step after the restart: {next}, not above {after}"
    );
    assert!(served_by(&replica, 40, &[])
        .await
        .iter()
        .any(|s| s == "canary"));
    assert_eq!(
        load.failed.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request through the replica failed across the restart"
    );
}
