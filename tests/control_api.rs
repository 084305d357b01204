//! The control API as a client sees it: gRPC health and reflection, ApplySpec with typed
//! messages and Flagger manifests, `weir check` naming analysis errors, and a refused
//! action naming the action and the service.

mod support;

use std::time::Duration;

use support::control::*;
use support::*;
use weir_protos::control as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_service_reports_serving() {
    let v1 = Upstream::start("v1").await;
    let weir = Weir::start(&config(&v1, FAST, ""));
    let channel = channel(&weir).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "weir.control.v1.Control".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut c = client(&weir).await;
    let list = c
        .list_rollouts(pb::ListRolloutsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.rollouts.len(), 1);
    assert_eq!(list.rollouts[0].service, "podinfo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_spec_takes_typed_messages_and_flagger_manifests() {
    let v1 = Upstream::start("v1").await;
    let weir = Weir::start(&config(&v1, FAST, ""));
    let mut c = client(&weir).await;
    let typed = pb::AnalysisSpec {
        interval: "5s".into(),
        threshold: 7,
        step_weights: vec![1, 20, 60],
        ..Default::default()
    };
    let s = c
        .apply_spec(pb::ApplySpecRequest {
            service: "podinfo".into(),
            spec: Some(pb::apply_spec_request::Spec::Typed(typed)),
        })
        .await
        .expect("typed spec")
        .into_inner();
    assert_eq!((s.threshold, s.max_weight), (7, 60));
    let manifest = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: { name: podinfo, namespace: test }
spec:
  analysis:
    interval: 1m
    threshold: 3
    maxWeight: 40
    stepWeight: 10
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        interval: 1m
"#;
    let s = c
        .apply_spec(pb::ApplySpecRequest {
            service: "podinfo".into(),
            spec: Some(pb::apply_spec_request::Spec::Text(manifest.into())),
        })
        .await
        .expect("manifest spec")
        .into_inner();
    assert_eq!((s.threshold, s.max_weight), (3, 40));
}

#[test]
fn weir_check_names_analysis_errors() {
    let (code, err) = weir_check(
        "services:\n  - name: podinfo\n    versions:\n      primary: { endpoints: [\"127.0.0.1:1\"] }\n      canary: { endpoints: [\"127.0.0.1:2\"] }\n    analysis:\n      interval: 1m\n      threshold: 5\n      stepWeight: 5\n      iterations: 3\n      metrics:\n        - name: request-success-rate\n          thresholdRange: { min: 99 }\n          query: up\n",
    );
    assert_eq!(code, 1);
    assert!(err.contains("services[0].analysis: exactly one of stepWeight, stepWeights or iterations must be set"), "{err}");
    assert!(
        err.contains(
            "services[0].analysis.metrics[0].query: an inline query needs `metricsServer:`"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_control_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let v1 = Upstream::start("v1").await;
    let weir = Weir::start(&config(&v1, FAST, ""));
    let channel = channel(&weir).await;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies
        .message()
        .await
        .expect("a reply")
        .expect("not empty");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"weir.control.v1.Control".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_action_names_the_action_and_the_service() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    // podinfo under analysis, and `web` (no analysis) split 90/10.
    let web = format!(
        "  - name: web\n    hosts: [web]\n    versions:\n      primary: {{ endpoints: [\"{}\"] }}\n      canary: {{ endpoints: [\"{}\"] }}\n    routes:\n      - split: {{ primary: 90, canary: 10 }}\n",
        v1.endpoint(),
        v2.endpoint()
    );
    let weir = Weir::start(&format!("{}{web}", config(&v1, FAST, "")));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(30)).await;
    let refused = |args: &[&str], action: &str, service: &str| {
        let (code, out, err) = ctl(&weir, args);
        assert_ne!(code, 0, "{args:?} was accepted: {out}");
        assert!(
            err.contains(action) && err.contains(service) && !err.contains("services["),
            "{args:?}: the refusal names {action} and {service}, not a field of weir.yaml: {err}"
        );
    };
    // Weights no split can hold.
    refused(
        &[
            "set-weight",
            "web",
            "--weight",
            "primary=4294967295",
            "--weight",
            "canary=1",
        ],
        "SetWeight",
        "web",
    );
    // A weight out of range, on a static service and on one under analysis; a version
    // the service does not have.
    refused(
        &["set-weight", "web", "--canary", "150"],
        "SetWeight",
        "web",
    );
    refused(
        &["set-weight", "podinfo", "--canary", "150"],
        "SetWeight",
        "podinfo",
    );
    refused(
        &["set-weight", "web", "--weight", "ghost=10"],
        "SetWeight",
        "web",
    );
    // A canary endpoint that is no address.
    refused(
        &[
            "start",
            "podinfo",
            "--revision",
            "2",
            "--canary-endpoint",
            "not an address",
        ],
        "StartRollout",
        "podinfo",
    );
    // Neither changed anything.
    assert_eq!(status_of(&mut c, "web").await.canary_weight, 10);
    let s = status(&mut c).await;
    assert_eq!(
        (s.phase.as_str(), s.canary_revision.as_str()),
        ("Initialized", "1")
    );
}
