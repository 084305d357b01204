//! weir.yaml as a whole: the data plane's config (listeners, limits, services) plus what
//! the controller reads (`control`, `state`, `alertProviders` and each service's
//! `analysis:` block). Every error in the file is reported with its field path.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use weir_proxy::config::{decode, parse_document, ConfigErrors};
use weir_proxy::ProxyConfig;

use crate::auth::{control_from, ControlConfig};
use crate::spec::{self, AlertProviderConfig, Analysis, Catalog, MetricTemplate};

/// A whole weir.yaml.
#[derive(Debug, Clone)]
pub struct WeirConfig {
    /// The data plane's part.
    pub proxy: ProxyConfig,
    /// The gRPC control API: address, TLS, credentials.
    pub control: ControlConfig,
    /// The file has `control:`: the control API listens even with no analysis.
    pub control_set: bool,
    /// The rollout state file.
    pub state: Option<PathBuf>,
    /// What analyses refer to: alert providers, metric templates, the metrics server.
    pub refs: References,
    /// The services with an `analysis:` block, in file order.
    pub analyses: IndexMap<String, AnalysisBlock>,
    /// `envoy:`: Envoy nodes may take their routing from this controller (xDS).
    pub envoy: Option<crate::xds::EnvoyConfig>,
    /// Fields of pasted Flagger Canary objects weir does not act on, each with why.
    pub ignored: Vec<String>,
}

/// What an analysis may refer to, as weir.yaml declares it.
#[derive(Debug, Clone, Default)]
pub struct References {
    /// `alertProviders`: where `alerts[].providerRef` points (Flagger's AlertProvider).
    pub alert_providers: Vec<AlertProviderConfig>,
    /// `metricTemplates`: what `metrics[].templateRef` points to (Flagger's MetricTemplate).
    pub metric_templates: Vec<MetricTemplate>,
    /// `metricsServer`: the Prometheus inline `query` metrics run against.
    pub metrics_server: Option<String>,
}

impl References {
    /// The references seen from a service in `namespace`.
    pub fn catalog<'a>(&'a self, namespace: &'a str) -> Catalog<'a> {
        Catalog {
            providers: &self.alert_providers,
            templates: &self.metric_templates,
            metrics_server: self.metrics_server.as_deref(),
            namespace,
        }
    }
}

/// One service's `analysis:` block: as written, and validated.
#[derive(Debug, Clone)]
pub struct AnalysisBlock {
    /// The block as the file has it (a reload compares it to tell an edit).
    pub written: serde_json::Value,
    /// The validated analysis.
    pub analysis: Analysis,
}

impl WeirConfig {
    /// True when `weir run` serves the control API: the file has `control:` or an
    /// analysis (which the default loopback address serves).
    pub fn serves_control(&self) -> bool {
        self.control_set || !self.analyses.is_empty() || self.envoy.is_some()
    }

    /// What a valid file leaves to defaults that a newcomer would want to know: said by
    /// `weir check` and at start.
    pub fn notes(&self) -> Vec<String> {
        let mut out = self.ignored.clone();
        let controlled = self.serves_control();
        if controlled && !self.control_set {
            out.push(format!(
                "control: not set: the control API listens on {} (a service has an analysis); set control: to choose the address",
                crate::auth::DEFAULT_CONTROL
            ));
        }
        if !controlled && self.state.is_some() {
            out.push(
                "state: has no effect: nothing here keeps rollout state (no control:, no analysis, no envoy:); set control: to serve the control API, whose set weights it keeps"
                    .into(),
            );
        }
        out.extend(self.proxy.notes());
        if controlled && self.state.is_none() {
            out.push(
                "state: not set: rollouts and set weights are not persisted, and a restart forgets them; set state: ./weir-state.json to keep them"
                    .into(),
            );
        }
        out
    }

    /// What Envoy nodes are served with, when the file has `envoy:`.
    pub fn envoy_settings(&self) -> Option<std::sync::Arc<crate::xds::EnvoySettings>> {
        Some(std::sync::Arc::new(crate::xds::EnvoySettings {
            envoy: self.envoy.clone()?,
            tls: self.proxy.tls.clone(),
            limits: self.proxy.limits.clone(),
        }))
    }

    /// Reads and validates a weir.yaml.
    pub fn load(path: &Path) -> Result<WeirConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
        WeirConfig::parse(&text)
    }

    /// Parses and validates YAML (or JSON) text, reporting every error found.
    pub fn parse(text: &str) -> Result<WeirConfig, ConfigErrors> {
        WeirConfig::from_value(parse_document(text)?)
    }

    /// Decodes and validates a document: the controller's keys are taken out and checked
    /// here, the rest is the data plane's config.
    pub fn from_value(mut value: serde_json::Value) -> Result<WeirConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let mut take = |key: &str| {
            value
                .as_object_mut()
                .and_then(|o| o.remove(key))
                .unwrap_or(serde_json::Value::Null)
        };
        let control = take("control");
        let control_set = !control.is_null();
        let state: Option<PathBuf> = decode(take("state"), "state", &mut errors).flatten();
        let envoy: Option<crate::xds::EnvoyConfig> =
            decode(take("envoy"), "envoy", &mut errors).flatten();
        let alert_providers: Vec<AlertProviderConfig> =
            decode(take("alertProviders"), "alertProviders", &mut errors)
                .flatten()
                .unwrap_or_default();
        let metric_templates: Vec<MetricTemplate> = decode(
            kubernetes_objects(take("metricTemplates")),
            "metricTemplates",
            &mut errors,
        )
        .flatten()
        .unwrap_or_default();
        let metrics_server: Option<String> =
            decode(take("metricsServer"), "metricsServer", &mut errors).flatten();
        let refs = References {
            alert_providers,
            metric_templates,
            metrics_server,
        };
        let canaries = crate::canary_object::expand(&mut value);
        let written = take_analyses(&mut value);
        let control = control_from(control, &mut errors);
        // Every part is checked even when another has errors: one pass shows them all.
        let Some((mut proxy, indexes)) = ProxyConfig::decode_indexed(value, &mut errors) else {
            canaries.finish(&mut errors);
            return Err(ConfigErrors(errors));
        };
        let mut analyses = IndexMap::new();
        for (i, namespace, block) in written {
            let at = format!("services[{i}].analysis");
            let Some(svc) = indexes
                .iter()
                .position(|&k| k == i)
                .and_then(|p| proxy.services.get_mut(p))
            else {
                // The service itself did not decode: its analysis is still checked.
                if let Err(mut e) = spec::parse(&block, &at, &refs.catalog(&namespace)) {
                    errors.append(&mut e);
                }
                continue;
            };
            let catalog = refs.catalog(&svc.namespace);
            match spec::parse(&block, &at, &catalog) {
                Ok(analysis) => {
                    // Flagger's primary cookie lives one analysis interval.
                    if let Some(sa) = svc.session_affinity.as_mut() {
                        sa.primary_max_age = analysis.interval.as_secs().max(1);
                    }
                    analyses.insert(
                        svc.name.clone(),
                        AnalysisBlock {
                            written: block,
                            analysis,
                        },
                    );
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if envoy.is_some() {
            errors.extend(crate::xds::check::untranslatable(&proxy));
        }
        canaries.finish(&mut errors);
        ConfigErrors::check(errors)?;
        Ok(WeirConfig {
            proxy,
            control,
            control_set,
            state,
            refs,
            analyses,
            envoy,
            ignored: canaries.notes,
        })
    }
}

/// Kubernetes MetricTemplate objects (`metadata` and `spec`) in the flat form.
fn kubernetes_objects(list: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Array(items) = list else {
        return list;
    };
    let flat = items.into_iter().map(|mut item| {
        let (Some(meta), Some(spec)) = (
            item.get("metadata").cloned(),
            item.get_mut("spec").map(std::mem::take),
        ) else {
            return item;
        };
        let mut out = spec;
        if let Some(o) = out.as_object_mut() {
            o.insert("name".into(), meta.get("name").cloned().unwrap_or_default());
            if let Some(ns) = meta.get("namespace") {
                o.insert("namespace".into(), ns.clone());
            }
        }
        out
    });
    serde_json::Value::Array(flat.collect())
}

/// Takes each service's `analysis:` block out of the document, with the service's index
/// and namespace.
fn take_analyses(value: &mut serde_json::Value) -> Vec<(usize, String, serde_json::Value)> {
    let Some(services) = value.get_mut("services").and_then(|s| s.as_array_mut()) else {
        return Vec::new();
    };
    services
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| {
            let o = s.as_object_mut()?;
            let namespace = o
                .get("namespace")
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                .to_string();
            Some((i, namespace, o.remove("analysis")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_YAML: &str = r#"
listen: 127.0.0.1:8080
admin: 127.0.0.1:9901
control: 127.0.0.1:9090
state: ./weir-state.json
services:
  - name: podinfo
    namespace: test
    hosts: ["podinfo", "podinfo.test"]
    port: 9898
    versions:
      primary: { endpoints: ["127.0.0.1:18081"] }
      canary:  { endpoints: ["127.0.0.1:18082"], revision: "5.0.1" }
    routes:
      - match: { headers: { x-canary: { exact: always } } }
        to: canary
      - split: { primary: 90, canary: 10 }
        mirror: { version: canary, percent: 0 }
    sessionAffinity: { cookieName: canary-cookie, maxAge: 86400 }
    analysis:
      interval: 15s
      threshold: 5
      maxWeight: 50
      stepWeight: 5
      metrics:
        - name: request-success-rate
          thresholdRange: { min: 99 }
          interval: 1m
      webhooks:
        - name: smoke
          type: pre-rollout
          url: http://127.0.0.1:8888/
          timeout: 5s
"#;

    #[test]
    fn design_example_parses_as_written() {
        let cfg = WeirConfig::parse(DESIGN_YAML).expect("the design's weir.yaml is valid");
        let svc = &cfg.proxy.services[0];
        assert_eq!(
            svc.versions.keys().collect::<Vec<_>>(),
            ["primary", "canary"]
        );
        assert_eq!(svc.routes[1].split.as_ref().map(|s| s["canary"]), Some(10));
        assert_eq!(svc.versions["canary"].revision.as_deref(), Some("5.0.1"));
        assert_eq!(cfg.analyses["podinfo"].analysis.threshold, 5);
        assert_eq!(cfg.control.address, "127.0.0.1:9090");
        assert_eq!(
            svc.session_affinity.as_ref().map(|s| s.primary_max_age),
            Some(15)
        );
    }

    #[test]
    fn errors_of_both_parts_are_reported_with_their_paths() {
        let errs = WeirConfig::parse(
            "control: nowhere\nbogus: 1\nservices:\n  - name: a\n    versions: { v1: { endpoints: [\"127.0.0.1:1\"] }, v2: { endpoints: [\"127.0.0.1:2\"] }, v3: { endpoints: [\"127.0.0.1:3\"] } }\n    analysis: { interval: 1m, stepWeight: 500 }\n",
        )
        .expect_err("invalid");
        let joined = errs.joined();
        for want in [
            "control: \"nowhere\" is not an ip:port address",
            "bogus: unknown field `bogus`",
            "services[0].analysis.stepWeight: 500 is not between 1 and 100",
        ] {
            assert!(joined.contains(want), "missing {want:?} in {joined}");
        }
    }
}
