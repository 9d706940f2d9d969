//! Load-balancer benchmark: prints a table and writes it to
//! `bench/results/balancer.md`.
//!
//! Against the DigitalOcean balancer fake with modelled delays (health
//! check every 1 s, 2 successes in, 2 failures out, 1 s timeout, changes
//! propagate after 500 ms; natsmeshd `dwell` 1 s):
//! (a) READY=1 → in service behind the balancer;
//! (b) SIGTERM → out of service, and → exit (deregistration, the drain
//!     delay, then lame duck);
//! (c) connections through the balancer during a rolling restart of three
//!     nodes, one attempt every 20 ms: natsmeshd against the baseline of
//!     bare nats-servers registered by hand with a TCP health check on the
//!     client port (what the cookbooks set up), in the same run; each
//!     node's turn lasts at least 8 s in both.
//!
//! Knob: `NATSMESH_BENCH_ROUNDS` (default 5) for (a) and (b).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "stats/mod.rs"]
mod stats;

use stats::row;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Daemon;
use common::fleet::{Fleet, LB, TOKEN, droplet_id as id, ip, wait_for};
use natsmesh_harness::fakes::do_lb::DoLb;
use natsmesh_harness::{Broker, CURRENT, broker_binary, scratch};

/// Each node's restart takes at least this long in both rolling runs, so
/// both clients try about as many connections.
const CYCLE: Duration = Duration::from_secs(8);

/// Connects through `frontend` every 20 ms until told to stop (at most
/// 5 minutes); counts connections that delivered INFO and those that did not.
fn client_loop(frontend: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u32, u32)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let good = TcpStream::connect_timeout(&frontend, Duration::from_secs(2))
                .ok()
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                    let mut line = String::new();
                    BufReader::new(&mut s).read_line(&mut line).ok()?;
                    line.starts_with("INFO ").then_some(())
                })
                .is_some();
            if good {
                ok += 1
            } else {
                failed += 1
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    })
}

fn natsmeshd_rolling(out: &mut String) {
    let fleet = Fleet::good(3);
    let mut nodes: Vec<Daemon> = (1..=3)
        .map(|n| Daemon::start(CURRENT, fleet.options(n, "")))
        .collect();
    for d in &mut nodes {
        d.wait_ready();
    }
    wait_for("all in", Duration::from_secs(30), || {
        fleet.lb.in_service().len() == 3
    });
    let stop = Arc::new(AtomicBool::new(false));
    let loop_ = client_loop(fleet.lb.frontend(), stop.clone());
    for (n, d) in (1u8..).zip(nodes.iter_mut()) {
        let began = Instant::now();
        d.signal("TERM");
        assert!(d.wait_exit(Duration::from_secs(60)).success());
        let dir = std::mem::replace(&mut d.dir, scratch());
        *d = Daemon::start_in(dir, CURRENT, fleet.options(n, ""));
        d.wait_ready();
        wait_for("back to three", Duration::from_secs(30), || {
            fleet.lb.in_service().len() == 3
        });
        std::thread::sleep(CYCLE.saturating_sub(began.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = loop_.join().unwrap();
    let _ = writeln!(
        out,
        "| (c) rolling restart of 3, natsmeshd | {} | {failed} |",
        ok + failed
    );
}

fn bare_rolling(out: &mut String) {
    // A TCP health check on the client port, as the cookbooks set up.
    let fleet = Fleet::new(3, |client, _| {
        let mut lb = DoLb::tcp(LB, "fra1", client, client);
        lb.health_check["protocol"] = serde_json::json!("tcp");
        lb
    });
    let client = fleet.client_port;
    let dir = scratch();
    let start = |n: u8| {
        let conf = dir.path().join(format!("n{n}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: bare-{n}\nlisten: \"{}:{client}\"\nports_file_dir: \"{}\"\n",
                ip(n),
                dir.path().display()
            ),
        )
        .unwrap();
        Broker::start(&broker_binary(CURRENT), &conf, dir.path())
    };
    let mut brokers: Vec<Broker> = (1..=3).map(start).collect();
    // Registered by hand, as the cookbooks do.
    let body = serde_json::json!({ "droplet_ids": [id(1), id(2), id(3)] }).to_string();
    let resp = ureq::post(&format!(
        "{}/v2/load_balancers/{LB}/droplets",
        fleet.lb.api_url()
    ))
    .header("Authorization", &format!("Bearer {TOKEN}"))
    .header("Content-Type", "application/json")
    .send(&body);
    assert!(resp.is_ok(), "{resp:?}");
    wait_for("all in", Duration::from_secs(30), || {
        fleet.lb.in_service().len() == 3
    });
    let stop = Arc::new(AtomicBool::new(false));
    let loop_ = client_loop(fleet.lb.frontend(), stop.clone());
    for (n, b) in (1u8..).zip(brokers.iter_mut()) {
        // `systemctl restart nats-server`: SIGTERM, then start again.
        let began = Instant::now();
        b.signal("TERM");
        let pid = b.pid();
        wait_for("bare exit", Duration::from_secs(30), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        });
        *b = start(n);
        wait_for("back to three", Duration::from_secs(30), || {
            fleet.lb.in_service().len() == 3
        });
        std::thread::sleep(CYCLE.saturating_sub(began.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = loop_.join().unwrap();
    let _ = writeln!(
        out,
        "| (c) rolling restart of 3, bare nats-server + TCP health check (baseline) | {} | {failed} |",
        ok + failed
    );
}

fn main() {
    // Before any work, so the load average is the machine's own.
    let run = natsmesh_harness::provenance::Provenance::for_brokers(&[CURRENT]);
    let rounds: usize = std::env::var("NATSMESH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (mut join, mut out_of, mut exit) = (Vec::new(), Vec::new(), Vec::new());
    let fleet = Fleet::good(1);
    for _ in 0..rounds {
        let spawned = Instant::now();
        let mut d = Daemon::start(CURRENT, fleet.options(1, ""));
        let ready_at = d
            .wait_note_after("READY=1", spawned, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no READY=1:\n{}", d.log()));
        wait_for("in service", Duration::from_secs(30), || {
            fleet.lb.in_service() == vec![id(1)]
        });
        join.push(ready_at.elapsed());
        let asked = Instant::now();
        d.signal("TERM");
        wait_for("out of service", Duration::from_secs(60), || {
            fleet.lb.in_service().is_empty()
        });
        out_of.push(asked.elapsed());
        assert!(
            d.wait_exit(Duration::from_secs(60)).success(),
            "{}",
            d.log()
        );
        exit.push(asked.elapsed());
    }
    let mut out = String::new();
    out.push_str(&run.heading("Load-balancer benchmark"));
    let _ = writeln!(
        out,
        "nats-server {CURRENT}, natsmeshd {}, {} on this machine. DigitalOcean balancer fake: health check every 1 s, 2 successes in, 2 failures out, 1 s timeout, changes propagate after 500 ms; natsmeshd dwell 1 s.\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    let _ = writeln!(
        out,
        "| measurement | p50 ms | p90 ms | p99 ms | max ms | n |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    out.push_str(&row("(a) READY=1 → in service", &join));
    out.push_str(&row("(b) SIGTERM → out of service", &out_of));
    out.push_str(&row("(b) SIGTERM → exit (drain delay 4 s included)", &exit));
    let _ = writeln!(
        out,
        "\n| rolling restart, a connection every 20 ms | connections | failed |"
    );
    let _ = writeln!(out, "|---|---|---|");
    natsmeshd_rolling(&mut out);
    bare_rolling(&mut out);
    print!("{out}");
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/balancer.md");
    std::fs::write(&path, &out).unwrap();
    println!("written to {}", path.display());
}
