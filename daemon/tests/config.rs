//! Configuration loading: drop-in merge order, origins, and that every
//! problem names its file, line and key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use natsmesh::config::identity::static_identity;
use natsmesh::config::load::Loaded;
use natsmesh::config::load::{Sources, discover, load};
use natsmesh::config::problem::Problems;
use natsmesh::config::problem::{Problem, Source};
use natsmesh::config::validate::{Environment, Settings};

/// Validation for `provider = "none"` (identity from the file).
fn validate(loaded: &Loaded, env: &Environment) -> Result<Settings, Problems> {
    natsmesh::config::validate::validate(loaded, env, &static_identity(loaded, env))
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-test-")
            .tempdir()
            .unwrap();
        // A stand-in binary for PATH resolution; these tests never run it.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("nats-server"), "").unwrap();
        Self { dir }
    }

    fn main(&self) -> PathBuf {
        self.dir.path().join("natsmesh.toml")
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn env(&self) -> Environment {
        Environment {
            hostname: "testhost".into(),
            path: Some(self.dir.path().join("bin").into_os_string()),
            default_state_dir: self.dir.path().join("state"),
            default_control_socket: self.dir.path().join("control.sock"),
            credentials_dir: None,
            credentials_source: None,
        }
    }

    /// A `[tls]` table in files mode (files that are only read, never
    /// parsed, here): routes and gateways off loopback need TLS.
    fn tls(&self) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let p = |f: &str| {
            let path = self.write(&format!("tls/{f}"), "unparsed\n");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path.display().to_string()
        };
        format!(
            "\n[tls]\nmode = \"files\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            p("ca.pem"),
            p("node.crt"),
            p("node.key")
        )
    }

    fn settings(&self) -> Result<Settings, Vec<Problem>> {
        let sources = discover(Some(&self.main())).map_err(|p| vec![p])?;
        let loaded = load(&sources).map_err(|p| p.0)?;
        validate(&loaded, &self.env()).map_err(|p| p.0)
    }

    fn problems(&self) -> Vec<Problem> {
        match self.settings() {
            Ok(s) => panic!("expected problems, got settings {s:?}"),
            Err(p) => p,
        }
    }
}

const MINIMAL: &str = r#"
[node]
region = "fra1"

[broker.jetstream]
max_memory_store = "64MiB"
max_file_store = "1GiB"
"#;

fn file_of(p: &Problem) -> Option<&Path> {
    match &p.location.as_ref()?.source {
        Source::File(f) => Some(f),
        Source::Embedded => None,
    }
}

/// Asserts a single problem on `key`, located in `file` at `line`, whose
/// message contains `needle`.
fn assert_problem(problems: &[Problem], key: &str, file: &Path, line: usize, needle: &str) {
    let p = problems
        .iter()
        .find(|p| p.key.as_deref() == Some(key))
        .unwrap_or_else(|| panic!("no problem on {key}: {problems:#?}"));
    assert_eq!(file_of(p), Some(file), "{p}");
    assert_eq!(p.location.as_ref().unwrap().line, line, "{p}");
    assert!(p.message.contains(needle), "{p} lacks {needle:?}");
    let shown = p.to_string();
    assert!(
        shown.contains(&file.display().to_string()) && shown.contains(key),
        "{shown}"
    );
}

#[test]
fn minimal_config_gives_a_standalone_jetstream_node() {
    let f = Fixture::new();
    f.write("natsmesh.toml", MINIMAL);
    let s = f.settings().unwrap();
    assert_eq!(s.region, "fra1");
    assert_eq!(s.server.server_name, "testhost");
    assert_eq!(s.server.listen.to_string(), "0.0.0.0:4222");
    assert_eq!(s.server.monitoring.unwrap().to_string(), "127.0.0.1:8222");
    assert!(s.server.cluster.is_none());
    let js = s.server.jetstream.unwrap();
    assert_eq!(
        (js.max_memory_store, js.max_file_store),
        (64 << 20, 1 << 30)
    );
    assert_eq!(js.store_dir, f.dir.path().join("state"));
}

#[test]
fn dropins_merge_in_lexical_order_and_later_files_win() {
    let f = Fixture::new();
    f.write(
        "natsmesh.toml",
        &format!("{MINIMAL}\n[broker.client]\nport = 4000\nbind = \"127.0.0.1\"\n"),
    );
    // "10-" sorts before "9-": lexical, not numeric.
    f.write("natsmesh.d/9-late.toml", "[broker.client]\nport = 4009\n");
    let early = f.write(
        "natsmesh.d/10-early.toml",
        "[broker.client]\nport = 4010\n[broker]\ntags = [\"a\", \"b\"]\n",
    );
    let late = f.write(
        "natsmesh.d/9-late.toml",
        "[broker.client]\nport = 4009\n[broker]\ntags = [\"c\"]\n",
    );
    f.write("natsmesh.d/README", "not toml, ignored");
    f.write("natsmesh.d/50-other.toml.bak", "garbage [");
    let sources = discover(Some(&f.main())).unwrap();
    let Sources::Files { files, .. } = &sources else {
        panic!("{sources:?}")
    };
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, ["natsmesh.toml", "10-early.toml", "9-late.toml"]);
    let loaded = load(&sources).unwrap();
    let s = validate(&loaded, &f.env()).unwrap();
    // Scalars: last file wins; tables merge key by key (bind from main);
    // arrays are replaced whole.
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:4009");
    assert_eq!(s.server.tags, ["c"]);
    assert_eq!(
        loaded.origins.get("broker.client.port").unwrap().source,
        Source::File(late.clone())
    );
    assert_eq!(
        loaded.origins.get("broker.client.bind").unwrap().source,
        Source::File(f.main())
    );
    assert_eq!(
        loaded.origins.get("broker.tags").unwrap().source,
        Source::File(late)
    );
    assert!(
        loaded.origins.get("broker.tags[1]").is_none(),
        "stale element origin from {early:?}"
    );
}

#[test]
fn only_dropins_are_enough_and_nothing_means_embedded() {
    let f = Fixture::new();
    // With an explicit path that does not exist: an error naming it.
    let err = discover(Some(&f.main())).unwrap_err();
    assert!(err.message.contains("does not exist"), "{err}");
    // Drop-ins alone (cloud-init writes only those) are a configuration.
    f.write("natsmesh.d/10-node.toml", MINIMAL);
    let sources = natsmesh::config::load::discover_at(&f.main()).unwrap();
    assert!(matches!(sources, Sources::Files { .. }));
    let empty = Fixture::new();
    assert_eq!(
        natsmesh::config::load::discover_at(&empty.main()).unwrap(),
        Sources::Embedded
    );
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let f = Fixture::new();
    f.write("natsmesh.toml", MINIMAL);
    let bad = f.write(
        "natsmesh.d/10-bad.toml",
        "[broker.client]\nport = 4222\nbind = \"127.0.0.1\n",
    );
    let problems = f.problems();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = &problems[0];
    assert_eq!(file_of(p), Some(bad.as_path()));
    assert_eq!(p.location.as_ref().unwrap().line, 3);
    assert!(p.message.starts_with("syntax error"), "{p}");
}

#[test]
fn every_unknown_key_and_wrong_type_in_a_file_is_listed_with_a_suggestion() {
    let f = Fixture::new();
    let main = f.write(
        "natsmesh.toml",
        "[node]\nregion = \"fra1\"\nregoin = \"x\"\n\n[broker.client]\nbnid = \"0.0.0.0\"\nport = \"4222\"\n\n[broker.jetstream]\nmax_file_store = \"1G\"\n",
    );
    let other = f.write(
        "natsmesh.d/10-x.toml",
        "[broker]\nlame_duck_duraton = \"1m\"\n",
    );
    let problems = f.problems();
    assert_problem(&problems, "node.regoin", &main, 3, "did you mean `region`?");
    assert_problem(
        &problems,
        "broker.client.bnid",
        &main,
        6,
        "did you mean `bind`?",
    );
    assert_problem(&problems, "broker.client.port", &main, 7, "expected u16");
    assert_problem(
        &problems,
        "broker.jetstream.max_file_store",
        &main,
        10,
        "unknown size unit \"G\"",
    );
    assert_problem(
        &problems,
        "broker.lame_duck_duraton",
        &other,
        2,
        "did you mean `lame_duck_duration`?",
    );
    assert_eq!(problems.len(), 5, "{problems:#?}");
}

#[test]
fn semantic_errors_name_the_key_the_value_and_what_is_allowed() {
    let f = Fixture::new();
    let main = f.write(
        "natsmesh.toml",
        r#"
[node]
region = "Fra 1"
name = "n 1"

[broker]
lame_duck_duration = "20s"
tags = ["GPU"]

[broker.monitoring]
bind = "0.0.0.0"

[broker.cluster]
enabled = true
routes = ["a.example:6222", "::1:6222", "b.example:0"]
compression = "fast"
pool_size = 0

[broker.include]
accounts = "missing-accounts.conf"
mqtt = "/etc/hosts"

[broker.jetstream]
max_memory_store = "64MiB"
"#,
    );
    let problems = f.problems();
    assert_problem(&problems, "node.region", &main, 3, "lower-case DNS label");
    assert_problem(&problems, "node.name", &main, 4, "not a valid server name");
    assert_problem(
        &problems,
        "broker.lame_duck_duration",
        &main,
        7,
        "minimum of 30s",
    );
    assert_problem(&problems, "broker.tags", &main, 8, "\"gpu\"");
    assert_problem(
        &problems,
        "broker.monitoring.bind",
        &main,
        11,
        "no authentication",
    );
    assert_problem(
        &problems,
        "broker.cluster.routes[1]",
        &main,
        15,
        "neither an IP address nor a DNS host name",
    );
    assert_problem(
        &problems,
        "broker.cluster.routes[2]",
        &main,
        15,
        "invalid port",
    );
    assert_problem(
        &problems,
        "broker.cluster.compression",
        &main,
        16,
        "allowed: off, accept",
    );
    assert_problem(
        &problems,
        "broker.cluster.pool_size",
        &main,
        17,
        "out of range",
    );
    assert_problem(
        &problems,
        "broker.include.accounts",
        &main,
        20,
        "missing-accounts.conf",
    );
    assert_problem(
        &problems,
        "broker.include.mqtt",
        &main,
        21,
        "broker.mqtt.enabled is false",
    );
    // Keys not written anywhere still get named.
    let p = problems
        .iter()
        .find(|p| p.key.as_deref() == Some("broker.jetstream.max_file_store"))
        .unwrap();
    assert!(
        p.message.contains("required when JetStream is enabled"),
        "{p}"
    );
    let p = problems
        .iter()
        .find(|p| p.key.as_deref() == Some("broker.cluster.advertise"))
        .unwrap();
    assert!(p.message.contains("0.0.0.0"), "{p}");
}

#[test]
fn region_is_required() {
    let f = Fixture::new();
    f.write("natsmesh.toml", "[broker.jetstream]\nenabled = false\n");
    let problems = f.problems();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key.as_deref(), Some("node.region"));
    assert!(problems[0].message.starts_with("required"));
}

#[test]
fn includes_resolve_against_the_file_that_names_them() {
    let f = Fixture::new();
    f.write("natsmesh.toml", MINIMAL);
    let acc = f.write("natsmesh.d/accounts.conf", "A: {}\n");
    f.write(
        "natsmesh.d/20-accounts.toml",
        "[broker.include]\naccounts = \"accounts.conf\"\n",
    );
    let s = f.settings().unwrap();
    assert_eq!(s.server.accounts_include.unwrap().as_path(), acc);
}

#[test]
fn a_region_of_one_with_gateways_gets_a_cluster_block_with_its_own_route() {
    let f = Fixture::new();
    f.write(
        "natsmesh.toml",
        &format!("{MINIMAL}\n[broker.gateway]\nenabled = true\n[broker.cluster]\nadvertise = \"n1.fra1.example:6222\"\n{}", f.tls()),
    );
    let s = f.settings().unwrap();
    let c = s.server.cluster.unwrap();
    assert_eq!(c.name, "fra1");
    assert_eq!(
        c.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["n1.fra1.example:6222"]
    );
    assert_eq!(s.server.gateway.unwrap().name, "fra1");
}

#[test]
fn routes_are_sorted_and_deduplicated_with_the_own_route() {
    let f = Fixture::new();
    f.write(
        "natsmesh.toml",
        &format!(
            "{MINIMAL}\n[broker.cluster]\nenabled = true\nbind = \"10.0.0.2\"\nroutes = [\"10.0.0.3:6222\", \"10.0.0.2:6222\", \"10.0.0.1:6222\", \"10.0.0.3:6222\"]\n{}",
            f.tls()
        ),
    );
    let s = f.settings().unwrap();
    let routes: Vec<_> = s
        .server
        .cluster
        .unwrap()
        .routes
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(routes, ["10.0.0.1:6222", "10.0.0.2:6222", "10.0.0.3:6222"]);
}

#[test]
fn the_embedded_default_validates() {
    let loaded = load(&Sources::Embedded).unwrap();
    let f = Fixture::new();
    let s = validate(&loaded, &f.env()).unwrap();
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:4222");
    assert_eq!(s.server.monitoring.unwrap().to_string(), "127.0.0.1:8222");
    assert!(s.server.jetstream.is_some());
    assert_eq!(s.region, "local");
}

/// A region's node with discovery (MINIMAL plus a domain).
const DISCOVERY: &str = r#"
[node]
region = "fra1"
domain = "Nats.Test."

[broker.jetstream]
max_memory_store = "64MiB"
max_file_store = "1GiB"

[broker.cluster]
enabled = true
bind = "10.0.0.1"

[broker.gateway]
enabled = true
bind = "10.0.0.1"
port = 7443

[discovery]
enabled = true
"#;

#[test]
fn discovery_gateways_are_a_function_of_the_region_names() {
    let f = Fixture::new();
    f.write(
        "natsmesh.toml",
        &format!("{DISCOVERY}regions = [\"sgp1\", \"fra1\", \"nyc3\", \"fra1\"]\nseeds = [\"10.0.0.2:6222\"]\n{}", f.tls()),
    );
    let s = f.settings().unwrap();
    let g = s.server.gateway.as_ref().unwrap();
    let gateways: Vec<_> = g
        .gateways
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        gateways,
        [
            ("fra1".to_owned(), vec!["fra1.nats.test:7443".to_owned()]),
            ("nyc3".to_owned(), vec!["nyc3.nats.test:7443".to_owned()]),
            ("sgp1".to_owned(), vec!["sgp1.nats.test:7443".to_owned()]),
        ]
    );
    let d = s.discovery.as_ref().unwrap();
    assert_eq!(
        d.settings.route_record.as_deref(),
        Some("_nats-route._tcp.fra1.nats.test")
    );
    assert_eq!(d.settings.regions_record, None);

    // What DNS finds replaces the routes; the gateways stay names.
    let mut applied = s.clone();
    let found = natsmesh::discovery::Found {
        routes: vec![
            natsmesh_broker::model::HostPort::parse("10.0.0.1:6222").unwrap(),
            natsmesh_broker::model::HostPort::parse("10.0.0.7:6222").unwrap(),
        ],
        regions: None,
        leaves: Vec::new(),
    };
    applied = natsmesh::prepare::effective(&applied, Some(&found), None, None);
    assert_eq!(
        applied.server.cluster.as_ref().unwrap().routes,
        found.routes
    );
    assert_eq!(applied.server.gateway, s.server.gateway);
}

#[test]
fn regions_from_txt_become_gateways_when_found() {
    let f = Fixture::new();
    f.write("natsmesh.toml", &format!("{DISCOVERY}{}", f.tls()));
    let mut s = f.settings().unwrap();
    let d = s.discovery.as_ref().unwrap();
    assert_eq!(
        d.settings.regions_record.as_deref(),
        Some("_nats-regions.nats.test")
    );
    let found = natsmesh::discovery::Found {
        routes: vec![natsmesh_broker::model::HostPort::parse("10.0.0.1:6222").unwrap()],
        regions: Some(vec!["ams3".into(), "fra1".into()]),
        leaves: Vec::new(),
    };
    s = natsmesh::prepare::effective(&s, Some(&found), None, None);
    let names: Vec<_> = s
        .server
        .gateway
        .unwrap()
        .gateways
        .iter()
        .map(|g| g.name.clone())
        .collect();
    assert_eq!(names, ["ams3", "fra1"]);
}

#[test]
fn discovery_problems_name_the_key() {
    let f = Fixture::new();
    f.write(
        "natsmesh.toml",
        &format!(
            "{MINIMAL}\n[broker.cluster]\nenabled = true\nbind = \"10.0.0.1\"\n[discovery]\nenabled = true\nnameservers = [\"dns.example\"]\nregions = [\"Not A Region\"]\nmin_refresh = \"10ms\"\n"
        ),
    );
    let problems = f.problems();
    let keys: Vec<_> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    assert!(keys.contains(&"node.domain"), "{problems:?}");

    f.write(
        "natsmesh.toml",
        &format!(
            "{DISCOVERY}nameservers = [\"dns.example\"]\nregions = [\"Not A Region\"]\nmin_refresh = \"10ms\"\n[[broker.gateway.remotes]]\nname = \"nyc3\"\nurls = [\"10.1.0.1:7222\"]\n"
        ),
    );
    let problems = f.problems();
    let keys: Vec<_> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "discovery.nameservers[0]",
        "discovery.regions[0]",
        "discovery.max_refresh",
        "broker.gateway.remotes",
    ] {
        assert!(keys.contains(&key), "{key} missing from {problems:?}");
    }
}

#[test]
fn a_jetstream_edge_needs_its_own_domain_and_a_remote_needs_urls_or_a_record() {
    let f = Fixture::new();
    f.write(
        "natsmesh.toml",
        &format!("{MINIMAL}\n[[broker.leafnodes.remotes]]\nurls = [\"hub.example:7422\"]\n[[broker.leafnodes.remotes]]\n[[broker.leafnodes.remotes]]\nurls = [\"hub.example:7422\"]\nrecord = \"_nats-leaf._tcp.hub.example\"\n[[broker.leafnodes.remotes]]\nrecord = \"_nats-leaf._tcp.hub.example\"\n"),
    );
    let problems = f.problems();
    let keys: Vec<_> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "broker.jetstream.domain",
        "broker.leafnodes.remotes[1]",
        "broker.leafnodes.remotes[2]",
        "broker.leafnodes.remotes[3].record",
    ] {
        assert!(keys.contains(&key), "{key} missing from {problems:?}");
    }

    // With a domain and discovery, an edge without a cluster is fine.
    f.write(
        "natsmesh.toml",
        "[node]\nregion = \"edge\"\ndomain = \"nats.test\"\n[broker.jetstream]\nmax_memory_store = \"64MiB\"\nmax_file_store = \"1GiB\"\ndomain = \"edge\"\n[[broker.leafnodes.remotes]]\nrecord = \"_nats-leaf._tcp.{region}.{domain}\"\n[discovery]\nenabled = true\n",
    );
    let s = f.settings().unwrap();
    let d = &s.discovery.as_ref().unwrap().settings;
    assert_eq!(d.leaf_records, ["_nats-leaf._tcp.edge.nats.test"]);
    assert_eq!(d.route_record, None);
}

/// Writes a secret file with `mode`.
fn secret(f: &Fixture, rel: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = f.write(rel, "token-value\n");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn dns_publish_writes_discoverys_records_for_this_node() {
    let f = Fixture::new();
    secret(&f, "creds/do-token", 0o600);
    f.write(
        "natsmesh.toml",
        &format!("{DISCOVERY}\n[dns_publish]\nbackend = \"digitalocean\"\ntoken_file = \"do-token\"\nttl = \"5s\"\n{}", f.tls()),
    );
    let env = Environment {
        credentials_dir: Some(f.dir.path().join("creds")),
        ..f.env()
    };
    let sources = discover(Some(&f.main())).unwrap();
    let s = validate(&load(&sources).unwrap(), &env).unwrap();
    let p = s.publish.as_ref().unwrap();
    let host = format!(
        "{}.fra1.nats.test",
        s.server.server_name.to_ascii_lowercase()
    );
    let records: Vec<String> = p.records.iter().map(ToString::to_string).collect();
    assert_eq!(
        records,
        [
            format!("_nats-route._tcp.fra1.nats.test SRV 10 10 6222 {host}."),
            format!("{host} A 10.0.0.1"),
            "fra1.nats.test A 10.0.0.1".to_owned(),
        ]
    );
    assert_eq!(p.host, host);
    assert_eq!(p.zone, "nats.test");
    // DigitalOcean keeps nothing below 30 s.
    assert_eq!(p.ttl, 30);
    // A relative token file is a systemd credential.
    match &p.backend {
        natsmesh::publish::BackendSettings::Api {
            token_file, url, ..
        } => {
            assert_eq!(token_file, &f.dir.path().join("creds/do-token"));
            assert_eq!(url, "https://api.digitalocean.com");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.state_file, s.state_dir.join("dns-published.json"));

    // The packaged unit loads /etc/natsmesh/credentials as a whole, which
    // systemd names `natsmesh_<file>`: the same setting finds it there.
    std::fs::rename(
        f.dir.path().join("creds/do-token"),
        f.dir.path().join("creds/natsmesh_do-token"),
    )
    .unwrap();
    let s = validate(&load(&sources).unwrap(), &env).unwrap();
    match &s.publish.unwrap().backend {
        natsmesh::publish::BackendSettings::Api { token_file, .. } => {
            assert_eq!(token_file, &f.dir.path().join("creds/natsmesh_do-token"));
        }
        other => panic!("{other:?}"),
    }
    std::fs::rename(
        f.dir.path().join("creds/natsmesh_do-token"),
        f.dir.path().join("creds/do-token"),
    )
    .unwrap();

    // Linode keeps SRV records at a Domain's apex: one Domain per region,
    // and only its fixed TTLs.
    f.write(
        "natsmesh.toml",
        &format!("{DISCOVERY}\n[dns_publish]\nbackend = \"linode\"\ntoken_file = \"creds/do-token\"\ngateway = false\n{}", f.tls()),
    );
    let p = f.settings().unwrap().publish.unwrap();
    assert_eq!(p.zone, "fra1.nats.test");
    assert_eq!(p.ttl, 300);
    assert_eq!(p.records.len(), 2, "no gateway address: {:?}", p.records);
}

#[test]
fn dns_publish_problems_name_the_key() {
    let f = Fixture::new();
    secret(&f, "open-token", 0o644);
    // Off, but half configured.
    f.write(
        "natsmesh.toml",
        &format!("{DISCOVERY}\n[dns_publish]\ntoken_file = \"x\"\n"),
    );
    let problems = f.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.key.as_deref() == Some("dns_publish.token_file")
                && p.message.contains("backend")),
        "{problems:?}"
    );
    // Without discovery there is nothing to publish.
    f.write(
        "natsmesh.toml",
        &format!(
            "{MINIMAL}\n[dns_publish]\nbackend = \"cloudflare\"\ntoken_file = \"open-token\"\n"
        ),
    );
    let problems = f.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.key.as_deref() == Some("dns_publish.backend")
                && p.message.contains("[discovery]")),
        "{problems:?}"
    );
    // RFC 2136 without its parts; a token in clear text off the machine; a
    // secret everyone can read; a zone the records are not in.
    f.write(
        "natsmesh.toml",
        &format!("{DISCOVERY}\n[dns_publish]\nbackend = \"rfc2136\"\ntsig_algorithm = \"hmac-md5\"\nzone = \"other.test\"\n"),
    );
    let problems = f.problems();
    let keys: Vec<_> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "dns_publish.server",
        "dns_publish.tsig_key_name",
        "dns_publish.tsig_algorithm",
        "dns_publish.tsig_secret_file",
        "dns_publish.zone",
    ] {
        assert!(keys.contains(&key), "{key} missing from {problems:?}");
    }
    f.write(
        "natsmesh.toml",
        &format!("{DISCOVERY}\n[dns_publish]\nbackend = \"cloudflare\"\ntoken_file = \"open-token\"\napi_url = \"http://api.example.com\"\n"),
    );
    let problems = f.problems();
    for (key, needle) in [
        ("dns_publish.api_url", "clear text"),
        ("dns_publish.token_file", "has mode 0644"),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.key.as_deref() == Some(key) && p.message.contains(needle)),
            "{key}: {needle} missing from {problems:?}"
        );
    }
}

/// MINIMAL on a DigitalOcean droplet.
fn on_do() -> String {
    MINIMAL.replace("[node]\n", "[node]\nprovider = \"digitalocean\"\n")
}

#[test]
fn load_balancer_membership_needs_the_providers_identity_and_a_port_of_its_own() {
    let f = Fixture::new();
    secret(&f, "lb-token", 0o600);
    f.write(
        "natsmesh.toml",
        &format!("{}\n[broker.client]\nport = 4222\n[load_balancer]\nprovider = \"digitalocean\"\nid = \"4de7ac8b\"\ntoken_file = \"lb-token\"\n", on_do()),
    );
    let identity = natsmesh::provider::Identity {
        provider: natsmesh::config::schema::Provider::DigitalOcean,
        instance_id: "3164444".into(),
        hostname: "n1".into(),
        provider_region: "fra1".into(),
        private_ipv4: Some("10.110.0.5".parse().unwrap()),
        public_ipv4: Some("203.0.113.5".parse().unwrap()),
        public_ipv6: None,
        tags: Vec::new(),
    };
    let sources = discover(Some(&f.main())).unwrap();
    let loaded = load(&sources).unwrap();
    let s = natsmesh::config::validate::validate(&loaded, &f.env(), &identity).unwrap();
    let b = s.balancer.unwrap();
    assert_eq!(b.instance_id, "3164444");
    assert_eq!(b.region, "fra1");
    assert_eq!(b.client_port, 4222);
    // The readiness endpoint listens on the private address by default.
    assert_eq!(b.ready.to_string(), "10.110.0.5:8223");
    assert_eq!(b.url, "https://api.digitalocean.com");
    assert_eq!(b.token_file, f.dir.path().join("lb-token"));

    // With identity from the file there is no droplet to register; a
    // readiness port on the client port, a token in clear text.
    f.write(
        "natsmesh.toml",
        &format!("{MINIMAL}\n[load_balancer]\nprovider = \"digitalocean\"\n"),
    );
    let problems = f.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.key.as_deref() == Some("load_balancer.provider")),
        "{problems:?}"
    );
    // The problems of a droplet's config with this `[load_balancer]`.
    let refused = |section: &str| {
        f.write(
            "natsmesh.toml",
            &format!(
                "{}\n[broker.client]\nport = 4222\n[load_balancer]\nprovider = \"digitalocean\"\n{section}",
                on_do()
            ),
        );
        let loaded = load(&discover(Some(&f.main())).unwrap()).unwrap();
        natsmesh::config::validate::validate(&loaded, &f.env(), &identity)
            .unwrap_err()
            .0
    };
    let problems = refused(
        "token_file = \"lb-token\"\nready_port = 4222\napi_url = \"http://api.example.com\"\n",
    );
    let keys: Vec<_> = problems.iter().filter_map(|p| p.key.as_deref()).collect();
    for key in [
        "load_balancer.id",
        "load_balancer.ready_port",
        "load_balancer.api_url",
    ] {
        assert!(keys.contains(&key), "{key} missing from {problems:?}");
    }

    // A VPC backend is a NodeBalancer's; a subnet only for one.
    let problems = refused("id = \"lb\"\ntoken_file = \"lb-token\"\nbackend = \"vpc\"\n");
    let vpc = problems
        .iter()
        .find(|p| p.key.as_deref() == Some("load_balancer.backend"))
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert!(
        vpc.to_string().contains("for Linode NodeBalancers"),
        "{vpc}"
    );
    let problems = refused("id = \"lb\"\ntoken_file = \"lb-token\"\nsubnet_id = 101\n");
    assert!(
        problems
            .iter()
            .any(|p| p.key.as_deref() == Some("load_balancer.subnet_id")),
        "{problems:?}"
    );
}

/// The packaged /etc/natsmesh/natsmesh.toml: its settings validate, and
/// the commented example of a cloud node names only real keys with values
/// of the right type.
#[test]
fn the_packaged_defaults_and_their_commented_example_are_valid() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/natsmesh.toml"),
    )
    .unwrap();
    let packaged: natsmesh::config::schema::RawConfig = toml::from_str(&text).unwrap();
    assert_eq!(
        packaged.broker.binary,
        Path::new("/usr/lib/natsmesh/nats-server")
    );

    let start = text.find("# [node]").expect("the example section");
    let example: String = text[start..]
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(l)))
        .collect();
    let parsed: Result<natsmesh::config::schema::RawConfig, _> = toml::from_str(&example);
    let parsed = parsed.unwrap_or_else(|e| panic!("{e}\n{example}"));
    assert_eq!(parsed.node.region.as_deref(), Some("fra1"));
    assert!(parsed.discovery.enabled && parsed.broker.gateway.enabled);
}

/// No route, gateway or leafnode listener other machines can reach without
/// mutual TLS: `check` refuses it naming the listener and the fix; loopback
/// and TLS are accepted.
#[test]
fn peers_off_loopback_need_tls() {
    for (table, key) in [
        ("[broker.cluster]\nenabled = true\n", "broker.cluster.bind"),
        ("[broker.gateway]\nenabled = true\n", "broker.gateway.bind"),
        (
            "[broker.leafnodes]\nenabled = true\n",
            "broker.leafnodes.bind",
        ),
    ] {
        let f = Fixture::new();
        f.write(
            "natsmesh.toml",
            &format!("{MINIMAL}\n{table}bind = \"10.0.0.2\"\n"),
        );
        let problems = f.problems();
        let p = problems
            .iter()
            .find(|p| p.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("{key} not refused: {problems:?}"));
        assert!(
            p.message.contains("10.0.0.2")
                && p.message.contains("without a certificate")
                && p.message.contains("mode = \"issue\""),
            "{p}"
        );
        // Loopback is fine without TLS; off loopback, TLS makes it fine.
        let no_refusal = |f: &Fixture| {
            if let Err(problems) = f.settings() {
                assert!(
                    problems.iter().all(|p| p.key.as_deref() != Some(key)),
                    "{key}: {problems:?}"
                );
            }
        };
        f.write(
            "natsmesh.toml",
            &format!("{MINIMAL}\n{table}bind = \"127.0.0.1\"\n"),
        );
        no_refusal(&f);
        f.write(
            "natsmesh.toml",
            &format!("{MINIMAL}\n{table}bind = \"10.0.0.2\"\n{}", f.tls()),
        );
        no_refusal(&f);
    }
}

/// In accounts mode the leafnode listener needs its own users, each bound
/// to an account that exists; without them nats-server admits a leaf node
/// that brings no credentials into `$G`.
#[test]
fn a_leafnode_listener_needs_users_bound_to_accounts() {
    let f = Fixture::new();
    let base = format!(
        "{MINIMAL}\n[auth]\nmode = \"accounts\"\n\n[accounts.APP]\n\n[broker.leafnodes]\nenabled = true\nbind = \"127.0.0.1\"\n"
    );
    f.write("natsmesh.toml", &base);
    let problems = f.problems();
    let p = problems
        .iter()
        .find(|p| p.key.as_deref() == Some("broker.leafnodes.users"))
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert!(
        p.message.contains("without credentials") && p.message.contains("--leafnode"),
        "{p}"
    );
    let hash = "$2b$11$abcdefghijklmnopqrstuu5tWpD5xXnQvGq8wN3y8pB2oC6j0mS1e";
    assert_eq!(hash.len(), 60);
    f.write(
        "natsmesh.toml",
        &format!("{base}\n[[broker.leafnodes.users]]\nname = \"edge\"\npassword_hash = \"{hash}\"\naccount = \"NOPE\"\n"),
    );
    let problems = f.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.key.as_deref() == Some("broker.leafnodes.users[0].account")),
        "{problems:?}"
    );
    f.write(
        "natsmesh.toml",
        &format!("{base}\n[[broker.leafnodes.users]]\nname = \"edge\"\npassword_hash = \"{hash}\"\naccount = \"APP\"\n"),
    );
    let s = f.settings().unwrap();
    let users = &s.server.leafnodes.unwrap().users;
    assert_eq!(users.len(), 1);
    assert_eq!(
        (users[0].user.as_str(), users[0].account.as_str()),
        ("edge", "APP")
    );
}

/// With a domain, a gateway is advertised by its region's name (which the
/// node certificate carries, and which `<region>.<domain>` resolves to the
/// gateway's own address), so its public address need not be in the
/// certificate; an advertise written by the operator is kept as written.
#[test]
fn a_gateway_with_a_domain_is_advertised_by_its_regions_name() {
    let f = Fixture::new();
    secret(&f, "creds/do-token", 0o600);
    let public = DISCOVERY.replace(
        "bind = \"10.0.0.1\"\nport = 7443",
        "bind = \"203.0.113.10\"\nport = 7443",
    );
    assert_ne!(public, DISCOVERY);
    f.write(
        "natsmesh.toml",
        &format!(
            "{public}\n[dns_publish]\nbackend = \"digitalocean\"\ntoken_file = \"do-token\"\n{}",
            f.tls()
        ),
    );
    let env = Environment {
        credentials_dir: Some(f.dir.path().join("creds")),
        ..f.env()
    };
    let sources = discover(Some(&f.main())).unwrap();
    let s = validate(&load(&sources).unwrap(), &env).unwrap();
    let g = s.server.gateway.as_ref().unwrap();
    assert_eq!(
        g.advertise.as_ref().unwrap().to_string(),
        "fra1.nats.test:7443"
    );
    // natsmeshd's gate takes the gateway's address; the broker's own
    // listener is on loopback behind it.
    let gate = s.gate.as_ref().unwrap();
    assert_eq!(gate.listen.to_string(), "203.0.113.10:7443");
    assert_eq!(g.listen.to_string(), "127.0.0.1:7443");
    assert_eq!(gate.own_name, "fra1.nats.test");
    // The region's name points at the gateway's own address.
    let records: Vec<String> = s
        .publish
        .as_ref()
        .unwrap()
        .records
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        records.contains(&"fra1.nats.test A 203.0.113.10".to_owned()),
        "{records:?}"
    );
    // The route address is dialled (routes gossip addresses): always in
    // the certificate; the gateway's only where the intermediate permits.
    let names = &s.tls.as_ref().unwrap().names;
    assert!(names.dns.contains(&"fra1.nats.test".to_owned()));
    assert!(
        names.ips.contains(&"10.0.0.1".parse().unwrap()),
        "{names:?}"
    );
    assert!(
        !names.ips.contains(&"203.0.113.10".parse().unwrap()),
        "{names:?}"
    );
    assert_eq!(
        names.by_name,
        ["203.0.113.10".parse::<std::net::IpAddr>().unwrap()]
    );

    // Written by the operator: kept, and peers dial it, so it must be in
    // the certificate.
    f.write(
        "natsmesh.toml",
        &format!(
            "{}{}",
            public.replace(
                "port = 7443",
                "port = 7443\nadvertise = \"203.0.113.10:7443\""
            ),
            f.tls()
        ),
    );
    let s = f.settings().unwrap();
    let g = s.server.gateway.as_ref().unwrap();
    assert_eq!(
        g.advertise.as_ref().unwrap().to_string(),
        "203.0.113.10:7443"
    );
    assert!(
        s.tls
            .as_ref()
            .unwrap()
            .names
            .ips
            .contains(&"203.0.113.10".parse().unwrap())
    );
}

/// A websocket listener without TLS is for a TLS-terminating proxy on the
/// same machine: off loopback it is refused (credentials in clear), with
/// TLS configured or not.
#[test]
fn a_websocket_without_tls_off_loopback_is_refused() {
    let f = Fixture::new();
    let ws = |bind: &str| {
        format!("{MINIMAL}\n[broker.websocket]\nenabled = true\nbind = \"{bind}\"\nno_tls = true\n")
    };
    for extra in [String::new(), f.tls()] {
        f.write("natsmesh.toml", &(ws("10.0.0.2") + &extra));
        let problems = f.problems();
        let p = problems
            .iter()
            .find(|p| p.key.as_deref() == Some("broker.websocket.no_tls"))
            .unwrap_or_else(|| panic!("not refused: {problems:?}"));
        assert!(
            p.message.contains("10.0.0.2") && p.message.contains("loopback"),
            "{p}"
        );
        f.write("natsmesh.toml", &(ws("127.0.0.1") + &extra));
        if let Err(problems) = f.settings() {
            assert!(
                problems
                    .iter()
                    .all(|p| p.key.as_deref() != Some("broker.websocket.no_tls")),
                "{problems:?}"
            );
        }
    }
}

/// A name given with its final dot is the same host: the certificate
/// names it without (webpki refuses a dotted name as malformed).
#[test]
fn extra_names_lose_their_final_dot() {
    let f = Fixture::new();
    f.write(
        "natsmesh.toml",
        &format!(
            "{DISCOVERY}{}extra_names = [\"Clients.Example.NET.\"]\n",
            f.tls()
        ),
    );
    let s = f.settings().unwrap();
    let dns = &s.tls.as_ref().unwrap().names.dns;
    assert!(dns.contains(&"clients.example.net".to_owned()), "{dns:?}");
    assert!(!dns.iter().any(|n| n.ends_with('.')), "{dns:?}");
}

/// Behind natsmeshd's gate on every address, the broker's own gateway
/// listener is on loopback at another port; the regions DNS names are
/// still dialled at the gate's port (found by the day-one boot test: they
/// were dialled at the broker's loopback port).
#[test]
fn regions_from_dns_are_dialled_at_the_gates_port() {
    let f = Fixture::new();
    let any = DISCOVERY.replace(
        "bind = \"10.0.0.1\"\nport = 7443",
        "bind = \"any\"\nport = 7443",
    );
    assert_ne!(any, DISCOVERY);
    f.write("natsmesh.toml", &format!("{any}{}", f.tls()));
    let mut s = f.settings().unwrap();
    assert_eq!(s.gate.as_ref().unwrap().listen.port(), 7443);
    assert_eq!(
        s.server.gateway.as_ref().unwrap().listen.to_string(),
        "127.0.0.1:17443"
    );
    s = natsmesh::prepare::effective(
        &s,
        Some(&natsmesh::discovery::Found {
            routes: Vec::new(),
            regions: Some(vec!["fra1".into(), "nyc3".into()]),
            leaves: Vec::new(),
        }),
        None,
        None,
    );
    let urls: Vec<String> = s
        .server
        .gateway
        .as_ref()
        .unwrap()
        .gateways
        .iter()
        .flat_map(|g| g.urls.iter().map(ToString::to_string))
        .collect();
    assert_eq!(urls, ["fra1.nats.test:7443", "nyc3.nats.test:7443"]);
}

#[test]
fn maintenance_max_down_defaults_to_15_minutes_and_must_outlast_the_drain() {
    let f = Fixture::new();
    f.write("natsmesh.toml", MINIMAL);
    assert_eq!(
        f.settings().unwrap().maintenance.max_down,
        std::time::Duration::from_secs(900)
    );
    f.write(
        "natsmesh.toml",
        &format!("{MINIMAL}\n[maintenance]\nmax_down = \"2h\"\n"),
    );
    assert_eq!(
        f.settings().unwrap().maintenance.max_down,
        std::time::Duration::from_secs(7200)
    );
    let main = f.write(
        "natsmesh.toml",
        &format!("{MINIMAL}\n[maintenance]\nmax_down = \"20s\"\n"),
    );
    let line = MINIMAL.lines().count() + 3;
    assert_problem(
        &f.problems(),
        "maintenance.max_down",
        &main,
        line,
        "at least broker.lame_duck_duration",
    );
}

#[test]
fn coordinated_reboots_are_off_by_default_and_their_keys_are_checked() {
    let f = Fixture::new();
    f.write("natsmesh.toml", MINIMAL);
    assert_eq!(f.settings().unwrap().maintenance.reboot, None);
    f.write(
        "natsmesh.toml",
        &format!(
            "{MINIMAL}\n[maintenance]\nreboot = \"coordinated\"\nwindow = \"Sat,Sun 01:00-06:00 UTC\"\n"
        ),
    );
    let r = f.settings().unwrap().maintenance.reboot.unwrap();
    assert_eq!(r.command, ["systemctl", "reboot"]);
    assert_eq!(r.required, std::path::Path::new("/run/reboot-required"));
    assert_eq!(r.window.unwrap().to_string(), "Sat,Sun 01:00-06:00 UTC");
    // Any time without a window; the command is argv.
    f.write(
        "natsmesh.toml",
        &format!(
            "{MINIMAL}\n[maintenance]\nreboot = \"coordinated\"\nreboot_command = [\"/usr/local/bin/reboot-now\", \"--why\", \"a b\"]\nreboot_required = \"/tmp/rr\"\n"
        ),
    );
    let r = f.settings().unwrap().maintenance.reboot.unwrap();
    assert_eq!(r.window, None);
    assert_eq!(r.command, ["/usr/local/bin/reboot-now", "--why", "a b"]);

    let main = f.write(
        "natsmesh.toml",
        &format!("{MINIMAL}\n[maintenance]\nreboot = \"coordinated\"\nwindow = \"Mon-Fri 02:00-05:00 CET\"\n"),
    );
    let line = MINIMAL.lines().count() + 4;
    assert_problem(
        &f.problems(),
        "maintenance.window",
        &main,
        line,
        "only UTC is understood",
    );
    f.write(
        "natsmesh.toml",
        &format!("{MINIMAL}\n[maintenance]\nreboot = \"coordinated\"\nreboot_command = []\nreboot_required = \"run/reboot-required\"\n"),
    );
    let problems = format!("{:?}", f.problems());
    assert!(
        problems.contains("maintenance.reboot_command") && problems.contains("an absolute path"),
        "{problems}"
    );
    f.write(
        "natsmesh.toml",
        &format!("{MINIMAL}\n[maintenance]\nreboot = \"sometimes\"\n"),
    );
    assert!(f.settings().is_err());
}

/// A certificate set for the files at `cert` and `key` (what is known of
/// the certificate does not reach the broker's configuration).
fn cert_set(cert: PathBuf, key: PathBuf) -> natsmesh::tls::CertSet {
    let t = std::time::SystemTime::UNIX_EPOCH;
    natsmesh::tls::CertSet {
        cert_file: cert,
        key_file: key,
        current: natsmesh::tls::Current {
            info: natsmesh::tls::pki::CertInfo {
                serial: "01".into(),
                subject: "CN=n1".into(),
                not_before: t,
                not_after: t,
                is_ca: false,
                self_signed: false,
                dns_names: Vec::new(),
                ips: Vec::new(),
                public_key: Vec::new(),
            },
            renew_at: t,
            warnings: Vec::new(),
            issuer_not_after: None,
            root_not_after: None,
        },
    }
}

/// The one function that builds the broker's settings: peers in and out,
/// a new value every time (the validated settings are never touched), the
/// same output for the same inputs.
#[test]
fn the_effective_settings_are_built_from_the_inputs_alone() {
    let f = Fixture::new();
    f.write(
        "natsmesh.toml",
        &format!("{DISCOVERY}seeds = [\"10.0.0.2:6222\"]\n{}", f.tls()),
    );
    let s = f.settings().unwrap();
    let before = s.clone();
    let hp = |a: &str| natsmesh_broker::model::HostPort::parse(a).unwrap();
    let found = natsmesh::discovery::Found {
        routes: vec![hp("10.0.0.1:6222"), hp("10.0.0.7:6222")],
        regions: Some(vec!["ams3".into(), "fra1".into()]),
        leaves: Vec::new(),
    };
    let e = natsmesh::prepare::effective(&s, Some(&found), None, None);
    assert_eq!(e.server.cluster.as_ref().unwrap().routes, found.routes);
    let names: Vec<_> = e
        .server
        .gateway
        .as_ref()
        .unwrap()
        .gateways
        .iter()
        .map(|g| g.name.clone())
        .collect();
    assert_eq!(names, ["ams3", "fra1"]);
    assert_eq!(s, before, "the validated settings changed");
    assert_eq!(
        e,
        natsmesh::prepare::effective(&s, Some(&found), None, None)
    );
    // Peers out: nothing found, nothing changed.
    assert_eq!(natsmesh::prepare::effective(&s, None, None, None), s);
    // Fewer peers later: the routes follow.
    let fewer = natsmesh::discovery::Found {
        routes: vec![hp("10.0.0.1:6222")],
        ..found.clone()
    };
    let e = natsmesh::prepare::effective(&s, Some(&fewer), None, None);
    assert_eq!(e.server.cluster.as_ref().unwrap().routes, fewer.routes);
    // natsmeshd's logins join the accounts, in the output only.
    let cache = f.dir.path().join("cache");
    if let Some(system) = natsmesh::auth::system_account(&s, &cache).unwrap() {
        let e = natsmesh::prepare::effective(&s, None, None, Some(&system));
        let has_sys = |x: &Settings| x.server.accounts.iter().any(|a| a.name.as_str() == "SYS");
        assert!(has_sys(&e), "no system account in {:?}", e.server.accounts);
        assert!(!has_sys(&s));
        assert_eq!(
            e,
            natsmesh::prepare::effective(&s, None, None, Some(&system))
        );
    } else {
        panic!("the discovery fixture has natsmeshd's system user");
    }
}

/// The certificate set: TLS on, the broker loads the set's files (the
/// same files: nothing changes); TLS off, no block loads one.
#[test]
fn the_effective_settings_load_the_certificate_set_in_use() {
    let f = Fixture::new();
    f.write("natsmesh.toml", &format!("{DISCOVERY}{}", f.tls()));
    let s = f.settings().unwrap();
    let before = s.clone();
    let tls = s.tls.as_ref().unwrap();
    let same = cert_set(tls.cert_file.clone(), tls.key_file.clone());
    assert_eq!(natsmesh::prepare::effective(&s, None, Some(&same), None), s);
    let (cert, key) = (
        f.dir.path().join("elsewhere/node.crt"),
        f.dir.path().join("elsewhere/node.key"),
    );
    let moved =
        natsmesh::prepare::effective(&s, None, Some(&cert_set(cert.clone(), key.clone())), None);
    assert_eq!(moved.tls.as_ref().unwrap().cert_file, cert);
    let cluster_tls = moved.server.cluster.as_ref().unwrap().tls.as_ref().unwrap();
    assert_eq!(
        (&cluster_tls.cert_file, &cluster_tls.key_file),
        (&cert, &key)
    );
    let gateway_tls = moved.server.gateway.as_ref().unwrap().tls.as_ref().unwrap();
    assert_eq!(gateway_tls.cert_file, cert);
    assert_eq!(s, before, "the validated settings changed");
    // TLS off: a set changes nothing.
    let off = Fixture::new();
    off.write("natsmesh.toml", MINIMAL);
    let s = off.settings().unwrap();
    assert!(s.tls.is_none());
    assert_eq!(natsmesh::prepare::effective(&s, None, Some(&same), None), s);
}

/// The supervisor builds its first configuration with the one function and
/// publishes it on the spine: the settings the broker runs with (DNS's
/// routes in, the validated settings' untouched), the certificate set (TLS
/// off here: none) and the prepared file. Runs the real `nats-server -t`.
#[test]
fn the_supervisor_publishes_the_effective_settings_it_prepared() {
    let f = Fixture::new();
    let bin = f.dir.path().join("bin/nats-server");
    std::fs::remove_file(&bin).unwrap();
    std::os::unix::fs::symlink(
        natsmesh_harness::broker_binary(natsmesh_harness::CURRENT),
        &bin,
    )
    .unwrap();
    f.write(
        "natsmesh.toml",
        "[node]\nregion = \"fra1\"\n\n[broker.jetstream]\nenabled = false\n\n[broker.cluster]\nenabled = true\nbind = \"127.0.0.1\"\n",
    );
    let s = f.settings().unwrap();
    assert!(s.tls.is_none());
    let hp = |a: &str| natsmesh_broker::model::HostPort::parse(a).unwrap();
    let found = natsmesh::discovery::Found {
        routes: vec![hp("127.0.0.1:6222"), hp("127.0.0.9:6222")],
        regions: None,
        leaves: Vec::new(),
    };
    let (_tx, rx) = tokio::sync::watch::channel(found.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks = natsmesh::shutdown::Tasks::default();
        let (sup, _status) = natsmesh::supervisor::Supervisor::new(
            None,
            s.clone(),
            Some(rx),
            natsmesh::notify::Notifier::from_env(),
            tasks.clone(),
        )
        .await
        .unwrap();
        let spine = sup.spine();
        let system = natsmesh::auth::system_account(&s, &s.state_dir).unwrap();
        let want = natsmesh::prepare::effective(&s, Some(&found), None, system.as_ref());
        assert_eq!(**spine.settings.borrow(), want);
        assert_eq!(
            spine
                .settings
                .borrow()
                .server
                .cluster
                .as_ref()
                .unwrap()
                .routes,
            found.routes
        );
        assert_ne!(
            s.server.cluster.as_ref().unwrap().routes,
            found.routes,
            "the validated settings took DNS's routes"
        );
        assert!(spine.certs.borrow().is_none());
        let prepared = spine.prepared.borrow().clone();
        let text = std::fs::read_to_string(&prepared.path).unwrap();
        assert_eq!(text, prepared.rendered.text);
        assert!(text.contains("127.0.0.9:6222"), "{text}");
        assert!(tasks.shutdown(natsmesh::shutdown::GRACE).await);
    });
}

#[test]
fn jetstream_sync_interval_is_a_duration_up_to_an_hour_or_always() {
    use natsmesh_broker::model::SyncInterval;
    use std::time::Duration;
    let f = Fixture::new();
    f.write("natsmesh.toml", MINIMAL);
    // Unset: nats-server's own default, nothing rendered.
    let js = f.settings().unwrap().server.jetstream.unwrap();
    assert_eq!(js.sync_interval, None);
    for (written, expected) in [
        ("always", SyncInterval::Always),
        ("ALWAYS", SyncInterval::Always),
        ("10s", SyncInterval::Every(Duration::from_secs(10))),
        ("2m", SyncInterval::Every(Duration::from_secs(120))),
        ("1h", SyncInterval::Every(Duration::from_secs(3600))),
        ("250ms", SyncInterval::Every(Duration::from_millis(250))),
    ] {
        f.write(
            "natsmesh.toml",
            &format!("{MINIMAL}sync_interval = \"{written}\"\n"),
        );
        let js = f.settings().unwrap().server.jetstream.unwrap();
        assert_eq!(js.sync_interval, Some(expected), "{written}");
    }
    let line = MINIMAL.lines().count() + 1;
    for (written, needle) in [
        ("0s", "0 is no interval; write \"always\""),
        ("61m", "longer than 1h"),
        ("never", "is neither \"always\" nor a duration"),
        ("10", "is neither \"always\" nor a duration"),
        ("", "is neither \"always\" nor a duration"),
    ] {
        let main = f.write(
            "natsmesh.toml",
            &format!("{MINIMAL}sync_interval = \"{written}\"\n"),
        );
        assert_problem(
            &f.problems(),
            "broker.jetstream.sync_interval",
            &main,
            line,
            needle,
        );
    }
}
