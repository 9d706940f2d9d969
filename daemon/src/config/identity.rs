//! This machine's identity for the configuration: from the provider's
//! metadata service, or from `[node]` with `provider = "none"`; and the
//! permanent server name kept next to the JetStream store.
//!
//! JetStream forbids renaming a server, and two servers with one name
//! across gateways duplicate messages, so the first start writes the name
//! into the state directory and every later start must agree with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load::Loaded;
use super::problem::Problem;
use super::schema::Provider;
use super::validate::Environment;
use crate::provider::digitalocean::DoMetadata;
use crate::provider::linode::LinodeMetadata;
use crate::provider::{Identity, identity_with_retry};

/// The file holding the server name.
pub const NAME_FILE: &str = "server-name";

/// The identity `provider = "none"` describes.
pub fn static_identity(loaded: &Loaded, env: &Environment) -> Identity {
    let n = &loaded.raw.node;
    Identity {
        provider: Provider::None,
        instance_id: String::new(),
        hostname: n.name.clone().unwrap_or_else(|| env.hostname.clone()),
        provider_region: String::new(),
        private_ipv4: n.private_address,
        public_ipv4: n.public_address,
        public_ipv6: n.public_ipv6,
        tags: Vec::new(),
    }
}

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
    let http = crate::provider::http::client(m.timeout.0);
    let found = match n.provider {
        Provider::None => return Ok(static_identity(loaded, env)),
        Provider::DigitalOcean => {
            identity_with_retry(&DoMetadata::new(&m.url, http), retry_for).await
        }
        Provider::Linode => {
            let mut bases = vec![m.url.clone()];
            bases.extend(m.ipv6_url.clone());
            identity_with_retry(&LinodeMetadata::new(&bases, http), retry_for).await
        }
    };
    found.map_err(|e| Problem {
        location: loaded.origins.get("node.provider").cloned(),
        key: Some("node.provider".into()),
        message: format!("cannot learn this machine's identity: {e}"),
    })
}

/// Where the name is kept.
pub fn name_file(state_dir: &Path) -> PathBuf {
    state_dir.join(NAME_FILE)
}

/// Compares `name` with the stored one, if any.
pub fn check_stored_name(state_dir: &Path, name: &str) -> Result<(), String> {
    let file = name_file(state_dir);
    match std::fs::read_to_string(&file) {
        Ok(stored) if stored.trim() == name => Ok(()),
        Ok(stored) => Err(format!(
            "this node was first started as {:?} (kept in {}), but its identity now gives {name:?}. JetStream forbids renaming a server, and two servers with one name duplicate messages across gateways. If this really is another server, move its state directory away first; if the name is wrong, restore the identity it had.",
            stored.trim(),
            file.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

/// Writes the name on first start (never overwrites).
pub fn persist_name(state_dir: &Path, name: &str) -> std::io::Result<()> {
    let file = name_file(state_dir);
    if file.exists() {
        return Ok(());
    }
    crate::prepare::write_atomically(&file, format!("{name}\n").as_bytes())
}
