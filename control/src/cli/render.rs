//! What the command line prints: the rollout table, weight bars, progress lines.

use std::time::Duration;

use weir_protos::control as pb;
use weir_proxy::Window;

/// The `kubectl get canary` table; with replicas, how many serve the current routing.
pub fn table(rollouts: &[pb::RolloutStatus]) -> String {
    let fleet = rollouts.iter().any(|r| r.replicas.is_some());
    let mut head: Vec<String> = [
        "NAME",
        "STATUS",
        "WEIGHT",
        "FAILEDCHECKS",
        "LASTTRANSITIONTIME",
        "VERSIONS",
    ]
    .map(String::from)
    .to_vec();
    if fleet {
        head.push("REPLICAS".into());
    }
    let mut rows = vec![head];
    for r in rollouts {
        let status = if r.state_lost {
            "StateLost (weir ctl reset)".to_string()
        } else if r.paused {
            format!("{} (paused)", r.phase)
        } else {
            r.phase.clone()
        };
        let mut row = vec![
            r.service.clone(),
            status,
            r.canary_weight.to_string(),
            r.failed_checks.to_string(),
            r.last_transition_time.clone(),
            versions_cell(&r.versions),
        ];
        if fleet {
            row.push(r.replicas.as_ref().map_or_else(String::new, replicas_cell));
        }
        rows.push(row);
    }
    let mut out = columns(&rows);
    for r in rollouts {
        out.push_str(&resolved_lines(r));
    }
    out
}

/// `podinfo/canary: podinfo-canary.test:9898 -> 10.0.0.7:9898, 10.0.0.8:9898` for each
/// version with a hostname endpoint: where its requests go now.
fn resolved_lines(r: &pb::RolloutStatus) -> String {
    let mut out = String::new();
    for v in &r.versions {
        let is_ip = |a: &&str| a.parse::<std::net::SocketAddr>().is_ok();
        let names: Vec<&str> = v
            .endpoints
            .iter()
            .map(String::as_str)
            .filter(|e| !is_ip(e))
            .collect();
        if names.is_empty() {
            continue;
        }
        let (resolved, pending): (Vec<&str>, Vec<&str>) =
            v.addresses.iter().map(String::as_str).partition(is_ip);
        let mut to = resolved.join(", ");
        if !pending.is_empty() {
            let sep = if to.is_empty() { "" } else { "; " };
            to = format!(
                "{to}{sep}{} not resolved yet (dialled by name)",
                pending.len()
            );
        }
        out.push_str(&format!(
            "{}/{}: {} -> {to}\n",
            r.service,
            v.name,
            names.join(", "),
        ));
    }
    out
}

/// `primary 80 (5.0.0), canary 20 (5.0.1)`: each version's weight and revision.
fn versions_cell(versions: &[pb::VersionWeight]) -> String {
    versions
        .iter()
        .map(|v| match v.revision.as_str() {
            "" => format!("{} {}", v.name, v.weight),
            rev => format!("{} {} ({rev})", v.name, v.weight),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `3/3 at version 17`: how many live replicas serve the current routing version.
fn replicas_cell(s: &pb::ReplicaSummary) -> String {
    format!("{}/{} at version {}", s.synced, s.live, s.generation)
}

/// `weir ctl replicas`: every data plane (weir replicas and Envoy nodes): KIND, NAME,
/// ADDRESS, VERSION ACKED, STATE, LAST SEEN, REQ/S and why it refused the last routing.
pub fn replicas_table(reply: &pb::ListReplicasReply) -> String {
    let head = [
        "KIND",
        "NAME",
        "ADDRESS",
        "VERSION ACKED",
        "STATE",
        "LAST SEEN",
        "REQ/S",
        "ERROR",
    ];
    let mut rows = vec![head.map(String::from).to_vec()];
    for r in &reply.replicas {
        rows.push(vec![
            r.kind.clone(),
            r.name.clone(),
            r.address.clone(),
            r.generation.to_string(),
            r.state.clone(),
            format!("{:.1}s ago", r.last_seen_ms as f64 / 1000.0),
            format!("{:.1}", r.requests_per_second),
            r.error.clone(),
        ]);
    }
    let mut out = columns(&rows);
    out.push_str(&format!("current routing version: {}\n", reply.generation));
    out
}

/// Rows as left-aligned columns three spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn stats(v: &Option<pb::VersionStats>) -> String {
    match v {
        Some(v) if v.has_data => format!(
            "{:>6} req  ok {:>7.2}%  p99 {:>7.2}ms",
            v.requests, v.success_rate, v.p99_ms
        ),
        _ => "no traffic".into(),
    }
}

/// The canary weight as a bar of `width` cells, `#` for the canary's share.
pub fn weight_bar(weight: u32, width: usize) -> String {
    let filled = (weight as usize * width).div_ceil(100).min(width);
    "#".repeat(filled) + &".".repeat(width - filled)
}

/// How an event is labelled on a terminal: `WARN` or `info`.
pub fn event_label(warning: bool) -> &'static str {
    if warning {
        "WARN"
    } else {
        "info"
    }
}

/// One live line of `weir ctl watch`.
pub fn progress_line(s: &pb::RolloutStatus) -> String {
    if s.phase == crate::controller::STATIC_PHASE {
        return format!(
            "{:<16} {}  primary {}  canary {}",
            s.phase,
            versions_cell(&s.versions),
            stats(&s.primary),
            stats(&s.canary)
        );
    }
    let bar = weight_bar(s.canary_weight, 20);
    let mut line = format!(
        "{:<16} [{bar}] {:>3}%  primary {}  canary {}  failed {}/{}",
        s.phase,
        s.canary_weight,
        stats(&s.primary),
        stats(&s.canary),
        s.failed_checks,
        s.threshold
    );
    if s.mirrored {
        line.push_str("  (mirroring)");
    }
    if s.paused {
        line.push_str("  (paused)");
    }
    if !s.waiting_gate.is_empty() {
        line.push_str(&format!("  waiting on {}", s.waiting_gate));
    }
    line
}

/// The header over `weir demo`'s live lines.
pub const VIEW_HEADER: &str =
    "  time  phase            canary weight     primary: req ok p99   | canary: req ok p99";

/// One live line of `weir demo` (under 100 columns): the phase, the canary's weight, and
/// each version's requests, success rate and p99 over the last second.
pub fn view_line(
    elapsed: Duration,
    weight: u32,
    phase: &str,
    primary: &Window,
    canary: &Window,
) -> String {
    let bar = weight_bar(weight, 10);
    let fmt = |w: &Window| {
        format!(
            "{:>5} {:>7} {:>8}",
            w.requests(),
            w.success_rate()
                .map(|r| format!("{r:.2}%"))
                .unwrap_or_else(|| "-".into()),
            w.quantile_ms(0.99)
                .map(|p| format!("{p:.1}ms"))
                .unwrap_or_else(|| "-".into())
        )
    };
    format!(
        "[{:>4}s] {phase:<16} {weight:>3}% [{bar}] {} | {}",
        elapsed.as_secs(),
        fmt(primary),
        fmt(canary)
    )
}
