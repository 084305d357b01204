//! Connection-specific (hop-by-hop) headers, which never cross a proxy.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Connection-specific headers that never cross a proxy (RFC 9110 §7.6.1), except
/// `te: trailers`, which gRPC needs end to end, and an upgrade's own headers.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named by `Connection` are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE) && n != header::TE)
        .collect();
    for name in listed {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    // An h2c upgrade's settings are for the connection it would upgrade: never forwarded.
    headers.remove(&HTTP2_SETTINGS);
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(te) = headers.get(header::TE) {
        let trailers = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// True for an HTTP/1.1 upgrade request (WebSocket and friends).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// What weir does with an HTTP/1.1 request's upgrade, under a rule that allows `allowed`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// Not an upgrade, or only `h2c` (a client trying HTTP/2 opportunistically): the
    /// request goes on as plain HTTP/1.1 without its upgrade headers, as Envoy does.
    Plain,
    /// Every protocol asked for is allowed: the connection may become a tunnel to one of
    /// these (the `Upgrade` value the upstream gets: the request's, `h2c` left out).
    Tunnel(HeaderValue),
    /// A protocol the rule does not allow (the first one named).
    Refused(String),
}

/// Decides an upgrade: `h2c` is dropped from the list (never forwarded), what remains must
/// all be in `allowed` (protocol names, compared without case or version).
pub(crate) fn upgrade(headers: &HeaderMap, allowed: &[Box<str>]) -> Upgrade {
    if !is_upgrade(headers) {
        return Upgrade::Plain;
    }
    let asked: Vec<String> = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| String::from_utf8_lossy(t).trim().to_string())
        .filter(|t| !t.is_empty())
        .filter(|t| !protocol_name(t).eq_ignore_ascii_case("h2c"))
        .collect();
    if asked.is_empty() {
        return Upgrade::Plain;
    }
    for t in &asked {
        let name = protocol_name(t);
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return Upgrade::Refused(t.clone());
        }
    }
    match HeaderValue::from_str(&asked.join(", ")) {
        Ok(v) => Upgrade::Tunnel(v),
        Err(_) => Upgrade::Refused(asked.join(", ")),
    }
}

/// True when a `101` answer switched to a protocol the request was sent with (`asked`,
/// the `Upgrade` value weir forwarded): anything else is the upstream's protocol error,
/// never a tunnel.
pub(crate) fn switched_as_asked(response: &HeaderMap, asked: &HeaderValue) -> bool {
    let names = |v: &HeaderValue| -> Vec<String> {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .map(|t| protocol_name(t).to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let offered = names(asked);
    let mut chosen = response
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(names)
        .peekable();
    chosen.peek().is_some() && chosen.all(|c| offered.contains(&c))
}

/// `websocket` of `websocket/13`.
fn protocol_name(token: &str) -> &str {
    token.split_once('/').map_or(token, |(n, _)| n).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_but_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-kept"]);
        assert_eq!(h[header::TE], "trailers");
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    fn asking(connection: &'static str, upgrade: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static(connection));
        h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
        h
    }

    #[test]
    fn h2c_is_never_a_tunnel_and_unlisted_protocols_are_refused() {
        let ws: Vec<Box<str>> = vec!["websocket".into()];
        let both: Vec<Box<str>> = vec!["websocket".into(), "connect-udp".into()];
        assert_eq!(
            upgrade(&asking("Upgrade, HTTP2-Settings", "h2c"), &ws),
            Upgrade::Plain
        );
        assert_eq!(upgrade(&asking("upgrade", "H2C"), &both), Upgrade::Plain);
        assert_eq!(
            upgrade(&asking("keep-alive, Upgrade", "WebSocket"), &ws),
            Upgrade::Tunnel(HeaderValue::from_static("WebSocket"))
        );
        // h2c beside an allowed protocol: the upstream is offered the allowed one alone.
        assert_eq!(
            upgrade(&asking("Upgrade, HTTP2-Settings", "h2c, websocket/13"), &ws),
            Upgrade::Tunnel(HeaderValue::from_static("websocket/13"))
        );
        assert_eq!(
            upgrade(&asking("Upgrade", "connect-udp"), &ws),
            Upgrade::Refused("connect-udp".into())
        );
        assert_eq!(
            upgrade(&asking("Upgrade", "connect-udp"), &both),
            Upgrade::Tunnel(HeaderValue::from_static("connect-udp"))
        );
        assert_eq!(
            upgrade(&asking("keep-alive", "websocket"), &ws),
            Upgrade::Plain
        );
        let mut h = asking("Upgrade, HTTP2-Settings", "h2c");
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"),
        );
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn a_switch_counts_only_to_a_protocol_that_was_asked_for() {
        let asked = HeaderValue::from_static("websocket/13");
        let answer = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, HeaderValue::from_static(v));
            h
        };
        assert!(switched_as_asked(&answer("WebSocket"), &asked));
        assert!(!switched_as_asked(&answer("h2c"), &asked));
        assert!(!switched_as_asked(&answer("websocket, h2c"), &asked));
        assert!(!switched_as_asked(&HeaderMap::new(), &asked));
    }

    #[test]
    fn upgrade_headers_survive_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }
}
