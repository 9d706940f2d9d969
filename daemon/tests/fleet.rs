//! Fleet lifecycle against a real region of three nats-servers found
//! through a real DNS server (dnsmasq on loopback), with an R3 stream under
//! acknowledged publish load: a change only a restart applies, arriving on
//! every node at once, rolls through the region one node at a time under
//! the region's restart lease; a dead lease holder frees the lease when it
//! expires; pause holds a restart back; coordinated maintenance lets one
//! node of the region go down at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, Options};
use natsmesh::control::Request;
use natsmesh_harness::dns::{Dns, Records};
use natsmesh_harness::{CURRENT, free_port};

const SRV: &str = "_nats-route._tcp.fra1.nats.test";
/// The shortest the lease may last: nats-server's least lame-duck
/// duration (30 s, the harness's) plus ten seconds.
const TTL: &str = "40s";

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 7, n])
}

struct Region {
    dns: Dns,
    /// Every node's route port.
    port: u16,
    nodes: BTreeMap<u8, Daemon>,
    extras: BTreeMap<u8, String>,
    /// Each node's own copies of natsmeshd and nats-server, when asked
    /// for (a package upgrade replaces them).
    bins: Option<tempfile::TempDir>,
}

/// The region's DNS: the route SRV and an address for nodes `1..=count`.
fn records(port: u16, count: u8) -> Records {
    let mut records = Records::default();
    for n in 1..=count {
        let host = format!("n{n}.fra1.nats.test");
        records.srv.push((SRV.into(), host.clone(), port));
        records.hosts.push((host, ip(n)));
    }
    records
}

/// Node `n`'s drop-in.
fn node_extra(n: u8, port: u16, dns: &Dns) -> String {
    format!(
        r#"[node]
name = "n{n}"
domain = "nats.test"

[broker.cluster]
enabled = true
bind = "{ip}"
port = {port}

[discovery]
enabled = true
nameservers = ["{ns}"]
min_refresh = "300ms"
max_refresh = "1s"

[health]
route_wait = "30s"

[auth]
mode = "accounts"
anonymous_account = "APP"

[accounts.APP]
jetstream = true

[fleet]
lease_ttl = "{TTL}"
"#,
        ip = ip(n),
        ns = dns.addr(),
    )
}

impl Region {
    /// `count` nodes, all in DNS from the start, forming one JetStream
    /// group; clients need no credentials on loopback (account APP).
    fn start(count: u8) -> Self {
        Self::start_with(count, false)
    }

    /// With `own_binaries`, every node runs its own copy of natsmeshd and
    /// nats-server (`<bins>/n<n>/`).
    fn start_with(count: u8, own_binaries: bool) -> Self {
        Self::start_full(count, own_binaries, |_| String::new())
    }

    /// With `more(n)` appended to node `n`'s configuration.
    fn start_full(count: u8, own_binaries: bool, more: impl Fn(u8) -> String) -> Self {
        let bins = own_binaries.then(|| {
            let d = tempfile::Builder::new()
                .prefix("natsmesh-bins-")
                .tempdir()
                .unwrap();
            for n in 1..=count {
                let dir = d.path().join(format!("n{n}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(common::NATSMESHD, dir.join("natsmeshd")).unwrap();
                std::fs::copy(
                    natsmesh_harness::broker_binary(CURRENT),
                    dir.join("nats-server"),
                )
                .unwrap();
            }
            d
        });
        let port = free_port();
        let dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &records(port, count));
        let (mut nodes, mut extras) = (BTreeMap::new(), BTreeMap::new());
        for n in 1..=count {
            let extra = node_extra(n, port, &dns) + &more(n);
            let mut opts = options(&extra);
            if let Some(b) = &bins {
                let dir = b.path().join(format!("n{n}"));
                opts.natsmeshd = Some(dir.join("natsmeshd"));
                opts.binary = Some(dir.join("nats-server"));
            }
            nodes.insert(n, Daemon::start(CURRENT, opts));
            extras.insert(n, extra);
        }
        let mut r = Self {
            dns,
            port,
            nodes,
            extras,
            bins,
        };
        for d in r.nodes.values_mut() {
            d.wait_status(
                "routes to the whole region",
                |s| {
                    s.state == "ready"
                        && s.routes == Some(u64::from(count - 1))
                        && s.jetstream == "JetStream current"
                },
                Duration::from_secs(40),
            );
        }
        r
    }

    fn urls(&self) -> String {
        self.nodes
            .values()
            .map(|d| format!("nats://{}", d.client_addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A brand-new machine, node `n` (never started, empty state): put in
    /// DNS beside the others, then started.
    fn add(&mut self, n: u8) {
        self.dns.set(&records(self.port, n));
        let extra = node_extra(n, self.port, &self.dns);
        self.nodes
            .insert(n, Daemon::start(CURRENT, options(&extra)));
        self.extras.insert(n, extra);
    }

    fn sockets(&self) -> Vec<(u8, PathBuf)> {
        self.nodes.iter().map(|(n, d)| (*n, d.socket())).collect()
    }

    /// A change only a restart applies, on node `n`.
    fn change(&self, n: u8) {
        self.nodes[&n].change_needing_restart();
    }

    /// Kills natsmeshd on node `n` (SIGKILL; its broker dies with it) and
    /// starts it again on the same state.
    fn kill_and_restart(&mut self, n: u8) {
        let d = self.nodes.get_mut(&n).unwrap();
        let dir = std::mem::replace(&mut d.dir, natsmesh_harness::scratch());
        // Clients keep the address they were given, as after a reboot.
        let mut opts = options(&self.extras[&n]);
        opts.client_port = Some(d.client_port);
        self.nodes.remove(&n);
        self.nodes.insert(n, Daemon::start_in(dir, CURRENT, opts));
    }

    /// Installs a new file over node `n`'s copy of `name` as a package
    /// manager does: written beside it, renamed over it.
    fn replace_binary(&self, n: u8, name: &str, from: &std::path::Path) {
        let dir = self.bins.as_ref().unwrap().path().join(format!("n{n}"));
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(n, d)| format!("==== n{n}\n{}", d.log()))
            .collect()
    }
}

fn options(extra: &str) -> Options {
    Options {
        extra: extra.to_owned(),
        log_level: Some("info,natsmesh=debug".into()),
        ..Options::default()
    }
}

/// `nats://a,nats://b` as the addresses async-nats takes.
fn addrs(urls: &str) -> Vec<async_nats::ServerAddr> {
    urls.split(',').map(|u| u.parse().unwrap()).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Creates the R3 stream ORDERS in account APP (a young JetStream group
/// may still be electing its meta leader: a bounded retry).
fn create_stream(urls: &str) {
    runtime().block_on(async {
        let client = async_nats::connect(addrs(urls)).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let created = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: "ORDERS".into(),
                    subjects: vec!["orders.>".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => return,
                Err(e) => assert!(Instant::now() < deadline, "create ORDERS: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// Publishes with acknowledgements (each message retried, with the same
/// message id, until acknowledged) until `stop`, at most 60 000 messages
/// or 240 s. Returns the acknowledged sequences and the failed attempts.
fn publisher(urls: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Vec<u64>, u64)> {
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let client = async_nats::ConnectOptions::new()
                .connect(addrs(&urls))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(client);
            let (mut acked, mut failed) = (Vec::new(), 0u64);
            let deadline = Instant::now() + Duration::from_secs(240);
            'messages: for i in 0..60_000u32 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                for _ in 0..200 {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("m{i}").as_str());
                    let sent = tokio::time::timeout(Duration::from_secs(2), async {
                        js.publish_with_headers("orders.new", headers, "x".into())
                            .await?
                            .await
                            .map_err(async_nats::Error::from)
                    })
                    .await;
                    match sent {
                        Ok(Ok(ack)) => {
                            acked.push(ack.sequence);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue 'messages;
                        }
                        _ => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                panic!("message m{i} never acknowledged");
            }
            (acked, failed)
        })
    })
}

/// Every acknowledged message is in the stream, which still has three
/// current replicas.
fn check_stream(urls: &str, acked: &[u64]) {
    runtime().block_on(async {
        let client = async_nats::connect(addrs(urls)).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut stream = js.get_stream("ORDERS").await.unwrap();
            let info = stream.info().await.unwrap();
            let state = &info.state;
            let cluster = info.cluster.clone().unwrap_or_default();
            let current = cluster.replicas.iter().filter(|r| r.current).count();
            if current == 2 || Instant::now() > deadline {
                // No message lost or removed: sequences 1..=last all held.
                assert_eq!(state.first_sequence, 1, "{state:?}");
                assert_eq!(state.messages, state.last_sequence, "{state:?}");
                let max = acked.iter().copied().max().unwrap_or(0);
                assert!(
                    max <= state.last_sequence,
                    "acknowledged {max}, stream {state:?}"
                );
                assert_eq!(
                    current, 2,
                    "leader {:?} with replicas {:?}",
                    cluster.leader, cluster.replicas
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// What [`watch_states`] saw: the most nodes out of service at once,
/// which they were, and each node's broker pids in order.
type Seen = (usize, Vec<String>, BTreeMap<u8, Vec<u32>>);

/// Samples every node's state until `stop`.
fn watch_states(
    sockets: Vec<(u8, PathBuf)>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let rt = runtime();
        let (mut worst, mut when) = (0, Vec::new());
        let mut pids: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let mut down = Vec::new();
            for (n, socket) in &sockets {
                let Ok(reply) = rt.block_on(natsmesh::control::request(socket, &Request::Status))
                else {
                    down.push(format!("n{n}: no answer"));
                    continue;
                };
                let Some(s) = reply.status else { continue };
                if let Some(pid) = s.broker_pid {
                    let seen = pids.entry(*n).or_default();
                    if seen.last() != Some(&pid) {
                        seen.push(pid);
                    }
                }
                if !matches!(s.state.as_str(), "ready" | "syncing") {
                    down.push(format!("n{n}: {}", s.state));
                }
            }
            if down.len() > worst {
                worst = down.len();
                when = down;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        (worst, when, pids)
    })
}

fn wait_all_applied(region: &mut Region, timeout: Duration) {
    for (n, d) in &mut region.nodes {
        d.wait_status(
            &format!("n{n} runs the change and leaves the lease"),
            |s| {
                s.state == "ready"
                    && s.restart_pending.is_empty()
                    && s.fleet.is_empty()
                    && s.restarts >= 1
            },
            timeout,
        );
    }
}

#[test]
fn a_change_on_every_node_rolls_through_the_region_one_node_at_a_time() {
    let mut region = Region::start(3);
    let urls = region.urls();
    create_stream(&urls);
    let stop = Arc::new(AtomicBool::new(false));
    let load = publisher(urls.clone(), stop.clone());
    let watcher = watch_states(region.sockets(), stop.clone());
    std::thread::sleep(Duration::from_secs(2));

    for n in 1..=3 {
        region.change(n);
    }
    wait_all_applied(&mut region, Duration::from_secs(150));
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = load.join().unwrap();
    let (worst, when, pids) = watcher.join().unwrap();
    println!(
        "{} messages acknowledged ({failed} attempts retried); at most {worst} node(s) out at once ({when:?}); broker pids {pids:?}",
        acked.len()
    );
    assert_eq!(worst, 1, "{when:?}\n{}", region.logs());
    for n in 1..=3u8 {
        assert_eq!(pids[&n].len(), 2, "n{n} restarted once: {pids:?}");
        let s = region.nodes.get_mut(&n).unwrap().status().unwrap();
        assert_eq!((s.restarts, s.crashes), (1, 0), "n{n}");
    }
    // The status shows the lease left as the release starts; its log line
    // follows the bucket's answer (and the log pipe), so wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let logs = loop {
        let logs = region.logs();
        if logs.matches("released the region's restart lease").count() >= 3
            || std::time::Instant::now() > deadline
        {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        logs.matches("took the region's restart lease").count(),
        3,
        "{logs}"
    );
    assert_eq!(
        logs.matches("released the region's restart lease").count(),
        3,
        "{logs}"
    );
    assert!(acked.len() > 100, "the load ran: {}", acked.len());
    check_stream(&urls, &acked);
}

#[test]
fn a_dead_lease_holder_frees_the_lease_when_it_expires() {
    let mut region = Region::start(3);
    // n1 takes the lease and is killed (with its broker) while it holds it.
    region.change(1);
    region.nodes.get_mut(&1).unwrap().wait_status(
        "n1 holds the lease",
        |s| s.fleet.contains("holding"),
        Duration::from_secs(30),
    );
    let killed = Instant::now();
    // It comes back at once (its new configuration needs no restart now).
    region.kill_and_restart(1);
    region.nodes.get_mut(&1).unwrap().wait_status(
        "n1 back",
        |s| s.state == "ready" && s.routes == Some(2),
        Duration::from_secs(40),
    );

    region.change(2);
    let d2 = region.nodes.get_mut(&2).unwrap();
    let waiting = d2.wait_status(
        "n2 waits for the lease n1 held",
        |s| s.fleet.contains("held by n1"),
        Duration::from_secs(20),
    );
    println!("n2: {}", waiting.fleet);
    d2.wait_status(
        "n2 restarts once the lease expired",
        |s| s.state == "ready" && s.restarts == 1 && s.fleet.is_empty(),
        Duration::from_secs(90),
    );
    let waited = killed.elapsed();
    // The lease is renewed every ttl/4, so it lasts at least 3/4 of it.
    assert!(
        waited >= Duration::from_secs(30),
        "n2 restarted {waited:?} after n1 died"
    );
}

#[test]
fn a_region_that_cannot_spare_the_node_makes_it_wait_and_say_why() {
    let mut region = Region::start(3);
    // n3 is gone: the region cannot spare another server.
    let d3 = region.nodes.remove(&3).unwrap();
    drop(d3);
    region.change(2);
    let d = region.nodes.get_mut(&2).unwrap();
    let s = d.wait_status(
        "n2 waits for the region",
        |s| s.fleet.contains("2 of 3 servers of the region answered"),
        Duration::from_secs(20),
    );
    assert!(s.line().contains("waiting to restart"), "{}", s.line());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.status().unwrap().restarts, 0, "still waiting");
    // The operator's way out: no coordination for this node.
    std::fs::write(
        d.dir.path().join("natsmesh.d/70-alone.toml"),
        "[fleet]\ncoordinate = false\n",
    )
    .unwrap();
    assert!(d.cli(&["reload"]).status.success());
    d.wait_status(
        "n2 restarts without the lease",
        |s| s.state == "ready" && s.restarts == 1 && s.fleet.is_empty(),
        Duration::from_secs(60),
    );
}

#[test]
fn pause_holds_a_planned_restart_back_until_resume() {
    let mut region = Region::start(3);
    let d = region.nodes.get_mut(&2).unwrap();
    let out = d.cli(&["pause"]);
    assert!(out.status.success(), "{out:?}");
    let pid = d.status().unwrap().broker_pid;
    region.change(2);
    let d = region.nodes.get_mut(&2).unwrap();
    let s = d.wait_status(
        "restart pending, paused",
        |s| s.paused && !s.restart_pending.is_empty(),
        Duration::from_secs(10),
    );
    assert!(s.fleet.starts_with("paused"), "{s:?}");
    std::thread::sleep(Duration::from_secs(3));
    let s = d.status().unwrap();
    assert_eq!((s.broker_pid, s.restarts), (pid, 0), "held back: {s:?}");
    let screen = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(screen.contains("paused"), "{screen}");

    let out = d.cli(&["resume"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_status(
        "restarted after resume",
        |s| !s.paused && s.state == "ready" && s.restarts == 1 && s.fleet.is_empty(),
        Duration::from_secs(60),
    );
}

/// A change only a restart applies on node `d`, different from any
/// before: a smaller `max_file_store` (`mib`; a larger one reloads).
fn change_file_store(d: &Daemon, mib: u32) {
    std::fs::write(
        d.dir.path().join("natsmesh.d/60-change.toml"),
        format!("[broker.jetstream]\nmax_file_store = \"{mib}MiB\"\n"),
    )
    .unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
}

fn ok_cli(d: &Daemon, args: &[&str]) -> String {
    let out = d.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `natsmeshd fleet pause` on one node holds a planned restart back on
/// another (its own `resume` does not lift it), outlives a restart of
/// every natsmeshd and broker, is seen by a node that starts knowing
/// nothing of it (its kept word deleted) and by a brand-new fourth node
/// that joins while it holds (new name, empty state; its planned restart
/// is held back until the resume), and is scoped: another region's pause
/// holds nothing here, this region's does, until `fleet resume`.
#[test]
fn a_fleet_pause_holds_every_node_outlives_restarts_and_is_scoped_by_region() {
    let mut region = Region::start(3);
    let out = ok_cli(
        &region.nodes[&1],
        &["fleet", "pause", "--region", "nyc3", "--why", "not here"],
    );
    assert!(out.contains("region nyc3"), "{out}");
    let out = ok_cli(
        &region.nodes[&1],
        &["fleet", "pause", "--why", "freeze for the audit"],
    );
    assert!(out.contains("every region"), "{out}");
    let holds_all = |s: &natsmesh::supervisor::Status| {
        s.fleet_paused.as_deref().is_some_and(|p| {
            p.contains("fleet pause (all regions) by n1")
                && p.contains("freeze for the audit")
                && !p.contains("nyc3")
        })
    };
    let d3 = region.nodes.get_mut(&3).unwrap();
    d3.wait_status(
        "n3 sees the fleet pause",
        holds_all,
        Duration::from_secs(15),
    );
    let pid = d3.status().unwrap().broker_pid;
    change_file_store(&region.nodes[&3], 200);
    let d3 = region.nodes.get_mut(&3).unwrap();
    let s = d3.wait_status(
        "n3: restart pending, held back by the fleet pause",
        |s| !s.restart_pending.is_empty() && s.fleet.starts_with("paused"),
        Duration::from_secs(10),
    );
    assert!(!s.paused, "not n3's own pause: {s:?}");
    assert!(
        s.line().contains("fleet pause (all regions)"),
        "{}",
        s.line()
    );
    // Its own resume cannot lift the fleet's word.
    let out = ok_cli(d3, &["resume"]);
    assert!(out.contains("still wait"), "{out}");
    std::thread::sleep(Duration::from_secs(3));
    let s = d3.status().unwrap();
    assert_eq!((s.broker_pid, s.restarts), (pid, 0), "held back: {s:?}");
    // Every node's report says which pause holds.
    wait_fleet(
        &region.nodes[&2],
        "n3 reported as fleet-paused",
        Duration::from_secs(12),
        |rows| {
            rows["n3"]["last_report"]["paused"] == true
                && rows["n3"]["last_report"]["fleet_paused"]
                    .as_str()
                    .is_some_and(|p| p.contains("all regions"))
        },
    );

    // Every natsmeshd dies with its broker and starts again; n2 starts
    // without the word it kept, so it learns of the pause from JetStream.
    // Each keeps the word before it shows it, so once every status shows
    // the pause every word is kept (only n3's was awaited above).
    for (n, d) in &mut region.nodes {
        d.wait_status(
            &format!("n{n} sees the fleet pause"),
            holds_all,
            Duration::from_secs(15),
        );
    }
    for n in 1..=3u8 {
        if n == 2 {
            // Nothing changes the pause meanwhile, so nothing writes it
            // again before the kill.
            let cache = region.nodes[&2].dir.path().join("state/fleet-pause.json");
            assert!(cache.exists(), "n2 kept the fleet's word");
            std::fs::remove_file(&cache).unwrap();
        }
        region.kill_and_restart(n);
    }
    for (n, d) in &mut region.nodes {
        d.wait_status(
            &format!("n{n} back with the fleet pause"),
            |s| s.state == "ready" && s.routes == Some(2) && holds_all(s),
            Duration::from_secs(60),
        );
    }
    // n3 came back with its change applied; a new one is held back.
    let d3 = region.nodes.get_mut(&3).unwrap();
    let restarts = d3.status().unwrap().restarts;
    change_file_store(&region.nodes[&3], 150);
    let d3 = region.nodes.get_mut(&3).unwrap();
    d3.wait_status(
        "n3 holds the new change back",
        |s| !s.restart_pending.is_empty() && s.fleet.starts_with("paused"),
        Duration::from_secs(10),
    );

    // A brand-new machine joins while the pause holds: never started
    // before, a name of its own, an empty state directory (so no kept
    // word). It learns the pause from JetStream alone, says so in its
    // report, and holds its own planned restart back.
    region.add(4);
    let d4 = region.nodes.get_mut(&4).unwrap();
    let s = d4.wait_status(
        "n4 joins the region, held by the fleet pause",
        |s| {
            s.state == "ready"
                && s.routes == Some(3)
                && s.jetstream == "JetStream current"
                && holds_all(s)
        },
        Duration::from_secs(60),
    );
    let pid4 = s.broker_pid;
    wait_fleet(
        &region.nodes[&1],
        "n4 reported as fleet-paused",
        Duration::from_secs(12),
        |rows| {
            rows.get("n4").is_some_and(|r| {
                r["last_report"]["paused"] == true
                    && r["last_report"]["fleet_paused"]
                        .as_str()
                        .is_some_and(|p| p.contains("all regions"))
            })
        },
    );
    change_file_store(&region.nodes[&4], 200);
    let d4 = region.nodes.get_mut(&4).unwrap();
    let s = d4.wait_status(
        "n4: restart pending, held back by the fleet pause",
        |s| !s.restart_pending.is_empty() && s.fleet.starts_with("paused"),
        Duration::from_secs(10),
    );
    assert!(!s.paused, "not n4's own pause: {s:?}");
    std::thread::sleep(Duration::from_secs(3));
    let s = d4.status().unwrap();
    assert_eq!((s.broker_pid, s.restarts), (pid4, 0), "held back: {s:?}");

    // This region's own pause holds once the supercluster's is lifted.
    ok_cli(
        &region.nodes[&1],
        &["fleet", "pause", "--region", "fra1", "--why", "region work"],
    );
    let out = ok_cli(&region.nodes[&2], &["fleet", "resume"]);
    assert!(
        out.contains("resumed planned restarts in every region"),
        "{out}"
    );
    let d3 = region.nodes.get_mut(&3).unwrap();
    d3.wait_status(
        "n3 held by the region's pause only",
        |s| {
            s.fleet_paused.as_deref().is_some_and(|p| {
                p.starts_with("fleet pause (region fra1) by n1") && !p.contains("all regions")
            })
        },
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d3.status().unwrap().restarts, restarts, "still held back");

    ok_cli(&region.nodes[&2], &["fleet", "resume", "--region", "fra1"]);
    let d3 = region.nodes.get_mut(&3).unwrap();
    d3.wait_status(
        "n3 restarts once no pause holds",
        |s| {
            s.fleet_paused.is_none()
                && s.state == "ready"
                && s.restarts == restarts + 1
                && s.restart_pending.is_empty()
                && s.fleet.is_empty()
        },
        Duration::from_secs(90),
    );
    // The new node's held change goes too, under the lease after n3's.
    region.nodes.get_mut(&4).unwrap().wait_status(
        "n4 restarts once no pause holds",
        |s| {
            s.fleet_paused.is_none()
                && s.state == "ready"
                && s.restarts == 1
                && s.restart_pending.is_empty()
        },
        Duration::from_secs(120),
    );
    // The other region's pause is still there, and still not ours.
    let out = ok_cli(&region.nodes[&3], &["fleet", "resume", "--region", "nyc3"]);
    assert!(
        out.contains("resumed planned restarts in region nyc3"),
        "{out}"
    );
    let out = ok_cli(&region.nodes[&3], &["fleet", "resume"]);
    assert!(out.contains("was not paused"), "{out}");
}

/// Without the fleet bucket nothing can be paused: said, not guessed.
#[test]
fn fleet_pause_without_a_system_user_says_why() {
    let mut d = Daemon::start(CURRENT, Options::default());
    d.wait_ready();
    let out = d.cli(&["fleet", "pause"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not use"), "{err}");
}

/// `natsmeshd fleet peers --json` on node `d`.
fn meta_peers(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&ok_cli(d, &["fleet", "peers", "--json"])).unwrap()
}

fn peer<'a>(group: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    group["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name))
}

/// A server destroyed for good (natsmeshd and broker killed, state
/// deleted) shows offline in `fleet peers`; `fleet remove-peer` refuses a
/// live server, naming why, and removes the dead one, which `fleet peers`
/// then no longer lists.
#[test]
fn fleet_peers_shows_a_destroyed_server_offline_and_remove_peer_takes_only_it() {
    let mut region = Region::start(3);
    let g = meta_peers(&region.nodes[&1]);
    let leader = g["leader"].as_str().unwrap().to_owned();
    assert!(["n1", "n2", "n3"].contains(&leader.as_str()), "{g:#}");
    assert_eq!(g["peers"].as_array().unwrap().len(), 3, "{g:#}");
    for n in ["n1", "n2", "n3"] {
        let p = peer(&g, n).unwrap();
        assert!(p["state"] == "leader" || p["state"] == "current", "{g:#}");
        assert_eq!(p["answers"], true, "{g:#}");
        assert_eq!(p["region"], "fra1", "{g:#}");
    }
    let text = ok_cli(&region.nodes[&2], &["fleet", "peers"]);
    assert!(
        text.starts_with(&format!("meta leader {leader}, group of 3")),
        "{text}"
    );

    // n3's machine is destroyed: killed with its broker, its state gone.
    let n3 = region.nodes.remove(&3).unwrap();
    let dir = n3.dir.path().to_path_buf();
    drop(n3);
    assert!(!dir.exists());
    let start = Instant::now();
    let g = loop {
        let g = meta_peers(&region.nodes[&1]);
        if peer(&g, "n3").is_some_and(|p| {
            p["state"] == "offline"
                && p["answers"] == false
                && (p["offline"] == true || p["current"] == false)
        }) {
            break g;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "n3 offline: {g:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("n3 offline after {:?}: {g:#}", start.elapsed());
    let text = ok_cli(&region.nodes[&2], &["fleet", "peers"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("n3 ") && l.contains("offline")),
        "{text}"
    );

    // A server that answers is refused, saying why.
    let out = region.nodes[&1].cli(&["fleet", "remove-peer", "n2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("n2 answers"), "{err}");
    let out = region.nodes[&1].cli(&["fleet", "remove-peer", "n9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a peer"));
    assert_eq!(
        meta_peers(&region.nodes[&1])["peers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The dead one goes.
    let out = ok_cli(&region.nodes[&2], &["fleet", "remove-peer", "n3"]);
    assert!(out.contains("removed n3"), "{out}");
    let start = Instant::now();
    loop {
        let g = meta_peers(&region.nodes[&1]);
        if peer(&g, "n3").is_none() && g["peers"].as_array().is_some_and(|p| p.len() == 2) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "n3 gone: {g:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // What is left keeps its quorum: both serve with JetStream current.
    for d in region.nodes.values_mut() {
        d.wait_status(
            "still current",
            |s| s.state == "ready" && s.jetstream == "JetStream current",
            Duration::from_secs(30),
        );
    }
}

/// The stream's leader and replica servers.
fn stream_servers(urls: &str) -> (String, Vec<String>) {
    runtime().block_on(async {
        let client = async_nats::connect(addrs(urls)).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("ORDERS").await.unwrap();
        let cluster = stream.info().await.unwrap().cluster.clone().unwrap();
        let leader = cluster.leader.clone().unwrap_or_default();
        let replicas = cluster.replicas.iter().map(|r| r.name.clone()).collect();
        (leader, replicas)
    })
}

#[test]
fn decommission_re_places_the_replicas_and_leaves_no_ghost() {
    let mut region = Region::start(4);
    let urls = region.urls();
    create_stream(&urls);
    let (leader, replicas) = stream_servers(&urls);
    let stop = Arc::new(AtomicBool::new(false));
    let load = publisher(urls.clone(), stop.clone());
    std::thread::sleep(Duration::from_secs(2));

    // The stream's leader goes: the hardest case.
    let n: u8 = leader.trim_start_matches('n').parse().unwrap();
    let out = region.nodes[&n].cli(&["decommission"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("1 stream") || said.contains("2 streams"),
        "{said}"
    );
    let exited = region
        .nodes
        .get_mut(&n)
        .unwrap()
        .wait_exit(Duration::from_secs(120));
    assert!(exited.success(), "{}", region.logs());
    let gone = region.nodes.remove(&n).unwrap();
    let log = gone.log();
    assert!(log.contains("removed from the JetStream group"), "{log}");

    let rest: Vec<_> = region
        .nodes
        .values()
        .map(|d| format!("nats://{}", d.client_addr()))
        .collect();
    let rest = rest.join(",");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = load.join().unwrap();
    println!(
        "decommissioned {leader} (stream on {leader} + {replicas:?}); {} acknowledged, {failed} retried",
        acked.len()
    );
    check_stream(&rest, &acked);
    let (_, now) = stream_servers(&rest);
    assert!(!now.contains(&leader), "{now:?}");

    // No ghost: the meta leader knows three servers, none offline.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metas: Vec<_> = region
            .nodes
            .values()
            .filter_map(|d| d.monitor("/jsz"))
            .map(|j| j["meta_cluster"].clone())
            .collect();
        let lead = metas
            .iter()
            .find(|m| m["replicas"].as_array().is_some_and(|r| !r.is_empty()));
        if let Some(m) = lead {
            let peers = m["replicas"].as_array().unwrap();
            let clean = peers.len() == 2
                && peers.iter().all(|p| p["offline"].as_bool() != Some(true))
                && peers
                    .iter()
                    .all(|p| p["name"].as_str() != Some(leader.as_str()));
            if clean {
                assert_eq!(m["cluster_size"], 3, "{m}");
                break;
            }
            assert!(Instant::now() < deadline, "meta group {m}");
        }
        assert!(Instant::now() < deadline, "no meta leader: {metas:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // It does not come back with its old state by accident.
    let mut again = Daemon::start_in(gone_dir(gone), CURRENT, options(&region.extras[&n]));
    let status = again.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{}", again.log());
    assert!(again.log().contains("decommissioned"), "{}", again.log());
}

fn gone_dir(mut d: Daemon) -> tempfile::TempDir {
    std::mem::replace(&mut d.dir, natsmesh_harness::scratch())
}

#[test]
fn a_decommission_that_would_break_replication_is_refused() {
    let mut region = Region::start(3);
    create_stream(&region.urls());
    let out = region.nodes[&2].cli(&["decommission"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains(
            "stream ORDERS (account APP) has 3 replicas, and only 2 other JetStream servers would be left in the region"
        ),
        "{err}"
    );
    let s = region.nodes.get_mut(&2).unwrap().status().unwrap();
    assert_eq!((s.state.as_str(), s.restarts), ("ready", 0), "{s:?}");
}

#[test]
fn upgrades_a_new_natsmeshd_keeps_the_brokers_and_a_new_broker_rolls() {
    let mut region = Region::start_with(3, true);
    let urls = region.urls();
    create_stream(&urls);
    let stop = Arc::new(AtomicBool::new(false));
    let load = publisher(urls.clone(), stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let before: BTreeMap<u8, (u32, Option<u32>)> = region
        .nodes
        .iter_mut()
        .map(|(n, d)| (*n, (d.pid(), d.status().unwrap().broker_pid)))
        .collect();

    // A natsmesh package upgrade on every node at once.
    for n in 1..=3 {
        region.replace_binary(n, "natsmeshd", std::path::Path::new(common::NATSMESHD));
    }
    for (n, d) in &mut region.nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.log().contains("took over the running nats-server") {
            assert!(
                Instant::now() < deadline,
                "n{n} never took over:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let s = d.wait_ready();
        let (pid, broker) = before[n];
        assert_eq!(d.pid(), pid, "n{n}: same process (exec)");
        assert_eq!(s.broker_pid, broker, "n{n}: the broker kept running");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            !exe.to_string_lossy().ends_with("(deleted)"),
            "n{n} runs the new file: {exe:?}"
        );
    }
    let logs = region.logs();
    assert_eq!(logs.matches("re-executing natsmeshd").count(), 3, "{logs}");

    // A new nats-server on every node at once: one restart each, one node
    // at a time.
    let watcher = watch_states(region.sockets(), stop.clone());
    let broker = natsmesh_harness::broker_binary(CURRENT);
    for n in 1..=3 {
        region.replace_binary(n, "nats-server", &broker);
    }
    wait_all_applied(&mut region, Duration::from_secs(150));
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = load.join().unwrap();
    let (worst, when, pids) = watcher.join().unwrap();
    println!(
        "{} acknowledged ({failed} retried); at most {worst} node(s) out at once ({when:?}); broker pids {pids:?}",
        acked.len()
    );
    assert_eq!(worst, 1, "{when:?}\n{}", region.logs());
    for (n, d) in &mut region.nodes {
        let s = d.status().unwrap();
        assert_ne!(
            s.broker_pid, before[n].1,
            "n{n}: restarted for the new broker"
        );
        assert_eq!(s.restarts, 1, "n{n}");
    }
    check_stream(&urls, &acked);

    // The broker still dies with the natsmeshd that re-executed itself.
    let d1 = region.nodes.get_mut(&1).unwrap();
    let broker_pid = d1.status().unwrap().broker_pid.unwrap();
    common::signal(d1.pid(), "KILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::alive(broker_pid) {
        assert!(Instant::now() < deadline, "the broker outlived natsmeshd");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_new_natsmeshd_that_refuses_the_configuration_is_not_taken() {
    let bins = tempfile::Builder::new()
        .prefix("natsmesh-bins-")
        .tempdir()
        .unwrap();
    let exe = bins.path().join("natsmeshd");
    std::fs::copy(common::NATSMESHD, &exe).unwrap();
    let mut d = Daemon::start(
        CURRENT,
        Options {
            natsmeshd: Some(exe.clone()),
            ..options("")
        },
    );
    let before = d.wait_ready();
    // A "new release" that refuses this configuration.
    let staged = bins.path().join(".natsmeshd.new");
    std::fs::write(
        &staged,
        "#!/bin/sh\necho 'natsmesh.toml: broker.frobnicate: unknown key' >&2\nexit 2\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &exe).unwrap();
    let s = d.wait_status(
        "the refusal reported",
        |s| {
            s.warnings
                .iter()
                .any(|w| w.contains("new natsmeshd not taken"))
        },
        Duration::from_secs(20),
    );
    let warning = s.warnings.join("\n");
    assert!(
        warning.contains("broker.frobnicate: unknown key"),
        "{warning}"
    );
    assert_eq!(s.broker_pid, before.broker_pid, "the broker keeps running");
    assert_eq!(s.state, "ready");
    assert!(!d.log().contains("re-executing natsmeshd"), "{}", d.log());
}

/// A standalone nats-server with JetStream on, for the lease functions
/// alone (its directory lives as long as the returned guard).
fn jetstream_broker() -> (tempfile::TempDir, natsmesh_harness::Broker) {
    let dir = natsmesh_harness::scratch();
    let conf = dir.path().join("js.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\njetstream {{ store_dir: \"{}\" }}\nports_file_dir: \"{}\"\n",
            dir.path().join("js").display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let broker = natsmesh_harness::Broker::start(
        &natsmesh_harness::broker_binary(CURRENT),
        &conf,
        dir.path(),
    );
    (dir, broker)
}

/// A renewal whose answer was lost (a timeout on our side) still moved the
/// lease's revision on; giving the lease back must still work, or every
/// other node waits until it expires (found by the rolling-upgrade drill).
#[test]
fn a_lease_renewed_unseen_is_still_given_back() {
    use natsmesh::fleet::lease;
    let (_dir, broker) = jetstream_broker();
    runtime().block_on(async {
        let client = async_nats::connect(broker.url("nats")).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let store = lease::bucket(
            &js,
            lease::SUPERCLUSTER_BUCKET,
            "",
            Duration::from_secs(60),
            1,
        )
        .await
        .unwrap();
        let me = lease::Holder::new("n1", "nonce-1", "a test");
        let lease::Take::Taken(revision) = lease::take(&store, &me).await.unwrap() else {
            panic!("not taken");
        };
        // The renewal that landed while we heard nothing.
        let landed = lease::renew(&store, &me, revision).await.unwrap();
        assert!(landed > revision);
        // Released with the revision we last knew.
        lease::release(&store, &me, revision).await.unwrap();
        assert!(lease::holder(&store).await.unwrap().is_none());

        // Someone else's lease is never given back for them.
        let other = lease::Holder::new("n2", "nonce-2", "a test");
        let lease::Take::Taken(theirs) = lease::take(&store, &other).await.unwrap() else {
            panic!("not taken");
        };
        assert!(lease::release(&store, &me, theirs - 1).await.is_err());
        assert_eq!(lease::holder(&store).await.unwrap().unwrap().server, "n2");
    });
}

/// Another region's restart lease as a node checks it before (and just
/// after) taking its own: read from each bucket's stream leader, nobody
/// where no bucket was made, the holder's name when a peer holds it, and
/// an unreadable record never read as "nobody".
#[test]
fn another_regions_lease_is_read_at_its_leader_and_never_guessed() {
    use natsmesh::fleet::{self, NotYet, lease};
    let (_dir, broker) = jetstream_broker();
    runtime().block_on(async {
        let client = async_nats::connect(broker.url("nats")).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let elsewhere: BTreeMap<String, String> = [("a1", "nyc3"), ("s2", "sgp1")]
            .into_iter()
            .map(|(p, r)| (p.to_owned(), r.to_owned()))
            .collect();
        let nobody: BTreeMap<String, Option<String>> =
            [("nyc3".to_owned(), None), ("sgp1".to_owned(), None)].into();
        // No bucket in either region: nobody there ever restarted.
        assert_eq!(fleet::holders_of(&js, &elsewhere).await.unwrap(), nobody);

        let nyc3 = lease::bucket(
            &js,
            &lease::bucket_name("nyc3"),
            "",
            Duration::from_secs(60),
            1,
        )
        .await
        .unwrap();
        let a1 = lease::Holder::new("a1", "nonce-a1", "an upgrade");
        let lease::Take::Taken(revision) = lease::take(&nyc3, &a1).await.unwrap() else {
            panic!("not taken");
        };
        let held = fleet::holders_of(&js, &elsewhere).await.unwrap();
        assert_eq!(held.get("nyc3"), Some(&Some("a1".to_owned())));
        assert_eq!(
            fleet::peer_restarting(&elsewhere, &held),
            Some(("a1".to_owned(), "nyc3".to_owned()))
        );
        lease::release(&nyc3, &a1, revision).await.unwrap();
        assert_eq!(fleet::holders_of(&js, &elsewhere).await.unwrap(), nobody);

        // A record nobody can read is someone's lease, not nobody's.
        nyc3.put("holder", "not json".into()).await.unwrap();
        match fleet::holders_of(&js, &elsewhere).await {
            Err(NotYet::PeerLease { region, source }) => {
                assert_eq!(region, "nyc3");
                assert!(
                    matches!(source, lease::LeaseError::Unreadable(_)),
                    "{source}"
                );
            }
            other => panic!("an unreadable record was read as {other:?}"),
        }
        nyc3.purge("holder").await.unwrap();
        assert_eq!(fleet::holders_of(&js, &elsewhere).await.unwrap(), nobody);
    });
}

/// Who is out on purpose, as the restart lease reads it: nobody while the
/// fleet bucket was never made, the node whose lease is live, and an
/// error — never "nobody" — when the leases cannot be read, so a planned
/// restart waits rather than going beside a node in maintenance.
#[test]
fn the_restart_lease_never_reads_unreadable_maintenance_leases_as_nobody() {
    use natsmesh::fleet::maintenance::{self, Kind, Leases, MaintenanceError, Record};
    let (_dir, broker) = jetstream_broker();
    runtime().block_on(async {
        let client = async_nats::connect(broker.url("nats")).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let a1 = "a1".to_owned();
        assert_eq!(maintenance::out_among(&js, [&a1]).await.unwrap(), None);

        let store = js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: natsmesh::fleet::pause::BUCKET.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let now = natsmesh::unix_ms(std::time::SystemTime::now());
        let leases = Leases {
            nodes: [(
                a1.clone(),
                Record {
                    region: "nyc3".into(),
                    kind: Kind::Maintenance,
                    why: "kernel".into(),
                    since_unix_ms: now,
                    expires_unix_ms: now + 60_000,
                },
            )]
            .into(),
        };
        store
            .put(
                maintenance::KEY,
                serde_json::to_vec(&leases).unwrap().into(),
            )
            .await
            .unwrap();
        assert_eq!(
            maintenance::out_among(&js, [&a1]).await.unwrap().as_deref(),
            Some("a1 (region nyc3, maintenance)")
        );
        let b2 = "b2".to_owned();
        assert_eq!(maintenance::out_among(&js, [&b2]).await.unwrap(), None);

        store
            .put(maintenance::KEY, "not json".into())
            .await
            .unwrap();
        match maintenance::out_among(&js, [&b2]).await {
            Err(MaintenanceError::Unreadable { .. }) => {}
            other => panic!("unreadable leases were read as {other:?}"),
        }
    });
}

/// `natsmeshd fleet status --json` on node `d`: the rows by server name.
fn fleet_rows(d: &Daemon, region: Option<&str>) -> BTreeMap<String, serde_json::Value> {
    let mut args = vec!["fleet", "status", "--json"];
    if let Some(r) = region {
        args.extend(["--region", r]);
    }
    let out = d.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter()
        .map(|r| (r["server_name"].as_str().unwrap().to_owned(), r))
        .collect()
}

fn wait_fleet(
    d: &Daemon,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&BTreeMap<String, serde_json::Value>) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let rows = fleet_rows(d, None);
        if ok(&rows) {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "{what}: {rows:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Any node sees every node of the supercluster over NATS (each reports
/// in the system account every 5 s): a node killed outright shows as
/// `missing` within two report intervals, one stopped as `stopped`, and
/// the JSON carries the documented fields.
#[test]
fn fleet_status_sees_every_node_and_tells_a_lost_node_from_a_stopped_one() {
    let mut region = Region::start(3);
    let names = ["n1", "n2", "n3"];
    for n in 1..=3u8 {
        wait_fleet(
            &region.nodes[&n],
            "every node ready, seen from each",
            Duration::from_secs(15),
            |rows| {
                rows.len() == 3
                    && names
                        .iter()
                        .all(|s| rows.get(*s).is_some_and(|r| r["state"] == "ready"))
            },
        );
    }
    let rows = fleet_rows(&region.nodes[&1], None);
    let n2 = &rows["n2"];
    for field in ["server_name", "region", "state", "last_seen_unix_ms"] {
        assert!(!n2[field].is_null(), "{field}: {n2}");
    }
    assert_eq!(n2["region"], "fra1");
    let report = &n2["last_report"];
    assert_eq!(report["schema"], 1);
    assert_eq!(report["broker_version"], CURRENT);
    assert!(
        report["natsmesh_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    assert_eq!(report["paused"], false);
    assert_eq!(fleet_rows(&region.nodes[&1], Some("fra1")).len(), 3);
    assert!(fleet_rows(&region.nodes[&1], Some("nyc3")).is_empty());
    let text = region.nodes[&1].cli(&["fleet", "status"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("n3 ") && l.contains("fra1") && l.contains("ready")),
        "{text}"
    );

    // A pause shows.
    assert!(region.nodes[&2].cli(&["pause"]).status.success());
    wait_fleet(
        &region.nodes[&1],
        "n2 paused",
        Duration::from_secs(12),
        |rows| rows["n2"]["last_report"]["paused"] == true,
    );

    // n3's machine is gone at once: natsmeshd and its broker killed.
    let mut n3 = region.nodes.remove(&3).unwrap();
    let broker = n3.status().and_then(|s| s.broker_pid);
    n3.signal("KILL");
    n3.wait_exit(Duration::from_secs(10));
    if let Some(pid) = broker {
        common::signal(pid, "KILL");
    }
    let took = wait_fleet(
        &region.nodes[&1],
        "n3 missing",
        Duration::from_secs(20),
        |rows| rows["n3"]["state"] == "missing",
    );
    // Its last report is at most one interval old when it dies, and it is
    // missing once two intervals have passed since (plus a poll).
    assert!(took <= Duration::from_secs(11), "missing after {took:?}");

    // n2 stops as a node does: stopped, never missing.
    let mut n2 = region.nodes.remove(&2).unwrap();
    n2.signal("TERM");
    assert!(
        n2.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        n2.log()
    );
    wait_fleet(
        &region.nodes[&1],
        "n2 stopped",
        Duration::from_secs(20),
        |rows| rows["n2"]["state"] == "stopped",
    );
    std::thread::sleep(Duration::from_secs(3));
    let rows = fleet_rows(&region.nodes[&1], None);
    assert_eq!(rows["n2"]["state"], "stopped");
    assert_eq!(rows["n3"]["state"], "missing");
    assert_eq!(rows["n1"]["state"], "ready");
}

/// Without natsmeshd's system user nothing can be heard: said, not guessed.
#[test]
fn fleet_status_without_a_system_user_says_why() {
    let mut d = Daemon::start(CURRENT, Options::default());
    d.wait_ready();
    let out = d.cli(&["fleet", "status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("system user"), "{err}");
}

/// `natsmeshd <args>` on node `d`, not waited for.
fn spawn_cli(d: &Daemon, args: &[&str]) -> std::process::Child {
    std::process::Command::new(common::NATSMESHD)
        .args(args)
        .arg("--socket")
        .arg(d.socket())
        .arg("--config")
        .arg(d.config_path())
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Two operators at once on two nodes of a three-node region (R3 stream
/// ORDERS): one gets "safe to reboot", the other is refused naming the
/// majority rule, and with `--wait` waits — through a natsmeshd restart of
/// the node in maintenance, which keeps its broker down and its lease —
/// until the first node's `maintenance stop` has it serving with
/// JetStream current; a drain on the third node meanwhile is refused by
/// the same rule.
#[test]
fn maintenance_on_two_nodes_at_once_lets_one_go_and_the_other_wait() {
    let mut region = Region::start(3);
    create_stream(&region.urls());

    // Both at once: exactly one wins the compare-and-set.
    let a = spawn_cli(
        &region.nodes[&1],
        &["maintenance", "start", "--reason", "kernel"],
    );
    let b = spawn_cli(
        &region.nodes[&2],
        &["maintenance", "start", "--reason", "kernel"],
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ((first, won), (second, lost)) = match (a.status.success(), b.status.success()) {
        (true, false) => ((1u8, a), (2u8, b)),
        (false, true) => ((2, b), (1, a)),
        _ => panic!(
            "exactly one may go out: n1: {} n2: {}\n{}",
            text(&a),
            text(&b),
            region.logs()
        ),
    };
    assert!(text(&won).contains("safe to reboot"), "{}", text(&won));
    let refusal = text(&lost);
    assert!(
        refusal.contains("refused by the majority rule")
            && refusal.contains("the JetStream meta group")
            && refusal.contains(&format!("n{first} (maintenance)")),
        "{refusal}"
    );
    let s = region.nodes.get_mut(&first).unwrap().status().unwrap();
    assert_eq!((s.state.as_str(), s.broker_pid), ("stopped", None), "{s:?}");
    assert!(
        s.maintenance.as_deref().unwrap().contains("kernel"),
        "{s:?}"
    );
    let screen = text(&region.nodes[&first].cli(&["status"]));
    assert!(
        screen.contains("maintenance") && screen.contains("safe to reboot"),
        "{screen}"
    );

    // The second operator waits.
    let started = Instant::now();
    let mut waiting = spawn_cli(
        &region.nodes[&second],
        &["maintenance", "start", "--wait", "--reason", "kernel"],
    );
    // A third operator waits too, and gives up (Ctrl-C): their node must
    // not go down later with nobody watching.
    let mut given_up = spawn_cli(&region.nodes[&3], &["maintenance", "start", "--wait"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(given_up.try_wait().unwrap().is_none(), "n3 waits");
    given_up.kill().unwrap();
    given_up.wait().unwrap();
    common::fleet::wait_for("n3 gives up", Duration::from_secs(10), || {
        region.nodes[&3]
            .log()
            .contains("maintenance start given up")
    });
    // The third node may not drain either.
    let out = region.nodes[&3].cli(&["drain"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("refused by the majority rule"),
        "{}",
        text(&out)
    );

    // natsmeshd restarts on the node in maintenance (same boot): the
    // broker stays down and the lease holds.
    region.kill_and_restart(first);
    let d = region.nodes.get_mut(&first).unwrap();
    let s = d.wait_status(
        "natsmeshd back, still in maintenance",
        |s| s.state == "stopped" && s.maintenance.is_some(),
        Duration::from_secs(20),
    );
    assert_eq!(s.broker_pid, None, "{s:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "n{second} went out while n{first} was in maintenance"
    );
    assert_eq!(
        region
            .nodes
            .get_mut(&first)
            .unwrap()
            .status()
            .unwrap()
            .broker_pid,
        None
    );

    // The first node comes back; then the second goes.
    // The lease goes back at once, or (the fleet bucket slow to answer a
    // node that just came back, as on a loaded machine) in the background;
    // either way the second operator's wait below ends only once it has.
    let back = ok_cli(&region.nodes[&first], &["maintenance", "stop"]);
    assert!(
        back.contains("maintenance lease released")
            || back.contains("the lease is given back in the background"),
        "{back}"
    );
    let stopped_at = Instant::now();
    let d = region.nodes.get_mut(&first).unwrap();
    let s = d.status().unwrap();
    assert!(
        s.state == "ready" && s.jetstream == "JetStream current" && s.maintenance.is_none(),
        "{s:?}"
    );
    common::fleet::wait_for(
        "the second operator's start ends",
        Duration::from_secs(120),
        || waiting.try_wait().unwrap().is_some(),
    );
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), region.logs());
    assert!(text(&out).contains("safe to reboot"), "{}", text(&out));
    println!(
        "n{second} waited {:?}, {:?} after n{first} came back",
        started.elapsed(),
        stopped_at.elapsed()
    );
    let s = region.nodes.get_mut(&second).unwrap().status().unwrap();
    assert_eq!((s.state.as_str(), s.broker_pid), ("stopped", None), "{s:?}");
    let s = region.nodes.get_mut(&3).unwrap().status().unwrap();
    assert!(
        s.state == "ready" && s.maintenance.is_none(),
        "n3 gave up: {s:?}"
    );

    // And it comes back serving too.
    ok_cli(&region.nodes[&second], &["maintenance", "stop"]);
    region.nodes.get_mut(&second).unwrap().wait_status(
        "n2 serving again",
        |s| s.state == "ready" && s.routes == Some(2) && s.maintenance.is_none(),
        Duration::from_secs(30),
    );
}

/// The reboot ends maintenance by itself: a natsmeshd that starts in
/// another boot than the one its maintenance began in (the marker's boot
/// rewritten, as a reboot would leave it) serves, and gives its lease back
/// once JetStream is current — another node may then go out at once.
#[test]
fn the_next_boot_brings_a_node_in_maintenance_back_and_releases_its_lease() {
    let mut region = Region::start(3);
    let out = ok_cli(&region.nodes[&1], &["maintenance", "start"]);
    assert!(out.contains("safe to reboot"), "{out}");
    let refused = region.nodes[&2].cli(&["maintenance", "start"]);
    assert!(!refused.status.success(), "{}", text(&refused));

    // "Reboot" n1: natsmeshd stops (its broker is down already), and the
    // boot the marker names is no longer this one.
    let marker = region.nodes[&1].dir.path().join("state/maintenance.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).expect("the marker is kept")).unwrap();
    m["boot_id"] = "an-earlier-boot".into();
    std::fs::write(&marker, serde_json::to_vec(&m).unwrap()).unwrap();
    region.kill_and_restart(1);
    let d = region.nodes.get_mut(&1).unwrap();
    d.wait_status(
        "n1 serving after the reboot",
        |s| s.state == "ready" && s.jetstream == "JetStream current" && s.maintenance.is_none(),
        Duration::from_secs(60),
    );
    assert!(!marker.exists(), "the marker is gone after the reboot");
    // Its lease goes back by itself: n2 may go out without waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = region.nodes[&2].cli(&["maintenance", "start"]);
        if out.status.success() {
            assert!(text(&out).contains("safe to reboot"), "{}", text(&out));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1's lease was not given back: {}\n{}",
            text(&out),
            region.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    ok_cli(&region.nodes[&2], &["maintenance", "stop"]);
}

/// OS updates on a whole region at once: `/run/reboot-required` (each
/// node's own test path) appears on all three nodes of a region under
/// acknowledged publish load to an R3 stream; they reboot one at a time
/// (never two out of service at once, sampled), each through its
/// maintenance lease, each running its reboot command once (a script that
/// records the call; the test then stands in for the reboot: the file
/// gone with /run, natsmeshd started again in a new boot), and no
/// acknowledged message is lost.
#[test]
fn a_reboot_required_on_every_node_reboots_them_one_at_a_time_under_load() {
    let scratch = tempfile::Builder::new()
        .prefix("natsmesh-reboot-")
        .tempdir()
        .unwrap();
    let calls = scratch.path().join("calls");
    let script = scratch.path().join("reboot.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"$1\" >> \"$2\"\n").unwrap();
    let required = |n: u8| scratch.path().join(format!("n{n}-reboot-required"));
    let mut region = Region::start_full(3, false, |n| {
        format!(
            r#"
[maintenance]
max_down = "3m"
reboot = "coordinated"
window = "00:00-24:00 UTC"
reboot_command = ["/bin/sh", "{script}", "n{n}", "{calls}"]
reboot_required = "{required}"
"#,
            script = script.display(),
            calls = calls.display(),
            required = required(n).display(),
        )
    });
    create_stream(&region.urls());
    let stop = Arc::new(AtomicBool::new(false));
    let load = publisher(region.urls(), stop.clone());
    let states = watch_states(region.sockets(), stop.clone());
    std::thread::sleep(Duration::from_secs(2));

    for n in 1..=3 {
        std::fs::write(required(n), "*** System restart required ***\n").unwrap();
    }
    let mut rebooted: Vec<String> = Vec::new();
    let mut said = std::collections::BTreeSet::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(170);
    while rebooted.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "rebooted {rebooted:?} only; said {said:#?}\n{}",
            region.logs()
        );
        for d in region.nodes.values_mut() {
            if let Some(line) = d.status().and_then(|s| s.reboot)
                && said.insert(line.clone())
            {
                println!("{:?} said: {line}", started.elapsed());
            }
        }
        let called: Vec<String> = std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(
            called.len() <= rebooted.len() + 1,
            "two nodes asked to reboot at once: {called:?}"
        );
        if let Some(name) = called.get(rebooted.len()) {
            let n: u8 = name.trim_start_matches('n').parse().unwrap();
            // The broker is down before the command runs.
            let s = region.nodes.get_mut(&n).unwrap().status().unwrap();
            assert_eq!((s.state.as_str(), s.broker_pid), ("stopped", None), "{s:?}");
            assert!(s.maintenance.is_some(), "{s:?}");
            // The reboot: /run is emptied, a new boot starts natsmeshd.
            std::fs::remove_file(required(n)).unwrap();
            let marker = region.nodes[&n].dir.path().join("state/maintenance.json");
            let mut m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&marker).expect("the marker is kept"))
                    .unwrap();
            assert_eq!(m["reboot"], true, "{m}");
            m["boot_id"] = "an-earlier-boot".into();
            std::fs::write(&marker, serde_json::to_vec(&m).unwrap()).unwrap();
            region.kill_and_restart(n);
            println!("{:?} rebooted {name}", started.elapsed());
            rebooted.push(name.clone());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for (n, d) in &mut region.nodes {
        d.wait_status(
            &format!("n{n} back after its reboot"),
            |s| {
                s.state == "ready"
                    && s.jetstream == "JetStream current"
                    && s.maintenance.is_none()
                    && s.reboot.is_none()
            },
            Duration::from_secs(60),
        );
        println!("{:?} n{n} back", started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = load.join().unwrap();
    println!("{:?} load stopped", started.elapsed());
    let (worst, when, _) = states.join().unwrap();
    println!(
        "rebooted {rebooted:?}; {} acknowledged, {failed} failed attempts; said {said:#?}",
        acked.len()
    );
    let mut each = rebooted.clone();
    each.sort();
    assert_eq!(each, ["n1", "n2", "n3"], "each once");
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap().lines().count(),
        3,
        "one reboot command per node"
    );
    assert_eq!(worst, 1, "at most one node out at once: {when:?}");
    assert!(
        said.iter()
            .any(|l| l.contains("waiting for its turn") && l.contains("is in maintenance")),
        "the others said why they waited: {said:#?}"
    );
    assert!(!acked.is_empty());
    check_stream(&region.urls(), &acked);
}

/// Where the majority rule's "wherever it is" comes from: nats-server
/// places a stream's replicas inside one cluster (region). In a
/// supercluster of two two-server clusters (one meta group of four across
/// both), an R2 stream is placed, and an R3 one is refused rather than
/// spread over the clusters — with or without a cluster asked for. Only a
/// stream moving between clusters (a placement change) has its peers in
/// two regions for a while, which the rule counts wherever they are.
#[test]
fn nats_server_does_not_spread_a_streams_replicas_over_clusters() {
    let dir = tempfile::tempdir().unwrap();
    // Servers 0 and 1 form cluster c0, 2 and 3 cluster c1.
    let ports: Vec<(u16, u16, u16)> = (0..4)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let gateways = format!(
        "{{name: c0, url: \"nats://127.0.0.1:{}\"}}, {{name: c1, url: \"nats://127.0.0.1:{}\"}}",
        ports[0].2, ports[2].2
    );
    struct Kill(Vec<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut servers = Kill(Vec::new());
    for (i, (client, route, gw)) in ports.iter().enumerate() {
        let c = i / 2;
        let routes = (2 * c..2 * c + 2)
            .map(|j| format!("\"nats://127.0.0.1:{}\"", ports[j].1))
            .collect::<Vec<_>>()
            .join(", ");
        let conf = dir.path().join(format!("s{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                r#"server_name: s{i}
listen: "127.0.0.1:{client}"
jetstream {{ store_dir: "{store}" }}
cluster {{ name: c{c}, listen: "127.0.0.1:{route}", routes: [{routes}] }}
gateway {{ name: c{c}, listen: "127.0.0.1:{gw}", gateways: [{gateways}] }}
"#,
                store = dir.path().join(format!("js{i}")).display(),
            ),
        )
        .unwrap();
        servers.0.push(
            std::process::Command::new(natsmesh_harness::broker_binary(CURRENT))
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("s{i}.log"))).unwrap())
                .spawn()
                .unwrap(),
        );
    }
    let url = format!("nats://127.0.0.1:{}", ports[0].0);
    runtime().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match async_nats::connect(&url).await {
                Ok(c) => break c,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "s0 never listened: {e}\n{}",
                    std::fs::read_to_string(dir.path().join("s0.log")).unwrap_or_default()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let js = async_nats::jetstream::new(client);
        let config = |name: &str, replicas: usize, cluster: Option<&str>| {
            async_nats::jetstream::stream::Config {
                name: name.into(),
                subjects: vec![format!("{name}.>")],
                num_replicas: replicas,
                placement: cluster.map(|c| async_nats::jetstream::stream::Placement {
                    cluster: Some(c.into()),
                    tags: Vec::new(),
                }),
                ..Default::default()
            }
        };
        // The meta group (across the three clusters) elects its leader.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match js.create_stream(config("TWO", 2, None)).await {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "R2 stream: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for cluster in [None, Some("c1")] {
            let e = js
                .create_stream(config("THREE", 3, cluster))
                .await
                .expect_err("an R3 stream over two clusters of two servers");
            let text = e.to_string();
            println!("R3, placement {cluster:?}: {text}");
            assert!(
                text.contains("no suitable peers for placement"),
                "{cluster:?}: {text}"
            );
        }
    });
}
