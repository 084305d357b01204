//! Everything serde cannot check: addresses, names, weights, references, matchers. Each
//! rule lives here once; the route table is built only from a config that passed.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::decode::ConfigError;
use super::schema::{MatchConfig, RouteConfig, ServiceConfig, StringMatch};
use super::{Limits, ListenerTls, ProxyConfig};
use crate::route::matcher;

/// Every problem of a whole config; certificate files are read and checked too.
pub(crate) fn config(c: &ProxyConfig) -> Vec<ConfigError> {
    let indexes: Vec<usize> = (0..c.services.len()).collect();
    config_at(c, &indexes)
}

/// Like [`config`], each service named by its index in the file (`indexes`).
pub(crate) fn config_at(c: &ProxyConfig, indexes: &[usize]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut addresses = vec![
        ("listen".to_string(), &c.listen),
        ("admin".into(), &c.admin),
    ];
    addresses.extend(c.metrics.iter().map(|m| ("metrics".to_string(), m)));
    for (i, l) in c.listeners.iter().enumerate() {
        addresses.push((format!("listeners[{i}].address"), &l.address));
    }
    for (field, addr) in addresses {
        if let Err(m) = socket_addr(addr) {
            errors.push(ConfigError::new(field, m));
        }
    }
    for (i, net) in c.trusted_proxies.iter().enumerate() {
        if let Err(m) = crate::headers::cidr(net) {
            errors.push(ConfigError::new(format!("trustedProxies[{i}]"), m));
        }
    }
    limits(&c.limits, &mut errors);
    if let Some(r) = &c.resolver {
        if r.nameservers.is_empty() {
            errors.push(ConfigError::new(
                "resolver.nameservers",
                "name at least one nameserver, or leave resolver out to use /etc/resolv.conf",
            ));
        }
        for (i, ns) in r.nameservers.iter().enumerate() {
            if let Err(m) = nameserver(ns) {
                errors.push(ConfigError::new(format!("resolver.nameservers[{i}]"), m));
            }
        }
    }
    errors.extend(services_at(&c.services, indexes));
    tls_files(c, &mut errors);
    errors
}

/// Reads and checks every certificate, key and CA file the config names.
fn tls_files(c: &ProxyConfig, errors: &mut Vec<ConfigError>) {
    use crate::tls::{ClientCerts, ServerTls, UpstreamTls};
    let mut listeners: Vec<(String, &ListenerTls)> = Vec::new();
    listeners.extend(c.tls.iter().map(|t| ("tls".to_string(), t)));
    for (i, l) in c.listeners.iter().enumerate() {
        listeners.extend(l.tls.iter().map(|t| (format!("listeners[{i}].tls"), t)));
    }
    for (field, t) in listeners {
        if let Err(e) = ServerTls::load(&field, t, ClientCerts::Required, &[]) {
            errors.push(ConfigError::new(format!("{field}.{}", e.field), e.message));
        }
    }
    for (i, svc) in c.services.iter().enumerate() {
        for (name, v) in &svc.versions {
            let Some(t) = &v.tls else { continue };
            if let Err(e) = UpstreamTls::load(String::new(), t, v.http2) {
                let field = format!("services[{i}].versions.{name}.tls.{}", e.field);
                errors.push(ConfigError::new(field, e.message));
            }
        }
    }
}

/// An `ip:port` address, or why not.
pub fn socket_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse::<SocketAddr>()
        .map_err(|_| format!("{addr:?} is not an ip:port address"))
}

fn limits(l: &Limits, errors: &mut Vec<ConfigError>) {
    if l.max_headers == 0 {
        errors.push(ConfigError::new("limits.maxHeaders", "must be at least 1"));
    }
    if l.max_header_bytes < 1024 {
        errors.push(ConfigError::new(
            "limits.maxHeaderBytes",
            "must be at least 1024",
        ));
    }
}

/// Every problem of a list of services: each service, plus names and hosts that clash.
fn services_at(services: &[ServiceConfig], indexes: &[usize]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut names = HashMap::new();
    let mut hosts = HashMap::new();
    for (svc, &i) in services.iter().zip(indexes) {
        let p = format!("services[{i}]");
        if let Some(j) = names.insert(svc.name.as_str(), i) {
            errors.push(ConfigError::new(
                format!("{p}.name"),
                format!("service {:?} is already defined at services[{j}]", svc.name),
            ));
        }
        if svc.hosts.is_empty() {
            if let Some(j) = hosts.insert("*".to_string(), i) {
                errors.push(ConfigError::new(
                    format!("{p}.hosts"),
                    format!(
                        "no hosts makes this the default service, but services[{j}] already is"
                    ),
                ));
            }
        }
        for (h, host) in svc.hosts.iter().enumerate() {
            if let Some(j) = hosts.insert(host.to_ascii_lowercase(), i) {
                errors.push(ConfigError::new(
                    format!("{p}.hosts[{h}]"),
                    format!("host {host:?} is already served by services[{j}]"),
                ));
            }
        }
        service(svc, &p, &mut errors);
    }
    errors
}

/// A name of letters, digits, '-', '_' or '.'.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// The problems of one service, with paths under `p` (`services[3]`).
pub(crate) fn service(svc: &ServiceConfig, p: &str, errors: &mut Vec<ConfigError>) {
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    if !is_name(&svc.name) {
        err(
            format!("{p}.name"),
            format!(
                "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                svc.name
            ),
        );
    }
    versions(svc, p, &mut err);
    for (r, route) in svc.routes.iter().enumerate() {
        rule(svc, route, &format!("{p}.routes[{r}]"), &mut err);
    }
    stickiness(svc, p, &mut err);
}

fn versions(svc: &ServiceConfig, p: &str, err: &mut impl FnMut(String, String)) {
    if svc.versions.is_empty() {
        err(
            format!("{p}.versions"),
            "a service needs at least one version".into(),
        );
    }
    for (name, v) in &svc.versions {
        let vp = format!("{p}.versions.{name}");
        if !is_name(name) {
            err(
                vp.clone(),
                "a version name must be letters, digits, '-', '_' or '.'".into(),
            );
        }
        if v.endpoints.is_empty() {
            err(
                format!("{vp}.endpoints"),
                "a version needs at least one endpoint".into(),
            );
        }
        for (e, ep) in v.endpoints.iter().enumerate() {
            if let Err(m) = endpoint(ep) {
                err(format!("{vp}.endpoints[{e}]"), m);
            }
        }
        if v.connect_timeout.0.is_zero() {
            err(
                format!("{vp}.connectTimeout"),
                "must be greater than 0".into(),
            );
        }
    }
}

/// Sticky keys and session affinity.
fn stickiness(svc: &ServiceConfig, p: &str, err: &mut impl FnMut(String, String)) {
    if let Some(s) = &svc.sticky {
        if s.header.is_some() == s.cookie.is_some() {
            err(
                format!("{p}.sticky"),
                "set exactly one of header or cookie".into(),
            );
        }
        if let Some(h) = &s.header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                err(
                    format!("{p}.sticky.header"),
                    format!("{h:?} is not a valid header name"),
                );
            }
        }
    }
    let Some(sa) = &svc.session_affinity else {
        return;
    };
    if sa.cookie_name.is_empty() {
        err(
            format!("{p}.sessionAffinity.cookieName"),
            "must not be empty".into(),
        );
    }
    if sa.primary_cookie_name.as_deref() == Some(sa.cookie_name.as_str()) {
        err(
            format!("{p}.sessionAffinity.primaryCookieName"),
            "must differ from cookieName".into(),
        );
    }
    if let Some(ss) = &sa.same_site {
        if !["Strict", "Lax", "None"].contains(&ss.as_str()) {
            err(
                format!("{p}.sessionAffinity.sameSite"),
                format!("{ss:?} is not Strict, Lax or None"),
            );
        }
    }
}

fn rule(svc: &ServiceConfig, route: &RouteConfig, rp: &str, err: &mut impl FnMut(String, String)) {
    let known = |v: &str| svc.versions.contains_key(v);
    match (&route.to, &route.split) {
        (Some(_), Some(_)) => err(rp.into(), "set either `to` or `split`, not both".into()),
        (None, None) => err(
            rp.into(),
            "a route needs `to` (one version) or `split` (weights)".into(),
        ),
        (Some(to), None) => {
            if !known(to) {
                err(format!("{rp}.to"), unknown_version(to, svc));
            }
        }
        (None, Some(split)) => {
            if split.is_empty() {
                err(
                    format!("{rp}.split"),
                    "a split needs at least one version".into(),
                );
            }
            let mut sum: u64 = 0;
            for (v, w) in split {
                if !known(v) {
                    err(format!("{rp}.split.{v}"), unknown_version(v, svc));
                }
                sum += u64::from(*w);
            }
            if !split.is_empty() && sum == 0 {
                err(
                    format!("{rp}.split"),
                    "the weights sum to 0; at least one must be positive".into(),
                );
            }
            if sum > u64::from(u32::MAX) {
                err(
                    format!("{rp}.split"),
                    "the weights sum past 4294967295".into(),
                );
            }
        }
    }
    if let Some(m) = &route.mirror {
        if !known(&m.version) {
            err(
                format!("{rp}.mirror.version"),
                unknown_version(&m.version, svc),
            );
        }
        if !(0.0..=100.0).contains(&m.percent) || m.percent.is_nan() {
            err(
                format!("{rp}.mirror.percent"),
                format!("{} is not between 0 and 100", m.percent),
            );
        }
    }
    if let Some(t) = route.idle_timeout {
        if t.0.is_zero() {
            err(format!("{rp}.idleTimeout"), "must be greater than 0".into());
        }
    }
    for (i, u) in route.upgrades.iter().flatten().enumerate() {
        if let Some(why) = upgrade_problem(u) {
            err(format!("{rp}.upgrades[{i}]"), why);
        }
    }
    if let Some(m) = &route.matches {
        for e in match_config(m, &format!("{rp}.match")) {
            err(e.path, e.message);
        }
    }
}

/// Why an `upgrades` entry cannot be allowed, if it cannot.
fn upgrade_problem(u: &str) -> Option<String> {
    if u.eq_ignore_ascii_case("h2c") {
        return Some(
            "h2c is never forwarded: weir speaks HTTP/2 to clients itself (h2c by prior knowledge, h2 over TLS)"
                .into(),
        );
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/".contains(c);
    if u.is_empty() || !u.chars().all(token) {
        return Some(format!(
            "{u:?} is not a protocol name (such as websocket or connect-udp)"
        ));
    }
    None
}

/// The problems of a match condition, with paths under `mp`.
pub fn match_config(m: &MatchConfig, mp: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    // Building the matcher is the check: one set of rules, and each regex compiled once.
    let _ = matcher::Matcher::build(m, mp, &mut errors);
    errors
}

/// The problems of one header or cookie condition, with paths under `sp`.
pub fn string_match(sm: &StringMatch, sp: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let _ = matcher::ValueMatcher::build(sm, sp, &mut errors);
    errors
}

fn unknown_version(v: &str, svc: &ServiceConfig) -> String {
    let known: Vec<&str> = svc.versions.keys().map(String::as_str).collect();
    let hint = match super::decode::did_you_mean(v, known.iter().copied()) {
        Some(near) => format!("; did you mean {near:?}?"),
        None => String::new(),
    };
    format!(
        "unknown version {v:?} (the service has {}{hint})",
        known.join(", ")
    )
}

/// A nameserver's address: `ip:port`, or `ip` for port 53.
pub fn nameserver(ns: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = ns
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    ns.parse::<SocketAddr>()
        .map_err(|_| format!("{ns:?} is not an ip:port address (or an ip, for port 53)"))
}

/// A `host:port` endpoint's host (an IPv6 address without its brackets) and port, or
/// why it is not one.
pub fn endpoint(ep: &str) -> Result<(&str, u16), String> {
    let (host, port) = ep
        .rsplit_once(':')
        .ok_or_else(|| format!("{ep:?} is not host:port"))?;
    if host.is_empty() {
        return Err(format!("{ep:?} has no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{ep:?} has no valid port"))?;
    if ep.contains('/') {
        return Err(format!(
            "{ep:?} must be host:port, without a scheme or path"
        ));
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}
