//! Secrets out of what weir shows (`/config`) and logs: a URL keeps its scheme, host,
//! port and plain path words, and loses its user-info, query values, fragment and
//! token-like path segments; a command keeps its program and loses its arguments;
//! header, cookie and metadata values go. Each becomes `<redacted>`.

use serde_json::Value;

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// A path segment that may be a credential: long, or letters and digits mixed.
fn token_like(segment: &str) -> bool {
    let has = |f: fn(char) -> bool| segment.chars().any(f);
    segment.len() >= 16
        || (segment.len() >= 8 && has(|c| c.is_ascii_digit()) && has(|c| c.is_ascii_alphabetic()))
}

/// A URL with its secrets replaced; text that is not a URL comes back unchanged.
pub fn url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let cut = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(cut);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{REDACTED}@{host}"),
        None => authority.to_string(),
    };
    let (tail, fragment) = match tail.split_once('#') {
        Some((t, _)) => (t, Some(REDACTED)),
        None => (tail, None),
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let path: Vec<&str> = path
        .split('/')
        .map(|s| if token_like(s) { REDACTED } else { s })
        .collect();
    let mut out = format!("{scheme}://{host}{}", path.join("/"));
    if let Some(q) = query {
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}={REDACTED}"),
                None if pair.is_empty() => String::new(),
                None => REDACTED.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// The fields of a header or cookie condition that carry its value.
const MATCH_VALUES: [&str; 4] = ["exact", "prefix", "suffix", "regex"];

/// Redacts a config document in place: every URL anywhere, `exec` arguments,
/// `metadata` values, and the values of `headers`/`cookies` conditions.
pub fn json(value: &mut Value) {
    match value {
        Value::String(s) if s.contains("://") => *s = url(s),
        Value::Array(items) => items.iter_mut().for_each(json),
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), v) {
                    ("exec", Value::Array(argv)) => {
                        for arg in argv.iter_mut().skip(1) {
                            *arg = Value::String(REDACTED.into());
                        }
                    }
                    ("metadata", Value::Object(m)) => {
                        for mv in m.values_mut() {
                            *mv = Value::String(REDACTED.into());
                        }
                    }
                    ("headers" | "cookies", Value::Object(conds)) => {
                        for cond in conds.values_mut() {
                            if let Value::Object(c) = cond {
                                for f in MATCH_VALUES {
                                    if let Some(x) = c.get_mut(f) {
                                        *x = Value::String(REDACTED.into());
                                    }
                                }
                            }
                        }
                    }
                    (_, v) => json(v),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_where_they_go_and_lose_credentials() {
        assert_eq!(
            url("https://user:pw@hooks.example:8443/api/v1/gate?token=abc&x=1#frag"),
            "https://<redacted>@hooks.example:8443/api/v1/gate?token=<redacted>&x=<redacted>#<redacted>"
        );
        assert_eq!(
            url("https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"),
            "https://hooks.slack.com/services/<redacted>/<redacted>/<redacted>"
        );
        assert_eq!(
            url("http://loadtester/gate/approve"),
            "http://loadtester/gate/approve"
        );
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn documents_lose_arguments_metadata_and_match_values() {
        let mut v = serde_json::json!({
            "webhooks": [{"name": "t", "url": "http://h/x?token=s3cret", "exec": ["/bin/check", "--token=s3cret"], "metadata": {"key": "s3cret"}}],
            "routes": [{"match": {"headers": {"authorization": {"exact": "Bearer s3cret"}}}, "to": "canary"}],
        });
        json(&mut v);
        let text = v.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("/bin/check"), "{text}");
        assert!(text.contains("authorization"), "{text}");
    }
}
