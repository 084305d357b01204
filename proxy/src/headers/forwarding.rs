//! Forwarding headers: `x-forwarded-for`, `x-forwarded-proto` and `x-request-id`.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// absent, and gives the request an `x-request-id` when it has none.
pub(crate) fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, proto: &'static str) {
    let ip = client.to_canonical().to_string();
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
    fn forwarding_headers_are_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarding(&mut h, "127.0.0.1".parse().expect("ip"), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let id = h["x-request-id"].to_str().expect("ascii").to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        let mut again = HeaderMap::new();
        again.insert("x-request-id", HeaderValue::from_static("abc"));
        add_forwarding(&mut again, "::ffff:127.0.0.1".parse().expect("ip"), "http");
        assert_eq!(again["x-request-id"], "abc");
        assert_eq!(again["x-forwarded-for"], "127.0.0.1");
        assert_ne!(request_id(), request_id());
    }
}
