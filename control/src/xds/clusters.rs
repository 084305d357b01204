//! Each version of each service as an Envoy cluster: EDS when its endpoints are
//! addresses (their ClusterLoadAssignment follows), STRICT_DNS when one is a host name
//! (Envoy then resolves every address of it and balances over them); the connect and idle
//! timeouts, HTTP/2, and TLS to the endpoints with the certificates inline.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CommonHttpOptions, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, subject_alt_name_matcher, CertificateValidationContext, CommonTlsContext,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options as hpo, HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::util::pack_any;
use weir_proxy::config::VersionConfig;

use super::{ads_source, data, duration, Problem};

/// Where Envoy finds the system's CAs when a version names none (weir itself uses the
/// Mozilla roots it carries).
pub const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The cluster of one version, and its endpoints when they come by EDS.
pub struct VersionCluster {
    pub cluster: Cluster,
    pub endpoints: Option<ClusterLoadAssignment>,
}

/// `version` (settings `v`) as a cluster named `name`.
pub fn cluster(version: &str, v: &VersionConfig, name: &str) -> Result<VersionCluster, Problem> {
    let endpoints = v
        .endpoints
        .iter()
        .map(|ep| {
            socket(ep).ok_or_else(|| {
                Problem::new(format!(
                    "version {version}: endpoint {ep:?} is not host:port"
                ))
            })
        })
        .collect::<Result<Vec<(String, u32)>, Problem>>()?;
    let by_name = endpoints
        .iter()
        .any(|(host, _)| host.parse::<std::net::IpAddr>().is_err());
    let assignment = ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|(host, port)| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(address_of(host, *port)),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                })
                .collect(),
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    };
    let protocol = HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttpOptions {
            idle_timeout: Some(duration(v.idle_timeout.0)),
            ..CommonHttpOptions::default()
        }),
        upstream_protocol_options: Some(hpo::UpstreamProtocolOptions::ExplicitHttpConfig(
            hpo::ExplicitHttpConfig {
                protocol_config: Some(if v.http2 {
                    hpo::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )
                } else {
                    hpo::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                        Http1ProtocolOptions::default(),
                    )
                }),
            },
        )),
        ..HttpProtocolOptions::default()
    };
    let mut c = Cluster {
        name: name.to_string(),
        alt_stat_name: String::new(),
        connect_timeout: Some(duration(v.connect_timeout.0)),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        typed_extension_protocol_options: HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(protocol),
        )]),
        ..Cluster::default()
    };
    if let Some(tls) = &v.tls {
        // `serverName`, else each endpoint's own host, as weir's proxies check them; a
        // cluster has one check in Envoy, so it takes any of the version's endpoints.
        let mut names: Vec<&str> = Vec::new();
        match &tls.server_name {
            Some(name) => names.push(name),
            None => {
                for (host, _) in &endpoints {
                    if !names.contains(&host.as_str()) {
                        names.push(host);
                    }
                }
            }
        }
        c.transport_socket = Some(upstream_tls(version, tls, &names, v.http2)?);
    }
    if by_name {
        c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32,
        ));
        c.dns_lookup_family = cluster::DnsLookupFamily::V4Preferred as i32;
        c.load_assignment = Some(assignment);
        return Ok(VersionCluster {
            cluster: c,
            endpoints: None,
        });
    }
    c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::Eds as i32,
    ));
    c.eds_cluster_config = Some(cluster::EdsClusterConfig {
        eds_config: Some(ads_source()),
        service_name: String::new(),
    });
    Ok(VersionCluster {
        cluster: c,
        endpoints: Some(assignment),
    })
}

/// `host:port` split, the port as Envoy takes it.
fn socket(ep: &str) -> Option<(String, u32)> {
    let (host, port) = weir_proxy::config::endpoint(ep).ok()?;
    Some((host.to_string(), u32::from(port)))
}

/// An address Envoy connects to.
pub fn address_of(host: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

/// TLS to the endpoints: their certificate checked against the version's CA (the
/// system's when it names none) and one of `names` (a DNS name, or an IP address as an
/// IP SAN), weir's client certificate for mTLS. The first name is the SNI unless it is
/// an IP address, which SNI cannot carry.
fn upstream_tls(
    version: &str,
    tls: &weir_proxy::config::UpstreamTls,
    names: &[&str],
    http2: bool,
) -> Result<TransportSocket, Problem> {
    let field = |f: &str| format!("version {version}: tls.{f}");
    let trusted_ca = match &tls.ca {
        Some(path) => data(path, &field("ca"))?,
        None => super::file_source(SYSTEM_CAS),
    };
    let is_ip = |name: &str| name.parse::<std::net::IpAddr>().is_ok();
    let validation = CertificateValidationContext {
        trusted_ca: Some(trusted_ca),
        match_typed_subject_alt_names: names
            .iter()
            .map(|name| SubjectAltNameMatcher {
                san_type: if is_ip(name) {
                    subject_alt_name_matcher::SanType::IpAddress
                } else {
                    subject_alt_name_matcher::SanType::Dns
                } as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(name.to_string())),
                    ..StringMatcher::default()
                }),
                ..SubjectAltNameMatcher::default()
            })
            .collect(),
        ..CertificateValidationContext::default()
    };
    let sni = names.first().filter(|n| !is_ip(n)).copied().unwrap_or("");
    let certificates = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => vec![TlsCertificate {
            certificate_chain: Some(data(cert, &field("cert"))?),
            private_key: Some(data(key, &field("key"))?),
            ..TlsCertificate::default()
        }],
        _ => Vec::new(),
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: certificates,
            alpn_protocols: vec![if http2 { "h2" } else { "http/1.1" }.to_string()],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(validation),
            ),
            ..CommonTlsContext::default()
        }),
        sni: sni.to_string(),
        ..UpstreamTlsContext::default()
    };
    Ok(super::tls_socket(pack_any(context)))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use prost::Message;

    use super::*;

    /// The TLS context of the cluster of a version given as YAML.
    fn tls_of(yaml: &str) -> UpstreamTlsContext {
        let v: VersionConfig = serde_yaml_ng::from_str(yaml).expect("valid version");
        let c = cluster("canary", &v, "test_shop-canary_8443").expect("translates");
        let socket = c.cluster.transport_socket.expect("TLS");
        let Some(ConfigType::TypedConfig(any)) = socket.config_type else {
            panic!("no typed config");
        };
        UpstreamTlsContext::decode(any.value.as_slice()).expect("an UpstreamTlsContext")
    }

    /// Each SAN matcher as (type, exact value).
    fn sans(t: &UpstreamTlsContext) -> Vec<(subject_alt_name_matcher::SanType, String)> {
        let common = t.common_tls_context.as_ref().expect("common context");
        let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
            &common.validation_context_type
        else {
            panic!("no validation context");
        };
        v.match_typed_subject_alt_names
            .iter()
            .map(|m| {
                let Some(string_matcher::MatchPattern::Exact(e)) =
                    m.matcher.as_ref().and_then(|s| s.match_pattern.clone())
                else {
                    panic!("not an exact match");
                };
                (m.san_type(), e)
            })
            .collect()
    }

    #[test]
    fn tls_to_ip_endpoints_checks_ip_sans_and_sends_no_sni() {
        use subject_alt_name_matcher::SanType;
        let t = tls_of(
            r#"{ endpoints: ["10.0.0.1:8443", "10.0.0.2:8443", "[fd00::1]:8443", "10.0.0.1:8444"], tls: {} }"#,
        );
        assert_eq!(t.sni, "");
        assert_eq!(
            sans(&t),
            [
                (SanType::IpAddress, "10.0.0.1".to_string()),
                (SanType::IpAddress, "10.0.0.2".to_string()),
                (SanType::IpAddress, "fd00::1".to_string()),
            ]
        );
    }

    #[test]
    fn tls_with_a_server_name_sends_and_checks_it() {
        use subject_alt_name_matcher::SanType;
        let t =
            tls_of(r#"{ endpoints: ["10.0.0.1:8443"], tls: { serverName: shop-canary.shop } }"#);
        assert_eq!(t.sni, "shop-canary.shop");
        assert_eq!(sans(&t), [(SanType::Dns, "shop-canary.shop".to_string())]);
        let by_name = tls_of(r#"{ endpoints: ["shop-canary.shop:8443"], tls: {} }"#);
        assert_eq!(by_name.sni, "shop-canary.shop");
        assert_eq!(
            sans(&by_name),
            [(SanType::Dns, "shop-canary.shop".to_string())]
        );
    }
}
