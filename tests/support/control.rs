//! Helpers for driving weir's controller: a service with an analysis, the gRPC client,
//! waiting for phases and weights, starting rollouts, `weir ctl`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tonic::transport::Channel;
use weir_protos::control as pb;
use weir_protos::control::control_client::ControlClient;

use super::*;

/// A service with an analysis; `canary` starts at the primary's endpoint and revision, so
/// nothing rolls out until a test says so.
pub fn config(primary: &Upstream, analysis: &str, extra: &str) -> String {
    let p = primary.endpoint();
    format!(
        "control: 127.0.0.1:0\n{extra}\n{}",
        podinfo_services(&p, &p, analysis)
    )
}

/// `services:` with podinfo (namespace test, every host, port 9898), its primary and canary
/// at revision 1 on these endpoints, and `analysis` (indented six spaces).
pub fn podinfo_services(primary: &str, canary: &str, analysis: &str) -> String {
    podinfo_yaml(
        primary,
        canary,
        ", revision: \"1\"",
        &format!("    analysis:\n{analysis}\n"),
    )
}

/// An analysis of 1 s steps to 30% with the fast-fail guard off (only the checks can roll
/// it back), `step` a step, `min_requests` per window, and `metrics` (its list items,
/// indented eight spaces).
pub fn checks_only(step: u32, min_requests: u32, metrics: &str) -> String {
    format!(
        "      interval: 1s\n      threshold: 2\n      maxWeight: 30\n      stepWeight: {step}\n      minRequests: {min_requests}\n      fastFail: {{ disabled: true }}\n      metrics:\n{metrics}"
    )
}

/// Writes weir.yaml for [`config`] with `analysis` and a state file, in a fresh directory
/// named after `tag`: the config and state file paths.
pub fn config_with_state(tag: &str, primary: &Upstream, analysis: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let state = dir.join("state.json");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{}",
        config(primary, analysis, &format!("state: {}", state.display()))
    );
    let path = dir.join("weir.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (path, state)
}

pub const FAST: &str = r#"      interval: 1s
      threshold: 2
      maxWeight: 30
      stepWeight: 10
      minRequests: 10
      metrics:
        - name: request-success-rate
          thresholdRange: { min: 99 }
          interval: 2s
        - name: request-duration
          thresholdRange: { max: 200 }
          interval: 2s"#;

/// A connected channel to weir's control listener.
pub async fn channel(weir: &Weir) -> Channel {
    Channel::from_shared(weir.control_url())
        .expect("control url")
        .connect()
        .await
        .expect("connect to the control API")
}

pub async fn client(weir: &Weir) -> ControlClient<Channel> {
    ControlClient::new(channel(weir).await)
}

pub async fn status(c: &mut ControlClient<Channel>) -> pb::RolloutStatus {
    status_of(c, "podinfo").await
}

/// The status of `service`.
pub async fn status_of(c: &mut ControlClient<Channel>, service: &str) -> pb::RolloutStatus {
    c.get_status(pb::ServiceRef {
        service: service.into(),
    })
    .await
    .expect("GetStatus")
    .into_inner()
}

/// Waits until the canary weight reaches at least `weight`.
pub async fn wait_weight(c: &ControlClient<Channel>, weight: u32, limit: Duration) {
    wait_for(&format!("weight {weight}"), limit, || {
        let mut c = c.clone();
        async move { status(&mut c).await.canary_weight >= weight }
    })
    .await;
}

pub async fn wait_phase(
    c: &mut ControlClient<Channel>,
    phase: &str,
    limit: Duration,
) -> pb::RolloutStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let s = status(c).await;
        if s.phase == phase {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for phase {phase}; status {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn start(
    c: &mut ControlClient<Channel>,
    revision: &str,
    canary: &Upstream,
) -> pb::RolloutStatus {
    c.start_rollout(pb::StartRolloutRequest {
        service: "podinfo".into(),
        revision: revision.into(),
        canary_endpoints: vec![canary.endpoint()],
    })
    .await
    .expect("StartRollout")
    .into_inner()
}

/// Who answers `n` plain requests (by `x-served-by`).
pub async fn served_by(weir: &Weir, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let got = get(&weir.url("/"), headers).await;
        out.push(
            got.headers
                .get("x-served-by")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string(),
        );
    }
    out
}

pub fn ctl(weir: &Weir, args: &[&str]) -> (i32, String, String) {
    ctl_at(weir.control_url().trim_start_matches("http://"), args)
}

/// `weir ctl --control ADDR ARGS...`: exit code, stdout, stderr.
pub fn ctl_at(control: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--control", control];
    all.extend_from_slice(args);
    ctl_env(&all, &[])
}

/// `weir ctl ARGS...` with the variables in `env` set and the caller's
/// `WEIR_CONTROL_TOKEN` removed (pass a token in `env`): exit code, stdout, stderr.
pub fn ctl_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(weir_bin())
        .arg("ctl")
        .args(args)
        .env_remove("WEIR_CONTROL_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run weir ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `weir ctl` arguments starting revision 2 of podinfo on `endpoint`.
pub fn start_args(endpoint: &str) -> [&str; 6] {
    [
        "start",
        "podinfo",
        "--revision",
        "2",
        "--canary-endpoint",
        endpoint,
    ]
}
