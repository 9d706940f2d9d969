//! natsmesh's configuration: TOML files → merged input → validated settings.
//!
//! - [`load`]: find the main file and drop-ins, check each, merge, remember
//!   where each value came from;
//! - [`schema`]: the TOML shape and every default;
//! - [`units`]: sizes and durations;
//! - [`validate`]: meaning and permission, every problem at once;
//! - [`explain`]: the effective values and their origins.

pub mod explain;
pub mod load;
pub mod problem;
pub mod schema;
pub mod units;
pub mod validate;

use std::path::Path;

pub use load::{Loaded, Sources};
pub use problem::{Problem, Problems};
pub use validate::{Environment, Settings};

/// Finds, loads and validates the configuration in one step.
pub fn load_settings(sources: &Sources) -> Result<(Loaded, Settings), Problems> {
    let loaded = load::load(sources)?;
    let env = Environment::current(loaded.embedded);
    let settings = validate::validate(&loaded, &env)?;
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
