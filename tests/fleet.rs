//! Scale-out end to end: `weir control` and `weir proxy --controller` replicas as real
//! processes on loopback, load spread over the replicas, rollouts judged on the merged
//! measurements; replicas and the controller killed with SIGKILL mid-rollout.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::control::*;
use support::*;
use tonic::transport::Channel;
use weir_protos::control as pb;
use weir_protos::control::control_client::ControlClient;

/// A free loopback port (bound, then released) for a controller that must come back on
/// the same address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Cluster {
    dir: PathBuf,
    config: PathBuf,
    control: String,
    controller: Weir,
    replicas: Vec<Weir>,
}

impl Cluster {
    /// `weir control` on `services` (with a state file) and `n` replicas, all ready.
    async fn start(tag: &str, services: &str, n: usize) -> Cluster {
        let dir = temp_dir(tag);
        let control = format!("127.0.0.1:{}", free_port());
        let config = dir.join("weir.yaml");
        let yaml = format!(
            "admin: 127.0.0.1:0\ncontrol: {control}\nstate: {}\n{services}",
            dir.join("state.json").display()
        );
        std::fs::write(&config, yaml).expect("write config");
        let controller = Weir::spawn_args(&["control"], config.clone());
        let mut cluster = Cluster {
            dir,
            config,
            control,
            controller,
            replicas: Vec::new(),
        };
        for i in 0..n {
            let r = cluster.replica(&format!("r{i}"));
            wait_ready(&r, true).await;
            cluster.replicas.push(r);
        }
        cluster
    }

    /// A new replica (not waited for).
    fn replica(&self, name: &str) -> Weir {
        let path = self.dir.join(format!("{name}.yaml"));
        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncontroller: {{ address: http://{} }}\n",
            self.control
        );
        std::fs::write(&path, yaml).expect("write replica config");
        Weir::spawn_args(&["proxy", "--name", name], path)
    }

    async fn client(&self) -> ControlClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.control))
            .expect("control url")
            .connect()
            .await
            .expect("connect to the controller");
        ControlClient::new(channel)
    }

    /// Kills the controller with SIGKILL.
    fn kill_controller(&mut self) {
        let _ = self.controller.child.kill();
        let _ = self.controller.child.wait();
    }

    /// Starts the controller again on the same file and address.
    fn start_controller(&mut self) {
        self.controller = Weir::spawn_args(&["control"], self.config.clone());
    }

    /// Load over every replica, `rps` each.
    fn load(&self, rps: u64, limit: Duration) -> Vec<Load> {
        self.replicas
            .iter()
            .map(|r| Load::start(r.url("/"), rps, limit))
            .collect()
    }
}

/// Waits until `/ready` answers 200 (`true`) or 503 (`false`).
async fn wait_ready(w: &Weir, ready: bool) {
    let want = if ready { 200 } else { 503 };
    wait_for(
        &format!("/ready {want}"),
        Duration::from_secs(30),
        || async { get(&w.admin_url("/ready"), &[]).await.status.as_u16() == want },
    )
    .await;
}

fn podinfo(primary: &Upstream, canary: &Upstream, analysis: &str) -> String {
    podinfo_services(&primary.endpoint(), &canary.endpoint(), analysis)
}

const SERVED: &str = "weir_requests_total";

async fn requests(w: &Weir, version: &str) -> f64 {
    w.metric(
        SERVED,
        &[
            ("service", "podinfo"),
            ("version", version),
            ("mirrored", "false"),
        ],
    )
    .await
}

/// The controller's count of a version equals the sum of the replicas' (once every
/// report has arrived).
async fn merged_exactly(c: &Cluster, version: &str) {
    wait_for(
        &format!("controller's {version} count = the replicas' sum"),
        Duration::from_secs(15),
        || async {
            let mut sum = 0.0;
            for r in &c.replicas {
                sum += requests(r, version).await;
            }
            sum > 0.0 && requests(&c.controller, version).await == sum
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_canary_is_promoted_with_traffic_through_every_replica() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let c = Cluster::start("fleet-promote", &podinfo(&primary, &primary, FAST), 3).await;
    let mut client = c.client().await;
    let loads = c.load(40, Duration::from_secs(120));
    start(&mut client, "2", &canary).await;
    let s = wait_phase(&mut client, "Succeeded", Duration::from_secs(120)).await;
    assert_eq!(s.primary_revision, "2");
    // The promotion's last routing reaches every replica on its own time.
    wait_for("every replica synced", Duration::from_secs(60), || {
        let mut client = client.clone();
        async move {
            status(&mut client)
                .await
                .replicas
                .is_some_and(|r| (r.synced, r.live) == (3, 3))
        }
    })
    .await;
    let summary = status(&mut client)
        .await
        .replicas
        .expect("status shows the replicas");
    assert!(summary.generation > 1, "{summary:?}");
    for r in &c.replicas {
        // The canary served users through this replica during the analysis.
        assert!(
            requests(r, "canary").await > 0.0,
            "replica {} never served the canary",
            r.url("/")
        );
    }
    drop(loads);
    merged_exactly(&c, "canary").await;
    merged_exactly(&c, "primary").await;
    let (code, out, err) = ctl_at(&c.control, &["replicas"]);
    assert_eq!(code, 0, "{err}");
    for name in ["r0", "r1", "r2"] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().take(2).eq(["weir", name]))
            .unwrap_or_default();
        assert!(line.contains("synced"), "{name} in\n{out}");
    }
    let (code, out, _) = ctl_at(&c.control, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("REPLICAS") && out.contains("3/3 at version"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_spread_so_no_replica_reaches_min_requests_still_roll_back() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start_with("canary", Behaviour::Status(500)).await;
    // 30% of 3 x 12 req/s: ~3.6 canary req/s per replica, ~14 per 4 s window, below
    // minRequests 30; merged ~43 per window, above it. The guard is off: only the
    // merged window check can roll this back.
    let analysis = checks_only(
        30,
        30,
        "        - name: request-success-rate\n          thresholdRange: { min: 99 }\n          interval: 4s",
    );
    let c = Cluster::start("fleet-spread", &podinfo(&primary, &primary, &analysis), 3).await;
    let mut client = c.client().await;
    let _loads = c.load(12, Duration::from_secs(120));
    start(&mut client, "2", &canary).await;
    let s = wait_phase(&mut client, "Failed", Duration::from_secs(90)).await;
    assert_eq!(s.primary_revision, "1");
    for r in &c.replicas {
        let errors = r
            .metric(SERVED, &[("version", "canary"), ("code_class", "5xx")])
            .await;
        assert!(errors > 0.0, "each replica saw some of the canary's errors");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn merged_latency_is_the_histogram_of_every_request() {
    let primary = Upstream::start("primary").await;
    let services = format!(
        "services:\n  - name: podinfo\n    versions:\n      primary: {{ endpoints: [\"{}\"] }}\n",
        primary.endpoint()
    );
    let c = Cluster::start("fleet-p99", &services, 3).await;
    // 100 quick requests through each replica; 2 slow ones through the last: that
    // replica's own p99 is slow (2%), the union's is quick (2 of 302, under 1%).
    for (i, r) in c.replicas.iter().enumerate() {
        for _ in 0..100 {
            assert_eq!(get(&r.url("/slow/20"), &[]).await.status, 200);
        }
        if i == 2 {
            for _ in 0..2 {
                assert_eq!(get(&r.url("/slow/1500"), &[]).await.status, 200);
            }
        }
    }
    merged_exactly(&c, "primary").await;
    let bucket = "weir_request_duration_seconds_bucket";
    for le in ["0.025", "0.05", "0.1", "1", "2.5", "+Inf"] {
        let labels = [("version", "primary"), ("mirrored", "false"), ("le", le)];
        let mut sum = 0.0;
        for r in &c.replicas {
            sum += r.metric(bucket, &labels).await;
        }
        assert_eq!(c.controller.metric(bucket, &labels).await, sum, "le={le}");
    }
    let slow = c
        .controller
        .metric(bucket, &[("version", "primary"), ("le", "+Inf")])
        .await
        - c.controller
            .metric(bucket, &[("version", "primary"), ("le", "1")])
            .await;
    assert_eq!(slow, 2.0, "both slow requests are in the merged histogram");
    // The p99 the controller judges by: the union's (quick), not the slow replica's.
    let mut client = c.client().await;
    let reply = client
        .list_replicas(pb::ListReplicasRequest {})
        .await
        .expect("ListReplicas")
        .into_inner();
    assert_eq!(reply.replicas.len(), 3);
    let text = get_text(&c.controller.admin_url("/metrics")).await;
    let count = metric_value(
        &text,
        "weir_request_duration_seconds_count",
        &[("version", "primary")],
    );
    let quick = metric_value(&text, bucket, &[("version", "primary"), ("le", "1")]);
    assert_eq!(count, 302.0);
    assert!(
        quick / count >= 0.99,
        "p99 of all requests is under 1 s: {quick}/{count}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_or_added_mid_rollout_leaves_the_rollout_going() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let mut c = Cluster::start("fleet-churn", &podinfo(&primary, &primary, FAST), 3).await;
    let mut client = c.client().await;
    let loads = c.load(30, Duration::from_secs(120));
    start(&mut client, "2", &canary).await;
    wait_weight(&client, 10, Duration::from_secs(60)).await;
    // SIGKILL one replica mid-rollout.
    let mut gone = c.replicas.remove(2);
    let _ = gone.child.kill();
    let _ = gone.child.wait();
    // Freeze the rollout, so the weight a new replica must serve stands still.
    let (code, _, err) = ctl_at(&c.control, &["pause", "podinfo"]);
    assert_eq!(code, 0, "{err}");
    let weight = status(&mut client).await.canary_weight;
    let late = c.replica("r3");
    wait_ready(&late, true).await;
    let config: serde_json::Value =
        serde_json::from_str(&get_text(&late.admin_url("/config")).await).expect("json");
    let text = config.to_string();
    assert!(
        text.contains(&format!("\"canary\":{weight}")),
        "the new replica serves weight {weight} as soon as it is ready: {text}"
    );
    let list = ctl_at(&c.control, &["replicas"]).1;
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().take(2).eq(["weir", "r2"]) && l.contains("disconnected")),
        "{list}"
    );
    c.replicas.push(late);
    let _more = Load::start(c.replicas[2].url("/"), 30, Duration::from_secs(120));
    let (code, _, err) = ctl_at(&c.control, &["resume", "podinfo"]);
    assert_eq!(code, 0, "{err}");
    let s = wait_phase(&mut client, "Succeeded", Duration::from_secs(120)).await;
    let summary = s.replicas.expect("replicas");
    assert_eq!((summary.synced, summary.live), (3, 3), "{summary:?}");
    for l in &loads[..2] {
        assert_eq!(l.failed.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_stops_on_sigterm_with_replicas_connected() {
    let primary = Upstream::start("primary").await;
    let mut c = Cluster::start("fleet-stop", &podinfo(&primary, &primary, FAST), 2).await;
    c.controller.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = c.controller.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "weir control still runs 30s after SIGTERM with replicas connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    // The replicas keep serving their last routing.
    for r in &c.replicas {
        assert_eq!(get(&r.url("/"), &[]).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_killed_mid_rollout_fails_no_request_and_resumes_the_step() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let slow = FAST.replace("interval: 1s", "interval: 3s");
    let mut c = Cluster::start("fleet-restart", &podinfo(&primary, &primary, &slow), 3).await;
    let mut client = c.client().await;
    let loads = c.load(30, Duration::from_secs(180));
    start(&mut client, "2", &canary).await;
    wait_weight(&client, 10, Duration::from_secs(60)).await;
    let before = status(&mut client).await;
    c.kill_controller();
    // A replica that starts while the controller is away is not ready until it has routing.
    let orphan = c.replica("r9");
    wait_ready(&orphan, false).await;
    // The others keep serving their last routing meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&orphan.admin_url("/ready"), &[]).await.status, 503);
    c.start_controller();
    let mut client = c.client().await;
    let after = status(&mut client).await;
    assert!(
        after.canary_weight >= before.canary_weight && after.phase == "Progressing",
        "resumed at the same step: before {before:?}, after {after:?}"
    );
    wait_ready(&orphan, true).await;
    let s = wait_phase(&mut client, "Succeeded", Duration::from_secs(180)).await;
    assert_eq!(s.primary_revision, "2");
    drop(orphan);
    for l in &loads {
        assert_eq!(
            l.failed.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no user request fails while the controller is away"
        );
    }
}

/// A stand-in controller: pushes what the test says and hands over what the replica
/// reports.
mod scripted {
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};
    use weir_protos::fleet as fb;

    pub type Push = Result<fb::ControllerMessage, Status>;

    pub struct Scripted {
        pub pushes: std::sync::Mutex<Option<mpsc::Receiver<Push>>>,
        pub reports: mpsc::Sender<fb::ReplicaReport>,
    }

    #[tonic::async_trait]
    impl fb::fleet_server::Fleet for Scripted {
        type SyncStream = ReceiverStream<Push>;

        async fn sync(
            &self,
            req: Request<Streaming<fb::ReplicaReport>>,
        ) -> Result<Response<Self::SyncStream>, Status> {
            let mut inbound = req.into_inner();
            let reports = self.reports.clone();
            tokio::spawn(async move {
                while let Ok(Some(r)) = inbound.message().await {
                    let _ = reports.send(r).await;
                }
            });
            let rx = self.pushes.lock().ok().and_then(|mut p| p.take());
            rx.map(|rx| Response::new(ReceiverStream::new(rx)))
                .ok_or_else(|| Status::unavailable("one stream only"))
        }
    }
}

/// The whole routing at `version`: podinfo for every host, its primary at `upstream`,
/// split as `weights` says.
fn routing(version: u64, upstream: &Upstream, weights: &[(&str, u32)]) -> scripted::Push {
    use weir_protos::fleet as fb;
    let service = fb::ServiceRouting {
        name: "podinfo".into(),
        namespace: "default".into(),
        port: 80,
        versions: vec![fb::Version {
            name: "primary".into(),
            endpoints: vec![upstream.endpoint()],
            connect_timeout_ns: 2_000_000_000,
            idle_timeout_ns: 3_000_000_000,
            max_idle_per_endpoint: 16,
            ..fb::Version::default()
        }],
        rules: vec![fb::Rule {
            target: Some(fb::rule::Target::Split(fb::Split {
                weights: weights
                    .iter()
                    .map(|(v, w)| fb::Weight {
                        version: v.to_string(),
                        weight: *w,
                    })
                    .collect(),
            })),
            timeout_ns: 15_000_000_000,
            idle_timeout_ns: 300_000_000_000,
            ..fb::Rule::default()
        }],
        version,
        ..fb::ServiceRouting::default()
    };
    Ok(fb::ControllerMessage {
        message: Some(fb::controller_message::Message::Routing(fb::RoutingDelta {
            version,
            full: true,
            services: vec![service],
            removed: Vec::new(),
        })),
    })
}

async fn next_applied(
    reports: &mut tokio::sync::mpsc::Receiver<weir_protos::fleet::ReplicaReport>,
) -> weir_protos::fleet::Applied {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(30), reports.recv())
            .await
            .expect("a report within 30 s")
            .expect("stream open");
        if let Some(weir_protos::fleet::replica_report::Report::Applied(a)) = r.report {
            return a;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_push_changes_nothing() {
    let upstream = Upstream::start("primary").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (push, pushes) = tokio::sync::mpsc::channel(4);
    let (reports_tx, mut reports) = tokio::sync::mpsc::channel(64);
    let svc = scripted::Scripted {
        pushes: std::sync::Mutex::new(Some(pushes)),
        reports: reports_tx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(weir_protos::fleet::fleet_server::FleetServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = temp_dir("fleet-nack");
    let path = dir.join("replica.yaml");
    std::fs::write(&path, "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n").expect("write");
    let replica = Weir::spawn_args(
        &["proxy", "--name", "lone", "--controller", &addr.to_string()],
        path,
    );
    wait_ready(&replica, false).await;
    push.send(routing(1, &upstream, &[("primary", 100)]))
        .await
        .expect("push");
    let a = next_applied(&mut reports).await;
    assert_eq!((a.version, a.error.as_str()), (1, ""));
    wait_ready(&replica, true).await;
    assert_eq!(get(&replica.url("/"), &[]).await.status, 200);
    push.send(routing(2, &upstream, &[("primary", 90), ("ghost", 10)]))
        .await
        .expect("push");
    let a = next_applied(&mut reports).await;
    assert_eq!(a.version, 2);
    assert!(
        a.error.contains("ghost"),
        "the NACK says what was wrong: {}",
        a.error
    );
    // Still version 1's routing: every request reaches the primary.
    for _ in 0..20 {
        assert_eq!(get(&replica.url("/"), &[]).await.status, 200);
    }
    let config = get_text(&replica.admin_url("/config")).await;
    assert!(!config.contains("ghost"), "{config}");
    assert!(Path::new(&dir).exists());
}
