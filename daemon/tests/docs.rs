//! The documentation's links hold: every relative link in README.md,
//! docs/*.md and the other project documents names a file that exists, and
//! every `#anchor` a heading of the file it points into (GitHub's rule for
//! heading anchors). No network: links to other sites are not followed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// The documents checked: README.md, everything under docs/, and the
/// READMEs of the project's directories.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    for dir in [
        "docs",
        "cloud-init",
        "packaging",
        "bench",
        "broker",
        "daemon",
        "tests",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let in_docs = dir == "docs";
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.extension().is_some_and(|x| x == "md") && (in_docs || name == "README.md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// GitHub's anchor for a heading: lower case; letters, digits, spaces,
/// '-' and '_' kept (spaces become '-'); repeats get `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        let anchor = if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        };
        *n += 1;
        out.insert(anchor);
    }
    out
}

/// `(line, target)` of every inline link `[text](target)` outside code.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans are not links.
        let mut plain = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                plain.push(c);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((i + 1, target.to_owned()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_in_the_documentation_resolves() {
    let root = root();
    let docs = documents(&root);
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for (line, target) in links(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            let at = format!(
                "{}:{line}: {target}",
                doc.strip_prefix(&root).unwrap().display()
            );
            if !path.exists() {
                broken.push(format!("{at}: no such file"));
                continue;
            }
            if let Some(a) = anchor {
                let Ok(body) = std::fs::read_to_string(&path) else {
                    broken.push(format!("{at}: an anchor into a file that is not text"));
                    continue;
                };
                if !anchors(&body).contains(a) {
                    broken.push(format!("{at}: no heading with that anchor"));
                }
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} links found: is the parser right?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_githubs_rule() {
    let a = anchors(
        "# Three regions on DigitalOcean, from nothing\n## TLS and trust\n## TLS and trust\n```\n# not a heading\n```\n",
    );
    assert!(
        a.contains("three-regions-on-digitalocean-from-nothing"),
        "{a:?}"
    );
    assert!(
        a.contains("tls-and-trust") && a.contains("tls-and-trust-1"),
        "{a:?}"
    );
    assert!(!a.contains("not-a-heading"), "{a:?}");
    let l = links("see [x](docs/a.md#b) and `[y](z)`\n```\n[q](r)\n```\n");
    assert_eq!(l, vec![(1, "docs/a.md#b".to_owned())]);
}

/// Every benchmark's result file begins with the run's provenance, made
/// by the harness's one writer (`Provenance::heading`, whose text its own
/// tests pin): the committed files only change when the benchmarks run
/// again, so the writers are checked here, not the files.
#[test]
fn every_benchmark_result_file_begins_with_its_provenance() {
    let benches = root().join("daemon/benches");
    let sources: BTreeMap<String, String> = std::fs::read_dir(&benches)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    // The result files the benchmarks write, each with the bench that
    // writes it.
    let results = [
        ("supervisor.md", "supervisor.rs"),
        ("ready.md", "supervisor.rs"),
        ("tls.md", "tls.rs"),
        ("discovery.md", "discovery.rs"),
        ("publish.md", "publish.rs"),
        ("balancer.md", "balancer.rs"),
        ("metrics.md", "metrics.rs"),
        ("boot.md", "boot.rs"),
    ];
    for (file, bench) in results {
        let src = &sources[bench];
        assert!(src.contains(file), "{bench} no longer writes {file}");
    }
    for (bench, src) in &sources {
        if !src.contains("bench/results") {
            continue;
        }
        assert!(
            results.iter().any(|(_, b)| b == bench),
            "{bench} writes under bench/results: list its result file here"
        );
        assert!(
            src.contains("provenance::Provenance::") && src.contains(".heading("),
            "{bench}: its result file must begin with Provenance::heading"
        );
        // A title written by hand would put the provenance line below
        // something else, or leave a second heading without it.
        for (n, line) in src.lines().enumerate() {
            assert!(
                !line.contains("\"# ") && !line.contains("\"\\n# "),
                "{bench}:{}: a result heading written by hand: {line}",
                n + 1
            );
        }
    }
}
