//! The pure rollout core (`spec`, `machine`, `checks`, `guard`, `traffic`) imports no I/O,
//! no runtime and no wire types: what it decides depends only on its inputs. This test
//! reads its sources and holds that line with an allow-list: every path the core names,
//! in a `use` (grouped or not) or inline, must start with one of these.

use std::path::{Path, PathBuf};

/// The core's own modules.
const CORE: [&str; 5] = ["spec", "machine", "checks", "guard", "traffic"];

/// What else the core may name: data, parsing and the data plane's routing types.
const ALLOWED: [&str; 15] = [
    "std::collections",
    "std::time::Duration",
    "std::fmt",
    "std::f64",
    "std::sync::Arc",
    "std::borrow",
    "std::cmp",
    "std::ops",
    "std::str",
    "serde",
    "serde_json",
    "indexmap",
    "regex",
    "thiserror",
    "weir_proxy::",
];

/// What the data plane's crate has that is not data: its runtime handles.
const NOT_DATA: [&str; 3] = [
    "weir_proxy::Proxy",
    "weir_proxy::Listener",
    "weir_proxy::serve",
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

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn flatten(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        if !tree.is_empty() {
            out.push(format!(
                "{prefix}{}",
                tree.split(" as ").next().unwrap_or(tree)
            ));
        }
        return;
    };
    let head = format!("{prefix}{}", &tree[..open]);
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                flatten(&inner[start..i], &head, out);
                start = i + 1;
            }
            _ => {}
        }
    }
    flatten(&inner[start..], &head, out);
}

/// Every path a source names: its `use` trees flattened, and `a::b` paths inline.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        flatten(&rest[..end].replace(char::is_whitespace, ""), "", &mut out);
        rest = &rest[end..];
    }
    let inline = regex::Regex::new(r"\b[a-z_][a-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)+")
        .expect("a valid pattern");
    out.extend(inline.find_iter(code).map(|m| m.as_str().to_string()));
    out
}

fn allowed(path: &str) -> bool {
    let path = path.trim_start_matches("::");
    if let Some(rest) = path.strip_prefix("crate::") {
        return CORE.iter().any(|m| rest.split("::").next() == Some(m));
    }
    if ["super", "self", "Self"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}::")))
    {
        return true;
    }
    if NOT_DATA.iter().any(|n| path.starts_with(n)) {
        return false;
    }
    // A path of the core's own items (`Phase::Succeeded`, `wire::AnalysisSpec`).
    let first = path.split("::").next().unwrap_or("");
    let external = [
        "std",
        "core",
        "alloc",
        "tokio",
        "tonic",
        "hyper",
        "prost",
        "weir_protos",
    ]
    .contains(&first)
        || ALLOWED.iter().any(|a| a.split("::").next() == Some(first));
    !external || ALLOWED.iter().any(|a| path.starts_with(a))
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
        // Code up to the file's own test module, without comments.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for p in paths(&code) {
            if !allowed(&p) {
                found.push(format!("{}: {p}", f.display()));
            }
        }
    }
    assert!(found.is_empty(), "the pure core reaches out: {found:#?}");
}

#[test]
fn the_fence_sees_grouped_and_inline_paths() {
    let code = "use crate::{spec::Analysis, fleet::Fleet};\nuse std::{fs, collections::BTreeMap};\nfn f() { tokio::spawn(async {}); let _ = weir_proxy::Proxy::new; }";
    let bad: Vec<String> = paths(code).into_iter().filter(|p| !allowed(p)).collect();
    assert_eq!(
        bad,
        [
            "crate::fleet::Fleet",
            "std::fs",
            "tokio::spawn",
            "weir_proxy::Proxy::new"
        ]
    );
}
