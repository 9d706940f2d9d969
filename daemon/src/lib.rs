//! natsmeshd: turns a machine into a member of a secure, multi-region NATS
//! supercluster by running the real nats-server as a careful operator would.
//!
//! `main.rs` only parses the command line; everything else is here so tests
//! can call it.
//!
//! The modules are layers, lowest first; a module names (`crate::…`) only
//! modules of its own layer or below, so they form no cycle
//! (`daemon/tests/layering.rs` checks it in CI):
//!
//! 1. leaves, naming nothing above them: `files`, `logging`, `notify`,
//!    `httpd`, `upgrade`, `broker_user` (the broker's OS user), `addr`
//!    (addresses derived from listeners), `nkey` (NATS key checks),
//!    `secret` (API tokens and TSIG secrets, never printed), `command`
//!    (what a caller may ask the supervisor), `backoff` (the one retry
//!    backoff: provider calls, DNS lookups, metadata, crash restarts),
//!    `shutdown` (the one cancellation token and task tracker);
//! 2. `config`: the files, their validation and each feature's settings as
//!    plain data (`config::settings`). Config owns the settings and the
//!    features depend on it, never the reverse: config names no feature;
//! 3. `health`: the supervisor's typed `Health` (its state, the probes),
//!    the printable status built from it at the edge and what a pointer
//!    announces, read by many features without naming the supervisor;
//!    `reconcile`: the loop and the backoff the pointers (`balancer`,
//!    `publish`) share, following that status;
//! 4. the features: `provider` (one module per cloud: its metadata,
//!    balancer and DNS API behind traits, naming no other feature), `tls`,
//!    `auth`, `discovery`, `gate`, `prepare`, `fleet`, `publish`,
//!    `balancer`, `metrics`;
//! 5. `supervisor`, which runs the broker with the features, and the
//!    commands' own modules: `control`, `ca_cli`, `user_cli`, `user_data`,
//!    `plan`;
//! 6. `run`, which starts it all.
#![forbid(unsafe_code)]

pub mod addr;
pub mod auth;
pub mod backoff;
pub mod balancer;
pub mod broker_user;
pub mod ca_cli;
pub mod command;
pub mod config;
pub mod control;
pub mod discovery;
pub mod files;
pub mod fleet;
pub mod gate;
pub mod health;
pub mod httpd;
pub mod logging;
pub mod metrics;
pub mod nkey;
pub mod notify;
pub mod plan;
pub mod prepare;
pub mod provider;
pub mod publish;
pub mod reconcile;
pub mod run;
pub mod secret;
pub mod shutdown;
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
