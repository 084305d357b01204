//! `weir bootstrap envoy`: a complete Envoy bootstrap that takes every listener, route,
//! cluster and endpoint from weir's controller over ADS (its control address, with TLS
//! and credentials when given) and pushes Envoy's stats back to it every 250 ms (or at
//! `--stats-flush`), with the admin interface on loopback. `envoy -c` takes it as printed.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::link::{self, Access};

/// What to write a bootstrap for.
#[derive(Subcommand, Debug, Clone)]
pub enum BootstrapCommand {
    /// An Envoy node (sidecar or gateway) driven by weir's controller.
    Envoy(EnvoyArgs),
}

/// `weir bootstrap envoy` options.
#[derive(Args, Debug, Clone)]
pub struct EnvoyArgs {
    /// The controller's control API and the credentials to reach it (a `replica` token,
    /// or a client certificate): the same options `weir ctl` takes.
    #[command(flatten)]
    pub access: Access,
    /// The node's id: unique per Envoy (the controller lists nodes by it).
    #[arg(long)]
    pub node: String,
    /// The node's cluster (Envoy's `node.cluster`).
    #[arg(long, default_value = "weir")]
    pub cluster: String,
    /// Where the node listens for users (`ip:port`); without it, `envoy.listen` of the
    /// controller's weir.yaml.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Envoy's admin interface (keep it on loopback).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    pub admin: String,
    /// How often Envoy pushes its stats to the controller (100ms to 60s). The fast-fail
    /// guard cannot act before a flush: a shorter one rolls a dead canary back sooner
    /// (at 250 ms about as soon as through a weir replica), for more of Envoy's and the
    /// controller's CPU.
    #[arg(long, value_name = "DURATION", default_value = "250ms")]
    pub stats_flush: String,
}

/// `--stats-flush` as Envoy writes a duration (`0.250s`).
fn flush_interval(text: &str) -> Result<String, String> {
    let d = weir_proxy::config::Dur::parse(text)
        .map_err(|e| format!("--stats-flush {text:?}: {e}"))?
        .0;
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(60) {
        return Err(format!("--stats-flush {text:?}: must be from 100ms to 60s"));
    }
    Ok(format!("{:.3}s", d.as_secs_f64()))
}

/// Prints the bootstrap, or why it cannot be made.
pub fn bootstrap(command: BootstrapCommand) -> anyhow::Result<ExitCode> {
    let BootstrapCommand::Envoy(args) = command;
    match envoy(&args) {
        Ok(yaml) => {
            print!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("weir bootstrap envoy: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `host:port` of an address, without its scheme; its scheme says TLS.
fn target(control: &str) -> Result<(String, u32, bool), String> {
    let (tls, rest) = match control.split_once("://") {
        Some(("https", r)) => (true, r),
        Some(("http", r)) => (false, r),
        Some((s, _)) => return Err(format!("--control {control:?}: unknown scheme {s:?}")),
        None => (false, control),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("--control {control:?}: expected host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("--control {control:?}: {port:?} is not a port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port, tls))
}

fn socket(host: &str, port: u32) -> Value {
    json!({ "socket_address": { "address": host, "port_value": port } })
}

/// The bootstrap as YAML.
pub fn envoy(args: &EnvoyArgs) -> Result<String, String> {
    let (host, port, https) = target(&args.access.control)?;
    let tls = https || args.access.ca.is_some() || args.access.cert.is_some();
    let token = link::token(&args.access).map_err(|e| e.to_string())?;
    let metadata: Vec<Value> = token
        .iter()
        .map(|t| json!({ "key": "authorization", "value": format!("Bearer {}", t.replace('%', "%%")) }))
        .collect();
    let grpc = json!({
        "envoy_grpc": { "cluster_name": "weir_control" },
        "initial_metadata": metadata,
    });
    let (admin_host, admin_port) = args
        .admin
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("--admin {:?}: expected ip:port", args.admin))?;
    let by_name = host.parse::<std::net::IpAddr>().is_err();
    let mut control = json!({
        "name": "weir_control",
        "type": if by_name { "STRICT_DNS" } else { "STATIC" },
        // A name like localhost resolves to ::1 first; the control API may not listen there.
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        // Pings find a controller that vanished without closing the stream.
                        "connection_keepalive": { "interval": "10s", "timeout": "10s" }
                    }
                }
            }
        },
        "load_assignment": {
            "cluster_name": "weir_control",
            "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": socket(&host, port) } } ] } ]
        }
    });
    if tls {
        let trusted_ca = match &args.access.ca {
            Some(ca) => {
                let pem = std::fs::read_to_string(ca)
                    .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
                json!({ "inline_string": pem })
            }
            // The node's system CAs, at the path Debian and Ubuntu (and Envoy's images
            // built on them) keep them.
            None => json!({ "filename": crate::xds::SYSTEM_CAS }),
        };
        // The controller's certificate must name the host the node dials: a DNS name,
        // or an IP address as an IP SAN.
        let san_type = if by_name { "DNS" } else { "IP_ADDRESS" };
        let mut common = json!({
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": trusted_ca,
                "match_typed_subject_alt_names": [ { "san_type": san_type, "matcher": { "exact": host } } ]
            }
        });
        if let (Some(cert), Some(key)) = (&args.access.cert, &args.access.key) {
            // The files as the node sees them (a mounted Secret): the key is not copied.
            common["tls_certificates"] = json!([{
                "certificate_chain": { "filename": cert.display().to_string() },
                "private_key": { "filename": key.display().to_string() }
            }]);
        }
        let mut context = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common
        });
        // SNI carries host names only.
        if by_name {
            context["sni"] = json!(host);
        }
        control["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": context
        });
    }
    let mut node = json!({ "id": args.node, "cluster": args.cluster });
    if let Some(listen) = &args.listen {
        crate::xds::check_listen(listen).map_err(|e| format!("--listen: {e}"))?;
        node["metadata"] = json!({ "weir.listen": listen });
    }
    let flush = flush_interval(&args.stats_flush)?;
    let doc = json!({
        "node": node,
        "admin": { "address": socket(&admin_host, admin_port) },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [grpc]
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": [control] },
        "stats_flush_interval": flush,
        "stats_sinks": [{
            "name": "envoy.stat_sinks.metrics_service",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                "transport_api_version": "V3",
                // Running totals: weir differences them, so a lost flush is made good.
                "report_counters_as_deltas": false,
                "emit_tags_as_labels": true,
                "histogram_emit_mode": "HISTOGRAM",
                "grpc_service": grpc
            }
        }]
    });
    let mut out = String::from(
        "# Envoy bootstrap written by `weir bootstrap envoy`: routing over ADS from weir's\n# controller, stats pushed back to it at each stats flush.\n",
    );
    if token.is_some() {
        out.push_str("# It holds a bearer token: keep it in a Secret, not a ConfigMap.\n");
    }
    out.push_str(&serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(control: &str, ca: Option<std::path::PathBuf>) -> EnvoyArgs {
        EnvoyArgs {
            access: Access {
                control: control.to_string(),
                token_file: None,
                ca,
                cert: None,
                key: None,
            },
            node: "gw-1".into(),
            cluster: "weir".into(),
            listen: Some("0.0.0.0:10000".into()),
            admin: "127.0.0.1:9901".into(),
            stats_flush: "250ms".into(),
        }
    }

    /// The TLS context of the control cluster in the written bootstrap.
    fn control_tls(args: &EnvoyArgs) -> Value {
        let yaml = envoy(args).expect("a bootstrap");
        let doc: Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
        doc["static_resources"]["clusters"][0]["transport_socket"]["typed_config"].clone()
    }

    #[test]
    fn https_without_ca_checks_the_controller_against_the_system_cas() {
        let tls = control_tls(&args("https://weir-control:9090", None));
        assert_eq!(tls["sni"], "weir-control");
        assert_eq!(
            tls["common_tls_context"]["validation_context"],
            json!({
                "trusted_ca": { "filename": "/etc/ssl/certs/ca-certificates.crt" },
                "match_typed_subject_alt_names": [ { "san_type": "DNS", "matcher": { "exact": "weir-control" } } ]
            })
        );
    }

    #[test]
    fn https_to_an_ip_checks_an_ip_san_and_sends_no_sni() {
        let tls = control_tls(&args("https://10.1.2.3:9090", None));
        assert_eq!(tls.get("sni"), None);
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"],
            json!([ { "san_type": "IP_ADDRESS", "matcher": { "exact": "10.1.2.3" } } ])
        );
        let v6 = control_tls(&args("https://[fd00::1]:9090", None));
        assert_eq!(
            v6["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]
                ["matcher"]["exact"],
            "fd00::1"
        );
    }

    #[test]
    fn a_ca_is_written_inline() {
        let path =
            std::env::temp_dir().join(format!("weir-bootstrap-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\ntest\n").expect("write CA");
        let tls = control_tls(&args("weir-control:9090", Some(path.clone())));
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["trusted_ca"],
            json!({ "inline_string": "-----BEGIN CERTIFICATE-----\ntest\n" })
        );
    }

    #[test]
    fn plain_http_has_no_tls() {
        let yaml = envoy(&args("http://weir-control:9090", None)).expect("a bootstrap");
        let doc: Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
        assert_eq!(
            doc["static_resources"]["clusters"][0].get("transport_socket"),
            None
        );
    }
}
