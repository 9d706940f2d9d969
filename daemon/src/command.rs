//! What a caller may ask of the supervisor. A leaf, so the tasks that ask
//! (the control socket, credential expiry) need not import the supervisor.

use tokio::sync::oneshot;

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
    /// Leave the region for good (see `fleet::decommission`).
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
    /// What the coordinated reboot (`fleet::reboot`) is doing, for the
    /// status (`None`: no reboot required).
    Reboot {
        /// The line.
        line: Option<String>,
    },
    /// Drain and exit.
    Stop,
}
