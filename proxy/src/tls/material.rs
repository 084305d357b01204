//! TLS files read together and built into a rustls config, re-read when asked: a change
//! is built and swapped in whole, a bad change keeps what was serving and says why.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// A problem with TLS material: the config field it concerns (relative, like
/// `certificates[0].key`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub field: String,
    pub message: String,
}

impl TlsError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        TlsError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// One file of the material: the field naming it and its path.
#[derive(Debug, Clone)]
pub(crate) struct File {
    pub field: String,
    pub path: PathBuf,
}

impl File {
    pub(crate) fn new(field: impl Into<String>, path: &str) -> File {
        File {
            field: field.into(),
            path: PathBuf::from(path),
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// New files were built and now serve.
    Reloaded,
    /// The new files are unusable; the previous material keeps serving.
    Failed(String),
}

type Build<T> = dyn Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync;

struct Built<T> {
    contents: Vec<Vec<u8>>,
    value: Arc<T>,
}

/// Files and the config built from them.
pub(crate) struct Material<T> {
    /// Who uses it, for the log (`listener 0.0.0.0:8443`).
    pub name: String,
    files: Vec<File>,
    build: Box<Build<T>>,
    current: ArcSwap<Built<T>>,
    /// The last failure (files and why), so polling reports a bad file once.
    failed: Mutex<Option<(Vec<Vec<u8>>, String)>>,
}

fn read(files: &[File]) -> Result<Vec<Vec<u8>>, TlsError> {
    files
        .iter()
        .map(|f| {
            std::fs::read(&f.path).map_err(|e| {
                TlsError::new(&f.field, format!("cannot read {}: {e}", f.path.display()))
            })
        })
        .collect()
}

impl<T> Material<T> {
    /// Reads the files and builds them; the first problem is the error.
    pub(crate) fn load(
        name: String,
        files: Vec<File>,
        build: impl Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Material<T>, TlsError> {
        let contents = read(&files)?;
        let value = Arc::new(build(&contents)?);
        Ok(Material {
            name,
            files,
            build: Box::new(build),
            current: ArcSwap::from_pointee(Built { contents, value }),
            failed: Mutex::new(None),
        })
    }

    /// The config serving now.
    pub(crate) fn get(&self) -> Arc<T> {
        self.current.load().value.clone()
    }

    /// Re-reads the files; changed ones are built and swapped in. A failure already
    /// reported is reported again only when `again` (an operator asked for the reload).
    pub(crate) fn reload(&self, again: bool) -> Reload {
        let (contents, result) = match read(&self.files) {
            Ok(contents) if contents == self.current.load().contents => {
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Reload::Unchanged;
            }
            Ok(contents) => {
                let result = (self.build)(&contents).map_err(|e| e.to_string());
                (contents, result)
            }
            Err(e) => (Vec::new(), Err(e.to_string())),
        };
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(value) => {
                *failed = None;
                self.current.store(Arc::new(Built {
                    contents,
                    value: Arc::new(value),
                }));
                Reload::Reloaded
            }
            Err(why) => {
                let known = failed
                    .as_ref()
                    .is_some_and(|(c, w)| *c == contents && *w == why);
                *failed = Some((contents, why.clone()));
                if known && !again {
                    Reload::Unchanged
                } else {
                    Reload::Failed(why)
                }
            }
        }
    }
}
