//! natsmesh's configuration: TOML files → merged input → validated settings.
//!
//! - [`load`]: find the main file and drop-ins, check each, merge, remember
//!   where each value came from;
//! - [`schema`]: the TOML shape and every default;
//! - [`units`]: sizes and durations;
//! - [`validate`]: meaning and permission, every problem at once;
//! - [`explain`]: the effective values and their origins;
//! - [`notice`]: what `check` tells without refusing.

pub mod bind;
pub mod explain;
pub mod identity;
pub mod load;
pub mod notice;
pub mod problem;
pub mod schema;
pub mod units;
pub mod validate;

use std::path::Path;

pub use load::{Loaded, Sources};
pub use problem::{Problem, Problems};
pub use validate::{Environment, Settings};

/// How long a command may wait for the metadata service: `run` waits the
/// configured `node.metadata.retry_for`; `check` and `render` answer soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// As configured.
    Configured,
    /// At most this long.
    AtMost(std::time::Duration),
}

/// Finds, loads and validates the configuration in one step, learning this
/// machine's identity on the way.
pub async fn load_settings(
    sources: &Sources,
    patience: Patience,
) -> Result<(Loaded, Settings), Problems> {
    let loaded = load::load(sources)?;
    let env = Environment::current(loaded.embedded);
    let cap = match patience {
        Patience::Configured => None,
        Patience::AtMost(d) => Some(d),
    };
    let identity = identity::resolve(&loaded, &env, cap)
        .await
        .map_err(|p| Problems(vec![p]))?;
    let settings = validate::validate(&loaded, &env, &identity)?;
    Ok((loaded, settings))
}

/// Loads and validates with an identity already known (a reload: the
/// machine did not change, and a metadata hiccup must not refuse it).
pub fn load_settings_as(
    sources: &Sources,
    identity: &crate::provider::Identity,
) -> Result<(Loaded, Settings), Problems> {
    let loaded = load::load(sources)?;
    let env = Environment::current(loaded.embedded);
    let identity = if loaded.raw.node.provider == identity.provider && identity.provider.is_cloud()
    {
        identity.clone()
    } else {
        identity::static_identity(&loaded, &env)
    };
    if loaded.raw.node.provider != identity.provider {
        return Err(Problems(vec![Problem {
            location: loaded.origins.get("node.provider").cloned(),
            key: Some("node.provider".into()),
            message: "the provider cannot change while natsmeshd runs; restart the service".into(),
        }]));
    }
    let settings = validate::validate(&loaded, &env, &identity)?;
    Ok((loaded, settings))
}

/// The control socket the configuration names, or the default; readable
/// even when the rest of the configuration is not valid, so `status` works
/// while an operator is mid-edit.
pub fn control_socket(sources: &Sources) -> std::path::PathBuf {
    let embedded = *sources == Sources::Embedded;
    load::load(sources)
        .ok()
        .and_then(|l| l.raw.control.socket)
        .unwrap_or_else(|| validate::default_control_socket(embedded))
}

/// Finds the configuration files (see [`load::discover`]).
pub fn discover(explicit: Option<&Path>) -> Result<Sources, Problems> {
    load::discover(explicit).map_err(|p| Problems(vec![p]))
}
