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
//!
//! The same reading checks that library code returns typed errors: no
//! `Result<…, String>` in daemon/src outside `main.rs` and test code.
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

// ---------------------------------------------------------------------
// Errors are typed: no `Result<…, String>` in the library.
//
// Library code returns `thiserror` kinds a caller can branch on (see
// /work/shared/STYLE.md, "Errors"); a `String` error says nothing but
// words. The binary's edge (`main.rs`) and test code may use what they
// like.

/// The source with every item that follows `#[cfg(test)]` blanked out
/// (newlines kept, so line numbers stay), and the names of out-of-line
/// modules declared under `#[cfg(test)]` (`#[cfg(test)] mod tests;`).
fn without_test_items(code: &str) -> (String, Vec<String>) {
    let mut c: Vec<char> = code.chars().collect();
    let attr: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut test_mods = Vec::new();
    let mut i = 0;
    while let Some(off) = c[i..]
        .windows(attr.len())
        .position(|w| w == attr.as_slice())
    {
        let start = i + off;
        let mut k = start + attr.len();
        // The item runs to its first `;` or to the `}` that closes its
        // first `{`, whichever comes first.
        let mut depth = 0usize;
        while k < c.len() {
            match c[k] {
                '{' => depth += 1,
                '(' | '[' => depth += 1,
                ')' | ']' => depth = depth.saturating_sub(1),
                '}' if depth > 0 => {
                    depth -= 1;
                    if depth == 0 {
                        k += 1;
                        break;
                    }
                }
                // The end of the enclosing block: a field or an arm.
                '}' => break,
                ',' if depth == 0 => {
                    k += 1;
                    break;
                }
                ';' if depth == 0 => {
                    k += 1;
                    break;
                }
                _ => {}
            }
            k += 1;
        }
        let k = k.min(c.len());
        let item: String = c[start + attr.len()..k].iter().collect();
        let words: Vec<&str> = item.split_whitespace().collect();
        if let [.., "mod", name] = words.as_slice()
            && let Some(name) = name.strip_suffix(';')
        {
            test_mods.push(name.to_owned());
        }
        for ch in &mut c[start..k] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = k;
    }
    (c.into_iter().collect(), test_mods)
}

/// Every `Result<…, String>` in `code` (already through [`code_only`]):
/// the line it starts on and the type as written (on one line). Nested
/// generics (`Result<Vec<(A, B)>, String>`) and `->` inside them count;
/// a one-argument alias (`io::Result<String>`) does not.
fn string_errors(code: &str) -> Vec<(usize, String)> {
    let c: Vec<char> = code.chars().collect();
    let word = |k: usize| c[k].is_alphanumeric() || c[k] == '_';
    let needle: Vec<char> = "Result".chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = c[i..]
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
    {
        let at = i + off;
        i = at + needle.len();
        if (at > 0 && word(at - 1)) || (i < c.len() && word(i)) {
            continue; // `MyResult`, `Results`
        }
        let mut j = i;
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        // `Result::<A, B>` in an expression names the type too.
        if c.get(j) == Some(&':') && c.get(j + 1) == Some(&':') {
            j += 2;
        }
        if c.get(j) != Some(&'<') {
            continue;
        }
        let mut depth = 1usize;
        let mut k = j + 1;
        let mut commas = Vec::new();
        while k < c.len() && depth > 0 {
            match c[k] {
                '<' | '(' | '[' => depth += 1,
                '>' if c[k - 1] == '-' => {} // `Fn() -> T`
                '>' | ')' | ']' => depth -= 1,
                ',' if depth == 1 => commas.push(k),
                _ => {}
            }
            k += 1;
        }
        if depth != 0 {
            continue;
        }
        // The arguments as written, without spaces; a trailing comma
        // leaves an empty last one.
        let mut bounds = vec![j];
        bounds.extend(&commas);
        bounds.push(k - 1);
        let mut args: Vec<String> = bounds
            .windows(2)
            .map(|w| {
                c[w[0] + 1..w[1]]
                    .iter()
                    .filter(|ch| !ch.is_whitespace())
                    .collect()
            })
            .collect();
        if args.last().is_some_and(String::is_empty) {
            args.pop();
        }
        if args.len() < 2 {
            continue;
        }
        let err = args.last().map_or("", String::as_str);
        if matches!(
            err,
            "String" | "std::string::String" | "alloc::string::String"
        ) {
            let line = c[..at].iter().filter(|&&ch| ch == '\n').count() + 1;
            let ty: String = c[at..k].iter().collect();
            out.push((line, ty.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
        i = at + needle.len();
    }
    out
}

/// `Result<…, String>` in daemon/src outside `main.rs` and test code, as
/// `(path relative to src, line, type)`.
fn daemon_string_errors() -> Vec<(String, usize, String)> {
    let root = src();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    paths.sort();
    let rel = |p: &Path| {
        p.strip_prefix(&root)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/")
    };
    // Out-of-line test modules: `dir/name.rs` and everything under
    // `dir/name/`, where `dir` is the declaring file's module directory.
    let mut test_roots = Vec::new();
    let mut found = Vec::new();
    let mut texts = Vec::new();
    for p in &paths {
        let r = rel(p);
        let text = std::fs::read_to_string(p).expect("read");
        let (code, mods) = without_test_items(&code_only(&text));
        let dir = match r.rsplit_once('/') {
            Some((d, "mod.rs")) => format!("{d}/"),
            Some((d, f)) => format!("{d}/{}/", f.trim_end_matches(".rs")),
            None if r == "lib.rs" || r == "main.rs" => String::new(),
            None => format!("{}/", r.trim_end_matches(".rs")),
        };
        for m in mods {
            test_roots.push(format!("{dir}{m}.rs"));
            test_roots.push(format!("{dir}{m}/"));
        }
        texts.push((r, code));
    }
    for (r, code) in texts {
        let in_tests_dir = r.split('/').any(|part| part == "tests");
        let test_module = test_roots
            .iter()
            .any(|t| r == *t || (t.ends_with('/') && r.starts_with(t.as_str())));
        if r == "main.rs" || in_tests_dir || test_module {
            continue;
        }
        for (line, ty) in string_errors(&code) {
            found.push((r.clone(), line, ty));
        }
    }
    found
}

/// Every file of daemon/src is held to it: there is no list of files
/// waiting for their conversion any more (the supervisor's were the last).
#[test]
fn the_library_returns_no_string_errors() {
    let found: Vec<String> = daemon_string_errors()
        .iter()
        .map(|(file, line, ty)| format!("  daemon/src/{file}:{line}: {ty}"))
        .collect();
    assert!(
        found.is_empty(),
        "library code returns a String as its error; give the module a thiserror \
         enum naming what failed and why (STYLE.md, \"Errors\"):\n{}",
        found.join("\n")
    );
}

#[test]
fn string_errors_are_found_through_nesting_and_lines() {
    let code = code_only(
        "fn a() -> Result<(), String> {}\n\
         fn b() -> Result<Vec<(Id, usize)>,\n    String,\n> {}\n\
         type R = std::result::Result<Box<dyn Fn(u8) -> u8>, std::string::String>;\n\
         fn c(x: oneshot::Sender<Result<String, String>>) {}\n\
         let v = Result::<u8, String>::Ok(1);\n",
    );
    let found = string_errors(&code);
    let lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [1, 2, 5, 6, 7], "{found:?}");
    assert_eq!(found[1].1, "Result<Vec<(Id, usize)>, String, >");
}

#[test]
fn typed_errors_aliases_comments_and_tests_are_not_string_errors() {
    let text = "//! Never `Result<(), String>`.\n\
         fn a() -> io::Result<String> {}\n\
         fn b() -> Result<String, Error> {}\n\
         fn c() -> Result<Strings, E> {}\n\
         const S: &str = \"Result<(), String>\";\n\
         struct MyResult<A, B>(A, B);\n\
         fn d() -> MyResult<u8, String> {}\n\
         #[cfg(test)]\nmod tests {\n    fn t() -> Result<(), String> { Ok(()) }\n}\n\
         #[cfg(test)]\nfn helper() -> Result<(), String> { Ok(()) }\n\
         #[cfg(test)]\nmod more;\n\
         fn after() -> Result<u8, String> {}\n";
    let (code, mods) = without_test_items(&code_only(text));
    assert_eq!(mods, ["more"]);
    let found = string_errors(&code);
    // Only the last line: everything above is typed, not code, or a test.
    assert_eq!(
        found,
        [(text.lines().count(), "Result<u8, String>".to_owned())]
    );
}

// ---------------------------------------------------------------------
// Tracing spans per subsystem.

/// natsmeshd's long-running tasks (file, the entry's first words, the
/// span it runs in): their lines carry the subsystem, as SPAN_NAME in
/// journald and a prefix on stderr (`auth::creds`'s test shows one live).
const TASK_SPANS: &[(&str, &str, &str)] = &[
    ("supervisor/mod.rs", "pub async fn run(", "supervisor"),
    ("discovery.rs", "pub async fn follow(", "discovery"),
    ("publish/mod.rs", "pub async fn follow(", "publish"),
    (
        "publish/mod.rs",
        "pub async fn announce_for_bootstrap(",
        "publish",
    ),
    ("balancer/mod.rs", "pub async fn follow(", "balancer"),
    ("balancer/ready.rs", "pub async fn serve(", "balancer"),
    ("metrics/mod.rs", "pub async fn serve(", "metrics"),
    ("gate.rs", "pub async fn serve(", "gate"),
    ("control.rs", "pub async fn serve(", "control"),
    ("fleet/heartbeat.rs", "pub async fn run(", "fleet"),
    ("fleet/pause.rs", "pub async fn watch(", "fleet"),
    ("fleet/maintenance.rs", "pub async fn settle(", "fleet"),
    ("fleet/reboot.rs", "pub async fn watch(", "fleet"),
    ("fleet/mod.rs", "pub async fn acquire(", "fleet"),
    ("auth/creds.rs", "pub async fn expire(", "fleet"),
];

/// Whether the item starting with `entry` in `text` carries
/// `#[tracing::instrument(name = "<span>"…)]` among the attributes and
/// doc comments right above it; `None` when there is no such item.
fn instrumented(text: &str, entry: &str, span: &str) -> Option<bool> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(entry))?;
    let want = format!("#[tracing::instrument(name = \"{span}\"");
    Some(
        lines[..at]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("#[") || l.starts_with("///"))
            .any(|l| l.starts_with(&want)),
    )
}

#[test]
fn every_long_running_task_runs_in_its_subsystems_span() {
    let mut missing = Vec::new();
    for (file, entry, span) in TASK_SPANS {
        let text = std::fs::read_to_string(src().join(file)).expect("read");
        match instrumented(&text, entry, span) {
            Some(true) => {}
            Some(false) => missing.push(format!(
                "  daemon/src/{file}: `{entry}…` lacks #[tracing::instrument(name = \"{span}\", skip_all)]"
            )),
            None => missing.push(format!("  daemon/src/{file}: no `{entry}…` (moved? update TASK_SPANS)")),
        }
    }
    assert!(
        missing.is_empty(),
        "tasks whose lines would not name their subsystem:\n{}",
        missing.join("\n")
    );
}

#[test]
fn a_span_is_found_only_on_its_own_item() {
    let text = "/// Runs.\n#[tracing::instrument(name = \"gate\", skip_all)]\npub async fn serve() {}\n\
                #[tracing::instrument(name = \"gate\", skip_all)]\nfn other() {}\n\n/// Bare.\npub async fn bare() {}\n";
    assert_eq!(
        instrumented(text, "pub async fn serve(", "gate"),
        Some(true)
    );
    assert_eq!(
        instrumented(text, "pub async fn serve(", "metrics"),
        Some(false)
    );
    assert_eq!(
        instrumented(text, "pub async fn bare(", "gate"),
        Some(false)
    );
    assert_eq!(instrumented(text, "pub async fn gone(", "gate"), None);
}
