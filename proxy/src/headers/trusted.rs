//! `trustedProxies`: the peers (CIDRs) whose `X-Forwarded-*` headers weir believes.

use std::net::IpAddr;

/// A set of networks.
#[derive(Debug, Default)]
pub(crate) struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
}

/// One `ip/prefix` (or a bare address), or why not.
pub(crate) fn cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address or CIDR (10.0.0.0/8, fd00::/8)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        None => max,
    };
    Ok((ip, len))
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

impl TrustedProxies {
    /// The valid entries of a list (validation reports the others).
    pub(crate) fn parse(list: &[String]) -> TrustedProxies {
        TrustedProxies {
            nets: list.iter().filter_map(|s| cidr(s).ok()).collect(),
        }
    }

    /// True when `peer` is in one of the networks.
    pub(crate) fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.nets.iter().any(|(net, len)| {
            let ((p, pw), (n, nw)) = (bits(peer), bits(*net));
            if pw != nw {
                return false;
            }
            let shift = u32::from(nw - len);
            *len == 0 || p.checked_shr(shift) == n.checked_shr(shift)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_only() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into(), "192.168.1.7".into()]);
        for (ip, inside) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("::1", true),
            ("::2", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("::ffff:10.9.9.9", true),
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(t.contains(ip), inside, "{ip}");
        }
        assert!(cidr("10.0.0.0/33").is_err());
        assert!(cidr("nope").is_err());
        assert!(
            TrustedProxies::parse(&["0.0.0.0/0".into()]).contains("8.8.8.8".parse().expect("ip"))
        );
    }
}
