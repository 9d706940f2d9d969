//! Each feature's settings as validated, as plain data. Config owns them
//! and the features read them (see the layering in `lib.rs`): validation
//! builds them without knowing any feature, and a feature's behaviour
//! (its `impl` blocks, its tasks) stays in the feature.

pub mod balancer;
pub mod discovery;
pub mod fleet;
pub mod gate;
pub mod metrics;
pub mod provider;
pub mod publish;
pub mod reboot;
pub mod record;
pub mod tls;
