//! A fresh droplet from power-on to in service through the load balancer,
//! split by phase: the machine of `common::cloud` (Debian 13, cloud-init,
//! its own metadata service, an empty zone on BIND, the DigitalOcean
//! Domains and Load Balancer fakes) with the user-data `natsmeshd
//! user-data` makes. Every milestone is a timestamp on the one clock the
//! host and its containers share: cloud-init's own event log (`cloud-init
//! analyze dump`), natsmeshd's journal entries, and the balancer's data
//! plane as the test sees it. Baseline in the same run: the same image
//! with an empty cloud-config (boot and cloud-init alone). Rounds
//! interleaved. Prints a table and writes `bench/results/boot.md`.
//!
//! Needs root (containers, namespaces). Knob: `NATSMESH_BENCH_ROUNDS`
//! (default 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "stats/mod.rs"]
mod stats;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cloud::{Region, seeded_root, wait_cloud_init, wait_ready};
use natsmesh_harness::container::{Container, Network};
use stats::env_num;

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// cloud-init's events: (name, start or finish, unix seconds).
fn cloud_init_events(c: &Container) -> Vec<(String, String, f64)> {
    let dump = c.ok(&["cloud-init", "analyze", "dump"]);
    let events: Vec<serde_json::Value> = serde_json::from_str(&dump).unwrap();
    events
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["event_type"].as_str()?.to_owned(),
                e["timestamp"].as_f64()?,
            ))
        })
        .collect()
}

/// The first journal entry of `unit` whose message starts with `prefix`
/// (unix seconds).
fn journal_at(entries: &[(f64, String)], prefix: &str) -> Option<f64> {
    entries
        .iter()
        .find(|(_, m)| m.starts_with(prefix))
        .map(|(t, _)| *t)
}

fn journal(c: &Container, unit: &str) -> Vec<(f64, String)> {
    c.ok(&["journalctl", "-u", unit, "-o", "json", "--no-pager"])
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let t: f64 = v["__REALTIME_TIMESTAMP"].as_str()?.parse().ok()?;
            Some((t / 1e6, v["MESSAGE"].as_str()?.to_owned()))
        })
        .collect()
}

/// Milestones of one boot, in seconds since power-on.
type Milestones = BTreeMap<&'static str, f64>;

/// The milestones and the phase each ends (the table orders them by when
/// they come).
const MILESTONES: &[(&str, &str)] = &[
    ("cloud-init starts", "boot up to cloud-init's first stage"),
    ("packages start", "cloud-init's init and config stages"),
    ("natsmeshd starts", "apt: update, unpack, postinst"),
    (
        "certificate issued",
        "identity from metadata, node key and certificate",
    ),
    ("first DNS answer", "the region's route records"),
    ("broker ready", "nats-server started and serving (READY=1)"),
    (
        "records published",
        "route SRV and address records through the DNS API",
    ),
    ("registered", "droplet added through the Load Balancer API"),
    ("in service", "balancer health checks pass"),
    ("cloud-init done", "the rest of cloud-init's final stage"),
];

fn natsmesh_round(round: u8) -> (Milestones, String) {
    let mut region = Region::new(20 + round, 1, 1);
    let root = region.machine(1);
    let power_on = unix_secs(SystemTime::now());
    let c = root.start_on(&region.network(1));
    let id = region.droplets[0].0;
    // The balancer's view is the test's: poll it from here.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let in_service = loop {
        if region.lb.in_service() == [id] {
            break unix_secs(SystemTime::now());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never in service:\n{}",
            c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager", "-n", "60"])
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_ready(&c, Duration::from_secs(60));
    // The version of the broker natsmeshd runs (the package's or
    // Debian's, whichever it chose), asked of the running binary itself.
    let broker = c.ok(&[
        "sh",
        "-c",
        r#"for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = nats-server ] && exec "$(readlink "$p/exe")" --version; done; echo unknown"#,
    ]);
    let broker = broker
        .trim()
        .strip_prefix("nats-server: v")
        .unwrap_or(broker.trim())
        .to_owned();
    let events = cloud_init_events(&c);
    let nm = journal(&c, "natsmeshd");
    let event = |name: &str, kind: &str| {
        events
            .iter()
            .find(|(n, k, _)| n.ends_with(name) && k == kind)
            .map(|(_, _, t)| *t)
            .unwrap_or_else(|| panic!("no cloud-init event {name} {kind}: {events:?}"))
    };
    let first = events
        .iter()
        .map(|(_, _, t)| *t)
        .fold(f64::INFINITY, f64::min);
    let need = |prefix: &str| {
        journal_at(&nm, prefix).unwrap_or_else(|| panic!("no journal entry {prefix:?}: {nm:?}"))
    };
    let mut m = Milestones::new();
    m.insert("cloud-init starts", first);
    m.insert(
        "packages start",
        event("config-package-update-upgrade-install", "start"),
    );
    m.insert("natsmeshd starts", need("Starting natsmeshd.service"));
    m.insert("certificate issued", need("issued a node certificate"));
    m.insert("first DNS answer", need("first DNS answer taken"));
    m.insert("broker ready", need("ready"));
    m.insert("records published", need("DNS records published"));
    m.insert("registered", need("joined the load balancer"));
    m.insert("in service", in_service);
    m.insert("cloud-init done", event("modules-final", "finish"));
    for v in m.values_mut() {
        *v -= power_on;
    }
    (m, broker)
}

/// The same image with an empty cloud-config: power-on to cloud-init done.
fn baseline_round() -> f64 {
    let repo = common::cloud::repo_and_pki().0;
    let root = seeded_root(&repo, "baseline", "#cloud-config\n{}\n");
    let power_on = unix_secs(SystemTime::now());
    let c = root.start_on(&Network::Private);
    wait_cloud_init(&c);
    let events = cloud_init_events(&c);
    events
        .iter()
        .filter(|(n, k, _)| n == "modules-final" && k == "finish")
        .map(|(_, _, t)| *t)
        .next()
        .unwrap_or_else(|| panic!("no final stage: {events:?}"))
        - power_on
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Before any work, so the load average is the machine's own; the
    // broker is the image's, so its version comes from a booted machine.
    let mut run = natsmesh_harness::provenance::Provenance::now(Vec::new());
    let rounds = u8::try_from(env_num("NATSMESH_BENCH_ROUNDS", 3).clamp(1, 9)).unwrap();
    let mut runs = Vec::new();
    let mut baseline = Vec::new();
    for round in 0..rounds {
        baseline.push(baseline_round());
        let (milestones, broker) = natsmesh_round(round);
        runs.push(milestones);
        if !run.brokers.contains(&broker) {
            run.brokers.push(broker);
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }

    let mut out = run.heading("A fresh droplet: power-on → in service through the load balancer");
    let _ = writeln!(
        out,
        "{rounds} rounds (each a new Debian 13 root booted in systemd-nspawn with cloud-init 25.1.4 and a NoCloud seed of `natsmeshd user-data`; natsmesh installed from a local signed apt repository, so no download time; the balancer's health check every 1 s, 2 to pass). Seconds since power-on, median (min–max); each phase is the time since the milestone before it in this order.\n"
    );
    let _ = writeln!(
        out,
        "| milestone | phase before it | since power-on, s | phase, s |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let mut order: Vec<(&str, &str, f64)> = MILESTONES
        .iter()
        .map(|(n, w)| (*n, *w, median(runs.iter().map(|m| m[n]).collect())))
        .collect();
    order.sort_by(|a, b| a.2.total_cmp(&b.2));
    let mut before: Option<&str> = None;
    let mut phases = Vec::new();
    for (name, what, _) in &order {
        let at: Vec<f64> = runs.iter().map(|m| m[name]).collect();
        let phase: Vec<f64> = runs
            .iter()
            .map(|m| m[name] - before.map_or(0.0, |b| m[b]))
            .collect();
        let lo = at.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = at.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let phase = median(phase);
        phases.push((*name, phase));
        let _ = writeln!(
            out,
            "| {name} | {what} | {:.2} ({lo:.2}–{hi:.2}) | {phase:.2} |",
            median(at.clone()),
        );
        before = Some(name);
    }
    let b_lo = baseline.iter().copied().fold(f64::INFINITY, f64::min);
    let b_hi = baseline.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let _ = writeln!(
        out,
        "| baseline: cloud-init done, empty cloud-config | same image, nothing to do | {:.2} ({b_lo:.2}–{b_hi:.2}) | |",
        median(baseline.clone())
    );
    phases.sort_by(|a, b| b.1.total_cmp(&a.1));
    let longest: Vec<String> = phases
        .iter()
        .take(3)
        .map(|(n, p)| format!("up to {n} ({p:.2} s)"))
        .collect();
    let _ = writeln!(
        out,
        "\nLongest phases: {}. On a real droplet add the provider's boot and the package download (about 10 MB); the balancer's phases scale with its health-check settings.",
        longest.join(", ")
    );
    print!("{out}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/boot.md");
    std::fs::write(&path, &out).unwrap();
    println!("written to {}", path.display());
}
