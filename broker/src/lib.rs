//! natsmesh-broker: everything natsmesh knows about nats-server.
//!
//! - [`conf`]: the configuration language (quoting, escaping, writing);
//! - [`model`]: the typed config natsmesh runs, and its rendering;
//! - [`version`]: which release a binary is, and which keys it knows;
//! - [`validate`]: the start-time checks `nats-server -t` does not make;
//! - [`check`]: `nats-server -t` itself;
//! - [`classify`]: whether a change needs a reload or a restart;
//! - [`include`]: the operator's include files, read once within bounds and judged;
//! - [`process`]: starting and signalling the broker;
//! - [`monitor`]: probing a running broker (HTTP monitoring, client port);
//! - [`log`]: reading its log lines.
//!
//! This crate never decides policy for a node (that is the daemon's job); it
//! only knows what a given nats-server accepts.
#![deny(unsafe_code)]

pub mod check;
pub mod classify;
pub mod conf;
pub mod include;
pub mod log;
pub mod model;
pub mod monitor;
pub mod process;
pub mod validate;
pub mod version;

pub use semver::Version;
