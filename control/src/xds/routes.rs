//! The routing as one Envoy RouteConfiguration: a virtual host per service (its hosts,
//! with any port; the default service `*`), a route per rule in order (path, method,
//! header and cookie matches; one cluster or `weighted_clusters`; mirrors with their
//! fraction; the route and idle timeouts; the upgrades it allows), and session affinity
//! as Flagger lays it on a Gateway API or Istio route: a route for requests carrying the
//! cookie, first, and a `Set-Cookie` on the canary's weighted cluster.

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option, HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, route, route_action, route_match, weighted_cluster, CookieMatcher,
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent, FractionalPercent};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use weir_proxy::config::{MatchConfig, SessionAffinityConfig, StringMatch};
use weir_proxy::routing::{Rule, Target};
use weir_proxy::{Routing, ServiceRouting};

use super::{cluster_name, duration, Problem, ROUTE_CONFIG};

/// Every service's routes.
pub fn route_configuration(routing: &Routing) -> Result<RouteConfiguration, Problem> {
    let mut hosts = Vec::new();
    for svc in routing.services.values() {
        hosts.push(virtual_host(svc).map_err(|p| p.of(&svc.name))?);
    }
    Ok(RouteConfiguration {
        name: ROUTE_CONFIG.to_string(),
        virtual_hosts: hosts,
        ..RouteConfiguration::default()
    })
}

fn virtual_host(svc: &ServiceRouting) -> Result<VirtualHost, Problem> {
    let domains = if svc.hosts.is_empty() || svc.hosts.iter().any(|h| h == "*") {
        vec!["*".to_string()]
    } else {
        svc.hosts
            .iter()
            .flat_map(|h| {
                [
                    h.to_ascii_lowercase(),
                    format!("{}:*", h.to_ascii_lowercase()),
                ]
            })
            .collect()
    };
    let mut routes = Vec::new();
    for (i, rule) in svc.rules.iter().enumerate() {
        let at = |p: Problem| p.at(&format!("rule {i}"));
        let matched = route_match(rule.matches.as_ref()).map_err(at)?;
        let pinned = affinity_routes(svc, rule, &matched);
        routes.extend(pinned);
        routes.push(Route {
            name: rule
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-{i}", svc.name)),
            r#match: Some(matched),
            action: Some(route::Action::Route(action(svc, rule, None))),
            ..Route::default()
        });
    }
    Ok(VirtualHost {
        name: svc.name.clone(),
        domains,
        routes,
        ..VirtualHost::default()
    })
}

/// Where a rule sends its requests; `to` overrides the rule's target (a cookie-pinned
/// route).
fn action(svc: &ServiceRouting, rule: &Rule, to: Option<&str>) -> RouteAction {
    let specifier = match (to, &rule.target) {
        (Some(v), _) => route_action::ClusterSpecifier::Cluster(cluster_name(svc, v)),
        (None, Target::To(v)) => route_action::ClusterSpecifier::Cluster(cluster_name(svc, v)),
        (None, Target::Split(weights)) => {
            let active = affinity(svc, rule);
            let clusters = weights
                .iter()
                .map(|(v, w)| weighted_cluster::ClusterWeight {
                    name: cluster_name(svc, v),
                    weight: Some(UInt32Value { value: *w }),
                    response_headers_to_add: active
                        .and_then(|(sa, token)| set_cookie(svc, sa, token, v))
                        .into_iter()
                        .collect(),
                    ..weighted_cluster::ClusterWeight::default()
                })
                .collect();
            route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters,
                ..WeightedCluster::default()
            })
        }
    };
    RouteAction {
        cluster_specifier: Some(specifier),
        timeout: Some(duration(rule.timeout.0)),
        idle_timeout: Some(duration(rule.idle_timeout.0)),
        request_mirror_policies: rule
            .mirror
            .iter()
            .filter(|_| to.is_none())
            .map(|m| route_action::RequestMirrorPolicy {
                cluster: cluster_name(svc, &m.version),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(FractionalPercent {
                        numerator: (m.percent * 10_000.0).round() as u32,
                        denominator: fractional_percent::DenominatorType::Million as i32,
                    }),
                    runtime_key: String::new(),
                }),
                ..route_action::RequestMirrorPolicy::default()
            })
            .collect(),
        upgrade_configs: super::UPGRADES
            .iter()
            .map(|u| route_action::UpgradeConfig {
                upgrade_type: (*u).to_string(),
                enabled: Some(BoolValue {
                    value: rule.upgrades.iter().any(|a| a == u),
                }),
                ..route_action::UpgradeConfig::default()
            })
            .collect(),
        ..RouteAction::default()
    }
}

/// A rule's conditions as Envoy's: the path (any, when none), the methods as `:method`,
/// headers and cookies.
fn route_match(m: Option<&MatchConfig>) -> Result<RouteMatch, Problem> {
    let mut out = RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
        ..RouteMatch::default()
    };
    let Some(m) = m else {
        return Ok(out);
    };
    if let Some(p) = &m.path {
        out.path_specifier = Some(if let Some(e) = &p.exact {
            route_match::PathSpecifier::Path(e.clone())
        } else if let Some(pre) = &p.prefix {
            route_match::PathSpecifier::Prefix(pre.clone())
        } else if let Some(re) = &p.regex {
            route_match::PathSpecifier::SafeRegex(regex(re))
        } else {
            route_match::PathSpecifier::Prefix("/".into())
        });
    }
    if let Some(methods) = &m.method {
        let list: Vec<&str> = methods.iter().map(String::as_str).collect();
        let matcher = match list.as_slice() {
            [one] => exact(one),
            many => StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(
                    &many.join("|"),
                ))),
                ..StringMatcher::default()
            },
        };
        out.headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                matcher,
            )),
            ..HeaderMatcher::default()
        });
    }
    for (name, sm) in &m.headers {
        out.headers.push(header(name, sm));
    }
    for (name, sm) in &m.cookies {
        out.cookies.push(CookieMatcher {
            name: name.clone(),
            string_match: Some(string_matcher(sm).unwrap_or_else(|| any_value(sm))),
            // Envoy: an absent cookie never matches, so "absent" is "present", inverted.
            invert_match: sm.invert != (sm.present == Some(false)),
        });
    }
    Ok(out)
}

fn header(name: &str, sm: &StringMatch) -> HeaderMatcher {
    let specifier = match string_matcher(sm) {
        Some(m) => header_matcher::HeaderMatchSpecifier::StringMatch(m),
        None => header_matcher::HeaderMatchSpecifier::PresentMatch(sm.present.unwrap_or(true)),
    };
    HeaderMatcher {
        name: name.to_string(),
        invert_match: sm.invert,
        header_match_specifier: Some(specifier),
        ..HeaderMatcher::default()
    }
}

/// An exact, prefix, suffix or regex condition; None for a presence condition.
fn string_matcher(sm: &StringMatch) -> Option<StringMatcher> {
    use string_matcher::MatchPattern;
    let pattern = if let Some(v) = &sm.exact {
        MatchPattern::Exact(v.clone())
    } else if let Some(v) = &sm.prefix {
        MatchPattern::Prefix(v.clone())
    } else if let Some(v) = &sm.suffix {
        MatchPattern::Suffix(v.clone())
    } else if let Some(v) = &sm.regex {
        MatchPattern::SafeRegex(regex(v))
    } else {
        return None;
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..StringMatcher::default()
    })
}

/// Any value (a cookie's presence).
fn any_value(_: &StringMatch) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(".*"))),
        ..StringMatcher::default()
    }
}

fn exact(v: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(v.to_string())),
        ..StringMatcher::default()
    }
}

/// A whole-value RE2 regex (weir's regexes match whole values too).
fn regex(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.to_string(),
        ..RegexMatcher::default()
    }
}

/// The session affinity in force on a weighted rule: the canary takes a share.
fn affinity<'s>(
    svc: &'s ServiceRouting,
    rule: &Rule,
) -> Option<(&'s SessionAffinityConfig, &'s str)> {
    let sa = svc.affinity.as_ref()?;
    let token = svc.affinity_token.as_deref()?;
    let canary = svc.versions.get_index(1)?.0;
    match &rule.target {
        Target::Split(w) if w.get(canary).is_some_and(|w| *w > 0) => Some((sa, token)),
        _ => None,
    }
}

/// Routes pinning the requests that carry a version's cookie to it, before a weighted
/// rule whose canary takes a share.
fn affinity_routes(svc: &ServiceRouting, rule: &Rule, matched: &RouteMatch) -> Vec<Route> {
    let Some((sa, token)) = affinity(svc, rule) else {
        return Vec::new();
    };
    let mut pins = vec![(sa.cookie_name.as_str(), 1)];
    if let Some(p) = &sa.primary_cookie_name {
        pins.push((p.as_str(), 0));
    }
    pins.into_iter()
        .filter_map(|(cookie, index)| {
            let version = svc.versions.get_index(index)?.0;
            let mut m = matched.clone();
            m.cookies.push(CookieMatcher {
                name: cookie.to_string(),
                string_match: Some(exact(token)),
                invert_match: false,
            });
            Some(Route {
                name: format!("{}-affinity-{version}", svc.name),
                r#match: Some(m),
                action: Some(route::Action::Route(action(svc, rule, Some(version)))),
                ..Route::default()
            })
        })
        .collect()
}

/// The `Set-Cookie` a weighted answer from `version` carries.
fn set_cookie(
    svc: &ServiceRouting,
    sa: &SessionAffinityConfig,
    token: &str,
    version: &str,
) -> Option<HeaderValueOption> {
    let index = svc.versions.get_index_of(version)?;
    let (name, max_age) = match index {
        1 => (sa.cookie_name.as_str(), sa.max_age),
        0 => (sa.primary_cookie_name.as_deref()?, sa.primary_max_age),
        _ => return None,
    };
    let mut value = format!("{name}={token}; Max-Age={max_age}");
    if let Some(d) = &sa.domain {
        value.push_str(&format!("; Domain={d}"));
    }
    if let Some(p) = &sa.path {
        value.push_str(&format!("; Path={p}"));
    }
    if sa.http_only {
        value.push_str("; HttpOnly");
    }
    if sa.secure {
        value.push_str("; Secure");
    }
    if let Some(s) = &sa.same_site {
        value.push_str(&format!("; SameSite={s}"));
    }
    Some(HeaderValueOption {
        header: Some(HeaderValue {
            key: "set-cookie".into(),
            value,
            ..HeaderValue::default()
        }),
        append_action: header_value_option::HeaderAppendAction::AppendIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    })
}
