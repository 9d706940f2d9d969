//! Upgrades without a maintenance window. A package upgrade replaces
//! natsmeshd's binary (and perhaps nats-server's) but never restarts the
//! service; natsmeshd notices the new files itself:
//!
//! - a new **natsmeshd** binary: under the region's lease natsmeshd
//!   replaces its own image (`execve`, same pid, so systemd and the broker's
//!   parent stay the same) and the new image adopts the running broker — a
//!   natsmesh upgrade costs no broker restart. The broker's parent-death
//!   signal is tied to the thread that forked it, natsmeshd's main thread,
//!   which is the thread that calls `execve` and so lives on;
//! - a new **nats-server** binary: the configuration is rendered and
//!   checked for the new version, then a coordinated restart.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use natsmesh_broker::process::Handoff;

/// Names the handoff file for the next image.
pub const HANDOFF_ENV: &str = "NATSMESH_HANDOFF";
const HANDOFF_NAME: &str = "handoff.json";
/// The most a handoff holds (it carries the rendered configuration).
const HANDOFF_MAX: u64 = 64 << 20;

/// Which file a path named at some moment: replaced files get a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    dev: u64,
    ino: u64,
    mtime_ns: i64,
}

/// The identity of the file at `path` now.
pub fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
    })
}

/// The file a binary setting names: a path as is, a bare name through
/// `PATH` (as the broker is started).
pub fn resolve(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return Some(binary.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

/// This program's path (the file a package upgrade replaces).
pub fn own_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // A replaced binary reads as "<path> (deleted)".
    let text = exe.as_os_str().as_bytes();
    let trimmed = text.strip_suffix(b" (deleted)").unwrap_or(text);
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(trimmed)))
}

/// What one image tells the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffFile {
    /// The running broker.
    pub broker: Handoff,
    /// The binary it was started from.
    pub broker_binary: Option<FileId>,
    /// Its version (the binary may be newer already); absent from older
    /// images' handoffs.
    #[serde(default)]
    pub broker_version: Option<String>,
    /// The configuration it runs, as rendered.
    pub rendered: String,
    /// Whether it has served clients.
    pub served: bool,
}

/// Why the handoff could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// It does not serialize.
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    /// The file could not be written or read.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// `write` or `read`.
        what: &'static str,
        /// The handoff file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// What was read is no handoff.
    #[error("{}: {source}", path.display())]
    Decode {
        /// The handoff file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Writes the handoff (0600) into the state directory.
pub fn write_handoff(state_dir: &Path, h: &HandoffFile) -> Result<PathBuf, HandoffError> {
    let path = state_dir.join(HANDOFF_NAME);
    let text = serde_json::to_vec(h).map_err(HandoffError::Encode)?;
    if let Err(source) = crate::files::write_atomic(&path, &text, crate::files::SECRET) {
        return Err(HandoffError::Io {
            what: "write",
            path,
            source,
        });
    }
    Ok(path)
}

/// The handoff left by the previous image, if this process is one it
/// replaced itself with (the file is removed: it is read once).
pub fn take_handoff() -> Option<Result<HandoffFile, HandoffError>> {
    let path = PathBuf::from(std::env::var_os(HANDOFF_ENV)?);
    // In the state directory: never through a link.
    let text = crate::files::read_private(&path, HANDOFF_MAX);
    let _ = std::fs::remove_file(&path);
    Some(match text {
        Ok(t) => serde_json::from_slice(&t).map_err(|source| HandoffError::Decode { path, source }),
        Err(source) => Err(HandoffError::Io {
            what: "read",
            path,
            source,
        }),
    })
}

/// Runs `exe check` with this process's arguments (`run` becomes `check`)
/// and environment (less systemd's notification socket): `Ok` when the new
/// binary accepts the configuration, else what it said.
pub async fn check_with(exe: &Path) -> Result<(), CheckError> {
    let args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .map(|a| {
            if a == "run" {
                OsString::from("check")
            } else {
                a
            }
        })
        .collect();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(exe)
            .args(&args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove(HANDOFF_ENV)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| CheckError::Timeout(exe.to_path_buf()))?
    .map_err(|source| CheckError::Spawn {
        exe: exe.to_path_buf(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.trim();
    Err(CheckError::Refused {
        exe: exe.to_path_buf(),
        status: out.status,
        said: if said.is_empty() {
            "no reason given".to_owned()
        } else {
            said.to_owned()
        },
    })
}

/// Why the new binary did not accept the configuration.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// It did not answer in time.
    #[error("{} check did not answer within 30 s", .0.display())]
    Timeout(PathBuf),
    /// It could not be run.
    #[error("cannot run {}: {source}", exe.display())]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It refused, saying why.
    #[error("{} check exited with {status}: {said}", exe.display())]
    Refused {
        /// The binary.
        exe: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error, trimmed (or "no reason given").
        said: String,
    },
}

/// Replaces this process's image with `exe`, same arguments, same
/// environment plus the handoff's path. Returns only on failure.
pub fn exec_self(exe: &Path, handoff: &Path) -> String {
    // Why the exec did not happen (the messages are the sources' own).
    #[derive(Debug, thiserror::Error)]
    enum ExecError {
        #[error("{0}")]
        Nul(#[from] std::ffi::NulError),
        #[error("{0}")]
        Exec(#[from] nix::Error),
    }
    let cstr = |s: &std::ffi::OsStr| CString::new(s.as_bytes());
    let run = || -> Result<std::convert::Infallible, ExecError> {
        let program = cstr(exe.as_os_str())?;
        let args = std::env::args_os()
            .map(|a| cstr(&a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os().filter(|(k, _)| k != HANDOFF_ENV) {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            env.push(cstr(&kv)?);
        }
        let mut kv = OsString::from(HANDOFF_ENV);
        kv.push("=");
        kv.push(handoff.as_os_str());
        env.push(cstr(&kv)?);
        Ok(nix::unistd::execve(&program, &args, &env)?)
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => format!("cannot execute {}: {e}", exe.display()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_replaced_file_has_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, "one").unwrap();
        let before = file_id(&p).unwrap();
        assert_eq!(file_id(&p), Some(before));
        // How packages install: a new file renamed over the old one.
        let tmp = dir.path().join("bin.new");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_ne!(file_id(&p), Some(before));
    }

    #[test]
    fn bare_names_are_found_on_the_path() {
        assert_eq!(resolve(Path::new("/x/y")), Some(PathBuf::from("/x/y")));
        assert!(resolve(Path::new("sh")).is_some_and(|p| p.ends_with("sh")));
        assert_eq!(resolve(Path::new("natsmesh-no-such-binary")), None);
    }
}
