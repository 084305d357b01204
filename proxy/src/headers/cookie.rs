//! Reading one cookie out of the `Cookie` headers.

use http::HeaderMap;

/// The value of a cookie, from any `cookie` header.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookie_parsing_handles_spaces_and_many_headers() {
        let mut map = HeaderMap::new();
        map.append(http::header::COOKIE, HeaderValue::from_static("a=1;b = 2"));
        map.append(http::header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(cookie(&map, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&map, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&map, "d"), None);
    }
}
