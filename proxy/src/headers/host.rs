//! The host a request is for, and the names weir derives from it.

use http::{header, HeaderMap, Uri};

/// The host a request is for: `:authority` / absolute-form first, then the Host header.
pub(crate) fn authority_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// The host a request is routed on, or why weir refuses it: more than one Host header,
/// a Host that is not text, or a Host that disagrees with the absolute-form URI or
/// HTTP/2's `:authority` (two hosts would let the upstream see another than weir routed).
pub(crate) fn routed_host<'a>(
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let host = match host {
        Some(h) => Some(h.to_str().map_err(|_| "the Host header is not text")?),
        None => None,
    };
    match (uri.authority(), host) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h.trim()) => {
            Err("the Host header disagrees with the request's authority")
        }
        (Some(a), _) => Ok(Some(a.as_str())),
        (None, h) => Ok(h.map(str::trim)),
    }
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
    fn one_host_that_agrees_with_the_authority_is_routed_on() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "podinfo".parse().expect("value"));
        let origin: Uri = "/x".parse().expect("uri");
        let absolute: Uri = "http://podinfo/x".parse().expect("uri");
        let other: Uri = "http://evil.example/x".parse().expect("uri");
        assert_eq!(routed_host(&origin, &h), Ok(Some("podinfo")));
        assert_eq!(routed_host(&absolute, &h), Ok(Some("podinfo")));
        assert!(routed_host(&other, &h).is_err());
        h.append(header::HOST, "evil.example".parse().expect("value"));
        assert_eq!(routed_host(&origin, &h), Err("more than one Host header"));
        assert_eq!(
            routed_host(&other, &HeaderMap::new()),
            Ok(Some("evil.example"))
        );
    }

    #[test]
    fn ports_are_stripped_and_shadow_hosts_keep_them() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(shadow_host("podinfo:9898"), "podinfo-shadow:9898");
        assert_eq!(shadow_host("podinfo"), "podinfo-shadow");
    }
}
