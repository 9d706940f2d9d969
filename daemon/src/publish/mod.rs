//! DNS self-publication: a node writes its own discovery records while it
//! serves and removes them before it drains, so no operator edits DNS.
//!
//! The publisher task follows the supervisor's status: `ready` means the
//! records should exist, anything else means they should not. Each change
//! is a reconciliation against what the DNS provider lists now: records are
//! this node's when their content says so (its own host name, or a record
//! it remembers publishing), so a peer's records are never touched and a
//! crashed node's stale records are repaired rather than duplicated.
//! Provider trouble is retried with backoff and never reaches supervision;
//! the only coupling is a bounded wait for the withdrawal before lame duck.
//!
//! Where the records live is a [`DnsZone`]: a cloud's DNS API
//! (`provider::<cloud>::dns`) or an RFC 2136 server (`rfc2136`, here: it is
//! no cloud). The loop, its backoff and its reports are the ones balancer
//! membership uses too (`reconcile`).

pub use crate::config::settings::record;
pub mod regions;
pub mod rfc2136;
pub(crate) use crate::secret;
mod state;

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use crate::config::settings::publish::{BackendSettings, PublishSettings};
pub use record::{Data, Record};

use crate::health::{Announced, Health};
use crate::provider::DnsZone;
pub use crate::provider::dns::{Present, Provider, PublishError};
use crate::reconcile::{self, Announcer, Backoff, Next, Phase, Reconciler, Retry, Turn, Word};

impl BackendSettings {
    /// A name for logs: `rfc2136 127.0.0.1:53`, `digitalocean`.
    pub fn describe(&self) -> String {
        match self {
            Self::Rfc2136 { server, .. } => format!("rfc2136 {server}"),
            Self::Api { provider, .. } => provider.to_string(),
        }
    }
}

/// The DNS backend of this node's settings: the configured cloud's DNS
/// API, or an RFC 2136 server.
pub type Backend = Box<dyn DnsZone>;

/// A backend for these settings (nothing is contacted yet).
pub fn backend(s: &PublishSettings) -> Result<Backend, PublishError> {
    backend_in_zone(s, &s.zone)
}

/// The same backend for another zone.
pub fn backend_in_zone(s: &PublishSettings, zone: &str) -> Result<Backend, PublishError> {
    Ok(match &s.backend {
        BackendSettings::Rfc2136 {
            server,
            key_name,
            algorithm,
            secret_file,
        } => Box::new(rfc2136::Rfc2136::new(
            *server,
            key_name,
            algorithm,
            secret_file.clone(),
            zone,
        )),
        BackendSettings::Api {
            provider,
            url,
            token_file,
        } => crate::provider::dns_zone(*provider, url, token_file.clone(), zone)?,
    })
}

/// What a reconciliation changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Wanted and missing.
    pub add: Vec<Record>,
    /// This node's, and not wanted (or a duplicate of a wanted one).
    pub remove: Vec<Present>,
}

/// Compares what is wanted with what the provider lists. A listed record
/// is this node's when it sits at `host`, names `host` as SRV target, or
/// is `remembered` from an earlier run; anything else belongs to a peer
/// and is left alone, even when it is identical to a wanted one (two nodes
/// on one address is a configuration the operator must see, not a record
/// natsmesh should fight over).
pub fn plan(
    want: &[Record],
    present: &[Present],
    host: &str,
    remembered: &BTreeSet<Record>,
) -> Plan {
    let ours = |r: &Record| {
        r.name == host
            || matches!(&r.data, Data::Srv { target, .. } if target == host)
            || remembered.contains(r)
            || want.contains(r)
    };
    let mut seen: BTreeSet<&Record> = BTreeSet::new();
    let mut plan = Plan::default();
    for p in present {
        if want.contains(&p.record) {
            if !seen.insert(&p.record) {
                // A duplicate (an API that keeps identical records apart).
                plan.remove.push(p.clone());
            }
        } else if ours(&p.record) {
            plan.remove.push(p.clone());
        }
    }
    plan.add = want.iter().filter(|r| !seen.contains(r)).cloned().collect();
    plan
}

/// Brings the provider to `want` (empty: withdraw). Returns what changed.
pub async fn sync(
    backend: &mut Backend,
    s: &PublishSettings,
    want: &[Record],
) -> Result<Plan, PublishError> {
    let remembered = state::load(&s.state_file);
    let names: BTreeSet<String> = want
        .iter()
        .chain(remembered.iter())
        .chain(s.records.iter())
        .map(|r| r.name.clone())
        .collect();
    let present = backend.list(&names).await?;
    let plan = plan(want, &present, &s.host, &remembered);
    if plan.add.is_empty() && plan.remove.is_empty() {
        state::save(&s.state_file, want);
        return Ok(plan);
    }
    // Remember everything that may exist until this pass has finished, so
    // a crash half-way leaves nothing unknown behind.
    let mut may_exist = remembered.clone();
    may_exist.extend(want.iter().cloned());
    may_exist.extend(plan.remove.iter().map(|p| p.record.clone()));
    state::save(&s.state_file, &may_exist.into_iter().collect::<Vec<_>>());
    for p in &plan.remove {
        backend.remove(p).await?;
    }
    for r in &plan.add {
        backend.add(r, s.ttl).await?;
    }
    state::save(&s.state_file, want);
    Ok(plan)
}

impl PublishSettings {
    /// The route records alone (the SRV record and this host's address),
    /// without the region's gateway address.
    pub fn route_records(&self) -> Vec<Record> {
        self.records
            .iter()
            .filter(|r| matches!(r.data, Data::Srv { .. }) || r.name == self.host)
            .cloned()
            .collect()
    }
}

/// While JetStream's first start waits for the region's servers to appear
/// in DNS, each of them must appear: this node's route records go up now
/// (retried until they are), though it serves nothing yet. Nothing sends
/// clients by these records; the gateway address waits for serving. The
/// publisher takes over once the broker runs.
#[tracing::instrument(name = "publish", skip_all, fields(task = "bootstrap"))]
pub async fn announce_for_bootstrap(s: PublishSettings) {
    let want = s.route_records();
    let mut retry = Retry::new(BACKOFF);
    loop {
        let pass = async {
            let mut backend = backend(&s)?;
            sync(&mut backend, &s, &want).await
        };
        match pass.await {
            Ok(plan) => {
                log_change(&s.backend.describe(), true, &plan, retry.failures());
                return;
            }
            Err(e) => {
                let wait = retry.failed(e.retry_after);
                tracing::warn!(
                    backend = %s.backend.describe(),
                    error = %e,
                    retry_in = ?wait,
                    "cannot announce this node for JetStream's first start; its peers will not count it until this works"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Before the first DNS lookup: takes away whatever this node left behind
/// (a crash skips the withdrawal), so discovery never hands the broker a
/// route to this node's own stale address. Bounded by the withdrawal
/// timeout; a failure is logged and start goes on.
pub async fn reconcile_at_start(s: &PublishSettings) {
    let pass = async {
        let mut backend = backend(s)?;
        sync(&mut backend, s, &[]).await
    };
    match tokio::time::timeout(s.withdraw_timeout, pass).await {
        Ok(Ok(plan)) if !plan.remove.is_empty() => {
            log_change(&s.backend.describe(), false, &plan, 0);
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(
            backend = %s.backend.describe(),
            error = %e,
            "cannot check this node's DNS records at start; stale ones may remain until the next pass"
        ),
        Err(_) => tracing::warn!(
            backend = %s.backend.describe(),
            "checking this node's DNS records at start timed out; going on"
        ),
    }
}

/// After a pass that reached `target`: a serving node makes sure its
/// region is in the regions record; a decommissioned one that withdrew
/// takes the region out when it was the region's last. A failure is
/// logged and tried again at the next pass (verification included).
async fn keep_region_listed(
    routes: &mut Backend,
    regions_backend: &mut Backend,
    l: &regions::RegionListing,
    target: Target,
    ttl: u32,
) {
    let done = match target {
        Target::All => regions::list(regions_backend, l, ttl).await.map(|added| {
            if added {
                tracing::info!(record = %l.record, "region listed in the regions record");
            }
        }),
        Target::Nothing => regions::delist_if_last(routes, regions_backend, l)
            .await
            .map(|removed| {
                if removed > 0 {
                    tracing::info!(record = %l.record, "the region's last node left: region taken out of the regions record");
                }
            }),
        Target::Routes => Ok(()),
    };
    if let Err(e) = done {
        tracing::warn!(record = %l.record, error = %e, "cannot keep the regions record; retried at the next pass");
    }
}

/// Retry waits: 1 s doubling to 60 s, or what a rate limit asked for
/// (at most 15 minutes).
pub const BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(60),
    hint_max: Duration::from_secs(900),
    jitter: Duration::from_millis(250),
};

/// What should be in DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Nothing of this node's.
    Nothing,
    /// Only the route records: JetStream's first start, announced while
    /// waiting for the region and kept until this node first serves, so
    /// peers still counting do not lose it.
    Routes,
    /// Everything: this node serves.
    All,
}

/// Follows the supervisor's health until it ends. `up` is true from the
/// moment records may exist until a withdrawal has succeeded; a stop waits
/// (bounded) for it to turn false before lame duck. `bootstrapped`: this
/// node announced its route records for JetStream's first start.
#[tracing::instrument(name = "publish", skip_all)]
pub async fn follow(
    s: PublishSettings,
    status: watch::Receiver<Health>,
    up: watch::Sender<Announced>,
    bootstrapped: bool,
) {
    let up = Announcer::new(up);
    let backend = match backend(&s) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "DNS publication cannot start; records stay as they are");
            up.say(
                false,
                None,
                Word::Trouble(format!("publication cannot start: {e}")),
            );
            // Kept open, so `status` keeps the reason (a closed channel
            // reads as "nothing to say").
            return std::future::pending().await;
        }
    };
    let backend_name = s.backend.describe();
    let regions_backend = match s.regions.as_ref().map(|l| backend_in_zone(&s, &l.zone)) {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            tracing::error!(error = %e, "the regions record cannot be kept; list this region by hand");
            None
        }
        None => None,
    };
    if bootstrapped {
        up.say(
            true,
            None,
            Word::Fine(format!(
                "route records announced for JetStream's first start ({backend_name})"
            )),
        );
    }
    let publication = Publication {
        routes: s.route_records(),
        s,
        up,
        backend,
        regions_backend,
        backend_name,
        bootstrapped,
        served: false,
        achieved: bootstrapped.then_some(Target::Routes),
        failed: None,
        verify_at: None,
    };
    reconcile::follow(status, publication, BACKOFF).await;
}

/// Publication's own side of the reconcile loop.
struct Publication {
    s: PublishSettings,
    up: Announcer,
    backend: Backend,
    regions_backend: Option<Backend>,
    backend_name: String,
    routes: Vec<Record>,
    bootstrapped: bool,
    served: bool,
    /// What the provider was last brought to (None: not known yet).
    achieved: Option<Target>,
    /// The target of the failed attempt, and whether the provider itself
    /// asked for the wait (a rate limit binds whatever comes next; a plain
    /// backoff does not delay a different target, e.g. a stop's withdrawal).
    failed: Option<(Target, bool)>,
    verify_at: Option<Instant>,
}

impl Reconciler for Publication {
    async fn turn(&mut self, t: Turn, retry: &mut Retry) -> Next {
        self.served |= t.phase == Phase::Serving;
        let target = match t.phase {
            Phase::Serving => Target::All,
            Phase::Starting if self.bootstrapped && !self.served => Target::Routes,
            _ => Target::Nothing,
        };
        let now = t.now;
        if self.verify_at.is_some_and(|v| now >= v) {
            self.verify_at = None;
            self.achieved = None;
        }
        if self
            .failed
            .is_some_and(|(f, hinted)| f != target && !hinted)
        {
            retry.due_now();
        }
        if self.achieved != Some(target) && retry.due(now) {
            self.pass(target, retry).await;
            return Next::Again;
        }
        let wake = [
            retry.at().filter(|_| self.achieved != Some(target)),
            self.verify_at,
        ]
        .into_iter()
        .flatten()
        .min();
        Next::Wait(wake)
    }
}

impl Publication {
    /// One attempt to bring the provider to `target`.
    async fn pass(&mut self, target: Target, retry: &mut Retry) {
        let (s, backend_name) = (&self.s, self.backend_name.as_str());
        if target != Target::Nothing && !self.up.up() {
            self.up.say(
                true,
                None,
                Word::Fine(format!("publishing via {backend_name}")),
            );
        }
        let want: &[Record] = match target {
            Target::Nothing => &[],
            Target::Routes => &self.routes,
            Target::All => &s.records,
        };
        let publishing = target != Target::Nothing;
        match sync(&mut self.backend, s, want).await {
            Ok(plan) => {
                let failures = retry.failures();
                if failures > 0 || !plan.add.is_empty() || !plan.remove.is_empty() {
                    log_change(backend_name, publishing, &plan, failures);
                }
                self.achieved = Some(target);
                retry.succeeded();
                self.failed = None;
                self.verify_at = publishing.then(|| Instant::now() + s.verify_every);
                if let (Some(l), Some(rb)) = (&s.regions, self.regions_backend.as_mut()) {
                    keep_region_listed(&mut self.backend, rb, l, target, s.ttl).await;
                }
                let line = match target {
                    Target::Nothing => format!("no records (withdrawn) via {backend_name}"),
                    Target::Routes => {
                        format!("{} route records announced via {backend_name}", want.len())
                    }
                    Target::All => format!(
                        "{} records published via {backend_name}, ttl {}s",
                        want.len(),
                        s.ttl
                    ),
                };
                self.up.say(publishing, None, Word::Fine(line));
            }
            Err(e) => {
                let wait = retry.failed(e.retry_after);
                let failures = retry.failures();
                tracing::warn!(
                    backend = %backend_name,
                    error = %e,
                    attempt = failures,
                    retry_in = ?wait,
                    "DNS {} failed; supervision goes on and this is retried",
                    if publishing { "publication" } else { "withdrawal" }
                );
                self.failed = Some((target, e.retry_after.is_some()));
                self.up.say(
                    self.up.up(),
                    None,
                    Word::Trouble(format!(
                        "{} failing via {backend_name} (attempt {failures}, retry in {}s): {e}",
                        if publishing {
                            "publication"
                        } else {
                            "withdrawal"
                        },
                        wait.as_secs()
                    )),
                );
            }
        }
    }
}

fn log_change(backend: &str, serving: bool, plan: &Plan, failures: u32) {
    let added: Vec<String> = plan.add.iter().map(Record::to_string).collect();
    let removed: Vec<String> = plan.remove.iter().map(|p| p.record.to_string()).collect();
    tracing::info!(
        backend,
        added = ?added,
        removed = ?removed,
        after_failures = failures,
        "{}",
        if serving {
            "DNS records published"
        } else {
            "DNS records withdrawn"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: &str, ip: &str) -> Record {
        Record::address(
            name,
            ip.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
        )
    }

    fn present(r: &Record, id: &str) -> Present {
        Present {
            record: r.clone(),
            id: id.into(),
        }
    }

    const HOST: &str = "n1.fra1.example.net";

    #[test]
    fn adds_what_is_missing_and_leaves_peers_alone() {
        let srv = Record::srv("_nats-route._tcp.fra1.example.net", 6222, HOST);
        let peer = Record::srv(
            "_nats-route._tcp.fra1.example.net",
            6222,
            "n2.fra1.example.net",
        );
        let want = vec![srv.clone(), a(HOST, "10.0.0.1")];
        let p = plan(&want, &[present(&peer, "7")], HOST, &BTreeSet::new());
        assert_eq!(p.add, want);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn repairs_a_stale_address_and_a_duplicate() {
        let want = vec![a(HOST, "10.0.0.1")];
        let listed = [
            present(&a(HOST, "10.0.0.9"), "1"),
            present(&a(HOST, "10.0.0.1"), "2"),
            present(&a(HOST, "10.0.0.1"), "3"),
        ];
        let p = plan(&want, &listed, HOST, &BTreeSet::new());
        assert!(p.add.is_empty());
        let ids: Vec<&str> = p.remove.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["1", "3"]);
    }

    #[test]
    fn withdraws_only_its_own_shared_name_records() {
        // Gateway addresses share the region's name with the peers': only
        // the remembered one is this node's.
        let mine = a("fra1.example.net", "203.0.113.1");
        let theirs = a("fra1.example.net", "203.0.113.2");
        let remembered: BTreeSet<Record> = [mine.clone()].into();
        let listed = [present(&mine, "1"), present(&theirs, "2")];
        let p = plan(&[], &listed, HOST, &remembered);
        assert_eq!(p.remove, vec![present(&mine, "1")]);
        assert!(p.add.is_empty());
    }

    #[test]
    fn retry_waits_grow_and_honour_rate_limits() {
        assert!(BACKOFF.wait(1, None) < Duration::from_millis(1300));
        assert!(BACKOFF.wait(3, None) >= Duration::from_secs(4));
        assert!(BACKOFF.wait(30, None) <= Duration::from_millis(60_250));
        assert!(BACKOFF.wait(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        assert!(BACKOFF.wait(1, Some(Duration::from_secs(3600))) <= Duration::from_millis(900_250));
    }
}
