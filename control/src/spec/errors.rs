//! What every part of validation shares: the error collector and the field checks that
//! more than one part makes. A leaf: it knows nothing of the spec's other modules.

use std::time::Duration;

use weir_proxy::config::{join, ConfigError, Dur};

/// Collects errors under one block's path.
pub(super) struct Errors<'a> {
    path: &'a str,
    list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    /// No errors yet, under `path`.
    pub(super) fn new(path: &'a str) -> Self {
        Errors {
            path,
            list: Vec::new(),
        }
    }

    /// The block's path.
    pub(super) fn path(&self) -> &'a str {
        self.path
    }

    /// Every error collected, if any.
    pub(super) fn finish(self) -> Result<(), Vec<ConfigError>> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(self.list)
        }
    }
}

impl Errors<'_> {
    pub(super) fn add(&mut self, field: &str, message: impl Into<String>) {
        self.list
            .push(ConfigError::new(join(self.path, field), message));
    }

    /// Errors already named by their full path.
    pub(super) fn extend(&mut self, errors: impl IntoIterator<Item = ConfigError>) {
        self.list.extend(errors);
    }

    /// An optional duration field: `default` when absent or empty, and when it does not
    /// parse (after reporting the error).
    pub(super) fn duration(&mut self, v: Option<&str>, default: Duration, field: &str) -> Duration {
        match v {
            None | Some("") => default,
            Some(s) => Dur::parse(s).map(|d| d.0).unwrap_or_else(|e| {
                self.add(field, e);
                default
            }),
        }
    }

    /// A percentage between `lo` and 100.
    pub(super) fn percent(&mut self, field: &str, v: i64, lo: i64) -> u32 {
        if v < lo || v > 100 {
            self.add(field, format!("{v} is not between {lo} and 100"));
        }
        v.clamp(0, 100) as u32
    }
}

/// An http(s) URL.
pub(super) fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.parse::<http::Uri>().is_ok()
}
