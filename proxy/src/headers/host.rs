//! The host a request is for, and the names weir derives from it.

use http::{header, HeaderMap, Uri};

/// The host a request is for: `:authority` / absolute-form first, then the Host header.
pub(crate) fn authority_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// The host without its port (`[v6]:port` too).
pub(crate) fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// The Host of a shadow copy: `-shadow` after the name, before any port.
pub(crate) fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty()
                && !name.contains(':')
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_and_shadow_hosts_keep_them() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(shadow_host("podinfo:9898"), "podinfo-shadow:9898");
        assert_eq!(shadow_host("podinfo"), "podinfo-shadow");
    }
}
