//! The controller at run time: one task per service drives its rollout's state machine
//! every interval, runs the fast-fail guard every half second, applies the machine's
//! actions to the proxy, sends events, webhooks and alerts, and persists the state.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::{broadcast, Notify};
use weir_protos::control as pb;
use weir_proxy::config::{
    weighted_rules, ConfigError, ConfigErrors, MatchConfig, MirrorConfig, OneOrMany, PathMatch,
    RouteConfig, StringMatch as ProxyMatch, VersionConfig,
};
use weir_proxy::{Config, Proxy, VersionSnapshot};

use crate::analysis::{Action, Env, HookOutcome, Input, Machine, Phase, Status, Target};
use crate::checks::{self, CheckResult, Counts};
use crate::hooks::{self, HttpPoster};
use crate::spec::{self, Analysis, BuiltinMetric, HookKind, Severity, Strategy};
use crate::store;

/// How often the fast-fail guard looks at the counters (cheap: a few atomic loads).
pub const GUARD_EVERY: Duration = Duration::from_millis(100);
/// Status (with its histogram windows) is refreshed every this many guard looks.
const PUBLISH_EVERY: u32 = 5;

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound(String),
    Invalid(String),
    Precondition(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotFound(m) | Refusal::Invalid(m) | Refusal::Precondition(m) => f.write_str(m),
        }
    }
}

/// What Watch streams.
#[derive(Debug, Clone)]
pub enum Notice {
    Event(pb::Event),
    Status(Box<pb::RolloutStatus>),
}

/// A manual operation over the control API.
#[derive(Debug, Clone)]
pub enum Op {
    Promote,
    Abort,
    Pause,
    Resume,
    Retry,
    SetWeight(u32),
    Approve(String),
    Deny(String),
}

/// Flagger's controller metrics plus weir's rollout-duration histogram.
struct Metrics {
    total: IntGaugeVec,
    status: IntGaugeVec,
    weight: IntGaugeVec,
    analysis: GaugeVec,
    successes: IntCounterVec,
    failures: IntCounterVec,
    tick_seconds: HistogramVec,
    rollout_seconds: HistogramVec,
}

impl Metrics {
    fn new(registry: &prometheus::Registry) -> Metrics {
        let m = Metrics {
            total: IntGaugeVec::new(
                Opts::new("flagger_canary_total", "Number of canaries per namespace."),
                &["namespace"],
            )
            .expect("static metric"),
            status: IntGaugeVec::new(
                Opts::new(
                    "flagger_canary_status",
                    "Last canary analysis result: 0 Progressing, 1 done or waiting, 2 Failed.",
                ),
                &["name", "namespace"],
            )
            .expect("static metric"),
            weight: IntGaugeVec::new(
                Opts::new(
                    "flagger_canary_weight",
                    "The virtual service destination weight.",
                ),
                &["workload", "namespace"],
            )
            .expect("static metric"),
            analysis: GaugeVec::new(
                Opts::new(
                    "flagger_canary_metric_analysis",
                    "Last canary analysis value per metric (request-duration in seconds).",
                ),
                &["name", "namespace", "metric"],
            )
            .expect("static metric"),
            successes: IntCounterVec::new(
                Opts::new(
                    "flagger_canary_successes_total",
                    "Successful canary promotions.",
                ),
                &[
                    "name",
                    "namespace",
                    "deployment_strategy",
                    "analysis_status",
                ],
            )
            .expect("static metric"),
            failures: IntCounterVec::new(
                Opts::new("flagger_canary_failures_total", "Canary rollbacks."),
                &[
                    "name",
                    "namespace",
                    "deployment_strategy",
                    "analysis_status",
                ],
            )
            .expect("static metric"),
            tick_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "flagger_canary_duration_seconds",
                    "Wall time of one canary analysis tick.",
                ),
                &["name", "namespace"],
            )
            .expect("static metric"),
            rollout_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "weir_rollout_duration_seconds",
                    "Time from a new revision to its promotion or rollback.",
                )
                .buckets(vec![
                    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
                ]),
                &["service", "namespace", "result"],
            )
            .expect("static metric"),
        };
        for c in [
            Box::new(m.total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.status.clone()),
            Box::new(m.weight.clone()),
            Box::new(m.analysis.clone()),
            Box::new(m.successes.clone()),
            Box::new(m.failures.clone()),
            Box::new(m.tick_seconds.clone()),
            Box::new(m.rollout_seconds.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "cannot register a controller metric");
            }
        }
        m
    }
}

/// Snapshots taken at ticks; metric windows start at one of them.
struct Mark {
    at_ms: u64,
    primary: VersionSnapshot,
    canary: VersionSnapshot,
    shadow: Option<VersionSnapshot>,
}

impl Mark {
    /// The canary's snapshot: its shadow traffic in mirrored phases, else its users'.
    fn canary(&self, mirrored: bool) -> Option<&VersionSnapshot> {
        if mirrored {
            self.shadow.as_ref()
        } else {
            Some(&self.canary)
        }
    }
}

/// Counters polled by the guard.
struct GuardMark {
    at_ms: u64,
    primary: (u64, u64),
    canary: (u64, u64),
}

/// One service's rollout.
struct Rollout {
    service: String,
    target: Target,
    analysis: Analysis,
    file_analysis: Option<serde_json::Value>,
    applied_spec: Option<serde_json::Value>,
    status: Status,
    primary_name: String,
    canary_name: String,
    primary: VersionConfig,
    canary: VersionConfig,
    file_primary: VersionConfig,
    file_canary: VersionConfig,
    base_routes: Vec<RouteConfig>,
    marks: VecDeque<Mark>,
    guard: VecDeque<GuardMark>,
}

struct Slot {
    /// The service's namespace (for `flagger_canary_total`).
    namespace: String,
    rollout: tokio::sync::Mutex<Rollout>,
    published: Mutex<(pb::RolloutStatus, store::Saved)>,
    kick: Notify,
    stop: Notify,
}

struct Shared {
    proxy: Proxy,
    state_path: Option<PathBuf>,
    slots: RwLock<IndexMap<String, Arc<Slot>>>,
    notices: broadcast::Sender<Notice>,
    metrics: Metrics,
    poster: HttpPoster,
    /// The state last written (a tick that changed nothing writes nothing); its lock
    /// also orders the writers.
    saved: Mutex<Option<store::State>>,
}

/// A handle to the controller. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    shared: Arc<Shared>,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) of Unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn proxy_match(m: &spec::StringMatch) -> ProxyMatch {
    ProxyMatch {
        exact: m.exact.clone(),
        prefix: m.prefix.clone(),
        suffix: m.suffix.clone(),
        regex: m.regex.clone(),
        ..ProxyMatch::default()
    }
}

fn match_config(m: &spec::MatchRequest) -> MatchConfig {
    MatchConfig {
        headers: m
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), proxy_match(v)))
            .collect(),
        path: m.uri.as_ref().map(|u| PathMatch {
            exact: u.exact.clone(),
            prefix: u.prefix.clone(),
            regex: u.regex.clone(),
        }),
        method: m
            .method
            .as_ref()
            .and_then(|x| x.exact.clone())
            .map(OneOrMany::One),
        ..MatchConfig::default()
    }
}

/// A service's routes for a status: the A/B matches first (while they route), then the
/// file's rules with every weighted split set to the rollout's weights.
fn routes_for(r: &Rollout) -> Vec<RouteConfig> {
    let s = &r.status;
    let (p, c) = (r.primary_name.as_str(), r.canary_name.as_str());
    let split = |w: u32| -> IndexMap<String, u32> {
        [
            (p.to_string(), 100 - w.min(100)),
            (c.to_string(), w.min(100)),
        ]
        .into_iter()
        .collect()
    };
    let mirror = s
        .mirrored
        .then(|| MirrorConfig::to(c, r.analysis.mirror_percent));
    let mut out = Vec::new();
    let matches = &r.analysis.spec.matches;
    // A canary analysis with `match` ramps inside the matched segment only.
    let segment = r.analysis.strategy == Strategy::Canary && !matches.is_empty();
    if s.ab_routed || segment {
        for (i, m) in matches.iter().enumerate() {
            let mut route = RouteConfig {
                name: Some(format!("analysis-match-{i}")),
                matches: Some(match_config(m)),
                ..RouteConfig::default()
            };
            if s.ab_routed {
                route.to = Some(c.to_string());
            } else {
                route.split = Some(split(s.canary_weight));
                route.mirror = mirror.clone();
            }
            out.push(route);
        }
    }
    let outside = if segment { 0 } else { s.canary_weight };
    let mut base = r.base_routes.clone();
    for route in weighted_rules(&mut base) {
        route.split = Some(split(outside));
        if !segment && s.mirrored {
            route.mirror = mirror.clone();
        }
    }
    out.extend(base);
    out
}

/// Records the guard's counters and returns why the canary must be rolled back now, if
/// the fast-fail guard says so.
fn fast_fail_reason(r: &mut Rollout, proxy: &Proxy, now: u64) -> Option<String> {
    let mirrored = r.status.mirrored;
    let primary = proxy.counts(&r.service, &r.primary_name, false)?;
    let canary = proxy.counts(&r.service, &r.canary_name, mirrored)?;
    r.guard.push_back(GuardMark {
        at_ms: now,
        primary,
        canary,
    });
    let Some(ff) = r.analysis.fast_fail else {
        r.guard.truncate(1);
        return None;
    };
    let horizon = now.saturating_sub(ff.window.as_millis() as u64);
    while r.guard.len() > 1 && r.guard.front().is_some_and(|g| g.at_ms < horizon) {
        r.guard.pop_front();
    }
    if !r.status.phase.is_analysing() || r.status.paused || r.analysis.spec.suspend {
        return None;
    }
    let first = r.guard.front()?;
    let diff = |now: (u64, u64), then: (u64, u64)| Counts {
        requests: now.0.saturating_sub(then.0),
        errors: now.1.saturating_sub(then.1),
    };
    let allowed = r
        .analysis
        .metrics
        .iter()
        .find(|m| m.kind == BuiltinMetric::SuccessRate)
        .and_then(|m| m.min)
        .map(|min| ((100.0 - min) / 100.0).max(0.0));
    checks::guard(
        &ff,
        diff(canary, first.canary),
        diff(primary, first.primary),
        allowed,
    )
}

/// A version after the file changed under a rollout: the file's entry when it was
/// edited, otherwise the rollout's effective one (promotions, StartRollout endpoints).
fn effective_version(
    effective: &VersionConfig,
    file_then: &VersionConfig,
    file_now: &VersionConfig,
) -> VersionConfig {
    if file_then == file_now {
        effective.clone()
    } else {
        file_now.clone()
    }
}

/// Overlays a rollout's effective versions, routes and affinity on a config.
fn overlay(cfg: &mut Config, r: &Rollout) {
    if let Some(svc) = cfg.service_mut(&r.service) {
        svc.versions
            .insert(r.primary_name.clone(), r.primary.clone());
        svc.versions.insert(r.canary_name.clone(), r.canary.clone());
        svc.routes = routes_for(r);
        if let Some(sa) = &r.analysis.spec.session_affinity {
            svc.session_affinity = Some(sa.clone());
        }
        if let Some(spec) = &r.applied_spec {
            svc.analysis = Some(spec.clone());
        }
    }
}

fn errors_text(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Controller {
    /// Starts the controller for every service with an analysis: restores the state
    /// file, routes the proxy as the state says, and spawns one task per rollout.
    pub fn start(
        proxy: Proxy,
        config: &Config,
        analyses: spec::Analyses,
        state_path: Option<PathBuf>,
    ) -> Result<Controller, String> {
        let saved = match &state_path {
            Some(p) => store::load(p)?,
            None => store::State::default(),
        };
        let (notices, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            metrics: Metrics::new(proxy.families().registry()),
            proxy,
            state_path,
            slots: RwLock::new(IndexMap::new()),
            notices,
            poster: HttpPoster::new(),
            saved: Mutex::new(None),
        });
        let controller = Controller { shared };
        let mut rollouts = Vec::new();
        for (name, analysis) in analyses {
            let svc = config
                .services
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| format!("service {name:?} vanished"))?;
            let mut r = new_rollout(svc, analysis);
            if let Some(s) = saved.services.get(&name) {
                restore(&mut r, s, config);
            }
            rollouts.push(r);
        }
        let proxy = &controller.shared.proxy;
        proxy
            .update(|c| {
                for r in &rollouts {
                    overlay(c, r);
                }
                Ok(())
            })
            .map_err(|e| format!("cannot apply the saved rollout state: {e}"))?;
        for r in rollouts {
            controller.spawn(r);
        }
        controller.persist();
        Ok(controller)
    }

    fn spawn(&self, r: Rollout) {
        let resume = r.status.phase != Phase::Initializing;
        let name = r.service.clone();
        let slot = Arc::new(Slot {
            namespace: r.target.namespace.clone(),
            published: Mutex::new((pb::RolloutStatus::default(), saved_of(&r))),
            rollout: tokio::sync::Mutex::new(r),
            kick: Notify::new(),
            stop: Notify::new(),
        });
        self.shared
            .slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, slot.clone());
        self.count_rollouts();
        let me = self.clone();
        tokio::spawn(async move { me.drive(slot, resume).await });
    }

    fn slot(&self, service: &str) -> Result<Arc<Slot>, Refusal> {
        self.shared
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned()
            .ok_or_else(|| {
                Refusal::NotFound(format!(
                    "unknown service {service:?}: no service with an analysis has that name"
                ))
            })
    }

    /// One rollout's loop: ticks every interval (at once when kicked), the guard every
    /// half second.
    async fn drive(self, slot: Arc<Slot>, resume: bool) {
        let interval = slot.rollout.lock().await.analysis.interval;
        {
            let mut r = slot.rollout.lock().await;
            self.mark(&mut r);
            self.publish(&slot, &r);
        }
        let mut next = if resume {
            tokio::time::Instant::now() + interval
        } else {
            tokio::time::Instant::now()
        };
        let mut guard = tokio::time::interval(GUARD_EVERY);
        guard.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut looks = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = slot.kick.notified() => {}
                _ = guard.tick() => {
                    looks = looks.wrapping_add(1);
                    self.guard(&slot, looks.is_multiple_of(PUBLISH_EVERY)).await;
                    continue;
                }
                _ = slot.stop.notified() => return,
            }
            let interval = self.tick(&slot).await;
            next = tokio::time::Instant::now() + interval;
        }
    }

    fn mark(&self, r: &mut Rollout) {
        let proxy = &self.shared.proxy;
        let (Some(primary), Some(canary)) = (
            proxy.measurements(&r.service, &r.primary_name, false),
            proxy.measurements(&r.service, &r.canary_name, false),
        ) else {
            return;
        };
        let shadow = r
            .analysis
            .spec
            .mirror
            .then(|| proxy.measurements(&r.service, &r.canary_name, true))
            .flatten();
        let now = now_ms();
        r.marks.push_back(Mark {
            at_ms: now,
            primary,
            canary,
            shadow,
        });
        let keep = r
            .analysis
            .metrics
            .iter()
            .map(|m| m.window)
            .max()
            .unwrap_or(spec::DEFAULT_METRIC_INTERVAL)
            + r.analysis.interval;
        let horizon = now.saturating_sub(keep.as_millis() as u64);
        while r.marks.len() > 1 && r.marks.get(1).is_some_and(|m| m.at_ms <= horizon) {
            r.marks.pop_front();
        }
    }

    /// Drops measurements from before the canary's current traffic began.
    fn restart_measurements(&self, r: &mut Rollout) {
        r.marks.clear();
        r.guard.clear();
        self.mark(r);
    }

    async fn tick(&self, slot: &Slot) -> Duration {
        let started = Instant::now();
        let mut r = slot.rollout.lock().await;
        self.mark(&mut r);
        let input = Input {
            canary_revision: r.canary.revision.clone(),
            primary_revision: r.primary.revision.clone(),
        };
        let before = r.status.measure_from_ms;
        let actions = {
            let rollout = &mut *r;
            let (mut m, mut env) = rollout.machine(&self.shared, now_ms());
            m.tick(&input, &mut env).await;
            m.actions
        };
        let analysing = r.status.phase.is_analysing() || r.status.phase == Phase::Waiting;
        self.apply(&mut r, actions, before).await;
        if analysing {
            self.shared
                .metrics
                .tick_seconds
                .with_label_values(&[&r.target.name, &r.target.namespace])
                .observe(started.elapsed().as_secs_f64());
        }
        self.publish(slot, &r);
        self.persist();
        r.analysis.interval
    }

    async fn guard(&self, slot: &Slot, refresh: bool) {
        let mut r = slot.rollout.lock().await;
        let now = now_ms();
        let Some(reason) = fast_fail_reason(&mut r, &self.shared.proxy, now) else {
            if refresh {
                self.publish(slot, &r);
            }
            return;
        };
        let before = r.status.measure_from_ms;
        let actions = {
            let rollout = &mut *r;
            let (mut m, mut env) = rollout.machine(&self.shared, now);
            m.fast_fail(&reason, &mut env).await;
            m.actions
        };
        self.apply(&mut r, actions, before).await;
        self.publish(slot, &r);
        self.persist();
    }

    /// Carries out the machine's actions.
    async fn apply(&self, r: &mut Rollout, actions: Vec<Action>, measure_before: Option<u64>) {
        let shared = &self.shared;
        for action in actions {
            match action {
                Action::Route { .. } => {
                    let routes = routes_for(r);
                    if let Err(e) = shared.proxy.set_routes(&r.service, routes) {
                        tracing::error!(service = %r.service, error = %e, "cannot route the rollout's weights");
                    }
                }
                Action::Promote => {
                    r.primary = r.canary.clone();
                    let result =
                        shared
                            .proxy
                            .set_version(&r.service, &r.primary_name, r.primary.clone());
                    if let Err(e) = result {
                        tracing::error!(service = %r.service, error = %e, "cannot promote the canary");
                    }
                }
                Action::Event { warning, message } => self.event(r, warning, message),
                Action::Alert {
                    severity,
                    message,
                    metadata,
                } => self.alert(r, severity, &message, metadata),
                Action::Finished { promoted, skipped } => {
                    let labels = [
                        r.target.name.as_str(),
                        r.target.namespace.as_str(),
                        r.analysis.strategy.label(),
                        if skipped { "skipped" } else { "completed" },
                    ];
                    if promoted {
                        shared.metrics.successes.with_label_values(&labels).inc();
                    } else {
                        shared.metrics.failures.with_label_values(&labels).inc();
                    }
                    if let Some(start) = r.status.started_ms {
                        let secs = now_ms().saturating_sub(start) as f64 / 1000.0;
                        shared
                            .metrics
                            .rollout_seconds
                            .with_label_values(&[
                                r.service.as_str(),
                                r.target.namespace.as_str(),
                                if promoted { "promoted" } else { "failed" },
                            ])
                            .observe(secs);
                    }
                }
            }
        }
        if r.status.measure_from_ms != measure_before {
            self.restart_measurements(r);
        }
    }

    fn event(&self, r: &Rollout, warning: bool, message: String) {
        if warning {
            tracing::warn!(canary = %r.target, "{message}");
        } else {
            tracing::info!(canary = %r.target, "{message}");
        }
        let ts = now_ms();
        let _ = self.shared.notices.send(Notice::Event(pb::Event {
            service: r.service.clone(),
            r#type: if warning { "Warning" } else { "Normal" }.into(),
            message: message.clone(),
            timestamp_ms: ts as i64,
        }));
        let hooks: Vec<_> = r.analysis.hooks_of(HookKind::Event).cloned().collect();
        if hooks.is_empty() {
            return;
        }
        let mut payload = hooks::payload(
            &r.target.name,
            &r.target.namespace,
            r.status.phase,
            r.status.last_applied.as_deref(),
        );
        let poster = self.shared.poster.clone();
        tokio::spawn(async move {
            for hook in hooks {
                let mut meta = hook.metadata.clone();
                meta.insert("eventMessage".into(), message.clone());
                meta.insert(
                    "eventType".into(),
                    if warning { "Warning" } else { "Normal" }.into(),
                );
                meta.insert("timestamp".into(), ts.to_string());
                payload.metadata = meta;
                let mut h = hook.clone();
                h.metadata.clear();
                if let Err(e) = hooks::call(&poster, &h, &payload).await {
                    tracing::error!(hook = %hook.name, error = %e, "event webhook failed");
                }
            }
        });
    }

    fn alert(&self, r: &Rollout, severity: Severity, message: &str, metadata: bool) {
        let targets: Vec<_> = r
            .analysis
            .alerts
            .iter()
            .filter(|t| crate::alerts::delivers(t, severity))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let fields = if metadata {
            vec![
                ("Target".to_string(), format!("Service/{}", r.target)),
                (
                    "Failed checks threshold".to_string(),
                    r.analysis.threshold.to_string(),
                ),
                (
                    "Progress deadline".to_string(),
                    format!("{}s", r.analysis.progress_deadline.as_secs()),
                ),
                ("Traffic routing".to_string(), r.analysis.routing_summary()),
            ]
        } else {
            Vec::new()
        };
        let target = r.target.to_string();
        let (name, namespace) = (r.target.name.clone(), r.target.namespace.clone());
        let text = message.to_string();
        let poster = self.shared.poster.clone();
        tokio::spawn(async move {
            for t in targets {
                let m = crate::alerts::Message {
                    target: &target,
                    namespace: &namespace,
                    name: &name,
                    text: &text,
                    severity,
                    fields: fields.clone(),
                };
                let (url, body) = crate::alerts::render(&t, &m);
                match poster.post(&url, &body, Duration::from_secs(5)).await {
                    Ok(a) if (200..300).contains(&a.status) => {}
                    Ok(a) => {
                        tracing::error!(alert = %t.name, status = a.status, body = %a.body, "alert provider refused the alert")
                    }
                    Err(e) => tracing::error!(alert = %t.name, error = %e, "cannot send alert"),
                }
            }
        });
    }

    fn stats(&self, r: &Rollout) -> (pb::VersionStats, pb::VersionStats) {
        let proxy = &self.shared.proxy;
        let one = |name: &str, mirrored: bool, pick: &dyn Fn(&Mark) -> Option<&VersionSnapshot>| {
            let now = proxy.measurements(&r.service, name, mirrored);
            let then = r.marks.front().and_then(pick);
            match (now, then) {
                (Some(now), Some(then)) => {
                    let w = now.since(then);
                    pb::VersionStats {
                        requests: w.requests(),
                        success_rate: w.success_rate().unwrap_or(0.0),
                        p99_ms: w.quantile_ms(0.99).unwrap_or(0.0),
                        has_data: w.requests() > 0,
                    }
                }
                _ => pb::VersionStats::default(),
            }
        };
        let mirrored = r.status.mirrored;
        (
            one(&r.primary_name, false, &|m| Some(&m.primary)),
            one(&r.canary_name, mirrored, &|m| m.canary(mirrored)),
        )
    }

    fn status_of(&self, r: &Rollout) -> pb::RolloutStatus {
        let s = &r.status;
        let (primary, canary) = self.stats(r);
        pb::RolloutStatus {
            service: r.service.clone(),
            namespace: r.target.namespace.clone(),
            phase: s.phase.name().into(),
            canary_weight: s.canary_weight,
            failed_checks: s.failed_checks,
            iterations: s.iterations,
            mirrored: s.mirrored,
            paused: s.paused || r.analysis.spec.suspend,
            canary_revision: r.canary.revision.clone().unwrap_or_default(),
            primary_revision: r.primary.revision.clone().unwrap_or_default(),
            last_transition_time: rfc3339(s.last_transition_ms),
            message: s.phase.condition_message().into(),
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
            primary: Some(primary),
            canary: Some(canary),
            waiting_gate: s
                .waiting_gate
                .map(|g| g.name().to_string())
                .unwrap_or_default(),
            threshold: r.analysis.threshold,
            max_weight: r.analysis.max_weight,
        }
    }

    fn publish(&self, slot: &Slot, r: &Rollout) {
        let status = self.status_of(r);
        let m = &self.shared.metrics;
        let (name, ns) = (r.target.name.as_str(), r.target.namespace.as_str());
        m.status
            .with_label_values(&[name, ns])
            .set(r.status.phase.status_value());
        m.weight
            .with_label_values(&[&format!("{name}-primary"), ns])
            .set(i64::from(100 - r.status.canary_weight.min(100)));
        m.weight
            .with_label_values(&[name, ns])
            .set(i64::from(r.status.canary_weight));
        for c in &r.status.checks {
            if let Some(v) = c.value {
                let v = if c.name == "request-duration" {
                    v / 1000.0
                } else {
                    v
                };
                m.analysis.with_label_values(&[name, ns, &c.name]).set(v);
            }
        }
        let mut published = slot.published.lock().unwrap_or_else(|p| p.into_inner());
        let changed = published.0.phase != status.phase
            || published.0.canary_weight != status.canary_weight
            || published.0.failed_checks != status.failed_checks
            || published.0.last_event != status.last_event
            || published.0.paused != status.paused
            || published.0.waiting_gate != status.waiting_gate;
        *published = (status.clone(), saved_of(r));
        drop(published);
        if changed {
            let _ = self.shared.notices.send(Notice::Status(Box::new(status)));
        }
    }

    /// `flagger_canary_total` per namespace (set when rollouts are added or removed).
    fn count_rollouts(&self) {
        let slots = self.shared.slots.read().unwrap_or_else(|p| p.into_inner());
        let mut per_ns: IndexMap<&str, i64> = IndexMap::new();
        for s in slots.values() {
            *per_ns.entry(s.namespace.as_str()).or_default() += 1;
        }
        for (ns, n) in per_ns {
            self.shared.metrics.total.with_label_values(&[ns]).set(n);
        }
    }

    /// Writes every rollout's state to the state file (atomically).
    fn persist(&self) {
        let Some(path) = &self.shared.state_path else {
            return;
        };
        let mut saved = self.shared.saved.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = store::State {
            version: 1,
            ..store::State::default()
        };
        for (name, slot) in self
            .shared
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let p = slot.published.lock().unwrap_or_else(|p| p.into_inner());
            state.services.insert(name.clone(), p.1.clone());
        }
        if saved.as_ref() == Some(&state) {
            return;
        }
        match store::save(path, &state) {
            Ok(()) => *saved = Some(state),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot write the rollout state")
            }
        }
    }

    /// The status of one service.
    pub fn status(&self, service: &str) -> Result<pb::RolloutStatus, Refusal> {
        let slot = self.slot(service)?;
        let p = slot.published.lock().unwrap_or_else(|p| p.into_inner());
        Ok(p.0.clone())
    }

    /// Every rollout's status.
    pub fn list(&self) -> Vec<pb::RolloutStatus> {
        let slots = self.shared.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .map(|s| {
                s.published
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .0
                    .clone()
            })
            .collect()
    }

    /// Events and status changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.shared.notices.subscribe()
    }

    async fn after_change(&self, slot: &Slot, r: &Rollout) -> pb::RolloutStatus {
        self.publish(slot, r);
        self.persist();
        slot.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Tells weir the service has a new canary revision (at these endpoints).
    pub async fn start_rollout(
        &self,
        service: &str,
        revision: &str,
        endpoints: &[String],
    ) -> Result<pb::RolloutStatus, Refusal> {
        let slot = self.slot(service)?;
        if revision.trim().is_empty() {
            return Err(Refusal::Invalid("revision must not be empty".into()));
        }
        let mut r = slot.rollout.lock().await;
        if r.status.phase == Phase::Failed && r.status.last_applied.as_deref() == Some(revision) {
            return Err(Refusal::Precondition(format!(
                "revision {revision:?} of {service} was rolled back; run `weir ctl retry {service}` to analyse it again"
            )));
        }
        if r.primary.revision.as_deref() == Some(revision) {
            return Err(Refusal::Precondition(format!(
                "revision {revision:?} is already the primary of {service}"
            )));
        }
        let mut canary = r.canary.clone();
        canary.revision = Some(revision.to_string());
        if !endpoints.is_empty() {
            canary.endpoints = endpoints.to_vec();
        }
        let name = r.canary_name.clone();
        let index = self
            .shared
            .proxy
            .config()
            .services
            .iter()
            .position(|s| s.name == service)
            .unwrap_or(0);
        self.shared
            .proxy
            .set_version(service, &name, canary.clone())
            .map_err(|e| {
                Refusal::Invalid(
                    e.0.iter()
                        .map(|e| {
                            e.to_string()
                                .replace(&format!("services[{index}]."), &format!("{service}: "))
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
        r.canary = canary;
        let status = self.after_change(&slot, &r).await;
        drop(r);
        slot.kick.notify_one();
        Ok(status)
    }

    /// Replaces a service's analysis (Flagger's `analysis:` block as a JSON value).
    pub async fn apply_spec(
        &self,
        service: &str,
        value: serde_json::Value,
    ) -> Result<pb::RolloutStatus, Refusal> {
        let slot = self.slot(service)?;
        let providers = self.shared.proxy.config().alert_providers.clone();
        let analysis = spec::parse(&value, "analysis", &providers)
            .map_err(|e| Refusal::Invalid(errors_text(&e)))?;
        let mut r = slot.rollout.lock().await;
        // Both change together, and both go back if the proxy refuses the result.
        let previous = (
            std::mem::replace(&mut r.analysis, analysis),
            r.applied_spec.replace(value),
        );
        let result = self.shared.proxy.update(|c| {
            overlay(c, &r);
            Ok(())
        });
        if let Err(e) = result {
            (r.analysis, r.applied_spec) = previous;
            return Err(Refusal::Invalid(errors_text(&e.0)));
        }
        let status = self.after_change(&slot, &r).await;
        drop(r);
        slot.kick.notify_one();
        Ok(status)
    }

    /// Promote, abort, pause, resume, retry, set-weight, approve or deny.
    pub async fn operate(&self, service: &str, op: Op) -> Result<pb::RolloutStatus, Refusal> {
        let slot = self.slot(service)?;
        let mut r = slot.rollout.lock().await;
        let before = r.status.measure_from_ms;
        let phase = r.status.phase;
        let mut kick = false;
        let actions = {
            let rollout = &mut *r;
            let (mut m, mut env) = rollout.machine(&self.shared, now_ms());
            let result = match &op {
                Op::Promote => m.promote(),
                Op::Abort => m.abort("manual abort", &mut env).await,
                Op::Pause => {
                    if !phase.is_active() {
                        Err(format!(
                            "{service} is {}: there is no rollout to pause",
                            phase.name()
                        ))
                    } else if m.status.paused {
                        Err(format!("{service} is already paused"))
                    } else {
                        m.status.paused = true;
                        Ok(())
                    }
                }
                Op::Resume => {
                    if !m.status.paused {
                        Err(format!("{service} is not paused"))
                    } else {
                        m.status.paused = false;
                        Ok(())
                    }
                }
                Op::Retry => {
                    if phase != Phase::Failed {
                        Err(format!(
                            "{service} is {}: only a failed rollout can be retried",
                            phase.name()
                        ))
                    } else {
                        m.status.last_applied = None;
                        kick = true;
                        Ok(())
                    }
                }
                Op::SetWeight(w) => m.set_weight(*w),
                Op::Approve(gate) | Op::Deny(gate) => {
                    let kind = if gate.is_empty() {
                        m.status.waiting_gate.ok_or_else(|| {
                            format!(
                                "{service} is not waiting on a gate (phase {})",
                                phase.name()
                            )
                        })
                    } else {
                        HookKind::parse(gate)
                            .filter(|k| k.is_gate())
                            .ok_or_else(|| format!("{gate:?} is not a gate; gates are confirm-rollout, confirm-traffic-increase, confirm-promotion"))
                    };
                    match kind {
                        Err(e) => Err(e),
                        Ok(_) if !phase.is_active() => Err(format!(
                            "{service} is {}: there is no rollout at a gate",
                            phase.name()
                        )),
                        Ok(kind) => {
                            if matches!(op, Op::Approve(_)) {
                                m.status.approvals.insert(kind);
                                kick = true;
                                Ok(())
                            } else {
                                m.abort(&format!("gate {} denied", kind.name()), &mut env)
                                    .await
                            }
                        }
                    }
                }
            };
            result.map(|()| m.actions)
        };
        let actions = actions.map_err(Refusal::Precondition)?;
        self.apply(&mut r, actions, before).await;
        let status = self.after_change(&slot, &r).await;
        drop(r);
        if kick {
            slot.kick.notify_one();
        }
        Ok(status)
    }

    /// Re-reads weir.yaml: invalid files change nothing; a changed canary starts a
    /// rollout; the controller's weights and promotions are kept.
    pub async fn reload(&self, path: &Path) -> Result<(), ConfigErrors> {
        let result = self.reload_inner(path).await;
        self.shared.proxy.record_reload(path, &result);
        result
    }

    async fn reload_inner(&self, path: &Path) -> Result<(), ConfigErrors> {
        let (mut cfg, analyses) = crate::run::load(path)?;
        let slots: Vec<(String, Arc<Slot>)> = self
            .shared
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut guards = Vec::new();
        for (name, slot) in &slots {
            guards.push((name.clone(), slot.clone(), slot.rollout.lock().await));
        }
        // Stage every change on copies; commit only if the proxy accepts the result.
        let mut staged: Vec<Rollout> = Vec::new();
        let mut fresh = Vec::new();
        for (name, analysis) in analyses {
            let Some(svc) = cfg.service(&name) else {
                continue;
            };
            match guards.iter().find(|g| g.0 == name) {
                Some((_, _, r)) => {
                    let mut next = clone_rollout(r);
                    let file_changed = next.file_analysis.as_ref() != svc.analysis.as_ref();
                    if file_changed || next.applied_spec.is_none() {
                        next.analysis = analysis;
                        next.applied_spec = None;
                    }
                    next.file_analysis = svc.analysis.clone();
                    next.base_routes = svc.routes.clone();
                    if let Some(fp) = svc.versions.get(&next.primary_name) {
                        next.primary = effective_version(&next.primary, &next.file_primary, fp);
                        next.file_primary = fp.clone();
                    }
                    if let Some(fc) = svc.versions.get(&next.canary_name) {
                        next.canary = effective_version(&next.canary, &next.file_canary, fc);
                        next.file_canary = fc.clone();
                    }
                    staged.push(next);
                }
                None => fresh.push(new_rollout(svc, analysis)),
            }
        }
        for r in staged.iter().chain(fresh.iter()) {
            overlay(&mut cfg, r);
        }
        self.shared.proxy.apply(cfg)?;
        for next in staged {
            if let Some((_, slot, r)) = guards.iter_mut().find(|g| g.0 == next.service) {
                let marks = std::mem::take(&mut r.marks);
                let guard = std::mem::take(&mut r.guard);
                **r = next;
                r.marks = marks;
                r.guard = guard;
                slot.kick.notify_one();
            }
        }
        drop(guards);
        let current = self.shared.proxy.config();
        for (name, slot) in slots {
            if !current
                .services
                .iter()
                .any(|s| s.name == name && s.analysis.is_some())
            {
                slot.stop.notify_one();
                self.shared
                    .slots
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .shift_remove(&name);
            }
        }
        // Services without a slot only: a kept one was staged above.
        for r in fresh {
            self.spawn(r);
        }
        self.count_rollouts();
        self.persist();
        Ok(())
    }
}

impl Rollout {
    /// The state machine over this rollout's status, and the live hooks and checks it uses.
    fn machine<'a>(&'a mut self, shared: &'a Shared, now_ms: u64) -> (Machine<'a>, LiveEnv<'a>) {
        let env = LiveEnv {
            shared,
            service: &self.service,
            target: &self.target,
            analysis: &self.analysis,
            primary_name: &self.primary_name,
            canary_name: &self.canary_name,
            marks: &self.marks,
            mirrored: self.status.mirrored,
            measure_from: self.status.measure_from_ms,
            revision: self.status.last_applied.clone(),
        };
        let machine = Machine::new(&self.target, &self.analysis, &mut self.status, now_ms);
        (machine, env)
    }
}

fn clone_rollout(r: &Rollout) -> Rollout {
    Rollout {
        service: r.service.clone(),
        target: r.target.clone(),
        analysis: r.analysis.clone(),
        file_analysis: r.file_analysis.clone(),
        applied_spec: r.applied_spec.clone(),
        status: r.status.clone(),
        primary_name: r.primary_name.clone(),
        canary_name: r.canary_name.clone(),
        primary: r.primary.clone(),
        canary: r.canary.clone(),
        file_primary: r.file_primary.clone(),
        file_canary: r.file_canary.clone(),
        base_routes: r.base_routes.clone(),
        marks: VecDeque::new(),
        guard: VecDeque::new(),
    }
}

fn new_rollout(svc: &weir_proxy::config::ServiceConfig, analysis: Analysis) -> Rollout {
    let mut versions = svc.versions.iter();
    let (primary_name, primary) = versions
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("validated: an analysis has two versions");
    let (canary_name, canary) = versions
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("validated: an analysis has two versions");
    Rollout {
        service: svc.name.clone(),
        target: Target {
            name: svc.name.clone(),
            namespace: svc.namespace.clone(),
        },
        analysis,
        file_analysis: svc.analysis.clone(),
        applied_spec: None,
        status: Status::default(),
        primary_name,
        canary_name,
        file_primary: primary.clone(),
        file_canary: canary.clone(),
        primary,
        canary,
        base_routes: svc.routes.clone(),
        marks: VecDeque::new(),
        guard: VecDeque::new(),
    }
}

/// Resumes a saved rollout; a file edit made while weir was down wins for that version.
fn restore(r: &mut Rollout, s: &store::Saved, config: &Config) {
    r.status = s.status.clone();
    r.primary = effective_version(&s.primary, &s.file_primary, &r.file_primary);
    r.canary = effective_version(&s.canary, &s.file_canary, &r.file_canary);
    if let Some(spec) = &s.spec {
        if r.file_analysis.is_some() {
            match spec::parse(spec, "state.spec", &config.alert_providers) {
                Ok(a) => {
                    r.analysis = a;
                    r.applied_spec = Some(spec.clone());
                }
                Err(e) => tracing::warn!(error = %errors_text(&e), "ignoring the saved analysis"),
            }
        }
    }
    // The canary's measurements restart with the process.
    r.status.measure_from_ms = Some(now_ms());
    if r.analysis.spec.revert_on_restart && r.status.phase.is_active() {
        tracing::warn!(canary = %r.target, "weir restarted mid-rollout and revertOnRestart is set: routing all traffic to the primary");
        r.status.phase = Phase::Failed;
        r.status.canary_weight = 0;
        r.status.mirrored = false;
        r.status.ab_routed = false;
        r.status.failed_checks = 0;
        r.status.last_event = format!("Canary failed! Scaling down {}", r.target);
        r.status.last_transition_ms = now_ms();
    } else if r.status.phase.is_active() {
        tracing::info!(canary = %r.target, phase = r.status.phase.name(), weight = r.status.canary_weight, "resuming the rollout");
    }
}

fn saved_of(r: &Rollout) -> store::Saved {
    store::Saved {
        status: r.status.clone(),
        primary: r.primary.clone(),
        canary: r.canary.clone(),
        file_primary: r.file_primary.clone(),
        file_canary: r.file_canary.clone(),
        spec: r.applied_spec.clone(),
    }
}

/// Hooks and checks for the machine, against the live proxy.
struct LiveEnv<'a> {
    shared: &'a Shared,
    service: &'a str,
    target: &'a Target,
    analysis: &'a Analysis,
    primary_name: &'a str,
    canary_name: &'a str,
    marks: &'a VecDeque<Mark>,
    mirrored: bool,
    measure_from: Option<u64>,
    revision: Option<String>,
}

impl Env for LiveEnv<'_> {
    async fn hooks(&mut self, kind: HookKind, phase: Phase) -> HookOutcome {
        let payload = hooks::payload(
            &self.target.name,
            &self.target.namespace,
            phase,
            self.revision.as_deref(),
        );
        for hook in self.analysis.hooks_of(kind) {
            let result = hooks::call(&self.shared.poster, hook, &payload).await;
            match (kind, result) {
                (HookKind::Rollback, Ok(())) => {
                    return HookOutcome::Failed {
                        hook: hook.name.clone(),
                        error: "rollback signalled".into(),
                    }
                }
                (HookKind::Rollback, Err(_)) => {
                    tracing::debug!(hook = %hook.name, "Rollback hook {} not signaling a rollback", hook.name);
                }
                (HookKind::PostRollout, Err(e)) => {
                    tracing::warn!(canary = %self.target, "Post-rollout hook {} failed {e}", hook.name);
                }
                (_, Ok(())) => {
                    let stage = match kind {
                        HookKind::PreRollout => "Pre-rollout",
                        HookKind::ConfirmRollout => "Confirm-rollout",
                        HookKind::ConfirmTrafficIncrease => "Confirm-traffic-increase",
                        HookKind::ConfirmPromotion => "Confirm-promotion",
                        HookKind::PostRollout => "Post-rollout",
                        _ => "",
                    };
                    if !stage.is_empty() {
                        tracing::info!(canary = %self.target, "{stage} check {} passed", hook.name);
                    }
                }
                (_, Err(error)) => {
                    return HookOutcome::Failed {
                        hook: hook.name.clone(),
                        error,
                    }
                }
            }
        }
        HookOutcome::Passed
    }

    async fn checks(&mut self) -> Vec<CheckResult> {
        let proxy = &self.shared.proxy;
        let now = now_ms();
        let canary_now = proxy.measurements(self.service, self.canary_name, self.mirrored);
        let primary_now = proxy.measurements(self.service, self.primary_name, false);
        let (Some(canary_now), Some(primary_now)) = (canary_now, primary_now) else {
            return Vec::new();
        };
        self.analysis
            .metrics
            .iter()
            .map(|m| {
                let start = now
                    .saturating_sub(m.window.as_millis() as u64)
                    .max(self.measure_from.unwrap_or(0));
                let mark = self
                    .marks
                    .iter()
                    .rev()
                    .find(|k| k.at_ms <= start)
                    .or_else(|| self.marks.front());
                let (canary, primary) = match mark {
                    Some(k) => {
                        let c_then = k.canary(self.mirrored);
                        (
                            c_then.map(|t| canary_now.since(t)).unwrap_or_else(|| canary_now.total()),
                            primary_now.since(&k.primary),
                        )
                    }
                    None => (canary_now.total(), primary_now.total()),
                };
                let r = checks::evaluate(m, &canary, &primary);
                tracing::info!(canary = %self.target, check = %r.name, verdict = r.verdict.name(), value = ?r.value, threshold = %r.threshold, "{}", r.detail);
                r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_unix_milliseconds() {
        assert_eq!(rfc3339(0), "");
        assert_eq!(rfc3339(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
