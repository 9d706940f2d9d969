//! Starting and signalling the nats-server process.
//!
//! The broker is started with exactly `-c <file>` (flags would override the
//! file on every reload, nats-server#3003), an empty environment (secrets
//! never reach it), and piped output. It must never outlive natsmeshd: the
//! child asks the kernel for SIGINT when its parent thread dies
//! (`PR_SET_PDEATHSIG`) and re-checks its parent in case that already
//! happened. SIGINT, not SIGKILL: it is a clean shutdown that flushes
//! JetStream, and unlike SIGTERM it is not ignored during lame duck.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! so [`spawn`] must be called from a thread that lives as long as the
//! child: natsmeshd runs a current-thread runtime on its main thread, never
//! from `spawn_blocking` (whose threads exit when idle).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A running broker.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    pid: Pid,
    /// The config file it was started with.
    pub config: PathBuf,
}

/// Why a broker could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {binary}: {source}")]
pub struct SpawnError {
    /// The binary.
    pub binary: String,
    /// The OS error.
    pub source: std::io::Error,
}

/// Starts `binary -c config`.
pub fn spawn(binary: &Path, config: &Path) -> Result<BrokerProcess, SpawnError> {
    let err = |source| SpawnError {
        binary: binary.display().to_string(),
        source,
    };
    let parent = nix::unistd::getpid();
    let mut cmd = Command::new(binary);
    cmd.arg("-c")
        .arg(config)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // two async-signal-safe system calls (prctl, getppid); it allocates
    // nothing and touches no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT)?;
            // The parent may have died between fork and prctl; then no signal
            // will ever come, so refuse to exec at all.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "natsmeshd exited before the broker started",
                ));
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(err)?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| {
            err(std::io::Error::other(
                "the broker exited before its pid was read",
            ))
        })?;
    Ok(BrokerProcess {
        child,
        pid,
        config: config.to_path_buf(),
    })
}

impl BrokerProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Takes the output pipes (once).
    pub fn take_output(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        (self.child.stdout.take(), self.child.stderr.take())
    }

    /// Sends `signal`. The child is not reaped until [`wait`](Self::wait)
    /// returns, so its pid cannot have been reused.
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        kill(self.pid, signal).map_err(std::io::Error::from)
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Whether it has exited (without blocking).
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }
}
