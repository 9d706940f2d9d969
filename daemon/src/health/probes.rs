//! What the supervisor's probes found, as typed values: the consumers
//! (metrics, the control socket, the maintenance lease) decide on these,
//! and only the edge turns them into the phrases `natsmeshd status` and
//! STATUS= show.

use natsmesh_broker::monitor::ClientPort;

/// The liveness probe's last answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alive {
    /// The monitoring port answered (any answer: only a timeout is
    /// evidence of a hang).
    pub answered: bool,
    /// What it said, for a person: `answered 200`, `no answer within 2s`.
    pub detail: String,
}

/// JetStream health as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JetStream {
    /// Not enabled on this node.
    Disabled,
    /// Server and every asset current.
    Current,
    /// Meta current, some stream or consumer catching up.
    Catching(String),
    /// Not current with the meta leader (or no meta leader).
    NotCurrent(String),
    /// No answer.
    Unknown(String),
}

impl JetStream {
    /// A short phrase for STATUS.
    pub fn describe(&self) -> String {
        match self {
            JetStream::Disabled => "JetStream off".into(),
            JetStream::Current => "JetStream current".into(),
            JetStream::Catching(w) => format!("JetStream catching up ({w})"),
            JetStream::NotCurrent(w) => format!("JetStream not current ({w})"),
            JetStream::Unknown(w) => format!("JetStream unknown ({w})"),
        }
    }

    /// Nothing of JetStream is behind here: current, or not enabled (a
    /// node without JetStream has nothing to catch up). What a restart's
    /// lease and the maintenance lease wait for.
    pub fn settled(&self) -> bool {
        matches!(self, JetStream::Current | JetStream::Disabled)
    }
}

/// The serving probe's word, for a person.
pub fn describe_client_port(c: &ClientPort) -> String {
    match c {
        ClientPort::Serving => "accepting clients".into(),
        ClientPort::LameDuck => "lame duck".into(),
        ClientPort::Refused => "client port closed".into(),
        ClientPort::Timeout => "client port: no INFO in time".into(),
        ClientPort::Failed(e) => format!("client port: {e}"),
    }
}
