//! The region's restart lease: one key in a JetStream key-value bucket
//! placed in the region's own cluster. Whoever creates the key holds the
//! lease; the bucket's `max_age` is the lease's expiry, so a holder that
//! dies frees it without anyone's help, and a live holder renews it by
//! rewriting the key (compare-and-set on its revision).

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

const KEY: &str = "holder";

/// A JetStream error of any of the key-value calls (each has its own
/// kind type); kept as the source, shown in its own words.
type NatsError = Box<dyn std::error::Error + Send + Sync>;

/// Why the restart lease could not be read, taken, renewed or given back.
/// Every kind is worth another try later: the lease lives in JetStream,
/// which comes and goes with the brokers.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The bucket neither existed nor could be created.
    #[error("cannot create the restart lease bucket {name}: {source}")]
    Bucket {
        /// The bucket.
        name: String,
        /// Why the creation failed.
        source: NatsError,
    },
    /// The holder record could not be encoded.
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
    /// Taking the lease: the key could not be created, read or updated.
    #[error("restart lease: {0}")]
    Take(#[source] NatsError),
    /// Renewing, releasing or reading the key failed.
    #[error("{0}")]
    Kv(#[source] NatsError),
    /// The holder record is there but cannot be read: someone holds the
    /// lease, nobody can tell who.
    #[error("the restart lease's record is unreadable: {0}")]
    Unreadable(#[source] serde_json::Error),
}

fn take_failed(e: impl std::error::Error + Send + Sync + 'static) -> LeaseError {
    LeaseError::Take(Box::new(e))
}

fn kv_failed(e: impl std::error::Error + Send + Sync + 'static) -> LeaseError {
    LeaseError::Kv(Box::new(e))
}

/// What the key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's server name.
    pub server: String,
    /// Which natsmeshd process (a holder restarted is another one).
    pub nonce: String,
    /// What it does with the lease.
    pub why: String,
    /// When it took the lease (Unix milliseconds).
    pub since_unix_ms: u64,
}

impl Holder {
    /// A holder record for this process.
    pub fn new(server: &str, nonce: &str, why: &str) -> Self {
        Self {
            server: server.to_owned(),
            nonce: nonce.to_owned(),
            why: why.to_owned(),
            since_unix_ms: now_unix_ms(),
        }
    }

    fn describe(&self) -> String {
        let secs = now_unix_ms().saturating_sub(self.since_unix_ms) / 1000;
        format!("{} for {secs} s ({})", self.server, self.why)
    }
}

fn now_unix_ms() -> u64 {
    crate::unix_ms(SystemTime::now())
}

/// The bucket of the supercluster's lease (no region's: theirs have a
/// suffix).
pub const SUPERCLUSTER_BUCKET: &str = "natsmesh-restart";

/// The bucket of a region: letters, digits, `-` and `_` only.
pub fn bucket_name(cluster: &str) -> String {
    let safe: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("natsmesh-restart-{safe}")
}

/// Opens the bucket `name`, creating it in region `cluster` (or raising
/// its replicas as the region grows, up to three).
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    cluster: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, LeaseError> {
    let name = name.to_owned();
    let replicas = replicas.clamp(1, 3);
    if let Ok(store) = js.get_key_value(&name).await {
        let stream_name = format!("KV_{name}");
        if let Ok(mut stream) = js.get_stream(&stream_name).await
            && let Ok(info) = stream.info().await
        {
            let mut config = info.config.clone();
            if config.num_replicas < replicas || config.max_age != ttl {
                config.num_replicas = config.num_replicas.max(replicas);
                config.max_age = ttl;
                config.duplicate_window = config.duplicate_window.min(ttl);
                if let Err(e) = js.update_stream(config).await {
                    tracing::warn!(bucket = %name, error = %e, "cannot update the restart lease bucket");
                }
            }
        }
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: name.clone(),
            description: "natsmesh: who may restart a server now".into(),
            history: 1,
            max_age: ttl,
            max_value_size: 1024,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            // A standalone server has no cluster to name.
            placement: (!cluster.is_empty()).then(|| jetstream::stream::Placement {
                cluster: Some(cluster.to_owned()),
                tags: Vec::new(),
            }),
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another node created it first.
        Err(e) => js
            .get_key_value(&name)
            .await
            .map_err(|_| LeaseError::Bucket {
                name,
                source: Box::new(e),
            }),
    }
}

/// The outcome of an attempt.
#[derive(Debug)]
pub enum Take {
    /// Held, at this revision.
    Taken(u64),
    /// Someone else holds it.
    HeldBy(String),
}

/// Takes the lease unless another live holder has it. A record of this
/// server from an earlier natsmeshd (that died holding it) is taken over.
pub async fn take(store: &kv::Store, me: &Holder) -> Result<Take, LeaseError> {
    let value = serde_json::to_vec(me)?;
    match store.create(KEY, value.clone().into()).await {
        Ok(rev) => return Ok(Take::Taken(rev)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(take_failed(e)),
    }
    let entry = store.entry(KEY).await.map_err(take_failed)?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        // Released (or expired) between the two calls: try again later.
        return Ok(Take::HeldBy("nobody (released just now)".into()));
    };
    let held: Holder = match serde_json::from_slice(&entry.value) {
        Ok(h) => h,
        Err(_) => {
            return Ok(Take::HeldBy(format!(
                "an unreadable record (revision {})",
                entry.revision
            )));
        }
    };
    if held.server != me.server {
        return Ok(Take::HeldBy(held.describe()));
    }
    // Ours, from this process or a previous one of this server.
    store
        .update(KEY, value.into(), entry.revision)
        .await
        .map(Take::Taken)
        .map_err(take_failed)
}

/// Rewrites the key so it does not expire; the new revision, or why the
/// lease is no longer ours.
pub async fn renew(store: &kv::Store, me: &Holder, revision: u64) -> Result<u64, LeaseError> {
    let value = serde_json::to_vec(me)?;
    match store.update(KEY, value.clone().into(), revision).await {
        Ok(next) => Ok(next),
        // A write that timed out on our side may have landed: the record
        // is still ours at a newer revision.
        Err(e) => match ours(store, me).await {
            Some(current) if current != revision => store
                .update(KEY, value.into(), current)
                .await
                .map_err(kv_failed),
            _ => Err(kv_failed(e)),
        },
    }
}

/// Gives the lease back, only if it is still ours.
pub async fn release(store: &kv::Store, me: &Holder, revision: u64) -> Result<(), LeaseError> {
    match store.delete_expect_revision(KEY, Some(revision)).await {
        Ok(()) => Ok(()),
        // A renewal we did not hear back from moved the revision on: left
        // alone, the lease would block every other node until it expires.
        Err(e) => match ours(store, me).await {
            Some(current) if current != revision => store
                .delete_expect_revision(KEY, Some(current))
                .await
                .map_err(kv_failed),
            _ => Err(kv_failed(e)),
        },
    }
}

/// The revision of the lease record if it is this process's (same server
/// and nonce).
async fn ours(store: &kv::Store, me: &Holder) -> Option<u64> {
    let entry = store.entry(KEY).await.ok()??;
    if entry.operation != kv::Operation::Put {
        return None;
    }
    let held: Holder = serde_json::from_slice(&entry.value).ok()?;
    (held.server == me.server && held.nonce == me.nonce).then_some(entry.revision)
}

/// Who holds the lease now, if anyone.
pub async fn holder(store: &kv::Store) -> Result<Option<Holder>, LeaseError> {
    let entry = store.entry(KEY).await.map_err(kv_failed)?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| serde_json::from_slice(&e.value).ok()))
}

/// Who holds the lease kept in `bucket`, as its stream's leader has it
/// (see [`holder_at_leader`]); nobody where the bucket was never made.
pub async fn holder_of(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<Option<Holder>, LeaseError> {
    let stream = match js.get_stream(format!("KV_{bucket}")).await {
        Ok(stream) => stream,
        Err(e) if never_made(&e) => return Ok(None),
        Err(e) => return Err(kv_failed(e)),
    };
    holder_at_leader(&stream, bucket).await
}

/// The stream asked for does not exist (as opposed to: it could not be
/// asked).
pub fn never_made(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The bucket asked for does not exist: `get_key_value` keeps the error
/// of its stream lookup as its source.
pub fn bucket_never_made(e: &jetstream::context::KeyValueError) -> bool {
    e.kind() == jetstream::context::KeyValueErrorKind::GetBucket
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::context::GetStreamError>())
            .is_some_and(never_made)
}

/// Who holds the lease of `bucket` now, as its stream's leader has it. A read
/// through [`holder`] may be answered by a follower that has not applied
/// the latest write yet (the buckets allow direct gets); a check that
/// must see a write acknowledged a moment ago reads here. An unreadable
/// record is an error, never "nobody".
pub async fn holder_at_leader(
    stream: &jetstream::stream::Stream,
    bucket: &str,
) -> Result<Option<Holder>, LeaseError> {
    // The subject a key-value bucket keeps a key under.
    let subject = format!("$KV.{bucket}.{KEY}");
    match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => {
            // A delete or purge marker: released.
            let released = m
                .headers
                .get("KV-Operation")
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            if released {
                return Ok(None);
            }
            serde_json::from_slice(&m.payload)
                .map(Some)
                .map_err(LeaseError::Unreadable)
        }
        // Never taken, or expired (the bucket's max age).
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(kv_failed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_safe() {
        assert_eq!(bucket_name("fra1"), "natsmesh-restart-fra1");
        assert_eq!(bucket_name("us.east 1"), "natsmesh-restart-us_east_1");
    }
}
