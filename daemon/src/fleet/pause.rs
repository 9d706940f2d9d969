//! The fleet-wide pause: `natsmeshd fleet pause|resume [--region R]` on any
//! node writes (or deletes) a key in the JetStream key-value bucket
//! [`BUCKET`] in natsmeshd's own account — `pause.all` for the whole
//! supercluster, `pause.<region>` for one region — holding who paused,
//! when and why. Being in JetStream, a pause outlives every natsmeshd and
//! broker restart and is seen by nodes that join later.
//!
//! Every coordinating node runs [`watch`] beside the supervisor: it reads
//! its two keys, follows them, reconnects when its broker restarts, and
//! tells the supervisor which pause holds (if any), which then treats
//! planned restarts as paused. The last word is kept in the state
//! directory, so a natsmeshd that starts while JetStream cannot answer yet
//! holds planned restarts back as the fleet last said. This module writes
//! and reads the bucket only; it never decides a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::FleetSettings;
use crate::config::Settings;

/// A JetStream error of any of the key-value calls (each has its own
/// kind type); kept as the source, shown in its own words.
type NatsError = Box<dyn std::error::Error + Send + Sync>;

/// Why the fleet pause cannot be reached, read or changed.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// This node does not use natsmeshd's JetStream bucket at all.
    #[error(
        "the fleet pause lives in natsmeshd's JetStream bucket, which this node does not use: {0}"
    )]
    Off(String),
    /// natsmeshd's own account user could not connect.
    #[error("cannot reach the fleet bucket: {0}")]
    Reach(#[source] crate::auth::AuthError),
    /// The bucket neither existed nor could be created.
    #[error("cannot create the fleet bucket {BUCKET}: {0}")]
    Create(#[source] NatsError),
    /// The pause record could not be encoded.
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
    /// A key could not be written, read or deleted.
    #[error("cannot {what} {key}: {source}")]
    Key {
        /// `write`, `read` or `delete`.
        what: &'static str,
        /// The key.
        key: String,
        /// Why.
        source: NatsError,
    },
    /// The bucket did not answer in time.
    #[error(
        "the fleet bucket did not answer within {WRITE_WAIT:?} (is JetStream's meta group up?)"
    )]
    Timeout,
    /// The watch of this node's keys could not start.
    #[error("cannot watch the fleet bucket: {0}")]
    Watch(#[source] NatsError),
    /// A reread of this node's keys failed.
    #[error("cannot read the fleet bucket: {0}")]
    Read(#[source] NatsError),
    /// The watch broke off with an error.
    #[error("the fleet bucket's watch failed: {0}")]
    WatchFailed(#[source] NatsError),
    /// The watch ended.
    #[error("the fleet bucket's watch ended")]
    WatchEnded,
}

impl PauseError {
    fn key(
        what: &'static str,
        key: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Key {
            what,
            key: key.to_owned(),
            source: Box::new(e),
        }
    }
}

/// The bucket, one for the supercluster.
pub const BUCKET: &str = "natsmesh-fleet";
/// The key pausing every region.
pub const ALL_KEY: &str = "pause.all";
/// Where the last word is kept, in the state directory.
const CACHE_FILE: &str = "fleet-pause.json";
/// How often the keys are read again besides the watch (a watch that
/// missed an update across a broker restart is caught up by this).
const REREAD: Duration = Duration::from_secs(10);
/// How long a write may take.
const WRITE_WAIT: Duration = Duration::from_secs(10);
/// A record larger than this is not natsmeshd's.
const MAX_RECORD: usize = 1024;

/// What a pause key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The server whose `natsmeshd fleet pause` wrote it.
    pub by: String,
    /// When (Unix milliseconds, that server's clock).
    pub since_unix_ms: u64,
    /// Why, as the operator said.
    pub why: String,
}

/// The pauses that apply to one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pauses {
    /// `pause.all`.
    pub all: Option<Record>,
    /// `pause.<this region>`.
    pub region: Option<Record>,
}

impl Pauses {
    /// Which pause holds, for a person (`None`: none does).
    pub fn holding(&self, region: &str) -> Option<String> {
        let at = |ms: u64| {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        };
        let line = |scope: &str, r: &Record| {
            let why = if r.why.is_empty() {
                String::new()
            } else {
                format!(": {}", r.why)
            };
            format!(
                "fleet pause ({scope}) by {} since {}{why}",
                r.by,
                at(r.since_unix_ms)
            )
        };
        let parts: Vec<String> = [
            self.all.as_ref().map(|r| line("all regions", r)),
            self.region
                .as_ref()
                .map(|r| line(&format!("region {region}"), r)),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The key of a region's pause: KV keys take letters, digits and `-_=/`
/// only (and `.` as a separator, which a region name must not add).
pub fn region_key(region: &str) -> String {
    let safe: String = region
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("pause.{safe}")
}

/// How the bucket is reached from this node (natsmeshd's own account user
/// in accounts mode, `fleet.lease_creds` in operator mode).
#[derive(Debug, Clone)]
pub struct Access {
    settings: Settings,
    fleet: FleetSettings,
}

impl Access {
    /// Access as the settings say; why not when they allow none.
    pub fn new(settings: &Settings) -> Result<Self, PauseError> {
        match &settings.fleet {
            super::Coordination::Lease(f) => Ok(Self {
                settings: settings.clone(),
                fleet: f.clone(),
            }),
            super::Coordination::Off(why) => Err(PauseError::Off(why.to_string())),
        }
    }

    async fn store(&self) -> Result<(async_nats::Client, kv::Store), PauseError> {
        let client = crate::auth::local_client(&self.settings, &self.fleet.login, &self.fleet.user)
            .await
            .map_err(PauseError::Reach)?;
        let js = jetstream::new(client.clone());
        let store = open(&js, super::region_size(&self.settings)).await?;
        Ok((client, store))
    }

    /// Pauses (`Some(why)`) or resumes (`None`) `region`'s planned
    /// restarts, or every region's; what was done, for a person.
    pub async fn set(
        &self,
        region: Option<&str>,
        pause: Option<&str>,
    ) -> Result<String, PauseError> {
        let work = async {
            let (_client, store) = self.store().await?;
            let key = region.map_or_else(|| ALL_KEY.to_owned(), region_key);
            let scope = region.map_or_else(|| "every region".to_owned(), |r| format!("region {r}"));
            match pause {
                Some(why) => {
                    let record = Record {
                        by: self.settings.server.server_name.clone(),
                        since_unix_ms: crate::unix_ms(SystemTime::now()),
                        why: why.to_owned(),
                    };
                    let body = serde_json::to_vec(&record)?;
                    store
                        .put(&key, body.into())
                        .await
                        .map_err(|e| PauseError::key("write", &key, e))?;
                    Ok(format!(
                        "paused planned restarts in {scope} (key {key} in {BUCKET}); `natsmeshd fleet resume{}` lifts it",
                        region.map(|r| format!(" --region {r}")).unwrap_or_default()
                    ))
                }
                None => {
                    let was = store
                        .entry(&key)
                        .await
                        .map_err(|e| PauseError::key("read", &key, e))?
                        .is_some_and(|e| e.operation == kv::Operation::Put);
                    if !was {
                        return Ok(format!("{scope} was not paused"));
                    }
                    store
                        .delete(&key)
                        .await
                        .map_err(|e| PauseError::key("delete", &key, e))?;
                    Ok(format!("resumed planned restarts in {scope}"))
                }
            }
        };
        tokio::time::timeout(WRITE_WAIT, work)
            .await
            .map_err(|_| PauseError::Timeout)?
    }
}

/// Opens the bucket, creating it when missing with up to three replicas
/// in the creating node's region (a pause must survive a server's loss).
pub async fn open(js: &jetstream::Context, region_size: usize) -> Result<kv::Store, PauseError> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: BUCKET.into(),
            description: "natsmesh: fleet-wide pauses of planned restarts".into(),
            history: 1,
            max_value_size: 1024,
            storage: jetstream::stream::StorageType::File,
            num_replicas: region_size.clamp(1, 3),
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another node created it first.
        Err(e) => js
            .get_key_value(BUCKET)
            .await
            .map_err(|_| PauseError::Create(Box::new(e))),
    }
}

fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CACHE_FILE)
}

/// The last word kept in the state directory (none: no pause known).
pub fn cached(state_dir: &Path) -> Pauses {
    std::fs::read(cache_path(state_dir))
        .ok()
        .filter(|b| b.len() <= 4 * MAX_RECORD)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn keep(state_dir: &Path, pauses: &Pauses) {
    let Ok(body) = serde_json::to_vec(pauses) else {
        return;
    };
    if let Err(e) = crate::files::write_atomic(&cache_path(state_dir), &body, 0o600) {
        tracing::warn!(error = %e, "cannot keep the fleet pause in the state directory");
    }
}

fn record(entry: &kv::Entry) -> Option<Record> {
    if entry.operation != kv::Operation::Put || entry.value.len() > MAX_RECORD {
        return None;
    }
    match serde_json::from_slice(&entry.value) {
        Ok(r) => Some(r),
        // A pause someone wrote by hand still holds: better held back
        // than restarted against the operator's word.
        Err(_) => Some(Record {
            by: "?".into(),
            since_unix_ms: 0,
            why: format!("an unreadable record at revision {}", entry.revision),
        }),
    }
}

/// Follows this node's two keys until `tx` has no receiver, sending the
/// pauses that apply (seeded from the state directory).
#[tracing::instrument(name = "fleet", skip_all, fields(task = "pause"))]
pub async fn watch(access: Access, tx: watch::Sender<Pauses>) {
    let state_dir = access.settings.state_dir.clone();
    let all_key = ALL_KEY.to_owned();
    let mine = region_key(&access.settings.region);
    let publish = |p: Pauses| {
        if *tx.borrow() != p {
            if let Some(line) = p.holding(&access.settings.region) {
                tracing::info!(pause = %line, "a fleet pause holds planned restarts back");
            } else {
                tracing::info!("no fleet pause holds any more");
            }
            keep(&state_dir, &p);
            tx.send_replace(p);
        }
    };
    let mut failures = 0u32;
    loop {
        if tx.is_closed() {
            return;
        }
        let outcome: Result<(), PauseError> = async {
            let (_client, store) = access.store().await?;
            let mut changes = store
                .watch("pause.>")
                .await
                .map_err(|e| PauseError::Watch(Box::new(e)))?;
            let mut reread = tokio::time::interval(REREAD);
            loop {
                tokio::select! {
                    _ = reread.tick() => {
                        let read = |key: String| {
                            let store = store.clone();
                            async move {
                                store
                                    .entry(key)
                                    .await
                                    .map(|e| e.as_ref().and_then(record))
                                    .map_err(|e| PauseError::Read(Box::new(e)))
                            }
                        };
                        let all = read(all_key.clone()).await?;
                        let region = read(mine.clone()).await?;
                        failures = 0;
                        publish(Pauses { all, region });
                    }
                    change = changes.next() => {
                        let entry = match change {
                            Some(Ok(e)) => e,
                            Some(Err(e)) => return Err(PauseError::WatchFailed(Box::new(e))),
                            None => return Err(PauseError::WatchEnded),
                        };
                        let mut next = tx.borrow().clone();
                        if entry.key == all_key {
                            next.all = record(&entry);
                        } else if entry.key == mine {
                            next.region = record(&entry);
                        } else {
                            continue;
                        }
                        publish(next);
                    }
                    _ = tx.closed() => return Ok(()),
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            failures += 1;
            // Expected while the broker restarts: quiet until it lasts.
            if failures == 1 || failures.is_multiple_of(60) {
                tracing::debug!(error = %e, "the fleet pause waits for the bucket");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(by: &str, why: &str) -> Record {
        Record {
            by: by.into(),
            since_unix_ms: 1_796_601_600_000,
            why: why.into(),
        }
    }

    #[test]
    fn region_keys_are_one_token() {
        assert_eq!(region_key("fra1"), "pause.fra1");
        assert_eq!(region_key("us.east 1"), "pause.us_east_1");
        assert_eq!(region_key("a>*"), "pause.a__");
    }

    #[test]
    fn holding_names_each_pause_that_applies() {
        let mut p = Pauses::default();
        assert_eq!(p.holding("fra1"), None);
        p.region = Some(rec("n1", "kernel update"));
        assert_eq!(
            p.holding("fra1").as_deref(),
            Some("fleet pause (region fra1) by n1 since 2026-12-07T00:00:00Z: kernel update")
        );
        p.all = Some(rec("n3", ""));
        let both = p.holding("fra1").unwrap();
        assert!(
            both.starts_with("fleet pause (all regions) by n3 since 2026-12-07T00:00:00Z; fleet pause (region fra1) by n1"),
            "{both}"
        );
    }

    #[test]
    fn the_last_word_is_kept_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cached(dir.path()), Pauses::default());
        let p = Pauses {
            all: Some(rec("n2", "freeze")),
            region: None,
        };
        keep(dir.path(), &p);
        assert_eq!(cached(dir.path()), p);
        std::fs::write(cache_path(dir.path()), b"garbage").unwrap();
        assert_eq!(cached(dir.path()), Pauses::default());
    }
}
