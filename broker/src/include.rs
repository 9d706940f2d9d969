//! Operator include files: read once, within bounds, and judged.
//!
//! The rendered config names the operator's include files
//! (`[broker.include]`); nats-server follows `include` lines inside them
//! too, joining each path to the including file's directory (even an
//! absolute one). This module owns reading that tree and what natsmesh
//! refuses in it; it never writes a file.
//!
//! Why it is bounded: every config natsmesh prepares (`check`, a reload, an
//! upgrade) reads the tree on the daemon's thread, so a file that includes
//! itself k times must not cost k^depth reads. Each file is therefore read
//! once (canonical paths; a cycle or a second visit is refused, naming the
//! chain), at most [`MAX_DEPTH`] levels deep and [`MAX_TOTAL_BYTES`] bytes in
//! all. Files are parsed with a small reader of nats-server's config syntax
//! (the rules of its `conf/lex.go`) that keeps only keys, blocks, arrays and
//! includes, which is all the judgement needs.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::conf;
use crate::model::Rendered;

/// How deep includes are followed: a root include file is level 0, a file it
/// includes level 1, and so on (nats-server has no limit of its own).
pub const MAX_DEPTH: usize = 8;

/// The most bytes the whole tree may hold. Operator includes are accounts,
/// users and listener extras: kilobytes. 4 MiB leaves room for thousands of
/// users while bounding what a check reads and hashes.
pub const MAX_TOTAL_BYTES: u64 = 4 * 1024 * 1024;

/// How deeply blocks and arrays may nest inside one file (the reader
/// recurses; without a bound a file of `[[[[…` would exhaust the stack).
const MAX_NESTING: usize = 64;

/// Why an include tree was refused.
#[derive(Debug, thiserror::Error)]
pub enum IncludeError {
    /// A file could not be opened or read.
    #[error("include {path}: cannot read: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a regular file (a FIFO or a device would block or never end).
    #[error("include {path}: not a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// A file includes itself, directly or through others.
    #[error("include cycle: {chain}")]
    Cycle {
        /// The chain, `a.conf → b.conf → a.conf`.
        chain: Chain,
    },
    /// A file is included a second time (each file is read once).
    #[error("include {path} is included twice: {first} and {second}")]
    Repeat {
        /// The file.
        path: PathBuf,
        /// Where it was first reached.
        first: Chain,
        /// Where it was reached again.
        second: Chain,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("includes nest deeper than {MAX_DEPTH} levels: {chain}")]
    TooDeep {
        /// The chain.
        chain: Chain,
    },
    /// The tree holds more than [`MAX_TOTAL_BYTES`].
    #[error(
        "include files hold more than {MAX_TOTAL_BYTES} bytes in all (reached at {path}); natsmesh reads at most that much"
    )]
    TooLarge {
        /// The file being read when the bound was passed.
        path: PathBuf,
    },
    /// A file natsmesh cannot read as nats-server config syntax.
    #[error("include {path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A key natsmesh owns, set (or removed) by an include.
    #[error("include {path}:{line}: `{key}` is not allowed here: {why}")]
    Forbidden {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The key as a dotted path from the rendered file's top.
        key: String,
        /// Why natsmesh refuses it.
        why: &'static str,
    },
}

/// A chain of include files, shown as `a.conf → b.conf → a.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain(pub Vec<PathBuf>);

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" → ")?;
            }
            write!(f, "{}", p.display())?;
        }
        Ok(())
    }
}

/// One file of the tree.
#[derive(Debug, Clone)]
pub struct IncludedFile {
    /// Canonical path.
    pub path: PathBuf,
    /// Its content.
    pub bytes: Vec<u8>,
    /// Key path from the rendered file's top to the block the file's
    /// content lands in (`["accounts"]`, `["accounts", "A"]`).
    pub context: Vec<String>,
    /// The files it includes, in order: (path as written, index in
    /// [`IncludeTree::files`]).
    pub nested: Vec<(String, usize)>,
    doc: Vec<Node>,
}

/// The whole tree: every file once, each parent before its children.
#[derive(Debug, Clone, Default)]
pub struct IncludeTree {
    /// The files.
    pub files: Vec<IncludedFile>,
    /// Each root: (the rendered key such as `accounts.include`, file index).
    pub roots: Vec<(String, usize)>,
}

/// The include keys of a rendered config and the files they name.
pub fn roots(rendered: &Rendered) -> Vec<(String, PathBuf)> {
    conf::flatten(&rendered.tree)
        .into_iter()
        .filter(|(key, _)| key == "include" || key.ends_with(".include"))
        .map(|(key, value)| (key, PathBuf::from(value.trim_matches('"'))))
        .collect()
}

/// Reads the tree under `roots`, each file once, within the bounds.
pub fn walk(roots: &[(String, PathBuf)]) -> Result<IncludeTree, IncludeError> {
    let mut w = Walker {
        tree: IncludeTree::default(),
        chains: Vec::new(),
        budget: MAX_TOTAL_BYTES,
    };
    for (key, path) in roots {
        let context: Vec<String> = key
            .strip_suffix("include")
            .unwrap_or_default()
            .split('.')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let idx = w.visit(path, context, &[])?;
        w.tree.roots.push((key.clone(), idx));
    }
    Ok(w.tree)
}

struct Walker {
    tree: IncludeTree,
    /// The chain that first reached each file (same index as `files`).
    chains: Vec<Chain>,
    budget: u64,
}

impl Walker {
    fn visit(
        &mut self,
        path: &Path,
        context: Vec<String>,
        parents: &[PathBuf],
    ) -> Result<usize, IncludeError> {
        let canonical = std::fs::canonicalize(path).map_err(|source| IncludeError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let mut chain = parents.to_vec();
        chain.push(canonical.clone());
        if parents.contains(&canonical) {
            return Err(IncludeError::Cycle {
                chain: Chain(chain),
            });
        }
        if let Some(i) = self.tree.files.iter().position(|f| f.path == canonical) {
            return Err(IncludeError::Repeat {
                path: canonical,
                first: self.chains[i].clone(),
                second: Chain(chain),
            });
        }
        if parents.len() > MAX_DEPTH {
            return Err(IncludeError::TooDeep {
                chain: Chain(chain),
            });
        }
        let bytes = self.read(&canonical)?;
        let text = String::from_utf8_lossy(&bytes);
        let doc = parse(&text).map_err(|(line, message)| IncludeError::Syntax {
            path: canonical.clone(),
            line,
            message,
        })?;
        let idx = self.tree.files.len();
        let mut found = Vec::new();
        includes_in(&doc, &context, &mut found);
        self.tree.files.push(IncludedFile {
            path: canonical.clone(),
            bytes,
            context,
            nested: Vec::new(),
            doc,
        });
        self.chains.push(Chain(chain.clone()));
        // nats-server joins an include path, even an absolute one, to the
        // including file's directory as it was written (Go's filepath.Join,
        // which cleans lexically), not to the directory a link resolves to.
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        for (raw, ctx) in found {
            let file = clean(&dir.join(raw.trim_start_matches('/')));
            let child = self.visit(&file, ctx, &chain)?;
            self.tree.files[idx].nested.push((raw, child));
        }
        Ok(idx)
    }

    /// Reads a regular file, charging the shared budget; never reads more
    /// than the budget plus one byte.
    fn read(&mut self, path: &Path) -> Result<Vec<u8>, IncludeError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let unreadable = |source| IncludeError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
        // writer; the type is checked on the open file, before any read.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
            .map_err(unreadable)?;
        if !file.metadata().map_err(unreadable)?.is_file() {
            return Err(IncludeError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mut bytes = Vec::new();
        file.take(self.budget + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        let n = bytes.len() as u64;
        if n > self.budget {
            return Err(IncludeError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        self.budget -= n;
        Ok(bytes)
    }
}

impl IncludeTree {
    /// What natsmesh refuses in the tree: keys it owns set or removed by an
    /// include, and users without a credential. Empty when all is well.
    pub fn problems(&self) -> Vec<IncludeError> {
        let mut out = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            let mut j = Judge {
                tree: self,
                file: i,
                next_include: 0,
                out: &mut out,
            };
            j.nodes(&f.doc, &f.context);
        }
        out
    }

    /// A digest of the file at `idx` and, folded in, of every file it
    /// includes: an `accounts.conf` that includes `users/*.conf` changes
    /// when one of those does.
    pub fn digest(&self, idx: usize) -> String {
        use sha2::{Digest, Sha256};
        let Some(f) = self.files.get(idx) else {
            return String::new();
        };
        let mut h = Sha256::new();
        h.update(&f.bytes);
        for (raw, child) in &f.nested {
            h.update(b"\0include\0");
            h.update(raw.as_bytes());
            // The tree is acyclic and at most MAX_DEPTH deep (checked by
            // `walk`), so this recursion ends.
            h.update(self.digest(*child).as_bytes());
        }
        hex::encode(h.finalize())
    }
}

const TLS_WHY: &str =
    "natsmesh owns TLS on every listener; an include may neither set nor remove it";
const AUTHZ_WHY: &str =
    "natsmesh owns who may connect to each listener; an include may not replace its authorization";
const NO_AUTH_WHY: &str =
    "natsmesh owns anonymous access (auth.anonymous_account); an include may not open it";
const USER_WHY: &str =
    "every user needs a password or an nkey; one without is a door anyone can open";
const USERS_FORM_WHY: &str = "`users` must be an array of user blocks written out in the file (a variable or other form hides who may connect)";

struct Judge<'a> {
    tree: &'a IncludeTree,
    file: usize,
    /// Include nodes are met in the order `includes_in` found them, so the
    /// n-th one is `nested[n]`.
    next_include: usize,
    out: &'a mut Vec<IncludeError>,
}

impl Judge<'_> {
    fn forbid(&mut self, path: &[String], line: usize, why: &'static str) {
        self.out.push(IncludeError::Forbidden {
            path: self.tree.files[self.file].path.clone(),
            line,
            key: path.join("."),
            why,
        });
    }

    fn nodes(&mut self, nodes: &[Node], ctx: &[String]) {
        if ctx
            .last()
            .is_some_and(|k| k.eq_ignore_ascii_case("authorization"))
        {
            self.single_user(nodes, ctx);
        }
        for node in nodes {
            match node {
                Node::Include { .. } => self.next_include += 1,
                Node::Pair { key, line, value } => {
                    let mut path = ctx.to_vec();
                    path.push(key.clone());
                    // Directly under `accounts` a key is an account's name,
                    // which may be anything.
                    let is_account_name = ctx == ["accounts"];
                    if !is_account_name {
                        match key.to_ascii_lowercase().as_str() {
                            "tls" | "no_tls" => self.forbid(&path, *line, TLS_WHY),
                            "authorization" => self.forbid(&path, *line, AUTHZ_WHY),
                            "no_auth_user" => self.forbid(&path, *line, NO_AUTH_WHY),
                            "users" => self.users(&path, *line, value),
                            _ => {}
                        }
                    }
                    self.value(value, &path);
                }
            }
        }
    }

    fn value(&mut self, value: &Val, path: &[String]) {
        match value {
            Val::Map(nodes) => self.nodes(nodes, path),
            Val::Array(items) => {
                for item in items {
                    self.value(item, path);
                }
            }
            Val::Scalar(_) | Val::Var(_) => {}
        }
    }

    /// An authorization block's single user (`user`/`username`) needs a
    /// `password` or `token` beside it: nats-server compares an empty
    /// password with an empty one and lets it in.
    fn single_user(&mut self, nodes: &[Node], ctx: &[String]) {
        let pair = |names: &[&str]| {
            nodes.iter().find_map(|n| match n {
                Node::Pair { key, line, value }
                    if names.iter().any(|k| key.eq_ignore_ascii_case(k)) =>
                {
                    Some((key.clone(), *line, value))
                }
                _ => None,
            })
        };
        let Some((key, line, _)) = pair(&["user", "username"]) else {
            return;
        };
        let secret = pair(&["password", "pass", "token"])
            .is_some_and(|(_, _, v)| matches!(v, Val::Scalar(s) if !s.is_empty()));
        if !secret {
            let mut path = ctx.to_vec();
            path.push(key);
            self.forbid(&path, line, USER_WHY);
        }
    }

    /// Every entry of a `users` array must carry `password` or `nkey`,
    /// looking into the files the entry includes too.
    fn users(&mut self, path: &[String], line: usize, value: &Val) {
        let Val::Array(items) = value else {
            // `users: $U` (or any other form) would hide the entries.
            self.forbid(path, line, USERS_FORM_WHY);
            return;
        };
        // Counts include nodes inside the entries without consuming them:
        // `value` (called next by `nodes`) walks them again in order.
        let mut next = self.next_include;
        for (i, item) in items.iter().enumerate() {
            let ok = match item {
                Val::Map(nodes) => has_credential(self.tree, self.file, nodes, &mut next),
                _ => false,
            };
            if !ok {
                let mut p = path.to_vec();
                if let Some(last) = p.last_mut() {
                    last.push_str(&format!("[{i}]"));
                }
                self.forbid(&p, line, USER_WHY);
            }
        }
    }
}

/// Whether a user block holds a non-empty `password` or `nkey`, directly or
/// in a file it includes. `next` is the index of the next include node of
/// `file`, advanced past every include met (in document order).
fn has_credential(tree: &IncludeTree, file: usize, nodes: &[Node], next: &mut usize) -> bool {
    let mut found = false;
    for node in nodes {
        match node {
            Node::Pair { key, value, .. } => {
                let k = key.to_ascii_lowercase();
                if (k == "password" || k == "nkey")
                    && matches!(value, Val::Scalar(s) if !s.is_empty())
                {
                    found = true;
                }
                count_includes(value, next);
            }
            Node::Include { .. } => {
                if let Some((_, child)) = tree.files[file].nested.get(*next) {
                    let mut inner = 0;
                    if has_credential(tree, *child, &tree.files[*child].doc, &mut inner) {
                        found = true;
                    }
                }
                *next += 1;
            }
        }
    }
    found
}

fn count_includes(value: &Val, next: &mut usize) {
    match value {
        Val::Map(nodes) => {
            for n in nodes {
                match n {
                    Node::Include { .. } => *next += 1,
                    Node::Pair { value, .. } => count_includes(value, next),
                }
            }
        }
        Val::Array(items) => items.iter().for_each(|v| count_includes(v, next)),
        Val::Scalar(_) | Val::Var(_) => {}
    }
}

/// The includes of a parsed file in document order, each with the key path
/// its content lands in.
fn includes_in(nodes: &[Node], ctx: &[String], out: &mut Vec<(String, Vec<String>)>) {
    for node in nodes {
        match node {
            Node::Include { path, .. } => out.push((path.clone(), ctx.to_vec())),
            Node::Pair { key, value, .. } => {
                let mut p = ctx.to_vec();
                p.push(key.clone());
                includes_in_value(value, &p, out);
            }
        }
    }
}

fn includes_in_value(value: &Val, ctx: &[String], out: &mut Vec<(String, Vec<String>)>) {
    match value {
        Val::Map(nodes) => includes_in(nodes, ctx, out),
        Val::Array(items) => items.iter().for_each(|v| includes_in_value(v, ctx, out)),
        Val::Scalar(_) | Val::Var(_) => {}
    }
}

/// A path cleaned lexically as Go's `filepath.Clean` does: `.` dropped,
/// `..` taking away the component before it (never above the root).
fn clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !path.is_absolute() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// One entry of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Pair {
        key: String,
        line: usize,
        value: Val,
    },
    Include {
        path: String,
        line: usize,
    },
}

/// A value: only its shape matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Scalar(String),
    /// An unquoted `$name`: nats-server substitutes a variable (or an
    /// environment variable) whose value this reader does not know.
    Var(String),
    Array(Vec<Val>),
    Map(Vec<Node>),
}

/// Parses nats-server config text into entries; an error is (line, why).
///
/// nats-server's lexer ends a bare key at any Unicode space and reads
/// characters this reader does not model, so a file holding a control
/// character (other than tab and line ends) or non-ASCII white space is
/// refused rather than read differently from the broker (`no_auth_user\f=`
/// would otherwise hide the key from this judge and not from nats-server).
fn parse(text: &str) -> Result<Vec<Node>, (usize, String)> {
    for (i, line) in text.split('\n').enumerate() {
        if let Some(c) = line.chars().find(|c| {
            (c.is_control() && !matches!(c, '\t' | '\r')) || (!c.is_ascii() && c.is_whitespace())
        }) {
            return Err((
                i + 1,
                format!(
                    "character U+{:04X} is not allowed in an included file (nats-server could read the line differently)",
                    u32::from(c)
                ),
            ));
        }
    }
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    p.map(false, 0)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\r'
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
        }
        Some(b)
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T, (usize, String)> {
        Err((self.line, msg.into()))
    }

    fn skip_comment(&mut self) -> bool {
        match (self.peek(), self.s.get(self.pos + 1)) {
            (Some(b'#'), _) | (Some(b'/'), Some(b'/')) => {
                while let Some(b) = self.peek() {
                    if b == b'\n' {
                        break;
                    }
                    self.pos += 1;
                }
                true
            }
            _ => false,
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    /// Whitespace, new lines, comments and the separators between entries.
    fn skip_between(&mut self) {
        loop {
            match self.peek() {
                Some(b) if is_space(b) || b == b'\n' || b == b',' || b == b';' => {
                    self.bump();
                }
                Some(_) if self.skip_comment() => {}
                _ => return,
            }
        }
    }

    fn quoted(&mut self, quote: u8) -> Result<String, (usize, String)> {
        let start = self.pos;
        loop {
            match self.bump() {
                None => return self.err("a quoted string does not end"),
                Some(b'\\') if quote == b'"' => {
                    self.bump();
                }
                Some(b) if b == quote => break,
                Some(_) => {}
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos - 1]).into_owned())
    }

    fn bare(&mut self, stop: impl Fn(u8) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(|b| !stop(b)) {
            self.bump();
        }
        String::from_utf8_lossy(&self.s[start..self.pos]).into_owned()
    }

    /// The entries of the file (`inner == false`) or of a `{}` block whose
    /// `{` was consumed.
    fn map(&mut self, inner: bool, depth: usize) -> Result<Vec<Node>, (usize, String)> {
        if depth > MAX_NESTING {
            return self.err(format!("blocks nest deeper than {MAX_NESTING} levels"));
        }
        let mut nodes = Vec::new();
        loop {
            self.skip_between();
            let line = self.line;
            let key = match self.peek() {
                None if inner => return self.err("a block `{` is not closed"),
                None => return Ok(nodes),
                Some(b'}') if inner => {
                    self.bump();
                    return Ok(nodes);
                }
                // nats-server accepts the whole file wrapped in braces.
                Some(b'{') if !inner && nodes.is_empty() => {
                    self.bump();
                    continue;
                }
                Some(b'}') if !inner => {
                    self.bump();
                    continue;
                }
                Some(q @ (b'"' | b'\'')) => {
                    self.bump();
                    // nats-server ends a quoted key at the first quote, with
                    // no escapes: a backslash would make this reader and the
                    // broker split the file differently.
                    let key = self.quoted(q)?;
                    if key.contains('\\') {
                        return self.err("a quoted key holds a backslash");
                    }
                    key
                }
                Some(_) => {
                    let key = self
                        .bare(|b| is_space(b) || b == b'\n' || b == b'=' || b == b':' || b == b'}');
                    if key.eq_ignore_ascii_case("include") && self.peek().is_some_and(is_space) {
                        self.skip_spaces();
                        let path = match self.peek() {
                            Some(q @ (b'"' | b'\'')) => {
                                self.bump();
                                // Include paths are raw: no escapes.
                                let start = self.pos;
                                while self.peek().is_some_and(|b| b != q) {
                                    self.bump();
                                }
                                let p = String::from_utf8_lossy(&self.s[start..self.pos]);
                                self.bump();
                                p.into_owned()
                            }
                            _ => self.bare(|b| {
                                is_space(b) || b == b'\n' || b == b';' || b == b'}' || b == b'\''
                            }),
                        };
                        if path.is_empty() {
                            return self.err("`include` without a path");
                        }
                        nodes.push(Node::Include { path, line });
                        continue;
                    }
                    key
                }
            };
            // Key separator: `=`, `:` or whitespace (new lines included).
            while self.peek().is_some_and(|b| is_space(b) || b == b'\n') {
                self.bump();
            }
            if matches!(self.peek(), Some(b'=' | b':')) {
                self.bump();
            }
            self.skip_spaces();
            let value = self.value(depth)?;
            nodes.push(Node::Pair { key, line, value });
        }
    }

    fn value(&mut self, depth: usize) -> Result<Val, (usize, String)> {
        match self.peek() {
            None | Some(b'\n') => self.err("a key without a value"),
            Some(b'{') => {
                self.bump();
                Ok(Val::Map(self.map(true, depth + 1)?))
            }
            Some(b'[') => {
                self.bump();
                if depth + 1 > MAX_NESTING {
                    return self.err(format!("arrays nest deeper than {MAX_NESTING} levels"));
                }
                let mut items = Vec::new();
                loop {
                    self.skip_between();
                    match self.peek() {
                        None => return self.err("an array `[` is not closed"),
                        Some(b']') => {
                            self.bump();
                            return Ok(Val::Array(items));
                        }
                        Some(_) => items.push(self.value(depth + 1)?),
                    }
                }
            }
            Some(q @ (b'"' | b'\'')) => {
                self.bump();
                Ok(Val::Scalar(self.quoted(q)?))
            }
            Some(b'(') => {
                // A block string ends at `)`.
                self.bump();
                let s = self.bare(|b| b == b')');
                if self.bump().is_none() {
                    return self.err("a block `(` is not closed");
                }
                Ok(Val::Scalar(s))
            }
            Some(_) => {
                let s =
                    self.bare(|b| is_space(b) || matches!(b, b'\n' | b',' | b';' | b'}' | b']'));
                Ok(match s.strip_prefix('$') {
                    Some(name) => Val::Var(name.to_owned()),
                    None => Val::Scalar(s),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("dir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    fn root(key: &str, p: &Path) -> Vec<(String, PathBuf)> {
        vec![(key.to_owned(), p.to_path_buf())]
    }

    #[test]
    fn reads_nats_server_syntax() {
        let doc = parse(
            "# c\n{\nA: { users = [ {user: a, password: \"p\\\"w\"}, {user: 'b' nkey: UAB} ] }\n// c\nB { include 'x.conf'; x: (\nblock\n) }\ninclude \"y.conf\"\nz 1, w: [1, 2]\n}\n",
        )
        .expect("parses");
        let mut found = Vec::new();
        includes_in(&doc, &["accounts".to_owned()], &mut found);
        assert_eq!(
            found,
            vec![
                (
                    "x.conf".to_owned(),
                    vec!["accounts".to_owned(), "B".to_owned()]
                ),
                ("y.conf".to_owned(), vec!["accounts".to_owned()]),
            ]
        );
        assert_eq!(doc.len(), 5, "{doc:?}");
        assert!(parse("a: {").is_err());
        assert!(parse("a: [1").is_err());
        assert!(parse(&"[".repeat(10_000)).is_err(), "nesting is bounded");
        assert!(parse(&format!("a: {}", "[".repeat(10_000))).is_err());
    }

    #[test]
    fn a_file_including_itself_many_times_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        // Without the visited set this is 7^8 reads.
        let a = write(dir.path(), "a.conf", &"include a.conf\n".repeat(7));
        let started = Instant::now();
        let err = walk(&root("accounts.include", &a)).expect_err("refused");
        assert!(started.elapsed() < Duration::from_millis(500));
        let msg = err.to_string();
        assert!(matches!(err, IncludeError::Cycle { .. }), "{msg}");
        assert!(
            msg.contains("a.conf → ") && msg.ends_with("a.conf"),
            "{msg}"
        );
    }

    #[test]
    fn a_cycle_is_refused_naming_the_chain() {
        let dir = tempfile::tempdir().expect("dir");
        let a = write(dir.path(), "a.conf", "A: {}\ninclude b.conf\n");
        write(dir.path(), "b.conf", "B: {}\ninclude /a.conf\n");
        let err = walk(&root("accounts.include", &a)).expect_err("refused");
        let d = std::fs::canonicalize(dir.path()).expect("canonical");
        let want = format!(
            "include cycle: {a} → {b} → {a}",
            a = d.join("a.conf").display(),
            b = d.join("b.conf").display()
        );
        assert_eq!(err.to_string(), want);
    }

    #[test]
    fn a_file_reached_twice_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let a = write(dir.path(), "a.conf", "include b.conf\ninclude c.conf\n");
        write(dir.path(), "b.conf", "include c.conf\n");
        write(dir.path(), "c.conf", "C: {}\n");
        let err = walk(&root("accounts.include", &a)).expect_err("refused");
        assert!(matches!(err, IncludeError::Repeat { .. }), "{err}");
        assert!(
            err.to_string().contains("c.conf is included twice"),
            "{err}"
        );
    }

    #[test]
    fn depth_is_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        for i in 0..=MAX_DEPTH {
            write(
                dir.path(),
                &format!("{i}.conf"),
                &format!("include {}.conf\n", i + 1),
            );
        }
        write(dir.path(), &format!("{}.conf", MAX_DEPTH + 1), "X: {}\n");
        let err = walk(&root("accounts.include", &dir.path().join("0.conf"))).expect_err("deep");
        assert!(matches!(err, IncludeError::TooDeep { .. }), "{err}");
        // One level less is fine.
        write(dir.path(), &format!("{MAX_DEPTH}.conf"), "X: {}\n");
        let tree = walk(&root("accounts.include", &dir.path().join("0.conf"))).expect("ok");
        assert_eq!(tree.files.len(), MAX_DEPTH + 1);
    }

    #[test]
    fn the_tree_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().expect("dir");
        let half = "# padding\n".repeat((MAX_TOTAL_BYTES as usize / 2) / 10 + 1);
        let a = write(dir.path(), "a.conf", &format!("include b.conf\n{half}"));
        write(dir.path(), "b.conf", &half);
        let err = walk(&root("accounts.include", &a)).expect_err("too large");
        assert!(matches!(err, IncludeError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("b.conf"), "{err}");
        // A FIFO is refused without blocking.
        let fifo = dir.path().join("fifo.conf");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let err = walk(&root("accounts.include", &fifo)).expect_err("fifo");
        assert!(matches!(err, IncludeError::NotAFile { .. }), "{err}");
    }

    fn problems(key: &str, files: &[(&str, &str)]) -> Vec<String> {
        let dir = tempfile::tempdir().expect("dir");
        for (name, text) in files {
            write(dir.path(), name, text);
        }
        let tree = walk(&root(key, &dir.path().join(files[0].0))).expect("walks");
        tree.problems().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn keys_natsmesh_owns_are_refused_in_includes_at_any_depth() {
        for (key, text, want_key) in [
            (
                "websocket.include",
                "tls { cert_file: x }\n",
                "websocket.tls",
            ),
            ("websocket.include", "no_tls: true\n", "websocket.no_tls"),
            (
                "leafnodes.include",
                "authorization { user: a, password: b }\n",
                "leafnodes.authorization",
            ),
            (
                "cluster.include",
                "authorization: { timeout: 1 }\n",
                "cluster.authorization",
            ),
            ("mqtt.include", "no_auth_user: guest\n", "mqtt.no_auth_user"),
            (
                "accounts.include",
                "A: { no_auth_user: x }\n",
                "accounts.A.no_auth_user",
            ),
        ] {
            // Directly in the root include…
            let got = problems(key, &[("root.conf", text)]);
            assert_eq!(got.len(), 1, "{key} {text}: {got:?}");
            assert!(got[0].contains("root.conf:"), "{got:?}");
            assert!(
                got[0].contains(&format!("`{want_key}` is not allowed")),
                "{got:?}"
            );
            // …and two levels down, named by the nested file.
            let got = problems(
                key,
                &[
                    ("root.conf", "include sub/one.conf\n"),
                    ("sub/one.conf", "include two.conf\n"),
                    ("sub/two.conf", text),
                ],
            );
            assert_eq!(got.len(), 1, "{key} nested: {got:?}");
            assert!(got[0].contains("sub/two.conf:1:"), "{got:?}");
            assert!(got[0].contains(&format!("`{want_key}`")), "{got:?}");
        }
    }

    #[test]
    fn every_user_needs_a_credential() {
        let got = problems(
            "accounts.include",
            &[
                (
                    "accounts.conf",
                    "A: {\n users: [\n {user: ok, password: pw}\n {user: nk, nkey: UABC}\n {user: open}\n {user: empty, password: \"\"}\n {user: inc, include pw.conf}\n ]\n}\n",
                ),
                ("pw.conf", "password: secret\n"),
            ],
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].contains("accounts.conf:2: `accounts.A.users[2]`"),
            "{got:?}"
        );
        assert!(got[1].contains("`accounts.A.users[3]`"), "{got:?}");
        assert!(got[0].contains("password or an nkey"), "{got:?}");
        // In a nested include too.
        let got = problems(
            "accounts.include",
            &[
                ("accounts.conf", "A: { include users.conf }\n"),
                ("users.conf", "users = [{user: x}]\n"),
            ],
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("users.conf:1: `accounts.A.users[0]`"),
            "{got:?}"
        );
    }

    /// What nats-server reads one way and a simpler reader another is
    /// refused, not guessed: keys ended by a form feed or another Unicode
    /// space, a quoted key with a backslash (nats-server ends it at the
    /// first quote), users or passwords hidden behind variables, and an
    /// authorization block's single user without a password.
    #[test]
    fn what_nats_server_could_read_differently_is_refused() {
        let walk_err = |text: &str| {
            let dir = tempfile::tempdir().expect("dir");
            let p = write(dir.path(), "ws.conf", text);
            match walk(&root("websocket.include", &p)) {
                Err(e) => e.to_string(),
                Ok(t) => t.problems().iter().map(ToString::to_string).collect(),
            }
        };
        for text in [
            "no_auth_user\x0c= guest\n",
            "include\x0cevil.conf\n",
            "no_auth_user\u{a0}= guest\n",
            "x: 1\u{2028}no_auth_user: guest\n",
        ] {
            let got = walk_err(text);
            assert!(
                got.contains("is not allowed in an included file"),
                "{text:?}: {got}"
            );
        }
        let got = walk_err("\"a\\\" {}\nno_auth_user = g\n\"c\" {}\n");
        assert!(got.contains("backslash"), "{got}");
        let got = problems(
            "accounts.include",
            &[(
                "accounts.conf",
                "U = [{user: guest}]\nA { users: $U }\nB { users: [{user: v, password: $P}] }\n",
            )],
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].contains("`accounts.A.users`") && got[0].contains("variable"),
            "{got:?}"
        );
        assert!(got[1].contains("`accounts.B.users[0]`"), "{got:?}");
        // A quoted bcrypt hash is a value, not a variable.
        let got = problems(
            "accounts.include",
            &[(
                "accounts.conf",
                "A { users: [{user: v, password: \"$2a$11$abcdefghijklmnopqrstuv\"}] }\n",
            )],
        );
        assert!(got.is_empty(), "{got:?}");
        let got = problems("authorization.include", &[("authz.conf", "user: guest\n")]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("`authorization.user`"), "{got:?}");
        let got = problems(
            "authorization.include",
            &[("authz.conf", "user: guest\npassword: \"$2a$11$x\"\n")],
        );
        assert!(got.is_empty(), "{got:?}");
    }

    /// A nested include is found as nats-server finds it: next to the
    /// including file's path as written, not where a link points.
    #[test]
    fn nested_includes_resolve_next_to_the_path_as_written() {
        let dir = tempfile::tempdir().expect("dir");
        let real = dir.path().join("real");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).expect("dir");
        write(&real, "accounts.conf", "A { include users.conf }\n");
        write(&real, "users.conf", "users: [{user: ok, password: pw}]\n");
        write(&etc, "users.conf", "users: [{user: open}]\n");
        std::os::unix::fs::symlink(real.join("accounts.conf"), etc.join("accounts.conf"))
            .expect("link");
        let tree = walk(&root("accounts.include", &etc.join("accounts.conf"))).expect("walks");
        let got: Vec<String> = tree.problems().iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), 1, "the broker reads etc/users.conf: {got:?}");
        assert!(got[0].contains("etc/users.conf"), "{got:?}");
        assert_eq!(clean(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
    }

    #[test]
    fn a_benign_tree_passes() {
        let got = problems(
            "accounts.include",
            &[
                (
                    "accounts.conf",
                    "# accounts\nAPP: { include 'users/app.conf' }\ntls: { jetstream: enabled }\nOPS { users: [{user: ops, password: \"$2a$11$x\"}], exports: [{stream: \"a.>\"}] }\n",
                ),
                (
                    "users/app.conf",
                    "users: [{nkey: UAPP}]\njetstream: enabled\n",
                ),
            ],
        );
        assert!(got.is_empty(), "{got:?}");
    }
}
