//! The supervisor's states and the transitions allowed between them.
//!
//! Each state is defined by the probes:
//! - `starting`: the broker process runs; its client port does not serve yet
//!   (it may be recovering JetStream);
//! - `syncing`: the client port serves, but this node waits for its first
//!   route (peers configured, bounded by `health.route_wait`), or it stopped
//!   accepting clients after having served;
//! - `ready`: serving clients, not in lame duck — READY=1, and later the
//!   load balancer and DNS;
//! - `draining`: lame duck sent; leaving service;
//! - `restarting`: the broker is gone and will be started again;
//! - `stopped`: no broker, none planned.

use std::fmt;

use serde::Serialize;
use tokio::time::Instant;

/// A supervisor state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Broker started, not serving yet.
    Starting,
    /// Serving, waiting for routes; or no longer accepting clients.
    Syncing,
    /// Serving.
    Ready,
    /// Lame duck.
    Draining,
    /// About to start the broker again.
    Restarting,
    /// No broker.
    Stopped,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 6] = [
        State::Starting,
        State::Syncing,
        State::Ready,
        State::Draining,
        State::Restarting,
        State::Stopped,
    ];

    /// Whether `self → to` is a legal transition.
    pub fn can_go_to(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Starting, Syncing | Ready | Draining | Restarting | Stopped)
                | (Syncing, Ready | Draining | Restarting | Stopped)
                | (Ready, Syncing | Draining | Restarting | Stopped)
                | (Draining, Restarting | Stopped)
                | (Restarting, Starting | Stopped)
                | (Stopped, Starting)
        )
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Syncing => "syncing",
            State::Ready => "ready",
            State::Draining => "draining",
            State::Restarting => "restarting",
            State::Stopped => "stopped",
        }
    }
}

/// A name that is no state's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no such state: {0:?}")]
pub struct UnknownState(pub String);

impl std::str::FromStr for State {
    type Err = UnknownState;

    /// The state a name (as [`State::as_str`] writes it) stands for: where
    /// a status comes back as JSON (`natsmeshd status`), the text is read
    /// into the enum once, at that edge.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition the state machine does not allow: a bug, reported rather
/// than followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal state transition {from} → {to}")]
pub struct IllegalTransition {
    /// From.
    pub from: State,
    /// To.
    pub to: State,
}

/// The current state, when it began, and why. It reads no clock: time
/// comes in as `now` (the lifecycle core is pure).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    state: State,
    since: Instant,
    reason: String,
}

impl Lifecycle {
    /// Starts in `starting`.
    pub fn new(now: Instant) -> Self {
        Self {
            state: State::Starting,
            since: now,
            reason: "starting the broker".into(),
        }
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When it began (monotonic).
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Moves to `to`. Staying in the same state only updates the reason and
    /// returns `Ok(false)`; a real change returns `Ok(true)`.
    pub fn go(
        &mut self,
        to: State,
        reason: impl Into<String>,
        now: Instant,
    ) -> Result<bool, IllegalTransition> {
        let reason = reason.into();
        if to == self.state {
            self.reason = reason;
            return Ok(false);
        }
        if !self.state.can_go_to(to) {
            return Err(IllegalTransition {
                from: self.state,
                to,
            });
        }
        self.state = to;
        self.since = now;
        self.reason = reason;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_life_of_a_broker() {
        let now = Instant::now();
        let mut l = Lifecycle::new(now);
        for (to, changed) in [
            (State::Syncing, true),
            (State::Syncing, false),
            (State::Ready, true),
            (State::Draining, true),
            (State::Restarting, true),
            (State::Starting, true),
            (State::Ready, true),
            (State::Draining, true),
            (State::Stopped, true),
        ] {
            assert_eq!(l.go(to, "test", now), Ok(changed), "→ {to}");
        }
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let now = Instant::now();
        let mut l = Lifecycle::new(now);
        assert_eq!(
            l.go(State::Draining, "x", now)
                .and_then(|_| l.go(State::Ready, "x", now)),
            Err(IllegalTransition {
                from: State::Draining,
                to: State::Ready
            })
        );
        assert_eq!(l.state(), State::Draining);
        for from in State::ALL {
            assert!(!from.can_go_to(from), "{from} → itself is not a transition");
        }
        assert!(!State::Stopped.can_go_to(State::Ready));
        assert!(!State::Restarting.can_go_to(State::Ready));
    }

    #[test]
    fn every_state_reads_back_from_its_name_and_nothing_else_does() {
        for st in State::ALL {
            assert_eq!(st.as_str().parse::<State>(), Ok(st));
            assert_eq!(st.to_string(), st.as_str());
        }
        for bad in ["", "Ready", "stopping", "degraded", "ready "] {
            assert_eq!(bad.parse::<State>(), Err(UnknownState(bad.into())));
        }
    }
}
