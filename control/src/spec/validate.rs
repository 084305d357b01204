//! Validating an analysis as Flagger's CRD would, plus weir's own rules. Every error names
//! its field under the block's path (`services[0].analysis.stepWeight: 500 is not between
//! 1 and 100`), and every error is reported, not only the first.

use std::time::Duration;

use weir_proxy::config::{decode, join, string_match, ConfigError};

use super::errors::{is_http_url, Errors};
use super::metrics::{metrics, Catalog};
use super::model::*;
use super::wire::{AlertProviderConfig, AlertSpec, AnalysisSpec, MatchRequest};

/// Decodes and validates an analysis block; every error names its field under `path`.
pub fn parse(
    value: &serde_json::Value,
    path: &str,
    catalog: &Catalog<'_>,
) -> Result<Analysis, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let spec: Option<AnalysisSpec> = decode(value.clone(), path, &mut errors);
    match spec {
        Some(spec) if errors.is_empty() => validate(spec, path, catalog),
        _ => Err(errors),
    }
}

/// Validates a decoded spec.
pub fn validate(
    spec: AnalysisSpec,
    path: &str,
    catalog: &Catalog<'_>,
) -> Result<Analysis, Vec<ConfigError>> {
    let mut e = Errors::new(path);
    let interval = e.duration(spec.interval.as_deref(), DEFAULT_INTERVAL, "interval");
    if interval < MIN_INTERVAL {
        e.add(
            "interval",
            format!(
                "{} is below weir's floor of {}s (checks need requests to judge)",
                spec.interval.as_deref().unwrap_or_default(),
                MIN_INTERVAL.as_secs()
            ),
        );
    }
    let interval = interval.max(MIN_INTERVAL);
    let steps = progression(&spec, &mut e);
    let strategy = strategy(&spec, steps.iterations, &mut e);
    for (i, m) in spec.matches.iter().enumerate() {
        match_request(m, &format!("match[{i}]"), &mut e);
    }
    if let Some(sa) = &spec.session_affinity {
        if sa.cookie_name.is_empty() {
            e.add("sessionAffinity.cookieName", "must not be empty");
        }
        if sa.primary_cookie_name.as_deref() == Some(sa.cookie_name.as_str()) {
            e.add(
                "sessionAffinity.primaryCookieName",
                "must differ from cookieName",
            );
        }
    }
    let min_requests = spec.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    let metrics = metrics(&spec, min_requests, catalog, &mut e);
    let hooks = hooks(&spec, &mut e);
    let alerts = alerts(&spec.alerts, catalog.providers, &mut e);
    let fast_fail = fast_fail(&spec, &mut e);
    let mirror_percent = match spec.mirror_weight {
        None | Some(0) => 100.0,
        Some(v) => f64::from(e.percent("mirrorWeight", v, 0)),
    };
    e.finish()?;
    Ok(Analysis {
        interval,
        threshold: spec.threshold.unwrap_or(1).clamp(1, i64::from(u32::MAX)) as u32,
        max_weight: steps.max_weight,
        step_weight: steps.step_weight,
        step_weights: steps.step_weights,
        step_weight_promotion: steps.step_weight_promotion,
        iterations: steps.iterations,
        strategy,
        metrics,
        hooks,
        alerts,
        progress_deadline: Duration::from_secs(
            spec.progress_deadline_seconds
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE),
        ),
        fast_fail,
        mirror_percent,
        spec,
    })
}

struct Steps {
    step_weight: Option<u32>,
    step_weights: Vec<u32>,
    max_weight: u32,
    step_weight_promotion: u32,
    iterations: u32,
}

/// How the canary progresses: exactly one of stepWeight, stepWeights or iterations.
fn progression(spec: &AnalysisSpec, e: &mut Errors<'_>) -> Steps {
    let modes = [
        spec.step_weight.is_some(),
        !spec.step_weights.is_empty(),
        spec.iterations.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        e.add(
            "",
            "exactly one of stepWeight, stepWeights or iterations must be set",
        );
    }
    let step_weight = spec.step_weight.map(|v| e.percent("stepWeight", v, 1));
    let mut step_weights: Vec<u32> = Vec::new();
    for (i, &w) in spec.step_weights.iter().enumerate() {
        let w = e.percent(&format!("stepWeights[{i}]"), w, 1);
        if let Some(&prev) = step_weights.last() {
            if w <= prev {
                e.add(
                    &format!("stepWeights[{i}]"),
                    format!("{w} must be larger than the step before it ({prev})"),
                );
            }
        }
        step_weights.push(w);
    }
    // Flagger ignores maxWeight when stepWeights is set.
    let max_weight = match step_weights.last() {
        Some(&last) => last.min(100),
        None => spec
            .max_weight
            .map(|v| e.percent("maxWeight", v, 1))
            .unwrap_or(100),
    };
    let step_weight_promotion = spec
        .step_weight_promotion
        .map(|v| e.percent("stepWeightPromotion", v, 0))
        .unwrap_or(0);
    let iterations = match spec.iterations {
        Some(n) if n < 1 => {
            e.add("iterations", format!("{n} must be at least 1"));
            1
        }
        Some(n) => n.min(i64::from(u32::MAX)) as u32,
        None => 0,
    };
    if let Some(step) = step_weight.filter(|s| *s > max_weight) {
        e.add(
            "stepWeight",
            format!(
                "{step} is above maxWeight {max_weight}: the rollout would go to {max_weight} in one step; lower stepWeight or raise maxWeight"
            ),
        );
    }
    Steps {
        step_weight,
        step_weights,
        max_weight,
        step_weight_promotion,
        iterations,
    }
}

/// The strategy, chosen as Flagger chooses it.
fn strategy(spec: &AnalysisSpec, iterations: u32, e: &mut Errors<'_>) -> Strategy {
    let strategy = if !spec.matches.is_empty() && iterations > 0 {
        Strategy::AbTesting
    } else if iterations > 0 {
        Strategy::BlueGreen
    } else {
        Strategy::Canary
    };
    if strategy == Strategy::AbTesting && spec.mirror {
        e.add(
            "mirror",
            "mirroring applies to canary and blue/green analyses, not A/B",
        );
    }
    strategy
}

/// An A/B condition: headers (the proxy's value matchers), uri (exact, prefix or regex)
/// and method (exact).
fn match_request(m: &MatchRequest, at: &str, e: &mut Errors<'_>) {
    if m.headers.is_empty() && m.uri.is_none() && m.method.is_none() {
        e.add(at, "a condition needs headers, uri or method");
    }
    let mut check = |field: String, sm| {
        let errors = string_match(sm, &join(e.path(), &field));
        e.extend(errors);
    };
    for (name, sm) in &m.headers {
        check(format!("{at}.headers.{name}"), sm);
    }
    if let Some(sm) = &m.uri {
        check(format!("{at}.uri"), sm);
        if sm.suffix.is_some() || sm.present.is_some() || sm.invert {
            e.add(
                &format!("{at}.uri"),
                "uri matches are exact, prefix or regex",
            );
        }
    }
    if let Some(sm) = &m.method {
        if sm.exact.is_none() {
            e.add(&format!("{at}.method"), "method matches are exact");
        }
    }
}

fn hooks(spec: &AnalysisSpec, e: &mut Errors<'_>) -> Vec<Hook> {
    let mut out = Vec::new();
    for (i, h) in spec.webhooks.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        if h.name.is_empty() {
            e.add(&format!("{at}.name"), "must not be empty");
        }
        let Some(kind) = HookKind::parse(&h.kind) else {
            e.add(
                &format!("{at}.type"),
                format!(
                    "unknown webhook type {:?}; types are confirm-rollout, pre-rollout, rollout, confirm-traffic-increase, confirm-promotion, post-rollout, rollback, event",
                    h.kind
                ),
            );
            continue;
        };
        match (&h.url, h.exec.is_empty()) {
            (Some(_), false) => e.add(&at, "set url or exec, not both"),
            (None, true) if !kind.is_gate() => e.add(
                &at,
                "a webhook needs url or exec (only gates may have neither: they wait for `weir ctl approve`)",
            ),
            (Some(url), true) if !is_http_url(url) => {
                e.add(&format!("{at}.url"), format!("{url:?} is not an http(s) URL"));
            }
            _ => {}
        }
        if kind == HookKind::Event && !h.exec.is_empty() {
            e.add(&format!("{at}.exec"), "event hooks are HTTP only");
        }
        let timeout = e.duration(
            h.timeout.as_deref(),
            DEFAULT_HOOK_TIMEOUT,
            &format!("{at}.timeout"),
        );
        let action = match &h.url {
            Some(url) => HookAction::Http(url.clone()),
            None if h.exec.is_empty() => HookAction::Manual,
            None => HookAction::Exec(h.exec.clone()),
        };
        out.push(Hook {
            name: h.name.clone(),
            kind,
            action,
            timeout,
            retries: h.retries,
            metadata: h.metadata.clone(),
            mute_alert: h.mute_alert,
        });
    }
    out
}

fn alerts(
    specs: &[AlertSpec],
    providers: &[AlertProviderConfig],
    e: &mut Errors<'_>,
) -> Vec<AlertTarget> {
    let mut out = Vec::new();
    for (i, a) in specs.iter().enumerate() {
        let at = format!("alerts[{i}]");
        let severity = match a.severity.as_str() {
            "" | "info" => Severity::Info,
            "warn" => Severity::Warn,
            "error" => Severity::Error,
            s => {
                e.add(
                    &format!("{at}.severity"),
                    format!("{s:?} is not info, warn or error"),
                );
                Severity::Info
            }
        };
        let provider = match (&a.provider_ref, &a.kind, &a.address) {
            (Some(r), None, None) => {
                let found = providers.iter().find(|p| {
                    p.name == r.name && (r.namespace.is_none() || p.namespace == r.namespace)
                });
                if found.is_none() {
                    e.add(
                        &format!("{at}.providerRef"),
                        format!("no alertProviders entry named {:?}", r.name),
                    );
                }
                found.map(|p| (p.kind, &p.address, &p.channel, &p.username))
            }
            (None, Some(kind), Some(address)) => Some((*kind, address, &a.channel, &a.username)),
            _ => {
                e.add(
                    &at,
                    "an alert needs providerRef, or type and address (not both)",
                );
                None
            }
        };
        let Some((kind, address, channel, username)) = provider else {
            continue;
        };
        if !is_http_url(address) {
            e.add(
                &format!("{at}.address"),
                format!("{address:?} is not an http(s) URL"),
            );
        }
        out.push(AlertTarget {
            name: a.name.clone(),
            severity,
            kind,
            address: address.clone(),
            channel: channel.clone().unwrap_or_else(|| "general".into()),
            username: username.clone().unwrap_or_else(|| "flagger".into()),
        });
    }
    out
}

/// The fast-fail guard (on unless disabled). `window` is accepted from earlier specs and
/// ignored: the guard weighs the whole run.
fn fast_fail(spec: &AnalysisSpec, e: &mut Errors<'_>) -> Option<FastFail> {
    let f = match &spec.fast_fail {
        Some(f) if f.disabled => return None,
        f => f.clone().unwrap_or_default(),
    };
    let alpha = f.alpha.unwrap_or(DEFAULT_FAST_FAIL_ALPHA);
    if !(alpha > 0.0 && alpha < 1.0) {
        e.add("fastFail.alpha", format!("{alpha} is not between 0 and 1"));
    }
    let _ = e.duration(f.window.as_deref(), Duration::ZERO, "fastFail.window");
    Some(FastFail {
        min_requests: f.min_requests.unwrap_or(0),
        alpha,
    })
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use std::time::Duration;
    use weir_proxy::{ConfigError, ConfigErrors};

    fn analysis(yaml: &str) -> Result<Analysis, Vec<ConfigError>> {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("test yaml");
        parse(&v, "analysis", &Catalog::default())
    }

    fn messages(r: Result<Analysis, Vec<ConfigError>>) -> Vec<String> {
        r.expect_err("an error")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn flagger_canary_manifest_block_is_accepted() {
        let a = analysis(
            "interval: 1m\nthreshold: 5\nmaxWeight: 50\nstepWeight: 10\nmetrics:\n- name: request-success-rate\n  thresholdRange: {min: 99}\n  interval: 1m\n- name: request-duration\n  thresholdRange: {max: 500}\n  interval: 30s\nwebhooks:\n- name: acceptance-test\n  type: pre-rollout\n  url: http://flagger-loadtester.test/\n  timeout: 30s\n  metadata: {type: bash, cmd: \"curl -sd 'test' http://podinfo-canary:9898/token | grep token\"}\n- name: load-test\n  url: http://flagger-loadtester.test/\n  timeout: 5s\n  metadata: {cmd: \"hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/\"}\n",
        )
        .expect("valid");
        assert_eq!(a.interval, Duration::from_secs(60));
        assert_eq!(a.threshold, 5);
        assert_eq!(a.max_weight, 50);
        assert_eq!(a.strategy, Strategy::Canary);
        assert_eq!(a.metrics.len(), 2);
        assert_eq!(a.hooks[1].kind, HookKind::Rollout);
        assert_eq!(a.hooks[0].timeout, Duration::from_secs(30));
    }

    #[test]
    fn exactly_one_progression_mode_is_required() {
        let m = messages(analysis(
            "interval: 1m\nthreshold: 5\nstepWeight: 5\niterations: 10\n",
        ));
        assert_eq!(
            m,
            ["analysis: exactly one of stepWeight, stepWeights or iterations must be set"]
        );
        assert!(analysis("interval: 1m\nthreshold: 5\n").is_err());
    }

    #[test]
    fn errors_name_their_fields() {
        let m = messages(analysis(
            "interval: soon\nthreshold: 2\nstepWeight: 120\nmetrics:\n- name: request-success-rate\n- name: p95\n  thresholdRange: {max: 1}\nwebhooks:\n- name: x\n  type: pre-rolout\n  url: http://a/\n",
        ));
        let joined = m.join("\n");
        assert!(joined.contains("analysis.interval:"), "{joined}");
        assert!(
            joined.contains("analysis.stepWeight: 120 is not between 1 and 100"),
            "{joined}"
        );
        assert!(
            joined.contains("analysis.metrics[0].thresholdRange:"),
            "{joined}"
        );
        assert!(
            joined.contains("analysis.metrics[1].name: unknown metric \"p95\""),
            "{joined}"
        );
        assert!(
            joined.contains("analysis.webhooks[0].type: unknown webhook type"),
            "{joined}"
        );
        let m = messages(analysis(
            "interval: 1m\nthreshold: 1\nstepWeight: 5\nmaxWeigth: 50\n",
        ));
        assert!(m[0].contains("maxWeigth"), "{m:?}");
    }

    #[test]
    fn interval_defaults_and_a_sub_second_one_is_refused() {
        let a = analysis("interval: \"\"\nthreshold: 1\nstepWeight: 5\n").expect("valid");
        assert_eq!(a.interval, DEFAULT_INTERVAL);
        let e = analysis("interval: 100ms\nthreshold: 1\nstepWeight: 5\n").expect_err("below 1s");
        let joined = ConfigErrors(e).joined();
        assert!(
            joined.contains("interval: 100ms is below weir's floor of 1s"),
            "{joined}"
        );
        let a = analysis("interval: 1s\nthreshold: 0\nstepWeight: 5\n").expect("valid");
        assert_eq!(a.threshold, 1, "Flagger turns threshold <= 0 into 1");
        let e = analysis("interval: 1s\nthreshold: 1\nstepWeight: 50\nmaxWeight: 20\n")
            .expect_err("step above max");
        let joined = ConfigErrors(e).joined();
        assert!(
            joined.contains("stepWeight: 50 is above maxWeight 20"),
            "{joined}"
        );
    }

    #[test]
    fn strategy_is_chosen_as_flagger_chooses() {
        let ab = analysis(
            "interval: 1m\nthreshold: 1\niterations: 10\nmatch:\n- headers:\n    x-canary: {exact: insider}\n",
        )
        .expect("valid");
        assert_eq!(ab.strategy, Strategy::AbTesting);
        let bg =
            analysis("interval: 1m\nthreshold: 1\niterations: 10\nmirror: true\n").expect("valid");
        assert_eq!(bg.strategy, Strategy::BlueGreen);
        let sw =
            analysis("interval: 1m\nthreshold: 1\nstepWeights: [1, 2, 10, 80]\nmaxWeight: 30\n")
                .expect("valid");
        assert_eq!(sw.max_weight, 80, "maxWeight is ignored with stepWeights");
    }

    #[test]
    fn alerts_resolve_provider_refs() {
        let providers = vec![AlertProviderConfig {
            name: "on-call".into(),
            namespace: Some("flagger".into()),
            kind: AlertKind::Slack,
            address: "http://127.0.0.1:1/hook".into(),
            channel: None,
            username: None,
        }];
        let v: serde_json::Value = serde_yaml_ng::from_str(
            "interval: 1m\nthreshold: 1\nstepWeight: 5\nalerts:\n- name: on-call\n  severity: error\n  providerRef: {name: on-call, namespace: flagger}\n- name: dev\n  providerRef: {name: dev}\n",
        )
        .expect("yaml");
        let catalog = Catalog {
            providers: &providers,
            ..Catalog::default()
        };
        let e = parse(&v, "a", &catalog).expect_err("dev is unknown");
        assert_eq!(
            e[0].to_string(),
            "a.alerts[1].providerRef: no alertProviders entry named \"dev\""
        );
    }
}
