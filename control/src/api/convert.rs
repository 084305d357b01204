//! Between protobuf and weir's own types: a typed `AnalysisSpec` message becomes the spec
//! a weir.yaml `analysis:` block would hold (validated like one), and the controller's
//! statuses, events and data planes become the messages the API, Watch and `weir ctl`
//! show.

use weir_protos::control as pb;
use weir_proxy::config::{SessionAffinityConfig, StringMatch};

use crate::clock::rfc3339;
use crate::spec::{
    AlertKind, AlertSpec, AnalysisSpec, FastFailSpec, MatchRequest, MetricSpec, ThresholdRange,
    WebhookSpec,
};
use crate::status::{DataPlanes, Event, ServiceStatus, Traffic};

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

/// A service's status as the API shows it.
pub fn status(s: ServiceStatus) -> pb::RolloutStatus {
    let traffic = |t: Traffic| pb::VersionStats {
        requests: t.requests,
        success_rate: t.success_rate,
        p99_ms: t.p99_ms,
        has_data: t.has_data,
    };
    pb::RolloutStatus {
        service: s.service,
        namespace: s.namespace,
        phase: s.phase,
        canary_weight: s.canary_weight,
        failed_checks: s.failed_checks,
        iterations: s.iterations,
        mirrored: s.mirrored,
        paused: s.paused,
        canary_revision: s.canary_revision,
        primary_revision: s.primary_revision,
        last_transition_time: rfc3339(s.last_transition_ms),
        message: s.message,
        checks: s
            .checks
            .into_iter()
            .map(|c| pb::CheckResult {
                name: c.name,
                verdict: c.verdict,
                value: c.value,
                threshold: c.threshold,
                detail: c.detail,
            })
            .collect(),
        last_event: s.last_event,
        primary: s.primary.map(traffic),
        canary: s.canary.map(traffic),
        waiting_gate: s.waiting_gate,
        threshold: s.threshold,
        max_weight: s.max_weight,
        state_lost: s.state_lost,
        replicas: s.replicas.map(|r| pb::ReplicaSummary {
            synced: r.synced,
            live: r.live,
            generation: r.version,
        }),
        versions: s
            .versions
            .into_iter()
            .map(|v| pb::VersionWeight {
                name: v.name,
                weight: v.weight,
                revision: v.revision,
                endpoints: v.endpoints,
                addresses: v.addresses,
            })
            .collect(),
    }
}

/// An event as Watch streams it.
pub fn event(e: Event) -> pb::Event {
    pb::Event {
        service: e.service,
        r#type: if e.warning { "Warning" } else { "Normal" }.into(),
        message: e.message,
        timestamp_ms: i64::try_from(e.timestamp_ms).unwrap_or(i64::MAX),
    }
}

/// The data planes as `ListReplicas` answers.
pub fn replicas(d: DataPlanes) -> pb::ListReplicasReply {
    pb::ListReplicasReply {
        generation: d.version,
        replicas: d
            .planes
            .into_iter()
            .map(|p| pb::Replica {
                name: p.name,
                address: p.address,
                generation: p.version,
                state: p.state,
                last_seen_ms: p.last_seen_ms,
                requests_per_second: p.requests_per_second,
                error: p.error,
                kind: p.kind.to_string(),
            })
            .collect(),
    }
}
