//! The workspace's module structure: arrows between modules (a `use crate::…`, `super::…` or
//! `self::…` path, or one written inline in code) point one way. Each crate's module tree is
//! read from its `src/`; an arrow from module `a::x::…` to `a::y::…` is an arrow between the
//! siblings `x` and `y` under `a` (a module and its own descendants may name each other freely).
//! The test fails on a cycle between siblings and on an arrow against the layering written in
//! [`LAYERS`] (docs/ARCHITECTURE.md writes the same lines, and a test here holds them equal), and
//! prints each offending arrow with the line that draws it. Test code (`#[cfg(test)]` items, `tests` modules) is not
//! read: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The documented layering: for a module (`crate/path::to::module`), its children from the
/// bottom layer up. A child may name children of its own layer or of the layers below it, never
/// of a layer above; every child of a module listed here must be placed in one of its layers.
const LAYERS: &[(&str, &[&[&str]])] = &[
    ("plans", &[&["diagnostic", "duration"], &["fleet"], &["topology"], &["wire", "plan"], &["maintenance"]]),
    (
        "plans/fleet::load",
        &[&["fields"], &["decode_contention"], &["decode_key", "decode_model"], &["decode"], &["checks"]],
    ),
    ("listener", &[&["limits", "activity"], &["body"], &["service"], &["connection"]]),
    (
        "neuron",
        &[
            &["clock", "error", "metrics", "source"],
            &["config"],
            &["probe", "fence"],
            &["harness"],
            &["state"],
            &["lifecycle", "proxy"],
            &["api"],
            &["swarm"],
        ],
    ),
    (
        "cortexd",
        &[
            &["config", "metrics", "usage"],
            &["control"],
            &["cluster"],
            &["gateway"],
            &["operator"],
            &["serve"],
            &["cli"],
        ],
    ),
    ("cortexd/gateway", &[&["transport"], &["core"], &["dialects"]]),
    (
        "cortexd/gateway::core",
        &[
            &["error", "auth", "traffic", "request_metrics", "response_index", "timeline", "affinity"],
            &["admission", "overflow", "keys", "scheduler"],
            &["target", "state"],
            &["forward"],
            &["routing"],
            &["pipeline"],
        ],
    ),
    ("cortexd/gateway::dialects", &[&["chat", "fallback"], &["openai", "anthropic", "responses"]]),
];

/// The workspace's crates with a `src/` tree of modules.
const CRATES: &[(&str, &str)] = &[
    ("plans", "plans/src"),
    ("listener", "listener/src"),
    ("neuron", "neuron/src"),
    ("cortexd", "cortexd/src"),
    ("cortex-e2e", "tests/src"),
    ("bench", "bench/src"),
];

#[test]
fn arrows_between_modules_point_one_way_and_down_the_layering() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failures = String::new();
    for (name, src) in CRATES {
        let krate = Crate::read(name, &root.join(src));
        assert!(krate.modules.len() > 1 || *name == "bench", "{name}: no modules read from {src}");
        krate.check(&mut failures);
    }
    assert!(failures.is_empty(), "module structure:\n{failures}");
}

#[test]
fn architecture_md_writes_the_same_layering() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let missing: Vec<String> = LAYERS
        .iter()
        .map(|(at, layers)| layering_line(at, layers))
        .filter(|line| !doc.contains(line.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md's layering differs from tests/structure.rs LAYERS; it should have these lines:\n{}",
        missing.join("\n")
    );
}

/// One module's layering as ARCHITECTURE.md writes it: `crate/module: bottom, … ← … ← top`.
fn layering_line(at: &str, layers: &[&[&str]]) -> String {
    let layers: Vec<String> = layers.iter().map(|layer| layer.join(", ")).collect();
    format!("{at}: {}", layers.join(" ← "))
}

#[test]
fn the_layering_names_modules_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (name, src) in CRATES {
        let krate = Crate::read(name, &root.join(src));
        for (parent, layers) in layers_of(name) {
            for child in layers.iter().flat_map(|layer| layer.iter()) {
                let mut path = parent.clone();
                path.push((*child).to_owned());
                assert!(
                    krate.modules.contains_key(&path),
                    "{name}: the layering names {} which is not a module",
                    show(&path)
                );
            }
        }
    }
}

#[test]
fn the_reader_sees_grouped_uses_inline_paths_and_skips_tests() {
    let text = r#"
        //! crate::nope::in_a_comment
        use crate::{a::{b, c::D}, e};
        use super::super::f::G;
        use child::X;
        mod child;
        fn h() { let s = "crate::nope::in_a_string"; crate::i::j(); $crate::nope(); }
        #[cfg(test)]
        mod tests { use crate::nope::in_tests; }
        #[cfg(test)]
        use crate::nope::test_import;
    "#;
    let here = vec!["m".to_owned(), "n".to_owned()];
    let tokens = tokens(text);
    let paths = paths(&tokens, &here, &["child".to_owned()].into());
    let shown: Vec<String> = paths.iter().map(|(_, path)| show(path)).collect();
    assert_eq!(shown, ["a::b", "a::c::D", "e", "f::G", "m::n::child::X", "i::j"]);
}

#[test]
fn a_cycle_is_found_and_told_by_its_arrows() {
    let arrow =
        |from: &str, to: &str| Arrow { from: from.to_owned(), to: to.to_owned(), at: format!("{from}.rs:1") };
    let arrows = [arrow("a", "b"), arrow("b", "c"), arrow("c", "a"), arrow("c", "d"), arrow("d", "e")];
    let found = cycles(&arrows);
    let told: Vec<Vec<&str>> =
        found.iter().map(|cycle| cycle.iter().map(|a| a.at.as_str()).collect()).collect();
    assert_eq!(told, [["a.rs:1", "b.rs:1", "c.rs:1"]]);
    assert!(cycles(&arrows[..2]).is_empty());
}

type ModPath = Vec<String>;

/// One crate's modules: each module's file and the paths it names.
struct Crate {
    name: String,
    /// Module path → (file, its arrows: line and absolute path named).
    modules: BTreeMap<ModPath, (PathBuf, Vec<(usize, ModPath)>)>,
    /// Modules declared under `#[cfg(test)]`.
    tests: BTreeSet<ModPath>,
}

/// An arrow between two siblings under `parent`, with the line that draws it.
struct Arrow {
    from: String,
    to: String,
    at: String,
}

impl Crate {
    fn read(name: &str, src: &Path) -> Crate {
        let mut krate = Crate { name: name.to_owned(), modules: BTreeMap::new(), tests: BTreeSet::new() };
        let root = if src.join("lib.rs").is_file() { src.join("lib.rs") } else { src.join("main.rs") };
        krate.read_module(Vec::new(), &root);
        krate
    }

    fn read_module(&mut self, path: ModPath, file: &Path) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let tokens = tokens(&text);
        let children = children(&tokens);
        let names: BTreeSet<String> = children.iter().map(|(name, _)| name.clone()).collect();
        let arrows = paths(&tokens, &path, &names);
        self.modules.insert(path.clone(), (file.to_owned(), arrows));
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "main.rs" | "mod.rs") => file.parent().map(Path::to_owned),
            _ => file.parent().zip(file.file_stem()).map(|(parent, stem)| parent.join(stem)),
        };
        let Some(dir) = dir else { return };
        for (child, test) in children {
            let mut child_path = path.clone();
            child_path.push(child.clone());
            if test {
                self.tests.insert(child_path.clone());
            }
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(&child).join("mod.rs");
            let file = if flat.is_file() { flat } else { nested };
            assert!(file.is_file(), "{}: module {} has no file", self.name, show(&child_path));
            self.read_module(child_path, &file);
        }
    }

    /// The module an absolute path names: its longest prefix that is a module.
    fn module_of(&self, path: &ModPath) -> ModPath {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| self.modules.contains_key(prefix))
            .unwrap_or_default()
    }

    fn is_test(&self, path: &ModPath) -> bool {
        (1..=path.len()).any(|n| {
            let prefix = &path[..n];
            self.tests.contains(prefix) || prefix[n - 1] == "tests" || prefix[n - 1].ends_with("_tests")
        })
    }

    /// Every arrow between siblings, by their parent.
    fn arrows(&self) -> BTreeMap<ModPath, Vec<Arrow>> {
        let mut arrows: BTreeMap<ModPath, Vec<Arrow>> = BTreeMap::new();
        for (from, (file, named)) in &self.modules {
            if self.is_test(from) {
                continue;
            }
            for (line, path) in named {
                let to = self.module_of(path);
                let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
                if common == from.len() || common == to.len() {
                    continue; // a module and its own ancestors or descendants
                }
                arrows.entry(from[..common].to_vec()).or_default().push(Arrow {
                    from: from[common].clone(),
                    to: to[common].clone(),
                    at: format!("{}:{line}: {} -> {}", file.display(), show(from), show(path)),
                });
            }
        }
        arrows
    }

    fn check(&self, failures: &mut String) {
        let layering = layers_of(&self.name);
        for (parent, arrows) in self.arrows() {
            for cycle in cycles(&arrows) {
                let _ = writeln!(failures, "{}: a cycle under {}:", self.name, show(&parent));
                for arrow in cycle {
                    let _ = writeln!(failures, "    {} -> {}  ({})", arrow.from, arrow.to, arrow.at);
                }
            }
            if let Some((_, layers)) = layering.iter().find(|(p, _)| *p == parent) {
                self.check_layers(&parent, layers, &arrows, failures);
            }
        }
        for (parent, layers) in &layering {
            for (path, _) in self.modules.range(parent.clone()..) {
                if !path.starts_with(parent) {
                    break;
                }
                let placed =
                    layers.iter().any(|layer| layer.contains(&path.get(parent.len()).map_or("", |s| s)));
                if path.len() == parent.len() + 1 && !placed && !self.is_test(path) {
                    let _ = writeln!(
                        failures,
                        "{}: module {} is in no layer of {} (tests/structure.rs LAYERS and docs/ARCHITECTURE.md)",
                        self.name,
                        show(path),
                        show(parent)
                    );
                }
            }
        }
    }

    fn check_layers(&self, parent: &ModPath, layers: &[&[&str]], arrows: &[Arrow], failures: &mut String) {
        let layer = |name: &str| layers.iter().position(|layer| layer.contains(&name));
        let mut told = BTreeSet::new();
        for arrow in arrows {
            if let (Some(from), Some(to)) = (layer(&arrow.from), layer(&arrow.to))
                && to > from
                && told.insert((&arrow.from, &arrow.to))
            {
                let _ = writeln!(
                    failures,
                    "{}: under {}, {} (layer {from}) names {} (layer {to}, above it): {}",
                    self.name,
                    show(parent),
                    arrow.from,
                    arrow.to,
                    arrow.at
                );
            }
        }
    }
}

/// The layering of one crate: (parent module, layers).
fn layers_of(krate: &str) -> Vec<(ModPath, &'static [&'static [&'static str]])> {
    LAYERS
        .iter()
        .filter_map(|(at, layers)| {
            let (name, path) = at.split_once('/').unwrap_or((at, ""));
            let path = path.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
            (name == krate).then_some((path, *layers))
        })
        .collect()
}

/// The cycles among siblings: for each strongly connected set of two or more, one cycle
/// through it, as the arrows (with their first line) that close it.
fn cycles(arrows: &[Arrow]) -> Vec<Vec<&Arrow>> {
    let mut edges: BTreeMap<&str, BTreeMap<&str, &Arrow>> = BTreeMap::new();
    for arrow in arrows {
        edges.entry(&arrow.from).or_default().entry(&arrow.to).or_insert(arrow);
    }
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(node) = stack.pop() {
            for next in edges.get(node.as_str()).into_iter().flat_map(|e| e.keys()) {
                if seen.insert((*next).to_owned()) {
                    stack.push((*next).to_owned());
                }
            }
        }
        seen
    };
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut found = Vec::new();
    for &start in edges.keys() {
        if done.contains(start) || !reach(start).contains(start) {
            continue;
        }
        // Walk back to `start` by a shortest path (breadth first) and report its arrows.
        let mut previous: BTreeMap<&str, &Arrow> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        'search: while let Some(node) = queue.pop_front() {
            for (next, arrow) in edges.get(node).into_iter().flatten() {
                if *next == start {
                    previous.insert(start, arrow);
                    break 'search;
                }
                if !previous.contains_key(next) {
                    previous.insert(next, arrow);
                    queue.push_back(next);
                }
            }
        }
        let mut cycle = Vec::new();
        let mut node = start;
        while let Some(arrow) = previous.get(node) {
            cycle.push(*arrow);
            done.insert(node.to_owned());
            node = &arrow.from;
            if node == start {
                break;
            }
        }
        cycle.reverse();
        found.push(cycle);
    }
    found
}

fn show(path: &[String]) -> String {
    if path.is_empty() { "crate".to_owned() } else { path.join("::") }
}

/// A token of Rust source with its line: identifiers, `::` and single punctuation; comments,
/// strings and character literals dropped.
type Token = (usize, String);

fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    let newlines = |from: usize, to: usize| chars[from..to].iter().filter(|c| **c == '\n').count();
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let start = i;
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            i = string_end(&chars, i + 1, 0);
        } else if c == '\'' {
            i = if next == Some('\\') {
                (i + 2..chars.len()).find(|&j| chars[j] == '\'').map_or(chars.len(), |j| j + 1)
            } else if chars.get(i + 2) == Some(&'\'') {
                i + 3
            } else {
                i + 1 // a lifetime
            };
        } else if c.is_alphanumeric() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let hashes = chars[i..].iter().take_while(|c| **c == '#').count();
            if matches!(word.as_str(), "r" | "br" | "cr" | "b" | "c") && chars.get(i + hashes) == Some(&'"') {
                i = string_end(&chars, i + hashes + 1, if word.contains('r') { hashes } else { usize::MAX });
            } else {
                tokens.push((line, word));
            }
        } else if c == ':' && next == Some(':') {
            tokens.push((line, "::".to_owned()));
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push((line, c.to_string()));
            }
            i += 1;
        }
        line += newlines(start, i.min(chars.len()));
    }
    tokens
}

/// The index after a string literal's closing quote. `hashes`: a raw string's number of `#`
/// (no escapes), or `usize::MAX` for a string with escapes.
fn string_end(chars: &[char], mut i: usize, hashes: usize) -> usize {
    let raw = hashes != usize::MAX;
    while i < chars.len() {
        if !raw && chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i] == '"' {
            let closing = if raw { hashes } else { 0 };
            if chars[i + 1..].iter().take(closing).filter(|c| **c == '#').count() == closing {
                return i + 1 + closing;
            }
        }
        i += 1;
    }
    chars.len()
}

/// The modules a file declares (`mod x;`), and whether each is test-only (`#[cfg(test)]`).
fn children(tokens: &[Token]) -> Vec<(String, bool)> {
    let mut children = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let test = is_cfg_test(tokens, i);
        if test {
            i += 7;
        }
        let j = skip_attributes_and_visibility(tokens, i);
        if word(tokens, j) == "mod" && word(tokens, j + 2) == ";" {
            children.push((word(tokens, j + 1).to_owned(), test));
            i = j + 3;
        } else if test {
            i = item_end(tokens, j);
        } else {
            i += 1;
        }
    }
    children
}

fn word(tokens: &[Token], i: usize) -> &str {
    tokens.get(i).map_or("", |(_, w)| w.as_str())
}

/// `# [ cfg ( test ) ]` at `i`.
fn is_cfg_test(tokens: &[Token], i: usize) -> bool {
    ["#", "[", "cfg", "(", "test", ")", "]"].iter().enumerate().all(|(k, w)| word(tokens, i + k) == *w)
}

fn skip_attributes_and_visibility(tokens: &[Token], mut i: usize) -> usize {
    loop {
        if word(tokens, i) == "#" && word(tokens, i + 1) == "[" {
            i = matching(tokens, i + 1) + 1;
        } else if word(tokens, i) == "pub" {
            i += 1;
            if word(tokens, i) == "(" {
                i = matching(tokens, i) + 1;
            }
        } else {
            return i;
        }
    }
}

/// The index of the bracket closing the one at `i`.
fn matching(tokens: &[Token], i: usize) -> usize {
    let mut depth = 0usize;
    for (j, (_, w)) in tokens.iter().enumerate().skip(i) {
        match w.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// The index after the item starting at `i`: its `;`, or the block that ends it.
fn item_end(tokens: &[Token], i: usize) -> usize {
    let ends_with_semicolon = matches!(word(tokens, i), "use" | "const" | "static" | "type" | "let");
    let mut j = i;
    while j < tokens.len() {
        match word(tokens, j) {
            ";" => return j + 1,
            "(" | "[" => j = matching(tokens, j) + 1,
            "{" => {
                j = matching(tokens, j) + 1;
                if !ends_with_semicolon {
                    return j;
                }
            }
            _ => j += 1,
        }
    }
    j
}

/// The absolute paths a file names (with their lines), outside its test items: in `use` items
/// (trees expanded; a path may start at `crate`, `super`, `self` or a child module) and inline
/// in code (from `crate`, `super` or `self`).
fn paths(tokens: &[Token], here: &ModPath, children: &BTreeSet<String>) -> Vec<(usize, ModPath)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if is_cfg_test(tokens, i) {
            i = item_end(tokens, skip_attributes_and_visibility(tokens, i + 7));
            continue;
        }
        let w = word(tokens, i);
        if w == "use" {
            let end = item_end(tokens, i);
            let mut trees = Vec::new();
            use_tree(tokens, i + 1, end - 1, Vec::new(), &mut trees);
            for (line, path) in trees {
                if let Some(absolute) = absolute(&path, here, children, true) {
                    found.push((line, absolute));
                }
            }
            i = end;
        } else if matches!(w, "crate" | "super" | "self")
            && word(tokens, i + 1) == "::"
            && i.checked_sub(1).is_none_or(|p| word(tokens, p) != "$")
            && (i == 0 || word(tokens, i - 1) != "::")
        {
            let line = tokens[i].0;
            let mut path = vec![w.to_owned()];
            let mut j = i + 1;
            while word(tokens, j) == "::" && is_ident(word(tokens, j + 1)) {
                path.push(word(tokens, j + 1).to_owned());
                j += 2;
            }
            if let Some(absolute) = absolute(&path, here, children, false) {
                found.push((line, absolute));
            }
            i = j;
        } else {
            i += 1;
        }
    }
    found
}

fn is_ident(w: &str) -> bool {
    w.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Expand the use tree in `tokens[from..to]` under `prefix` into paths.
fn use_tree(
    tokens: &[Token],
    from: usize,
    to: usize,
    prefix: Vec<String>,
    out: &mut Vec<(usize, Vec<String>)>,
) {
    let mut path = prefix.clone();
    let mut i = from;
    if word(tokens, i) == "::" {
        i += 1; // `use ::extern_crate`
        path.push("::".to_owned());
    }
    while i < to {
        let w = word(tokens, i);
        if w == "{" {
            let close = matching(tokens, i);
            let mut start = i + 1;
            let mut depth = 0usize;
            for j in i + 1..=close {
                match word(tokens, j) {
                    "{" => depth += 1,
                    "}" if depth > 0 => depth -= 1,
                    "," | "}" if depth == 0 => {
                        if start < j {
                            use_tree(tokens, start, j, path.clone(), out);
                        }
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        if w == "as" || w == "*" {
            break;
        }
        if w != "::" {
            if w == "self" && !path.is_empty() {
                // `a::{self}` names `a`
            } else {
                path.push(w.to_owned());
            }
        }
        i += 1;
    }
    if path.len() > prefix.len() || (path == prefix && !path.is_empty()) {
        out.push((tokens.get(from).map_or(0, |t| t.0), path));
    }
}

/// A path from module `here` made absolute (from the crate root), or `None` for another
/// crate's path. In a `use`, a path may also start at one of `here`'s child modules.
fn absolute(path: &[String], here: &ModPath, children: &BTreeSet<String>, in_use: bool) -> Option<ModPath> {
    let mut segments = path.iter();
    let mut absolute = match segments.next().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => here.clone(),
        Some("super") => here[..here.len().checked_sub(1)?].to_vec(),
        Some(child) if in_use && children.contains(child) => {
            let mut absolute = here.clone();
            absolute.push(child.to_owned());
            absolute
        }
        _ => return None,
    };
    let mut rest = segments.peekable();
    while rest.peek().is_some_and(|s| *s == "super") {
        rest.next();
        absolute.pop()?;
    }
    absolute.extend(rest.cloned());
    Some(absolute)
}
