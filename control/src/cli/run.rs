//! `weir run` and `weir check`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_proxy::Proxy;

use crate::config::WeirConfig;
use crate::controller::Controller;

/// `weir check -c FILE`: prints every error with its field path; exit code 1 when invalid.
pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
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
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Re-reads the file for the data plane alone (`weir proxy`, or no analysis).
fn reload_proxy(proxy: &Proxy, path: &Path) -> Result<(), weir_proxy::ConfigErrors> {
    let result = WeirConfig::load(path).and_then(|cfg| {
        let old = proxy.config();
        let new = &cfg.proxy;
        if new.listen != old.listen || new.admin != old.admin || new.limits != old.limits {
            tracing::warn!("listen, admin and limits changes take effect on restart");
        }
        proxy.apply(cfg.proxy)
    });
    proxy.record_reload(path, &result);
    result
}

/// Binds a listener, naming the config key in the error.
async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Resolves when `stop` turns true.
async fn until(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Re-reads the file on every SIGHUP: through the controller when there is one.
fn reload_on_hup(mut hup: Signal, proxy: Proxy, controller: Option<Controller>, path: &Path) {
    let file = path.to_path_buf();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = match &controller {
                Some(ctl) => ctl.reload(&file).await,
                None => reload_proxy(&proxy, &file),
            };
        }
    });
}

/// `weir run -c FILE` (and `weir proxy`, with `controller: false`): serves until SIGTERM
/// or SIGINT, then drains; SIGHUP reloads the file.
pub async fn run(path: &Path, controller: bool) -> anyhow::Result<ExitCode> {
    let cfg = match WeirConfig::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let proxy = Proxy::new(cfg.proxy.clone())?;
    let controller = match controller && !cfg.analyses.is_empty() {
        true => Some((
            Controller::start(proxy.clone(), &cfg)?,
            bind(&cfg.control, "control").await?,
        )),
        false => None,
    };
    let listener = bind(&cfg.proxy.listen, "listen").await?;
    let admin = bind(&cfg.proxy.admin, "admin").await?;
    // Signal handlers first: a SIGHUP sent as soon as the addresses are printed must
    // reload, not kill the process.
    let hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    // Tests and scripts read these lines to learn the ports when the config says :0.
    println!("weir: proxy listening on {}", listener.local_addr()?);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let ctl = match controller {
        Some((ctl, control)) => {
            // Before the admin line: scripts that wait for the admin line know them all.
            println!("weir: control listening on {}", control.local_addr()?);
            let (api, stopped) = (ctl.clone(), stopped.clone());
            tasks.spawn(async move {
                if let Err(e) = crate::api::serve(api, control, until(stopped)).await {
                    tracing::error!(error = %e, "control API stopped");
                }
            });
            Some(ctl)
        }
        None => None,
    };
    println!("weir: admin listening on {}", admin.local_addr()?);
    tracing::info!(services = cfg.proxy.services.len(), "weir started");
    reload_on_hup(hup, proxy.clone(), ctl, path);
    let admin_proxy = proxy.clone();
    tasks.spawn(async move { admin_proxy.serve_admin(admin, until(stopped)).await });
    proxy
        .serve(listener, async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        })
        .await;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("weir stopped");
    Ok(ExitCode::SUCCESS)
}
