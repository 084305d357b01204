//! Bearer tokens from `control.tokenFile`: one a line as `name token`, `name token read`
//! (read-only), `name token replica` (a proxy replica: only the fleet stream) or a bare
//! `token`; `#` starts a comment. The file is re-read when it
//! changes (checked at most once a second); a file that turns invalid keeps the tokens
//! that were in force and says why. Tokens are compared in constant time and never
//! printed.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Write,
    /// Status, list, watch.
    Read,
    /// A proxy replica: the fleet stream only (its routing and its measurements).
    Replica,
}

/// What is wrong with a token file's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not UTF-8 text")]
    NotText,
    #[error("line {0}: expected `name token`, `name token read`, `name token replica` or `token`")]
    Shape(usize),
    #[error("line {line}: the token of {name} is shorter than {MIN_TOKEN_LEN} characters")]
    Short { line: usize, name: String },
    #[error("line {line}: {name} is named twice")]
    Twice { line: usize, name: String },
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: LineError },
}

/// One token: who it names, its secret and what it may do.
pub struct Token {
    pub name: String,
    secret: Vec<u8>,
    pub role: Role,
}

struct Loaded {
    checked: Instant,
    contents: Vec<u8>,
    tokens: Vec<Token>,
}

/// The tokens of a file, kept current.
pub struct Tokens {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn parse(text: &str) -> Result<Vec<Token>, LineError> {
    let mut tokens: Vec<Token> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, secret, role) = match fields.as_slice() {
            [secret] => (format!("token-line-{n}"), *secret, Role::Write),
            [name, secret] => (name.to_string(), *secret, Role::Write),
            [name, secret, "read"] => (name.to_string(), *secret, Role::Read),
            [name, secret, "replica"] => (name.to_string(), *secret, Role::Replica),
            [name, secret, "write"] => (name.to_string(), *secret, Role::Write),
            _ => return Err(LineError::Shape(n)),
        };
        if secret.len() < MIN_TOKEN_LEN {
            return Err(LineError::Short { line: n, name });
        }
        if tokens.iter().any(|t| t.name == name) {
            return Err(LineError::Twice { line: n, name });
        }
        tokens.push(Token {
            name,
            secret: secret.as_bytes().to_vec(),
            role,
        });
    }
    Ok(tokens)
}

/// The tokens of a token file's contents.
fn decode(bytes: &[u8]) -> Result<Vec<Token>, LineError> {
    let text = std::str::from_utf8(bytes).map_err(|_| LineError::NotText)?;
    parse(text)
}

/// A token file's contents and its tokens.
fn load(path: &str) -> Result<(Vec<u8>, Vec<Token>), TokenFileError> {
    let contents = std::fs::read(path).map_err(|source| TokenFileError::Read {
        path: path.to_string(),
        source,
    })?;
    let tokens = decode(&contents).map_err(|problem| TokenFileError::Invalid {
        path: path.to_string(),
        problem,
    })?;
    Ok((contents, tokens))
}

impl Tokens {
    /// Reads and checks a token file.
    pub fn read(path: &str) -> Result<Vec<Token>, TokenFileError> {
        load(path).map(|(_, tokens)| tokens)
    }

    /// Opens a token file for use.
    pub fn open(path: &str) -> Result<Tokens, TokenFileError> {
        let (contents, tokens) = load(path)?;
        if tokens.is_empty() {
            tracing::warn!(
                path,
                "the control token file has no tokens: no caller can use a token"
            );
        }
        Ok(Tokens {
            path: PathBuf::from(path),
            loaded: Mutex::new(Loaded {
                checked: Instant::now(),
                contents,
                tokens,
            }),
        })
    }

    /// The token presented, if it is one: its name and what it may do.
    pub fn find(&self, presented: &[u8]) -> Option<(String, Role)> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= Duration::from_secs(1) {
            self.refresh(&mut loaded);
        }
        // Every token is compared, so the time taken says nothing about which matched.
        let mut found = None;
        for t in &loaded.tokens {
            if bool::from(t.secret.as_slice().ct_eq(presented)) {
                found = Some((t.name.clone(), t.role));
            }
        }
        found
    }

    fn refresh(&self, loaded: &mut Loaded) {
        loaded.checked = Instant::now();
        let shown = self.path.display().to_string();
        let contents = match std::fs::read(&self.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(path = %shown, error = %e, "cannot re-read the control token file; keeping the tokens in force");
                return;
            }
        };
        if contents == loaded.contents {
            return;
        }
        let parsed = decode(&contents);
        loaded.contents = contents;
        match parsed {
            Ok(tokens) => {
                tracing::info!(path = %shown, tokens = tokens.len(), "control tokens reloaded");
                loaded.tokens = tokens;
            }
            Err(e) => {
                tracing::error!(path = %shown, error = %e, "control token file rejected; keeping the tokens in force")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_tokens_and_bad_lines_say_where() {
        let t = parse("# ci\nci-pipeline 0123456789abcdef0123\nviewer fedcba9876543210fedc read\nabcdefabcdefabcdefab\n")
            .expect("valid");
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].name, "ci-pipeline");
        assert_eq!(t[1].role, Role::Read);
        let r = parse("gateway 0123456789abcdef0123 replica").expect("valid");
        assert_eq!(r[0].role, Role::Replica);
        assert_eq!(t[2].name, "token-line-4");
        let e = parse("ci short")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line 1") && e.contains("shorter"), "{e}");
        assert!(!e.contains("short "), "the token must not be printed: {e}");
        let e = parse("a 0123456789abcdef0123 admin")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line 1"), "{e}");
    }
}
