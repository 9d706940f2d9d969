//! Which nats-server this is, and which configuration keys it knows.
//!
//! nats-server refuses to start on an unknown key, so a key added in 2.10
//! rendered for Debian 12's 2.9.10 is an outage. Every key natsmesh can
//! write that did not exist in the oldest supported release is listed in
//! [`GATED_KEYS`] with the first release that accepts it; the test suite
//! checks each row against the real binaries of the matrix.

use std::path::Path;
use std::process::Stdio;

use semver::Version;

/// The oldest nats-server natsmesh supports: Debian 12's package.
pub const MINIMUM: Version = Version::new(2, 9, 10);

/// A key path (as written, `block.key`; array-of-block members as
/// `block.array.key`) and the first release that accepts it.
pub struct GatedKey {
    /// Dotted path of the key in the rendered file.
    pub path: &'static str,
    /// First release whose parser knows the key.
    pub since: Version,
}

const fn gate(path: &'static str, major: u64, minor: u64, patch: u64) -> GatedKey {
    GatedKey {
        path,
        since: Version::new(major, minor, patch),
    }
}

/// Keys natsmesh may render that not every supported release knows.
/// Sources: nats-server's `opts.go` case labels between tags (reference §8).
pub const GATED_KEYS: &[GatedKey] = &[
    gate("cluster.pool_size", 2, 10, 0),
    gate("cluster.compression", 2, 10, 0),
    gate("leafnodes.compression", 2, 10, 0),
    gate("leafnodes.remotes.compression", 2, 10, 0),
    gate("logtime_utc", 2, 9, 21),
    gate("jetstream.sync_interval", 2, 10, 0),
];

/// The first release that accepts `path`, when it is newer than [`MINIMUM`].
pub fn key_since(path: &str) -> Option<&'static Version> {
    GATED_KEYS.iter().find(|g| g.path == path).map(|g| &g.since)
}

/// Whether `version` accepts the key at `path`.
pub fn supports_key(version: &Version, path: &str) -> bool {
    key_since(path).is_none_or(|since| version >= since)
}

/// Why the version of a binary could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The binary could not be run at all.
    #[error("cannot run {binary} --version: {source}")]
    Spawn {
        /// The binary that was run.
        binary: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It ran but did not print `nats-server: vX.Y.Z`.
    #[error("{binary} --version printed {output:?}, not \"nats-server: vX.Y.Z\"")]
    Unrecognised {
        /// The binary that was run.
        binary: String,
        /// What it printed.
        output: String,
    },
    /// The version is older than natsmesh supports.
    #[error("{binary} is nats-server {version}; natsmesh needs {MINIMUM} or newer")]
    TooOld {
        /// The binary that was run.
        binary: String,
        /// Its version.
        version: Version,
    },
}

/// Parses the output of `nats-server --version` (`nats-server: v2.9.10`).
pub fn parse_version_output(output: &str) -> Option<Version> {
    let line = output.lines().find(|l| l.starts_with("nats-server:"))?;
    let v = line.trim_start_matches("nats-server:").trim();
    Version::parse(v.strip_prefix('v').unwrap_or(v)).ok()
}

/// Runs `binary --version` and returns the version, refusing releases older
/// than [`MINIMUM`].
pub async fn detect(binary: &Path) -> Result<Version, VersionError> {
    let name = binary.display().to_string();
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .env_clear()
        .output()
        .await
        .map_err(|source| VersionError::Spawn {
            binary: name.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = parse_version_output(&text).ok_or_else(|| VersionError::Unrecognised {
        binary: name.clone(),
        output: text.trim().to_owned(),
    })?;
    if version < MINIMUM {
        return Err(VersionError::TooOld {
            binary: name,
            version,
        });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_prerelease_lines() {
        assert_eq!(
            parse_version_output("nats-server: v2.9.10\n"),
            Some(Version::new(2, 9, 10))
        );
        let rc = parse_version_output("nats-server: v2.12.0-RC.1").expect("parses");
        assert!(rc < Version::new(2, 12, 0));
        assert_eq!(parse_version_output("gnatsd 1.0"), None);
        assert_eq!(parse_version_output("nats-server: vgarbage"), None);
    }

    #[test]
    fn gating_uses_full_semver() {
        let v2910 = Version::new(2, 9, 10);
        let v2921 = Version::new(2, 9, 21);
        assert!(!supports_key(&v2910, "logtime_utc"));
        assert!(supports_key(&v2921, "logtime_utc"));
        assert!(!supports_key(&v2921, "cluster.pool_size"));
        assert!(supports_key(&Version::new(2, 10, 0), "cluster.pool_size"));
        assert!(supports_key(&v2910, "server_name"));
        assert!(!supports_key(
            &Version::new(2, 9, 25),
            "jetstream.sync_interval"
        ));
        assert!(supports_key(
            &Version::new(2, 10, 0),
            "jetstream.sync_interval"
        ));
    }
}
