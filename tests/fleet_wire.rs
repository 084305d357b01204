//! What crosses the fleet stream: a one-service step reaches a replica as that service
//! alone, a replica that reconnects gets the whole routing once, and measurements survive
//! a stream that breaks while traffic flows (the controller's merged totals equal the
//! replicas' own).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use support::control::ctl_at;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use weir_protos::fleet as fb;
use weir_protos::fleet::fleet_client::FleetClient;

/// `weir control` on `services` (static, no analysis) at a free loopback address.
fn controller(tag: &str, services: &str) -> (Weir, String) {
    let dir = temp_dir(tag);
    let port = closed_port();
    let control = format!("127.0.0.1:{port}");
    let path = dir.join("weir.yaml");
    let yaml = format!("admin: 127.0.0.1:0\ncontrol: {control}\n{services}");
    std::fs::write(&path, yaml).expect("write config");
    (Weir::spawn_args(&["control"], path), control)
}

/// `n` services `svc-0` (the default for any host) .. with a primary and a canary split
/// 90/10.
fn services(n: usize, upstream: &Upstream) -> String {
    let ep = upstream.endpoint();
    let mut y = String::from("services:\n");
    for i in 0..n {
        let hosts = if i == 0 {
            "\"*\"".to_string()
        } else {
            format!("svc-{i}")
        };
        y.push_str(&format!(
            "  - name: svc-{i}\n    hosts: [{hosts}]\n    versions:\n      primary: {{ endpoints: [\"{ep}\"] }}\n      canary: {{ endpoints: [\"{ep}\"] }}\n    routes:\n      - split: {{ primary: 90, canary: 10 }}\n"
        ));
    }
    y
}

/// A replica stream played by the test: its Hello sent, the controller's messages in.
async fn probe(
    control: &str,
    version: u64,
) -> (
    mpsc::Sender<fb::ReplicaReport>,
    tonic::Streaming<fb::ControllerMessage>,
) {
    let channel = Channel::from_shared(format!("http://{control}"))
        .expect("url")
        .connect()
        .await
        .expect("connect to the controller");
    let (tx, rx) = mpsc::channel(16);
    let hello = fb::replica_report::Report::Hello(fb::Hello {
        name: "probe".into(),
        address: "127.0.0.1:1".into(),
        version,
        incarnation: 7,
    });
    tx.send(fb::ReplicaReport {
        report: Some(hello),
    })
    .await
    .expect("hello");
    let stream = FleetClient::new(channel)
        .sync(ReceiverStream::new(rx))
        .await
        .expect("Fleet.Sync")
        .into_inner();
    (tx, stream)
}

/// The next routing delta on the stream.
async fn next_delta(stream: &mut tonic::Streaming<fb::ControllerMessage>) -> fb::RoutingDelta {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a message within 30 s")
            .expect("stream open")
            .expect("not closed");
        if let Some(fb::controller_message::Message::Routing(d)) = msg.message {
            return d;
        }
    }
}

async fn ack(tx: &mpsc::Sender<fb::ReplicaReport>, version: u64) {
    let applied = fb::replica_report::Report::Applied(fb::Applied {
        version,
        error: String::new(),
    });
    tx.send(fb::ReplicaReport {
        report: Some(applied),
    })
    .await
    .expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_service_step_is_a_one_service_delta_and_a_reconnect_gets_everything() {
    let upstream = Upstream::start("up").await;
    let (weir, control) = controller("fleet-delta", &services(20, &upstream));
    let (tx, mut stream) = probe(&control, 0).await;
    let first = next_delta(&mut stream).await;
    assert!(first.full, "a new stream starts with the whole routing");
    assert_eq!(first.services.len(), 20);
    ack(&tx, first.version).await;
    // A push is counted just after it is handed to the stream.
    let pushed = first.encoded_len() as f64;
    wait_for(
        "the first push to be counted",
        Duration::from_secs(30),
        || async { weir.metric("weir_control_push_bytes_total", &[]).await >= pushed },
    )
    .await;
    let bytes_before = weir.metric("weir_control_push_bytes_total", &[]).await;

    let (code, out, err) = ctl_at(&control, &["set-weight", "svc-7", "--canary", "30"]);
    assert_eq!(code, 0, "{out}{err}");
    let step = next_delta(&mut stream).await;
    assert!(!step.full);
    assert!(step.version > first.version);
    let names: Vec<&str> = step.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["svc-7"], "only the service that changed");
    assert!(step.removed.is_empty());
    let size = step.encoded_len();
    assert!(size < 2048, "a one-service step is {size} bytes");
    weir.wait_metric(
        "weir_control_push_bytes_total",
        &[],
        bytes_before + size as f64,
        Duration::from_secs(30),
    )
    .await;
    let split = step.services[0].rules[0].target.clone();
    let Some(fb::rule::Target::Split(split)) = split else {
        panic!("the step's rule splits: {split:?}");
    };
    let weights: Vec<(String, u32)> = split
        .weights
        .into_iter()
        .map(|w| (w.version, w.weight))
        .collect();
    assert_eq!(
        weights,
        [("primary".to_string(), 70), ("canary".to_string(), 30)]
    );
    ack(&tx, step.version).await;

    // A replica that comes back gets the whole routing again, at the current version.
    drop((tx, stream));
    let (_tx, mut again) = probe(&control, step.version).await;
    let resent = next_delta(&mut again).await;
    assert!(resent.full);
    assert_eq!(resent.services.len(), 20);
    assert!(
        resent.version > step.version,
        "a replica's version lifts the controller's"
    );
}

/// A TCP proxy the test controls between a replica and its controller: it can stop
/// passing on what the replica sends (a partition: the bytes sit unread), and cut every
/// open connection (what sat unread is lost with it).
struct Cutter {
    addr: std::net::SocketAddr,
    live: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    stalled: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

impl Cutter {
    async fn start(target: String) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let live: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let stalled = Arc::new(AtomicBool::new(false));
        let (conns, stall) = (live.clone(), stalled.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, stall) = (target.clone(), stall.clone());
                let pipe = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            while stall.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            match from_client.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if to_server.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut from_server, &mut to_client);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                conns.lock().expect("lock").push(pipe);
            }
        });
        Cutter {
            addr,
            live,
            stalled,
            cuts: Arc::default(),
            task,
        }
    }

    /// Drops every connection open now (both sockets close) and passes bytes again.
    fn cut(&self) {
        for c in self.live.lock().expect("lock").drain(..) {
            if !c.is_finished() {
                self.cuts.fetch_add(1, Ordering::SeqCst);
            }
            c.abort();
        }
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Stops passing on what replicas send.
    fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_while_traffic_flows_loses_no_measurement() {
    let upstream = Upstream::start("up").await;
    let (controller, control) = controller("fleet-cut", &services(1, &upstream));
    let cutter = Cutter::start(control.clone()).await;
    let dir = temp_dir("fleet-cut-replica");
    let path = dir.join("replica.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncontroller: {{ address: http://{} }}\n",
            cutter.addr
        ),
    )
    .expect("write replica config");
    let replica = Weir::spawn_args(&["proxy", "--name", "cut"], path);
    wait_for("the replica ready", Duration::from_secs(30), || async {
        get(&replica.admin_url("/ready"), &[]).await.status == 200
    })
    .await;
    let served = |w: &Weir| {
        let w = w.admin_url("/metrics");
        async move {
            let text = get_text(&w).await;
            metric_value(&text, "weir_requests_total", &[("service", "svc-0")])
        }
    };
    // Load for a few seconds; again and again, what the replica reports stops getting
    // through for a while (reports sent in that time sit in the network), then the
    // connection is cut.
    let load = Load::start(
        format!("http://{}/", replica.proxy),
        150,
        Duration::from_secs(6),
    );
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cutter.stall();
        tokio::time::sleep(Duration::from_millis(700)).await;
        cutter.cut();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(load);
    assert!(
        cutter.cuts.load(Ordering::SeqCst) >= 3,
        "the stream was cut mid-traffic"
    );
    let own = served(&replica).await;
    assert!(own > 300.0, "the replica served {own}");
    // Once the replica's last reports are in, the controller's totals are the replica's.
    wait_for(
        "the controller's totals to equal the replica's",
        Duration::from_secs(30),
        || async { served(&controller).await == served(&replica).await },
    )
    .await;
}
