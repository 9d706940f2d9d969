//! The lifecycle core with explicit time: every transition and timer, and
//! a property test over random event sequences holding its invariants
//! (`property.rs`).

use super::*;
use crate::supervisor::liveness::SILENT_START_GRACE;

const S: fn(u64) -> Duration = Duration::from_secs;

/// The defaults (`health` default profile, `restart`, lame duck).
fn tuning() -> Tuning {
    Tuning {
        liveness_budget: S(60),
        startup_grace: S(120),
        route_wait: S(30),
        lame_duck: S(120),
        restart: RestartSettings {
            backoff_initial: Duration::from_millis(500),
            backoff_max: S(30),
            crash_loop_count: 5,
            crash_loop_window: S(300),
            stop_margin: S(10),
            kill_after: S(20),
        },
        peers_configured: false,
        gateway: false,
        system_user: false,
    }
}

/// A core, a clock and a pid counter.
struct H {
    core: Core,
    t0: Instant,
    now: Instant,
    next_pid: u32,
}

impl H {
    fn new(tuning: Tuning) -> Self {
        let t0 = Instant::now();
        Self {
            core: Core::new(tuning, 1, t0),
            t0,
            now: t0,
            next_pid: 100,
        }
    }

    /// Time since the start.
    fn at(&self) -> Duration {
        self.now - self.t0
    }

    fn step(&mut self, e: Event) -> Vec<Action> {
        let out = self.core.step(e, self.now);
        assert!(
            !out.iter().any(|a| matches!(a, Action::Bug(_))),
            "illegal transition: {out:?}"
        );
        out
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Start (or answer a Spawn): the new pid.
    fn spawned(&mut self) -> u32 {
        self.next_pid += 1;
        let pid = self.next_pid;
        let out = self.step(Event::Spawned {
            pid,
            what: "started".into(),
        });
        assert_eq!(self.core.state(), State::Starting, "{out:?}");
        pid
    }

    fn start(&mut self) -> u32 {
        let out = self.step(Event::Start);
        assert_eq!(out, [Action::Spawn]);
        self.spawned()
    }

    fn probe(&mut self, pid: u32, alive: Observation, serving: bool) -> Vec<Action> {
        self.step(Event::Probe {
            pid,
            seen: seen(alive, serving),
        })
    }

    /// Started and serving: ready.
    fn ready(&mut self) -> u32 {
        let pid = self.start();
        let out = self.probe(pid, Observation::Answered, true);
        assert!(out.contains(&Action::Ready { first: true }), "{out:?}");
        assert_eq!(self.core.state(), State::Ready);
        pid
    }

    fn exited(&mut self, pid: u32) -> Vec<Action> {
        self.step(Event::Exited {
            pid,
            status: "signal 9".into(),
            jitter: 0.5,
        })
    }

    /// Ticks at every deadline up to `until` (from the start); the
    /// signals sent, with when.
    fn run_until(&mut self, until: Duration) -> Vec<(Duration, Sig)> {
        let mut sent = Vec::new();
        while let Some(t) = self.core.next_deadline().filter(|t| *t <= self.t0 + until) {
            self.now = self.now.max(t);
            for a in self.step(Event::Tick) {
                if let Action::Signal { sig, .. } = a {
                    sent.push((self.at(), sig));
                }
            }
        }
        self.now = self.now.max(self.t0 + until);
        sent
    }
}

fn seen(alive: Observation, serving: bool) -> Seen {
    Seen {
        alive,
        serving,
        routes: 0,
        jetstream_current: true,
        serving_line: if serving {
            "accepting clients".into()
        } else {
            "client port closed".into()
        },
    }
}

fn signals(out: &[Action]) -> Vec<Sig> {
    out.iter()
        .filter_map(|a| match a {
            Action::Signal { sig, .. } => Some(*sig),
            _ => None,
        })
        .collect()
}

#[test]
fn start_then_serving_is_ready_and_ready_is_sent_once() {
    let mut h = H::new(tuning());
    // A second start while one is being spawned is no spawn at all.
    assert_eq!(h.step(Event::Start), [Action::Spawn]);
    assert_eq!(h.step(Event::Start), []);
    let pid = h.spawned();
    assert_eq!(h.step(Event::Start), []);
    h.advance(Duration::from_millis(20));
    let out = h.probe(pid, Observation::Answered, true);
    assert!(out.contains(&Action::Ready { first: true }));
    assert_eq!(h.core.state(), State::Ready);
    // A crash and a new broker: ready again, READY=1 not again.
    let out = h.exited(pid);
    assert!(out.contains(&Action::Spawn), "{out:?}");
    assert_eq!(h.core.state(), State::Restarting);
    let pid = h.spawned();
    let out = h.probe(pid, Observation::Answered, true);
    assert!(out.contains(&Action::Ready { first: false }), "{out:?}");
    assert_eq!(h.core.counters().crashes, 1);
    assert_eq!(h.core.counters().restarts, 1);
}

#[test]
fn a_spawn_that_fails_ends_supervision() {
    let mut h = H::new(tuning());
    h.step(Event::Start);
    let out = h.step(Event::SpawnFailed("no binary".into()));
    assert!(out.contains(&Action::Exit(Exit::Failed("no binary".into()))));
    assert_eq!(h.core.state(), State::Stopped);
    assert!(h.core.finished());
    // Nothing more happens once finished.
    assert_eq!(h.step(Event::Start), []);
}

#[test]
fn a_silent_start_is_killed_after_the_grace_of_silence_and_the_budget() {
    let mut h = H::new(tuning());
    let pid = h.start();
    let mut killed = None;
    for _ in 0..200 {
        h.advance(S(1));
        if signals(&h.probe(pid, Observation::NoListener, false)).contains(&Sig::Kill) {
            killed = Some(h.at());
            break;
        }
    }
    assert_eq!(killed, Some(SILENT_START_GRACE + S(60)));
    assert_eq!(h.core.counters().hang_kills, 1);
    // Its exit restarts it at once (not a crash: no backoff).
    let out = h.exited(pid);
    assert!(out.contains(&Action::Spawn));
    assert_eq!(h.core.counters().crashes, 0);
    assert!(
        h.core.life().reason().contains("silent"),
        "{}",
        h.core.life().reason()
    );
}

#[test]
fn a_broker_answering_while_it_starts_is_kept_and_systemd_told_to_wait() {
    let mut h = H::new(tuning());
    let pid = h.start();
    let mut extends = 0;
    for _ in 0..600 {
        h.advance(S(1));
        let out = h.probe(pid, Observation::Answered, false);
        assert!(
            !signals(&out).contains(&Sig::Kill),
            "killed at {:?}",
            h.at()
        );
        extends += out
            .iter()
            .filter(|a| matches!(a, Action::ExtendTimeout(_)))
            .count();
    }
    assert_eq!(h.core.state(), State::Starting);
    assert!(h.core.life().reason().contains("JetStream recovering"));
    // Every EXTEND_EVERY, not every probe.
    assert_eq!(extends, 600 / 5);
}

#[test]
fn a_hung_broker_is_killed_after_its_liveness_budget() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    let mut killed = None;
    for _ in 0..100 {
        h.advance(S(2));
        if signals(&h.probe(pid, Observation::Timeout, false)).contains(&Sig::Kill) {
            killed = Some(h.at());
            break;
        }
    }
    // The first timeout at 2 s, the budget (60 s) after it.
    assert_eq!(killed, Some(S(62)));
    assert_eq!(
        *h.core.after_exit(),
        AfterExit::Restart("hung for 60s".into())
    );
}

#[test]
fn a_ready_node_that_stops_serving_leaves_service_after_three_rounds() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    for _ in 0..2 {
        h.probe(pid, Observation::Answered, false);
        assert_eq!(h.core.state(), State::Ready);
    }
    h.probe(pid, Observation::Answered, false);
    assert_eq!(h.core.state(), State::Syncing);
    assert_eq!(h.core.life().reason(), "not serving: client port closed");
    let out = h.probe(pid, Observation::Answered, true);
    assert!(out.contains(&Action::Ready { first: false }));
}

#[test]
fn crashes_back_off_and_a_crash_loop_gives_up() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    // The first crash restarts at once.
    assert!(h.exited(pid).contains(&Action::Spawn));
    let pid = h.spawned();
    // The second waits the initial backoff (jitter 0.5: × 1.0).
    let out = h.exited(pid);
    assert!(!out.contains(&Action::Spawn), "{out:?}");
    assert_eq!(h.core.state(), State::Restarting);
    assert_eq!(
        h.core.next_deadline(),
        Some(h.now + Duration::from_millis(500))
    );
    h.advance(Duration::from_millis(499));
    assert_eq!(h.step(Event::Tick), []);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.step(Event::Tick), [Action::Spawn]);
    let pid = h.spawned();
    let pid = {
        h.exited(pid);
        h.run_until(h.at() + S(1));
        h.spawned()
    };
    let pid = {
        h.exited(pid);
        h.run_until(h.at() + S(2));
        h.spawned()
    };
    // The fifth crash within the window: give up.
    let out = h.exited(pid);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Exit(Exit::CrashLoop(_)))),
        "{out:?}"
    );
    assert_eq!(h.core.state(), State::Stopped);
    assert_eq!(h.core.counters().crashes, 5);
}

#[test]
fn a_stop_leaves_the_pointers_then_lame_duck_then_sigint_then_sigkill() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    let t = h.at();
    // DNS and the load balancer still point here (90 s budget).
    let out = h.step(Event::Stop {
        why: "stopping".into(),
        pointed: Some(S(90)),
    });
    assert!(signals(&out).is_empty(), "{out:?}");
    assert_eq!(h.core.state(), State::Draining);
    let plan = h.core.stop_plan().unwrap_or_else(|| panic!("no plan"));
    // The stop's own end: 90 + 120 + 10 + 20 = 240 s, within the unit's
    // TimeoutStopSec (270 s) less 10 s.
    assert_eq!(plan.ends - h.now, S(240));
    assert!(plan.ends - h.now <= S(270 - 10));
    // The first EXTEND_TIMEOUT_USEC at once (the shell ticks only at
    // deadlines: found by the balancer test at the API's defaults).
    assert!(
        out.contains(&Action::ExtendTimeout(S(240) + EXTEND_EVERY * 2)),
        "{out:?}"
    );
    assert!(h.step(Event::Tick).is_empty(), "not twice in a round");
    // The pointers are gone after 30 s: lame duck then.
    h.advance(S(30));
    let out = h.step(Event::Pointers { pointed: None });
    assert_eq!(signals(&out), [Sig::LameDuck]);
    let sent = h.run_until(t + S(30 + 130 + 20));
    assert_eq!(
        sent,
        [
            (t + S(30 + 130), Sig::Interrupt),
            (t + S(30 + 150), Sig::Kill)
        ]
    );
    let out = h.exited(pid);
    assert!(out.contains(&Action::Exit(Exit::Stopped)), "{out:?}");
    assert_eq!(h.core.state(), State::Stopped);
}

#[test]
fn pointers_that_never_leave_get_lame_duck_at_their_budget() {
    let mut h = H::new(tuning());
    h.ready();
    let t = h.at();
    h.step(Event::Stop {
        why: "stopping".into(),
        pointed: Some(S(90)),
    });
    let sent = h.run_until(t + S(90));
    assert_eq!(sent, [(t + S(90), Sig::LameDuck)]);
}

#[test]
fn a_stop_without_pointers_is_lame_duck_at_once_and_one_never_served_sigint() {
    let mut h = H::new(tuning());
    h.ready();
    let out = h.step(Event::Stop {
        why: "stopping".into(),
        pointed: None,
    });
    assert_eq!(signals(&out), [Sig::LameDuck]);
    assert!(out.contains(&Action::Answer(Ok(
        "draining (lame duck up to 120s)".into()
    ))));
    // Stopping again while draining changes nothing.
    let out = h.step(Event::Stop {
        why: "stopping".into(),
        pointed: None,
    });
    assert_eq!(out, [Action::Answer(Ok("already draining".into()))]);

    let mut h = H::new(tuning());
    let pid = h.start();
    let out = h.step(Event::Stop {
        why: "stopping".into(),
        pointed: Some(S(90)),
    });
    // No client to drain: SIGINT now, SIGKILL after kill_after.
    assert_eq!(signals(&out), [Sig::Interrupt]);
    let t = h.at();
    assert_eq!(h.run_until(t + S(20)), [(t + S(20), Sig::Kill)]);
    assert!(h.exited(pid).contains(&Action::Exit(Exit::Stopped)));
}

#[test]
fn a_stop_with_no_broker_ends_at_once() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    h.exited(pid);
    let pid = h.spawned();
    // Waiting for the backoff: no broker.
    h.exited(pid);
    assert!(h.core.next_deadline().is_some());
    let out = h.step(Event::Stop {
        why: "stopping".into(),
        pointed: None,
    });
    assert!(out.contains(&Action::Exit(Exit::Stopped)), "{out:?}");
    assert_eq!(h.core.next_deadline(), None);
}

#[test]
fn drain_stays_down_until_undrain() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    assert_eq!(
        h.step(Event::Undrain),
        [Action::Answer(Err(Refusal::NotDrained(State::Ready)))]
    );
    assert_eq!(
        Refusal::NotDrained(State::Ready).to_string(),
        "not drained (state ready); nothing to undo"
    );
    let out = h.step(Event::Drain { pointed: None });
    assert_eq!(signals(&out), [Sig::LameDuck]);
    let out = h.exited(pid);
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::Exit(_) | Action::Spawn))
    );
    assert_eq!(h.core.state(), State::Stopped);
    let out = h.step(Event::Undrain);
    assert!(out.contains(&Action::Spawn), "{out:?}");
    h.spawned();
}

/// A stop tells systemd at once, then every EXTEND_EVERY, how long it
/// still needs, to its own end (a drain delay can outlast TimeoutStopSec).
#[test]
fn a_stop_extends_systemds_timeout_at_once_and_then_every_round_to_its_end() {
    let mut h = H::new(tuning());
    h.ready();
    let out = h.step(Event::Stop {
        why: "stopping".into(),
        pointed: Some(Duration::from_secs(75)),
    });
    let first = out.iter().find_map(|a| match a {
        Action::ExtendTimeout(d) => Some(*d),
        _ => None,
    });
    let first = first.unwrap_or_else(|| panic!("no EXTEND_TIMEOUT_USEC at once: {out:?}"));
    assert!(first >= Duration::from_secs(75), "{first:?}");
    let next = h.core.next_deadline().unwrap();
    assert!(
        next <= h.now + EXTEND_EVERY,
        "the next round is due: {next:?}"
    );
    h.advance(EXTEND_EVERY);
    let out = h.step(Event::Tick);
    let second = out.iter().find_map(|a| match a {
        Action::ExtendTimeout(d) => Some(*d),
        _ => None,
    });
    assert!(second.is_some_and(|s| s < first), "{out:?}");
}

#[test]
fn maintenance_drains_stays_down_and_its_end_serves_again() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    let out = h.step(Event::Maintenance {
        why: "kernel".into(),
        pointed: None,
    });
    assert_eq!(signals(&out), [Sig::LameDuck]);
    assert!(matches!(out.last(), Some(Action::Answer(Ok(_)))), "{out:?}");
    h.exited(pid);
    assert_eq!(h.core.state(), State::Stopped);
    let out = h.step(Event::MaintenanceOver);
    assert!(out.contains(&Action::Spawn), "{out:?}");
    h.spawned();
}

#[test]
fn maintenance_ending_while_the_drain_runs_restarts_once_the_broker_is_down() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    h.step(Event::Maintenance {
        why: "kernel".into(),
        pointed: None,
    });
    let out = h.step(Event::MaintenanceOver);
    assert!(!out.contains(&Action::Spawn), "never two brokers: {out:?}");
    assert!(
        out.contains(&Action::Answer(Ok(
            "the drain ends first, then nats-server starts again".into()
        ))),
        "{out:?}"
    );
    let out = h.exited(pid);
    assert!(out.contains(&Action::Spawn), "{out:?}");
}

#[test]
fn kept_down_at_start_is_up_without_a_broker_and_ready_is_not_sent_twice() {
    let mut h = H::new(tuning());
    let out = h.step(Event::StayDown {
        why: "in maintenance".into(),
    });
    assert_eq!(h.core.state(), State::Stopped);
    assert!(out.contains(&Action::UpWithoutBroker), "{out:?}");
    assert!(!out.contains(&Action::Spawn), "{out:?}");
    let out = h.step(Event::MaintenanceOver);
    assert!(out.contains(&Action::Spawn), "{out:?}");
    let pid = h.spawned();
    let out = h.probe(pid, Observation::Answered, true);
    assert!(out.contains(&Action::Ready { first: false }), "{out:?}");
}

#[test]
fn a_planned_restart_under_the_lease_gives_it_back_once_jetstream_is_current() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    let out = h.step(Event::Restart {
        why: "configuration change".into(),
        pointed: None,
        leased: true,
    });
    assert_eq!(signals(&out), [Sig::LameDuck]);
    assert!(h.core.holds_lease());
    let out = h.exited(pid);
    assert!(out.contains(&Action::Spawn));
    assert_eq!(h.core.counters().restarts, 1);
    assert_eq!(h.core.counters().crashes, 0);
    let pid = h.spawned();
    // Serving, JetStream catching up: the lease stays.
    let mut s = seen(Observation::Answered, true);
    s.jetstream_current = false;
    let out = h.step(Event::Probe {
        pid,
        seen: s.clone(),
    });
    assert!(!out.contains(&Action::ReleaseLease));
    assert_eq!(h.core.state(), State::Ready);
    s.jetstream_current = true;
    let out = h.step(Event::Probe {
        pid,
        seen: s.clone(),
    });
    assert!(out.contains(&Action::ReleaseLease));
    // Once.
    let out = h.step(Event::Probe { pid, seen: s });
    assert!(!out.contains(&Action::ReleaseLease));
    assert!(!h.core.holds_lease());
}

#[test]
fn a_lease_lost_during_the_restart_is_not_given_back() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    h.step(Event::Restart {
        why: "new binary".into(),
        pointed: None,
        leased: true,
    });
    h.step(Event::LeaseLost);
    // The restart goes on.
    assert!(h.exited(pid).contains(&Action::Spawn));
    let pid = h.spawned();
    let out = h.probe(pid, Observation::Answered, true);
    assert!(!out.contains(&Action::ReleaseLease), "{out:?}");
}

#[test]
fn a_restart_with_no_broker_keeps_the_lease_until_one_serves() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    h.exited(pid);
    let pid = h.spawned();
    h.exited(pid);
    let out = h.step(Event::Restart {
        why: "configuration change".into(),
        pointed: None,
        leased: true,
    });
    assert!(!out.contains(&Action::ReleaseLease));
    let t = h.at();
    h.run_until(t + S(1));
    let pid = h.spawned();
    assert!(
        h.probe(pid, Observation::Answered, true)
            .contains(&Action::ReleaseLease)
    );
}

#[test]
fn a_reload_accepted_is_the_running_configuration_and_a_crash_before_serving_rolls_back() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    // Accepted by a reload: the broker runs 2, and 2 is good once ready.
    h.step(Event::Installed {
        config: 2,
        loaded: true,
    });
    assert_eq!(h.core.broker().map(|b| b.config), Some(2));
    // A change only a restart applies: installed, not running.
    h.step(Event::Installed {
        config: 3,
        loaded: false,
    });
    assert_eq!(h.core.broker().map(|b| b.config), Some(2));
    h.step(Event::Restart {
        why: "change".into(),
        pointed: None,
        leased: false,
    });
    h.exited(pid);
    let pid = h.spawned();
    assert_eq!(h.core.broker().map(|b| b.config), Some(3));
    // It crashes before serving: back to the last configuration that
    // served (1: the one installed at the last ready).
    let out = h.exited(pid);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::RollBack { to: 1, .. })),
        "{out:?}"
    );
    let pid = h.spawned();
    assert_eq!(h.core.broker().map(|b| b.config), Some(1));
    // A broker that served its configuration is not rolled back.
    h.probe(pid, Observation::Answered, true);
    let out = h.exited(pid);
    assert!(!out.iter().any(|a| matches!(a, Action::RollBack { .. })));
}

#[test]
fn joining_peers_waits_for_a_route_and_agreeing_accounts() {
    let mut h = H::new(Tuning {
        peers_configured: true,
        system_user: true,
        ..tuning()
    });
    let pid = h.start();
    h.probe(pid, Observation::Answered, true);
    assert_eq!(h.core.state(), State::Syncing);
    assert_eq!(
        h.core.life().reason(),
        "waiting for a first route to a peer"
    );
    let mut s = seen(Observation::Answered, true);
    s.routes = 1;
    let out = h.step(Event::Probe { pid, seen: s });
    assert!(out.contains(&Action::CheckAccounts { pid }), "{out:?}");
    h.step(Event::AccountsDiffer {
        pid,
        why: "accounts differ".into(),
    });
    assert_eq!(h.core.state(), State::Syncing);
    // An answer about an older broker is ignored.
    assert_eq!(h.step(Event::AccountsAgreed { pid: pid + 7 }), []);
    let out = h.step(Event::AccountsAgreed { pid });
    assert!(out.contains(&Action::Ready { first: true }));

    // No route in the route wait: serving anyway.
    let mut h = H::new(Tuning {
        peers_configured: true,
        ..tuning()
    });
    let pid = h.start();
    h.probe(pid, Observation::Answered, true);
    h.advance(S(30));
    h.probe(pid, Observation::Answered, true);
    assert_eq!(h.core.state(), State::Ready);
}

#[test]
fn a_broker_adopted_after_a_reexec_is_ready_at_its_first_serving_round() {
    let mut h = H::new(Tuning {
        peers_configured: true,
        system_user: true,
        gateway: true,
        ..tuning()
    });
    let out = h.step(Event::Adopted {
        pid: 42,
        config: 1,
        served: true,
        what: "took over".into(),
    });
    assert!(!out.contains(&Action::Spawn));
    assert_eq!(h.core.state(), State::Starting);
    // No route yet, no accounts check: it had both before the exec.
    let out = h.probe(42, Observation::Answered, true);
    assert!(out.contains(&Action::Ready { first: true }), "{out:?}");
    // It served: a stop is a lame duck, not a SIGINT.
    let out = h.step(Event::Stop {
        why: "stopping".into(),
        pointed: None,
    });
    assert_eq!(signals(&out), [Sig::LameDuck]);

    // Adopted and then hung: killed by the budget, no fresh start-up grace.
    let mut h = H::new(tuning());
    h.step(Event::Adopted {
        pid: 42,
        config: 1,
        served: true,
        what: "took over".into(),
    });
    let mut killed = None;
    for _ in 0..100 {
        h.advance(S(2));
        if signals(&h.probe(42, Observation::Timeout, false)).contains(&Sig::Kill) {
            killed = Some(h.at());
            break;
        }
    }
    assert_eq!(killed, Some(S(62)));
}

#[test]
fn events_about_another_broker_are_ignored() {
    let mut h = H::new(tuning());
    let pid = h.ready();
    assert_eq!(
        h.probe(pid + 1, Observation::Timeout, false),
        Vec::<Action>::new()
    );
    assert_eq!(h.exited(pid + 1), []);
    assert_eq!(h.core.state(), State::Ready);
    // A second broker reported while one runs is killed, never kept.
    let out = h.step(Event::Spawned {
        pid: 999,
        what: "x".into(),
    });
    assert_eq!(
        out.iter()
            .filter(|a| matches!(
                a,
                Action::Signal {
                    pid: 999,
                    sig: Sig::Kill
                }
            ))
            .count(),
        1,
        "{out:?}"
    );
    assert_eq!(h.core.broker().map(|b| b.pid), Some(pid));
}

mod property;
