//! The nats-server configuration language, as a value tree and a writer.
//!
//! This module owns the lexical rules only: how a key, a string, a number, a
//! duration, an array, a block and an `include` are written so that
//! nats-server reads back exactly the value that was meant. It knows nothing
//! about which keys exist (see `model`) or which versions accept them (see
//! `gating`).
//!
//! Why it is built this way (facts from nats-server's `conf/lex.go`):
//! - unquoted strings that look like booleans (`yes`, `off`), numbers (`1G`)
//!   or variables (`$X`) change meaning, so every string is double-quoted;
//! - inside double quotes only `\xXX \t \n \r \" \\` are legal escapes (a JSON
//!   `\u` is a parse error), so escaping is done here and not by a JSON library;
//! - unquoted sizes use decimal suffixes while quoted ones are binary, so sizes
//!   are plain byte counts;
//! - durations must be Go duration strings (`lame_duck_duration` refuses an
//!   integer, and an unquoted `2m` is the number 2000000), so they are quoted;
//! - `include` takes its path raw, without escape processing, so an include
//!   path is a checked type that cannot hold a quote or a backslash;
//! - nats-server joins every include path to the directory of the including
//!   file, even an absolute one (`/etc/x` from `/var/lib/natsmesh` opens
//!   `/var/lib/natsmesh/etc/x`), so includes are written relative to the
//!   directory the rendered file lives in.
//!
//! Keys are `&'static str`: every key natsmesh writes is a literal in this
//! crate, so no input can become a key.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A value in a nats-server configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Always written double-quoted and escaped.
    Str(String),
    /// A plain integer (sizes are byte counts, never suffixed).
    Int(i64),
    /// Bare `true` / `false`.
    Bool(bool),
    /// A quoted Go duration string such as `"30s"`.
    Duration(Duration),
    /// `[a, b]`.
    Array(Vec<Value>),
    /// `{ key: value ... }`.
    Block(Block),
}

/// An ordered list of entries: the body of the file or of a `{}` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Block {
    entries: Vec<Entry>,
}

/// One line of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `key: value`
    Pair(&'static str, Value),
    /// `"name": value`, for keys that are data (account names).
    Named(Name, Value),
    /// `include "path"`
    Include(IncludePath),
}

/// A key that comes from data (an account name): checked to hold only
/// letters, digits, `_` and `-`, and written quoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Checks `s`: 1 to 64 of `[A-Za-z0-9_-]`.
    pub fn new(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Block {
    /// An empty block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key: value`.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Self {
        self.entries.push(Entry::Pair(key, value.into()));
        self
    }

    /// Appends `key: value` when there is a value.
    pub fn set_opt<V: Into<Value>>(&mut self, key: &'static str, value: Option<V>) -> &mut Self {
        if let Some(v) = value {
            self.set(key, v);
        }
        self
    }

    /// Appends `"name": value`.
    pub fn set_named(&mut self, name: &Name, value: impl Into<Value>) -> &mut Self {
        self.entries.push(Entry::Named(name.clone(), value.into()));
        self
    }

    /// Appends an `include` line.
    pub fn include(&mut self, path: &IncludePath) -> &mut Self {
        self.entries.push(Entry::Include(path.clone()));
        self
    }

    /// The entries in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The value of `key` in this block (the last one, as nats-server reads it).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().rev().find_map(|e| match e {
            Entry::Pair(k, v) if *k == key => Some(v),
            _ => None,
        })
    }

    /// Writes the block as the top level of a configuration file that will
    /// live in the absolute directory `file_dir`.
    pub fn to_file_text(&self, file_dir: &Path) -> String {
        let mut out = String::new();
        let w = Writer {
            up: up_to_root(file_dir),
        };
        w.entries(&mut out, self, 0);
        out
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}
impl From<Duration> for Value {
    fn from(d: Duration) -> Self {
        Value::Duration(d)
    }
}
impl From<Block> for Value {
    fn from(b: Block) -> Self {
        Value::Block(b)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}

/// A path that may follow `include`: absolute, UTF-8, and free of the
/// characters nats-server cannot carry through its raw include syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncludePath(PathBuf);

/// Why a path cannot be used as an include.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncludePathError {
    /// Relative paths would be resolved against the rendered file's directory.
    #[error("include path {0:?} is not absolute")]
    NotAbsolute(PathBuf),
    /// The renderer writes UTF-8 only.
    #[error("include path {0:?} is not valid UTF-8")]
    NotUtf8(PathBuf),
    /// nats-server reads include paths raw: a quote ends them early, a
    /// backslash is kept literally, a control character breaks the line.
    #[error(
        "include path {0:?} contains a quote, backslash or control character, which nats-server's include syntax cannot carry"
    )]
    BadCharacter(PathBuf),
}

impl IncludePath {
    /// Checks a path for use after `include`.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, IncludePathError> {
        let path = path.into();
        let Some(s) = path.to_str() else {
            return Err(IncludePathError::NotUtf8(path));
        };
        if !path.is_absolute() {
            return Err(IncludePathError::NotAbsolute(path));
        }
        if s.chars()
            .any(|c| c == '"' || c == '\'' || c == '\\' || c.is_control())
        {
            return Err(IncludePathError::BadCharacter(path));
        }
        Ok(Self(path))
    }

    /// The path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    fn as_str(&self) -> &str {
        // Checked to be UTF-8 in `new`.
        self.0.to_str().unwrap_or_default()
    }
}

/// Writes `s` as a double-quoted nats-server string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Formats a duration the way Go's `time.ParseDuration` reads it back exactly.
pub fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

/// `../` repeated once per component of `dir`, leading from `dir` to `/`.
fn up_to_root(dir: &Path) -> String {
    dir.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .map(|_| "../")
        .collect()
}

/// Writes blocks for a file in a given directory.
struct Writer {
    /// Prefix that turns an absolute include path into one relative to the
    /// rendered file's directory.
    up: String,
}

impl Writer {
    fn entries(&self, out: &mut String, block: &Block, level: usize) {
        for entry in &block.entries {
            indent(out, level);
            match entry {
                Entry::Pair(key, value) => {
                    out.push_str(key);
                    out.push_str(": ");
                    self.value(out, value, level);
                }
                Entry::Named(name, value) => {
                    out.push_str(&quote(name.as_str()));
                    out.push_str(": ");
                    self.value(out, value, level);
                }
                Entry::Include(path) => {
                    out.push_str("include \"");
                    out.push_str(&self.up);
                    out.push_str(path.as_str().trim_start_matches('/'));
                    out.push('"');
                }
            }
            out.push('\n');
        }
    }

    fn value(&self, out: &mut String, value: &Value, level: usize) {
        match value {
            Value::Block(block) => {
                out.push_str("{\n");
                self.entries(out, block, level + 1);
                indent(out, level);
                out.push('}');
            }
            Value::Array(items) if items.iter().any(|v| matches!(v, Value::Block(_))) => {
                out.push_str("[\n");
                for item in items {
                    indent(out, level + 1);
                    self.value(out, item, level + 1);
                    out.push('\n');
                }
                indent(out, level);
                out.push(']');
            }
            other => write_scalar(out, other),
        }
    }
}

/// Writes a value that holds no include (scalars and arrays of scalars).
fn write_scalar(out: &mut String, value: &Value) {
    match value {
        Value::Str(s) => out.push_str(&quote(s)),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Duration(d) => out.push_str(&quote(&go_duration(*d))),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_scalar(out, item);
            }
            out.push(']');
        }
        Value::Block(block) => {
            // Only reached for a block inside an array of scalars, which the
            // model never builds; write it flat rather than lose it.
            out.push_str("{ ");
            for e in &block.entries {
                if let Entry::Pair(k, v) = e {
                    out.push_str(k);
                    out.push_str(": ");
                    write_scalar(out, v);
                    out.push_str("; ");
                }
            }
            out.push('}');
        }
    }
}

/// Flattens a block into `(dotted path, canonical text)` pairs, one per leaf
/// key; arrays are compared as a whole. Used to diff two rendered configs.
pub fn flatten(block: &Block) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten_into(&mut out, "", block);
    out
}

fn flatten_into(out: &mut Vec<(String, String)>, prefix: &str, block: &Block) {
    for entry in &block.entries {
        match entry {
            // An empty block still exists (an account with no users yet).
            Entry::Pair(key, Value::Block(inner)) if inner.entries.is_empty() => {
                out.push((join(prefix, key), "{}".into()));
            }
            Entry::Named(name, Value::Block(inner)) if inner.entries.is_empty() => {
                out.push((join(prefix, name.as_str()), "{}".into()));
            }
            Entry::Pair(key, Value::Block(inner)) => {
                flatten_into(out, &join(prefix, key), inner);
            }
            Entry::Named(name, Value::Block(inner)) => {
                flatten_into(out, &join(prefix, name.as_str()), inner);
            }
            Entry::Named(name, value) => {
                let mut text = String::new();
                Writer { up: String::new() }.value(&mut text, value, 0);
                out.push((join(prefix, name.as_str()), text));
            }
            Entry::Pair(key, value) => {
                let mut text = String::new();
                Writer { up: String::new() }.value(&mut text, value, 0);
                out.push((join(prefix, key), text));
            }
            Entry::Include(path) => {
                out.push((join(prefix, "include"), quote(path.as_str())));
            }
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Every key path in the tree, descending into arrays of blocks
/// (`gateway.gateways.urls`), used to check keys against a broker version.
pub fn key_paths(block: &Block) -> Vec<String> {
    let mut out = Vec::new();
    key_paths_into(&mut out, "", block);
    out
}

fn key_paths_into(out: &mut Vec<String>, prefix: &str, block: &Block) {
    for entry in &block.entries {
        if let Entry::Pair(key, value) = entry {
            let path = join(prefix, key);
            match value {
                Value::Block(inner) => key_paths_into(out, &path, inner),
                Value::Array(items) => {
                    for item in items {
                        if let Value::Block(inner) = item {
                            key_paths_into(out, &path, inner);
                        }
                    }
                }
                _ => {}
            }
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_and_escaped_without_unicode_escapes() {
        assert_eq!(quote("yes"), "\"yes\"");
        assert_eq!(quote("1G"), "\"1G\"");
        assert_eq!(quote("$HOME"), "\"$HOME\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("t\tn\nr\r"), "\"t\\tn\\nr\\r\"");
        assert_eq!(quote("\u{1}\u{7f}"), "\"\\x01\\x7f\"");
        assert_eq!(quote("é}"), "\"é}\"");
    }

    #[test]
    fn durations_round_trip_through_go_syntax() {
        assert_eq!(go_duration(Duration::from_secs(120)), "120s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_nanos(7)), "7ns");
    }

    #[test]
    fn writes_nested_blocks_arrays_and_includes() {
        let mut gw = Block::new();
        gw.set("name", "b").set("urls", vec!["nats://h:7222"]);
        let mut cluster = Block::new();
        cluster
            .include(&IncludePath::new("/etc/x.conf").expect("valid include path"))
            .set("name", "a")
            .set("routes", vec!["nats-route://[::1]:6222"]);
        let mut top = Block::new();
        top.set("server_name", "yes")
            .set("port", 4222i64)
            .set("debug", false)
            .set("lame_duck_duration", Duration::from_secs(30))
            .set("cluster", cluster)
            .set("gateways", Value::Array(vec![Value::Block(gw)]));
        let text = top.to_file_text(Path::new("/var/lib/natsmesh"));
        assert_eq!(
            text,
            "server_name: \"yes\"\nport: 4222\ndebug: false\nlame_duck_duration: \"30s\"\n\
             cluster: {\n  include \"../../../etc/x.conf\"\n  name: \"a\"\n  routes: [\"nats-route://[::1]:6222\"]\n}\n\
             gateways: [\n  {\n    name: \"b\"\n    urls: [\"nats://h:7222\"]\n  }\n]\n"
        );
        let paths = key_paths(&top);
        assert!(paths.contains(&"cluster.routes".to_owned()));
        assert!(paths.contains(&"gateways.urls".to_owned()));
        let flat = flatten(&top);
        assert!(flat.contains(&("cluster.include".into(), "\"/etc/x.conf\"".into())));
    }

    #[test]
    fn an_empty_block_is_still_part_of_the_config() {
        let mut accounts = Block::new();
        accounts.set_named(&Name::new("EXTRA").expect("name"), Block::new());
        let mut top = Block::new();
        top.set("accounts", accounts);
        assert_eq!(
            flatten(&top),
            [("accounts.EXTRA".to_owned(), "{}".to_owned())]
        );
        assert!(
            top.to_file_text(Path::new("/"))
                .contains("\"EXTRA\": {\n  }")
        );
        assert!(Name::new("a\"b").is_none() && Name::new("").is_none());
    }

    #[test]
    fn include_paths_refuse_what_nats_server_cannot_read() {
        assert!(IncludePath::new("/etc/natsmesh/accounts.conf").is_ok());
        assert!(IncludePath::new("/etc/with space/a.conf").is_ok());
        assert!(matches!(
            IncludePath::new("rel.conf"),
            Err(IncludePathError::NotAbsolute(_))
        ));
        for bad in ["/a\"b", "/a'b", "/a\\b", "/a\nb"] {
            assert!(
                matches!(
                    IncludePath::new(bad),
                    Err(IncludePathError::BadCharacter(_))
                ),
                "{bad:?}"
            );
        }
    }
}
