//! The broker's lifecycle as a pure state machine: [`Core::step`] takes an
//! [`Event`] and the time it happened and returns the [`Action`]s to take.
//! No I/O, no `await`, no clock: time comes in as `now`, timers go out as
//! [`Core::next_deadline`], randomness (the crash backoff's jitter) comes
//! in with the event. The supervisor's loop (`mod.rs`) is the shell that
//! executes the actions (spawn, signal, notify, ask for the accounts,
//! release the lease) and feeds what happened back as events; a broker
//! taken over after a natsmeshd re-exec is an [`Event::Adopted`] like any
//! other start.
//!
//! The core owns what decides the broker's fate: the state and its checked
//! transitions, the process it supervises (liveness, first served, serving
//! failures), what follows its exit (crash backoff, restart, stay down,
//! finish), the stop's deadlines (lame duck, SIGINT, SIGKILL, systemd's
//! extension), READY=1, the restart lease of a planned restart and the
//! configuration that last served (rollback after a crash before serving).
//! Its invariants (tested in `lifecycle/tests.rs` by a property test over random
//! event sequences):
//! - at most one broker: no spawn while one runs or is being started;
//! - a stop ends by its plan's end (pointer budget + lame duck + margin +
//!   SIGKILL's wait, within the unit's `TimeoutStopSec` less 10 s at the
//!   defaults) if SIGKILL works;
//! - a hung broker is killed within its liveness budget (plus a probe);
//! - READY=1 once per natsmeshd image;
//! - lame duck (SIGUSR2) before SIGINT to a broker that served;
//! - a change refused never becomes the configuration a broker runs.

use std::time::Duration;

use tokio::time::Instant;

use super::Exit;
use super::backoff::{AfterCrash, RestartPolicy};
use super::liveness::{Liveness, Observation, Verdict};
use super::state::{IllegalTransition, Lifecycle, State};
use crate::config::validate::RestartSettings;
use crate::logging::ids;

/// Why the core refused a command (drain, stop, undrain, maintenance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Nothing to drain or stop.
    #[error("no broker is running")]
    NoBroker,
    /// `undrain` while not drained (the broker runs or is starting).
    #[error("not drained (state {0}); nothing to undo")]
    NotDrained(State),
}

/// The control socket's reply carries the core's words.
impl From<Refusal> for crate::command::Refused {
    fn from(r: Refusal) -> Self {
        Self::because(r)
    }
}

/// How often, and by a multiple of which, EXTEND_TIMEOUT_USEC is sent.
pub(crate) const EXTEND_EVERY: Duration = Duration::from_secs(5);
/// Consecutive failed serving probes before a ready node leaves service.
pub(crate) const SERVING_FAILURES: u32 = 3;

/// A configuration's identity (the shell hashes the rendered file).
pub type ConfigId = u64;

/// What the core needs of the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Timeouts only for this long: hung.
    pub liveness_budget: Duration,
    /// Timeouts forgiven after a start (extended by answers).
    pub startup_grace: Duration,
    /// How long a serving node with peers waits for its first route.
    pub route_wait: Duration,
    /// nats-server's lame-duck duration.
    pub lame_duck: Duration,
    /// Crash backoff, crash loop, stop margin and SIGKILL's wait.
    pub restart: RestartSettings,
    /// More than one route is configured: wait for a first route.
    pub peers_configured: bool,
    /// A gateway is configured (peers in other regions).
    pub gateway: bool,
    /// natsmeshd has a system user to compare accounts with the peers.
    pub system_user: bool,
}

/// The signals the core sends the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// SIGUSR2: lame duck.
    LameDuck,
    /// SIGINT: a clean stop.
    Interrupt,
    /// SIGKILL.
    Kill,
}

/// What one probe round saw, as the core needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The liveness probe.
    pub alive: Observation,
    /// The client port serves (not refused, not lame duck).
    pub serving: bool,
    /// Routes to peers (`/varz`).
    pub routes: u64,
    /// JetStream current (or disabled).
    pub jetstream_current: bool,
    /// The client port's state for a person (the reason a node leaves
    /// service).
    pub serving_line: String,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Start a broker (the first start, or `undrain`).
    Start,
    /// A broker was spawned (from the installed configuration).
    Spawned {
        /// Its pid.
        pid: u32,
        /// For the state's reason.
        what: String,
    },
    /// The broker could not be spawned.
    SpawnFailed(String),
    /// A broker handed over by the natsmeshd image this one replaced.
    Adopted {
        /// Its pid.
        pid: u32,
        /// Its configuration (the file the previous image ran it with).
        config: ConfigId,
        /// It served before the hand-over.
        served: bool,
        /// For the state's reason.
        what: String,
    },
    /// A probe round against broker `pid`.
    Probe {
        /// The broker probed.
        pid: u32,
        /// What it saw.
        seen: Seen,
    },
    /// The peers' accounts match this node's (or cannot be asked).
    AccountsAgreed {
        /// The broker they were asked for.
        pid: u32,
    },
    /// The peers' accounts differ: stay out of service.
    AccountsDiffer {
        /// The broker they were asked for.
        pid: u32,
        /// What differs.
        why: String,
    },
    /// Broker `pid` exited.
    Exited {
        /// Its pid.
        pid: u32,
        /// Its exit status, for a person.
        status: String,
        /// In [0, 1): spreads crash restarts of many nodes apart.
        jitter: f64,
    },
    /// natsmeshd stops (SIGTERM, a decommission's end): drain and finish.
    Stop {
        /// Why.
        why: String,
        /// The longest budget of DNS and load balancers still pointing
        /// here, if any does.
        pointed: Option<Duration>,
    },
    /// `natsmeshd drain`: drain and stay down.
    Drain {
        /// As in [`Event::Stop`].
        pointed: Option<Duration>,
    },
    /// `natsmeshd undrain`.
    Undrain,
    /// A restart natsmeshd decided on may go ahead now (the lease is held,
    /// or restarts are not coordinated).
    Restart {
        /// Why.
        why: String,
        /// As in [`Event::Stop`].
        pointed: Option<Duration>,
        /// It runs under the region's lease, to give back once the new
        /// broker serves with JetStream current.
        leased: bool,
    },
    /// The lease held for a restart is gone (expired, lost with the
    /// JetStream quorum): nothing to give back.
    LeaseLost,
    /// At start, kept in maintenance (same boot): no broker; natsmeshd
    /// itself is up, so systemd's start ends.
    StayDown {
        /// Why, for the state's reason.
        why: String,
    },
    /// `natsmeshd maintenance start` (its lease taken): drain and stay
    /// down, as a drain does.
    Maintenance {
        /// Why, for the log and the state's reason.
        why: String,
        /// As in [`Event::Stop`].
        pointed: Option<Duration>,
    },
    /// `natsmeshd maintenance stop`: serve again (after the drain under
    /// way, if one is).
    MaintenanceOver,
    /// What points here changed: `pointed` as in [`Event::Stop`].
    Pointers {
        /// As in [`Event::Stop`].
        pointed: Option<Duration>,
    },
    /// Configuration `config` is installed: the next broker starts from
    /// it; `loaded` when the running broker reloaded it.
    Installed {
        /// The configuration.
        config: ConfigId,
        /// The running broker runs it now.
        loaded: bool,
    },
    /// Time passed (a deadline of [`Core::next_deadline`] came).
    Tick,
}

/// Something to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Spawn a broker from the installed configuration; answer with
    /// [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn,
    /// Send `sig` to broker `pid`.
    Signal {
        /// The broker.
        pid: u32,
        /// The signal.
        sig: Sig,
    },
    /// Ask the peers for their accounts; answer with
    /// [`Event::AccountsAgreed`] or [`Event::AccountsDiffer`].
    CheckAccounts {
        /// The broker.
        pid: u32,
    },
    /// The broker serves: READY=1 if `first` (once per image), STATUS
    /// otherwise; answer a restart's waiting request.
    Ready {
        /// The first time in this image.
        first: bool,
    },
    /// natsmeshd is up without a broker (kept down in maintenance):
    /// READY=1, so systemd's start ends; never sent twice (see `Ready`).
    UpWithoutBroker,
    /// EXTEND_TIMEOUT_USEC.
    ExtendTimeout(Duration),
    /// The state changed (or its reason did): publish the status.
    Publish,
    /// Give the region's restart lease back.
    ReleaseLease,
    /// The broker crashed before serving a new configuration: install
    /// `to`, the last one that served, again.
    RollBack {
        /// The configuration to go back to.
        to: ConfigId,
        /// Why, for the log and the status.
        why: String,
    },
    /// A line for the log.
    Log {
        /// How loud.
        level: Level,
        /// The journal's MESSAGE_ID, for the lines an operator looks for.
        id: Option<&'static str>,
        /// What.
        line: String,
    },
    /// The answer to a command.
    Answer(Result<String, Refusal>),
    /// Supervision ends.
    Exit(Exit),
    /// A transition the machine refused: a bug, reported.
    Bug(IllegalTransition),
}

/// A log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}

/// What follows the running broker's exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterExit {
    /// Unexpected: a crash.
    Crash,
    /// Start it again at once (a restart natsmeshd asked for).
    Restart(String),
    /// Stay stopped and keep running (drain).
    StayDown,
    /// Stop supervision.
    Finish,
}

/// Deadlines of a stop in progress: lame duck (once nothing points here,
/// or at this deadline), SIGINT, then SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    /// Lame duck not sent yet: at the latest then.
    pub lame_duck_at: Option<Instant>,
    /// SIGINT then.
    pub interrupt_at: Instant,
    /// SIGKILL then.
    pub kill_at: Instant,
    /// SIGINT sent.
    pub interrupted: bool,
    /// The latest this stop may end by its own deadlines: what systemd is
    /// asked to wait for.
    pub ends: Instant,
}

/// The broker the core supervises.
#[derive(Debug, Clone)]
pub struct Broker {
    /// Its pid.
    pub pid: u32,
    /// Its configuration.
    pub config: ConfigId,
    liveness: Liveness,
    /// When it first served clients.
    pub first_served: Option<Instant>,
    serving_failures: u32,
    /// Taken over while it served: the first serving round makes it ready
    /// again (no `syncing` blip for the load balancer).
    adopted_serving: bool,
    accounts_agreed: bool,
}

/// Counters for the status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Restarts (crash and planned).
    pub restarts: u64,
    /// Unexpected exits.
    pub crashes: u64,
    /// Brokers killed as hung or silent.
    pub hang_kills: u64,
}

/// The lifecycle.
#[derive(Debug, Clone)]
pub struct Core {
    tuning: Tuning,
    life: Lifecycle,
    broker: Option<Broker>,
    /// A spawn was asked for and not answered yet.
    spawning: bool,
    after_exit: AfterExit,
    stop: Option<StopPlan>,
    restart_at: Option<Instant>,
    policy: RestartPolicy,
    last_extend: Option<Instant>,
    ready_sent: bool,
    /// A restart's lease is held: given back once the new broker serves.
    lease: bool,
    /// The configuration the next broker starts from.
    installed: ConfigId,
    /// The configuration installed when a broker last became ready.
    last_good: Option<ConfigId>,
    finished: bool,
    counters: Counters,
}

impl Core {
    /// A core with no broker yet, in `starting`, configuration
    /// `installed` in place.
    pub fn new(tuning: Tuning, installed: ConfigId, now: Instant) -> Self {
        Self {
            policy: RestartPolicy::new(tuning.restart),
            tuning,
            life: Lifecycle::new(now),
            broker: None,
            spawning: false,
            after_exit: AfterExit::Crash,
            stop: None,
            restart_at: None,
            last_extend: None,
            ready_sent: false,
            lease: false,
            installed,
            last_good: None,
            finished: false,
            counters: Counters::default(),
        }
    }

    /// New settings: the restart policy starts over when `restart` changes
    /// or `reset` says so (a change that restarts the broker).
    pub fn retune(&mut self, tuning: Tuning, reset: bool) {
        if reset || tuning.restart != self.tuning.restart {
            self.policy = RestartPolicy::new(tuning.restart);
        }
        self.tuning = tuning;
    }

    /// The state.
    pub fn state(&self) -> State {
        self.life.state()
    }

    /// The state, since when and why.
    pub fn life(&self) -> &Lifecycle {
        &self.life
    }

    /// The broker, if one runs.
    pub fn broker(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// The stop in progress.
    pub fn stop_plan(&self) -> Option<StopPlan> {
        self.stop
    }

    /// What follows the broker's exit.
    pub fn after_exit(&self) -> &AfterExit {
        &self.after_exit
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A restart's lease is held.
    pub fn holds_lease(&self) -> bool {
        self.lease
    }

    /// Supervision has ended.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The next time the core must be given an [`Event::Tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        let stop = self.stop.map(|s| {
            if let Some(t) = s.lame_duck_at {
                t
            } else if s.interrupted {
                s.kill_at
            } else {
                s.interrupt_at
            }
        });
        // Past the stop's own end no extension goes out (and a deadline in
        // the past would wake the shell at once, again and again).
        let extend = self
            .stop
            .filter(|_| self.after_exit == AfterExit::Finish)
            .and_then(|s| {
                self.last_extend
                    .map(|t| t + EXTEND_EVERY)
                    .filter(|t| *t < s.ends)
            });
        [self.restart_at, stop, extend].into_iter().flatten().min()
    }

    /// Handles `event` at `now`.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        match event {
            Event::Start => self.spawn(&mut out),
            Event::Spawned { pid, what } => {
                self.install(pid, self.installed, false, what, now, &mut out)
            }
            Event::Adopted {
                pid,
                config,
                served,
                what,
            } => self.install(pid, config, served, what, now, &mut out),
            Event::SpawnFailed(why) => {
                self.spawning = false;
                self.fail(why, now, &mut out);
            }
            Event::Probe { pid, seen } => self.on_probe(pid, seen, now, &mut out),
            Event::AccountsAgreed { pid } => {
                let Some(b) = self.broker.as_mut().filter(|b| b.pid == pid) else {
                    return out;
                };
                if !matches!(self.life.state(), State::Starting | State::Syncing)
                    || b.accounts_agreed
                {
                    return out;
                }
                b.accounts_agreed = true;
                self.become_ready(now, &mut out);
            }
            Event::AccountsDiffer { pid, why } => {
                if self.broker.as_ref().is_some_and(|b| b.pid == pid)
                    && matches!(self.life.state(), State::Starting | State::Syncing)
                {
                    self.go(State::Syncing, why, now, &mut out);
                }
            }
            Event::Exited {
                pid,
                status,
                jitter,
            } => self.on_exit(pid, status, jitter, now, &mut out),
            Event::Stop { why, pointed } => {
                // The stop's first EXTEND_TIMEOUT_USEC goes at once (an
                // extension of a slow start does not count; a second stop
                // while stopping changes nothing).
                if self.after_exit != AfterExit::Finish {
                    self.last_extend = None;
                }
                self.restart_at = None;
                let res = self.begin_drain(AfterExit::Finish, &why, pointed, now, &mut out);
                // Then every EXTEND_EVERY from `next_deadline`.
                self.extend_stop(now, &mut out);
                out.push(Action::Answer(res));
            }
            Event::Drain { pointed } => {
                let res = self.begin_drain(
                    AfterExit::StayDown,
                    "drain requested",
                    pointed,
                    now,
                    &mut out,
                );
                out.push(Action::Answer(res));
            }
            Event::Undrain => {
                if self.life.state() != State::Stopped || self.broker.is_some() || self.spawning {
                    out.push(Action::Answer(Err(Refusal::NotDrained(self.life.state()))));
                } else {
                    out.push(Action::Log {
                        id: None,
                        level: Level::Info,
                        line: "undrain: starting nats-server again".into(),
                    });
                    self.spawn(&mut out);
                    out.push(Action::Answer(Ok(
                        "starting nats-server; back in service once it serves".into(),
                    )));
                }
            }
            Event::Restart {
                why,
                pointed,
                leased,
            } => {
                self.lease |= leased;
                let res = self.begin_drain(
                    AfterExit::Restart(why),
                    "restart pending: draining before the restart",
                    pointed,
                    now,
                    &mut out,
                );
                if let Err(e) = res {
                    out.push(Action::Log {
                        id: None,
                        level: Level::Warn,
                        line: format!("cannot restart: {e}"),
                    });
                    // A lease held stays until a broker serves (as the
                    // next start runs this configuration anyway).
                }
            }
            Event::LeaseLost => self.lease = false,
            Event::StayDown { why } => {
                if self.broker.is_none() && !self.spawning {
                    self.go(State::Stopped, why, now, &mut out);
                    if !std::mem::replace(&mut self.ready_sent, true) {
                        out.push(Action::UpWithoutBroker);
                    }
                }
            }
            Event::Maintenance { why, pointed } => {
                let res = self.begin_drain(
                    AfterExit::StayDown,
                    &format!("maintenance: {why}"),
                    pointed,
                    now,
                    &mut out,
                );
                out.push(Action::Answer(res));
            }
            Event::MaintenanceOver => {
                let answer = if self.life.state() == State::Stopped
                    && self.broker.is_none()
                    && !self.spawning
                {
                    out.push(Action::Log {
                        id: None,
                        level: Level::Info,
                        line: "maintenance over: starting nats-server again".into(),
                    });
                    self.spawn(&mut out);
                    "starting nats-server"
                } else if self.after_exit == AfterExit::StayDown {
                    // Still leaving: back once the drain ends.
                    self.after_exit = AfterExit::Restart("maintenance over".into());
                    "the drain ends first, then nats-server starts again"
                } else {
                    "nats-server is not held down"
                };
                out.push(Action::Answer(Ok(answer.into())));
            }
            Event::Pointers { pointed } => {
                if pointed.is_none() && self.stop.is_some_and(|s| s.lame_duck_at.is_some()) {
                    self.lame_duck(now, &mut out);
                }
            }
            Event::Installed { config, loaded } => {
                self.installed = config;
                if loaded && let Some(b) = self.broker.as_mut() {
                    b.config = config;
                }
            }
            Event::Tick => self.on_tick(now, &mut out),
        }
        out
    }

    fn go(&mut self, to: State, reason: impl Into<String>, now: Instant, out: &mut Vec<Action>) {
        match self.life.go(to, reason, now) {
            Ok(_) => out.push(Action::Publish),
            // A bug: reported, and the state stays.
            Err(e) => out.push(Action::Bug(e)),
        }
    }

    fn spawn(&mut self, out: &mut Vec<Action>) {
        if self.broker.is_some() || self.spawning {
            // Never two brokers: a second start is a no-op.
            return;
        }
        self.spawning = true;
        out.push(Action::Spawn);
    }

    fn fail(&mut self, why: String, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Log {
            id: None,
            level: Level::Error,
            line: format!("cannot run the broker: {why}"),
        });
        self.go(State::Stopped, why.clone(), now, out);
        self.finish(Exit::Failed(why), out);
    }

    fn finish(&mut self, exit: Exit, out: &mut Vec<Action>) {
        self.finished = true;
        self.stop = None;
        self.restart_at = None;
        if std::mem::take(&mut self.lease) {
            out.push(Action::ReleaseLease);
        }
        out.push(Action::Exit(exit));
    }

    fn install(
        &mut self,
        pid: u32,
        config: ConfigId,
        served: bool,
        what: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.spawning = false;
        if let Some(old) = &self.broker {
            // Never two brokers: the shell started one while another runs.
            out.push(Action::Log {
                id: None,
                level: Level::Error,
                line: format!(
                    "a second broker (pid {pid}) while pid {} runs; killing it",
                    old.pid
                ),
            });
            out.push(Action::Signal {
                pid,
                sig: Sig::Kill,
            });
            return;
        }
        let t = &self.tuning;
        let mut liveness = Liveness::new(now, t.liveness_budget, t.startup_grace);
        if served {
            // Taken over while it served: its start-up is long over, so a
            // hang is judged by the budget alone (no fresh grace).
            liveness.served(now);
        }
        self.broker = Some(Broker {
            pid,
            config,
            liveness,
            first_served: served.then_some(now),
            serving_failures: 0,
            adopted_serving: served,
            accounts_agreed: false,
        });
        self.after_exit = AfterExit::Crash;
        self.restart_at = None;
        self.go(State::Starting, what, now, out);
    }

    fn on_probe(&mut self, pid: u32, seen: Seen, now: Instant, out: &mut Vec<Action>) {
        let state = self.life.state();
        let Some(b) = self.broker.as_mut().filter(|b| b.pid == pid) else {
            return;
        };
        if state == State::Draining {
            return;
        }
        let kill = match b.liveness.observe(seen.alive, now) {
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
        if let Some((reason, line)) = kill {
            self.counters.hang_kills += 1;
            out.push(Action::Log {
                id: Some(ids::BROKER_LOST),
                level: Level::Error,
                line,
            });
            out.push(Action::Signal {
                pid,
                sig: Sig::Kill,
            });
            self.after_exit = AfterExit::Restart(reason);
            return;
        }
        if seen.serving {
            b.serving_failures = 0;
            b.liveness.served(now);
            b.first_served.get_or_insert(now);
        } else {
            b.serving_failures += 1;
        }
        let t = self.tuning;
        let waited = b.first_served.is_some_and(|f| now - f >= t.route_wait);
        let adopted = b.adopted_serving;
        let routes_ok = !t.peers_configured || seen.routes > 0 || waited || adopted;
        let failures = b.serving_failures;
        let agreed = b.accounts_agreed;
        match state {
            State::Starting | State::Syncing if seen.serving && routes_ok => {
                if t.peers_configured && seen.routes == 0 {
                    out.push(Action::Log {
                        id: None,
                        level: Level::Warn,
                        line: format!(
                            "no route to any peer after {:?}; serving anyway",
                            t.route_wait
                        ),
                    });
                }
                // A node joining peers must hold the same accounts as they do.
                let peers = seen.routes > 0 || t.gateway;
                if peers && t.system_user && !agreed && !adopted {
                    out.push(Action::CheckAccounts { pid });
                    out.push(Action::Publish);
                } else {
                    self.become_ready(now, out);
                }
            }
            State::Starting | State::Syncing if seen.serving => {
                self.go(
                    State::Syncing,
                    "waiting for a first route to a peer",
                    now,
                    out,
                );
            }
            State::Starting => {
                // Answering without serving is JetStream recovering; silent
                // for a while is most likely reading a big store. Keep
                // systemd waiting (it honours this only while the unit
                // starts); the liveness judge still kills a true hang.
                let recovering = seen.alive == Observation::Answered;
                let slow = now - self.life.since() >= EXTEND_EVERY;
                if (recovering || slow) && self.last_extend.is_none_or(|t| now - t >= EXTEND_EVERY)
                {
                    self.last_extend = Some(now);
                    out.push(Action::ExtendTimeout(EXTEND_EVERY * 3));
                    let why = if recovering {
                        "JetStream recovering; the client port is not open yet"
                    } else {
                        "the broker is still starting"
                    };
                    self.go(State::Starting, why, now, out);
                } else {
                    out.push(Action::Publish);
                }
            }
            State::Ready if failures >= SERVING_FAILURES => {
                out.push(Action::Log {
                    id: None,
                    level: Level::Warn,
                    line: format!("nats-server stopped serving clients: {}", seen.serving_line),
                });
                self.go(
                    State::Syncing,
                    format!("not serving: {}", seen.serving_line),
                    now,
                    out,
                );
            }
            _ => out.push(Action::Publish),
        }
        // The restarted broker serves with JetStream current: the lease
        // goes back.
        if self.life.state() == State::Ready && seen.jetstream_current && self.lease {
            self.lease = false;
            out.push(Action::ReleaseLease);
        }
    }

    fn become_ready(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.policy.healthy();
        if let Some(b) = self.broker.as_mut() {
            b.adopted_serving = false;
        }
        self.last_good = Some(self.installed);
        self.go(State::Ready, "serving clients", now, out);
        let first = !std::mem::replace(&mut self.ready_sent, true);
        out.push(Action::Ready { first });
    }

    fn on_exit(
        &mut self,
        pid: u32,
        status: String,
        jitter: f64,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(b) = self.broker.take_if(|b| b.pid == pid) else {
            return;
        };
        self.stop = None;
        match std::mem::replace(&mut self.after_exit, AfterExit::Crash) {
            AfterExit::Finish => {
                out.push(Action::Log {
                    id: None,
                    level: Level::Info,
                    line: format!("nats-server stopped (pid {pid}, {status})"),
                });
                self.go(State::Stopped, "stopped", now, out);
                self.finish(Exit::Stopped, out);
            }
            AfterExit::StayDown => {
                out.push(Action::Log {
                    id: None,
                    level: Level::Info,
                    line: format!("nats-server drained and stopped (pid {pid}, {status})"),
                });
                self.go(
                    State::Stopped,
                    "drained; natsmeshd keeps running (restart the service to serve again)",
                    now,
                    out,
                );
            }
            AfterExit::Restart(why) => {
                out.push(Action::Log {
                    id: Some(ids::RESTART),
                    level: Level::Info,
                    line: format!("restarting nats-server (pid {pid}, {status}): {why}"),
                });
                self.counters.restarts += 1;
                self.go(State::Restarting, format!("restarting: {why}"), now, out);
                self.spawn(out);
            }
            AfterExit::Crash => {
                self.counters.crashes += 1;
                out.push(Action::Log {
                    id: Some(ids::BROKER_LOST),
                    level: Level::Error,
                    line: format!("nats-server exited unexpectedly (pid {pid}, {status})"),
                });
                // A new configuration that never served is the likely
                // cause: go back to the last one that did, rather than
                // crash-loop on it.
                if b.first_served.is_none()
                    && let Some(good) = self.last_good.filter(|g| *g != self.installed)
                {
                    self.installed = good;
                    out.push(Action::RollBack {
                        to: good,
                        why: format!(
                            "nats-server exited ({status}) with the new configuration before serving; rolled back to the last good one"
                        ),
                    });
                }
                match self.policy.crashed(now, jitter) {
                    AfterCrash::RestartIn(delay) => {
                        self.counters.restarts += 1;
                        self.go(
                            State::Restarting,
                            format!("nats-server exited ({status}); restarting in {delay:?}"),
                            now,
                            out,
                        );
                        if delay.is_zero() {
                            self.spawn(out);
                        } else {
                            self.restart_at = Some(now + delay);
                        }
                    }
                    AfterCrash::GiveUp { crashes, window } => {
                        let why = format!(
                            "nats-server crashed {crashes} times within {window:?}; giving up so systemd sees the failure"
                        );
                        out.push(Action::Log {
                            id: None,
                            level: Level::Error,
                            line: why.clone(),
                        });
                        self.go(State::Stopped, why.clone(), now, out);
                        self.finish(Exit::CrashLoop(why), out);
                    }
                }
            }
        }
    }

    /// Lame duck, with deadlines for SIGINT and SIGKILL.
    fn begin_drain(
        &mut self,
        after: AfterExit,
        why: &str,
        pointed: Option<Duration>,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<String, Refusal> {
        let Some(b) = &self.broker else {
            if after == AfterExit::Finish {
                self.go(State::Stopped, "stopped", now, out);
                self.finish(Exit::Stopped, out);
            }
            return Err(Refusal::NoBroker);
        };
        if self.life.state() == State::Draining {
            // Already leaving: a stop now only changes what follows.
            if after == AfterExit::Finish {
                self.after_exit = AfterExit::Finish;
            }
            return Ok("already draining".into());
        }
        let pid = b.pid;
        let ldm = self.tuning.lame_duck;
        let r = self.tuning.restart;
        if b.first_served.is_none() {
            // Never served: no client to drain, a clean SIGINT is enough.
            out.push(Action::Signal {
                pid,
                sig: Sig::Interrupt,
            });
            self.stop = Some(StopPlan {
                lame_duck_at: None,
                interrupt_at: now,
                kill_at: now + r.kill_after,
                interrupted: true,
                ends: now + r.kill_after,
            });
        } else if let Some(wait) = pointed {
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
            out.push(Action::Log {
                id: Some(ids::DRAINING),
                level: Level::Info,
                line: format!(
                    "leaving DNS and the load balancer, then lame duck (pid {pid}): {why}"
                ),
            });
        } else {
            self.stop = None;
            out.push(Action::Log {
                id: Some(ids::DRAINING),
                level: Level::Info,
                line: format!("draining nats-server (lame duck, pid {pid}): {why}"),
            });
        }
        self.after_exit = after;
        self.go(State::Draining, why.to_owned(), now, out);
        if self.stop.is_none() {
            self.lame_duck(now, out);
        }
        Ok(format!("draining (lame duck up to {ldm:?})"))
    }

    /// SIGUSR2: nats-server stops accepting, then closes clients over the
    /// lame-duck duration and exits.
    fn lame_duck(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(b) = &self.broker else {
            return;
        };
        let ldm = self.tuning.lame_duck;
        let r = self.tuning.restart;
        out.push(Action::Signal {
            pid: b.pid,
            sig: Sig::LameDuck,
        });
        let end = now + ldm + r.stop_margin;
        self.stop = Some(StopPlan {
            lame_duck_at: None,
            interrupt_at: end,
            kill_at: end + r.kill_after,
            interrupted: false,
            // Never later than the end promised when the stop began.
            ends: end + r.kill_after,
        });
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.restart_at.is_some_and(|t| now >= t) {
            self.restart_at = None;
            self.spawn(out);
        }
        self.check_stop_deadlines(now, out);
        self.extend_stop(now, out);
    }

    fn check_stop_deadlines(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self
            .stop
            .and_then(|s| s.lame_duck_at)
            .is_some_and(|t| now >= t)
        {
            out.push(Action::Log {
 id: None,
                level: Level::Warn,
                line: "DNS records or load-balancer membership not withdrawn in time; lame duck anyway"
                    .into(),
            });
            self.lame_duck(now, out);
            return;
        }
        let (Some(plan), Some(b)) = (self.stop.as_mut(), self.broker.as_ref()) else {
            return;
        };
        if !plan.interrupted && now >= plan.interrupt_at {
            // Lame duck should have ended by itself; SIGINT is a clean stop
            // that flushes JetStream (SIGTERM is ignored during lame duck).
            out.push(Action::Log {
                id: None,
                level: Level::Warn,
                line: format!(
                    "lame duck did not end in time; sending SIGINT (pid {})",
                    b.pid
                ),
            });
            out.push(Action::Signal {
                pid: b.pid,
                sig: Sig::Interrupt,
            });
            plan.interrupted = true;
        } else if plan.interrupted && now >= plan.kill_at {
            out.push(Action::Log {
                id: None,
                level: Level::Error,
                line: format!("nats-server did not stop; sending SIGKILL (pid {})", b.pid),
            });
            out.push(Action::Signal {
                pid: b.pid,
                sig: Sig::Kill,
            });
            plan.kill_at = now + Duration::from_secs(3600);
        }
    }

    /// While natsmeshd stops, EXTEND_TIMEOUT_USEC to the stop's own end
    /// (plus a round), every [`EXTEND_EVERY`]: a drain delay derived from
    /// a slow health check can outlast the unit's `TimeoutStopSec`, and
    /// systemd must not SIGKILL a stop that keeps its own deadlines. A stop
    /// past its own end sends nothing more, so systemd's timeout still ends
    /// a hung one.
    fn extend_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
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
        out.push(Action::ExtendTimeout(plan.ends - now + EXTEND_EVERY * 2));
    }
}

#[cfg(test)]
mod tests;
