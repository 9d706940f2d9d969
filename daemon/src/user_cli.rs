//! `natsmeshd user add`: makes a user's credentials, prints the secret once
//! and writes only its public part (an nkey) or its bcrypt hash into a
//! drop-in.

use std::io::Write as _;
use std::path::Path;

use crate::auth::{NoRandomness, random_password};

/// Why `user add` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// An account name the broker would not take.
    #[error("account name {0:?} may hold letters, digits, '_' and '-'")]
    Account(String),
    /// A user name with spaces or control characters.
    #[error("user name {0:?} is not usable")]
    Name(String),
    /// The new nkey's seed could not be encoded.
    #[error("{0}")]
    Seed(#[source] nkeys::error::Error),
    /// No password could be made.
    #[error(transparent)]
    Random(#[from] NoRandomness),
    /// Hashing the password failed.
    #[error("bcrypt: {0}")]
    Bcrypt(#[source] bcrypt::BcryptError),
    /// The drop-in could not be read or written.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// `read` or `write`.
        what: &'static str,
        /// The drop-in.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The drop-in would no longer parse.
    #[error("{} would not be valid TOML: {message}", path.display())]
    NotToml {
        /// The drop-in.
        path: std::path::PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// What `user add` was asked for.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// The account.
    pub account: &'a str,
    /// The user name (password users).
    pub name: &'a str,
    /// An nkey user instead of a password.
    pub nkey: bool,
    /// Publish allow list.
    pub publish: &'a [String],
    /// Subscribe allow list.
    pub subscribe: &'a [String],
    /// May reply to requests.
    pub allow_responses: bool,
    /// A leaf node's login at the leafnode listener, bound to `account`.
    pub leafnode: bool,
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| toml::Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// Appends the user to `file` (a TOML drop-in) and returns what to tell
/// the operator, the secret included. The file is checked to still be
/// valid TOML; on any failure it is left as it was.
pub fn add(user: &NewUser<'_>, file: &Path) -> Result<String, UserError> {
    if natsmesh_broker::conf::Name::new(user.account).is_none() {
        return Err(UserError::Account(user.account.to_owned()));
    }
    let (entry, secret) = if user.nkey {
        let kp = nkeys::KeyPair::new_user();
        let seed = kp.seed().map_err(UserError::Seed)?;
        (
            format!("nkey = {}\n", toml::Value::String(kp.public_key())),
            format!("nkey seed: {seed}"),
        )
    } else {
        if user.name.is_empty()
            || user
                .name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(UserError::Name(user.name.to_owned()));
        }
        let pw = random_password()?;
        let hash = bcrypt::hash(&pw, 11).map_err(UserError::Bcrypt)?;
        (
            format!(
                "name = {}\npassword_hash = {}\n",
                toml::Value::String(user.name.to_owned()),
                toml::Value::String(hash)
            ),
            format!("password: {pw}"),
        )
    };
    let mut text = if user.leafnode {
        format!(
            "\n[[broker.leafnodes.users]]\n{entry}account = {}\n",
            toml::Value::String(user.account.to_owned())
        )
    } else {
        format!("\n[[accounts.{}.users]]\n{entry}", user.account)
    };
    if !user.publish.is_empty() {
        text.push_str(&format!("publish = {}\n", toml_list(user.publish)));
    }
    if !user.subscribe.is_empty() {
        text.push_str(&format!("subscribe = {}\n", toml_list(user.subscribe)));
    }
    if user.allow_responses {
        text.push_str("allow_responses = true\n");
    }
    let before = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(UserError::Io {
                what: "read",
                path: file.to_path_buf(),
                source,
            });
        }
    };
    let after = format!("{before}{text}");
    toml::from_str::<toml::Table>(&after).map_err(|e| UserError::NotToml {
        path: file.to_path_buf(),
        message: e.message().to_owned(),
    })?;
    // The drop-in keeps the mode, owner and group it had (natsmeshd reads
    // it as its own user, often through the group); a new one takes the
    // directory's group, so `sudo natsmeshd user add` in
    // /etc/natsmesh/natsmesh.d does not leave a file natsmeshd cannot read.
    let (mode, owner) = keep_or_inherit(file);
    crate::files::write_atomic(file, after.as_bytes(), mode).map_err(|source| UserError::Io {
        what: "write",
        path: file.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    // The user is written: a failed chown must not swallow its secret, so
    // it is said, not returned as an error.
    if let Some((uid, gid)) = owner
        && let Err(e) = std::os::unix::fs::chown(file, Some(uid), Some(gid))
    {
        let _ = writeln!(
            out,
            "warning: cannot give {} owner {uid} and group {gid}: {e}; make sure natsmeshd can read it",
            file.display()
        );
    }
    let who = if user.nkey {
        "an nkey user".to_owned()
    } else if user.leafnode {
        format!("leaf node user {:?}", user.name)
    } else {
        format!("user {:?}", user.name)
    };
    let _ = writeln!(
        out,
        "added {who} to account {} in {}",
        user.account,
        file.display()
    );
    let _ = writeln!(out, "{secret}");
    let _ = writeln!(
        out,
        "(shown once: only the public key or a bcrypt hash was written; `natsmeshd reload` to apply)"
    );
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The mode and (owner, group) `file` should have after a rewrite: what it
/// has, or for a new file 0640 with this process's owner and the
/// directory's group.
fn keep_or_inherit(file: &Path) -> (u32, Option<(u32, u32)>) {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(m) = std::fs::symlink_metadata(file)
        && m.file_type().is_file()
    {
        return (m.mode() & 0o7777, Some((m.uid(), m.gid())));
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let owner = std::fs::metadata(dir)
        .ok()
        .map(|d| (nix::unistd::geteuid().as_raw(), d.gid()));
    (crate::files::PLAIN, owner)
}
