//! The controller end to end: the real binary, real upstreams, a real gRPC client.

mod support;

use std::time::Duration;

use support::control::*;
use support::*;
use weir_protos::control as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_is_promoted_and_takes_over_the_primary() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = temp_dir("promote");
    let phases = dir.join("post-rollout.txt");
    let analysis = format!(
        "{FAST}\n      webhooks:\n        - name: note\n          type: post-rollout\n          exec: [\"sh\", \"-c\", \"echo $WEIR_PHASE >> {}\"]",
        phases.display()
    );
    let weir = Weir::start(&config(&v1, &analysis, ""));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(30)).await;
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(60));
    start(&mut c, "2", &v2).await;
    let done = wait_phase(&mut c, "Succeeded", Duration::from_secs(40)).await;
    assert_eq!(done.primary_revision, "2");
    assert_eq!(done.canary_weight, 0);
    assert!(
        served_by(&weir, 10, &[]).await.iter().all(|s| s == "v2"),
        "the primary now runs v2"
    );
    let logs = weir.wait_log("Promotion completed! All traffic to the new primary of podinfo.test");
    for line in [
        "New revision detected! Starting canary analysis for podinfo.test",
        "Starting canary analysis for podinfo.test",
        "Advance podinfo.test canary weight 10",
        "Advance podinfo.test canary weight 30",
        "Promoting podinfo.test: the canary's endpoints and revision become the primary's",
        "Promotion completed! All traffic to the new primary of podinfo.test",
    ] {
        assert!(logs.contains(line), "missing {line:?} in logs:\n{logs}");
    }
    assert_eq!(
        std::fs::read_to_string(&phases)
            .expect("post-rollout hook ran")
            .trim(),
        "Succeeded"
    );
    let labels = [("name", "podinfo"), ("namespace", "test")];
    assert_eq!(weir.metric("flagger_canary_status", &labels).await, 1.0);
    assert_eq!(
        weir.metric(
            "flagger_canary_successes_total",
            &[
                ("name", "podinfo"),
                ("deployment_strategy", "canary"),
                ("analysis_status", "completed")
            ]
        )
        .await,
        1.0
    );
    assert_eq!(
        weir.metric("flagger_canary_weight", &[("workload", "podinfo-primary")])
            .await,
        100.0
    );
    assert!(
        weir.metric(
            "flagger_canary_metric_analysis",
            &[("metric", "request-success-rate")]
        )
        .await
            >= 99.0
    );
    assert_eq!(
        weir.metric(
            "weir_rollout_duration_seconds_count",
            &[("result", "promoted")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_answering_only_5xx_is_rolled_back_within_seconds_and_alerts_fire() {
    let v1 = Upstream::start("v1").await;
    let bad = Upstream::start_with("bad", Behaviour::Status(500)).await;
    let alerts = Capture::start().await;
    let analysis = format!(
        "{FAST}\n      alerts:\n        - name: on-call\n          severity: error\n          providerRef: {{ name: on-call }}"
    );
    let providers = format!(
        "alertProviders:\n  - name: on-call\n    type: webhook\n    address: {}",
        alerts.url()
    );
    let weir = Weir::start(&config(&v1, &analysis, &providers));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(30)).await;
    let load = Load::start(weir.url("/"), 200, Duration::from_secs(60));
    start(&mut c, "2", &bad).await;
    let failed = wait_phase(&mut c, "Failed", Duration::from_secs(20)).await;
    assert_eq!(failed.canary_weight, 0);
    let failed_requests = load.failed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        failed_requests < 100,
        "the fast-fail guard bounds the damage: {failed_requests} failed"
    );
    assert!(served_by(&weir, 10, &[]).await.iter().all(|s| s == "v1"));
    weir.wait_log("Rolling back podinfo.test fast-fail: canary 5xx");
    weir.wait_log("Canary failed! All traffic back to the primary of podinfo.test");
    assert_eq!(
        weir.metric("flagger_canary_status", &[("name", "podinfo")])
            .await,
        2.0
    );
    assert_eq!(
        weir.metric("flagger_canary_failures_total", &[("name", "podinfo")])
            .await,
        1.0
    );
    wait_for("the error alert", Duration::from_secs(30), || async {
        alerts.bodies().iter().any(|b| {
            b["severity"] == "error"
                && b["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Fast-fail: canary 5xx")
        })
    })
    .await;
    assert!(
        alerts.bodies().iter().all(|b| b["severity"] == "error"),
        "an error-severity alert gets no info messages: {:?}",
        alerts.bodies()
    );
    // Starting the same revision again needs an explicit retry.
    let again = c
        .start_rollout(pb::StartRolloutRequest {
            service: "podinfo".into(),
            revision: "2".into(),
            canary_endpoints: vec![],
        })
        .await
        .expect_err("the rolled-back revision is refused");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(
        again.message().contains("weir ctl retry podinfo"),
        "{}",
        again.message()
    );
    c.retry(pb::ServiceRef {
        service: "podinfo".into(),
    })
    .await
    .expect("retry");
    wait_phase(&mut c, "Progressing", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_canary_is_rolled_back_on_request_duration() {
    let v1 = Upstream::start("v1").await;
    let slow = Upstream::start_with("slow", Behaviour::Delay(400)).await;
    let weir = Weir::start(&config(&v1, FAST, ""));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(30)).await;
    let _load = Load::start(weir.url("/"), 150, Duration::from_secs(60));
    start(&mut c, "2", &slow).await;
    wait_phase(&mut c, "Failed", Duration::from_secs(30)).await;
    weir.wait_log("Halt podinfo.test advancement request duration 4");
    weir.wait_log("Rolling back podinfo.test failed checks threshold reached 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_test_sends_only_matching_users_to_the_canary() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let analysis = r#"      interval: 1s
      threshold: 2
      iterations: 4
      minRequests: 5
      match:
        - headers:
            x-canary: { exact: insider }
      metrics:
        - name: request-success-rate
          thresholdRange: { min: 99 }
          interval: 2s
      webhooks:
        - name: hold
          type: confirm-promotion"#;
    let weir = Weir::start(&config(&v1, analysis, ""));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(30)).await;
    start(&mut c, "2", &v2).await;
    // Keep the insiders' traffic flowing so the checks have samples.
    let feeder = tokio::spawn({
        let url = weir.url("/");
        async move {
            for _ in 0..2000 {
                let _ = get(&url, &[("x-canary", "insider")]).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    wait_for("the A/B routes", Duration::from_secs(15), || {
        let mut c = c.clone();
        async move { status(&mut c).await.iterations >= 1 }
    })
    .await;
    let plain = served_by(&weir, 20, &[]).await;
    assert!(plain.iter().all(|s| s == "v1"), "{plain:?}");
    let matched = served_by(&weir, 20, &[("x-canary", "insider")]).await;
    assert!(matched.iter().all(|s| s == "v2"), "{matched:?}");
    let waiting = wait_phase(&mut c, "WaitingPromotion", Duration::from_secs(20)).await;
    assert_eq!(waiting.waiting_gate, "confirm-promotion");
    c.approve(pb::GateRequest {
        service: "podinfo".into(),
        gate: String::new(),
    })
    .await
    .expect("approve");
    wait_phase(&mut c, "Succeeded", Duration::from_secs(15)).await;
    feeder.abort();
    assert!(served_by(&weir, 10, &[]).await.iter().all(|s| s == "v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_abort_promote_and_clear_refusals() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let slow = FAST.replace("interval: 1s", "interval: 2s");
    let weir = Weir::start(&config(&v1, &slow, ""));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(30)).await;
    // Bad requests change nothing.
    let err = c
        .get_status(pb::ServiceRef {
            service: "nope".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("unknown service \"nope\""));
    let err = c
        .start_rollout(pb::StartRolloutRequest {
            service: "podinfo".into(),
            revision: "2".into(),
            canary_endpoints: vec!["not an address".into()],
        })
        .await
        .expect_err("bad endpoint");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("endpoints"), "{}", err.message());
    assert_eq!(status(&mut c).await.canary_revision, "1", "nothing changed");
    let err = c
        .apply_spec(pb::ApplySpecRequest {
            service: "podinfo".into(),
            spec: Some(pb::apply_spec_request::Spec::Text(
                "interval: 1s\nthreshold: 1\nstepWeight: 5\niterations: 3\n".into(),
            )),
        })
        .await
        .expect_err("two progression modes");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err
        .message()
        .contains("exactly one of stepWeight, stepWeights or iterations"));
    let err = c
        .resume(pb::ServiceRef {
            service: "podinfo".into(),
        })
        .await
        .expect_err("not paused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // Abort mid-rollout.
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(60));
    start(&mut c, "2", &v2).await;
    wait_weight(&c, 10, Duration::from_secs(15)).await;
    c.pause(pb::ServiceRef {
        service: "podinfo".into(),
    })
    .await
    .expect("pause");
    let set = c
        .set_weight(pb::SetWeightRequest {
            service: "podinfo".into(),
            canary_weight: 25,
            force: false,
            weights: Default::default(),
        })
        .await
        .expect("set weight")
        .into_inner();
    assert_eq!(set.canary_weight, 25);
    let config_json: serde_json::Value =
        serde_json::from_str(&get_text(&weir.admin_url("/config")).await).expect("json");
    assert!(
        config_json.to_string().contains("\"canary\":25"),
        "{config_json}"
    );
    let aborted = c
        .abort(pb::ServiceRef {
            service: "podinfo".into(),
        })
        .await
        .expect("abort")
        .into_inner();
    assert_eq!(
        (aborted.phase.as_str(), aborted.canary_weight),
        ("Failed", 0)
    );
    weir.wait_log("Rolling back podinfo.test manual abort");

    // Promote skips the rest.
    start(&mut c, "3", &v2).await;
    wait_phase(&mut c, "Progressing", Duration::from_secs(30)).await;
    let promoted = c
        .promote(pb::ServiceRef {
            service: "podinfo".into(),
        })
        .await
        .expect("promote")
        .into_inner();
    assert_eq!(promoted.phase, "Promoting");
    let done = wait_phase(&mut c, "Succeeded", Duration::from_secs(15)).await;
    assert_eq!(done.primary_revision, "3");
    let err = c
        .abort(pb::ServiceRef {
            service: "podinfo".into(),
        })
        .await
        .expect_err("nothing to abort");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

/// `weir ctl start podinfo --revision REV --canary-endpoint EP --wait`, from a test runtime.
fn ctl_start_wait(weir: &Weir, revision: &str, endpoint: &str) -> (i32, String, String) {
    tokio::task::block_in_place(|| {
        ctl(
            weir,
            &[
                "start",
                "podinfo",
                "--revision",
                revision,
                "--canary-endpoint",
                endpoint,
                "--wait",
                "--timeout",
                "60",
            ],
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_ctl_start_wait_exit_codes_and_status_table() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let bad = Upstream::start_with("bad", Behaviour::Status(503)).await;
    let weir = Weir::start(&config(&v1, FAST, ""));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(30)).await;
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(90));
    let (code, out, err) = ctl_start_wait(&weir, "2", &v2.endpoint());
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("Advance podinfo.test canary weight 10"),
        "{out}"
    );
    assert!(out.contains("podinfo: revision 2 promoted"), "{out}");
    let (code, out, _) = ctl_start_wait(&weir, "3", &bad.endpoint());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("podinfo: revision 3 failed and was rolled back"),
        "{out}"
    );
    let (code, out, _) = ctl(&weir, &["status"]);
    assert_eq!(code, 0);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "WEIGHT",
            "FAILEDCHECKS",
            "LASTTRANSITIONTIME",
            "VERSIONS"
        ]
    );
    let line = lines.next().unwrap_or("");
    let row: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&row[..4], ["podinfo", "Failed", "0", "0"]);
    assert!(row[4].ends_with('Z'), "{row:?}");
    // Which revision each version serves: the promoted 2 is the primary's now.
    assert!(line.ends_with("primary 100 (2), canary 0 (3)"), "{line}");
    let (code, _, err) = ctl(&weir, &["status", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown service \"nope\""), "{err}");
    let (code, _, err) = ctl(&weir, &["promote", "podinfo"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("only a rollout in Waiting, Progressing or WaitingPromotion can be promoted"),
        "{err}"
    );
    let (code, _, err) = ctl_at(&format!("127.0.0.1:{}", closed_port()), &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach weir's control API"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_canary_revision_starts_a_rollout_and_a_bad_analysis_changes_nothing() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let weir = Weir::start(&config(&v1, FAST, ""));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(30)).await;
    let original = std::fs::read_to_string(&weir.config_path).expect("config");
    let primary_line = format!(
        "primary: {{ endpoints: [\"{}\"], revision: \"1\" }}",
        v1.endpoint()
    );
    let canary_line = format!(
        "canary: {{ endpoints: [\"{}\"], revision: \"1\" }}",
        v1.endpoint()
    );
    assert!(original.contains(&canary_line));
    let next = original.replace(
        &canary_line,
        &format!(
            "canary: {{ endpoints: [\"{}\"], revision: \"2\" }}",
            v2.endpoint()
        ),
    );
    assert!(next.contains(&primary_line));
    std::fs::write(&weir.config_path, &next).expect("write");
    weir.signal("HUP");
    let s = wait_phase(&mut c, "Progressing", Duration::from_secs(30)).await;
    assert_eq!(s.canary_revision, "2");
    // The reload is rejected.
    weir.reload_rejected(&next.replace("stepWeight: 10", "stepWeight: 500"))
        .await;
    weir.wait_log("services[0].analysis.stepWeight: 500 is not between 1 and 100");
    let s = status(&mut c).await;
    assert_eq!(
        (s.phase.as_str(), s.canary_revision.as_str()),
        ("Progressing", "2")
    );
}

/// A rollout started before the controller's first wake-up (held here by a suspended
/// analysis) is a change, not the revision the wake-up finds deployed: it runs once the
/// analysis goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_before_the_first_wake_up_still_starts_the_rollout() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let weir = Weir::start(&config(&v1, &format!("      suspend: true\n{FAST}"), ""));
    let mut c = client(&weir).await;
    let s = start(&mut c, "2", &v2).await;
    assert_eq!(
        (s.phase.as_str(), s.canary_revision.as_str()),
        ("Initializing", "2")
    );
    let manifest = "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: { name: podinfo, namespace: test }\nspec:\n  analysis:\n    interval: 1s\n    threshold: 2\n    maxWeight: 30\n    stepWeight: 10\n";
    c.apply_spec(pb::ApplySpecRequest {
        service: "podinfo".into(),
        spec: Some(pb::apply_spec_request::Spec::Text(manifest.into())),
    })
    .await
    .expect("ApplySpec");
    let s = wait_phase(&mut c, "Progressing", Duration::from_secs(60)).await;
    assert_eq!(s.canary_revision, "2");
}
