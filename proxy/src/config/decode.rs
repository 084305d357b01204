//! Decoding a document into typed config while reporting every error, each with the path
//! of the field it concerns (`services[0].port: invalid type ...`), not only the first.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

/// One problem in a config, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path, like `services[0].routes[1].split`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} error{} in config", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single error.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError::new(path, message)])
    }

    /// Each problem as a line.
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// Ok when there is no error.
    pub fn check(errors: Vec<ConfigError>) -> Result<(), ConfigErrors> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The errors on one line each, joined by `; `.
    pub fn joined(&self) -> String {
        self.0
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Parses YAML (or JSON) text into a document.
pub fn parse_document(text: &str) -> Result<serde_json::Value, ConfigErrors> {
    serde_yaml_ng::from_str(text).map_err(|e| ConfigErrors::one("", format!("not valid YAML: {e}")))
}

/// Decodes `value` as a `T`, adding every problem to `errors` with its path under `prefix`.
/// serde stops at the first error; to report them all, each bad field is recorded,
/// removed, and decoding retried, so later fields are still checked. Returns the value
/// when the rest decoded (errors may still have been recorded).
pub fn decode<T: DeserializeOwned>(
    mut value: serde_json::Value,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut removed: Option<(String, String)> = None;
    for _ in 0..100 {
        let e = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let message = e.inner().to_string();
        let path = render_path(&segments);
        if let Some((parent, key)) = &removed {
            // A required field removed in the previous round: already reported.
            if *parent == path && message.contains(&format!("missing field `{key}`")) {
                return None;
            }
        }
        let mut target = segments;
        if let Some(field) = unknown_field(&message) {
            if !matches!(target.last(), Some(Segment::Map { key }) if *key == field) {
                target.push(Segment::Map { key: field });
            }
        }
        errors.push(ConfigError::new(
            join(prefix, &render_path(&target)),
            clean_serde_message(&message),
        ));
        match remove_at(&mut value, &target) {
            Some(key) => removed = Some((render_path(&target[..target.len() - 1]), key)),
            None => return None,
        }
    }
    None
}

/// `prefix.field`, or either alone when the other is empty.
pub fn join(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (_, true) => prefix.to_string(),
        _ if field.starts_with('[') => format!("{prefix}{field}"),
        _ => format!("{prefix}.{field}"),
    }
}

fn render_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    out
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// serde's message in a user's words: a near field name for an unknown one, and the kind
/// of value wanted instead of a Rust type.
fn clean_serde_message(message: &str) -> String {
    if let Some(field) = unknown_field(message) {
        let expected = message
            .split_once(", expected ")
            .map(|(_, e)| e)
            .unwrap_or("");
        let names = expected
            .split(", ")
            .map(|n| n.trim_start_matches("one of ").trim_matches('`'));
        return match did_you_mean(&field, names) {
            Some(near) => format!("unknown field `{field}`; did you mean `{near}`?"),
            None => format!("unknown field `{field}` (expected {expected})"),
        };
    }
    let mut out = message.to_string();
    for (rust, words) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a block of keys"),
    ] {
        out = out.replace(rust, words);
    }
    out
}

/// The candidate nearest to `word` when it is close enough to be a slip of the keyboard
/// (at most a third of its letters differ): the "did you mean" of error messages.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case(&word))
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// Removes the node at `path`; returns the removed key, or None when it cannot.
fn remove_at(value: &mut serde_json::Value, path: &[Segment]) -> Option<String> {
    let (last, parents) = path.split_last()?;
    let mut node = value;
    for s in parents {
        node = match s {
            Segment::Seq { index } => node.get_mut(*index)?,
            Segment::Map { key } => node.get_mut(key.as_str())?,
            _ => return None,
        };
    }
    match last {
        Segment::Map { key } => node
            .as_object_mut()?
            .remove(key.as_str())
            .map(|_| key.clone()),
        _ => None,
    }
}
