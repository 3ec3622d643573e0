//! docs/ARCHITECTURE.md is a code map, and it says that dependencies
//! between the modules of a crate point downwards. Two checks keep it true.
//!
//! Import circles: this test reads every `crate::` and `super::` path in
//! the sources of each crate, builds the graph of which module uses which,
//! and fails on a circle, naming it. A module may use its own descendants
//! and ancestors (a folder's `mod.rs` and its files); any other use counts
//! between the two siblings under the deepest common ancestor, so modules
//! inside one folder are held to the same rule. Test-only `tests.rs` files
//! are left out.
//!
//! The code map itself: under `## Code map`, each crate has a section
//! whose `### ` heading starts with its folder in backticks. Every Rust
//! file of the crate must be named in its section, by its path relative to
//! `src/` (`tls/renewal.rs`; a folder's `mod.rs` as the folder, `tls/`), or
//! relative to the crate's folder when it is outside `src/`
//! (`tests/acme.rs`); and every `*.rs` or folder name written there must
//! exist. The test names what is missing and what is stale.

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
const KNOWN_CIRCLES: &[(&str, &[&str])] = &[];
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

/// The workspace's member crates, from its Cargo.toml.
fn members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let list = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members"))
        .expect("a members list in the workspace's Cargo.toml");
    let inner = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
    inner
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// A file or folder name as the code map writes it: lower-case path
/// segments ending in `.rs`, or in `/` for a folder. Type and function
/// names, URLs and placeholders such as `<run_dir>/` are not names.
fn is_name(word: &str) -> bool {
    (word.ends_with(".rs") || word.ends_with('/'))
        && !word.starts_with(['/', '.'])
        && !word.contains("..")
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-./".contains(c))
}

/// The crate sections of the code map: the folder each `### ` heading
/// starts with (`api/` gives `api`), and the names written under it.
/// Headings that do not start with a folder (`### Nix: ...`) are not
/// crates and are not read.
fn code_map_sections(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    let mut in_map = false;
    let mut in_fence = false;
    let mut krate: Option<String> = None;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            in_map = title.trim() == "Code map";
            krate = None;
        } else if let Some(heading) = line.strip_prefix("### ").filter(|_| in_map) {
            let first = heading.split('`').nth(1).unwrap_or_default();
            krate = first.strip_suffix('/').map(str::to_string);
        } else if let Some(k) = &krate {
            let text = texts.entry(k.clone()).or_default();
            text.push_str(line);
            text.push('\n');
        }
    }
    texts
        .into_iter()
        .map(|(krate, text)| {
            // Odd pieces between backticks are code spans.
            let names = text.split('`').skip(1).step_by(2).filter(|w| is_name(w));
            (krate, names.map(str::to_string).collect())
        })
        .collect()
}

/// Every Rust file of a crate, relative to its folder; build output and
/// hidden folders are left out.
fn crate_files(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir.join(rel)) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = rel.join(&*name);
        if entry.file_type().unwrap().is_dir() {
            if name != "target" && !name.starts_with('.') {
                crate_files(dir, &path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// What the code map of `doc` gets wrong about the crates `members` of the
/// workspace at `root`: files it does not name, names that do not exist,
/// crates without a section. Empty when it is true.
fn code_map_problems(root: &Path, doc: &str, members: &[String]) -> Vec<String> {
    let sections = code_map_sections(doc);
    let mut problems = Vec::new();
    for krate in members {
        if !sections.contains_key(krate) {
            problems.push(format!(
                "crate `{krate}` has no section in the code map: add one headed ### `{krate}/`"
            ));
        }
    }
    for (krate, names) in &sections {
        let dir = root.join(krate);
        if !dir.join("Cargo.toml").is_file() {
            problems.push(format!(
                "the code map has a section `{krate}/`, but {krate}/ is no crate of the workspace"
            ));
            continue;
        }
        let mut files = Vec::new();
        crate_files(&dir, Path::new(""), &mut files);
        files.sort();
        for file in files {
            let rel = file.to_string_lossy().into_owned();
            let key = rel.strip_prefix("src/").unwrap_or(&rel);
            let folder = key.strip_suffix("mod.rs").filter(|f| f.ends_with('/'));
            if !names.contains(key) && !folder.is_some_and(|f| names.contains(f)) {
                problems.push(format!(
                    "{krate}/{rel} is not in the code map: name `{}` in the `{krate}/` section, \
                     with what it holds and its invariant",
                    folder.unwrap_or(key)
                ));
            }
        }
        for name in names {
            let exists = |base: &Path| {
                let path = base.join(name);
                if name.ends_with('/') {
                    path.is_dir()
                } else {
                    path.is_file()
                }
            };
            if !exists(&dir.join("src")) && !exists(&dir) {
                problems.push(format!(
                    "the `{krate}/` section of the code map names `{name}`, but neither \
                     {krate}/src/{name} nor {krate}/{name} exists: rename or remove it"
                ));
            }
        }
    }
    problems
}

#[test]
fn the_code_map_names_every_rust_file_and_nothing_that_is_gone() {
    let root = workspace();
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let problems = code_map_problems(&root, &doc, &members(&root));
    assert!(
        problems.is_empty(),
        "docs/ARCHITECTURE.md's code map is out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_planted_missing_file_and_a_stale_name_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for file in [
        "a/src/lib.rs",
        "a/src/named.rs",
        "a/src/planted.rs",
        "a/src/folder/mod.rs",
        "a/src/folder/inner.rs",
        "a/tests/black_box.rs",
        "b/src/main.rs",
    ] {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
    }
    for krate in ["a", "b"] {
        std::fs::write(root.join(krate).join("Cargo.toml"), "").unwrap();
    }
    let doc = "\
# Architecture
## Bird's-eye view
`outside.rs` is not in the code map.
## Code map
### `a/` — crate `a`
`lib.rs` and `named.rs`; `folder/` with
`folder/inner.rs`; `tests/black_box.rs`. `gone.rs` and `old/` are stale,
`<run_dir>/`, `Config` and `crate::x` are no names.
```text
`fenced.rs` is not read
```
### Nix: `flake.nix`
`not_a_crate.rs` is not read.
## Cross-cutting concerns
`later.rs` is not read.
";
    let problems = code_map_problems(root, doc, &["a".to_string(), "b".to_string()]);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems[0].starts_with("crate `b` has no section"),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with("a/src/planted.rs is not in the code map"),
        "{problems:#?}"
    );
    assert!(problems[2].contains("names `gone.rs`"), "{problems:#?}");
    assert!(problems[3].contains("names `old/`"), "{problems:#?}");
}
