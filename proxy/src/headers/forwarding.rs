//! What crosses the boundary: forwarding headers (`x-forwarded-for`,
//! `x-forwarded-proto`, believed only from trusted proxies), `x-request-id`, and weir's
//! own `x-weir-*` headers, which only weir sets.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A peer's address as `x-forwarded-for` carries it: made once per connection.
pub(crate) fn forwarded_for(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Removes what only weir or a trusted proxy may set, in one pass over the names:
/// weir's own headers (`x-weir-*`) always, and every `x-forwarded-*` and `forwarded`
/// header unless the peer is `trusted`.
pub(crate) fn strip_inbound(headers: &mut HeaderMap, trusted: bool) {
    remove_where(headers, |name| {
        name.starts_with("x-weir-")
            || (!trusted && (name.starts_with("x-forwarded-") || name == "forwarded"))
    });
}

/// Sets the forwarding headers on what [`strip_inbound`] left: `x-forwarded-for` is the
/// peer (`client`, from [`forwarded_for`]), appended to a trusted proxy's list;
/// `x-forwarded-proto` is the connection's scheme unless a trusted proxy set it. A
/// request without `x-request-id` gets one.
pub(crate) fn add_forwarding(headers: &mut HeaderMap, client: &HeaderValue, proto: &'static str) {
    let appended = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prev) if !prev.trim_ascii().is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        _ => None,
    };
    headers.insert(
        X_FORWARDED_FOR.clone(),
        appended.unwrap_or_else(|| client.clone()),
    );
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        let id = request_id_bytes();
        if let Ok(v) = HeaderValue::from_bytes(&id) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
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

/// A random UUID (version 4), `8-4-4-4-12` hex digits, on the stack.
fn request_id_bytes() -> [u8; 36] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&crate::split::random_u64().to_be_bytes());
    b[8..].copy_from_slice(&crate::split::random_u64().to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 15)];
        at += 2;
    }
    out
}

/// A random UUID (version 4) for `x-request-id`.
pub(crate) fn request_id() -> String {
    String::from_utf8_lossy(&request_id_bytes()).into_owned()
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
        let local = forwarded_for("127.0.0.1".parse().expect("ip"));
        let mut h = forged();
        strip_inbound(&mut h, true);
        add_forwarding(&mut h, &local, "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x-weir-shadow"));
        let mut h = forged();
        strip_inbound(&mut h, false);
        add_forwarding(&mut h, &local, "http");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
        assert!(!h.contains_key("x-weir-shadow"));
        let id = h["x-request-id"].to_str().expect("ascii").to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        let mut again = HeaderMap::new();
        again.insert("x-request-id", HeaderValue::from_static("abc"));
        let mapped = forwarded_for("::ffff:127.0.0.1".parse().expect("ip"));
        strip_inbound(&mut again, false);
        add_forwarding(&mut again, &mapped, "http");
        assert_eq!(again["x-request-id"], "abc");
        assert_eq!(again["x-forwarded-for"], "127.0.0.1");
        assert_ne!(request_id(), request_id());
    }
}
