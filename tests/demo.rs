//! The main job, `weir demo`: a healthy v2 is promoted and a faulty one rolled back, with
//! no user request failing in the healthy run, every line fitting a 100-column terminal,
//! and one time given for the decision.

mod support;

use std::process::Command;

use support::weir_bin;

fn demo(args: &[&str]) -> String {
    let out = Command::new(weir_bin())
        .arg("demo")
        .args(["--seconds", "90", "--rate", "200"])
        .args(args)
        .output()
        .expect("run weir demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines() {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line:?}"
        );
    }
    text
}

#[test]
fn the_demo_promotes_a_healthy_v2_and_rolls_back_a_faulty_one() {
    let healthy = demo(&[]);
    assert!(healthy.contains("weir demo: v2 promoted"), "{healthy}");
    let result = healthy
        .lines()
        .find(|l| l.starts_with("weir demo: result"))
        .expect("a result line");
    assert!(
        result.contains("phase=Succeeded") && result.contains("failed_total=0"),
        "{result}"
    );
    assert_eq!(result.matches("seconds=").count(), 1, "{result}");
    let faulty = demo(&["--faulty"]);
    assert!(faulty.contains("weir demo: v2 rolled back"), "{faulty}");
    assert!(faulty.contains("phase=Failed"), "{faulty}");
}
