//! A version's endpoints when some are hostnames: a hostname stands for every address it
//! resolves to, asked again when the answer's TTL runs out, and requests are balanced over
//! the current set, swapped whole when an answer changes it. A new address gets fresh
//! connections; a removed one drains (requests on it finish, and its idle connections
//! close when the last of them lets go). Until a name's first answer is in use (or while
//! it never comes) the name is resolved on each connect by the same resolver; when the
//! resolver fails, the last good answer stays in use.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::Endpoint;
use crate::dns::{Dns, MIN_TTL};

/// Builds the endpoint of one resolved address of a configured name.
pub(super) type Make = Box<dyn Fn(&str, SocketAddr) -> Result<Endpoint, String> + Send + Sync>;

/// The endpoints of a version with hostnames among them.
pub(super) struct Resolved {
    /// Per configured endpoint, in order: what it stands for now.
    entries: Mutex<Vec<Vec<Arc<Endpoint>>>>,
    /// Every entry's endpoints in order: what requests are balanced over.
    pub(super) live: ArcSwap<Vec<Arc<Endpoint>>>,
    make: Make,
}

impl Resolved {
    /// The set before any answer: each configured endpoint as written.
    pub(super) fn new(written: Vec<Endpoint>, make: Make) -> Arc<Resolved> {
        let entries: Vec<Vec<Arc<Endpoint>>> =
            written.into_iter().map(|e| vec![Arc::new(e)]).collect();
        let live = entries.iter().flatten().cloned().collect();
        Arc::new(Resolved {
            entries: Mutex::new(entries),
            live: ArcSwap::from_pointee(live),
            make,
        })
    }

    /// Puts an answer for entry `i` (`name`, at `port`) in use; addresses it had keep
    /// their endpoints (and connections).
    fn install(&self, i: usize, name: &str, port: u16, answer: &[std::net::IpAddr]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(old) = entries.get(i) else { return };
        let wanted: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        let had: Vec<SocketAddr> = old.iter().filter_map(|e| e.dialled).collect();
        if had == wanted {
            return;
        }
        let mut next = Vec::with_capacity(wanted.len());
        for addr in &wanted {
            match old.iter().find(|e| e.dialled == Some(*addr)) {
                Some(kept) => next.push(kept.clone()),
                None => match (self.make)(name, *addr) {
                    Ok(e) => next.push(Arc::new(e)),
                    Err(why) => {
                        tracing::warn!(endpoint = name, address = %addr, error = %why, "cannot use a resolved address")
                    }
                },
            }
        }
        if next.is_empty() {
            return;
        }
        let added: Vec<String> = wanted
            .iter()
            .filter(|a| !had.contains(a))
            .map(ToString::to_string)
            .collect();
        let removed: Vec<String> = had
            .iter()
            .filter(|a| !wanted.contains(a))
            .map(ToString::to_string)
            .collect();
        tracing::info!(endpoint = name, added = %added.join(","), removed = %removed.join(","), "endpoint addresses changed");
        entries[i] = next;
        self.live
            .store(Arc::new(entries.iter().flatten().cloned().collect()));
    }
}

/// Resolves entry `i` (`name` = `host:port`) on `rt` now and again at each answer's TTL,
/// for as long as the set lives.
pub(super) fn follow(
    rt: &tokio::runtime::Handle,
    set: &Arc<Resolved>,
    i: usize,
    name: String,
    dns: Arc<Dns>,
) {
    let Ok((host, port)) = crate::config::endpoint(&name).map(|(h, p)| (h.to_string(), p)) else {
        return;
    };
    let set = Arc::downgrade(set);
    rt.spawn(async move {
        let mut failing = false;
        loop {
            let answer = dns.lookup(&host).await;
            let Some(live) = set.upgrade() else { return };
            let wait = match answer {
                Ok(a) => {
                    if failing {
                        tracing::info!(endpoint = %name, "the name resolves again");
                    }
                    failing = false;
                    live.install(i, &name, port, &a.addresses);
                    a.ttl
                }
                Err(why) => {
                    if !failing {
                        tracing::warn!(endpoint = %name, error = %why, "cannot resolve the endpoint; its last addresses stay in use");
                    }
                    failing = true;
                    MIN_TTL
                }
            };
            drop(live);
            tokio::time::sleep(wait).await;
        }
    });
}
