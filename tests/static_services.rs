//! `control:` in weir.yaml means a control API, always: with no analysis anywhere, `weir
//! run` still serves it with the same credentials; `weir ctl status` lists every service
//! (phase `Static` with each version's weight), `weir ctl set-weight` sets a static
//! service's split through the audited operator path, `watch` follows it, and the split
//! survives a restart through the state file.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::control::{ctl_env, served_by};
use support::*;

const TOKEN: &str = "pipeline-0123456789abcdef0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_analysis_is_listed_and_its_split_set_over_the_control_api() {
    let primary = Upstream::start("primary").await;
    let canary = Upstream::start("canary").await;
    let dir = temp_dir("static");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("pipeline {TOKEN}\n")).expect("write tokens");
    let state = dir.join("state.json");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ncontrol: {{ address: 127.0.0.1:0, tokenFile: {} }}\nstate: {}\n{}",
        tokens.display(),
        state.display(),
        two_versions(
            &primary,
            &canary,
            "      - split: { primary: 90, canary: 10 }"
        )
    );
    let path = dir.join("weir.yaml");
    std::fs::write(&path, &yaml).expect("write config");
    let weir = Weir::start_file(path.clone());
    let addr = weir.control_url();
    let addr = addr.trim_start_matches("http://");
    let auth = [("WEIR_CONTROL_TOKEN", TOKEN)];
    let ctl = |args: &[&str]| {
        let mut all = vec!["--control", addr];
        all.extend_from_slice(args);
        ctl_env(&all, &auth)
    };

    let (code, out, err) = ctl(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("podinfo"), "{out}");
    assert!(out.contains("Static"), "{out}");
    assert!(out.contains("primary 90, canary 10"), "{out}");

    // The same credentials as for rollouts: none is refused.
    let (code, _, err) = ctl_env(&["--control", addr, "status"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("not authenticated"), "{err}");

    // `watch` follows a static service too.
    let mut watch = Command::new(weir_bin())
        .args(["ctl", "--control", addr, "watch", "podinfo"])
        .env("WEIR_CONTROL_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir ctl watch");
    // Its first line is the status as it is: from then on it is subscribed.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = lines_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("watch prints the status");
    assert!(
        first.contains("Static") && first.contains("primary 90, canary 10"),
        "{first}"
    );

    let (code, out, err) = ctl(&["set-weight", "podinfo", "--canary", "100"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("primary 0, canary 100"), "{out}");
    let served = served_by(&weir, 20, &[]).await;
    assert!(served.iter().all(|s| s == "canary"), "{served:?}");
    weir.wait_log("control operation accepted");
    let logs = weir.logs();
    assert!(
        logs.lines().any(|l| l.contains("SetWeight")
            && l.contains("token pipeline")
            && l.contains("podinfo")),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN), "the token is never logged");

    let (code, out, err) = ctl(&[
        "set-weight",
        "podinfo",
        "--weight",
        "primary=100",
        "--weight",
        "canary=0",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let served = served_by(&weir, 20, &[]).await;
    assert!(served.iter().all(|s| s == "primary"), "{served:?}");

    // What does not apply to a static service says what does.
    let (code, _, err) = ctl(&["promote", "podinfo"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no analysis") && err.contains("set-weight"),
        "{err}"
    );
    let (code, _, err) = ctl(&["set-weight", "podinfo", "--weight", "nightly=5"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown version \"nightly\""), "{err}");

    let lines: Vec<String> =
        std::iter::from_fn(|| lines_rx.recv_timeout(Duration::from_secs(30)).ok())
            .take_while(|l| !l.contains("primary 100, canary 0"))
            .collect();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Split of podinfo.test set to primary 0, canary 100")),
        "{lines:?}"
    );

    // A restart keeps the operator's split (the state file has it).
    drop(weir);
    let weir = Weir::start_file(path);
    let served = served_by(&weir, 20, &[]).await;
    assert!(served.iter().all(|s| s == "primary"), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_proxy_says_what_it_ignores() {
    let up = Upstream::start("primary").await;
    let weir = Weir::start_mode(
        "proxy",
        &format!(
            "control: 127.0.0.1:0\n{}",
            two_versions(&up, &up, "      - to: primary")
        ),
    );
    assert!(
        weir.control.is_none(),
        "the data plane alone serves no control API"
    );
    weir.wait_log("control: ignored by `weir proxy`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_take_effect_are_named_by_check_and_at_start() {
    let up = Upstream::start("primary").await;
    let dir = temp_dir("ineffective");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nstate: {}\nlimits: {{ uploadMinRate: 0, uploadGracePeriod: 5s }}\n{}",
        dir.join("state.json").display(),
        podinfo_yaml(
            &up.endpoint(),
            &up.endpoint(),
            ", http2: true",
            "    routes:\n      - to: canary\n        upgrades: [websocket]\n",
        )
    );
    let (code, text) = weir_check(&yaml);
    assert_eq!(code, 0, "{text}");
    let notes = [
        "note: state: has no effect",
        "note: limits.uploadGracePeriod has no effect: limits.uploadMinRate is 0",
        "note: services[0].routes[0].upgrades: version canary speaks HTTP/2",
    ];
    for note in notes {
        assert!(text.contains(note), "no {note:?} in\n{text}");
    }
    // `weir run` with the same file says them too, and serves no control API.
    let weir = Weir::start(&yaml);
    assert!(weir.control.is_none());
    for note in notes {
        weir.wait_log(note.trim_start_matches("note: "));
    }
}
