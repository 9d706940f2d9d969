//! Rogue peers against a natsmesh node on every release: a stranger's
//! nats-server dialling its route, gateway and leafnode ports without a
//! certificate, and a compromised node of another region dialling with
//! its own valid certificate, are all refused: the node's `/routez`,
//! `/gatewayz` and `/leafz` never list them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{Daemon, Options};
use natsmesh_harness::{Broker, MATRIX, free_port, scratch};

/// A stranger's nats-server with `block` (its route, gateway or leafnode
/// settings).
fn rogue(version: &str, dir: &Path, name: &str, block: &str) -> Broker {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "server_name: {name}\nlisten: \"127.0.0.1:-1\"\nhttp: \"127.0.0.1:-1\"\nports_file_dir: \"{}\"\n{block}\n",
            dir.display()
        ),
    )
    .unwrap();
    Broker::start(&natsmesh_harness::broker_binary(version), &conf, dir)
}

fn tls_block(pki: &Pki, file: &str) -> String {
    format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\" }}",
        pki.path(&format!("{file}.crt")).display(),
        pki.path(&format!("{file}.key")).display(),
        pki.path("r/root.crt").display()
    )
}

/// A root with fra1's and nyc3's intermediates, a compromised nyc3 node's
/// own valid certificate (`nyc3-node.{crt,key}`), and the `[tls]` table of
/// the fra1 node under attack.
fn two_regions() -> (Pki, String) {
    let pki = Pki::new();
    pki.root("r")
        .intermediate("r", "fra1", "i")
        .intermediate("r", "nyc3", "i");
    pki.mint_with_openssl(
        "i/nyc3",
        "DNS:n1.nyc3.nats.test,DNS:nyc3.nats.test,IP:127.0.0.1",
        "nyc3-node",
    );
    let tls = common::pki::issue_config(
        &pki.path("r/root.crt"),
        &pki.path("i/fra1.crt"),
        &pki.path("i/fra1.key"),
        "1h",
    );
    (pki, tls)
}

#[test]
fn rogue_routes_gateways_and_leafnodes_are_refused_on_every_release() {
    let (pki, tls) = two_regions();
    for v in MATRIX {
        let (route, gateway, leaf) = (free_port(), free_port(), free_port());
        // The hub's one leaf node user, bound to APP.
        let users = pki.path("users.toml");
        std::fs::write(&users, "[accounts.APP]\n").unwrap();
        let out = Command::new(common::NATSMESHD)
            .args([
                "user",
                "add",
                "--leafnode",
                "--account",
                "APP",
                "--name",
                "edge",
                "--file",
            ])
            .arg(&users)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let password = stdout
            .lines()
            .find_map(|l| l.strip_prefix("password: "))
            .unwrap()
            .to_owned();
        let accounts = std::fs::read_to_string(&users).unwrap();
        let mut node = Daemon::start(
            v,
            Options {
                extra: format!(
                    "{accounts}\n[node]\ndomain = \"nats.test\"\n\n[auth]\nmode = \"accounts\"\n\n[broker.cluster]\nenabled = true\nbind = \"127.0.0.1\"\nport = {route}\n\n[broker.gateway]\nenabled = true\nbind = \"127.0.0.1\"\nport = {gateway}\n\n[broker.leafnodes]\nenabled = true\nbind = \"127.0.0.1\"\nport = {leaf}\n\n{tls}"
                ),
                ..Options::default()
            },
        );
        node.wait_ready();
        let dir = scratch();
        let rogues = [
            rogue(
                v,
                dir.path(),
                "plain-route",
                &format!(
                    "cluster {{ name: fra1, listen: \"127.0.0.1:-1\", routes: [\"nats-route://127.0.0.1:{route}\"] }}"
                ),
            ),
            rogue(
                v,
                dir.path(),
                "plain-gateway",
                &format!(
                    "gateway {{ name: evil, listen: \"127.0.0.1:-1\", gateways: [{{ name: fra1, urls: [\"nats://127.0.0.1:{gateway}\"] }}] }}"
                ),
            ),
            rogue(
                v,
                dir.path(),
                "plain-leaf",
                &format!("leafnodes {{ remotes: [{{ url: \"nats://127.0.0.1:{leaf}\" }}] }}"),
            ),
            rogue(
                v,
                dir.path(),
                "nyc3-route",
                &format!(
                    "cluster {{ name: fra1, listen: \"127.0.0.1:-1\", routes: [\"nats-route://127.0.0.1:{route}\"], {} }}",
                    tls_block(&pki, "nyc3-node")
                ),
            ),
            rogue(
                v,
                dir.path(),
                "nyc3-leaf",
                &format!(
                    "leafnodes {{ remotes: [{{ url: \"tls://127.0.0.1:{leaf}\", {} }}] }}",
                    tls_block(&pki, "nyc3-node")
                ),
            ),
        ];
        // The leaf node with the user's credentials links, into APP: the
        // listener serves, and only credentials open it.
        let edge = rogue(
            v,
            dir.path(),
            "edge",
            &format!(
                "leafnodes {{ remotes: [{{ url: \"tls://edge:{password}@127.0.0.1:{leaf}\", tls {{ ca_file: \"{}\" }} }}] }}",
                pki.path("r/root.crt").display()
            ),
        );
        // Each rogue dials at once and again every second: watch a while.
        // A leafnode connection is listed by /leafz from the moment it is
        // accepted, before its TLS handshake and CONNECT are judged, so a
        // connection that is refused shows for up to the TLS and auth
        // timeouts (2 s each); one that stays longer has linked.
        let mut leafs_seen: std::collections::HashMap<u64, Instant> = Default::default();
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            let routes = node.monitor("/routez").unwrap();
            assert_eq!(
                routes["num_routes"], 0,
                "{v}: a rogue route joined: {routes}"
            );
            let gw = node.monitor("/gatewayz").unwrap();
            let inbound = gw["inbound_gateways"].as_object().map_or(0, |m| m.len());
            assert_eq!(inbound, 0, "{v}: a rogue gateway linked: {gw}");
            let leafz = node.monitor("/leafz").unwrap();
            for l in leafz["leafs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| l["account"] != "APP")
            {
                let port = l["port"].as_u64().unwrap();
                let since = *leafs_seen.entry(port).or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_millis(4500),
                    "{v}: a rogue leafnode linked: {leafz}\n{}",
                    node.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let leafz = node.monitor("/leafz").unwrap();
        let linked: Vec<_> = leafz["leafs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["account"] == "APP")
            .collect();
        assert_eq!(
            linked.len(),
            1,
            "{v}: the edge with credentials: {leafz}\n{}",
            edge.log()
        );
        // They did try: each rogue's own log names the node's port it dialled.
        for (r, port) in rogues.iter().zip([route, gateway, leaf, route, leaf]) {
            assert!(
                r.log().contains(&format!(":{port}")),
                "{v}: a rogue never dialled {port}:\n{}",
                r.log()
            );
        }
    }
}

/// A gateway's claimed region is bound to its certificate: a compromised
/// nyc3 node (its own valid certificate, for `nyc3.nats.test`) cannot open
/// a gateway into fra1 under the name "sgp1" — natsmeshd's gate in front
/// of the gateway port closes it after the CONNECT and logs it — while the
/// same node claiming its own region links. nats-server alone accepts the
/// impostor (its `verify_cert_and_check_known_urls` matches any configured
/// gateway's URLs): with the gate turned off it links, which keeps this
/// test honest. On every release.
#[test]
fn a_gateway_that_claims_another_region_is_refused_on_every_release() {
    let (pki, tls) = two_regions();
    for v in MATRIX {
        for gate in [true, false] {
            let gateway = free_port();
            let mut node = Daemon::start(
                v,
                Options {
                    extra: format!(
                        "[node]\ndomain = \"nats.test\"\n\n[broker.gateway]\nenabled = true\nbind = \"127.0.0.1\"\nport = {gateway}\ngate = {gate}\n\n[broker.cluster]\nbind = \"127.0.0.1\"\n\n{tls}"
                    ),
                    ..Options::default()
                },
            );
            node.wait_ready();
            let dir = scratch();
            let claim = |claimed: &str| {
                rogue(
                    v,
                    dir.path(),
                    &format!("nyc3-as-{claimed}"),
                    &format!(
                        "gateway {{ name: {claimed}, listen: \"127.0.0.1:-1\", gateways: [{{ name: fra1, urls: [\"nats://127.0.0.1:{gateway}\"] }}], {} }}",
                        tls_block(&pki, "nyc3-node")
                    ),
                )
            };
            let inbound = |node: &Daemon, name: &str| {
                node.monitor("/gatewayz").unwrap()["inbound_gateways"]
                    .get(name)
                    .is_some()
            };
            let impostor = claim("sgp1");
            let deadline = Instant::now() + Duration::from_secs(if gate { 6 } else { 15 });
            let mut linked = false;
            while Instant::now() < deadline && !linked {
                linked = inbound(&node, "sgp1");
                std::thread::sleep(Duration::from_millis(200));
            }
            if gate {
                assert!(!linked, "{v}: the impostor linked as sgp1\n{}", node.log());
                assert!(
                    node.log()
                        .contains("claimed a region its certificate does not name"),
                    "{v}: {}",
                    node.log()
                );
            } else {
                assert!(
                    linked,
                    "{v}: without the gate nats-server admits the impostor (no longer? then the gate may be unneeded)"
                );
            }
            drop(impostor);
            if gate {
                // The same node under its own region's name passes the gate.
                let _honest = claim("nyc3");
                let deadline = Instant::now() + Duration::from_secs(15);
                while !inbound(&node, "nyc3") {
                    assert!(
                        Instant::now() < deadline,
                        "{v}: nyc3 never linked\n{}",
                        node.log()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}
