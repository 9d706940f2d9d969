//! Checks a request, or an answer, against the provider's published OpenAPI
//! description (the fakes do both for every exchange, [`super::contract`]):
//! the path matches one of the spec's templated paths, the method is an
//! operation of it, path parameters and the JSON body satisfy their
//! schemas; an answer's status is one the operation lists (or its
//! `default`, or for an error the provider's common error) and its body
//! satisfies that response's schema.
//!
//! The specs are copies in `tests/specs` (Apache-2.0, the providers' own
//! files, as shared/reference/provider-specs has them;
//! `NATSMESH_PROVIDER_SPECS` overrides the folder):
//! DigitalOcean's split YAML files from
//! `digitalocean/specification/load-balancer-subset.v2.yaml` (load balancer
//! list and get, droplets add/remove, tag assign/unassign, droplet get,
//! domain get, domain records list/create/get/delete; relative `$ref`s resolved
//! from each file's folder), Linode's single `linode/openapi.yaml` (v4.176,
//! paths relative to the server's `/v4`).
//!
//! The schema keywords checked are what these specs use: `$ref` (anywhere,
//! also directly under `properties`, the DigitalOcean quirk of §1.3 of
//! provider-apis.md, where it stands for the whole properties map),
//! `allOf`/`anyOf`/`oneOf`, `type` (a schema with `properties` or
//! `required` but no `type` is taken as an object, as the DigitalOcean files
//! mean it), `nullable`, `enum`, `required`, `properties`,
//! `additionalProperties`, `items`, `minItems`/`maxItems`,
//! `minimum`/`maximum` (with 3.0's boolean `exclusive*`),
//! `minLength`/`maxLength` and `pattern` (unanchored, as JSON Schema
//! defines it; the fakes check labels and addresses more strictly). A
//! `readOnly` property sent in a request is an error (OpenAPI 3.0: such
//! properties are not sent), and a required `readOnly` property is not
//! required in a request. `format` is not checked: it is an annotation, and
//! Linode's node `address` says `format: ip` of an `ip:port` value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde_json::{Map, Number, Value};

/// Which provider's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// DigitalOcean's API v2 (the load balancer subset).
    DigitalOcean,
    /// Linode's API v4.
    Linode,
}

/// `Ok` when `method path` with `body` is a request the provider's OpenAPI
/// description allows; otherwise every problem found, `; `-separated.
/// `path` may be a full URL and may carry a query (ignored).
pub fn validate_request(
    spec: Spec,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(), String> {
    let op = operation(spec, method, path)?;
    let docs = op.docs;
    let mut v = Validator {
        docs,
        errors: Vec::new(),
        response: false,
    };
    // Path parameters, from the path item and the operation.
    let declared = [
        (&op.item_file, op.item.get("parameters")),
        (&op.op_file, op.op.get("parameters")),
    ];
    for (file, list) in declared {
        for p in list.and_then(Value::as_array).into_iter().flatten() {
            let (pfile, p) = docs.resolve(file, p)?;
            if p["in"] != "path" {
                continue;
            }
            let name = p["name"].as_str().unwrap_or_default();
            let Some(raw) = op.params.get(name) else {
                continue;
            };
            let schema = p.get("schema").cloned().unwrap_or(Value::Bool(true));
            let (sfile, schema) = docs.resolve(&pfile, &schema)?;
            let value = if schema["type"] == "integer" {
                raw.parse::<i64>().map_or_else(
                    |_| Value::String(raw.clone()),
                    |n| Value::Number(Number::from(n)),
                )
            } else {
                Value::String(raw.clone())
            };
            v.check(
                &sfile,
                &schema,
                &value,
                &format!("path parameter {name}"),
                0,
            );
        }
    }
    // The body.
    let template = &op.template;
    match (op.op.get("requestBody"), body) {
        (None, None) => {}
        (None, Some(_)) => v
            .errors
            .push(format!("{method} {template} takes no request body")),
        (Some(rb), body) => {
            let (rb_file, rb) = docs.resolve(&op.op_file, rb)?;
            match body {
                None if rb["required"] == true => {
                    v.errors.push("a request body is required".into())
                }
                None => {}
                Some(body) => match rb.pointer("/content/application~1json/schema") {
                    Some(schema) => v.check(&rb_file, schema, body, "body", 0),
                    None => v.errors.push("the operation takes no JSON body".into()),
                },
            }
        }
    }
    v.result()
}

/// `Ok` when `status` with `body` (the raw bytes, empty for none) is an
/// answer the provider's OpenAPI description documents for `method path`:
/// the status is one of the operation's responses (or its `default`), and
/// a JSON body satisfies that response's schema (`readOnly` properties are
/// expected here). Both providers document their error bodies once for
/// the whole API besides listing some per operation, so an error status
/// (4xx, 5xx) an operation does not list is held to the provider's common
/// error schema instead of being refused (Linode's `GET
/// /domains/{domainId}/records` lists only 200, yet answers 401 and 429
/// like every other operation).
pub fn validate_response(
    spec: Spec,
    method: &str,
    path: &str,
    status: u16,
    body: &[u8],
) -> Result<(), String> {
    let problems = response_problems(spec, method, path, status, body)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// What [`validate_response`] finds, one problem an item (`Err` when the
/// exchange cannot be placed in the spec at all).
pub fn response_problems(
    spec: Spec,
    method: &str,
    path: &str,
    status: u16,
    body: &[u8],
) -> Result<Vec<String>, String> {
    let op = operation(spec, method, path)?;
    let docs = op.docs;
    let template = &op.template;
    let responses = op.op.get("responses").and_then(Value::as_object);
    let listed = responses.and_then(|r| {
        r.get(&status.to_string())
            .or_else(|| r.get(&format!("{}XX", status / 100)))
            .or_else(|| r.get("default"))
    });
    let (file, response) = match listed {
        Some(r) => docs.resolve(&op.op_file, r)?,
        None if status >= 400 => common_error(spec, docs)?,
        None => {
            return Err(format!(
                "{status} is not a documented answer of {method} {template}"
            ));
        }
    };
    let mut v = Validator {
        docs,
        errors: Vec::new(),
        response: true,
    };
    match response.pointer("/content/application~1json/schema") {
        None if body.is_empty() => {}
        None if response.get("content").is_none() => v.errors.push(format!(
            "{method} {template} answers {status} without a body, not {}",
            short(&Value::String(String::from_utf8_lossy(body).into_owned()))
        )),
        // Another media type: not checked here.
        None => {}
        Some(schema) => match serde_json::from_slice::<Value>(body) {
            Ok(json) => v.check(&file, schema, &json, "body", 0),
            Err(e) => v.errors.push(format!(
                "{method} {template} answers {status} with JSON, and this is not: {e}"
            )),
        },
    }
    Ok(v.errors)
}

/// The provider's error response for any operation.
fn common_error(spec: Spec, docs: &'static Docs) -> Result<(PathBuf, Value), String> {
    let (file, pointer) = match spec {
        Spec::DigitalOcean => ("shared/responses/unexpected_error.yml", ""),
        Spec::Linode => ("", "/components/responses/ErrorResponse"),
    };
    let file = if file.is_empty() {
        docs.root.clone()
    } else {
        normalize(&docs.root.parent().unwrap_or(Path::new("/")).join(file))
    };
    let doc = docs.doc(&file)?;
    let found = if pointer.is_empty() {
        Some(doc.as_ref())
    } else {
        doc.pointer(pointer)
    };
    let node = found
        .cloned()
        .ok_or_else(|| format!("no common error response in {}", file.display()))?;
    docs.resolve(&file, &node)
}

/// One operation of a spec, found by method and path.
struct Operation {
    docs: &'static Docs,
    template: String,
    params: HashMap<String, String>,
    item_file: PathBuf,
    item: Value,
    op_file: PathBuf,
    op: Value,
}

fn operation(spec: Spec, method: &str, path: &str) -> Result<Operation, String> {
    let docs = docs(spec)?;
    let path = api_path(spec, path)?;
    let root = docs.doc(&docs.root)?;
    let paths = root
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("the spec has no paths")?;
    let segs: Vec<String> = path.split('/').skip(1).map(percent_decode).collect();
    let (template, params) = paths
        .keys()
        .filter_map(|t| match_template(t, &segs).map(|(score, params)| (score, t, params)))
        .max_by_key(|(score, _, _)| *score)
        .map(|(_, t, params)| (t.clone(), params))
        .ok_or_else(|| format!("no path of the {spec:?} spec matches {path}"))?;
    let (item_file, item) = docs.resolve(&docs.root, &paths[&template])?;
    let op = item
        .get(method.to_ascii_lowercase())
        .ok_or_else(|| format!("{method} is not an operation of {template}"))?;
    let (op_file, op) = docs.resolve(&item_file, op)?;
    Ok(Operation {
        docs,
        template,
        params,
        item_file,
        item,
        op_file,
        op,
    })
}

/// The request path as the spec's paths are written.
fn api_path(spec: Spec, path: &str) -> Result<String, String> {
    let mut p = path;
    if let Some(rest) = p
        .strip_prefix("http://")
        .or_else(|| p.strip_prefix("https://"))
    {
        p = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let p = p.split(['?', '#']).next().unwrap_or_default();
    match spec {
        Spec::DigitalOcean => Ok(p.to_owned()),
        // The server URL is https://api.linode.com/v4 (v4beta alike).
        Spec::Linode => ["/v4beta/", "/v4/"]
            .iter()
            .find_map(|prefix| p.strip_prefix(prefix).map(|rest| format!("/{rest}")))
            .ok_or_else(|| format!("{p} is not under /v4")),
    }
}

/// How well `template` matches the segments (literal segments count), and
/// the template's parameters.
fn match_template(template: &str, segs: &[String]) -> Option<(usize, HashMap<String, String>)> {
    let parts: Vec<&str> = template.split('/').skip(1).collect();
    if parts.len() != segs.len() {
        return None;
    }
    let mut score = 0;
    let mut params = HashMap::new();
    for (part, seg) in parts.iter().zip(segs) {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if seg.is_empty() {
                return None;
            }
            params.insert(name.to_owned(), seg.clone());
        } else if part == seg {
            score += 1;
        } else {
            return None;
        }
    }
    Some((score, params))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// Documents ------------------------------------------------------------------

/// A spec's files, parsed on first use.
struct Docs {
    root: PathBuf,
    files: Mutex<HashMap<PathBuf, Arc<Value>>>,
}

fn specs_dir() -> PathBuf {
    std::env::var_os("NATSMESH_PROVIDER_SPECS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("specs"),
        PathBuf::from,
    )
}

fn docs(spec: Spec) -> Result<&'static Docs, String> {
    static DO: OnceLock<Docs> = OnceLock::new();
    static LINODE: OnceLock<Docs> = OnceLock::new();
    let (cell, rel) = match spec {
        Spec::DigitalOcean => (
            &DO,
            "digitalocean/specification/load-balancer-subset.v2.yaml",
        ),
        Spec::Linode => (&LINODE, "linode/openapi.yaml"),
    };
    let docs = cell.get_or_init(|| Docs {
        root: normalize(&specs_dir().join(rel)),
        files: Mutex::new(HashMap::new()),
    });
    docs.doc(&docs.root)?;
    Ok(docs)
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl Docs {
    /// The parsed file at `path`.
    fn doc(&self, path: &Path) -> Result<Arc<Value>, String> {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = files.get(path) {
            return Ok(d.clone());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the spec file {}: {e}", path.display()))?;
        let yaml: serde_norway::Value = serde_norway::from_str(&text)
            .map_err(|e| format!("{} is not YAML: {e}", path.display()))?;
        let doc = Arc::new(to_json(yaml));
        files.insert(path.to_owned(), doc.clone());
        Ok(doc)
    }

    /// Follows `$ref`s from `node` (read in `file`) to what it stands for,
    /// and the file that is in.
    fn resolve(&self, file: &Path, node: &Value) -> Result<(PathBuf, Value), String> {
        let mut file = file.to_owned();
        let mut node = node.clone();
        for _ in 0..32 {
            let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
                return Ok((file, node));
            };
            let (target, pointer) = reference.split_once('#').unwrap_or((reference, ""));
            if !target.is_empty() {
                let dir = file.parent().unwrap_or(Path::new("/"));
                file = normalize(&dir.join(target));
            }
            let doc = self.doc(&file)?;
            let found = if pointer.is_empty() {
                Some(doc.as_ref())
            } else {
                doc.pointer(pointer)
            };
            node = found.cloned().ok_or_else(|| {
                format!("$ref {reference} from {} points nowhere", file.display())
            })?;
        }
        Err(format!("$ref chain too long at {}", file.display()))
    }
}

/// YAML to JSON; keys that are not strings (`200:`) become strings.
fn to_json(v: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match to_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, to_json(v));
            }
            Value::Object(out)
        }
        Y::Tagged(t) => to_json(t.value),
    }
}

// Schemas --------------------------------------------------------------------

struct Validator {
    docs: &'static Docs,
    errors: Vec<String>,
    /// Checking an answer: `readOnly` properties belong there, and
    /// `writeOnly` ones do not.
    response: bool,
}

impl Validator {
    fn result(self) -> Result<(), String> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors.join("; "))
        }
    }

    fn fail(&mut self, at: &str, what: String) {
        self.errors.push(format!("{at}: {what}"));
    }

    /// Whether `inst` passes `schema` (errors not kept).
    fn passes(&self, file: &Path, schema: &Value, inst: &Value, at: &str, depth: u32) -> bool {
        let mut sub = Validator {
            docs: self.docs,
            errors: Vec::new(),
            response: self.response,
        };
        sub.check(file, schema, inst, at, depth);
        sub.errors.is_empty()
    }

    fn check(&mut self, file: &Path, schema: &Value, inst: &Value, at: &str, depth: u32) {
        if depth > 64 {
            return;
        }
        let (file, schema) = match self.docs.resolve(file, schema) {
            Ok(x) => x,
            Err(e) => return self.fail(at, e),
        };
        let Some(s) = schema.as_object() else {
            return; // `true` or an empty schema
        };
        if inst.is_null() && s.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        for sub in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.check(&file, sub, inst, at, depth + 1);
        }
        if let Some(any) = s.get("anyOf").and_then(Value::as_array)
            && !any
                .iter()
                .any(|sub| self.passes(&file, sub, inst, at, depth + 1))
        {
            self.fail(at, "matches none of anyOf".into());
        }
        if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
            let n = one
                .iter()
                .filter(|sub| self.passes(&file, sub, inst, at, depth + 1))
                .count();
            if n != 1 {
                self.fail(at, format!("matches {n} of oneOf, not exactly one"));
            }
        }
        let kind = s.get("type").and_then(Value::as_str).or_else(|| {
            if s.contains_key("properties") || s.contains_key("required") {
                Some("object")
            } else if s.contains_key("items") {
                Some("array")
            } else {
                None
            }
        });
        if let Some(kind) = kind {
            let ok = match kind {
                "object" => inst.is_object(),
                "array" => inst.is_array(),
                "string" => inst.is_string(),
                "boolean" => inst.is_boolean(),
                "integer" => inst.is_i64() || inst.is_u64(),
                "number" => inst.is_number(),
                _ => true,
            };
            if !ok {
                return self.fail(at, format!("{} is not of type {kind}", short(inst)));
            }
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array)
            && !options.contains(inst)
        {
            self.fail(
                at,
                format!(
                    "{} is not one of {}",
                    short(inst),
                    Value::Array(options.clone())
                ),
            );
        }
        match inst {
            Value::String(text) => self.string(s, text, at),
            Value::Number(n) => self.number(s, n, at),
            Value::Array(items) => self.array(&file, s, items, at, depth),
            Value::Object(map) => self.object(&file, s, map, at, depth),
            _ => {}
        }
    }

    fn string(&mut self, s: &Map<String, Value>, text: &str, at: &str) {
        let len = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            self.fail(at, format!("{text:?} is shorter than {min}"));
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            self.fail(at, format!("{text:?} is longer than {max}"));
        }
        if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
            match compile(pattern) {
                Ok(re) if !re.is_match(text) => {
                    self.fail(at, format!("{text:?} does not match {pattern}"));
                }
                Ok(_) => {}
                Err(e) => self.fail(
                    at,
                    format!("the spec's pattern {pattern} does not compile: {e}"),
                ),
            }
        }
    }

    fn number(&mut self, s: &Map<String, Value>, n: &Number, at: &str) {
        let Some(x) = n.as_f64() else {
            return;
        };
        let bound = |k: &str| s.get(k).and_then(Value::as_f64);
        let exclusive = |k: &str| s.get(k) == Some(&Value::Bool(true));
        if let Some(min) = bound("minimum") {
            let below = if exclusive("exclusiveMinimum") {
                x <= min
            } else {
                x < min
            };
            if below {
                self.fail(at, format!("{n} is below the minimum {min}"));
            }
        }
        if let Some(max) = bound("maximum") {
            let above = if exclusive("exclusiveMaximum") {
                x >= max
            } else {
                x > max
            };
            if above {
                self.fail(at, format!("{n} is above the maximum {max}"));
            }
        }
    }

    fn array(
        &mut self,
        file: &Path,
        s: &Map<String, Value>,
        items: &[Value],
        at: &str,
        depth: u32,
    ) {
        let n = items.len() as u64;
        if let Some(min) = s.get("minItems").and_then(Value::as_u64)
            && n < min
        {
            self.fail(at, format!("{n} items, fewer than {min}"));
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
            && n > max
        {
            self.fail(at, format!("{n} items, more than {max}"));
        }
        if let Some(schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(file, schema, item, &format!("{at}[{i}]"), depth + 1);
            }
        }
    }

    fn object(
        &mut self,
        file: &Path,
        s: &Map<String, Value>,
        map: &Map<String, Value>,
        at: &str,
        depth: u32,
    ) {
        // `properties` itself may be a `$ref` (DigitalOcean's quirk).
        let props: Vec<(String, PathBuf, Value)> = match s.get("properties") {
            None => Vec::new(),
            Some(p) => match self.docs.resolve(file, p) {
                Ok((pfile, Value::Object(p))) => p
                    .into_iter()
                    .map(|(name, schema)| (name, pfile.clone(), schema))
                    .collect(),
                Ok(_) => Vec::new(),
                Err(e) => return self.fail(at, e),
            },
        };
        let resolved: Vec<(String, PathBuf, Value)> = props
            .into_iter()
            .filter_map(
                |(name, pfile, schema)| match self.docs.resolve(&pfile, &schema) {
                    Ok((f, v)) => Some((name, f, v)),
                    Err(e) => {
                        self.fail(at, e);
                        None
                    }
                },
            )
            .collect();
        // OpenAPI 3.0: a `readOnly` property is only in answers, a
        // `writeOnly` one only in requests; required means required there.
        let own = if self.response {
            "writeOnly"
        } else {
            "readOnly"
        };
        let not_here = |name: &str| {
            resolved
                .iter()
                .any(|(n, _, v)| n == name && v[own] == Value::Bool(true))
        };
        for name in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = name.as_str() else {
                continue;
            };
            if !map.contains_key(name) && !not_here(name) {
                self.fail(at, format!("required property {name} is missing"));
            }
        }
        for (name, pfile, schema) in &resolved {
            let Some(value) = map.get(name) else {
                continue;
            };
            let here = format!("{at}.{name}");
            if schema[own] == Value::Bool(true) {
                let what = if self.response {
                    "is write-only and not in an answer"
                } else {
                    "is read-only and not sent in a request"
                };
                self.fail(&here, what.into());
                continue;
            }
            self.check(pfile, schema, value, &here, depth + 1);
        }
        match s.get("additionalProperties") {
            Some(Value::Bool(false)) => {
                for key in map.keys() {
                    if !resolved.iter().any(|(n, _, _)| n == key) {
                        self.fail(at, format!("property {key} is not allowed"));
                    }
                }
            }
            Some(extra @ Value::Object(_)) => {
                for (key, value) in map {
                    if !resolved.iter().any(|(n, _, _)| n == key) {
                        self.check(file, extra, value, &format!("{at}.{key}"), depth + 1);
                    }
                }
            }
            _ => {}
        }
    }
}

/// An ECMA-262 pattern as a Rust regex (unanchored). In a class, ECMA-262
/// takes a `-` that cannot form a range (`[0-9-_]`) literally; the regex
/// crate may not, so such a `-` is escaped when the pattern as written
/// does not compile.
fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(pattern).or_else(|_| regex::Regex::new(&escape_class_dashes(pattern)))
}

fn escape_class_dashes(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let atom = |i: usize| -> (String, usize) {
        if chars[i] == '\\' && i + 1 < chars.len() {
            (chars[i..i + 2].iter().collect(), i + 2)
        } else {
            (chars[i].to_string(), i + 1)
        }
    };
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let (a, next) = atom(i);
        i = next;
        if a != "[" {
            out.push_str(&a);
            continue;
        }
        out.push('[');
        if chars.get(i) == Some(&'^') {
            out.push('^');
            i += 1;
        }
        // Whether the atom just written may start a range.
        let mut can_range = false;
        while i < chars.len() && chars[i] != ']' {
            let (a, next) = atom(i);
            i = next;
            if a == "-" {
                if can_range && i < chars.len() && chars[i] != ']' {
                    let (b, next) = atom(i);
                    i = next;
                    out.push('-');
                    out.push_str(&b);
                } else {
                    out.push_str("\\-");
                }
                can_range = false;
                continue;
            }
            out.push_str(&a);
            can_range = true;
        }
        if i < chars.len() {
            out.push(']');
            i += 1;
        }
    }
    out
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..s.floor_char_boundary(57)])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LB: &str = "/v2/load_balancers/4de7ac8b-495b-4884-9a69-1050c6793cd6";

    #[test]
    fn openapi_digitalocean_droplets() {
        let add = |body: Value| {
            validate_request(
                Spec::DigitalOcean,
                "POST",
                &format!("{LB}/droplets"),
                Some(&body),
            )
        };
        assert_eq!(add(json!({"droplet_ids": [3164444, 3164445]})), Ok(()));
        let err = add(json!({"droplet_ids": ["x"]})).expect_err("a string id");
        assert!(err.contains("droplet_ids[0]"), "{err}");
        assert!(add(json!({})).is_err());
        assert!(add(json!([1, 2])).is_err());
        let url = format!("https://api.digitalocean.com{LB}/droplets?x=1");
        let del = validate_request(
            Spec::DigitalOcean,
            "DELETE",
            &url,
            Some(&json!({"droplet_ids": [1]})),
        );
        assert_eq!(del, Ok(()));
        assert!(validate_request(Spec::DigitalOcean, "DELETE", &url, None).is_err());
        assert_eq!(
            validate_request(Spec::DigitalOcean, "GET", LB, None),
            Ok(())
        );
        let put = validate_request(Spec::DigitalOcean, "PUT", LB, Some(&json!({})));
        assert!(
            put.expect_err("no PUT in the subset")
                .contains("not an operation")
        );
        assert!(validate_request(Spec::DigitalOcean, "GET", "/v2/droplets", None).is_err());
        // One droplet (its VPC): an integer id.
        assert_eq!(
            validate_request(Spec::DigitalOcean, "GET", "/v2/droplets/3164444", None),
            Ok(())
        );
        assert!(validate_request(Spec::DigitalOcean, "GET", "/v2/droplets/web-1", None).is_err());
    }

    #[test]
    fn openapi_digitalocean_tags() {
        let tag = |name: &str, body: Value| {
            validate_request(
                Spec::DigitalOcean,
                "POST",
                &format!("/v2/tags/{name}/resources"),
                Some(&body),
            )
        };
        let ok = json!({"resources": [{"resource_id": "9569411", "resource_type": "droplet"}]});
        assert_eq!(tag("prod%3Aweb", ok.clone()), Ok(()));
        assert!(tag("bad tag", ok).is_err());
        let numeric = json!({"resources": [{"resource_id": 9569411, "resource_type": "droplet"}]});
        assert!(tag("natsmesh", numeric).is_err());
        let kind = json!({"resources": [{"resource_id": "1", "resource_type": "server"}]});
        assert!(tag("natsmesh", kind).is_err());
    }

    #[test]
    fn openapi_linode_nodes() {
        let nodes = "/v4/nodebalancers/12345/configs/4567/nodes";
        let create = |body: Value| validate_request(Spec::Linode, "POST", nodes, Some(&body));
        let good = json!({"label": "node-54321.a_b", "address": "192.168.210.120:4222", "weight": 50, "mode": "accept"});
        assert_eq!(create(good), Ok(()));
        let err = create(json!({"label": "a b", "address": "192.168.210.120:4222"}))
            .expect_err("bad label");
        assert!(err.contains("body.label"), "{err}");
        assert!(create(json!({"label": "ab", "address": "192.168.210.120:4222"})).is_err());
        assert!(create(json!({"address": "192.168.210.120:4222"})).is_err());
        assert!(
            create(json!({"label": "node1", "address": "192.168.210.120:4222", "weight": 0}))
                .is_err()
        );
        assert!(
            create(json!({"label": "node1", "address": "192.168.210.120:4222", "mode": "maybe"}))
                .is_err()
        );
        // A VPC backend: the v4.176 schema predates `subnet_id` and does
        // not close its properties, so it passes as an extra one.
        assert_eq!(
            create(json!({"label": "node1", "address": "10.0.0.5:4222", "subnet_id": 101})),
            Ok(())
        );
        assert_eq!(
            validate_request(Spec::Linode, "GET", "/v4/linode/instances/123/ips", None),
            Ok(())
        );
        let read_only =
            create(json!({"label": "node1", "address": "192.168.210.120:4222", "status": "UP"}));
        assert!(read_only.expect_err("read-only").contains("read-only"));

        let one = format!("{nodes}/54321");
        assert_eq!(
            validate_request(Spec::Linode, "PUT", &one, Some(&json!({"mode": "drain"}))),
            Ok(())
        );
        assert_eq!(validate_request(Spec::Linode, "DELETE", &one, None), Ok(()));
        assert_eq!(
            validate_request(Spec::Linode, "GET", &format!("{nodes}?page=2"), None),
            Ok(())
        );
        assert_eq!(
            validate_request(Spec::Linode, "GET", "/v4beta/nodebalancers/1/configs", None),
            Ok(())
        );
        let not_int = validate_request(Spec::Linode, "GET", "/v4/nodebalancers/abc/configs", None);
        assert!(not_int.expect_err("id").contains("nodeBalancerId"));
        assert!(validate_request(Spec::Linode, "GET", "/nodebalancers/1", None).is_err());
        assert!(validate_request(Spec::Linode, "DELETE", &one, Some(&json!({}))).is_err());
    }

    #[test]
    fn openapi_responses() {
        let resp = |spec, method, path: &str, status, body: &str| {
            validate_response(spec, method, path, status, body.as_bytes())
        };
        let droplets = format!("{LB}/droplets");
        assert_eq!(resp(Spec::DigitalOcean, "POST", &droplets, 204, ""), Ok(()));
        let err = resp(Spec::DigitalOcean, "POST", &droplets, 204, "{}").expect_err("a body");
        assert!(err.contains("without a body"), "{err}");
        let e = r#"{"id":"not_found","message":"The resource you requested could not be found."}"#;
        assert_eq!(resp(Spec::DigitalOcean, "GET", LB, 404, e), Ok(()));
        // Listed nowhere for this operation, held to the common error.
        assert_eq!(resp(Spec::DigitalOcean, "GET", LB, 503, e), Ok(()));
        let err = resp(Spec::DigitalOcean, "GET", LB, 404, r#"{"error":"x"}"#)
            .expect_err("not DigitalOcean's error");
        assert!(err.contains("required property id"), "{err}");
        assert!(resp(Spec::DigitalOcean, "GET", LB, 200, "not json").is_err());
        // Linode's records list documents 200 only (and no default).
        let err = resp(Spec::Linode, "GET", "/v4/domains/1/records", 302, "").expect_err("302");
        assert!(err.contains("not a documented answer"), "{err}");
        // A read-only property belongs in an answer.
        let node = r#"{"id":54321,"label":"node1","address":"192.168.210.120:4222","status":"UP","weight":50,"mode":"accept","config_id":2,"nodebalancer_id":1}"#;
        let nodes = "/v4/nodebalancers/1/configs/2/nodes";
        assert_eq!(resp(Spec::Linode, "POST", nodes, 200, node), Ok(()));
        let bad = node.replace("\"accept\"", "\"sometimes\"");
        assert!(resp(Spec::Linode, "POST", nodes, 200, &bad).is_err());
        let limited = r#"{"errors":[{"reason":"Too many requests"}]}"#;
        assert_eq!(
            resp(Spec::Linode, "GET", "/v4/domains/1/records", 429, limited),
            Ok(())
        );
        assert!(
            resp(
                Spec::Linode,
                "GET",
                "/v4/domains/1/records",
                429,
                r#"{"errors":"x"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn openapi_patterns_compile_as_ecma() {
        let re = compile("[a-zA-Z0-9-_.]{3,32}").expect("label pattern");
        assert!(re.is_match("node-1_a.b"));
        assert!(!re.is_match("a b"));
        assert!(compile(r"^[a-zA-Z0-9\/\-%?&=.]*$").is_ok());
        assert!(compile(r"^[a-zA-Z0-9_\-\:]+$").is_ok());
        assert_eq!(escape_class_dashes("[a-z0-9-_.]{3}"), r"[a-z0-9\-_.]{3}");
        assert_eq!(escape_class_dashes(r"^[\w-]+-x$"), r"^[\w\-]+-x$");
    }
}
