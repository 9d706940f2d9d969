//! Every version-gated key, checked against every binary of the matrix: the
//! table in `version::GATED_KEYS` must say exactly which releases accept it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use natsmesh_broker::version::{GATED_KEYS, supports_key};
use natsmesh_harness::{MATRIX, broker_binary, check, scratch, semver};

/// A minimal file that sets the key at `path` (value valid where the key exists).
fn config_with(path: &str) -> String {
    match path {
        "cluster.pool_size" => {
            "cluster { name: c, listen: \"127.0.0.1:-1\", pool_size: 3 }".into()
        }
        "cluster.compression" => {
            "cluster { name: c, listen: \"127.0.0.1:-1\", compression: \"s2_fast\" }".into()
        }
        "leafnodes.compression" => {
            "leafnodes { listen: \"127.0.0.1:-1\", compression: \"s2_auto\" }".into()
        }
        "leafnodes.remotes.compression" => {
            "leafnodes { remotes: [ { urls: [\"nats-leaf://127.0.0.1:7422\"], compression: \"off\" } ] }".into()
        }
        "logtime_utc" => "logtime_utc: true".into(),
        "jetstream.sync_interval" => {
            "jetstream { store_dir: \"/nonexistent/js\", max_memory_store: 1, max_file_store: 1, sync_interval: \"2m\" }".into()
        }
        other => panic!("no sample config for gated key {other}; add one"),
    }
}

#[test]
fn gated_keys_match_the_real_binaries() {
    let dir = scratch();
    let mut wrong = Vec::new();
    for key in GATED_KEYS {
        let file = dir.path().join("gated.conf");
        std::fs::write(&file, config_with(key.path)).unwrap();
        for version in MATRIX {
            let (accepted, stderr) = check(&broker_binary(version), &file);
            let expected = supports_key(&semver(version), key.path);
            if accepted != expected {
                wrong.push(format!(
                    "{} on {version}: table says {expected}, binary says {accepted} ({})",
                    key.path,
                    stderr.trim()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn ungated_keys_are_known_to_the_oldest_release() {
    // The keys natsmesh renders without a gate must parse on 2.9.10.
    let dir = scratch();
    let file = dir.path().join("all.conf");
    std::fs::write(
        &file,
        r#"
server_name: "n1"
listen: "127.0.0.1:-1"
client_advertise: "n1.example:4222"
http: "127.0.0.1:-1"
ports_file_dir: "/tmp"
logtime: false
debug: false
trace: false
lame_duck_duration: "30s"
lame_duck_grace_period: "10s"
server_tags: ["a"]
jetstream { store_dir: "/tmp/x", max_memory_store: 1, max_file_store: 1, domain: "d" }
cluster { name: "c", listen: "127.0.0.1:-1", advertise: "h:6222", no_advertise: true, routes: ["nats-route://127.0.0.1:6222"] }
gateway { name: "c", listen: "127.0.0.1:-1", advertise: "h:7222", gateways: [ { name: "b", urls: ["nats://h:7222"] } ] }
leafnodes { listen: "127.0.0.1:-1", advertise: "h:7422", remotes: [ { urls: ["nats-leaf://h:7422"], account: "$G" } ] }
mqtt { listen: "127.0.0.1:-1" }
websocket { listen: "127.0.0.1:-1", no_tls: true }
"#,
    )
    .unwrap();
    let (ok, stderr) = check(&broker_binary(natsmesh_harness::DEBIAN_12), &file);
    assert!(ok, "{stderr}");
}
