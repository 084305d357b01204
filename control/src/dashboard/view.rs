//! The dashboard's JSON: services, events, data planes and traffic points, redacted as
//! `/config` is. Names are data here; the page puts them in the document as text.

use serde_json::{json, Value};

use super::sample::{point, round, Point};
use crate::status::{DataPlanes, Event, ServiceStatus};

/// One service as the page shows it.
pub(super) fn service(s: &ServiceStatus) -> Value {
    let mut v = json!({
        "name": s.service,
        "namespace": s.namespace,
        "phase": s.phase,
        "message": s.message,
        "canaryWeight": s.canary_weight,
        "maxWeight": s.max_weight,
        "failedChecks": s.failed_checks,
        "threshold": s.threshold,
        "iterations": s.iterations,
        "mirrored": s.mirrored,
        "paused": s.paused,
        "waitingGate": s.waiting_gate,
        "stateLost": s.state_lost,
        "primaryRevision": s.primary_revision,
        "canaryRevision": s.canary_revision,
        "lastEvent": s.last_event,
        "lastTransitionMs": s.last_transition_ms,
        "guard": if s.guard_bound > 0.0 {
            json!({ "evidence": round(s.guard_evidence, 3), "bound": round(s.guard_bound, 1) })
        } else {
            Value::Null
        },
        "versions": s.versions.iter().map(|v| json!({
            "name": v.name, "weight": v.weight, "revision": v.revision,
        })).collect::<Vec<_>>(),
        "checks": s.checks.iter().map(|c| json!({
            "name": c.name, "verdict": c.verdict, "value": round(c.value, 3),
            "threshold": c.threshold, "detail": c.detail,
        })).collect::<Vec<_>>(),
        "replicas": s.replicas.map(|r| json!({ "synced": r.synced, "live": r.live, "version": r.version })),
    });
    weir_proxy::redact::json(&mut v);
    v
}

pub(super) fn event(e: &Event) -> Value {
    let mut v = json!({
        "service": e.service,
        "warning": e.warning,
        "message": e.message,
        "timestampMs": e.timestamp_ms,
    });
    weir_proxy::redact::json(&mut v);
    v
}

fn planes(p: &DataPlanes) -> Value {
    json!({
        "version": p.version,
        "planes": p.planes.iter().map(|d| json!({
            "kind": d.kind, "name": d.name, "address": d.address, "version": d.version,
            "state": d.state, "lastSeenMs": d.last_seen_ms,
            "rps": round(d.requests_per_second, 1), "error": d.error,
        })).collect::<Vec<_>>(),
    })
}

/// The first paint: every service, the history, the recent events, the data planes.
pub(super) fn snapshot(
    services: &[ServiceStatus],
    history: Value,
    events: Vec<Value>,
    data_planes: &DataPlanes,
) -> Value {
    json!({
        "services": services.iter().map(service).collect::<Vec<_>>(),
        "history": history,
        "events": events,
        "planes": planes(data_planes),
    })
}

/// One second: the services that changed, every version's traffic, the data planes.
pub(super) fn frame(changed: &[ServiceStatus], live: &[Point], data_planes: &DataPlanes) -> Value {
    let mut traffic = serde_json::Map::new();
    for p in live {
        let entry = traffic
            .entry(p.service.clone())
            .or_insert_with(|| json!({}));
        if let Some(o) = entry.as_object_mut() {
            o.insert(p.version.clone(), point(p));
        }
    }
    json!({
        "services": changed.iter().map(service).collect::<Vec<_>>(),
        "traffic": traffic,
        "planes": planes(data_planes),
    })
}
