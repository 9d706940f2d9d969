//! `natsmeshd run`: prepare the config, start nats-server with `-c <file>`
//! only, and stop it cleanly on SIGTERM/SIGINT.
//!
//! This is the plain runner; probes, restarts, reloads and the lame-duck
//! drain belong to the supervisor.

use std::process::Stdio;

use anyhow::{Context as _, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Settings;
use crate::prepare::prepare_in;

/// Runs the broker until a stop signal; returns its exit status code.
pub async fn run(settings: Settings) -> Result<i32> {
    std::fs::create_dir_all(&settings.state_dir).with_context(|| {
        format!(
            "cannot create state directory {}",
            settings.state_dir.display()
        )
    })?;
    let prepared = prepare_in(&settings, &settings.state_dir, "nats-server.conf").await?;
    tracing::info!(
        version = %prepared.version,
        config = %prepared.path.display(),
        server_name = %settings.server.server_name,
        client = %settings.server.listen,
        monitoring = ?settings.server.monitoring.map(|m| m.to_string()),
        "starting nats-server"
    );
    let mut child = tokio::process::Command::new(&settings.binary)
        .arg("-c")
        .arg(&prepared.path)
        .env_clear()
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", settings.binary.display()))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
        .context("nats-server exited at once")?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            tracing::warn!(%status, "nats-server exited");
            return Ok(status.code().unwrap_or(crate::EXIT_FAILURE));
        }
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping nats-server");
    // SIGINT: a clean shutdown that flushes JetStream (SIGTERM exits 1 on
    // 2.9/2.10).
    let _ = kill(pid, Signal::SIGINT);
    let status = child.wait().await?;
    tracing::info!(%status, "nats-server stopped");
    Ok(0)
}
