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

/// Two upstreams and weir splitting 50/50 between them.
async fn half_and_half() -> (Upstream, Upstream, Weir) {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(
        &primary,
        &canary,
        "      - split: { primary: 50, canary: 50 }",
    ));
    (primary, canary, weir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_page() {
    let (_primary, _canary, weir) = half_and_half().await;
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
    let resp = tokio::time::timeout(Duration::from_secs(20), http1_client().request(req))
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

/// The answer to `q`, asked again while Prometheus is busy or has none yet; panics after
/// a generous limit naming `what`.
async fn answer(prom: &str, q: &str, what: &str) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = query(prom, q).await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} selects no series of weir's: {q}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
    let (_primary, _canary, weir) = half_and_half().await;

    let (_prom, prom) = prometheus("weir", &[weir.admin.to_string()]).await;
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
    let (ok0, total0) = canary_counts(&weir).await;
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
    let buckets0 = canary_buckets(&get_text(&weir.admin_url("/metrics")).await);
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
    let (ok, total) = canary_counts(&weir).await;
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
    let prom_success = answer(&prom, &success, "the success-rate query").await;
    let prom_p99 = answer(&prom, &p99, "the p99 query").await;

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
    // Flagger's p99 query interpolates inside the Envoy bucket that holds the window's
    // 99th percentile by weir's own bucket counts: the two agree on the bucket, whatever
    // the machine's speed put the latencies in.
    let buckets1 = canary_buckets(&get_text(&weir.admin_url("/metrics")).await);
    let deltas: Vec<(f64, f64)> = buckets1
        .iter()
        .zip(&buckets0)
        .map(|((le, now), (_, then))| (*le, now - then))
        .collect();
    let window_total = deltas.last().map_or(0.0, |d| d.1);
    let rank = 0.99 * window_total;
    let at = deltas
        .iter()
        .position(|(_, n)| *n >= rank)
        .expect("the +Inf bucket holds every request");
    let lower = if at == 0 { 0.0 } else { deltas[at - 1].0 };
    let upper = deltas[at].0;
    assert!(
        window_total > 100.0,
        "the window holds the load: {window_total}"
    );
    assert!(
        prom_p99 >= lower && prom_p99 <= upper,
        "Flagger's p99 query says {prom_p99} ms; weir's buckets put the 99th percentile in ({lower}, {upper}] ms: {deltas:?}"
    );
}

/// The canary's (2xx, all) responses so far.
async fn canary_counts(weir: &Weir) -> (f64, f64) {
    let ok = weir
        .metric(
            "weir_requests_total",
            &[("version", "canary"), ("code_class", "2xx")],
        )
        .await;
    let total = weir
        .metric(
            "weir_requests_total",
            &[("service", "podinfo"), ("version", "canary")],
        )
        .await;
    (ok, total)
}

/// The canary's `envoy_cluster_upstream_rq_time_bucket` counts, by upper bound (ms).
fn canary_buckets(text: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| {
            l.starts_with("envoy_cluster_upstream_rq_time_bucket{")
                && l.contains(r#"envoy_cluster_name="test_podinfo-canary_9898""#)
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// A Prometheus on a free port scraping `targets` every second as job `job`, answering
/// queries; killed when dropped.
async fn prometheus(job: &str, targets: &[String]) -> (KillOnDrop, String) {
    let dir = temp_dir(&format!("prometheus-{job}"));
    let port = closed_port();
    let list = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{list}]\n"
        ),
    )
    .expect("write prometheus.yml");
    let child = KillOnDrop(
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
    wait_for("prometheus to answer", Duration::from_secs(60), || async {
        query(&prom, "vector(1)").await == Some(1.0)
    })
    .await;
    (child, prom)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_metric_templates_are_queried_on_a_real_prometheus() {
    use support::control::*;
    let v1 = Upstream::start("v1").await;
    let missing = Upstream::start_with("missing", Behaviour::Status(404)).await;
    let weir_port = closed_port();
    let admin = format!("127.0.0.1:{weir_port}");
    let (_prom, prom) = prometheus("all", &[admin.clone(), missing.endpoint()]).await;
    let analysis = r#"      interval: 3s
      threshold: 2
      maxWeight: 30
      stepWeight: 10
      fastFail: { disabled: true }
      metrics:
        - name: canary-served
          templateRef: { name: upstream-requests }
          templateVariables: { upstream: missing }
          thresholdRange: { min: 1 }
        - name: not-found-rate
          templateRef: { name: not-found-percentage, namespace: flagger }
          interval: 15s
          thresholdRange: { max: 5 }"#;
    let templates = format!(
        r#"admin: {admin}
metricTemplates:
  - name: upstream-requests
    namespace: test
    provider: {{ type: prometheus, address: "http://{prom}" }}
    query: sum(upstream_requests_total{{name="{{{{ variables.upstream }}}}"}})
  - apiVersion: flagger.app/v1beta1
    kind: MetricTemplate
    metadata: {{ name: not-found-percentage, namespace: flagger }}
    spec:
      provider: {{ type: prometheus, address: "http://{prom}" }}
      query: |
        100 * sum(rate(envoy_cluster_upstream_rq{{envoy_cluster_name=~"{{{{ namespace }}}}_{{{{ target }}}}-canary_[0-9]+",envoy_response_code="404"}}[{{{{ interval }}}}]))
        / sum(rate(envoy_cluster_upstream_rq{{envoy_cluster_name=~"{{{{ namespace }}}}_{{{{ target }}}}-canary_[0-9]+"}}[{{{{ interval }}}}]))"#
    );
    let weir = Weir::start(&config(&v1, analysis, &templates));
    let mut c = client(&weir).await;
    wait_phase(&mut c, "Initialized", Duration::from_secs(20)).await;
    let _load = Load::start(weir.url("/"), 100, Duration::from_secs(120));
    start(&mut c, "2", &missing).await;
    let failed = wait_phase(&mut c, "Failed", Duration::from_secs(90)).await;
    assert_eq!(failed.canary_weight, 0);
    let logs = weir.wait_log("Halt podinfo.test advancement not-found-rate 100.00 > 5");
    assert!(
        logs.contains("canary-served") && logs.contains("verdict=\"pass\""),
        "the upstream's own metric was read: {logs}"
    );
}

#[test]
fn weir_check_refuses_providers_it_cannot_query() {
    let (code, err) = weir_check(
        "metricTemplates:\n  - name: dd\n    provider: { type: datadog, address: https://api.datadoghq.com }\n    query: avg:requests\nservices:\n  - name: podinfo\n    versions:\n      primary: { endpoints: [\"127.0.0.1:1\"] }\n    analysis:\n      interval: 1m\n      stepWeight: 5\n      metrics:\n        - name: latency\n          templateRef: { name: dd, namespace: default }\n          thresholdRange: { max: 5 }\n        - name: errors\n          templateRef: { name: nowhere }\n          thresholdRange: { max: 5 }\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("services[0].analysis.metrics[0].templateRef: metric template \"dd\" uses provider \"datadog\"; weir queries Prometheus only"),
        "{err}"
    );
    assert!(
        err.contains("services[0].analysis.metrics[1].templateRef: no metricTemplates entry named \"nowhere\""),
        "{err}"
    );
}
