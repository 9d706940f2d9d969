//! Coordinated maintenance: `natsmeshd maintenance start|stop`, and the
//! rule `natsmeshd drain` follows too. A node going out takes a
//! maintenance lease: a record under its server name in one key,
//! [`KEY`], of the fleet bucket ([`super::pause::BUCKET`], natsmeshd's
//! own account), holding every node of the supercluster that is out on
//! purpose, each with its expiry (`[maintenance] max_down`). The rule is
//! checked and the lease taken in one write: a compare-and-set on the
//! key's revision, so of two operators who read the same revision only
//! one writes, and the other reads again and sees the first out.
//!
//! **The rule.** A node may go out only when the JetStream meta group,
//! and every stream with three or more replicas and one of them here,
//! keep their current majority without it — counting the nodes already
//! out: those with a live lease and those the group sees offline (or
//! behind). Streams of one or two replicas are not counted: one has no
//! replica elsewhere to keep, two lose their majority with any node.
//!
//! A lease outlives natsmeshd and the machine: it is kept in JetStream
//! with its expiry, and the node's own word in the state directory
//! ([`Marker`], with the boot it was taken in). A natsmeshd that starts in
//! the same boot keeps the broker down; in a new boot (the reboot done) it
//! serves, and the lease goes back once JetStream is current
//! ([`settle`]). This module writes the key and the marker and checks the
//! rule; the supervisor only drains and starts the broker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::peers::MetaGroup;
use super::view::View;
use super::{Coordination, FleetSettings};
use crate::config::Settings;
use crate::health::Health;

/// A JetStream error of any of the key-value calls (each has its own
/// kind type); kept as the source, shown in its own words.
type NatsError = Box<dyn std::error::Error + Send + Sync>;

/// Why a node may not go out now: the majority rule, or another node's
/// maintenance (coordinated reboots go one at a time). Waiting may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A group this node belongs to would lose its majority.
    #[error(
        "refused by the majority rule: without {me}, {what} would keep {left} of its {members} servers, and needs {majority}; already out: {already}"
    )]
    Majority {
        /// This node.
        me: String,
        /// The group, for a person.
        what: String,
        /// Its members that would be left.
        left: usize,
        /// Its members.
        members: usize,
        /// Its majority.
        majority: usize,
        /// Who is out already, and why (`none`).
        already: String,
    },
    /// The meta group has no leader, hence no majority to keep.
    #[error(
        "refused by the majority rule: the JetStream meta group has no leader (no majority to keep); see `natsmeshd fleet peers`"
    )]
    NoMetaLeader,
    /// Another node is in maintenance (see [`another_in_maintenance`]).
    #[error("{0}")]
    Alone(String),
}

/// Why the maintenance lease could not be taken or given back, or the
/// marker not kept.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The rule refuses (without waiting).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// What a planned restart needs was not there within a minute.
    #[error("not now: {0}")]
    NotNow(#[source] Box<MaintenanceError>),
    /// A marker or the leases could not be encoded.
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
    /// The marker could not be written.
    #[error("cannot keep the maintenance marker: {0}")]
    Keep(#[source] std::io::Error),
    /// The marker could not be removed.
    #[error("cannot remove the maintenance marker: {0}")]
    Forget(#[source] std::io::Error),
    /// natsmeshd's own account user could not connect.
    #[error("cannot reach the fleet bucket: {0}")]
    Reach(#[source] crate::auth::AuthError),
    /// The fleet bucket could not be opened.
    #[error(transparent)]
    Bucket(#[from] super::pause::PauseError),
    /// The fleet bucket did not answer in time.
    #[error("the fleet bucket did not answer")]
    Timeout,
    /// The leases could not be read.
    #[error("cannot read the maintenance leases: {0}")]
    Read(#[source] NatsError),
    /// The leases are larger than natsmeshd writes them.
    #[error("the maintenance leases at revision {0} are too large to be natsmeshd's")]
    TooLarge(u64),
    /// The leases are not what natsmeshd writes.
    #[error(
        "the maintenance leases at revision {revision} are unreadable ({source}); fix or purge key {KEY} of bucket {}",
        super::pause::BUCKET
    )]
    Unreadable {
        /// The key's revision.
        revision: u64,
        /// Why.
        source: serde_json::Error,
    },
    /// The leases could not be written.
    #[error("cannot write the maintenance leases: {0}")]
    Write(#[source] NatsError),
    /// Other nodes kept writing first.
    #[error("the maintenance leases kept changing")]
    KeptChanging,
    /// Other nodes kept writing first while giving the lease back.
    #[error("the maintenance leases kept changing; try again")]
    KeptChangingOnRelease,
    /// natsmeshd's system user could not connect.
    #[error("cannot ask the region (system user): {0}")]
    AskRegion(#[source] crate::auth::AuthError),
    /// The meta group could not be asked.
    #[error(transparent)]
    Peers(#[from] super::peers::PeersError),
    /// The servers' JetStream views could not be asked.
    #[error(transparent)]
    View(#[from] super::view::AskError),
    /// The region cannot spare a server now.
    #[error(transparent)]
    NotReady(#[from] super::view::NotReady),
    /// A restart lease could not be read: someone may be restarting.
    #[error("cannot tell who holds the restart lease in {bucket}: {source}")]
    RestartLease {
        /// The lease's bucket.
        bucket: String,
        /// Why.
        source: super::lease::LeaseError,
    },
}

/// The key, in the fleet bucket, holding every node out on purpose.
pub const KEY: &str = "maintenance";
/// This node's own word, in the state directory.
const MARKER_FILE: &str = "maintenance.json";
/// Linux's identity of the current boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// How often a waiting attempt looks again.
const POLL: Duration = Duration::from_secs(1);
/// How long servers have to answer `$SYS`.
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// How long a start without `--wait` waits for the preconditions a
/// planned restart waits for (every server answers, replicas current):
/// they are usually met within seconds; the rule is not waited for.
const PRECONDITIONS_PATIENCE: Duration = Duration::from_secs(60);
/// How long one read or write of the key may take.
const KV_WAIT: Duration = Duration::from_secs(10);
/// A value larger than this is not natsmeshd's.
const MAX_VALUE: usize = 64 * 1024;

pub use crate::config::settings::fleet::MaintenanceSettings;

/// Why a node is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `natsmeshd maintenance start`: down, maybe rebooting.
    Maintenance,
    /// `natsmeshd drain`: out of service, natsmeshd running.
    Drain,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Self::Maintenance => "maintenance",
            Self::Drain => "drain",
        }
    }
}

/// One node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its region.
    pub region: String,
    /// Maintenance or drain.
    pub kind: Kind,
    /// Why, as the operator said.
    #[serde(default)]
    pub why: String,
    /// When it was taken (Unix milliseconds, the node's clock).
    pub since_unix_ms: u64,
    /// When it lapses by itself (Unix milliseconds).
    pub expires_unix_ms: u64,
}

/// The key's value: every node out, by server name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    /// Server name → its lease.
    #[serde(default)]
    pub nodes: BTreeMap<String, Record>,
}

impl Leases {
    /// The leases not expired at `now_ms`.
    pub fn live(&self, now_ms: u64) -> Leases {
        Leases {
            nodes: self
                .nodes
                .iter()
                .filter(|(_, r)| r.expires_unix_ms > now_ms)
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect(),
        }
    }
}

/// A Raft group whose majority must survive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// What it is, for a person ("the JetStream meta group", "stream …").
    pub what: String,
    /// Its servers.
    pub members: BTreeSet<String>,
    /// Members not counting towards its majority now, and why
    /// (`offline`, `behind`).
    pub down: BTreeMap<String, String>,
}

/// The rule: `me` may go out only when every group it belongs to keeps a
/// majority of its members without it and without those in `out` (server
/// → why it is out) or down in the group; else which group would not,
/// naming the rule and who is out.
pub fn rule(me: &str, groups: &[Group], out: &BTreeMap<String, String>) -> Result<(), Refusal> {
    for g in groups {
        if !g.members.contains(me) || g.members.len() < 2 {
            continue;
        }
        let n = g.members.len();
        let majority = n / 2 + 1;
        let gone: BTreeMap<&str, &str> = g
            .members
            .iter()
            .filter(|m| m.as_str() != me)
            .filter_map(|m| {
                out.get(m)
                    .or_else(|| g.down.get(m))
                    .map(|why| (m.as_str(), why.as_str()))
            })
            .collect();
        let left = n - 1 - gone.len();
        if left < majority {
            let already = if gone.is_empty() {
                "none".to_owned()
            } else {
                gone.iter()
                    .map(|(m, why)| format!("{m} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Refusal::Majority {
                me: me.to_owned(),
                what: g.what.clone(),
                left,
                members: n,
                majority,
                already,
            });
        }
    }
    Ok(())
}

/// The groups `me` belongs to that the rule counts: the meta group (from
/// its leader's view), and each stream with three or more replicas and one
/// on `me` (from its leader's view, wherever the leader is: `view` holds
/// every region's answers; a stream without a leader in `view` counts all
/// its other replicas down). Streams of fewer replicas are not counted.
pub fn groups(me: &str, meta: &MetaGroup, view: &View) -> Vec<Group> {
    let mut out = Vec::new();
    if !meta.leader.is_empty() {
        out.push(Group {
            what: "the JetStream meta group".into(),
            members: meta.peers.iter().map(|p| p.name.clone()).collect(),
            down: meta
                .peers
                .iter()
                .filter(|p| p.state == "offline" || p.state == "behind")
                .map(|p| (p.name.clone(), p.state.clone()))
                .collect(),
        });
    }
    for (id, detail) in view.hosted_on(me) {
        let replicas = detail.config.as_ref().map_or(1, |c| c.num_replicas);
        let Some(local) = &detail.cluster else {
            continue;
        };
        if replicas.max(local.replicas.len() + 1) < 3 {
            continue;
        }
        let what = format!("stream {id}");
        match view.lead(&id) {
            Some((leader, seen)) => out.push(Group {
                what,
                members: std::iter::once(leader.to_owned())
                    .chain(seen.replicas.iter().map(|r| r.name.clone()))
                    .collect(),
                down: seen
                    .replicas
                    .iter()
                    .filter(|r| r.offline || !r.current)
                    .map(|r| {
                        let why = if r.offline { "offline" } else { "behind" };
                        (r.name.clone(), why.to_owned())
                    })
                    .collect(),
            }),
            None => out.push(Group {
                what: format!("{what} (no leader now)"),
                members: std::iter::once(me.to_owned())
                    .chain(local.replicas.iter().map(|r| r.name.clone()))
                    .collect(),
                down: local
                    .replicas
                    .iter()
                    .map(|r| (r.name.clone(), "no leader".to_owned()))
                    .collect(),
            }),
        }
    }
    out
}

/// This node's own word that it is in maintenance, kept in the state
/// directory: it outlives natsmeshd, and says in which boot it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Why, as the operator said.
    pub why: String,
    /// The boot it was taken in (`None`: unknown).
    pub boot_id: Option<String>,
    /// When it was taken (Unix milliseconds).
    pub since_unix_ms: u64,
    /// When the lease lapses (Unix milliseconds).
    pub expires_unix_ms: u64,
    /// Taken by a coordinated reboot ([`super::reboot`]): natsmeshd runs
    /// the reboot command itself, also after a restart in the same boot.
    #[serde(default)]
    pub reboot: bool,
}

impl Marker {
    /// A line for `natsmeshd status`.
    pub fn describe(&self, now_ms: u64) -> String {
        let at = |ms: u64| {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        };
        let why = if self.why.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.why)
        };
        let lapse = if self.expires_unix_ms > now_ms {
            format!("lease until {}", at(self.expires_unix_ms))
        } else {
            format!(
                "lease lapsed at {} (other nodes may go out now)",
                at(self.expires_unix_ms)
            )
        };
        format!(
            "in maintenance since {}{why}: safe to reboot; {lapse}; `natsmeshd maintenance stop` (or the reboot) brings it back",
            at(self.since_unix_ms)
        )
    }
}

fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER_FILE)
}

/// The marker kept in `state_dir`, if any (an unreadable one counts: the
/// node stays down rather than serve against the operator's word).
pub fn kept(state_dir: &Path) -> Option<Marker> {
    let bytes = match std::fs::read(marker_path(state_dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            return Some(Marker {
                why: format!("an unreadable maintenance marker: {e}"),
                boot_id: boot_id(),
                since_unix_ms: 0,
                expires_unix_ms: 0,
                reboot: false,
            });
        }
    };
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| Marker {
        why: format!("an unreadable maintenance marker: {e}"),
        boot_id: boot_id(),
        since_unix_ms: 0,
        expires_unix_ms: 0,
        reboot: false,
    }))
}

/// Keeps `marker` in `state_dir` (0600).
pub fn keep(state_dir: &Path, marker: &Marker) -> Result<(), MaintenanceError> {
    let body = serde_json::to_vec(marker)?;
    crate::files::write_atomic(&marker_path(state_dir), &body, 0o600)
        .map_err(MaintenanceError::Keep)
}

/// Removes the marker (gone already is fine).
pub fn forget(state_dir: &Path) -> Result<(), MaintenanceError> {
    match std::fs::remove_file(marker_path(state_dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(MaintenanceError::Forget(e)),
    }
}

/// This boot's identity (Linux), if readable.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// What a starting natsmeshd does with its broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtStart {
    /// No maintenance, or the reboot it was for is done: serve.
    Serve,
    /// In maintenance, in the same boot (natsmeshd restarted, by an
    /// upgrade or by hand): the broker stays down.
    StayDown(Marker),
}

/// Decides from the kept marker and this boot's identity. A marker whose
/// boot is unknown, or this boot's, keeps the broker down: only a reboot
/// seen as one, or `maintenance stop`, ends maintenance by itself.
pub fn at_start(marker: Option<Marker>, boot: Option<&str>) -> AtStart {
    match marker {
        None => AtStart::Serve,
        Some(m) => match (m.boot_id.as_deref(), boot) {
            (Some(then), Some(now)) if then != now => AtStart::Serve,
            _ => AtStart::StayDown(m),
        },
    }
}

/// The outcome of a take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The lease is this node's, until this time (Unix milliseconds).
    Until(u64),
    /// Nothing to coordinate with (no JetStream bucket), and why.
    Uncoordinated(String),
}

/// Where the key lives, reached as natsmeshd's own account's user.
struct Bucket {
    client: async_nats::Client,
    store: kv::Store,
}

async fn bucket(settings: &Settings, fleet: &FleetSettings) -> Result<Bucket, MaintenanceError> {
    let client = crate::auth::local_client(settings, &fleet.login, &fleet.user)
        .await
        .map_err(MaintenanceError::Reach)?;
    let js = jetstream::new(client.clone());
    let store = super::pause::open(&js, super::region_size(settings)).await?;
    Ok(Bucket { client, store })
}

/// The key's value and revision (`None`: never written).
async fn read(store: &kv::Store) -> Result<(Leases, Option<u64>), MaintenanceError> {
    let entry = tokio::time::timeout(KV_WAIT, store.entry(KEY))
        .await
        .map_err(|_| MaintenanceError::Timeout)?
        .map_err(|e| MaintenanceError::Read(Box::new(e)))?;
    let Some(entry) = entry else {
        return Ok((Leases::default(), None));
    };
    if entry.operation != kv::Operation::Put {
        return Ok((Leases::default(), Some(entry.revision)));
    }
    if entry.value.len() > MAX_VALUE {
        return Err(MaintenanceError::TooLarge(entry.revision));
    }
    let leases =
        serde_json::from_slice(&entry.value).map_err(|source| MaintenanceError::Unreadable {
            revision: entry.revision,
            source,
        })?;
    Ok((leases, Some(entry.revision)))
}

/// Writes `leases` if the key is still at `revision`; `Ok(false)` when
/// someone wrote first.
async fn write(
    store: &kv::Store,
    leases: &Leases,
    revision: Option<u64>,
) -> Result<bool, MaintenanceError> {
    let body = serde_json::to_vec(leases)?;
    let done: Result<(), (bool, NatsError)> = match revision {
        None => tokio::time::timeout(KV_WAIT, store.create(KEY, body.into()))
            .await
            .map_err(|_| MaintenanceError::Timeout)?
            .map(|_| ())
            .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.into())),
        Some(rev) => tokio::time::timeout(KV_WAIT, store.update(KEY, body.into(), rev))
            .await
            .map_err(|_| MaintenanceError::Timeout)?
            .map(|_| ())
            .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.into())),
    };
    match done {
        Ok(()) => Ok(true),
        Err((true, _)) => Ok(false),
        // Newer servers answer a stale revision with error 10164 ("wrong
        // last sequence", constant form), which this client does not
        // classify: a race lost all the same.
        Err((false, e)) if e.to_string().contains("wrong last sequence") => Ok(false),
        Err((false, e)) => Err(MaintenanceError::Write(e)),
    }
}

/// Why an attempt did not take the lease.
#[derive(Debug)]
enum NotYet {
    /// The rule refuses.
    Rule(Refusal),
    /// A precondition of a planned restart is not met (yet).
    Precondition(MaintenanceError),
    /// Another node wrote the key between the read and the write.
    Raced,
}

/// Takes this node's lease of `kind` under the rule. With `wait`, waits
/// until the rule allows it; without, a refusal by the rule comes back at
/// once, and the preconditions a planned restart waits for (every server
/// of the region answers under a meta leader, every replica elsewhere
/// current) are waited for a minute at most.
pub async fn take(
    settings: &Settings,
    max_down: Duration,
    kind: Kind,
    why: &str,
    wait: bool,
) -> Result<Taken, MaintenanceError> {
    let fleet = match &settings.fleet {
        Coordination::Lease(f) => f.clone(),
        Coordination::Off(reason) => {
            return Ok(Taken::Uncoordinated(format!(
                "not coordinated ({reason}): no lease taken"
            )));
        }
    };
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    let mut waiting = say_waiting(kind, &mut last);
    loop {
        match attempt(settings, &fleet, max_down, kind, why, false).await {
            Ok(until) => return Ok(Taken::Until(until)),
            Err(NotYet::Raced) => continue,
            Err(NotYet::Rule(e)) if !wait => return Err(e.into()),
            Err(NotYet::Precondition(e))
                if !wait && started.elapsed() >= PRECONDITIONS_PATIENCE =>
            {
                return Err(MaintenanceError::NotNow(Box::new(e)));
            }
            Err(NotYet::Rule(r)) => waiting(r.to_string()),
            Err(NotYet::Precondition(p)) => waiting(p.to_string()),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Until `take` gives up: say why it waits, once per reason.
fn say_waiting(kind: Kind, last: &mut String) -> impl FnMut(String) + '_ {
    move |e| {
        if e != *last {
            tracing::info!(reason = %e, "waiting to go out for {}", kind.noun());
            *last = e;
        }
    }
}

/// Takes this node's maintenance lease for a coordinated reboot, under
/// the rule and only while no other node of the supercluster holds a
/// maintenance lease (reboots go one at a time, wherever they are). One
/// look (a lost race looks again): a refusal, or a precondition not met,
/// comes back as the reason, for the caller to try again later.
pub async fn take_alone(
    settings: &Settings,
    max_down: Duration,
    why: &str,
) -> Result<Taken, MaintenanceError> {
    let fleet = match &settings.fleet {
        Coordination::Lease(f) => f.clone(),
        Coordination::Off(reason) => {
            return Ok(Taken::Uncoordinated(format!(
                "not coordinated ({reason}): no lease taken"
            )));
        }
    };
    for _ in 0..10 {
        match attempt(settings, &fleet, max_down, Kind::Maintenance, why, true).await {
            Ok(until) => return Ok(Taken::Until(until)),
            Err(NotYet::Raced) => {}
            Err(NotYet::Rule(e)) => return Err(e.into()),
            Err(NotYet::Precondition(e)) => return Err(e),
        }
    }
    Err(MaintenanceError::KeptChanging)
}

/// Who counts as out for `me`: every other node with a live lease,
/// wherever it is (another region's node may hold a replica of a stream
/// here, and the meta group spans every region), and the holders of
/// restart leases.
pub fn out_of(live: &Leases, me: &str, restarting: &[String]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = live
        .nodes
        .iter()
        .filter(|(n, _)| *n != me)
        .map(|(n, r)| (n.clone(), r.kind.noun().to_owned()))
        .collect();
    for holder in restarting.iter().filter(|h| *h != me) {
        out.entry(holder.clone())
            .or_insert_with(|| "restarting".into());
    }
    out
}

/// With `alone`, refused while another node holds a maintenance lease:
/// which one.
pub fn another_in_maintenance(live: &Leases, me: &str) -> Option<String> {
    live.nodes
        .iter()
        .find(|(n, r)| *n != me && r.kind == Kind::Maintenance)
        .map(|(n, r)| {
            format!(
                "{n} (region {}) is in maintenance: coordinated reboots go one node at a time across the supercluster",
                r.region
            )
        })
}

async fn attempt(
    settings: &Settings,
    fleet: &FleetSettings,
    max_down: Duration,
    kind: Kind,
    why: &str,
    alone: bool,
) -> Result<u64, NotYet> {
    let me = &settings.server.server_name;
    let cluster = super::cluster_name(settings);
    let b = bucket(settings, fleet)
        .await
        .map_err(NotYet::Precondition)?;
    let (leases, revision) = read(&b.store).await.map_err(NotYet::Precondition)?;
    let now = crate::unix_ms(SystemTime::now());
    let live = leases.live(now);
    if alone && let Some(other) = another_in_maintenance(&live, me) {
        return Err(NotYet::Rule(Refusal::Alone(other)));
    }
    let sys = crate::auth::system_client(settings)
        .await
        .map_err(|e| NotYet::Precondition(MaintenanceError::AskRegion(e)))?;
    let meta = super::peers::gather(settings)
        .await
        .map_err(|e| NotYet::Precondition(e.into()))?;
    let clustered = settings.server.cluster.is_some() || settings.server.gateway.is_some();
    if meta.leader.is_empty() && clustered {
        return Err(NotYet::Rule(Refusal::NoMetaLeader));
    }
    // A node restarting under a restart lease is out too: this region's,
    // and with per-region leases every other region's in the meta group
    // (which spans them all).
    let mut regions: BTreeSet<String> =
        meta.peers.iter().filter_map(|p| p.region.clone()).collect();
    regions.insert(cluster.clone());
    let mut restarting = Vec::new();
    for region in &regions {
        if let Some(holder) = restart_lease_holder(&b, fleet, region)
            .await
            .map_err(NotYet::Precondition)?
        {
            restarting.push(holder);
        }
        if fleet.scope == crate::config::schema::LeaseScope::Supercluster {
            break;
        }
    }
    let out = out_of(&live, me, &restarting);
    // Every server of the supercluster answers: a stream with a replica
    // here may have its leader and other replicas in another region (a
    // stream moving between clusters has its peers in both), and its
    // majority is counted wherever they are.
    let wide = super::view::gather_all(&sys, ANSWER_WAIT)
        .await
        .map_err(|e| NotYet::Precondition(e.into()))?;
    rule(me, &groups(me, &meta, &wide), &out).map_err(NotYet::Rule)?;
    let view = wide.of_cluster(&cluster);
    // The preconditions of a planned restart, servers out on purpose
    // excepted.
    let away = out
        .keys()
        .filter(|n| {
            live.nodes
                .get(*n)
                .is_some_and(|r| r.region == settings.region)
        })
        .filter(|n| view.answer(n).is_none())
        .count();
    view.peers_ready(super::region_size(settings).saturating_sub(away))
        .map_err(|e| NotYet::Precondition(e.into()))?;
    view.others_current(me)
        .map_err(|e| NotYet::Precondition(e.into()))?;
    let until = now.saturating_add(u64::try_from(max_down.as_millis()).unwrap_or(u64::MAX));
    let mut next = live;
    next.nodes.insert(
        me.clone(),
        Record {
            region: settings.region.clone(),
            kind,
            why: why.to_owned(),
            since_unix_ms: now,
            expires_unix_ms: until,
        },
    );
    if write(&b.store, &next, revision)
        .await
        .map_err(NotYet::Precondition)?
    {
        tracing::info!(
            kind = kind.noun(),
            until_unix_ms = until,
            "took the maintenance lease"
        );
        Ok(until)
    } else {
        Err(NotYet::Raced)
    }
}

/// Who holds `cluster`'s restart lease (the supercluster's, with one
/// lease for all), as the bucket's stream leader has it: a direct get may
/// be answered by a follower without the latest take. A lease that cannot
/// be read is not "nobody": the caller waits.
async fn restart_lease_holder(
    b: &Bucket,
    fleet: &FleetSettings,
    cluster: &str,
) -> Result<Option<String>, MaintenanceError> {
    let name = match fleet.scope {
        crate::config::schema::LeaseScope::Region => super::lease::bucket_name(cluster),
        crate::config::schema::LeaseScope::Supercluster => {
            super::lease::SUPERCLUSTER_BUCKET.to_owned()
        }
    };
    let js = jetstream::new(b.client.clone());
    super::lease::holder_of(&js, &name)
        .await
        .map(|h| h.map(|h| h.server))
        .map_err(|source| MaintenanceError::RestartLease {
            bucket: name,
            source,
        })
}

/// Another node of this node's region with a live lease, if any (read
/// through `js`, natsmeshd's own account): the restart lease waits for
/// it. Leases that cannot be read are an error, never "nobody": the
/// restart lease waits for them too.
pub async fn out_in_region(
    js: &jetstream::Context,
    settings: &Settings,
) -> Result<Option<String>, MaintenanceError> {
    Ok(first_out(js, |n, r| {
        *n != settings.server.server_name && r.region == settings.region
    })
    .await?
    .map(|(n, r)| format!("{n} ({})", r.kind.noun())))
}

/// The first node with a live lease that `which` picks, read through
/// `js`; nobody where the fleet bucket was never made.
async fn first_out(
    js: &jetstream::Context,
    which: impl Fn(&String, &Record) -> bool,
) -> Result<Option<(String, Record)>, MaintenanceError> {
    let store = match js.get_key_value(super::pause::BUCKET).await {
        Ok(store) => store,
        Err(e) if super::lease::bucket_never_made(&e) => return Ok(None),
        Err(e) => return Err(MaintenanceError::Read(Box::new(e))),
    };
    let (leases, _) = read(&store).await?;
    Ok(leases
        .live(crate::unix_ms(SystemTime::now()))
        .nodes
        .into_iter()
        .find(|(n, r)| which(n, r)))
}

/// One of `nodes` with a live lease (maintenance or drain), if any: a
/// replica elsewhere of a stream hosted here that is out on purpose (or
/// about to be) counts as out. Unreadable leases are an error, as in
/// [`out_in_region`].
pub async fn out_among<'a>(
    js: &jetstream::Context,
    nodes: impl IntoIterator<Item = &'a String>,
) -> Result<Option<String>, MaintenanceError> {
    let nodes: BTreeSet<&String> = nodes.into_iter().collect();
    if nodes.is_empty() {
        return Ok(None);
    }
    Ok(first_out(js, |n, _| nodes.contains(n))
        .await?
        .map(|(n, r)| format!("{n} (region {}, {})", r.region, r.kind.noun())))
}

/// This node's lease, if it holds one.
pub async fn ours(settings: &Settings) -> Result<Option<Record>, MaintenanceError> {
    let Coordination::Lease(fleet) = &settings.fleet else {
        return Ok(None);
    };
    let b = bucket(settings, fleet).await?;
    let (leases, _) = read(&b.store).await?;
    Ok(leases
        .live(crate::unix_ms(SystemTime::now()))
        .nodes
        .remove(&settings.server.server_name))
}

/// Gives this node's lease back (and drops expired ones); whether there
/// was one.
pub async fn release(settings: &Settings) -> Result<bool, MaintenanceError> {
    let Coordination::Lease(fleet) = &settings.fleet else {
        return Ok(false);
    };
    let b = bucket(settings, fleet).await?;
    let me = &settings.server.server_name;
    for _ in 0..10 {
        let (leases, revision) = read(&b.store).await?;
        let mut next = leases.live(crate::unix_ms(SystemTime::now()));
        let had = next.nodes.remove(me).is_some();
        if !had && next == leases {
            return Ok(false);
        }
        if write(&b.store, &next, revision).await? {
            return Ok(had);
        }
    }
    Err(MaintenanceError::KeptChangingOnRelease)
}

/// Gives this node's lease back once its broker serves with JetStream
/// current and no maintenance is kept here: at start, and whenever
/// `wake` is notified (`maintenance stop`, `undrain`). Runs beside the
/// supervisor until aborted.
#[tracing::instrument(name = "fleet", skip_all, fields(task = "settle"))]
pub async fn settle(settings: Settings, mut status: watch::Receiver<Health>, wake: Arc<Notify>) {
    if !matches!(settings.fleet, Coordination::Lease(_)) {
        return;
    }
    // Started in maintenance (same boot): `maintenance stop` gives the
    // lease back itself, and says so; nothing to do before it.
    if matches!(
        at_start(kept(&settings.state_dir), boot_id().as_deref()),
        AtStart::StayDown(_)
    ) {
        wake.notified().await;
    }
    loop {
        // Serving with JetStream current, and not in maintenance.
        let serving = status
            .wait_for(|h| h.ready_and_settled() && h.maintenance.is_none())
            .await
            .is_ok();
        if !serving {
            return;
        }
        let mut tries = 0u32;
        loop {
            match release(&settings).await {
                Ok(true) => {
                    tracing::info!(
                        "back in service with JetStream current: released the maintenance lease"
                    );
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    tries += 1;
                    if tries >= 30 {
                        tracing::warn!(error = %e, "cannot release the maintenance lease; it lapses by itself");
                        break;
                    }
                    tracing::debug!(error = %e, "cannot release the maintenance lease (yet)");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The rule in the words the operator reads (the tests below match
    /// them); its kinds are checked in `the_rule_names_the_group_and_its_numbers`.
    fn rule(me: &str, groups: &[Group], out: &BTreeMap<String, String>) -> Result<(), String> {
        super::rule(me, groups, out).map_err(|e| e.to_string())
    }

    #[test]
    fn the_rule_names_the_group_and_its_numbers() {
        let meta = [group("the JetStream meta group", &["n1", "n2", "n3"], &[])];
        assert_eq!(
            super::rule("n2", &meta, &out(&[("n1", "maintenance")])),
            Err(Refusal::Majority {
                me: "n2".into(),
                what: "the JetStream meta group".into(),
                left: 1,
                members: 3,
                majority: 2,
                already: "n1 (maintenance)".into(),
            })
        );
    }

    fn group(what: &str, members: &[&str], down: &[(&str, &str)]) -> Group {
        Group {
            what: what.into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            down: down
                .iter()
                .map(|(m, w)| ((*m).to_owned(), (*w).to_owned()))
                .collect(),
        }
    }

    fn out(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(m, w)| ((*m).to_owned(), (*w).to_owned()))
            .collect()
    }

    #[test]
    fn a_meta_group_of_three_with_one_out_refuses_a_second() {
        let meta = [group("the JetStream meta group", &["n1", "n2", "n3"], &[])];
        assert_eq!(rule("n2", &meta, &out(&[])), Ok(()));
        assert_eq!(
            rule("n2", &meta, &out(&[("n1", "maintenance")])),
            Err("refused by the majority rule: without n2, the JetStream meta group would keep 1 of its 3 servers, and needs 2; already out: n1 (maintenance)".into())
        );
        // An offline peer counts as out too.
        let offline = [group(
            "the JetStream meta group",
            &["n1", "n2", "n3"],
            &[("n3", "offline")],
        )];
        assert!(
            rule("n2", &offline, &out(&[]))
                .unwrap_err()
                .contains("n3 (offline)")
        );
        // Its own earlier lease does not count against it.
        assert_eq!(rule("n2", &meta, &out(&[("n2", "maintenance")])), Ok(()));
    }

    #[test]
    fn five_servers_spare_two() {
        let meta = [group("meta", &["a", "b", "c", "d", "e"], &[])];
        assert_eq!(rule("b", &meta, &out(&[("a", "drain")])), Ok(()));
        assert!(rule("b", &meta, &out(&[("a", "drain"), ("c", "maintenance")])).is_err());
    }

    #[test]
    fn a_group_without_this_node_or_of_one_is_not_its_concern() {
        let other = [group("stream X", &["n4", "n5", "n6"], &[("n5", "offline")])];
        assert_eq!(rule("n1", &other, &out(&[("n4", "drain")])), Ok(()));
        let lone = [group("meta", &["solo"], &[])];
        assert_eq!(rule("solo", &lone, &out(&[])), Ok(()));
    }

    fn meta3(offline: Option<&str>) -> MetaGroup {
        let peers = ["n1", "n2", "n3"]
            .iter()
            .map(|n| super::super::peers::Peer {
                name: (*n).into(),
                region: Some("fra1".into()),
                state: if Some(*n) == offline {
                    "offline".into()
                } else if *n == "n1" {
                    "leader".into()
                } else {
                    "current".into()
                },
                current: Some(*n) != offline,
                offline: Some(*n) == offline,
                answers: Some(*n) != offline,
                active_ms: None,
                lag: 0,
            })
            .collect();
        MetaGroup {
            leader: "n1".into(),
            cluster_size: 3,
            peers,
            not_in_group: BTreeMap::new(),
        }
    }

    fn answer(name: &str, streams: serde_json::Value) -> super::super::view::Answer {
        serde_json::from_value(serde_json::json!({
            "server": {"name": name, "cluster": "fra1"},
            "data": {
                "meta_cluster": {"leader": "n1"},
                "account_details": [{"name": "APP", "stream_detail": streams}],
            }
        }))
        .unwrap()
    }

    /// A region of n1..n4 with ORDERS (R3 on n1, n2, n3, led by n1, n3
    /// offline as n1 sees it) and LOG (R1 on n2).
    fn region(n3_offline: bool) -> View {
        let orders = |replicas: serde_json::Value| {
            serde_json::json!({
                "name": "ORDERS",
                "config": {"num_replicas": 3},
                "cluster": {"leader": "n1", "replicas": replicas},
            })
        };
        let lead = orders(serde_json::json!([
            {"name": "n2", "current": true},
            {"name": "n3", "current": !n3_offline, "offline": n3_offline},
        ]));
        let follower = orders(serde_json::json!([{"name": "n1", "current": false}]));
        let log = serde_json::json!({
            "name": "LOG",
            "config": {"num_replicas": 1},
            "cluster": {"leader": "n2"},
        });
        View {
            answers: vec![
                answer("n1", serde_json::json!([lead])),
                answer("n2", serde_json::json!([follower.clone(), log])),
                answer("n3", serde_json::json!([follower])),
                answer("n4", serde_json::json!([])),
            ],
        }
    }

    fn meta4() -> MetaGroup {
        let mut m = meta3(None);
        let mut n4 = m.peers[2].clone();
        n4.name = "n4".into();
        m.peers.push(n4);
        m.cluster_size = 4;
        m
    }

    #[test]
    fn an_r3_stream_with_a_replica_here_and_one_offline_refuses() {
        let meta = meta4();
        // Meta group of four with nobody out: it spares one.
        assert_eq!(
            rule("n2", &groups("n2", &meta, &region(false)), &out(&[])),
            Ok(())
        );
        let e = rule("n2", &groups("n2", &meta, &region(true)), &out(&[])).unwrap_err();
        assert!(
            e.contains("stream ORDERS (account APP) would keep 1 of its 3 servers")
                && e.contains("n3 (offline)"),
            "{e}"
        );
        // n4 has no replica of ORDERS: its going out breaks nothing but
        // the meta group's count.
        assert_eq!(
            rule("n4", &groups("n4", &meta, &region(true)), &out(&[])),
            Ok(())
        );
    }

    #[test]
    fn streams_of_fewer_than_three_replicas_are_not_counted() {
        let gs = groups("n2", &meta4(), &region(false));
        let names: Vec<&str> = gs.iter().map(|g| g.what.as_str()).collect();
        assert_eq!(
            names,
            ["the JetStream meta group", "stream ORDERS (account APP)"]
        );
        // LOG (R1, here) is not among them: n2 and n4 both out, ORDERS
        // and the meta group still refuse, but never because of LOG.
        let e = rule("n2", &gs, &out(&[("n1", "maintenance")])).unwrap_err();
        assert!(!e.contains("LOG"), "{e}");
    }

    #[test]
    fn the_meta_groups_offline_peers_count() {
        let gs = groups("n2", &meta3(Some("n3")), &View::default());
        assert_eq!(
            rule("n2", &gs, &out(&[])),
            Err("refused by the majority rule: without n2, the JetStream meta group would keep 1 of its 3 servers, and needs 2; already out: n3 (offline)".into())
        );
    }

    #[test]
    fn a_stream_without_a_leader_counts_its_other_replicas_down() {
        let leaderless = View {
            answers: vec![answer(
                "n2",
                serde_json::json!([{
                    "name": "ORDERS",
                    "config": {"num_replicas": 3},
                    "cluster": {"leader": "", "replicas": [{"name": "n1"}, {"name": "n3"}]},
                }]),
            )],
        };
        let e = rule("n2", &groups("n2", &meta4(), &leaderless), &out(&[])).unwrap_err();
        assert!(e.contains("no leader now"), "{e}");
    }

    #[test]
    fn expired_leases_do_not_count() {
        let rec = |exp| Record {
            region: "fra1".into(),
            kind: Kind::Maintenance,
            why: String::new(),
            since_unix_ms: 0,
            expires_unix_ms: exp,
        };
        let leases = Leases {
            nodes: [("n1".to_owned(), rec(100)), ("n2".to_owned(), rec(300))].into(),
        };
        let live = leases.live(200);
        assert_eq!(live.nodes.keys().collect::<Vec<_>>(), ["n2"]);
    }

    fn meta_of(names: &[&str]) -> MetaGroup {
        let mut m = meta3(None);
        m.peers = names
            .iter()
            .map(|n| {
                let mut p = m.peers[1].clone();
                p.name = (*n).into();
                p
            })
            .collect();
        m.cluster_size = names.len();
        m
    }

    fn answer_in(
        name: &str,
        cluster: &str,
        streams: serde_json::Value,
    ) -> super::super::view::Answer {
        let mut a = answer(name, streams);
        a.server.cluster = cluster.into();
        a
    }

    fn lease(region: &str, kind: Kind) -> Record {
        Record {
            region: region.into(),
            kind,
            why: String::new(),
            since_unix_ms: 0,
            expires_unix_ms: u64::MAX,
        }
    }

    /// DATA: R3 with one replica per region (n1 in fra1, a1 in ams1, s1
    /// in sfo1), led by a1 — as a stream moving between clusters has its
    /// peers in several.
    fn across_regions() -> View {
        let data = |leader: &str, replicas: serde_json::Value| {
            serde_json::json!([{
                "name": "DATA",
                "config": {"num_replicas": 3},
                "cluster": {"leader": leader, "replicas": replicas},
            }])
        };
        View {
            answers: vec![
                answer_in(
                    "a1",
                    "ams1",
                    data(
                        "a1",
                        serde_json::json!([
                            {"name": "n1", "current": true},
                            {"name": "s1", "current": true},
                        ]),
                    ),
                ),
                answer_in(
                    "n1",
                    "fra1",
                    data("a1", serde_json::json!([{"name": "a1"}, {"name": "s1"}])),
                ),
                answer_in("n2", "fra1", serde_json::json!([])),
                answer_in(
                    "s1",
                    "sfo1",
                    data("a1", serde_json::json!([{"name": "a1"}, {"name": "n1"}])),
                ),
            ],
        }
    }

    #[test]
    fn a_stream_across_regions_counts_its_peers_and_leases_wherever_they_are() {
        let meta = meta_of(&["a1", "a2", "a3", "n1", "n2", "n3", "s1", "s2", "s3"]);
        let wide = across_regions();
        let gs = groups("n1", &meta, &wide);
        let data = gs
            .iter()
            .find(|g| g.what.starts_with("stream DATA"))
            .unwrap();
        assert_eq!(
            data.members,
            ["a1", "n1", "s1"].map(str::to_owned).into(),
            "led from ams1, seen from there"
        );
        assert_eq!(rule("n1", &gs, &out(&[])), Ok(()));
        // s1, in another region, is in maintenance: n1 may not go too.
        let live = Leases {
            nodes: [("s1".to_owned(), lease("sfo1", Kind::Maintenance))].into(),
        };
        let e = rule("n1", &gs, &out_of(&live, "n1", &[])).unwrap_err();
        assert!(
            e.contains("stream DATA (account APP) would keep 1 of its 3 servers, and needs 2")
                && e.contains("s1 (maintenance)"),
            "{e}"
        );
        // Nor while ams1's a1 restarts under its region's restart lease.
        let e = rule("n1", &gs, &out_of(&Leases::default(), "n1", &["a1".into()])).unwrap_err();
        assert!(e.contains("a1 (restarting)"), "{e}");
        // n2 holds no replica of DATA: the meta group of nine spares it.
        assert_eq!(
            rule("n2", &groups("n2", &meta, &wide), &out_of(&live, "n2", &[])),
            Ok(())
        );
        // The region's answers alone do not see DATA's leader: the rule
        // would count its other replicas down, which is why every region
        // is asked.
        let local = groups("n1", &meta, &wide.of_cluster("fra1"));
        assert!(
            local
                .iter()
                .any(|g| g.what == "stream DATA (account APP) (no leader now)"),
            "{local:?}"
        );
    }

    #[test]
    fn out_is_every_other_node_with_a_lease_in_any_region() {
        let live = Leases {
            nodes: [
                ("n1".to_owned(), lease("fra1", Kind::Maintenance)),
                ("a2".to_owned(), lease("ams1", Kind::Drain)),
                ("s3".to_owned(), lease("sfo1", Kind::Maintenance)),
            ]
            .into(),
        };
        assert_eq!(
            out_of(&live, "n1", &["n1".into(), "a2".into(), "s1".into()]),
            out(&[("a2", "drain"), ("s1", "restarting"), ("s3", "maintenance")])
        );
    }

    #[test]
    fn a_reboot_waits_for_any_other_maintenance_in_the_supercluster() {
        let mut live = Leases::default();
        assert_eq!(another_in_maintenance(&live, "n1"), None);
        // Its own lease, and another node's drain, do not hold it back
        // (the rule counts the drain).
        live.nodes
            .insert("n1".into(), lease("fra1", Kind::Maintenance));
        live.nodes.insert("a1".into(), lease("ams1", Kind::Drain));
        assert_eq!(another_in_maintenance(&live, "n1"), None);
        live.nodes
            .insert("s2".into(), lease("sfo1", Kind::Maintenance));
        let e = another_in_maintenance(&live, "n1").unwrap();
        assert!(
            e.starts_with("s2 (region sfo1) is in maintenance") && e.contains("one node at a time"),
            "{e}"
        );
    }

    fn marker(boot: Option<&str>) -> Marker {
        Marker {
            why: "kernel".into(),
            boot_id: boot.map(str::to_owned),
            since_unix_ms: 1,
            expires_unix_ms: 2,
            reboot: false,
        }
    }

    #[test]
    fn only_a_new_boot_ends_maintenance_by_itself() {
        assert_eq!(at_start(None, Some("b1")), AtStart::Serve);
        assert_eq!(
            at_start(Some(marker(Some("b1"))), Some("b2")),
            AtStart::Serve
        );
        assert_eq!(
            at_start(Some(marker(Some("b1"))), Some("b1")),
            AtStart::StayDown(marker(Some("b1")))
        );
        // Not known which boot: stay down (the operator's word holds).
        assert!(matches!(
            at_start(Some(marker(None)), Some("b1")),
            AtStart::StayDown(_)
        ));
        assert!(matches!(
            at_start(Some(marker(Some("b1"))), None),
            AtStart::StayDown(_)
        ));
    }

    #[test]
    fn the_marker_is_kept_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kept(dir.path()), None);
        keep(dir.path(), &marker(Some("b1"))).unwrap();
        assert_eq!(kept(dir.path()), Some(marker(Some("b1"))));
        std::fs::write(dir.path().join(MARKER_FILE), "{").unwrap();
        assert!(kept(dir.path()).unwrap().why.contains("unreadable"));
        forget(dir.path()).unwrap();
        forget(dir.path()).unwrap();
        assert_eq!(kept(dir.path()), None);
    }
}
