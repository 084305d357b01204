//! `weir run` and `weir check`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use weir_proxy::config::ConfigErrors;
use weir_proxy::{Config, Proxy};

use crate::controller::Controller;
use crate::spec;

/// `weir check -c FILE`: prints every error with its field path; exit code 1 when invalid.
pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    match load(path) {
        Ok((cfg, _)) => {
            let versions: usize = cfg.services.iter().map(|s| s.versions.len()).sum();
            println!(
                "{}: ok ({} services, {} versions)",
                path.display(),
                cfg.services.len(),
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

/// Loads a config and validates its analysis blocks too.
pub fn load(path: &Path) -> Result<(Config, spec::Analyses), ConfigErrors> {
    let cfg = Config::load(path)?;
    let analyses = spec::analyses(&cfg).map_err(ConfigErrors)?;
    Ok((cfg, analyses))
}

/// `weir run -c FILE` (and `weir proxy`, with `controller: false`): serves until SIGTERM
/// or SIGINT, then drains; SIGHUP reloads the file.
pub async fn run(path: &Path, controller: bool) -> anyhow::Result<ExitCode> {
    let (cfg, analyses) = match load(path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let proxy = Proxy::new(cfg.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let control = if controller && !analyses.is_empty() {
        let state = cfg.state.as_ref().map(std::path::PathBuf::from);
        let ctl = Controller::start(proxy.clone(), &cfg, analyses, state)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let addr = cfg
            .control
            .clone()
            .unwrap_or_else(|| "127.0.0.1:9090".into());
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (control)"))?;
        Some((ctl, listener))
    } else {
        None
    };
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", cfg.listen))?;
    let admin = TcpListener::bind(&cfg.admin)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", cfg.admin))?;
    // Signal handlers first: a SIGHUP sent as soon as the addresses are printed must
    // reload, not kill the process.
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    // Tests and scripts read these lines to learn the ports when the config says :0.
    println!("weir: proxy listening on {}", listener.local_addr()?);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let mut control_task = None;
    let reload_controller = match control {
        Some((ctl, listener)) => {
            // Before the admin line: scripts that wait for the admin line know them all.
            println!("weir: control listening on {}", listener.local_addr()?);
            let mut rx = admin_stopped.clone();
            let api_ctl = ctl.clone();
            control_task = Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = crate::api::serve(api_ctl, listener, stop).await {
                    tracing::error!(error = %e, "control API stopped");
                }
            }));
            Some(ctl)
        }
        None => None,
    };
    println!("weir: admin listening on {}", admin.local_addr()?);
    tracing::info!(services = cfg.services.len(), "weir started");

    let reloader = proxy.clone();
    let file = path.to_path_buf();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match &reload_controller {
                Some(ctl) => {
                    let _ = ctl.reload(&file).await;
                }
                None => {
                    let _ = reloader.reload_from(&file);
                }
            }
        }
    });
    let admin_proxy = proxy.clone();
    let admin_task = tokio::spawn(async move {
        let mut rx = admin_stopped;
        admin_proxy
            .serve_admin(admin, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
    });
    proxy
        .serve(listener, async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        })
        .await;
    let _ = stop_admin.send(true);
    let _ = admin_task.await;
    if let Some(task) = control_task {
        let _ = task.await;
    }
    tracing::info!("weir stopped");
    Ok(ExitCode::SUCCESS)
}
