//! Reading the `main.tf` that `natsmeshd plan` writes (python-hcl2, from
//! scripts/deps) and serving what it declares from the provider fakes,
//! for the plan and walkthrough tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value};

/// main.tf as python-hcl2 reads it.
pub fn parse(main_tf: &Path) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hcl2, json, sys\nwith open(sys.argv[1]) as f:\n    print(json.dumps(hcl2.load(f)))",
        ])
        .arg(main_tf)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python-hcl2 (scripts/deps installs it) could not read {}: {}\n{}",
        main_tf.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(main_tf).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A string literal's text (python-hcl2 keeps the quotes), or `None` for
/// an expression.
pub fn lit(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    Some(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
}

/// An expression's text (`${…}` in python-hcl2's output).
pub fn expr(v: &Value) -> String {
    let s = v.as_str().unwrap_or_else(|| panic!("not text: {v}"));
    s.strip_prefix("${")
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not an expression: {s}"))
        .to_owned()
}

/// One resource or data source: kind (`resource`, `data`), type, name, body.
#[derive(Debug, Clone)]
pub struct Res {
    pub kind: String,
    pub ty: String,
    pub name: String,
    pub body: Map<String, Value>,
}

pub fn resources(doc: &Value) -> Vec<Res> {
    let mut out = Vec::new();
    for kind in ["resource", "data"] {
        for entry in doc[kind].as_array().into_iter().flatten() {
            for (ty, named) in entry.as_object().unwrap() {
                for (name, body) in named.as_object().unwrap() {
                    out.push(Res {
                        kind: kind.to_owned(),
                        ty: ty.trim_matches('"').to_owned(),
                        name: name.trim_matches('"').to_owned(),
                        body: body.as_object().unwrap().clone(),
                    });
                }
            }
        }
    }
    out
}

/// The resources (not data sources) of type `ty`.
pub fn of<'a>(all: &'a [Res], ty: &str) -> Vec<&'a Res> {
    all.iter()
        .filter(|r| r.kind == "resource" && r.ty == ty)
        .collect()
}

/// The resource `ty.name`.
pub fn one<'a>(all: &'a [Res], ty: &str, name: &str) -> &'a Res {
    all.iter()
        .find(|r| r.kind == "resource" && r.ty == ty && r.name == name)
        .unwrap_or_else(|| panic!("main.tf declares no {ty}.{name}"))
}

/// The blocks named `name` in a body.
pub fn blocks<'a>(body: &'a Map<String, Value>, name: &str) -> Vec<&'a Map<String, Value>> {
    body.get(name)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect()
}

/// A block's literal and numeric attributes as the provider's API shows
/// them (the Terraform arguments of these blocks bear the API's names).
pub fn api_object(b: &Map<String, Value>) -> Value {
    let mut o = Map::new();
    for (k, v) in b {
        if k.starts_with("__") {
            continue;
        }
        o.insert(k.clone(), lit(v).map_or_else(|| v.clone(), Value::String));
    }
    Value::Object(o)
}

/// The DigitalOcean load balancer fake's view of a planned
/// `digitalocean_loadbalancer`: its region, forwarding rules and health
/// check exactly as main.tf declares them, under `id`.
pub fn do_lb(lb: &Res, id: &str) -> natsmesh_harness::fakes::do_lb::DoLb {
    let region = lit(&lb.body["region"]).unwrap();
    let mut fake = natsmesh_harness::fakes::do_lb::DoLb::tcp(id, &region, 1, 1);
    fake.forwarding_rules = blocks(&lb.body, "forwarding_rule")
        .into_iter()
        .map(api_object)
        .collect();
    fake.health_check = api_object(blocks(&lb.body, "healthcheck")[0]);
    fake
}
