//! One node of a region at a time: every planned disruption of the broker
//! (a restart a configuration change needs, an upgrade) first takes the
//! region's restart lease, held in the supercluster itself, and only once
//! the region can spare this node — all its servers answer, every
//! replicated stream hosted here has its other replicas current (wherever
//! they are), no other node of it holds a maintenance or drain lease
//! ([`maintenance`]), and, under per-region leases, no replica of such a
//! stream in another region holds that region's restart lease.
//!
//! The supervisor asks with [`acquire`] and hears back through a channel:
//! why it still waits (for STATUS), then the lease ([`Held`]), which it
//! gives back once the restarted broker serves with JetStream current.

// The temporary credentials live with the system account they are
// rendered into (`auth`); the path stays for callers.
pub use crate::auth::creds;
pub mod decommission;
pub mod heartbeat;
pub mod lease;
pub mod maintain;
pub mod maintenance;
pub mod pause;
pub mod peers;
pub mod reboot;
pub mod report;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::config::schema::LeaseScope;
pub use crate::config::settings::fleet::{Coordination, FLEET_ACCOUNT, FLEET_USER, FleetSettings};

/// How long the region's servers have to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// How often a waiting node looks again.
const POLL: Duration = Duration::from_secs(1);

/// Why this node may not take the restart lease yet (every kind is
/// worth another look a second later).
#[derive(Debug, thiserror::Error)]
pub enum NotYet {
    /// natsmeshd's system user could not connect.
    #[error("cannot ask the region (system user): {0}")]
    AskRegion(#[source] crate::auth::AuthError),
    /// The region's servers could not be asked.
    #[error(transparent)]
    View(#[from] view::AskError),
    /// The region cannot spare a server now.
    #[error(transparent)]
    NotReady(#[from] view::NotReady),
    /// natsmeshd's own account user could not connect.
    #[error("cannot reach the lease bucket: {0}")]
    Reach(#[source] crate::auth::AuthError),
    /// A node of the region is out on purpose (maintenance, a drain).
    #[error("{0} is out of service; waiting for it to come back")]
    Away(String),
    /// Who is out on purpose could not be read: someone may be.
    #[error("cannot tell who is out for maintenance: {0}")]
    Maintenance(#[source] Box<maintenance::MaintenanceError>),
    /// The lease bucket failed.
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    /// Another node holds the lease.
    #[error("the restart lease is held by {0}")]
    HeldBy(String),
    /// A replica, in another region, of a stream hosted here restarts
    /// under its own region's lease.
    #[error(
        "{peer} (region {region}), a replica of a stream hosted here, holds its region's restart lease"
    )]
    PeerRestarting {
        /// The peer.
        peer: String,
        /// Its region.
        region: String,
    },
    /// Taken and given back: looked at again once written, a peer in
    /// another region had taken its region's lease at the same moment (or
    /// its lease could not be read). Each gives way; they try again apart.
    #[error("gave the restart lease back: {0}")]
    GaveBack(#[source] Box<NotYet>),
    /// Another region's restart lease, which a replica of a stream hosted
    /// here may hold, could not be read.
    #[error(
        "cannot read region {region}'s restart lease (a replica of a stream hosted here is there): {source}"
    )]
    PeerLease {
        /// The region.
        region: String,
        /// Why.
        #[source]
        source: lease::LeaseError,
    },
}

/// The first peer elsewhere (`elsewhere`: peer → its region) that holds
/// its region's restart lease (`holders`: region → holder), and its region.
pub fn peer_restarting(
    elsewhere: &BTreeMap<String, String>,
    holders: &BTreeMap<String, Option<String>>,
) -> Option<(String, String)> {
    elsewhere.iter().find_map(|(peer, region)| {
        holders
            .get(region)?
            .as_ref()
            .filter(|h| *h == peer)
            .map(|_| (peer.clone(), region.clone()))
    })
}

/// Who holds the restart lease of each region in `elsewhere`'s values
/// (nobody where the bucket was never made), as each bucket's stream
/// leader has it: the look after a take must see a write acknowledged a
/// moment ago.
pub async fn holders_of(
    js: &jetstream::Context,
    elsewhere: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Option<String>>, NotYet> {
    let regions: BTreeSet<&String> = elsewhere.values().collect();
    let mut out = BTreeMap::new();
    for region in regions {
        let holder = lease::holder_of(js, &lease::bucket_name(region))
            .await
            .map_err(|source| NotYet::PeerLease {
                region: region.clone(),
                source,
            })?;
        out.insert(region.clone(), holder.map(|h| h.server));
    }
    Ok(out)
}

/// What the supervisor hears while it waits.
#[derive(Debug)]
pub enum Gate {
    /// Not yet, and why.
    Waiting(String),
    /// The lease is this node's.
    Granted(Box<Held>),
}

/// A lease held by this process, renewed in the background until released
/// (or dropped, when it simply expires).
pub struct Held {
    store: jetstream::kv::Store,
    revision: Arc<Mutex<u64>>,
    renewer: tokio::task::JoinHandle<()>,
    /// Keeps the connection open while the lease is held.
    _client: async_nats::Client,
    /// Who holds it and why.
    pub holder: lease::Holder,
    /// Whose lease it is.
    pub scope: LeaseScope,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("holder", &self.holder)
            .finish()
    }
}

impl Held {
    /// Gives the lease back (if it is still ours).
    pub async fn release(self) -> Result<(), lease::LeaseError> {
        self.renewer.abort();
        let revision = *self.revision.lock().unwrap_or_else(|e| e.into_inner());
        lease::release(&self.store, &self.holder, revision).await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// A process-unique tag for lease records.
pub fn nonce() -> String {
    format!("{}-{:016x}", std::process::id(), fastrand::u64(..))
}

/// Waits until this node may disrupt its broker for `why`, telling `tx`
/// why it waits, and ends with the lease (or when `tx` is dropped).
#[tracing::instrument(name = "fleet", skip_all, fields(task = "lease"))]
pub async fn acquire(
    settings: Settings,
    fleet: FleetSettings,
    why: String,
    nonce: String,
    tx: mpsc::Sender<Gate>,
) {
    let mut last = String::new();
    loop {
        let outcome = tokio::select! {
            o = attempt(&settings, &fleet, &why, &nonce) => o,
            _ = tx.closed() => return,
        };
        match outcome {
            Ok(held) => {
                tracing::info!(reason = %why, "took the {}'s restart lease", fleet.scope.noun());
                let _ = tx.send(Gate::Granted(Box::new(held))).await;
                return;
            }
            Err(wait) => {
                // Two peers that gave way to each other try again apart.
                if matches!(wait, NotYet::GaveBack(_)) {
                    let apart = Duration::from_millis(fastrand::u64(0..=2000));
                    tokio::select! {
                        _ = tokio::time::sleep(apart) => {}
                        _ = tx.closed() => return,
                    }
                }
                let wait = wait.to_string();
                if wait != last {
                    tracing::info!(reason = %wait, "waiting before a restart");
                    if tx.send(Gate::Waiting(wait.clone())).await.is_err() {
                        return;
                    }
                    last = wait;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

/// The region's cluster name (a standalone server has none).
pub fn cluster_name(settings: &Settings) -> String {
    settings
        .server
        .cluster
        .as_ref()
        .map_or_else(String::new, |c| c.name.clone())
}

/// How many servers the region has: one route per server, this one
/// included.
pub fn region_size(settings: &Settings) -> usize {
    settings
        .server
        .cluster
        .as_ref()
        .map_or(1, |c| c.routes.len().max(1))
}

async fn attempt(
    settings: &Settings,
    fleet: &FleetSettings,
    why: &str,
    nonce: &str,
) -> Result<Held, NotYet> {
    let me = &settings.server.server_name;
    let cluster = cluster_name(settings);
    let sys = crate::auth::system_client(settings)
        .await
        .map_err(NotYet::AskRegion)?;
    // The whole supercluster answers: a stream hosted here may have its
    // leader or other replicas in another region while it moves between
    // clusters, and its majority is counted wherever they are.
    let wide = view::gather_all(&sys, ANSWER_WAIT).await?;
    let view = wide.of_cluster(&cluster);
    view.peers_ready(region_size(settings))?;
    wide.others_current(me)?;
    // Under per-region leases, regions restart in parallel: a peer of a
    // stream hosted here restarting in another region counts as out.
    let elsewhere = wide.peers_elsewhere(me, &cluster)?;
    let client = crate::auth::local_client(settings, &fleet.login, &fleet.user)
        .await
        .map_err(NotYet::Reach)?;
    let js = jetstream::new(client.clone());
    let name = match fleet.scope {
        LeaseScope::Region => lease::bucket_name(&cluster),
        LeaseScope::Supercluster => lease::SUPERCLUSTER_BUCKET.to_owned(),
    };
    // A node of the region out for maintenance (or a drain) is out on
    // purpose: no planned restart here until it is back.
    let unreadable = |e| NotYet::Maintenance(Box::new(e));
    if let Some(away) = maintenance::out_in_region(&js, settings)
        .await
        .map_err(unreadable)?
    {
        return Err(NotYet::Away(away));
    }
    // So is a replica elsewhere of a stream hosted here.
    if let Some(away) = maintenance::out_among(&js, elsewhere.keys())
        .await
        .map_err(unreadable)?
    {
        return Err(NotYet::Away(away));
    }
    // Only per-region leases let another region restart beside this one.
    let elsewhere = match fleet.scope {
        LeaseScope::Region => elsewhere,
        LeaseScope::Supercluster => BTreeMap::new(),
    };
    if let Some((peer, region)) = peer_restarting(&elsewhere, &holders_of(&js, &elsewhere).await?) {
        return Err(NotYet::PeerRestarting { peer, region });
    }
    let store = lease::bucket(&js, &name, &cluster, fleet.ttl, view.jetstream_servers()).await?;
    let holder = lease::Holder::new(me, nonce, why);
    match lease::take(&store, &holder).await? {
        lease::Take::HeldBy(who) => Err(NotYet::HeldBy(who)),
        lease::Take::Taken(revision) => {
            // Two peers in two regions may each have looked before the
            // other took its lease. Each looks again once its own is
            // written: whichever looks last sees the other, so at most one
            // goes on (both may give way; they try again apart).
            let again = match holders_of(&js, &elsewhere).await {
                Ok(h) => peer_restarting(&elsewhere, &h)
                    .map(|(peer, region)| NotYet::PeerRestarting { peer, region }),
                Err(e) => Some(e),
            }
            .map(|why| NotYet::GaveBack(Box::new(why)));
            if let Some(wait) = again {
                if let Err(e) = lease::release(&store, &holder, revision).await {
                    tracing::warn!(error = %e, "cannot give the restart lease back; it expires");
                }
                return Err(wait);
            }
            let revision = Arc::new(Mutex::new(revision));
            let renewer = tokio::spawn(renew(
                store.clone(),
                holder.clone(),
                revision.clone(),
                fleet.ttl,
            ));
            Ok(Held {
                store,
                revision,
                renewer,
                _client: client,
                holder,
                scope: fleet.scope,
            })
        }
    }
}

/// Rewrites the lease every quarter of its expiry. While this node's own
/// broker restarts the writes fail; the expiry covers that gap.
async fn renew(
    store: jetstream::kv::Store,
    holder: lease::Holder,
    revision: Arc<Mutex<u64>>,
    ttl: Duration,
) {
    loop {
        tokio::time::sleep(ttl / 4).await;
        let rev = *revision.lock().unwrap_or_else(|e| e.into_inner());
        match lease::renew(&store, &holder, rev).await {
            Ok(next) => *revision.lock().unwrap_or_else(|e| e.into_inner()) = next,
            Err(e) => tracing::debug!(error = %e, "cannot renew the restart lease (yet)"),
        }
    }
}

/// What the fleet operations on the control socket reach: the fleet
/// pause bucket (or why not) and the node's settings for `$SYS`.
#[derive(Debug)]
pub struct FleetOps {
    /// The fleet pause bucket, or why this node cannot reach it.
    pub pause: Result<pause::Access, pause::PauseError>,
    /// The settings natsmeshd started with (the system user).
    pub settings: crate::config::Settings,
    /// Tells [`crate::fleet::maintenance::settle`] to give a lease back
    /// once the node serves again.
    pub settle: std::sync::Arc<tokio::sync::Notify>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_peer_elsewhere_holding_its_regions_lease_holds_this_node_back() {
        let elsewhere = map(&[("a1", "nyc3"), ("s2", "sgp1")]);
        let holders =
            |nyc3: Option<&str>, sgp1: Option<&str>| -> BTreeMap<String, Option<String>> {
                [("nyc3", nyc3), ("sgp1", sgp1)]
                    .into_iter()
                    .map(|(r, h)| (r.to_owned(), h.map(str::to_owned)))
                    .collect()
            };
        // Nobody restarting, or only servers that host none of our streams.
        assert_eq!(peer_restarting(&elsewhere, &holders(None, None)), None);
        assert_eq!(
            peer_restarting(&elsewhere, &holders(Some("a2"), Some("s1"))),
            None
        );
        // A peer restarting in its region.
        assert_eq!(
            peer_restarting(&elsewhere, &holders(Some("a2"), Some("s2"))),
            Some(("s2".into(), "sgp1".into()))
        );
        // A holder's name in a region it is not in does not count.
        assert_eq!(
            peer_restarting(&map(&[("a1", "nyc3")]), &holders(None, Some("a1"))),
            None
        );
        // No peer elsewhere (every stream inside the region): nothing to ask.
        assert_eq!(
            peer_restarting(&BTreeMap::new(), &holders(Some("a1"), None)),
            None
        );
    }

    #[test]
    fn waiting_for_a_peer_elsewhere_says_who_and_where() {
        let e = NotYet::PeerRestarting {
            peer: "a1".into(),
            region: "nyc3".into(),
        };
        assert_eq!(
            e.to_string(),
            "a1 (region nyc3), a replica of a stream hosted here, holds its region's restart lease"
        );
        let y = NotYet::GaveBack(Box::new(e));
        assert_eq!(
            y.to_string(),
            "gave the restart lease back: a1 (region nyc3), a replica of a stream hosted here, holds its region's restart lease"
        );
    }
}
