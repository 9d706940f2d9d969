//! This machine's identity for the configuration: from the provider's
//! metadata service, or from `[node]` with `provider = "none"`; and the
//! permanent server name kept next to the JetStream store.
//!
//! JetStream forbids renaming a server, and two servers with one name
//! across gateways duplicate messages, so the first start writes the name
//! into the state directory and every later start must agree with it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::load::Loaded;
use super::schema::Provider;
use super::validate::Environment;

/// Who this machine is, as its provider says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Where it came from.
    pub provider: Provider,
    /// The provider's instance id (droplet id, Linode id); empty for `none`.
    pub instance_id: String,
    /// Host name / label.
    pub hostname: String,
    /// The provider's own region name (`nyc3`, `us-east`), not natsmesh's.
    pub provider_region: String,
    /// Private / VPC IPv4: routes and the load balancer's path.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4: gateways between regions.
    pub public_ipv4: Option<Ipv4Addr>,
    /// Public IPv6.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Provider tags.
    pub tags: Vec<String>,
}

impl Identity {
    /// One line for status: provider, instance, region, addresses.
    pub fn describe(&self) -> String {
        let mut parts = vec![match self.provider {
            Provider::None => format!("from configuration (host {})", self.hostname),
            p => format!(
                "{p} instance {} ({}) in {}",
                self.instance_id, self.hostname, self.provider_region
            ),
        }];
        if let Some(a) = self.private_ipv4 {
            parts.push(format!("private {a}"));
        }
        if let Some(a) = self.public_ipv4 {
            parts.push(format!("public {a}"));
        }
        if let Some(a) = self.public_ipv6 {
            parts.push(format!("public {a}"));
        }
        parts.join(", ")
    }

    /// The permanent server name: `<provider>-<region>-<instance id>` on a
    /// cloud, the host name (or `node.name`) otherwise; limited to
    /// `[A-Za-z0-9_.-]`, anything else becoming `-`.
    pub fn server_name(&self) -> String {
        let raw = match self.provider {
            Provider::None => self.hostname.clone(),
            p => format!(
                "{}-{}-{}",
                p.as_str(),
                self.provider_region,
                self.instance_id
            ),
        };
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }
}

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
pub fn check_stored_name(state_dir: &Path, name: &str) -> Result<(), StoredNameError> {
    let file = name_file(state_dir);
    let stored = match crate::files::read_private_string(&file, NAME_FILE_MAX) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StoredNameError::Read { file, source }),
    };
    if !super::validate::is_server_name(&stored) {
        return Err(StoredNameError::NotAName { file });
    }
    match stored {
        stored if stored == name => Ok(()),
        stored => Err(StoredNameError::Renamed {
            stored,
            file,
            name: name.to_owned(),
        }),
    }
}

/// Why the stored server name refuses a start.
#[derive(Debug, thiserror::Error)]
pub enum StoredNameError {
    /// The file is there but could not be read (a link is refused here).
    #[error("cannot read {}: {source}", file.display())]
    Read {
        /// The name file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its content is no server name (never shown: it may be another file's).
    #[error(
        "{} does not hold a valid server name (letters, digits, '_', '.', '-'; at most 128); it is written on the first start and never changes: restore it or move the state directory away",
        file.display()
    )]
    NotAName {
        /// The name file.
        file: PathBuf,
    },
    /// The identity now gives another name.
    #[error(
        "this node was first started as {stored:?} (kept in {}), but its identity now gives {name:?}. JetStream forbids renaming a server, and two servers with one name duplicate messages across gateways. If this really is another server, move its state directory away first; if the name is wrong, restore the identity it had.",
        file.display()
    )]
    Renamed {
        /// The name kept.
        stored: String,
        /// The name file.
        file: PathBuf,
        /// The name the identity gives now.
        name: String,
    },
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
        let e = check_stored_name(dir.path(), "n2")
            .expect_err("renamed")
            .to_string();
        assert!(e.contains("\"n1\""), "{e}");
    }

    #[test]
    fn a_linked_name_file_is_refused_without_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "TOPSECRET\n").expect("write");
        symlink(&secret, name_file(dir.path())).expect("symlink");
        let e = check_stored_name(dir.path(), "n1")
            .expect_err("link")
            .to_string();
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
        let e = check_stored_name(dir.path(), "n1")
            .expect_err("garbage")
            .to_string();
        assert!(e.contains("does not hold a valid server name"), "{e}");
        assert!(!e.contains("root:"), "{e}");
    }
}
