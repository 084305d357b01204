//! End to end: shadow mirroring (bounded, discarded, compared) and session affinity.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use support::*;

fn service(primary: &Upstream, shadow: &Upstream, mirror: &str) -> String {
    format!(
        r#"services:
  - name: podinfo
    namespace: test
    port: 9898
    versions:
      primary: {{ endpoints: ["{}"] }}
      canary: {{ endpoints: ["{}"] }}
    routes:
      - to: primary
        mirror: {mirror}
"#,
        primary.endpoint(),
        shadow.endpoint()
    )
}

/// The series counting the shadow's 2xx answers weir measured.
const SHADOW_2XX: [(&str, &str); 3] = [
    ("version", "canary"),
    ("mirrored", "true"),
    ("code_class", "2xx"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mirror_copies_every_request_and_the_user_gets_the_primary_answer() {
    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start("shadow").await;
    let weir = Weir::start(&service(
        &primary,
        &shadow,
        "{ version: canary, percent: 100 }",
    ));
    for i in 0..20 {
        let req = Request::post(weir.url(&format!("/upload?i={i}")))
            .header("host", "podinfo.test:9898")
            .header("x-user", "u1")
            .body(full(format!("payload-{i}")))
            .expect("request");
        let got = send(&http1_client(), req).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["x-served-by"], "primary");
        assert_eq!(got.text(), format!("payload-{i}").len().to_string());
    }
    wait_for(
        "every mirror to reach the shadow",
        Duration::from_secs(30),
        || async { shadow.count() == 20 },
    )
    .await;
    let seen = shadow.last_seen();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/upload");
    assert_eq!(seen.headers["host"], "podinfo.test-shadow:9898");
    assert_eq!(seen.headers["x-weir-shadow"], "1");
    assert_eq!(seen.headers["x-user"], "u1");
    assert_eq!(seen.body_len, "payload-19".len());
    // The shadow's answers are measured.
    weir.wait_metric(
        "weir_requests_total",
        &SHADOW_2XX,
        20.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        weir.metric(
            "weir_requests_total",
            &[("version", "canary"), ("mirrored", "false")]
        )
        .await,
        0.0
    );
    assert_eq!(
        weir.metric(
            "weir_requests_total",
            &[("version", "primary"), ("mirrored", "false")]
        )
        .await,
        20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_mirror_sends_a_binomial_share() {
    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start("shadow").await;
    let weir = Weir::start(&service(
        &primary,
        &shadow,
        "{ version: canary, percent: 10 }",
    ));
    let client = h2_client();
    const N: usize = 4000;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (client, url) = (client.clone(), weir.url("/"));
        tasks.spawn(async move {
            let mut n = w;
            while n < N {
                let got = send(
                    &client,
                    Request::get(&url)
                        .body(full(Bytes::new()))
                        .expect("request"),
                )
                .await;
                assert_eq!(got.headers["x-served-by"], "primary");
                n += 16;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("worker");
    }
    // Mirrors run on their own: count them once the shadow stops receiving.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut hits = shadow.count();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = shadow.count();
        if now == hits {
            break;
        }
        hits = now;
        assert!(
            std::time::Instant::now() < deadline,
            "mirrors still arriving"
        );
    }
    let hits = hits as f64;
    let (mean, sd) = (N as f64 * 0.1, (N as f64 * 0.1 * 0.9).sqrt());
    assert!(
        (hits - mean).abs() <= 5.0 * sd,
        "{hits} mirrored of {N}, expected {mean} ± {}",
        5.0 * sd
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_shadow_never_slows_users_and_saturation_is_counted() {
    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start_with("stall", Behaviour::Stall).await;
    let weir = Weir::start(&service(
        &primary,
        &shadow,
        "{ version: canary, percent: 100, maxInFlight: 4, timeout: 1h }",
    ));
    // The shadow holds its mirrors for an hour: users who waited on it would not finish.
    let users = async {
        for _ in 0..50 {
            let got = get(&weir.url("/"), &[]).await;
            assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "primary"));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), users)
        .await
        .expect("users never wait behind a stalled shadow");
    wait_for(
        "4 mirrors in flight to the stalled shadow",
        Duration::from_secs(30),
        || async { shadow.count() == 4 },
    )
    .await;
    assert_eq!(
        weir.metric(
            "weir_mirror_skipped_total",
            &[("version", "canary"), ("reason", "saturated")]
        )
        .await,
        46.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_and_huge_shadows_leave_users_and_memory_alone() {
    let primary = Upstream::start("primary").await;
    let dead = closed_port();
    let weir = Weir::start(&format!(
        r#"services:
  - name: podinfo
    versions:
      primary: {{ endpoints: ["{}"] }}
      canary: {{ endpoints: ["127.0.0.1:{dead}"] }}
    routes: [ {{ to: primary, mirror: {{ version: canary, percent: 100 }} }} ]
"#,
        primary.endpoint()
    ));
    for _ in 0..20 {
        assert_eq!(get(&weir.url("/"), &[]).await.text(), "primary");
    }
    // The refused mirrors are counted.
    weir.wait_metric(
        "weir_upstream_errors_total",
        &[
            ("version", "canary"),
            ("mirrored", "true"),
            ("reason", "connect_refused"),
        ],
        20.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        weir.metric("weir_upstream_errors_total", &[("version", "primary")])
            .await,
        0.0
    );
    drop(weir);

    let huge = Upstream::start_with("huge", Behaviour::Huge(10 * 1024 * 1024)).await;
    let weir = Weir::start(&service(
        &primary,
        &huge,
        "{ version: canary, percent: 100 }",
    ));
    for _ in 0..30 {
        assert_eq!(get(&weir.url("/"), &[]).await.text(), "primary");
    }
    // 30 huge shadow answers are read and dropped.
    weir.wait_metric(
        "weir_requests_total",
        &SHADOW_2XX,
        30.0,
        Duration::from_secs(30),
    )
    .await;
    let peak = weir.peak_rss_kib();
    assert!(
        peak < 48 * 1024,
        "peak RSS {peak} KiB after 300 MiB of shadow answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_served_but_not_mirrored() {
    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start("shadow").await;
    let weir = Weir::start(&service(
        &primary,
        &shadow,
        "{ version: canary, percent: 100, maxBodyBytes: 1024 }",
    ));
    let req = Request::post(weir.url("/upload"))
        .body(full(vec![b'a'; 4096]))
        .expect("request");
    assert_eq!(send(&http1_client(), req).await.text(), "4096");
    // No length: the tee finds out as it streams.
    let chunks = (0..8).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![b'b'; 512])))
    });
    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
        futures_util::stream::iter(chunks),
    ));
    let req = Request::post(weir.url("/upload"))
        .body(body)
        .expect("request");
    assert_eq!(send(&http1_client(), req).await.text(), "4096");
    let req = Request::post(weir.url("/upload"))
        .body(full(vec![b'c'; 1000]))
        .expect("request");
    assert_eq!(send(&http1_client(), req).await.text(), "1000");
    wait_for(
        "the small body to be mirrored",
        Duration::from_secs(30),
        || async { shadow.count() == 1 },
    )
    .await;
    assert_eq!(shadow.last_seen().body_len, 1000);
    assert_eq!(
        weir.metric(
            "weir_mirror_skipped_total",
            &[("version", "canary"), ("reason", "body_too_large")]
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_counts_matches_and_mismatches() {
    let primary = Upstream::start("same").await;
    for (shadow, result) in [
        (Upstream::start("same").await, "match"),
        (
            Upstream::start_with("s", Behaviour::Status(500)).await,
            "status_mismatch",
        ),
        (
            Upstream::start_with("s", Behaviour::Body("different".into())).await,
            "body_mismatch",
        ),
    ] {
        let weir = Weir::start(&service(
            &primary,
            &shadow,
            "{ version: canary, percent: 100, compare: true }",
        ));
        for _ in 0..5 {
            assert_eq!(get(&weir.url("/"), &[]).await.text(), "same");
        }
        weir.wait_metric(
            "weir_mirror_comparisons_total",
            &[("service", "podinfo"), ("result", result)],
            5.0,
            Duration::from_secs(30),
        )
        .await;
        let all = weir
            .metric("weir_mirror_comparisons_total", &[("service", "podinfo")])
            .await;
        assert_eq!(all, 5.0, "only {result} was counted");
    }
}

fn affinity_config(
    primary: &Upstream,
    canary: &Upstream,
    canary_weight: u32,
    revision: &str,
) -> String {
    format!(
        r#"services:
  - name: podinfo
    versions:
      primary: {{ endpoints: ["{}"] }}
      canary: {{ endpoints: ["{}"], revision: "{revision}" }}
    routes:
      - split: {{ primary: {}, canary: {canary_weight} }}
    sessionAffinity: {{ cookieName: canary-cookie, primaryCookieName: primary-cookie, maxAge: 86400, path: /, httpOnly: true }}
    analysis: {{ interval: 30s, threshold: 1, stepWeight: 10 }}
"#,
        primary.endpoint(),
        canary.endpoint(),
        100 - canary_weight
    )
}

fn set_cookie(got: &Got) -> Option<String> {
    got.headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_pins_canary_users_and_expires_their_cookie_after_the_rollout() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    // The data plane alone (`weir proxy`): the weights come from the file, not a controller.
    let weir = Weir::start_mode("proxy", &affinity_config(&primary, &canary, 10, "r1"));
    let mut canary_cookie = None;
    let mut primary_cookie = None;
    for _ in 0..500 {
        let got = get(&weir.url("/"), &[]).await;
        let c = set_cookie(&got).expect("every split answer sets a cookie");
        if got.headers["x-served-by"] == "canary" {
            canary_cookie.get_or_insert(c);
        } else {
            primary_cookie.get_or_insert(c);
        }
        if canary_cookie.is_some() && primary_cookie.is_some() {
            break;
        }
    }
    let canary_cookie = canary_cookie.expect("some request reached the canary at weight 10");
    let primary_cookie = primary_cookie.expect("some request reached the primary");
    assert!(
        canary_cookie.starts_with("canary-cookie=")
            && canary_cookie.contains("; Max-Age=86400; Path=/; HttpOnly"),
        "{canary_cookie}"
    );
    assert!(
        primary_cookie.starts_with("primary-cookie=") && primary_cookie.contains("; Max-Age=30;"),
        "{primary_cookie}"
    );
    let pair = canary_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    for _ in 0..5 {
        let got = get(&weir.url("/"), &[("cookie", &pair)]).await;
        assert_eq!(
            got.headers["x-served-by"], "canary",
            "a canary user stays on the canary"
        );
    }
    let primary_pair = primary_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    for _ in 0..20 {
        assert_eq!(
            get(&weir.url("/"), &[("cookie", &primary_pair)])
                .await
                .headers["x-served-by"],
            "primary"
        );
    }

    // The rollout ends: the canary goes back to weight 0.
    std::fs::write(
        &weir.config_path,
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{}",
            affinity_config(&primary, &canary, 0, "r1")
        ),
    )
    .expect("write");
    weir.signal("HUP");
    weir.wait_metric(
        "weir_config_reloads_total",
        &[("result", "ok")],
        1.0,
        Duration::from_secs(30),
    )
    .await;
    let got = get(&weir.url("/"), &[("cookie", &pair)]).await;
    assert_eq!(got.headers["x-served-by"], "primary");
    assert_eq!(
        set_cookie(&got),
        Some(format!("{pair}; Max-Age=-1; Path=/; HttpOnly"))
    );

    // A new rollout: the old cookie pins nobody.
    std::fs::write(
        &weir.config_path,
        format!(
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{}",
            affinity_config(&primary, &canary, 10, "r2")
        ),
    )
    .expect("write");
    weir.signal("HUP");
    weir.wait_metric(
        "weir_config_reloads_total",
        &[("result", "ok")],
        2.0,
        Duration::from_secs(30),
    )
    .await;
    let before = canary.count();
    for _ in 0..40 {
        get(&weir.url("/"), &[("cookie", &pair)]).await;
    }
    let reached = canary.count() - before;
    assert!(
        reached < 20,
        "{reached} of 40 requests with an old cookie were pinned to the new canary"
    );
}
