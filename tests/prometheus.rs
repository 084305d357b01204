//! End to end with the real Prometheus from Debian: `promtool check metrics` accepts weir's
//! `/metrics`, and Flagger's Contour success-rate and p99 queries select weir's series
//! unchanged and agree with weir's own numbers.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn require(tool: &str) -> String {
    let path = format!("/usr/bin/{tool}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{tool} is not installed: apt-get install -y prometheus (.ci/run does it)"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_page() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(
        &primary,
        &canary,
        "      - split: { primary: 50, canary: 50 }",
    ));
    for path in ["/", "/status/503", "/status/404", "/status/302"] {
        get(&weir.url(path), &[]).await;
    }
    let page = get_text(&weir.admin_url("/metrics")).await;
    let mut child = Command::new(require("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(page.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{text}\n--- page ---\n{page}"
    );
}

async fn query(prom: &str, q: &str) -> Option<f64> {
    let url = format!("http://{prom}/api/v1/query?query={}", encode(q));
    let req = http::Request::get(url)
        .body(full(bytes::Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), http1_client().request(req))
        .await
        .ok()?
        .ok()?;
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    let body = String::from_utf8_lossy(&bytes);
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let value = v["data"]["result"].get(0)?["value"][1]
        .as_str()?
        .to_string();
    value.parse().ok().filter(|x: &f64| x.is_finite())
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_contour_queries_select_weirs_series_and_agree_with_weir() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(
        &primary,
        &canary,
        "      - split: { primary: 50, canary: 50 }",
    ));

    let dir = temp_dir("prometheus");
    let port = closed_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: [\"{}\"]\n",
            weir.admin
        ),
    )
    .expect("write prometheus.yml");
    let _prom = KillOnDrop(
        Command::new(require("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let prom = format!("127.0.0.1:{port}");
    wait_for(
        "prometheus to scrape weir",
        Duration::from_secs(60),
        || async { query(&prom, "up{job=\"weir\"}").await == Some(1.0) },
    )
    .await;

    // Create the 2xx and 5xx series first and let Prometheus scrape them: rate() cannot
    // see what a series counted before its first scrape, so the comparison starts there.
    for _ in 0..20 {
        get(&weir.url("/"), &[]).await;
        get(&weir.url("/status/503"), &[]).await;
    }
    let ok0 = weir
        .metric(
            "weir_requests_total",
            &[("version", "canary"), ("code_class", "2xx")],
        )
        .await;
    let total0 = weir
        .metric(
            "weir_requests_total",
            &[("service", "podinfo"), ("version", "canary")],
        )
        .await;
    wait_for(
        "prometheus to scrape the warm-up",
        Duration::from_secs(30),
        || async {
            query(
                &prom,
                "sum(envoy_cluster_upstream_rq{envoy_cluster_name=\"test_podinfo-canary_9898\"})",
            )
            .await
                == Some(total0)
        },
    )
    .await;
    // A quiet spell: the query window below starts inside it, so its first samples are
    // the warm-up values for every series.
    let quiet = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Load for a few seconds: every request takes ~20 ms; one in ten is a 503.
    let client = http1_client();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8u32 {
        let client = client.clone();
        let url = weir.url("");
        tasks.spawn(async move {
            for i in 0..60 {
                let path = if (i + worker).is_multiple_of(10) {
                    "/status/503"
                } else {
                    "/slow/20"
                };
                let req = http::Request::get(format!("{url}{path}"))
                    .body(full(bytes::Bytes::new()))
                    .expect("request");
                send(&client, req).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("load task");
    }
    // Let Prometheus scrape the final values.
    let total = weir
        .metric(
            "weir_requests_total",
            &[("service", "podinfo"), ("version", "canary")],
        )
        .await;
    wait_for(
        "prometheus to see every canary request",
        Duration::from_secs(30),
        || async {
            query(&prom, "sum(weir_requests_total{version=\"canary\"})").await == Some(total)
        },
    )
    .await;

    let window = format!(
        "{}s",
        (quiet.elapsed() - Duration::from_millis(1500)).as_secs()
    );
    let selector = r#"envoy_cluster_name=~"test_podinfo-canary_[0-9a-zA-Z-]+""#;
    let success = format!(
        r#"sum(rate(envoy_cluster_upstream_rq{{{selector},envoy_response_code!~"5.*"}}[{window}])) / sum(rate(envoy_cluster_upstream_rq{{{selector}}}[{window}])) * 100"#
    );
    let p99 = format!(
        r#"histogram_quantile(0.99, sum(rate(envoy_cluster_upstream_rq_time_bucket{{{selector}}}[{window}])) by (le))"#
    );
    let prom_success = query(&prom, &success)
        .await
        .expect("the success-rate query selects weir's canary series");
    let prom_p99 = query(&prom, &p99)
        .await
        .expect("the p99 query selects weir's canary series");

    let ok = weir
        .metric(
            "weir_requests_total",
            &[("version", "canary"), ("code_class", "2xx")],
        )
        .await;
    let weir_success = 100.0 * (ok - ok0) / (total - total0);
    // rate() extrapolates each series to the window's edges on its own, so the query's
    // answer is close to, not equal to, the ratio of the counts.
    assert!(
        (prom_success - weir_success).abs() < 4.0,
        "Flagger's query says {prom_success:.2}%, weir counted {weir_success:.2}%"
    );
    // Without rate(), the same selectors give exactly weir's cumulative ratio.
    let cumulative = format!(
        r#"sum(envoy_cluster_upstream_rq{{{selector},envoy_response_code!~"5.*"}}) / sum(envoy_cluster_upstream_rq{{{selector}}}) * 100"#
    );
    let prom_cumulative = query(&prom, &cumulative).await.expect("cumulative ratio");
    assert!(
        (prom_cumulative - 100.0 * ok / total).abs() < 1e-9,
        "{prom_cumulative} vs {}",
        100.0 * ok / total
    );
    assert!(
        (85.0..95.0).contains(&weir_success),
        "one in ten requests failed: {weir_success}"
    );
    // weir's exact p99 (from its hdrhistogram) and Prometheus' bucket interpolation land
    // in the same Envoy bucket, (10 ms, 25 ms].
    let text = get_text(&weir.admin_url("/metrics")).await;
    let below_10 = metric_value(
        &text,
        "envoy_cluster_upstream_rq_time_bucket",
        &[
            ("envoy_cluster_name", "test_podinfo-canary_9898"),
            ("le", "10"),
        ],
    );
    let below_25 = metric_value(
        &text,
        "envoy_cluster_upstream_rq_time_bucket",
        &[
            ("envoy_cluster_name", "test_podinfo-canary_9898"),
            ("le", "25"),
        ],
    );
    assert!(
        below_25 >= 0.99 * total && below_10 < 0.99 * total,
        "p99 bucket: {below_10} <= 10ms, {below_25} <= 25ms of {total}"
    );
    assert!(
        (10.0..=25.0).contains(&prom_p99),
        "Flagger's p99 query says {prom_p99} ms"
    );
}
