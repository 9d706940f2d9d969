//! Supervisor benchmark: natsmeshd against a bare nats-server in the same
//! run, because these machines are noisy. Prints a table and writes it to
//! `bench/results/supervisor.md`.
//!
//! `make bench` runs it. Knobs (environment):
//! - `NATSMESH_BENCH_ROUNDS` (default 20): repetitions of (a), (b), (c);
//! - `NATSMESH_BENCH_RELOADS` (default 100): reloads measured in (d);
//! - `NATSMESH_BENCH_SOAK_SECS` (default 120; the leak check is 1800):
//!   reload soak for (e);
//! - `NATSMESH_BENCH_IDLE_SECS` (default 30): idle windows for (e) and (f);
//! - `NATSMESH_BENCH_STORE_MB` (default 1000): JetStream store for (b');
//! - `NATSMESH_BENCH_KILLS` (default 50): kill -9 rounds of (b''), the
//!   default profile's kill → broker serving → natsmeshd ready;
//! - `NATSMESH_BENCH_PREVIOUS_NATSMESHD`: an earlier natsmeshd whose
//!   footprint (e') is measured beside this build's (`make bench` passes
//!   the drills' starting build, `PREVIOUS_REV`);
//! - `NATSMESH_BENCH_ONLY=ready`: only (b''), written to
//!   `bench/results/ready.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "stats/mod.rs"]
mod stats;

use stats::{env_num, ms, percentile};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Options, signal};
use natsmesh::control::Request;
use natsmesh_harness::{CURRENT, broker_binary, free_port, scratch};

fn summary(samples: &[Duration]) -> String {
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms (n={})",
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.9)),
        ms(percentile(samples, 0.99)),
        samples.len()
    )
}

fn healthz_ok(port: u16) -> bool {
    ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
        .config()
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .call()
        .is_ok()
}

/// Bare nats-server: spawn → /healthz 200.
fn bare_start(version: &str) -> Duration {
    let dir = scratch();
    let (client, http) = (free_port(), free_port());
    let conf = dir.path().join("bare.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{http}\"\njetstream {{ store_dir: \"{}\", max_memory_store: 67108864, max_file_store: 268435456 }}\n",
            dir.path().join("js").display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let mut child = Command::new(broker_binary(version))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while !healthz_ok(http) {
        std::thread::sleep(Duration::from_micros(500));
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "bare nats-server never healthy"
        );
    }
    let took = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

fn quiet() -> Options {
    Options {
        log_level: Some("warn".into()),
        ..Options::default()
    }
}

/// natsmeshd: spawn → READY=1.
fn natsmeshd_start(version: &str) -> Duration {
    let start = Instant::now();
    let d = Daemon::start(version, quiet());
    let ready = d
        .wait_note_after("READY=1", start, Duration::from_secs(20))
        .expect("READY=1");
    ready - start
}

/// When natsmeshd told systemd it was ready again after `t`: the first
/// STATUS= "ready: …" after one that was not. READY=1 is sent once per
/// natsmeshd (systemd reads only the first), so a broker's return to ready
/// after a crash shows in STATUS= alone.
fn ready_again_after(d: &Daemon, t: Instant, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut left_ready = false;
        for (at, note) in d.notes_timed().into_iter().filter(|(at, _)| *at >= t) {
            for status in note.lines().filter_map(|l| l.strip_prefix("STATUS=")) {
                let ready = status.starts_with("ready:");
                if !ready {
                    left_ready = true;
                } else if left_ready {
                    return Some(at);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// kill -9 of the broker → STATUS= ready again.
fn kill_to_ready(d: &mut Daemon) -> Duration {
    let pid = d.wait_ready().broker_pid.unwrap();
    let t = Instant::now();
    signal(pid, "KILL");
    let ready = ready_again_after(d, t, Duration::from_secs(120)).expect("ready again");
    ready - t
}

/// Polls `f` every 1 ms until it holds; the time it first did.
fn first_true(deadline: Instant, mut f: impl FnMut() -> bool) -> Option<Instant> {
    while Instant::now() < deadline {
        if f() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// (b'') At the default profile (probes every 2 s), `kills` times: kill -9
/// of the broker → the new broker's `/healthz` 200, and → natsmeshd's own
/// state ready (`status` on the control socket, what `/ready` and STATUS=
/// show). Returns the two and natsmeshd's lag behind the broker.
fn kill_to_served_and_ready(version: &str, kills: usize) -> [Vec<Duration>; 3] {
    let mut d = Daemon::start(
        version,
        Options {
            log_level: Some("warn".into()),
            extra: "[health]\nprofile = \"default\"\n\n[restart]\ncrash_loop_count = 100000\n"
                .into(),
            ..Options::default()
        },
    );
    let healthz = format!("http://{}:{}/healthz", d.host, d.monitor_port);
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(200)))
            .build(),
    );
    let (mut served, mut ready, mut lag) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..kills {
        let pid = d.wait_ready().broker_pid.unwrap();
        // Anywhere within the default probe interval.
        std::thread::sleep(Duration::from_millis(300 + (round as u64 * 137) % 2000));
        let t = Instant::now();
        signal(pid, "KILL");
        let deadline = t + Duration::from_secs(30);
        let (s, r) = std::thread::scope(|sc| {
            let broker = sc.spawn(|| {
                first_true(deadline, || {
                    agent.get(&healthz).call().is_ok_and(|r| r.status() == 200)
                        && d.request(&Request::Status)
                            .status
                            .is_some_and(|s| s.broker_pid != Some(pid))
                })
            });
            let mesh = sc.spawn(|| {
                first_true(deadline, || {
                    d.request(&Request::Status).status.is_some_and(|s| {
                        s.state == "ready" && s.broker_pid.is_some_and(|p| p != pid)
                    })
                })
            });
            (broker.join().unwrap(), mesh.join().unwrap())
        });
        let (s, r) = (s.expect("broker serving"), r.expect("natsmeshd ready"));
        served.push(s - t);
        ready.push(r - t);
        lag.push(r.saturating_duration_since(s));
    }
    [served, ready, lag]
}

fn ready_rows(version: &str, kills: usize) -> Vec<(String, String, String)> {
    let [served, ready, lag] = kill_to_served_and_ready(version, kills);
    vec![
        (
            "(b'') kill -9 broker → new broker's /healthz 200, default profile".into(),
            summary(&served),
            "baseline (includes the restart)".into(),
        ),
        (
            "(b'') kill -9 broker → natsmeshd ready (status), default profile".into(),
            summary(&ready),
            "what /ready and STATUS= show".into(),
        ),
        (
            "(b'') natsmeshd ready after the broker's /healthz".into(),
            summary(&lag),
            "target p99 ≤ 100 ms".into(),
        ),
    ]
}

/// A /proc/<pid>/status field in kB (0 if absent).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A fresh natsmeshd (`natsmeshd`, or this build) at the harness's fast
/// profile, 2 s after READY=1: RSS, the anonymous part of it (the heap
/// and stacks; the rest is the binary's own pages, read from disk), and
/// CPU over `idle`.
fn footprint(version: &str, natsmeshd: Option<PathBuf>, idle: Duration) -> (u64, u64, f64) {
    let mut d = Daemon::start(
        version,
        Options {
            natsmeshd,
            ..quiet()
        },
    );
    d.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let pid = d.pid();
    let rss = status_kb(pid, "VmRSS:");
    let anon = status_kb(pid, "RssAnon:");
    let cpu = cpu_percent(pid, idle);
    (rss, anon, cpu)
}

/// utime + stime of a process, in clock ticks (100 Hz on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields after "comm)": state=0 … utime=11, stime=12.
    get(11) + get(12)
}

fn cpu_percent(pid: u32, window: Duration) -> f64 {
    let before = cpu_ticks(pid);
    std::thread::sleep(window);
    let after = cpu_ticks(pid);
    (after - before) as f64 / 100.0 / window.as_secs_f64() * 100.0
}

/// Fills JetStream with about `mb` megabytes in 100 streams.
fn fill_store(client: &str, mb: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nc = async_nats::connect(client).await.unwrap();
        let js = async_nats::jetstream::new(nc);
        let payload = bytes_of(64 * 1024);
        let per_stream = (mb * 1_000_000 / 100) / payload.len() as u64;
        for s in 0..100 {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: format!("BENCH{s}"),
                subjects: vec![format!("bench.{s}")],
                ..Default::default()
            })
            .await
            .unwrap();
            let mut acks = Vec::new();
            for _ in 0..per_stream {
                acks.push(
                    js.publish(format!("bench.{s}"), payload.clone().into())
                        .await
                        .unwrap(),
                );
            }
            for a in acks {
                a.await.unwrap();
            }
        }
    });
}

fn bytes_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn toggle_debug(d: &Daemon, on: bool) {
    let dropin = d.dir.path().join("natsmesh.d/60-debug.toml");
    std::fs::write(dropin, format!("[broker]\ndebug = {on}\n")).unwrap();
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let version = CURRENT;
    // Before any work, so the load average is the machine's own.
    let run = natsmesh_harness::provenance::Provenance::for_brokers(&[version]);
    let rounds = env_num("NATSMESH_BENCH_ROUNDS", 20) as usize;
    let reloads = env_num("NATSMESH_BENCH_RELOADS", 100) as usize;
    let soak = Duration::from_secs(env_num("NATSMESH_BENCH_SOAK_SECS", 120));
    let idle = Duration::from_secs(env_num("NATSMESH_BENCH_IDLE_SECS", 30));
    let store_mb = env_num("NATSMESH_BENCH_STORE_MB", 1000);
    let mut rows: Vec<(String, String, String)> = Vec::new();
    eprintln!("supervisor benchmark on nats-server {version}");
    let kill_rounds = env_num("NATSMESH_BENCH_KILLS", 50) as usize;
    if std::env::var("NATSMESH_BENCH_ONLY").as_deref() == Ok("ready") {
        write_table(
            "Kill -9 → ready benchmark",
            &format!(
                "nats-server {version}; {} cores; kills {kill_rounds}; `NATSMESH_BENCH_ONLY=ready cargo bench -p natsmesh --bench supervisor`.",
                cores()
            ),
            &ready_rows(version, kill_rounds),
            "ready.md",
            &run,
        );
        return;
    }

    // (a) start → ready, empty store.
    let bare: Vec<Duration> = (0..rounds).map(|_| bare_start(version)).collect();
    let mesh: Vec<Duration> = (0..rounds).map(|_| natsmeshd_start(version)).collect();
    let overhead = ms(percentile(&mesh, 0.5)) - ms(percentile(&bare, 0.5));
    rows.push((
        "(a) bare nats-server start → /healthz ok".into(),
        summary(&bare),
        "baseline".into(),
    ));
    rows.push((
        "(a) natsmeshd start → READY=1".into(),
        summary(&mesh),
        format!("overhead p50 {overhead:+.1} ms (target ≤ 50 ms)"),
    ));
    eprintln!("(a) done");

    // (b) kill -9 of the broker → ready again, empty store. Each kill is a
    // crash; a fresh natsmeshd every four stays under the crash-loop limit.
    let mut kills = Vec::new();
    while kills.len() < rounds {
        let mut d = Daemon::start(version, quiet());
        for _ in 0..4.min(rounds - kills.len()) {
            kills.push(kill_to_ready(&mut d));
        }
    }
    rows.push((
        "(b) kill -9 broker → ready again (STATUS=), empty store".into(),
        summary(&kills),
        "target ≤ 250 ms".into(),
    ));
    eprintln!("(b) done");

    rows.extend(ready_rows(version, kill_rounds));
    eprintln!("(b'') done");

    // (b') the same with a store of about `store_mb` MB in 100 streams.
    if store_mb > 0 {
        let mut d = Daemon::start(
            version,
            Options {
                log_level: Some("warn".into()),
                extra: "[broker.jetstream]\nmax_file_store = \"4GiB\"\n".into(),
                ..Options::default()
            },
        );
        d.wait_ready();
        let fill = Instant::now();
        fill_store(&d.client_addr(), store_mb);
        let filled = fill.elapsed();
        let mut big = Vec::new();
        for _ in 0..3 {
            big.push(kill_to_ready(&mut d));
        }
        rows.push((
            format!("(b) kill -9 broker → ready again (STATUS=), {store_mb} MB in 100 streams"),
            summary(&big),
            format!("reported (store filled in {:.1} s)", filled.as_secs_f64()),
        ));
        eprintln!("(b') done");
    }

    // (c) SIGSTOP → ready again, fast profile (budget 3 s).
    let mut stops = Vec::new();
    for _ in 0..rounds.min(5) {
        let mut d = Daemon::start(version, quiet());
        let pid = d.wait_ready().broker_pid.unwrap();
        let t = Instant::now();
        signal(pid, "STOP");
        let ready = ready_again_after(&d, t, Duration::from_secs(60)).expect("ready after hang");
        stops.push(ready - t);
    }
    rows.push((
        "(c) SIGSTOP broker → ready again (STATUS=), fast profile".into(),
        summary(&stops),
        "budget: 3 s of timeouts + restart".into(),
    ));
    eprintln!("(c) done");

    // (d) reload confirmed (control socket `reload --wait`, which includes
    // validation, rendering and `nats-server -t`), and SIGHUP → confirmed.
    let mut d = Daemon::start(version, quiet());
    d.wait_ready();
    let mut debug = false;
    let mut socket_reloads = Vec::new();
    for _ in 0..reloads {
        debug = !debug;
        toggle_debug(&d, debug);
        let t = Instant::now();
        let r = d.request(&Request::Reload { wait: true });
        assert!(r.ok, "{}", r.message);
        socket_reloads.push(t.elapsed());
    }
    rows.push((
        "(d) reload --wait → confirmed".into(),
        summary(&socket_reloads),
        "reported".into(),
    ));
    let mut hup_reloads = Vec::new();
    for _ in 0..reloads.min(30) {
        debug = !debug;
        toggle_debug(&d, debug);
        let before = d.status().unwrap().reloads_ok;
        let t = Instant::now();
        d.signal("HUP");
        d.wait_status(
            "reloaded",
            |s| s.reloads_ok > before,
            Duration::from_secs(20),
        );
        hup_reloads.push(t.elapsed());
    }
    rows.push((
        "(d) SIGHUP → reload confirmed (seen in status)".into(),
        summary(&hup_reloads),
        "includes the status polling (20 ms)".into(),
    ));
    eprintln!("(d) done");

    // (e) natsmeshd RSS and CPU idle, then after a reload soak.
    let pid = d.pid();
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = status_kb(pid, "VmRSS:");
    let cpu_idle = cpu_percent(pid, idle);
    let soak_start = Instant::now();
    let mut n = 0u64;
    while soak_start.elapsed() < soak {
        debug = !debug;
        toggle_debug(&d, debug);
        let r = d.request(&Request::Reload { wait: true });
        assert!(r.ok, "{}", r.message);
        n += 1;
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = status_kb(pid, "VmRSS:");
    rows.push((
        "(e) natsmeshd RSS idle".into(),
        format!("{:.1} MB", rss_idle as f64 / 1024.0),
        "target ≤ 10 MB".into(),
    ));
    rows.push((
        "(e) natsmeshd CPU idle, fast profile (probes every 250 ms)".into(),
        format!("{cpu_idle:.2} % of one core over {} s", idle.as_secs()),
        "reported".into(),
    ));
    rows.push((
        format!(
            "(e) natsmeshd RSS after {n} reloads in {} s",
            soak.as_secs()
        ),
        format!(
            "{:.1} MB ({:+.1} MB)",
            rss_after as f64 / 1024.0,
            (rss_after as f64 - rss_idle as f64) / 1024.0
        ),
        "leak check".into(),
    ));
    drop(d);
    eprintln!("(e) done");

    // (e') the same footprint of a fresh natsmeshd, this build against an
    // earlier one (`make bench` passes the drills' starting build) in
    // the same run: what the code added costs.
    let mb = |kb: u64| kb as f64 / 1024.0;
    let (rss, anon, cpu) = footprint(version, None, idle);
    let previous = std::env::var_os("NATSMESH_BENCH_PREVIOUS_NATSMESHD")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    match previous {
        Some(prev) => {
            let name = prev.parent().and_then(|p| p.file_name()).map_or_else(
                || prev.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let (p_rss, p_anon, p_cpu) = footprint(version, Some(prev), idle);
            rows.push((
                format!(
                    "(e') fresh natsmeshd, the build at {name}: RSS (anonymous), CPU over {} s",
                    idle.as_secs()
                ),
                format!("{:.1} MB ({:.1} MB), {p_cpu:.2} %", mb(p_rss), mb(p_anon)),
                "baseline, same run".into(),
            ));
            rows.push((
                format!(
                    "(e') fresh natsmeshd, this build: RSS (anonymous), CPU over {} s",
                    idle.as_secs()
                ),
                format!("{:.1} MB ({:.1} MB), {cpu:.2} %", mb(rss), mb(anon)),
                format!(
                    "{:+.1} MB ({:+.1} MB anonymous), {:+.2} % against the baseline",
                    mb(rss) - mb(p_rss),
                    mb(anon) - mb(p_anon),
                    cpu - p_cpu
                ),
            ));
        }
        None => rows.push((
            format!(
                "(e') fresh natsmeshd, this build: RSS (anonymous), CPU over {} s",
                idle.as_secs()
            ),
            format!("{:.1} MB ({:.1} MB), {cpu:.2} %", mb(rss), mb(anon)),
            "no baseline: set NATSMESH_BENCH_PREVIOUS_NATSMESHD (make bench does)".into(),
        )),
    }
    eprintln!("(e') done");

    // (f) broker CPU answering natsmeshd's probes: the default profile
    // (2 s interval) against a bare broker over the same window.
    let bare_dir = scratch();
    let (bc, bh) = (free_port(), free_port());
    let conf = bare_dir.path().join("bare.conf");
    std::fs::write(&conf, format!("listen: \"127.0.0.1:{bc}\"\nhttp: \"127.0.0.1:{bh}\"\njetstream {{ store_dir: \"{}\", max_memory_store: 67108864, max_file_store: 268435456 }}\n", bare_dir.path().join("js").display())).unwrap();
    let mut bare_child = Command::new(broker_binary(version))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut probed = Daemon::start(
        version,
        Options {
            log_level: Some("warn".into()),
            extra: "[health]\nprofile = \"default\"\n".into(),
            ..Options::default()
        },
    );
    let probed_pid = probed.wait_ready().broker_pid.unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (bare_cpu, probed_cpu, mesh_cpu) = std::thread::scope(|s| {
        let a = s.spawn(|| cpu_percent(bare_child.id(), idle));
        let b = s.spawn(|| cpu_percent(probed_pid, idle));
        let c = s.spawn(|| cpu_percent(probed.pid(), idle));
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    let _ = bare_child.kill();
    let _ = bare_child.wait();
    drop(probed);
    rows.push((
        "(f) broker CPU, bare (no probes)".into(),
        format!("{bare_cpu:.2} % over {} s", idle.as_secs()),
        "baseline".into(),
    ));
    rows.push((
        "(f) broker CPU, probed every 2 s (default profile)".into(),
        format!("{probed_cpu:.2} % over {} s", idle.as_secs()),
        format!("probe cost {:+.2} % of one core", probed_cpu - bare_cpu),
    ));
    rows.push((
        "(f) natsmeshd CPU idle, default profile (probes every 2 s)".into(),
        format!("{mesh_cpu:.2} % over {} s", idle.as_secs()),
        "reported".into(),
    ));

    write_table(
        "Supervisor benchmark",
        &format!(
            "nats-server {version}; {} cores; rounds {rounds}, reloads {reloads}, soak {} s, idle windows {} s; `make bench`.",
            cores(),
            soak.as_secs(),
            idle.as_secs()
        ),
        &rows,
        "supervisor.md",
        &run,
    );
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

/// Prints the table and writes it to `bench/results/<file>`.
fn write_table(
    title: &str,
    header: &str,
    rows: &[(String, String, String)],
    file: &str,
    run: &natsmesh_harness::provenance::Provenance,
) {
    let mut table = run.heading(title);
    let _ = writeln!(table, "{header}\n");
    let _ = writeln!(table, "| measurement | result | note |\n|---|---|---|");
    for (a, b, c) in rows {
        let _ = writeln!(table, "| {a} | {b} | {c} |");
    }
    println!("{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bench/results")
        .join(file);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, &table).unwrap();
    eprintln!("written to {}", out.display());
}
