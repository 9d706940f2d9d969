//! Coordinated OS reboots (`[maintenance] reboot = "coordinated"`): when
//! the package manager leaves `/run/reboot-required` (unattended-upgrades
//! does), natsmeshd reboots the machine through the maintenance path — the
//! same lease, the same majority rule — one node at a time across the
//! whole supercluster, inside the configured window, and runs
//! `reboot_command` once the broker is down ("safe to reboot"). The next
//! boot brings the node back and gives the lease back
//! ([`super::maintenance::settle`]), as after any maintenance.
//!
//! The pattern is kured's and Zincati's FleetLock, with natsmesh's own
//! lease instead of a lock server. The file is polled from a task beside
//! the supervisor: the loop never waits for it, nor for the lease.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::command::Command;
pub use crate::config::settings::reboot::{RebootSettings, Window};
use crate::fleet::FleetOps;
use crate::health::Health;

/// How often the reboot-required file is looked for.
pub const POLL: Duration = Duration::from_secs(5);
/// After a reboot command that failed, how long before trying again (a
/// broken command must not take the node out every few seconds).
const RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How long the reboot command may take to answer (`systemctl reboot`
/// only queues the job).
const COMMAND_WAIT: Duration = Duration::from_secs(120);
/// The reason the lease and the marker carry.
pub const REASON: &str = "reboot required (coordinated reboot)";

fn at(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs))
        .to_string()
}

/// Tells the supervisor what to show in the status (`None`: nothing).
async fn say(commands: &mpsc::Sender<Command>, line: Option<String>, last: &mut Option<String>) {
    if *last == line {
        return;
    }
    match &line {
        Some(l) => tracing::info!(reboot = %l, "coordinated reboot"),
        None => tracing::info!("coordinated reboot: no reboot required any more"),
    }
    *last = line.clone();
    let _ = commands.send(Command::Reboot { line }).await;
}

/// Why the reboot command did not reboot.
#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    /// `reboot_command` is empty.
    #[error("no reboot_command")]
    NoCommand,
    /// It ran past its time.
    #[error("{program} did not finish within {after:?}")]
    Timeout {
        /// The program.
        program: String,
        /// Its time.
        after: Duration,
    },
    /// It could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it said on stderr (trimmed).
        stderr: String,
    },
}

/// Runs `command` (argv) and waits for it, bounded.
pub async fn run_command(command: &[String]) -> Result<(), RebootError> {
    let Some((program, args)) = command.split_first() else {
        return Err(RebootError::NoCommand);
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(COMMAND_WAIT, child)
        .await
        .map_err(|_| RebootError::Timeout {
            program: program.clone(),
            after: COMMAND_WAIT,
        })?
        .map_err(|source| RebootError::Spawn {
            program: program.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RebootError::Failed {
            program: program.clone(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Watches for the reboot-required file and reboots through the
/// maintenance path. Runs beside the supervisor until aborted.
#[tracing::instrument(name = "fleet", skip_all, fields(task = "reboot"))]
pub async fn watch(
    access: Arc<FleetOps>,
    reboot: RebootSettings,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Health>,
) {
    let mut last: Option<String> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(POLL).await;
        if retry_at.is_some_and(|t| tokio::time::Instant::now() < t) {
            continue;
        }
        let required = tokio::fs::try_exists(&reboot.required)
            .await
            .unwrap_or(false);
        let in_maintenance = status.borrow().maintenance.is_some();
        let kept = super::maintenance::kept(&access.settings.state_dir);
        if in_maintenance {
            // An operator's maintenance is theirs to end; a reboot of ours
            // interrupted by a natsmeshd restart in the same boot goes on
            // once the broker is down.
            let ours = kept.as_ref().is_some_and(|m| m.reboot);
            let down = status.borrow().down();
            if ours && down && required {
                if !reboot_now(&access, &reboot, &commands, &mut last).await {
                    retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
                }
            } else if !ours && required {
                say(
                    &commands,
                    Some(format!(
                        "reboot required ({}): in an operator's maintenance, which reboots or ends it",
                        reboot.required.display()
                    )),
                    &mut last,
                )
                .await;
            }
            continue;
        }
        if !required {
            say(&commands, None, &mut last).await;
            continue;
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(w) = &reboot.window
            && !w.contains(now)
        {
            say(
                &commands,
                Some(format!(
                    "reboot required: waiting for the window {w} (opens {})",
                    at(w.next_open(now))
                )),
                &mut last,
            )
            .await;
            continue;
        }
        let s = &access.settings;
        match super::maintenance::take_alone(s, s.maintenance.max_down, REASON).await {
            Ok(taken) => {
                say(
                    &commands,
                    Some("reboot required: took the maintenance lease, leaving service".into()),
                    &mut last,
                )
                .await;
                match super::maintain::enter(
                    &commands,
                    status.clone(),
                    &access,
                    REASON.into(),
                    taken,
                    true,
                )
                .await
                {
                    Ok(said) => {
                        tracing::info!(said = %said, "coordinated reboot: safe to reboot");
                        if !reboot_now(&access, &reboot, &commands, &mut last).await {
                            retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "coordinated reboot: could not leave service");
                        say(
                            &commands,
                            Some(format!("reboot required: could not leave service ({e})")),
                            &mut last,
                        )
                        .await;
                    }
                }
            }
            Err(e) => {
                say(
                    &commands,
                    Some(format!("reboot required: waiting for its turn ({e})")),
                    &mut last,
                )
                .await;
            }
        }
    }
}

/// Runs the reboot command; on failure brings the node back (a node must
/// not stay down for a reboot that is not coming). Whether it ran.
async fn reboot_now(
    access: &FleetOps,
    reboot: &RebootSettings,
    commands: &mpsc::Sender<Command>,
    last: &mut Option<String>,
) -> bool {
    let shown = reboot.command.join(" ");
    tracing::info!(command = %shown, "coordinated reboot: safe to reboot, rebooting");
    match run_command(&reboot.command).await {
        Ok(()) => {
            say(
                commands,
                Some(format!(
                    "safe to reboot: `{shown}` ran; the next boot brings the node back and gives the lease back"
                )),
                last,
            )
            .await;
            // The machine is going down: nothing more to do in this boot.
            std::future::pending::<()>().await;
            true
        }
        Err(e) => {
            tracing::error!(command = %shown, error = %e, "coordinated reboot: the reboot command failed; back into service, trying again in an hour");
            say(
                commands,
                Some(format!(
                    "reboot required: `{shown}` failed ({e}); back in service, trying again in an hour"
                )),
                last,
            )
            .await;
            if let Err(e) = super::maintain::leave(commands, access).await {
                tracing::warn!(error = %e, "coordinated reboot: cannot end the maintenance");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn the_command_is_argv_and_its_failure_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("called");
        // No shell: the argument with a space and a `;` arrives as one.
        run_command(&[
            "touch".into(),
            record.to_string_lossy().into_owned() + "; true",
        ])
        .await
        .unwrap();
        assert!(dir.path().join("called; true").exists());
        let e = run_command(&["false".into()]).await.unwrap_err();
        assert!(
            matches!(&e, RebootError::Failed { status, .. } if !status.success()),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("false failed"), "{e}");
        let e = run_command(&["/nonexistent/reboot".into()])
            .await
            .unwrap_err();
        assert!(matches!(e, RebootError::Spawn { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot run"), "{e}");
        assert!(matches!(
            run_command(&[]).await,
            Err(RebootError::NoCommand)
        ));
    }
}
