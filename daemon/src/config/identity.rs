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

/// The most a name file holds (a name is at most 128 bytes).
const NAME_FILE_MAX: u64 = 1024;

/// Compares `name` with the stored one, if any. The state directory
/// belongs to the service user and root runs `check`: the file is read
/// without following a link, and its content is shown only once it is a
/// valid server name, so it cannot be used to print another file.
pub fn check_stored_name(state_dir: &Path, name: &str) -> Result<(), String> {
    let file = name_file(state_dir);
    let stored = match crate::files::read_private_string(&file, NAME_FILE_MAX) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    if !super::validate::is_server_name(&stored) {
        return Err(format!(
            "{} does not hold a valid server name (letters, digits, '_', '.', '-'; at most 128); it is written on the first start and never changes: restore it or move the state directory away",
            file.display()
        ));
    }
    match stored {
        stored if stored == name => Ok(()),
        stored => Err(format!(
            "this node was first started as {:?} (kept in {}), but its identity now gives {name:?}. JetStream forbids renaming a server, and two servers with one name duplicate messages across gateways. If this really is another server, move its state directory away first; if the name is wrong, restore the identity it had.",
            stored,
            file.display()
        )),
    }
}

/// Writes the name on first start (never overwrites).
pub fn persist_name(state_dir: &Path, name: &str) -> std::io::Result<()> {
    let file = name_file(state_dir);
    // Whatever is there (even a dangling link) was checked, or refused,
    // by `check_stored_name`; never write through it.
    if file.symlink_metadata().is_ok() {
        return Ok(());
    }
    crate::files::write_atomic(&file, format!("{name}\n").as_bytes(), crate::files::PLAIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_stored_name_is_compared() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(check_stored_name(dir.path(), "n1").is_ok());
        persist_name(dir.path(), "n1").expect("persist");
        assert!(check_stored_name(dir.path(), "n1").is_ok());
        let e = check_stored_name(dir.path(), "n2").expect_err("renamed");
        assert!(e.contains("\"n1\""), "{e}");
    }

    #[test]
    fn a_linked_name_file_is_refused_without_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "TOPSECRET\n").expect("write");
        symlink(&secret, name_file(dir.path())).expect("symlink");
        let e = check_stored_name(dir.path(), "n1").expect_err("link");
        assert!(e.contains("symbolic link"), "{e}");
        assert!(e.contains("server-name"), "{e}");
        assert!(!e.contains("TOPSECRET"), "{e}");
        // Nor is it written through.
        persist_name(dir.path(), "n1").expect("persist");
        assert_eq!(
            std::fs::read_to_string(&secret).expect("read"),
            "TOPSECRET\n"
        );
    }

    #[test]
    fn a_name_file_that_holds_no_name_is_refused_without_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(name_file(dir.path()), "root:$6$hash:19000::\n").expect("write");
        let e = check_stored_name(dir.path(), "n1").expect_err("garbage");
        assert!(e.contains("does not hold a valid server name"), "{e}");
        assert!(!e.contains("root:"), "{e}");
    }
}
