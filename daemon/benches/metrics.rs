//! What `/metrics` costs the broker: nats-server's CPU time with 1,000
//! JetStream streams while natsmeshd reads it for metrics, against the
//! same natsmeshd with metrics off (its probes still run) in the same run,
//! rounds interleaved because these machines are noisy. Prints a table and
//! writes `bench/results/metrics.md`.
//!
//! Knobs: `NATSMESH_BENCH_STREAMS` (default 1000), `NATSMESH_BENCH_WINDOW_SECS`
//! (default 30) per measurement, `NATSMESH_BENCH_ROUNDS` (default 2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "stats/mod.rs"]
mod stats;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{Daemon, Options};
use natsmesh_harness::CURRENT;
use stats::{env_num, ms, percentile};

/// Clock ticks a process has spent (user + system) from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th and stime the 13th of those.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Off,
    Varz,
    Streams,
}

impl Scenario {
    fn config(self) -> &'static str {
        match self {
            Self::Off => "[metrics]\nenabled = false\n",
            Self::Varz => "[metrics]\nscrape_every = \"1s\"\n",
            Self::Streams => "[metrics]\nscrape_every = \"1s\"\nstreams = true\n",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Off => "metrics off (probes only)",
            Self::Varz => "metrics, broker read every 1 s",
            Self::Streams => "metrics + per-stream series, read every 1 s",
        }
    }
}

struct Measured {
    broker_ms_per_min: f64,
    natsmeshd_ms_per_min: f64,
    scrape: Vec<Duration>,
    scrape_bytes: usize,
}

fn make_streams(d: &Daemon, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nc = async_nats::connect(d.client_addr()).await.unwrap();
        let js = async_nats::jetstream::new(nc);
        for i in 0..n {
            let name = format!("BENCH{i}");
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("bench.{i}")],
                max_bytes: 64 * 1024,
                ..Default::default()
            })
            .await
            .unwrap();
            js.publish(format!("bench.{i}"), "x".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
}

fn measure(s: Scenario, streams: u64, window: Duration, tck: f64) -> Measured {
    let mut d = Daemon::start(
        CURRENT,
        Options {
            extra: s.config().into(),
            ..Options::default()
        },
    );
    d.wait_ready();
    make_streams(&d, streams);
    let broker = d.status().unwrap().broker_pid.unwrap();
    let own = d.pid();
    // The stream creation's own work settles first.
    std::thread::sleep(Duration::from_secs(5));
    let (b0, n0, t0) = (cpu_ticks(broker), cpu_ticks(own), Instant::now());
    let mut scrape = Vec::new();
    let mut scrape_bytes = 0;
    // Prometheus' pace would be 15 s; scrape every 5 s within the window
    // (a scrape only encodes what natsmeshd already read).
    while t0.elapsed() < window {
        if s != Scenario::Off {
            let asked = Instant::now();
            let text = d.metrics().unwrap();
            scrape.push(asked.elapsed());
            scrape_bytes = text.len();
        }
        std::thread::sleep(Duration::from_secs(5).min(window.saturating_sub(t0.elapsed())));
    }
    let secs = t0.elapsed().as_secs_f64();
    let per_min = |ticks: u64| ticks as f64 / tck * 1000.0 / secs * 60.0;
    let m = Measured {
        broker_ms_per_min: per_min(cpu_ticks(broker) - b0),
        natsmeshd_ms_per_min: per_min(cpu_ticks(own) - n0),
        scrape,
        scrape_bytes,
    };
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(60));
    m
}

fn main() {
    // Before any work, so the load average is the machine's own.
    let run = natsmesh_harness::provenance::Provenance::for_brokers(&[CURRENT]);
    let streams = env_num("NATSMESH_BENCH_STREAMS", 1000);
    let window = Duration::from_secs(env_num("NATSMESH_BENCH_WINDOW_SECS", 30));
    let rounds = env_num("NATSMESH_BENCH_ROUNDS", 2);
    let tck = ticks_per_second();
    let scenarios = [Scenario::Off, Scenario::Varz, Scenario::Streams];
    let mut results: Vec<Vec<Measured>> = scenarios.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, s) in scenarios.iter().enumerate() {
            eprintln!("round {round}: {}", s.name());
            results[i].push(measure(*s, streams, window, tck));
        }
    }
    let mean = |v: &[Measured], f: fn(&Measured) -> f64| {
        v.iter().map(f).sum::<f64>() / v.len().max(1) as f64
    };
    let base = mean(&results[0], |m| m.broker_ms_per_min);
    let mut out = String::new();
    out.push_str(&run.heading("/metrics: what reading the broker costs it"));
    let _ = writeln!(
        out,
        "nats-server {CURRENT}, natsmeshd {}, {} streams (R1, file, one message each), {rounds} interleaved rounds of {} s, {} cores; natsmeshd's probes at the test harness's `fast` health profile in every scenario.\n",
        env!("CARGO_PKG_VERSION"),
        streams,
        window.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        out,
        "| scenario | broker CPU ms/min | over metrics off | natsmeshd CPU ms/min | scrape p50 ms | scrape size |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (i, s) in scenarios.iter().enumerate() {
        let r = &results[i];
        let broker = mean(r, |m| m.broker_ms_per_min);
        let scrapes: Vec<Duration> = r.iter().flat_map(|m| m.scrape.clone()).collect();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:+.0} | {:.0} | {} | {} |",
            s.name(),
            broker,
            broker - base,
            mean(r, |m| m.natsmeshd_ms_per_min),
            if scrapes.is_empty() {
                "–".to_owned()
            } else {
                format!("{:.1}", ms(percentile(&scrapes, 0.5)))
            },
            r.last().map_or(0, |m| m.scrape_bytes),
        );
    }
    let _ = writeln!(
        out,
        "\nAt the default `metrics.scrape_every = \"15s\"` the broker is read 15 times less often than here. Per-stream series cost what the `/jsz` with every stream costs the broker (and its size, parsed by natsmeshd each read): opt-in for that reason."
    );
    print!("{out}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/metrics.md");
    std::fs::write(&path, &out).unwrap();
    println!("written to {}", path.display());
}
