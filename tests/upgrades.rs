//! What crosses weir as an HTTP/1.1 upgrade, and how long a client may take to send its
//! request: `h2c` is never a tunnel (the request goes on as plain HTTP/1.1 and the next
//! one on the connection is routed and counted by weir), protocols a route does not allow
//! are refused, a WebSocket tunnel counts for its version and closes when idle, and an
//! upload that trickles or takes too long is the client's `408`, never the version's.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

/// Reads one HTTP/1.1 response (head and a `content-length` body) from a blocking stream.
fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(1) => out.push(buf[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&out).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if s.read_exact(&mut body).is_err() {
        return head;
    }
    head + &String::from_utf8_lossy(&body)
}

fn connect(weir: &Weir) -> TcpStream {
    connect_to(weir.proxy)
}

fn connect_to(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to weir");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    s
}

/// Sends an upgrade request through weir, then `ping` on the connection: the answer's
/// head and the four bytes that came back.
async fn upgrade_and_echo(weir: &Weir, request: &'static [u8]) -> (String, [u8; 4]) {
    let mut s = connect(weir);
    tokio::task::spawn_blocking(move || {
        s.write_all(request).expect("write");
        let head = read_response(&mut s);
        s.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("echo");
        (head, buf)
    })
    .await
    .expect("client")
}

const H2C_UPGRADE: &str = "GET / HTTP/1.1\r\nHost: podinfo\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_goes_on_as_plain_http1_and_the_connection_stays_weirs() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(
        &primary,
        &canary,
        "      - match: { headers: { x-canary: { exact: always } } }\n        to: canary\n      - to: primary",
    ));
    let (primary_seen, canary_seen) = (primary.seen.clone(), canary.seen.clone());
    let mut s = connect(&weir);
    let (first, second) = tokio::task::spawn_blocking(move || {
        s.write_all(H2C_UPGRADE.as_bytes()).expect("write");
        let first = read_response(&mut s);
        // The same connection, still weir's: this request is routed by its header.
        s.write_all(b"GET / HTTP/1.1\r\nHost: podinfo\r\nx-canary: always\r\n\r\n")
            .expect("write");
        (first, read_response(&mut s))
    })
    .await
    .expect("client");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.ends_with("primary"), "{first}");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.ends_with("canary"), "{second}");
    let seen = primary_seen.lock().expect("lock")[0].headers.clone();
    for gone in ["upgrade", "http2-settings"] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    assert!(
        !seen
            .get("connection")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{seen:?}"
    );
    assert_eq!(canary_seen.lock().expect("lock").len(), 1);
    for version in ["primary", "canary"] {
        weir.wait_metric(
            "weir_requests_total",
            &[("version", version), ("code_class", "2xx")],
            1.0,
            Duration::from_secs(30),
        )
        .await;
    }
    // curl's own opportunistic h2c upgrade gets HTTP/1.1 from the upstream, not a 101.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--http2", "-H", "Host: podinfo"])
        .arg(weir.url("/"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("101"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_beside_an_allowed_protocol_is_left_out_and_an_unasked_switch_is_a_502() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(&primary, &canary, "      - to: primary"));
    // h2c listed first: an upstream that takes the first protocol would have switched
    // to HTTP/2 had weir forwarded it.
    let (head, echo) = upgrade_and_echo(
        &weir,
        b"GET /chat HTTP/1.1\r\nHost: podinfo\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c, websocket\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert_eq!(&echo, b"ping");
    let seen = primary.last_seen();
    assert_eq!(seen.headers["upgrade"], "websocket", "{:?}", seen.headers);
    assert!(
        !seen.headers.contains_key("http2-settings"),
        "{:?}",
        seen.headers
    );

    // An upstream that switches to a protocol it was not offered gets no tunnel: the
    // client gets weir's 502, counted against that version as a protocol error.
    let rogue = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let rogue_addr = rogue.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in rogue.incoming().take(2) {
            let Ok(mut c) = conn else { return };
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && matches!(c.read(&mut b), Ok(1)) {
                head.push(b[0]);
            }
            let _ = c.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let weir = Weir::start(&podinfo_yaml(
        &rogue_addr.to_string(),
        &canary.endpoint(),
        "",
        "    routes:\n      - to: primary\n",
    ));
    for request in [
        &b"GET /chat HTTP/1.1\r\nHost: podinfo\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: podinfo\r\nConnection: close\r\n\r\n"[..],
    ] {
        let reply = raw(weir.proxy, request).await;
        assert!(reply.text.starts_with("HTTP/1.1 502"), "{}", reply.text);
        assert!(reply.text.contains("x-weir-error: protocol"), "{}", reply.text);
    }
    weir.wait_metric(
        "weir_upstream_errors_total",
        &[("version", "primary"), ("reason", "protocol")],
        2.0,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_a_route_does_not_allow_are_refused_and_listed_ones_tunnel() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(
        &primary,
        &canary,
        "      - match: { path: { prefix: /udp } }\n        to: canary\n        upgrades: [websocket, connect-udp]\n      - to: primary",
    ));
    let reply = raw(
        weir.proxy,
        b"GET / HTTP/1.1\r\nHost: podinfo\r\nConnection: Upgrade\r\nUpgrade: connect-udp\r\n\r\n",
    )
    .await;
    assert!(reply.text.starts_with("HTTP/1.1 403"), "{}", reply.text);
    assert!(
        reply.text.contains("x-weir-error: upgrade_refused"),
        "{}",
        reply.text
    );
    assert!(reply.text.contains("\"connect-udp\""), "{}", reply.text);
    assert_eq!(primary.count(), 0, "a refused upgrade reaches no upstream");
    assert_eq!(
        weir.metric("weir_rejected_requests_total", &[("reason", "upgrade")])
            .await,
        1.0
    );
    // The route that lists it lets it through: the upstream switches and echoes.
    let echoed = upgrade_and_echo(
        &weir,
        b"GET /udp HTTP/1.1\r\nHost: podinfo\r\nConnection: Upgrade\r\nUpgrade: connect-udp\r\n\r\n",
    )
    .await;
    assert!(echoed.0.starts_with("HTTP/1.1 101"), "{}", echoed.0);
    assert_eq!(&echoed.1, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_counts_for_its_version_and_closes_when_idle() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(
        &primary,
        &canary,
        "      - to: canary\n        idleTimeout: 1s",
    ));
    let mut s = connect(&weir);
    let (head, echo, closed) = tokio::task::spawn_blocking(move || {
        s.write_all(
            b"GET /chat HTTP/1.1\r\nHost: podinfo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .expect("write");
        let head = read_response(&mut s);
        s.write_all(b"hello").expect("write");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("echo");
        // The upstream never closes an echo; only the idle timeout can end it (the
        // client's own 30 s read timeout is not a close).
        let mut one = [0u8; 1];
        let closed = match s.read(&mut one) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        (head, buf, closed)
    })
    .await
    .expect("client");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(&echo, b"hello");
    assert!(closed, "the idle tunnel was closed");
    let seen = canary.last_seen();
    assert_eq!(seen.headers["upgrade"], "websocket");
    weir.wait_metric(
        "weir_requests_total",
        &[("version", "canary"), ("code_class", "1xx")],
        1.0,
        Duration::from_secs(30),
    )
    .await;
}

/// Sends headers promising `total` bytes and then the body one byte every `gap`, on a
/// blocking socket; returns what weir answered.
fn trickle(weir: std::net::SocketAddr, total: usize, gap: Duration) -> String {
    let mut s = connect_to(weir);
    let head = format!("POST /upload HTTP/1.1\r\nHost: podinfo\r\nContent-Length: {total}\r\n\r\n");
    s.write_all(head.as_bytes()).expect("write");
    s.set_nonblocking(true).expect("nonblocking");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while std::time::Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
        if sent < total && s.write_all(b"x").is_ok() {
            sent += 1;
        }
        std::thread::sleep(gap);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Trickles an upload (see [`trickle`]) and checks weir answered `408`, counted it as the
/// client's timeout and not against the version.
async fn trickle_is_the_clients_408(weir: &Weir, up: &Upstream, total: usize, gap: Duration) {
    let w = weir.proxy;
    let answer = tokio::task::spawn_blocking(move || trickle(w, total, gap))
        .await
        .expect("client");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("x-weir-error: timeout"), "{answer}");
    weir.wait_metric(
        "weir_client_errors_total",
        &[("reason", "timeout")],
        1.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        weir.metric("weir_requests_total", &[("version", "primary")])
            .await,
        0.0,
        "a slow client never counts against the version"
    );
    // The upstream exchange was closed, not left holding the upstream's connection.
    wait_for(
        "the upstream connection of a timed-out upload to close",
        Duration::from_secs(15),
        || async { up.open.load(std::sync::atomic::Ordering::SeqCst) == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_below_the_rate_floor_is_the_clients_408() {
    let up = Upstream::start("primary").await;
    let weir = Weir::start(&format!(
        "limits: {{ uploadMinRate: 100, uploadGracePeriod: 1s }}\n{}",
        two_versions(&up, &up, "      - to: primary")
    ));
    // 10 bytes a second against a floor of 100 after 1 s: too slow.
    trickle_is_the_clients_408(&weir, &up, 1000, Duration::from_millis(100)).await;
    // An upload at speed is untouched by the floor.
    let client = http1_client();
    let req = http::Request::post(weir.url("/upload"))
        .header("host", "podinfo")
        .body(full(vec![b'x'; 100_000]))
        .expect("request");
    let got = send(&client, req).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_not_complete_within_request_timeout_is_the_clients_408() {
    let up = Upstream::start("primary").await;
    let weir = Weir::start(&format!(
        "limits: {{ requestTimeout: 1s, uploadMinRate: 0 }}\n{}",
        two_versions(&up, &up, "      - to: primary")
    ));
    // Steady bytes (the idle timeout never fires) but never the whole body.
    trickle_is_the_clients_408(&weir, &up, 100_000, Duration::from_millis(50)).await;
}
