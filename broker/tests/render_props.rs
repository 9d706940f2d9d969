//! Renderer property tests against the real binaries: arbitrary names, paths
//! and sizes render to files that `nats-server -t` accepts on every release
//! of the matrix, and a started server reports (through `/varz`) exactly the
//! values that were given.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use natsmesh_broker::model::JetStream;
use natsmesh_broker::validate::validate;
use natsmesh_harness::{MATRIX, OLDEST_AND_CURRENT, broker_binary, check, scratch};
use proptest::prelude::*;

/// Strings that try hard to break quoting: quotes, backslashes, control
/// characters, things that look like booleans, numbers and variables.
fn nasty_string() -> impl Strategy<Value = String> {
    // Server names may not hold whitespace of any kind (natsmesh refuses it
    // on every release, 2.11+ too).
    prop_oneof![
        Just("yes".to_owned()),
        Just("off".to_owned()),
        Just("1G".to_owned()),
        Just("$HOME".to_owned()),
        Just("include".to_owned()),
        Just("a}\"b".to_owned()),
        "[^\\s]{1,24}",
        "[a-zA-Z0-9\"\\\\$#{}\\[\\];,:=/'\\x01-\\x08\\x7f-\\x{10FFFF}]{1,24}",
    ]
    .prop_filter("no whitespace", |s| !s.chars().any(char::is_whitespace))
}

fn nasty_tag() -> impl Strategy<Value = String> {
    // Inner spaces and tabs survive; the server trims the ends, lower-cases
    // and drops duplicates, which `validate` refuses up front.
    "[a-z0-9\"\\\\$#{}\\[\\]=:,'\\x01][a-z0-9 \t\"\\\\$#{}\\[\\]=:,'\\x01]{0,14}[a-z0-9\"\\\\$#{}\\[\\]=:,'\\x01]"
}

fn path_component() -> impl Strategy<Value = String> {
    // Anything a file name may hold: no '/', no NUL.
    "[^/\\x00]{1,24}"
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    tags: Vec<String>,
    dir_component: String,
    max_memory: u64,
    max_file: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        nasty_string(),
        proptest::collection::btree_set(nasty_tag(), 0..4)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>()),
        path_component(),
        1u64..=(1 << 40),
        1u64..=(1 << 50),
    )
        .prop_map(|(name, tags, dir_component, max_memory, max_file)| Case {
            name,
            tags,
            dir_component,
            max_memory,
            max_file,
        })
}

fn config_for(case: &Case, dir: &std::path::Path) -> natsmesh_broker::model::ServerConfig {
    let mut cfg = common::base(dir);
    cfg.server_name = case.name.clone();
    cfg.tags = case.tags.clone();
    cfg.jetstream = Some(JetStream {
        store_dir: dir.join(format!("js-{}", case.dir_component)),
        max_memory_store: case.max_memory,
        max_file_store: case.max_file,
        domain: None,
        sync_interval: None,
    });
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Parse-level: every release of the matrix accepts the rendered file.
    #[test]
    fn rendered_files_pass_dash_t_on_every_release(case in case()) {
        let dir = scratch();
        let cfg = config_for(&case, dir.path());
        prop_assert!(validate(&cfg).is_empty(), "{:?}", validate(&cfg));
        for version in MATRIX {
            let file = dir.path().join("nats-server.conf");
            common::write(&cfg, version, &file);
            let (ok, stderr) = check(&broker_binary(version), &file);
            prop_assert!(ok, "{version} refused:\n{stderr}\n{}", std::fs::read_to_string(&file).unwrap());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Meaning-level: the running server reports exactly what was given.
    #[test]
    fn running_server_reads_back_what_was_rendered(case in case()) {
        for version in OLDEST_AND_CURRENT {
            let dir = scratch();
            let cfg = config_for(&case, dir.path());
            let broker = common::start(&cfg, version, dir.path());
            let varz = broker.varz();
            prop_assert_eq!(varz["server_name"].as_str(), Some(case.name.as_str()), "{}", version);
            let js = &varz["jetstream"]["config"];
            let store = dir.path().join(format!("js-{}", case.dir_component)).join("jetstream");
            prop_assert_eq!(js["store_dir"].as_str(), store.to_str(), "{}", version);
            prop_assert_eq!(js["max_memory"].as_u64(), Some(case.max_memory), "{}", version);
            prop_assert_eq!(js["max_storage"].as_u64(), Some(case.max_file), "{}", version);
            let want = case.tags.clone();
            let got: Vec<String> = varz["tags"]
                .as_array()
                .map(|a| a.iter().map(|t| t.as_str().unwrap_or_default().to_owned()).collect())
                .unwrap_or_default();
            prop_assert_eq!(got, want, "{}", version);
        }
    }
}
