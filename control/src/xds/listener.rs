//! An Envoy node's listener: its address (from the node's bootstrap), an HTTP connection
//! manager that takes its routes over RDS, weir.yaml's listener limits as Envoy's, and the
//! listener's TLS from the same certificate files weir serves (one filter chain per
//! certificate, chosen by SNI; the first also serves clients that send none).

use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as CommonHttpOptions;
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
    TlsCertificate,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use weir_proxy::config::{Limits, ListenerTls};

use super::clusters::address_of;
use super::{ads_source, data, duration, Problem, LISTENER, ROUTE_CONFIG, UPGRADES};

/// The listener of a node that listens on `addr` (`ip:port`).
pub fn listener(
    addr: &str,
    tls: Option<&ListenerTls>,
    limits: &Limits,
) -> Result<Listener, Problem> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse().ok()?,
            ))
        })
        .ok_or_else(|| {
            Problem::new(format!("the node's listen address {addr:?} is not ip:port"))
        })?;
    let hcm = Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(manager(limits)))),
    };
    let chains = match tls {
        None => vec![FilterChain {
            filters: vec![hcm],
            ..FilterChain::default()
        }],
        Some(t) => tls_chains(t, hcm)?,
    };
    Ok(Listener {
        name: LISTENER.into(),
        address: Some(address_of(host, port)),
        filter_chains: chains,
        ..Listener::default()
    })
}

/// The connection manager: routes from RDS, the router filter, and the limits.
fn manager(l: &Limits) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: "weir".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source()),
            route_config_name: ROUTE_CONFIG.into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..HttpFilter::default()
        }],
        common_http_protocol_options: Some(CommonHttpOptions {
            idle_timeout: Some(duration(l.idle_timeout.0)),
            max_headers_count: Some(UInt32Value {
                value: u32::try_from(l.max_headers).unwrap_or(u32::MAX),
            }),
            ..CommonHttpOptions::default()
        }),
        http2_protocol_options: Some(Http2ProtocolOptions {
            max_concurrent_streams: Some(UInt32Value {
                value: l.max_concurrent_streams,
            }),
            ..Http2ProtocolOptions::default()
        }),
        max_request_headers_kb: Some(UInt32Value {
            value: u32::try_from(l.max_header_bytes.div_ceil(1024))
                .unwrap_or(96)
                .clamp(1, 8192),
        }),
        request_timeout: Some(duration(l.request_timeout.0)),
        request_headers_timeout: Some(duration(l.header_read_timeout.0)),
        drain_timeout: Some(duration(l.drain_timeout.0)),
        // Every upgrade a route may allow is known here; each route says which it does.
        upgrade_configs: UPGRADES
            .iter()
            .map(|u| http_connection_manager::UpgradeConfig {
                upgrade_type: (*u).to_string(),
                enabled: Some(BoolValue { value: true }),
                ..http_connection_manager::UpgradeConfig::default()
            })
            .collect(),
        use_remote_address: Some(BoolValue { value: true }),
        ..HttpConnectionManager::default()
    }
}

/// One filter chain per certificate, matched by the SNI names it carries; the first
/// certificate's chain also takes clients that send no name (or one no certificate has).
fn tls_chains(t: &ListenerTls, hcm: Filter) -> Result<Vec<FilterChain>, Problem> {
    let validation = match &t.client_ca {
        Some(ca) => Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(data(ca, "tls.clientCa")?),
                    ..CertificateValidationContext::default()
                },
            ),
        ),
        None => None,
    };
    let mut chains = Vec::new();
    for (i, files) in t.certificates.iter().enumerate() {
        let field = |f: &str| format!("tls.certificates[{i}].{f}");
        let pem = std::fs::read(&files.cert).map_err(|e| {
            Problem::new(format!(
                "{}: cannot read {}: {e}",
                field("cert"),
                files.cert
            ))
        })?;
        let names = weir_proxy::tls::dns_names_of_pem(&pem)
            .map_err(|e| Problem::new(format!("{}: {e}", field("cert"))))?;
        let context = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: Some(data(&files.cert, &field("cert"))?),
                    private_key: Some(data(&files.key, &field("key"))?),
                    ..TlsCertificate::default()
                }],
                alpn_protocols: vec!["h2".into(), "http/1.1".into()],
                validation_context_type: validation.clone(),
                ..CommonTlsContext::default()
            }),
            require_client_certificate: Some(BoolValue {
                value: t.client_ca.is_some(),
            }),
            ..DownstreamTlsContext::default()
        };
        let socket = super::tls_socket(pack_any(context));
        // A certificate without DNS names can only be the default.
        if !names.is_empty() {
            chains.push(FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    server_names: names,
                    ..FilterChainMatch::default()
                }),
                filters: vec![hcm.clone()],
                transport_socket: Some(socket.clone()),
                name: format!("certificate-{i}"),
                ..FilterChain::default()
            });
        }
        if i == 0 {
            chains.push(FilterChain {
                filters: vec![hcm.clone()],
                transport_socket: Some(socket),
                name: "default".into(),
                ..FilterChain::default()
            });
        }
    }
    Ok(chains)
}
