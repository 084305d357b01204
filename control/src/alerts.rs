//! Alerts as Flagger sends them: Slack, MS Teams, Discord, Rocket and Google Chat
//! payloads, plus a generic JSON webhook; severity routing per alert.

use serde_json::{json, Value};

use crate::spec::{AlertKind, AlertTarget, Analysis, Severity, Strategy};

/// Severity routing: info gets everything, warn gets warn and error, error only error.
pub fn delivers(target: &AlertTarget, severity: Severity) -> bool {
    severity >= target.severity
}

/// One alert to send.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// `podinfo.test`.
    pub target: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub text: &'a str,
    pub severity: Severity,
    /// Title/value pairs (Target, Failed checks threshold, Progress deadline, Traffic routing).
    pub fields: Vec<(String, String)>,
}

/// The URL and JSON body for a provider.
pub fn render(to: &AlertTarget, m: &Message<'_>) -> (String, Value) {
    let error = m.severity == Severity::Error;
    let fields: Vec<Value> = m
        .fields
        .iter()
        .map(|(t, v)| json!({"title": t, "value": v, "short": false}))
        .collect();
    let slack = |color: &str| {
        json!({
            "channel": to.channel,
            "username": to.username,
            "icon_emoji": ":rocket:",
            "attachments": [{
                "color": color,
                "author_name": m.target,
                "text": m.text,
                "mrkdwn_in": ["text"],
                "fields": fields,
            }],
        })
    };
    match to.kind {
        AlertKind::Slack => (
            to.address.clone(),
            slack(if error { "danger" } else { "good" }),
        ),
        AlertKind::Discord => (
            format!("{}/slack", to.address.trim_end_matches('/')),
            slack(if error { "danger" } else { "good" }),
        ),
        AlertKind::Rocket => (
            to.address.clone(),
            slack(if error { "#FF0000" } else { "#0076D7" }),
        ),
        AlertKind::MsTeams => {
            let facts: Vec<Value> = m
                .fields
                .iter()
                .map(|(t, v)| json!({"name": t, "value": v}))
                .collect();
            (
                to.address.clone(),
                json!({
                    "@type": "MessageCard",
                    "@context": "http://schema.org/extensions",
                    "themeColor": if error { "FF0000" } else { "0076D7" },
                    "summary": m.target,
                    "sections": [{
                        "activityTitle": m.text,
                        "activitySubtitle": m.target,
                        "facts": facts,
                    }],
                }),
            )
        }
        AlertKind::GChat => {
            let mut widgets = vec![json!({"textParagraph": {"text": m.text}})];
            widgets.extend(
                m.fields
                    .iter()
                    .map(|(t, v)| json!({"keyValue": {"topLabel": t, "content": v}})),
            );
            (
                to.address.clone(),
                json!({
                    "cards": [{
                        "header": {"title": "Flagger", "subtitle": m.target},
                        "sections": [{"widgets": widgets}],
                    }],
                }),
            )
        }
        AlertKind::Webhook => (
            to.address.clone(),
            json!({
                "name": m.name,
                "namespace": m.namespace,
                "severity": m.severity.name(),
                "message": m.text,
                "fields": m.fields.iter().map(|(t, v)| (t.clone(), Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
            }),
        ),
    }
}

/// A short description of the traffic routing, for alert metadata.
pub fn routing_summary(a: &Analysis) -> String {
    match a.strategy {
        Strategy::AbTesting => "A/B Testing".into(),
        Strategy::BlueGreen => "Blue/Green".into(),
        Strategy::Canary if !a.step_weights.is_empty() => format!(
            "Weight steps: {} max: {}",
            a.step_weights
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(","),
            a.max_weight
        ),
        Strategy::Canary => format!(
            "Weight step: {} max: {}",
            a.step_weight.unwrap_or(0),
            a.max_weight
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: &str, severity: Severity) -> AlertTarget {
        AlertTarget {
            name: "on-call".into(),
            severity,
            kind: serde_json::from_value(json!(kind)).expect("a provider type"),
            address: "http://127.0.0.1:1/hook".into(),
            channel: "general".into(),
            username: "flagger".into(),
        }
    }

    fn msg(severity: Severity) -> Message<'static> {
        Message {
            target: "podinfo.test",
            namespace: "test",
            name: "podinfo",
            text: "Failed checks threshold reached 5",
            severity,
            fields: vec![("Target".into(), "Service/podinfo.test".into())],
        }
    }

    #[test]
    fn severity_routing_follows_flagger() {
        let info = target("slack", Severity::Info);
        let warn = target("slack", Severity::Warn);
        let error = target("slack", Severity::Error);
        assert!(delivers(&info, Severity::Info) && delivers(&info, Severity::Error));
        assert!(
            !delivers(&warn, Severity::Info)
                && delivers(&warn, Severity::Warn)
                && delivers(&warn, Severity::Error)
        );
        assert!(!delivers(&error, Severity::Warn) && delivers(&error, Severity::Error));
    }

    #[test]
    fn payloads_have_each_providers_shape() {
        let (_, s) = render(&target("slack", Severity::Info), &msg(Severity::Error));
        assert_eq!(s["attachments"][0]["color"], "danger");
        assert_eq!(s["attachments"][0]["author_name"], "podinfo.test");
        assert_eq!(s["icon_emoji"], ":rocket:");
        assert_eq!(s["attachments"][0]["fields"][0]["title"], "Target");
        let (url, d) = render(&target("discord", Severity::Info), &msg(Severity::Info));
        assert_eq!(url, "http://127.0.0.1:1/hook/slack");
        assert_eq!(d["attachments"][0]["color"], "good");
        let (_, r) = render(&target("rocket", Severity::Info), &msg(Severity::Error));
        assert_eq!(r["attachments"][0]["color"], "#FF0000");
        let (_, t) = render(&target("msteams", Severity::Info), &msg(Severity::Info));
        assert_eq!(t["@type"], "MessageCard");
        assert_eq!(t["themeColor"], "0076D7");
        assert_eq!(
            t["sections"][0]["activityTitle"],
            "Failed checks threshold reached 5"
        );
        let (_, g) = render(&target("gchat", Severity::Info), &msg(Severity::Info));
        assert_eq!(g["cards"][0]["header"]["title"], "Flagger");
        assert_eq!(g["cards"][0]["header"]["subtitle"], "podinfo.test");
        let (_, w) = render(&target("webhook", Severity::Info), &msg(Severity::Warn));
        assert_eq!(w["severity"], "warn");
        assert_eq!(w["fields"]["Target"], "Service/podinfo.test");
    }
}
