//! Request conditions: path, method, headers and cookies, built from a `MatchConfig` once
//! and evaluated per request without allocation. Building is also the validation: each
//! problem is reported with its field path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use http::{HeaderMap, HeaderName, Method};

use crate::config::decode::ConfigError;
use crate::config::schema::{MatchConfig, StringMatch};
use crate::headers::cookie;

/// The parts of a request routing looks at.
pub(crate) struct RequestView<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Path without the query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// All conditions of a rule.
#[derive(Default)]
pub(crate) struct Matcher {
    path: Option<PathMatcher>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    cookies: Vec<(String, ValueMatcher)>,
}

enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(Arc<regex::Regex>),
}

/// One header or cookie condition.
pub(crate) struct ValueMatcher {
    kind: ValueKind,
    invert: bool,
}

enum ValueKind {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Regex(Arc<regex::bytes::Regex>),
    Present(bool),
}

impl Matcher {
    /// Builds the conditions; problems go to `errors` with paths under `mp`. None when
    /// there was a problem.
    pub(crate) fn build(
        m: &MatchConfig,
        mp: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Matcher> {
        let before = errors.len();
        let mut matcher = Matcher::default();
        if let Some(p) = &m.path {
            let set = [&p.exact, &p.prefix, &p.regex]
                .iter()
                .filter(|v| v.is_some())
                .count();
            if set != 1 {
                errors.push(ConfigError::new(
                    format!("{mp}.path"),
                    "set exactly one of exact, prefix or regex",
                ));
            }
            for s in [&p.exact, &p.prefix].into_iter().flatten() {
                if !s.starts_with('/') {
                    errors.push(ConfigError::new(
                        format!("{mp}.path"),
                        format!("{s:?} must start with '/'"),
                    ));
                }
            }
            matcher.path = if let Some(s) = &p.exact {
                Some(PathMatcher::Exact(s.clone()))
            } else if let Some(s) = &p.prefix {
                Some(PathMatcher::Prefix(s.clone()))
            } else if let Some(re) = &p.regex {
                match compiled(&STR_REGEXES, re, regex::Regex::new) {
                    Ok(re) => Some(PathMatcher::Regex(re)),
                    Err(e) => {
                        errors.push(ConfigError::new(
                            format!("{mp}.path.regex"),
                            regex_message(&e),
                        ));
                        None
                    }
                }
            } else {
                None
            };
        }
        if let Some(methods) = &m.method {
            for (k, method) in methods.iter().enumerate() {
                match Method::from_bytes(method.as_bytes()) {
                    Ok(m) => matcher.methods.push(m),
                    Err(_) => errors.push(ConfigError::new(
                        format!("{mp}.method[{k}]"),
                        format!("{method:?} is not an HTTP method"),
                    )),
                }
            }
        }
        for (name, sm) in &m.headers {
            let sp = format!("{mp}.headers.{name}");
            let header = HeaderName::from_bytes(name.as_bytes());
            if header.is_err() {
                errors.push(ConfigError::new(
                    sp.clone(),
                    format!("{name:?} is not a valid header name"),
                ));
            }
            if let (Ok(h), Some(vm)) = (header, ValueMatcher::build(sm, &sp, errors)) {
                matcher.headers.push((h, vm));
            }
        }
        for (name, sm) in &m.cookies {
            if let Some(vm) = ValueMatcher::build(sm, &format!("{mp}.cookies.{name}"), errors) {
                matcher.cookies.push((name.clone(), vm));
            }
        }
        (errors.len() == before).then_some(matcher)
    }

    /// True when the request meets every condition.
    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(p) = &self.path {
            let ok = match p {
                PathMatcher::Exact(s) => req.path == s,
                PathMatcher::Prefix(s) => req.path.starts_with(s.as_str()),
                PathMatcher::Regex(re) => re.is_match(req.path),
            };
            if !ok {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return false;
        }
        for (name, m) in &self.headers {
            let mut values = req
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes())
                .peekable();
            let found = values.peek().is_some();
            if !m.check(found, values) {
                return false;
            }
        }
        for (name, m) in &self.cookies {
            let value = cookie(req.headers, name);
            if !m.check(value.is_some(), value.into_iter()) {
                return false;
            }
        }
        true
    }

    /// True when the rule has no condition (it takes ordinary traffic).
    pub(crate) fn is_empty(&self) -> bool {
        self.path.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
            && self.cookies.is_empty()
    }
}

impl ValueMatcher {
    /// Builds one condition: at most one of exact, prefix, suffix, regex or present
    /// (none means present). Problems go to `errors` under `sp`.
    pub(crate) fn build(
        sm: &StringMatch,
        sp: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ValueMatcher> {
        let set = [
            sm.exact.is_some(),
            sm.prefix.is_some(),
            sm.suffix.is_some(),
            sm.regex.is_some(),
            sm.present.is_some(),
        ];
        if set.iter().filter(|b| **b).count() > 1 {
            errors.push(ConfigError::new(
                sp,
                "set at most one of exact, prefix, suffix, regex or present",
            ));
            return None;
        }
        let kind = if let Some(s) = &sm.exact {
            ValueKind::Exact(s.as_bytes().to_vec())
        } else if let Some(s) = &sm.prefix {
            ValueKind::Prefix(s.as_bytes().to_vec())
        } else if let Some(s) = &sm.suffix {
            ValueKind::Suffix(s.as_bytes().to_vec())
        } else if let Some(re) = &sm.regex {
            match compiled(&BYTES_REGEXES, re, regex::bytes::Regex::new) {
                Ok(re) => ValueKind::Regex(re),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{sp}.regex"), regex_message(&e)));
                    return None;
                }
            }
        } else {
            ValueKind::Present(sm.present.unwrap_or(true))
        };
        Some(ValueMatcher {
            kind,
            invert: sm.invert,
        })
    }

    fn check<'a>(&self, present: bool, mut values: impl Iterator<Item = &'a [u8]>) -> bool {
        let hit = match &self.kind {
            ValueKind::Present(want) => present == *want,
            ValueKind::Exact(s) => values.any(|v| v == s.as_slice()),
            ValueKind::Prefix(s) => values.any(|v| v.starts_with(s)),
            ValueKind::Suffix(s) => values.any(|v| v.ends_with(s)),
            ValueKind::Regex(re) => values.any(|v| re.is_match(v)),
        };
        hit != self.invert
    }
}

type Cache<R> = OnceLock<Mutex<HashMap<String, Arc<R>>>>;
static STR_REGEXES: Cache<regex::Regex> = OnceLock::new();
static BYTES_REGEXES: Cache<regex::bytes::Regex> = OnceLock::new();

/// A whole-value regex, compiled once per pattern: validating a config and building its
/// table (and every later rebuild, a weight step say) share one compiled copy.
fn compiled<R>(
    cache: &Cache<R>,
    pattern: &str,
    compile: impl FnOnce(&str) -> Result<R, regex::Error>,
) -> Result<Arc<R>, regex::Error> {
    let mut map = cache
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(re) = map.get(pattern) {
        return Ok(re.clone());
    }
    let re = Arc::new(compile(&format!("^(?:{pattern})$"))?);
    // A config holds few patterns; a bound keeps a long-lived process that churns
    // through generated patterns from growing without end.
    if map.len() >= 4096 {
        map.clear();
    }
    map.insert(pattern.to_string(), re.clone());
    Ok(re)
}

/// The short reason of a regex error, like `unclosed group`.
pub(crate) fn regex_message(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => s
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .unwrap_or(s)
            .to_string(),
        other => other.to_string(),
    }
}
