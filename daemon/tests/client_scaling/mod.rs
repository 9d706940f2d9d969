//! The client-scaling drill's clients (a module of `drills.rs`): every
//! region's clients come and go through the region's balancer — nyc3's the
//! fake DigitalOcean Load Balancer natsmeshd keeps itself in, fra1's and
//! sgp1's the same data plane with their three servers registered by hand
//! behind a TCP check, as a region without natsmesh's balancer support
//! would run — and each client, while connected, answers requests in its
//! region's queue group, asks one of them and publishes an acknowledged
//! JetStream message every period. What it measures: connect latency,
//! every failure (connects, unplanned disconnections, requests, publishes),
//! acknowledged messages lost, and each nats-server's CPU and memory from
//! `/proc`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{ConnectOptions, Event, ServerAddr};
use futures_util::StreamExt as _;
use natsmesh_harness::fakes::lb::{Pool, Probe, Running, Target};
use serde::Serialize;

use super::common::mesh::{DOMAIN, Mesh, Region};
use super::{PASSWORD, REGIONS, USER, env_secs, ms, percentile};

/// How the clients scale, per region: 0 → `peak` within `ramp`, held for
/// `hold`, down to `floor` (the rest leave at once), held for `hold`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Plan {
    pub peak: usize,
    pub floor: usize,
    pub ramp_s: u64,
    pub hold_s: u64,
    /// Each client's request and publish, once per period.
    pub period_ms: u64,
}

impl Plan {
    /// The drill's plan: `NATSMESH_DRILL_CLIENTS` at the peak (300), a
    /// tenth of it at the floor, `NATSMESH_DRILL_RAMP_SECS` (20) up and
    /// `NATSMESH_DRILL_HOLD_SECS` (10) at each level: within a minute.
    pub fn from_env() -> Self {
        let peak = std::env::var("NATSMESH_DRILL_CLIENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300usize)
            .max(10);
        Self {
            peak,
            floor: peak / 10,
            ramp_s: env_secs("NATSMESH_DRILL_RAMP_SECS", 20).as_secs(),
            hold_s: env_secs("NATSMESH_DRILL_HOLD_SECS", 10).as_secs(),
            period_ms: 5000,
        }
    }

    fn ramp(&self) -> Duration {
        Duration::from_secs(self.ramp_s)
    }

    fn hold(&self) -> Duration {
        Duration::from_secs(self.hold_s)
    }

    fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
}

/// Each region's balancer frontend: nyc3's the DigitalOcean fake's,
/// fra1's and sgp1's pools of their own (kept running while held).
pub struct Frontends {
    pub by_region: BTreeMap<&'static str, SocketAddr>,
    pub how: BTreeMap<&'static str, String>,
    _pools: Vec<(Pool, Running)>,
}

impl Frontends {
    /// `balanced` is the region behind the DigitalOcean fake; every other
    /// region gets a balancer with its servers' client ports registered by
    /// hand (a TCP check on the client port), waited on until all serve.
    pub fn start(mesh: &mut Mesh, balanced: Region) -> Self {
        let mut by_region = BTreeMap::new();
        let mut how = BTreeMap::new();
        let mut pools = Vec::new();
        for r in REGIONS {
            if r.name == balanced.name {
                by_region.insert(r.name, mesh.balancer().frontend());
                how.insert(
                    r.name,
                    "the fake DigitalOcean Load Balancer (natsmeshd keeps its node in it)".into(),
                );
                continue;
            }
            let pool = Pool::new(super::common::fleet::model());
            let std::net::IpAddr::V4(first) = mesh.addr(r, 1) else {
                panic!("the LAN is IPv4");
            };
            let [a, b, c, _] = first.octets();
            pool.allow_network(std::net::IpAddr::from([a, b, c, 0]), 24);
            for n in 1..=r.nodes {
                let addr: SocketAddr = mesh
                    .node(&format!("{}-n{n}", r.name))
                    .client_addr()
                    .parse()
                    .unwrap();
                pool.set(
                    &format!("{}-n{n}", r.name),
                    Target::new(addr, Probe::Tcp { port: addr.port() }),
                );
            }
            let running = Running::pools(vec![pool.clone()]);
            by_region.insert(r.name, running.frontend(0).unwrap());
            how.insert(
                r.name,
                "a balancer of the same fake data plane, its three servers registered by hand behind a TCP check of the client port".into(),
            );
            pools.push((pool, running));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (pool, _) in &pools {
            while pool.in_service().len() < 3 {
                assert!(
                    Instant::now() < deadline,
                    "balancer: {:?} in service",
                    pool.in_service()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self {
            by_region,
            how,
            _pools: pools,
        }
    }
}

/// A client's TLS as a client given the balancer's DNS name has it: the
/// server's certificate checked against the drills' root for the region's
/// name (`<region>.nats.test`, which every node's certificate carries),
/// whatever address was dialled (the frontend's, or a server's the
/// cluster advertised).
pub fn tls_for(root: &std::path::Path, region: &str) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(root).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from(format!("{region}.{DOMAIN}")).unwrap();
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AsName { inner, name }))
        .with_no_client_auth()
}

/// Verifies for a fixed name (see [`tls_for`]); everything else as
/// WebPKI does.
#[derive(Debug)]
struct AsName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for AsName {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _dialled: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One region's clients' counts, shared by its clients' tasks.
#[derive(Default)]
struct Tally {
    connect: std::sync::Mutex<Vec<Duration>>,
    connect_failed: AtomicU64,
    disconnected: AtomicU64,
    answered: AtomicU64,
    request_failed: AtomicU64,
    acked: std::sync::Mutex<Vec<String>>,
    publish_failed: AtomicU64,
    /// The first failures, with what.
    why: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn failed(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut why = self.why.lock().unwrap();
        if why.len() < 10 {
            why.push(what);
        }
    }
}

/// One region's clients, as the report has them.
#[derive(Debug, Serialize)]
pub struct RegionClients {
    pub region: String,
    /// Through what the clients connected.
    pub via: String,
    pub connected: u64,
    pub connect_failed: u64,
    pub connect_p50_ms: Option<u64>,
    pub connect_p99_ms: Option<u64>,
    pub connect_max_ms: Option<u64>,
    /// Client connections on the region's servers (`/varz`, summed) in
    /// the middle of the peak and of the floor; natsmeshd's own included.
    pub connections_at_peak: u64,
    pub connections_at_floor: u64,
    /// Disconnections a client did not ask for.
    pub disconnected: u64,
    pub requests_answered: u64,
    pub requests_failed: u64,
    pub published_acked: u64,
    pub publish_failed: u64,
    pub acked_lost: u64,
    pub first_failures: Vec<String>,
}

/// One nats-server's use of the machine, from `/proc/<pid>`.
#[derive(Debug, Serialize)]
pub struct BrokerUse {
    pub node: String,
    /// CPU time (`/proc/<pid>/stat`) while the clients came and stayed at
    /// the peak, and while the rest left and the floor stayed (ms).
    pub cpu_ms_up: u64,
    pub cpu_ms_down: u64,
    /// The same as a share of one core (percent).
    pub cpu_pct_up: f64,
    pub cpu_pct_down: f64,
    /// Resident memory before the clients came, at the peak, at the floor
    /// (MiB), and the process's high-water mark at the end.
    pub rss_mib_before: f64,
    pub rss_mib_peak: f64,
    pub rss_mib_floor: f64,
    pub rss_mib_high_water: f64,
}

/// What the client-scaling drill measured.
#[derive(Debug, Serialize)]
pub struct ClientScaling {
    pub plan: Plan,
    /// From the first client's arrival to the last one's departure.
    pub lasted_ms: u64,
    /// Connect latency over every region's clients: dialling the
    /// balancer to the first PONG (TLS, CONNECT with the user's password
    /// checked).
    pub connect_p50_ms: Option<u64>,
    pub connect_p99_ms: Option<u64>,
    pub regions: Vec<RegionClients>,
    pub brokers: Vec<BrokerUse>,
}

impl ClientScaling {
    /// Every failure a client saw: connects, unplanned disconnections,
    /// requests and publishes.
    pub fn failures(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.connect_failed + r.disconnected + r.requests_failed + r.publish_failed)
            .sum()
    }
}

/// A value of `key` (in kB) in `/proc/<pid>/status`, in MiB.
pub fn status_mib(status: &str, key: &str) -> Option<f64> {
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The CPU time a process has used (all its threads, living and ended:
/// `utime` + `stime` of `/proc/<pid>/stat`), in nanoseconds. The fields
/// count in USER_HZ, which Linux fixes at 100 for user space whatever the
/// kernel's own tick.
pub fn stat_cpu_ns(stat: &str) -> Option<u64> {
    // The command (field 2) may hold spaces and parentheses: count from
    // the last `)`; the state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

/// One reading of a process: CPU time (ns), RSS and high-water (MiB).
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    cpu_ns: u64,
    rss_mib: f64,
    hwm_mib: f64,
}

fn read_proc(pid: u32) -> Reading {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    Reading {
        cpu_ns: stat_cpu_ns(&stat).unwrap_or(0),
        rss_mib: status_mib(&status, "VmRSS").unwrap_or(0.0),
        hwm_mib: status_mib(&status, "VmHWM").unwrap_or(0.0),
    }
}

/// Every node's broker pid, by node name.
fn broker_pids(mesh: &mut Mesh) -> Vec<(String, u32)> {
    let names: Vec<String> = mesh.nodes.keys().cloned().collect();
    names
        .into_iter()
        .filter_map(|n| {
            let pid = mesh.node(&n).status().and_then(|s| s.broker_pid)?;
            Some((n, pid))
        })
        .collect()
}

/// The region's servers' client connections, summed from `/varz`.
fn connections(mesh: &Mesh, r: Region) -> u64 {
    mesh.nodes
        .iter()
        .filter(|(n, _)| n.starts_with(r.name))
        .filter_map(|(_, d)| d.monitor("/varz"))
        .filter_map(|v| v["connections"].as_u64())
        .sum()
}

const STREAM_PREFIX: &str = "SCALE_";

fn stream_of(region: &str) -> String {
    format!("{STREAM_PREFIX}{}", region.to_uppercase())
}

/// Plays `plan` in every region at once through `fronts`; `admin` are the
/// servers an administrative client (stream set-up, counting) uses.
pub fn run(
    mesh: &mut Mesh,
    fronts: &Frontends,
    plan: Plan,
    root: &std::path::Path,
    admin: Vec<ServerAddr>,
) -> ClientScaling {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The streams: R3, one placed in each region, before any client.
    let admin = rt.block_on(async {
        let c = super::client(admin, None).await;
        let js = jetstream::new(c.clone());
        for r in REGIONS {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let config = jetstream::stream::Config {
                    name: stream_of(r.name),
                    subjects: vec![format!("scale.js.{}.>", r.name)],
                    num_replicas: 3,
                    placement: Some(jetstream::stream::Placement {
                        cluster: Some(r.name.into()),
                        tags: vec![],
                    }),
                    ..Default::default()
                };
                match js.create_stream(config).await {
                    Ok(_) => break,
                    // The meta group may still be settling.
                    Err(e) => assert!(
                        tokio::time::Instant::now() < deadline,
                        "stream {}: {e}",
                        stream_of(r.name)
                    ),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        js
    });

    let pids = broker_pids(mesh);
    let before: Vec<Reading> = pids.iter().map(|(_, p)| read_proc(*p)).collect();
    // The whole drill's bound: every client loop ends by then whatever
    // happens.
    let deadline =
        tokio::time::Instant::now() + plan.ramp() + plan.hold() * 2 + Duration::from_secs(60);
    let mut tallies = BTreeMap::new();
    let mut targets = Vec::new();
    let mut spawners = Vec::new();
    for r in REGIONS {
        let tally = Arc::new(Tally::default());
        tallies.insert(r.name, tally.clone());
        let (tx, rx) = tokio::sync::watch::channel(plan.peak);
        targets.push(tx);
        let front: ServerAddr = format!("nats://{}", fronts.by_region[r.name])
            .parse()
            .unwrap();
        let tls = tls_for(root, r.name);
        let region = r.name;
        // Clients arrive evenly over the ramp.
        let ramp_start = tokio::time::Instant::now();
        spawners.push(rt.spawn(async move {
            let step = plan.ramp() / u32::try_from(plan.peak).unwrap();
            let mut tasks = Vec::new();
            for i in 0..plan.peak {
                // On the ramp's own clock: a busy machine's late wake-ups
                // do not stretch it.
                tokio::time::sleep_until(ramp_start + step * u32::try_from(i).unwrap()).await;
                tasks.push(tokio::spawn(scale_client(
                    i,
                    region,
                    front.clone(),
                    tls.clone(),
                    tally.clone(),
                    rx.clone(),
                    plan.period(),
                    deadline,
                )));
            }
            tasks
        }));
    }
    let began = Instant::now();
    // At the middle of the peak: connections counted, brokers read.
    std::thread::sleep(plan.ramp() + plan.hold() / 2);
    let at_peak: Vec<u64> = REGIONS.iter().map(|r| connections(mesh, *r)).collect();
    let peak: Vec<Reading> = pids.iter().map(|(_, p)| read_proc(*p)).collect();
    std::thread::sleep((plan.ramp() + plan.hold()).saturating_sub(began.elapsed()));
    let up = began.elapsed();
    let after_up: Vec<Reading> = pids.iter().map(|(_, p)| read_proc(*p)).collect();
    // Down: all but the floor leave at once.
    for tx in &targets {
        let _ = tx.send(plan.floor);
    }
    let down_began = Instant::now();
    std::thread::sleep(plan.hold() / 2);
    let at_floor: Vec<u64> = REGIONS.iter().map(|r| connections(mesh, *r)).collect();
    let floor: Vec<Reading> = pids.iter().map(|(_, p)| read_proc(*p)).collect();
    std::thread::sleep(plan.hold().saturating_sub(down_began.elapsed()));
    let down = down_began.elapsed();
    let end: Vec<Reading> = pids.iter().map(|(_, p)| read_proc(*p)).collect();
    // Everybody leaves; every client task ends within the deadline.
    for tx in &targets {
        let _ = tx.send(0);
    }
    rt.block_on(async {
        for s in spawners {
            let tasks = s.await.unwrap();
            for t in tasks {
                tokio::time::timeout_at(deadline + Duration::from_secs(10), t)
                    .await
                    .expect("a client outlived the drill's deadline")
                    .unwrap();
            }
        }
    });
    let lasted = began.elapsed();

    let mut all_connects = Vec::new();
    let mut regions = Vec::new();
    for (i, r) in REGIONS.iter().enumerate() {
        let t = &tallies[r.name];
        let connects = t.connect.lock().unwrap().clone();
        all_connects.extend_from_slice(&connects);
        let acked = t.acked.lock().unwrap().clone();
        let publish_failed = t.publish_failed.load(Ordering::Relaxed);
        let lost = rt.block_on(lost_ids(&admin, &stream_of(r.name), &acked, publish_failed));
        regions.push(RegionClients {
            region: r.name.into(),
            via: fronts.how[r.name].clone(),
            connected: u64::try_from(connects.len()).unwrap(),
            connect_failed: t.connect_failed.load(Ordering::Relaxed),
            connect_p50_ms: percentile(&connects, 0.5).map(ms),
            connect_p99_ms: percentile(&connects, 0.99).map(ms),
            connect_max_ms: connects.iter().max().copied().map(ms),
            connections_at_peak: at_peak[i],
            connections_at_floor: at_floor[i],
            disconnected: t.disconnected.load(Ordering::Relaxed),
            requests_answered: t.answered.load(Ordering::Relaxed),
            requests_failed: t.request_failed.load(Ordering::Relaxed),
            published_acked: u64::try_from(acked.len()).unwrap(),
            publish_failed,
            acked_lost: lost,
            first_failures: t.why.lock().unwrap().clone(),
        });
    }
    let pct =
        |ns: u64, over: Duration| (ns as f64 / 1e9 / over.as_secs_f64() * 1000.0).round() / 10.0;
    let round = |mib: f64| (mib * 10.0).round() / 10.0;
    let brokers = pids
        .iter()
        .enumerate()
        .map(|(i, (node, _))| {
            let cpu_up = after_up[i].cpu_ns.saturating_sub(before[i].cpu_ns);
            let cpu_down = end[i].cpu_ns.saturating_sub(after_up[i].cpu_ns);
            BrokerUse {
                node: node.clone(),
                cpu_ms_up: cpu_up / 1_000_000,
                cpu_ms_down: cpu_down / 1_000_000,
                cpu_pct_up: pct(cpu_up, up),
                cpu_pct_down: pct(cpu_down, down),
                rss_mib_before: round(before[i].rss_mib),
                rss_mib_peak: round(peak[i].rss_mib),
                rss_mib_floor: round(floor[i].rss_mib),
                rss_mib_high_water: round(end[i].hwm_mib),
            }
        })
        .collect();
    rt.shutdown_timeout(Duration::from_secs(5));
    ClientScaling {
        plan,
        lasted_ms: ms(lasted),
        connect_p50_ms: percentile(&all_connects, 0.5).map(ms),
        connect_p99_ms: percentile(&all_connects, 0.99).map(ms),
        regions,
        brokers,
    }
}

/// The acked message ids missing from `stream` (each message's payload is
/// its id); no more stored than were attempted (`acked` and `failed`: a
/// publish whose ack was lost may be stored, none twice).
async fn lost_ids(js: &jetstream::Context, stream: &str, acked: &[String], failed: u64) -> u64 {
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap().clone();
    let mut present = BTreeSet::new();
    for seq in 1..=info.state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            present.insert(String::from_utf8_lossy(&m.payload).into_owned());
        }
    }
    assert!(
        info.state.messages <= u64::try_from(acked.len()).unwrap() + failed,
        "{stream}: {} stored for {} acked and {failed} failed",
        info.state.messages,
        acked.len()
    );
    acked
        .iter()
        .filter(|id| !present.contains(id.as_str()))
        .count() as u64
}

/// One client of `region`: connects through `front` (timed), answers
/// requests in the region's queue group, and once a period asks the group
/// and publishes an acknowledged message, until `target` falls to `i` or
/// below (then it drains and leaves) or the deadline passes.
#[allow(clippy::too_many_arguments)]
async fn scale_client(
    i: usize,
    region: &'static str,
    front: ServerAddr,
    tls: rustls::ClientConfig,
    tally: Arc<Tally>,
    mut target: tokio::sync::watch::Receiver<usize>,
    period: Duration,
    deadline: tokio::time::Instant,
) {
    let leaving = Arc::new(AtomicBool::new(false));
    let options = {
        let leaving = leaving.clone();
        let tally = tally.clone();
        ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into())
            .tls_client_config(tls)
            .require_tls(true)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let leaving = leaving.clone();
                let tally = tally.clone();
                async move {
                    if matches!(event, Event::Disconnected) && !leaving.load(Ordering::Relaxed) {
                        tally.failed(
                            &tally.disconnected,
                            format!("{region} client {i}: disconnected"),
                        );
                    }
                }
            })
    };
    let began = Instant::now();
    let c = match tokio::time::timeout(Duration::from_secs(10), options.connect(front)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tally.failed(
                &tally.connect_failed,
                format!("{region} client {i}: connect: {e}"),
            );
            return;
        }
        Err(_) => {
            tally.failed(
                &tally.connect_failed,
                format!("{region} client {i}: connect: over 10 s"),
            );
            return;
        }
    };
    tally.connect.lock().unwrap().push(began.elapsed());
    let group = format!("scale.echo.{region}");
    let Ok(mut sub) = c.queue_subscribe(group.clone(), "echo".into()).await else {
        tally.failed(
            &tally.request_failed,
            format!("{region} client {i}: subscribe"),
        );
        return;
    };
    // The responder; told to leave, it drains its subscription (the
    // server stops routing here once the UNSUB is through), answers what
    // was routed here before that, and flushes its answers.
    let (leave, left) = tokio::sync::oneshot::channel::<()>();
    let responder = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut left = std::pin::pin!(left);
            let mut draining = false;
            loop {
                tokio::select! {
                    m = sub.next() => match m {
                        Some(m) => {
                            if let Some(reply) = m.reply {
                                let _ = c.publish(reply, m.payload).await;
                            }
                        }
                        None => break,
                    },
                    _ = &mut left, if !draining => {
                        draining = true;
                        let _ = sub.drain().await;
                    }
                }
            }
            let _ = c.flush().await;
        })
    };
    let js = jetstream::new(c.clone());
    // The first turn somewhere in the first period, so that the load is
    // spread.
    let mut turn = tokio::time::Instant::now() + period.mul_f64(fastrand::f64());
    let mut k = 0u64;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(turn) => {}
            changed = target.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        if *target.borrow() <= i || tokio::time::Instant::now() >= deadline {
            break;
        }
        if tokio::time::Instant::now() < turn {
            continue;
        }
        turn += period;
        let asked = tokio::time::timeout(
            Duration::from_secs(2),
            c.request(group.clone(), "ping".into()),
        )
        .await;
        match asked {
            Ok(Ok(_)) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => tally.failed(
                &tally.request_failed,
                format!("{region} client {i}: request: {e}"),
            ),
            Err(_) => tally.failed(
                &tally.request_failed,
                format!("{region} client {i}: request: no answer within 2 s"),
            ),
        }
        let id = format!("{region}-{i}-{k}");
        k += 1;
        let msg = jetstream::message::PublishMessage::build()
            .payload(id.clone().into())
            .message_id(id.clone());
        let acked = match tokio::time::timeout(
            Duration::from_secs(5),
            js.send_publish(format!("scale.js.{region}.{i}"), msg),
        )
        .await
        {
            Ok(Ok(ack)) => match tokio::time::timeout(Duration::from_secs(5), ack).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("ack: {e}")),
                Err(_) => Err("no ack within 5 s".to_owned()),
            },
            Ok(Err(e)) => Err(format!("publish: {e}")),
            Err(_) => Err("publish: over 5 s".to_owned()),
        };
        match acked {
            Ok(()) => tally.acked.lock().unwrap().push(id),
            Err(e) => tally.failed(&tally.publish_failed, format!("{region} client {i}: {e}")),
        }
    }
    // Leaving as a well-behaved client does: its queue subscription
    // drained and what the server routed here answered and flushed, then
    // the connection closed. (Draining the whole client at once closes
    // the connection as soon as the subscription is drained, which may be
    // before the last answers are written.)
    leaving.store(true, Ordering::Relaxed);
    let _ = leave.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), responder).await;
    let _ = c.drain().await;
}
