//! Rollout state on disk, written atomically (temporary file, fsync, rename) on every
//! transition, so `kill -9` and a restart resume where weir stopped. The previous good
//! file is kept as `<state>.bak`; a corrupt file is set aside as
//! `<state>.corrupt-<unix seconds>` and the copy used instead, so a bad file never keeps
//! weir from serving.

use std::io::Write;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use weir_proxy::config::VersionConfig;

use crate::machine::Status;

/// Why the state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not a weir state file: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// Everything weir needs to resume its rollouts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// The last routing version published: the next run publishes above it.
    #[serde(default)]
    pub routing_version: u64,
    pub services: IndexMap<String, Saved>,
    /// Services without an analysis whose split an operator set.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub statics: IndexMap<String, SavedStatic>,
}

/// A split an operator set on a service without an analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedStatic {
    /// Each version's weight.
    pub weights: IndexMap<String, u32>,
    /// The service's routes and version names as weir.yaml had them then: a file that
    /// edited them since wins over the operator's split.
    pub file_routes: Vec<weir_proxy::config::RouteConfig>,
    pub file_versions: Vec<String>,
}

/// One service's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Saved {
    pub status: Status,
    /// The primary's effective version (it changes on promotion).
    pub primary: VersionConfig,
    /// The canary's effective version (StartRollout brings or changes it).
    #[serde(default)]
    pub canary: Option<VersionConfig>,
    /// The primary and canary as weir.yaml last said, to tell a file edit apart.
    pub file_primary: VersionConfig,
    #[serde(default)]
    pub file_canary: Option<VersionConfig>,
    /// An analysis set over the control API, replacing the file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

/// What starting from the state file found.
#[derive(Debug)]
pub enum Recovery {
    /// The file was good (or absent: an empty state).
    Intact(State),
    /// The file was corrupt: set aside as `corrupt`, the state came from the `.bak` copy.
    FromBackup {
        state: State,
        corrupt: PathBuf,
        reason: String,
    },
    /// The file was corrupt (set aside as `corrupt`) and there was no usable copy: the
    /// rollout state is lost.
    Lost { corrupt: PathBuf, reason: String },
}

/// `<state><suffix>`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The last good copy, kept by [`save`].
pub fn backup_path(path: &Path) -> PathBuf {
    beside(path, ".bak")
}

/// Reads the state file; a corrupt one is set aside and the last good copy used.
pub fn recover(path: &Path) -> Result<Recovery, StoreError> {
    let reason = match load(path) {
        Ok(state) => return Ok(Recovery::Intact(state)),
        Err(StoreError::Corrupt { reason, .. }) => reason,
        Err(e) => return Err(e),
    };
    let stamp = crate::clock::now_ms() / 1000;
    let corrupt = beside(path, &format!(".corrupt-{stamp}"));
    std::fs::rename(path, &corrupt).map_err(|e| StoreError::Unreadable {
        path: path.display().to_string(),
        reason: format!("corrupt ({reason}) and cannot be set aside: {e}"),
    })?;
    let backup = backup_path(path);
    match load(&backup) {
        Ok(state) if backup.exists() => Ok(Recovery::FromBackup {
            state,
            corrupt,
            reason,
        }),
        _ => Ok(Recovery::Lost { corrupt, reason }),
    }
}

/// Reads the state file; a missing file is an empty state.
pub fn load(path: &Path) -> Result<State, StoreError> {
    let shown = || path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: shown(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(StoreError::Unreadable {
            path: shown(),
            reason: e.to_string(),
        }),
    }
}

/// Writes the state atomically: readers see the old file or the new one, never a part.
/// The file being replaced becomes `<state>.bak` (by a hard link, so the state file
/// itself is never missing).
pub fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let tmp = beside(path, ".tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    if path.exists() {
        let link = beside(path, ".bak.tmp");
        let _ = std::fs::remove_file(&link);
        if std::fs::hard_link(path, &link).is_ok() {
            std::fs::rename(&link, backup_path(path))?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Phase;

    #[test]
    fn state_round_trips_through_an_atomic_write() {
        let dir = std::env::temp_dir().join(format!("weir-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("state.json");
        assert!(load(&path).expect("missing is empty").services.is_empty());
        let v: VersionConfig =
            serde_json::from_value(serde_json::json!({"endpoints": ["127.0.0.1:1"]}))
                .expect("version");
        let mut state = State::default();
        let status = Status {
            phase: Phase::Progressing,
            canary_weight: 15,
            ..Status::default()
        };
        state.services.insert(
            "podinfo".into(),
            Saved {
                status,
                primary: v.clone(),
                canary: Some(v.clone()),
                file_primary: v.clone(),
                file_canary: Some(v),
                spec: None,
            },
        );
        save(&path, &state).expect("save");
        let back = load(&path).expect("load");
        assert_eq!(back.services["podinfo"].status.canary_weight, 15);
        assert!(!dir.join("state.json.tmp").exists());
        // A second save keeps the first as the backup.
        state.services["podinfo"].status.canary_weight = 30;
        save(&path, &state).expect("save again");
        assert_eq!(
            load(&backup_path(&path)).expect("backup").services["podinfo"]
                .status
                .canary_weight,
            15
        );
        std::fs::write(&path, b"{nope").expect("write");
        assert!(load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("not a weir state file"));
        match recover(&path).expect("recover") {
            Recovery::FromBackup { state, corrupt, .. } => {
                assert_eq!(state.services["podinfo"].status.canary_weight, 15);
                assert_eq!(std::fs::read(&corrupt).expect("set aside"), b"{nope");
            }
            other => panic!("expected the backup, got {other:?}"),
        }
        std::fs::write(&path, b"{nope").expect("write");
        std::fs::write(backup_path(&path), b"also bad").expect("write");
        assert!(matches!(recover(&path), Ok(Recovery::Lost { .. })));
        assert!(!path.exists(), "the corrupt file is set aside");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
