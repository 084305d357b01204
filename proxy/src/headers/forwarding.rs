//! What crosses the boundary: forwarding headers (`x-forwarded-for`,
//! `x-forwarded-proto`, believed only from trusted proxies), `x-request-id`, and weir's
//! own `x-weir-*` headers, which only weir sets.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets the forwarding headers. From a trusted proxy, `x-forwarded-for` is extended
/// with the peer and its `x-forwarded-proto` kept; from anyone else every
/// `x-forwarded-*` (and `forwarded`) header is replaced by what weir saw: the peer's
/// address and the connection's scheme. A request without `x-request-id` gets one.
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    trusted: bool,
) {
    let ip = client.to_canonical().to_string();
    if !trusted {
        remove_where(headers, |name| {
            name.starts_with("x-forwarded-") || name == "forwarded"
        });
    }
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_str(&request_id()) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
}

/// Removes weir's own headers (`x-weir-*`) from what a client sent: only weir sets them.
pub(crate) fn strip_internal(headers: &mut HeaderMap) {
    remove_where(headers, |name| name.starts_with("x-weir-"));
}

fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| doomed(n.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

/// A random UUID (version 4) for `x-request-id`.
pub(crate) fn request_id() -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&crate::split::random_u64().to_be_bytes());
    b[8..].copy_from_slice(&crate::split::random_u64().to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(byte >> 4)]));
        s.push(char::from(HEX[usize::from(byte & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_are_appended_for_trusted_peers_and_replaced_otherwise() {
        let forged = || {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
            h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
            h.insert("x-weir-shadow", HeaderValue::from_static("1"));
            h
        };
        let mut h = forged();
        add_forwarding(&mut h, "127.0.0.1".parse().expect("ip"), "http", true);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        let mut h = forged();
        add_forwarding(&mut h, "127.0.0.1".parse().expect("ip"), "http", false);
        strip_internal(&mut h);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
        assert!(!h.contains_key("x-weir-shadow"));
        let id = h["x-request-id"].to_str().expect("ascii").to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        let mut again = HeaderMap::new();
        again.insert("x-request-id", HeaderValue::from_static("abc"));
        add_forwarding(
            &mut again,
            "::ffff:127.0.0.1".parse().expect("ip"),
            "http",
            false,
        );
        assert_eq!(again["x-request-id"], "abc");
        assert_eq!(again["x-forwarded-for"], "127.0.0.1");
        assert_ne!(request_id(), request_id());
    }
}
