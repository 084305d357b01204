//! TLS with rustls and its ring provider: the listeners' side (SNI, client certificates,
//! ALPN, resumption), the upstreams' side (verification, client certificates), and the
//! watch that re-reads every certificate file when it changes or on SIGHUP.

mod listener;
mod material;
mod pem;
pub(crate) mod settings;
mod upstream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use prometheus::IntCounterVec;
use rustls::crypto::CryptoProvider;

pub use listener::{dns_names_of_pem, ClientCerts, ServerTls};
pub use material::{Reload, TlsError};
pub(crate) use upstream::UpstreamTls;

/// How often certificate files are checked for changes.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The one crypto provider (ring), installed as the process default on first use so
/// every rustls user in the process (webhooks, gRPC) agrees on it.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let ring = Arc::new(rustls::crypto::ring::default_provider());
            // Already installed (by an earlier call in this process): keep that one.
            let _ = CryptoProvider::install_default((*ring).clone());
            CryptoProvider::get_default().cloned().unwrap_or(ring)
        })
        .clone()
}

/// Something whose files can be re-read.
trait Watched: Send + Sync {
    fn reload(&self, again: bool) -> Reload;
    fn name(&self) -> &str;
}

impl Watched for ServerTls {
    fn reload(&self, again: bool) -> Reload {
        ServerTls::reload(self, again)
    }
    fn name(&self) -> &str {
        ServerTls::name(self)
    }
}

impl Watched for UpstreamTls {
    fn reload(&self, again: bool) -> Reload {
        UpstreamTls::reload(self, again)
    }
    fn name(&self) -> &str {
        UpstreamTls::name(self)
    }
}

/// Every TLS material in use, re-read every [`WATCH_EVERY`] and on demand.
pub(crate) struct TlsWatch {
    items: Mutex<Vec<Weak<dyn Watched>>>,
    started: AtomicBool,
    /// `weir_tls_reloads_total{result}`.
    reloads: IntCounterVec,
}

impl TlsWatch {
    pub(crate) fn new(reloads: IntCounterVec) -> TlsWatch {
        TlsWatch {
            items: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
            reloads,
        }
    }

    pub(crate) fn add_server(&self, tls: &Arc<ServerTls>) {
        let weak: Weak<dyn Watched> = Arc::downgrade(tls) as Weak<dyn Watched>;
        self.lock().push(weak);
    }

    pub(crate) fn add_upstream(&self, tls: &Arc<UpstreamTls>) {
        let weak: Weak<dyn Watched> = Arc::downgrade(tls) as Weak<dyn Watched>;
        self.lock().push(weak);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn Watched>>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads every file; `again` reports failures already reported (SIGHUP).
    pub(crate) fn reload_all(&self, again: bool) {
        let live: Vec<Arc<dyn Watched>> = {
            let mut items = self.lock();
            items.retain(|w| w.strong_count() > 0);
            items.iter().filter_map(Weak::upgrade).collect()
        };
        for item in live {
            match item.reload(again) {
                Reload::Unchanged => {}
                Reload::Reloaded => {
                    self.reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(tls = item.name(), "certificates reloaded");
                }
                Reload::Failed(why) => {
                    self.reloads.with_label_values(&["error"]).inc();
                    tracing::error!(tls = item.name(), error = %why, "new certificate files rejected; the previous ones keep serving");
                }
            }
        }
    }

    /// Starts the periodic check (once per process part that serves).
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return;
        };
        let watch = Arc::downgrade(self);
        rt.spawn(async move {
            let mut every = tokio::time::interval(WATCH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(watch) = watch.upgrade() else { return };
                // File reads and certificate parsing are blocking work.
                let _ = tokio::task::spawn_blocking(move || watch.reload_all(false)).await;
            }
        });
    }
}
