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
//! from `spawn_blocking` (whose threads exit when idle). That same thread
//! survives `execve` (the other threads do not), so natsmeshd can replace
//! its own image and keep its broker: the new image [`adopt`]s the running
//! process, with copies of its output pipes handed over across the exec.

use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, IntoRawFd as _, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncRead;
use tokio::process::{Child, Command};

/// One of the broker's output pipes.
pub type Pipe = Box<dyn AsyncRead + Unpin + Send>;

/// A running broker.
#[derive(Debug)]
pub struct BrokerProcess {
    kind: Kind,
    pid: Pid,
    /// Copies of the read ends of stdout and stderr (close-on-exec until
    /// handed over).
    handoff: Option<(OwnedFd, OwnedFd)>,
    /// The config file it was started with.
    pub config: PathBuf,
}

enum Kind {
    /// Forked by this process image.
    Spawned(Child),
    /// Forked by the image this one replaced; reaped by a waiting thread.
    Adopted {
        output: Option<(Pipe, Pipe)>,
        exit: Option<tokio::sync::oneshot::Receiver<std::io::Result<ExitStatus>>>,
        status: Option<ExitStatus>,
    },
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Spawned(c) => f.debug_tuple("Spawned").field(c).finish(),
            Kind::Adopted { status, .. } => {
                f.debug_struct("Adopted").field("status", status).finish()
            }
        }
    }
}

/// What the next image needs to adopt a running broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handoff {
    /// The broker's pid.
    pub pid: i32,
    /// Its stdout's read end, open across the exec.
    pub stdout_fd: RawFd,
    /// Its stderr's read end.
    pub stderr_fd: RawFd,
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
    let handoff = match (&child.stdout, &child.stderr) {
        (Some(o), Some(e)) => Some((
            o.as_fd().try_clone_to_owned().map_err(err)?,
            e.as_fd().try_clone_to_owned().map_err(err)?,
        )),
        _ => None,
    };
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| {
            err(std::io::Error::other(
                "the broker exited before its pid was read",
            ))
        })?;
    raise_oom_score(pid);
    Ok(BrokerProcess {
        kind: Kind::Spawned(child),
        pid,
        handoff,
        config: config.to_path_buf(),
    })
}

/// Under memory pressure the kernel should kill the broker (it holds the
/// data, and natsmeshd restarts it) before natsmeshd: the broker gets
/// natsmeshd's own OOM score adjustment + 500. Raising it needs no
/// privilege; a failure changes nothing else.
fn raise_oom_score(pid: Pid) {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    let _ = std::fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        (own + 500).min(1000).to_string(),
    );
}

/// Why a broker could not be adopted.
#[derive(Debug, thiserror::Error)]
#[error("cannot adopt nats-server pid {pid}: {why}")]
pub struct AdoptError {
    /// The pid handed over.
    pub pid: i32,
    /// What was wrong.
    pub why: String,
}

/// Takes over the broker a previous image of this process started (same
/// pid, so still its parent), with the output pipes it handed over.
pub fn adopt(h: Handoff, config: &Path) -> Result<BrokerProcess, AdoptError> {
    let fail = |why: String| AdoptError { pid: h.pid, why };
    let me = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", h.pid))
        .map_err(|e| fail(format!("not running ({e})")))?;
    // Fields after the command name (which may hold spaces): state, ppid.
    let ppid = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split(' ').nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    if ppid != Some(me) {
        return Err(fail(format!(
            "its parent is {ppid:?}, not this process ({me})"
        )));
    }
    let pipe = |fd: RawFd| -> Result<Pipe, AdoptError> {
        // SAFETY: the previous image opened this descriptor for exactly this
        // purpose and named it in the handoff; nothing else in this process
        // knows of it, so taking ownership cannot double-close.
        #[allow(unsafe_code)]
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        fcntl(owned.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| fail(format!("descriptor {fd}: {e}")))?;
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(owned)
            .map_err(|e| fail(format!("descriptor {fd}: {e}")))?;
        Ok(Box::new(rx))
    };
    let output = (pipe(h.stdout_fd)?, pipe(h.stderr_fd)?);
    let pid = Pid::from_raw(h.pid);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Any thread of this process may reap its children.
    std::thread::Builder::new()
        .name("natsmesh-reaper".into())
        .spawn(move || {
            use std::os::unix::process::ExitStatusExt as _;
            let status = loop {
                match nix::sys::wait::waitpid(pid, None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => {
                        break Ok(ExitStatus::from_raw((code & 0xff) << 8));
                    }
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                        break Ok(ExitStatus::from_raw(sig as i32));
                    }
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => break Err(std::io::Error::from(e)),
                }
            };
            let _ = tx.send(status);
        })
        .map_err(|e| fail(format!("cannot start its reaper: {e}")))?;
    Ok(BrokerProcess {
        kind: Kind::Adopted {
            output: Some(output),
            exit: Some(rx),
            status: None,
        },
        pid,
        handoff: None,
        config: config.to_path_buf(),
    })
}

impl BrokerProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Takes the output pipes (once).
    pub fn take_output(&mut self) -> (Option<Pipe>, Option<Pipe>) {
        match &mut self.kind {
            Kind::Spawned(child) => (
                child.stdout.take().map(|p| Box::new(p) as Pipe),
                child.stderr.take().map(|p| Box::new(p) as Pipe),
            ),
            Kind::Adopted { output, .. } => match output.take() {
                Some((o, e)) => (Some(o), Some(e)),
                None => (None, None),
            },
        }
    }

    /// Readies the handover to the next image: the pipe copies stay open
    /// across `execve` (they are released from this process's ownership;
    /// if the exec fails they stay open, unused).
    pub fn handoff(&mut self) -> Option<Handoff> {
        let (out, err) = self.handoff.take()?;
        for fd in [&out, &err] {
            fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::empty())).ok()?;
        }
        let (stdout_fd, stderr_fd) = (out.as_raw_fd(), err.as_raw_fd());
        let _ = (out.into_raw_fd(), err.into_raw_fd());
        Some(Handoff {
            pid: self.pid.as_raw(),
            stdout_fd,
            stderr_fd,
        })
    }

    /// Sends `signal`. The child is not reaped until [`wait`](Self::wait)
    /// returns, so its pid cannot have been reused.
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        kill(self.pid, signal).map_err(std::io::Error::from)
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match &mut self.kind {
            Kind::Spawned(child) => child.wait().await,
            Kind::Adopted { exit, status, .. } => {
                if let Some(s) = status {
                    return Ok(*s);
                }
                let Some(rx) = exit.as_mut() else {
                    return Err(std::io::Error::other("the reaper is gone"));
                };
                let s = rx
                    .await
                    .map_err(|_| std::io::Error::other("the reaper is gone"))??;
                *exit = None;
                *status = Some(s);
                Ok(s)
            }
        }
    }

    /// Whether it has exited (without blocking).
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match &mut self.kind {
            Kind::Spawned(child) => child.try_wait(),
            Kind::Adopted { exit, status, .. } => {
                if status.is_none()
                    && let Some(rx) = exit.as_mut()
                    && let Ok(res) = rx.try_recv()
                {
                    *exit = None;
                    *status = Some(res?);
                }
                Ok(*status)
            }
        }
    }
}
