//! DNS self-publication benchmark: prints a table and writes it to
//! `bench/results/publish.md`.
//!
//! For a node with no publication (the baseline), with RFC 2136 to BIND,
//! and with the DigitalOcean API (the contract-following fake, writing
//! into the same BIND), each round measures:
//! (a) spawn → READY=1 (publication adds a reconciliation at start);
//! (b) READY=1 → its route SRV record answered by BIND;
//! (c) SIGTERM → its records gone from BIND, and SIGTERM → exit (the
//!     withdrawal comes before lame duck, so it adds to every stop).
//!
//! Knob: `NATSMESH_BENCH_ROUNDS` (default 10).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "stats/mod.rs"]
mod stats;

use stats::row;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{Daemon, Options};
use natsmesh_harness::bind::{Bind, KEY_NAME};
use natsmesh_harness::fakes::dns_api::{FakeDnsApi, Flavor};
use natsmesh_harness::{CURRENT, free_port};

const ZONE: &str = "nats.test";
const SRV: &str = "_nats-route._tcp.fra1.nats.test";

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    None,
    Rfc2136,
    DigitalOcean,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::None => "no publication (baseline)",
            Self::Rfc2136 => "rfc2136 → BIND",
            Self::DigitalOcean => "digitalocean API → BIND",
        }
    }
}

#[derive(Default)]
struct Samples {
    ready: Vec<Duration>,
    visible: Vec<Duration>,
    gone: Vec<Duration>,
    exit: Vec<Duration>,
}

fn round(
    backend: Backend,
    bind: &Bind,
    fake: &FakeDnsApi,
    token_file: &std::path::Path,
    s: &mut Samples,
) {
    let publish = match backend {
        Backend::None => String::new(),
        Backend::Rfc2136 => format!(
            "[dns_publish]\nbackend = \"rfc2136\"\nserver = \"{}\"\ntsig_key_name = \"{KEY_NAME}\"\ntsig_secret_file = \"{}\"\nttl = \"1s\"\n",
            bind.addr(),
            bind.key_file().display()
        ),
        Backend::DigitalOcean => format!(
            "[dns_publish]\nbackend = \"digitalocean\"\ntoken_file = \"{}\"\napi_url = \"{}\"\n",
            token_file.display(),
            fake.url()
        ),
    };
    let extra = format!(
        "[node]\nname = \"n1\"\nregion = \"fra1\"\ndomain = \"{ZONE}\"\n\n[broker.cluster]\nenabled = true\nbind = \"127.0.3.1\"\nport = {}\n\n[discovery]\nenabled = true\nnameservers = [\"{}\"]\n\n{publish}",
        free_port(),
        bind.addr()
    );
    let spawned = Instant::now();
    let mut d = Daemon::start(
        CURRENT,
        Options {
            extra,
            ..Options::default()
        },
    );
    let ready_at = d
        .wait_note_after("READY=1", spawned, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", d.log()));
    s.ready.push(ready_at - spawned);
    if backend != Backend::None {
        let deadline = Instant::now() + Duration::from_secs(30);
        while bind.dig(SRV, "SRV").is_empty() {
            assert!(Instant::now() < deadline, "never published:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(2));
        }
        s.visible.push(ready_at.elapsed());
    }
    let asked = Instant::now();
    d.signal("TERM");
    if backend != Backend::None {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bind.dig(SRV, "SRV").is_empty() {
            assert!(Instant::now() < deadline, "never withdrawn:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(2));
        }
        s.gone.push(asked.elapsed());
    }
    assert!(
        d.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        d.log()
    );
    s.exit.push(asked.elapsed());
}

fn main() {
    // Before any work, so the load average is the machine's own.
    let run = natsmesh_harness::provenance::Provenance::for_brokers(&[CURRENT]);
    let rounds: usize = std::env::var("NATSMESH_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let bind = Bind::start(ZONE);
    let fake = FakeDnsApi::start(
        Flavor::DigitalOcean,
        ZONE,
        "bench-token",
        Some(bind.writer()),
    );
    let dir = natsmesh_harness::scratch();
    let token_file = dir.path().join("token");
    natsmesh_harness::bind::write_private(&token_file, "bench-token\n");
    let backends = [Backend::None, Backend::Rfc2136, Backend::DigitalOcean];
    let mut all: Vec<Samples> = backends.iter().map(|_| Samples::default()).collect();
    // Interleaved, so a noisy moment hurts every backend alike.
    for _ in 0..rounds {
        for (b, s) in backends.iter().zip(all.iter_mut()) {
            round(*b, &bind, &fake, &token_file, s);
        }
    }
    let mut out = String::new();
    out.push_str(&run.heading("DNS self-publication benchmark"));
    let _ = writeln!(
        out,
        "nats-server {CURRENT}, natsmeshd {}, {} on this machine; BIND 9 on loopback; the DigitalOcean API is the test fake (no network latency: only natsmeshd's own cost shows).\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    let _ = writeln!(
        out,
        "| measurement | p50 ms | p90 ms | p99 ms | max ms | n |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (b, s) in backends.iter().zip(&all) {
        out.push_str(&row(
            &format!("(a) spawn → READY=1, {}", b.name()),
            &s.ready,
        ));
    }
    for (b, s) in backends.iter().zip(&all).skip(1) {
        out.push_str(&row(
            &format!("(b) READY=1 → SRV answered, {}", b.name()),
            &s.visible,
        ));
    }
    for (b, s) in backends.iter().zip(&all).skip(1) {
        out.push_str(&row(
            &format!("(c) SIGTERM → records gone, {}", b.name()),
            &s.gone,
        ));
    }
    for (b, s) in backends.iter().zip(&all) {
        out.push_str(&row(&format!("(c) SIGTERM → exit, {}", b.name()), &s.exit));
    }
    print!("{out}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/publish.md");
    std::fs::write(&path, &out).unwrap();
    println!("written to {}", path.display());
}
