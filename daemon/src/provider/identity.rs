//! Learning this machine's identity from its provider's metadata service
//! while the configuration is loaded. Here, not in `config`, because it
//! calls the providers: config stays below every feature.

use std::path::PathBuf;
use std::time::Duration;

use super::Identity;
use crate::config::identity::static_identity;
use crate::config::load::{self, Loaded};
use crate::config::{Environment, Patience, Problem, Problems, Settings, Sources, validate};

/// Learns the identity: asks the provider (retrying at most `retry_cap`,
/// or `node.metadata.retry_for` when shorter), or reads `[node]`.
pub async fn resolve(
    loaded: &Loaded,
    env: &Environment,
    retry_cap: Option<Duration>,
) -> Result<Identity, Problem> {
    let n = &loaded.raw.node;
    let m = &n.metadata;
    let retry_for = retry_cap.map_or(m.retry_for.0, |cap| cap.min(m.retry_for.0));
    let Some(found) = super::cloud_identity(n.provider, m, retry_for).await else {
        return Ok(static_identity(loaded, env));
    };
    found.map_err(|e| Problem {
        location: loaded.origins.get("node.provider").cloned(),
        key: Some("node.provider".into()),
        message: format!("cannot learn this machine's identity: {e}"),
    })
}

/// Finds, loads and validates the configuration in one step, learning this
/// machine's identity on the way. `credentials_source`: see
/// [`crate::config::unit_credentials`].
pub async fn load_settings(
    sources: &Sources,
    patience: Patience,
    credentials_source: Option<PathBuf>,
) -> Result<(Loaded, Settings), Problems> {
    let loaded = load::load(sources)?;
    let mut env = Environment::current(loaded.embedded);
    if env.credentials_dir.is_none() {
        env.credentials_source = credentials_source;
    }
    let cap = match patience {
        Patience::Configured => None,
        Patience::AtMost(d) => Some(d),
    };
    let identity = resolve(&loaded, &env, cap)
        .await
        .map_err(|p| Problems(vec![p]))?;
    let settings = validate::validate(&loaded, &env, &identity)?;
    Ok((loaded, settings))
}
