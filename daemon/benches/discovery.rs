//! Discovery benchmark: prints a table and writes it to
//! `bench/results/discovery.md`.
//!
//! (a) a new route record → the running region routes to the new server
//!     (TTL 1 s, min_refresh 1 s, max_refresh 5 s: target ≤ 2 s);
//! (b) a fresh node → ready and linked to every region of a 3-region
//!     supercluster found through DNS alone;
//! (c) cross-region request/reply latency through a gateway: natsmeshd
//!     with discovery against bare nats-servers with a hand-written config
//!     of the same topology, in the same run.
//!
//! (b) and (c) need root (a mount namespace per node, DNS on port 53).
//! Knobs: `NATSMESH_BENCH_ROUNDS` (default 10) for (a) and (b),
//! `NATSMESH_BENCH_REQUESTS` (default 2000) for (c).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "stats/mod.rs"]
mod stats;

use stats::{env_num, row};

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mesh::{Mesh, Region, wait_gateways};
use common::{Daemon, Options};
use futures_util::StreamExt as _;
use natsmesh_harness::dns::{Dns, Records};
use natsmesh_harness::{CURRENT, broker_binary, free_port, scratch};

/// Servers this one routes to: `/varz` counts pooled connections (2.10+
/// opens several per peer), so distinct remote ids from `/routez`.
fn route_peers(monitor_port: u16) -> Option<u64> {
    let mut resp = ureq::get(&format!("http://127.0.0.1:{monitor_port}/routez"))
        .config()
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .call()
        .ok()?;
    let v: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()?;
    let peers: std::collections::BTreeSet<&str> = v["routes"]
        .as_array()?
        .iter()
        .filter_map(|r| r["remote_id"].as_str())
        .collect();
    Some(peers.len() as u64)
}

fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 2, n])
}

fn region_records(ns: &[u8], port: u16) -> Records {
    let mut r = Records::default();
    for n in ns {
        let host = format!("n{n}.fra1.nats.test");
        r.srv
            .push(("_nats-route._tcp.fra1.nats.test".into(), host.clone(), port));
        r.hosts.push((host, loopback(*n)));
    }
    r
}

fn quiet(extra: String) -> Options {
    Options {
        extra,
        log_level: Some("warn".into()),
        ..Options::default()
    }
}

/// (a): the time from a record's publication to the first route to it.
fn new_record_to_route(rounds: usize) -> Vec<Duration> {
    let port = free_port();
    let mut dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &region_records(&[1, 2], port));
    let discovering = |n: u8, dns: &Dns| {
        Daemon::start(
            CURRENT,
            quiet(format!(
                "[node]\nname = \"n{n}\"\ndomain = \"nats.test\"\n\n[broker.cluster]\nenabled = true\nbind = \"{}\"\nport = {port}\n\n[discovery]\nenabled = true\nnameservers = [\"{}\"]\nmin_refresh = \"1s\"\nmax_refresh = \"5s\"\n",
                loopback(n),
                dns.addr()
            )),
        )
    };
    let mut a = discovering(1, &dns);
    let mut b = discovering(2, &dns);
    a.wait_status("formed", |s| s.routes == Some(1), Duration::from_secs(30));
    b.wait_status("formed", |s| s.routes == Some(1), Duration::from_secs(30));
    let mut samples = Vec::new();
    for _ in 0..rounds {
        // The newcomer knows nobody: only the others' discovery can link it.
        let mut c = Daemon::start(
            CURRENT,
            quiet(format!(
                "[node]\nname = \"n3\"\n\n[broker.cluster]\nenabled = true\nbind = \"{}\"\nport = {port}\n",
                loopback(3)
            )),
        );
        c.wait_status(
            "newcomer up",
            |s| s.broker_pid.is_some(),
            Duration::from_secs(20),
        );
        let t0 = Instant::now();
        dns.set(&region_records(&[1, 2, 3], port));
        while route_peers(a.monitor_port) != Some(2) && route_peers(b.monitor_port) != Some(2) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no route to the newcomer\n{}\n{}",
                a.log(),
                c.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        samples.push(t0.elapsed());
        drop(c);
        dns.set(&region_records(&[1, 2], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while route_peers(a.monitor_port) != Some(1) || route_peers(b.monitor_port) != Some(1) {
            assert!(Instant::now() < deadline, "the newcomer's routes stayed");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Both drop the record from their configuration too, or the next
        // newcomer (same address) would be dialled from the old list.
        let rendered = |d: &Daemon| {
            std::fs::read_to_string(d.dir.path().join("state/nats-server.conf")).unwrap_or_default()
        };
        while rendered(&a).contains("127.0.2.3") || rendered(&b).contains("127.0.2.3") {
            assert!(
                Instant::now() < deadline,
                "the newcomer stayed in the route list"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    samples
}

const FRA1: Region = Region {
    name: "fra1",
    octet: 11,
    nodes: 2,
};
const NYC3: Region = Region {
    name: "nyc3",
    octet: 12,
    nodes: 2,
};
const SGP1: Region = Region {
    name: "sgp1",
    octet: 13,
    nodes: 2,
};

/// (b): spawn of a fresh fra1 node → READY=1, and → routes to its region
/// and outbound gateways to both other regions.
fn fresh_node_joins(rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut mesh = Mesh::new(&[FRA1, NYC3, SGP1]);
    mesh.log_level = Some("warn".into());
    mesh.refresh = ("1s", "5s");
    for r in [FRA1, NYC3, SGP1] {
        mesh.start(r);
    }
    for (r, others) in [
        (FRA1, [NYC3, SGP1]),
        (NYC3, [FRA1, SGP1]),
        (SGP1, [FRA1, NYC3]),
    ] {
        mesh.wait_joined(r, &others);
    }
    let (mut ready, mut joined) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // A new name and address each round: a JetStream peer is never reused.
        let n = 3 + i as u8;
        let fra1 = Region { nodes: n, ..FRA1 };
        mesh.publish(&[fra1, NYC3, SGP1]);
        let t0 = Instant::now();
        mesh.start_node(fra1, n);
        let name = format!("fra1-n{n}");
        let d = mesh.node(&name);
        let at = d
            .wait_note_after("READY=1", t0, Duration::from_secs(60))
            .expect("READY=1");
        ready.push(at - t0);
        d.wait_status(
            "routes to fra1",
            |s| s.routes == Some(2),
            Duration::from_secs(30),
        );
        wait_gateways(d, &name, &[NYC3, SGP1]);
        joined.push(t0.elapsed());
        drop(mesh.nodes.remove(&name));
    }
    (ready, joined)
}

/// Round trips of `count` requests from `from` to a responder on `at`.
fn round_trips(at: &str, from: &str, count: usize) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let responder = async_nats::connect(at).await.unwrap();
        let mut svc = responder.subscribe("bench.echo").await.unwrap();
        responder.flush().await.unwrap();
        tokio::spawn(async move {
            while let Some(m) = svc.next().await {
                if let Some(reply) = m.reply {
                    let _ = responder.publish(reply, m.payload).await;
                    let _ = responder.flush().await;
                }
            }
        });
        let client = async_nats::connect(from).await.unwrap();
        // Interest crosses the gateway asynchronously: warm up, bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::timeout(
            Duration::from_secs(1),
            client.request("bench.echo", "w".into()),
        )
        .await
        .map_or(true, |r| r.is_err())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no reply across the gateway"
            );
        }
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            tokio::time::timeout(
                Duration::from_secs(5),
                client.request("bench.echo", "x".into()),
            )
            .await
            .expect("reply in time")
            .expect("reply");
            samples.push(t.elapsed());
        }
        samples
    })
}

/// (c), natsmeshd: two single-server regions found through DNS.
fn natsmeshd_latency(count: usize) -> Vec<Duration> {
    let a = Region {
        name: "fra1",
        octet: 11,
        nodes: 1,
    };
    let b = Region {
        name: "nyc3",
        octet: 12,
        nodes: 1,
    };
    let mut mesh = Mesh::new(&[a, b]);
    mesh.log_level = Some("warn".into());
    mesh.start(a);
    mesh.start(b);
    mesh.wait_joined(a, &[b]);
    mesh.wait_joined(b, &[a]);
    for d in mesh.nodes.values_mut() {
        d.wait_ready();
    }
    round_trips(
        &mesh.nodes["fra1-n1"].client_addr(),
        &mesh.nodes["nyc3-n1"].client_addr(),
        count,
    )
}

/// A bare nats-server, killed (and its directory removed) on drop.
struct Bare {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (c), baseline: the same two regions as bare nats-servers with a
/// hand-written config (addresses in the file, JetStream on).
fn bare_latency(count: usize) -> Vec<Duration> {
    let (route, gateway) = (free_port(), free_port());
    let ip = |r: u8| IpAddr::from([127, 0, 21 + r, 1]);
    let regions = ["fra1", "nyc3"];
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for (i, name) in regions.iter().enumerate() {
        let dir = scratch();
        let client = free_port();
        let gateways: Vec<String> = regions
            .iter()
            .enumerate()
            .map(|(j, other)| {
                format!(
                    "{{ name: {other}, urls: [\"nats://{}:{gateway}\"] }}",
                    ip(j as u8)
                )
            })
            .collect();
        let conf = format!(
            "server_name: {name}-n1\nlisten: \"127.0.0.1:{client}\"\njetstream {{ store_dir: \"{store}\", max_memory_store: 67108864, max_file_store: 268435456 }}\ncluster {{ name: {name}, listen: \"{ip}:{route}\", routes: [\"nats-route://{ip}:{route}\"] }}\ngateway {{ name: {name}, listen: \"{ip}:{gateway}\", gateways: [{gw}] }}\n",
            store = dir.path().join("js").display(),
            ip = ip(i as u8),
            gw = gateways.join(", "),
        );
        let path = dir.path().join("nats-server.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(broker_binary(CURRENT))
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        servers.push(Bare { child, _dir: dir });
        clients.push(format!("nats://127.0.0.1:{client}"));
    }
    for c in &clients {
        let addr = c.trim_start_matches("nats://");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "bare nats-server on {addr} never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    round_trips(&clients[0], &clients[1], count)
}

fn main() {
    // Before any work, so the load average is the machine's own.
    let run = natsmesh_harness::provenance::Provenance::for_brokers(&[CURRENT]);
    let rounds = env_num("NATSMESH_BENCH_ROUNDS", 10) as usize;
    let requests = env_num("NATSMESH_BENCH_REQUESTS", 2000) as usize;
    let mut table = run.heading("Discovery benchmark");
    writeln!(
        table,
        "nats-server {CURRENT}, natsmeshd {}, {} on this machine; DNS: dnsmasq on loopback, TTL 1 s.\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
    .unwrap();
    writeln!(
        table,
        "| measurement | p50 ms | p90 ms | p99 ms | max ms | n |\n|---|---|---|---|---|---|"
    )
    .unwrap();

    let a = new_record_to_route(rounds);
    table.push_str(&row(
        "(a) new route record → route to it (min_refresh 1 s; target ≤ 2000)",
        &a,
    ));
    let (ready, joined) = fresh_node_joins(rounds);
    table.push_str(&row("(b) fresh node spawn → READY=1 (3 regions)", &ready));
    table.push_str(&row(
        "(b) fresh node spawn → routes + gateways to both other regions",
        &joined,
    ));
    let ours = natsmeshd_latency(requests);
    let bare = bare_latency(requests);
    table.push_str(&row(
        "(c) cross-region request/reply, natsmeshd + DNS",
        &ours,
    ));
    table.push_str(&row(
        "(c) cross-region request/reply, bare nats-server, hand-written config",
        &bare,
    ));
    print!("{table}");
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/discovery.md");
    std::fs::write(&out, &table).unwrap();
    println!("\nwritten to {}", out.display());
}
