//! `weir run` and `weir check`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_proxy::Proxy;

use super::reload::{reload_on_change, Loaded, OnHup};

use crate::auth::Authorizer;
use crate::config::WeirConfig;
use crate::controller::Controller;

/// `weir check -c FILE`: prints every error with its field path; exit code 1 when invalid.
/// A file with `controller:` is checked as a replica's.
pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    if crate::replica::is_replica_file(path) {
        return Ok(match crate::replica::ReplicaConfig::load(path) {
            Ok(_) => {
                println!(
                    "{}: ok (a replica: routing from its controller)",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: {errors}", path.display());
                ExitCode::FAILURE
            }
        });
    }
    match WeirConfig::load(path) {
        Ok(cfg) => {
            let services = &cfg.proxy.services;
            let versions: usize = services.iter().map(|s| s.versions.len()).sum();
            println!(
                "{}: ok ({} services, {} versions)",
                path.display(),
                services.len(),
                versions
            );
            for note in cfg.notes() {
                println!("note: {note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A loaded config, or None after printing every error in it with the file's name.
pub(super) fn reported<T>(path: &Path, loaded: Result<T, weir_proxy::ConfigErrors>) -> Option<T> {
    match loaded {
        Ok(cfg) => Some(cfg),
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            None
        }
    }
}

/// Binds a listener, naming the config key in the error.
pub(super) async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Resolves when `stop` turns true.
pub(super) async fn until(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The control API's listener, TLS and gatekeeper, ready to serve.
pub(super) struct ControlApi {
    listener: TcpListener,
    tls: Option<std::sync::Arc<weir_proxy::tls::ServerTls>>,
    auth: std::sync::Arc<Authorizer>,
}

impl ControlApi {
    pub(super) async fn bind(cfg: &WeirConfig, proxy: &Proxy) -> anyhow::Result<ControlApi> {
        let access = &cfg.control;
        let auth = Authorizer::new(access, proxy.families().registry())
            .map_err(|e| anyhow::anyhow!("control.tokenFile: {e}"))?;
        let tls = match &access.tls {
            Some(t) => {
                let tls = t.load().map_err(|e| anyhow::anyhow!("{e}"))?;
                proxy.watch_tls(&tls);
                Some(tls)
            }
            None => None,
        };
        if access.insecure && !auth.required() {
            tracing::warn!(address = %access.address, "control.insecure: anyone who reaches the control API can change traffic");
        }
        if access.token_file.is_some() && tls.is_none() {
            tracing::warn!(address = %access.address, "control tokens travel in clear text: add control.tls");
        }
        let what = if cfg.control_set {
            "control"
        } else {
            "control: the default address, since a service has an analysis; set control: to choose another"
        };
        Ok(ControlApi {
            listener: bind(&access.address, what).await?,
            tls,
            auth: std::sync::Arc::new(auth),
        })
    }

    /// Prints the address and serves the control API (and the fleet stream) until
    /// `stopped`.
    pub(super) fn serve_in(
        self,
        ctl: Controller,
        tasks: &mut JoinSet<()>,
        stopped: &watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        println!(
            "weir: control listening on {} ({scheme})",
            self.listener.local_addr()?
        );
        let stopped = stopped.clone();
        tasks.spawn(async move {
            let served = crate::api::serve(ctl, self.auth, self.tls, self.listener, until(stopped));
            if let Err(e) = served.await {
                tracing::error!(error = %e, "control API stopped");
            }
        });
        Ok(())
    }
}

/// Watches SIGTERM and SIGINT from now on; the future resolves at the first.
pub(super) fn terminated() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

/// Says where rollout state goes, or that it goes nowhere, and what the file leaves to
/// defaults.
pub(super) fn announce_state(cfg: &WeirConfig) {
    if let (Some(state), true) = (&cfg.state, cfg.serves_control()) {
        println!("weir: rollout state in {}", state.display());
    }
    for note in cfg.notes() {
        tracing::warn!("{note}");
    }
}

/// Prints the proxy listeners' addresses (tests and scripts read these lines to learn the
/// ports when the config says :0).
pub(super) fn announce(listeners: &[weir_proxy::Listener]) -> anyhow::Result<()> {
    for l in listeners {
        let scheme = if l.is_tls() { "https" } else { "http" };
        println!("weir: proxy listening on {} ({scheme})", l.local_addr()?);
    }
    Ok(())
}

/// The admin listener and the optional metrics listener.
pub(super) struct AdminListeners {
    admin: TcpListener,
    metrics: Option<TcpListener>,
}

impl AdminListeners {
    pub(super) async fn bind(cfg: &weir_proxy::ProxyConfig) -> anyhow::Result<AdminListeners> {
        Ok(AdminListeners {
            admin: bind(&cfg.admin, "admin").await?,
            metrics: match &cfg.metrics {
                Some(addr) => Some(bind(addr, "metrics").await?),
                None => None,
            },
        })
    }

    /// Prints the addresses (admin last: scripts that wait for it know them all) and
    /// serves both until `stopped`.
    /// A controller's admin listener also serves its dashboard (`/ui`).
    pub(super) fn serve_in(
        self,
        proxy: &Proxy,
        ctl: Option<&Controller>,
        tasks: &mut JoinSet<()>,
        stopped: &watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if let Some(m) = self.metrics {
            println!("weir: metrics listening on {}", m.local_addr()?);
            let (p, stopped) = (proxy.clone(), stopped.clone());
            tasks.spawn(async move { p.serve_metrics(m, until(stopped)).await });
        }
        println!("weir: admin listening on {}", self.admin.local_addr()?);
        let (p, stopped, admin) = (proxy.clone(), stopped.clone(), self.admin);
        let pages = ctl.map(|c| dashboard_pages(c, proxy));
        tasks.spawn(async move { p.serve_admin_with(admin, pages, until(stopped)).await });
        Ok(())
    }
}

/// The dashboard of `ctl`, as pages for the admin listener.
pub(super) fn dashboard_pages(ctl: &Controller, proxy: &Proxy) -> Arc<dyn weir_proxy::AdminPages> {
    Arc::new(crate::dashboard::Pages(crate::dashboard::Dashboard::start(
        ctl.clone(),
        proxy.clone(),
    )))
}

/// Warns about what `weir proxy -c weir.yaml` (the data plane alone) does not act on.
fn ignored_by_data_plane(cfg: &WeirConfig) {
    if cfg.control_set {
        tracing::warn!("control: ignored by `weir proxy` (the data plane alone serves no control API); use `weir run` for the proxy and its control API");
    }
    if !cfg.analyses.is_empty() {
        let names: Vec<&str> = cfg.analyses.keys().map(String::as_str).collect();
        tracing::warn!(services = %names.join(", "), "analysis: ignored by `weir proxy`: no controller runs here, so no rollout will start; use `weir run` or `weir control`");
    }
    if cfg.state.is_some() {
        tracing::warn!("state: ignored by `weir proxy`: only a controller keeps rollout state");
    }
}

/// `weir run -c FILE` (and `weir proxy`, with `controller: false`): serves until SIGTERM
/// or SIGINT, then drains; SIGHUP or a change of the file reloads it.
pub async fn run(path: &Path, controller: bool) -> anyhow::Result<ExitCode> {
    let loaded = Loaded::now(path);
    let Some(cfg) = reported(path, WeirConfig::load(path)) else {
        return Ok(ExitCode::FAILURE);
    };
    let proxy = Proxy::new(cfg.proxy.clone())?;
    let data_plane_only = !controller;
    if data_plane_only {
        ignored_by_data_plane(&cfg);
    }
    let controller = match controller && cfg.serves_control() {
        true => Some((
            Controller::start(proxy.clone(), &cfg)?,
            ControlApi::bind(&cfg, &proxy).await?,
        )),
        false => None,
    };
    let listeners = proxy.bind().await?;
    let admin = AdminListeners::bind(&cfg.proxy).await?;
    match data_plane_only {
        false => announce_state(&cfg),
        true => cfg.proxy.notes().iter().for_each(|n| tracing::warn!("{n}")),
    }
    // Signal handlers first: a SIGHUP sent as soon as the addresses are printed must
    // reload, not kill the process.
    let hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let stopping = terminated()?;
    announce(&listeners)?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let ctl = match controller {
        Some((ctl, control)) => {
            control.serve_in(ctl.clone(), &mut tasks, &stopped)?;
            Some(ctl)
        }
        None => None,
    };
    admin.serve_in(&proxy, ctl.as_ref(), &mut tasks, &stopped)?;
    tracing::info!(services = cfg.proxy.services.len(), "weir started");
    let what = ctl.map_or(OnHup::Services, OnHup::Controller);
    reload_on_change(hup, proxy.clone(), what, path, loaded);
    proxy.serve_listeners(listeners, stopping).await;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("weir stopped");
    Ok(ExitCode::SUCCESS)
}
