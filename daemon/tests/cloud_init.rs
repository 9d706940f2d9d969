//! cloud-init turns a fresh machine into a serving member from generated
//! user-data alone: Debian 13 with cloud-init and systemd booted in
//! systemd-nspawn with a NoCloud seed holding `natsmeshd user-data`;
//! cloud-init writes the drop-in and the credentials, installs natsmesh
//! from the signed repository, and natsmeshd becomes ready with nothing
//! done by hand. Three droplets on a private LAN, each in its own network
//! namespace with its own metadata service, publish themselves into an
//! empty zone of a real DNS server through the DigitalOcean API, find each
//! other, form one cluster and all join the balancer (the cloud is
//! `common::cloud`). Runs in the nextest `serial` group (root, containers,
//! namespaces).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cloud::{
    Region, nocloud_user_data, repo_and_pki, repository_args, seeded_root, wait_ready,
};

#[test]
fn a_nocloud_machine_becomes_a_ready_member_from_its_user_data_alone() {
    let (repo, pki) = repo_and_pki();
    let user_data = nocloud_user_data(&pki, "node-1", &repository_args());

    let c = seeded_root(&repo, "node-1", &user_data).boot();
    let began = Instant::now();
    wait_ready(&c, Duration::from_secs(60));
    eprintln!("boot → ready in {:?}", began.elapsed());
    // Installed from the repository the user-data named, keyed by it.
    assert!(
        c.ok(&["dpkg-query", "-W", "-f", "${Status}", "natsmesh"])
            .contains("installed")
    );
    // The credentials root-only; the node certificate issued from them.
    assert_eq!(
        c.ok(&[
            "stat",
            "-c",
            "%a %U",
            "/etc/natsmesh/credentials/intermediate.key"
        ])
        .trim(),
        "600 root"
    );
    let screen = c.ok(&["natsmeshd", "status"]);
    assert!(
        screen.contains("node-1 (region fra1)") && screen.contains("serial "),
        "{screen}"
    );

    // The metadata guard: user-data (secrets included) stays readable by
    // root and natsmesh only. A stand-in metadata service on the
    // container's own 169.254.169.254.
    assert_eq!(
        c.unit_property("natsmesh-metadata-guard", "ActiveState"),
        "active"
    );
    c.ok(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]);
    c.ok(&[
        "systemd-run",
        "--unit=natsmesh-test-metadata",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "169.254.169.254",
        "80",
    ]);
    let reach = |user: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = c.exec(&[
                "runuser",
                "-u",
                user,
                "--",
                "timeout",
                "10",
                "bash",
                "-c",
                "exec 3<>/dev/tcp/169.254.169.254/80 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && head -c 12 <&3",
            ]);
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            // root's answer means the stand-in is up; others wait for it.
            if said.starts_with("HTTP/1.0 200") || Instant::now() > deadline || user != "root" {
                return (
                    out.status.success(),
                    said,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (ok, said, err) = reach("root");
    assert!(ok && said.starts_with("HTTP/1.0 200"), "root: {said} {err}");
    let (ok, said, err) = reach("natsmesh");
    assert!(
        ok && said.starts_with("HTTP/1.0 200"),
        "natsmesh: {said} {err}"
    );
    let (ok, said, err) = reach("nobody");
    let rules = c.ok(&["nft", "list", "ruleset"]);
    assert!(
        !ok && said.is_empty(),
        "nobody reached the metadata service: {said} {err}\n{rules}"
    );
    // Refused at once, not left to time out.
    assert!(err.contains("refused"), "{err}\n{rules}");
}

/// The `server_name` in the INFO a NATS server sends first (before TLS) on
/// a connection to `addr`.
fn info_server_name(addr: SocketAddr) -> Option<String> {
    let conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).ok()?;
    let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?.trim()).ok()?;
    info["server_name"].as_str().map(str::to_owned)
}

/// Prints the names of the servers this one has routes to (its /routez).
const ROUTE_PEERS: &str = "import json, urllib.request as u; \
print(' '.join(sorted({r['remote_name'] for r in json.load(u.urlopen('http://127.0.0.1:8222/routez', timeout=5))['routes']})))";

#[test]
fn three_droplets_publish_themselves_find_each_other_and_join_the_balancer() {
    let mut region = Region::new(7, 3, 3);
    let mut machines = Vec::new();
    for h in 1..=3 {
        let root = region.machine(h);
        // Each waits for the others (bootstrap_expect): boot them all first.
        machines.push(root.start_on(&region.network(h)));
    }

    let began = Instant::now();
    let mut statuses = Vec::new();
    for c in &machines {
        statuses.push(wait_ready(c, Duration::from_secs(120)));
    }
    eprintln!(
        "three machines ready in {:?}: {statuses:?}",
        began.elapsed()
    );
    for meta in &region.metadata {
        // Identity from the metadata service, through the guard.
        assert!(
            meta.requests().iter().any(|r| r.contains("/metadata/v1")),
            "{:?}",
            meta.requests()
        );
    }

    // Each published itself into the empty zone; the region's routes are
    // the three of them.
    let routes = region.bind.dig("_nats-route._tcp.fra1.nats.test", "SRV");
    assert_eq!(routes.len(), 3, "{routes:?}\n{:?}", region.dns.records());
    let names: Vec<String> = (1..=3).map(|h| region.server_name(h)).collect();
    for name in &names {
        assert!(
            routes
                .iter()
                .any(|r| r.contains(&format!("{name}.fra1.nats.test."))),
            "{name}: {routes:?}"
        );
    }
    // One cluster: each server routes to the two others (found in DNS, not
    // configured), as the servers' own /routez says.
    for (c, me) in machines.iter().zip(&names) {
        let others: BTreeSet<String> = names.iter().filter(|n| *n != me).cloned().collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let peers = c.ok(&["python3", "-c", ROUTE_PEERS]);
            let peers: BTreeSet<String> = peers.split_whitespace().map(str::to_owned).collect();
            if peers == others {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{me} routes to {peers:?}, not {others:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // All three in the balancer, and the balancer's clients served by them.
    let lb = &region.lb;
    let mut ids: Vec<u64> = region.droplets.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lb.in_service() != ids {
        assert!(
            Instant::now() < deadline,
            "in service {:?} of {ids:?}; registered {:?}",
            lb.in_service(),
            lb.registered()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let served: BTreeSet<String> = (0..9)
        .filter_map(|_| info_server_name(lb.frontend()))
        .collect();
    assert_eq!(
        served,
        names.iter().cloned().collect::<BTreeSet<_>>(),
        "served through the balancer"
    );
    for c in &machines {
        let screen = c.ok(&["natsmeshd", "status"]);
        assert!(screen.contains("balancer  in digitalocean"), "{screen}");
    }
}
