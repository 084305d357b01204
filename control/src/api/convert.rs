//! Between protobuf and weir's own types: a typed `AnalysisSpec` message becomes the spec
//! a weir.yaml `analysis:` block would hold (validated like one), and a rollout becomes
//! the `RolloutStatus` the API, Watch and `weir ctl` show.

use weir_protos::control as pb;
use weir_proxy::config::{SessionAffinityConfig, StringMatch};
use weir_proxy::Window;

use crate::clock::rfc3339;
use crate::machine::{Status, Target};
use crate::measurements::Windows;
use crate::spec::{
    AlertKind, AlertSpec, Analysis, AnalysisSpec, FastFailSpec, MatchRequest, MetricSpec,
    ThresholdRange, WebhookSpec,
};

/// What the API shows of a rollout.
pub struct RolloutView<'a> {
    pub target: &'a Target,
    pub status: &'a Status,
    pub analysis: &'a Analysis,
    pub primary_revision: Option<&'a str>,
    pub canary_revision: Option<&'a str>,
    pub primary_name: &'a str,
    /// None until a rollout brings a canary.
    pub canary_name: Option<&'a str>,
}

fn some_str(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn some_num(n: i32) -> Option<i64> {
    (n != 0).then_some(i64::from(n))
}

fn some_u64(n: u32) -> Option<u64> {
    (n != 0).then_some(u64::from(n))
}

/// Why a typed analysis message was refused.
#[derive(Debug, thiserror::Error)]
#[error("analysis.alerts[{index}].type: {reason}")]
pub struct UnknownAlertType {
    index: usize,
    reason: serde_json::Error,
}

/// The spec a typed message describes; an unknown alert provider type is refused.
pub fn analysis_spec(t: &pb::AnalysisSpec) -> Result<AnalysisSpec, UnknownAlertType> {
    let alerts = t
        .alerts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let kind: AlertKind = serde_json::from_value(serde_json::json!(a.r#type))
                .map_err(|reason| UnknownAlertType { index: i, reason })?;
            Ok(AlertSpec {
                name: a.name.clone(),
                severity: a.severity.clone(),
                provider_ref: None,
                kind: Some(kind),
                address: some_str(&a.url),
                channel: some_str(&a.channel),
                username: some_str(&a.username),
            })
        })
        .collect::<Result<Vec<_>, UnknownAlertType>>()?;
    Ok(AnalysisSpec {
        interval: some_str(&t.interval),
        threshold: some_num(t.threshold),
        max_weight: some_num(t.max_weight),
        step_weight: some_num(t.step_weight),
        step_weights: t.step_weights.iter().map(|w| i64::from(*w)).collect(),
        step_weight_promotion: some_num(t.step_weight_promotion),
        iterations: some_num(t.iterations),
        matches: t.r#match.iter().map(match_request).collect(),
        mirror: t.mirror,
        mirror_weight: some_num(t.mirror_weight),
        session_affinity: t.session_affinity.as_ref().map(|sa| SessionAffinityConfig {
            cookie_name: sa.cookie_name.clone(),
            primary_cookie_name: some_str(&sa.primary_cookie_name),
            max_age: u64::try_from(sa.max_age)
                .ok()
                .filter(|a| *a > 0)
                .unwrap_or(SessionAffinityConfig::DEFAULT_MAX_AGE),
            domain: None,
            path: None,
            http_only: false,
            secure: false,
            same_site: None,
            primary_max_age: SessionAffinityConfig::DEFAULT_PRIMARY_MAX_AGE,
        }),
        metrics: t.metrics.iter().map(metric).collect(),
        webhooks: t.webhooks.iter().map(webhook).collect(),
        alerts,
        skip_analysis: t.skip_analysis,
        suspend: t.suspend,
        min_requests: some_u64(t.min_requests),
        progress_deadline_seconds: some_u64(t.progress_deadline_seconds),
        fast_fail: t.fast_fail.as_ref().map(|f| FastFailSpec {
            disabled: f.disabled,
            min_requests: some_u64(f.min_requests),
            alpha: (f.alpha != 0.0).then_some(f.alpha),
            window: some_str(&f.window),
        }),
        ..AnalysisSpec::default()
    })
}

fn metric(m: &pb::Metric) -> MetricSpec {
    MetricSpec {
        name: m.name.clone(),
        interval: some_str(&m.interval),
        threshold_range: m.threshold_range.as_ref().map(|r| ThresholdRange {
            min: r.min,
            max: r.max,
        }),
        min_requests: some_u64(m.min_requests),
        ..MetricSpec::default()
    }
}

fn webhook(h: &pb::Webhook) -> WebhookSpec {
    WebhookSpec {
        name: h.name.clone(),
        kind: h.r#type.clone(),
        url: some_str(&h.url),
        exec: h.exec.clone(),
        timeout: some_str(&h.timeout),
        retries: u32::try_from(h.retries).unwrap_or(0),
        metadata: h.metadata.clone().into_iter().collect(),
        mute_alert: h.mute_alert,
        disable_tls: false,
    }
}

fn match_request(m: &pb::MatchRequest) -> MatchRequest {
    MatchRequest {
        headers: m
            .headers
            .iter()
            .map(|(k, sm)| {
                use pb::string_match::Match;
                let mut s = StringMatch::default();
                match &sm.r#match {
                    Some(Match::Exact(v)) => s.exact = Some(v.clone()),
                    Some(Match::Prefix(v)) => s.prefix = Some(v.clone()),
                    Some(Match::Suffix(v)) => s.suffix = Some(v.clone()),
                    Some(Match::Regex(v)) => s.regex = Some(v.clone()),
                    None => {}
                }
                (k.clone(), s)
            })
            .collect(),
        ..MatchRequest::default()
    }
}

/// A version's traffic as the API shows it.
pub fn version_stats(w: &Window) -> pb::VersionStats {
    pb::VersionStats {
        requests: w.requests(),
        success_rate: w.success_rate().unwrap_or(0.0),
        p99_ms: w.quantile_ms(0.99).unwrap_or(0.0),
        has_data: w.requests() > 0,
    }
}

/// A rollout's status as the API shows it; `stats` are the versions' windows since the
/// canary's traffic began.
pub fn rollout_status(r: &RolloutView<'_>, stats: &Windows) -> pb::RolloutStatus {
    let s = r.status;
    pb::RolloutStatus {
        service: r.target.name.clone(),
        namespace: r.target.namespace.clone(),
        phase: s.phase.name().into(),
        canary_weight: s.canary_weight,
        failed_checks: s.failed_checks,
        iterations: s.iterations,
        mirrored: s.mirrored,
        paused: s.paused || r.analysis.spec.suspend,
        canary_revision: r.canary_revision.unwrap_or_default().to_string(),
        primary_revision: r.primary_revision.unwrap_or_default().to_string(),
        last_transition_time: rfc3339(s.last_transition_ms),
        message: match &s.state_lost {
            Some(why) => format!(
                "Rollout state lost: {why}. Serving the primary only until `weir ctl reset`."
            ),
            None => s.phase.condition_message().into(),
        },
        checks: s
            .checks
            .iter()
            .map(|c| pb::CheckResult {
                name: c.name.clone(),
                verdict: c.verdict.name().into(),
                value: c.value.unwrap_or(f64::NAN),
                threshold: c.threshold.clone(),
                detail: c.detail.clone(),
            })
            .collect(),
        last_event: s.last_event.clone(),
        primary: Some(version_stats(&stats.primary)),
        canary: Some(version_stats(&stats.canary)),
        waiting_gate: s
            .waiting_gate
            .map(|g| g.name().to_string())
            .unwrap_or_default(),
        threshold: r.analysis.threshold,
        max_weight: r.analysis.max_weight,
        state_lost: s.state_lost.is_some(),
        replicas: None,
        versions: std::iter::once((
            r.primary_name,
            100 - s.canary_weight.min(100),
            r.primary_revision,
        ))
        .chain(
            r.canary_name
                .map(|c| (c, s.canary_weight.min(100), r.canary_revision)),
        )
        .map(|(name, weight, revision)| pb::VersionWeight {
            name: name.to_string(),
            weight,
            revision: revision.unwrap_or_default().to_string(),
        })
        .collect(),
    }
}
