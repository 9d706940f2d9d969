//! Each start-time refusal `validate` predicts is one the real server makes:
//! `nats-server -t` fails, or the file passes it and the server then refuses
//! to start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use natsmesh_broker::model::*;
use natsmesh_broker::validate::validate;
use natsmesh_harness::{
    OLDEST_AND_CURRENT, broker_binary, check, free_port, scratch, semver, start_refused,
};

fn js(dir: &std::path::Path) -> JetStream {
    JetStream {
        store_dir: dir.join("js"),
        max_memory_store: 64 << 20,
        max_file_store: 64 << 20,
        domain: None,
        sync_interval: None,
    }
}

fn cluster(name: &str, routes: Vec<HostPort>) -> Cluster {
    Cluster {
        name: name.into(),
        listen: common::random_port(),
        advertise: None,
        no_advertise: false,
        routes,
        pool_size: None,
        compression: None,
        include: None,
        tls: None,
    }
}

fn gateway(name: &str) -> Gateway {
    Gateway {
        name: name.into(),
        listen: common::random_port(),
        advertise: None,
        gateways: vec![],
        include: None,
        tls: None,
    }
}

type Mutation = fn(&mut ServerConfig, &std::path::Path);

/// (what, expected problem key, first release that refuses it, how to break
/// a valid config). Releases before the third column start with it; natsmesh
/// refuses it anyway, so a node keeps working across an upgrade.
const CASES: &[(&str, &str, &str, Mutation)] = &[
    (
        "lame duck below 30s",
        "lame_duck_duration",
        "2.9.10",
        |c, _| {
            c.lame_duck_duration = Duration::from_secs(20);
            c.lame_duck_grace_period = Duration::from_secs(5);
        },
    ),
    (
        "grace not below duration",
        "lame_duck_grace_period",
        "2.9.10",
        |c, _| {
            c.lame_duck_duration = Duration::from_secs(30);
            c.lame_duck_grace_period = Duration::from_secs(30);
        },
    ),
    (
        "clustered JetStream without server_name",
        "server_name",
        "2.9.10",
        |c, d| {
            c.server_name = String::new();
            c.jetstream = Some(js(d));
            let port = free_port();
            c.cluster = Some(cluster(
                "fra1",
                vec![HostPort::from_ip(common::LOCAL, port)],
            ));
        },
    ),
    (
        "server name with a space",
        "server_name",
        "2.11.0",
        |c, _| {
            c.server_name = "n 1".into();
        },
    ),
    (
        "gateway name differs from cluster name",
        "gateway.name",
        "2.9.10",
        |c, _| {
            let port = free_port();
            c.cluster = Some(cluster(
                "fra1",
                vec![HostPort::from_ip(common::LOCAL, port)],
            ));
            c.gateway = Some(gateway("nyc3"));
        },
    ),
    (
        "JetStream with gateways but no cluster block",
        "cluster",
        "2.9.10",
        |c, d| {
            c.jetstream = Some(js(d));
            c.gateway = Some(gateway("fra1"));
        },
    ),
    ("duplicate route", "cluster.routes", "2.9.10", |c, _| {
        let me = HostPort::from_ip(common::LOCAL, free_port());
        c.cluster = Some(cluster("fra1", vec![me.clone(), me]));
    }),
    ("MQTT without JetStream", "mqtt", "2.9.10", |c, _| {
        c.mqtt = Some(Mqtt {
            listen: common::random_port(),
            include: None,
            tls: None,
        });
    }),
    (
        "websocket without TLS or no_tls",
        "websocket.no_tls",
        "2.9.10",
        |c, _| {
            c.websocket = Some(Websocket {
                listen: common::random_port(),
                no_tls: false,
                include: None,
                tls: None,
            });
        },
    ),
    ("two listeners on one port", "http", "2.9.10", |c, _| {
        let port = free_port();
        c.listen = Listen::new(common::LOCAL, port);
        c.monitoring = Some(Listen::new(common::LOCAL, port));
    }),
];

#[test]
fn validator_refuses_what_the_server_refuses_at_start() {
    for (what, key, refused_from, mutate) in CASES {
        for version in OLDEST_AND_CURRENT {
            let dir = scratch();
            let mut cfg = common::base(dir.path());
            mutate(&mut cfg, dir.path());
            let problems = validate(&cfg);
            assert!(
                problems.iter().any(|p| p.key == *key),
                "{what}: expected a problem on {key}, got {problems:?}"
            );
            let file = dir.path().join("nats-server.conf");
            common::write(&cfg, version, &file);
            let binary = broker_binary(version);
            let (parsed, parse_err) = check(&binary, &file);
            // natsmesh gates on `-t` (which fails on warnings too), then starts.
            let refusal = if parsed {
                start_refused(&binary, &file, Duration::from_secs(3))
            } else {
                None
            };
            let refused = !parsed
                || refusal
                    .as_ref()
                    .is_some_and(|(status, _)| !status.success());
            let should_refuse = semver(version) >= semver(refused_from);
            assert_eq!(
                refused, should_refuse,
                "{what} on {version} (-t said {parsed}: {parse_err}; start: {refusal:?})"
            );
        }
    }
}

#[test]
fn a_single_node_region_with_gateways_starts_with_only_its_own_route() {
    for version in OLDEST_AND_CURRENT {
        let dir = scratch();
        let mut cfg = common::base(dir.path());
        let route = free_port();
        cfg.jetstream = Some(js(dir.path()));
        cfg.cluster = Some(Cluster {
            listen: Listen::new(common::LOCAL, route),
            ..cluster("fra1", vec![HostPort::from_ip(common::LOCAL, route)])
        });
        cfg.gateway = Some(gateway("fra1"));
        assert!(validate(&cfg).is_empty(), "{:?}", validate(&cfg));
        let broker = common::start(&cfg, version, dir.path());
        assert!(
            broker.wait_log("Server is ready", Duration::from_secs(10)),
            "{version}: {}",
            broker.log()
        );
        assert_eq!(broker.varz()["cluster"]["name"], "fra1");
    }
}
