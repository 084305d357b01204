//! Restarts mid-rollout: `kill -9` resumes at the same step from the state file;
//! `revertOnRestart` sends traffic back to the primary.

mod support;

use std::time::Duration;

use support::control::*;
use support::*;

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
    wait_phase(&mut c, "Initialized", Duration::from_secs(10)).await;
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(60));
    start(&mut c, "2", canary).await;
    wait_weight(&c, weight, Duration::from_secs(20)).await;
    weir.signal("KILL");
    let _ = weir.child.wait();
    (path, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_resumes_at_the_same_step() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let analysis = FAST
        .replace("interval: 1s", "interval: 2s")
        .replace("maxWeight: 30", "maxWeight: 60");
    let (path, state) = kill_9_at_weight("resume", &analysis, &v1, &v2, 20).await;
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state file")).expect("json");
    let weight = saved["services"]["podinfo"]["status"]["canary_weight"]
        .as_u64()
        .expect("saved weight");
    assert_eq!(
        saved["services"]["podinfo"]["status"]["phase"],
        "Progressing"
    );
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
