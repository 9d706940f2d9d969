//! TLS renewal benchmark, on every broker release of the matrix: how long a
//! renewal takes from the new certificate to the broker confirmed serving
//! it, and how many client disconnects a renewal causes under load (target
//! 0). Prints a table and writes `bench/results/tls.md`.
//!
//! Knobs: `NATSMESH_BENCH_RENEWALS` (default 3) per release.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{Daemon, Options};
use natsmesh_harness::{MATRIX, scratch};

fn timestamp(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

/// (start, end) of each renewal: the new certificate to the confirmation.
fn renewals(log: &str) -> Vec<(Duration, bool)> {
    let mut out = Vec::new();
    let mut start = None;
    for line in log.lines() {
        if line.contains("new node certificate; loading it into the broker") {
            start = timestamp(line);
        } else if line.contains("certificate renewal: reloaded")
            && let (Some(s), Some(e)) = (start.take(), timestamp(line))
        {
            out.push((
                e.duration_since(s).unwrap_or_default(),
                line.contains("confirmed=true"),
            ));
        }
    }
    out
}

fn main() {
    // Before any work, so the load average is the machine's own.
    let run = natsmesh_harness::provenance::Provenance::for_brokers(MATRIX);
    let wanted = std::env::var("NATSMESH_BENCH_RENEWALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let pki = scratch();
    natsmesh::ca_cli::init(
        &pki.path().join("root"),
        "bench root",
        Duration::from_secs(86400),
    )
    .unwrap();
    natsmesh::ca_cli::intermediate(
        &pki.path().join("root"),
        "fra1",
        "nats.test",
        natsmesh::ca_cli::Permits {
            names: &[],
            extra_ranges: &[],
            default_ranges: true,
        },
        Duration::from_secs(86400),
        &pki.path().join("int"),
    )
    .unwrap();
    let p = |rel: &str| pki.path().join(rel).display().to_string();
    let tls = format!(
        "[node]\ndomain = \"nats.test\"\n\n[tls]\nmode = \"issue\"\nca_file = \"{}\"\nintermediate_cert = \"{}\"\nintermediate_key = \"{}\"\nvalidity = \"12s\"\nclient = \"required\"\n",
        p("root/root.crt"),
        p("int/fra1.crt"),
        p("int/fra1.key")
    );
    let mut rows = Vec::new();
    for version in MATRIX {
        eprintln!("nats-server {version}");
        let mut d = Daemon::start(
            version,
            Options {
                extra: tls.clone(),
                log_level: Some("info".into()),
                ..Options::default()
            },
        );
        d.wait_ready();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let root = pki.path().join("root/root.crt");
        let addr = d.client_addr();
        let (sent, received, disconnects) = rt.block_on(load(&root, &addr, &d, wanted));
        let r = renewals(&d.log());
        let mut lat: Vec<Duration> = r.iter().map(|(d, _)| *d).collect();
        lat.sort();
        let confirmed = r.iter().filter(|(_, c)| *c).count();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        rows.push(format!(
            "| {version} | {} ({} confirmed) | {:.1} ms | {:.1} ms | {sent} / {received} | {disconnects} |",
            r.len(),
            confirmed,
            lat.get(lat.len() / 2).copied().map(ms).unwrap_or(f64::NAN),
            lat.last().copied().map(ms).unwrap_or(f64::NAN),
        ));
    }
    let mut table = run.heading("TLS renewal benchmark");
    let _ = writeln!(
        table,
        "12-second node certificates (renewed about every 8 s), one TLS client publishing 128-byte messages at about 20,000/s and subscribing to them during {wanted} renewals; `make bench`.\n"
    );
    let _ = writeln!(
        table,
        "| nats-server | renewals | new cert → serving it, p50 | max | messages sent / received | client disconnects (target 0) |\n|---|---|---|---|---|---|"
    );
    for r in &rows {
        let _ = writeln!(table, "{r}");
    }
    println!("{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/tls.md");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, &table).unwrap();
}

/// Publishes and receives until `wanted` renewals happened; returns
/// (sent, received, disconnect events).
async fn load(root: &Path, addr: &str, d: &Daemon, wanted: usize) -> (u64, u64, usize) {
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let ev = events.clone();
    let nc = async_nats::ConnectOptions::new()
        .add_root_certificates(root.to_path_buf())
        .require_tls(true)
        .event_callback(move |e| {
            let ev = ev.clone();
            async move {
                ev.lock().unwrap().push(e.to_string());
            }
        })
        .connect(addr)
        .await
        .unwrap();
    let mut sub = nc.subscribe("load").await.unwrap();
    let counter = tokio::spawn(async move {
        use futures_util::StreamExt as _;
        let mut n = 0u64;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(3), sub.next()).await {
            n += 1;
        }
        n
    });
    let payload = bytes::Bytes::from_static(&[7u8; 128]);
    let mut sent = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12 * wanted as u64 + 10);
    while renewals(&d.log()).len() < wanted
        && sent < 2_000_000
        && tokio::time::Instant::now() < deadline
    {
        for _ in 0..200 {
            nc.publish("load", payload.clone()).await.unwrap();
            sent += 1;
        }
        nc.flush().await.unwrap();
        // About 20,000 messages a second: steady load across the renewals.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nc.flush().await.unwrap();
    let received = counter.await.unwrap_or(0);
    let disconnects = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.starts_with("disconnected"))
        .count();
    (sent, received, disconnects)
}
