//! Resolving hostname endpoints with hickory's resolver: the nameservers of
//! /etc/resolv.conf (its search domains and ndots too) unless `resolver:` names them,
//! /etc/hosts first, IPv4 addresses when a name has any and IPv6 otherwise (Envoy's
//! `V4_PREFERRED`, so a dual-stack pod is not counted twice). Each answer says how long
//! it holds: its TTL, clamped to [`MIN_TTL`, `MAX_TTL`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig as Servers, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use hyper_util::client::legacy::connect::dns::Name;
use prometheus::IntCounterVec;

use crate::config::{nameserver, ResolverConfig};

/// Shortest time an answer is used before the name is asked again.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest time an answer is used before the name is asked again.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(60);

/// One answer: the addresses of a name, and how long to use them.
pub(crate) struct Answer {
    pub addresses: Vec<IpAddr>,
    pub ttl: Duration,
}

/// The resolver hostname endpoints share (made at first use, on the runtime).
pub(crate) struct Dns {
    config: Option<ResolverConfig>,
    resolver: OnceLock<Result<TokioResolver, String>>,
    /// `weir_dns_resolutions_total{host,result}`.
    counted: IntCounterVec,
}

impl Dns {
    pub(crate) fn new(config: Option<ResolverConfig>, counted: IntCounterVec) -> Dns {
        Dns {
            config,
            resolver: OnceLock::new(),
            counted,
        }
    }

    fn resolver(&self) -> Result<&TokioResolver, String> {
        self.resolver
            .get_or_init(|| build(self.config.as_ref()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The addresses of `host` now; an answer with no address is an error (the last good
    /// one stays in use). Counted by result.
    pub(crate) async fn lookup(&self, host: &str) -> Result<Answer, String> {
        let result = self.ask(host).await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.counted.with_label_values(&[host, label]).inc();
        result
    }

    async fn ask(&self, host: &str) -> Result<Answer, String> {
        let lookup = self
            .resolver()?
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let mut addresses: Vec<IpAddr> = lookup.iter().collect();
        if addresses.is_empty() {
            return Err(format!("{host}: the answer has no address"));
        }
        addresses.sort();
        addresses.dedup();
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now())
            .clamp(MIN_TTL, MAX_TTL);
        Ok(Answer { addresses, ttl })
    }
}

/// hickory's resolver for the config: its nameservers (UDP, then TCP for truncated
/// answers), or the system's.
fn build(config: Option<&ResolverConfig>) -> Result<TokioResolver, String> {
    let mut builder = match config {
        Some(c) => {
            let mut servers = Vec::new();
            for ns in &c.nameservers {
                let addr: SocketAddr = nameserver(ns)?;
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut server.connections {
                    conn.port = addr.port();
                }
                servers.push(server);
            }
            TokioResolver::builder_with_config(
                Servers::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's resolver config: {e}"))?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    opts.use_hosts_file = ResolveHosts::Always;
    // The cache never outlives a re-resolution.
    opts.positive_max_ttl = Some(MAX_TTL);
    opts.negative_max_ttl = Some(MIN_TTL);
    builder
        .build()
        .map_err(|e| format!("cannot make the resolver: {e}"))
}

/// The connector's resolver for a name dialled as written (before its first answer is
/// in use): the same resolver and nameservers, so a name only `resolver:` knows works
/// from the first request.
#[derive(Clone)]
pub(crate) struct OnConnect(pub Arc<Dns>);

type Addresses = std::vec::IntoIter<SocketAddr>;
type Failure = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for OnConnect {
    type Response = Addresses;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Addresses, Failure>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let dns = self.0.clone();
        Box::pin(async move {
            let answer = dns.lookup(name.as_str()).await?;
            let all: Vec<SocketAddr> = answer
                .addresses
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            Ok(all.into_iter())
        })
    }
}
