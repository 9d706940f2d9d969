//! Discovery through DNS: the region's servers from an SRV record, the
//! list of regions from config or a TXT record, followed over time.
//!
//! Records (the convention natsmesh publishes and reads):
//! - `_nats-route._tcp.<region>.<domain>` SRV: one per server of the
//!   region, target its host name, port its route port;
//! - `<region>.<domain>` A/AAAA: the region's gateway endpoints (read by
//!   nats-server itself, through the system resolver, as the gateway URL);
//! - `_nats-regions.<domain>` TXT: the region names, one record per region
//!   or space-separated (nodes publish theirs, see `publish::regions`) (when
//!   `discovery.regions` is not set).
//!
//! Routes are rendered by address (sorted, each `host:port` once, this
//! server included), so every node renders the same list and a custom
//! nameserver works although nats-server uses the system resolver. A failed
//! lookup (timeout, SERVFAIL, NXDOMAIN, empty) keeps the last good set; a
//! bad record (port 0, a target that does not resolve, too many records)
//! is skipped with a warning naming it.

use std::collections::BTreeSet;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::RData;
use natsmesh_broker::model::HostPort;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;
use tokio::time::Instant;

pub use crate::config::settings::discovery::DiscoverySettings;

/// What one lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Every route of the region, this server's included, sorted, unique.
    pub routes: Vec<HostPort>,
    /// The regions from the TXT record, sorted (when looked up).
    pub regions: Option<Vec<String>>,
    /// Each leafnode hub record's addresses, sorted (as `leaf_records`).
    pub leaves: Vec<Vec<HostPort>>,
}

/// Why a lookup gave nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS lookup of {name} failed: {why}")]
pub struct LookupError {
    /// The name asked.
    pub name: String,
    /// Why.
    pub why: String,
    /// How long the server said the absence holds (an NXDOMAIN or empty
    /// answer's negative TTL, from its SOA).
    pub negative_ttl: Option<Duration>,
    /// The name has no such records (NXDOMAIN or an empty answer), as
    /// opposed to a server that did not answer.
    pub absent: bool,
}

/// The negative TTL of a "no records" answer, if the server gave one.
fn negative_ttl(e: &NetError) -> Option<Duration> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(none)) => {
            none.negative_ttl.map(|t| Duration::from_secs(u64::from(t)))
        }
        _ => None,
    }
}

/// How long to wait after `failures` failed lookups in a row: the
/// negative TTL when the server gave one, else a doubling backoff from
/// twice the shortest refresh; always within the refresh bounds. No
/// jitter: the lookups of a region's nodes are spread by their TTLs.
pub fn retry_wait(
    s: &DiscoverySettings,
    failures: u32,
    negative_ttl: Option<Duration>,
) -> Duration {
    crate::backoff::Backoff {
        first: s.min_refresh.saturating_mul(2),
        max: s.max_refresh,
        hint_max: s.max_refresh,
        jitter: Duration::ZERO,
    }
    .wait(failures, negative_ttl)
    .clamp(s.min_refresh, s.max_refresh.max(s.min_refresh))
}

/// A resolver and what to ask it.
#[derive(Debug, Clone)]
pub struct Discovery {
    resolver: TokioResolver,
    settings: DiscoverySettings,
    /// The regions of the last TXT answer, kept while the record is absent.
    last_regions: Arc<std::sync::Mutex<Option<Vec<String>>>>,
    /// The record's absence was logged (once per absence, not per lookup).
    regions_absent: Arc<std::sync::atomic::AtomicBool>,
}

/// Why discovery cannot give a start its first answer.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The system's resolver configuration could not be read.
    #[error("system resolver: {0}")]
    SystemResolver(#[source] NetError),
    /// The resolver could not be built.
    #[error("resolver: {0}")]
    Resolver(#[source] NetError),
    /// Too few of the region's servers in DNS before JetStream's first start.
    #[error(
        "JetStream's first start fixes its group size for good: found {found} of the {expect} servers discovery.bootstrap_expect asks for within {timeout:?}; not starting"
    )]
    TooFewPeers {
        /// Servers found at the deadline.
        found: usize,
        /// `discovery.bootstrap_expect`.
        expect: usize,
        /// `discovery.bootstrap_timeout`.
        timeout: Duration,
    },
}

impl Discovery {
    /// A resolver for `settings` (custom nameservers, or the system's).
    pub fn new(settings: DiscoverySettings) -> Result<Self, StartError> {
        let mut opts = ResolverOpts::default();
        // natsmesh schedules its own lookups from the TTLs: no cache.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let builder = if settings.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(StartError::SystemResolver)?
        } else {
            let mut config = ResolverConfig::default();
            for ns in &settings.nameservers {
                let mut udp = ConnectionConfig::udp();
                udp.port = ns.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = ns.port();
                config.add_name_server(NameServerConfig::new(ns.ip(), true, vec![udp, tcp]));
            }
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        };
        let resolver = builder
            .with_options(opts)
            .build()
            .map_err(StartError::Resolver)?;
        Ok(Self {
            resolver,
            settings,
            last_regions: Arc::default(),
            regions_absent: Arc::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &DiscoverySettings {
        &self.settings
    }

    /// One lookup: the routes (and regions, and leafnode hubs), and how
    /// long the answer holds (the shortest TTL seen, within the bounds).
    pub async fn lookup(&self) -> Result<(Found, Duration), LookupError> {
        let s = &self.settings;
        let now = Instant::now();
        let mut ttl = s.max_refresh;
        let mut routes = BTreeSet::new();
        if let Some(record) = &s.route_record {
            let (found, valid) = self.srv_addresses(record, "route", now).await?;
            ttl = ttl.min(valid);
            routes.extend(found);
            routes.extend(s.own_route.clone());
        }
        let regions = match &s.regions_record {
            None => None,
            Some(name) => self.regions_or_last(name, now, &mut ttl).await?,
        };
        let mut leaves = Vec::new();
        for record in &s.leaf_records {
            let (found, valid) = self.srv_addresses(record, "leafnode", now).await?;
            ttl = ttl.min(valid);
            leaves.push(found.into_iter().collect());
        }
        Ok((
            Found {
                routes: routes.into_iter().collect(),
                regions,
                leaves,
            },
            ttl.clamp(s.min_refresh, s.max_refresh),
        ))
    }

    /// The addresses an SRV record names (each target resolved, bad
    /// records skipped with a warning), and how long they hold.
    async fn srv_addresses(
        &self,
        record: &str,
        kind: &str,
        now: Instant,
    ) -> Result<(BTreeSet<HostPort>, Duration), LookupError> {
        let s = &self.settings;
        let srv = self
            .resolver
            .srv_lookup(record)
            .await
            .map_err(|e| lookup_error(record, &e))?;
        let mut ttl = srv.valid_until().saturating_duration_since(now.into_std());
        let mut records: Vec<(String, u16)> = srv
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some((srv.target.to_utf8(), srv.port)),
                _ => None,
            })
            .collect();
        // Sorted, so that a capped list is the same on every node.
        records.sort();
        records.dedup();
        if records.len() > s.max_records {
            tracing::warn!(
                %record,
                count = records.len(),
                "too many {kind} records; using the first {}",
                s.max_records
            );
            records.truncate(s.max_records);
        }
        let mut found = BTreeSet::new();
        for (target, port) in records {
            if port == 0 {
                tracing::warn!(%record, %target, "SRV record with port 0 ignored");
                continue;
            }
            match self.resolver.lookup_ip(target.as_str()).await {
                Ok(ips) => {
                    ttl = ttl.min(ips.valid_until().saturating_duration_since(now.into_std()));
                    found.extend(ips.iter().map(|ip| HostPort::from_ip(ip, port)));
                }
                Err(e) => {
                    tracing::warn!(%record, %target, error = %e, "SRV target does not resolve; ignored");
                }
            }
        }
        if found.is_empty() {
            // Nothing usable is a failed lookup: the last good set stays.
            return Err(LookupError {
                name: record.to_owned(),
                why: format!("no usable {kind} records"),
                negative_ttl: None,
                absent: false,
            });
        }
        Ok((found, ttl))
    }

    /// The regions record's answer; while the record does not exist (a
    /// zone that is still empty, the first region's first servers), the
    /// last answer it gave, or none: routes never wait for it, and gateways
    /// stay as configured until it appears.
    async fn regions_or_last(
        &self,
        name: &str,
        now: Instant,
        ttl: &mut Duration,
    ) -> Result<Option<Vec<String>>, LookupError> {
        let last = || {
            self.last_regions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        match self.regions(name, now).await {
            Ok((regions, valid)) => {
                *ttl = (*ttl).min(valid);
                *self
                    .last_regions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(regions.clone());
                self.regions_absent.store(false, Ordering::Relaxed);
                Ok(Some(regions))
            }
            Err(e) if e.absent => {
                let kept = last();
                if !self.regions_absent.swap(true, Ordering::Relaxed) {
                    tracing::warn!(record = %name, kept = ?kept, "no regions record (TXT): gateways stay as configured, or as it last said, until it appears");
                }
                if let Some(t) = e.negative_ttl {
                    *ttl = (*ttl).min(t);
                }
                Ok(kept)
            }
            Err(e) => Err(e),
        }
    }

    /// The region names a TXT record lists (space-separated, any number of
    /// strings), sorted; anything not a region label is skipped.
    async fn regions(
        &self,
        name: &str,
        now: Instant,
    ) -> Result<(Vec<String>, Duration), LookupError> {
        let txt = self
            .resolver
            .txt_lookup(name)
            .await
            .map_err(|e| lookup_error(name, &e))?;
        let ttl = txt.valid_until().saturating_duration_since(now.into_std());
        let mut regions: Vec<String> = txt
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(t),
                _ => None,
            })
            .flat_map(|t| {
                t.txt_data
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .flat_map(|t| t.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|r| {
                let ok = crate::config::validate::is_region_label(r);
                if !ok {
                    tracing::warn!(record = %name, region = %r, "not a region label; ignored");
                }
                ok
            })
            .collect();
        regions.sort();
        regions.dedup();
        Ok((regions, ttl))
    }

    /// The answer to use when the routes did not answer at start: the
    /// seeds, and the regions when their record answers. A new region's
    /// first server finds no route record of its own (it publishes one
    /// once it serves), yet must know the other regions now: its gateways
    /// are rendered at start and change only with a restart.
    pub async fn seeds_and_regions(&self) -> Found {
        let mut found = self.seeds();
        if let Some(name) = &self.settings.regions_record {
            let mut ttl = self.settings.max_refresh;
            match self.regions_or_last(name, Instant::now(), &mut ttl).await {
                Ok(regions) => found.regions = regions,
                Err(e) => tracing::warn!(error = %e, "no regions record at start either"),
            }
        }
        found
    }

    /// The answer to use before DNS has answered: this server and the
    /// seeds; no leafnode hubs yet.
    pub fn seeds(&self) -> Found {
        let s = &self.settings;
        let mut routes = BTreeSet::new();
        if s.route_record.is_some() {
            routes.extend(s.seeds.iter().cloned());
            routes.extend(s.own_route.clone());
        }
        Found {
            routes: routes.into_iter().collect(),
            regions: None,
            leaves: vec![Vec::new(); s.leaf_records.len()],
        }
    }
}

fn lookup_error(name: &str, e: &NetError) -> LookupError {
    LookupError {
        name: name.to_owned(),
        why: e.to_string(),
        negative_ttl: negative_ttl(e),
        absent: matches!(e, NetError::Dns(DnsError::NoRecordsFound(_))),
    }
}

/// How following DNS goes, for `/metrics`; written by [`follow`].
#[derive(Debug, Default)]
pub struct Health {
    /// When a lookup last answered (Unix milliseconds; 0: not yet).
    pub last_ok_unix_ms: AtomicU64,
    /// Lookups that gave nothing usable.
    pub failures: AtomicU64,
    /// Routes in the last good answer (this server's included).
    pub routes: AtomicU64,
    /// Regions in the last good TXT answer (0: regions come from the
    /// configuration).
    pub regions: AtomicU64,
}

impl Health {
    fn record(&self, found: &Found) {
        self.last_ok_unix_ms.store(
            crate::unix_ms(std::time::SystemTime::now()),
            Ordering::Relaxed,
        );
        self.routes
            .store(found.routes.len() as u64, Ordering::Relaxed);
        self.regions.store(
            found.regions.as_ref().map_or(0, |r| r.len() as u64),
            Ordering::Relaxed,
        );
    }
}

/// Follows DNS: looks up again when the answer's TTL runs out (within the
/// bounds), publishes a changed answer, keeps the last good one through
/// failures (retried with backoff).
#[tracing::instrument(name = "discovery", skip_all)]
pub async fn follow(discovery: Discovery, tx: watch::Sender<Found>, health: Arc<Health>) {
    let s = discovery.settings().clone();
    let mut failures = 0u32;
    loop {
        let wait = match discovery.lookup().await {
            Ok((found, refresh)) => {
                failures = 0;
                health.record(&found);
                tx.send_if_modified(|current| {
                    if *current == found {
                        false
                    } else {
                        tracing::info!(routes = ?found.routes.iter().map(ToString::to_string).collect::<Vec<_>>(), regions = ?found.regions, "DNS answer changed");
                        *current = found;
                        true
                    }
                });
                refresh
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                health.failures.fetch_add(1, Ordering::Relaxed);
                let wait = retry_wait(&s, failures, e.negative_ttl);
                tracing::warn!(error = %e, retry_in = ?wait, "DNS lookup failed; keeping the last good peers");
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Waits until discovery finds at least `expect` servers in the region
/// (this one included), or `timeout` passes.
pub async fn wait_for_peers(
    discovery: &Discovery,
    expect: usize,
    timeout: Duration,
) -> Result<Found, StartError> {
    let deadline = Instant::now() + timeout;
    let mut last = 0;
    loop {
        match discovery.lookup().await {
            Ok((found, _)) if found.routes.len() >= expect => return Ok(found),
            Ok((found, _)) => last = found.routes.len(),
            Err(e) => tracing::warn!(error = %e, "waiting for peers"),
        }
        if Instant::now() >= deadline {
            return Err(StartError::TooFewPeers {
                found: last,
                expect,
                timeout,
            });
        }
        tracing::info!(
            found = last,
            expect,
            "waiting for the region's servers before JetStream's first start"
        );
        tokio::time::sleep(discovery.settings().min_refresh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DiscoverySettings {
        DiscoverySettings {
            domain: "nats.test".into(),
            region: "fra1".into(),
            route_record: Some("_nats-route._tcp.fra1.nats.test".into()),
            regions_record: None,
            nameservers: Vec::new(),
            min_refresh: Duration::from_secs(5),
            max_refresh: Duration::from_secs(60),
            seeds: Vec::new(),
            max_records: 64,
            own_route: Some(HostPort::parse("10.0.0.1:6222").unwrap()),
            leaf_records: Vec::new(),
            leaf_remotes: Vec::new(),
        }
    }

    #[test]
    fn failures_back_off_within_the_bounds() {
        let s = settings();
        let waits: Vec<_> = (1..=6).map(|f| retry_wait(&s, f, None).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60, 60]);
        assert_eq!(retry_wait(&s, u32::MAX, None), s.max_refresh);
    }

    #[test]
    fn a_negative_ttl_sets_the_retry_within_the_bounds() {
        let s = settings();
        let ttl = |t| retry_wait(&s, 1, Some(Duration::from_secs(t)));
        assert_eq!(ttl(30), Duration::from_secs(30));
        assert_eq!(ttl(1), s.min_refresh);
        assert_eq!(ttl(86_400), s.max_refresh);
    }

    #[test]
    fn seeds_include_this_server_once() {
        let mut s = settings();
        s.seeds = vec![
            HostPort::parse("10.0.0.2:6222").unwrap(),
            HostPort::parse("10.0.0.1:6222").unwrap(),
        ];
        let found = Discovery::new(s).unwrap().seeds();
        let routes: Vec<_> = found.routes.iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.0.0.1:6222", "10.0.0.2:6222"]);
    }
}
