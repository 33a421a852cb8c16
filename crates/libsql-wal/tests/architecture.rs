//! The module graph of the library, read from its sources: no cycles between top-level
//! modules (a `storage` or `log` directory counts as one module), and the background
//! parts (the checkpointer, storage) never reach into the log they serve — the log gives
//! them narrow interfaces instead (`CheckpointTarget`, `LogView`). ARCHITECTURE.md states
//! these as invariants; this test is where they are enforced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules its (non-test) code names as `crate::<module>`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect_rs_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(from) = top_module(&src, file) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let edges = graph.entry(from.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if modules.contains(&name) && name != from {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/log/seal.rs` → `log`, `src/wal.rs` → `wal`; `src/lib.rs` (the root) → none.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib").then_some(name)
}

/// A cycle through `start`, if there is one (depth-first search).
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let node = path.last().unwrap().clone();
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if visit(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    visit(graph, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_cycles_between_modules() {
    let graph = module_graph();
    assert!(graph.len() > 10, "the sources were found: {graph:?}");
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("module cycle {}; the graph: {graph:#?}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_checkpointer_and_storage_never_name_the_log() {
    let graph = module_graph();
    for background in ["checkpointer", "storage", "segment", "format", "io", "error", "instruments"] {
        let uses = &graph[background];
        for forbidden in ["log", "wal", "registry", "api"] {
            assert!(!uses.contains(forbidden), "{background} depends on {forbidden}: {uses:?}");
        }
    }
}
