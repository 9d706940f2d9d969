//! `jetstream.sync_interval` as natsmesh renders it, against the real
//! binaries: every release that knows the key passes `-t` on the rendered
//! file and a running broker reports what it was given; every release that
//! does not is refused at render time, before nats-server could refuse to
//! start on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use natsmesh_broker::model::{JetStream, RenderError, ServerConfig, SyncInterval, render};
use natsmesh_broker::version::supports_key;
use natsmesh_harness::{CURRENT, MATRIX, broker_binary, check, scratch, semver};

fn with_sync(dir: &Path, sync: SyncInterval) -> ServerConfig {
    ServerConfig {
        jetstream: Some(JetStream {
            store_dir: dir.join("js"),
            max_memory_store: 64 << 20,
            max_file_store: 64 << 20,
            domain: None,
            sync_interval: Some(sync),
        }),
        ..common::base(dir)
    }
}

#[test]
fn rendered_sync_interval_passes_t_where_gated_in_and_is_refused_elsewhere() {
    let mut wrong = Vec::new();
    for sync in [
        SyncInterval::Always,
        SyncInterval::Every(Duration::from_secs(10)),
        SyncInterval::Every(Duration::from_millis(1500)),
    ] {
        for version in MATRIX {
            let dir = scratch();
            let cfg = with_sync(dir.path(), sync);
            let v = semver(version);
            match render(&cfg, &v, dir.path()) {
                Ok(r) => {
                    assert!(
                        supports_key(&v, "jetstream.sync_interval"),
                        "{version}: rendered a key the gate says it lacks"
                    );
                    assert!(r.text.contains("sync_interval: "), "{}", r.text);
                    let file = dir.path().join("nats-server.conf");
                    std::fs::write(&file, &r.text).unwrap();
                    let (ok, stderr) = check(&broker_binary(version), &file);
                    if !ok {
                        wrong.push(format!("{sync:?} on {version}: -t refused: {stderr}"));
                    }
                }
                Err(RenderError::UnsupportedKey { key, .. }) => {
                    assert_eq!(key, "jetstream.sync_interval");
                    // The gate must match the binary: it really refuses.
                    let file = dir.path().join("raw.conf");
                    std::fs::write(
                        &file,
                        "jetstream { store_dir: \"/nonexistent\", max_memory_store: 1, max_file_store: 1, sync_interval: always }\n",
                    )
                    .unwrap();
                    let (ok, stderr) = check(&broker_binary(version), &file);
                    if ok || !stderr.contains("sync_interval") {
                        wrong.push(format!("{version}: gated out, but -t says {ok}: {stderr}"));
                    }
                }
                Err(e) => panic!("{version}: {e}"),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The broker's own view (`/varz` jetstream.config: `sync_always`, and
/// `sync_interval` in nanoseconds) is what natsmesh rendered.
#[test]
fn a_running_broker_reports_the_rendered_sync_interval() {
    for (sync, always, interval_ns) in [
        (SyncInterval::Always, true, None),
        (
            SyncInterval::Every(Duration::from_secs(10)),
            false,
            Some(10_000_000_000_u64),
        ),
    ] {
        for version in ["2.10.26", CURRENT] {
            let dir = scratch();
            let broker = common::start(&with_sync(dir.path(), sync), version, dir.path());
            assert!(
                broker.wait_log("Server is ready", Duration::from_secs(10)),
                "{}",
                broker.log()
            );
            let varz = broker.varz();
            let config = &varz["jetstream"]["config"];
            assert_eq!(
                config["sync_always"].as_bool().unwrap_or(false),
                always,
                "{version} {sync:?}: {config}"
            );
            if let Some(ns) = interval_ns {
                assert_eq!(
                    config["sync_interval"].as_u64(),
                    Some(ns),
                    "{version} {sync:?}: {config}"
                );
            }
        }
    }
}

/// Without the key, nothing is rendered and the broker keeps its default
/// (2 minutes, no sync_always): unset means nats-server's default.
#[test]
fn unset_renders_nothing_and_the_broker_keeps_its_default() {
    let dir = scratch();
    let mut cfg = with_sync(dir.path(), SyncInterval::Always);
    if let Some(js) = cfg.jetstream.as_mut() {
        js.sync_interval = None;
    }
    let r = render(&cfg, &semver(CURRENT), dir.path()).unwrap();
    assert!(!r.text.contains("sync_interval"), "{}", r.text);
    let broker = common::start(&cfg, CURRENT, dir.path());
    assert!(
        broker.wait_log("Server is ready", Duration::from_secs(10)),
        "{}",
        broker.log()
    );
    let config = &broker.varz()["jetstream"]["config"];
    assert_eq!(config["sync_always"].as_bool(), None, "{config}");
    assert_eq!(
        config["sync_interval"].as_u64(),
        Some(120_000_000_000),
        "{config}"
    );
}
