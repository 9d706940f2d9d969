//! What a cloud load balancer does with the backends its API was told
//! about, shared by the DigitalOcean and Linode fakes: a control plane that
//! reaches the data plane late, a health checker, and a TCP proxy.
//!
//! * A [`Pool`] is one balanced port. The API side calls [`Pool::set`] and
//!   [`Pool::remove`]; each change takes effect [`Model::propagation`]
//!   later, in the order made (real balancers apply configuration
//!   asynchronously, so a registration is never live at once).
//! * A backend the data plane knows starts out of service. Every
//!   [`Model::check_interval`] the checker probes each known backend (HTTP
//!   `GET path` expecting a 2xx within [`Model::response_timeout`], or a
//!   TCP connect); [`Model::healthy_threshold`] successes in a row put it in
//!   service, [`Model::unhealthy_threshold`] failures in a row take it out.
//!   A backend without a health check ([`Probe::None`]) is in service as
//!   soon as it is known. A removed backend is out of service at once when
//!   the removal lands.
//! * The frontend (a TCP listener on 127.0.0.1) sends each accepted
//!   connection to the next backend in service, weighted round robin over
//!   [`Mode::Accept`] backends (over [`Mode::Backup`] ones only when no
//!   accepting one is in service), and copies bytes both ways until the
//!   connection ends. With none in service the connection is closed at once.
//!   Connections already proxied outlive their backend's removal, failed
//!   health or drain, as on real balancers; only [`Mode::Reject`] cuts them.
//! * Timing always comes from the [`Model`] (tests run in milliseconds);
//!   what to probe (kind, port, path) comes from the provider's API object.
//! * Only loopback backends are probed or proxied to, unless a test opens
//!   a network of its own with [`Pool::allow_network`] (e.g. the bridge of
//!   its network namespaces): a backend elsewhere (an API object naming a
//!   real private address) fails every check without a packet being sent,
//!   since this machine must not send traffic to addresses it does not own.
//!
//! [`Running`] runs an API router and the pools' tasks on one runtime
//! thread of the fake's own, stopped when dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// How the balancer's data plane behaves in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    /// Time between two probes of a backend.
    pub check_interval: Duration,
    /// Successes in a row that put a backend in service.
    pub healthy_threshold: u32,
    /// Failures in a row that take a backend out of service.
    pub unhealthy_threshold: u32,
    /// Delay between an API change and the data plane acting on it.
    pub propagation: Duration,
    /// A probe slower than this failed.
    pub response_timeout: Duration,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            propagation: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
        }
    }
}

impl Model {
    /// A duration as the APIs show it: whole seconds, at least 1.
    pub fn secs(d: Duration) -> u64 {
        d.as_secs_f64().ceil().max(1.0) as u64
    }

    /// The longest a registered, healthy backend waits to be in service:
    /// propagation, then `healthy_threshold` probes (the first within one
    /// interval), each answering within `response_timeout`.
    pub fn time_to_serve(&self) -> Duration {
        self.propagation + self.check_interval * self.healthy_threshold + self.response_timeout
    }

    /// The longest a backend whose checks start failing stays in service.
    pub fn time_to_fail(&self) -> Duration {
        (self.check_interval + self.response_timeout) * (self.unhealthy_threshold + 1)
    }
}

/// How a backend's health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No check: in service as soon as known.
    None,
    /// A TCP connect to `port` on the backend's IP.
    Tcp {
        /// Port probed.
        port: u16,
    },
    /// `GET path` on `port` of the backend's IP; a 2xx passes (and, when
    /// `body` is given, only if the response body contains it).
    Http {
        /// Port probed.
        port: u16,
        /// Request path.
        path: String,
        /// Text the body must contain (Linode's `http_body`).
        body: Option<String>,
    },
    /// A check this fake cannot perform (HTTPS, with the reason): always
    /// fails, so the backend never serves.
    Unsupported(String),
}

/// What a backend receives (Linode's node `mode`; DigitalOcean has only
/// `Accept`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Takes new connections.
    #[default]
    Accept,
    /// Takes nothing; its connections are cut when the mode lands.
    Reject,
    /// Takes no new connections; existing ones go on.
    Drain,
    /// Takes new connections only while no `Accept` backend is in service.
    Backup,
}

/// One backend as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where client connections go.
    pub addr: SocketAddr,
    /// Its health check.
    pub probe: Probe,
    /// Round-robin weight (at least 1).
    pub weight: u32,
    /// What it receives.
    pub mode: Mode,
}

impl Target {
    /// An accepting backend of weight 1.
    pub fn new(addr: SocketAddr, probe: Probe) -> Self {
        Self {
            addr,
            probe,
            weight: 1,
            mode: Mode::Accept,
        }
    }
}

/// A known backend's health as the balancer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Known, no verdict yet (out of service).
    Unknown,
    /// In service.
    Up,
    /// Out of service after failed checks.
    Down,
}

enum Change {
    Set(String, Target),
    Remove(String),
}

/// A backend the data plane knows.
struct Backend {
    target: Target,
    /// Changes when the backend is replaced, so a late probe result of the
    /// old one is dropped.
    generation: u64,
    successes: u32,
    failures: u32,
    in_service: bool,
    /// A threshold was reached at least once.
    decided: bool,
    /// Proxied connections (finished ones are pruned lazily).
    conns: Vec<AbortHandle>,
    /// Deregistered, still served until its health check takes it out
    /// ([`Pool::removal_waits_for_health`]).
    removed: bool,
    /// Smooth weighted round robin's running weight.
    current: i64,
}

struct Inner {
    /// What the API asked for last, per key (the control plane).
    desired: BTreeMap<String, Target>,
    /// What the data plane acts on.
    known: BTreeMap<String, Backend>,
    generation: u64,
    changes: Option<mpsc::UnboundedReceiver<(Instant, Change)>>,
    /// Networks besides loopback the data plane may reach.
    networks: Vec<(IpAddr, u8)>,
    /// A deregistered backend in service stays until its checks fail.
    removal_waits_for_health: bool,
}

/// One balanced port: its backends, checker and proxy. Clones share it.
#[derive(Clone)]
pub struct Pool {
    model: Model,
    inner: Arc<Mutex<Inner>>,
    tx: mpsc::UnboundedSender<(Instant, Change)>,
}

impl Pool {
    /// An empty pool; its tasks start with [`Running::start`].
    pub fn new(model: Model) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            model,
            inner: Arc::new(Mutex::new(Inner {
                desired: BTreeMap::new(),
                known: BTreeMap::new(),
                generation: 0,
                changes: Some(rx),
                networks: Vec::new(),
                removal_waits_for_health: false,
            })),
            tx,
        }
    }

    /// The model it follows.
    pub fn model(&self) -> Model {
        self.model
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, change: Change) {
        // Fails only once the runtime is gone, when nothing matters.
        let _ = self
            .tx
            .send((Instant::now() + self.model.propagation, change));
    }

    /// Registers or updates backend `key`; the data plane follows after
    /// `propagation`. Setting what is already asked is no change.
    pub fn set(&self, key: &str, target: Target) {
        {
            let mut inner = self.lock();
            if inner.desired.get(key) == Some(&target) {
                return;
            }
            inner.desired.insert(key.to_owned(), target.clone());
        }
        self.send(Change::Set(key.to_owned(), target));
    }

    /// Deregisters backend `key`; the data plane follows after
    /// `propagation`.
    pub fn remove(&self, key: &str) {
        if self.lock().desired.remove(key).is_some() {
            self.send(Change::Remove(key.to_owned()));
        }
    }

    /// From now on a deregistered backend that is in service keeps
    /// receiving new connections until its own health check takes it out
    /// (`unhealthy_threshold` failures), the worst a real balancer may do:
    /// its data plane is not promised to drop a removed node any sooner
    /// than its checks would. A backend out of service goes at once.
    pub fn removal_waits_for_health(&self) {
        self.lock().removal_waits_for_health = true;
    }

    /// Lets the data plane reach `network`/`prefix` besides loopback (only
    /// for networks the test itself set up on this machine).
    pub fn allow_network(&self, network: IpAddr, prefix: u8) {
        self.lock().networks.push((network, prefix));
    }

    fn may_reach(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || self
                .lock()
                .networks
                .iter()
                .any(|(net, prefix)| in_network(ip, *net, *prefix))
    }

    /// Keys registered through the API (whether or not known yet).
    pub fn registered(&self) -> Vec<String> {
        self.lock().desired.keys().cloned().collect()
    }

    /// Keys the data plane knows.
    pub fn known(&self) -> Vec<String> {
        self.lock().known.keys().cloned().collect()
    }

    /// Keys in service (whatever their mode).
    pub fn in_service(&self) -> Vec<String> {
        self.lock()
            .known
            .iter()
            .filter(|(_, b)| b.in_service)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The health of `key`, `None` while the data plane does not know it.
    pub fn health(&self, key: &str) -> Option<Health> {
        self.lock()
            .known
            .get(key)
            .map(|b| match (b.decided, b.in_service) {
                (_, true) => Health::Up,
                (false, false) => Health::Unknown,
                (true, false) => Health::Down,
            })
    }

    /// Open proxied connections to `key`.
    pub fn connections(&self, key: &str) -> usize {
        self.lock()
            .known
            .get(key)
            .map_or(0, |b| b.conns.iter().filter(|c| !c.is_finished()).count())
    }

    /// Starts the applier, the checker and the proxy on the current runtime.
    fn run(&self, frontend: TcpListener) {
        if let Some(rx) = self.lock().changes.take() {
            tokio::spawn(self.clone().apply_loop(rx));
        }
        tokio::spawn(self.clone().check_loop());
        tokio::spawn(self.clone().accept_loop(frontend));
    }

    /// Applies each change when its propagation delay is over, in order.
    async fn apply_loop(self, mut rx: mpsc::UnboundedReceiver<(Instant, Change)>) {
        while let Some((due, change)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            self.apply(change);
        }
    }

    fn apply(&self, change: Change) {
        let mut inner = self.lock();
        match change {
            Change::Remove(key) => {
                let slow = inner.removal_waits_for_health;
                match inner.known.get_mut(&key) {
                    Some(b) if slow && b.in_service => b.removed = true,
                    // Dropping the handles leaves the connections running.
                    _ => {
                        inner.known.remove(&key);
                    }
                }
            }
            Change::Set(key, target) => {
                if let Some(b) = inner.known.get_mut(&key)
                    && b.target.addr == target.addr
                    && b.target.probe == target.probe
                {
                    // Same backend, new weight or mode: health stays.
                    if target.mode == Mode::Reject && b.target.mode != Mode::Reject {
                        for c in b.conns.drain(..) {
                            c.abort();
                        }
                    }
                    // Registered again before its checks took it out.
                    b.removed = false;
                    b.target = target;
                    return;
                }
                inner.generation += 1;
                let unchecked = target.probe == Probe::None;
                let backend = Backend {
                    target,
                    generation: inner.generation,
                    successes: 0,
                    failures: 0,
                    in_service: unchecked,
                    decided: unchecked,
                    conns: Vec::new(),
                    removed: false,
                    current: 0,
                };
                inner.known.insert(key, backend);
            }
        }
    }

    /// Probes every known backend each interval, each probe on its own task
    /// so a slow one delays no other.
    async fn check_loop(self) {
        let mut tick = tokio::time::interval(self.model.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let round: Vec<(String, u64, IpAddr, Probe)> = self
                .lock()
                .known
                .iter()
                .filter(|(_, b)| b.target.probe != Probe::None)
                .map(|(k, b)| {
                    (
                        k.clone(),
                        b.generation,
                        b.target.addr.ip(),
                        b.target.probe.clone(),
                    )
                })
                .collect();
            for (key, generation, ip, probe) in round {
                let pool = self.clone();
                if !self.may_reach(ip) {
                    pool.record(&key, generation, false);
                    continue;
                }
                tokio::spawn(async move {
                    let ok =
                        tokio::time::timeout(pool.model.response_timeout, probe_once(ip, &probe))
                            .await
                            .unwrap_or(false);
                    pool.record(&key, generation, ok);
                });
            }
        }
    }

    fn record(&self, key: &str, generation: u64, ok: bool) {
        let (healthy, unhealthy) = (self.model.healthy_threshold, self.model.unhealthy_threshold);
        let mut inner = self.lock();
        let Some(b) = inner.known.get_mut(key) else {
            return;
        };
        if b.generation != generation {
            return;
        }
        if ok {
            b.successes = b.successes.saturating_add(1);
            b.failures = 0;
            if !b.in_service && b.successes >= healthy.max(1) {
                b.in_service = true;
                b.decided = true;
            }
        } else {
            b.failures = b.failures.saturating_add(1);
            b.successes = 0;
            if (b.in_service || !b.decided) && b.failures >= unhealthy.max(1) {
                b.in_service = false;
                b.decided = true;
            }
        }
        if b.removed && !b.in_service {
            inner.known.remove(key);
        }
    }

    /// The next backend for a new connection (smooth weighted round robin,
    /// as nginx does it), with its generation.
    fn pick(&self) -> Option<(String, u64, SocketAddr)> {
        let mut inner = self.lock();
        let serving = |mode: Mode| move |b: &Backend| b.in_service && b.target.mode == mode;
        let mode = if inner.known.values().any(serving(Mode::Accept)) {
            Mode::Accept
        } else {
            Mode::Backup
        };
        let mut total = 0i64;
        let mut best: Option<(&String, &mut Backend)> = None;
        for (key, b) in inner.known.iter_mut().filter(|(_, b)| serving(mode)(b)) {
            let w = i64::from(b.target.weight.max(1));
            b.current += w;
            total += w;
            if best.as_ref().is_none_or(|(_, x)| b.current > x.current) {
                best = Some((key, b));
            }
        }
        let (key, b) = best?;
        b.current -= total;
        Some((key.clone(), b.generation, b.target.addr))
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let pool = self.clone();
            tokio::spawn(async move { pool.proxy(client).await });
        }
    }

    async fn proxy(self, mut client: TcpStream) {
        let Some((key, generation, addr)) = self.pick() else {
            // Nothing to send it to: the client sees the connection end.
            return;
        };
        if !self.may_reach(addr.ip()) {
            return;
        }
        let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
        let Ok(Ok(mut upstream)) = connect else {
            // One attempt, as the balancer's health view was stale.
            return;
        };
        let task = tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        let mut inner = self.lock();
        if let Some(b) = inner.known.get_mut(&key)
            && b.generation == generation
        {
            b.conns.retain(|c| !c.is_finished());
            b.conns.push(task.abort_handle());
        }
    }
}

/// One probe of `ip` (no timeout of its own).
async fn probe_once(ip: IpAddr, probe: &Probe) -> bool {
    match probe {
        Probe::None => true,
        Probe::Unsupported(_) => false,
        Probe::Tcp { port } => TcpStream::connect((ip, *port)).await.is_ok(),
        Probe::Http { port, path, body } => {
            http_probe(SocketAddr::new(ip, *port), path, body.as_deref())
                .await
                .unwrap_or(false)
        }
    }
}

async fn http_probe(addr: SocketAddr, path: &str, want: Option<&str>) -> std::io::Result<bool> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fake-lb-health-check\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Headers first; the body only when it must be searched.
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 65_536 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    let ok = head.starts_with("HTTP/1.") && status.is_some_and(|c| (200..300).contains(&c));
    let Some(want) = want else {
        return Ok(ok);
    };
    while buf.len() < 1 << 20 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if find(&buf[head_end..], want.as_bytes()).is_some() {
            break;
        }
    }
    Ok(ok && find(&buf[head_end..], want.as_bytes()).is_some())
}

/// Whether `ip` is in `net`/`prefix` (same family only).
pub(crate) fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let bits = u32::from(prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let bits = u32::from(prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An API router and its pools, served from a runtime thread of their own.
pub struct Running {
    api: SocketAddr,
    frontends: Vec<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Serves `router` on a free loopback port, each pool's frontend on
    /// another, in the network namespace at `netns` when given (see
    /// [`super::Server::start_in`]).
    pub fn start(router: Router, pools: Vec<Pool>, netns: Option<std::path::PathBuf>) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                let file = std::fs::File::open(&ns).expect("open netns");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake runtime");
            rt.block_on(async move {
                let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
                let mut frontends = Vec::new();
                for pool in &pools {
                    let l = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind frontend");
                    frontends.push(l.local_addr().expect("addr"));
                    pool.run(l);
                }
                addr_tx
                    .send((api.local_addr().expect("addr"), frontends))
                    .expect("send addrs");
                let _ = axum::serve(api, router)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
            // Dropping the runtime ends the checker, proxy and connections.
        });
        let (api, frontends) = addr_rx.recv().expect("fake addresses");
        Self {
            api,
            frontends,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Pools with no API in front (a balancer whose backends a test
    /// registers by hand with [`Pool::set`]), served as [`Running::start`]
    /// serves them.
    pub fn pools(pools: Vec<Pool>) -> Self {
        Self::start(Router::new(), pools, None)
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// Pool `i`'s frontend.
    pub fn frontend(&self, i: usize) -> Option<SocketAddr> {
        self.frontends.get(i).copied()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `2017-02-01T22:22:58Z` for Unix seconds.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Query pairs of a URI, percent-decoded.
pub(crate) fn query(uri: &axum::http::Uri) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

// Test backends ---------------------------------------------------------------

/// A tiny backend on real loopback sockets, for tests of the fakes and of
/// the daemon: a client port that answers each line `<line>` with
/// `<name> <line>` (and, unless [`TestBackend::plain`], also answers
/// `GET /ready` like the health port does, so a check aimed at the client
/// port can pass), and a health port answering `GET /ready` with 200, or
/// 503 while [`TestBackend::set_ready`] says not ready. Stops when dropped.
pub struct TestBackend {
    /// Its name, the prefix of every answer.
    pub name: String,
    /// The client (echo) port's address.
    pub client: SocketAddr,
    /// The health (HTTP) port's address.
    pub health: SocketAddr,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl TestBackend {
    /// Listens on `ip`, on `client_port` and `health_port` (0: any free
    /// one); `None` when a port is taken.
    pub fn start_on(name: &str, ip: IpAddr, client_port: u16, health_port: u16) -> Option<Self> {
        Self::build(name, ip, client_port, health_port, true)
    }

    /// Both ports free on 127.0.0.1.
    pub fn start(name: &str) -> Self {
        Self::start_on(name, IpAddr::from([127, 0, 0, 1]), 0, 0).expect("bind test backend")
    }

    /// Like [`TestBackend::start`] but the client port speaks only its line
    /// protocol, as nats-server's does: an HTTP check sent there fails.
    pub fn plain(name: &str) -> Self {
        Self::build(name, IpAddr::from([127, 0, 0, 1]), 0, 0, false).expect("bind test backend")
    }

    fn build(name: &str, ip: IpAddr, cport: u16, hport: u16, http_on_client: bool) -> Option<Self> {
        let client = StdListener::bind((ip, cport)).ok()?;
        let health = StdListener::bind((ip, hport)).ok()?;
        let ready = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let mut me = Self {
            name: name.to_owned(),
            client: client.local_addr().ok()?,
            health: health.local_addr().ok()?,
            ready: ready.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        let serve = |l: StdListener, echo: bool, http: bool| {
            let (name, ready, stop) = (name.to_owned(), ready.clone(), stop.clone());
            std::thread::spawn(move || {
                accept_std(l, &stop, |s| {
                    let (name, ready) = (name.clone(), ready.clone());
                    std::thread::spawn(move || serve_conn(s, &name, &ready, echo, http));
                })
            })
        };
        me.threads.push(serve(client, true, http_on_client));
        me.threads.push(serve(health, false, true));
        Some(me)
    }

    /// Whether `/ready` answers 200 (else 503).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Polls a non-blocking listener until `stop`.
fn accept_std(l: StdListener, stop: &AtomicBool, mut each: impl FnMut(StdStream)) {
    if l.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                each(s);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_conn(s: StdStream, name: &str, ready: &AtomicBool, echo: bool, http: bool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = s.try_clone() else {
        return;
    };
    let mut lines = BufReader::new(s);
    let mut line = String::new();
    let mut first = true;
    while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
        if first && http && line.starts_with("GET ") {
            // Skip the headers, answer, close.
            let mut h = String::new();
            while matches!(lines.read_line(&mut h), Ok(n) if n > 2) {
                h.clear();
            }
            let ok = line.starts_with("GET /ready ") && ready.load(Ordering::SeqCst);
            let (status, body) = if ok {
                ("200 OK", "ok\n")
            } else {
                ("503 Service Unavailable", "not ready\n")
            };
            let _ = write!(
                out,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        if first && !http && line.starts_with("GET ") {
            // What nats-server says to an HTTP request on its client port.
            let _ = out.write_all(b"-ERR 'Unknown Protocol Operation'\r\n");
            return;
        }
        first = false;
        if !echo || out.write_all(format!("{name} {line}").as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
    // Drain anything left so the peer sees an orderly close.
    let _ = lines.read_to_end(&mut Vec::new());
}

/// A client of a [`TestBackend`] through a frontend: sends `line`, returns
/// the answering backend's name (`None` if the connection failed or closed).
pub fn ask(conn: &mut StdStream, line: &str) -> Option<String> {
    conn.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(n) if n > 0 => {
            let (name, rest) = answer.trim_end().split_once(' ')?;
            (rest == line).then(|| name.to_owned())
        }
        _ => None,
    }
}

/// Connects to `frontend` and asks once: which backend answered.
pub fn ask_once(frontend: SocketAddr, line: &str) -> Option<String> {
    let mut c = StdStream::connect_timeout(&frontend, Duration::from_secs(2)).ok()?;
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    ask(&mut c, line)
}

/// Waits up to `limit` for `cond`, polling every 20 ms.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! A plain HTTP client for the fakes' tests.

    use serde_json::Value;

    pub(crate) struct Answer {
        pub status: u16,
        pub headers: ureq::http::HeaderMap,
        pub text: String,
    }

    impl Answer {
        pub fn json(&self) -> Value {
            serde_json::from_str(&self.text)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
        }

        pub fn header(&self, name: &str) -> Option<String> {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }
    }

    /// `method url` with an optional bearer token and JSON body (also on
    /// DELETE, as godo sends it).
    pub(crate) fn call(
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .build()
            .into();
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => {
                let req = req
                    .header("Content-Type", "application/json")
                    .body(b.to_string())
                    .unwrap_or_else(|e| panic!("{e}"));
                agent.run(req)
            }
            None => agent.run(req.body(()).unwrap_or_else(|e| panic!("{e}"))),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(in_network(ip("192.168.200.1"), ip("192.168.128.0"), 17));
        assert!(!in_network(ip("192.168.1.1"), ip("192.168.128.0"), 17));
        assert!(in_network(ip("10.1.2.3"), ip("0.0.0.0"), 0));
        assert!(!in_network(ip("::1"), ip("0.0.0.0"), 0));
    }

    #[test]
    fn a_removal_waiting_for_health_serves_until_the_checks_fail() {
        let model = Model {
            unhealthy_threshold: 3,
            ..Model::default()
        };
        let target = || {
            Target::new(
                "127.0.0.1:4222".parse().expect("addr"),
                Probe::Http {
                    port: 8223,
                    path: "/ready".into(),
                    body: None,
                },
            )
        };
        for slow in [false, true] {
            let pool = Pool::new(model);
            if slow {
                pool.removal_waits_for_health();
            }
            pool.apply(Change::Set("1".into(), target()));
            let generation = pool.lock().known["1"].generation;
            pool.record("1", generation, true);
            pool.record("1", generation, true);
            assert_eq!(pool.in_service(), vec!["1".to_owned()]);
            pool.apply(Change::Remove("1".into()));
            if !slow {
                assert!(pool.known().is_empty());
                continue;
            }
            // Still sent new connections until the threshold of failures.
            assert_eq!(pool.in_service(), vec!["1".to_owned()]);
            assert!(pool.pick().is_some());
            pool.record("1", generation, false);
            pool.record("1", generation, false);
            assert_eq!(pool.in_service(), vec!["1".to_owned()]);
            pool.record("1", generation, false);
            assert!(pool.known().is_empty());
            assert!(pool.pick().is_none());
        }
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_485_987_778), "2017-02-01T22:22:58Z");
    }

    #[test]
    fn test_backend_answers_lines_and_ready() {
        let b = TestBackend::start("b1");
        let mut c = StdStream::connect(b.client).expect("connect");
        assert_eq!(ask(&mut c, "hi").as_deref(), Some("b1"));
        assert_eq!(ask(&mut c, "again").as_deref(), Some("b1"));
        let get = |addr: SocketAddr| {
            let mut s = StdStream::connect(addr).expect("connect");
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        assert!(get(b.health).starts_with("HTTP/1.1 200"));
        assert!(get(b.client).starts_with("HTTP/1.1 200"));
        b.set_ready(false);
        assert!(get(b.health).starts_with("HTTP/1.1 503"));
        let plain = TestBackend::plain("p");
        assert!(get(plain.client).starts_with("-ERR"));
    }
}
