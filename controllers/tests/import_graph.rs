//! The modules of `controllers/src` import one another without a cycle: each
//! module's `crate::` and `super::` paths (outside tests and comments) name
//! the modules it depends on, and that graph has no strongly connected
//! component of more than one module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && !path.to_string_lossy().ends_with("_tests.rs")
        {
            out.push(path);
        }
    }
}

/// `tenant/apply.rs` is `[tenant, apply]`, `tenant/mod.rs` is `[tenant]`, `lib.rs` is `[]`.
fn module_of(root: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(root).expect("under the root");
    let mut parts: Module = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a file that is compiled outside tests, without comments.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
    before_tests
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths after `crate::` and `super::` in `code`, brace groups expanded
/// one level (`super::{a, b::C}` gives `a` and `b::C`).
fn paths(code: &str, anchor: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices(anchor) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + anchor.len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':' || *c == '{')
            .collect();
        let path = path.trim_end_matches(':');
        if let Some(prefix) = path.strip_suffix('{').map(|p| p.trim_end_matches(':')) {
            let group = rest[path.len()..].split('}').next().unwrap_or_default();
            for item in group.split(',') {
                let item = item.trim().trim_start_matches('{');
                let mut parts: Vec<String> = prefix
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                parts.extend(
                    item.split("::")
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty() && s != "self"),
                );
                found.push(parts);
            }
        } else {
            found.push(path.split("::").map(str::to_string).collect());
        }
    }
    found
}

/// The longest prefix of `path` that is a module.
fn resolve(modules: &BTreeSet<Module>, path: &[String]) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|candidate| modules.contains(candidate))
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn the_modules_import_one_another_without_a_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&root, f)).collect();
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        let me = module_of(&root, file);
        let text = std::fs::read_to_string(file).expect("read a source file");
        let code = code(&text);
        let parent: Module = me[..me.len().saturating_sub(1)].to_vec();
        let mut edges = BTreeSet::new();
        for (anchor, base) in [("crate::", Vec::new()), ("super::", parent)] {
            for path in paths(&code, anchor) {
                let full: Vec<String> = base.iter().cloned().chain(path).collect();
                if let Some(target) = resolve(&modules, &full)
                    && target != me
                {
                    edges.insert(target);
                }
            }
        }
        graph.insert(me, edges);
    }
    assert!(graph.len() > 40, "too few modules read: {}", graph.len());
    assert!(
        graph
            .get(&vec!["tenant".to_string(), "apply".to_string()])
            .is_some_and(|e| e.contains(&vec!["apply".to_string()])),
        "the reader misses tenant/apply.rs's import of crate::apply"
    );
    let found: Vec<Vec<String>> = cycles(&graph)
        .into_iter()
        .map(|c| c.iter().map(|m| m.join("/")).collect())
        .collect();
    assert!(
        found.is_empty(),
        "modules that import one another: {found:?}"
    );
}
