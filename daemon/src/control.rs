//! The control socket: `natsmeshd status`, `reload --wait`, `drain`,
//! `undrain`, `pause`, `resume` and `fleet …` talk to the running daemon
//! here. A fleet pause is written from the connection's own task, never
//! from the supervisor's loop.
//!
//! One JSON request per connection, one JSON reply. Only root and the user
//! natsmeshd runs as may connect (checked with the peer's credentials, not
//! just file modes).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::{Answer, Command, Refused};
use crate::fleet::report::{NodeRow, Table};
use crate::health::{Health, State, Status};

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    /// The status.
    Status,
    /// Re-read the configuration; with `wait`, reply with the outcome.
    Reload {
        /// Wait for the outcome.
        wait: bool,
    },
    /// Leave service and keep running, under the majority rule (see
    /// [`crate::fleet::maintenance`]) unless `force`.
    Drain {
        /// Skip the rule (a region that lost its quorum still drains).
        #[serde(default)]
        force: bool,
    },
    /// Back into service after `drain`.
    Undrain,
    /// Hold planned restarts back.
    Pause,
    /// Let planned restarts go ahead.
    Resume,
    /// Leave the region for good.
    Decommission,
    /// Every node of the supercluster this node hears (`fleet status`).
    Fleet {
        /// Only this region.
        #[serde(default)]
        region: Option<String>,
    },
    /// `fleet pause` (`pause` true) or `fleet resume`: every region, or
    /// one.
    #[serde(rename = "fleet-pause")]
    FleetPause {
        /// Pause, or resume.
        pause: bool,
        /// Only this region.
        #[serde(default)]
        region: Option<String>,
        /// Why, as the operator says.
        #[serde(default)]
        why: String,
    },
    /// The JetStream meta group (`fleet peers`).
    #[serde(rename = "fleet-peers")]
    FleetPeers,
    /// Remove a server gone for good from the meta group
    /// (`fleet remove-peer`).
    #[serde(rename = "fleet-remove-peer")]
    FleetRemovePeer {
        /// Its server name.
        server: String,
    },
    /// `maintenance start` (`start` true) or `maintenance stop`.
    Maintenance {
        /// Start, or stop.
        start: bool,
        /// Wait until the rule allows it instead of being refused.
        #[serde(default)]
        wait: bool,
        /// Why, as the operator says.
        #[serde(default)]
        reason: String,
    },
    /// A time-limited system-account user for operators' own tools
    /// (`fleet creds`).
    #[serde(rename = "fleet-creds")]
    FleetCreds {
        /// How long it lives, in milliseconds.
        ttl_ms: u64,
    },
}

pub use crate::fleet::FleetOps;

/// Shared by every connection.
pub type FleetAccess = std::sync::Arc<FleetOps>;

/// A reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What happened, for a person.
    pub message: String,
    /// The status, for `status`.
    pub status: Option<Status>,
    /// The supercluster's nodes, for `fleet status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Vec<NodeRow>>,
    /// The JetStream meta group, for `fleet peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<crate::fleet::peers::MetaGroup>,
    /// The new temporary user, for `fleet creds` (its password is in no
    /// other reply and in no file natsmeshd keeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds: Option<crate::fleet::creds::Issued>,
}

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Binding or connecting failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon answered something unreadable.
    #[error("control socket {path}: bad reply: {detail}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// Binds the socket (replacing a stale one), mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

/// Serves requests until the command channel closes.
#[tracing::instrument(name = "control", skip_all)]
pub async fn serve(
    listener: UnixListener,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Health>,
    fleet: Option<watch::Receiver<Table>>,
    access: FleetAccess,
) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = stream
            .peer_cred()
            .map(|c| c.uid() == 0 || c.uid() == me)
            .unwrap_or(false);
        let commands = commands.clone();
        let status = status.clone();
        let fleet = fleet.clone();
        let access = access.clone();
        tokio::spawn(async move {
            let _ = handle(stream, allowed, commands, status, fleet, access).await;
        });
    }
}

async fn handle(
    stream: UnixStream,
    allowed: bool,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Health>,
    fleet: Option<watch::Receiver<Table>>,
    access: FleetAccess,
) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    let mut line = String::new();
    // One bounded line per connection.
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, 64 * 1024));
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::other("request timeout"))??;
    let request = serde_json::from_str::<Request>(&line);
    let in_maintenance = status.borrow().maintenance.is_some();
    let reply = match request {
        _ if !allowed => Reply {
            ok: false,
            message: "permission denied: only root and the natsmesh user may use this socket"
                .into(),
            status: None,
            fleet: None,
            peers: None,
            creds: None,
        },
        Err(e) => Reply {
            ok: false,
            message: format!("bad request: {e}"),
            status: None,
            fleet: None,
            peers: None,
            creds: None,
        },
        Ok(Request::Status) => status_reply(&status.borrow()),
        Ok(Request::Reload { wait }) => {
            let (tx, rx) = oneshot::channel();
            let reply = wait.then_some(tx);
            if commands.send(Command::Reload { reply }).await.is_err() {
                Reply {
                    ok: false,
                    message: "natsmeshd is stopping".into(),
                    status: None,
                    fleet: None,
                peers: None,
                creds: None,
                }
            } else if wait {
                outcome(rx.await)
            } else {
                Reply {
                    ok: true,
                    message: "reload requested".into(),
                    status: None,
                    fleet: None,
                peers: None,
                creds: None,
                }
            }
        }
        Ok(Request::Drain { force }) => drain(&commands, &status, &access, force).await,
        Ok(Request::Undrain) if in_maintenance => outcome(Ok(Err(
            "in maintenance: `natsmeshd maintenance stop` brings it back".into(),
        ))),
        Ok(Request::Undrain) => {
            let reply = ask(&commands, |reply| Command::Undrain { reply }).await;
            access.settle.notify_one();
            reply
        }
        Ok(Request::Maintenance {
            start: true,
            wait,
            reason,
        }) => outcome(Ok(maintenance_start(
            &commands,
            status.clone(),
            &access,
            wait,
            reason,
            hangup(&mut reader),
        )
        .await)),
        Ok(Request::Maintenance { start: false, .. }) => {
            outcome(Ok(maintenance_stop(&commands, status.clone(), &access).await))
        }
        Ok(Request::Pause) => ask(&commands, |reply| Command::Pause { reply }).await,
        Ok(Request::Resume) => ask(&commands, |reply| Command::Resume { reply }).await,
        Ok(Request::Decommission) => ask(&commands, |reply| Command::Decommission { reply }).await,
        Ok(Request::Fleet { region }) => match fleet {
            Some(table) => Reply {
                ok: true,
                message: String::new(),
                status: None,
                fleet: Some(
                    table
                        .borrow()
                        .rows(crate::unix_ms(std::time::SystemTime::now()), region.as_deref()),
                ),
                peers: None,
                creds: None,
            },
            None => Reply {
                ok: false,
                message: "fleet status needs natsmeshd's system user (auth.mode = \"accounts\" or \"operator\"): nodes report to each other in the system account".into(),
                status: None,
                fleet: None,
                peers: None,
                creds: None,
            },
        },
        Ok(Request::FleetPause { pause, region, why }) => {
            let region = region.filter(|r| !r.is_empty());
            let done = match &access.pause {
                Ok(a) => a
                    .set(region.as_deref(), pause.then_some(why.as_str()))
                    .await
                    .map_err(Refused::because),
                Err(e) => Err(Refused::because(e)),
            };
            match &done {
                Ok(m) => tracing::info!(region = ?region, "{m}"),
                Err(e) => tracing::warn!(region = ?region, error = %e, "fleet pause not changed"),
            }
            outcome(Ok(done))
        }
        Ok(Request::FleetPeers | Request::FleetRemovePeer { .. })
            if access.settings.system_user.is_none() =>
        {
            outcome(Ok(Err("the JetStream meta group is asked through $SYS, which needs natsmeshd's system user (auth.mode = \"accounts\" or \"operator\")".into())))
        }
        Ok(Request::FleetPeers) => match crate::fleet::peers::gather(&access.settings).await {
            Ok(group) => Reply {
                ok: true,
                message: String::new(),
                status: None,
                fleet: None,
                peers: Some(group),
                creds: None,
            },
            Err(e) => outcome(Ok(Err(Refused::because(e)))),
        },
        Ok(Request::FleetRemovePeer { server }) => {
            let done = crate::fleet::peers::remove(&access.settings, &server).await;
            if let Err(e) = &done {
                tracing::warn!(%server, error = %e, "meta group peer not removed");
            }
            outcome(Ok(done.map_err(Refused::because)))
        }
        Ok(Request::FleetCreds { ttl_ms }) => match issue_creds(&commands, &access, ttl_ms).await {
            Ok(issued) => Reply {
                ok: true,
                message: format!("{} added to the system account", issued.user),
                status: None,
                fleet: None,
                peers: None,
                creds: Some(issued),
            },
            Err(e) => outcome(Ok(Err(Refused::because(e)))),
        },
    };
    let mut write = write;
    let mut text = serde_json::to_string(&reply).unwrap_or_default();
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Why `fleet creds` handed out nothing.
#[derive(Debug, thiserror::Error)]
enum IssueError {
    /// The credentials file or its mode refused it.
    #[error(transparent)]
    Creds(#[from] crate::fleet::creds::CredsError),
    /// No fixed client port to name in the URL.
    #[error("the client port is not fixed: no URL to hand out")]
    NoUrl,
    /// The blocking write did not finish.
    #[error("fleet creds: {0}")]
    Join(#[source] tokio::task::JoinError),
    /// The reload that adds the user failed (the supervisor's words).
    #[error("fleet creds: the reload adding the user failed: {0}")]
    Reload(#[source] Refused),
}

/// `fleet creds`: a new temporary user in the file, then a reload through
/// the supervisor's loop (as `natsmeshd reload --wait`); the user is taken
/// out again when the reload fails, so nothing half-made stays.
async fn issue_creds(
    commands: &mpsc::Sender<Command>,
    access: &FleetOps,
    ttl_ms: u64,
) -> Result<crate::fleet::creds::Issued, IssueError> {
    use crate::fleet::creds;
    let settings = &access.settings;
    creds::check_mode(settings.system_user.as_ref())?;
    let addr = crate::addr::local_addr(&settings.server.listen).ok_or(IssueError::NoUrl)?;
    let dir = settings.state_dir.clone();
    let now = crate::unix_ms(std::time::SystemTime::now());
    let ttl = Duration::from_millis(ttl_ms);
    let d = dir.clone();
    let (user, password) = tokio::task::spawn_blocking(move || creds::add(&d, ttl, now))
        .await
        .map_err(IssueError::Join)??;
    let (tx, rx) = oneshot::channel();
    let reloaded = if commands
        .send(Command::Reload { reply: Some(tx) })
        .await
        .is_err()
    {
        Err(Refused::Stopping)
    } else {
        match rx.await {
            Ok(Ok(m)) if m.starts_with("restart pending") => Err(Refused::Because(format!(
                "the broker did not load the new user: {m}"
            ))),
            Ok(r) => r,
            Err(_) => Err(Refused::NoAnswer),
        }
    };
    if let Err(e) = reloaded {
        let name = user.name.clone();
        let _ = tokio::task::spawn_blocking(move || creds::remove(&dir, &name)).await;
        tracing::warn!(user = %user.name, error = %e, "temporary system-account user not added");
        return Err(IssueError::Reload(e));
    }
    // Only the name and the expiry are logged: the password is the
    // caller's alone.
    tracing::info!(user = %user.name, expires_ms = user.expires_ms, "temporary system-account user added");
    let ca = settings
        .server
        .tls
        .as_ref()
        .and(settings.tls.as_ref())
        .map(|t| t.ca_file.clone());
    Ok(creds::Issued {
        user: user.name,
        password: password.expose().to_owned(),
        url: format!("nats://{addr}"),
        ca,
        expires_ms: user.expires_ms,
    })
}

/// `drain`: the lease of kind drain under the rule (refused when it
/// breaks a majority, unless `force`), then the drain; the lease goes back
/// after `undrain`, once JetStream is current.
async fn drain(
    commands: &mpsc::Sender<Command>,
    status: &watch::Receiver<Health>,
    access: &FleetOps,
    force: bool,
) -> Reply {
    use crate::fleet::maintenance::{self, Kind, Taken};
    let serving = serves(status.borrow().state);
    let mut note = String::new();
    if serving && !force {
        let s = &access.settings;
        match maintenance::take(s, s.maintenance.max_down, Kind::Drain, "drain", false).await {
            Ok(Taken::Until(_)) => {}
            Ok(Taken::Uncoordinated(why)) => note = format!(" ({why})"),
            Err(e) => {
                tracing::warn!(error = %e, "drain refused");
                return outcome(Ok(Err(Refused::Because(format!(
                    "drain refused: {e} (`natsmeshd drain --force` drains anyway)"
                )))));
            }
        }
    }
    let mut reply = ask(commands, |reply| Command::Drain { reply }).await;
    if reply.ok {
        reply.message.push_str(&note);
    } else if serving && !force {
        // Not drained after all: the lease would only block the others.
        if let Err(e) = maintenance::release(&access.settings).await {
            tracing::warn!(error = %e, "cannot give the drain's lease back; it lapses by itself");
        }
    }
    reply
}

/// The answer to `status`: the printable status, made here at the edge
/// from the supervisor's health.
fn status_reply(h: &Health) -> Reply {
    Reply {
        ok: true,
        message: String::new(),
        status: Some(Status::from_health(h)),
        fleet: None,
        peers: None,
        creds: None,
    }
}

/// Whether a drain in `state` takes a broker out of service (the region's
/// majority rule applies): it serves clients, or is about to once routed.
fn serves(state: State) -> bool {
    match state {
        State::Ready | State::Syncing => true,
        State::Starting | State::Draining | State::Restarting | State::Stopped => false,
    }
}

/// Ends when the client hangs up (its half of the socket closes).
async fn hangup(reader: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut byte = [0u8; 1];
    loop {
        match tokio::io::AsyncReadExt::read(reader, &mut byte).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// `maintenance start`: the lease (waiting with `wait`; given up when the
/// operator's command goes away first, `hangup`), the marker, then out of
/// service and down; answers once the broker is down.
async fn maintenance_start(
    commands: &mpsc::Sender<Command>,
    status: watch::Receiver<Health>,
    access: &FleetOps,
    wait: bool,
    reason: String,
    hangup: impl std::future::Future<Output = ()>,
) -> Answer {
    use crate::fleet::maintenance::{self, Kind};
    let s = &access.settings;
    if status.borrow().maintenance.is_some() {
        return Ok("already in maintenance: safe to reboot".into());
    }
    // An operator who interrupts `--wait` has changed their mind: the
    // node must not go down later with nobody watching.
    let taken = tokio::select! {
        t = maintenance::take(s, s.maintenance.max_down, Kind::Maintenance, &reason, wait) => t,
        () = hangup => {
            tracing::info!("maintenance start given up: the command went away before the lease");
            // A write the wait was dropped in may have landed.
            if let Err(e) = maintenance::release(s).await {
                tracing::warn!(error = %e, "cannot check for a maintenance lease left behind; it lapses by itself");
            }
            return Err("given up".into());
        }
    }
    .inspect_err(|e| tracing::warn!(error = %e, "maintenance refused"))
    .map_err(Refused::because)?;
    crate::fleet::maintain::enter(commands, status, access, reason, taken, false)
        .await
        .map_err(Refused::because)
}

/// `maintenance stop`: the marker goes, the broker starts, and the lease
/// goes back once it serves with JetStream current.
async fn maintenance_stop(
    commands: &mpsc::Sender<Command>,
    mut status: watch::Receiver<Health>,
    access: &FleetOps,
) -> Answer {
    use crate::fleet::maintenance;
    let s = &access.settings;
    let said = crate::fleet::maintain::end(commands, access)
        .await
        .map_err(Refused::because)?;
    tracing::info!("maintenance stop: {said}");
    let back = matches!(
        tokio::time::timeout(
            crate::fleet::maintain::ANSWER_WITHIN,
            status.wait_for(Health::ready_and_settled),
        )
        .await,
        Ok(Ok(_))
    );
    if !back {
        // The settle task gives it back once the node serves.
        access.settle.notify_one();
        return Ok(format!(
            "{said}; not serving with JetStream current yet, the maintenance lease goes back once it is"
        ));
    }
    match maintenance::release(s).await {
        Ok(true) => Ok(format!(
            "{}: back in service with JetStream current; maintenance lease released",
            s.server.server_name
        )),
        Ok(false) => Ok(format!(
            "{}: back in service with JetStream current (no maintenance lease was held)",
            s.server.server_name
        )),
        Err(e) => {
            access.settle.notify_one();
            Ok(format!(
                "{}: back in service; the lease is given back in the background ({e})",
                s.server.server_name
            ))
        }
    }
}

/// Sends a command that answers, and waits for the answer.
async fn ask(
    commands: &mpsc::Sender<Command>,
    command: impl FnOnce(Option<crate::command::Reply>) -> Command,
) -> Reply {
    let (tx, rx) = oneshot::channel();
    if commands.send(command(Some(tx))).await.is_err() {
        return Reply {
            ok: false,
            message: "natsmeshd is stopping".into(),
            status: None,
            fleet: None,
            peers: None,
            creds: None,
        };
    }
    outcome(rx.await)
}

fn outcome(r: Result<Answer, oneshot::error::RecvError>) -> Reply {
    match r {
        Ok(Ok(message)) => Reply {
            ok: true,
            message,
            status: None,
            fleet: None,
            peers: None,
            creds: None,
        },
        Ok(Err(refused)) => Reply {
            ok: false,
            message: refused.to_string(),
            status: None,
            fleet: None,
            peers: None,
            creds: None,
        },
        Err(_) => Reply {
            ok: false,
            message: "natsmeshd stopped before answering".into(),
            status: None,
            fleet: None,
            peers: None,
            creds: None,
        },
    }
}

/// Sends one request to the daemon at `path` and reads its reply.
pub async fn request(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(io)?;
    let mut text = serde_json::to_string(req).unwrap_or_default();
    text.push('\n');
    stream.write_all(text.as_bytes()).await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(io)?;
    serde_json::from_str(&line).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        detail: format!("{e}: {line:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_takes_the_region_majority_rule_only_from_a_serving_broker() {
        for state in State::ALL {
            assert_eq!(
                serves(state),
                matches!(state, State::Ready | State::Syncing),
                "{state}"
            );
        }
    }

    #[test]
    fn the_status_reply_writes_each_state_as_its_word() {
        for state in State::ALL {
            let h = Health {
                state,
                broker_pid: Some(7),
                ..Health::default()
            };
            let json = serde_json::to_value(status_reply(&h)).expect("json");
            assert_eq!(json["ok"], true);
            assert_eq!(json["status"]["state"], state.as_str());
            assert_eq!(json["status"]["broker_pid"], 7);
        }
    }
}
