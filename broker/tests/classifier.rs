//! The reload classifier against real reloads: for each row, a broker of
//! every release in the matrix is started with the old config, sent the new
//! one with SIGHUP, and its acceptance or refusal is read from its log. The
//! classifier must say "reload" exactly when the broker accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use natsmesh_broker::classify::{Action, Snapshot, classify};
use natsmesh_broker::conf::IncludePath;
use natsmesh_broker::model::*;
use natsmesh_broker::version::supports_key;
use natsmesh_harness::{MATRIX, free_port, scratch, semver};

fn cluster(dir: &Path) -> Cluster {
    let _ = dir;
    let port = free_port();
    Cluster {
        name: "fra1".into(),
        listen: Listen::new(common::LOCAL, port),
        advertise: None,
        no_advertise: false,
        routes: vec![HostPort::from_ip(common::LOCAL, port)],
        pool_size: None,
        compression: None,
        include: None,
        tls: None,
    }
}

fn js(dir: &Path) -> JetStream {
    JetStream {
        store_dir: dir.join("js"),
        max_memory_store: 64 << 20,
        max_file_store: 64 << 20,
        domain: None,
        sync_interval: None,
    }
}

fn include(dir: &Path, name: &str, text: &str) -> IncludePath {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    IncludePath::new(p).unwrap()
}

/// Result of sending the new config to a broker running the old one.
fn broker_accepts(version: &str, old: &ServerConfig, new: &ServerConfig, dir: &Path) -> bool {
    let broker = common::start(old, version, dir);
    assert!(
        broker.wait_log("Server is ready", Duration::from_secs(10)),
        "{}",
        broker.log()
    );
    common::write(new, version, &dir.join("nats-server.conf"));
    broker.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = broker.log();
        if log.contains("Failed to reload server configuration") {
            return false;
        }
        if log.contains("Reloaded server configuration") {
            return true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{version}: no reload outcome logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Builds (old, new) in `dir`; `None` when the row does not apply to `version`.
type Row = fn(&Path) -> (ServerConfig, ServerConfig);

/// Checks one row on every release where both configs render.
fn check_row(name: &str, row: Row) {
    let mut wrong = Vec::new();
    for version in MATRIX {
        let dir = scratch();
        let (old, new) = row(dir.path());
        let v = semver(version);
        let (Ok(r_old), Ok(r_new)) = (render(&old, &v, dir.path()), render(&new, &v, dir.path()))
        else {
            continue; // a key this release does not have
        };
        let decision = classify(&Snapshot::capture(&r_old), &Snapshot::capture(&r_new));
        assert_ne!(
            decision.action,
            Action::Nothing,
            "{name}: the row changes nothing"
        );
        let accepted = broker_accepts(version, &old, &new, dir.path());
        let predicted = decision.action == Action::Reload;
        if accepted != predicted {
            wrong.push(format!(
                "{name} on {version}: classifier says {}, broker {} ({:?})",
                decision.action,
                if accepted { "reloaded" } else { "refused" },
                decision.changes
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

macro_rules! rows {
    ($($name:ident => $row:expr;)*) => {
        $(
            #[test]
            fn $name() {
                check_row(stringify!($name), $row);
            }
        )*
    };
}

rows! {
    server_name => |d| {
        let old = common::base(d);
        let new = ServerConfig { server_name: "n2".into(), ..old.clone() };
        (old, new)
    };
    client_listener => |d| {
        let old = ServerConfig { listen: Listen::new(common::LOCAL, free_port()), ..common::base(d) };
        let new = ServerConfig { listen: Listen::new(common::LOCAL, free_port()), ..old.clone() };
        (old, new)
    };
    monitoring_listener => |d| {
        let old = ServerConfig { monitoring: Some(Listen::new(common::LOCAL, free_port())), ..common::base(d) };
        let new = ServerConfig { monitoring: Some(Listen::new(common::LOCAL, free_port())), ..old.clone() };
        (old, new)
    };
    lame_duck_duration => |d| {
        let old = common::base(d);
        let new = ServerConfig { lame_duck_duration: Duration::from_secs(60), ..old.clone() };
        (old, new)
    };
    debug_logging => |d| {
        let old = common::base(d);
        let new = ServerConfig { debug: true, ..old.clone() };
        (old, new)
    };
    server_tags => |d| {
        let old = common::base(d);
        let new = ServerConfig { tags: vec!["az:1".into()], ..old.clone() };
        (old, new)
    };
    client_advertise => |d| {
        let old = common::base(d);
        let new = ServerConfig { client_advertise: Some(HostPort::parse("lb.example:4222").unwrap()), ..old.clone() };
        (old, new)
    };
    accounts_include => |d| {
        let a = include(d, "accounts-a.conf", "A: { users: [ { user: a, password: pa } ] }\n");
        let b = include(d, "accounts-b.conf", "A: { users: [ { user: a, password: pa }, { user: b, password: pb } ] }\n");
        let old = ServerConfig { accounts_include: Some(a), ..common::base(d) };
        let new = ServerConfig { accounts_include: Some(b), ..old.clone() };
        (old, new)
    };
    authorization_include => |d| {
        let a = include(d, "auth-a.conf", "users: [ { user: a, password: pa } ]\n");
        let b = include(d, "auth-b.conf", "users: [ { user: b, password: pb } ]\n");
        let old = ServerConfig { authorization_include: Some(a), ..common::base(d) };
        let new = ServerConfig { authorization_include: Some(b), ..old.clone() };
        (old, new)
    };
    jetstream_limit_increase => |d| {
        let old = ServerConfig { jetstream: Some(js(d)), ..common::base(d) };
        let new = ServerConfig { jetstream: Some(JetStream { max_file_store: 128 << 20, ..js(d) }), ..old.clone() };
        (old, new)
    };
    jetstream_limit_decrease => |d| {
        let old = ServerConfig { jetstream: Some(js(d)), ..common::base(d) };
        let new = ServerConfig { jetstream: Some(JetStream { max_file_store: 32 << 20, ..js(d) }), ..old.clone() };
        (old, new)
    };
    jetstream_store_dir => |d| {
        let old = ServerConfig { jetstream: Some(js(d)), ..common::base(d) };
        let new = ServerConfig { jetstream: Some(JetStream { store_dir: d.join("js2"), ..js(d) }), ..old.clone() };
        (old, new)
    };
    jetstream_sync_interval_set => |d| {
        let old = ServerConfig { jetstream: Some(js(d)), ..common::base(d) };
        let new = ServerConfig { jetstream: Some(JetStream { sync_interval: Some(SyncInterval::Always), ..js(d) }), ..old.clone() };
        (old, new)
    };
    jetstream_sync_interval_changed => |d| {
        let every = |s| Some(JetStream { sync_interval: Some(SyncInterval::Every(Duration::from_secs(s))), ..js(d) });
        let old = ServerConfig { jetstream: every(120), ..common::base(d) };
        let new = ServerConfig { jetstream: every(10), ..old.clone() };
        (old, new)
    };
    cluster_routes => |d| {
        let c = cluster(d);
        let mut c2 = c.clone();
        c2.routes.push(HostPort::from_ip(common::LOCAL, free_port()));
        let old = ServerConfig { cluster: Some(c), ..common::base(d) };
        let new = ServerConfig { cluster: Some(c2), ..old.clone() };
        (old, new)
    };
    cluster_advertise => |d| {
        let c = cluster(d);
        let c2 = Cluster { advertise: Some(HostPort::parse("n1.fra1.example:6222").unwrap()), ..c.clone() };
        let old = ServerConfig { cluster: Some(c), ..common::base(d) };
        let new = ServerConfig { cluster: Some(c2), ..old.clone() };
        (old, new)
    };
    cluster_listener => |d| {
        let c = cluster(d);
        let c2 = Cluster { listen: Listen::new(common::LOCAL, free_port()), ..c.clone() };
        let old = ServerConfig { cluster: Some(c), ..common::base(d) };
        let new = ServerConfig { cluster: Some(c2), ..old.clone() };
        (old, new)
    };
    cluster_pool_size => |d| {
        let c = Cluster { pool_size: Some(3), ..cluster(d) };
        let c2 = Cluster { pool_size: Some(4), ..c.clone() };
        let old = ServerConfig { cluster: Some(c), ..common::base(d) };
        let new = ServerConfig { cluster: Some(c2), ..old.clone() };
        (old, new)
    };
    cluster_compression => |d| {
        let c = Cluster { compression: Some(Compression::Accept), ..cluster(d) };
        let c2 = Cluster { compression: Some(Compression::S2Fast), ..c.clone() };
        let old = ServerConfig { cluster: Some(c), ..common::base(d) };
        let new = ServerConfig { cluster: Some(c2), ..old.clone() };
        (old, new)
    };
    gateway_remotes => |d| {
        let c = cluster(d);
        let g = Gateway { name: "fra1".into(), listen: Listen::new(common::LOCAL, free_port()), advertise: None, gateways: vec![], include: None, tls: None };
        let g2 = Gateway {
            gateways: vec![RemoteGateway { name: "nyc3".into(), urls: vec![HostPort::from_ip(common::LOCAL, free_port())] }],
            ..g.clone()
        };
        let old = ServerConfig { cluster: Some(c), gateway: Some(g), ..common::base(d) };
        let new = ServerConfig { gateway: Some(g2), ..old.clone() };
        (old, new)
    };
    leafnode_remotes => |d| {
        let l = Leafnodes { listen: Some(Listen::new(common::LOCAL, free_port())), users: vec![], advertise: None, remotes: vec![], include: None, tls: None };
        let l2 = Leafnodes {
            remotes: vec![LeafRemote { urls: vec![HostPort::from_ip(common::LOCAL, free_port())], account: None, credentials: None, tls: None }],
            ..l.clone()
        };
        let old = ServerConfig { leafnodes: Some(l), ..common::base(d) };
        let new = ServerConfig { leafnodes: Some(l2), ..old.clone() };
        (old, new)
    };
    mqtt_listener => |d| {
        let m = Mqtt { listen: Listen::new(common::LOCAL, free_port()), include: None, tls: None };
        let m2 = Mqtt { listen: Listen::new(common::LOCAL, free_port()), include: None, tls: None };
        let old = ServerConfig { jetstream: Some(js(d)), mqtt: Some(m), ..common::base(d) };
        let new = ServerConfig { mqtt: Some(m2), ..old.clone() };
        (old, new)
    };
    websocket_listener => |d| {
        let w = Websocket { listen: Listen::new(common::LOCAL, free_port()), no_tls: true, include: None, tls: None };
        let w2 = Websocket { listen: Listen::new(common::LOCAL, free_port()), ..w.clone() };
        let old = ServerConfig { websocket: Some(w), ..common::base(d) };
        let new = ServerConfig { websocket: Some(w2), ..old.clone() };
        (old, new)
    };
}

/// Rows where natsmesh restarts although the broker would reload, on
/// purpose. The broker's answer is pinned so a change in it is noticed.
#[test]
fn policy_restarts_are_stricter_than_the_broker() {
    for version in natsmesh_harness::OLDEST_AND_CURRENT {
        // A region's cluster name is its identity under JetStream.
        let dir = scratch();
        let c = cluster(dir.path());
        let old = ServerConfig {
            cluster: Some(c.clone()),
            ..common::base(dir.path())
        };
        let new = ServerConfig {
            cluster: Some(Cluster {
                name: "fra2".into(),
                ..c
            }),
            ..old.clone()
        };
        let v = semver(version);
        let d = classify(
            &Snapshot::capture(&render(&old, &v, dir.path()).unwrap()),
            &Snapshot::capture(&render(&new, &v, dir.path()).unwrap()),
        );
        assert_eq!(d.action, Action::Restart);
        assert!(broker_accepts(version, &old, &new, dir.path()), "{version}");
    }
}

#[test]
fn gated_rows_are_skipped_only_where_the_key_is_missing() {
    // cluster_pool_size and cluster_compression render on 2.10+ only.
    assert!(!supports_key(&semver("2.9.10"), "cluster.pool_size"));
    assert!(supports_key(&semver("2.10.26"), "cluster.compression"));
}
