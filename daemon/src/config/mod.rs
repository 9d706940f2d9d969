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
pub mod reload;
pub mod schema;
pub mod settings;
pub mod units;
pub mod validate;

use std::path::{Path, PathBuf};

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

/// The directory the packaged unit loads whole as credentials
/// (`LoadCredential=natsmesh:/etc/natsmesh/credentials`).
pub const UNIT_CREDENTIALS: &str = "/etc/natsmesh/credentials";

/// Names the unit's credentials source for a command run outside the unit
/// (a unit edited to load another directory, or a test).
pub const CREDENTIALS_SOURCE_VAR: &str = "NATSMESH_CREDENTIALS_SOURCE";

/// Where relative credential names are found by a command run outside the
/// unit (`sudo natsmeshd check` over SSH): the directory the unit loads
/// them from, so the check reads what the service will. `None` inside the
/// unit (`$CREDENTIALS_DIRECTORY` is set and wins), and for a configuration
/// other than the packaged one (a person's test file resolves names next to
/// itself, as before) unless `NATSMESH_CREDENTIALS_SOURCE` names one.
pub fn unit_credentials(sources: &Sources) -> Option<PathBuf> {
    unit_credentials_from(sources, |v| std::env::var_os(v), Path::is_dir)
}

fn unit_credentials_from(
    sources: &Sources,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
    is_dir: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if var("CREDENTIALS_DIRECTORY").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    if let Some(dir) = var(CREDENTIALS_SOURCE_VAR).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let packaged =
        matches!(sources, Sources::Files { main, .. } if main == Path::new(load::DEFAULT_PATH));
    let dir = Path::new(UNIT_CREDENTIALS);
    (packaged && is_dir(dir)).then(|| dir.to_path_buf())
}

/// Loads and validates with an identity already known (a reload: the
/// machine did not change, and a metadata hiccup must not refuse it).
pub fn load_settings_as(
    sources: &Sources,
    identity: &identity::Identity,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn packaged() -> Sources {
        Sources::Files {
            main: PathBuf::from(load::DEFAULT_PATH),
            files: vec![PathBuf::from(load::DEFAULT_PATH)],
        }
    }

    fn vars<'a>(set: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
        move |name| {
            set.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        }
    }

    #[test]
    fn the_packaged_config_outside_the_unit_reads_the_units_credentials_source() {
        assert_eq!(
            unit_credentials_from(&packaged(), vars(&[]), |_| true),
            Some(PathBuf::from(UNIT_CREDENTIALS))
        );
        // The package is not installed: nothing to read there.
        assert_eq!(
            unit_credentials_from(&packaged(), vars(&[]), |_| false),
            None
        );
    }

    #[test]
    fn inside_the_unit_its_own_credentials_win() {
        let set = [(
            "CREDENTIALS_DIRECTORY",
            "/run/credentials/natsmeshd.service",
        )];
        assert_eq!(
            unit_credentials_from(&packaged(), vars(&set), |_| true),
            None
        );
        let set = [
            (
                "CREDENTIALS_DIRECTORY",
                "/run/credentials/natsmeshd.service",
            ),
            (CREDENTIALS_SOURCE_VAR, "/srv/creds"),
        ];
        assert_eq!(
            unit_credentials_from(&packaged(), vars(&set), |_| true),
            None
        );
    }

    #[test]
    fn another_config_resolves_next_to_itself_unless_a_source_is_named() {
        let other = Sources::Files {
            main: PathBuf::from("/home/op/test.toml"),
            files: vec![PathBuf::from("/home/op/test.toml")],
        };
        assert_eq!(unit_credentials_from(&other, vars(&[]), |_| true), None);
        let set = [(CREDENTIALS_SOURCE_VAR, "/srv/creds")];
        assert_eq!(
            unit_credentials_from(&other, vars(&set), |_| false),
            Some(PathBuf::from("/srv/creds"))
        );
    }
}
