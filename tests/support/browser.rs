//! Headless Chromium from the system (Debian's `chromium`), driven in real time over the
//! DevTools protocol by tests/support/cdp.py (Python's standard library alone): a page
//! opened once and sampled as it updates itself, what its console said, what failed to
//! load, its final DOM and a screenshot. Each run has its own profile and is killed if it
//! overstays.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What one page did while it was watched.
pub struct Session {
    /// `(seconds since opening, the watched expression's value)`, every half second.
    pub samples: Vec<(f64, serde_json::Value)>,
    /// `(type, text)` of each console message.
    pub console: Vec<(String, String)>,
    /// Exceptions, and error or warning log entries (failed loads, refused scripts).
    pub errors: Vec<String>,
    /// The document when watching stopped.
    pub dom: String,
}

/// Opens `url` at `width` x `height`, samples the JavaScript `expression` every half
/// second until the page's text contains `until` (or `seconds` pass), and writes a PNG
/// screenshot to `screenshot` when given. With `progress`, each sample is also appended
/// to that file as a JSON line as soon as it is taken.
pub fn watch(
    url: &str,
    seconds: u32,
    expression: &str,
    until: &str,
    screenshot: Option<&Path>,
    progress: Option<&Path>,
    (width, height): (u32, u32),
) -> Session {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/cdp.py");
    let shot = screenshot.map_or("-".to_string(), |p| p.display().to_string());
    let mut command = Command::new("timeout");
    if let Some(progress) = progress {
        command.env("CDP_PROGRESS", progress);
    }
    let out = command
        .arg((seconds + 60).to_string())
        .arg("python3")
        .arg(&script)
        .args([url, &seconds.to_string(), expression, until, &shot])
        .args([width.to_string(), height.to_string()])
        .output()
        .expect("run python3 tests/support/cdp.py (chromium must be installed)");
    assert!(
        out.status.success(),
        "cdp.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cdp.py JSON");
    let text = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    Session {
        samples: v["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| (s["t"].as_f64().unwrap_or(0.0), s["value"].clone()))
            .collect(),
        console: v["console"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (text(&c["type"]), text(&c["text"])))
            .collect(),
        errors: v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect(),
        dom: text(&v["dom"]),
    }
}
