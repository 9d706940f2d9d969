//! `nats-server -t`: the broker's own parser as the last gate before a file is
//! used.
//!
//! `-t` parses the file, its includes and its TLS files, and exits 1 on any
//! error *or warning* (a warnings-only file would start, but natsmesh wants
//! none). It does not run start-time validation; `validate` covers that.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// What a passing check reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// `sha256:<hex>` of the parsed config, printed by 2.11+ (and equal to
    /// `/varz.config_digest` once loaded).
    pub digest: Option<String>,
}

/// Why a file did not pass `-t`.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The binary could not be run.
    #[error("cannot run {binary} -t: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The check did not finish in time.
    #[error("{binary} -t did not finish within {0:?}", CHECK_TIMEOUT)]
    Timeout {
        /// The binary.
        binary: String,
    },
    /// The broker refused the file; one message per warning or error.
    #[error("nats-server refused {file}: {}", messages.join("; "))]
    Rejected {
        /// The file checked.
        file: String,
        /// The broker's messages, `file:line:col: message`.
        messages: Vec<String>,
    },
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `binary -t -c file` with an empty environment (the rendered file
/// never uses variables, and secrets must not reach children), as the user
/// the broker will run as (`run_as`), so a file the broker could not open
/// fails here, in nats-server's words, and not at its start.
pub async fn check_file(
    binary: &Path,
    file: &Path,
    run_as: Option<crate::process::RunAs>,
) -> Result<CheckReport, CheckError> {
    let name = binary.display().to_string();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("-t")
        .arg("-c")
        .arg(file)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (see process::become_user).
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || crate::process::become_user(run_as));
    }
    let child = cmd.output();
    let out = tokio::time::timeout(CHECK_TIMEOUT, child)
        .await
        .map_err(|_| CheckError::Timeout {
            binary: name.clone(),
        })?
        .map_err(|source| CheckError::Spawn {
            binary: name.clone(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<String> = stderr
        .lines()
        .map(|l| {
            l.strip_prefix("nats-server: ")
                .unwrap_or(l)
                .trim()
                .to_owned()
        })
        .filter(|l| !l.is_empty())
        .collect();
    if out.status.success() {
        let digest = lines.iter().find_map(|l| {
            let start = l.find("(sha256:")? + 1;
            let end = l[start..].find(')')? + start;
            Some(l[start..end].to_owned())
        });
        Ok(CheckReport { digest })
    } else {
        Err(CheckError::Rejected {
            file: file.display().to_string(),
            messages: if lines.is_empty() {
                vec![format!("exited with {}", out.status)]
            } else {
                lines
            },
        })
    }
}
