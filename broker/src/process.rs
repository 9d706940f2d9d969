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
//!
//! Given a [`RunAs`], the child becomes that user before it executes the
//! broker (no supplementary group, and none of natsmeshd's capabilities
//! carried across the exec), so a compromised broker cannot read what
//! natsmeshd holds. Without one it runs as natsmeshd does.

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

/// The user and group the broker runs as, when not natsmeshd's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// Its uid (real, effective and saved).
    pub uid: u32,
    /// Its gid (real, effective and saved); it keeps no other group.
    pub gid: u32,
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

/// Starts `binary -c config`, as `run_as` when given.
pub fn spawn(
    binary: &Path,
    config: &Path,
    run_as: Option<RunAs>,
) -> Result<BrokerProcess, SpawnError> {
    let err = |source| SpawnError {
        binary: binary.display().to_string(),
        source,
    };
    let parent = nix::unistd::getpid();
    let oom = oom_score_for_child();
    let mut cmd = Command::new(binary);
    cmd.arg("-c")
        .arg(config)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (open, write, close, setgroups,
    // setresgid, setresuid, prctl, getppid) on values prepared before the
    // fork; it allocates nothing and touches no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            // Before any change of user: the process still owns its /proc
            // entry (a change of credentials makes it non-dumpable, and its
            // /proc files root's, until the exec).
            oom.apply();
            become_user(run_as)?;
            // After the change of user, which clears the death signal.
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
    Ok(BrokerProcess {
        kind: Kind::Spawned(child),
        pid,
        handoff,
        config: config.to_path_buf(),
    })
}

/// In a forked child before exec: becomes `run_as` (when given) with no
/// supplementary group, and drops the ambient capabilities either way.
/// Only async-signal-safe system calls.
pub(crate) fn become_user(run_as: Option<RunAs>) -> std::io::Result<()> {
    if let Some(u) = run_as {
        // Groups first: after setresuid the capability to change them is
        // gone.
        nix::unistd::setgroups(&[])?;
        let gid = nix::unistd::Gid::from_raw(u.gid);
        nix::unistd::setresgid(gid, gid, gid)?;
        let uid = nix::unistd::Uid::from_raw(u.uid);
        nix::unistd::setresuid(uid, uid, uid)?;
    }
    drop_ambient_capabilities()
}

/// The capabilities natsmeshd's unit grants it as ambient ones (to change
/// the broker's user and signal it) would otherwise pass to every program
/// it executes: the broker starts with none. A kernel without ambient
/// capabilities (before 4.3) has none to drop.
fn drop_ambient_capabilities() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; async-signal-safe.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        return Ok(());
    }
    Err(e)
}

/// Under memory pressure the kernel should kill the broker (it holds the
/// data, and natsmeshd restarts it) before natsmeshd: the broker gets
/// natsmeshd's own OOM score adjustment + 500. The child sets it on itself
/// before it changes user (raising one's own needs no privilege, and
/// natsmeshd could not write another user's), so the value is prepared
/// here, before the fork.
struct OomScore {
    text: [u8; 8],
    len: usize,
}

fn oom_score_for_child() -> OomScore {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    let value = (own.saturating_add(500)).clamp(-1000, 1000).to_string();
    let mut text = [0u8; 8];
    let len = value.len().min(text.len());
    text[..len].copy_from_slice(&value.as_bytes()[..len]);
    OomScore { text, len }
}

impl OomScore {
    /// In the child: a failure changes nothing else, so it is ignored.
    fn apply(&self) {
        let Ok(fd) = nix::fcntl::open(
            c"/proc/self/oom_score_adj",
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            return;
        };
        let _ = nix::unistd::write(&fd, &self.text[..self.len]);
    }
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
    // Still this process's child, alive or not yet reaped? waitid answers
    // without reaping (WNOWAIT) or blocking (WNOHANG), and, unlike
    // /proc/<pid>/stat, it also answers for a broker of another user, which
    // the unit's ProtectProc=invisible hides from natsmeshd.
    let pid = Pid::from_raw(h.pid);
    match nix::sys::wait::waitid(
        nix::sys::wait::Id::Pid(pid),
        nix::sys::wait::WaitPidFlag::WEXITED
            | nix::sys::wait::WaitPidFlag::WNOHANG
            | nix::sys::wait::WaitPidFlag::WNOWAIT,
    ) {
        Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
        Ok(other) => return Err(fail(format!("it has already exited ({other:?})"))),
        Err(nix::errno::Errno::ECHILD) => {
            return Err(fail("it is not a child of this process".to_owned()));
        }
        Err(e) => return Err(fail(format!("cannot ask about it: {e}"))),
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// Starts `/bin/sh -c <script>` the way the broker is started (the
    /// script stands where the config path goes) and returns its stdout.
    async fn run(script: &str, run_as: Option<RunAs>) -> String {
        let mut p = spawn(Path::new("/bin/sh"), Path::new(script), run_as).expect("spawn");
        let (out, _) = p.take_output();
        let mut text = String::new();
        out.expect("stdout")
            .read_to_string(&mut text)
            .await
            .expect("read");
        assert!(p.wait().await.expect("wait").success(), "{text}");
        text
    }

    fn field<'a>(status: &'a str, name: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("", str::trim)
    }

    const SHOW: &str = "cat /proc/self/status; echo oom $(cat /proc/self/oom_score_adj)";

    #[tokio::test(flavor = "current_thread")]
    async fn the_broker_gets_a_higher_oom_score_and_no_ambient_capability() {
        let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let status = run(SHOW, None).await;
        assert_eq!(field(&status, "oom"), (own + 500).min(1000).to_string());
        assert_eq!(field(&status, "CapAmb:"), "0000000000000000");
        // Without a user to run as it keeps natsmeshd's.
        let uid = nix::unistd::getuid().as_raw().to_string();
        assert!(field(&status, "Uid:").starts_with(&uid), "{status}");
    }

    /// Needs root (or CAP_SETUID, CAP_SETGID): the systemd test checks the
    /// same under the packaged unit.
    #[tokio::test(flavor = "current_thread")]
    async fn the_broker_runs_as_the_given_user_with_no_other_group_or_capability() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing user needs root");
            return;
        }
        let who = RunAs {
            uid: 65534,
            gid: 65533,
        };
        let status = run(SHOW, Some(who)).await;
        assert_eq!(field(&status, "Uid:"), "65534\t65534\t65534\t65534");
        assert_eq!(field(&status, "Gid:"), "65533\t65533\t65533\t65533");
        assert_eq!(field(&status, "Groups:"), "");
        for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
            assert_eq!(field(&status, caps), "0000000000000000", "{caps}");
        }
        // Set before the change of user, and kept across it.
        let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(field(&status, "oom"), (own + 500).min(1000).to_string());
    }

    #[test]
    fn only_a_child_of_this_process_is_adopted() {
        // pid 1 is nobody's child; the check comes before the descriptors
        // are touched.
        let e = adopt(
            Handoff {
                pid: 1,
                stdout_fd: -1,
                stderr_fd: -1,
            },
            Path::new("x"),
        )
        .expect_err("pid 1 adopted");
        assert!(e.why.contains("not a child"), "{e}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_running_child_is_adopted() {
        let mut p = spawn(Path::new("/bin/sh"), Path::new("sleep 30"), None).expect("spawn");
        let h = p.handoff().expect("handoff");
        let adopted = adopt(h, Path::new("x")).expect("adopt");
        assert_eq!(adopted.pid(), p.pid());
        adopted.signal(Signal::SIGKILL).expect("kill");
        // The adopted handle's reaper thread races the original's; either
        // one sees the exit.
        let _ = p.wait().await;
    }
}
