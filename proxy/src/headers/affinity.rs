//! Flagger's session affinity: while a canary takes a weighted share, a user it served
//! gets a cookie that keeps them on it; with `primaryCookieName`, primary answers set a
//! cookie too. A cookie from an earlier rollout (or once the canary is back at weight 0)
//! pins nobody and is expired.

use std::collections::HashMap;
use std::sync::Mutex;

use http::{HeaderMap, HeaderValue};

use super::cookie;
use crate::config::SessionAffinityConfig;

/// A service's affinity cookies, resolved for one route table.
pub(crate) struct Affinity {
    cookie_name: String,
    primary_cookie_name: Option<String>,
    token: String,
    /// The canary takes a share of the split right now.
    active: bool,
    set_canary: HeaderValue,
    set_primary: Option<HeaderValue>,
    attributes: String,
}

/// The version index of the canary: the second version.
pub(crate) const CANARY: usize = 1;

impl Affinity {
    /// The affinity of a service whose canary has `token`; `active` when the canary
    /// takes a weighted share.
    pub(crate) fn new(sa: &SessionAffinityConfig, token: String, active: bool) -> Option<Affinity> {
        let mut attributes = String::new();
        if let Some(d) = &sa.domain {
            attributes.push_str(&format!("; Domain={d}"));
        }
        if let Some(p) = &sa.path {
            attributes.push_str(&format!("; Path={p}"));
        }
        if sa.http_only {
            attributes.push_str("; HttpOnly");
        }
        if sa.secure {
            attributes.push_str("; Secure");
        }
        if let Some(s) = &sa.same_site {
            attributes.push_str(&format!("; SameSite={s}"));
        }
        let set_canary = HeaderValue::from_str(&format!(
            "{}={token}; Max-Age={}{attributes}",
            sa.cookie_name, sa.max_age
        ))
        .ok()?;
        let set_primary = sa.primary_cookie_name.as_ref().and_then(|p| {
            let age = sa.primary_max_age.max(1);
            HeaderValue::from_str(&format!("{p}={token}; Max-Age={age}{attributes}")).ok()
        });
        Some(Affinity {
            cookie_name: sa.cookie_name.clone(),
            primary_cookie_name: sa.primary_cookie_name.clone(),
            token,
            active,
            set_canary,
            set_primary,
            attributes,
        })
    }

    /// The version a request's cookie pins it to, while the canary takes a share.
    pub(crate) fn pinned(&self, headers: &HeaderMap) -> Option<usize> {
        if !self.active {
            return None;
        }
        let token = self.token.as_bytes();
        if cookie(headers, &self.cookie_name) == Some(token) {
            return Some(CANARY);
        }
        match &self.primary_cookie_name {
            Some(p) if cookie(headers, p) == Some(token) => Some(0),
            _ => None,
        }
    }

    /// The `Set-Cookie` for an answer from `version` chosen by weight.
    pub(crate) fn set_cookie(&self, version: usize, headers: &HeaderMap) -> Option<HeaderValue> {
        if !self.active {
            return self.expire_stale(headers);
        }
        if version == CANARY {
            Some(self.set_canary.clone())
        } else if version == 0 {
            self.set_primary
                .clone()
                .or_else(|| self.expire_stale(headers))
        } else {
            None
        }
    }

    /// A canary cookie that no longer pins anyone (the canary is at weight 0, or the cookie
    /// is from an earlier rollout) is expired with `Max-Age=-1`.
    pub(crate) fn expire_stale(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let value = cookie(headers, &self.cookie_name)?;
        if self.active && value == self.token.as_bytes() {
            return None;
        }
        let value = String::from_utf8_lossy(value);
        HeaderValue::from_str(&format!(
            "{}={value}; Max-Age=-1{}",
            self.cookie_name, self.attributes
        ))
        .ok()
    }
}

/// A service's affinity token and what it was issued for.
struct Issued {
    revision: Option<String>,
    token: String,
    active: bool,
}

/// Affinity tokens per service, kept across route tables: the token changes with each
/// rollout (a new canary revision, or the canary taking traffic again after weight 0).
#[derive(Default)]
pub(crate) struct Tokens {
    by_service: Mutex<HashMap<String, Issued>>,
}

impl Tokens {
    /// The token for a service whose canary runs `revision` and is `active` now.
    pub(crate) fn token(&self, service: &str, revision: &Option<String>, active: bool) -> String {
        let mut tokens = self.by_service.lock().unwrap_or_else(|p| p.into_inner());
        let token = match tokens.get(service) {
            Some(i) if i.revision == *revision && (i.active || !active) => i.token.clone(),
            _ => super::request_id().replace('-', ""),
        };
        tokens.insert(
            service.to_string(),
            Issued {
                revision: revision.clone(),
                token: token.clone(),
                active,
            },
        );
        token
    }

    /// Forgets services that are gone.
    pub(crate) fn retain(&self, live: impl Fn(&str) -> bool) {
        let mut tokens = self.by_service.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|s, _| live(s));
    }
}
