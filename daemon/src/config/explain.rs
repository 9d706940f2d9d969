//! `render --explain`: every effective setting and where it came from.

use std::fmt::Write as _;

use toml::Value;

use super::load::Loaded;
use super::validate::Settings;

/// One line per effective setting: `key = value    # origin`.
pub fn explain(loaded: &Loaded, settings: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# natsmesh settings, in merge order of:");
    for f in &loaded.files {
        let _ = writeln!(out, "#   {f}");
    }
    let effective = Value::try_from(&loaded.raw).unwrap_or(Value::Table(Default::default()));
    let mut lines = Vec::new();
    flatten("", &effective, &mut lines);
    let width = lines
        .iter()
        .map(|(k, v)| k.len() + v.len() + 3)
        .max()
        .unwrap_or(0);
    for (key, value) in lines {
        let origin = loaded
            .origins
            .get(&key)
            .map_or_else(|| "default".to_owned(), |l| l.to_string());
        let line = format!("{key} = {value}");
        let _ = writeln!(out, "{line:<width$}  # {origin}");
    }
    let _ = writeln!(out, "\n# derived");
    let derived = [
        (
            "server_name",
            settings.server.server_name.clone(),
            if loaded.origins.get("node.name").is_some() {
                "node.name"
            } else {
                "host name"
            },
        ),
        (
            "broker binary",
            settings.binary.display().to_string(),
            "broker.binary, resolved",
        ),
        (
            "state directory",
            settings.state_dir.display().to_string(),
            if loaded.origins.get("broker.state_dir").is_some() {
                "broker.state_dir"
            } else if loaded.embedded {
                "per-user default"
            } else {
                "$STATE_DIRECTORY or /var/lib/natsmesh"
            },
        ),
        (
            "rendered file",
            settings.rendered_path().display().to_string(),
            "state directory",
        ),
    ];
    for (k, v, why) in derived {
        let _ = writeln!(out, "# {k} = {v}  ({why})");
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}
