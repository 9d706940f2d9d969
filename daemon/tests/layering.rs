//! The daemon's modules form layers, not a circle (see the comment at the
//! top of `daemon/src/lib.rs`): the top-level modules of `daemon/src` and
//! the `crate::…` paths between them make a graph that must have no cycle,
//! and `config` names no module above the leaves.
//!
//! Read from the source text, not from a compiler: every `crate::x…` path
//! (in `use` lines, grouped ones like `use crate::{a, b::c}` included, and
//! in code) counts, in every file, `#[cfg(test)]` modules included;
//! comments, doc comments and string literals do not. `super::` paths stay
//! inside their own top-level module and are not followed. No build, no
//! root: this runs in the `check` profile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules `config` may name: the leaves below it. Everything else
/// (every feature, the supervisor, the CLIs) sits above it.
const BELOW_CONFIG: [&str; 10] = [
    "addr",
    "broker_user",
    "command",
    "files",
    "httpd",
    "logging",
    "nkey",
    "notify",
    "secret",
    "upgrade",
];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Source text with comments, string and character literals blanked out
/// (replaced by spaces), so a path in a doc comment or a message is not an
/// import. Lifetimes (`'a`) are kept as code.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        out.push_str("  ");
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        out.push_str("  ");
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        blank(&mut out, c[i]);
                        i += 1;
                    }
                }
            }
            'r' if (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
                && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_')) =>
            {
                // A raw string: r"…", r#"…"#; `r#ident` is code.
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push(c[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                for ch in &c[i..j.min(c.len())] {
                    blank(&mut out, *ch);
                }
                i = j;
            }
            '"' => {
                blank(&mut out, c[i]);
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        blank(&mut out, c[i]);
                        i += 1;
                    }
                    if i < c.len() {
                        blank(&mut out, c[i]);
                        i += 1;
                    }
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            '\'' => {
                // A character literal ('x', '\n', '\u{1F600}') or a lifetime.
                let end = if c.get(i + 1) == Some(&'\\') {
                    (i + 2..c.len()).find(|&k| c[k] == '\'')
                } else if c.get(i + 2) == Some(&'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match end {
                    Some(e) => {
                        for ch in &c[i..=e] {
                            blank(&mut out, *ch);
                        }
                        i = e + 1;
                    }
                    None => {
                        out.push(c[i]);
                        i += 1;
                    }
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

fn ident_at(c: &[char], mut i: usize) -> (String, usize) {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
        i += 1;
    }
    (c[start..i].iter().collect(), i)
}

/// The first segment of every `crate::` path in `code` (already through
/// [`code_only`]); for `crate::{a, b::c, d::{e}}`, each of `a`, `b`, `d`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = BTreeSet::new();
    let word = |k: usize| k < c.len() && (c[k].is_alphanumeric() || c[k] == '_' || c[k] == '$');
    let mut i = 0;
    let needle: Vec<char> = "crate::".chars().collect();
    while let Some(off) = c[i..]
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
    {
        let at = i + off;
        i = at + 7;
        if at > 0 && word(at - 1) {
            continue; // `$crate::`, `my_crate::`
        }
        let mut j = i;
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        if c.get(j) == Some(&'{') {
            // A group: the first identifier of each element at depth 1.
            let mut depth = 1;
            let mut k = j + 1;
            let mut expect = true;
            while k < c.len() && depth > 0 {
                match c[k] {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => expect = true,
                    ch if expect && depth == 1 && (ch.is_alphanumeric() || ch == '_') => {
                        let (name, end) = ident_at(&c, k);
                        out.insert(name);
                        expect = false;
                        k = end;
                        continue;
                    }
                    _ => {}
                }
                k += 1;
            }
            i = k;
        } else {
            let (name, end) = ident_at(&c, j);
            if !name.is_empty() {
                out.insert(name);
            }
            i = end;
        }
        if i >= c.len() {
            break;
        }
    }
    out
}

/// The top-level modules `lib.rs` declares.
fn declared(lib: &str) -> BTreeSet<String> {
    code_only(lib)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("pub ").unwrap_or(l);
            let rest = rest.strip_prefix("mod ")?;
            rest.strip_suffix(';').map(|n| n.trim().to_owned())
        })
        .collect()
}

/// The module graph from `(path relative to src, text)` pairs: each file
/// belongs to the top-level module its path starts with; edges go to the
/// declared modules it names through `crate::`, never to itself.
fn graph(modules: &BTreeSet<String>, files: &[(String, String)]) -> Graph {
    let mut g: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (rel, text) in files {
        let first = rel.split('/').next().unwrap_or(rel);
        let top = first.strip_suffix(".rs").unwrap_or(first);
        if !modules.contains(top) {
            continue; // lib.rs, main.rs
        }
        for to in crate_paths(&code_only(text)) {
            if to != top && modules.contains(&to) {
                g.entry(top.to_owned()).or_default().insert(to);
            }
        }
    }
    g
}

/// A cycle in `g`, as the modules along it with the first repeated at the
/// end (`a → b → a`), or `None`.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        n: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_owned(), Mark::Open);
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            match marks.get(m.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = visit(g, m, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            let mut stack = Vec::new();
            if let Some(c) = visit(g, n, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn daemon_graph() -> Graph {
    let root = src();
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("lib.rs");
    let modules = declared(&lib);
    assert!(
        modules.len() > 10,
        "lib.rs declares the modules: {modules:?}"
    );
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    paths.sort();
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).expect("under src");
            let rel = rel.to_string_lossy().replace('\\', "/");
            (rel, std::fs::read_to_string(p).expect("read"))
        })
        .collect();
    graph(&modules, &files)
}

fn show(g: &Graph) -> String {
    g.iter()
        .filter(|(_, to)| !to.is_empty())
        .map(|(m, to)| {
            format!(
                "  {m} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_daemons_modules_form_no_cycle() {
    let g = daemon_graph();
    // The graph is really read: the supervisor names the features it runs.
    assert!(g["supervisor"].contains("config"), "{}", show(&g));
    assert!(g["run"].contains("supervisor"), "{}", show(&g));
    if let Some(c) = cycle(&g) {
        panic!(
            "the modules of daemon/src import each other in a circle: {}\n\
             (keep the layers of daemon/src/lib.rs: a module names only modules below it)\n{}",
            c.join(" -> "),
            show(&g)
        );
    }
}

#[test]
fn config_names_no_feature() {
    let g = daemon_graph();
    let above: Vec<&String> = g["config"]
        .iter()
        .filter(|m| !BELOW_CONFIG.contains(&m.as_str()))
        .collect();
    assert!(
        above.is_empty(),
        "config names {above:?}: config owns each feature's settings as plain data and \
         the features depend on it, never the reverse (daemon/src/lib.rs)"
    );
}

fn synthetic(files: &[(&str, &str)]) -> Graph {
    let modules: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
        .collect();
    graph(&modules, &files)
}

#[test]
fn a_cycle_through_grouped_and_inline_paths_is_found_and_named() {
    let g = synthetic(&[
        ("a.rs", "use crate::b::Thing;\n"),
        // A grouped use over lines, with a nested group.
        (
            "b/mod.rs",
            "use crate::{\n    d,\n    c::{self, x::Y},\n};\n",
        ),
        // A path in code, in a test module.
        (
            "c/inner.rs",
            "#[cfg(test)]\nmod tests {\n    fn f() { crate::a::go(); }\n}\n",
        ),
    ]);
    assert_eq!(g["b"], ["c", "d"].map(String::from).into());
    let c = cycle(&g).expect("a -> b -> c -> a is a cycle");
    assert_eq!(c, ["a", "b", "c", "a"].map(String::from));
}

#[test]
fn comments_strings_and_other_crates_are_not_imports() {
    let g = synthetic(&[(
        "a.rs",
        "//! See [`crate::b`].\n\
         /* crate::c */\n\
         const S: &str = \"crate::d\";\n\
         const R: &str = r#\"crate::d \"quoted\"\"#;\n\
         fn f<'x>(c: char) -> bool { c == '\"' && $crate::b::x() && other_crate::c::y() }\n\
         use crate::a::itself;\n",
    )]);
    assert!(g["a"].is_empty(), "{:?}", g["a"]);
    assert_eq!(cycle(&g), None);
}

#[test]
fn a_layered_graph_has_no_cycle() {
    let g = synthetic(&[
        ("a.rs", "use crate::{b, c};"),
        ("b.rs", "use crate::c::X; fn f() { crate::d::g() }"),
        ("c.rs", "use crate::d;"),
    ]);
    assert_eq!(g["a"], ["b", "c"].map(String::from).into());
    assert_eq!(cycle(&g), None);
}

#[test]
fn lib_rs_declarations_are_the_modules() {
    let m = declared("//! mod fake;\npub mod a;\nmod b;\n#[cfg(test)]\nmod c;\nfn mod_x() {}\n");
    assert_eq!(m, ["a", "b", "c"].map(String::from).into());
}
