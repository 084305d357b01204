//! `weir ctl`: the control API's command-line client.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use weir_protos::control as pb;

use super::render::{event_label, progress_line, replicas_table, table};
pub use crate::link::Access;
use crate::link::{connect, grpc_error, Client, CtlError};
use crate::machine::Phase;

/// Options shared by every `weir ctl` command.
#[derive(clap::Args, Debug, Clone)]
pub struct CtlArgs {
    #[command(flatten)]
    pub access: Access,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `weir ctl` commands.
#[derive(Subcommand, Debug, Clone)]
pub enum CtlCommand {
    /// Every service as a table (like `kubectl get canary`): phase, weights, revisions.
    Status {
        /// One service; all when omitted.
        service: Option<String>,
    },
    /// The data planes (weir replicas, Envoy nodes) that take their routing from this
    /// controller.
    Replicas,
    /// Live progress of one service: weight, per-version success rate and p99, events.
    Watch {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
    },
    /// Tell weir the service has a new canary revision.
    Start {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
        /// The new revision's identifier.
        #[arg(long)]
        revision: String,
        /// host:port of the new revision (repeat for several); omitted keeps the canary's.
        #[arg(long = "canary-endpoint")]
        canary_endpoints: Vec<String>,
        /// Block until the revision is promoted (exit 0) or rolled back (exit 1).
        #[arg(long)]
        wait: bool,
        /// With --wait, stop waiting after this many seconds (exit 2): the rollout goes on
        /// (follow it with `weir ctl watch`).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Skip the rest of the analysis and promote.
    Promote {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
    },
    /// Roll the canary back now.
    Abort {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
    },
    /// Freeze the rollout where it is.
    Pause {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
    },
    /// Continue a paused rollout.
    Resume {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
    },
    /// Analyse again the revision that was rolled back.
    Retry {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
    },
    /// Set the canary's weight by hand during a rollout, or the split of a service
    /// without an analysis.
    SetWeight {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
        /// Canary weight, 0-100 (the primary gets the rest).
        #[arg(long, required_unless_present = "weight", conflicts_with = "weight")]
        canary: Option<u32>,
        /// A version's weight, as VERSION=N (repeat for each version; a service without
        /// an analysis only).
        #[arg(long, value_parser = version_weight)]
        weight: Vec<(String, u32)>,
        /// Allow a weight above the analysis' maxWeight.
        #[arg(long)]
        force: bool,
    },
    /// Open a gate (the one the rollout waits on, or --gate).
    Approve {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
        /// confirm-rollout, confirm-traffic-increase or confirm-promotion (default: the
        /// gate the rollout waits on).
        #[arg(long, default_value = "", hide_default_value = true)]
        gate: String,
    },
    /// Refuse a gate: the rollout is rolled back.
    Deny {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
        /// confirm-rollout, confirm-traffic-increase or confirm-promotion (default: the
        /// gate the rollout waits on).
        #[arg(long, default_value = "", hide_default_value = true)]
        gate: String,
    },
    /// After weir lost a service's rollout state (a corrupt state file): start it over
    /// from weir.yaml, primary only, and accept rollouts again.
    Reset {
        /// The service's `name` in weir.yaml (its namespace is not part of it).
        service: String,
    },
}

/// `primary=80` as a version and its weight.
fn version_weight(s: &str) -> Result<(String, u32), String> {
    let (v, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected VERSION=WEIGHT, like canary=20"))?;
    let w = w
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: the weight must be a whole number, like canary=20"))?;
    Ok((v.trim().to_string(), w))
}

/// Runs a `weir ctl` command.
pub async fn ctl(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let addr = args.access.control.clone();
    match run(args).await {
        Ok(code) => Ok(code),
        Err(CtlError::NotControlApi(why)) => {
            eprintln!(
                "weir ctl: {addr} is not weir's control API (it answered: {why}). Is it the proxy or admin port? `weir run` prints `weir: control listening on ...`; without `control:` in weir.yaml it is 127.0.0.1:9090."
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("weir ctl: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run(args: CtlArgs) -> Result<ExitCode, CtlError> {
    let mut client = connect(&args.access).await?;
    let svc = |s: &str| pb::ServiceRef { service: s.into() };
    let status = match args.command {
        CtlCommand::Status { service } => {
            let rollouts = match service {
                Some(s) => vec![client
                    .get_status(svc(&s))
                    .await
                    .map_err(grpc_error)?
                    .into_inner()],
                None => {
                    client
                        .list_rollouts(pb::ListRolloutsRequest {})
                        .await
                        .map_err(grpc_error)?
                        .into_inner()
                        .rollouts
                }
            };
            print!("{}", table(&rollouts));
            return Ok(ExitCode::SUCCESS);
        }
        CtlCommand::Replicas => {
            let reply = client
                .list_replicas(pb::ListReplicasRequest {})
                .await
                .map_err(grpc_error)?
                .into_inner();
            print!("{}", replicas_table(&reply));
            return Ok(ExitCode::SUCCESS);
        }
        CtlCommand::Watch { service } => {
            watch(&mut client, &service).await?;
            return Ok(ExitCode::SUCCESS);
        }
        CtlCommand::Start {
            service,
            revision,
            canary_endpoints,
            wait,
            timeout,
        } => {
            let req = pb::StartRolloutRequest {
                service,
                revision,
                canary_endpoints,
            };
            return start(&mut client, req, wait.then_some(timeout)).await;
        }
        CtlCommand::Promote { service } => client.promote(svc(&service)).await,
        CtlCommand::Abort { service } => client.abort(svc(&service)).await,
        CtlCommand::Pause { service } => client.pause(svc(&service)).await,
        CtlCommand::Resume { service } => client.resume(svc(&service)).await,
        CtlCommand::Retry { service } => client.retry(svc(&service)).await,
        CtlCommand::SetWeight {
            service,
            canary,
            weight,
            force,
        } => {
            client
                .set_weight(pb::SetWeightRequest {
                    service,
                    canary_weight: canary.unwrap_or(0),
                    force,
                    weights: weight.into_iter().collect(),
                })
                .await
        }
        CtlCommand::Approve { service, gate } => {
            client.approve(pb::GateRequest { service, gate }).await
        }
        CtlCommand::Deny { service, gate } => client.deny(pb::GateRequest { service, gate }).await,
        CtlCommand::Reset { service } => client.reset(svc(&service)).await,
    }
    .map_err(grpc_error)?
    .into_inner();
    print!("{}", table(&[status]));
    Ok(ExitCode::SUCCESS)
}

/// `weir ctl start`: with a timeout (`--wait`), follows the rollout to its decision:
/// exit 0 promoted, 1 rolled back, 2 no decision in time.
async fn start(
    client: &mut Client,
    req: pb::StartRolloutRequest,
    wait: Option<u64>,
) -> Result<ExitCode, CtlError> {
    let (service, revision) = (req.service.clone(), req.revision.clone());
    // Subscribe first, so no transition can slip between the start and the watch.
    let stream = match wait {
        Some(_) => Some(
            client
                .watch(pb::ServiceRef {
                    service: service.clone(),
                })
                .await
                .map_err(grpc_error)?
                .into_inner(),
        ),
        None => None,
    };
    let s = client
        .start_rollout(req)
        .await
        .map_err(grpc_error)?
        .into_inner();
    let (Some(stream), Some(timeout)) = (stream, wait) else {
        println!("{service}: revision {revision} started ({})", s.phase);
        return Ok(ExitCode::SUCCESS);
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(timeout),
        follow(stream, &service, Some(&revision)),
    )
    .await;
    match outcome {
        Err(_) => {
            eprintln!(
                "weir ctl: {service}: no decision on {revision} within {timeout}s; the rollout goes on (weir ctl watch {service})"
            );
            Ok(ExitCode::from(2))
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(true)) => {
            println!("{service}: revision {revision} promoted");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(false)) => {
            println!("{service}: revision {revision} failed and was rolled back");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `weir ctl watch`: prints a service's events and progress until the watch ends.
async fn watch(client: &mut Client, service: &str) -> Result<(), CtlError> {
    let stream = client
        .watch(pb::ServiceRef {
            service: service.into(),
        })
        .await
        .map_err(grpc_error)?
        .into_inner();
    follow(stream, service, None).await?;
    Ok(())
}

/// Prints events and progress; with a revision, returns once it is promoted (true) or
/// rolled back (false).
async fn follow(
    mut stream: tonic::Streaming<pb::WatchEvent>,
    service: &str,
    revision: Option<&str>,
) -> Result<bool, CtlError> {
    use pb::watch_event::Kind;
    let mut seen_active = false;
    let mut last_line = String::new();
    loop {
        let item = stream
            .message()
            .await
            .map_err(grpc_error)?
            .ok_or_else(|| CtlError::Closed(service.to_string()))?;
        match item.kind {
            Some(Kind::Event(e)) => {
                println!("{} {}", event_label(e.r#type == "Warning"), e.message)
            }
            Some(Kind::Status(s)) => {
                let line = progress_line(&s);
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
                let Some(rev) = revision else { continue };
                let phase = Phase::from_name(&s.phase);
                seen_active |= phase.is_some_and(Phase::is_active) && s.canary_revision == rev;
                if phase == Some(Phase::Succeeded) && s.primary_revision == rev {
                    return Ok(true);
                }
                if phase == Some(Phase::Failed) && seen_active {
                    return Ok(false);
                }
            }
            None => {}
        }
    }
}
