//! Re-reading weir.yaml: on SIGHUP, and by itself when the file's content changes. The
//! file is read through its symlinks every [`POLL_EVERY`], so a ConfigMap's `..data`
//! swap, an editor's rename-over and a write in place are all seen; a change is applied
//! once the same content has been read twice in a row, so a burst of writes makes one
//! reload of where it settled. An invalid file changes nothing and is logged with every
//! error and counted, as for SIGHUP.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Duration;

use tokio::signal::unix::Signal;
use weir_proxy::Proxy;

use crate::config::WeirConfig;
use crate::controller::Controller;

/// How often the file is read for a change.
pub(super) const POLL_EVERY: Duration = Duration::from_millis(500);

/// What a reload re-reads besides every certificate.
pub(super) enum OnHup {
    /// The whole file, through the controller.
    Controller(Controller),
    /// The file's services, for the data plane alone.
    Services,
    /// Nothing more: a replica's file holds no routing (a change is checked and said to
    /// take effect on restart).
    CertificatesOnly,
}

/// The content of the file as last read, and as last applied.
struct Seen {
    /// What the last reload (applied or rejected) read.
    read: Option<u64>,
    /// What the running config came from.
    applied: Option<u64>,
    /// A change read once, waiting to be read again before it is applied.
    pending: Option<u64>,
    /// The file could not be read at the last look (said once).
    missing: bool,
}

/// A fingerprint of the file's content.
async fn fingerprint(path: &Path) -> std::io::Result<u64> {
    Ok(hash(&tokio::fs::read(path).await?))
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The file's content as it was just before the running config was loaded from it: a
/// change made while weir starts is then still a change (at worst the same content is
/// applied once more).
pub(super) struct Loaded(Option<u64>);

impl Loaded {
    pub(super) fn now(path: &Path) -> Loaded {
        Loaded(std::fs::read(path).ok().map(|b| hash(&b)))
    }
}

/// Reloads on each SIGHUP (unless the file is what already runs) and on each settled
/// change of the file's content; certificates are re-read on SIGHUP too.
pub(super) fn reload_on_change(
    mut hup: Signal,
    proxy: Proxy,
    what: OnHup,
    path: &Path,
    loaded: Loaded,
) {
    let file = path.to_path_buf();
    let first = loaded.0;
    tokio::spawn(async move {
        let mut seen = Seen {
            read: first,
            applied: first,
            pending: None,
            missing: false,
        };
        let mut every = tokio::time::interval(POLL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                signal = hup.recv() => {
                    if signal.is_none() {
                        return;
                    }
                    let now = fingerprint(&file).await.ok();
                    if now.is_some() && now == seen.applied {
                        tracing::info!(path = %file.display(), "SIGHUP: the file is what already runs; certificates re-read");
                    } else {
                        reload(&what, &proxy, &file, now, &mut seen).await;
                    }
                    let p = proxy.clone();
                    let _ = tokio::task::spawn_blocking(move || p.reload_tls()).await;
                }
                _ = every.tick() => {
                    if let Some(now) = settled(&file, &mut seen).await {
                        reload(&what, &proxy, &file, Some(now), &mut seen).await;
                    }
                }
            }
        }
    });
}

/// The file's new content once it has held still for one look.
async fn settled(file: &Path, seen: &mut Seen) -> Option<u64> {
    let now = match fingerprint(file).await {
        Ok(now) => now,
        Err(e) => {
            if !seen.missing {
                tracing::warn!(path = %file.display(), error = %e, "cannot read the config file; the running config stays");
            }
            seen.missing = true;
            return None;
        }
    };
    seen.missing = false;
    if Some(now) == seen.read {
        seen.pending = None;
        return None;
    }
    if seen.pending == Some(now) {
        return Some(now);
    }
    seen.pending = Some(now);
    None
}

async fn reload(what: &OnHup, proxy: &Proxy, file: &Path, now: Option<u64>, seen: &mut Seen) {
    seen.read = now;
    seen.pending = None;
    let result = match what {
        OnHup::Controller(ctl) => ctl.reload(file).await,
        OnHup::Services => reload_proxy(proxy, file),
        OnHup::CertificatesOnly => {
            check_replica_file(proxy, file);
            return;
        }
    };
    if result.is_ok() {
        seen.applied = now;
    }
}

/// A replica's file changed: its listeners and controller apply on restart.
fn check_replica_file(proxy: &Proxy, file: &Path) {
    match crate::replica::ReplicaConfig::load(file) {
        Ok(_) => {
            tracing::warn!(path = %file.display(), "the replica's file changed: its listeners and controller take effect on restart")
        }
        Err(e) => proxy.record_reload(file, &Err(e.lines())),
    }
}

/// Re-reads the file for the data plane alone (`weir proxy`, or no control API).
fn reload_proxy(proxy: &Proxy, path: &Path) -> Result<(), Vec<String>> {
    let result = match WeirConfig::load(path) {
        Ok(cfg) => {
            if listeners_changed(&proxy.listeners(), &cfg.proxy) {
                tracing::warn!(
                    "listener, TLS block, admin, metrics, limits and resolver changes take effect on restart"
                );
            }
            proxy.apply(cfg.proxy).map_err(|e| e.lines())
        }
        Err(e) => Err(e.lines()),
    };
    proxy.record_reload(path, &result);
    result
}

/// True when a reload changes what only a restart applies.
pub(crate) fn listeners_changed(
    old: &weir_proxy::ProxyConfig,
    new: &weir_proxy::ProxyConfig,
) -> bool {
    old.listen != new.listen
        || old.tls != new.tls
        || old.listeners != new.listeners
        || old.admin != new.admin
        || old.metrics != new.metrics
        || old.limits != new.limits
        || old.resolver != new.resolver
}
