//! `natsmeshd decommission`: this node leaves the region for good without
//! leaving a JetStream ghost. natsmeshd checks that every stream with a
//! replica here can be placed on the servers that stay, asks the meta
//! leader to remove this server from the JetStream group
//! (`$JS.API.SERVER.REMOVE`, which re-places its replicas on the others),
//! waits until each of those streams has its replicas again, all current,
//! then the node leaves like any stop (DNS, load balancer, lame duck) and
//! is marked so it never rejoins by accident.
//!
//! The removal comes before the withdrawal, so a removal that fails leaves
//! the node serving as before rather than half gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::view::{self, AskError, StreamId, View};
use crate::auth::AuthError;
use crate::config::Settings;
pub use crate::config::settings::fleet::marker;

/// Why a decommission does not start, or does not finish, or why a node
/// may not start at all.
#[derive(Debug, thiserror::Error)]
pub enum DecommissionError {
    /// The node was decommissioned: it must not rejoin with its old data.
    #[error(
        "this node was decommissioned ({what}); it left the JetStream group and must not rejoin with its old data. To bring the machine back as a new member, remove {} and {}",
        jetstream.display(),
        marker.display()
    )]
    Decommissioned {
        /// What the marker says (or where it is, when unreadable).
        what: String,
        /// The JetStream store to remove.
        jetstream: PathBuf,
        /// The marker to remove.
        marker: PathBuf,
    },
    /// The marker could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Mark {
        /// The marker.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// natsmeshd's system user could not connect for the check.
    #[error("cannot ask the region (system user): {0}")]
    AskRegion(#[source] AuthError),
    /// natsmeshd's system user could not connect for the removal.
    #[error("cannot reach the broker (system user): {0}")]
    Reach(#[source] AuthError),
    /// The region's servers could not be asked.
    #[error(transparent)]
    View(#[from] AskError),
    /// This server is missing from its own region's answers.
    #[error("this server did not answer its own JetStream request")]
    NoOwnAnswer,
    /// Removing this server would leave streams without their replicas.
    #[error("decommission would break replication: {}", .0.join("; "))]
    WouldBreak(Vec<String>),
    /// The meta leader did not answer the removal in time.
    #[error("the JetStream meta leader did not answer the removal request")]
    RemovalTimeout,
    /// The removal request could not be sent.
    #[error("removal request: {0}")]
    RemovalRequest(#[source] async_nats::RequestError),
    /// The meta leader answered with an error.
    #[error("the meta leader refused the removal: {0}")]
    RemovalRefused(#[source] AuthError),
    /// Removed, but the replicas were not all re-placed and current in time.
    #[error("removed from the JetStream group, but after {after:?}: {why}")]
    NotEvacuated {
        /// How long it waited.
        after: Duration,
        /// What was still missing.
        why: Evacuating,
    },
    /// This server kept leading the meta group (it cannot remove itself).
    #[error("this server is still the JetStream meta leader after asking it to step down")]
    StillLeader,
}

/// What a stream that had a replica here still lacks elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Evacuating {
    /// No leader has been elected yet.
    #[error("stream {0} has no leader yet")]
    NoLeader(StreamId),
    /// This server still leads it.
    #[error("stream {0} is still led here")]
    LedHere(StreamId),
    /// A replica still sits on this server.
    #[error("stream {0} still has a replica here")]
    ReplicaHere(StreamId),
    /// Fewer replicas than the stream's configuration asks for.
    #[error("stream {id} has {have} of {want} replicas")]
    Short {
        /// The stream.
        id: StreamId,
        /// Its replicas now.
        have: usize,
        /// Its configured replicas.
        want: usize,
    },
    /// A replica elsewhere is offline or behind.
    #[error("stream {id}: replica on {on} is catching up")]
    CatchingUp {
        /// The stream.
        id: StreamId,
        /// The replica's server.
        on: String,
    },
}

/// How long the re-placed replicas have to catch up.
const EVACUATION: Duration = Duration::from_secs(300);
/// How long the region's servers have to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Refuses a start on a decommissioned node's state.
pub fn refuse_if_decommissioned(state_dir: &Path) -> Result<(), DecommissionError> {
    let m = marker(state_dir);
    // Any entry there (a link too) is a marker; its text is shown only as
    // natsmeshd writes it, read without following a link, so the state
    // directory's owner cannot make root's `check` print another file.
    if m.symlink_metadata().is_err() {
        return Ok(());
    }
    let what = crate::files::read_private_string(&m, 1024)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| is_marker_text(t))
        .unwrap_or_else(|| format!("marked by {}", m.display()));
    Err(DecommissionError::Decommissioned {
        what,
        jetstream: state_dir.join("jetstream"),
        marker: m,
    })
}

/// Whether `t` is what [`mark`] writes: `<server> decommissioned at <time>`.
fn is_marker_text(t: &str) -> bool {
    t.split_once(" decommissioned at ")
        .is_some_and(|(server, when)| {
            crate::config::validate::is_server_name(server)
                && humantime::parse_rfc3339(when).is_ok()
        })
}

/// Writes the marker.
pub fn mark(state_dir: &Path, server: &str) -> Result<(), DecommissionError> {
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    crate::files::write_atomic(
        &marker(state_dir),
        format!("{server} decommissioned at {when}\n").as_bytes(),
        crate::files::PLAIN,
    )
    .map_err(|source| DecommissionError::Mark {
        path: marker(state_dir),
        source,
    })
}

/// What must hold before a decommission starts: `Ok` with the streams
/// to wait for, or every reason it would break replication.
pub async fn check(settings: &Settings) -> Result<Vec<(StreamId, usize)>, DecommissionError> {
    let me = &settings.server.server_name;
    let sys = crate::auth::system_client(settings)
        .await
        .map_err(DecommissionError::AskRegion)?;
    let view = view::gather(&sys, &super::cluster_name(settings), ANSWER_WAIT).await?;
    if view.answer(me).is_none() {
        return Err(DecommissionError::NoOwnAnswer);
    }
    let blockers = view.removal_blockers(me);
    if !blockers.is_empty() {
        return Err(DecommissionError::WouldBreak(blockers));
    }
    Ok(hosted(&view, me))
}

fn hosted(view: &View, me: &str) -> Vec<(StreamId, usize)> {
    view.hosted_on(me)
        .into_iter()
        .map(|(id, d)| (id, d.config.as_ref().map_or(1, |c| c.num_replicas.max(1))))
        .collect()
}

/// Removes this server from the JetStream group and waits until the
/// streams it hosted have all their replicas elsewhere, current.
pub async fn remove_self(
    settings: &Settings,
    streams: &[(StreamId, usize)],
) -> Result<String, DecommissionError> {
    let me = settings.server.server_name.clone();
    let cluster = super::cluster_name(settings);
    let sys = crate::auth::system_client(settings)
        .await
        .map_err(DecommissionError::Reach)?;
    step_down_if_leader(&sys, &cluster, &me).await?;
    // The request names the server in `peer` (its id would be `peer_id`).
    let body = serde_json::json!({ "peer": me }).to_string();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        sys.request("$JS.API.SERVER.REMOVE", body.into()),
    )
    .await
    .map_err(|_| DecommissionError::RemovalTimeout)?
    .map_err(DecommissionError::RemovalRequest)?;
    crate::auth::api_answer(&reply.payload).map_err(DecommissionError::RemovalRefused)?;
    tracing::info!(server = %me, "removed from the JetStream group; waiting for its replicas to be re-placed");
    let deadline = tokio::time::Instant::now() + EVACUATION;
    loop {
        let view = view::gather(&sys, &cluster, ANSWER_WAIT).await?;
        match evacuated(&view, &me, streams) {
            Ok(()) => {
                return Ok(format!(
                    "removed from the JetStream group; {} stream{} re-placed and current",
                    streams.len(),
                    if streams.len() == 1 { "" } else { "s" }
                ));
            }
            Err(why) if tokio::time::Instant::now() >= deadline => {
                return Err(DecommissionError::NotEvacuated {
                    after: EVACUATION,
                    why,
                });
            }
            Err(why) => tracing::debug!(%why, "waiting for re-placed replicas"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The meta leader cannot remove itself: hand leadership over first.
async fn step_down_if_leader(
    sys: &async_nats::Client,
    cluster: &str,
    me: &str,
) -> Result<(), DecommissionError> {
    for _ in 0..20 {
        let view = view::gather(sys, cluster, ANSWER_WAIT).await?;
        let leader = view
            .answer(me)
            .and_then(|a| a.data.meta_cluster.as_ref())
            .map(|m| m.leader.clone())
            .unwrap_or_default();
        if leader != me {
            return Ok(());
        }
        tracing::info!("this server leads the JetStream meta group; stepping down first");
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            sys.request("$JS.API.META.LEADER.STEPDOWN", "".into()),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(DecommissionError::StillLeader)
}

/// `Ok` once every stream that had a replica on `me` has, as its leader
/// sees it, all its replicas on other servers and current.
pub fn evacuated(view: &View, me: &str, streams: &[(StreamId, usize)]) -> Result<(), Evacuating> {
    for (id, replicas) in streams {
        let Some((leader, cluster)) = view.lead(id) else {
            return Err(Evacuating::NoLeader(id.clone()));
        };
        if leader == me {
            return Err(Evacuating::LedHere(id.clone()));
        }
        let others: Vec<_> = cluster
            .replicas
            .iter()
            .filter(|r| r.name != leader)
            .collect();
        if others.iter().any(|r| r.name == me) {
            return Err(Evacuating::ReplicaHere(id.clone()));
        }
        if others.len() + 1 < *replicas {
            return Err(Evacuating::Short {
                id: id.clone(),
                have: others.len() + 1,
                want: *replicas,
            });
        }
        if let Some(r) = others.iter().find(|r| !r.current || r.offline) {
            return Err(Evacuating::CatchingUp {
                id: id.clone(),
                on: r.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fleet::view::Answer;

    fn answer(name: &str, leader: &str, replicas: serde_json::Value) -> Answer {
        serde_json::from_value(serde_json::json!({
            "server": {"name": name, "cluster": "fra1"},
            "data": {"account_details": [{"name": "APP", "stream_detail": [{
                "name": "ORDERS",
                "config": {"num_replicas": 3},
                "cluster": {"leader": leader, "replicas": replicas},
            }]}]}
        }))
        .unwrap()
    }

    fn orders() -> Vec<(StreamId, usize)> {
        vec![(
            StreamId {
                account: "APP".into(),
                name: "ORDERS".into(),
            },
            3,
        )]
    }

    #[test]
    fn evacuation_needs_every_replica_elsewhere_and_current() {
        let moved = |n4_current: bool| View {
            answers: vec![answer(
                "n1",
                "n1",
                serde_json::json!([
                    {"name": "n3", "current": true},
                    {"name": "n4", "current": n4_current},
                ]),
            )],
        };
        assert_eq!(evacuated(&moved(true), "n2", &orders()), Ok(()));
        assert_eq!(
            evacuated(&moved(false), "n2", &orders()).map_err(|e| e.to_string()),
            Err("stream ORDERS (account APP): replica on n4 is catching up".into())
        );
        let still = View {
            answers: vec![answer(
                "n1",
                "n1",
                serde_json::json!([{"name": "n2", "current": true}, {"name": "n3", "current": true}]),
            )],
        };
        assert_eq!(
            evacuated(&still, "n2", &orders()).map_err(|e| e.to_string()),
            Err("stream ORDERS (account APP) still has a replica here".into())
        );
        let short = View {
            answers: vec![answer(
                "n1",
                "n1",
                serde_json::json!([{"name": "n3", "current": true}]),
            )],
        };
        assert_eq!(
            evacuated(&short, "n2", &orders()).map_err(|e| e.to_string()),
            Err("stream ORDERS (account APP) has 2 of 3 replicas".into())
        );
        assert!(matches!(
            evacuated(&short, "n2", &orders()),
            Err(Evacuating::Short {
                have: 2,
                want: 3,
                ..
            })
        ));
    }

    #[test]
    fn a_decommissioned_state_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(refuse_if_decommissioned(dir.path()).is_ok());
        mark(dir.path(), "n2").unwrap();
        let e = refuse_if_decommissioned(dir.path()).unwrap_err();
        assert!(
            matches!(&e, DecommissionError::Decommissioned { jetstream, .. } if jetstream.ends_with("jetstream")),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("n2 decommissioned at"), "{e}");
        assert!(e.contains("jetstream"), "{e}");
    }

    #[test]
    fn a_marker_is_shown_only_as_natsmeshd_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "n2 decommissioned at 2026-01-01T00:00:00Z\n").unwrap();
        // A link still marks the node, but is not read.
        std::os::unix::fs::symlink(&secret, marker(dir.path())).unwrap();
        let e = refuse_if_decommissioned(dir.path())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("2026-01-01"), "{e}");
        assert!(e.contains("marked by"), "{e}");
        std::fs::remove_file(marker(dir.path())).unwrap();
        std::fs::write(marker(dir.path()), "TOPSECRET\n").unwrap();
        let e = refuse_if_decommissioned(dir.path())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("TOPSECRET"), "{e}");
    }
}
