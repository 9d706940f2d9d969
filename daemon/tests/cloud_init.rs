//! cloud-init turns a fresh machine into a serving member from generated
//! user-data alone: Debian 13 with cloud-init and systemd booted in
//! systemd-nspawn with a NoCloud seed holding `natsmeshd user-data`;
//! cloud-init writes the drop-in and the credentials, installs natsmesh
//! from the signed repository, and natsmeshd becomes ready with nothing
//! done by hand. Three droplets on a private LAN, each in its own network
//! namespace with its own metadata service, publish themselves into an
//! empty zone of a real DNS server through the DigitalOcean API, find each
//! other, form one cluster and all join the balancer. Runs in the nextest
//! `serial` group (root, containers, namespaces).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use common::NATSMESHD;
use common::pki::Pki;
use natsmesh_harness::bind::Bind;
use natsmesh_harness::container::{Container, Network, Root};
use natsmesh_harness::fakes::dns_api::{FakeDnsApi, Flavor};
use natsmesh_harness::fakes::do_lb::{DoLb, FakeDoLb};
use natsmesh_harness::fakes::do_metadata::{Droplet, FakeDoMetadata};
use natsmesh_harness::fakes::lb::Model;
use natsmesh_harness::netns::{Lan, Relay};
use natsmesh_harness::packages::{AptRepo, built};

fn natsmeshd(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(NATSMESHD)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "natsmeshd {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_nocloud_machine_becomes_a_ready_member_from_its_user_data_alone() {
    let repo = AptRepo::new(&[built("natsmesh", "deb"), built("natsmesh-broker", "deb")]);
    let pki = Pki::new();
    pki.root("root").intermediate("root", "fra1", "inter");
    std::fs::write(pki.path("key.asc"), repo.armored_key()).unwrap();
    // A region of one, found through a DNS server that is not there yet:
    // discovery keeps the node's own route and goes on asking.
    let user_data = natsmeshd(
        &pki.path(""),
        &[
            "user-data",
            "--provider",
            "nocloud",
            "--name",
            "node-1",
            "--private-address",
            "127.0.0.1",
            "--region",
            "fra1",
            "--domain",
            "nats.test",
            "--apt-url",
            "file:/srv/natsmesh-apt",
            "--apt-key",
            "key.asc",
            "--roots",
            "root/root.crt",
            "--intermediate-cert",
            "inter/fra1.crt",
            "--intermediate-key",
            "inter/fra1.key",
            "--bootstrap-expect",
            "1",
            "--jetstream-memory",
            "64MiB",
            "--jetstream-store",
            "256MiB",
            "--nameserver",
            "127.0.0.1:53",
        ],
    );

    let root = Root::with_cloud_init("trixie");
    repo.publish_into(&root);
    // The machine: a NoCloud seed and nothing else of natsmesh. (The
    // repository's own source list is the test's offline mirror; the
    // user-data brings its own, keyed, as it would on a cloud.)
    std::fs::remove_file(root.inside("/etc/apt/sources.list.d/natsmesh.sources")).unwrap();
    root.write(
        "/var/lib/cloud/seed/nocloud/meta-data",
        "instance-id: node-1\nlocal-hostname: node-1\n",
        0o600,
    );
    root.write("/var/lib/cloud/seed/nocloud/user-data", &user_data, 0o600);
    root.write(
        "/etc/cloud/cloud.cfg.d/90-natsmesh-test.cfg",
        // The minimal image has no ssh: no host keys to make.
        "datasource_list: [ NoCloud, None ]\napt:\n  preserve_sources_list: true\nssh_genkeytypes: []\n",
        0o644,
    );
    let c = root.boot();

    // cloud-init runs on its own; bounded (the exec helper stops at 120 s).
    let began = Instant::now();
    let waited = c.exec(&["cloud-init", "status", "--wait", "--long"]);
    // 0: done without any error or warning (2 would be "degraded").
    let cloud_log = || {
        c.exec(&["tail", "-n", "60", "/var/log/cloud-init-output.log"])
            .stdout
    };
    assert!(
        waited.status.success(),
        "cloud-init: {}\n{}",
        String::from_utf8_lossy(&waited.stdout),
        String::from_utf8_lossy(&cloud_log())
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active = c.unit_property("natsmeshd", "ActiveState");
        let status = c.unit_property("natsmeshd", "StatusText");
        if active == "active" && status.starts_with("ready") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "natsmeshd not ready ({active}: {status}):\n{}\n{}",
            c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager", "-n", "60"]),
            String::from_utf8_lossy(&cloud_log())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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

/// A Debian 13 root with cloud-init holding a NoCloud seed of `user_data`
/// and the test's offline mirror of the natsmesh repository (the
/// user-data brings its own source list, keyed, as it would on a cloud).
fn seeded_root(repo: &AptRepo, instance: &str, user_data: &str) -> Root {
    let root = Root::with_cloud_init("trixie");
    repo.publish_into(&root);
    std::fs::remove_file(root.inside("/etc/apt/sources.list.d/natsmesh.sources")).unwrap();
    root.write(
        "/var/lib/cloud/seed/nocloud/meta-data",
        &format!("instance-id: {instance}\nlocal-hostname: {instance}\n"),
        0o600,
    );
    root.write("/var/lib/cloud/seed/nocloud/user-data", user_data, 0o600);
    root.write(
        "/etc/cloud/cloud.cfg.d/90-natsmesh-test.cfg",
        // The minimal image has no ssh: no host keys to make.
        "datasource_list: [ NoCloud, None ]\napt:\n  preserve_sources_list: true\nssh_genkeytypes: []\n",
        0o644,
    );
    root
}

/// Waits (bounded) for cloud-init to finish without error, then for
/// natsmeshd to say it is ready; returns its status line.
fn wait_ready(c: &Container, limit: Duration) -> String {
    let waited = c.exec(&["cloud-init", "status", "--wait", "--long"]);
    let cloud_log = || {
        c.exec(&["tail", "-n", "60", "/var/log/cloud-init-output.log"])
            .stdout
    };
    // 0: done without any error or warning (2 would be "degraded").
    assert!(
        waited.status.success(),
        "cloud-init: {}\n{}",
        String::from_utf8_lossy(&waited.stdout),
        String::from_utf8_lossy(&cloud_log())
    );
    let deadline = Instant::now() + limit;
    loop {
        let active = c.unit_property("natsmeshd", "ActiveState");
        let status = c.unit_property("natsmeshd", "StatusText");
        if active == "active" && status.starts_with("ready") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "natsmeshd not ready ({active}: {status}):\n{}\n{}",
            c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager", "-n", "80"]),
            String::from_utf8_lossy(&cloud_log())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
    const ZONE: &str = "nats.test";
    const LB_ID: &str = "4de7ac8b-495b-4884-9a69-1050c6793cd6";
    let lan = Lan::new(7, 3);
    let droplets: Vec<(u64, IpAddr)> = (1..=3u8)
        .map(|h| (4_200_000 + u64::from(h), IpAddr::V4(lan.host(h))))
        .collect();

    // The cloud: an empty zone on a real DNS server the machines ask over
    // the LAN, the DigitalOcean API writing into it, a TCP balancer whose
    // health checks and traffic reach the machines over the LAN.
    let bind = Bind::start_on(ZONE, lan.gateway());
    let dns = FakeDnsApi::start(
        Flavor::DigitalOcean,
        ZONE,
        "dns-token-fra1",
        Some(bind.writer()),
    );
    let lb = FakeDoLb::start(
        "lb-token-fra1",
        DoLb::tcp(LB_ID, "fra1", 4222, 8223),
        droplets.clone(),
        Model::default(),
    );
    lb.pool()
        .allow_network(IpAddr::V4(Ipv4Addr::new(10, 251, 7, 0)), 24);
    let addr_of = |url: &str| -> SocketAddr {
        url.trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let dns_at = addr_of(&dns.url());
    let lb_at = addr_of(&lb.api_url());

    let repo = AptRepo::new(&[built("natsmesh", "deb"), built("natsmesh-broker", "deb")]);
    let pki = Pki::new();
    pki.root("root").intermediate("root", "fra1", "inter");
    std::fs::write(pki.path("key.asc"), repo.armored_key()).unwrap();
    std::fs::write(pki.path("dns.token"), "dns-token-fra1\n").unwrap();
    std::fs::write(pki.path("lb.token"), "lb-token-fra1\n").unwrap();
    // One user-data for the whole region, as an operator pastes it: every
    // machine learns who it is from its own metadata service. The APIs are
    // on each machine's loopback (a relay to the fakes), as a local egress
    // proxy would be.
    let user_data = natsmeshd(
        &pki.path(""),
        &[
            "user-data",
            "--provider",
            "digitalocean",
            "--region",
            "fra1",
            "--domain",
            ZONE,
            "--apt-url",
            "file:/srv/natsmesh-apt",
            "--apt-key",
            "key.asc",
            "--roots",
            "root/root.crt",
            "--intermediate-cert",
            "inter/fra1.crt",
            "--intermediate-key",
            "inter/fra1.key",
            "--bootstrap-expect",
            "3",
            "--jetstream-memory",
            "64MiB",
            "--jetstream-store",
            "256MiB",
            "--nameserver",
            &bind.addr().to_string(),
            "--dns",
            "digitalocean",
            "--dns-token",
            "dns.token",
            "--dns-api-url",
            &format!("http://{dns_at}"),
            "--lb-id",
            LB_ID,
            "--lb-token",
            "lb.token",
            "--lb-api-url",
            &format!("http://{lb_at}"),
        ],
    );

    let mut metadata = Vec::new();
    let mut relays = Vec::new();
    let mut machines = Vec::new();
    for (h, (id, addr)) in (1..=3u8).zip(&droplets) {
        let meta = FakeDoMetadata::start(Droplet {
            id: *id,
            hostname: format!("natsmesh-fra1-{h}"),
            region: "fra1".into(),
            private_ipv4: Some(addr.to_string()),
            public_ipv4: None,
            public_ipv6: None,
            tags: vec!["natsmesh".into()],
        });
        lan.add_local(h, "169.254.169.254/32");
        for (listen, target) in [
            (
                SocketAddr::from(([169, 254, 169, 254], 80)),
                addr_of(&meta.url()),
            ),
            (dns_at, dns_at),
            (lb_at, lb_at),
        ] {
            relays.push(Relay::start(lan.netns(h), listen, target));
        }
        metadata.push(meta);
        let root = seeded_root(&repo, &format!("droplet-{id}"), &user_data);
        // Each waits for the others (bootstrap_expect): boot them all first.
        machines.push(root.start_on(&Network::Namespace(lan.netns(h))));
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
    for (c, meta) in machines.iter().zip(&metadata) {
        // Identity from the metadata service, through the guard.
        assert!(
            meta.requests().iter().any(|r| r.contains("/metadata/v1")),
            "{:?}",
            meta.requests()
        );
        eprintln!("{}", c.ok(&["natsmeshd", "status"]));
    }

    // Each published itself into the empty zone; the region's routes are
    // the three of them.
    let routes = bind.dig("_nats-route._tcp.fra1.nats.test", "SRV");
    assert_eq!(routes.len(), 3, "{routes:?}\n{:?}", dns.records());
    let names: BTreeSet<String> = (1..=3u8)
        .map(|h| format!("digitalocean-fra1-{}", 4_200_000 + u64::from(h)))
        .collect();
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
    let mut ids: Vec<u64> = droplets.iter().map(|(id, _)| *id).collect();
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
    assert_eq!(served, names, "served through the balancer");
}
