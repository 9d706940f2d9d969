//! The supervisor: owns the nats-server process and runs it as a careful
//! operator would — start, probe, restart when it dies or truly hangs,
//! reload when a reloadable setting changes, drain with lame duck — and
//! never makes an outage worse.
//!
//! One task owns everything here; the rest of natsmeshd talks to it through
//! [`Command`]s and reads its [`Health`] from a watch channel (the
//! printable [`Status`] is made from it at the edge). It sends
//! systemd WATCHDOG=1 from its own loop, so a stalled loop is noticed.
//! The broker's lifecycle itself is a pure state machine (`lifecycle.rs`):
//! this loop is its shell, executing what it decides (spawn, signal,
//! notify, ask) and feeding back what happened as events.
//! Nothing slow runs on that loop: checks, confirmations, renewals and
//! `$SYS` requests run as tasks whose results come back as events (see
//! `tasks.rs`).

pub mod backoff;
pub mod lifecycle;
pub mod liveness;
mod maintenance;
pub mod output;
mod planned;
pub mod probe;
mod tasks;
mod upgrades;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use natsmesh_broker::monitor::ClientPort;
use natsmesh_broker::process::{BrokerProcess, spawn};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

pub use crate::command::Command;
use crate::command::{Answer, Reply};
use crate::config::{self, Settings};
use crate::files::PLAIN;
use crate::fleet::decommission::DecommissionError;
pub use crate::health::{Announced, Health, Status, state, status};
use crate::logging::ids;
use crate::notify::Notifier;
use crate::prepare::{Prepared, prepare_in};
use lifecycle::{Action, ConfigId, Core, Event as Step, Level, Sig, Tuning};
use output::BrokerOutput;
use probe::{Report, Targets, local_addr};
use state::State;
use tasks::Event;

/// The rendered file the broker runs.
pub const CONFIG_NAME: &str = "nats-server.conf";
const NEXT_NAME: &str = "nats-server.conf.next";
/// Probe pace until the broker first serves, so READY=1 follows at once.
const STARTUP_PROBE_PACE: Duration = Duration::from_millis(20);
/// How long a signalled reload may take to show its outcome.
const RELOAD_CONFIRM: Duration = Duration::from_secs(10);
/// How often, and by a multiple of which, EXTEND_TIMEOUT_USEC is sent.
pub(crate) use lifecycle::EXTEND_EVERY;

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

struct Running {
    process: BrokerProcess,
    /// The readers of its stdout and stderr.
    readers: Vec<tokio::task::JoinHandle<()>>,
    pid: u32,
    /// The version it runs: a pending restart's configuration may already
    /// be for the next one.
    version: String,
    targets: Targets,
}

/// A probe round in flight, tagged with the broker process it probes.
type ProbeFuture = Pin<Box<dyn Future<Output = (u32, Report)> + Send>>;

/// The supervisor task.
pub struct Supervisor {
    /// `--config`, if given: the files are found again on every reload, so
    /// a drop-in added since the start is read.
    config_path: Option<PathBuf>,
    /// The settings the broker runs with: built by
    /// [`crate::prepare::effective`] from `inputs`, what DNS found and the
    /// certificate set; replaced whole, never edited.
    settings: Settings,
    /// The validated settings and natsmeshd's logins they were built from.
    inputs: Inputs,
    current: Prepared,
    /// The last configuration a broker served with, and its settings.
    last_good: Option<(Prepared, Built)>,
    /// The inputs and the prepared configuration, on watch channels.
    spine: Spine,
    /// The broker's lifecycle: state, deadlines, what follows an exit.
    core: Core,
    /// When the core's state began, monotonic and wall clock.
    since_wall: (Instant, std::time::SystemTime),
    running: Option<Running>,
    notifier: Notifier,
    output: BrokerOutput,
    /// What it publishes: the one copy of how this node is doing.
    health: Health,
    health_tx: watch::Sender<Health>,
    last_status_line: String,
    pending_reply: Option<Reply>,
    /// What the pending reply adds about natsmeshd's own settings.
    pending_notes: String,
    exit: Option<Exit>,
    /// The node certificate in use, when TLS is on.
    cert: Option<crate::tls::Current>,
    /// When to renew it (or, in `files` mode, look at the files again).
    cert_due: Option<Instant>,
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
    removal: Option<oneshot::Receiver<Result<String, DecommissionError>>>,
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
    /// The work that runs off the loop, ended together when supervision
    /// ends (see `crate::shutdown`): run's own tasks share it, so one
    /// shutdown ends them all.
    tasks: crate::shutdown::Tasks,
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
    /// `discovery`, when DNS is followed, carries each answer (its current
    /// value is the first). The work it runs off its loop goes on `tasks`,
    /// which it shuts down (bounded) when supervision ends.
    pub async fn new(
        config_path: Option<PathBuf>,
        settings: Settings,
        discovery: Option<watch::Receiver<crate::discovery::Found>>,
        notifier: Notifier,
        tasks: crate::shutdown::Tasks,
    ) -> Result<(Self, watch::Receiver<Health>), StartError> {
        std::fs::create_dir_all(&settings.state_dir).map_err(|source| StartError::StateDir {
            path: settings.state_dir.clone(),
            source,
        })?;
        let cert = match &settings.tls {
            None => None,
            Some(t) => {
                let (current, issued) = crate::tls::ensure(t, std::time::SystemTime::now(), false)
                    .map_err(StartError::Tls)?;
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
            |source| StartError::ServerName {
                path: settings.state_dir.clone(),
                source,
            },
        )?;
        crate::fleet::decommission::refuse_if_decommissioned(&settings.state_dir)
            .map_err(StartError::Decommissioned)?;
        let system = crate::auth::system_account(&settings, &settings.state_dir)
            .map_err(StartError::SystemUser)?;
        let mut discovery = discovery;
        let found = discovery.as_mut().map(|rx| rx.borrow_and_update().clone());
        let inputs = Inputs {
            validated: Arc::new(settings),
            system,
        };
        let certs = cert_set(&inputs.validated, cert.as_ref());
        let settings = crate::prepare::effective(
            &inputs.validated,
            found.as_ref(),
            certs.as_ref(),
            inputs.system.as_ref(),
        );
        let current = prepare_in(&settings, &settings.state_dir, CONFIG_NAME).await?;
        let health = Health {
            server_name: settings.server.server_name.clone(),
            region: settings.region.clone(),
            identity: settings.identity.describe(),
            broker_version: current.version.to_string(),
            config_file: current.path.clone(),
            warnings: cert
                .as_ref()
                .map(|c| c.warnings.clone())
                .unwrap_or_default(),
            certificate: cert.as_ref().map(cert_facts),
            ..Health::default()
        };
        let (health_tx, health_rx) = watch::channel(health.clone());
        let spine = Spine {
            settings: watch::Sender::new(Arc::new(settings.clone())),
            certs: watch::Sender::new(certs),
            prepared: watch::Sender::new(Arc::new(current.clone())),
        };
        let (events, event_rx) = mpsc::channel(16);
        let now = Instant::now();
        Ok((
            Self {
                core: Core::new(tuning(&settings), config_id(&current), now),
                since_wall: (now, std::time::SystemTime::now()),
                config_path,
                settings,
                inputs,
                spine,
                current,
                last_good: None,
                running: None,
                notifier,
                output: BrokerOutput::start(),
                health,
                health_tx,
                last_status_line: String::new(),
                pending_reply: None,
                pending_notes: String::new(),
                exit: None,
                cert_due: cert.as_ref().map(|c| due(c.renew_at)),
                accounts_check_due: false,
                found,
                discovery,
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
                tasks,
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
            health_rx,
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

    /// The broker configuration's inputs and output as they change: the
    /// settings it runs with, the certificate set in use and the prepared
    /// configuration (what DNS found has its own channel, from
    /// [`crate::discovery::follow`]).
    pub fn spine(&self) -> SpineRx {
        SpineRx {
            settings: self.spine.settings.subscribe(),
            certs: self.spine.certs.subscribe(),
            prepared: self.spine.prepared.subscribe(),
        }
    }

    /// The settings the broker runs with now, with what they were built
    /// from.
    pub(super) fn built(&self) -> Built {
        Built {
            inputs: self.inputs.clone(),
            settings: self.settings.clone(),
        }
    }

    /// Puts `built` in force (the settings the broker runs with and their
    /// inputs); the settings it replaced.
    pub(super) fn set_built(&mut self, built: Built) -> Settings {
        self.inputs = built.inputs;
        std::mem::replace(&mut self.settings, built.settings)
    }

    /// Follows the fleet pause: `rx` carries each new word (its current
    /// value, the last one kept, holds from the start).
    pub fn follow_fleet_pause(&mut self, mut rx: watch::Receiver<crate::fleet::pause::Pauses>) {
        let first = rx.borrow_and_update().clone();
        self.fleet_pause = Some(rx);
        self.on_fleet_pause(first);
    }

    /// Runs until stopped or until the broker cannot be kept up.
    #[tracing::instrument(name = "supervisor", skip_all)]
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
            None => {
                self.step(Step::Start);
            }
        }
        let watchdog_every = self.notifier.watchdog_interval();
        let mut next_watchdog = Instant::now();
        loop {
            if let Some(exit) = self.exit.take() {
                // Checks and waits are given up; a lease release or a
                // JetStream removal under way finishes, within the grace.
                if !self.tasks.shutdown(crate::shutdown::GRACE).await {
                    tracing::warn!(
                        "some of natsmeshd's own work did not end within {:?}; left behind",
                        crate::shutdown::GRACE
                    );
                }
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
                let with_varz = self.core.state() != State::Starting;
                self.probe = Some(Box::pin(async move {
                    (pid, probe::probe(&targets, with_varz).await)
                }));
            }
            let wake = [
                Some(self.next_probe),
                watchdog_every.map(|_| next_watchdog),
                self.core.next_deadline(),
                self.cert_due,
                Some(self.next_binary_check),
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
                    let pace = if matches!(self.core.state(), State::Starting | State::Syncing) {
                        STARTUP_PROBE_PACE
                    } else {
                        self.settings.health.interval
                    };
                    self.next_probe = report.at + pace;
                    self.on_report(report);
                }
                Some((kind, announced)) = next_announcement(&mut self.announcers) => {
                    match kind {
                        Pointer::Dns => self.health.dns = Some(announced.clone()),
                        Pointer::LoadBalancer => {
                            self.health.load_balancer = Some(announced.clone());
                        }
                    }
                    self.publish();
                    if !announced.up && self.core.stop_plan().is_some_and(|s| s.lame_duck_at.is_some()) {
                        tracing::info!("{kind} no longer points here");
                        let pointed = self.pointed_at();
                        self.step(Step::Pointers { pointed });
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
            // The lifecycle's timers: a crash restart's backoff, the
            // stop's deadlines, systemd's extension.
            if self.core.next_deadline().is_some_and(|t| now >= t) {
                self.step(Step::Tick);
            }
        }
    }

    /// Feeds `event` to the lifecycle core and executes what it decides,
    /// feeding back what that produced (a spawn's outcome) until nothing is
    /// left; the last answer to a command, if any.
    fn step(&mut self, event: Step) -> Option<Answer> {
        let mut answer = None;
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            let before = self.core.state();
            // The settings in force now (a reload or a rollback may have
            // changed them since the last event).
            self.core.retune(tuning(&self.settings), false);
            for action in self.core.step(event, Instant::now()) {
                match action {
                    Action::Answer(res) => answer = Some(res.map_err(Into::into)),
                    action => events.extend(self.execute(action)),
                }
            }
            let (state, reason) = (self.core.state(), self.core.life().reason());
            if before != state {
                tracing::debug!(%state, %reason, "state change");
            }
            let c = self.core.counters();
            (
                self.health.restarts,
                self.health.crashes,
                self.health.hang_kills,
            ) = (c.restarts, c.crashes, c.hang_kills);
        }
        self.publish();
        answer
    }

    /// Carries out one of the core's actions; the event it produced, if any.
    fn execute(&mut self, action: Action) -> Option<Step> {
        match action {
            Action::Spawn => return Some(self.start_broker()),
            Action::Signal { pid, sig } => {
                if let Some(run) = self.running.as_ref().filter(|r| r.pid == pid) {
                    let _ = run.process.signal(match sig {
                        Sig::LameDuck => Signal::SIGUSR2,
                        Sig::Interrupt => Signal::SIGINT,
                        Sig::Kill => Signal::SIGKILL,
                    });
                }
            }
            Action::CheckAccounts { .. } => self.accounts_check_due = true,
            Action::Ready { first } => self.become_ready(first),
            Action::UpWithoutBroker => {
                self.publish();
                let line = self.status_line();
                self.notifier.ready(&line);
            }
            Action::ExtendTimeout(by) => self.notifier.extend_timeout(by),
            Action::Publish => {}
            Action::ReleaseLease => self.release_lease(),
            Action::RollBack { why, .. } => self.roll_back(why),
            // MESSAGE_ID only on the lines that have one (an empty field
            // would reach the journal).
            Action::Log { level, id, line } => match (level, id) {
                (Level::Info, Some(id)) => tracing::info!(message_id = id, "{line}"),
                (Level::Info, None) => tracing::info!("{line}"),
                (Level::Warn, Some(id)) => tracing::warn!(message_id = id, "{line}"),
                (Level::Warn, None) => tracing::warn!("{line}"),
                (Level::Error, Some(id)) => tracing::error!(message_id = id, "{line}"),
                (Level::Error, None) => tracing::error!("{line}"),
            },
            Action::Answer(_) => {}
            Action::Exit(exit) => self.exit = Some(exit),
            // A bug: report it; the state stays.
            Action::Bug(e) => tracing::error!(error = %e, "refused a state change"),
        }
        None
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
        let life = self.core.life();
        // The wall-clock time of the state's start (the core reads no
        // clock): taken when the shell first sees it.
        if self.since_wall.0 != life.since() {
            self.since_wall = (life.since(), std::time::SystemTime::now());
        }
        let h = &mut self.health;
        h.state = life.state();
        h.reason = life.reason().to_owned();
        h.since = self.since_wall.1;
        h.broker_pid = self.running.as_ref().map(|r| r.pid);
        h.broker_version = broker_version;
        h.log_lines_dropped = self.output.dropped();
        h.paused = self.paused;
        h.fleet_paused.clone_from(&self.fleet_paused);
        let line = self.status_line();
        if line != self.last_status_line {
            self.notifier.status(&line);
            self.last_status_line = line;
        }
        self.health_tx.send_replace(self.health.clone());
        self.publish_spine();
    }

    /// The STATUS= line of what is known now, made at the edge from the
    /// health.
    fn status_line(&self) -> String {
        Status::from_health(&self.health).line()
    }

    /// The inputs and the prepared configuration, on their channels when
    /// they changed (the readers are woken only then).
    fn publish_spine(&self) {
        let settings = &self.settings;
        self.spine.settings.send_if_modified(|s| {
            let changed = **s != *settings;
            if changed {
                *s = Arc::new(settings.clone());
            }
            changed
        });
        let certs = cert_set(settings, self.cert.as_ref());
        self.spine.certs.send_if_modified(|c| {
            let changed = *c != certs;
            if changed {
                *c = certs;
            }
            changed
        });
        let current = &self.current;
        self.spine.prepared.send_if_modified(|p| {
            let changed = p.path != current.path || p.rendered.text != current.rendered.text;
            if changed {
                *p = Arc::new(current.clone());
            }
            changed
        });
    }

    /// Spawns the broker from the installed configuration: the core hears
    /// [`Step::Spawned`] or [`Step::SpawnFailed`].
    fn start_broker(&mut self) -> Step {
        let targets = match self.probe_targets() {
            Ok(t) => t,
            Err(why) => return Step::SpawnFailed(why.to_string()),
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
                return Step::SpawnFailed(e.to_string());
            }
        }
        let process = match spawn(
            &self.settings.binary,
            &self.current.path,
            crate::broker_user::run_as(),
        ) {
            Ok(p) => p,
            Err(e) => return Step::SpawnFailed(e.to_string()),
        };
        let pid = process.pid();
        self.install(process, targets);
        Step::Spawned {
            pid,
            what: format!("nats-server {} started (pid {pid})", self.current.version),
        }
    }

    /// Where the probes look, or why they cannot.
    fn probe_targets(&self) -> Result<Targets, TargetsError> {
        let s = &self.settings;
        let (Some(mon), Some(client)) = (
            s.server.monitoring.as_ref().and_then(local_addr),
            local_addr(&s.server.listen),
        ) else {
            return Err(TargetsError::NoFixedPorts);
        };
        let https = match s.tls.as_ref().filter(|t| t.monitoring) {
            None => None,
            Some(t) => match crate::tls::probe::monitoring_client(t) {
                Ok(c) => Some(c),
                Err(e) => return Err(TargetsError::HttpsMonitoring(e)),
            },
        };
        Ok(Targets::new(
            mon,
            client,
            &self.current.version,
            s.server.jetstream.is_some(),
            s.health.timeout,
            https,
        )
        .with_gateways(s.server.gateway.is_some())
        .with_client_tls(self.client_port_tls()))
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

    /// Supervises `process` from now on (started, or adopted); the core is
    /// told by the caller.
    fn install(&mut self, mut process: BrokerProcess, targets: Targets) {
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
            targets,
        });
        // A new process is probed at once and then at the start-up pace,
        // not on the schedule of the one before (up to an interval away) nor
        // after a round still in flight against it: ready follows the
        // broker within a start-up probe.
        self.probe = None;
        self.next_probe = now;
        self.started();
    }

    fn on_report(&mut self, report: Report) {
        let Some(pid) = self.running.as_ref().map(|r| r.pid) else {
            return;
        };
        tracing::trace!(alive = %report.alive_detail, client = ?report.client, jetstream = ?report.jetstream, "probe round");
        self.health.alive = Some(crate::health::Alive {
            answered: report.alive == liveness::Observation::Answered,
            detail: report.alive_detail.clone(),
        });
        self.health.client_port = Some(report.client.clone());
        self.health.jetstream = Some(report.jetstream.clone());
        if let Some(v) = &report.varz {
            self.health.routes = self
                .settings
                .server
                .cluster
                .is_some()
                .then(|| v.route_peers());
            self.health.clients = Some(v.connections);
        }
        self.health.gateways = report
            .gatewayz
            .as_ref()
            .map(|g| g.outbound_gateways.keys().cloned().collect());
        self.health.clock_synchronized = status::clock_synchronized();
        let seen = lifecycle::Seen {
            alive: report.alive,
            serving: report.client == ClientPort::Serving,
            routes: report.varz.as_ref().map_or(0, |v| v.route_peers()),
            jetstream_current: report.jetstream.settled(),
            serving_line: crate::health::probes::describe_client_port(&report.client),
        };
        self.step(Step::Probe { pid, seen });
    }

    /// The broker serves (the core says): the configuration is good, a
    /// restart's waiting request is answered; READY=1 the first time.
    fn become_ready(&mut self, first: bool) {
        self.last_good = Some((self.current.clone(), self.built()));
        self.health.restart_pending.clear();
        self.publish();
        let line = self.status_line();
        tracing::info!(message_id = ids::READY, status = %line, "ready");
        if first {
            // READY=1 once: systemd's start is over; later readiness (after
            // a restart) shows in STATUS.
            self.notifier.ready(&line);
        }
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
        self.step(Step::Exited {
            pid: run.pid,
            status,
            jitter: fastrand::f64(),
        });
    }

    /// The broker crashed before serving a new configuration (the core
    /// says): the last one that served goes back in place.
    fn roll_back(&mut self, why: String) {
        let Some((good, good_settings)) = self.last_good.clone() else {
            return;
        };
        tracing::error!(message_id = ids::RELOAD_FAILED, "{why}");
        if let Err(e) =
            crate::broker_user::write_readable(&good.path, good.rendered.text.as_bytes(), PLAIN)
        {
            tracing::error!(error = %e, "cannot write back the last good configuration");
        }
        // The core already counts it as installed.
        self.current = good;
        self.set_built(good_settings);
        self.health.restart_pending.clear();
        self.health.reloads_failed += 1;
        self.health.last_reload = Some(why.clone());
        if let Some(reply) = self.pending_reply.take() {
            let _ = reply.send(Err(why.into()));
        }
    }

    /// The configuration in place becomes `next`; the core learns which
    /// one the next broker starts from (`loaded`: the running one reloaded
    /// it).
    pub(super) fn set_current(&mut self, next: Prepared, loaded: bool) {
        self.current = next;
        let config = config_id(&self.current);
        self.step(Step::Installed { config, loaded });
    }

    /// The core's view of the settings.
    pub(super) fn retune(&mut self, reset: bool) {
        self.core.retune(tuning(&self.settings), reset);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Stop => self.begin_stop(),
            Command::Drain { reply } => {
                let pointed = self.pointed_at();
                let res = self.step(Step::Drain { pointed });
                answer(reply, res.unwrap_or_else(|| Err("no answer".into())));
            }
            Command::Undrain { reply } => answer(reply, self.undrain()),
            Command::Decommission { reply } => self.decommission(reply),
            Command::Pause { reply } => answer(reply, self.pause()),
            Command::Resume { reply } => answer(reply, self.resume()),
            Command::Reload { reply } => self.request_reload(reply),
            Command::Maintenance { why, reply } => self.maintenance(why, reply),
            Command::Reboot { line } => {
                if self.health.reboot != line {
                    self.health.reboot = line;
                    self.publish();
                }
            }
        }
    }

    /// Drains (lame duck, with deadlines for SIGINT and SIGKILL) and ends
    /// supervision, for `why`.
    pub(super) fn leave(&mut self, why: &str) {
        let pointed = self.pointed_at();
        self.step(Step::Stop {
            why: why.to_owned(),
            pointed,
        });
    }

    fn begin_stop(&mut self) {
        self.notifier.stopping();
        // A change in flight is given up; its late result is ignored.
        self.abandon_changes("natsmeshd is stopping");
        if let Some(reply) = self.pending_reply.take() {
            let _ = reply.send(Err("natsmeshd is stopping".into()));
        }
        self.leave("stopping");
    }

    /// Gives a restart's lease back (the core says: the new broker serves
    /// with JetStream current), unless a decommission still needs it.
    fn release_lease(&mut self) {
        if self.removal.is_some() {
            return;
        }
        if let Some(held) = self.lease.take() {
            self.health.fleet = crate::health::Coordinating::Idle;
            self.tasks.spawn_awaited(planned::release(held));
        }
    }
}

/// The certificate set `settings` loads, when TLS is on and a certificate
/// is in use.
fn cert_set(
    settings: &Settings,
    cert: Option<&crate::tls::Current>,
) -> Option<crate::tls::CertSet> {
    let tls = settings.tls.as_ref()?;
    Some(crate::tls::CertSet::new(tls, cert?.clone()))
}

/// What the broker's settings are built from besides DNS and the
/// certificate: the validated settings as read (never edited) and
/// natsmeshd's logins, read with them.
#[derive(Debug, Clone)]
pub(super) struct Inputs {
    pub(super) validated: Arc<Settings>,
    pub(super) system: Option<crate::auth::SystemAccount>,
}

/// The settings a broker runs with and what they were built from.
#[derive(Debug, Clone)]
pub(super) struct Built {
    pub(super) inputs: Inputs,
    pub(super) settings: Settings,
}

/// The senders of the configuration's channels.
struct Spine {
    settings: watch::Sender<Arc<Settings>>,
    certs: watch::Sender<Option<crate::tls::CertSet>>,
    prepared: watch::Sender<Arc<Prepared>>,
}

/// The broker configuration's inputs and output, each on a watch channel
/// the supervisor publishes to when it changes.
#[derive(Debug, Clone)]
pub struct SpineRx {
    /// The settings the broker runs with (built by
    /// [`crate::prepare::effective`]).
    pub settings: watch::Receiver<Arc<Settings>>,
    /// The node certificate set in use (`None`: TLS off).
    pub certs: watch::Receiver<Option<crate::tls::CertSet>>,
    /// The configuration in place, rendered and checked.
    pub prepared: watch::Receiver<Arc<Prepared>>,
}

/// Why supervision cannot begin.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory cannot be created.
    #[error("cannot create state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node certificate cannot be issued or read.
    #[error("TLS: {0}")]
    Tls(#[source] crate::tls::TlsError),
    /// The server name cannot be recorded.
    #[error("cannot record the server name in {}: {source}", path.display())]
    ServerName {
        /// The state directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// This node was decommissioned.
    #[error(transparent)]
    Decommissioned(crate::fleet::decommission::DecommissionError),
    /// natsmeshd's system user cannot be set up.
    #[error("system user: {0}")]
    SystemUser(#[source] crate::auth::AuthError),
    /// The first configuration cannot be prepared.
    #[error(transparent)]
    Prepare(#[from] crate::prepare::PrepareError),
}

impl StartError {
    /// Whether the configuration (not the machine) is at fault.
    pub fn is_config_error(&self) -> bool {
        match self {
            Self::Prepare(e) => e.is_config_error(),
            Self::Tls(_) | Self::SystemUser(_) | Self::Decommissioned(_) => true,
            Self::StateDir { .. } | Self::ServerName { .. } => false,
        }
    }
}

/// What the lifecycle core needs of the settings.
fn tuning(s: &Settings) -> Tuning {
    Tuning {
        liveness_budget: s.health.liveness_budget,
        startup_grace: s.health.startup_grace,
        route_wait: s.health.route_wait,
        lame_duck: s.server.lame_duck_duration,
        restart: s.restart,
        peers_configured: s
            .server
            .cluster
            .as_ref()
            .is_some_and(|c| c.routes.len() > 1),
        gateway: s.server.gateway.is_some(),
        system_user: s.system_user.is_some(),
    }
}

/// A configuration's identity for the core: its rendered text's hash (two
/// files with the same text are the same configuration).
fn config_id(p: &Prepared) -> ConfigId {
    config_id_of(&p.rendered.text)
}

/// The identity of a rendered file's text.
fn config_id_of(text: &str) -> ConfigId {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// A monotonic deadline for a wall-clock time.
fn due(at: std::time::SystemTime) -> Instant {
    Instant::now()
        + at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
}

/// The facts of a certificate in use that the health carries.
fn cert_facts(c: &crate::tls::Current) -> crate::health::Certificate {
    crate::health::Certificate {
        serial: c.info.serial.clone(),
        not_after: c.info.not_after,
        renew_at: c.renew_at,
        intermediate_not_after: c.issuer_not_after,
        root_not_after: c.root_not_after,
    }
}

impl Supervisor {
    /// The certificate in use, in the health.
    fn show_cert(&mut self, current: &crate::tls::Current) {
        self.health.certificate = Some(cert_facts(current));
        self.health.certificate_failing = None;
        self.health.warnings = current.warnings.clone();
    }
}

/// Why the probes have nowhere to look: the broker is not started (the
/// core hears it as a failed spawn, in these words).
#[derive(Debug, thiserror::Error)]
enum TargetsError {
    /// A listener without a fixed port cannot be probed on loopback.
    #[error("the monitoring and client listeners need fixed ports")]
    NoFixedPorts,
    /// Monitoring is served over HTTPS and the probes' TLS client cannot
    /// be built from the node's roots.
    #[error("cannot probe HTTPS monitoring: {0}")]
    HttpsMonitoring(#[source] crate::tls::probe::ProbeError),
}

/// Why the decommission's JetStream removal did not end this node's
/// membership.
#[derive(Debug, thiserror::Error)]
pub(super) enum RemovalError {
    /// The removal ran and failed.
    #[error(transparent)]
    Failed(#[from] DecommissionError),
    /// Its task went away without a word (natsmeshd is stopping).
    #[error("the removal task ended without an answer")]
    NoAnswer,
}

/// A configuration change's outcome: done (what came of it, or why it
/// was refused), or waiting for a restart.
enum Reloaded {
    Done(Result<String, tasks::ChangeError>),
    Pending,
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
fn answer(reply: Option<Reply>, res: Answer) {
    if let Some(r) = reply {
        let _ = r.send(res);
    }
}

/// The outcome of the decommission's removal; pends forever without one.
async fn next_removal(
    removal: &mut Option<oneshot::Receiver<Result<String, DecommissionError>>>,
) -> Result<String, RemovalError> {
    match removal {
        Some(rx) => match rx.await {
            Ok(res) => res.map_err(RemovalError::Failed),
            Err(_) => Err(RemovalError::NoAnswer),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The words the operator reads in `status` (the decommission's
    /// failure) and the core's failed spawn stay as they were.
    #[test]
    fn removal_and_probe_target_errors_keep_their_words() {
        assert_eq!(
            RemovalError::NoAnswer.to_string(),
            "the removal task ended without an answer"
        );
        let failed = DecommissionError::WouldBreak(vec!["ORDERS (R3 on 3 servers)".into()]);
        let words = failed.to_string();
        assert_eq!(RemovalError::from(failed).to_string(), words);
        assert_eq!(
            TargetsError::NoFixedPorts.to_string(),
            "the monitoring and client listeners need fixed ports"
        );
    }

    /// A removal whose task went away answers `NoAnswer`; one that ran
    /// answers its own result.
    #[tokio::test]
    async fn the_removal_wait_turns_a_lost_task_into_no_answer() {
        let (tx, rx) = oneshot::channel::<Result<String, DecommissionError>>();
        drop(tx);
        let mut removal = Some(rx);
        assert!(matches!(
            next_removal(&mut removal).await,
            Err(RemovalError::NoAnswer)
        ));
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(DecommissionError::NoOwnAnswer));
        let mut removal = Some(rx);
        assert!(matches!(
            next_removal(&mut removal).await,
            Err(RemovalError::Failed(DecommissionError::NoOwnAnswer))
        ));
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok("removed".into()));
        let mut removal = Some(rx);
        assert_eq!(
            next_removal(&mut removal).await.ok().as_deref(),
            Some("removed")
        );
    }
}
