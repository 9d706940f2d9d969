//! `natsmeshd run`: the daemon. Wires the supervisor, the control socket,
//! signals and systemd together and turns the outcome into an exit code.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use std::path::PathBuf;

use crate::config::Settings;
use crate::control;
use crate::notify::Notifier;
use crate::supervisor::{Command, Exit, Supervisor};

/// Runs until stopped; returns the process exit code.
pub async fn run(config_path: Option<PathBuf>, settings: Settings) -> i32 {
    let notifier = Notifier::from_env();
    let socket = settings.control_socket.clone();
    let (supervisor, status) = match Supervisor::new(config_path, settings, notifier.clone()).await
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("natsmeshd: {e:#}");
            notifier.status(&format!("failed: {e}"));
            return crate::EXIT_CONFIG;
        }
    };
    let listener = match control::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("natsmeshd: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    let (commands, rx) = mpsc::channel(16);
    let control = tokio::spawn(control::serve(listener, commands.clone(), status));
    let signals = match forward_signals(commands.clone()) {
        Ok(task) => task,
        Err(e) => {
            eprintln!("natsmeshd: cannot install signal handlers: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    drop(commands);
    let exit = supervisor.run(rx).await;
    control.abort();
    signals.abort();
    let _ = std::fs::remove_file(&socket);
    match exit {
        Exit::Stopped => 0,
        Exit::CrashLoop(why) | Exit::Failed(why) => {
            eprintln!("natsmeshd: {why}");
            crate::EXIT_FAILURE
        }
    }
}

/// SIGTERM and SIGINT stop (drain first); SIGHUP reloads.
fn forward_signals(
    commands: mpsc::Sender<Command>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            let cmd = tokio::select! {
                _ = term.recv() => Command::Stop,
                _ = int.recv() => Command::Stop,
                _ = hup.recv() => Command::Reload { reply: None },
            };
            if commands.send(cmd).await.is_err() {
                return;
            }
        }
    }))
}
