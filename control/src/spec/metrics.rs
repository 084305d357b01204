//! The analysis' metric checks: built-ins over weir's own measurements, the status-code
//! rate, and Flagger's PromQL (a `templateRef` to a `metricTemplates` entry, or an inline
//! `query` against `metricsServer`), with Flagger's template variables.

use weir_proxy::config::Dur;

use super::errors::{is_http_url, Errors};
use super::model::*;
use super::wire::{AlertProviderConfig, AnalysisSpec, MetricSpec, MetricTemplate};

/// What an analysis may refer to outside itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Catalog<'a> {
    /// weir.yaml's `alertProviders`.
    pub providers: &'a [AlertProviderConfig],
    /// weir.yaml's `metricTemplates`.
    pub templates: &'a [MetricTemplate],
    /// weir.yaml's `metricsServer`: where inline `query` metrics run.
    pub metrics_server: Option<&'a str>,
    /// The service's namespace (a `templateRef` without one looks there).
    pub namespace: &'a str,
}

/// Every metric check of a spec.
pub(super) fn metrics(
    spec: &AnalysisSpec,
    min_requests: u64,
    catalog: &Catalog<'_>,
    e: &mut Errors<'_>,
) -> Vec<Metric> {
    let mut out = Vec::new();
    for (i, m) in spec.metrics.iter().enumerate() {
        let at = format!("metrics[{i}]");
        let Some(kind) = kind(m, &at, catalog, e) else {
            continue;
        };
        let window = e.duration(
            m.interval.as_deref(),
            DEFAULT_METRIC_INTERVAL,
            &format!("{at}.interval"),
        );
        let (mut min, mut max) = m
            .threshold_range
            .map(|r| (r.min, r.max))
            .unwrap_or((None, None));
        if let (None, None, Some(t)) = (min, max, m.threshold) {
            // Flagger's deprecated `threshold`: a success rate's minimum, else a maximum.
            if kind == MetricKind::Builtin(BuiltinMetric::SuccessRate) {
                min = Some(t);
            } else {
                max = Some(t);
            }
        }
        match (min, max) {
            (None, None) => e.add(
                &format!("{at}.thresholdRange"),
                "a metric needs thresholdRange.min or thresholdRange.max",
            ),
            (Some(lo), Some(hi)) if lo > hi => e.add(
                &format!("{at}.thresholdRange"),
                format!("min {lo} is above max {hi}"),
            ),
            _ => {}
        }
        out.push(Metric {
            name: m.name.clone(),
            kind,
            window,
            min,
            max,
            min_requests: m.min_requests.unwrap_or(min_requests),
        });
    }
    out
}

/// What one metric measures.
fn kind(m: &MetricSpec, at: &str, catalog: &Catalog<'_>, e: &mut Errors<'_>) -> Option<MetricKind> {
    if let Some(r) = &m.template_ref {
        let namespace = r.namespace.as_deref().unwrap_or(catalog.namespace);
        let Some(t) = catalog
            .templates
            .iter()
            .find(|t| t.name == r.name && t.namespace.as_deref().unwrap_or(namespace) == namespace)
        else {
            e.add(
                &format!("{at}.templateRef"),
                format!(
                    "no metricTemplates entry named {:?} in namespace {namespace:?}",
                    r.name
                ),
            );
            return None;
        };
        if t.provider.kind != "prometheus" {
            e.add(
                &format!("{at}.templateRef"),
                format!(
                    "metric template {:?} uses provider {:?}; weir queries Prometheus only (Datadog, CloudWatch, New Relic and the others are not supported)",
                    t.name, t.provider.kind
                ),
            );
            return None;
        }
        let query = Query {
            address: t.provider.address.clone(),
            template: t.query.clone(),
            variables: m.template_variables.clone(),
        };
        return check_query(query, at, e);
    }
    if let Some(q) = &m.query {
        let Some(address) = catalog.metrics_server else {
            e.add(
                &format!("{at}.query"),
                "an inline query needs `metricsServer:` in weir.yaml (the Prometheus to ask), or use templateRef",
            );
            return None;
        };
        let query = Query {
            address: address.to_string(),
            template: q.clone(),
            variables: m.template_variables.clone(),
        };
        return check_query(query, at, e);
    }
    match (BuiltinMetric::from_name(&m.name), m.name.as_str()) {
        (_, "request-status-rate") => {
            let patterns: Vec<StatusPattern> = m
                .status_codes
                .iter()
                .enumerate()
                .filter_map(|(j, c)| {
                    let p = StatusPattern::parse(c);
                    if p.is_none() {
                        e.add(
                            &format!("{at}.statusCodes[{j}]"),
                            format!("{c:?} is not a status code (404) or class (4xx)"),
                        );
                    }
                    p
                })
                .collect();
            if m.status_codes.is_empty() {
                e.add(
                    &format!("{at}.statusCodes"),
                    "request-status-rate needs the status codes it counts, like [404]",
                );
            }
            Some(MetricKind::StatusRate(patterns))
        }
        (Some(b), _) => Some(MetricKind::Builtin(b)),
        (None, _) => {
            let hint = match weir_proxy::config::did_you_mean(&m.name, BuiltinMetric::NAMES) {
                Some(near) => format!(" (did you mean {near:?}?)"),
                None => String::new(),
            };
            e.add(
                &format!("{at}.name"),
                format!(
                    "unknown metric {:?}{hint}; built-in metrics are {}; others need templateRef (a metricTemplates entry) or query",
                    m.name,
                    BuiltinMetric::NAMES.join(", ")
                ),
            );
            None
        }
    }
}

/// A query's address must be a URL and its template must render.
fn check_query(q: Query, at: &str, e: &mut Errors<'_>) -> Option<MetricKind> {
    if !is_http_url(&q.address) {
        e.add(
            at,
            format!("{:?} is not the http(s) URL of a Prometheus", q.address),
        );
        return None;
    }
    let sample = Vars {
        name: "x",
        namespace: "x",
        interval: Dur::secs(60),
    };
    if let Err(m) = render(&q, &sample) {
        e.add(at, m.to_string());
        return None;
    }
    Some(MetricKind::Query(q))
}

/// What a template's variables stand for at a check.
pub struct Vars<'a> {
    /// The service (Flagger's `name`, `target`, `service`, `ingress` and `route`).
    pub name: &'a str,
    pub namespace: &'a str,
    /// The metric's window.
    pub interval: Dur,
}

/// Why a query's template does not render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A `{{` without its `}}`.
    #[error("unclosed `{{{{` in query {template:?}")]
    Unclosed { template: String },
    /// `{{ variables.X }}` with no `X` in `templateVariables`.
    #[error("the query uses {{{{ variables.{key} }}}} but templateVariables has no {key:?}")]
    MissingVariable { key: String },
    /// A name Flagger's template model does not have.
    #[error("unknown template variable {{{{ {name} }}}} in the query")]
    UnknownVariable { name: String },
}

/// Renders a query's `{{ ... }}` placeholders as Flagger's text/template does (each
/// model field is a function: `{{ namespace }}`, `{{ variables.key }}`); an unknown
/// name or a missing variable is an error (Flagger's `missingkey=error`).
pub fn render(q: &Query, v: &Vars<'_>) -> Result<String, RenderError> {
    let mut out = String::with_capacity(q.template.len());
    let mut rest = q.template.as_str();
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| RenderError::Unclosed {
            template: q.template.clone(),
        })?;
        let name = after[..close].trim().trim_start_matches('.');
        let value = lookup(name, q, v)?;
        out.push_str(&value);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of one placeholder (`name` without its braces and leading dot).
fn lookup(name: &str, q: &Query, v: &Vars<'_>) -> Result<String, RenderError> {
    Ok(match name {
        "name" | "target" | "service" | "ingress" | "route" => v.name.to_string(),
        "namespace" => v.namespace.to_string(),
        "interval" => v.interval.to_string(),
        _ => match name.strip_prefix("variables.") {
            Some(key) => {
                q.variables
                    .get(key)
                    .cloned()
                    .ok_or_else(|| RenderError::MissingVariable {
                        key: key.to_string(),
                    })?
            }
            None => {
                return Err(RenderError::UnknownVariable {
                    name: name.to_string(),
                })
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(template: &str, vars: &[(&str, &str)]) -> Query {
        Query {
            address: "http://127.0.0.1:9090".into(),
            template: template.into(),
            variables: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn templates_render_flaggers_variables() {
        let v = Vars {
            name: "podinfo",
            namespace: "test",
            interval: Dur::secs(60),
        };
        let q = query(
            r#"sum(rate(x{ns="{{ namespace }}",app=~"{{ target }}",code="{{variables.code}}"}[{{ interval }}]))"#,
            &[("code", "404")],
        );
        assert_eq!(
            render(&q, &v).as_deref(),
            Ok(r#"sum(rate(x{ns="test",app=~"podinfo",code="404"}[1m]))"#)
        );
        let missing = render(&query("{{ variables.code }}", &[]), &v)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("templateVariables has no \"code\""),
            "{missing}"
        );
        assert!(render(&query("{{ nope }}", &[]), &v).is_err());
        assert!(render(&query("{{ namespace", &[]), &v).is_err());
    }

    #[test]
    fn status_patterns_match_codes_and_classes() {
        let p = StatusPattern::parse("404").expect("a code");
        assert!(p.matches(404) && !p.matches(403));
        let c = StatusPattern::parse("5xx").expect("a class");
        assert!(c.matches(503) && !c.matches(404));
        assert_eq!(StatusPattern::parse("99"), None);
        assert_eq!(StatusPattern::parse("6xx"), None);
    }
}
