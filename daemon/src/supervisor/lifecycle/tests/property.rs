//! A property test: random sequences of what can happen to a supervised
//! broker (crashes, hangs, silent and slow starts, probe results, SIGTERM
//! and SIGHUP at any moment, lease grants and losses, natsmeshd re-execs,
//! time passing) against a model of the shell and of nats-server, with the
//! core's invariants checked after every event. proptest prints the
//! failing case (shrunk) and its seed, and keeps it in
//! `proptest-regressions/supervisor/lifecycle/tests/property.txt`.

use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

/// Cases per run (each up to 80 operations).
const CASES: u32 = 512;
/// The unit's TimeoutStopSec (packaging/natsmeshd.service).
const TIMEOUT_STOP_SEC: Duration = Duration::from_secs(270);
/// Probe pace in the model.
const PROBE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum Change {
    Refused,
    Reload,
    Restart,
}

#[derive(Debug, Clone)]
enum Op {
    /// Time passes (seconds), with probes and deadlines on the way.
    Advance(u64),
    Crash,
    Hang,
    Sigterm {
        pointed: Option<u64>,
    },
    Drain {
        pointed: Option<u64>,
    },
    Undrain,
    Maintenance {
        pointed: Option<u64>,
    },
    MaintenanceOver,
    PointersGone,
    Sighup(Change),
    LeaseGranted {
        pointed: Option<u64>,
    },
    LeaseLost,
    Reexec,
    AccountsDiffer,
}

fn op() -> impl Strategy<Value = Op> {
    let pointed = proptest::option::of(0u64..=90);
    prop_oneof![
        6 => prop::sample::select(vec![1u64, 2, 3, 5, 10, 20, 30, 60, 120, 300]).prop_map(Op::Advance),
        1 => Just(Op::Crash),
        1 => Just(Op::Hang),
        1 => pointed.clone().prop_map(|pointed| Op::Sigterm { pointed }),
        1 => pointed.clone().prop_map(|pointed| Op::Drain { pointed }),
        1 => Just(Op::Undrain),
        1 => pointed.clone().prop_map(|pointed| Op::Maintenance { pointed }),
        1 => Just(Op::MaintenanceOver),
        1 => Just(Op::PointersGone),
        2 => prop_oneof![Just(Change::Refused), Just(Change::Reload), Just(Change::Restart)]
            .prop_map(Op::Sighup),
        1 => pointed.prop_map(|pointed| Op::LeaseGranted { pointed }),
        1 => Just(Op::LeaseLost),
        1 => Just(Op::Reexec),
        1 => Just(Op::AccountsDiffer),
    ]
}

/// How a spawned nats-server behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Answers at once, serves after a delay.
    Normal,
    /// Answers 503 (JetStream recovering) for a long while, then serves.
    Recovering,
    /// Never answers at all.
    Silent,
}

#[derive(Debug)]
struct Proc {
    pid: u32,
    config: ConfigId,
    kind: Kind,
    serves_at: Instant,
    /// It served (a serving round reached the core outside a drain).
    served: bool,
    hung_at: Option<Instant>,
    lame_duck: bool,
    /// Exits by itself then (lame duck's end).
    exits_at: Option<Instant>,
}

struct World {
    tuning: Tuning,
    core: Core,
    t0: Instant,
    now: Instant,
    rng: u64,
    proc_: Option<Proc>,
    next_pid: u32,
    installed: ConfigId,
    next_config: ConfigId,
    refused: HashSet<ConfigId>,
    restart_waits: bool,
    ready_first: u32,
    /// When the core's view of the broker last started (spawn or adopt).
    judged_from: Instant,
    /// SIGTERM's time, and the latest the stop may end.
    stop: Option<(Instant, Instant)>,
    next_probe: Instant,
    exit: Option<Exit>,
    trace: Vec<String>,
}

type Checked = Result<(), TestCaseError>;

impl World {
    fn new(tuning: Tuning, seed: u64) -> Self {
        let t0 = Instant::now();
        Self {
            tuning,
            core: Core::new(tuning, 1, t0),
            t0,
            now: t0,
            rng: seed | 1,
            proc_: None,
            next_pid: 100,
            installed: 1,
            next_config: 2,
            refused: HashSet::new(),
            restart_waits: false,
            ready_first: 0,
            judged_from: t0,
            stop: None,
            next_probe: t0,
            exit: None,
            trace: Vec::new(),
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        // xorshift: deterministic from the case's seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n.max(1)
    }

    fn fail(&self, what: String) -> Checked {
        Err(TestCaseError::fail(format!(
            "{what} at {:?}\ntrace (last 30):\n{}",
            self.now - self.t0,
            self.trace
                .iter()
                .rev()
                .take(30)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        )))
    }

    /// Feeds an event and carries out the actions as the shell and the
    /// broker would, feeding back what follows.
    fn feed(&mut self, event: Event) -> Checked {
        let mut queue = std::collections::VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            if self.exit.is_some() {
                return Ok(());
            }
            self.trace.push(format!(
                "{:>6?} {:?} → {event:?}",
                self.now - self.t0,
                self.core.state()
            ));
            if let Event::Probe { pid, seen } = &event
                && seen.serving
                && self.core.state() != State::Draining
                && let Some(p) = self.proc_.as_mut().filter(|p| p.pid == *pid)
            {
                p.served = true;
            }
            let actions = self.core.step(event, self.now);
            for action in actions {
                self.trace.push(format!("         ⇒ {action:?}"));
                match action {
                    Action::Spawn => {
                        if let Some(p) = &self.proc_ {
                            return self.fail(format!("a second broker while pid {} runs", p.pid));
                        }
                        if self.refused.contains(&self.installed) {
                            return self.fail("a broker started from a refused change".into());
                        }
                        self.next_pid += 1;
                        let kind = match self.rand(20) {
                            0..=13 => Kind::Normal,
                            14..=16 => Kind::Recovering,
                            _ => Kind::Silent,
                        };
                        let delay = match kind {
                            Kind::Recovering => Duration::from_secs(30 + self.rand(300)),
                            _ => Duration::from_secs(self.rand(20)),
                        };
                        self.proc_ = Some(Proc {
                            pid: self.next_pid,
                            config: self.installed,
                            kind,
                            serves_at: self.now + delay,
                            served: false,
                            hung_at: None,
                            lame_duck: false,
                            exits_at: None,
                        });
                        self.judged_from = self.now;
                        self.next_probe = self.now;
                        queue.push_back(Event::Spawned {
                            pid: self.next_pid,
                            what: "started".into(),
                        });
                    }
                    Action::Signal { pid, sig } => {
                        let ldm = self.tuning.lame_duck;
                        let Some(p) = self.proc_.as_mut().filter(|p| p.pid == pid) else {
                            continue;
                        };
                        let hung = p.hung_at.is_some() || p.kind == Kind::Silent;
                        match sig {
                            Sig::Kill => {
                                queue.push_back(self.exited(pid));
                            }
                            Sig::LameDuck => {
                                p.lame_duck = true;
                                if !hung {
                                    let jitter = self.rand(ldm.as_secs() + 5);
                                    if let Some(p) = self.proc_.as_mut() {
                                        p.exits_at = Some(self.now + Duration::from_secs(jitter));
                                    }
                                }
                            }
                            Sig::Interrupt => {
                                if p.served && !p.lame_duck {
                                    return self.fail(format!(
                                        "SIGINT before lame duck to pid {pid}, which served"
                                    ));
                                }
                                if !hung {
                                    queue.push_back(self.exited(pid));
                                }
                            }
                        }
                    }
                    Action::CheckAccounts { pid } => {
                        queue.push_back(Event::AccountsAgreed { pid });
                    }
                    // Both send READY=1 (UpWithoutBroker always does).
                    Action::Ready { first: true } | Action::UpWithoutBroker => {
                        self.ready_first += 1;
                        if self.ready_first != 1 {
                            return self.fail(format!(
                                "READY=1 sent {} times by one image",
                                self.ready_first
                            ));
                        }
                    }
                    Action::RollBack { to, .. } => {
                        if self.refused.contains(&to) {
                            return self.fail("rolled back to a refused change".into());
                        }
                        self.installed = to;
                    }
                    Action::Exit(exit) => {
                        if exit == Exit::Stopped
                            && let Some((at, by)) = self.stop
                            && self.now > by
                        {
                            return self.fail(format!("the stop took {:?}", self.now - at));
                        }
                        self.exit = Some(exit);
                    }
                    Action::Bug(e) => return self.fail(format!("illegal transition: {e}")),
                    Action::Ready { first: false }
                    | Action::ReleaseLease
                    | Action::ExtendTimeout(_)
                    | Action::Publish
                    | Action::Log { .. }
                    | Action::Answer(_) => {}
                }
            }
        }
        // Once what it caused has been fed back too (a killed broker's
        // exit is queued behind the signal).
        self.check()
    }

    /// The broker exits: the model forgets it, the core hears of it.
    fn exited(&mut self, pid: u32) -> Event {
        if self.proc_.as_ref().is_some_and(|p| p.pid == pid) {
            self.proc_ = None;
        }
        let jitter = self.rand(1000) as f64 / 1000.0;
        Event::Exited {
            pid,
            status: "exited".into(),
            jitter,
        }
    }

    /// The invariants that hold at any moment.
    fn check(&self) -> Checked {
        if let Some(b) = self.core.broker() {
            if self.refused.contains(&b.config) {
                return self.fail("the broker runs a refused change".into());
            }
            if self.proc_.as_ref().map(|p| p.pid) != Some(b.pid) {
                return self.fail(format!("the core supervises pid {} that is gone", b.pid));
            }
        }
        if self.exit.is_some() {
            return Ok(());
        }
        if let Some((at, by)) = self.stop
            && self.now > by
        {
            return self.fail(format!(
                "a stop still running {:?} after SIGTERM",
                self.now - at
            ));
        }
        let Some(p) = &self.proc_ else {
            return Ok(());
        };
        if self.core.state() == State::Draining {
            // The stop's deadlines kill it (checked above for a stop).
            return Ok(());
        }
        let budget = self.tuning.liveness_budget;
        let slack = PROBE_EVERY * 2;
        if let Some(h) = p.hung_at
            && p.served
            && self.now > h.max(self.judged_from) + budget + slack
        {
            return self.fail(format!("pid {} hung since {h:?} and not killed", p.pid));
        }
        let silence = SILENT_START_GRACE.min(self.tuning.startup_grace);
        if p.kind == Kind::Silent && self.now > self.judged_from + silence + budget + slack {
            return self.fail(format!(
                "pid {} silent since its start and not killed",
                p.pid
            ));
        }
        Ok(())
    }

    /// Time passes until `until`: lame ducks end, deadlines and probes come.
    fn advance(&mut self, until: Instant) -> Checked {
        loop {
            if self.exit.is_some() {
                return Ok(());
            }
            let exit_at = self.proc_.as_ref().and_then(|p| p.exits_at);
            let next = [Some(self.next_probe), self.core.next_deadline(), exit_at]
                .into_iter()
                .flatten()
                .min()
                .filter(|t| *t <= until);
            let Some(next) = next else {
                self.now = until;
                return self.check();
            };
            self.now = self.now.max(next);
            if let Some(pid) = self
                .proc_
                .as_ref()
                .filter(|p| p.exits_at.is_some_and(|t| t <= self.now))
                .map(|p| p.pid)
            {
                let e = self.exited(pid);
                self.feed(e)?;
            } else if self.core.next_deadline().is_some_and(|t| t <= self.now) {
                self.feed(Event::Tick)?;
            } else {
                self.next_probe = self.now + PROBE_EVERY;
                if let Some(p) = &self.proc_ {
                    let seen = self.seen(p);
                    let pid = p.pid;
                    self.feed(Event::Probe { pid, seen })?;
                }
            }
        }
    }

    fn seen(&self, p: &Proc) -> Seen {
        let (alive, serving) = if p.hung_at.is_some() {
            (Observation::Timeout, false)
        } else {
            match p.kind {
                Kind::Silent => (Observation::NoListener, false),
                _ if p.lame_duck => (Observation::Answered, false),
                _ => (Observation::Answered, self.now >= p.serves_at),
            }
        };
        Seen {
            alive,
            serving,
            routes: 1,
            jetstream_current: serving,
            serving_line: String::new(),
        }
    }

    fn apply(&mut self, op: Op) -> Checked {
        if self.exit.is_some() {
            return Ok(());
        }
        let secs = |s: Option<u64>| s.map(Duration::from_secs);
        match op {
            Op::Advance(s) => {
                let until = self.now + Duration::from_secs(s);
                self.advance(until)?;
            }
            Op::Crash => {
                if let Some(pid) = self.proc_.as_ref().map(|p| p.pid) {
                    let e = self.exited(pid);
                    self.feed(e)?;
                }
            }
            Op::Hang => {
                if let Some(p) = self.proc_.as_mut() {
                    p.hung_at.get_or_insert(self.now);
                    p.exits_at = None;
                }
            }
            Op::Sigterm { pointed } => {
                let at = self.now;
                self.feed(Event::Stop {
                    why: "stopping".into(),
                    pointed: secs(pointed),
                })?;
                // The stop ends by its plan's end (what systemd is told to
                // wait for), which at the defaults (pointer budgets up to
                // 90 s) is within the unit's TimeoutStopSec less 10 s, a
                // drain or restart already under way included.
                let by = self.core.stop_plan().map_or(at, |p| p.ends);
                let limit = at + TIMEOUT_STOP_SEC - Duration::from_secs(10);
                if by > limit {
                    return self.fail(format!("a stop planned to take {:?}", by - at));
                }
                if self.stop.is_none() {
                    self.stop = Some((at, by));
                }
            }
            Op::Drain { pointed } => self.feed(Event::Drain {
                pointed: secs(pointed),
            })?,
            Op::Undrain => self.feed(Event::Undrain)?,
            Op::Maintenance { pointed } => self.feed(Event::Maintenance {
                why: "kernel".into(),
                pointed: secs(pointed),
            })?,
            Op::MaintenanceOver => self.feed(Event::MaintenanceOver)?,
            Op::PointersGone => self.feed(Event::Pointers { pointed: None })?,
            Op::Sighup(change) => {
                let id = self.next_config;
                self.next_config += 1;
                match change {
                    Change::Refused => {
                        // The shell installs nothing.
                        self.refused.insert(id);
                    }
                    Change::Reload => {
                        self.installed = id;
                        let loaded = match self.proc_.as_mut() {
                            Some(p) => {
                                p.config = id;
                                true
                            }
                            None => false,
                        };
                        self.feed(Event::Installed { config: id, loaded })?;
                    }
                    Change::Restart => {
                        self.installed = id;
                        self.restart_waits = true;
                        self.feed(Event::Installed {
                            config: id,
                            loaded: false,
                        })?;
                    }
                }
            }
            Op::LeaseGranted { pointed } => {
                if std::mem::take(&mut self.restart_waits) {
                    self.feed(Event::Restart {
                        why: "configuration change".into(),
                        pointed: secs(pointed),
                        leased: true,
                    })?;
                }
            }
            Op::LeaseLost => self.feed(Event::LeaseLost)?,
            Op::Reexec => {
                // The shell hands over only outside a stop or a drain.
                if self.stop.is_some()
                    || matches!(self.core.state(), State::Draining | State::Stopped)
                {
                    return Ok(());
                }
                self.core = Core::new(self.tuning, self.installed, self.now);
                self.ready_first = 0;
                self.judged_from = self.now;
                self.trace.push("── re-exec ──".into());
                match self.proc_.as_ref().map(|p| (p.pid, p.config, p.served)) {
                    Some((pid, config, served)) => self.feed(Event::Adopted {
                        pid,
                        config,
                        served,
                        what: "took over".into(),
                    })?,
                    None => self.feed(Event::Start)?,
                }
            }
            Op::AccountsDiffer => {
                if let Some(pid) = self.proc_.as_ref().map(|p| p.pid) {
                    self.feed(Event::AccountsDiffer {
                        pid,
                        why: "accounts differ".into(),
                    })?;
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn the_lifecycle_keeps_its_invariants_whatever_happens(
        ops in prop::collection::vec(op(), 1..80),
        seed in any::<u64>(),
        peers_configured in any::<bool>(),
        gateway in any::<bool>(),
        system_user in any::<bool>(),
    ) {
        let tuning = Tuning { peers_configured, gateway, system_user, ..tuning() };
        let mut w = World::new(tuning, seed);
        w.feed(Event::Start)?;
        for op in ops {
            w.trace.push(format!("op {op:?}"));
            w.apply(op)?;
        }
        // Then a SIGTERM, and time: every run ends, in time.
        w.apply(Op::Sigterm { pointed: Some(90) })?;
        let end = w.now + TIMEOUT_STOP_SEC;
        w.advance(end)?;
        prop_assert!(
            w.exit.is_some(),
            "still running {TIMEOUT_STOP_SEC:?} after SIGTERM: {:?}",
            w.core.state()
        );
    }
}
