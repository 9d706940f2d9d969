//! Failure drills on a supercluster of three regions of three real
//! nats-servers under natsmeshd, found through a real DNS server (the
//! `common::mesh` set-up: each node on its own loopback address, in a
//! mount namespace whose resolv.conf names dnsmasq), under client load
//! from async-nats: acknowledged JetStream publishes to an R3 stream placed
//! in each region, core messages with a sequence, and clients that know
//! servers in several regions.
//!
//! Drill: a whole region lost (SIGKILL to every natsmeshd of nyc3; their
//! brokers follow), then returned on its old state. Each drill reports
//! acknowledged messages lost (target 0), the longest gap a core
//! subscriber saw, reconnect p50/p99 of the lost region's clients, and the
//! time to converge, as Markdown and JSON in `NATSMESH_DRILL_OUT` (default
//! `target/drills/`). CI runs it reduced; `make drills` runs it longer and
//! writes `bench/results/drills.{md,json}`. Knobs: `NATSMESH_DRILL_LOSS_SECS`
//! (default 10), `NATSMESH_DRILL_LOAD_SECS` (before and after, default 3).
//! Needs root; runs alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{ConnectOptions, Event, ServerAddr};
use common::mesh::{Mesh, Region};
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::Mutex;

const FRA1: Region = Region {
    name: "fra1",
    octet: 21,
    nodes: 3,
};
const NYC3: Region = Region {
    name: "nyc3",
    octet: 22,
    nodes: 3,
};
const SGP1: Region = Region {
    name: "sgp1",
    octet: 23,
    nodes: 3,
};
const REGIONS: [Region; 3] = [FRA1, NYC3, SGP1];
/// How long a client waits between reconnect attempts.
const RECONNECT_WAIT: Duration = Duration::from_millis(250);

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn url(mesh: &mut Mesh, node: &str) -> ServerAddr {
    format!("nats://{}", mesh.node(node).client_addr())
        .parse()
        .unwrap()
}

/// A client that knows `servers` (in this order) and records how long
/// each disconnection lasted.
async fn client(
    servers: Vec<ServerAddr>,
    reconnects: Option<Arc<Mutex<Vec<Duration>>>>,
) -> async_nats::Client {
    let down: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    ConnectOptions::new()
        .retain_servers_order()
        .reconnect_delay_callback(|_| RECONNECT_WAIT)
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let down = down.clone();
            let reconnects = reconnects.clone();
            async move {
                match event {
                    Event::Disconnected => {
                        *down.lock().unwrap() = Some(Instant::now());
                    }
                    Event::Connected => {
                        let since = down.lock().unwrap().take();
                        if let (Some(since), Some(r)) = (since, reconnects) {
                            r.lock().await.push(since.elapsed());
                        }
                    }
                    _ => {}
                }
            }
        })
        .connect(servers)
        .await
        .unwrap()
}

/// Publishes `<stream>-<i>` with message ids, each retried until acked,
/// until `stop` (after an ack); returns how many were acked and how many
/// attempts failed.
async fn publisher(
    js: jetstream::Context,
    stream: &'static str,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> (u64, u64) {
    let subject = format!("drill.{stream}");
    let (mut acked, mut failed) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let msg = jetstream::message::PublishMessage::build()
            .payload(acked.to_string().into())
            .message_id(format!("{stream}-{acked}"));
        let ok = match tokio::time::timeout(
            Duration::from_secs(2),
            js.send_publish(subject.clone(), msg),
        )
        .await
        {
            Ok(Ok(ack)) => matches!(
                tokio::time::timeout(Duration::from_secs(2), ack).await,
                Ok(Ok(_))
            ),
            _ => false,
        };
        if ok {
            acked += 1;
            progress.store(acked, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (acked, failed)
}

/// Every acked message of `stream` is there, once, in order: the number
/// of acked messages missing.
async fn lost(js: &jetstream::Context, stream: &str, acked: u64) -> u64 {
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap().clone();
    let mut present = 0;
    for seq in 1..=info.state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await
            && std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|p| p.parse::<u64>().ok())
                == Some(present)
        {
            present += 1;
        }
    }
    assert!(
        info.state.messages <= acked + 1,
        "{stream}: {} stored for {acked} acked (duplicates?)",
        info.state.messages
    );
    acked.saturating_sub(present)
}

fn percentile(v: &[Duration], p: f64) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied()
}

#[derive(Debug, Serialize)]
struct Report {
    drill: &'static str,
    /// Acked JetStream messages missing afterwards, all streams (target 0).
    acked_lost: u64,
    /// Acked messages per stream (`stream placed in region`).
    acked: Vec<(String, u64)>,
    /// Publish attempts that failed and were retried, per stream.
    retried: Vec<(String, u64)>,
    /// Longest gap between two core messages at a subscriber first
    /// connected to the lost region.
    longest_core_gap_ms: u64,
    reconnects: usize,
    reconnect_p50_ms: Option<u64>,
    reconnect_p99_ms: Option<u64>,
    /// Failed connections through a load balancer (none in this drill).
    lb_failed_connections: Option<u64>,
    /// From the region's return to its stream taking publishes again and
    /// every node rejoined.
    converge_ms: u64,
    loss_secs: u64,
}

fn write_report(r: &Report) {
    let dir = std::env::var_os("NATSMESH_DRILL_OUT").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/drills"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    let ms = |v: Option<u64>| v.map_or("–".to_owned(), |v| v.to_string());
    let md = format!(
        "# Drill: {}\n\nThree regions of three nats-servers {} under natsmeshd; nyc3 killed (SIGKILL) for {} s, then returned on its old state. Clients reconnect every {} ms.\n\n| acked lost | acked (per stream) | retried publishes | longest core gap, ms | reconnects | reconnect p50, ms | p99, ms | failed via balancer | converge, ms |\n|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        r.drill,
        natsmesh_harness::CURRENT,
        r.loss_secs,
        RECONNECT_WAIT.as_millis(),
        r.acked_lost,
        r.acked
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.retried
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.longest_core_gap_ms,
        r.reconnects,
        ms(r.reconnect_p50_ms),
        ms(r.reconnect_p99_ms),
        ms(r.lb_failed_connections),
        r.converge_ms,
    );
    print!("{md}");
    std::fs::write(dir.join(format!("{}.md", r.drill)), md).unwrap();
    std::fs::write(
        dir.join(format!("{}.json", r.drill)),
        serde_json::to_string_pretty(r).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_whole_region_lost_and_returned_loses_no_acknowledged_message() {
    let loss = env_secs("NATSMESH_DRILL_LOSS_SECS", 10);
    let load = env_secs("NATSMESH_DRILL_LOAD_SECS", 3);
    let mut mesh = Mesh::new(&REGIONS);
    for r in REGIONS {
        mesh.start(r);
    }
    for r in REGIONS {
        let others: Vec<Region> = REGIONS.into_iter().filter(|o| o.name != r.name).collect();
        mesh.wait_joined(r, &others);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Clients of the lost region know a server in each region, their own
    // first.
    let mut servers = |first: &str| -> Vec<ServerAddr> {
        let mut v = vec![url(&mut mesh, first)];
        for o in ["fra1-n1", "nyc3-n2", "sgp1-n1"] {
            if !first.starts_with(&o[..4]) {
                v.push(url(&mut mesh, o));
            }
        }
        v
    };
    let streams = [("EU", "fra1"), ("US", "nyc3"), ("AP", "sgp1")];
    let publisher_servers: Vec<Vec<ServerAddr>> = streams
        .iter()
        .map(|(_, region)| servers(&format!("{region}-n1")))
        .collect();
    // Ten clients on each of nyc3's servers, for the reconnect times.
    let watcher_servers: Vec<Vec<ServerAddr>> = (0..30)
        .map(|i| servers(&format!("nyc3-n{}", i % 3 + 1)))
        .collect();
    let core_from = servers("fra1-n2");
    let stop = Arc::new(AtomicBool::new(false));
    // Acked so far, per stream.
    let progress: [Arc<AtomicU64>; 3] = Default::default();
    let reconnects: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let gap: Arc<std::sync::Mutex<Duration>> = Arc::default();

    let (publishers, js, _watchers) = rt.block_on(async {
        let admin = client(core_from.clone(), None).await;
        let js = jetstream::new(admin);
        for (name, region) in streams {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let config = jetstream::stream::Config {
                    name: name.into(),
                    subjects: vec![format!("drill.{name}")],
                    num_replicas: 3,
                    placement: Some(jetstream::stream::Placement {
                        cluster: Some(region.into()),
                        tags: vec![],
                    }),
                    ..Default::default()
                };
                match js.create_stream(config).await {
                    Ok(_) => break,
                    // The meta group may still be settling.
                    Err(e) => assert!(tokio::time::Instant::now() < deadline, "stream {name}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let mut publishers = Vec::new();
        let mut watchers = Vec::new();
        for (((name, _), servers), acked) in streams.iter().zip(publisher_servers).zip(&progress) {
            let js = jetstream::new(client(servers, None).await);
            publishers.push(tokio::spawn(publisher(
                js,
                name,
                stop.clone(),
                acked.clone(),
            )));
        }
        // Core: sequence numbers from a surviving region, one subscriber
        // and more clients, all first connected to a server of nyc3.
        for (i, servers) in watcher_servers.into_iter().enumerate() {
            let c = client(servers, Some(reconnects.clone())).await;
            if i == 0 {
                let mut sub = c.subscribe("drill.core").await.unwrap();
                c.flush().await.unwrap();
                let gap = gap.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut last = Instant::now();
                    while let Ok(Some(_)) =
                        tokio::time::timeout(Duration::from_secs(60), sub.next()).await
                    {
                        let g = last.elapsed();
                        last = Instant::now();
                        let mut worst = gap.lock().unwrap();
                        if g > *worst {
                            *worst = g;
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    drop(c);
                });
            } else {
                watchers.push(c);
            }
        }
        let core = client(core_from, None).await;
        let stop2 = stop.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let _ = core.publish("drill.core", seq.to_string().into()).await;
                seq += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        (publishers, js, watchers)
    });

    std::thread::sleep(load);
    *gap.lock().unwrap() = Duration::ZERO;
    for n in 1..=3 {
        mesh.kill(NYC3, n);
    }
    std::thread::sleep(loss);
    let returned = Instant::now();
    for n in 1..=3 {
        mesh.revive(NYC3, n);
    }
    mesh.wait_joined(NYC3, &[FRA1, SGP1]);
    // Converged: nyc3's stream takes publishes again.
    let us = &progress[1];
    let at_return = us.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    while us.load(Ordering::Relaxed) <= at_return {
        assert!(
            Instant::now() < deadline,
            "nyc3's stream never took publishes again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let converge = returned.elapsed();
    std::thread::sleep(load);
    stop.store(true, Ordering::Relaxed);

    let mut report = Report {
        drill: "region-lost",
        acked_lost: 0,
        acked: Vec::new(),
        retried: Vec::new(),
        longest_core_gap_ms: u64::try_from(gap.lock().unwrap().as_millis()).unwrap(),
        reconnects: 0,
        reconnect_p50_ms: None,
        reconnect_p99_ms: None,
        lb_failed_connections: None,
        converge_ms: u64::try_from(converge.as_millis()).unwrap(),
        loss_secs: loss.as_secs(),
    };
    rt.block_on(async {
        for ((name, region), p) in streams.iter().zip(publishers) {
            let (acked, failed) = tokio::time::timeout(Duration::from_secs(30), p)
                .await
                .unwrap_or_else(|_| panic!("publisher {name} did not finish"))
                .unwrap();
            report.acked_lost += lost(&js, name, acked).await;
            report.acked.push((format!("{name} in {region}"), acked));
            report.retried.push((format!("{name} in {region}"), failed));
        }
        let r = reconnects.lock().await;
        report.reconnects = r.len();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap();
        report.reconnect_p50_ms = percentile(&r, 0.5).map(ms);
        report.reconnect_p99_ms = percentile(&r, 0.99).map(ms);
    });
    write_report(&report);
    assert_eq!(report.acked_lost, 0, "{report:?}");
    assert!(
        report.acked.iter().all(|(_, n)| *n > 0),
        "a stream took nothing: {report:?}"
    );
    // The lost region's clients reconnected elsewhere while it was gone,
    // and its stream was unavailable meanwhile (the drill took it away).
    assert!(report.reconnects >= 30, "{report:?}");
    assert!(report.retried[1].1 > 0, "{report:?}");
    rt.shutdown_timeout(Duration::from_secs(5));
}
