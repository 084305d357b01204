//! Telling people what a rollout did: events (a log line, the Watch stream, event
//! webhooks) and alerts (each alert target whose severity routing accepts it).

use std::time::Duration;

use tokio::sync::broadcast;

use crate::alerts;
use crate::clock::now_ms;
use crate::hooks;
use crate::http_client::HttpPoster;
use crate::machine::{Phase, Target};
use crate::spec::{Analysis, HookKind, Severity};
use crate::status::{Event, ServiceStatus};

/// What Watch streams.
#[derive(Debug, Clone)]
pub enum Notice {
    Event(Event),
    Status(Box<ServiceStatus>),
}

/// Sends events and alerts.
#[derive(Clone)]
pub struct Notifier {
    notices: broadcast::Sender<Notice>,
    poster: HttpPoster,
}

/// The rollout an event or alert is about.
pub struct About<'a> {
    pub target: &'a Target,
    pub analysis: &'a Analysis,
    pub phase: Phase,
    pub revision: Option<&'a str>,
}

impl Notifier {
    /// A notifier posting with `poster`.
    pub fn new(poster: HttpPoster) -> Notifier {
        let (notices, _) = broadcast::channel(1024);
        Notifier { notices, poster }
    }

    /// Events and status changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// A status change for Watch.
    pub fn status(&self, status: ServiceStatus) {
        let _ = self.notices.send(Notice::Status(Box::new(status)));
    }

    /// An event about a service without an analysis: logged and streamed (there are no
    /// webhooks to post it to).
    pub fn plain_event(&self, service: &str, message: String) {
        tracing::info!(service, "{message}");
        let _ = self.notices.send(Notice::Event(Event {
            service: service.to_string(),
            warning: false,
            message,
            timestamp_ms: now_ms(),
        }));
    }

    /// An event: logged, streamed, and posted to the analysis' event webhooks.
    pub fn event(&self, about: &About<'_>, warning: bool, message: String) {
        if warning {
            tracing::warn!(canary = %about.target, "{message}");
        } else {
            tracing::info!(canary = %about.target, "{message}");
        }
        let ts = now_ms();
        let kind = if warning { "Warning" } else { "Normal" };
        let _ = self.notices.send(Notice::Event(Event {
            service: about.target.name.clone(),
            warning,
            message: message.clone(),
            timestamp_ms: ts,
        }));
        let hooks: Vec<_> = about.analysis.hooks_of(HookKind::Event).cloned().collect();
        if hooks.is_empty() {
            return;
        }
        let mut payload = hooks::payload(
            &about.target.name,
            &about.target.namespace,
            about.phase,
            about.revision,
        );
        // Each hook's own metadata joins these in `hooks::call` (these win a clash).
        payload.metadata.insert("eventMessage".into(), message);
        payload.metadata.insert("eventType".into(), kind.into());
        payload.metadata.insert("timestamp".into(), ts.to_string());
        let poster = self.poster.clone();
        tokio::spawn(async move {
            for hook in hooks {
                if let Err(e) = hooks::call(&poster, &hook, &payload).await {
                    tracing::error!(hook = %hook.name, error = %e, "event webhook failed");
                }
            }
        });
    }

    /// An alert to every target whose severity routing accepts it; `metadata` adds the
    /// analysis' settings as fields.
    pub fn alert(&self, about: &About<'_>, severity: Severity, message: &str, metadata: bool) {
        let a = about.analysis;
        let targets: Vec<_> = a
            .alerts
            .iter()
            .filter(|t| alerts::delivers(t, severity))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let t = about.target;
        let fields = if metadata {
            vec![
                ("Target".to_string(), format!("Service/{t}")),
                (
                    "Failed checks threshold".to_string(),
                    a.threshold.to_string(),
                ),
                (
                    "Progress deadline".to_string(),
                    format!("{}s", a.progress_deadline.as_secs()),
                ),
                ("Traffic routing".to_string(), alerts::routing_summary(a)),
            ]
        } else {
            Vec::new()
        };
        let target = t.to_string();
        let (name, namespace) = (t.name.clone(), t.namespace.clone());
        let text = message.to_string();
        let poster = self.poster.clone();
        tokio::spawn(async move {
            for to in targets {
                let m = alerts::Message {
                    target: &target,
                    namespace: &namespace,
                    name: &name,
                    text: &text,
                    severity,
                    fields: fields.clone(),
                };
                let (url, body) = alerts::render(&to, &m);
                match poster.post(&url, &body, Duration::from_secs(5)).await {
                    Ok(a) if (200..300).contains(&a.status) => {}
                    Ok(a) => {
                        tracing::error!(alert = %to.name, status = a.status, body = %a.body, "alert provider refused the alert")
                    }
                    Err(e) => tracing::error!(alert = %to.name, error = %e, "cannot send alert"),
                }
            }
        });
    }
}
