//! Telling systemd the truth: READY=1 when the broker serves, STATUS= on
//! every change, RELOADING=1/READY=1 around reloads, STOPPING=1, WATCHDOG=1
//! from the supervision loop, EXTEND_TIMEOUT_USEC while JetStream recovers.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op. A
//! failed send is logged at debug level and never stops supervision.

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
        if let Err(e) = sd_notify::notify(states) {
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
