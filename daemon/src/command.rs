//! What a caller may ask of the supervisor. A leaf, so the tasks that ask
//! (the control socket, credential expiry) need not import the supervisor.

use tokio::sync::oneshot;

/// Why a command was not done. Its words go back to the operator as the
/// control socket's reply (the wire edge turns it into text), so the
/// supervisor's reasons travel as they are, and the two ways a command
/// can go unanswered have their own kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// natsmeshd is stopping: nobody is left to carry the command out.
    #[error("natsmeshd is stopping")]
    Stopping,
    /// The supervisor went away after taking the command.
    #[error("natsmeshd stopped before answering")]
    NoAnswer,
    /// The supervisor's reason, in the words the operator reads.
    #[error("{0}")]
    Because(String),
}

impl Refused {
    /// A typed error of the library, at the wire edge: its words.
    pub fn because(e: impl std::fmt::Display) -> Self {
        Self::Because(e.to_string())
    }
}

impl From<String> for Refused {
    fn from(why: String) -> Self {
        Self::Because(why)
    }
}

impl From<&str> for Refused {
    fn from(why: &str) -> Self {
        Self::Because(why.to_owned())
    }
}

/// A command's answer: what was done, or why not.
pub type Answer = Result<String, Refused>;

/// Where a command's answer goes.
pub type Reply = oneshot::Sender<Answer>;

/// What a caller may ask.
#[derive(Debug)]
pub enum Command {
    /// Re-read the configuration and apply it (reload or restart).
    Reload {
        /// Where the outcome goes, if anyone waits for it.
        reply: Option<Reply>,
    },
    /// Leave service (lame duck) and keep natsmeshd running.
    Drain {
        /// Acknowledgement.
        reply: Option<Reply>,
    },
    /// Back into service after a drain.
    Undrain {
        /// Acknowledgement.
        reply: Option<Reply>,
    },
    /// Hold planned restarts back (crash recovery goes on).
    Pause {
        /// Acknowledgement.
        reply: Option<Reply>,
    },
    /// Let planned restarts go ahead again.
    Resume {
        /// Acknowledgement.
        reply: Option<Reply>,
    },
    /// Leave the region for good (see `fleet::decommission`).
    Decommission {
        /// Acknowledgement (or why not).
        reply: Option<Reply>,
    },
    /// Into maintenance (`Some(why)`: drain and stay down, the lease
    /// already taken) or out of it (`None`: serve again).
    Maintenance {
        /// Why, or `None` to end it.
        why: Option<String>,
        /// Acknowledgement.
        reply: Option<Reply>,
    },
    /// What the coordinated reboot (`fleet::reboot`) is doing, for the
    /// status (`None`: no reboot required).
    Reboot {
        /// The line.
        line: Option<String>,
    },
    /// Drain and exit.
    Stop,
}
