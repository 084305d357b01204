//! The READMEs' examples, run as they are written: every YAML block of README.md and
//! deploy/kubernetes/README.md passes `weir check`, the shell blocks marked `run` run in
//! order (against real processes on the ports they name) and print what the `output`
//! block after them says, and every block that cannot run here says why in the source
//! (`<!-- readme: skip REASON -->`), so nothing is skipped silently.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// A fenced block and the marker on the line before it.
#[derive(Debug, Clone)]
struct Block {
    lang: String,
    marker: Option<String>,
    text: String,
    line: usize,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blocks(path: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(path).expect("read the README");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```").filter(|l| !l.is_empty()) else {
            i += 1;
            continue;
        };
        let marker = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- readme:"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(|m| m.trim().to_string());
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && !lines[i].starts_with("```") {
            body.push(lines[i]);
            i += 1;
        }
        out.push(Block {
            lang: lang.trim().to_string(),
            marker,
            text: body.join("\n") + "\n",
            line: start + 1,
        });
        i += 1;
    }
    out
}

fn readmes() -> Vec<PathBuf> {
    vec![
        root().join("README.md"),
        root().join("deploy/kubernetes/README.md"),
    ]
}

fn skipped(b: &Block) -> bool {
    b.marker.as_deref().is_some_and(|m| m.starts_with("skip"))
}

#[test]
fn every_yaml_block_passes_weir_check_or_says_why_not() {
    let mut checked = 0;
    for readme in readmes() {
        for b in blocks(&readme).into_iter().filter(|b| b.lang == "yaml") {
            let at = format!("{}:{}", readme.display(), b.line);
            if skipped(&b) {
                let reason = b
                    .marker
                    .as_deref()
                    .unwrap_or("")
                    .trim_start_matches("skip")
                    .trim();
                assert!(!reason.is_empty(), "{at}: a skipped block says why");
                continue;
            }
            let (code, err) = weir_check(&b.text);
            assert_eq!(
                code, 0,
                "{at}: weir check refused the block:\n{err}\n{}",
                b.text
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} YAML blocks checked");
}

#[test]
fn every_shell_block_runs_or_says_why_not() {
    for readme in readmes() {
        for b in blocks(&readme).into_iter().filter(|b| b.lang == "sh") {
            let at = format!("{}:{}", readme.display(), b.line);
            match b.marker.as_deref() {
                Some("run") => {}
                Some(m) if m.starts_with("skip ") && m.len() > 8 => {}
                other => {
                    panic!("{at}: a shell block is marked `run` or `skip REASON`, not {other:?}")
                }
            }
        }
    }
}

/// True when `line` matches `expected`: white space runs count as one space, and `...`
/// stands for anything.
fn matches(expected: &str, line: &str) -> bool {
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (expected, line) = (squash(expected), squash(line));
    let mut rest = line.as_str();
    for (i, part) in expected.split("...").enumerate() {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match rest.find(part) {
            Some(at) if i > 0 || at == 0 => rest = &rest[at + part.len()..],
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_hour_runs_as_written() {
    let readme = root().join("README.md");
    let all = blocks(&readme);
    let dir = temp_dir("readme");
    let mut script = String::new();
    let mut expected: Vec<(usize, Vec<String>)> = Vec::new();
    let mut runs = 0;
    for (i, b) in all.iter().enumerate() {
        match b.marker.as_deref() {
            Some(m) if m.starts_with("file ") => {
                let name = m.trim_start_matches("file ").trim();
                std::fs::write(dir.join(name), &b.text).expect("write the README's file");
            }
            Some("run") if b.lang == "sh" => {
                script.push_str(&format!("echo '@@block {runs}@@'\n{}", b.text));
                let out = all
                    .get(i + 1)
                    .filter(|n| n.marker.as_deref() == Some("output"))
                    .map(|n| n.text.lines().map(str::to_string).collect())
                    .unwrap_or_default();
                expected.push((b.line, out));
                runs += 1;
            }
            _ => {}
        }
    }
    assert!(runs >= 2, "the README runs {runs} blocks");
    let bin = PathBuf::from(weir_bin());
    let path = format!(
        "{}:{}",
        bin.parent().expect("the binary's directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&dir)
        .env("PATH", path)
        .env_remove("WEIR_CONTROL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run bash");
    let group = child.id();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    // Whatever the blocks started (weir, the stand-in servers) goes with them.
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{group}")])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status();
    let out = out
        .expect("the README's blocks finish within two minutes")
        .expect("join")
        .expect("bash ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = std::fs::read_to_string(dir.join("weir.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the blocks failed:\n{stdout}\n{}\nweir.log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (n, (line, want)) in expected.iter().enumerate() {
        let got: Vec<&str> = stdout
            .split(&format!("@@block {n}@@"))
            .nth(1)
            .map(|rest| rest.split("@@block ").next().unwrap_or(""))
            .unwrap_or("")
            .lines()
            .collect();
        let mut at = 0;
        for w in want {
            let found = got[at..].iter().position(|g| matches(w, g));
            assert!(
                found.is_some(),
                "README.md:{line}: no line like {w:?} in its output:\n{}",
                got.join("\n")
            );
            at += found.unwrap_or(0) + 1;
        }
    }
}
