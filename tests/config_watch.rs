//! weir.yaml is picked up by itself when it changes, as a ConfigMap volume (the kubelet's
//! new directory, atomic `..data` swap and removal of the old one) and editors (a write in
//! place, a rename over it, a moment without the file) change it: one reload per settled
//! change, none for an unchanged file, a bad file changes nothing and is counted, a new
//! canary revision starts a rollout. For `weir run`, `weir proxy` and `weir control`.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::control::{client, podinfo_services, wait_phase, FAST};
use support::*;

const LIMIT: Duration = Duration::from_secs(30);
/// Long enough for several looks at the file (one every 500 ms).
const QUIET: Duration = Duration::from_secs(3);

fn routed(primary: &Upstream, canary: &Upstream, to: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{}",
        two_versions(primary, canary, &format!("      - to: {to}"))
    )
}

async fn served_by(weir: &Weir) -> String {
    support::control::served_by(weir, 1, &[]).await.remove(0)
}

async fn wait_served(weir: &Weir, who: &str) {
    wait_for(&format!("{who} to serve"), LIMIT, || async {
        served_by(weir).await == who
    })
    .await;
}

async fn reloads(weir: &Weir, result: &str) -> f64 {
    weir.metric("weir_config_reloads_total", &[("result", result)])
        .await
}

/// Waits until `n` reloads with `result` are counted: a reload is counted just after it
/// takes effect.
async fn wait_reloads(weir: &Weir, result: &str, n: f64) {
    let labels = [("result", result)];
    weir.wait_metric("weir_config_reloads_total", &labels, n, LIMIT)
        .await;
}

/// A ConfigMap volume as the kubelet lays it out: `weir.yaml -> ..data/weir.yaml`,
/// `..data -> ..<timestamp>`.
struct ConfigMap {
    dir: PathBuf,
    current: PathBuf,
    serial: u32,
}

impl ConfigMap {
    fn new(text: &str) -> ConfigMap {
        let dir = temp_dir("configmap");
        let mut cm = ConfigMap {
            current: PathBuf::new(),
            dir,
            serial: 0,
        };
        cm.current = cm.payload(text);
        symlink(cm.current.file_name().expect("name"), cm.dir.join("..data")).expect("..data");
        symlink("..data/weir.yaml", cm.dir.join("weir.yaml")).expect("weir.yaml");
        cm
    }

    fn path(&self) -> PathBuf {
        self.dir.join("weir.yaml")
    }

    fn payload(&mut self, text: &str) -> PathBuf {
        self.serial += 1;
        let d = self.dir.join(format!(
            "..2026_12_06_10_00_0{}.{}",
            self.serial,
            1000 + self.serial
        ));
        std::fs::create_dir(&d).expect("payload dir");
        std::fs::write(d.join("weir.yaml"), text).expect("payload");
        d
    }

    /// The kubelet's update: a new payload directory, `..data_tmp` pointing at it renamed
    /// over `..data` (atomic), the old directory removed.
    fn update(&mut self, text: &str) {
        let next = self.payload(text);
        let tmp = self.dir.join("..data_tmp");
        symlink(next.file_name().expect("name"), &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        std::fs::remove_dir_all(&self.current).expect("remove the old payload");
        self.current = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_is_applied_once_without_a_signal() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let mut cm = ConfigMap::new(&routed(&primary, &canary, "primary"));
    let weir = Weir::start_file(cm.path());
    assert_eq!(served_by(&weir).await, "primary");

    cm.update(&routed(&primary, &canary, "canary"));
    wait_served(&weir, "canary").await;
    wait_reloads(&weir, "ok", 1.0).await;

    // The same content again (a resync): nothing is reloaded.
    cm.update(&routed(&primary, &canary, "canary"));
    tokio::time::sleep(QUIET).await;
    assert_eq!(reloads(&weir, "ok").await, 1.0);
    assert_eq!(reloads(&weir, "error").await, 0.0);
    weir.wait_log("config reloaded");
}

/// Writes `text` over `path` the way an editor that renames a new file over the old does.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.swp");
    std::fs::write(&tmp, text).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_saves_and_bursts_each_make_one_reload() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(&primary, &canary, "      - to: primary"));
    let path = weir.config_path.clone();
    let text = |to: &str| routed(&primary, &canary, to);

    // Written in place.
    std::fs::write(&path, text("canary")).expect("write");
    wait_served(&weir, "canary").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(reloads(&weir, "ok").await, 1.0);

    // Renamed over.
    rename_over(&path, &text("primary"));
    wait_served(&weir, "primary").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(reloads(&weir, "ok").await, 2.0);

    // Gone for a moment, then back with new content.
    std::fs::remove_file(&path).expect("remove");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    std::fs::write(&path, text("canary")).expect("write");
    wait_served(&weir, "canary").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(reloads(&weir, "ok").await, 3.0);
    assert_eq!(
        served_by(&weir).await,
        "canary",
        "the file's absence changed nothing"
    );

    // A burst of writes: one reload, of where it settled.
    for i in 0..20 {
        let to = if i == 19 { "primary" } else { "canary" };
        std::fs::write(&path, format!("{}# save {i}\n", text(to))).expect("write");
    }
    wait_served(&weir, "primary").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(reloads(&weir, "ok").await, 4.0);
    assert_eq!(reloads(&weir, "error").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_changes_nothing_and_is_counted_once() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let weir = Weir::start(&two_versions(&primary, &canary, "      - to: primary"));
    let good = std::fs::read_to_string(&weir.config_path).expect("read");
    let bad = good.replace(
        "      - to: primary",
        "      - to: nightly\n      - match: { headers: { x: { regex: \"(\" } } }\n        to: canary",
    );
    std::fs::write(&weir.config_path, &bad).expect("write");
    wait_for("the bad file to be counted", LIMIT, || async {
        reloads(&weir, "error").await == 1.0
    })
    .await;
    weir.wait_log("services[0].routes[0].to: unknown version");
    weir.wait_log("services[0].routes[1].match.headers.x.regex");
    assert_eq!(served_by(&weir).await, "primary");
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        reloads(&weir, "error").await,
        1.0,
        "an unchanged bad file is not re-read"
    );
    std::fs::write(&weir.config_path, good.replace("to: primary", "to: canary")).expect("write");
    wait_served(&weir, "canary").await;
    wait_reloads(&weir, "ok", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_in_the_file_starts_a_rollout() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let (p, c) = (primary.endpoint(), canary.endpoint());
    let text = |endpoint: &str, revision: &str| {
        let services = podinfo_services(&p, endpoint, FAST).replace(
            &format!("canary: {{ endpoints: [\"{endpoint}\"], revision: \"1\" }}"),
            &format!("canary: {{ endpoints: [\"{endpoint}\"], revision: \"{revision}\" }}"),
        );
        format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncontrol: 127.0.0.1:0\n{services}")
    };
    let dir = temp_dir("gitops");
    let path = dir.join("weir.yaml");
    std::fs::write(&path, text(&p, "1")).expect("write");
    let weir = Weir::start_file(path.clone());
    let mut c2 = client(&weir).await;
    wait_phase(&mut c2, "Initialized", LIMIT).await;
    // The commit: the canary's revision and endpoints change in the file.
    rename_over(&path, &text(&c, "2"));
    let s = wait_phase(&mut c2, "Progressing", LIMIT).await;
    assert_eq!(s.canary_revision, "2");
    // Requests through weir reach the new canary as the rollout steps its weight.
    wait_for("the canary to get traffic", LIMIT, || async {
        get(&weir.url("/"), &[]).await;
        canary.count() > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_proxy_and_weir_control_watch_their_files_too() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let proxy = Weir::start_mode(
        "proxy",
        &two_versions(&primary, &canary, "      - to: primary"),
    );
    std::fs::write(&proxy.config_path, routed(&primary, &canary, "canary")).expect("write");
    wait_served(&proxy, "canary").await;
    wait_reloads(&proxy, "ok", 1.0).await;

    let dir = temp_dir("control-watch");
    let path = dir.join("weir.yaml");
    let text = |to: &str| {
        format!(
            "admin: 127.0.0.1:0\ncontrol: 127.0.0.1:0\n{}",
            two_versions(&primary, &canary, &format!("      - to: {to}"))
        )
    };
    std::fs::write(&path, text("primary")).expect("write");
    let control = Weir::spawn_args(&["control"], path.clone());
    std::fs::write(&path, text("canary")).expect("write");
    wait_for("the controller to reload", LIMIT, || async {
        reloads(&control, "ok").await == 1.0
    })
    .await;
    let cfg: serde_json::Value =
        serde_json::from_str(&get_text(&control.admin_url("/config")).await).expect("json");
    let canary_weight = &cfg["services"][0]["versions"][1]["weight"];
    assert_eq!(canary_weight, 100, "{cfg}");
}
