//! `weir control` (the controller alone) and `weir proxy --controller` (a replica).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_proxy::Proxy;

use super::reload::{reload_on_change, Loaded, OnHup};
use super::run::{self, AdminListeners, ControlApi};
use crate::config::WeirConfig;
use crate::controller::Controller;
use crate::replica::{is_replica_file, replica_name, Replica, ReplicaConfig};

/// `weir control -c FILE`: the controller without a data-plane listener. Its proxy is the
/// model the replicas copy: its routing goes out to them, their measurements come back
/// into it. SIGHUP or a change of the file reloads it.
pub async fn control(path: &Path) -> anyhow::Result<ExitCode> {
    let loaded = Loaded::now(path);
    let Some(cfg) = run::reported(path, WeirConfig::load(path)) else {
        return Ok(ExitCode::FAILURE);
    };
    let proxy = Proxy::new(cfg.proxy.clone())?;
    let ctl = Controller::start_fleet(proxy.clone(), &cfg)?;
    let api = ControlApi::bind(&cfg, &proxy).await?;
    let admin = AdminListeners::bind(&cfg.proxy).await?;
    run::announce_state(&cfg);
    let hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let stopping = run::terminated()?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    api.serve_in(ctl.clone(), &mut tasks, &stopped)?;
    admin.serve_in(&proxy, Some(&ctl), &mut tasks, &stopped)?;
    proxy.watch_files();
    reload_on_change(hup, proxy.clone(), OnHup::Controller(ctl), path, loaded);
    tracing::info!(
        services = cfg.proxy.services.len(),
        "weir controller started"
    );
    stopping.await;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("weir stopped");
    Ok(ExitCode::SUCCESS)
}

/// `weir proxy -c FILE`: the file's services alone, or, with a controller named by
/// `--controller` or the file's `controller:`, a replica that takes its routing from it.
pub async fn proxy(
    path: &Path,
    controller: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if controller.is_none() && !is_replica_file(path) {
        return run::run(path, false).await;
    }
    let loaded = Loaded::now(path);
    let Some(cfg) = run::reported(path, ReplicaConfig::load(path)) else {
        return Ok(ExitCode::FAILURE);
    };
    let Some(access) = cfg.access(controller) else {
        eprintln!(
            "{}: controller: no address (set controller.address or --controller)",
            path.display()
        );
        return Ok(ExitCode::FAILURE);
    };
    let Some(name) = replica_name(name) else {
        eprintln!("weir: the replica has no name: set $POD_NAME or --name");
        return Ok(ExitCode::FAILURE);
    };
    let proxy = Proxy::new(cfg.proxy.clone())?;
    let listeners = proxy.bind().await?;
    let address = match (std::env::var("POD_IP"), listeners.first()) {
        (Ok(ip), Some(l)) => format!("{ip}:{}", l.local_addr()?.port()),
        (_, Some(l)) => l.local_addr()?.to_string(),
        (_, None) => String::new(),
    };
    let replica = Replica::new(proxy.clone(), access, name, address);
    let admin = AdminListeners::bind(&cfg.proxy).await?;
    let hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let stopping = run::terminated()?;
    run::announce(&listeners)?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    admin.serve_in(&proxy, None, &mut tasks, &stopped)?;
    tasks.spawn(replica.run(stopped.clone()));
    reload_on_change(hup, proxy.clone(), OnHup::CertificatesOnly, path, loaded);
    tracing::info!("weir replica started");
    proxy.serve_listeners(listeners, stopping).await;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("weir stopped");
    Ok(ExitCode::SUCCESS)
}
