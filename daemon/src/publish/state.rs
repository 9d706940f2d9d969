//! The records this node last published, kept in the state directory so a
//! restarted node recognises (and removes) records it no longer wants even
//! at names it shares with its peers.

use std::collections::BTreeSet;
use std::path::Path;

use super::Record;

/// The most the list holds.
const STATE_MAX: u64 = 16 << 20;

/// The remembered records; none when the file is missing or unreadable
/// (then only content-owned records are recognised, which is still safe).
pub fn load(path: &Path) -> BTreeSet<Record> {
    // In the state directory: never through a link.
    match crate::files::read_private(path, STATE_MAX) {
        Ok(bytes) => match serde_json::from_slice::<Vec<Record>>(&bytes) {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring the unreadable list of published DNS records");
                BTreeSet::new()
            }
        },
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %e, "ignoring the list of published DNS records");
            }
            BTreeSet::new()
        }
    }
}

/// Replaces the file atomically; a failure is logged (the next pass tries
/// again) because it must not stop publication.
pub fn save(path: &Path, records: &[Record]) {
    let write = || -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        // The first start writes this before the supervisor made the
        // state directory.
        std::fs::create_dir_all(dir)?;
        let text = serde_json::to_vec_pretty(records)?;
        crate::files::write_atomic(path, &text, crate::files::PLAIN)
    };
    if let Err(e) = write() {
        tracing::warn!(file = %path.display(), error = %e, "cannot record the published DNS records");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_survives_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("dns-published.json");
        assert!(load(&file).is_empty());
        let r = Record::srv(
            "_nats-route._tcp.fra1.example.net",
            6222,
            "n1.fra1.example.net",
        );
        save(&file, std::slice::from_ref(&r));
        assert_eq!(load(&file), [r].into());
        std::fs::write(&file, "{not json").expect("write");
        assert!(load(&file).is_empty());
    }
}
