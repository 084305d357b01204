//! The pure rollout core (`spec`, `machine`, `checks`, `guard`, `traffic`) imports no I/O,
//! no runtime and no wire types: what it decides depends only on its inputs. This test
//! reads its sources and holds that line.

use std::path::{Path, PathBuf};

/// What the pure core must not name.
const FORBIDDEN: [&str; 14] = [
    "tokio::",
    "tonic",
    "hyper",
    "weir_protos",
    "std::fs",
    "std::net",
    "std::process",
    "crate::api",
    "crate::fleet",
    "crate::controller",
    "crate::hooks",
    "crate::http_client",
    "crate::notify",
    "crate::store",
];

fn sources(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p)
            .expect("read the source tree")
            .flatten()
        {
            // The core's own tests drive it with a runtime; they are not the core.
            if e.file_name() != "tests" {
                sources(&e.path(), out);
            }
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

#[test]
fn the_pure_core_imports_no_io_no_runtime_and_no_wire_types() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in ["spec", "machine", "checks.rs", "guard.rs", "traffic.rs"] {
        sources(&src.join(part), &mut files);
    }
    assert!(files.len() >= 10, "found only {files:?}");
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read a source file");
        // Code up to the file's own test module.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for bad in FORBIDDEN {
                if line.contains(bad) {
                    found.push(format!("{}:{}: {bad}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "the pure core reaches out: {found:#?}");
}
