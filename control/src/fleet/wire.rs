//! The fleet stream's messages and weir's own types, both ways, in one place: routing
//! snapshots and deltas out to replicas, measurement deltas back. What a replica receives
//! is checked for shape here (a rule with no target, a report of the wrong length); what
//! it means is checked by the proxy that builds it.

use std::time::Duration;

use indexmap::IndexMap;
use weir_protos::fleet as fb;
use weir_proxy::config::{
    Dur, MatchConfig, MirrorConfig, OneOrMany, PathMatch, SessionAffinityConfig, StickyConfig,
    StringMatch, UpstreamTls, VersionConfig,
};
use weir_proxy::routing::{Rule, Target};
use weir_proxy::{MeasurementDelta, RoutingDelta, ServiceRouting};

/// A measurement delta as sent.
pub fn delta_to_pb(d: MeasurementDelta) -> fb::VersionDelta {
    fb::VersionDelta {
        service: d.service,
        version: d.version,
        mirrored: d.mirrored,
        responses: d.responses.to_vec(),
        failures: d.failures.into_iter().collect(),
        client_faults: d.client_faults.into_iter().collect(),
        codes: d
            .codes
            .into_iter()
            .map(|(c, n)| (u32::from(c), n))
            .collect(),
        buckets: d.buckets,
        sum_micros: d.sum_micros,
        latency: d.latency,
    }
}

/// A measurement delta as received; None when its shape is wrong (counted as malformed).
pub fn delta_from_pb(d: fb::VersionDelta) -> Option<MeasurementDelta> {
    let responses: [u64; 5] = d.responses.try_into().ok()?;
    let codes = d
        .codes
        .into_iter()
        .map(|(c, n)| Some((u16::try_from(c).ok()?, n)))
        .collect::<Option<Vec<_>>>()?;
    Some(MeasurementDelta {
        service: d.service,
        version: d.version,
        mirrored: d.mirrored,
        responses,
        failures: d.failures.into_iter().collect(),
        client_faults: d.client_faults.into_iter().collect(),
        codes,
        buckets: d.buckets,
        sum_micros: d.sum_micros,
        latency: d.latency,
    })
}

/// A routing delta as sent.
pub fn routing_to_pb(d: &RoutingDelta) -> fb::RoutingDelta {
    fb::RoutingDelta {
        version: d.version,
        full: d.full,
        services: d.services.iter().map(|s| service_to_pb(s)).collect(),
        removed: d.removed.clone(),
    }
}

/// A routing delta as received, or what is wrong with its shape.
pub fn routing_from_pb(d: fb::RoutingDelta) -> Result<RoutingDelta, String> {
    let services = d
        .services
        .into_iter()
        .map(|s| service_from_pb(s).map(std::sync::Arc::new))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RoutingDelta {
        version: d.version,
        full: d.full,
        services,
        removed: d.removed,
    })
}

fn ns(d: Dur) -> u64 {
    u64::try_from(d.0.as_nanos()).unwrap_or(u64::MAX)
}

fn dur(ns: u64) -> Dur {
    Dur(Duration::from_nanos(ns))
}

fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn service_to_pb(s: &ServiceRouting) -> fb::ServiceRouting {
    fb::ServiceRouting {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hosts: s.hosts.clone(),
        port: u32::from(s.port),
        versions: s
            .versions
            .iter()
            .map(|(name, v)| fb::Version {
                name: name.clone(),
                endpoints: v.endpoints.clone(),
                revision: v.revision.clone().unwrap_or_default(),
                http2: v.http2,
                connect_timeout_ns: ns(v.connect_timeout),
                idle_timeout_ns: ns(v.idle_timeout),
                max_idle_per_endpoint: v.max_idle_per_endpoint as u64,
                tls: v.tls.as_ref().map(|t| fb::UpstreamTls {
                    ca: t.ca.clone().unwrap_or_default(),
                    server_name: t.server_name.clone().unwrap_or_default(),
                    cert: t.cert.clone().unwrap_or_default(),
                    key: t.key.clone().unwrap_or_default(),
                }),
            })
            .collect(),
        rules: s.rules.iter().map(rule_to_pb).collect(),
        sticky: s.sticky.as_ref().and_then(|k| {
            let key = match (&k.header, &k.cookie) {
                (Some(h), _) => fb::sticky::Key::Header(h.clone()),
                (None, Some(c)) => fb::sticky::Key::Cookie(c.clone()),
                (None, None) => return None,
            };
            Some(fb::Sticky { key: Some(key) })
        }),
        affinity: s.affinity.as_ref().map(|a| fb::SessionAffinity {
            cookie_name: a.cookie_name.clone(),
            primary_cookie_name: a.primary_cookie_name.clone().unwrap_or_default(),
            max_age: a.max_age,
            domain: a.domain.clone().unwrap_or_default(),
            path: a.path.clone().unwrap_or_default(),
            http_only: a.http_only,
            secure: a.secure,
            same_site: a.same_site.clone().unwrap_or_default(),
            primary_max_age: a.primary_max_age,
        }),
        version: s.version,
        affinity_token: s.affinity_token.clone().unwrap_or_default(),
    }
}

fn service_from_pb(s: fb::ServiceRouting) -> Result<ServiceRouting, String> {
    let name = s.name;
    let port =
        u16::try_from(s.port).map_err(|_| format!("{name}: port {} is out of range", s.port))?;
    let versions = s
        .versions
        .into_iter()
        .map(|v| {
            let tls = v.tls.map(|t| UpstreamTls {
                ca: some(&t.ca),
                server_name: some(&t.server_name),
                cert: some(&t.cert),
                key: some(&t.key),
            });
            let settings = VersionConfig {
                endpoints: v.endpoints,
                revision: some(&v.revision),
                http2: v.http2,
                connect_timeout: dur(v.connect_timeout_ns),
                idle_timeout: dur(v.idle_timeout_ns),
                max_idle_per_endpoint: usize::try_from(v.max_idle_per_endpoint)
                    .unwrap_or(usize::MAX),
                tls,
            };
            (v.name, settings)
        })
        .collect();
    let rules = s
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| rule_from_pb(r).ok_or_else(|| format!("{name}: rule {i} has no target")))
        .collect::<Result<Vec<_>, String>>()?;
    let sticky = s.sticky.and_then(|k| match k.key? {
        fb::sticky::Key::Header(h) => Some(StickyConfig {
            header: Some(h),
            cookie: None,
        }),
        fb::sticky::Key::Cookie(c) => Some(StickyConfig {
            header: None,
            cookie: Some(c),
        }),
    });
    let affinity = s.affinity.map(|a| SessionAffinityConfig {
        cookie_name: a.cookie_name,
        primary_cookie_name: some(&a.primary_cookie_name),
        max_age: a.max_age,
        domain: some(&a.domain),
        path: some(&a.path),
        http_only: a.http_only,
        secure: a.secure,
        same_site: some(&a.same_site),
        primary_max_age: a.primary_max_age,
    });
    Ok(ServiceRouting {
        name,
        namespace: s.namespace,
        hosts: s.hosts,
        port,
        versions,
        rules,
        sticky,
        affinity,
        affinity_token: some(&s.affinity_token),
        version: s.version,
    })
}

fn rule_to_pb(r: &Rule) -> fb::Rule {
    fb::Rule {
        name: r.name.clone().unwrap_or_default(),
        r#match: r.matches.as_ref().map(match_to_pb),
        target: Some(match &r.target {
            Target::To(v) => fb::rule::Target::To(v.clone()),
            Target::Split(w) => fb::rule::Target::Split(fb::Split {
                weights: w
                    .iter()
                    .map(|(version, weight)| fb::Weight {
                        version: version.clone(),
                        weight: *weight,
                    })
                    .collect(),
            }),
        }),
        mirror: r.mirror.as_ref().map(|m| fb::Mirror {
            version: m.version.clone(),
            percent: m.percent,
            compare: m.compare,
            max_body_bytes: m.max_body_bytes as u64,
            max_in_flight: m.max_in_flight as u64,
            timeout_ns: ns(m.timeout),
        }),
        timeout_ns: ns(r.timeout),
        idle_timeout_ns: ns(r.idle_timeout),
        upgrades: r.upgrades.clone(),
    }
}

fn rule_from_pb(r: fb::Rule) -> Option<Rule> {
    let target = match r.target? {
        fb::rule::Target::To(v) => Target::To(v),
        fb::rule::Target::Split(s) => Target::Split(
            s.weights
                .into_iter()
                .map(|w| (w.version, w.weight))
                .collect::<IndexMap<_, _>>(),
        ),
    };
    Some(Rule {
        name: some(&r.name),
        matches: r.r#match.map(match_from_pb),
        target,
        mirror: r.mirror.map(|m| MirrorConfig {
            version: m.version,
            percent: m.percent,
            compare: m.compare,
            max_body_bytes: usize::try_from(m.max_body_bytes).unwrap_or(usize::MAX),
            max_in_flight: usize::try_from(m.max_in_flight).unwrap_or(usize::MAX),
            timeout: dur(m.timeout_ns),
        }),
        timeout: dur(r.timeout_ns),
        idle_timeout: dur(r.idle_timeout_ns),
        upgrades: r.upgrades,
    })
}

fn match_to_pb(m: &MatchConfig) -> fb::Match {
    let named = |list: &IndexMap<String, StringMatch>| -> Vec<fb::NamedMatch> {
        list.iter()
            .map(|(name, sm)| fb::NamedMatch {
                name: name.clone(),
                r#match: Some(string_to_pb(sm)),
            })
            .collect()
    };
    fb::Match {
        path: m.path.as_ref().map(|p| fb::PathMatch {
            kind: [
                p.exact.clone().map(fb::path_match::Kind::Exact),
                p.prefix.clone().map(fb::path_match::Kind::Prefix),
                p.regex.clone().map(fb::path_match::Kind::Regex),
            ]
            .into_iter()
            .flatten()
            .next(),
        }),
        methods: m.method.iter().flat_map(|o| o.iter().cloned()).collect(),
        headers: named(&m.headers),
        cookies: named(&m.cookies),
    }
}

fn match_from_pb(m: fb::Match) -> MatchConfig {
    let named = |list: Vec<fb::NamedMatch>| -> IndexMap<String, StringMatch> {
        list.into_iter()
            .map(|n| (n.name, n.r#match.map(string_from_pb).unwrap_or_default()))
            .collect()
    };
    let mut path = PathMatch::default();
    match m.path.and_then(|p| p.kind) {
        Some(fb::path_match::Kind::Exact(e)) => path.exact = Some(e),
        Some(fb::path_match::Kind::Prefix(p)) => path.prefix = Some(p),
        Some(fb::path_match::Kind::Regex(r)) => path.regex = Some(r),
        None => {}
    }
    let has_path = path != PathMatch::default();
    MatchConfig {
        path: has_path.then_some(path),
        method: match m.methods.len() {
            0 => None,
            _ => Some(OneOrMany::Many(m.methods)),
        },
        headers: named(m.headers),
        cookies: named(m.cookies),
    }
}

fn string_to_pb(sm: &StringMatch) -> fb::StringMatch {
    use fb::string_match::Kind;
    let kind = [
        sm.exact.clone().map(Kind::Exact),
        sm.prefix.clone().map(Kind::Prefix),
        sm.suffix.clone().map(Kind::Suffix),
        sm.regex.clone().map(Kind::Regex),
        sm.present.map(Kind::Present),
    ]
    .into_iter()
    .flatten()
    .next();
    fb::StringMatch {
        kind,
        invert: sm.invert,
    }
}

fn string_from_pb(sm: fb::StringMatch) -> StringMatch {
    use fb::string_match::Kind;
    let mut out = StringMatch {
        invert: sm.invert,
        ..StringMatch::default()
    };
    match sm.kind {
        Some(Kind::Exact(v)) => out.exact = Some(v),
        Some(Kind::Prefix(v)) => out.prefix = Some(v),
        Some(Kind::Suffix(v)) => out.suffix = Some(v),
        Some(Kind::Regex(v)) => out.regex = Some(v),
        Some(Kind::Present(v)) => out.present = Some(v),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_crosses_the_wire_unchanged() {
        let svc: weir_proxy::config::ServiceConfig = serde_yaml_ng::from_str(
            r#"
name: shop
namespace: test
hosts: [shop, "*.shop.example.com"]
port: 8080
versions:
  primary: { endpoints: ["127.0.0.1:1", "127.0.0.1:2"], revision: "1", http2: true, connectTimeout: 750ms }
  canary: { endpoints: ["127.0.0.1:3"], tls: { ca: /ca.pem, serverName: shop.test } }
routes:
  - name: insiders
    match: { path: { prefix: /api }, method: [GET, POST], headers: { x-canary: { exact: insider } }, cookies: { beta: { present: true, invert: true } } }
    to: canary
    upgrades: [websocket, connect-udp]
  - split: { primary: 999, canary: 1 }
    mirror: { version: canary, percent: 12.5, compare: true }
    timeout: 0s
    idleTimeout: 30s
sticky: { cookie: user }
sessionAffinity: { cookieName: c, primaryCookieName: p, maxAge: 60, sameSite: Lax }
"#,
        )
        .expect("service");
        let mut s = ServiceRouting::from_config(&svc);
        s.version = 42;
        let delta = RoutingDelta {
            version: 42,
            full: true,
            services: vec![std::sync::Arc::new(s)],
            removed: vec!["gone".into()],
        };
        let back = routing_from_pb(routing_to_pb(&delta)).expect("well formed");
        assert_eq!(back, delta);
    }

    #[test]
    fn a_rule_without_a_target_is_refused() {
        let d = fb::RoutingDelta {
            version: 1,
            services: vec![fb::ServiceRouting {
                name: "a".into(),
                rules: vec![fb::Rule::default()],
                ..fb::ServiceRouting::default()
            }],
            ..fb::RoutingDelta::default()
        };
        assert_eq!(
            routing_from_pb(d).expect_err("no target"),
            "a: rule 0 has no target"
        );
    }
}
