//! The dashboard (`/ui` on the admin listener) in a real browser, headless Chromium,
//! against a real `weir run` during rollouts: the service, its phase and a canary weight
//! that moves as the rollout advances, then `Succeeded`; a rolled-back canary as `Failed`
//! with the reason; text from the config shown as text; no console errors; a screenshot
//! that is not blank. And the page's data: the snapshot, the event stream, read-only, not
//! on the metrics listener.

mod support;

use std::time::Duration;

use support::browser::watch;
use support::control::{client, start, wait_phase};
use support::*;

const LIMIT: Duration = Duration::from_secs(90);

/// A rollout of 2 s steps of 10% up to 50%, judged on the success rate, with the guard on.
const STEPS: &str = r#"      interval: 2s
      threshold: 2
      maxWeight: 50
      stepWeight: 10
      minRequests: 5
      metrics:
        - name: request-success-rate
          thresholdRange: { min: 99 }
          interval: 2s"#;

fn weir_with(primary: &Upstream, extra_service: &str) -> Weir {
    let p = primary.endpoint();
    let services = support::control::podinfo_services(&p, &p, STEPS);
    Weir::start(&format!("control: 127.0.0.1:0\n{services}{extra_service}"))
}

/// The focused service's phase and big weight bar, as the page shows them.
const SHOWN: &str = "(() => { const b = document.querySelector('#detail .bar.big'); const p = document.querySelector('#detail .facts .phase'); return [p ? p.textContent : '', b ? b.getAttribute('aria-label') : '']; })()";

/// The canary's weight in a bar's label (`primary 90%, canary 10%`).
fn canary_weight(label: &str) -> Option<u32> {
    label
        .split("canary ")
        .nth(1)?
        .trim_end_matches('%')
        .parse()
        .ok()
}

const SCREEN: (u32, u32) = (1280, 800);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_a_rollout_to_succeeded() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = weir_with(&primary, "");
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(120));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", LIMIT).await;
    let url = weir.admin_url("/ui/");
    let progress = temp_dir("dashboard-follow").join("samples.jsonl");

    // One page, opened before the rollout starts, follows it by itself.
    let starter = {
        let mut c = c.clone();
        let canary_ep = canary.endpoint();
        let progress = progress.clone();
        tokio::spawn(async move {
            // Once the page shows the service waiting for a rollout.
            wait_for("the page to show Initialized", LIMIT, || async {
                std::fs::read_to_string(&progress).is_ok_and(|p| p.contains("Initialized"))
            })
            .await;
            c.start_rollout(weir_protos::control::StartRolloutRequest {
                service: "podinfo".into(),
                revision: "2".into(),
                canary_endpoints: vec![canary_ep],
            })
            .await
            .expect("StartRollout");
        })
    };
    let page = tokio::task::spawn_blocking(move || {
        watch(&url, 80, SHOWN, "Succeeded", None, Some(&progress), SCREEN)
    })
    .await
    .expect("watch");
    starter.await.expect("start");
    let shown: Vec<(String, String)> = page
        .samples
        .iter()
        .map(|(_, v)| {
            (
                v[0].as_str().unwrap_or("").into(),
                v[1].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    // The first phase the page shows once its first snapshot came.
    assert_eq!(
        shown.iter().find(|s| !s.0.is_empty()).map(|s| s.0.as_str()),
        Some("Initialized"),
        "{shown:?}"
    );
    assert!(shown.iter().any(|s| s.0 == "Progressing"), "{shown:?}");
    let mut weights: Vec<u32> = shown.iter().filter_map(|s| canary_weight(&s.1)).collect();
    weights.dedup();
    assert!(
        weights.iter().filter(|w| **w > 0 && **w < 100).count() >= 2,
        "the canary's weight moved on the open page: {weights:?}"
    );
    assert!(page.dom.contains("Succeeded"), "{}", page.dom);
    assert!(page.errors.is_empty(), "{:?}", page.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_canary_shows_failed_and_why() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start_with("canary", Behaviour::Status(500)).await;
    let weir = weir_with(&primary, "");
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(120));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", LIMIT).await;
    start(&mut c, "2", &canary).await;
    wait_phase(&mut c, "Failed", LIMIT).await;
    let url = weir.admin_url("/ui/");
    let page = tokio::task::spawn_blocking(move || {
        watch(&url, 60, SHOWN, "Rolling back", None, None, SCREEN)
    })
    .await
    .expect("watch");
    assert!(page.dom.contains("Failed"), "{}", page.dom);
    assert!(
        page.dom.contains("Rolling back podinfo.test"),
        "the reason: {}",
        page.dom
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_the_config_stays_text_and_the_console_is_clean() {
    let primary = Upstream::start("primary").await;
    let evil = "<img src=x onerror=alert(1)>";
    let extra = format!(
        "  - name: plain\n    hosts: [plain]\n    versions:\n      primary: {{ endpoints: [\"{}\"], revision: \"{evil}\" }}\n",
        primary.endpoint()
    );
    let weir = weir_with(&primary, &extra);
    let url = weir.admin_url("/ui/?service=plain&theme=dark");
    let png = temp_dir("dashboard-shot").join("page.png");
    let shot = png.clone();
    let page = tokio::task::spawn_blocking(move || {
        watch(&url, 60, SHOWN, "onerror", Some(&shot), None, SCREEN)
    })
    .await
    .expect("watch");
    assert!(page.dom.contains("plain"), "{}", page.dom);
    assert!(
        page.dom.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "the revision shown as text: {}",
        page.dom
    );
    assert!(
        !page.dom.contains("<img"),
        "no element made from config text: {}",
        page.dom
    );
    assert!(
        page.console
            .iter()
            .any(|(_, t)| t == "weir dashboard: live"),
        "the console is captured: {:?}",
        page.console
    );
    let bad: Vec<_> = page
        .console
        .iter()
        .filter(|(kind, _)| kind == "error" || kind == "warning")
        .collect();
    assert!(bad.is_empty(), "console errors: {bad:?}");
    assert!(page.errors.is_empty(), "errors: {:?}", page.errors);
    let colours = distinct_colours(&png);
    assert!(
        colours > 8,
        "the screenshot is not blank: {colours} colours"
    );
}

/// How many distinct pixel values a PNG has (decoded by Python's zlib, unfiltered row by
/// row).
fn distinct_colours(png: &std::path::Path) -> usize {
    let script = r#"
import struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
pos, idat, ihdr = 8, b'', None
while pos < len(data):
    n, kind = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b'IHDR': ihdr = struct.unpack('>IIBBBBB', body)
    if kind == b'IDAT': idat += body
    pos += 12 + n
w, h, depth, ctype = ihdr[0], ihdr[1], ihdr[2], ihdr[3]
bpp = {2: 3, 6: 4, 0: 1, 4: 2}[ctype] * depth // 8
raw, stride, prev, seen, i = zlib.decompress(idat), w * bpp, bytearray(w * bpp), set(), 0
for _ in range(h):
    f, row = raw[i], bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
    for x in range(stride):
        a = row[x - bpp] if x >= bpp else 0
        b = prev[x]; c = prev[x - bpp] if x >= bpp else 0
        if f == 1: row[x] = (row[x] + a) & 255
        elif f == 2: row[x] = (row[x] + b) & 255
        elif f == 3: row[x] = (row[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    seen.update(bytes(row[x:x + bpp]) for x in range(0, stride, bpp * 7))
    prev = row
print(len(seen))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(png)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_and_stream_serve_the_page_read_only_and_only_on_admin() {
    let primary = Upstream::start("primary").await;
    let weir = Weir::start(&format!(
        "metrics: 127.0.0.1:0\ncontrol: 127.0.0.1:0\n{}",
        support::control::podinfo_services(&primary.endpoint(), &primary.endpoint(), STEPS)
    ));
    let url = weir.admin_url("/ui/snapshot");
    let snapshot = || async {
        serde_json::from_str::<serde_json::Value>(&get_text(&url).await).expect("json")
    };
    let snap = snapshot().await;
    assert_eq!(snap["services"][0]["name"], "podinfo", "{snap}");
    // The controller's first wake-up takes the service from Initializing to Initialized.
    wait_for("the snapshot to show Initialized", LIMIT, || async {
        snapshot().await["services"][0]["phase"] == "Initialized"
    })
    .await;
    let snap = snapshot().await;
    assert!(
        snap["events"].is_array() && snap["planes"].is_object(),
        "{snap}"
    );

    // The stream: a snapshot first, then a frame each second.
    let mut stream = tokio::net::TcpStream::connect(weir.admin)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /ui/events HTTP/1.1\r\nHost: weir\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("write");
    let mut got = String::new();
    let mut buf = [0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !got.contains("event: frame") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a frame within 30 s")
            .expect("read");
        assert!(n > 0, "the stream closed: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("text/event-stream"), "{got}");
    let snapshot_at = got.find("event: snapshot").expect("a snapshot first");
    assert!(snapshot_at < got.find("event: frame").unwrap_or(0), "{got}");

    // Nothing but GET, and nothing of it on the metrics listener.
    let metrics = weir.metrics.expect("metrics listener");
    let off = get(&format!("http://{metrics}/ui/"), &[]).await;
    assert_eq!(off.status, 404);
    let post = raw(
        weir.admin,
        b"POST /ui/snapshot HTTP/1.1\r\nHost: weir\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(post.text.starts_with("HTTP/1.1 405"), "{}", post.text);
    let page = get(&weir.admin_url("/ui/"), &[]).await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"]
        .to_str()
        .unwrap_or("");
    assert!(csp.contains("script-src 'self'"), "{csp}");
}
