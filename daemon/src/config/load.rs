//! Finding, parsing and merging the main file and its drop-ins.
//!
//! The main file (`natsmesh.toml`) is read first, then every `*.toml` in the
//! drop-in directory next to it (`natsmesh.d/`) in lexical order; a later
//! file overrides a key set by an earlier one, tables merge key by key, and
//! arrays are replaced whole. Each file is checked on its own first, so a
//! syntax error, an unknown key or a wrong type names the file, line and
//! column where it is written; the merge remembers where every effective
//! value came from, for `--explain` and for later errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::{Spanned, Table, Value};

use super::problem::{Location, Problem, Problems, Source};
use super::schema::RawConfig;

/// The packaged main file.
pub const DEFAULT_PATH: &str = "/etc/natsmesh/natsmesh.toml";

/// The embedded default, used when there is no configuration at all.
pub const EMBEDDED: &str = include_str!("embedded-default.toml");

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A dotted key path such as `broker.gateway.remotes[0].name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    fn child(&self, seg: Seg) -> Self {
        let mut v = self.0.clone();
        v.push(seg);
        Self(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where each effective value was written.
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<String, Location>);

impl Origins {
    /// The location of `key` (dotted form), if a file set it.
    pub fn get(&self, key: &str) -> Option<&Location> {
        self.0.get(key)
    }

    /// Every (key, location) pair.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Location)> {
        self.0.iter()
    }
}

/// Which files make up the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sources {
    /// The main file (if present) and drop-ins, in merge order.
    Files {
        /// The main file path (may be absent when only drop-ins exist).
        main: PathBuf,
        /// Files to merge, in order.
        files: Vec<PathBuf>,
    },
    /// No configuration anywhere: the embedded default.
    Embedded,
}

/// The drop-in directory for a main file: `natsmesh.toml` → `natsmesh.d/`.
pub fn dropin_dir(main: &Path) -> PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "natsmesh".into());
    main.with_file_name(format!("{stem}.d"))
}

/// Finds the files. With `explicit`, that file must exist; without, the
/// packaged path is used and its absence (with no drop-ins either) means
/// "embedded default".
pub fn discover(explicit: Option<&Path>) -> Result<Sources, Problem> {
    match explicit {
        Some(main) if !main.exists() => Err(Problem {
            location: None,
            key: None,
            message: format!("config file {} does not exist", main.display()),
        }),
        Some(main) => discover_at(main),
        None => discover_at(Path::new(DEFAULT_PATH)),
    }
}

/// The main file at `main` (if present) and its drop-ins; neither means
/// the embedded default.
pub fn discover_at(main: &Path) -> Result<Sources, Problem> {
    let main = main.to_path_buf();
    let dir = dropin_dir(&main);
    let mut dropins: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(Problem {
                location: None,
                key: None,
                message: format!("cannot read drop-in directory {}: {e}", dir.display()),
            });
        }
    };
    // Lexical order of the file names, byte-wise, as systemd does.
    dropins.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let main_exists = main.exists();
    if !main_exists && dropins.is_empty() {
        return Ok(Sources::Embedded);
    }
    let mut files = Vec::new();
    if main_exists {
        files.push(main.clone());
    }
    files.extend(dropins);
    Ok(Sources::Files { main, files })
}

/// The merged configuration with the origin of every value.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The merged raw configuration (defaults filled in).
    pub raw: RawConfig,
    /// Where each value set by a file came from.
    pub origins: Origins,
    /// Whether this is the embedded default.
    pub embedded: bool,
    /// The files merged, in order.
    pub files: Vec<Source>,
}

/// Reads, checks and merges `sources`. Every file is checked even when an
/// earlier one has problems, so one run lists them all.
pub fn load(sources: &Sources) -> Result<Loaded, Problems> {
    let inputs: Vec<(Source, Result<String, Problem>)> = match sources {
        Sources::Embedded => vec![(Source::Embedded, Ok(EMBEDDED.to_owned()))],
        Sources::Files { files, .. } => files
            .iter()
            .map(|p| {
                let src = Source::File(p.clone());
                let text = std::fs::read_to_string(p).map_err(|e| Problem {
                    location: None,
                    key: None,
                    message: format!("cannot read {}: {e}", p.display()),
                });
                (src, text)
            })
            .collect(),
    };

    let mut problems = Vec::new();
    let mut merged = Table::new();
    let mut origins = Origins::default();
    for (source, text) in &inputs {
        let text = match text {
            Ok(t) => t,
            Err(p) => {
                problems.push(p.clone());
                continue;
            }
        };
        match check_file(source, text) {
            Ok((table, file_origins)) => {
                merge(&mut merged, table, &mut origins, file_origins);
            }
            Err(mut ps) => problems.append(&mut ps),
        }
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let raw: RawConfig = Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| {
            Problems(vec![Problem {
                location: None,
                key: None,
                message: format!("merged configuration: {}", e.message()),
            }])
        })?;
    Ok(Loaded {
        raw,
        origins,
        embedded: matches!(sources, Sources::Embedded),
        files: inputs.into_iter().map(|(s, _)| s).collect(),
    })
}

type FileOrigins = Vec<(KeyPath, Location)>;

/// A value in one file: its path, the byte range from its key to the end of
/// its value, and whether it is a table.
struct Entry {
    path: KeyPath,
    range: std::ops::Range<usize>,
    is_table: bool,
}

/// Checks one file: syntax, then schema (every unknown key and wrong type),
/// and returns its table and the location of each value.
fn check_file(source: &Source, text: &str) -> Result<(Table, FileOrigins), Vec<Problem>> {
    check_file_counted(source, text).0
}

/// The most schema passes over one file. Unknown keys cost one pass per
/// table shape (see below), so this bounds only a file full of wrongly
/// typed values; past it the problems found so far are reported.
const MAX_PASSES: usize = 64;

/// [`check_file`], and how many times the file was deserialized (the cost
/// that once grew with the number of unknown keys).
fn check_file_counted(
    source: &Source,
    text: &str,
) -> (Result<(Table, FileOrigins), Vec<Problem>>, usize) {
    let doc = match DeTable::parse(text) {
        Ok(d) => d,
        Err(e) => return (Err(vec![syntax_problem(source, text, &e)]), 0),
    };
    let mut entries = Vec::new();
    collect_table(&KeyPath::default(), doc.get_ref(), &mut entries);

    // serde stops at the first error. To report every unknown key and wrong
    // type in one run, blank the offending `key = value` (keeping newlines,
    // so every later position is unchanged) and try again. Only leaves are
    // blanked, and only when the result still parses; otherwise stop there.
    // An unknown key's error lists the keys its table allows, so every
    // other unknown key of a table of that shape (the same path, any array
    // index) is found from that one error and blanked with it: the passes
    // grow with the tables, not with the keys.
    let mut masked = text.to_owned();
    let mut problems = Vec::new();
    let mut reported = vec![false; entries.len()];
    let mut passes = 0;
    while passes < MAX_PASSES {
        passes += 1;
        let Err(err) = toml::from_str::<RawConfig>(&masked) else {
            break;
        };
        let at = err.span().and_then(|s| innermost_index(&entries, s.start));
        let mut blanks = Vec::new();
        let mut stop = false;
        match (at, unknown_field(err.message())) {
            (Some(i), Some((_, allowed))) => {
                let shape = table_shape(&entries[i].path);
                for (j, e) in entries.iter().enumerate() {
                    let Some(Seg::Key(name)) = e.path.0.last() else {
                        continue;
                    };
                    if reported[j]
                        || table_shape(&e.path) != shape
                        || allowed.iter().any(|a| a == name)
                    {
                        continue;
                    }
                    reported[j] = true;
                    problems.push(Problem {
                        location: Some(Location::at(source, text, e.range.start)),
                        key: Some(e.path.to_string()),
                        message: unknown_key_message(name, &allowed),
                    });
                    if e.is_table {
                        stop = true;
                    } else {
                        blanks.push(e.range.clone());
                    }
                }
                if blanks.is_empty() && !stop {
                    // Nothing new found from the list: report serde's own
                    // words and stop rather than loop.
                    problems.push(Problem {
                        location: err.span().map(|s| Location::at(source, text, s.start)),
                        key: Some(entries[i].path.to_string()),
                        message: friendly(err.message()),
                    });
                }
            }
            _ => {
                let entry = at.map(|i| &entries[i]);
                problems.push(Problem {
                    location: err.span().map(|s| Location::at(source, text, s.start)),
                    key: entry.map(|e| e.path.to_string()),
                    message: friendly(err.message()),
                });
                match entry.filter(|e| !e.is_table) {
                    Some(e) => blanks.push(e.range.clone()),
                    None => stop = true,
                }
            }
        }
        if stop || blanks.is_empty() {
            break;
        }
        let candidate = blank(&masked, &blanks);
        if DeTable::parse(&candidate).is_err() {
            break;
        }
        masked = candidate;
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| p.location.as_ref().map(|l| (l.line, l.column)));
        return (Err(problems), passes);
    }
    let table: Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => return (Err(vec![syntax_problem(source, text, &e)]), passes),
    };
    let origins = entries
        .into_iter()
        .map(|e| (e.path, Location::at(source, text, e.range.start)))
        .collect();
    (Ok((table, origins)), passes)
}

/// The path of the table holding `path`, array indices left out: every
/// element of an array of tables has the same keys.
fn table_shape(path: &KeyPath) -> Vec<&str> {
    let parent = &path.0[..path.0.len().saturating_sub(1)];
    parent
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect()
}

/// `text` with each of `ranges` replaced by spaces, newlines kept.
fn blank(text: &str, ranges: &[std::ops::Range<usize>]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut ranges: Vec<_> = ranges.to_vec();
    ranges.sort_by_key(|r| r.start);
    let mut next = 0;
    for (i, c) in text.char_indices() {
        while ranges.get(next).is_some_and(|r| r.end <= i) {
            next += 1;
        }
        // Ranges may nest (an array and its items); any that holds `i`
        // starts at or before the first not yet ended.
        let inside = ranges[next..]
            .iter()
            .take_while(|r| r.start <= i)
            .any(|r| r.contains(&i));
        if inside && c != '\n' {
            for _ in 0..c.len_utf8() {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn syntax_problem(source: &Source, text: &str, e: &toml::de::Error) -> Problem {
    Problem {
        location: e.span().map(|s| Location::at(source, text, s.start)),
        key: None,
        message: format!("syntax error: {}", e.message().trim()),
    }
}

fn collect_table(prefix: &KeyPath, table: &DeTable<'_>, out: &mut Vec<Entry>) {
    for (k, v) in table.iter() {
        let path = prefix.child(Seg::Key(k.get_ref().to_string()));
        let start = k.span().start.min(v.span().start);
        let end = k.span().end.max(v.span().end);
        collect_value(path, start..end, v, out);
    }
}

fn collect_value(
    path: KeyPath,
    range: std::ops::Range<usize>,
    v: &Spanned<DeValue<'_>>,
    out: &mut Vec<Entry>,
) {
    out.push(Entry {
        path: path.clone(),
        range,
        is_table: v.get_ref().is_table(),
    });
    match v.get_ref() {
        DeValue::Table(t) => collect_table(&path, t, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_value(path.child(Seg::Index(i)), item.span(), item, out);
            }
        }
        _ => {}
    }
}

/// The index of the deepest entry whose range contains `offset`.
fn innermost_index(entries: &[Entry], offset: usize) -> Option<usize> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.range.contains(&offset))
        .max_by_key(|(_, e)| e.path.0.len())
        .map(|(i, _)| i)
}

/// serde's "unknown field `x`, expected one of `a`, `b`": the name and the
/// allowed keys.
fn unknown_field(msg: &str) -> Option<(&str, Vec<&str>)> {
    let rest = msg.trim().strip_prefix("unknown field `")?;
    let (name, tail) = rest.split_once('`')?;
    Some((name, tail.split('`').skip(1).step_by(2).collect()))
}

/// The operator's words for an unknown key, with the closest valid key.
fn unknown_key_message(name: &str, allowed: &[&str]) -> String {
    let suggestion = allowed
        .iter()
        .map(|a| (strsim::jaro_winkler(name, a), *a))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| format!("; did you mean `{a}`?"))
        .unwrap_or_default();
    let list = if allowed.is_empty() {
        "no keys are allowed here".to_owned()
    } else {
        format!("allowed: {}", allowed.join(", "))
    };
    format!("unknown key `{name}`{suggestion} ({list})")
}

/// Rewrites serde's messages into the words an operator reads, adding the
/// closest valid key to an unknown one.
fn friendly(msg: &str) -> String {
    let msg = msg.trim();
    if let Some((name, allowed)) = unknown_field(msg) {
        return unknown_key_message(name, &allowed);
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `")
        && let Some((name, tail)) = rest.split_once('`')
    {
        let allowed: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        return format!("unknown value `{name}` (allowed: {})", allowed.join(", "));
    }
    msg.to_owned()
}

/// Merges `table` (one file) into `merged`, recording origins.
fn merge(merged: &mut Table, table: Table, origins: &mut Origins, file: FileOrigins) {
    deep_merge(merged, table);
    for (path, loc) in file {
        let key = path.to_string();
        // A later file replaces an array whole: forget the old elements.
        let elem_prefix = format!("{key}[");
        origins.0.retain(|k, _| !k.starts_with(&elem_prefix));
        origins.0.insert(key, loc);
    }
}

fn deep_merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> Source {
        Source::File(PathBuf::from("/etc/natsmesh/natsmesh.toml"))
    }

    #[test]
    fn unknown_keys_are_found_in_passes_per_table_not_per_key() {
        let mut text = String::from("[node]\nregion = \"fra1\"\n[broker.client]\n");
        for i in 0..2000 {
            text.push_str(&format!("prot{i} = 1\n"));
        }
        text.push_str("[broker]\nlame_duk = 1\n");
        let started = std::time::Instant::now();
        let (result, passes) = check_file_counted(&src(), &text);
        let took = started.elapsed();
        let problems = result.expect_err("unknown keys");
        assert_eq!(problems.len(), 2001);
        assert!(passes <= 4, "{passes} passes");
        // Was about 2 s; generous for a loaded 2-core machine.
        assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
        let first = &problems[0];
        assert_eq!(first.key.as_deref(), Some("broker.client.prot0"));
        assert!(
            first.message.starts_with("unknown key `prot0`"),
            "{}",
            first.message
        );
        let last = problems.last().expect("one");
        assert!(
            last.message
                .starts_with("unknown key `lame_duk`; did you mean `lame_duck_duration`?"),
            "{}",
            last.message
        );
    }

    #[test]
    fn unknown_keys_in_every_element_of_an_array_cost_one_pass() {
        let mut text = String::new();
        for i in 0..300 {
            text.push_str(&format!(
                "[[broker.gateway.remotes]]\nname = \"g{i}\"\nurl = \"x\"\n"
            ));
        }
        let (result, passes) = check_file_counted(&src(), &text);
        let problems = result.expect_err("unknown keys");
        let unknown: Vec<_> = problems
            .iter()
            .filter(|p| p.message.starts_with("unknown key `url`"))
            .collect();
        assert_eq!(unknown.len(), 300, "{problems:?}");
        assert!(passes <= 3, "{passes} passes");
        assert_eq!(
            unknown[299].key.as_deref(),
            Some("broker.gateway.remotes[299].url")
        );
        assert!(unknown[0].message.contains("did you mean `urls`?"));
    }

    #[test]
    fn wrong_types_and_unknown_keys_are_all_listed() {
        let text = "[broker]\nlame_duck_duration = 5\nfoo = 1\n[broker.client]\nport = \"x\"\n";
        let (result, _) = check_file_counted(&src(), text);
        let problems = result.expect_err("problems");
        let keys: Vec<_> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
        assert_eq!(
            keys,
            [
                "broker.lame_duck_duration",
                "broker.foo",
                "broker.client.port"
            ]
        );
    }
}
