//! The controller at run time: one task per service drives its rollout's state machine
//! every interval and runs the fast-fail guard every 100 ms (`driver`), operators change
//! rollouts over the API (`ops`), weir.yaml is re-read on SIGHUP (`reload`), and the state
//! is published (status, Watch, metrics) and persisted after every change.

mod driver;
mod env;
mod ops;
mod publish;
mod reload;
mod rollout;
mod statics;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use indexmap::IndexMap;
use tokio::sync::{broadcast, Notify};
use weir_proxy::{Proxy, RoutingErrors};

pub use crate::notify::Notice;
pub use statics::STATIC_PHASE;

use crate::config::{References, WeirConfig};
use crate::fleet::Fleet;
use crate::http_client::HttpPoster;
use crate::machine::{Machine, Phase};
use crate::metrics::Metrics;
use crate::notify::{About, Notifier};
use crate::routes::Routes;
use crate::status::ServiceStatus;
use crate::store::{self, StoreError};
use env::LiveEnv;
use rollout::{Rollout, RolloutError};
use statics::Static;

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] StoreError),
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error("cannot route the services as the saved rollout state says: {0}")]
    Apply(#[from] RoutingErrors),
}

/// One rollout, its published status and its task's signals.
struct RolloutHandle {
    /// The service's namespace (for `flagger_canary_total`).
    namespace: String,
    rollout: tokio::sync::Mutex<Rollout>,
    /// The status as last published, and what the state file keeps of it.
    published: Mutex<(ServiceStatus, store::Saved)>,
    /// The analysis in force as written (file or API), for `/config`.
    spec: Mutex<serde_json::Value>,
    kick: Notify,
    stop: Notify,
}

struct Shared {
    proxy: Proxy,
    /// The routing every data plane serves.
    routes: Arc<Routes>,
    /// What Envoy nodes are served with (None: no `envoy:` block).
    envoy: tokio::sync::watch::Sender<Option<Arc<crate::xds::EnvoySettings>>>,
    /// The proxy replicas that serve this controller's routing.
    fleet: Arc<Fleet>,
    state_path: Option<PathBuf>,
    refs: RwLock<References>,
    rollouts: RwLock<IndexMap<String, Arc<RolloutHandle>>>,
    /// The services without an analysis.
    statics: RwLock<IndexMap<String, Arc<Mutex<Static>>>>,
    /// Every service's name in the file's order (how lists show them).
    order: RwLock<Vec<String>>,
    notifier: Notifier,
    metrics: Metrics,
    poster: HttpPoster,
    /// The state last written (a tick that changed nothing writes nothing); its lock
    /// also orders the writers.
    saved: Mutex<Option<store::State>>,
}

/// A handle to the controller. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    shared: Arc<Shared>,
}

impl Controller {
    /// Starts the controller beside the proxy that serves traffic (`weir run`); replicas
    /// may still connect.
    pub fn start(proxy: Proxy, config: &WeirConfig) -> Result<Controller, StartError> {
        Controller::launch(proxy, config, false)
    }

    /// Starts the controller alone (`weir control`): `proxy` serves no one, its routing
    /// goes to the replicas, their measurements come back into it.
    pub fn start_fleet(proxy: Proxy, config: &WeirConfig) -> Result<Controller, StartError> {
        Controller::launch(proxy, config, true)
    }

    /// The data planes this controller routes.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.shared.fleet
    }

    /// The routing it publishes.
    pub(crate) fn routes(&self) -> &Arc<Routes> {
        &self.shared.routes
    }

    /// What Envoy nodes are served with, as weir.yaml last said.
    pub(crate) fn envoy_settings(
        &self,
    ) -> tokio::sync::watch::Receiver<Option<Arc<crate::xds::EnvoySettings>>> {
        self.shared.envoy.subscribe()
    }

    /// Restores the state file, routes the proxy as the state says, spawns one task per
    /// rollout, then starts publishing the routing to replicas.
    fn launch(
        proxy: Proxy,
        config: &WeirConfig,
        dedicated: bool,
    ) -> Result<Controller, StartError> {
        let recovery = match &config.state {
            Some(p) => store::recover(p)?,
            None => store::Recovery::Intact(store::State::default()),
        };
        let poster = HttpPoster::new();
        let routes = Arc::new(Routes::new(proxy.clone(), 0));
        let shared = Arc::new(Shared {
            metrics: Metrics::new(proxy.families().registry()),
            fleet: Fleet::start(routes.clone(), proxy.clone(), dedicated),
            routes,
            envoy: tokio::sync::watch::Sender::new(config.envoy_settings()),
            proxy,
            state_path: config.state.clone(),
            refs: RwLock::new(config.refs.clone()),
            rollouts: RwLock::new(IndexMap::new()),
            statics: RwLock::new(IndexMap::new()),
            order: RwLock::new(Vec::new()),
            notifier: Notifier::new(poster.clone()),
            poster,
            saved: Mutex::new(None),
        });
        let controller = Controller { shared };
        let weak = Arc::downgrade(&controller.shared);
        controller
            .shared
            .proxy
            .describe_with(move || match weak.upgrade() {
                Some(shared) => Controller { shared }.describe(),
                None => serde_json::Value::Null,
            });
        let (saved, lost) = controller.recovered(recovery);
        controller.shared.routes.lift(saved.routing_version);
        let mut rollouts = Vec::new();
        let mut services = Vec::new();
        for (name, block) in &config.analyses {
            let Some(svc) = config.proxy.service(name) else {
                continue;
            };
            let mut r = Rollout::new(svc, block, &controller.shared.proxy)?;
            if let Some(s) = saved.services.get(name) {
                r.restore(s, &config.refs);
            }
            if let Some(why) = &lost {
                r.lose_state(why);
            }
            services.push(r.routing().map_err(RoutingErrors::from)?);
            rollouts.push(r);
        }
        let statics = controller.stage_statics(config, &saved.statics);
        services.extend(statics.routings()?);
        controller.shared.routes.commit(services, &[])?;
        controller.install_statics(statics);
        for r in rollouts {
            controller.spawn(r);
        }
        controller.persist();
        Ok(controller)
    }

    /// The state to resume from, and why it is lost when it is: a corrupt file is
    /// reported (log and `weir_state_file_corrupt_total`) and set aside.
    fn recovered(&self, recovery: store::Recovery) -> (store::State, Option<String>) {
        let path = self
            .shared
            .state_path
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        match recovery {
            store::Recovery::Intact(state) => (state, None),
            store::Recovery::FromBackup {
                state,
                corrupt,
                reason,
            } => {
                self.shared.metrics.state_corrupt.inc();
                tracing::error!(path = %path.display(), set_aside = %corrupt.display(), error = %reason, "the rollout state file is corrupt; resuming from its last good copy");
                (state, None)
            }
            store::Recovery::Lost { corrupt, reason } => {
                self.shared.metrics.state_corrupt.inc();
                tracing::error!(path = %path.display(), set_aside = %corrupt.display(), error = %reason, "the rollout state file is corrupt and there is no good copy: serving the primaries only; rollouts are refused until `weir ctl reset SERVICE`");
                let why = format!(
                    "the state file was corrupt ({reason}) and set aside as {}",
                    corrupt.display()
                );
                (store::State::default(), Some(why))
            }
        }
    }

    fn spawn(&self, r: Rollout) {
        let resume = r.status.phase != Phase::Initializing;
        let name = r.service.clone();
        let handle = Arc::new(RolloutHandle {
            namespace: r.target.namespace.clone(),
            published: Mutex::new((ServiceStatus::default(), r.saved())),
            spec: Mutex::new(serde_json::Value::Null),
            rollout: tokio::sync::Mutex::new(r),
            kick: Notify::new(),
            stop: Notify::new(),
        });
        // Published before the rollout is visible, so no reader sees an empty status.
        if let Ok(r) = handle.rollout.try_lock() {
            self.publish(&handle, &r);
        }
        self.shared
            .rollouts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, handle.clone());
        self.count_rollouts();
        let me = self.clone();
        tokio::spawn(async move { me.drive(handle, resume).await });
    }

    /// The rollout of a service with an analysis; a service without one is refused with
    /// what can be done to it instead.
    fn handle(&self, service: &str) -> Result<Arc<RolloutHandle>, Refusal> {
        let found = self
            .shared
            .rollouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned();
        match found {
            Some(h) => Ok(h),
            None if self.static_handle(service).is_ok() => Err(Refusal::Precondition(format!(
                "{service} has no analysis, so no rollout: set its split with `weir ctl set-weight {service}`, or add an analysis to weir.yaml"
            ))),
            None => Err(self.unknown(service)),
        }
    }

    /// A service without an analysis.
    fn static_handle(&self, service: &str) -> Result<Arc<Mutex<Static>>, Refusal> {
        self.shared
            .statics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned()
            .ok_or_else(|| self.unknown(service))
    }

    /// A refusal naming the services there are.
    fn unknown(&self, service: &str) -> Refusal {
        let order = self.shared.order.read().unwrap_or_else(|p| p.into_inner());
        let known = match order.len() {
            0 => "there are no services".to_string(),
            1..=10 => format!("the services are {}", order.join(", ")),
            n => format!("there are {n} services: weir ctl status lists them"),
        };
        Refusal::NotFound(format!("unknown service {service:?}: {known}"))
    }

    /// The status of one service, with where each version's requests go now.
    pub fn status(&self, service: &str) -> Result<ServiceStatus, Refusal> {
        let mut status = if let Ok(s) = self.static_handle(service) {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            s.status(&self.shared.proxy)
        } else {
            let handle = self.handle(service)?;
            let p = handle.published.lock().unwrap_or_else(|p| p.into_inner());
            p.0.clone()
        };
        for v in &mut status.versions {
            if let Some((endpoints, addresses)) = self.shared.proxy.addresses(service, &v.name) {
                v.endpoints = endpoints;
                v.addresses = addresses;
            }
        }
        Ok(status)
    }

    /// Every service's status, in the file's order.
    pub fn list(&self) -> Vec<ServiceStatus> {
        let order = self
            .shared
            .order
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        order.iter().filter_map(|s| self.status(s).ok()).collect()
    }

    /// Events and status changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.shared.notifier.subscribe()
    }

    /// `weir ctl set-weight`: the canary's weight during a rollout, or the split of a
    /// service without an analysis (the canary's weight, or each version's).
    pub async fn set_weight(
        &self,
        service: &str,
        canary: u32,
        weights: IndexMap<String, u32>,
        force: bool,
    ) -> Result<ServiceStatus, Refusal> {
        if self.static_handle(service).is_ok() {
            return self.set_static_weights(service, canary, weights);
        }
        if !weights.is_empty() {
            return Err(Refusal::Invalid(format!(
                "{service} is under analysis: its rollout sets the split; give the canary's weight (--canary N)"
            )));
        }
        let op = crate::machine::Op::SetWeight {
            weight: canary,
            force,
        };
        self.operate(service, op).await
    }
}

impl Rollout {
    /// The state machine over this rollout's status, and the live hooks and checks it uses.
    fn machine<'a>(
        &'a mut self,
        poster: &'a HttpPoster,
        now_ms: u64,
    ) -> (Machine<'a>, LiveEnv<'a>) {
        let env = LiveEnv {
            poster,
            target: &self.target,
            analysis: &self.analysis,
            measurements: &self.measurements,
            mirrored: self.status.mirrored,
            revision: self.status.last_applied.clone(),
        };
        let machine = Machine::new(&self.target, &self.analysis, &mut self.status, now_ms);
        (machine, env)
    }

    /// Who an event or alert is about.
    fn about(&self) -> About<'_> {
        About {
            target: &self.target,
            analysis: &self.analysis,
            phase: self.status.phase,
            revision: self.status.last_applied.as_deref(),
        }
    }
}
