//! The supervisor: owns the nats-server process and runs it as a careful
//! operator would — start, probe, restart when it dies or truly hangs,
//! reload when a reloadable setting changes, drain with lame duck — and
//! never makes an outage worse.
//!
//! One task owns everything here; the rest of natsmeshd talks to it through
//! [`Command`]s and reads its [`Status`] from a watch channel. It sends
//! systemd WATCHDOG=1 from its own loop, so a stalled loop is noticed.
//! Nothing slow runs on that loop: checks, confirmations, renewals and
//! `$SYS` requests run as tasks whose results come back as events (see
//! `tasks.rs`).

pub mod backoff;
pub mod liveness;
mod maintenance;
pub mod output;
mod planned;
pub mod probe;
pub mod state;
pub mod status;
mod tasks;
mod upgrades;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use natsmesh_broker::monitor::ClientPort;
use natsmesh_broker::process::{BrokerProcess, spawn};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::config::{self, Settings};
use crate::files::PLAIN;
use crate::logging::ids;
use crate::notify::Notifier;
use crate::prepare::{Prepared, prepare_in};
use backoff::{AfterCrash, RestartPolicy};
use liveness::{Liveness, Verdict};
use output::BrokerOutput;
use probe::{Report, Targets, local_addr};
use state::{Lifecycle, State};
pub use status::Status;
use tasks::Event;

/// The rendered file the broker runs.
pub const CONFIG_NAME: &str = "nats-server.conf";
const NEXT_NAME: &str = "nats-server.conf.next";
/// Probe pace until the broker first serves, so READY=1 follows at once.
const STARTUP_PROBE_PACE: Duration = Duration::from_millis(20);
/// How long a signalled reload may take to show its outcome.
const RELOAD_CONFIRM: Duration = Duration::from_secs(10);
/// How often, and by a multiple of which, EXTEND_TIMEOUT_USEC is sent.
pub(crate) const EXTEND_EVERY: Duration = Duration::from_secs(5);
/// Consecutive failed serving probes before a ready node leaves service.
const SERVING_FAILURES: u32 = 3;

/// What a caller may ask.
#[derive(Debug)]
pub enum Command {
    /// Re-read the configuration and apply it (reload or restart).
    Reload {
        /// Where the outcome goes, if anyone waits for it.
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// Leave service (lame duck) and keep natsmeshd running.
    Drain {
        /// Acknowledgement.
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// Back into service after a drain.
    Undrain {
        /// Acknowledgement.
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// Hold planned restarts back (crash recovery goes on).
    Pause {
        /// Acknowledgement.
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// Let planned restarts go ahead again.
    Resume {
        /// Acknowledgement.
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// Leave the region for good (see [`crate::fleet::decommission`]).
    Decommission {
        /// Acknowledgement (or why not).
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// Into maintenance (`Some(why)`: drain and stay down, the lease
    /// already taken) or out of it (`None`: serve again).
    Maintenance {
        /// Why, or `None` to end it.
        why: Option<String>,
        /// Acknowledgement.
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// What the coordinated reboot ([`crate::fleet::reboot`]) is doing,
    /// for the status (`None`: no reboot required).
    Reboot {
        /// The line.
        line: Option<String>,
    },
    /// Drain and exit.
    Stop,
}

/// How supervision ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Stopped on request.
    Stopped,
    /// The broker kept crashing.
    CrashLoop(String),
    /// The broker could not be started at all.
    Failed(String),
}

/// What to do when the running broker exits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AfterExit {
    /// Unexpected: a crash.
    Crash,
    /// Start it again at once (a restart natsmeshd asked for).
    Restart(String),
    /// Stay stopped and keep running (drain).
    StayDown,
    /// Stop supervision.
    Finish,
}

struct Running {
    process: BrokerProcess,
    /// The readers of its stdout and stderr.
    readers: Vec<tokio::task::JoinHandle<()>>,
    pid: u32,
    /// The version it runs: a pending restart's configuration may already
    /// be for the next one.
    version: String,
    liveness: Liveness,
    targets: Targets,
    first_served: Option<Instant>,
    serving_failures: u32,
    /// Taken over from the previous natsmeshd image while it served: it
    /// had its routes and its peers' accounts already, so the first round
    /// that sees it serve makes it ready again (no `syncing` blip for the
    /// load balancer to act on).
    adopted_serving: bool,
}

/// Deadlines of a stop in progress: lame duck (once this node's DNS
/// records are withdrawn, or at this deadline), SIGINT, then SIGKILL.
#[derive(Debug, Clone, Copy)]
struct StopPlan {
    lame_duck_at: Option<Instant>,
    interrupt_at: Instant,
    kill_at: Instant,
    interrupted: bool,
    /// The latest this stop may end by its own deadlines (lame duck at its
    /// latest, its duration, the margin, SIGKILL's wait): what systemd is
    /// asked to wait for.
    ends: Instant,
}

/// A probe round in flight, tagged with the broker process it probes.
type ProbeFuture = Pin<Box<dyn Future<Output = (u32, Report)> + Send>>;
type Reply = oneshot::Sender<Result<String, String>>;

/// The supervisor task.
pub struct Supervisor {
    /// `--config`, if given: the files are found again on every reload, so
    /// a drop-in added since the start is read.
    config_path: Option<PathBuf>,
    settings: Settings,
    current: Prepared,
    /// The last configuration a broker served with, and its settings.
    last_good: Option<(Prepared, Settings)>,
    life: Lifecycle,
    running: Option<Running>,
    after_exit: AfterExit,
    stop: Option<StopPlan>,
    restart_at: Option<Instant>,
    policy: RestartPolicy,
    notifier: Notifier,
    output: BrokerOutput,
    status: Status,
    status_tx: watch::Sender<Status>,
    last_status_line: String,
    pending_reply: Option<Reply>,
    /// What the pending reply adds about natsmeshd's own settings.
    pending_notes: String,
    exit: Option<Exit>,
    last_extend: Option<Instant>,
    /// The node certificate in use, when TLS is on.
    cert: Option<crate::tls::Current>,
    /// When to renew it (or, in `files` mode, look at the files again).
    cert_due: Option<Instant>,
    /// The account set matched the peers' (checked when joining).
    accounts_agreed: bool,
    /// The loop should compare account sets with the peers now.
    accounts_check_due: bool,
    /// What DNS last found, followed by [`crate::discovery::follow`].
    found: Option<crate::discovery::Found>,
    discovery: Option<watch::Receiver<crate::discovery::Found>>,
    /// Whoever points clients and peers here (DNS records, the load
    /// balancer): lame duck waits until none does.
    announcers: Vec<Announcer>,
    /// What natsmeshd wants to do under the lease (see `planned.rs`).
    planned: Option<planned::Plan>,
    /// The decommission's JetStream removal, while it runs.
    removal: Option<oneshot::Receiver<Result<String, String>>>,
    /// The wait for the region's restart lease.
    gate: Option<mpsc::Receiver<crate::fleet::Gate>>,
    /// The lease, while this node holds it.
    lease: Option<crate::fleet::Held>,
    /// `natsmeshd pause`: planned restarts wait.
    paused: bool,
    /// The fleet pause that applies here (`natsmeshd fleet pause`), for a
    /// person; planned restarts wait while there is one.
    fleet_paused: Option<String>,
    /// Follows the fleet pause keys (see [`crate::fleet::pause::watch`]).
    fleet_pause: Option<watch::Receiver<crate::fleet::pause::Pauses>>,
    /// Tags this process's lease records.
    nonce: String,
    /// natsmeshd's own binary, as it was at start.
    exe: Option<(PathBuf, crate::upgrade::FileId)>,
    /// The binary the running broker was started from.
    broker_bin: Option<crate::upgrade::FileId>,
    next_binary_check: Instant,
    /// A broker handed over by the image this one replaced.
    handoff: Option<crate::upgrade::HandoffFile>,
    /// The loop should hand over to the new natsmeshd binary now.
    reexec_due: bool,
    /// Results of the work that runs off the loop (see `tasks.rs`).
    events: mpsc::Sender<Event>,
    event_rx: mpsc::Receiver<Event>,
    /// The configuration change in flight (one at a time), its number,
    /// and those asked for meanwhile.
    job: Option<tasks::Job>,
    next_job: u64,
    queued: tasks::Queued,
    /// The broker whose peers are being asked for their accounts.
    accounts_asked: Option<u32>,
    /// A new nats-server binary, the new natsmeshd binary or a
    /// decommission is being checked.
    binary_checking: bool,
    reexec_checking: bool,
    decommission_checking: bool,
    /// The probe round in flight, and when the next one starts.
    probe: Option<ProbeFuture>,
    next_probe: Instant,
}

impl Supervisor {
    /// Prepares the first configuration (rendered, validated, `-t`) and
    /// writes it to the state directory. Fails before any broker starts.
    pub async fn new(
        config_path: Option<PathBuf>,
        settings: Settings,
        notifier: Notifier,
    ) -> anyhow::Result<(Self, watch::Receiver<Status>)> {
        std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create state directory {}: {e}",
                settings.state_dir.display()
            )
        })?;
        let cert = match &settings.tls {
            None => None,
            Some(t) => {
                let (current, issued) = crate::tls::ensure(t, std::time::SystemTime::now(), false)
                    .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
                for w in &current.warnings {
                    tracing::warn!("{w}");
                }
                if issued {
                    tracing::info!(serial = %current.info.serial, "issued a node certificate");
                }
                Some(current)
            }
        };
        // The first start fixes the server name for good (JetStream).
        config::identity::persist_name(&settings.state_dir, &settings.server.server_name).map_err(
            |e| {
                anyhow::anyhow!(
                    "cannot record the server name in {}: {e}",
                    settings.state_dir.display()
                )
            },
        )?;
        crate::fleet::decommission::refuse_if_decommissioned(&settings.state_dir)
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut settings = settings;
        let state_dir = settings.state_dir.clone();
        crate::auth::add_system_account(&mut settings, &state_dir)
            .map_err(|e| anyhow::anyhow!("system user: {e}"))?;
        let current = prepare_in(&settings, &settings.state_dir, CONFIG_NAME).await?;
        let status = Status {
            natsmesh_version: env!("CARGO_PKG_VERSION").into(),
            server_name: settings.server.server_name.clone(),
            region: settings.region.clone(),
            identity: settings.identity.describe(),
            broker_version: current.version.to_string(),
            config_file: current.path.display().to_string(),
            warnings: cert
                .as_ref()
                .map(|c| c.warnings.clone())
                .unwrap_or_default(),
            certificate: cert
                .as_ref()
                .map(describe_cert)
                .unwrap_or_else(|| "TLS off".into()),
            certificate_not_after_unix: cert
                .as_ref()
                .map(|c| crate::unix_ms(c.info.not_after) / 1000),
            intermediate_not_after_unix: cert
                .as_ref()
                .and_then(|c| c.issuer_not_after)
                .map(|t| crate::unix_ms(t) / 1000),
            root_not_after_unix: cert
                .as_ref()
                .and_then(|c| c.root_not_after)
                .map(|t| crate::unix_ms(t) / 1000),
            ..Status::default()
        };
        let (status_tx, status_rx) = watch::channel(status.clone());
        let (events, event_rx) = mpsc::channel(16);
        let now = Instant::now();
        Ok((
            Self {
                policy: RestartPolicy::new(settings.restart),
                config_path,
                settings,
                current,
                last_good: None,
                life: Lifecycle::new(now),
                running: None,
                after_exit: AfterExit::Crash,
                stop: None,
                restart_at: None,
                notifier,
                output: BrokerOutput::start(),
                status,
                status_tx,
                last_status_line: String::new(),
                pending_reply: None,
                pending_notes: String::new(),
                exit: None,
                last_extend: None,
                cert_due: cert.as_ref().map(|c| due(c.renew_at)),
                accounts_agreed: false,
                accounts_check_due: false,
                found: None,
                discovery: None,
                announcers: Vec::new(),
                planned: None,
                removal: None,
                gate: None,
                lease: None,
                paused: false,
                fleet_paused: None,
                fleet_pause: None,
                nonce: crate::fleet::nonce(),
                exe: crate::upgrade::own_exe()
                    .and_then(|p| crate::upgrade::file_id(&p).map(|id| (p, id))),
                broker_bin: None,
                next_binary_check: Instant::now() + upgrades::CHECK_EVERY,
                handoff: None,
                reexec_due: false,
                cert: cert.clone(),
                events,
                event_rx,
                job: None,
                next_job: 0,
                queued: tasks::Queued::default(),
                accounts_asked: None,
                binary_checking: false,
                reexec_checking: false,
                decommission_checking: false,
                probe: None,
                next_probe: now,
            },
            status_rx,
        ))
    }

    /// Gates lame duck on `kind` having stopped pointing here (`up` is
    /// true while it may), waiting at most `budget`, and shows its line in
    /// `status`.
    pub fn announce(&mut self, kind: Pointer, rx: watch::Receiver<Announced>, budget: Duration) {
        self.announcers.push(Announcer { kind, rx, budget });
    }

    /// The longest budget of those still pointing here, if any is.
    fn pointed_at(&self) -> Option<Duration> {
        self.announcers
            .iter()
            .filter(|a| a.rx.borrow().up)
            .map(|a| a.rx.borrow().budget.unwrap_or(a.budget))
            .max()
    }

    /// Takes over the broker a previous image handed over instead of
    /// starting one.
    pub fn take_over(&mut self, handoff: crate::upgrade::HandoffFile) {
        self.handoff = Some(handoff);
    }

    /// Follows DNS: `rx` carries each new answer (its current value is the
    /// one the settings were built with).
    pub fn follow(&mut self, mut rx: watch::Receiver<crate::discovery::Found>) {
        self.found = Some(rx.borrow_and_update().clone());
        self.discovery = Some(rx);
    }

    /// Follows the fleet pause: `rx` carries each new word (its current
    /// value, the last one kept, holds from the start).
    pub fn follow_fleet_pause(&mut self, mut rx: watch::Receiver<crate::fleet::pause::Pauses>) {
        let first = rx.borrow_and_update().clone();
        self.fleet_pause = Some(rx);
        self.on_fleet_pause(first);
    }

    /// Runs until stopped or until the broker cannot be kept up.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Exit {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            broker = %self.current.version,
            server_name = %self.settings.server.server_name,
            region = %self.settings.region,
            client = %self.settings.server.listen,
            monitoring = %self.settings.server.monitoring.map(|m| m.to_string()).unwrap_or_default(),
            cluster = %self.settings.server.cluster.as_ref().map(|c| c.listen.to_string()).unwrap_or_default(),
            gateway = %self.settings.server.gateway.as_ref().map(|g| g.listen.to_string()).unwrap_or_default(),
            control = %self.settings.control_socket.display(),
            "natsmeshd starting"
        );
        match self.handoff.take() {
            Some(h) => self.adopt(h),
            None if self.stays_in_maintenance() => {}
            None => self.start_broker(),
        }
        let watchdog_every = self.notifier.watchdog_interval();
        let mut next_watchdog = Instant::now();
        loop {
            if let Some(exit) = self.exit.take() {
                return exit;
            }
            if self.probe.is_none()
                && Instant::now() >= self.next_probe
                && let Some(r) = &self.running
            {
                // The client port's TLS as configured now (a reload may
                // have moved the roots).
                let (targets, pid) = (
                    r.targets.clone().with_client_tls(self.client_port_tls()),
                    r.pid,
                );
                let with_varz = self.life.state() != State::Starting;
                self.probe = Some(Box::pin(async move {
                    (pid, probe::probe(&targets, with_varz).await)
                }));
            }
            let wake = [
                Some(self.next_probe),
                watchdog_every.map(|_| next_watchdog),
                self.restart_at,
                self.cert_due,
                Some(self.next_binary_check),
                self.stop
                    .filter(|_| self.after_exit == AfterExit::Finish)
                    .and(self.last_extend)
                    .map(|t| t + EXTEND_EVERY),
                self.stop.map(|s| {
                    if let Some(t) = s.lame_duck_at {
                        t
                    } else if s.interrupted {
                        s.kill_at
                    } else {
                        s.interrupt_at
                    }
                }),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + self.settings.health.interval);
            tokio::select! {
                status = wait_exit(&mut self.running) => {
                    self.drain_output().await;
                    self.on_exit(status);
                }
                (pid, report) = poll_probe(&mut self.probe) => {
                    self.probe = None;
                    // A round that began before a restart says nothing about
                    // the new process.
                    if self.running.as_ref().map(|r| r.pid) != Some(pid) {
                        continue;
                    }
                    let pace = if matches!(self.life.state(), State::Starting | State::Syncing) {
                        STARTUP_PROBE_PACE
                    } else {
                        self.settings.health.interval
                    };
                    self.next_probe = report.at + pace;
                    self.on_report(report);
                }
                Some((kind, announced)) = next_announcement(&mut self.announcers) => {
                    match kind {
                        Pointer::Dns => {
                            self.status.dns = announced.line;
                            self.status.dns_up = Some(announced.up);
                            self.status.dns_problem = announced.problem;
                        }
                        Pointer::LoadBalancer => {
                            self.status.load_balancer = announced.line;
                            self.status.load_balancer_registered = announced.member;
                            self.status.load_balancer_problem = announced.problem;
                        }
                    }
                    self.publish();
                    if !announced.up && self.stop.is_some_and(|s| s.lame_duck_at.is_some()) {
                        tracing::info!("{kind} no longer points here");
                        if self.pointed_at().is_none() {
                            self.lame_duck();
                        }
                    }
                }
                gate = next_gate(&mut self.gate) => self.on_gate(gate),
                removed = next_removal(&mut self.removal) => self.on_removed(removed),
                Some(pauses) = next_change(&mut self.fleet_pause) => self.on_fleet_pause(pauses),
                Some(found) = next_change(&mut self.discovery) => {
                    self.found = Some(found);
                    self.follow_discovery();
                }
                Some(event) = self.event_rx.recv() => self.on_event(event),
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    // Everyone who could ask is gone: stop.
                    None => self.begin_stop(),
                },
                _ = sleep_until(wake) => {}
            }
            let now = Instant::now();
            if let Some(every) = watchdog_every
                && now >= next_watchdog
            {
                // Only this loop sends WATCHDOG=1: if it stalls, systemd acts.
                self.notifier.watchdog();
                next_watchdog = now + every;
            }
            if self.cert_due.is_some_and(|t| now >= t) {
                self.renew_certificate();
            }
            if std::mem::take(&mut self.accounts_check_due) {
                self.check_accounts();
            }
            if now >= self.next_binary_check {
                self.check_binaries();
            }
            if std::mem::take(&mut self.reexec_due) {
                self.reexec();
            }
            if self.restart_at.is_some_and(|t| now >= t) {
                self.restart_at = None;
                self.start_broker();
            }
            self.check_stop_deadlines(now);
            self.extend_stop(now);
        }
    }

    fn go(&mut self, to: State, reason: impl Into<String>) {
        let reason = reason.into();
        match self.life.go(to, reason.clone(), Instant::now()) {
            Ok(true) => tracing::debug!(state = %to, %reason, "state change"),
            Ok(false) => {}
            // A bug: report it and stay in the current state.
            Err(e) => tracing::error!(error = %e, %reason, "refused a state change"),
        }
        self.publish();
    }

    /// The running broker's version: a pending restart's configuration (or
    /// one prepared after a re-execution) may be for the next one already.
    fn running_version(&self) -> String {
        self.running
            .as_ref()
            .map_or_else(|| self.current.version.to_string(), |r| r.version.clone())
    }

    fn publish(&mut self) {
        let broker_version = self.running_version();
        let s = &mut self.status;
        s.state = self.life.state().to_string();
        s.reason = self.life.reason().to_owned();
        s.since_unix_ms = crate::unix_ms(self.life.since_wall());
        s.broker_pid = self.running.as_ref().map(|r| r.pid);
        s.broker_version = broker_version;
        s.log_lines_dropped = self.output.dropped();
        s.paused = self.paused;
        s.fleet_paused.clone_from(&self.fleet_paused);
        s.derive_degraded();
        let line = s.line();
        if line != self.last_status_line {
            self.notifier.status(&line);
            self.last_status_line = line;
        }
        self.status_tx.send_replace(self.status.clone());
    }

    fn start_broker(&mut self) {
        let Some(targets) = self.probe_targets() else {
            return;
        };
        // The file it starts from: a later package upgrade replaces it.
        self.broker_bin = crate::upgrade::resolve(&self.settings.binary)
            .and_then(|p| crate::upgrade::file_id(&p));
        // The directories the broker writes in, when it runs as its own
        // user (it may not create them in natsmeshd's state directory).
        let writes = [
            self.settings
                .server
                .jetstream
                .as_ref()
                .map(|j| j.store_dir.join("jetstream")),
            self.settings
                .server
                .operator
                .as_ref()
                .map(|o| o.resolver_dir.clone()),
        ];
        for dir in writes.iter().flatten() {
            if let Err(e) = crate::broker_user::ensure_broker_dir(dir) {
                self.fail(e);
                return;
            }
        }
        let process = match spawn(
            &self.settings.binary,
            &self.current.path,
            crate::broker_user::run_as(),
        ) {
            Ok(p) => p,
            Err(e) => {
                self.fail(e.to_string());
                return;
            }
        };
        let pid = process.pid();
        self.install(
            process,
            targets,
            format!("nats-server {} started (pid {pid})", self.current.version),
        );
    }

    /// Where the probes look, or `None` after failing with the reason.
    fn probe_targets(&mut self) -> Option<Targets> {
        let s = &self.settings;
        let (Some(mon), Some(client)) = (
            s.server.monitoring.as_ref().and_then(local_addr),
            local_addr(&s.server.listen),
        ) else {
            self.fail("the monitoring and client listeners need fixed ports".into());
            return None;
        };
        let https = match s.tls.as_ref().filter(|t| t.monitoring) {
            None => None,
            Some(t) => match crate::tls::probe::monitoring_client(t) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.fail(format!("cannot probe HTTPS monitoring: {e}"));
                    return None;
                }
            },
        };
        Some(
            Targets::new(
                mon,
                client,
                &self.current.version,
                s.server.jetstream.is_some(),
                s.health.timeout,
                https,
            )
            .with_gateways(s.server.gateway.is_some())
            .with_client_tls(self.client_port_tls()),
        )
    }

    /// The serving probe's TLS where the client port requires it.
    fn client_port_tls(&self) -> Option<crate::tls::probe::ClientPortTls> {
        let s = &self.settings;
        let tls = s.tls.as_ref().filter(|_| s.server.tls.is_some())?;
        Some(crate::tls::probe::ClientPortTls::new(
            tls.clone(),
            s.server.listen.host,
        ))
    }

    /// Supervises `process` from now on (started, or adopted).
    fn install(&mut self, mut process: BrokerProcess, targets: Targets, what: String) {
        let s = &self.settings;
        let pid = process.pid();
        let (stdout, stderr) = process.take_output();
        let readers = [
            stdout.map(|out| self.output.read(pid, out)),
            stderr.map(|err| self.output.read(pid, err)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let now = Instant::now();
        self.running = Some(Running {
            process,
            readers,
            pid,
            version: self.current.version.to_string(),
            liveness: Liveness::new(now, s.health.liveness_budget, s.health.startup_grace),
            targets,
            first_served: None,
            serving_failures: 0,
            adopted_serving: false,
        });
        // A new process is probed at once and then at the start-up pace,
        // not on the schedule of the one before (up to an interval away) nor
        // after a round still in flight against it: ready follows the
        // broker within a start-up probe.
        self.probe = None;
        self.next_probe = now;
        self.after_exit = AfterExit::Crash;
        self.started();
        // Every start joins the peers anew.
        self.accounts_agreed = false;
        self.go(State::Starting, what);
    }

    fn fail(&mut self, why: String) {
        tracing::error!(error = %why, "cannot run the broker");
        self.go(State::Stopped, why.clone());
        self.exit = Some(Exit::Failed(why));
    }

    fn on_report(&mut self, report: Report) {
        let state = self.life.state();
        let Some(run) = self.running.as_mut() else {
            return;
        };
        tracing::trace!(alive = %report.alive_detail, client = ?report.client, jetstream = ?report.jetstream, "probe round");
        self.status.alive = report.alive_detail.clone();
        self.status.serving = match &report.client {
            ClientPort::Serving => "accepting clients".into(),
            ClientPort::LameDuck => "lame duck".into(),
            ClientPort::Refused => "client port closed".into(),
            ClientPort::Timeout => "client port: no INFO in time".into(),
            ClientPort::Failed(e) => format!("client port: {e}"),
        };
        self.status.jetstream = report.jetstream.describe();
        if let Some(v) = &report.varz {
            self.status.routes = self
                .settings
                .server
                .cluster
                .is_some()
                .then(|| v.route_peers());
            self.status.clients = Some(v.connections);
        }
        self.status.gateways = report
            .gatewayz
            .as_ref()
            .map(|g| g.outbound_gateways.keys().cloned().collect());
        self.status.clock_synchronized = status::clock_synchronized();
        if state == State::Draining {
            self.publish();
            return;
        }
        let now = report.at;
        let hung = match run.liveness.observe(report.alive, now) {
            Verdict::Hung { silent_for } => Some((
                format!("hung for {silent_for:?}"),
                format!("nats-server is hung (only timeouts for {silent_for:?}); killing it"),
            )),
            Verdict::Silent { since_spawn } => Some((
                format!("silent for {since_spawn:?} since its start"),
                format!(
                    "nats-server has not answered on its monitoring port at all in the {since_spawn:?} since its start (not even 503: not a JetStream recovery); killing it"
                ),
            )),
            Verdict::Alive | Verdict::Unknown => None,
        };
        if let Some((reason, line)) = hung {
            tracing::error!(
                message_id = ids::BROKER_LOST,
                pid = run.pid,
                reason = %reason,
                "{line}"
            );
            self.status.hang_kills += 1;
            let _ = run.process.signal(Signal::SIGKILL);
            self.after_exit = AfterExit::Restart(reason);
            return;
        }
        let serving = report.client == ClientPort::Serving;
        if serving {
            run.serving_failures = 0;
            run.liveness.served(now);
            run.first_served.get_or_insert(now);
        } else {
            run.serving_failures += 1;
        }
        let peers_configured = self
            .settings
            .server
            .cluster
            .as_ref()
            .is_some_and(|c| c.routes.len() > 1);
        let routes = report.varz.as_ref().map_or(0, |v| v.route_peers());
        let waited = run
            .first_served
            .is_some_and(|t| now - t >= self.settings.health.route_wait);
        let adopted = run.adopted_serving;
        let routes_ok = !peers_configured || routes > 0 || waited || adopted;
        match state {
            State::Starting | State::Syncing if serving && routes_ok => {
                if peers_configured && routes == 0 {
                    tracing::warn!(
                        "no route to any peer after {:?}; serving anyway",
                        self.settings.health.route_wait
                    );
                }
                // A node joining peers must hold the same accounts as they
                // do; that needs a `$SYS` round trip, made from the loop.
                let peers = routes > 0 || self.settings.server.gateway.is_some();
                if peers && self.settings.system_user.is_some() && !self.accounts_agreed && !adopted
                {
                    self.accounts_check_due = true;
                    self.publish();
                } else {
                    self.become_ready();
                }
            }
            State::Starting | State::Syncing if serving => {
                self.go(State::Syncing, "waiting for a first route to a peer");
            }
            State::Starting => {
                // A broker that answers on its monitoring port but does not
                // serve yet is recovering JetStream; one still silent after
                // a few seconds is most likely reading a big store. Keep
                // systemd waiting (it honours this only while the unit
                // starts); the liveness judge still kills a true hang.
                let recovering = report.alive == liveness::Observation::Answered;
                let slow = now - self.life.since() >= EXTEND_EVERY;
                if (recovering || slow) && self.last_extend.is_none_or(|t| now - t >= EXTEND_EVERY)
                {
                    self.last_extend = Some(now);
                    self.notifier.extend_timeout(EXTEND_EVERY * 3);
                    let why = if recovering {
                        "JetStream recovering; the client port is not open yet"
                    } else {
                        "the broker is still starting"
                    };
                    self.go(State::Starting, why);
                } else {
                    self.publish();
                }
            }
            State::Ready if run.serving_failures >= SERVING_FAILURES => {
                let why = self.status.serving.clone();
                tracing::warn!(reason = %why, "nats-server stopped serving clients");
                self.go(State::Syncing, format!("not serving: {why}"));
            }
            _ => self.publish(),
        }
        self.maybe_release(&report.jetstream);
    }

    fn become_ready(&mut self) {
        self.policy.healthy();
        if let Some(run) = self.running.as_mut() {
            run.adopted_serving = false;
        }
        self.last_good = Some((self.current.clone(), self.settings.clone()));
        self.status.restart_pending.clear();
        self.go(State::Ready, "serving clients");
        let line = self.status.line();
        tracing::info!(message_id = ids::READY, status = %line, "ready");
        self.notifier.ready(&line);
        if let Some(reply) = self.pending_reply.take() {
            let notes = std::mem::take(&mut self.pending_notes);
            let msg = if notes.is_empty() {
                format!("restarted; {line}")
            } else {
                format!("restarted; {line}; {notes}")
            };
            let _ = reply.send(Ok(msg));
        }
    }

    /// The exited broker's last lines (lame duck, shutdown) reach the log
    /// before anything natsmeshd says about the exit: the pipes are read to
    /// their end and the queue written out, each for at most a few seconds
    /// (a loaded machine needs more than one).
    async fn drain_output(&mut self) {
        const AT_MOST: Duration = Duration::from_secs(3);
        if let Some(run) = self.running.as_mut() {
            for reader in run.readers.drain(..) {
                let _ = tokio::time::timeout(AT_MOST, reader).await;
            }
        }
        let _ = tokio::time::timeout(AT_MOST, self.output.flush()).await;
    }

    fn on_exit(&mut self, status: std::io::Result<std::process::ExitStatus>) {
        let Some(run) = self.running.take() else {
            return;
        };
        self.broker_exited_during_change();
        let status = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
        self.stop = None;
        match std::mem::replace(&mut self.after_exit, AfterExit::Crash) {
            AfterExit::Finish => {
                tracing::info!(pid = run.pid, %status, "nats-server stopped");
                self.go(State::Stopped, "stopped");
                self.exit = Some(Exit::Stopped);
            }
            AfterExit::StayDown => {
                tracing::info!(pid = run.pid, %status, "nats-server drained and stopped");
                self.go(
                    State::Stopped,
                    "drained; natsmeshd keeps running (restart the service to serve again)",
                );
            }
            AfterExit::Restart(why) => {
                tracing::info!(message_id = ids::RESTART, pid = run.pid, %status, reason = %why, "restarting nats-server");
                self.status.restarts += 1;
                self.go(State::Restarting, format!("restarting: {why}"));
                self.start_broker();
            }
            AfterExit::Crash => self.on_crash(run, status),
        }
    }

    fn on_crash(&mut self, run: Running, status: String) {
        self.status.crashes += 1;
        tracing::error!(message_id = ids::BROKER_LOST, pid = run.pid, %status, "nats-server exited unexpectedly");
        // A new configuration that never served is the likely cause: go back
        // to the last one that did, rather than crash-loop on it.
        if run.first_served.is_none()
            && let Some((good, good_settings)) = self.last_good.clone()
            && good.rendered.text != self.current.rendered.text
        {
            let why = format!(
                "nats-server exited ({status}) with the new configuration before serving; rolled back to the last good one"
            );
            tracing::error!(message_id = ids::RELOAD_FAILED, "{why}");
            if let Err(e) =
                crate::broker_user::write_readable(&good.path, good.rendered.text.as_bytes(), PLAIN)
            {
                tracing::error!(error = %e, "cannot write back the last good configuration");
            }
            self.current = good;
            self.settings = good_settings;
            self.status.restart_pending.clear();
            self.status.reloads_failed += 1;
            self.status.last_reload = Some(why.clone());
            if let Some(reply) = self.pending_reply.take() {
                let _ = reply.send(Err(why));
            }
        }
        match self.policy.crashed(Instant::now(), fastrand::f64()) {
            AfterCrash::RestartIn(delay) => {
                self.status.restarts += 1;
                self.go(
                    State::Restarting,
                    format!("nats-server exited ({status}); restarting in {delay:?}"),
                );
                if delay.is_zero() {
                    self.start_broker();
                } else {
                    self.restart_at = Some(Instant::now() + delay);
                }
            }
            AfterCrash::GiveUp { crashes, window } => {
                let why = format!(
                    "nats-server crashed {crashes} times within {window:?}; giving up so systemd sees the failure"
                );
                tracing::error!("{why}");
                self.go(State::Stopped, why.clone());
                self.exit = Some(Exit::CrashLoop(why));
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Stop => self.begin_stop(),
            Command::Drain { reply } => {
                let res = self.begin_drain(AfterExit::StayDown, "drain requested");
                if let Some(r) = reply {
                    let _ = r.send(res);
                }
            }
            Command::Undrain { reply } => answer(reply, self.undrain()),
            Command::Decommission { reply } => self.decommission(reply),
            Command::Pause { reply } => answer(reply, self.pause()),
            Command::Resume { reply } => answer(reply, self.resume()),
            Command::Reload { reply } => self.request_reload(reply),
            Command::Maintenance { why, reply } => self.maintenance(why, reply),
            Command::Reboot { line } => {
                if self.status.reboot != line {
                    self.status.reboot = line;
                    self.publish();
                }
            }
        }
    }

    /// Lame duck, with deadlines for SIGINT and SIGKILL.
    fn begin_drain(&mut self, after: AfterExit, why: &str) -> Result<String, String> {
        let Some(run) = &self.running else {
            if after == AfterExit::Finish {
                self.go(State::Stopped, "stopped");
                self.exit = Some(Exit::Stopped);
            }
            return Err("no broker is running".into());
        };
        if self.life.state() == State::Draining {
            // Already leaving: a stop now only changes what follows.
            if after == AfterExit::Finish {
                self.after_exit = AfterExit::Finish;
            }
            return Ok("already draining".into());
        }
        let now = Instant::now();
        let ldm = self.settings.server.lame_duck_duration;
        let r = &self.settings.restart;
        if run.first_served.is_none() {
            // Never served: no client to drain, a clean SIGINT is enough.
            let _ = run.process.signal(Signal::SIGINT);
            self.stop = Some(StopPlan {
                lame_duck_at: None,
                interrupt_at: now,
                kill_at: now + r.kill_after,
                interrupted: true,
                ends: now + r.kill_after,
            });
        } else if let Some(wait) = self.pointed_at() {
            // Out of DNS and the load balancer first, so peers and clients
            // stop being sent here before the broker turns them away.
            let far = now + Duration::from_secs(86_400);
            self.stop = Some(StopPlan {
                lame_duck_at: Some(now + wait),
                interrupt_at: far,
                kill_at: far,
                interrupted: false,
                ends: now + wait + ldm + r.stop_margin + r.kill_after,
            });
            tracing::info!(
                message_id = ids::DRAINING,
                pid = run.pid,
                reason = why,
                "leaving DNS and the load balancer, then lame duck"
            );
        } else {
            self.stop = None;
            tracing::info!(
                message_id = ids::DRAINING,
                pid = run.pid,
                reason = why,
                "draining nats-server (lame duck)"
            );
        }
        self.after_exit = after;
        self.go(State::Draining, why.to_owned());
        if self.stop.is_none() {
            self.lame_duck();
        }
        Ok(format!("draining (lame duck up to {ldm:?})"))
    }

    /// SIGUSR2: nats-server stops accepting, then closes clients over the
    /// lame-duck duration and exits.
    fn lame_duck(&mut self) {
        let Some(run) = &self.running else {
            return;
        };
        let now = Instant::now();
        let ldm = self.settings.server.lame_duck_duration;
        let r = &self.settings.restart;
        let _ = run.process.signal(Signal::SIGUSR2);
        self.stop = Some(StopPlan {
            lame_duck_at: None,
            interrupt_at: now + ldm + r.stop_margin,
            kill_at: now + ldm + r.stop_margin + r.kill_after,
            interrupted: false,
            ends: now + ldm + r.stop_margin + r.kill_after,
        });
    }

    /// While natsmeshd stops, EXTEND_TIMEOUT_USEC to the stop's own end
    /// (plus a round), every [`EXTEND_EVERY`]: a drain delay derived from
    /// a slow health check can outlast the unit's `TimeoutStopSec`, and
    /// systemd must not SIGKILL a stop that keeps its own deadlines.
    /// systemd only ever lengthens its timeout by it (it acts only past
    /// `TimeoutStopSec`), so it is sent on every stop; natsmeshd cannot
    /// read the unit's value. A stop past its own end sends nothing more,
    /// so systemd's timeout still ends a hung one.
    fn extend_stop(&mut self, now: Instant) {
        let Some(plan) = self.stop else {
            return;
        };
        if self.after_exit != AfterExit::Finish
            || now >= plan.ends
            || self.last_extend.is_some_and(|t| now - t < EXTEND_EVERY)
        {
            return;
        }
        self.last_extend = Some(now);
        self.notifier
            .extend_timeout(plan.ends - now + EXTEND_EVERY * 2);
    }

    fn begin_stop(&mut self) {
        self.notifier.stopping();
        // The stop's first EXTEND_TIMEOUT_USEC goes at once.
        self.last_extend = None;
        // A change in flight is given up; its late result is ignored.
        self.abandon_changes("natsmeshd is stopping");
        if let Some(reply) = self.pending_reply.take() {
            let _ = reply.send(Err("natsmeshd is stopping".into()));
        }
        self.restart_at = None;
        let _ = self.begin_drain(AfterExit::Finish, "stopping");
    }

    fn check_stop_deadlines(&mut self, now: Instant) {
        if self
            .stop
            .and_then(|s| s.lame_duck_at)
            .is_some_and(|t| now >= t)
        {
            tracing::warn!(
                "DNS records or load-balancer membership not withdrawn in time; lame duck anyway"
            );
            self.lame_duck();
            return;
        }
        let (Some(plan), Some(run)) = (self.stop.as_mut(), self.running.as_ref()) else {
            return;
        };
        if !plan.interrupted && now >= plan.interrupt_at {
            // Lame duck should have ended by itself; SIGINT is a clean stop
            // that flushes JetStream (SIGTERM is ignored during lame duck).
            tracing::warn!(
                pid = run.pid,
                "lame duck did not end in time; sending SIGINT"
            );
            let _ = run.process.signal(Signal::SIGINT);
            plan.interrupted = true;
        } else if plan.interrupted && now >= plan.kill_at {
            tracing::error!(pid = run.pid, "nats-server did not stop; sending SIGKILL");
            let _ = run.process.signal(Signal::SIGKILL);
            plan.kill_at = now + Duration::from_secs(3600);
        }
    }
}

/// A monotonic deadline for a wall-clock time.
fn due(at: std::time::SystemTime) -> Instant {
    Instant::now()
        + at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
}

fn describe_cert(c: &crate::tls::Current) -> String {
    let t = |x| humantime::format_rfc3339_seconds(x).to_string();
    format!(
        "serial {}, valid until {}, next check {}",
        c.info.serial,
        t(c.info.not_after),
        t(c.renew_at)
    )
}

impl Supervisor {
    /// The certificate in use, in the status.
    fn show_cert(&mut self, current: &crate::tls::Current) {
        self.status.certificate = describe_cert(current);
        self.status.certificate_not_after_unix =
            Some(crate::unix_ms(current.info.not_after) / 1000);
        self.status.intermediate_not_after_unix =
            current.issuer_not_after.map(|t| crate::unix_ms(t) / 1000);
        self.status.root_not_after_unix = current.root_not_after.map(|t| crate::unix_ms(t) / 1000);
        self.status.certificate_failing = false;
        self.status.warnings = current.warnings.clone();
    }
}

enum Reloaded {
    Done(Result<String, String>),
    Pending,
}

/// What a pointer's task tells the supervisor: whether it may still send
/// clients or peers here (a stop waits for `false` before lame duck), and
/// a line for `natsmeshd status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announced {
    /// It may still point here.
    pub up: bool,
    /// The provider lists this node (a balancer's membership as last seen
    /// or made; `None`: unknown, or not that kind of pointer).
    pub member: Option<bool>,
    /// What happened last, for a person.
    pub line: String,
    /// What keeps it from pointing where it should (a balancer that cannot
    /// be read or is set up wrong, a publication failing), for `degraded`
    /// at the edge; `None` when all is as it should be.
    pub problem: Option<String>,
    /// How long leaving may take as this pointer knows it now (a balancer
    /// derives it from its health check once read); `None`: the budget it
    /// was announced with.
    pub budget: Option<Duration>,
}

/// What points clients or peers at this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pointer {
    /// Its DNS records.
    Dns,
    /// The provider's load balancer.
    LoadBalancer,
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Dns => "DNS",
            Self::LoadBalancer => "the load balancer",
        })
    }
}

struct Announcer {
    kind: Pointer,
    rx: watch::Receiver<Announced>,
    budget: Duration,
}

/// The next word of any announcer; pending forever when there is none.
/// An announcer whose task has gone is dropped (and counts as gone).
async fn next_announcement(list: &mut Vec<Announcer>) -> Option<(Pointer, Announced)> {
    if list.is_empty() {
        return std::future::pending().await;
    }
    let changes = list.iter_mut().map(|a| Box::pin(a.rx.changed()));
    let (result, index, _) = futures_util::future::select_all(changes).await;
    match result {
        Ok(()) => {
            let a = &mut list[index];
            Some((a.kind, a.rx.borrow_and_update().clone()))
        }
        Err(_) => {
            let gone = list.remove(index);
            Some((gone.kind, Announced::default()))
        }
    }
}

/// The next value of a followed channel (DNS answers, the publisher's
/// word); pending forever when there is none (or once its task has gone).
fn answer(reply: Option<Reply>, res: Result<String, String>) {
    if let Some(r) = reply {
        let _ = r.send(res);
    }
}

/// The outcome of the decommission's removal; pends forever without one.
async fn next_removal(
    removal: &mut Option<oneshot::Receiver<Result<String, String>>>,
) -> Result<String, String> {
    match removal {
        Some(rx) => rx
            .await
            .unwrap_or_else(|_| Err("the removal task ended without an answer".into())),
        None => std::future::pending().await,
    }
}

/// The next word from the lease wait; pends forever without one.
async fn next_gate(
    gate: &mut Option<mpsc::Receiver<crate::fleet::Gate>>,
) -> Option<crate::fleet::Gate> {
    match gate {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_change<T: Clone>(rx: &mut Option<watch::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => match r.changed().await {
            Ok(()) => Some(r.borrow_and_update().clone()),
            Err(_) => {
                *rx = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

async fn wait_exit(running: &mut Option<Running>) -> std::io::Result<std::process::ExitStatus> {
    match running {
        Some(r) => r.process.wait().await,
        None => std::future::pending().await,
    }
}

async fn poll_probe(probe: &mut Option<ProbeFuture>) -> (u32, Report) {
    match probe {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}
