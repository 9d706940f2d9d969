//! Failure drills on a supercluster of three regions of three real
//! nats-servers under natsmeshd (`common::mesh`, `Mesh::in_namespaces`):
//! every node in its own network namespace on one LAN, found through a
//! real DNS server (dnsmasq), with latency between regions from delaying
//! TCP proxies that the advertised gateway addresses point at (round trips
//! of 20/40/80 ms into fra1/nyc3/sgp1; checked against /gatewayz before
//! every drill), TLS required on every link as on a cloud node (each node
//! issues its certificate from its region's intermediate; clients trust
//! the root). Load from async-nats: acknowledged JetStream publishes
//! (message ids, retried until acked) to an R3 stream placed in each
//! region, core messages from fra1 to a subscriber in the drill's region,
//! and 30 clients first connected to that region; in the planned drills
//! nyc3 is behind the fake DigitalOcean Load Balancer and a user connects
//! through it every 100 ms.
//!
//! Drills: a whole region lost and returned (SIGKILL); a host lost with
//! its unsynced writes, then a region's power (nyc3's stores on a FUSE
//! filesystem that forgets what was not fsynced); a flapping region
//! (nftables cuts its links again and again); scaling (a server added,
//! one removed with `natsmeshd decommission`); a rolling upgrade of
//! natsmesh and nats-server through the supercluster's restart lease, and
//! the same region by region under region-scoped leases (one server of
//! each region at a time, the regions in parallel; every stream's group
//! sampled for a majority);
//! clients scaling up and down in every region through the region's
//! balancer (`client_scaling`, with its own clients and targets). The lost
//! region also records where its clients went, beside the gateways' round
//! trips.
//! Each reports acknowledged messages lost, the longest core gap (between
//! regions, from fra1; and within the drill's region, between two of its
//! servers),
//! reconnect p50/p99, failed connections through the balancer and the
//! time to converge, as Markdown and JSON in `NATSMESH_DRILL_OUT`
//! (default `target/drills/`), and fails when it misses one of the
//! README's targets ([`TARGETS`], the one place they live). The test runs (and CI) play two,
//! reduced: the lost region, and the rolling upgrade from a copy of the
//! current build; `make drills` plays all, longer. Knobs (seconds):
//! `NATSMESH_DRILL_LOSS_SECS` (10), `NATSMESH_DRILL_LOAD_SECS` (before and
//! after, 3), `NATSMESH_DRILL_FLAPS` (3), `NATSMESH_DRILL_CUT_SECS` (4),
//! `NATSMESH_DRILL_POWER_AFTER_SECS` (130), `NATSMESH_DRILL_SYNC`
//! (`always`: every broker syncs every write);
//! `NATSMESH_DRILL_PREVIOUS_NATSMESHD`, the build an upgrade starts from;
//! `NATSMESH_DRILL_CLIENTS` (300), `NATSMESH_DRILL_RAMP_SECS` (20) and
//! `NATSMESH_DRILL_HOLD_SECS` (10) for the client scaling.
//! Needs root and nftables; runs alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_scaling;
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{ConnectOptions, Event, ServerAddr};
use common::mesh::{Mesh, Region};
use futures_util::StreamExt as _;
use natsmesh_harness::CURRENT;
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
/// One-way delay into each region's gateways: round trips of 20, 40 and
/// 80 ms into fra1, nyc3 and sgp1.
const LATENCY: [(&str, Duration); 3] = [
    ("fra1", Duration::from_millis(10)),
    ("nyc3", Duration::from_millis(20)),
    ("sgp1", Duration::from_millis(40)),
];
/// How long a client waits between reconnect attempts.
const RECONNECT_WAIT: Duration = Duration::from_millis(250);
/// The broker a rolling upgrade starts from.
const PREVIOUS: &str = "2.14.6";

/// A target the README states for the drills: the one place both the
/// assertions ([`check`]) and the tables (each drill's report, and the
/// README's "Failure drills" section, which carries [`targets_markdown`]
/// verbatim; `the_readme_states_the_drill_targets` fails when the two
/// differ) take it from.
struct Target {
    /// What is measured, as the tables name it.
    what: &'static str,
    /// Planned operations only (else every drill).
    planned_only: bool,
    /// This drill only (its result name), whatever `planned_only` says.
    drill: Option<&'static str>,
    /// The most allowed, in `unit`.
    at_most: u64,
    unit: &'static str,
    /// Where the limit comes from, for the README.
    why: &'static str,
    /// The measurement; `None` when nothing was measured.
    measure: fn(&Report) -> Option<u64>,
    /// Whether nothing measured meets the target (no reconnect has no
    /// slow reconnect; a balancer nobody went through proves nothing).
    none_passes: bool,
}

/// The longest gap a planned operation may cause in a core flow within a
/// region (publisher and subscriber on different servers of it): a
/// client's reconnect wait and a second to reconnect and resubscribe.
const CORE_GAP_LIMIT: Duration = RECONNECT_WAIT.saturating_add(Duration::from_secs(1));

/// nats-server redials an explicit gateway whose connection closed after a
/// fixed second (`gatewayReconnectDelay` in `server/gateway.go`, not
/// configurable) plus up to 100 ms at random (`reconnectGateway`); lame
/// duck tells clients and routes, never gateways. So a core flow between
/// regions goes dark for that long whenever the server at the far end of
/// its gateway restarts, whatever natsmeshd does.
const GATEWAY_RECONNECT_DELAY: Duration = Duration::from_secs(1);
const GATEWAY_RECONNECT_JITTER: Duration = Duration::from_millis(100);
/// Round trips from a gateway's dial to its first message across: the TCP
/// connect (1), the accepting server's INFO (½), the TLS handshake (2 at
/// most, a full TLS 1.2 one) and the first message's one-way trip (½).
const GATEWAY_HANDSHAKE_RTTS: u32 = 4;

/// The largest round trip the proxies inject between two regions.
const fn largest_rtt() -> Duration {
    let mut i = 0;
    let mut most = Duration::ZERO;
    while i < LATENCY.len() {
        if LATENCY[i].1.as_nanos() > most.as_nanos() {
            most = LATENCY[i].1;
        }
        i += 1;
    }
    most.saturating_mul(2)
}

/// The longest gap a planned operation may cause in the core flow between
/// regions (fra1 → the drill's region): nats-server's gateway reconnect
/// (its fixed delay, its jitter, the dial, TLS and gateway handshake at the
/// drill's largest round trip) plus the client reconnect allowance, the
/// reconnect wait [`CORE_GAP_LIMIT`] allows beyond its second.
const CROSS_REGION_GAP_LIMIT: Duration = GATEWAY_RECONNECT_DELAY
    .saturating_add(GATEWAY_RECONNECT_JITTER)
    .saturating_add(largest_rtt().saturating_mul(GATEWAY_HANDSHAKE_RTTS))
    .saturating_add(RECONNECT_WAIT);

const TARGETS: [Target; 8] = [
    Target {
        what: "acknowledged messages lost",
        planned_only: false,
        drill: None,
        at_most: 0,
        unit: "",
        why: "an acknowledged publish is never lost",
        measure: |r| Some(r.acked_lost),
        none_passes: false,
    },
    Target {
        what: "longest core gap within a region, less the drill's own stalls",
        planned_only: true,
        drill: None,
        at_most: CORE_GAP_LIMIT.as_millis() as u64,
        unit: "ms",
        why: "a client's reconnect: the reconnect wait (250 ms) + 1 s",
        measure: |r| r.core_gap_in_region_net_ms,
        none_passes: false,
    },
    Target {
        what: "longest core gap between regions, less the drill's own stalls",
        planned_only: true,
        drill: None,
        at_most: CROSS_REGION_GAP_LIMIT.as_millis() as u64,
        unit: "ms",
        why: CROSS_REGION_GAP_WHY,
        measure: |r| Some(r.core_gap_net_ms),
        none_passes: false,
    },
    Target {
        what: "reconnect p99",
        planned_only: true,
        drill: None,
        at_most: 2000,
        unit: "ms",
        why: "a planned restart costs a client one quick reconnect",
        measure: |r| r.reconnect_p99_ms,
        none_passes: true,
    },
    Target {
        what: "failed connections through the balancer",
        planned_only: true,
        drill: None,
        at_most: 0,
        unit: "",
        why: "the balancer stops sending clients before a node stops serving",
        measure: |r| r.lb_failed_connections,
        none_passes: false,
    },
    Target {
        what: "failed client operations (connects, unplanned disconnections, requests, acknowledged publishes)",
        planned_only: false,
        drill: Some(CLIENT_SCALING),
        at_most: 0,
        unit: "",
        why: "clients coming and going by the hundred are all served",
        measure: |r| {
            r.client_scaling
                .as_ref()
                .map(client_scaling::ClientScaling::failures)
        },
        none_passes: false,
    },
    Target {
        what: "client connect p99",
        planned_only: false,
        drill: Some(CLIENT_SCALING),
        at_most: CONNECT_P99_LIMIT_MS,
        unit: "ms",
        why: CONNECT_P99_WHY,
        measure: |r| r.client_scaling.as_ref().and_then(|c| c.connect_p99_ms),
        none_passes: false,
    },
    Target {
        what: "acknowledged messages lost outside a region that lost power",
        planned_only: false,
        drill: Some(HOST_LOST),
        at_most: 0,
        unit: "",
        why: "a region's power loss takes only what its own stores had not synced",
        measure: |r| r.lost_outside_power_loss,
        none_passes: true,
    },
];

/// The client-scaling drill's result name.
const CLIENT_SCALING: &str = "client-scaling";
/// The host-lost drill's result name.
const HOST_LOST: &str = "host-lost";

/// The slowest connect (p99) the client-scaling drill allows, and why:
/// from its runs on this project's machine (docs/drills.md has them), with
/// room for a busier one; a connect slower than a second is a regression.
const CONNECT_P99_LIMIT_MS: u64 = 1000;
const CONNECT_P99_WHY: &str = "about twice the slowest p99 measured with 300 clients a region on 2 cores shared with other builds";

/// How [`CROSS_REGION_GAP_LIMIT`] adds up (`drill_targets_derive_the_gap_between_regions`
/// checks the figures against the constants).
const CROSS_REGION_GAP_WHY: &str = "nats-server's gateway reconnect when the server at the far end restarts: its fixed 1 s (`gatewayReconnectDelay`, not configurable) + up to 100 ms at random + dial, TLS and gateway handshake, 4 round trips at the drill's largest (80 ms): 320 ms; + the client reconnect allowance, the reconnect wait (250 ms)";

impl Target {
    fn applies(&self, r: &Report) -> bool {
        match self.drill {
            Some(d) => r.drill == d,
            None => r.planned || !self.planned_only,
        }
    }

    /// `what ≤ limit`, as the tables show it.
    fn name(&self) -> String {
        format!("{} ≤ {}{}", self.what, self.at_most, self.unit_suffix())
    }

    fn unit_suffix(&self) -> String {
        if self.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", self.unit)
        }
    }

    fn judge(&self, r: &Report) -> TargetResult {
        let measured = (self.measure)(r);
        TargetResult {
            target: self.name(),
            at_most: self.at_most,
            unit: self.unit,
            measured,
            pass: measured.map_or(self.none_passes, |m| m <= self.at_most),
        }
    }
}

/// The README's table of the drills' targets, from [`TARGETS`].
fn targets_markdown() -> String {
    let mut md = String::from("| target | drills | at most |\n|---|---|---|\n");
    for t in &TARGETS {
        md.push_str(&format!(
            "| {} | {} | {}{} ({}) |\n",
            t.what,
            match t.drill {
                Some(d) => d,
                None if t.planned_only => "planned",
                None => "every",
            },
            t.at_most,
            t.unit_suffix(),
            t.why
        ));
    }
    md
}

/// One target as a drill met it or not.
#[derive(Debug, Serialize)]
struct TargetResult {
    target: String,
    at_most: u64,
    unit: &'static str,
    /// `None`: nothing measured (see [`Target::none_passes`]).
    measured: Option<u64>,
    pass: bool,
}

/// The root every node's certificate chains to (set once the mesh is
/// made secure): clients trust it.
static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

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

/// A client's servers: `first`, the rest of its region, then one server
/// of each other region.
fn servers(mesh: &mut Mesh, first: &str) -> Vec<ServerAddr> {
    servers_listing(mesh, first, false)
}

/// As [`servers`], the other regions in the reverse order when
/// `reversed` (a client's list is in whatever order it was given).
fn servers_listing(mesh: &mut Mesh, first: &str, reversed: bool) -> Vec<ServerAddr> {
    let region = &first[..4];
    let mut names = vec![first.to_owned()];
    for n in 1..=3 {
        let name = format!("{region}-n{n}");
        if name != first {
            names.push(name);
        }
    }
    let mut far: Vec<&str> = ["fra1-n1", "nyc3-n2", "sgp1-n1"]
        .into_iter()
        .filter(|o| !o.starts_with(region))
        .collect();
    if reversed {
        far.reverse();
    }
    names.extend(far.into_iter().map(str::to_owned));
    names.iter().map(|n| url(mesh, n)).collect()
}

/// The other regions, in the order [`servers_listing`] lists them.
fn far_regions(region: &str, reversed: bool) -> Vec<String> {
    let mut far: Vec<String> = REGIONS
        .iter()
        .map(|r| r.name.to_owned())
        .filter(|r| r != region)
        .collect();
    if reversed {
        far.reverse();
    }
    far
}

/// A client that knows `servers` (in this order) and records how long
/// each disconnection lasted.
async fn client(
    servers: Vec<ServerAddr>,
    reconnects: Option<Arc<Mutex<Vec<Duration>>>>,
) -> async_nats::Client {
    let down: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let mut options = ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into());
    if let Some(root) = ROOT.get() {
        options = options
            .add_root_certificates(root.clone())
            .require_tls(true);
    }
    options
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
/// attempts failed, and its context (in the stream's region, where reading
/// the stream back costs no gateway round trip per message).
async fn publisher(
    js: jetstream::Context,
    stream: &'static str,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> (u64, u64, jetstream::Context) {
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
    (acked, failed, js)
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

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

/// A gateway's round trip: as injected by the proxies, as nats-server
/// measured it.
#[derive(Debug, Serialize)]
struct GatewayRtt {
    from: String,
    to: String,
    injected_ms: u64,
    measured_ms: f64,
}

/// Core messages at the subscriber, after the warm-up.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct CoreCount {
    received: u64,
    /// Sequence numbers that never arrived.
    lost: u64,
    /// Arrived lower than one already seen (repeated or late).
    reordered: u64,
    /// Publishes the publishing client refused (not sent at all).
    unsent: u64,
}

/// Gateway connections re-established during a drill, as `/gatewayz`
/// shows them: a connection id not seen at the start is a new connection.
#[derive(Debug, Default, Serialize)]
struct GatewayReconnects {
    /// New outbound gateway connections, all nodes (one per link
    /// re-established).
    outbound: u64,
    /// New inbound gateway connections, all nodes (the far ends of those).
    inbound: u64,
    /// Which: `node → region` (outbound) or `node ← region` (inbound),
    /// with how many.
    links: Vec<(String, u64)>,
    /// Samples taken (every node's `/gatewayz` every 250 ms).
    samples: u64,
    /// Connections in each node's first sample (that the watch saw the
    /// gateways at all): outbound, inbound.
    at_start: (u64, u64),
}

/// Where, when and from what a drill ran, so that its numbers can be
/// read later (and told apart from a run on another tree or machine).
#[derive(Debug, Serialize)]
struct Provenance {
    /// The tree, the date, the host and its load when the drill started
    /// (the harness's, shared with the benchmarks).
    #[serde(flatten)]
    run: natsmesh_harness::provenance::Provenance,
    /// The nats-server versions the nodes reported on `/varz` once all
    /// had joined, and when the drill ended.
    brokers_at_start: Vec<String>,
    brokers_at_end: Vec<String>,
}

/// The nats-server versions `nodes` report (distinct, sorted), each with
/// how many run it: `2.15.1 ×9`.
fn broker_versions<'a>(nodes: impl Iterator<Item = &'a common::Daemon>) -> Vec<String> {
    let mut count = std::collections::BTreeMap::<String, usize>::new();
    for d in nodes {
        let v = d
            .monitor("/varz")
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "not answering".into());
        *count.entry(v).or_default() += 1;
    }
    count
        .into_iter()
        .map(|(v, n)| format!("{v} ×{n}"))
        .collect()
}

/// The settings a node ran with, as natsmeshd reads its configuration
/// (`config` and its drop-ins, merged, defaults filled in): the ones a
/// drill's numbers depend on.
fn node_settings(config: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    use natsmesh::config::load;
    let sources = load::discover_at(config).unwrap();
    let raw = load::load(&sources).unwrap().raw;
    let d = |s: natsmesh::config::units::Span| humantime::format_duration(s.0).to_string();
    let dur = |t: Duration| humantime::format_duration(t).to_string();
    let timings = raw.health.profile.timings();
    let mut out = std::collections::BTreeMap::new();
    let mut set = |k: &str, v: String| {
        out.insert(k.to_owned(), v);
    };
    set(
        "broker.lame_duck_duration",
        d(raw.broker.lame_duck_duration),
    );
    set(
        "broker.lame_duck_grace_period",
        d(raw.broker.lame_duck_grace_period),
    );
    set(
        "health.profile",
        format!("{:?}", raw.health.profile).to_lowercase(),
    );
    set(
        "health.interval",
        dur(raw.health.interval.map_or(timings.interval, |s| s.0)),
    );
    set(
        "health.timeout",
        dur(raw.health.timeout.map_or(timings.timeout, |s| s.0)),
    );
    set(
        "health.route_wait",
        dur(raw.health.route_wait.map_or(timings.route_wait, |s| s.0)),
    );
    // A client's TLS handshake slower than this is cut by the server (the
    // client-scaling drill's connects depend on it).
    set("tls.handshake_timeout", d(raw.tls.handshake_timeout));
    set("restart.backoff_initial", d(raw.restart.backoff_initial));
    set("restart.backoff_max", d(raw.restart.backoff_max));
    set("discovery.min_refresh", d(raw.discovery.min_refresh));
    set("discovery.max_refresh", d(raw.discovery.max_refresh));
    set("fleet.coordinate", raw.fleet.coordinate.to_string());
    set(
        "fleet.lease_scope",
        format!("{:?}", raw.fleet.lease_scope).to_lowercase(),
    );
    set("fleet.lease_ttl", d(raw.fleet.lease_ttl));
    if raw.load_balancer.provider != natsmesh::config::schema::LbKind::None {
        set("load_balancer.dwell", d(raw.load_balancer.dwell));
        set(
            "load_balancer.stop_budget",
            raw.load_balancer
                .stop_budget
                .map_or_else(|| "derived from the health check".to_owned(), d),
        );
    }
    out
}

/// What a drill knows before its disruption.
struct Start {
    rtts: Vec<GatewayRtt>,
    /// The tree, the date, the host and its load average before the mesh
    /// started.
    run: natsmesh_harness::provenance::Provenance,
    brokers: Vec<String>,
    /// The watched region's (nyc3's) first node's settings, and the
    /// clients'.
    settings: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct Report {
    drill: &'static str,
    provenance: Provenance,
    /// What the nodes (nyc3-n1's configuration, the same in every region
    /// but for names), the clients, the fake balancer and the drill ran
    /// with.
    settings: std::collections::BTreeMap<String, String>,
    /// What was done.
    scenario: String,
    /// A planned operation (the targets for reconnects and gaps apply).
    planned: bool,
    /// Acked JetStream messages missing afterwards, all streams (target 0).
    acked_lost: u64,
    /// Acked messages per stream (`stream placed in region`).
    acked: Vec<(String, u64)>,
    /// Publish attempts that failed and were retried, per stream.
    retried: Vec<(String, u64)>,
    /// Longest gap between two core messages (published every 10 ms in
    /// fra1) at a subscriber first connected to the drill's region.
    longest_core_gap_ms: u64,
    /// The same core messages counted by their sequence numbers.
    core: CoreCount,
    /// Longest gap in the core flow within the drill's region (published
    /// every 10 ms from its third server to the same subscriber, first on
    /// its first server); `None` where no such flow ran.
    longest_core_gap_in_region_ms: Option<u64>,
    /// Those core messages counted by their sequence numbers.
    core_in_region: Option<CoreCount>,
    /// The longest core gaps less the time the drill's own process stalled
    /// within them (the gap targets judge these): between regions, within.
    core_gap_net_ms: u64,
    core_gap_in_region_net_ms: Option<u64>,
    /// The drill's own process's stalls (see [`Stalls`]).
    drill_stalls: Option<DrillStalls>,
    /// Gateway connections re-established, from every node's `/gatewayz`
    /// (the flapping drill; `None` where not watched).
    gateway_reconnects: Option<GatewayReconnects>,
    /// Requests from a client first connected to the drill's region to a
    /// responder in fra1 (every 50 ms, 2 s timeout): answered, failed.
    requests: (u64, u64),
    reconnects: usize,
    reconnect_p50_ms: Option<u64>,
    reconnect_p99_ms: Option<u64>,
    /// Failed connections through a load balancer (no balancer in the
    /// drills yet).
    lb_failed_connections: Option<u64>,
    /// Acked messages lost, when a whole region lost power, by the streams
    /// with no replica there (the host-lost drill; `None` elsewhere).
    lost_outside_power_loss: Option<u64>,
    /// From the end of the disruption to every node joined and the
    /// drill's region serving again.
    converge_ms: u64,
    /// Drill-specific findings.
    facts: Vec<(String, String)>,
    /// Where the lost region's clients went (the region-lost drill).
    orphans: Option<Orphans>,
    /// The client-scaling drill's clients and brokers.
    client_scaling: Option<client_scaling::ClientScaling>,
    gateway_rtt: Vec<GatewayRtt>,
    /// Every target of [`TARGETS`] that applies to this drill: measured,
    /// met or not.
    targets: Vec<TargetResult>,
}

/// A core gap as the tables show it: with what it was less the drill's own
/// stalls, when they took some of it.
fn gap_cell(gap: u64, net: Option<u64>) -> String {
    match net {
        Some(n) if n < gap => format!("{gap} ({n} less the drill's stalls)"),
        _ => gap.to_string(),
    }
}

/// Writes `r` as Markdown and JSON (the drills' one writer of result
/// files); returns the JSON's path.
fn write_report(r: &Report, dir: &std::path::Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let opt = |v: Option<u64>| v.map_or("–".to_owned(), |v| v.to_string());
    let list = |v: &[(String, u64)]| {
        v.iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut md = format!(
        "# Drill: {}\n\n{} Three regions of three nats-servers (nats-server {} unless said otherwise) under natsmeshd, each in its own network namespace, TLS required on routes, gateways and client ports (every node's certificate issued by natsmeshd from its region's intermediate); gateway round trips of 20/40/80 ms into fra1/nyc3/sgp1 from delaying proxies. Clients reconnect every {} ms.\n\n| acked lost | acked (per stream) | retried publishes | longest core gap, ms: between regions / within the region | core lost / received: between regions; within | requests answered / failed | reconnects | reconnect p50, ms | p99, ms | gateway reconnects (out / in) | failed via balancer | converge, ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} / {} | {} / {}; {} | {} / {} | {} | {} | {} | {} | {} | {} |\n",
        r.drill,
        r.scenario,
        natsmesh_harness::CURRENT,
        RECONNECT_WAIT.as_millis(),
        r.acked_lost,
        list(&r.acked),
        list(&r.retried),
        gap_cell(r.longest_core_gap_ms, Some(r.core_gap_net_ms)),
        r.longest_core_gap_in_region_ms
            .map_or("–".to_owned(), |g| gap_cell(
                g,
                r.core_gap_in_region_net_ms
            )),
        r.core.lost,
        r.core.received,
        r.core_in_region
            .map_or("–".to_owned(), |c| format!("{} / {}", c.lost, c.received)),
        r.requests.0,
        r.requests.1,
        r.reconnects,
        opt(r.reconnect_p50_ms),
        opt(r.reconnect_p99_ms),
        r.gateway_reconnects
            .as_ref()
            .map_or("–".to_owned(), |g| format!(
                "{} / {}",
                g.outbound, g.inbound
            )),
        opt(r.lb_failed_connections),
        r.converge_ms,
    );
    let p = &r.provenance;
    md.push_str(&format!(
        "\n{}; nats-server {} at the start, {} at the end.\n",
        p.run.ran_at(),
        p.brokers_at_start.join(", "),
        p.brokers_at_end.join(", "),
    ));
    md.push_str("\nSettings: ");
    md.push_str(
        &r.settings
            .iter()
            .map(|(k, v)| format!("`{k}` {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    md.push('\n');
    if let Some(s) = r.drill_stalls.filter(|s| s.count > 0) {
        md.push_str(&format!(
            "\nThe drill's own process stalled {} times over {} ms (longest {} ms, {} ms in all): its cores are shared.\n",
            s.count,
            STALL_RECORDED.as_millis(),
            s.longest_ms,
            s.total_ms
        ));
    }
    if r.core.reordered > 0 || r.core.unsent > 0 {
        md.push_str(&format!(
            "\nCore messages also: {} arrived out of order, {} refused by the publishing client.\n",
            r.core.reordered, r.core.unsent
        ));
    }
    if let Some(g) = r
        .gateway_reconnects
        .as_ref()
        .filter(|g| !g.links.is_empty())
    {
        md.push_str(&format!(
            "\nGateway connections re-established ({} samples of every node's /gatewayz): {}\n",
            g.samples,
            g.links
                .iter()
                .map(|(l, n)| format!("{l} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !r.facts.is_empty() {
        md.push('\n');
        for (k, v) in &r.facts {
            md.push_str(&format!("- {k}: {v}\n"));
        }
    }
    if let Some(o) = &r.orphans {
        md.push_str(&orphans_markdown(o));
    }
    if let Some(c) = &r.client_scaling {
        md.push_str(&client_scaling_markdown(c));
    }
    md.push_str("\nTargets:\n\n| target | measured | met |\n|---|---|---|\n");
    for t in &r.targets {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            t.target,
            t.measured
                .map_or("– (not measured)".to_owned(), |m| format!(
                    "{m} {}",
                    t.unit
                )
                .trim_end()
                .to_owned()),
            if t.pass { "yes" } else { "**no**" }
        ));
    }
    md.push_str("\nGateway round trips (/gatewayz, the lowest of each region's servers):\n\n| from | to | injected, ms | measured, ms |\n|---|---|---|---|\n");
    for g in &r.gateway_rtt {
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} |\n",
            g.from, g.to, g.injected_ms, g.measured_ms
        ));
    }
    print!("{md}");
    std::fs::write(dir.join(format!("{}.md", r.drill)), md).unwrap();
    let json = dir.join(format!("{}.json", r.drill));
    std::fs::write(&json, serde_json::to_string_pretty(r).unwrap()).unwrap();
    json
}

/// Where the clients of a lost region reconnected, beside the round trips
/// between regions.
#[derive(Debug, Serialize)]
struct Orphans {
    /// The lost region.
    from: String,
    clients: Vec<Orphan>,
    /// Per surviving region: how many went there and the gateway round
    /// trip from the lost region to it (injected; measured by nats-server
    /// on `/gatewayz` before the drill).
    went_to: Vec<OrphanRegion>,
    /// The surviving region with the shortest measured round trip.
    closest: String,
    to_closest: u64,
    /// Clients on the first other region their server list names.
    to_first_listed: u64,
}

/// One orphaned client: the other regions in the order its server list
/// names them, and the server (and region) it was on while its own region
/// was gone.
#[derive(Debug, Serialize)]
struct Orphan {
    client: usize,
    listed: Vec<String>,
    server: String,
    region: String,
}

#[derive(Debug, Serialize)]
struct OrphanRegion {
    region: String,
    clients: u64,
    rtt_injected_ms: u64,
    rtt_measured_ms: Option<f64>,
}

/// Tallies where the orphans of `from` are, against `rtts`.
fn orphans(from: &str, clients: Vec<Orphan>, rtts: &[GatewayRtt]) -> Orphans {
    let mut went_to: Vec<OrphanRegion> = rtts
        .iter()
        .filter(|g| g.from == from)
        .map(|g| OrphanRegion {
            region: g.to.clone(),
            clients: 0,
            rtt_injected_ms: g.injected_ms,
            rtt_measured_ms: Some(g.measured_ms),
        })
        .collect();
    for c in &clients {
        match went_to.iter_mut().find(|w| w.region == c.region) {
            Some(w) => w.clients += 1,
            None => went_to.push(OrphanRegion {
                region: c.region.clone(),
                clients: 1,
                rtt_injected_ms: 0,
                rtt_measured_ms: None,
            }),
        }
    }
    let closest = went_to
        .iter()
        .filter(|w| w.region != from)
        .filter_map(|w| Some((w.rtt_measured_ms?, w)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, w)| w.region.clone())
        .unwrap_or_default();
    let to_closest = clients.iter().filter(|c| c.region == closest).count() as u64;
    let to_first_listed = clients
        .iter()
        .filter(|c| c.listed.first() == Some(&c.region))
        .count() as u64;
    Orphans {
        from: from.to_owned(),
        clients,
        went_to,
        closest,
        to_closest,
        to_first_listed,
    }
}

fn orphans_markdown(o: &Orphans) -> String {
    let mut md = format!(
        "\nWhere {}'s {} clients went while it was gone (closest by gateway round trip: {}; {} of {} went there, {} to the first other region their server list names):\n\n| region | clients | round trip from {}, injected ms | measured (/gatewayz), ms |\n|---|---|---|---|\n",
        o.from,
        o.clients.len(),
        o.closest,
        o.to_closest,
        o.clients.len(),
        o.to_first_listed,
        o.from
    );
    for w in &o.went_to {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            w.region,
            w.clients,
            w.rtt_injected_ms,
            w.rtt_measured_ms
                .map_or("–".to_owned(), |m| format!("{m:.1}"))
        ));
    }
    let mut by_list = std::collections::BTreeMap::<(String, String), u64>::new();
    for c in &o.clients {
        *by_list
            .entry((c.listed.join(" then "), c.region.clone()))
            .or_default() += 1;
    }
    md.push_str("\nBy the order of the other regions in the client's server list:\n\n| listed | went to | clients |\n|---|---|---|\n");
    for ((listed, region), n) in by_list {
        md.push_str(&format!("| {listed} | {region} | {n} |\n"));
    }
    md
}

fn client_scaling_markdown(c: &client_scaling::ClientScaling) -> String {
    let opt = |v: Option<u64>| v.map_or("–".to_owned(), |v| v.to_string());
    let p = &c.plan;
    let mut md = format!(
        "\nClients per region: 0 → {} over {} s, held {} s, then {} (the rest leaving at once), held {} s; each answers requests in its region's queue group and, once every {} ms, asks it and publishes an acknowledged message to its region's R3 stream. Connect p50 {} ms, p99 {} ms over all regions.\n\n| region | via | connected | connect failed | connect p50, ms | p99, ms | max, ms | connections at peak / floor | unplanned disconnections | requests answered / failed | publishes acked / failed | acked lost |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        p.peak,
        p.ramp_s,
        p.hold_s,
        p.floor,
        p.hold_s,
        p.period_ms,
        opt(c.connect_p50_ms),
        opt(c.connect_p99_ms),
    );
    for r in &c.regions {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} / {} | {} / {} | {} |\n",
            r.region,
            r.via,
            r.connected,
            r.connect_failed,
            opt(r.connect_p50_ms),
            opt(r.connect_p99_ms),
            opt(r.connect_max_ms),
            r.connections_at_peak,
            r.connections_at_floor,
            r.disconnected,
            r.requests_answered,
            r.requests_failed,
            r.published_acked,
            r.publish_failed,
            r.acked_lost,
        ));
    }
    let why: Vec<&String> = c.regions.iter().flat_map(|r| &r.first_failures).collect();
    if !why.is_empty() {
        md.push_str(&format!(
            "\nFirst failures: {}\n",
            why.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    md.push_str("\nEach nats-server (`/proc/<pid>`: CPU time from `stat`, memory from `status`), up (ramp and peak) and down (the rest leaving and the floor):\n\n| server | CPU up, ms (% of a core) | CPU down, ms (% of a core) | RSS before, MiB | at peak | at floor | high-water |\n|---|---|---|---|---|---|---|\n");
    for b in &c.brokers {
        md.push_str(&format!(
            "| {} | {} ({:.1}) | {} ({:.1}) | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            b.node,
            b.cpu_ms_up,
            b.cpu_pct_up,
            b.cpu_ms_down,
            b.cpu_pct_down,
            b.rss_mib_before,
            b.rss_mib_peak,
            b.rss_mib_floor,
            b.rss_mib_high_water
        ));
    }
    md
}

/// The drills' clients' user in account APP.
const USER: &str = "drill";
const PASSWORD: &str = "drill-secret";

/// Accounts mode (the lease needs a system user): clients are `USER` in
/// APP (clients without credentials are refused on a LAN address).
/// A previous build as the report names it: `the build at <rev>` for
/// scripts/build-previous's `target/previous/<rev>/natsmeshd`, else its path.
fn build_name(path: &std::path::Path) -> String {
    let rev = path.parent().filter(|d| {
        d.parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "previous")
    });
    match rev.and_then(|d| d.file_name()) {
        Some(rev) => format!("the build at {}", rev.to_string_lossy()),
        None => path.display().to_string(),
    }
}

fn accounts() -> String {
    // The lowest cost: thirty clients reconnecting at once must not queue
    // behind bcrypt.
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    format!(
        r#"
[auth]
mode = "accounts"

[accounts.APP]
jetstream = true

[[accounts.APP.users]]
name = "{USER}"
password_hash = "{hash}"
"#
    )
}

/// Three regions of three nodes in namespaces on LAN `index`, all joined;
/// every node's broker is `version`. `prepare` adjusts the mesh before the
/// nodes start.
fn supercluster(index: u8, version: &str, prepare: impl FnOnce(&mut Mesh)) -> (Mesh, Start) {
    let run = natsmesh_harness::provenance::Provenance::now(Vec::new());
    let mut mesh = Mesh::in_namespaces(&REGIONS, index, &LATENCY);
    mesh.log_level = Some("info,natsmesh=debug".into());
    mesh.extra.push_str(&accounts());
    // TLS as a cloud node runs it: certificates issued from each region's
    // intermediate, required on routes, gateways and client ports.
    mesh.secure(&REGIONS);
    if let Some(root) = mesh.root_ca() {
        let _ = ROOT.set(root);
    }
    prepare(&mut mesh);
    for r in REGIONS {
        for n in 1..=r.nodes {
            mesh.start_node_with(r, n, version);
        }
    }
    for r in REGIONS {
        mesh.wait_joined(r, &others(r));
    }
    // Every link is TLS, as on a cloud node.
    for r in REGIONS {
        let name = format!("{}-n1", r.name);
        let v = mesh.node(&name).monitor("/varz").unwrap();
        for (what, required) in [
            ("clients", &v["tls_required"]),
            ("routes", &v["cluster"]["tls_required"]),
            ("gateways", &v["gateway"]["tls_required"]),
        ] {
            assert_eq!(*required, true, "{name}: {what} without TLS: {v}");
        }
    }
    let rtts = check_rtts(&mut mesh);
    let mut settings = node_settings(&mesh.node("nyc3-n1").config_path());
    settings.insert(
        "client.reconnect_wait".into(),
        humantime::format_duration(RECONNECT_WAIT).to_string(),
    );
    let brokers = broker_versions(mesh.nodes.values());
    let start = Start {
        rtts,
        run,
        brokers,
        settings,
    };
    (mesh, start)
}

fn others(r: Region) -> Vec<Region> {
    REGIONS.into_iter().filter(|o| o.name != r.name).collect()
}

/// Each region's gateways measure the round trip the proxies inject
/// (twice the one-way delay into the remote region), within noise. A
/// gateway measures as it connects and at every PING (at most 15 s apart
/// for gateways in nats-server), so on a machine busy with other work one
/// late PONG inflates a node's figure until its next: the check takes the
/// lowest figure any of the region's servers showed, sampling for up to
/// 45 s until each link's is within noise (every figure must be at least
/// the injected delay, or the proxy is not in the way).
fn check_rtts(mesh: &mut Mesh) -> Vec<GatewayRtt> {
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut lowest = std::collections::BTreeMap::<(&str, &str), (Duration, String)>::new();
    let within = |lowest: &std::collections::BTreeMap<(&str, &str), (Duration, String)>,
                  mesh: &Mesh| {
        REGIONS.iter().all(|r| {
            others(*r).iter().all(|o| {
                lowest
                    .get(&(r.name, o.name))
                    .is_some_and(|(m, _)| *m <= mesh.latency(*o) * 2 + Duration::from_millis(40))
            })
        })
    };
    loop {
        for r in REGIONS {
            for n in 1..=r.nodes {
                let name = format!("{}-n{n}", r.name);
                let rtts = mesh.gateway_rtts(&name);
                for o in others(r) {
                    let Some(measured) = rtts.get(o.name).copied() else {
                        continue;
                    };
                    let injected = mesh.latency(o) * 2;
                    assert!(
                        measured >= injected,
                        "{name} → {}: RTT {measured:?} under the injected {injected:?}",
                        o.name
                    );
                    let key = (r.name, o.name);
                    if lowest.get(&key).is_none_or(|(l, _)| measured < *l) {
                        lowest.insert(key, (measured, name.clone()));
                    }
                }
            }
        }
        if within(&lowest, mesh) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway RTTs over the injected delays + 40 ms for 45 s (lowest seen): {lowest:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut found = Vec::new();
    for r in REGIONS {
        for o in others(r) {
            let (measured, _) = &lowest[&(r.name, o.name)];
            found.push(GatewayRtt {
                from: r.name.into(),
                to: o.name.into(),
                injected_ms: ms(mesh.latency(o) * 2),
                measured_ms: measured.as_secs_f64() * 1000.0,
            });
        }
    }
    found
}

/// Core messages as the subscriber saw their sequence numbers (the
/// publisher numbers them 0, 1, 2, …): a number skipped is a message
/// lost on the way (core delivery is at most once).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct CoreSeq {
    /// The number expected next.
    next: Option<u64>,
    received: u64,
    /// Numbers skipped.
    lost: u64,
    /// Numbers lower than expected (repeated or late).
    reordered: u64,
}

impl CoreSeq {
    fn saw(&mut self, seq: u64) {
        self.received += 1;
        match self.next {
            Some(next) if seq < next => self.reordered += 1,
            Some(next) => {
                self.lost += seq - next;
                self.next = Some(seq + 1);
            }
            None => self.next = Some(seq + 1),
        }
    }

    /// Forgets the counts, not where the sequence is.
    fn reset(&mut self) {
        *self = Self {
            next: self.next,
            ..Self::default()
        };
    }
}

/// Client load for a drill: an acknowledged publisher per region's R3
/// stream (EU in fra1, US in nyc3, AP in sgp1), two core flows to a
/// subscriber first connected to the watched region (one from fra1, one
/// from another server of the watched region), and 30 clients first
/// connected to the watched region's servers (their reconnects are
/// measured).
struct Load {
    rt: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    /// Acked so far, per stream.
    progress: [Arc<AtomicU64>; 3],
    reconnects: Arc<Mutex<Vec<Duration>>>,
    /// The drill's own process's stalls.
    stalls: Stalls,
    /// Core messages from fra1 (between regions, through a gateway).
    core: CoreFlow,
    /// Core messages from the watched region's third server to the
    /// subscriber, first on its first (within the region, over a route).
    local: CoreFlow,
    /// Requests answered and failed.
    requests: [Arc<AtomicU64>; 2],
    publishers: Vec<tokio::task::JoinHandle<(u64, u64, jetstream::Context)>>,
    /// The watched region's clients, in order (the subscriber first), and
    /// the other regions in the order each one's server list names them.
    watchers: Vec<(async_nats::Client, Vec<String>)>,
}

const STREAMS: [(&str, &str); 3] = [("EU", "fra1"), ("US", "nyc3"), ("AP", "sgp1")];

/// A core gap this long is recorded with what the clients were on.
const GAP_WITNESSED: Duration = Duration::from_millis(500);

/// One core flow: messages numbered 0, 1, 2, … published every 10 ms by
/// one client and received by another, its gaps and its sequence numbers.
#[derive(Clone)]
struct CoreFlow {
    /// The longest gap so far, and when the last message came.
    gap: Arc<std::sync::Mutex<(Duration, Instant)>>,
    /// The longest gap less the time the drill's own process stalled
    /// within it (see [`Stalls`]).
    net: Arc<std::sync::Mutex<Duration>>,
    stalls: Stalls,
    /// Every gap over [`GAP_WITNESSED`]: when it ended, how long, and the
    /// servers of the subscriber and of the publisher then.
    gaps: Arc<std::sync::Mutex<Vec<CoreGap>>>,
    /// The sequence numbers as received.
    seq: Arc<std::sync::Mutex<CoreSeq>>,
    /// Publishes the publishing client refused.
    unsent: Arc<AtomicU64>,
    /// The publisher's server as of each publish, and since when.
    publisher_on: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
}

/// When the drill's own process did not run its clients on time: a task
/// of the load's runtime asks to wake every 10 ms and records each wake-up
/// later than [`STALL_RECORDED`] (the machine's cores are shared with other
/// work). A core gap the drill's own publisher and subscriber caused by not
/// running is so told from one the servers caused.
#[derive(Clone, Default)]
struct Stalls(Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>);

/// A wake-up this late is a stall of the drill's own process.
const STALL_RECORDED: Duration = Duration::from_millis(50);

impl Stalls {
    /// Watches the runtime it is called in until `stop`.
    fn watch(&self, stop: Arc<AtomicBool>) {
        let stalls = self.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let due = Instant::now() + Duration::from_millis(10);
                tokio::time::sleep_until(due.into()).await;
                let woke = Instant::now();
                stalls.record(due, woke);
            }
        });
    }

    /// A wake-up due at `due` came at `woke`.
    fn record(&self, due: Instant, woke: Instant) {
        if woke.saturating_duration_since(due) > STALL_RECORDED {
            self.0.lock().unwrap().push((due, woke));
        }
    }

    /// How much of `from..to` the drill's process spent stalled.
    fn within(&self, from: Instant, to: Instant) -> Duration {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(a, b)| (*b).min(to).saturating_duration_since((*a).max(from)))
            .sum()
    }

    /// The longest stall, the stalls' total and their count.
    fn summary(&self) -> DrillStalls {
        let s = self.0.lock().unwrap();
        let lengths = s.iter().map(|(a, b)| b.saturating_duration_since(*a));
        DrillStalls {
            count: s.len(),
            longest_ms: lengths.clone().max().map_or(0, ms),
            total_ms: ms(lengths.sum()),
        }
    }

    fn reset(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// The drill's own process's stalls over [`STALL_RECORDED`], after the
/// warm-up.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct DrillStalls {
    count: usize,
    longest_ms: u64,
    total_ms: u64,
}

impl CoreFlow {
    fn new(stalls: &Stalls) -> Self {
        Self {
            gap: Arc::new(std::sync::Mutex::new((Duration::ZERO, Instant::now()))),
            net: Arc::default(),
            stalls: stalls.clone(),
            gaps: Arc::default(),
            seq: Arc::default(),
            unsent: Arc::default(),
            publisher_on: Arc::default(),
        }
    }

    /// Receives `subject` at `c` (subscribed before this returns) until
    /// `stop`, timing each gap. Within the load's runtime.
    async fn receive(&self, c: async_nats::Client, subject: &'static str, stop: Arc<AtomicBool>) {
        let mut sub = c.subscribe(subject).await.unwrap();
        c.flush().await.unwrap();
        let flow = self.clone();
        tokio::spawn(async move {
            let mut on = c.server_info().server_name;
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(120), sub.next()).await
            {
                let now_on = c.server_info().server_name;
                let last = flow.gap.lock().unwrap().1;
                let since = last.elapsed();
                let stalled = flow.stalls.within(last, Instant::now());
                {
                    let mut net = flow.net.lock().unwrap();
                    *net = (*net).max(since.saturating_sub(stalled));
                }
                if since > GAP_WITNESSED {
                    let started = Instant::now() - since;
                    let switches = flow.publisher_on.lock().unwrap();
                    let at = |t: Instant| {
                        switches
                            .iter()
                            .rev()
                            .find(|(from, _)| *from <= t)
                            .map_or_else(String::new, |(_, n)| n.clone())
                    };
                    flow.gaps.lock().unwrap().push(CoreGap {
                        ended: Instant::now(),
                        length: since,
                        subscriber: (on.clone(), now_on.clone()),
                        publisher: (at(started), at(Instant::now())),
                        stalled,
                    });
                }
                on = now_on;
                if let Some(n) = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|p| p.parse().ok())
                {
                    flow.seq.lock().unwrap().saw(n);
                }
                let mut g = flow.gap.lock().unwrap();
                let since = g.1.elapsed();
                g.1 = Instant::now();
                if since > g.0 {
                    g.0 = since;
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            drop(c);
        });
    }

    /// Publishes the numbered messages to `subject` from `c` every 10 ms
    /// until `stop`. Within the load's runtime.
    fn publish(&self, c: async_nats::Client, subject: &'static str, stop: Arc<AtomicBool>) {
        let flow = self.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = c.server_info().server_name;
                {
                    let mut on = flow.publisher_on.lock().unwrap();
                    if on.last().is_none_or(|(_, n)| *n != name) {
                        on.push((Instant::now(), name));
                    }
                }
                if c.publish(subject, seq.to_string().into()).await.is_err() {
                    flow.unsent.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    /// Forgets the gaps and counts of the warm-up.
    fn reset(&self) {
        self.gap.lock().unwrap().0 = Duration::ZERO;
        *self.net.lock().unwrap() = Duration::ZERO;
        self.gaps.lock().unwrap().clear();
        self.seq.lock().unwrap().reset();
        self.unsent.store(0, Ordering::Relaxed);
    }

    /// The longest gap, the longest less the drill's own stalls, and the
    /// count since the warm-up.
    fn counted(&self) -> (u64, u64, CoreCount) {
        let seq = *self.seq.lock().unwrap();
        (
            ms(self.gap.lock().unwrap().0),
            ms(*self.net.lock().unwrap()),
            CoreCount {
                received: seq.received,
                lost: seq.lost,
                reordered: seq.reordered,
                unsent: self.unsent.load(Ordering::Relaxed),
            },
        )
    }
}

/// One core gap over [`GAP_WITNESSED`], to tell its cause.
#[derive(Debug, Clone)]
struct CoreGap {
    ended: Instant,
    length: Duration,
    /// The subscriber's server before the gap → after it.
    subscriber: (String, String),
    /// The core publisher's server at the gap's start → at its end.
    publisher: (String, String),
    /// How long the drill's own process stalled within it.
    stalled: Duration,
}

impl Load {
    fn start(mesh: &mut Mesh, watched: Region) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let publisher_servers: Vec<Vec<ServerAddr>> = STREAMS
            .iter()
            .map(|(_, region)| servers(mesh, &format!("{region}-n1")))
            .collect();
        // Every other client lists the other regions the other way round,
        // so that where they go when their region is gone shows what
        // decides it.
        let watcher_servers: Vec<Vec<ServerAddr>> = (0..30)
            .map(|i| {
                servers_listing(
                    mesh,
                    &format!("{}-n{}", watched.name, i % 3 + 1),
                    i % 2 == 1,
                )
            })
            .collect();
        let core_from = servers(mesh, "fra1-n2");
        let local_from = servers(mesh, &format!("{}-n3", watched.name));
        let requester_servers = servers(mesh, &format!("{}-n2", watched.name));
        let requests: [Arc<AtomicU64>; 2] = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let progress: [Arc<AtomicU64>; 3] = Default::default();
        let reconnects: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let stalls = Stalls::default();
        let (core_flow, local_flow) = (CoreFlow::new(&stalls), CoreFlow::new(&stalls));

        let (publishers, watchers) = rt.block_on(async {
            let admin = client(core_from.clone(), None).await;
            let js = jetstream::new(admin);
            for (name, region) in STREAMS {
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
                        Err(e) => {
                            assert!(tokio::time::Instant::now() < deadline, "stream {name}: {e}")
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            let mut publishers = Vec::new();
            let mut watchers = Vec::new();
            for (((name, _), servers), acked) in
                STREAMS.iter().zip(publisher_servers).zip(&progress)
            {
                let js = jetstream::new(client(servers, None).await);
                publishers.push(tokio::spawn(publisher(
                    js,
                    name,
                    stop.clone(),
                    acked.clone(),
                )));
            }
            for (i, servers) in watcher_servers.into_iter().enumerate() {
                let c = client(servers, Some(reconnects.clone())).await;
                watchers.push((c.clone(), far_regions(watched.name, i % 2 == 1)));
                if i == 0 {
                    core_flow
                        .receive(c.clone(), "drill.core", stop.clone())
                        .await;
                    local_flow
                        .receive(c.clone(), "drill.local", stop.clone())
                        .await;
                }
            }
            // Request/reply: a responder in fra1, a requester first
            // connected to the watched region.
            let responder = client(core_from.clone(), None).await;
            let mut service = responder.subscribe("drill.echo").await.unwrap();
            responder.flush().await.unwrap();
            tokio::spawn(async move {
                while let Some(m) = service.next().await {
                    if let Some(reply) = m.reply {
                        let _ = responder.publish(reply, m.payload).await;
                    }
                }
            });
            let requester = client(requester_servers, None).await;
            let (answered, failed) = (requests[0].clone(), requests[1].clone());
            let stop3 = stop.clone();
            tokio::spawn(async move {
                while !stop3.load(Ordering::Relaxed) {
                    let asked = tokio::time::timeout(
                        Duration::from_secs(2),
                        requester.request("drill.echo", "ping".into()),
                    )
                    .await;
                    if matches!(asked, Ok(Ok(_))) {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            stalls.watch(stop.clone());
            core_flow.publish(client(core_from, None).await, "drill.core", stop.clone());
            local_flow.publish(client(local_from, None).await, "drill.local", stop.clone());
            (publishers, watchers)
        });
        Self {
            rt,
            stop,
            progress,
            reconnects,
            stalls,
            core: core_flow,
            local: local_flow,
            requests,
            publishers,
            watchers,
        }
    }

    /// Where each watched client is now: its server and that server's
    /// region (cluster), as the client's INFO says.
    fn where_watchers(&self) -> Vec<Orphan> {
        self.watchers
            .iter()
            .enumerate()
            .map(|(i, (c, listed))| {
                let info = c.server_info();
                Orphan {
                    client: i,
                    listed: listed.clone(),
                    region: info
                        .cluster
                        .clone()
                        .unwrap_or_else(|| info.server_name.chars().take(4).collect()),
                    server: info.server_name,
                }
            })
            .collect()
    }

    /// Forgets the gaps and reconnects of the warm-up.
    fn reset(&self) {
        self.core.reset();
        self.local.reset();
        self.stalls.reset();
        self.rt
            .block_on(async { self.reconnects.lock().await.clear() });
    }

    /// Waits until stream `i` takes a publish it had not taken now.
    fn wait_progress(&self, i: usize, timeout: Duration) {
        let p = &self.progress[i];
        let at = p.load(Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        while p.load(Ordering::Relaxed) <= at {
            assert!(
                Instant::now() < deadline,
                "stream {} took no publish within {timeout:?}",
                STREAMS[i].0
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a core message reaches the subscriber after `since`.
    fn wait_core_after(&self, since: Instant, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.core.gap.lock().unwrap().1 <= since {
            assert!(
                Instant::now() < deadline,
                "no core message crossed within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The gaps over [`GAP_WITNESSED`] since the warm-up: between regions,
    /// within the watched region.
    fn core_gaps(&self) -> (Vec<CoreGap>, Vec<CoreGap>) {
        (
            self.core.gaps.lock().unwrap().clone(),
            self.local.gaps.lock().unwrap().clone(),
        )
    }

    /// Stops the load and counts: every acked message present, the gap,
    /// the reconnects.
    fn finish(self, report: &mut Report) {
        self.stop.store(true, Ordering::Relaxed);
        (
            report.longest_core_gap_ms,
            report.core_gap_net_ms,
            report.core,
        ) = self.core.counted();
        let (gap, net, count) = self.local.counted();
        report.longest_core_gap_in_region_ms = Some(gap);
        report.core_gap_in_region_net_ms = Some(net);
        report.core_in_region = Some(count);
        report.drill_stalls = Some(self.stalls.summary());
        report.requests = (
            self.requests[0].load(Ordering::Relaxed),
            self.requests[1].load(Ordering::Relaxed),
        );
        self.rt.block_on(async {
            for ((name, region), p) in STREAMS.iter().zip(self.publishers) {
                let (acked, failed, js) = tokio::time::timeout(Duration::from_secs(30), p)
                    .await
                    .unwrap_or_else(|_| panic!("publisher {name} did not finish"))
                    .unwrap();
                report.acked_lost += lost(&js, name, acked).await;
                report.acked.push((format!("{name} in {region}"), acked));
                report.retried.push((format!("{name} in {region}"), failed));
            }
            let r = self.reconnects.lock().await;
            report.reconnects = r.len();
            report.reconnect_p50_ms = percentile(&r, 0.5).map(ms);
            report.reconnect_p99_ms = percentile(&r, 0.99).map(ms);
        });
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

/// A drill's report, its provenance filled in (the brokers at the end
/// asked now).
fn report(
    drill: &'static str,
    scenario: String,
    planned: bool,
    start: Start,
    mesh: &Mesh,
) -> Report {
    new_report(
        drill,
        scenario,
        planned,
        start,
        broker_versions(mesh.nodes.values()),
    )
}

fn new_report(
    drill: &'static str,
    scenario: String,
    planned: bool,
    start: Start,
    brokers_at_end: Vec<String>,
) -> Report {
    Report {
        drill,
        provenance: Provenance {
            run: start.run,
            brokers_at_start: start.brokers,
            brokers_at_end,
        },
        settings: start.settings,
        scenario,
        planned,
        acked_lost: 0,
        acked: Vec::new(),
        retried: Vec::new(),
        longest_core_gap_ms: 0,
        core: CoreCount::default(),
        longest_core_gap_in_region_ms: None,
        core_in_region: None,
        core_gap_net_ms: 0,
        core_gap_in_region_net_ms: None,
        drill_stalls: None,
        gateway_reconnects: None,
        requests: (0, 0),
        reconnects: 0,
        reconnect_p50_ms: None,
        reconnect_p99_ms: None,
        lb_failed_connections: None,
        lost_outside_power_loss: None,
        converge_ms: 0,
        facts: Vec::new(),
        orphans: None,
        client_scaling: None,
        gateway_rtt: start.rtts,
        targets: Vec::new(),
    }
}

/// What every drill must show: every target of [`TARGETS`] that applies
/// met (judged into the report before it is written, so a miss is in the
/// result file too), every stream took publishes, a request answered.
fn check(report: &mut Report) {
    report.targets = TARGETS
        .iter()
        .filter(|t| t.applies(report))
        .map(|t| t.judge(report))
        .collect();
    let dir = std::env::var_os("NATSMESH_DRILL_OUT").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/drills"),
        PathBuf::from,
    );
    let file = write_report(report, &dir);
    let missed: Vec<String> = report
        .targets
        .iter()
        .filter(|t| !t.pass)
        .map(|t| {
            format!(
                "target {} missed: measured {}",
                t.target,
                t.measured
                    .map_or("nothing".to_owned(), |m| format!("{m} {}", t.unit)
                        .trim_end()
                        .to_owned())
            )
        })
        .collect();
    assert!(
        missed.is_empty(),
        "{}: {} (see {})",
        report.drill,
        missed.join("; "),
        file.display()
    );
    assert!(
        report.acked.iter().all(|(_, n)| *n > 0),
        "a stream took nothing: {report:?}"
    );
    assert!(report.requests.0 > 0, "no request answered: {report:?}");
}

/// Every node of every region routed to its region and linked to the
/// others.
fn wait_all_joined(mesh: &mut Mesh) {
    for r in REGIONS {
        mesh.wait_joined(r, &others(r));
    }
}

#[test]
fn a_whole_region_lost_and_returned_loses_no_acknowledged_message() {
    let loss = env_secs("NATSMESH_DRILL_LOSS_SECS", 10);
    let warm = env_secs("NATSMESH_DRILL_LOAD_SECS", 3);
    let (mut mesh, start) = supercluster(31, CURRENT, |_| {});
    let load = Load::start(&mut mesh, NYC3);
    std::thread::sleep(warm);
    load.reset();
    for n in 1..=3 {
        mesh.kill(NYC3, n);
    }
    std::thread::sleep(loss);
    // Where nyc3's clients went while it was gone.
    let went = load.where_watchers();
    let returned = Instant::now();
    for n in 1..=3 {
        mesh.revive(NYC3, n);
    }
    mesh.wait_joined(NYC3, &[FRA1, SGP1]);
    // Converged: nyc3's stream takes publishes again.
    load.wait_progress(1, Duration::from_secs(120));
    let converge = returned.elapsed();
    std::thread::sleep(warm);

    let mut r = report(
        "region-lost",
        format!(
            "nyc3 killed (SIGKILL to its three natsmeshd; their brokers follow) for {} s, then returned on its old state.",
            loss.as_secs()
        ),
        false,
        start,
        &mesh,
    );
    r.converge_ms = ms(converge);
    let o = orphans(NYC3.name, went, &r.gateway_rtt);
    r.facts.push((
        "where nyc3's clients went".into(),
        format!(
            "{} (closest by gateway round trip: {}, {} of {} went there; {} went to the first other region their server list names)",
            o.went_to
                .iter()
                .map(|w| format!(
                    "{} {} (round trip {} ms injected, {} measured)",
                    w.region,
                    w.clients,
                    w.rtt_injected_ms,
                    w.rtt_measured_ms
                        .map_or("–".to_owned(), |m| format!("{m:.1} ms"))
                ))
                .collect::<Vec<_>>()
                .join(", "),
            o.closest,
            o.to_closest,
            o.clients.len(),
            o.to_first_listed,
        ),
    ));
    let stranded: Vec<&Orphan> = o.clients.iter().filter(|c| c.region == NYC3.name).collect();
    assert!(
        stranded.is_empty(),
        "still on nyc3 while it was gone: {stranded:?}"
    );
    r.orphans = Some(o);
    r.settings
        .insert("drill.loss".into(), format!("{}s", loss.as_secs()));
    r.settings
        .insert("drill.load".into(), format!("{}s", warm.as_secs()));
    load.finish(&mut r);
    check(&mut r);
    // The lost region's clients reconnected elsewhere while it was gone,
    // and its stream was unavailable meanwhile (the drill took it away).
    assert!(r.reconnects >= 30, "{r:?}");
    assert!(r.retried[1].1 > 0, "{r:?}");
}

#[test]
fn a_flapping_region_loses_nothing_and_heals() {
    let flaps = env_secs("NATSMESH_DRILL_FLAPS", 3).as_secs();
    let cut = env_secs("NATSMESH_DRILL_CUT_SECS", 4);
    let warm = env_secs("NATSMESH_DRILL_LOAD_SECS", 3);
    let (mut mesh, start) = supercluster(32, CURRENT, |_| {});
    let load = Load::start(&mut mesh, NYC3);
    std::thread::sleep(warm);
    load.reset();
    let gateways = GatewayWatch::start(&mesh);
    let mut healed = Instant::now();
    for _ in 0..flaps {
        mesh.cut(NYC3);
        std::thread::sleep(cut);
        mesh.heal(NYC3);
        healed = Instant::now();
        std::thread::sleep(cut);
    }
    // Converged: core messages cross into nyc3 again and every gateway is
    // up.
    load.wait_core_after(healed, Duration::from_secs(120));
    wait_all_joined(&mut mesh);
    let converge = healed.elapsed();
    std::thread::sleep(warm);
    let gateway_reconnects = gateways.finish();

    let mut r = report(
        "region-flapping",
        format!(
            "nyc3's links to the other regions cut (nftables drops every packet to and from the gateway proxies in nyc3's namespaces) for {} s and restored for {} s, {flaps} times; clients and nyc3's own routes untouched.",
            cut.as_secs(),
            cut.as_secs()
        ),
        false,
        start,
        &mesh,
    );
    r.converge_ms = ms(converge);
    // The watch saw every node's outbound gateways to both other regions
    // (else its zero would mean nothing).
    assert_eq!(
        gateway_reconnects.at_start.0,
        u64::try_from(REGIONS.len() * 3 * (REGIONS.len() - 1)).unwrap(),
        "{gateway_reconnects:?}"
    );
    assert!(gateway_reconnects.at_start.1 > 0, "{gateway_reconnects:?}");
    r.gateway_reconnects = Some(gateway_reconnects);
    r.settings.insert("drill.flaps".into(), flaps.to_string());
    r.settings
        .insert("drill.cut".into(), format!("{}s", cut.as_secs()));
    r.settings
        .insert("drill.load".into(), format!("{}s", warm.as_secs()));
    load.finish(&mut r);
    check(&mut r);
    // The cuts took effect: core messages from fra1 stopped reaching nyc3.
    assert!(
        r.longest_core_gap_ms >= ms(cut) / 2,
        "no gap while the links were cut: {r:?}"
    );
}

/// Watches every node's `/gatewayz` (every 250 ms) for gateway
/// connections that were not there at the start.
struct GatewayWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<GatewayReconnects>,
}

/// One sample of a node's gateways: `(direction, remote region, cid)`,
/// direction `→` outbound, `←` inbound.
fn gateway_cids(gatewayz: &serde_json::Value) -> Vec<(char, String, u64)> {
    let mut out = Vec::new();
    if let Some(o) = gatewayz["outbound_gateways"].as_object() {
        for (region, g) in o {
            if let Some(cid) = g["connection"]["cid"].as_u64() {
                out.push(('→', region.clone(), cid));
            }
        }
    }
    if let Some(i) = gatewayz["inbound_gateways"].as_object() {
        for (region, conns) in i {
            for g in conns.as_array().into_iter().flatten() {
                if let Some(cid) = g["connection"]["cid"].as_u64() {
                    out.push(('←', region.clone(), cid));
                }
            }
        }
    }
    out
}

/// Counts connection ids first seen after the first sample of a node.
#[derive(Default)]
struct CidTally {
    at_start: (u64, u64),
    seen: std::collections::BTreeMap<String, std::collections::BTreeSet<(char, String, u64)>>,
    new: std::collections::BTreeMap<(String, char, String), u64>,
}

impl CidTally {
    fn sample(&mut self, node: &str, cids: Vec<(char, String, u64)>) {
        match self.seen.get_mut(node) {
            None => {
                for c in &cids {
                    if c.0 == '→' {
                        self.at_start.0 += 1;
                    } else {
                        self.at_start.1 += 1;
                    }
                }
                self.seen
                    .insert(node.to_owned(), cids.into_iter().collect());
            }
            Some(seen) => {
                for c in cids {
                    if seen.insert(c.clone()) {
                        *self.new.entry((node.to_owned(), c.0, c.1)).or_default() += 1;
                    }
                }
            }
        }
    }

    fn result(self, samples: u64) -> GatewayReconnects {
        let mut r = GatewayReconnects {
            samples,
            at_start: self.at_start,
            ..GatewayReconnects::default()
        };
        for ((node, dir, region), n) in self.new {
            if dir == '→' {
                r.outbound += n;
            } else {
                r.inbound += n;
            }
            r.links.push((format!("{node} {dir} {region}"), n));
        }
        r
    }
}

impl GatewayWatch {
    fn start(mesh: &Mesh) -> Self {
        let urls: Vec<(String, String)> = mesh
            .nodes
            .iter()
            .map(|(n, d)| {
                (
                    n.clone(),
                    format!("http://{}:{}/gatewayz", d.host, d.monitor_port),
                )
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(1)))
                .build()
                .into();
            let mut tally = CidTally::default();
            let mut samples = 0;
            while !stop2.load(Ordering::Relaxed) {
                for (node, url) in &urls {
                    let v = agent
                        .get(url)
                        .call()
                        .ok()
                        .and_then(|mut r| r.body_mut().read_to_string().ok())
                        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
                    if let Some(v) = v {
                        tally.sample(node, gateway_cids(&v));
                    }
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            tally.result(samples)
        });
        Self { stop, thread }
    }

    fn finish(self) -> GatewayReconnects {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A user connecting through a balancer, again and again: each attempt a
/// new TCP connection that must see the server's INFO and answer a PING
/// after CONNECT, within 2 s each. Every 100 ms until stopped (at most
/// 10 000 attempts).
struct LbProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Seen>,
}

/// What a user connecting through the balancer saw.
struct Seen {
    /// The region behind the balancer: only its servers' reloads explain
    /// a refusal.
    region: &'static str,
    ok: u64,
    /// Every failed attempt: when it failed, and what the client saw.
    failures: Vec<(std::time::SystemTime, String)>,
}

/// Which of `failures` nats-server's reload race explains (see
/// `auth::nats_server_refuses_a_connect_that_races_a_reload_when_accounts_are_configured`):
/// refused as an authorization violation within 2 s after (or 1 s before)
/// a server in `logs` (natsmeshd's, which carry their broker's lines)
/// logged "Reloaded: authorization users". The race may also close a
/// connection unanswered, but so does a server going away, which is the
/// balancer's to prevent: such a failure always counts. Indexes into
/// `failures`.
fn reload_races(failures: &[(std::time::SystemTime, String)], logs: &[String]) -> Vec<usize> {
    let reloads: Vec<std::time::SystemTime> = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("Reloaded: authorization users"))
        .filter_map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        })
        .collect();
    let near = |at: std::time::SystemTime, reload: std::time::SystemTime| {
        at.duration_since(reload)
            .map(|after| after <= Duration::from_secs(2))
            .unwrap_or_else(|before| before.duration() <= Duration::from_secs(1))
    };
    failures
        .iter()
        .enumerate()
        .filter(|(_, (at, why))| {
            why.contains("Authorization Violation") && reloads.iter().any(|r| near(*at, *r))
        })
        .map(|(i, _)| i)
        .collect()
}

impl Seen {
    /// Into the report: the failed connections, and the balancer's model.
    /// Refusals that nats-server's reload race explains are counted apart
    /// (the balancer sent the client to a serving server); `departed`:
    /// nodes of the balancer's region no longer in `mesh` whose logs
    /// still count.
    fn record(&self, mesh: &Mesh, departed: &[&common::Daemon], r: &mut Report) {
        let prefix = format!("{}-", self.region);
        let logs: Vec<String> = mesh
            .nodes
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(_, d)| d)
            .chain(departed.iter().copied())
            .map(common::Daemon::log)
            .collect();
        let raced = reload_races(&self.failures, &logs);
        let stamp = |(at, why): &(std::time::SystemTime, String)| {
            format!("{} {why}", humantime::format_rfc3339_millis(*at))
        };
        let failed: Vec<String> = self
            .failures
            .iter()
            .enumerate()
            .filter(|(i, _)| !raced.contains(i))
            .map(|(_, f)| stamp(f))
            .collect();
        r.lb_failed_connections = Some(failed.len() as u64);
        r.facts.push(("balancer".into(), balancer_model(mesh)));
        let m = mesh.balancer().pool().model();
        for (k, v) in [
            (
                "check_interval",
                humantime::format_duration(m.check_interval),
            ),
            (
                "response_timeout",
                humantime::format_duration(m.response_timeout),
            ),
            ("propagation", humantime::format_duration(m.propagation)),
        ] {
            r.settings
                .insert(format!("fake_balancer.{k}"), v.to_string());
        }
        r.settings.insert(
            "fake_balancer.healthy_threshold".into(),
            m.healthy_threshold.to_string(),
        );
        r.settings.insert(
            "fake_balancer.unhealthy_threshold".into(),
            m.unhealthy_threshold.to_string(),
        );
        let first = if failed.is_empty() {
            String::new()
        } else {
            format!(
                "; first: {}",
                failed
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        let total = self.ok + self.failures.len() as u64;
        r.facts.push((
            "connections through the balancer".into(),
            format!("{total} ({} failed{first})", failed.len()),
        ));
        if !raced.is_empty() {
            let raced: Vec<String> = raced.iter().map(|&i| stamp(&self.failures[i])).collect();
            r.facts.push((
                "refused by nats-server as it reloaded (its race with configured accounts; not the balancer's, and not counted above)".into(),
                format!("{}: {}", raced.len(), raced.join("; ")),
            ));
        }
    }
}

impl LbProbe {
    /// Through `frontend`, to region `r`'s servers.
    fn start(frontend: std::net::SocketAddr, r: Region) -> Self {
        // Built once: every attempt trusts the same root and name.
        let tls = ROOT
            .get()
            .map(|root| UserTls::new(root, &format!("{}.{}", r.name, common::mesh::DOMAIN)));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failures) = (0u64, Vec::new());
            for _ in 0..10_000 {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                match nats_handshake(frontend, tls.as_ref(), Duration::from_secs(2)) {
                    Ok(()) => ok += 1,
                    Err(e) => failures.push((std::time::SystemTime::now(), e)),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Seen {
                region: r.name,
                ok,
                failures,
            }
        });
        Self { stop, thread }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// One client connection: INFO, TLS when the server requires it (the
/// certificate checked for `tls`'s name), then CONNECT with the drill's
/// user and PING answered by PONG; connecting and each read and write
/// bounded by `limit`.
fn nats_handshake(
    to: std::net::SocketAddr,
    tls: Option<&UserTls>,
    limit: Duration,
) -> Result<(), String> {
    use std::io::Read as _;
    let mut stream =
        std::net::TcpStream::connect_timeout(&to, limit).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.set_write_timeout(Some(limit)).unwrap();
    // Byte by byte: nothing after INFO may be read before TLS starts.
    let mut info = Vec::new();
    let mut byte = [0u8; 1];
    while info.last() != Some(&b'\n') && info.len() < 64 * 1024 {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "closed in INFO: {:?}",
                    String::from_utf8_lossy(&info)
                ));
            }
            Ok(_) => info.push(byte[0]),
            Err(e) => return Err(format!("INFO: {e}")),
        }
    }
    let info = String::from_utf8_lossy(&info);
    if !info.starts_with("INFO ") {
        return Err(format!("no INFO: {info:?}"));
    }
    if !info.contains("\"tls_required\":true") {
        return converse(&mut stream);
    }
    let tls = tls.ok_or("TLS required, but no root to trust")?;
    let conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
        .map_err(|e| format!("TLS: {e}"))?;
    converse(&mut rustls::StreamOwned::new(conn, stream))
}

/// A NATS client's TLS: the drill's root trusted, the name it dialled
/// expected in the server's certificate.
struct UserTls {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl UserTls {
    fn new(root: &std::path::Path, name: &str) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(root).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            config: Arc::new(config),
            name: rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
        }
    }
}

/// CONNECT and PING, answered by PONG.
fn converse(stream: &mut (impl std::io::Read + std::io::Write)) -> Result<(), String> {
    use std::io::BufRead as _;
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"user\":\"{USER}\",\"pass\":\"{PASSWORD}\",\"lang\":\"drill\",\"version\":\"0\",\"protocol\":1}}\r\nPING\r\n"
    );
    stream
        .write_all(connect.as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    stream.flush().map_err(|e| format!("CONNECT: {e}"))?;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("PONG: {e}"))?;
        if n == 0 {
            return Err("closed before PONG".into());
        }
        if line.starts_with("PONG") {
            return Ok(());
        }
        if line.starts_with("-ERR") {
            return Err(line.trim().to_owned());
        }
    }
}

/// Waits until the balancer sends new connections to `count` droplets.
fn wait_in_service(mesh: &Mesh, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while mesh.balancer().in_service().len() != count {
        assert!(
            Instant::now() < deadline,
            "balancer: {:?} in service, want {count}",
            mesh.balancer().in_service()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the balancer fake models, for the reports.
fn balancer_model(mesh: &Mesh) -> String {
    let m = mesh.balancer().pool().model();
    format!(
        "nyc3 behind a DigitalOcean Load Balancer (fake): health check every {:?}, {} successes in, {} failures out, {:?} timeout, changes take effect after {:?}",
        m.check_interval,
        m.healthy_threshold,
        m.unhealthy_threshold,
        m.response_timeout,
        m.propagation
    )
}

/// The JetStream meta group as its leader sees it: its peers besides the
/// leader, once there is a leader.
fn meta_peers(mesh: &mut Mesh) -> Option<Vec<serde_json::Value>> {
    mesh.nodes
        .values()
        .filter_map(|d| d.monitor("/jsz"))
        .map(|j| j["meta_cluster"]["replicas"].clone())
        .find_map(|r| r.as_array().filter(|r| !r.is_empty()).cloned())
}

#[test]
fn scaling_a_region_up_and_down_under_load_leaves_no_ghost() {
    let warm = env_secs("NATSMESH_DRILL_LOAD_SECS", 3);
    let (mut mesh, start) = supercluster(33, CURRENT, |m| m.balance(NYC3));
    wait_in_service(&mesh, 3, Duration::from_secs(30));
    let load = Load::start(&mut mesh, NYC3);
    let probe = LbProbe::start(mesh.balancer().frontend(), NYC3);
    std::thread::sleep(warm);
    load.reset();

    // Up: a fourth server of nyc3 appears in DNS and starts.
    let began = Instant::now();
    let grown = Region { nodes: 4, ..NYC3 };
    mesh.publish(&[FRA1, grown, SGP1]);
    mesh.start_node(NYC3, 4);
    mesh.wait_joined(grown, &[FRA1, SGP1]);
    mesh.node("nyc3-n4").wait_status(
        "JetStream current",
        |s| s.state == "ready" && s.jetstream == "JetStream current",
        Duration::from_secs(60),
    );
    wait_in_service(&mesh, 4, Duration::from_secs(30));
    let added = began.elapsed();

    // Down: nyc3-n1, which holds a replica of the US stream, leaves with
    // `natsmeshd decommission` (its replicas move to the others, it
    // leaves the JetStream group, then stops) and out of DNS.
    let leaving = Instant::now();
    let out = mesh.node("nyc3-n1").cli(&["decommission"]);
    assert!(out.status.success(), "{out:?}");
    let exited = mesh.node("nyc3-n1").wait_exit(Duration::from_secs(120));
    let gone = mesh.nodes.remove("nyc3-n1").unwrap();
    assert!(exited.success(), "{}", gone.log());
    assert!(
        gone.log().contains("removed from the JetStream group"),
        "{}",
        gone.log()
    );
    mesh.retired.insert("nyc3-n1".into());
    mesh.publish(&[FRA1, grown, SGP1]);
    let removed = leaving.elapsed();

    // Converged: no offline or departed peer in the meta group, and the
    // US stream takes publishes on its new replicas.
    let stopped = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let departed = mesh.server_name(NYC3, 1);
    let peers = loop {
        if let Some(peers) = meta_peers(&mut mesh) {
            let clean = peers.len() == 8
                && peers.iter().all(|p| p["offline"].as_bool() != Some(true))
                && peers
                    .iter()
                    .all(|p| p["name"].as_str() != Some(departed.as_str()));
            if clean {
                break peers;
            }
            assert!(Instant::now() < deadline, "meta group: {peers:?}");
        }
        assert!(Instant::now() < deadline, "no meta leader");
        std::thread::sleep(Duration::from_millis(200));
    };
    load.wait_progress(1, Duration::from_secs(60));
    let converge = stopped.elapsed();
    std::thread::sleep(warm);
    let seen = probe.finish();

    let mut r = report(
        "scaling",
        "nyc3 grown to four servers under load (the fourth published in DNS, started, joined), then nyc3-n1 — a replica of the US stream, and the first server of ten of the watched clients — removed with `natsmeshd decommission` and taken out of DNS.".into(),
        true,
        start,
        &mesh,
    );
    r.converge_ms = ms(converge);
    r.settings
        .insert("drill.load".into(), format!("{}s", warm.as_secs()));
    seen.record(&mesh, &[&gone], &mut r);
    r.facts.push((
        "fourth server started → routed, gateways up, JetStream current".into(),
        format!("{} ms", ms(added)),
    ));
    r.facts.push((
        "`natsmeshd decommission` → exited".into(),
        format!("{} ms", ms(removed)),
    ));
    r.facts.push((
        "meta group afterwards".into(),
        format!(
            "{} servers, none offline, {departed} (nyc3-n1) gone",
            peers.len() + 1
        ),
    ));
    load.finish(&mut r);
    check(&mut r);
    assert!(r.reconnects >= 10, "nyc3-n1's clients moved: {r:?}");
    assert!(seen.ok > 0, "{r:?}");
}

#[test]
fn clients_scaling_up_and_down_in_every_region_are_all_served() {
    let plan = client_scaling::Plan::from_env();
    let (mut mesh, start) = supercluster(35, CURRENT, |m| m.balance(NYC3));
    wait_in_service(&mesh, 3, Duration::from_secs(30));
    let fronts = client_scaling::Frontends::start(&mut mesh, NYC3);
    let root = ROOT.get().expect("a secure mesh").clone();
    let admin = servers(&mut mesh, "fra1-n1");
    let load_before = load_average();
    let outcome = client_scaling::run(&mut mesh, &fronts, plan, &root, admin);
    let load_after = load_average();
    // Converged: every region still joined after the clients left.
    wait_all_joined(&mut mesh);

    let mut r = report(
        CLIENT_SCALING,
        format!(
            "Clients of every region scaled at once through their region's balancer: 0 → {} per region over {} s, held {} s, down to {} per region at once, held {} s, then all gone; each client answers requests in its region's queue group and, every {} ms, asks it (2 s timeout) and publishes an acknowledged message to its region's R3 stream.",
            plan.peak, plan.ramp_s, plan.hold_s, plan.floor, plan.hold_s, plan.period_ms
        ),
        false,
        start,
        &mesh,
    );
    for (k, v) in [
        ("drill.clients_peak", plan.peak.to_string()),
        ("drill.clients_floor", plan.floor.to_string()),
        ("drill.ramp", format!("{}s", plan.ramp_s)),
        ("drill.hold", format!("{}s", plan.hold_s)),
        ("drill.client_period", format!("{}ms", plan.period_ms)),
    ] {
        r.settings.insert(k.into(), v);
    }
    r.facts.push((
        "clients ran in".into(),
        format!(
            "the drill's own process, on the same {} cores as the servers; {} ms from the first client's arrival to the last one's departure",
            r.provenance.run.host.cores,
            outcome.lasted_ms
        ),
    ));
    // What the servers said of the handshakes they cut, if any.
    let (mut timeouts, mut handshake_errors) = (0, 0);
    for d in mesh.nodes.values() {
        for l in d.log().lines() {
            if l.contains("TLS handshake timeout") {
                timeouts += 1;
            } else if l.contains("TLS handshake error") {
                handshake_errors += 1;
            }
        }
    }
    r.facts.push((
        "the servers' logs: TLS handshakes timed out / failed otherwise (fra1's and sgp1's balancers check each server once a second by connecting and closing, each such check a failed handshake)".into(),
        format!("{timeouts} / {handshake_errors}"),
    ));
    r.facts.push((
        "the machine's load (1-minute average, all processes) before and after".into(),
        format!("{load_before} and {load_after}"),
    ));
    for c in &outcome.regions {
        let stream = format!("SCALE_{} in {}", c.region.to_uppercase(), c.region);
        r.acked.push((stream.clone(), c.published_acked));
        r.retried.push((stream, c.publish_failed));
        r.acked_lost += c.acked_lost;
        r.requests.0 += c.requests_answered;
        r.requests.1 += c.requests_failed;
    }
    let regions = outcome
        .regions
        .iter()
        .map(|c| {
            (
                c.region.clone(),
                c.connected,
                c.connections_at_peak,
                c.connections_at_floor,
            )
        })
        .collect::<Vec<_>>();
    r.client_scaling = Some(outcome);
    check(&mut r);
    // The scale happened: every client connected, and the region's
    // servers held at least the peak, then fewer than the peak.
    for (region, connected, at_peak, at_floor) in regions {
        assert_eq!(connected, u64::try_from(plan.peak).unwrap(), "{region}");
        assert!(
            at_peak >= connected,
            "{region}: {at_peak} connections at the peak"
        );
        assert!(
            at_floor < connected,
            "{region}: {at_floor} connections at the floor"
        );
    }
}

/// Samples every node until `stop` (a round, then 100 ms: nine TLS
/// handshakes a round cost the drill's own process and the servers CPU
/// that the core flows' timings share; an out-of-service window lasts a
/// restart, far longer): the most
/// nodes out of service at once (and which, with what a client saw), and
/// when the first and the last node ran `version`. In service is what a
/// client sees, nothing natsmeshd says: a real client connection to the
/// node's client port — the drill's user, TLS with the root the clients
/// trust and the certificate checked for the address dialled, as the
/// drill's clients connect — gets INFO, CONNECT and PING answered by PONG
/// within a second each ([`in_service`]). The control socket is asked
/// only which broker version runs.
type Roll = (
    usize,
    Vec<String>,
    Option<Instant>,
    Option<Instant>,
    RegionsOut,
);

/// Per region (its name, the first four letters of its servers'): the
/// most of its servers out of service at once and which, sampled as in
/// [`watch_roll`]; and the most regions with a server out at once.
#[derive(Debug, Default, Clone)]
struct RegionsOut {
    worst: std::collections::BTreeMap<String, (usize, Vec<String>)>,
    most_regions_at_once: usize,
}

impl RegionsOut {
    /// One sample: the servers (`name: why`) out of service now.
    fn sample(&mut self, down: &[String]) {
        let mut by_region = std::collections::BTreeMap::<String, Vec<String>>::new();
        for d in down {
            by_region
                .entry(d.chars().take(4).collect())
                .or_default()
                .push(d.clone());
        }
        self.most_regions_at_once = self.most_regions_at_once.max(by_region.len());
        for (region, out) in by_region {
            let w = self.worst.entry(region).or_default();
            if out.len() > w.0 {
                *w = (out.len(), out);
            }
        }
    }

    /// The most servers of any one region out at once.
    fn most_in_a_region(&self) -> usize {
        self.worst.values().map(|(n, _)| *n).max().unwrap_or(0)
    }
}

fn watch_roll(
    nodes: Vec<(String, std::path::PathBuf, std::net::SocketAddr)>,
    version: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Roll> {
    use natsmesh::control::Request;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Built once per node: the same root, the node's own address.
        let tls: Vec<Option<UserTls>> = nodes
            .iter()
            .map(|(_, _, client)| {
                ROOT.get()
                    .map(|root| UserTls::new(root, &client.ip().to_string()))
            })
            .collect();
        let (mut worst, mut when) = (0, Vec::new());
        let mut regions = RegionsOut::default();
        let (mut first_new, mut all_new) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(600);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let mut down = Vec::new();
            let mut new = 0;
            for ((name, socket, client), tls) in nodes.iter().zip(&tls) {
                if let Err(e) = in_service(*client, tls.as_ref()) {
                    down.push(format!("{name}: {e}"));
                }
                let status = rt
                    .block_on(natsmesh::control::request(socket, &Request::Status))
                    .ok()
                    .and_then(|r| r.status);
                if status.is_some_and(|s| s.broker_version.contains(version)) {
                    new += 1;
                }
            }
            if new > 0 && first_new.is_none() {
                first_new = Some(Instant::now());
            }
            if new == nodes.len() && all_new.is_none() {
                all_new = Some(Instant::now());
            }
            regions.sample(&down);
            if down.len() > worst {
                worst = down.len();
                when = down;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (worst, when, first_new, all_new, regions)
    })
}

/// Samples every 100 ms which server each of `nodes` has its outbound
/// gateway to `region` on (`name#cid`, or `none`), keeping the changes:
/// the core messages cross there, so a gap can be laid beside them.
fn watch_gateways(
    nodes: Vec<(String, String)>,
    region: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, String, String)>> {
    std::thread::spawn(move || {
        let mut last: std::collections::BTreeMap<String, String> = Default::default();
        let mut changes = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for (name, url) in &nodes {
                let now = ureq::get(url)
                    .config()
                    .timeout_global(Some(Duration::from_millis(500)))
                    .build()
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_to_string().ok())
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .map(|v| {
                        let c = &v["outbound_gateways"][region]["connection"];
                        match (c["name"].as_str(), c["cid"].as_u64()) {
                            (Some(n), Some(cid)) => format!("{n}#{cid}"),
                            _ => "none".to_owned(),
                        }
                    })
                    .unwrap_or_else(|| "unreachable".to_owned());
                if last.get(name) != Some(&now) {
                    last.insert(name.clone(), now.clone());
                    changes.push((Instant::now(), name.clone(), now));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        changes
    })
}

/// Each core gap over [`GAP_WITNESSED`], seconds after `began`, with the
/// clients' servers and, for a flow between regions (`gateways` given), the
/// gateway changes around it.
fn explain_gaps(
    began: Instant,
    gaps: &[CoreGap],
    gateways: Option<&[(Instant, String, String)]>,
) -> Vec<String> {
    let at = |t: Instant| t.saturating_duration_since(began).as_secs_f64();
    gaps.iter()
        .map(|g| {
            let start = g.ended - g.length;
            let near: Vec<String> = gateways
                .unwrap_or_default()
                .iter()
                .filter(|(t, _, _)| {
                    *t + Duration::from_secs(2) >= start
                        && *t <= g.ended + Duration::from_millis(200)
                })
                .map(|(t, node, now)| format!("{node}→{now} at {:.2}s", at(*t)))
                .collect();
            let mut line = format!(
                "{} ms ending at {:.2}s; subscriber {} → {}; publisher {} → {}",
                ms(g.length),
                at(g.ended),
                g.subscriber.0,
                g.subscriber.1,
                g.publisher.0,
                g.publisher.1,
            );
            if !g.stalled.is_zero() {
                line.push_str(&format!(
                    "; the drill's own process stalled {} ms of it",
                    ms(g.stalled)
                ));
            }
            match gateways {
                None => line,
                Some(_) if near.is_empty() => format!("{line}; outbound gateways: no change"),
                Some(_) => format!("{line}; outbound gateways: {}", near.join(", ")),
            }
        })
        .collect()
}

/// A stream's group as sampled through the JetStream API during an
/// upgrade: whether it kept a majority of its peers current (the leader
/// and the replicas nats-server reports `current`: for the leader, those
/// that have persisted everything committed).
#[derive(Debug, Default, Clone, Serialize)]
struct MajorityWatch {
    stream: String,
    /// The region (cluster) its group is placed in, and its peers.
    region: String,
    peers: usize,
    /// Samples answered with a leader.
    answered: u64,
    /// Samples without an answer naming a leader within a second (a
    /// leader election, or the sampler's own server restarting).
    unanswered: u64,
    /// The longest run without such an answer.
    longest_unanswered_ms: u64,
    /// The fewest current peers (the leader included) any answer showed.
    fewest_current: Option<usize>,
    /// Answers with no majority current: when (s after the upgrade
    /// began) and what they showed.
    below_majority: Vec<String>,
}

/// Samples every 200 ms each of `streams`' group (leader, current
/// replicas) through a client of `servers` until `stop`.
fn watch_majorities(
    servers: Vec<ServerAddr>,
    streams: Vec<String>,
    began: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<MajorityWatch>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let js = jetstream::new(client(servers, None).await);
            let mut watches: Vec<(MajorityWatch, Option<Instant>)> = streams
                .iter()
                .map(|s| {
                    (
                        MajorityWatch {
                            stream: s.clone(),
                            ..MajorityWatch::default()
                        },
                        None,
                    )
                })
                .collect();
            while !stop.load(Ordering::Relaxed) {
                for (w, dark) in &mut watches {
                    let cluster =
                        tokio::time::timeout(Duration::from_secs(1), js.get_stream(&w.stream))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .and_then(|s| s.cached_info().cluster.clone())
                            .filter(|c| c.leader.is_some());
                    majority_sample(w, dark, cluster.as_ref(), began);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            watches
                .into_iter()
                .map(|(mut w, dark)| {
                    if let Some(d) = dark {
                        w.longest_unanswered_ms = w.longest_unanswered_ms.max(ms(d.elapsed()));
                    }
                    w
                })
                .collect()
        })
    })
}

/// Counts one sample of a stream's group (`None`: no answer naming a
/// leader); `dark` is when the current run without one began.
fn majority_sample(
    w: &mut MajorityWatch,
    dark: &mut Option<Instant>,
    cluster: Option<&jetstream::stream::ClusterInfo>,
    began: Instant,
) {
    let Some(c) = cluster.filter(|c| c.leader.is_some()) else {
        w.unanswered += 1;
        dark.get_or_insert_with(Instant::now);
        return;
    };
    if let Some(d) = dark.take() {
        w.longest_unanswered_ms = w.longest_unanswered_ms.max(ms(d.elapsed()));
    }
    w.answered += 1;
    w.region = c.name.clone().unwrap_or_default();
    w.peers = 1 + c.replicas.len();
    // The raft leader's own view (a replica that has persisted everything
    // committed) decides; `offline` is the meta layer's view of the
    // server, which lags a restart, and is only shown.
    let current = 1 + c.replicas.iter().filter(|p| p.current).count();
    w.fewest_current = Some(w.fewest_current.map_or(current, |f| f.min(current)));
    if current * 2 <= w.peers {
        w.below_majority.push(format!(
            "{:.2}s: {current} of {} current (leader {}; {})",
            began.elapsed().as_secs_f64(),
            w.peers,
            c.leader.as_deref().unwrap_or("?"),
            c.replicas
                .iter()
                .map(|p| format!(
                    "{} {}{}",
                    p.name,
                    if p.current { "current" } else { "behind" },
                    if p.offline { " (offline)" } else { "" }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
}

/// Whether a client gets served at `to` (see [`watch_roll`]): a second
/// for each step, so a hung broker counts as out of service, not as a
/// stalled sampler.
fn in_service(to: std::net::SocketAddr, tls: Option<&UserTls>) -> Result<(), String> {
    nats_handshake(to, tls, Duration::from_secs(1))
}

/// An upgrade drill: how the fleet's restart leases pace it.
#[derive(Clone, Copy)]
struct Upgrade {
    /// The result name.
    drill: &'static str,
    /// The drill's LAN.
    lan: u8,
    /// `[fleet] lease_scope`.
    scope: &'static str,
    /// How the leases pace it, for the result file.
    paced: &'static str,
    /// Asks nats-server for a stream spanning the regions first.
    across_regions: bool,
    /// Every product default (lame duck, probes, dwell, lease TTL and
    /// scope, discovery) and the balancer at the DigitalOcean API's own
    /// health check with [`AT_DEFAULTS_PROPAGATION`].
    defaults: bool,
}

/// How long the fake balancer takes to act on an API change in the
/// at-defaults drill. DigitalOcean documents no figure; a few seconds is
/// what its control panel shows after adding a droplet, so the drill
/// assumes 5 s (and 3 s of "processing previous actions" after each
/// write) rather than the other drills' 500 ms and 300 ms.
const AT_DEFAULTS_PROPAGATION: Duration = Duration::from_secs(5);
const AT_DEFAULTS_PROCESSING: Duration = Duration::from_secs(3);

/// The DigitalOcean API's defaults for a load balancer's health check
/// (tests/specs/digitalocean/…/models/health_check.yml): every 10 s,
/// 5 s timeout, 5 failures out, 3 successes in.
fn do_api_default_model() -> natsmesh_harness::fakes::lb::Model {
    natsmesh_harness::fakes::lb::Model {
        check_interval: Duration::from_secs(10),
        response_timeout: Duration::from_secs(5),
        unhealthy_threshold: 5,
        healthy_threshold: 3,
        propagation: AT_DEFAULTS_PROPAGATION,
    }
}

/// What an upgrade drill saw besides its report (checked and written).
struct Upgraded {
    report: Report,
    /// Most servers of the supercluster out of service at once.
    worst: usize,
    /// nats-server's answer to a stream spanning the regions, if asked:
    /// where it placed it, or its refusal.
    across: Option<Result<String, String>>,
    regions: RegionsOut,
    took_over: usize,
    served: u64,
    majorities: Vec<MajorityWatch>,
}

/// natsmesh and nats-server replaced on all nine servers at once, as a
/// package upgrade does, under load; natsmeshd re-executes itself and
/// restarts its broker under `u`'s leases. Checks the targets; the
/// pacing is the caller's to assert.
fn upgrade(u: Upgrade) -> Upgraded {
    let warm = env_secs("NATSMESH_DRILL_LOAD_SECS", 3);
    // A previous natsmeshd build to start from (`make drills` builds one);
    // without it the nodes start from a copy of the current build.
    let previous = std::env::var_os("NATSMESH_DRILL_PREVIOUS_NATSMESHD")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let (mut mesh, start) = supercluster(u.lan, PREVIOUS, |m| {
        m.own_binaries(previous.clone());
        if u.defaults {
            m.defaults = true;
            m.balance_with(NYC3, do_api_default_model(), AT_DEFAULTS_PROCESSING);
        } else {
            // The lease outlasts a restart (30 s of lame duck, nats-server's
            // least, and a start).
            m.extra.push_str(&format!(
                "\n[fleet]\nlease_scope = \"{}\"\nlease_ttl = \"60s\"\n",
                u.scope
            ));
            m.balance(NYC3);
        }
    });
    // At defaults a node is in service only after propagation and three
    // checks 10 s apart, and each restart waits out a 75 s drain delay and
    // up to 2 min of lame duck: the waits stretch accordingly.
    let patience = if u.defaults { 5 } else { 1 };
    wait_in_service(&mesh, 3, Duration::from_secs(30) * patience);
    let across = u.across_regions.then(|| stream_across_regions(&mut mesh));
    let load = Load::start(&mut mesh, NYC3);
    let probe = LbProbe::start(mesh.balancer().frontend(), NYC3);
    std::thread::sleep(warm);
    load.reset();

    let nodes: Vec<(String, PathBuf, std::net::SocketAddr)> = mesh
        .nodes
        .iter()
        .map(|(n, d)| (n.clone(), d.socket(), d.client_addr().parse().unwrap()))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_roll(nodes.clone(), CURRENT, stop.clone());
    // The core publisher's region's gateways to the subscriber's.
    let fra1: Vec<(String, String)> = (1..=3)
        .map(|n| {
            let name = format!("fra1-n{n}");
            let d = mesh.node(&name);
            let url = format!("http://{}:{}/gatewayz", d.host, d.monitor_port);
            (name, url)
        })
        .collect();
    let gateways = watch_gateways(fra1, "nyc3", stop.clone());
    // A package upgrade of both on every node at once.
    let began = Instant::now();
    let majorities = watch_majorities(
        servers(&mut mesh, "sgp1-n2"),
        STREAMS.iter().map(|(s, _)| (*s).to_owned()).collect(),
        began,
        stop.clone(),
    );
    for (name, _, _) in &nodes {
        mesh.replace_binary(name, "natsmeshd", std::path::Path::new(common::NATSMESHD));
        mesh.replace_binary(
            name,
            "nats-server",
            &natsmesh_harness::broker_binary(CURRENT),
        );
    }
    for (name, _, _) in &nodes {
        mesh.node(name).wait_status(
            &format!("{name} on {CURRENT}"),
            |s| {
                s.broker_version.contains(CURRENT)
                    && s.state == "ready"
                    && s.jetstream == "JetStream current"
                    && s.fleet.is_empty()
            },
            Duration::from_secs(400) * patience,
        );
    }
    let converge = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (worst, when, first_new, all_new, regions) = watcher.join().unwrap();
    let gateway_changes = gateways.join().unwrap();
    let majorities = majorities.join().unwrap();
    wait_in_service(&mesh, 3, Duration::from_secs(30) * patience);
    std::thread::sleep(warm);
    let seen = probe.finish();
    if !seen.failures.is_empty() {
        // What nyc3's nodes did meanwhile, to tell why.
        for n in 1..=3 {
            let log = mesh.node(&format!("nyc3-n{n}")).log();
            println!("==== nyc3-n{n}");
            for l in log.lines().filter(|l| {
                [
                    "load balancer",
                    "re-exec",
                    "took over",
                    "lame",
                    "state",
                    "lease",
                ]
                .iter()
                .any(|k| l.contains(k))
            }) {
                println!("{l}");
            }
        }
    }
    let mut took_over = 0;
    for (name, _, _) in &nodes {
        let d = mesh.node(name);
        let v = d.monitor("/varz").unwrap();
        assert_eq!(v["version"], CURRENT, "{name}");
        took_over += usize::from(d.log().contains("took over the running nats-server"));
    }

    let mut r = report(
        u.drill,
        format!(
            "natsmesh ({}) and nats-server ({PREVIOUS} → {CURRENT}) replaced on all nine servers at once, as a package upgrade does; natsmeshd re-executes itself and restarts its broker {} (`[fleet] lease_scope = \"{}\"`; {}).",
            previous.as_ref().map_or_else(
                || "a fresh copy of the current build: no previous build given".to_owned(),
                |p| format!("{} → the current build", build_name(p))
            ),
            u.paced,
            u.scope,
            if u.defaults {
                format!(
                    "every product default — lame duck 2 min with 10 s grace, the default probe profile, dwell, lease TTL 5 min, discovery refresh — and nyc3's balancer at the DigitalOcean API's default health check (every 10 s, 5 s timeout, 5 failures out, 3 successes in) with {} s propagation and {} s processing after each write, so each of nyc3's stops waits out a 75 s drain delay",
                    AT_DEFAULTS_PROPAGATION.as_secs(),
                    AT_DEFAULTS_PROCESSING.as_secs()
                )
            } else {
                "lame duck 30 s, nats-server's least".to_owned()
            }
        ),
        true,
        start,
        &mesh,
    );
    r.converge_ms = ms(converge);
    r.settings
        .insert("drill.load".into(), format!("{}s", warm.as_secs()));
    r.settings.insert(
        "drill.previous_natsmeshd".into(),
        previous.as_ref().map_or_else(
            || "a copy of the current build".to_owned(),
            |p| build_name(p),
        ),
    );
    seen.record(&mesh, &[], &mut r);
    r.facts.push((
        "most servers of the supercluster out of service at once".into(),
        format!("{worst} ({})", when.join(", ")),
    ));
    r.facts.push((
        "most servers of one region out of service at once".into(),
        regions
            .worst
            .iter()
            .map(|(region, (n, out))| format!("{region} {n} ({})", out.join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
    ));
    r.facts.push((
        "most regions with a server out of service at once".into(),
        regions.most_regions_at_once.to_string(),
    ));
    if let Some(a) = &across {
        r.facts.push((
            "a stream spanning the regions (4 replicas asked, no placement)".into(),
            match a {
                Ok(placed) => format!("placed: {placed}"),
                Err(e) => format!(
                    "refused: {e} (nats-server places a stream's group inside one cluster, `createGroupForStream`; so no stream here spans regions)"
                ),
            },
        ));
    }
    for w in &majorities {
        r.facts.push((
            format!("stream {}'s group (sampled every 200 ms)", w.stream),
            format!(
                "in {}, {} peers; {} answers naming a leader, fewest current {}; {} unanswered (longest run {} ms); without a majority current: {}",
                w.region,
                w.peers,
                w.answered,
                w.fewest_current.map_or("–".to_owned(), |f| f.to_string()),
                w.unanswered,
                w.longest_unanswered_ms,
                if w.below_majority.is_empty() {
                    "never".to_owned()
                } else {
                    w.below_majority.join("; ")
                }
            ),
        ));
    }
    if let (Some(a), Some(b)) = (first_new, all_new) {
        r.facts.push((
            "mixed broker versions for".into(),
            format!("{} ms", ms(b.saturating_duration_since(a))),
        ));
    }
    r.facts.push((
        "natsmeshd re-executed, broker kept".into(),
        format!("{took_over} of 9"),
    ));
    // Every gap, to the end of the load (the last warm seconds included).
    let (between, within) = load.core_gaps();
    let gaps = explain_gaps(began, &between, Some(&gateway_changes));
    let local_gaps = explain_gaps(began, &within, None);
    for (flow, gaps) in [
        ("fra1 → nyc3, between regions", &gaps),
        ("nyc3-n3 → nyc3, within the region", &local_gaps),
    ] {
        for g in gaps.iter() {
            println!("core gap, {flow}: {g}");
        }
        r.facts.push((
            format!(
                "core gaps over {} ms, {flow} (s after the upgrade began)",
                ms(GAP_WITNESSED)
            ),
            if gaps.is_empty() {
                "none".to_owned()
            } else {
                gaps.join("; ")
            },
        ));
    }
    load.finish(&mut r);
    check(&mut r);
    Upgraded {
        report: r,
        worst,
        across,
        regions,
        took_over,
        served: seen.ok,
        majorities,
    }
}

/// Asks nats-server for a stream of four replicas with no placement, one
/// more than a region has: placed only if a stream's group may span
/// regions. Where it went (`Ok`), or the refusal.
fn stream_across_regions(mesh: &mut Mesh) -> Result<String, String> {
    let servers = servers(mesh, "fra1-n1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = jetstream::new(client(servers, None).await);
        let config = jetstream::stream::Config {
            name: "WORLD".into(),
            subjects: vec!["drill.world".into()],
            num_replicas: 4,
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(s) => {
                let c = s.cached_info().cluster.clone().unwrap_or_default();
                Ok(format!(
                    "{} (leader {}; {})",
                    c.name.unwrap_or_default(),
                    c.leader.unwrap_or_default(),
                    c.replicas
                        .iter()
                        .map(|p| p.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            Err(e) => Err(e.to_string()),
        }
    })
}

/// Every stream's group kept a majority of its peers current through the
/// upgrade, by every answer its leader gave.
fn assert_majorities_kept(u: &Upgraded) {
    for w in &u.majorities {
        assert!(w.answered > 0, "stream {} never answered: {w:?}", w.stream);
        assert!(
            w.below_majority.is_empty(),
            "{}: stream {} lost its majority: {w:?}",
            u.report.drill,
            w.stream
        );
    }
}

#[test]
fn a_rolling_upgrade_moves_one_node_of_the_supercluster_at_a_time() {
    let u = upgrade(Upgrade {
        drill: "rolling-upgrade",
        lan: 34,
        scope: "supercluster",
        paced: "under the supercluster's restart lease, one server of all nine at a time",
        across_regions: false,
        defaults: false,
    });
    assert_eq!(u.worst, 1, "{:?}", u.report);
    assert_eq!(u.took_over, 9, "{:?}", u.report);
    assert!(u.served > 0, "{:?}", u.report);
    assert_majorities_kept(&u);
}

/// The seed's pattern: region-scoped leases (the default), one server of
/// each region at a time, the regions in parallel.
#[test]
fn a_region_by_region_upgrade_moves_one_node_of_each_region_at_a_time() {
    let u = upgrade(Upgrade {
        drill: "region-by-region-upgrade",
        lan: 36,
        scope: "region",
        paced: "under its region's restart lease, one server of each region at a time, the regions in parallel",
        across_regions: true,
        defaults: false,
    });
    assert_eq!(
        u.regions.most_in_a_region(),
        1,
        "{:?} {:?}",
        u.regions,
        u.report
    );
    assert_eq!(
        u.regions.worst.len(),
        3,
        "every region restarted: {:?}",
        u.regions
    );
    // No stream spans regions (nats-server keeps a group in one cluster):
    // should that change, this drill must place one across the three.
    assert!(
        matches!(u.across, Some(Err(_))),
        "a stream spanning the regions was placed ({:?}): add it to this drill's load",
        u.across
    );
    assert_eq!(u.took_over, 9, "{:?}", u.report);
    assert!(u.served > 0, "{:?}", u.report);
    assert_majorities_kept(&u);
}

/// The same package upgrade with nothing tuned for tests: every product
/// default and a balancer at the DigitalOcean API's default health check
/// (a 75 s drain delay per stop). Region-scoped leases, the default. Not
/// in CI (about 15 minutes); `make drills` plays it.
#[test]
fn a_rolling_upgrade_at_product_defaults_keeps_its_targets() {
    let u = upgrade(Upgrade {
        drill: "rolling-upgrade-at-defaults",
        lan: 37,
        scope: "region",
        paced: "under its region's restart lease (the default scope), one server of each region at a time, the regions in parallel",
        across_regions: false,
        defaults: true,
    });
    assert_eq!(
        u.regions.most_in_a_region(),
        1,
        "{:?} {:?}",
        u.regions,
        u.report
    );
    assert_eq!(u.took_over, 9, "{:?}", u.report);
    assert!(u.served > 0, "{:?}", u.report);
    assert_majorities_kept(&u);
}

/// The documentation's "Failure drills" page (docs/drills.md) states the
/// targets the drills assert: the table rendered from [`TARGETS`],
/// verbatim. Needs no root.
#[test]
fn the_readme_states_the_drill_targets() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/drills.md"),
    )
    .unwrap();
    let table = targets_markdown();
    assert!(
        readme.contains(&table),
        "docs/drills.md's drill targets differ from TARGETS in daemon/tests/drills.rs; it should carry:\n{table}"
    );
}

/// The verdicts: a measurement over the limit misses, one at it meets,
/// and nothing measured meets only where that is vacuous.
#[test]
fn drill_targets_judge_their_measurements() {
    let mut r = new_report("t", String::new(), true, offline_start(), Vec::new());
    // The rolling upgrade's 1266 ms, a gateway's reconnect between
    // regions, meets that flow's target; within a region it would not.
    r.longest_core_gap_ms = 3095;
    r.core_gap_net_ms = 1266;
    r.longest_core_gap_in_region_ms = Some(2619);
    r.core_gap_in_region_net_ms = Some(1266);
    r.lb_failed_connections = Some(0);
    let judged: Vec<TargetResult> = TARGETS.iter().map(|t| t.judge(&r)).collect();
    assert_eq!(judged[0].target, "acknowledged messages lost ≤ 0");
    assert!(judged[0].pass);
    assert_eq!(
        judged[1].target,
        "longest core gap within a region, less the drill's own stalls ≤ 1250 ms"
    );
    assert!(!judged[1].pass, "1266 ms over 1250 ms");
    assert_eq!(
        judged[2].target,
        "longest core gap between regions, less the drill's own stalls ≤ 1670 ms"
    );
    assert!(judged[2].pass, "1266 ms within 1670 ms");
    assert!(judged[3].pass, "no reconnect: none slow");
    assert!(judged[4].pass);
    r.core_gap_in_region_net_ms = Some(1250);
    r.core_gap_net_ms = 1671;
    r.reconnect_p99_ms = Some(2001);
    r.lb_failed_connections = None;
    assert!(TARGETS[1].judge(&r).pass);
    assert!(!TARGETS[2].judge(&r).pass, "1671 ms over 1670 ms");
    assert!(!TARGETS[3].judge(&r).pass);
    assert!(
        !TARGETS[4].judge(&r).pass,
        "a balancer not measured proves nothing"
    );
    r.core_gap_in_region_net_ms = None;
    assert!(
        !TARGETS[1].judge(&r).pass,
        "a planned drill without the flow within a region proves nothing"
    );
    r.planned = false;
    let applied: Vec<&str> = TARGETS
        .iter()
        .filter(|t| t.applies(&r))
        .map(|t| t.what)
        .collect();
    // The power-loss target judges the host-lost drill alone.
    assert_eq!(applied, ["acknowledged messages lost"]);
    let power = TARGETS.iter().find(|t| t.drill == Some(HOST_LOST)).unwrap();
    assert!(power.judge(&r).pass, "no power lost: nothing to lose");
    r.lost_outside_power_loss = Some(1);
    assert!(!power.judge(&r).pass);
}

/// The target between regions adds up as its `why` says: nats-server's
/// fixed gateway reconnect delay and jitter, the handshake's round trips
/// at the largest injected round trip, the client's reconnect wait; so a
/// change of the drill's latencies or reconnect wait must change the text.
#[test]
fn drill_targets_derive_the_gap_between_regions() {
    let t = &TARGETS[2];
    assert_eq!(
        t.what,
        "longest core gap between regions, less the drill's own stalls"
    );
    let rtt = LATENCY.iter().map(|(_, d)| *d * 2).max().unwrap();
    assert_eq!(rtt, Duration::from_millis(80));
    let handshake = rtt * GATEWAY_HANDSHAKE_RTTS;
    assert_eq!(
        Duration::from_millis(t.at_most),
        GATEWAY_RECONNECT_DELAY + GATEWAY_RECONNECT_JITTER + handshake + RECONNECT_WAIT
    );
    for figure in [
        format!("fixed {} s", GATEWAY_RECONNECT_DELAY.as_secs()),
        format!("up to {} ms", GATEWAY_RECONNECT_JITTER.as_millis()),
        format!(
            "{GATEWAY_HANDSHAKE_RTTS} round trips at the drill's largest ({} ms): {} ms",
            rtt.as_millis(),
            handshake.as_millis()
        ),
        format!("reconnect wait ({} ms)", RECONNECT_WAIT.as_millis()),
    ] {
        assert!(t.why.contains(&figure), "{figure:?} not in {:?}", t.why);
    }
    // Within a region: the client's reconnect alone, under the other.
    assert_eq!(
        TARGETS[1].at_most,
        ms(RECONNECT_WAIT + Duration::from_secs(1))
    );
    assert!(TARGETS[1].at_most < t.at_most);
}

/// Servers out of service are counted per region (the first four letters
/// of their names): the most of one region at once, which, and the most
/// regions out at once.
#[test]
fn drill_report_counts_servers_out_by_region() {
    let mut r = RegionsOut::default();
    r.sample(&[]);
    r.sample(&["fra1-n1: refused".into(), "nyc3-n2: refused".into()]);
    r.sample(&["fra1-n2: refused".into()]);
    assert_eq!(r.most_in_a_region(), 1, "{r:?}");
    assert_eq!(r.most_regions_at_once, 2, "{r:?}");
    r.sample(&[
        "sgp1-n1: refused".into(),
        "sgp1-n3: timed out".into(),
        "nyc3-n1: refused".into(),
        "fra1-n3: refused".into(),
    ]);
    assert_eq!(r.most_in_a_region(), 2, "{r:?}");
    assert_eq!(r.most_regions_at_once, 3, "{r:?}");
    assert_eq!(
        r.worst["sgp1"].1,
        ["sgp1-n1: refused", "sgp1-n3: timed out"],
        "{r:?}"
    );
    assert_eq!(r.worst["fra1"].0, 1, "{r:?}");
}

/// A stream's group keeps its majority while its leader and one replica
/// of three are current; one current peer of three is a loss, recorded;
/// a sample without a leader counts as unanswered, its run timed.
#[test]
fn drill_report_judges_a_streams_majority() {
    use jetstream::stream::{ClusterInfo, PeerInfo};
    let peer = |name: &str, current: bool, offline: bool| PeerInfo {
        name: name.into(),
        current,
        offline,
        ..PeerInfo::default()
    };
    let group = |replicas: Vec<PeerInfo>| ClusterInfo {
        name: Some("nyc3".into()),
        leader: Some("nyc3-n1".into()),
        replicas,
        ..ClusterInfo::default()
    };
    let began = Instant::now();
    let mut w = MajorityWatch::default();
    let mut dark = None;
    let two_of_three = group(vec![
        peer("nyc3-n2", true, false),
        peer("nyc3-n3", false, true),
    ]);
    majority_sample(&mut w, &mut dark, Some(&two_of_three), began);
    assert!(w.below_majority.is_empty(), "{w:?}");
    assert_eq!(
        (w.answered, w.peers, w.fewest_current),
        (1, 3, Some(2)),
        "{w:?}"
    );
    assert_eq!(w.region, "nyc3");
    // No leader: unanswered, and the run lasts until the next answer.
    let leaderless = ClusterInfo {
        leader: None,
        ..two_of_three.clone()
    };
    majority_sample(&mut w, &mut dark, Some(&leaderless), began);
    majority_sample(&mut w, &mut dark, None, began);
    assert_eq!(w.unanswered, 2, "{w:?}");
    std::thread::sleep(Duration::from_millis(30));
    // A current replica the meta layer still calls offline (its server
    // just restarted) counts: the raft leader has its writes.
    let stale = group(vec![
        peer("nyc3-n2", false, false),
        peer("nyc3-n3", true, true),
    ]);
    majority_sample(&mut w, &mut dark, Some(&stale), began);
    assert!(dark.is_none());
    assert!(w.longest_unanswered_ms >= 30, "{w:?}");
    assert!(w.below_majority.is_empty(), "{w:?}");
    // Both replicas behind: only the leader current.
    let one_of_three = group(vec![
        peer("nyc3-n2", false, false),
        peer("nyc3-n3", false, true),
    ]);
    majority_sample(&mut w, &mut dark, Some(&one_of_three), began);
    assert_eq!(w.fewest_current, Some(1), "{w:?}");
    assert_eq!(w.below_majority.len(), 1, "{w:?}");
    assert!(
        w.below_majority[0]
            .contains("1 of 3 current (leader nyc3-n1; nyc3-n2 behind, nyc3-n3 behind (offline))"),
        "{w:?}"
    );
}

/// A start without a mesh, for the tests below.
fn offline_start() -> Start {
    let mut run = natsmesh_harness::provenance::Provenance::now(Vec::new());
    run.date_utc = "2026-01-01T00:00:00Z".into();
    Start {
        rtts: Vec::new(),
        run,
        brokers: vec![format!("{PREVIOUS} ×9")],
        settings: std::collections::BTreeMap::from([(
            "client.reconnect_wait".into(),
            "250ms".into(),
        )]),
    }
}

/// A result file carries its provenance (this tree's revision, the host,
/// the brokers), the settings and every target with its verdict, in the
/// JSON and the Markdown both.
#[test]
fn drill_report_carries_provenance_settings_and_targets() {
    let mut r = new_report(
        "t",
        String::new(),
        true,
        offline_start(),
        vec![format!("{CURRENT} ×9")],
    );
    r.longest_core_gap_ms = 1266;
    r.core_gap_net_ms = 1266;
    r.longest_core_gap_in_region_ms = Some(1400);
    r.core_gap_in_region_net_ms = Some(1266);
    r.drill_stalls = Some(DrillStalls {
        count: 2,
        longest_ms: 134,
        total_ms: 200,
    });
    r.targets = TARGETS.iter().map(|t| t.judge(&r)).collect();
    let dir = tempfile::tempdir().unwrap();
    let json = write_report(&r, dir.path());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let p = &v["provenance"];
    let rev = p["revision"].as_str().unwrap();
    assert!(
        rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()),
        "{p}"
    );
    assert!(p["dirty"].is_boolean(), "{p}");
    assert!(
        rev.starts_with(p["revision_short"].as_str().unwrap()),
        "{p}"
    );
    assert!(p["load_average"]["one"].is_string(), "{p}");
    assert_eq!(p["date_utc"], "2026-01-01T00:00:00Z");
    assert!(p["host"]["cores"].as_u64().unwrap() >= 1, "{p}");
    assert!(p["host"]["memory_mib"].as_u64().unwrap() > 0, "{p}");
    assert!(!p["host"]["hostname"].as_str().unwrap().is_empty(), "{p}");
    assert_eq!(p["brokers_at_start"][0], format!("{PREVIOUS} ×9"));
    assert_eq!(p["brokers_at_end"][0], format!("{CURRENT} ×9"));
    assert_eq!(v["settings"]["client.reconnect_wait"], "250ms");
    assert_eq!(
        v["targets"][1]["target"],
        "longest core gap within a region, less the drill's own stalls ≤ 1250 ms"
    );
    assert_eq!(v["targets"][1]["measured"], 1266);
    assert_eq!(v["targets"][1]["pass"], false);
    assert_eq!(v["targets"][2]["measured"], 1266);
    assert_eq!(v["targets"][2]["pass"], true);
    assert_eq!(v["longest_core_gap_in_region_ms"], 1400);
    assert_eq!(v["core_gap_in_region_net_ms"], 1266);
    assert_eq!(v["drill_stalls"]["longest_ms"], 134);
    let md = std::fs::read_to_string(dir.path().join("t.md")).unwrap();
    assert!(
        md.contains(&format!(
            "\n{}; nats-server {PREVIOUS} ×9 at the start, {CURRENT} ×9 at the end.\n",
            r.provenance.run.ran_at()
        )),
        "{md}"
    );
    assert!(md.contains(&format!("Ran at {rev} (")), "{md}");
    assert!(
        md.contains("| longest core gap within a region, less the drill's own stalls ≤ 1250 ms | 1266 ms | **no** |"),
        "{md}"
    );
    assert!(
        md.contains("| longest core gap between regions, less the drill's own stalls ≤ 1670 ms | 1266 ms | yes |"),
        "{md}"
    );
    assert!(md.contains("`client.reconnect_wait` 250ms"), "{md}");
    assert!(
        md.contains("| 1266 / 1400 (1266 less the drill's stalls) |"),
        "{md}"
    );
    assert!(
        md.contains("stalled 2 times over 50 ms (longest 134 ms, 200 ms in all)"),
        "{md}"
    );
}

/// The drill's own stalls: a wake-up later than [`STALL_RECORDED`] is
/// one, and a gap is charged only the part of a stall inside it.
#[test]
fn drill_report_charges_a_gap_only_its_own_stalls() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let s = Stalls::default();
    s.record(at(0), at(40));
    assert!(
        s.within(at(0), at(1000)).is_zero(),
        "40 ms late is no stall"
    );
    s.record(at(100), at(900));
    s.record(at(2000), at(2100));
    assert_eq!(s.within(at(0), at(3000)), Duration::from_millis(900));
    assert_eq!(s.within(at(500), at(2050)), Duration::from_millis(450));
    assert!(s.within(at(950), at(1950)).is_zero());
    let sum = s.summary();
    assert_eq!((sum.count, sum.longest_ms, sum.total_ms), (2, 800, 900));
    assert_eq!(
        gap_cell(3095, Some(1300)),
        "3095 (1300 less the drill's stalls)"
    );
    assert_eq!(gap_cell(1266, Some(1266)), "1266");
    s.reset();
    assert_eq!(s.summary().count, 0);
}

/// The settings come from the node's configuration as natsmeshd merges
/// it: a drop-in overrides the file, a profile's timings fill in what is
/// not set, defaults the rest.
#[test]
fn drill_settings_come_from_the_node_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("natsmesh.toml");
    std::fs::write(
        &main,
        "[broker]\nlame_duck_duration = \"30s\"\n[health]\nprofile = \"fast\"\n[fleet]\nlease_ttl = \"90s\"\n",
    )
    .unwrap();
    let dropins = natsmesh::config::load::dropin_dir(&main);
    std::fs::create_dir_all(&dropins).unwrap();
    std::fs::write(
        dropins.join("50-test.toml"),
        "[fleet]\nlease_scope = \"supercluster\"\nlease_ttl = \"60s\"\n",
    )
    .unwrap();
    let s = node_settings(&main);
    assert_eq!(s["broker.lame_duck_duration"], "30s");
    assert_eq!(s["broker.lame_duck_grace_period"], "10s", "the default");
    assert_eq!(s["health.profile"], "fast");
    assert_eq!(s["health.interval"], "250ms", "the fast profile's");
    assert_eq!(s["fleet.lease_scope"], "supercluster");
    assert_eq!(s["fleet.lease_ttl"], "1m", "the drop-in's");
    assert_eq!(s["tls.handshake_timeout"], "2s", "the default");
    assert!(!s.contains_key("load_balancer.dwell"), "no balancer: {s:?}");
}

/// The machine's 1-minute load average (`/proc/loadavg`), as printed
/// there: the other work the drill's numbers shared the cores with.
fn load_average() -> String {
    natsmesh_harness::provenance::LoadAverage::now().map_or_else(|| "unknown".into(), |l| l.one)
}

/// A nats-server on loopback whose one user is `user`/`password`.
fn loopback_broker(user: &str, password: &str) -> (natsmesh_harness::Broker, tempfile::TempDir) {
    let dir = natsmesh_harness::scratch();
    let config = dir.path().join("server.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:-1\nports_file_dir: \"{}\"\nauthorization {{ user: \"{user}\", password: \"{password}\" }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let broker = natsmesh_harness::Broker::start(
        &natsmesh_harness::broker_binary(CURRENT),
        &config,
        dir.path(),
    );
    (broker, dir)
}

fn client_addr(broker: &natsmesh_harness::Broker) -> std::net::SocketAddr {
    broker
        .url("nats")
        .trim_start_matches("nats://")
        .parse()
        .unwrap()
}

/// The sampler counts a node in service only when a client is served:
/// a real broker that takes the drill's user is; one that refuses it, a
/// port that greets but never answers PING, and a closed port are not,
/// each judged within its bounds.
#[test]
fn drill_sampler_probes_the_client_port_itself() {
    let (served, _d1) = loopback_broker(USER, PASSWORD);
    assert_eq!(in_service(client_addr(&served), None), Ok(()));

    let (refusing, _d2) = loopback_broker(USER, "another-secret");
    let e = in_service(client_addr(&refusing), None).unwrap_err();
    assert!(e.contains("Authorization"), "{e}");

    // Greets like a broker (a process that accepts but does not serve,
    // as a hung one would), then says nothing.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        use std::io::Write as _;
        let (mut c, _) = mute.accept().unwrap();
        c.write_all(b"INFO {\"server_id\":\"mute\"}\r\n").unwrap();
        std::thread::sleep(Duration::from_secs(3));
    });
    let began = Instant::now();
    let e = in_service(mute_addr, None).unwrap_err();
    assert!(e.contains("PONG"), "{e}");
    assert!(began.elapsed() < Duration::from_secs(2), "unbounded: {e}");
    held.join().unwrap();

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert!(in_service(closed, None).is_err());
}

/// A refusal through the balancer is nats-server's reload race only when
/// it is a refusal of that kind and some server reloaded its accounts
/// within moments of it; anything else stays the balancer's failure.
#[test]
fn drill_report_tells_the_reload_race_from_the_balancers_failures() {
    let at = |s: &str| humantime::parse_rfc3339_weak(s).unwrap();
    let logs = vec![
        "2026-12-07T16:43:27.500000Z  INFO nats-server: Reloaded: authorization users broker_pid=7\n\
         2026-12-07T16:43:27.500100Z  INFO nats-server: Reloaded server configuration broker_pid=7\n"
            .to_owned(),
        "2026-12-07T16:50:00.000000Z  INFO natsmeshd: ready\n".to_owned(),
    ];
    let violation = "-ERR 'Authorization Violation'".to_owned();
    let failures = vec![
        // Just after the reload: the race.
        (at("2026-12-07T16:43:28.782Z"), violation.clone()),
        // Refused just before the reload was logged: the race too.
        (at("2026-12-07T16:43:27.100Z"), violation.clone()),
        // Closed unanswered beside the reload: maybe the race, maybe a
        // server going away; the balancer's either way.
        (
            at("2026-12-07T16:43:27.600Z"),
            "closed before PONG".to_owned(),
        ),
        // The same refusal long after any reload: not explained.
        (at("2026-12-07T16:45:00.000Z"), violation.clone()),
        // Near the reload, but nothing the race does.
        (
            at("2026-12-07T16:43:28.000Z"),
            "connect: Connection refused (os error 111)".to_owned(),
        ),
    ];
    assert_eq!(reload_races(&failures, &logs), vec![0, 1]);
    assert!(reload_races(&failures, &logs[1..]).is_empty());
}

/// Core sequence numbers: a skipped number is lost, a lower one counted
/// apart, and a reset keeps the place in the sequence.
#[test]
fn drill_report_counts_core_loss_by_sequence() {
    let mut c = CoreSeq::default();
    for n in [5, 6, 7, 9, 10, 14, 12, 15] {
        c.saw(n);
    }
    assert_eq!((c.received, c.lost, c.reordered), (8, 4, 1), "{c:?}");
    c.reset();
    c.saw(17);
    assert_eq!((c.received, c.lost, c.reordered), (1, 1, 0), "{c:?}");
}

/// Gateway reconnects: a connection id first seen after a node's first
/// sample is a connection re-established; ids present from the start or
/// seen again are not.
#[test]
fn drill_report_counts_gateway_reconnects_by_connection_id() {
    let gatewayz = |out: u64, inb: &[u64]| {
        serde_json::json!({
            "outbound_gateways": {"fra1": {"connection": {"cid": out}}},
            "inbound_gateways": {"fra1": inb.iter().map(|c| serde_json::json!({"connection": {"cid": c}})).collect::<Vec<_>>()},
        })
    };
    let mut t = CidTally::default();
    t.sample("nyc3-n1", gateway_cids(&gatewayz(7, &[8, 9])));
    t.sample("nyc3-n1", gateway_cids(&gatewayz(7, &[8, 9])));
    // Cut: the outbound gone, one inbound gone.
    t.sample(
        "nyc3-n1",
        gateway_cids(
            &serde_json::json!({"inbound_gateways": {"fra1": [{"connection": {"cid": 8}}]}}),
        ),
    );
    // Healed: both back with new ids.
    t.sample("nyc3-n1", gateway_cids(&gatewayz(12, &[8, 13])));
    t.sample("nyc3-n1", gateway_cids(&gatewayz(12, &[8, 13])));
    t.sample("fra1-n1", gateway_cids(&gatewayz(3, &[4])));
    let r = t.result(5);
    assert_eq!((r.outbound, r.inbound), (1, 1), "{r:?}");
    assert_eq!(r.at_start, (2, 3), "{r:?}");
    assert_eq!(
        r.links,
        [
            ("nyc3-n1 ← fra1".to_owned(), 1),
            ("nyc3-n1 → fra1".to_owned(), 1)
        ]
    );
}

/// A core gap is laid beside the gateway changes from 2 s before it began
/// to just after it ended, no others. Needs no root.
#[test]
fn drill_report_lays_core_gaps_beside_gateway_changes() {
    let began = Instant::now();
    let s = |secs: f64| began + Duration::from_secs_f64(secs);
    let mut gap = CoreGap {
        ended: s(11.2),
        length: Duration::from_millis(1200),
        subscriber: ("nyc3-a".into(), "nyc3-a".into()),
        publisher: ("fra1-n2".into(), "fra1-n2".into()),
        stalled: Duration::ZERO,
    };
    let changes = vec![
        (s(5.0), "fra1-n1".to_owned(), "old#1".to_owned()),
        (s(10.0), "fra1-n2".to_owned(), "none".to_owned()),
        (s(11.15), "fra1-n2".to_owned(), "new#7".to_owned()),
        (s(12.0), "fra1-n3".to_owned(), "later#9".to_owned()),
    ];
    let lines = explain_gaps(began, std::slice::from_ref(&gap), Some(&changes));
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert!(l.starts_with("1200 ms ending at 11.20s"), "{l}");
    assert!(
        l.contains("subscriber nyc3-a → nyc3-a; publisher fra1-n2 → fra1-n2"),
        "{l}"
    );
    assert!(
        l.contains("fra1-n2→none at 10.00s, fra1-n2→new#7 at 11.15s"),
        "{l}"
    );
    assert!(!l.contains("old#1") && !l.contains("later#9"), "{l}");
    let quiet = explain_gaps(began, std::slice::from_ref(&gap), Some(&[]));
    assert!(
        quiet[0].ends_with("outbound gateways: no change"),
        "{quiet:?}"
    );
    // A flow within a region crosses no gateway: none named.
    let local = explain_gaps(began, std::slice::from_ref(&gap), None);
    assert!(
        local[0].ends_with("publisher fra1-n2 → fra1-n2"),
        "{local:?}"
    );
    gap.stalled = Duration::from_millis(700);
    let stalled = explain_gaps(began, &[gap], None);
    assert!(
        stalled[0].ends_with("; the drill's own process stalled 700 ms of it"),
        "{stalled:?}"
    );
}

/// The client-scaling targets judge the client-scaling drill alone: its
/// failures and connect p99 are measured there (nothing measured misses),
/// and no other drill, planned or not, is held to them.
#[test]
fn drill_targets_for_client_scaling_apply_to_it_alone() {
    let scaling = |failed: u64, p99: Option<u64>| client_scaling::ClientScaling {
        plan: client_scaling::Plan {
            peak: 300,
            floor: 30,
            ramp_s: 20,
            hold_s: 10,
            period_ms: 5000,
        },
        lasted_ms: 0,
        connect_p50_ms: p99.map(|p| p / 2),
        connect_p99_ms: p99,
        regions: vec![client_scaling::RegionClients {
            region: "fra1".into(),
            via: "a balancer".into(),
            connected: 300,
            connect_failed: 0,
            connect_p50_ms: None,
            connect_p99_ms: None,
            connect_max_ms: None,
            connections_at_peak: 303,
            connections_at_floor: 33,
            disconnected: 0,
            requests_answered: 10,
            requests_failed: failed,
            published_acked: 10,
            publish_failed: 0,
            acked_lost: 0,
            first_failures: Vec::new(),
        }],
        brokers: Vec::new(),
    };
    let mut r = new_report(
        CLIENT_SCALING,
        String::new(),
        false,
        offline_start(),
        Vec::new(),
    );
    let applied = |r: &Report| -> Vec<&str> {
        TARGETS
            .iter()
            .filter(|t| t.applies(r))
            .map(|t| t.what)
            .collect()
    };
    assert_eq!(applied(&r).len(), 3, "{:?}", applied(&r));
    assert!(applied(&r).contains(&"client connect p99"));
    let judge = |r: &Report| -> Vec<bool> {
        TARGETS
            .iter()
            .filter(|t| t.applies(r))
            .map(|t| t.judge(r).pass)
            .collect()
    };
    assert_eq!(judge(&r), [true, false, false], "nothing measured misses");
    r.client_scaling = Some(scaling(0, Some(CONNECT_P99_LIMIT_MS)));
    assert_eq!(judge(&r), [true, true, true]);
    r.client_scaling = Some(scaling(1, Some(CONNECT_P99_LIMIT_MS + 1)));
    assert_eq!(judge(&r), [true, false, false]);
    // Other drills: not held to them, planned or not.
    for planned in [false, true] {
        let mut other = new_report("t", String::new(), planned, offline_start(), Vec::new());
        other.client_scaling = Some(scaling(5, Some(CONNECT_P99_LIMIT_MS * 10)));
        assert!(
            !applied(&other).contains(&"client connect p99"),
            "{:?}",
            applied(&other)
        );
    }
}

/// A nats-server's memory and CPU time come from its `/proc` files: the
/// kB lines of `status` in MiB, `stat`'s utime and stime in ns; this
/// process's own files read so.
#[test]
fn drill_report_reads_broker_use_from_proc() {
    let status = "Name:\tnats-server\nVmHWM:\t   81920 kB\nVmRSS:\t   40960 kB\n";
    assert_eq!(client_scaling::status_mib(status, "VmRSS"), Some(40.0));
    assert_eq!(client_scaling::status_mib(status, "VmHWM"), Some(80.0));
    assert_eq!(client_scaling::status_mib(status, "VmSwap"), None);
    // utime 250 and stime 50 ticks of 10 ms; a command with a space and
    // a parenthesis does not shift the fields.
    let stat = "4242 (nats) server) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0 1 1 1";
    assert_eq!(client_scaling::stat_cpu_ns(stat), Some(3_000_000_000));
    assert_eq!(client_scaling::stat_cpu_ns("4242 (nats-server) S 1"), None);
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(client_scaling::status_mib(&own, "VmRSS").unwrap() > 0.0);
    // This process's own CPU time, read as it spins: it must show (the
    // kernel counts in 10 ms ticks) well within 5 s.
    let began = Instant::now();
    loop {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        if client_scaling::stat_cpu_ns(&stat).unwrap() > 0 {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(5), "{stat}");
    }
}

/// Where a lost region's clients went is tallied per region beside the
/// round trips from it: the closest is the shortest measured, and the
/// clients that followed their list are counted apart.
#[test]
fn drill_report_tallies_where_orphans_went() {
    let rtt = |from: &str, to: &str, injected: u64, measured: f64| GatewayRtt {
        from: from.into(),
        to: to.into(),
        injected_ms: injected,
        measured_ms: measured,
    };
    let rtts = [
        rtt("fra1", "nyc3", 40, 40.9),
        rtt("nyc3", "fra1", 20, 20.7),
        rtt("nyc3", "sgp1", 80, 80.6),
    ];
    let orphan = |client: usize, listed: [&str; 2], region: &str| Orphan {
        client,
        listed: listed.iter().map(|s| (*s).to_owned()).collect(),
        server: format!("{region}-n1"),
        region: region.into(),
    };
    let o = orphans(
        "nyc3",
        vec![
            orphan(0, ["fra1", "sgp1"], "fra1"),
            orphan(1, ["sgp1", "fra1"], "sgp1"),
            orphan(2, ["fra1", "sgp1"], "fra1"),
            orphan(3, ["sgp1", "fra1"], "fra1"),
        ],
        &rtts,
    );
    assert_eq!(o.closest, "fra1");
    assert_eq!((o.to_closest, o.to_first_listed), (3, 3));
    let counts: Vec<(&str, u64, u64)> = o
        .went_to
        .iter()
        .map(|w| (w.region.as_str(), w.clients, w.rtt_injected_ms))
        .collect();
    assert_eq!(counts, [("fra1", 3, 20), ("sgp1", 1, 80)]);
    let md = orphans_markdown(&o);
    assert!(md.contains("| fra1 | 3 | 20 | 20.7 |"), "{md}");
    assert!(md.contains("| sgp1 then fra1 | fra1 | 1 |"), "{md}");
}

// Host lost: one machine gone at once — its processes killed and the
// writes its store had not fsynced lost with its power — then a whole
// region's power. The stores of nyc3's nodes are FUSE filesystems that
// forget whatever was not fsynced (`common::power`,
// `natsmesh_harness::volatile`).

/// The payload numbers `stream` holds (its publisher numbers them 0, 1,
/// …), read through `js`.
async fn payloads(js: &jetstream::Context, stream: &str) -> std::collections::BTreeSet<u64> {
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap().clone();
    let mut have = std::collections::BTreeSet::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await
            && let Some(n) = std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|p| p.parse::<u64>().ok())
        {
            have.insert(n);
        }
    }
    have
}

/// How many of the payload numbers in `range` are missing from `have`.
fn missing(have: &std::collections::BTreeSet<u64>, range: std::ops::Range<u64>) -> u64 {
    range.filter(|n| !have.contains(n)).count() as u64
}

/// Whether `server` is a current replica (or the leader) of `stream`.
async fn replica_current(js: &jetstream::Context, stream: &str, server: &str) -> bool {
    let Ok(mut s) = js.get_stream(stream).await else {
        return false;
    };
    let Ok(info) = s.info().await else {
        return false;
    };
    info.cluster.as_ref().is_some_and(|c| {
        c.leader.as_deref() == Some(server)
            || c.replicas
                .iter()
                .any(|p| p.name == server && p.current && !p.offline && p.lag.unwrap_or(0) == 0)
    })
}

/// When each acknowledgement of a stream arrived, sampled every 50 ms:
/// `(when, acked so far)`.
struct AckClock {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, u64)>>,
}

impl AckClock {
    fn start(progress: Arc<AtomicU64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                samples.push((Instant::now(), progress.load(Ordering::Relaxed)));
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// When message `k` (0-based) had been acknowledged, within a sample.
fn acked_at(samples: &[(Instant, u64)], k: u64) -> Option<Instant> {
    samples.iter().find(|(_, n)| *n > k).map(|(t, _)| *t)
}

/// A jetstream context on a client first connected to `node`.
fn context(rt: &tokio::runtime::Runtime, mesh: &mut Mesh, node: &str) -> jetstream::Context {
    let servers = servers(mesh, node);
    rt.block_on(async { jetstream::new(client(servers, None).await) })
}

#[test]
fn a_host_lost_with_its_unsynced_writes_loses_no_acknowledged_message() {
    use common::power::Stores;
    let loss = env_secs("NATSMESH_DRILL_LOSS_SECS", 10);
    let warm = env_secs("NATSMESH_DRILL_LOAD_SECS", 3);
    // When the region's power goes, counted from the start of the load:
    // by default past nats-server's first sync of the streams (every
    // 2 min), so what is lost is what one sync interval had not synced.
    let power_after = env_secs("NATSMESH_DRILL_POWER_AFTER_SECS", 130);
    // `always`: every node's nats-server fsyncs after every write, as an
    // operator sets it (`[broker.jetstream] sync_interval`); else its
    // default.
    let sync_always = std::env::var("NATSMESH_DRILL_SYNC").is_ok_and(|v| v == "always");
    // Declared before the mesh: the nodes go before their stores.
    let mut stores = Stores::new();
    let (mut mesh, start) = supercluster(38, CURRENT, |m| {
        for n in 1..=3 {
            stores.attach(m, &format!("nyc3-n{n}"));
        }
        if sync_always {
            m.extra
                .push_str("\n[broker.jetstream]\nsync_interval = \"always\"\n");
        }
    });
    // The setting reached every broker (or the run would measure the
    // default and say "always").
    for r in REGIONS {
        for n in 1..=r.nodes {
            let name = format!("{}-n{n}", r.name);
            let v = mesh.node(&name).monitor("/varz").unwrap();
            assert_eq!(
                v["jetstream"]["config"]["sync_always"]
                    .as_bool()
                    .unwrap_or(false),
                sync_always,
                "{name}: {}",
                v["jetstream"]["config"]
            );
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let load_began = Instant::now();
    let load = Load::start(&mut mesh, NYC3);
    let clock = AckClock::start(load.progress[1].clone());
    std::thread::sleep(warm);
    load.reset();
    let acked = |load: &Load| -> [u64; 3] {
        std::array::from_fn(|i| load.progress[i].load(Ordering::Relaxed))
    };

    // 1. One machine lost at once, then back with what its store kept.
    let host = "nyc3-n1";
    eprintln!("host-lost: {host} lost");
    mesh.kill(NYC3, 1);
    let host_dropped = stores.power_loss(host);
    std::thread::sleep(loss);
    let returned = Instant::now();
    mesh.revive(NYC3, 1);
    mesh.wait_joined(NYC3, &[FRA1, SGP1]);
    load.wait_progress(1, Duration::from_secs(120));
    // Converged: the returned machine is a current replica of nyc3's
    // stream again.
    let us = context(&rt, &mut mesh, "nyc3-n2");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !rt.block_on(replica_current(&us, "US", host)) {
        assert!(
            Instant::now() < deadline,
            "{host} not a current replica of US within 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let host_converge = returned.elapsed();
    eprintln!("host-lost: {host} current again after {host_converge:?}");
    // Everything acknowledged so far is there, in every stream.
    let acked_host = acked(&load);
    let mut host_lost = 0;
    let contexts: Vec<jetstream::Context> = STREAMS
        .iter()
        .map(|(_, region)| context(&rt, &mut mesh, &format!("{region}-n2")))
        .collect();
    for (((name, _), js), n) in STREAMS.iter().zip(&contexts).zip(acked_host) {
        host_lost += missing(&rt.block_on(payloads(js, name)), 0..n);
    }

    // 2. The whole region's power: every nyc3 machine killed, then every
    // store back to what it had fsynced.
    if let Some(wait) = power_after.checked_sub(load_began.elapsed()) {
        std::thread::sleep(wait);
    }
    eprintln!("host-lost: nyc3's power goes");
    for n in 1..=3 {
        mesh.kill(NYC3, n);
    }
    let power_at = Instant::now();
    let acked_power = acked(&load);
    let mut region_dropped = Vec::new();
    for n in 1..=3 {
        let node = format!("nyc3-n{n}");
        let last_sync = stores.store(&node).last_fsync();
        let dropped = stores.power_loss(&node);
        region_dropped.push((node, dropped, last_sync));
    }
    std::thread::sleep(loss);
    let back = Instant::now();
    for n in 1..=3 {
        mesh.revive(NYC3, n);
    }
    mesh.wait_joined(NYC3, &[FRA1, SGP1]);
    // Whether nyc3's stream serves again, and when (reported, not
    // assumed: every replica lost the same unsynced tail).
    let before = load.progress[1].load(Ordering::Relaxed);
    eprintln!("host-lost: nyc3 back");
    let deadline = Instant::now() + Duration::from_secs(120);
    let us_back = loop {
        if load.progress[1].load(Ordering::Relaxed) > before {
            break Some(back.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(warm);
    let samples = clock.finish();

    let mut r = report(
        if sync_always {
            "host-lost-sync-always"
        } else {
            HOST_LOST
        },
        format!(
            "Two losses under acknowledged load, with nyc3's stores on a filesystem that forgets what was not fsynced: (1) one machine, {host}: natsmeshd and nats-server SIGKILLed, its store's unsynced writes dropped, back after {} s on what the store kept; (2) {} s after the load began, the whole of nyc3: all three machines killed and power-lost at once, back after {} s.",
            loss.as_secs(),
            power_after.as_secs(),
            loss.as_secs()
        ),
        false,
        start,
        &mesh,
    );
    r.converge_ms = ms(host_converge);
    r.settings
        .insert("drill.loss".into(), format!("{}s", loss.as_secs()));
    r.settings
        .insert("drill.load".into(), format!("{}s", warm.as_secs()));
    r.settings.insert(
        "drill.power_after".into(),
        format!("{}s", power_after.as_secs()),
    );
    // natsmesh renders no sync setting: nats-server's default holds
    // unless the drill's wrapper set `always`.
    r.settings.insert(
        "jetstream.sync_interval".into(),
        if sync_always {
            "always (added by the drill's broker wrapper)".into()
        } else {
            "2m (nats-server's default)".into()
        },
    );
    load.finish(&mut r);

    // Recount by payload number (Load::finish counts in order, which a
    // hole left by the region's power loss would overcount).
    let final_acked: Vec<u64> = r.acked.iter().map(|(_, n)| *n).collect();
    let have: Vec<_> = STREAMS
        .iter()
        .zip(&contexts)
        .map(|((name, _), js)| rt.block_on(payloads(js, name)))
        .collect();
    let mut outside = 0;
    for i in [0, 2] {
        outside += missing(&have[i], acked_host[i]..final_acked[i]);
    }
    let us_after_return = missing(&have[1], acked_power[1]..final_acked[1]);
    let us_power_lost = missing(&have[1], 0..acked_power[1]);
    r.acked_lost = host_lost + outside + us_after_return;
    r.lost_outside_power_loss = Some(outside);
    let oldest_lost = have[1]
        .iter()
        .zip(0..)
        .find(|(n, i)| **n != *i)
        .map_or_else(|| (have[1].len() as u64).min(acked_power[1]), |(_, i)| i);
    let window = (us_power_lost > 0)
        .then(|| acked_at(&samples, oldest_lost))
        .flatten()
        .map(|t| power_at.saturating_duration_since(t));

    let bytes =
        |u: natsmesh_harness::volatile::Unsynced| format!("{} files, {} bytes", u.files, u.bytes);
    r.facts
        .push((format!("{host}'s power loss dropped"), bytes(host_dropped)));
    r.facts.push((
        format!("{host} current in US again after"),
        format!("{} ms", ms(host_converge)),
    ));
    r.facts.push((
        "acked lost with one machine (all streams)".into(),
        host_lost.to_string(),
    ));
    for (node, dropped, last_sync) in &region_dropped {
        r.facts.push((
            format!("{node}'s power loss dropped"),
            format!(
                "{}; its last fsync {} before the power went",
                bytes(*dropped),
                last_sync.map_or("never".to_owned(), |t| format!(
                    "{:.1} s",
                    power_at.saturating_duration_since(t).as_secs_f64()
                ))
            ),
        ));
    }
    r.facts.push((
        "US (all replicas in nyc3): acked lost with nyc3's power".into(),
        format!(
            "{us_power_lost} of {} acked before the power went{}",
            acked_power[1],
            window.map_or_else(String::new, |w| format!(
                "; the oldest lost was acked {:.1} s before",
                w.as_secs_f64()
            ))
        ),
    ));
    r.facts.push((
        "US serving again after nyc3's power returned".into(),
        us_back.map_or("not within 120 s".to_owned(), |d| format!("{} ms", ms(d))),
    ));
    r.facts.push((
        "EU and AP (no replica in nyc3): acked lost through nyc3's power loss".into(),
        outside.to_string(),
    ));
    r.facts.push((
        "a stream with one replica per region".into(),
        "not placeable: nats-server picks every peer of a stream from one cluster (createGroupForStream in server/jetstream_cluster.go), and natsmesh makes each region one cluster".into(),
    ));
    check(&mut r);
    // The drill took something: at nats-server's default, unsynced
    // writes were dropped both times (with `always` there may be none).
    if !sync_always {
        assert!(
            host_dropped.bytes > 0,
            "{host}'s store had nothing unsynced"
        );
        assert!(
            region_dropped.iter().all(|(_, d, _)| d.bytes > 0),
            "a nyc3 store had nothing unsynced: {region_dropped:?}"
        );
    }
}
