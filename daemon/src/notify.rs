//! Telling systemd the truth: READY=1 when the broker serves, STATUS= on
//! every change, RELOADING=1/READY=1 around reloads, STOPPING=1, WATCHDOG=1
//! from the supervision loop, EXTEND_TIMEOUT_USEC while JetStream recovers.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op. A
//! failed send is logged at debug level and never stops supervision.
//!
//! Every send is a non-blocking datagram: the caller is the supervision
//! loop, which must never wait on systemd (a full socket buffer drops the
//! message; the next WATCHDOG=1 or STATUS= follows).

use std::time::Duration;

use sd_notify::NotifyState;

/// The systemd notifier.
#[derive(Debug, Clone)]
pub struct Notifier {
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` / `WATCHDOG_USEC` from the environment.
    pub fn from_env() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// How often WATCHDOG=1 must be sent (half systemd's WatchdogSec).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        if let Err(e) = send_nonblocking(&path, msg.as_bytes()) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// READY=1 with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// STATUS=…
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// RELOADING=1 with MONOTONIC_USEC (required by systemd 253+).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// STOPPING=1
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// WATCHDOG=1
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// EXTEND_TIMEOUT_USEC=…
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }
}

/// One datagram to the notification socket (a path, or `@name` in the
/// abstract namespace), without waiting: MSG_DONTWAIT's effect through a
/// non-blocking socket.
fn send_nonblocking(path: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let sent = sock.send_to_addr(msg, &addr)?;
    if sent == msg.len() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "incomplete datagram",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_socket_does_not_block_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        // Bound and never read: its queue fills.
        let _sink = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let msg = vec![b'x'; 4096];
        let start = std::time::Instant::now();
        let mut refused = 0;
        for _ in 0..10_000 {
            if send_nonblocking(path.as_os_str(), &msg).is_err() {
                refused += 1;
            }
        }
        // A blocking send would hang on the first full queue.
        assert!(refused > 0, "the queue never filled");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_datagram_arrives_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sink = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        send_nonblocking(path.as_os_str(), b"WATCHDOG=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = sink.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }
}
