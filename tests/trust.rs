//! Counting what users got and blaming the right side, end to end: a response that breaks
//! off or stalls after its headers is the version's failure; a client's malformed, slow or
//! abandoned request is the client's, answered 400 or 408 and never counted against the
//! version; the route timeout starts when the upload ends.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::*;

fn config(primary: &Upstream, canary: &Upstream, limits: &str) -> String {
    format!(
        "{limits}\n{}",
        two_versions(
            primary,
            canary,
            "      - match: { headers: { x-canary: { exact: always } } }\n        to: canary\n        timeout: 1s\n      - to: primary\n        timeout: 1s\n        idleTimeout: 1s"
        )
    )
}

/// Sends a GET and reads the whole body; Err when the body broke off.
async fn fetch(url: &str, headers: &[(&str, &str)]) -> Result<(u16, Bytes), String> {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(full(Bytes::new())).expect("request");
    let resp = http1_client()
        .request(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_break_off_or_stall_count_against_the_version_that_sent_them() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start_mode("proxy", &config(&primary, &canary, ""));
    let canary_only = [("x-canary", "always")];
    let truncated = fetch(&weir.url("/truncate/1000"), &canary_only).await;
    assert!(
        truncated.is_err(),
        "the client saw a broken body: {truncated:?}"
    );
    let stalled = fetch(&weir.url("/stall"), &canary_only).await;
    assert!(stalled.is_err(), "weir cut the stalled body: {stalled:?}");
    let trickled = fetch(&weir.url("/trickle/30"), &canary_only).await;
    assert!(trickled.is_err(), "weir cut the trickle: {trickled:?}");
    let ok = fetch(&weir.url("/"), &canary_only).await;
    assert_eq!(ok, Ok((200, Bytes::from_static(b"canary"))));
    let canary_class = |class: &'static str| [("version", "canary"), ("code_class", class)];
    // The three failures are counted.
    weir.wait_metric(
        "weir_requests_total",
        &canary_class("5xx"),
        3.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        weir.metric("weir_requests_total", &canary_class("2xx"))
            .await,
        1.0
    );
    for (reason, n) in [("truncated", 1.0), ("timeout", 2.0)] {
        let labels = [("version", "canary"), ("reason", reason)];
        assert_eq!(
            weir.metric("weir_upstream_errors_total", &labels).await,
            n,
            "{reason}"
        );
    }
    // Flagger's query on Envoy's series sees them as failures too.
    let cluster = [("envoy_cluster_name", "test_podinfo-canary_9898")];
    let text = get_text(&weir.admin_url("/metrics")).await;
    let all = metric_value(&text, "envoy_cluster_upstream_rq_total", &cluster);
    let fivexx = metric_value(
        &text,
        "envoy_cluster_upstream_rq_xx",
        &[cluster[0], ("envoy_response_code_class", "5")],
    );
    assert_eq!((all, fivexx), (4.0, 3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_slow_and_vanishing_clients_are_answered_and_never_blamed_on_the_version() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start_mode("proxy", &config(&primary, &canary, ""));
    let addr = weir.proxy;
    for size in ["-1", "fffffffffffffffffffff", "0x3a", "zz"] {
        let req = format!(
            "POST /upload HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n{size}\r\nmore\r\n0\r\n\r\n"
        );
        let out = raw(addr, req.as_bytes()).await;
        assert!(
            out.text.starts_with("HTTP/1.1 400"),
            "chunk size {size:?}: {out:?}"
        );
    }
    // An upload that stops moving: 408 after the route's idle timeout.
    let out = raw(
        addr,
        b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(out.text.starts_with("HTTP/1.1 408"), "{out:?}");
    assert!(
        out.text.contains("x-weir-error: timeout") || out.text.contains("request body too slow"),
        "{out:?}"
    );
    // A client that leaves in the middle of a long download.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /download/200000000 HTTP/1.1\r\nHost: p\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 65536];
        s.read_exact(&mut buf).expect("the download starts");
    }
    let client = |reason: &'static str| [("version", "primary"), ("reason", reason)];
    // The client faults are counted.
    weir.wait_metric(
        "weir_client_errors_total",
        &client("gone"),
        1.0,
        Duration::from_secs(30),
    )
    .await;
    let malformed = weir
        .metric("weir_client_errors_total", &client("malformed"))
        .await
        + weir
            .metric(
                "weir_client_errors_total",
                &[("version", "canary"), ("reason", "malformed")],
            )
            .await;
    assert_eq!(malformed, 4.0);
    assert_eq!(
        weir.metric("weir_client_errors_total", &client("timeout"))
            .await,
        1.0
    );
    for version in ["primary", "canary"] {
        let v = [("version", version)];
        assert_eq!(
            weir.metric("weir_requests_total", &v).await,
            0.0,
            "nothing counted for {version}"
        );
        assert_eq!(weir.metric("weir_upstream_errors_total", &v).await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_not_blamed_on_the_version() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start_mode(
        "proxy",
        &config(&primary, &canary, "limits: { idleTimeout: 1s }"),
    );
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(weir.proxy).expect("connect");
    s.write_all(b"GET /download/200000000 HTTP/1.1\r\nHost: p\r\n\r\n")
        .expect("write");
    let labels = [("version", "primary"), ("reason", "not_reading")];
    // weir cuts the client off.
    weir.wait_metric(
        "weir_client_errors_total",
        &labels,
        1.0,
        Duration::from_secs(60),
    )
    .await;
    drop(s);
    assert_eq!(
        weir.metric("weir_requests_total", &[("version", "primary")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_starts_when_the_upload_ends() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start_mode(
        "proxy",
        &two_versions(
            &primary,
            &canary,
            "      - to: primary\n        timeout: 1s\n        idleTimeout: 30s",
        ),
    );
    // Three seconds of upload under a one-second route timeout (the idle timeout is far
    // longer than any pause between chunks).
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i == 6 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                b"0123456789",
            ))),
            i + 1,
        ))
    });
    let body = http_body_util::StreamBody::new(chunks).boxed();
    let req = http::Request::post(weir.url("/upload"))
        .body(body)
        .expect("request");
    let got = send(&http1_client(), req).await;
    assert_eq!((got.status.as_u16(), got.text()), (200, "60".to_string()));
    assert_eq!(
        weir.metric(
            "weir_requests_total",
            &[("version", "primary"), ("code_class", "2xx")]
        )
        .await,
        1.0
    );
}
