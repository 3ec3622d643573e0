//! docs/ARCHITECTURE.md says that dependencies between the modules of a
//! crate point downwards. This test reads every `crate::` and `super::` path
//! in the sources of each crate, builds the graph of which module uses
//! which, and fails on a circle, naming it. A module may use its own
//! descendants and ancestors (a folder's `mod.rs` and its files); any other
//! use counts between the two siblings under the deepest common ancestor,
//! so modules inside one folder are held to the same rule. Test-only
//! `tests.rs` files are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Module path of a source file relative to `src/`: `agents/mod.rs` is
/// `agents`, `tls/acme.rs` is `tls::acme`; `lib.rs`, `main.rs` and `bin/*`
/// are the root (empty path).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().map(String::as_str) == Some("bin") {
        return Vec::new();
    }
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            // Test-only files may use anything to set up a case.
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The source without comments and string literals, so that a path in a
/// doc comment or a message is not taken for a use.
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let bytes = src.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if src[i..].starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if src[i..].starts_with("/*") {
            i += src[i..].find("*/").map_or(src.len() - i, |e| e + 2);
        } else if bytes[i] == b'"' && !src[..i].ends_with('\'') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every module path named after `prefix` (`crate::` or `super::`),
/// following `{a, b::c}` groups one level deep.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let item = item.trim();
                let head = ident_at(item);
                if !head.is_empty() {
                    let mut path = vec![head];
                    if let Some(more) = item[head.len()..].strip_prefix("::") {
                        path.push(ident_at(more));
                    }
                    found.push(path);
                }
            }
        } else {
            let mut path = Vec::new();
            let mut s = rest;
            loop {
                let id = ident_at(s);
                if id.is_empty() {
                    break;
                }
                path.push(id);
                match s[id.len()..].strip_prefix("::") {
                    Some(next) => s = next,
                    None => break,
                }
            }
            found.push(path);
        }
    }
    found
}

/// The longest module of the crate that `path` starts with.
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

fn edges(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let by_file: Vec<(Vec<String>, String)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            (module_of(f.strip_prefix(src).unwrap()), code_only(&text))
        })
        .collect();
    let modules: BTreeSet<Vec<String>> = by_file.iter().map(|(m, _)| m.clone()).collect();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, code) in &by_file {
        let mut targets = Vec::new();
        for path in paths_after(code, "crate::") {
            targets.push(path.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        // `super::` from a file's module is its parent; from a `mod.rs` it
        // is the folder's parent too (the module path already names the folder).
        for path in paths_after(code, "super::") {
            let mut full: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
            full.extend(path.iter().map(|s| s.to_string()));
            targets.push(full);
        }
        for target in targets {
            let Some(to) = resolve(&modules, &target) else {
                continue;
            };
            if to.starts_with(module) || module.starts_with(&to) {
                continue;
            }
            // The edge counts between the two siblings under the deepest
            // common ancestor: `c` using `a::inner` is `c` using `a`.
            let common = module.iter().zip(&to).take_while(|(a, b)| a == b).count();
            graph
                .entry(module[..=common].to_vec())
                .or_default()
                .insert(to[..=common].to_vec());
        }
    }
    graph
}

/// Circles of the graph: its strongly connected components with more than
/// one module (Tarjan).
fn circles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'g Vec<String>, usize>,
        low: BTreeMap<&'g Vec<String>, usize>,
        stack: Vec<&'g Vec<String>>,
        on_stack: BTreeSet<&'g Vec<String>>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g Vec<String>) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.join("::"));
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

/// Circles that exist today and are being taken apart. The list may only
/// shrink: a new circle fails, and so does a listed one that is gone (then
/// delete its line).
const KNOWN_CIRCLES: &[(&str, &[&str])] = &[("api", &["agents", "experiments", "kpi", "tasks"])];
fn assert_no_new_circles(krate: &str) {
    let graph = edges(&workspace().join(krate).join("src"));
    assert!(!graph.is_empty(), "{krate}: no module uses another");
    let found = circles(&graph);
    let known: Vec<Vec<String>> = KNOWN_CIRCLES
        .iter()
        .filter(|(k, _)| *k == krate)
        .map(|(_, c)| c.iter().map(|m| m.to_string()).collect())
        .collect();
    let new: Vec<_> = found.iter().filter(|c| !known.contains(c)).collect();
    assert!(
        new.is_empty(),
        "{krate}: modules that use each other in a circle (move what they share into a leaf module): {new:#?}"
    );
    let gone: Vec<_> = known.iter().filter(|c| !found.contains(c)).collect();
    assert!(
        gone.is_empty(),
        "{krate}: these circles are gone; remove them from KNOWN_CIRCLES: {gone:#?}"
    );
}

#[test]
fn supervisor_modules_have_no_new_import_circles() {
    assert_no_new_circles("supervisor");
}

#[test]
fn api_modules_have_no_new_import_circles() {
    assert_no_new_circles("api");
}

#[test]
fn a_planted_circle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c;").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod inner; use super::b::X;").unwrap();
    std::fs::write(src.join("a/inner.rs"), "use super::Y; // crate::c").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::{c::Z, d};").unwrap();
    std::fs::write(
        src.join("c.rs"),
        "fn f() { crate::a::inner::g(\"crate::b\") }",
    )
    .unwrap();
    let found = circles(&edges(src));
    assert_eq!(found, vec![vec!["a".to_string(), "b".into(), "c".into()]]);
}
