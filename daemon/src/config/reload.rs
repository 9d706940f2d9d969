//! What a reload does with each of natsmeshd's own settings (the broker's
//! keys are judged by `natsmesh_broker::classify` on the rendered file).
//! Pure: compares the running settings with the new ones and says, per
//! table or key, whether natsmeshd applies it while running or only a
//! restart of natsmeshd does. It must not touch the broker's keys.

use super::Settings;

/// How a changed natsmeshd setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// natsmeshd applies it while running; the text says how.
    Applied(&'static str),
    /// natsmeshd keeps running with the old value until
    /// `systemctl restart natsmeshd` (a task or listener set up at start).
    NeedsRestart,
}

/// One changed table or key of natsmeshd's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The table (`[load_balancer]`) or key (`control.socket`).
    pub key: &'static str,
    /// How it takes effect.
    pub effect: Effect,
}

/// What only a restart of natsmeshd applies, as the answer says it.
pub const NEEDS_RESTART: &str = "needs `systemctl restart natsmeshd`";

/// Compares natsmeshd's own settings. What needs a restart keeps its
/// running value in `new` (so the running settings keep describing what
/// runs, and the next reload names it again instead of "no change").
/// `live` lists the tables natsmeshd can apply live in this process (the
/// DNS publisher and the balancer membership, when it can restart their
/// tasks).
pub fn sort_out(running: &Settings, new: &mut Settings, live: Live) -> Vec<Change> {
    let mut out = Vec::new();
    let mut changed = |key: &'static str, differs: bool, effect: Effect| {
        if differs {
            out.push(Change { key, effect });
        }
    };
    let pointer = |live: bool, how: &'static str| {
        if live {
            Effect::Applied(how)
        } else {
            Effect::NeedsRestart
        }
    };
    changed(
        "[dns_publish]",
        running.publish != new.publish,
        pointer(
            live.publish,
            "the publisher restarts with it: the new records are published, then the old withdrawn",
        ),
    );
    changed(
        "[load_balancer]",
        running.balancer != new.balancer,
        pointer(
            live.balancer,
            "the membership restarts with it: the new balancer is joined, then the old left",
        ),
    );
    changed(
        "[discovery]",
        running.discovery != new.discovery,
        Effect::NeedsRestart,
    );
    changed(
        "[metrics]",
        running.metrics != new.metrics,
        Effect::NeedsRestart,
    );
    changed(
        "control.socket",
        running.control_socket != new.control_socket,
        Effect::NeedsRestart,
    );
    changed(
        "broker.state_dir",
        running.state_dir != new.state_dir,
        Effect::NeedsRestart,
    );
    // The identity (name, region, addresses) comes from the metadata
    // service once, at start; a reload keeps it.
    changed(
        "node.metadata",
        running.metadata != new.metadata,
        Effect::NeedsRestart,
    );
    changed(
        "[health]",
        running.health != new.health,
        Effect::Applied("from the next probe round"),
    );
    changed(
        "[restart]",
        running.restart != new.restart,
        Effect::Applied("for the next crash and stop"),
    );
    changed(
        "[fleet]",
        running.fleet != new.fleet,
        Effect::Applied("for the next planned restart"),
    );
    changed(
        "[maintenance]",
        running.maintenance != new.maintenance,
        Effect::NeedsRestart,
    );
    changed(
        "broker.binary",
        running.binary != new.binary,
        Effect::Applied("its binary check restarts the broker into it, as an upgrade"),
    );
    changed(
        "[tls] (natsmeshd's part)",
        running.tls != new.tls,
        Effect::Applied("the node certificate was looked at again"),
    );
    changed(
        "auth.system_*",
        running.system_user != new.system_user,
        Effect::Applied("natsmeshd logs in with it"),
    );
    // Keep what still runs.
    for c in &out {
        if c.effect != Effect::NeedsRestart {
            continue;
        }
        match c.key {
            "[dns_publish]" => new.publish.clone_from(&running.publish),
            "[load_balancer]" => new.balancer.clone_from(&running.balancer),
            "[discovery]" => new.discovery.clone_from(&running.discovery),
            "[metrics]" => new.metrics.clone_from(&running.metrics),
            "control.socket" => new.control_socket.clone_from(&running.control_socket),
            "broker.state_dir" => new.state_dir.clone_from(&running.state_dir),
            "node.metadata" => new.metadata.clone_from(&running.metadata),
            _ => {}
        }
    }
    out
}

/// Which pointer tasks natsmeshd can restart with new settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// The DNS publisher.
    pub publish: bool,
    /// The load-balancer membership.
    pub balancer: bool,
}

/// The answer's natsmeshd part: `applied by natsmeshd: …` and
/// `needs systemctl restart natsmeshd: …`, empty when nothing changed.
pub fn describe(changes: &[Change]) -> String {
    let applied: Vec<String> = changes
        .iter()
        .filter_map(|c| match c.effect {
            Effect::Applied(how) => Some(format!("{} ({how})", c.key)),
            Effect::NeedsRestart => None,
        })
        .collect();
    let restart: Vec<&str> = changes
        .iter()
        .filter(|c| c.effect == Effect::NeedsRestart)
        .map(|c| c.key)
        .collect();
    let mut parts = Vec::new();
    if !applied.is_empty() {
        parts.push(format!("applied by natsmeshd: {}", applied.join(", ")));
    }
    if !restart.is_empty() {
        parts.push(format!(
            "{NEEDS_RESTART}: {} (natsmeshd keeps the old value until then)",
            restart.join(", ")
        ));
    }
    parts.join("; ")
}

/// The keys only a restart of natsmeshd applies.
pub fn restart_keys(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter(|c| c.effect == Effect::NeedsRestart)
        .map(|c| c.key.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        use std::os::unix::fs::PermissionsExt as _;
        let loaded = crate::config::load::load(&crate::config::Sources::Embedded)
            .unwrap_or_else(|p| panic!("{p}"));
        // Validation finds the broker in PATH; it is never run here.
        let bin = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let broker = bin.path().join("nats-server");
        std::fs::write(&broker, "#!/bin/sh\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&broker, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let env = crate::config::Environment {
            hostname: "h".into(),
            path: Some(bin.path().as_os_str().to_owned()),
            default_state_dir: "/nonexistent/state".into(),
            default_control_socket: "/nonexistent/control.sock".into(),
            credentials_dir: None,
            credentials_source: None,
        };
        let identity = crate::config::identity::static_identity(&loaded, &env);
        match crate::config::validate::validate(&loaded, &env, &identity) {
            Ok(s) => s,
            Err(p) => panic!("{p}"),
        }
    }

    #[test]
    fn an_unchanged_configuration_has_no_natsmeshd_change() {
        let s = base();
        let mut n = s.clone();
        assert!(sort_out(&s, &mut n, Live::default()).is_empty());
        assert_eq!(describe(&[]), "");
    }

    #[test]
    fn what_only_a_restart_applies_is_named_and_keeps_its_running_value() {
        let s = base();
        let mut n = s.clone();
        n.control_socket = "/elsewhere.sock".into();
        n.health.interval *= 2;
        let changes = sort_out(&s, &mut n, Live::default());
        assert_eq!(
            changes,
            vec![
                Change {
                    key: "control.socket",
                    effect: Effect::NeedsRestart
                },
                Change {
                    key: "[health]",
                    effect: Effect::Applied("from the next probe round")
                },
            ]
        );
        assert_eq!(n.control_socket, s.control_socket, "kept the running one");
        assert_eq!(n.health.interval, s.health.interval * 2, "applied");
        let text = describe(&changes);
        assert!(
            text.contains("applied by natsmeshd: [health]")
                && text.contains("needs `systemctl restart natsmeshd`: control.socket"),
            "{text}"
        );
        // The next reload names it again.
        let mut again = n.clone();
        again.control_socket = "/elsewhere.sock".into();
        assert_eq!(
            restart_keys(&sort_out(&n, &mut again, Live::default())),
            ["control.socket"]
        );
    }

    /// Every key of the configuration file as a dotted path, from the
    /// schema's own serialisation of its defaults (an absent optional key
    /// serialises as null, so it is listed too; a map of the operator's
    /// names, such as `[accounts]`, is one key).
    fn schema_keys() -> Vec<String> {
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) if !m.is_empty() => {
                    for (k, v) in m {
                        let path = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&path, v, out);
                    }
                }
                _ => out.push(prefix.to_owned()),
            }
        }
        let raw = serde_json::to_value(crate::config::schema::RawConfig::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        walk("", &raw, &mut out);
        out
    }

    /// The rows of docs/configuration.md's reload table: what each row
    /// names (the backticked tables and keys of its first cell) and what
    /// it says happens.
    fn reload_table() -> Vec<(Vec<String>, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        let page = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut lines = page
            .lines()
            .skip_while(|l| !l.starts_with("| table / key | on reload |"))
            .skip(2);
        let mut rows = Vec::new();
        for line in lines.by_ref().take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(names), Some(effect)) = (cells.get(1), cells.get(2)) else {
                panic!("a row without two cells: {line}");
            };
            let named: Vec<String> = names
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            assert!(!named.is_empty(), "a row naming no key: {line}");
            rows.push((named, (*effect).to_owned()));
        }
        assert!(!rows.is_empty(), "{path} has no reload table");
        rows
    }

    /// Whether a row's name (`[table]`, `a.key`, `auth.system_*`) covers
    /// `key`.
    fn covers(name: &str, key: &str) -> bool {
        let name = name.trim_start_matches('[').trim_end_matches(']');
        match name.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == name || key.starts_with(&format!("{name}.")),
        }
    }

    /// The most specific row naming `key` (its effect), if any.
    fn effect_of<'a>(rows: &'a [(Vec<String>, String)], key: &str) -> Option<&'a str> {
        rows.iter()
            .flat_map(|(names, effect)| names.iter().map(move |n| (n, effect)))
            .filter(|(n, _)| covers(n, key))
            .max_by_key(|(n, _)| n.len())
            .map(|(_, e)| e.as_str())
    }

    /// The documentation's table says, for every key of the configuration
    /// file, what a reload does with it: a key added to the schema without
    /// a row fails here, and so does a row naming no key.
    #[test]
    fn the_reload_table_names_every_configuration_key() {
        let keys = schema_keys();
        assert!(keys.len() > 100, "{keys:?}");
        for k in ["broker.cluster.port", "dns_publish.zone", "control.socket"] {
            assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
        }
        let rows = reload_table();
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| effect_of(&rows, k).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "docs/configuration.md's reload table says nothing of {missing:?}"
        );
        for (names, _) in &rows {
            for n in names {
                assert!(
                    keys.iter().any(|k| covers(n, k)),
                    "the reload table names {n}, which is no configuration key"
                );
            }
        }
    }

    /// A change to one setting.
    type Mutation = fn(&mut Settings);

    /// What the table says of natsmeshd's own keys is what a reload does:
    /// each key `sort_out` judges, changed alone, is named with the effect
    /// its row states (needs `systemctl restart natsmeshd`, or applied by
    /// natsmeshd).
    #[test]
    fn the_reload_table_says_what_a_reload_does_with_natsmeshds_keys() {
        let rows = reload_table();
        let s = base();
        let changes: [(&str, Mutation); 7] = [
            ("control.socket", |n| {
                n.control_socket = "/elsewhere.sock".into()
            }),
            ("broker.state_dir", |n| n.state_dir = "/elsewhere".into()),
            ("broker.binary", |n| {
                n.binary = "/elsewhere/nats-server".into()
            }),
            ("health.interval", |n| n.health.interval *= 2),
            ("restart.backoff_max", |n| n.restart.backoff_max *= 2),
            ("metrics.port", |n| n.metrics = None),
            ("node.metadata.timeout", |n| {
                n.metadata = Some(crate::config::schema::RawMetadata::default());
            }),
        ];
        for (key, change) in changes {
            let mut n = s.clone();
            change(&mut n);
            let found = sort_out(&s, &mut n, Live::default());
            let [c] = found.as_slice() else {
                panic!("{key}: {found:?}");
            };
            let said = effect_of(&rows, key).unwrap_or_else(|| panic!("no row for {key}"));
            match c.effect {
                Effect::NeedsRestart => assert!(
                    said.contains(NEEDS_RESTART),
                    "{key}: the table says {said:?}, a reload says {NEEDS_RESTART}"
                ),
                Effect::Applied(how) => assert!(
                    said.contains("applied by natsmeshd") && !said.contains(NEEDS_RESTART),
                    "{key}: the table says {said:?}, a reload says applied ({how})"
                ),
            }
        }
    }
}
