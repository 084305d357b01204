//! `weir control` (the controller alone) and `weir proxy --controller` (a replica).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_proxy::Proxy;

use super::run::{self, AdminListeners, ControlApi};
use crate::config::WeirConfig;
use crate::controller::Controller;
use crate::replica::{is_replica_file, replica_name, ReplicaConfig};

/// Watches SIGTERM and SIGINT from now on; the future resolves at the first.
fn terminated() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

/// `weir control -c FILE`: the controller without a data-plane listener. Its proxy is the
/// model the replicas copy: its routing goes out to them, their measurements come back
/// into it. SIGHUP reloads the file.
pub async fn control(path: &Path) -> anyhow::Result<ExitCode> {
    let Some(cfg) = run::reported(path, WeirConfig::load(path)) else {
        return Ok(ExitCode::FAILURE);
    };
    let proxy = Proxy::new(cfg.proxy.clone())?;
    let ctl = Controller::start_fleet(proxy.clone(), &cfg)?;
    let api = ControlApi::bind(&cfg, &proxy).await?;
    let admin = AdminListeners::bind(&cfg.proxy).await?;
    let hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let stopping = terminated()?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    api.serve_in(ctl.clone(), &mut tasks, &stopped)?;
    admin.serve_in(&proxy, &mut tasks, &stopped)?;
    proxy.watch_files();
    run::reload_on_hup(hup, proxy.clone(), Some(ctl), path);
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
    let admin = AdminListeners::bind(&cfg.proxy).await?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let stopping = terminated()?;
    let first = listeners.first().map(|l| l.local_addr()).transpose()?;
    for l in &listeners {
        let scheme = if l.is_tls() { "https" } else { "http" };
        println!("weir: proxy listening on {} ({scheme})", l.local_addr()?);
    }
    let address = match (std::env::var("POD_IP"), first) {
        (Ok(ip), Some(a)) => format!("{ip}:{}", a.port()),
        (_, Some(a)) => a.to_string(),
        (_, None) => String::new(),
    };
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    admin.serve_in(&proxy, &mut tasks, &stopped)?;
    let replica = crate::replica::Replica {
        proxy: proxy.clone(),
        local: cfg.proxy.clone(),
        access,
        name,
        address,
    };
    let link_stopped = stopped.clone();
    tasks.spawn(replica.run(link_stopped));
    // A replica's file holds no routing: SIGHUP re-reads certificates only.
    let certs = proxy.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let p = certs.clone();
            let _ = tokio::task::spawn_blocking(move || p.reload_tls()).await;
        }
    });
    tracing::info!("weir replica started");
    proxy.serve_listeners(listeners, stopping).await;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("weir stopped");
    Ok(ExitCode::SUCCESS)
}
