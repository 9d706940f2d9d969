//! A small HCL writer: blocks, attributes and comments built as values and
//! serialised, so no input is ever pasted into the text. String literals
//! are escaped (quotes, backslashes, and `${`/`%{`, which Terraform would
//! read as a template); expressions are written as given and only ever
//! built here from checked names.

use std::fmt::Write as _;

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A quoted string literal.
    Str(String),
    /// A number.
    Num(u64),
    /// A boolean.
    Bool(bool),
    /// A list (`[a, b]`).
    List(Vec<Value>),
    /// An expression written verbatim (references, function calls,
    /// templates): built only from names this module checked.
    Expr(String),
}

/// A string literal.
pub fn s(v: impl Into<String>) -> Value {
    Value::Str(v.into())
}

/// An expression.
pub fn e(v: impl Into<String>) -> Value {
    Value::Expr(v.into())
}

/// One line of a body.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `name = value`.
    Attr(&'static str, Value),
    /// A nested block.
    Block(Block),
    /// `# text` (one comment line per line of text).
    Comment(String),
    /// An empty line.
    Blank,
}

/// `kind "label" … { body }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// `resource`, `forwarding_rule`, …
    pub kind: &'static str,
    /// Its labels (quoted).
    pub labels: Vec<String>,
    /// Its body.
    pub body: Vec<Item>,
}

impl Block {
    /// A block with these labels and an empty body.
    pub fn new(kind: &'static str, labels: &[&str]) -> Self {
        Self {
            kind,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            body: Vec::new(),
        }
    }

    /// Adds `name = value`.
    pub fn attr(mut self, name: &'static str, value: Value) -> Self {
        self.body.push(Item::Attr(name, value));
        self
    }

    /// Adds a nested block.
    pub fn block(mut self, b: Block) -> Self {
        self.body.push(Item::Block(b));
        self
    }

    /// Adds a comment (each line of `text` its own `#` line).
    pub fn comment(mut self, text: impl Into<String>) -> Self {
        self.body.push(Item::Comment(text.into()));
        self
    }
}

/// A string literal as HCL reads it back to `v`.
fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // A template sequence in a literal is doubled, so it stays text.
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn value(v: &Value) -> String {
    match v {
        Value::Str(s) => quote(s),
        Value::Num(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::List(items) => format!(
            "[{}]",
            items.iter().map(value).collect::<Vec<_>>().join(", ")
        ),
        Value::Expr(x) => x.clone(),
    }
}

/// A comment's lines, each made safe to stand on its own `#` line.
pub fn comment_lines(text: &str, indent: &str, out: &mut String) {
    for line in text.lines() {
        let line: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if line.is_empty() {
            let _ = writeln!(out, "{indent}#");
        } else {
            let _ = writeln!(out, "{indent}# {line}");
        }
    }
}

fn write_block(b: &Block, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let _ = write!(out, "{indent}{}", b.kind);
    for l in &b.labels {
        let _ = write!(out, " {}", quote(l));
    }
    out.push_str(" {\n");
    // Attributes of one run are aligned, as `terraform fmt` does.
    let width = b
        .body
        .iter()
        .filter_map(|i| match i {
            Item::Attr(n, _) => Some(n.len()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let inner = "  ".repeat(depth + 1);
    for item in &b.body {
        match item {
            Item::Attr(n, v) => {
                let _ = writeln!(out, "{inner}{n:<width$} = {}", value(v));
            }
            Item::Block(nested) => write_block(nested, depth + 1, out),
            Item::Comment(c) => comment_lines(c, &inner, out),
            Item::Blank => out.push('\n'),
        }
    }
    let _ = writeln!(out, "{indent}}}");
}

/// A file: top-level items (blocks and comments), a blank line between.
pub fn file(items: &[Item]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Item::Block(b) => {
                write_block(b, 0, &mut out);
                if matches!(items.get(i + 1), Some(Item::Block(_) | Item::Comment(_))) {
                    out.push('\n');
                }
            }
            Item::Comment(c) => comment_lines(c, "", &mut out),
            Item::Blank => out.push('\n'),
            Item::Attr(n, v) => {
                let _ = writeln!(out, "{n} = {}", value(v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_cannot_become_templates_or_end_early() {
        assert_eq!(quote("a\"b"), r#""a\"b""#);
        assert_eq!(quote("${x}"), r#""$${x}""#);
        assert_eq!(quote("%{if}"), r#""%%{if}""#);
        assert_eq!(quote("$5 and 100%"), r#""$5 and 100%""#);
        assert_eq!(quote("a\nb\\"), r#""a\nb\\""#);
        let mut out = String::new();
        comment_lines("one\nresource \"x\" {\u{7}", "", &mut out);
        assert_eq!(out, "# one\n# resource \"x\" { \n");
    }

    #[test]
    fn blocks_nest_and_align() {
        let b = Block::new("resource", &["t", "n"])
            .attr("name", s("x"))
            .attr("count", Value::Num(3))
            .block(Block::new("lifecycle", &[]).attr("ignore_changes", e("[droplet_ids]")));
        assert_eq!(
            file(&[Item::Block(b)]),
            "resource \"t\" \"n\" {\n  name  = \"x\"\n  count = 3\n  lifecycle {\n    ignore_changes = [droplet_ids]\n  }\n}\n"
        );
    }
}
