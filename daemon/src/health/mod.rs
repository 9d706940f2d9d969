//! The values that say how this node is doing, read by many features
//! (publication, balancer, fleet heartbeat and report, metrics, the
//! control socket): the supervisor's [`State`], the [`Status`] it reports
//! and what a pointer ([`Announced`]) tells it back. A leaf: it imports no
//! feature, so a feature can read the supervisor's state without
//! importing the supervisor (which imports the features).

pub mod state;
pub mod status;

use std::time::Duration;

pub use state::State;
pub use status::Status;

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
