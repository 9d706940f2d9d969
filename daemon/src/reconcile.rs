//! The reconcile loop the pointers share: load-balancer membership
//! (`balancer`) and DNS publication (`publish`) each keep something outside
//! this machine pointing here exactly while the broker serves. Both follow
//! the supervisor's status, decide from its state whether the pointer
//! should point here, act against a provider that may fail, retry with a
//! backoff, and report where the pointer stands through [`Announced`].
//! That much lives here, once; each feature supplies only its own actions
//! (a [`Reconciler`]).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::health::{Announced, Health, State};

/// What the supervisor's state means for a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `ready`: the broker serves clients; point here.
    Serving,
    /// `starting` or `syncing`: not serving (yet, or for now).
    Starting,
    /// `draining` or `stopped`: leaving service; stop pointing here now,
    /// without waiting out any hysteresis.
    Leaving,
    /// Anything else (`restarting`): not serving.
    Other,
}

impl Phase {
    /// The phase of a state. Every state is named: a new one must be
    /// given a phase, not fall into one by accident.
    pub fn of(state: State) -> Self {
        match state {
            State::Ready => Self::Serving,
            State::Starting | State::Syncing => Self::Starting,
            State::Draining | State::Stopped => Self::Leaving,
            State::Restarting => Self::Other,
        }
    }
}

pub use crate::backoff::{Backoff, Retry};

/// How a report reads: as it should be, or the reason it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    /// All is as it should be; what happened last.
    Fine(String),
    /// The pointer is not where it should be: the reason (`degraded` at
    /// the edge).
    Trouble(String),
}

/// Where a pointer stands, told to the supervisor (a stop waits for `up`
/// to turn false) and to `status`.
#[derive(Debug)]
pub struct Announcer(watch::Sender<Announced>);

impl Announcer {
    /// Reports through `tx`.
    pub fn new(tx: watch::Sender<Announced>) -> Self {
        Self(tx)
    }

    /// The one way a report is made: whether the pointer may still point
    /// here, the membership the provider shows (`None`: unknown, or not
    /// that kind of pointer) and the word. A budget announced earlier is
    /// kept: every report keeps the budget last derived.
    pub fn say(&self, up: bool, member: Option<bool>, word: Word) {
        self.0.send_modify(|a| {
            a.up = up;
            a.member = member;
            match word {
                Word::Fine(line) => {
                    a.line = line;
                    a.problem = None;
                }
                Word::Trouble(line) => {
                    a.problem = Some(line.clone());
                    a.line = line;
                }
            }
        });
    }

    /// Whether the pointer may point here, as last reported.
    pub fn up(&self) -> bool {
        self.0.borrow().up
    }

    /// Whether the last report was trouble.
    pub fn in_trouble(&self) -> bool {
        self.0.borrow().problem.is_some()
    }

    /// The channel itself, for what is a feature's own (a budget).
    pub fn sender(&self) -> &watch::Sender<Announced> {
        &self.0
    }
}

/// One turn of the loop, as the feature sees it.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    /// The supervisor's state.
    pub state: State,
    /// What it means for a pointer.
    pub phase: Phase,
    /// When the state last changed (hysteresis counts from here).
    pub since: Instant,
    /// Now.
    pub now: Instant,
}

/// What the loop does after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Take another turn at once (something was done; look again).
    Again,
    /// Wait for a change of state, or until then (`None`: only a change).
    Wait(Option<Instant>),
}

/// A feature's own actions: one turn looks at the state, acts at most
/// once against its provider (retrying through `retry`), reports, and
/// says when to look again.
pub trait Reconciler {
    /// One turn.
    fn turn(&mut self, t: Turn, retry: &mut Retry) -> impl Future<Output = Next> + Send;
}

/// How long a loop with nothing planned sleeps before looking again on
/// its own (a state change wakes it sooner).
const IDLE: Duration = Duration::from_secs(3600);

/// Follows the supervisor's health until its channel closes, turning `r`
/// at every change of state and whenever `r` asked to be woken.
pub async fn follow<R: Reconciler>(
    mut status: watch::Receiver<Health>,
    mut r: R,
    backoff: Backoff,
) {
    let mut retry = Retry::new(backoff);
    // `None` before the first look: the first state is a change.
    let mut last_state = None;
    let mut since = Instant::now();
    loop {
        let state = status.borrow_and_update().state;
        let now = Instant::now();
        if last_state != Some(state) {
            last_state = Some(state);
            since = now;
        }
        let turn = Turn {
            state,
            phase: Phase::of(state),
            since,
            now,
        };
        let wake = match r.turn(turn, &mut retry).await {
            Next::Again => continue,
            Next::Wait(wake) => wake.unwrap_or_else(|| Instant::now() + IDLE),
        };
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            _ = sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
        hint_max: Duration::from_secs(300),
        jitter: Duration::from_millis(200),
    };

    #[test]
    fn the_states_phases() {
        assert_eq!(Phase::of(State::Ready), Phase::Serving);
        assert_eq!(Phase::of(State::Starting), Phase::Starting);
        assert_eq!(Phase::of(State::Syncing), Phase::Starting);
        assert_eq!(Phase::of(State::Draining), Phase::Leaving);
        assert_eq!(Phase::of(State::Stopped), Phase::Leaving);
        assert_eq!(Phase::of(State::Restarting), Phase::Other);
        // Only ready points a pointer here.
        for state in State::ALL {
            assert_eq!(
                Phase::of(state) == Phase::Serving,
                state == State::Ready,
                "{state}"
            );
        }
    }

    #[test]
    fn a_word_sets_or_clears_the_problem_and_keeps_the_budget() {
        let (tx, rx) = watch::channel(Announced {
            budget: Some(Duration::from_secs(90)),
            ..Announced::default()
        });
        let a = Announcer::new(tx);
        a.say(true, Some(false), Word::Trouble("cannot read x".into()));
        {
            let seen = rx.borrow();
            assert!(seen.up && seen.member == Some(false));
            assert_eq!(seen.problem.as_deref(), Some("cannot read x"));
            assert_eq!(seen.line, "cannot read x");
            assert_eq!(seen.budget, Some(Duration::from_secs(90)));
        }
        assert!(a.in_trouble() && a.up());
        a.say(false, None, Word::Fine("out of x".into()));
        let seen = rx.borrow();
        assert!(!seen.up && seen.member.is_none() && seen.problem.is_none());
        assert_eq!(seen.line, "out of x");
        assert_eq!(seen.budget, Some(Duration::from_secs(90)));
    }

    /// Records each turn; acts once per state (`Again`), then sleeps
    /// until a fixed wake.
    struct Log {
        turns: std::sync::Arc<std::sync::Mutex<Vec<(State, Duration)>>>,
        start: Instant,
        acted_in: Option<State>,
    }

    impl Reconciler for Log {
        async fn turn(&mut self, t: Turn, _retry: &mut Retry) -> Next {
            if let Ok(mut v) = self.turns.lock() {
                v.push((t.state, t.since - self.start));
            }
            if self.acted_in != Some(t.state) {
                self.acted_in = Some(t.state);
                return Next::Again;
            }
            Next::Wait(Some(t.now + Duration::from_secs(10)))
        }
    }

    fn status(state: State) -> Health {
        Health {
            state,
            ..Health::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_turns_on_changes_and_wakes_and_ends_with_the_status() {
        let (tx, rx) = watch::channel(status(State::Starting));
        let turns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = Instant::now();
        let log = Log {
            turns: turns.clone(),
            start,
            acted_in: None,
        };
        let task = tokio::spawn(follow(rx, log, B));
        tokio::time::sleep(Duration::from_secs(15)).await;
        tx.send_replace(status(State::Ready));
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the loop ends when the status channel closes")
            .expect("no panic");
        let seen = turns.lock().map(|v| v.clone()).unwrap_or_default();
        let s = |st: State, at: u64| (st, Duration::from_secs(at));
        // starting: acted (Again), then waited; woken at 10 s; ready at
        // 15 s: its own `since`, acted, then waited.
        assert_eq!(
            seen,
            vec![
                s(State::Starting, 0),
                s(State::Starting, 0),
                s(State::Starting, 0),
                s(State::Ready, 15),
                s(State::Ready, 15),
            ]
        );
    }
}
