//! Reload or restart: what a change between two rendered configs needs.
//!
//! nats-server reloads "all or nothing": one non-reloadable field makes the
//! whole reload fail and the old config stay (reference §2). So every changed
//! key is looked up in [`RULES`], keyed by version where the answer changed
//! between releases, and the strongest answer wins. A key no rule knows is
//! "restart": guessing "reload" would leave a broker silently running an old
//! config. Each row is checked against the real binaries of the test matrix.

use std::collections::BTreeMap;
use std::fmt;

use semver::Version;
use sha2::{Digest, Sha256};

use crate::conf;
use crate::include;
use crate::model::Rendered;

/// What a change needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Nothing changed.
    Nothing,
    /// Send a reload and confirm it took effect.
    Reload,
    /// Only a restart applies it.
    Restart,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Nothing => "nothing",
            Action::Reload => "reload",
            Action::Restart => "restart",
        })
    }
}

/// One changed key and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted key path in the rendered file.
    pub key: String,
    /// What this change alone needs.
    pub action: Action,
    /// Why, for STATUS and logs.
    pub why: &'static str,
}

/// The answer for a whole config change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The strongest action any change needs.
    pub action: Action,
    /// Every changed key.
    pub changes: Vec<Change>,
}

impl Decision {
    /// The changes that force a restart, for messages.
    pub fn restart_reasons(&self) -> Vec<String> {
        self.changes
            .iter()
            .filter(|c| c.action == Action::Restart)
            .map(|c| format!("{}: {}", c.key, c.why))
            .collect()
    }
}

/// What a rule answers.
#[derive(Debug, Clone)]
enum Verdict {
    Reload,
    Restart,
    /// Reload from `since` on; restart before.
    ReloadSince(Version),
    /// Reload when the number grew and the version is at least `since`.
    ReloadIncreaseSince(Version),
}

/// A rule: a key path (matching the key itself and everything below it).
struct Rule {
    path: &'static str,
    verdict: Verdict,
    why: &'static str,
}

const fn rule(path: &'static str, verdict: Verdict, why: &'static str) -> Rule {
    Rule { path, verdict, why }
}

use Verdict::{Reload, ReloadIncreaseSince, ReloadSince, Restart};

/// The rule table, most specific first. Sources: `reload.go` `diffOptions`
/// on each tag (reference §2.2, §2.4), checked by the test suite.
const RULES: &[Rule] = &[
    // TLS material reloads in every block (new connections use it); a
    // changed file content counts as a change (see `Snapshot`).
    rule("tls", Reload, "client TLS material reloads"),
    rule("cluster.tls", Reload, "route TLS material reloads"),
    rule(
        "gateway.tls",
        ReloadSince(Version::new(2, 11, 4)),
        "before 2.11.4 a reload does not reach implicit gateways, which keep the old certificate (nats-server#6875); natsmesh restarts instead",
    ),
    rule("leafnodes.tls", Reload, "leafnode TLS material reloads"),
    rule("mqtt.tls", Reload, "MQTT TLS material reloads"),
    rule("websocket.tls", Reload, "websocket TLS material reloads"),
    rule(
        "https",
        Restart,
        "the monitoring listener cannot move at run time",
    ),
    rule(
        "server_name",
        Restart,
        "a running server cannot be renamed, and JetStream forbids renaming",
    ),
    rule(
        "listen",
        Restart,
        "the client listener cannot move at run time",
    ),
    rule(
        "http",
        Restart,
        "the monitoring listener cannot move at run time",
    ),
    rule(
        "lame_duck_duration",
        Restart,
        "lame-duck timing is read only at start",
    ),
    rule(
        "lame_duck_grace_period",
        Restart,
        "lame-duck timing is read only at start",
    ),
    rule("ports_file_dir", Reload, "reloadable"),
    rule("logtime", Reload, "logging options reload"),
    rule("logtime_utc", Reload, "logging options reload"),
    rule("debug", Reload, "logging options reload"),
    rule("trace", Reload, "logging options reload"),
    rule("server_tags", Reload, "tags reload"),
    rule("client_advertise", Reload, "client_advertise reloads"),
    rule(
        "accounts",
        Reload,
        "accounts reload; the broker confirms or refuses",
    ),
    rule(
        "authorization",
        Reload,
        "authorization reloads; the broker confirms or refuses",
    ),
    rule(
        "jetstream.max_memory_store",
        ReloadIncreaseSince(Version::new(2, 12, 7)),
        "JetStream limits may only grow at run time, from 2.12.7 on",
    ),
    rule(
        "jetstream.max_file_store",
        ReloadIncreaseSince(Version::new(2, 12, 7)),
        "JetStream limits may only grow at run time, from 2.12.7 on",
    ),
    rule(
        "jetstream.sync_interval",
        Restart,
        "nats-server's reload refuses a changed sync_interval (no release up to 2.15 reloads it)",
    ),
    rule(
        "jetstream",
        Restart,
        "JetStream storage, domain and enablement are fixed at start",
    ),
    rule("cluster.routes", Reload, "routes are diffed on reload"),
    rule("cluster.advertise", Reload, "cluster advertise reloads"),
    rule(
        "cluster.no_advertise",
        Reload,
        "cluster no_advertise reloads",
    ),
    rule("cluster.pool_size", Reload, "route pooling reloads (2.10+)"),
    rule(
        "cluster.compression",
        Reload,
        "route compression reloads (2.10+)",
    ),
    rule(
        "cluster.include",
        Reload,
        "operator include: the broker confirms or refuses",
    ),
    rule(
        "cluster.name",
        Restart,
        "a region's cluster name must never change under JetStream (natsmesh policy)",
    ),
    rule("cluster", Restart, "the route listener is fixed at start"),
    rule(
        "gateway.include",
        Reload,
        "operator include: the broker confirms or refuses",
    ),
    rule(
        "gateway",
        Restart,
        "gateways reload only their TLS material",
    ),
    rule(
        "leafnodes.remotes",
        ReloadSince(Version::new(2, 14, 0)),
        "leafnode remotes can be added and removed at run time from 2.14.0 on",
    ),
    rule(
        "leafnodes.include",
        Reload,
        "operator include: the broker confirms or refuses",
    ),
    rule(
        "leafnodes",
        Restart,
        "the leafnode listener reloads only TLS and compression",
    ),
    rule(
        "mqtt.include",
        Reload,
        "operator include: the broker confirms or refuses",
    ),
    rule("mqtt", Restart, "the MQTT listener is fixed at start"),
    rule(
        "websocket.include",
        Reload,
        "operator include: the broker confirms or refuses",
    ),
    rule("websocket", Restart, "websocket reloads only TLS material"),
];

const UNKNOWN_WHY: &str = "not known to be reloadable";

/// A rendered config with the content of its includes and TLS files, as
/// compared by the classifier: a changed file is a config change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The broker version it was rendered for.
    pub version: Version,
    entries: BTreeMap<String, String>,
}

impl Snapshot {
    /// Flattens `rendered` and reads the digest of each include file.
    pub fn capture(rendered: &Rendered) -> Self {
        // Each include file is read once, within bounds; a refused tree
        // (a cycle, too large) is recorded as such, and `prepare` refuses
        // the config before it is used.
        let tree = include::walk(&include::roots(rendered));
        let entries = conf::flatten(&rendered.tree)
            .into_iter()
            .map(|(key, value)| {
                if ["include", "cert_file", "key_file", "ca_file"]
                    .iter()
                    .any(|k| key.ends_with(k))
                {
                    // The value is the quoted path; add what the file holds
                    // (and, for an include, the files it includes), so new
                    // content (a renewed certificate) is a change.
                    let path = value.trim_matches('"');
                    let digest = if key.ends_with("include") {
                        match &tree {
                            Ok(t) => t
                                .roots
                                .iter()
                                .find(|(k, _)| *k == key)
                                .map(|(_, i)| t.digest(*i))
                                .unwrap_or_default(),
                            Err(e) => format!("refused ({e})"),
                        }
                    } else {
                        match std::fs::read(path) {
                            Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
                            Err(e) => format!("unreadable ({})", e.kind()),
                        }
                    };
                    (key, format!("{value} sha256:{digest}"))
                } else {
                    (key, value)
                }
            })
            .collect();
        Self {
            version: rendered.version.clone(),
            entries,
        }
    }
}

fn find_rule(key: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| {
        key == r.path
            || (key.starts_with(r.path) && key.as_bytes().get(r.path.len()) == Some(&b'.'))
    })
}

fn judge(key: &str, old: Option<&str>, new: Option<&str>, version: &Version) -> Change {
    let Some(rule) = find_rule(key) else {
        return Change {
            key: key.to_owned(),
            action: Action::Restart,
            why: UNKNOWN_WHY,
        };
    };
    let action = match &rule.verdict {
        Verdict::Reload => Action::Reload,
        Verdict::Restart => Action::Restart,
        Verdict::ReloadSince(since) if version >= since => Action::Reload,
        Verdict::ReloadSince(_) => Action::Restart,
        Verdict::ReloadIncreaseSince(since) => {
            let parse = |v: Option<&str>| v.and_then(|s| s.parse::<i64>().ok());
            match (parse(old), parse(new)) {
                (Some(o), Some(n)) if n > o && version >= since => Action::Reload,
                _ => Action::Restart,
            }
        }
    };
    Change {
        key: key.to_owned(),
        action,
        why: rule.why,
    }
}

/// Compares two snapshots for the running broker's version (`new.version`).
pub fn classify(old: &Snapshot, new: &Snapshot) -> Decision {
    let version = &new.version;
    let mut changes = Vec::new();
    if old.version != new.version {
        changes.push(Change {
            key: "(broker version)".into(),
            action: Action::Restart,
            why: "a different nats-server binary runs only after a restart",
        });
    }
    let keys: std::collections::BTreeSet<&String> =
        old.entries.keys().chain(new.entries.keys()).collect();
    for key in keys {
        let (o, n) = (old.entries.get(key), new.entries.get(key));
        if o != n {
            changes.push(judge(
                key,
                o.map(String::as_str),
                n.map(String::as_str),
                version,
            ));
        }
    }
    let action = changes
        .iter()
        .map(|c| c.action)
        .max()
        .unwrap_or(Action::Nothing);
    Decision { action, changes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge_at(key: &str, old: &str, new: &str, v: (u64, u64, u64)) -> Action {
        judge(key, Some(old), Some(new), &Version::new(v.0, v.1, v.2)).action
    }

    #[test]
    fn rules_match_whole_path_segments() {
        assert_eq!(
            find_rule("cluster.routes").map(|r| r.path),
            Some("cluster.routes")
        );
        assert_eq!(find_rule("cluster.listen").map(|r| r.path), Some("cluster"));
        assert_eq!(find_rule("listenx").map(|r| r.path), None);
        assert_eq!(
            find_rule("gateway.gateways").map(|r| r.path),
            Some("gateway")
        );
    }

    #[test]
    fn version_keyed_rows() {
        let js = "jetstream.max_file_store";
        assert_eq!(judge_at(js, "100", "200", (2, 9, 10)), Action::Restart);
        assert_eq!(judge_at(js, "100", "200", (2, 12, 6)), Action::Restart);
        assert_eq!(judge_at(js, "100", "200", (2, 12, 7)), Action::Reload);
        assert_eq!(judge_at(js, "200", "100", (2, 15, 1)), Action::Restart);
        let leaf = "leafnodes.remotes";
        assert_eq!(judge_at(leaf, "[]", "[x]", (2, 12, 8)), Action::Restart);
        assert_eq!(judge_at(leaf, "[]", "[x]", (2, 14, 0)), Action::Reload);
    }

    #[test]
    fn include_content_is_part_of_the_config() {
        use crate::conf::IncludePath;
        use crate::model::{Listen, ServerConfig, render};
        let dir = std::env::temp_dir().join(format!("natsmesh-classify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let inc = dir.join("accounts.conf");
        std::fs::write(&inc, "A: {}\n").expect("write include");
        let mut cfg = ServerConfig::standalone("n1", Listen::new([127, 0, 0, 1].into(), 4222));
        cfg.accounts_include = Some(IncludePath::new(&inc).expect("include path"));
        let r = render(&cfg, &Version::new(2, 9, 10), &dir).expect("renders");
        let before = Snapshot::capture(&r);
        assert_eq!(
            classify(&before, &Snapshot::capture(&r)).action,
            Action::Nothing
        );
        std::fs::write(&inc, "A: {}\nB: {}\n").expect("rewrite include");
        let d = classify(&before, &Snapshot::capture(&r));
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(d.action, Action::Reload);
        assert_eq!(d.changes[0].key, "accounts.include");
    }

    #[test]
    fn a_file_an_include_includes_is_part_of_the_config_too() {
        use crate::conf::IncludePath;
        use crate::model::{Listen, ServerConfig, render};
        let dir = tempfile::tempdir().expect("scratch dir");
        let users = dir.path().join("users");
        std::fs::create_dir_all(&users).expect("users dir");
        let inc = dir.path().join("accounts.conf");
        // An absolute-looking path is joined to the including file's
        // directory, as nats-server does.
        std::fs::write(
            &inc,
            "# include ignored.conf\nA: { include \"users/a.conf\" }\ninclude /users/b.conf\n",
        )
        .expect("write include");
        std::fs::write(users.join("a.conf"), "users: []\n").expect("write a");
        std::fs::write(users.join("b.conf"), "B: {}\n").expect("write b");
        let mut cfg = ServerConfig::standalone("n1", Listen::new([127, 0, 0, 1].into(), 4222));
        cfg.accounts_include = Some(IncludePath::new(&inc).expect("include path"));
        let r = render(&cfg, &Version::new(2, 9, 10), dir.path()).expect("renders");
        let before = Snapshot::capture(&r);
        assert_eq!(
            classify(&before, &Snapshot::capture(&r)).action,
            Action::Nothing
        );
        for nested in ["a.conf", "b.conf"] {
            let before = Snapshot::capture(&r);
            std::fs::write(users.join(nested), "changed: true\n").expect("rewrite");
            let d = classify(&before, &Snapshot::capture(&r));
            assert_eq!(d.action, Action::Reload, "{nested}");
            assert_eq!(d.changes[0].key, "accounts.include", "{nested}");
        }
        // A cycle is not followed (the tree is read once, bounded): the
        // snapshot records the refusal, and changes when it is removed.
        std::fs::write(&inc, "A: {}\ninclude accounts.conf\n").expect("cycle");
        let cyclic = Snapshot::capture(&r);
        assert!(
            cyclic
                .entries
                .get("accounts.include")
                .is_some_and(|v| v.contains("include cycle")),
            "{cyclic:?}"
        );
        std::fs::write(&inc, "A: {}\n").expect("no cycle");
        assert_eq!(
            classify(&cyclic, &Snapshot::capture(&r)).action,
            Action::Reload
        );
    }

    #[test]
    fn unknown_keys_restart() {
        assert_eq!(
            judge_at("max_pending", "1", "2", (2, 15, 1)),
            Action::Restart
        );
    }
}
