//! Quorum tools: the JetStream meta group as its leader sees it
//! (`natsmeshd fleet peers`), and the removal of a server that is gone for
//! good from it (`natsmeshd fleet remove-peer`). Both ask through `$SYS`
//! as natsmeshd's system user: the meta leader's `/jsz`
//! (`$SYS.REQ.SERVER.PING.JSZ`, `leader_only`) and who answers at all
//! (`$SYS.REQ.SERVER.PING`). A removal is refused for a server that
//! answers or that the meta group counts as current: removing a live
//! server's peer is how a healthy region loses its quorum. This module
//! only asks and removes; it never decides on its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthError;
use crate::config::Settings;

/// Why the meta group could not be asked, or a peer not removed.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    /// natsmeshd's system user could not connect.
    #[error("cannot reach the broker (system user): {0}")]
    Reach(#[source] AuthError),
    /// The `$SYS` requests failed.
    #[error(transparent)]
    Ask(AuthError),
    /// The removal would be wrong (the server answers, is current, or is
    /// no peer), or impossible (no meta leader).
    #[error("not removing {server}: {why}")]
    NotRemoving {
        /// The server asked for.
        server: String,
        /// Why not.
        why: String,
    },
    /// The meta leader did not answer the removal in time.
    #[error("the JetStream meta leader did not answer the removal request")]
    RemovalTimeout,
    /// The removal request could not be sent.
    #[error("removal request: {0}")]
    RemovalRequest(#[source] async_nats::RequestError),
    /// The meta leader answered with an error.
    #[error("the meta leader refused to remove {server}: {source}")]
    Refused {
        /// The server asked for.
        server: String,
        /// Its answer.
        source: AuthError,
    },
}

/// How long servers have to answer a `$SYS` ping.
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// How long the meta leader has to answer a removal.
const REMOVE_WAIT: Duration = Duration::from_secs(10);

/// One member of the meta group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Server name.
    pub name: String,
    /// Its region (cluster), when it answers.
    pub region: Option<String>,
    /// `leader`, `current`, `behind` or `offline` (the meta group says so,
    /// or the server does not answer `$SYS.REQ.SERVER.PING`).
    pub state: String,
    /// The meta leader counts it as caught up.
    pub current: bool,
    /// The meta leader counts it as offline.
    pub offline: bool,
    /// It answered `$SYS.REQ.SERVER.PING` just now.
    pub answers: bool,
    /// Since the leader last heard it (milliseconds), as the leader says.
    pub active_ms: Option<u64>,
    /// Raft entries behind the leader.
    pub lag: u64,
}

/// The meta group, as `fleet peers --json` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaGroup {
    /// The meta leader (empty: none answered — no quorum, or no
    /// JetStream).
    pub leader: String,
    /// The group's size as the leader counts it.
    pub cluster_size: usize,
    /// Every peer, the leader first, then by name.
    pub peers: Vec<Peer>,
    /// Servers that answer but are not in the group (JetStream off, or
    /// not yet joined), by name, with their region.
    pub not_in_group: BTreeMap<String, String>,
}

/// The meta leader's `/jsz` answer, the parts used here.
#[derive(Debug, Default, Deserialize)]
struct JszAnswer {
    #[serde(default)]
    data: JszData,
}

#[derive(Debug, Default, Deserialize)]
struct JszData {
    #[serde(default)]
    meta_cluster: Option<MetaCluster>,
}

#[derive(Debug, Default, Deserialize)]
struct MetaCluster {
    #[serde(default)]
    leader: String,
    #[serde(default)]
    cluster_size: usize,
    #[serde(default)]
    replicas: Vec<MetaReplica>,
}

#[derive(Debug, Default, Deserialize)]
struct MetaReplica {
    name: String,
    #[serde(default)]
    current: bool,
    #[serde(default)]
    offline: bool,
    /// Nanoseconds.
    #[serde(default)]
    active: Option<u64>,
    #[serde(default)]
    lag: u64,
}

#[derive(Debug, Default, Deserialize)]
struct PingAnswer {
    #[serde(default)]
    server: PingServer,
}

#[derive(Debug, Default, Deserialize)]
struct PingServer {
    #[serde(default)]
    name: String,
    #[serde(default)]
    cluster: String,
}

/// Builds the group from the leader's answer (if any) and who answered
/// the ping (name → region).
fn assemble(leader: Option<MetaCluster>, answering: BTreeMap<String, String>) -> MetaGroup {
    let Some(meta) = leader.filter(|m| !m.leader.is_empty()) else {
        return MetaGroup {
            not_in_group: answering,
            ..MetaGroup::default()
        };
    };
    let mut peers = vec![Peer {
        name: meta.leader.clone(),
        region: answering.get(&meta.leader).cloned(),
        state: "leader".into(),
        current: true,
        offline: false,
        answers: answering.contains_key(&meta.leader),
        active_ms: Some(0),
        lag: 0,
    }];
    let mut others: Vec<Peer> = meta
        .replicas
        .iter()
        .map(|r| {
            let answers = answering.contains_key(&r.name);
            let state = if r.offline || !answers {
                "offline"
            } else if r.current {
                "current"
            } else {
                "behind"
            };
            Peer {
                name: r.name.clone(),
                region: answering.get(&r.name).cloned(),
                state: state.into(),
                current: r.current,
                offline: r.offline,
                answers,
                active_ms: r.active.map(|ns| ns / 1_000_000),
                lag: r.lag,
            }
        })
        .collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    peers.extend(others);
    let not_in_group = answering
        .into_iter()
        .filter(|(name, _)| !peers.iter().any(|p| &p.name == name))
        .collect();
    MetaGroup {
        leader: meta.leader,
        cluster_size: meta.cluster_size,
        peers,
        not_in_group,
    }
}

async fn system(settings: &Settings) -> Result<async_nats::Client, PeersError> {
    crate::auth::system_client(settings)
        .await
        .map_err(PeersError::Reach)
}

/// Asks the supercluster for its meta group.
pub async fn gather(settings: &Settings) -> Result<MetaGroup, PeersError> {
    let sys = system(settings).await?;
    gather_with(&sys).await
}

async fn gather_with(sys: &async_nats::Client) -> Result<MetaGroup, PeersError> {
    let body = serde_json::json!({ "leader_only": true }).to_string();
    let jsz = crate::auth::sys_ping(sys, "$SYS.REQ.SERVER.PING.JSZ", body, ANSWER_WAIT)
        .await
        .map_err(PeersError::Ask)?;
    let leader = jsz
        .iter()
        .filter_map(|m| serde_json::from_slice::<JszAnswer>(&m.payload).ok())
        .filter_map(|a| a.data.meta_cluster)
        .find(|m| !m.leader.is_empty());
    let pings = crate::auth::sys_ping(sys, "$SYS.REQ.SERVER.PING", String::new(), ANSWER_WAIT)
        .await
        .map_err(PeersError::Ask)?;
    let answering = pings
        .iter()
        .filter_map(|m| serde_json::from_slice::<PingAnswer>(&m.payload).ok())
        .filter(|a| !a.server.name.is_empty())
        .map(|a| (a.server.name, a.server.cluster))
        .collect();
    Ok(assemble(leader, answering))
}

/// Why `server` may not be removed, if it may not.
fn refusal(group: &MetaGroup, server: &str) -> Option<String> {
    if group.leader.is_empty() {
        return Some(
            "no JetStream meta leader answers: the meta group has no quorum (or JetStream is off), and only its leader can remove a peer; see the runbook".into(),
        );
    }
    let Some(peer) = group.peers.iter().find(|p| p.name == server) else {
        let known: Vec<&str> = group.peers.iter().map(|p| p.name.as_str()).collect();
        return Some(format!(
            "{server} is not a peer of the JetStream meta group (peers: {})",
            known.join(", ")
        ));
    };
    if peer.answers {
        return Some(format!(
            "{server} answers (region {}): it is not gone; a live server leaves with `natsmeshd decommission` on it",
            peer.region.as_deref().unwrap_or("?")
        ));
    }
    if peer.current && !peer.offline {
        return Some(format!(
            "the meta group still counts {server} as current; wait until it shows offline in `natsmeshd fleet peers`"
        ));
    }
    None
}

/// Removes `server`, gone for good, from the meta group (its stream
/// replicas are re-placed where the streams' placement allows), unless it
/// answers or is current; what was done, or why not.
pub async fn remove(settings: &Settings, server: &str) -> Result<String, PeersError> {
    let sys = system(settings).await?;
    let group = gather_with(&sys).await?;
    if let Some(why) = refusal(&group, server) {
        return Err(PeersError::NotRemoving {
            server: server.to_owned(),
            why,
        });
    }
    // The request names the server in `peer` (its id would be `peer_id`).
    let body = serde_json::json!({ "peer": server }).to_string();
    let reply = tokio::time::timeout(
        REMOVE_WAIT,
        sys.request("$JS.API.SERVER.REMOVE", body.into()),
    )
    .await
    .map_err(|_| PeersError::RemovalTimeout)?
    .map_err(PeersError::RemovalRequest)?;
    crate::auth::api_answer(&reply.payload).map_err(|source| PeersError::Refused {
        server: server.to_owned(),
        source,
    })?;
    tracing::info!(%server, "removed a server gone for good from the JetStream meta group");
    Ok(format!(
        "removed {server} from the JetStream meta group (leader {}); its stream replicas are re-placed where placement allows — `natsmeshd fleet peers` follows it",
        group.leader
    ))
}

/// The group as a person reads it.
pub fn render(g: &MetaGroup) -> String {
    let mut out = String::new();
    if g.leader.is_empty() {
        out.push_str(
            "no JetStream meta leader answered: the meta group has no quorum (or JetStream is off)\n",
        );
    } else {
        let _ = writeln!(out, "meta leader {}, group of {}", g.leader, g.cluster_size);
        let _ = writeln!(
            out,
            "{:<34} {:<10} {:<8} {:<8} {:>9} {:>8}",
            "SERVER", "STATE", "REGION", "ANSWERS", "ACTIVE", "LAG"
        );
        for p in &g.peers {
            let _ = writeln!(
                out,
                "{:<34} {:<10} {:<8} {:<8} {:>9} {:>8}",
                p.name,
                p.state,
                p.region.as_deref().unwrap_or("?"),
                if p.answers { "yes" } else { "no" },
                p.active_ms.map_or_else(
                    || "?".to_owned(),
                    |ms| format!("{:.1}s", ms as f64 / 1000.0)
                ),
                p.lag
            );
        }
    }
    for (name, region) in &g.not_in_group {
        let _ = writeln!(out, "not in the group: {name} (region {region})");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, current: bool, offline: bool) -> MetaReplica {
        MetaReplica {
            name: name.into(),
            current,
            offline,
            active: Some(1_500_000_000),
            lag: 3,
        }
    }

    fn answering(names: &[&str]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), "fra1".to_owned()))
            .collect()
    }

    fn group() -> MetaGroup {
        assemble(
            Some(MetaCluster {
                leader: "n1".into(),
                cluster_size: 4,
                replicas: vec![
                    replica("n4", false, false),
                    replica("n2", true, false),
                    replica("n3", true, false),
                ],
            }),
            answering(&["n1", "n2", "n4", "n9"]),
        )
    }

    #[test]
    fn a_peer_that_does_not_answer_is_offline_whatever_the_leader_last_saw() {
        let g = group();
        let states: Vec<(&str, &str)> = g
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("n1", "leader"),
                ("n2", "current"),
                ("n3", "offline"),
                ("n4", "behind")
            ]
        );
        assert_eq!(g.peers[1].active_ms, Some(1500));
        assert_eq!(g.not_in_group.keys().collect::<Vec<_>>(), ["n9"]);
        let text = render(&g);
        assert!(text.starts_with("meta leader n1, group of 4\n"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("n3 ") && l.contains("offline") && l.contains(" no ")),
            "{text}"
        );
    }

    #[test]
    fn only_a_silent_peer_of_a_group_with_a_leader_may_be_removed() {
        let g = group();
        // Answers: alive, whatever else.
        assert!(refusal(&g, "n2").is_some_and(|w| w.contains("n2 answers")));
        assert!(refusal(&g, "n4").is_some_and(|w| w.contains("n4 answers")));
        assert!(refusal(&g, "n1").is_some_and(|w| w.contains("answers")));
        // Silent, but the leader still counts it current.
        assert!(refusal(&g, "n3").is_some_and(|w| w.contains("current")));
        assert!(refusal(&g, "n7").is_some_and(|w| w.contains("not a peer")));
        // Silent and offline: removable.
        let mut g = g;
        if let Some(p) = g.peers.iter_mut().find(|p| p.name == "n3") {
            p.offline = true;
        }
        assert_eq!(refusal(&g, "n3"), None);
        // No leader: nobody can remove anything.
        let none = assemble(None, answering(&["n1"]));
        assert!(refusal(&none, "n3").is_some_and(|w| w.contains("no quorum")));
        assert!(render(&none).starts_with("no JetStream meta leader"));
    }

    #[test]
    fn the_leaders_jsz_answer_is_read() {
        let raw = r#"{"server":{"name":"n1"},"data":{"meta_cluster":{"name":"fra1","leader":"n1","peer":"abc","cluster_size":3,"replicas":[{"name":"n2","current":true,"active":2000000,"peer":"def"},{"name":"n3","current":false,"offline":true,"active":90000000000,"lag":12,"peer":"ghi"}]}}}"#;
        let a: JszAnswer = serde_json::from_str(raw).unwrap();
        let g = assemble(a.data.meta_cluster, answering(&["n1", "n2"]));
        assert_eq!(g.cluster_size, 3);
        assert_eq!(g.peers[2].name, "n3");
        assert_eq!(g.peers[2].state, "offline");
        assert_eq!((g.peers[2].lag, g.peers[2].active_ms), (12, Some(90_000)));
    }
}
