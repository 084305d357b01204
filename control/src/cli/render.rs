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
    columns(&rows)
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

/// One live line of `weir demo`: the weight, the split as seen, each version's window.
pub fn view_line(
    elapsed: Duration,
    weight: u32,
    phase: &str,
    primary: &Window,
    canary: &Window,
) -> String {
    let total = (primary.requests() + canary.requests()).max(1) as f64;
    let pct = |w: &Window| 100.0 * w.requests() as f64 / total;
    let bar = weight_bar(weight, 20);
    let fmt = |w: &Window| {
        format!(
            "{:>5} req  ok {:>7}  p99 {:>8}",
            w.requests(),
            w.success_rate()
                .map(|r| format!("{r:.2}%"))
                .unwrap_or_else(|| "-".into()),
            w.quantile_ms(0.99)
                .map(|p| format!("{p:.2}ms"))
                .unwrap_or_else(|| "-".into())
        )
    };
    format!(
        "[{:>3}s] {phase:<16} weight [{bar}] {weight:>3}% (seen {:>5.1}%) | primary {} | canary {}",
        elapsed.as_secs(),
        pct(canary),
        fmt(primary),
        fmt(canary)
    )
}
