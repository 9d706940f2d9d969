//! natsmeshd: turns a machine into a member of a secure, multi-region NATS
//! supercluster by running the real nats-server as a careful operator would.
//!
//! `main.rs` only parses the command line; everything else is here so tests
//! can call it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod balancer;
pub mod broker_user;
pub mod ca_cli;
pub mod config;
pub mod control;
pub mod discovery;
pub mod files;
pub mod fleet;
pub mod gate;
pub mod httpd;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod prepare;
pub mod provider;
pub mod publish;
pub mod run;
pub mod supervisor;
pub mod tls;
pub mod upgrade;
pub mod user_cli;
pub mod user_data;

/// Exit code for a configuration problem (`check` and refused starts).
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;

/// Whether this process was started by systemd as a service.
pub fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}

/// A wall-clock time as Unix milliseconds (0 before the epoch), as status
/// and metrics report times.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
