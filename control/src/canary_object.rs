//! Flagger `Canary` objects (`flagger.app/v1beta1`) pasted as they are into `services:`:
//! each becomes a weir service whose versions are the Services Flagger would have made
//! (`<svc>-primary.<namespace>:<port>`, `<svc>-canary.<namespace>:<port>`) unless the entry
//! has `versions:` of its own. Every field weir does not act on becomes a note saying why
//! (a warning, not an error); an error in a mapped field names the field as written.

use serde_json::{json, Map, Value};
use weir_proxy::config::ConfigError;

const API_VERSION: &str = "flagger.app/v1beta1";

/// What the expansion found: notes on ignored fields, and how to name a mapped field's
/// errors by where the object has it.
#[derive(Debug, Default)]
pub(crate) struct Expanded {
    pub notes: Vec<String>,
    renames: Vec<(String, String)>,
    /// Entries that could not be read as a service (left as null), and why.
    failed: Vec<String>,
    errors: Vec<ConfigError>,
}

impl Expanded {
    /// Names each error under a Canary object by the object's own field, and puts an
    /// unreadable object's own errors in place of what decoding its remains said.
    pub(crate) fn finish(&self, errors: &mut Vec<ConfigError>) {
        errors.retain(|e| !self.failed.iter().any(|f| under(&e.path, f)));
        errors.extend(self.errors.iter().cloned());
        for e in errors.iter_mut() {
            // Longest prefix first: `spec.analysis` before the entry as a whole.
            let best = self
                .renames
                .iter()
                .filter(|(from, _)| under(&e.path, from))
                .max_by_key(|(from, _)| from.len());
            if let Some((from, to)) = best {
                e.path = format!("{to}{}", &e.path[from.len()..]);
            }
        }
    }
}

/// True when `path` is `prefix` or a field under it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// True for a `services:` entry written as a Kubernetes object.
fn is_object(entry: &Value) -> bool {
    entry.get("apiVersion").is_some() || entry.get("kind").is_some()
}

/// Rewrites every Canary object in `services:` into a weir service entry; one that cannot
/// be read is left null (so the entries keep their indexes) and its errors kept.
pub(crate) fn expand(doc: &mut Value) -> Expanded {
    let mut out = Expanded::default();
    let Some(services) = doc.get_mut("services").and_then(Value::as_array_mut) else {
        return out;
    };
    for (i, entry) in services.iter_mut().enumerate() {
        if !is_object(entry) {
            continue;
        }
        let at = format!("services[{i}]");
        match translate(entry, &at, &mut out) {
            Ok(service) => *entry = service,
            Err(mut e) => {
                out.errors.append(&mut e);
                out.failed.push(at);
                *entry = Value::Null;
            }
        }
    }
    out
}

/// One Canary object as a weir service entry.
fn translate(entry: &Value, at: &str, out: &mut Expanded) -> Result<Value, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let api = text(entry.get("apiVersion")).unwrap_or_default();
    let kind = text(entry.get("kind")).unwrap_or_default();
    if kind != "Canary" {
        errors.push(ConfigError::new(
            format!("{at}.kind"),
            format!("{kind:?}: a services entry written as an object must be a Flagger Canary"),
        ));
    }
    if api != API_VERSION {
        errors.push(ConfigError::new(
            format!("{at}.apiVersion"),
            format!("{api:?}: weir reads Canary objects of {API_VERSION}"),
        ));
    }
    let empty = Map::new();
    let meta = entry
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let spec = entry
        .get("spec")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let service = spec
        .get("service")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let target = text(spec.get("targetRef").and_then(|t| t.get("name")));
    let name = text(service.get("name")).or_else(|| target.clone());
    let Some(name) = name else {
        errors.push(ConfigError::new(
            format!("{at}.spec.targetRef.name"),
            "missing: the workload the canary targets names its Services",
        ));
        return Err(errors);
    };
    let namespace = text(meta.get("namespace")).unwrap_or_else(|| "default".into());
    let port = service.get("port").and_then(Value::as_u64);
    let Some(port) = port.filter(|p| (1..=65535).contains(p)) else {
        errors.push(ConfigError::new(
            format!("{at}.spec.service.port"),
            "missing or not a port from 1 to 65535: the port of the Canary's Services",
        ));
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut svc = Map::new();
    svc.insert("name".into(), json!(name));
    svc.insert("namespace".into(), json!(namespace));
    svc.insert("port".into(), json!(port));
    let mut hosts: Vec<Value> = [
        name.clone(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ]
    .into_iter()
    .map(Value::String)
    .collect();
    if let Some(Value::Array(extra)) = service.get("hosts") {
        hosts.extend(
            extra
                .iter()
                .filter(|h| !hosts.contains(h))
                .cloned()
                .collect::<Vec<_>>(),
        );
    }
    svc.insert("hosts".into(), Value::Array(hosts));
    let versions = match entry.get("versions") {
        Some(v) => v.clone(),
        None => flagger_versions(&name, &namespace, port, service),
    };
    svc.insert("versions".into(), versions);
    if let Some(analysis) = analysis(spec) {
        svc.insert("analysis".into(), analysis);
    } else {
        out.notes.push(format!(
            "{at}.spec.analysis: not set: weir sends all traffic to the primary and runs no rollout for {name}"
        ));
    }

    let generated = format!("{at}.spec.targetRef.name");
    out.renames.extend([
        (format!("{at}.name"), generated.clone()),
        (format!("{at}.hosts"), format!("{at}.spec.service.hosts")),
        (
            format!("{at}.namespace"),
            format!("{at}.metadata.namespace"),
        ),
        (format!("{at}.port"), format!("{at}.spec.service.port")),
        (format!("{at}.analysis"), format!("{at}.spec.analysis")),
    ]);
    if entry.get("versions").is_none() {
        out.renames.push((format!("{at}.versions"), generated));
    }
    note_ignored(entry, at, &mut out.notes);
    Ok(Value::Object(svc))
}

/// `spec.service.headless: true`: the Services select the pods directly.
fn is_headless(service: &Map<String, Value>) -> bool {
    service.get("headless").and_then(Value::as_bool) == Some(true)
}

/// The Services Flagger makes for the canary, as endpoints; HTTP/2 when the port is gRPC
/// or h2c; a headless Service is dialled at the pods' port.
fn flagger_versions(name: &str, namespace: &str, port: u64, service: &Map<String, Value>) -> Value {
    let headless = is_headless(service);
    let dialled = match service.get("targetPort").and_then(Value::as_u64) {
        Some(target) if headless => target,
        _ => port,
    };
    let protocol = |key: &str| service.get(key).and_then(Value::as_str).unwrap_or("");
    let http2 = matches!(protocol("portName"), "grpc" | "grpc-web" | "http2" | "h2c")
        || matches!(
            protocol("appProtocol"),
            "grpc" | "h2c" | "http2" | "kubernetes.io/h2c"
        );
    let version = |suffix: &str| {
        let mut v = json!({ "endpoints": [format!("{name}-{suffix}.{namespace}:{dialled}")] });
        if http2 {
            v["http2"] = json!(true);
        }
        v
    };
    json!({ "primary": version("primary"), "canary": version("canary") })
}

/// `spec.analysis` (or the deprecated `canaryAnalysis`) with the spec-level switches weir
/// keeps in the analysis block.
fn analysis(spec: &Map<String, Value>) -> Option<Value> {
    let mut block = spec
        .get("analysis")
        .or_else(|| spec.get("canaryAnalysis"))?
        .clone();
    let o = block.as_object_mut()?;
    for key in ["skipAnalysis", "suspend", "progressDeadlineSeconds"] {
        if let Some(v) = spec.get(key) {
            o.insert(key.into(), v.clone());
        }
    }
    Some(block)
}

/// Why weir passes over each field of a Canary object it does not act on.
fn note_ignored(entry: &Value, at: &str, notes: &mut Vec<String>) {
    let mut say = |field: String, why: &str| notes.push(format!("{at}.{field}: ignored: {why}"));
    if let Some(o) = entry.as_object() {
        for key in o.keys() {
            match key.as_str() {
                "apiVersion" | "kind" | "metadata" | "spec" | "versions" => {}
                "status" => say(
                    key.clone(),
                    "Flagger's report of the object, not configuration",
                ),
                _ => say(key.clone(), "not part of a Canary object"),
            }
        }
    }
    if let Some(meta) = entry.get("metadata").and_then(Value::as_object) {
        for key in meta.keys() {
            if !matches!(key.as_str(), "name" | "namespace") {
                say(format!("metadata.{key}"), "Kubernetes object metadata");
            }
        }
    }
    let spec_reasons: &[(&str, &str)] = &[
        (
            "provider",
            "weir (or the Envoys it drives) routes the traffic itself",
        ),
        (
            "metricsServer",
            "set metricsServer: at the top of weir.yaml",
        ),
        (
            "autoscalerRef",
            "weir does not scale workloads; keep the HPA on the Deployment",
        ),
        (
            "ingressRef",
            "weir routes the traffic itself, not through an Ingress",
        ),
        (
            "routeRef",
            "weir routes the traffic itself, not through an APISIX route",
        ),
        (
            "upstreamRef",
            "weir routes the traffic itself, not through a Gloo upstream",
        ),
        (
            "revertOnDeletion",
            "weir changes no Kubernetes object; removing the entry routes its hosts nowhere",
        ),
    ];
    let spec_used = [
        "targetRef",
        "service",
        "analysis",
        "canaryAnalysis",
        "skipAnalysis",
        "suspend",
        "progressDeadlineSeconds",
    ];
    if let Some(spec) = entry.get("spec").and_then(Value::as_object) {
        for key in spec.keys() {
            if spec_used.contains(&key.as_str()) {
                continue;
            }
            let why = spec_reasons
                .iter()
                .find(|(k, _)| k == key)
                .map_or("not a Canary spec field weir knows", |(_, w)| *w);
            say(format!("spec.{key}"), why);
        }
        if let Some(service) = spec.get("service").and_then(Value::as_object) {
            note_service(service, &mut say);
        }
    }
}

/// The `spec.service` fields weir passes over.
fn note_service(service: &Map<String, Value>, say: &mut impl FnMut(String, &str)) {
    let reasons: &[(&str, &str)] = &[
        (
            "targetPort",
            "the Services map port to it; weir dials the Service port",
        ),
        (
            "portName",
            "weir speaks HTTP/2 for grpc/h2c port names and HTTP/1.1 otherwise",
        ),
        ("portDiscovery", "weir dials the one Service port"),
        (
            "trafficDistribution",
            "a Kubernetes Service setting weir does not make",
        ),
        ("gateways", "weir serves the hosts on its own listeners"),
        ("gatewayRefs", "weir serves the hosts on its own listeners"),
        (
            "match",
            "weir routes every request for the hosts to the service",
        ),
        ("rewrite", "weir forwards the request path unchanged"),
        (
            "retries",
            "weir does not retry: a retried request would hide a canary's failures",
        ),
        (
            "timeout",
            "set timeout on the service's routes in weir.yaml",
        ),
        (
            "backendTimeout",
            "set timeout on the service's routes in weir.yaml",
        ),
        (
            "headers",
            "weir forwards request and response headers unchanged",
        ),
        (
            "corsPolicy",
            "the application answers CORS itself behind weir",
        ),
        ("trafficPolicy", "set tls on the versions in weir.yaml"),
        ("delegation", "an Istio VirtualService setting"),
        (
            "mirror",
            "a static Gateway API mirror filter; analysis.mirror is what weir mirrors by",
        ),
        ("meshName", "an App Mesh setting: weir replaces the mesh"),
        ("backends", "an App Mesh setting: weir replaces the mesh"),
        ("apex", "metadata for Services weir does not make"),
        ("primary", "metadata for Services weir does not make"),
        ("canary", "metadata for Services weir does not make"),
        (
            "unmanagedMetadata",
            "metadata for Services weir does not make",
        ),
    ];
    for key in service.keys() {
        let used = match key.as_str() {
            "name" | "port" | "hosts" | "appProtocol" => true,
            "headless" | "targetPort" => is_headless(service),
            _ => false,
        };
        if used {
            continue;
        }
        let why = reasons
            .iter()
            .find(|(k, _)| k == key)
            .map_or("not a Canary service field weir knows", |(_, w)| *w);
        say(format!("spec.service.{key}"), why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Value {
        serde_yaml_ng::from_str(text).expect("yaml")
    }

    #[test]
    fn a_canary_becomes_a_service_of_flaggers_services() {
        let mut d = doc(
            "services:\n- apiVersion: flagger.app/v1beta1\n  kind: Canary\n  metadata: { name: podinfo, namespace: test, labels: { app: podinfo } }\n  spec:\n    provider: istio\n    targetRef: { apiVersion: apps/v1, kind: Deployment, name: podinfo }\n    service: { port: 9898, targetPort: 9898, gateways: [public-gateway], hosts: [app.example.com] }\n    skipAnalysis: false\n    analysis: { interval: 1m, threshold: 5, stepWeight: 10, maxWeight: 50 }\n",
        );
        let out = expand(&mut d);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let svc = &d["services"][0];
        assert_eq!(svc["name"], "podinfo");
        assert_eq!(svc["namespace"], "test");
        assert_eq!(
            svc["versions"]["canary"]["endpoints"][0],
            "podinfo-canary.test:9898"
        );
        assert_eq!(svc["analysis"]["skipAnalysis"], false);
        assert!(svc["hosts"]
            .as_array()
            .is_some_and(|h| h.contains(&json!("app.example.com"))));
        let notes = out.notes.join("\n");
        for field in [
            "services[0].spec.provider: ignored",
            "services[0].spec.service.gateways: ignored",
            "services[0].spec.service.targetPort: ignored",
            "services[0].metadata.labels: ignored",
        ] {
            assert!(notes.contains(field), "{field} not in {notes}");
        }
    }

    #[test]
    fn errors_name_the_objects_own_fields() {
        let mut d = doc(
            "services:\n- apiVersion: flagger.app/v1alpha3\n  kind: Canary\n  spec: { targetRef: { name: x }, service: { port: 80 } }\n- apiVersion: flagger.app/v1beta1\n  kind: Canary\n  spec: { service: { port: 80 } }\n",
        );
        let mut errors = vec![ConfigError::new("services[1]", "invalid type: null")];
        expand(&mut d).finish(&mut errors);
        let joined: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(joined.len(), 2, "{joined:?}");
        assert!(
            joined[0].starts_with("services[0].apiVersion: \"flagger.app/v1alpha3\""),
            "{joined:?}"
        );
        assert!(
            joined[1].starts_with("services[1].spec.targetRef.name: missing"),
            "{joined:?}"
        );
        let mut e = vec![ConfigError::new("services[0].analysis.stepWeight", "bad")];
        let mut d = doc("services:\n- apiVersion: flagger.app/v1beta1\n  kind: Canary\n  spec: { targetRef: { name: x }, service: { port: 80 }, analysis: {} }\n");
        expand(&mut d).finish(&mut e);
        assert_eq!(e[0].path, "services[0].spec.analysis.stepWeight");
    }
}
