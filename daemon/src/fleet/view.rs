//! What the region's servers say about JetStream, gathered through `$SYS`
//! (`$SYS.REQ.SERVER.PING.JSZ`, one answer per server), and the checks a
//! disruptive action must pass: the region's servers are all there, and
//! every replicated stream this node hosts has its other replicas current
//! (as that stream's leader sees them — only the leader tracks its peers).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

/// One server's answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Answer {
    /// Who answered.
    pub server: ServerInfo,
    /// Its JetStream view.
    #[serde(default)]
    pub data: Jsz,
}

/// The answering server.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerInfo {
    /// Server name.
    #[serde(default)]
    pub name: String,
    /// Cluster (region).
    #[serde(default)]
    pub cluster: String,
}

/// The part of `/jsz` used here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Jsz {
    /// JetStream is off on this server.
    #[serde(default)]
    pub disabled: bool,
    /// The meta group as this server sees it.
    #[serde(default)]
    pub meta_cluster: Option<Meta>,
    /// Accounts with streams on this server.
    #[serde(default)]
    pub account_details: Vec<AccountDetail>,
}

/// The JetStream meta group.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Meta {
    /// The meta leader's name; empty while there is none.
    #[serde(default)]
    pub leader: String,
}

/// An account's streams on one server.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AccountDetail {
    /// Account name.
    #[serde(default)]
    pub name: String,
    /// Its streams.
    #[serde(default)]
    pub stream_detail: Vec<StreamDetail>,
}

/// One stream replica.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamDetail {
    /// Stream name.
    pub name: String,
    /// Its Raft group, when replicated (or clustered).
    #[serde(default)]
    pub cluster: Option<StreamCluster>,
    /// Its configuration (asked for with `config: true`).
    #[serde(default)]
    pub config: Option<StreamConfig>,
    /// What it holds, as this server has it.
    #[serde(default)]
    pub state: StreamState,
}

/// A stream's contents.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamState {
    /// Messages.
    #[serde(default)]
    pub messages: u64,
    /// Bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Consumers.
    #[serde(default)]
    pub consumer_count: u64,
}

/// A stream's configuration, as far as placement goes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamConfig {
    /// Replicas asked for.
    #[serde(default)]
    pub num_replicas: usize,
}

/// A stream's group.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamCluster {
    /// The leader's name.
    #[serde(default)]
    pub leader: String,
    /// The other replicas (as the answering server sees them).
    #[serde(default)]
    pub replicas: Vec<Replica>,
}

/// A replica other than the answering server.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Replica {
    /// Server name.
    pub name: String,
    /// Caught up with the leader.
    #[serde(default)]
    pub current: bool,
    /// Not heard from.
    #[serde(default)]
    pub offline: bool,
    /// Operations behind.
    #[serde(default)]
    pub lag: u64,
}

/// Why the servers' JetStream views could not be asked for.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct AskError(#[from] crate::auth::AuthError);

/// Why the region cannot spare a server now (each worth waiting for).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Fewer servers answered than the region has.
    #[error("{} of {expected} servers of the region answered ({})", .answered.len(), .answered.join(", "))]
    Missing {
        /// The servers that answered.
        answered: Vec<String>,
        /// How many the region has.
        expected: usize,
    },
    /// A server sees no JetStream meta leader.
    #[error("{0} has no JetStream meta leader")]
    NoMetaLeader(String),
    /// A replicated stream hosted here has no leader.
    #[error("stream {0} has no leader")]
    NoStreamLeader(StreamId),
    /// A stream's leader did not answer, so its replicas' state is unknown.
    #[error("stream {id}: its leader {leader} did not answer")]
    LeaderSilent {
        /// The stream.
        id: StreamId,
        /// Its leader.
        leader: String,
    },
    /// A replica of a stream hosted here did not answer: it may be going
    /// down this moment, while its leader still counts it current.
    #[error("stream {id}: its replica on {server} did not answer")]
    PeerSilent {
        /// The stream.
        id: StreamId,
        /// The replica's server.
        server: String,
    },
    /// Another replica of a stream hosted here is offline or behind.
    #[error("stream {id}: replica on {server} is {} ({lag} behind)", behind_word(*.offline))]
    ReplicaBehind {
        /// The stream.
        id: StreamId,
        /// The replica's server.
        server: String,
        /// Offline (else merely not current).
        offline: bool,
        /// How far behind, as the leader counts.
        lag: u64,
    },
}

fn behind_word(offline: bool) -> &'static str {
    if offline { "offline" } else { "not current" }
}

/// Every answer from one cluster.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The answers, one per server.
    pub answers: Vec<Answer>,
}

/// Asks every server of `cluster` for its JetStream view through `$SYS`
/// and gathers the answers for `wait`.
pub async fn gather(
    sys: &async_nats::Client,
    cluster: &str,
    wait: Duration,
) -> Result<View, AskError> {
    ask(sys, Some(cluster), wait).await
}

/// Asks every server of the supercluster for its JetStream view through
/// `$SYS` and gathers the answers for `wait`.
pub async fn gather_all(sys: &async_nats::Client, wait: Duration) -> Result<View, AskError> {
    ask(sys, None, wait).await
}

/// The answers of `cluster`'s servers (all servers without one), sorted
/// by server name.
async fn ask(
    sys: &async_nats::Client,
    cluster: Option<&str>,
    wait: Duration,
) -> Result<View, AskError> {
    let mut body = serde_json::json!({
        "accounts": true,
        "streams": true,
        "config": true,
    });
    if let Some(c) = cluster {
        body["cluster"] = c.into();
    }
    let answers =
        crate::auth::sys_ping(sys, "$SYS.REQ.SERVER.PING.JSZ", body.to_string(), wait).await?;
    let mut view = View::default();
    for msg in answers {
        match serde_json::from_slice::<Answer>(&msg.payload) {
            Ok(a) if cluster.is_none_or(|c| a.server.cluster == c) => view.answers.push(a),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "unreadable JetStream answer"),
        }
    }
    view.answers
        .sort_by(|a, b| a.server.name.cmp(&b.server.name));
    Ok(view)
}

/// A stream somewhere in the region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    /// Its account.
    pub account: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (account {})", self.name, self.account)
    }
}

impl View {
    /// The answers of `cluster`'s servers only.
    pub fn of_cluster(&self, cluster: &str) -> View {
        View {
            answers: self
                .answers
                .iter()
                .filter(|a| a.server.cluster == cluster)
                .cloned()
                .collect(),
        }
    }

    /// Servers with JetStream on.
    pub fn jetstream_servers(&self) -> usize {
        self.answers.iter().filter(|a| !a.data.disabled).count()
    }

    /// The answer of server `name`.
    pub fn answer(&self, name: &str) -> Option<&Answer> {
        self.answers.iter().find(|a| a.server.name == name)
    }

    /// The streams with a replica on `server`, with their detail there.
    pub fn hosted_on(&self, server: &str) -> Vec<(StreamId, &StreamDetail)> {
        self.answer(server)
            .map(|a| {
                a.data
                    .account_details
                    .iter()
                    .flat_map(|acct| {
                        acct.stream_detail.iter().map(|s| {
                            (
                                StreamId {
                                    account: acct.name.clone(),
                                    name: s.name.clone(),
                                },
                                s,
                            )
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The leader's detail of a stream, from the leader's own answer.
    fn leader_view(&self, id: &StreamId, leader: &str) -> Option<&StreamCluster> {
        self.answer(leader)?
            .data
            .account_details
            .iter()
            .filter(|a| a.name == id.account)
            .flat_map(|a| &a.stream_detail)
            .find(|s| s.name == id.name)?
            .cluster
            .as_ref()
    }

    /// A stream's leader and its view of the group, from the answer of
    /// the server that says it leads it.
    pub fn lead(&self, id: &StreamId) -> Option<(&str, &StreamCluster)> {
        self.answers.iter().find_map(|a| {
            let c = a
                .data
                .account_details
                .iter()
                .filter(|acct| acct.name == id.account)
                .flat_map(|acct| &acct.stream_detail)
                .find(|s| s.name == id.name)?
                .cluster
                .as_ref()?;
            (c.leader == a.server.name).then_some((a.server.name.as_str(), c))
        })
    }

    /// `Ok` when all `expected` servers of the region answered, each with
    /// JetStream running under a meta leader (or standalone: a server
    /// without a cluster has no meta group to wait for); else why not.
    pub fn peers_ready(&self, expected: usize) -> Result<(), NotReady> {
        if self.answers.len() < expected {
            return Err(NotReady::Missing {
                answered: self.answers.iter().map(|a| a.server.name.clone()).collect(),
                expected,
            });
        }
        for a in &self.answers {
            if a.data.disabled {
                continue;
            }
            // nats-server reports `meta_cluster` only when JetStream is
            // clustered; then an empty leader means none is elected yet.
            if a.data
                .meta_cluster
                .as_ref()
                .is_some_and(|m| m.leader.is_empty())
            {
                return Err(NotReady::NoMetaLeader(a.server.name.clone()));
            }
        }
        Ok(())
    }

    /// `Ok` when every replicated stream hosted on `me` has its other
    /// replicas current as its leader sees them; else the first that is
    /// not, and why.
    pub fn others_current(&self, me: &str) -> Result<(), NotReady> {
        for (id, detail) in self.hosted_on(me) {
            let Some(cluster) = &detail.cluster else {
                continue;
            };
            let replicas = detail.config.as_ref().map_or(0, |c| c.num_replicas);
            if replicas <= 1 && cluster.replicas.is_empty() {
                continue;
            }
            if cluster.leader.is_empty() {
                return Err(NotReady::NoStreamLeader(id));
            }
            let Some(seen) = self.leader_view(&id, &cluster.leader) else {
                return Err(NotReady::LeaderSilent {
                    id,
                    leader: cluster.leader.clone(),
                });
            };
            for r in seen.replicas.iter().filter(|r| r.name != me) {
                if r.offline || !r.current {
                    return Err(NotReady::ReplicaBehind {
                        id,
                        server: r.name.clone(),
                        offline: r.offline,
                        lag: r.lag,
                    });
                }
            }
        }
        Ok(())
    }

    /// The peers of the replicated streams hosted on `me` that are in
    /// another cluster than `cluster`, each with the cluster its own
    /// answer names. nats-server keeps a stream's group inside one
    /// cluster except while it moves between clusters (its peers are then
    /// in both). A peer that did not answer is an error: it may be going
    /// down under its own region's lease while its leader still counts it
    /// current, and where it is cannot be told.
    pub fn peers_elsewhere(
        &self,
        me: &str,
        cluster: &str,
    ) -> Result<BTreeMap<String, String>, NotReady> {
        let mut out = BTreeMap::new();
        for (id, detail) in self.hosted_on(me) {
            let Some(group) = &detail.cluster else {
                continue;
            };
            let mut names: BTreeSet<&str> =
                group.replicas.iter().map(|r| r.name.as_str()).collect();
            if !group.leader.is_empty() {
                names.insert(group.leader.as_str());
                if let Some(seen) = self.leader_view(&id, &group.leader) {
                    names.extend(seen.replicas.iter().map(|r| r.name.as_str()));
                }
            }
            for name in names.into_iter().filter(|n| *n != me) {
                let Some(a) = self.answer(name) else {
                    return Err(NotReady::PeerSilent {
                        id,
                        server: name.to_owned(),
                    });
                };
                if a.server.cluster != cluster {
                    out.insert(name.to_owned(), a.server.cluster.clone());
                }
            }
        }
        Ok(out)
    }

    /// Why removing `me` from the region would break a stream's
    /// replication: streams whose replicas could not all be placed on the
    /// servers left, or whose only copy is here.
    pub fn removal_blockers(&self, me: &str) -> Vec<String> {
        let left = self
            .answers
            .iter()
            .filter(|a| a.server.name != me && !a.data.disabled)
            .count();
        let mut out = Vec::new();
        for (id, detail) in self.hosted_on(me) {
            let replicas = detail.config.as_ref().map_or(1, |c| c.num_replicas.max(1));
            if replicas == 1 {
                out.push(format!(
                    "stream {id} has its only replica here; raise its replicas or move it first"
                ));
            } else if replicas > left {
                out.push(format!(
                    "stream {id} has {replicas} replicas, and only {left} other JetStream server{} would be left in the region",
                    if left == 1 { "" } else { "s" }
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answer(name: &str, streams: serde_json::Value) -> Answer {
        serde_json::from_value(serde_json::json!({
            "server": {"name": name, "cluster": "fra1"},
            "data": {
                "meta_cluster": {"leader": "n1"},
                "account_details": [{"name": "APP", "stream_detail": streams}],
            }
        }))
        .unwrap()
    }

    fn orders(leader: &str, replicas: serde_json::Value) -> serde_json::Value {
        serde_json::json!([{
            "name": "ORDERS",
            "config": {"num_replicas": 3},
            "cluster": {"leader": leader, "replicas": replicas},
        }])
    }

    fn region(n3_current: bool) -> View {
        let lead = serde_json::json!([
            {"name": "n2", "current": true},
            {"name": "n3", "current": n3_current, "lag": if n3_current { 0 } else { 42 }},
        ]);
        // Followers see no progress of their peers.
        let follower = serde_json::json!([{"name": "n1", "current": false}]);
        View {
            answers: vec![
                answer("n1", orders("n1", lead)),
                answer("n2", orders("n1", follower.clone())),
                answer("n3", orders("n1", follower)),
            ],
        }
    }

    #[test]
    fn the_leaders_view_decides() {
        assert_eq!(region(true).others_current("n2"), Ok(()));
        assert_eq!(
            region(false)
                .others_current("n2")
                .map_err(|e| e.to_string()),
            Err("stream ORDERS (account APP): replica on n3 is not current (42 behind)".into())
        );
        // n3 itself being behind does not stop n3: it is the one leaving.
        assert_eq!(region(false).others_current("n3"), Ok(()));
        // The leader checks its own followers.
        assert!(region(false).others_current("n1").is_err());
    }

    fn in_cluster(mut a: Answer, cluster: &str) -> Answer {
        a.server.cluster = cluster.into();
        a
    }

    #[test]
    fn peers_in_other_clusters_are_named_with_their_cluster() {
        // Within one region there are none.
        assert!(
            region(true)
                .peers_elsewhere("n2", "fra1")
                .unwrap()
                .is_empty()
        );
        // A group moving from fra1 to nyc3: its leader in fra1 sees the
        // new peers in nyc3, which follower n2 does not list yet.
        let lead = serde_json::json!([
            {"name": "n2", "current": true},
            {"name": "a1", "current": true},
            {"name": "a2", "current": false},
        ]);
        let follower = serde_json::json!([{"name": "n1", "current": false}]);
        let moving = View {
            answers: vec![
                answer("n1", orders("n1", lead)),
                answer("n2", orders("n1", follower.clone())),
                answer("n3", serde_json::json!([])),
                in_cluster(answer("a1", orders("n1", follower.clone())), "nyc3"),
                in_cluster(answer("a2", orders("n1", follower)), "nyc3"),
            ],
        };
        let expected: BTreeMap<String, String> = [("a1", "nyc3"), ("a2", "nyc3")]
            .into_iter()
            .map(|(n, c)| (n.to_owned(), c.to_owned()))
            .collect();
        assert_eq!(moving.peers_elsewhere("n2", "fra1"), Ok(expected));
        // n3 hosts no replica of it: nothing in another region to respect.
        assert!(moving.peers_elsewhere("n3", "fra1").unwrap().is_empty());
        // From nyc3's side the peers in fra1 are the ones elsewhere.
        assert_eq!(
            moving
                .peers_elsewhere("a1", "nyc3")
                .unwrap()
                .into_keys()
                .collect::<Vec<_>>(),
            vec!["n1".to_owned(), "n2".to_owned()]
        );
        // A peer that did not answer (going down under its region's
        // lease, or its answer late) holds the node back: where it is and
        // whether it restarts cannot be told.
        let mut late = moving.clone();
        late.answers.retain(|a| a.server.name != "a2");
        assert_eq!(
            late.peers_elsewhere("n2", "fra1")
                .map_err(|e| e.to_string()),
            Err("stream ORDERS (account APP): its replica on a2 did not answer".into())
        );
        // The leader's view spans the clusters: a2 behind holds n2 back.
        assert!(matches!(
            moving.others_current("n2"),
            Err(NotReady::ReplicaBehind { ref server, .. }) if server == "a2"
        ));
        // A leader in another region is found in the whole view; in the
        // region's alone it is silent, and a node would wait for ever.
        assert!(matches!(
            moving.of_cluster("nyc3").others_current("a1"),
            Err(NotReady::LeaderSilent { .. })
        ));
        assert!(matches!(
            moving.others_current("a1"),
            Err(NotReady::ReplicaBehind { .. })
        ));
    }

    #[test]
    fn every_server_must_answer_under_a_meta_leader() {
        let v = region(true);
        assert_eq!(v.peers_ready(3), Ok(()));
        assert_eq!(
            v.peers_ready(4).map_err(|e| e.to_string()),
            Err("3 of 4 servers of the region answered (n1, n2, n3)".into())
        );
        assert!(matches!(
            v.peers_ready(4),
            Err(NotReady::Missing { expected: 4, ref answered }) if answered.len() == 3
        ));
        // A clustered server between meta elections waits ...
        let mut electing = region(true);
        electing.answers[1].data.meta_cluster =
            serde_json::from_value(serde_json::json!({"leader": ""})).unwrap();
        assert_eq!(
            electing.peers_ready(3),
            Err(NotReady::NoMetaLeader("n2".into()))
        );
        assert_eq!(
            electing.peers_ready(3).map_err(|e| e.to_string()),
            Err("n2 has no JetStream meta leader".into())
        );
        // ... a standalone one (no meta group at all) does not.
        let standalone: Answer = serde_json::from_value(serde_json::json!({
            "server": {"name": "solo", "cluster": ""},
            "data": {"account_details": []},
        }))
        .unwrap();
        let solo = View {
            answers: vec![standalone],
        };
        assert_eq!(solo.peers_ready(1), Ok(()));
    }

    #[test]
    fn removal_needs_room_for_every_replica() {
        let v = region(true);
        assert_eq!(
            v.removal_blockers("n2"),
            vec!["stream ORDERS (account APP) has 3 replicas, and only 2 other JetStream servers would be left in the region".to_owned()]
        );
        let mut four = region(true);
        four.answers.push(answer("n4", serde_json::json!([])));
        assert!(four.removal_blockers("n2").is_empty());
        assert!(four.removal_blockers("n4").is_empty());
        let single = View {
            answers: vec![
                answer(
                    "n1",
                    serde_json::json!([{"name": "LOG", "config": {"num_replicas": 1}}]),
                ),
                answer("n2", serde_json::json!([])),
            ],
        };
        assert_eq!(
            single.removal_blockers("n1"),
            vec!["stream LOG (account APP) has its only replica here; raise its replicas or move it first".to_owned()]
        );
    }
}
