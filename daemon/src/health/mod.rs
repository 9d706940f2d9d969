//! The values that say how this node is doing, read by many features
//! (publication, balancer, fleet heartbeat and report, metrics, the
//! control socket): the [`Health`] the supervisor publishes, with its
//! [`State`] and what the probes found as typed values; the [`Status`]
//! built from it at the edge (the control socket's JSON, STATUS= lines);
//! and what a pointer ([`Announced`]) tells the supervisor back. A leaf:
//! it imports no feature, so a feature can read the supervisor's state
//! without importing the supervisor (which imports the features).

pub mod fleet;
pub mod probes;
pub mod state;
pub mod status;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use natsmesh_broker::monitor::ClientPort;

pub use fleet::Coordinating;
pub use probes::{Alive, JetStream};
pub use state::State;
pub use status::Status;

/// How this node is doing, as the supervisor publishes it on its watch
/// channel. Consumers decide on its typed fields (`state`, the probes);
/// the words a person reads (`natsmeshd status`, STATUS=) are made from
/// it at the edge by [`Status::from_health`], so there is one copy of the
/// facts, not a second one kept as text.
///
/// What the probes found stays until the next round says otherwise (as
/// `natsmeshd status` has always shown it): `None` only before the first.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The supervisor's state.
    pub state: State,
    /// Why it is in that state.
    pub reason: String,
    /// When the state began (wall clock, taken when the supervisor's
    /// shell first saw it: its core reads no clock).
    pub since: SystemTime,
    /// Identity.
    pub server_name: String,
    /// Region.
    pub region: String,
    /// Where the identity came from, with the provider's own facts.
    pub identity: String,
    /// The version of the broker running (or to run).
    pub broker_version: String,
    /// Broker pid, when running.
    pub broker_pid: Option<u32>,
    /// The rendered configuration in use.
    pub config_file: PathBuf,
    /// The node certificate in use; `None`: TLS off.
    pub certificate: Option<Certificate>,
    /// The last renewal (or re-read) failed, and why; the certificate in
    /// use stays.
    pub certificate_failing: Option<String>,
    /// Things a person should fix (a root key on the node, a clock far off).
    pub warnings: Vec<String>,
    /// The liveness probe's last answer.
    pub alive: Option<Alive>,
    /// The serving probe's last answer (see [`Health::serving`]).
    pub client_port: Option<ClientPort>,
    /// The JetStream probe's last answer.
    pub jetstream: Option<JetStream>,
    /// Route peers (routes configured), from the last `/varz`.
    pub routes: Option<u64>,
    /// Client connections, from the last `/varz`.
    pub clients: Option<u64>,
    /// Regions with an outbound gateway connection (gateways configured).
    pub gateways: Option<Vec<String>>,
    /// systemd-timesyncd's verdict on the clock (where it runs).
    pub clock_synchronized: Option<bool>,
    /// Why a restart is pending, when one is.
    pub restart_pending: Vec<String>,
    /// natsmeshd's own settings changed that only its restart applies.
    pub natsmeshd_restart_pending: Vec<String>,
    /// Restarts of the broker (any cause).
    pub restarts: u64,
    /// Unexpected exits.
    pub crashes: u64,
    /// Kills of a hung broker.
    pub hang_kills: u64,
    /// Confirmed reloads.
    pub reloads_ok: u64,
    /// Refused reloads.
    pub reloads_failed: u64,
    /// The last reload's outcome, for a person.
    pub last_reload: Option<String>,
    /// Broker log lines dropped because the log was slow.
    pub log_lines_dropped: u64,
    /// What DNS publication last said, when natsmeshd writes records.
    pub dns: Option<Announced>,
    /// What the load balancer's task last said, when natsmeshd manages one.
    pub load_balancer: Option<Announced>,
    /// The fleet's coordination of planned work here: the restart lease
    /// asked for, waited for (and why) or held; a pause; a decommission.
    pub fleet: Coordinating,
    /// Planned restarts are paused on this node (`natsmeshd pause`).
    pub paused: bool,
    /// The fleet pause that holds planned restarts back here.
    pub fleet_paused: Option<String>,
    /// Maintenance: since when, why, until when; `None`: not in it.
    pub maintenance: Option<String>,
    /// A coordinated reboot is required, and what it waits for.
    pub reboot: Option<String>,
}

/// The facts of the node certificate in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Serial, lower-case hex.
    pub serial: String,
    /// When it expires.
    pub not_after: SystemTime,
    /// When natsmeshd renews it (or looks at the files again).
    pub renew_at: SystemTime,
    /// When its issuer, the region's intermediate, expires, where known.
    pub intermediate_not_after: Option<SystemTime>,
    /// When the earliest-expiring trusted root expires, where known.
    pub root_not_after: Option<SystemTime>,
}

impl Default for Health {
    /// Starting, nothing known yet (`since` the epoch: unknown).
    fn default() -> Self {
        Self {
            state: State::Starting,
            reason: String::new(),
            since: SystemTime::UNIX_EPOCH,
            server_name: String::new(),
            region: String::new(),
            identity: String::new(),
            broker_version: String::new(),
            broker_pid: None,
            config_file: PathBuf::new(),
            certificate: None,
            certificate_failing: None,
            warnings: Vec::new(),
            alive: None,
            client_port: None,
            jetstream: None,
            routes: None,
            clients: None,
            gateways: None,
            clock_synchronized: None,
            restart_pending: Vec::new(),
            natsmeshd_restart_pending: Vec::new(),
            restarts: 0,
            crashes: 0,
            hang_kills: 0,
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload: None,
            log_lines_dropped: 0,
            dns: None,
            load_balancer: None,
            fleet: Coordinating::Idle,
            paused: false,
            fleet_paused: None,
            maintenance: None,
            reboot: None,
        }
    }
}

impl Health {
    /// The last serving probe passed: the client port sent INFO and is
    /// not in lame duck.
    pub fn serving(&self) -> bool {
        self.client_port == Some(ClientPort::Serving)
    }

    /// No broker runs and none is planned: safe to reboot.
    pub fn down(&self) -> bool {
        self.state == State::Stopped && self.broker_pid.is_none()
    }

    /// Ready, with nothing of JetStream behind (or JetStream off): what a
    /// lease waits for before it goes back.
    pub fn ready_and_settled(&self) -> bool {
        self.state == State::Ready && self.jetstream.as_ref().is_some_and(JetStream::settled)
    }

    /// Why this node is degraded: serving (ready), but a pointer is not
    /// where it should be (a balancer that cannot be read or is set up
    /// wrong, a publication failing); one reason per pointer, empty when
    /// not degraded. For people and metrics only: serving, membership and
    /// publication do not follow it.
    pub fn degraded_why(&self) -> Vec<String> {
        if self.state != State::Ready {
            return Vec::new();
        }
        [
            self.load_balancer
                .as_ref()
                .and_then(|a| a.problem.as_ref())
                .map(|p| format!("load balancer: {p}")),
            self.dns
                .as_ref()
                .and_then(|a| a.problem.as_ref())
                .map(|p| format!("DNS: {p}")),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
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
