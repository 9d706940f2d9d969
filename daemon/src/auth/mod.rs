//! Client authentication: the checks on keys and hashes, natsmeshd's own
//! user in the system account, and its connection to the broker for `$SYS`
//! requests.
//!
//! The system user's password never reaches a log, the command line or a
//! child's environment: it lives in a 0600 file (a systemd credential, or
//! one natsmeshd generates in its state directory), and only its bcrypt
//! hash is rendered. The hash is cached so the rendered file stays the
//! same from one reload to the next.

pub mod creds;

use std::fmt;
use std::path::Path;

use natsmesh_broker::conf::Name;
use natsmesh_broker::model::{Account, Credential, Permissions, User};
use sha2::{Digest, Sha256};

use crate::config::settings::fleet::{FLEET_ACCOUNT, FLEET_USER};
use crate::config::validate::{SYSTEM_ACCOUNT, SYSTEM_USER, Settings, SystemUser};
use crate::files::{SECRET, write_atomic};
pub use crate::nkey::{anonymous_password, is_account_key, is_user_nkey};

/// The system gave no randomness (no password can be made).
#[derive(Debug, thiserror::Error)]
#[error("no randomness: {0}")]
pub struct NoRandomness(#[source] pub getrandom::Error);

/// A new random password (hex, 256 bits).
pub fn random_password() -> Result<String, NoRandomness> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(NoRandomness)?;
    Ok(hex::encode(bytes))
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret just made.
    pub(crate) fn new(s: String) -> Self {
        Secret(s)
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The most a password or hash file holds.
const SMALL_FILE_MAX: u64 = 4096;

/// Why natsmeshd's user could not be set up, or the broker not reached or
/// asked as it.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A secret others may read, or a link.
    #[error(transparent)]
    Mode(#[from] crate::files::UnsafeMode),
    /// A password file with nothing in it.
    #[error("{} is empty", .0.display())]
    Empty(std::path::PathBuf),
    /// No password could be made.
    #[error(transparent)]
    Random(#[from] NoRandomness),
    /// A file or directory could not be read, created or written.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// `read`, `create`, `write`.
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Hashing the password failed.
    #[error("bcrypt: {0}")]
    Bcrypt(#[source] bcrypt::BcryptError),
    /// The system account's name is not a broker name (cannot happen).
    #[error("system account name")]
    AccountName,
    /// The temporary users' file is unusable.
    #[error(transparent)]
    Creds(#[from] creds::CredsError),
    /// `$SYS` needs the system user.
    #[error("no system user configured")]
    NoSystemUser,
    /// The client listener has no fixed port to dial.
    #[error("no client address")]
    NoClientAddress,
    /// A `.creds` file the client could not read.
    #[error("{}: {source}", path.display())]
    CredsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed.
    #[error("{0}")]
    Connect(#[source] async_nats::ConnectError),
    /// The reply subscription failed.
    #[error("$SYS subscribe: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The request could not be sent.
    #[error("$SYS request: {0}")]
    Publish(#[source] async_nats::PublishError),
    /// The request could not be flushed.
    #[error("$SYS request: {0}")]
    Flush(#[source] async_nats::client::FlushError),
    /// Nobody answered `$SYS.REQ.SERVER.PING.ACCOUNTZ`.
    #[error("no server answered the accounts request")]
    NoAccountsAnswer,
    /// The reload request timed out.
    #[error("no reply to the $SYS reload request")]
    ReloadTimeout,
    /// The reload request failed.
    #[error("$SYS reload request: {0}")]
    ReloadRequest(#[source] async_nats::RequestError),
    /// An API answer that is not JSON.
    #[error("unreadable answer: {0}")]
    Unreadable(#[source] serde_json::Error),
    /// The API's own refusal (its description).
    #[error("{0}")]
    Refused(String),
}

/// Reads natsmeshd's system password, creating it (0600) when allowed.
/// The generated one lives in the state directory, which the service user
/// can write: never through a link there. Either must be 0600.
fn system_password(file: &Path, generate: bool) -> Result<Secret, AuthError> {
    let read = if generate {
        crate::files::read_private_string(file, SMALL_FILE_MAX)
    } else {
        std::fs::read_to_string(file)
    };
    if read.is_ok() {
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        crate::files::check_secret(file, creds.as_deref())?;
    }
    match read {
        Ok(s) if !s.trim().is_empty() => Ok(Secret(s.trim().to_owned())),
        Ok(_) => Err(AuthError::Empty(file.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
            let pw = random_password()?;
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|source| AuthError::Io {
                    what: "create",
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            write_atomic(file, format!("{pw}\n").as_bytes(), SECRET).map_err(|source| {
                AuthError::Io {
                    what: "write",
                    path: file.to_path_buf(),
                    source,
                }
            })?;
            Ok(Secret(pw))
        }
        Err(source) => Err(AuthError::Io {
            what: "read",
            path: file.to_path_buf(),
            source,
        }),
    }
}

/// The bcrypt hash of `pw`, from a cache in `cache_dir` keyed by the
/// password's SHA-256 (bcrypt salts differ on every call, and a new hash
/// would look like a configuration change).
fn cached_hash(pw: &Secret, cache_dir: &Path) -> Result<String, AuthError> {
    let key = hex::encode(Sha256::digest(pw.expose()));
    let cache = cache_dir.join("system.password.bcrypt");
    if let Ok(text) = crate::files::read_private_string(&cache, SMALL_FILE_MAX)
        && let Some((k, h)) = text.trim().split_once(' ')
        && k == key
    {
        return Ok(h.to_owned());
    }
    let hash = bcrypt::hash(pw.expose(), 10).map_err(AuthError::Bcrypt)?;
    std::fs::create_dir_all(cache_dir).map_err(|source| AuthError::Io {
        what: "create",
        path: cache_dir.to_path_buf(),
        source,
    })?;
    write_atomic(&cache, format!("{key} {hash}\n").as_bytes(), SECRET).map_err(|source| {
        AuthError::Io {
            what: "write",
            path: cache.clone(),
            source,
        }
    })?;
    Ok(hash)
}

/// natsmeshd's logins in the broker's configuration: the system account
/// with natsmeshd's user (and operators' temporary users), and
/// natsmeshd's user in its own account (the lease bucket's) when that is
/// rendered. Read from the files once (the password, its hash, the
/// temporary users); adding it to a configuration is pure
/// ([`crate::prepare::effective`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemAccount {
    account: Account,
    fleet_user: User,
}

impl SystemAccount {
    /// Adds it to `server`'s accounts, replacing any of the same name.
    pub fn add_to(&self, server: &mut natsmesh_broker::model::ServerConfig) {
        server.accounts.retain(|a| a.name != self.account.name);
        server.accounts.push(self.account.clone());
        if let Some(fleet) = server
            .accounts
            .iter_mut()
            .find(|a| a.name.as_str() == FLEET_ACCOUNT)
        {
            fleet.users = vec![self.fleet_user.clone()];
        }
    }
}

/// natsmeshd's logins for `settings` (accounts mode with a password; none
/// otherwise); `cache_dir` keeps the hash and the temporary users.
pub fn system_account(
    settings: &Settings,
    cache_dir: &Path,
) -> Result<Option<SystemAccount>, AuthError> {
    let Some(SystemUser::Password { file, generate }) = &settings.system_user else {
        return Ok(None);
    };
    let pw = system_password(file, *generate)?;
    let hash = cached_hash(&pw, cache_dir)?;
    let Some(name) = Name::new(SYSTEM_ACCOUNT) else {
        return Err(AuthError::AccountName);
    };
    let mut users = vec![User {
        credential: Credential::Password {
            user: SYSTEM_USER.into(),
            password: hash.clone(),
        },
        permissions: Permissions::default(),
    }];
    // Operators' temporary users (`fleet creds`), those not yet expired:
    // a restart keeps them, and any reload after their expiry drops them.
    let now = crate::unix_ms(std::time::SystemTime::now());
    let temporary = creds::load(cache_dir)?;
    users.extend(creds::live(temporary, now).into_iter().map(|u| User {
        credential: Credential::Password {
            user: u.name,
            password: u.hash,
        },
        permissions: Permissions::default(),
    }));
    Ok(Some(SystemAccount {
        account: Account {
            name,
            jetstream: None,
            users,
            exports: Vec::new(),
            imports: Vec::new(),
        },
        fleet_user: User {
            credential: Credential::Password {
                user: FLEET_USER.into(),
                password: hash,
            },
            permissions: Permissions::default(),
        },
    }))
}

/// Connects to the local broker as natsmeshd's system user.
pub async fn system_client(settings: &Settings) -> Result<async_nats::Client, AuthError> {
    let Some(user) = &settings.system_user else {
        return Err(AuthError::NoSystemUser);
    };
    local_client(settings, user, SYSTEM_USER).await
}

/// Connects to the local broker as `name` (password logins) with the
/// secret `login` names.
pub async fn local_client(
    settings: &Settings,
    login: &SystemUser,
    name: &str,
) -> Result<async_nats::Client, AuthError> {
    let addr =
        crate::addr::local_addr(&settings.server.listen).ok_or(AuthError::NoClientAddress)?;
    let mut opts = match login {
        SystemUser::Password { file, .. } => {
            let pw = system_password(file, false)?;
            async_nats::ConnectOptions::with_user_and_password(name.into(), pw.expose().into())
        }
        SystemUser::Creds(file) => async_nats::ConnectOptions::with_credentials_file(file)
            .await
            .map_err(|source| AuthError::CredsFile {
                path: file.clone(),
                source,
            })?,
    };
    // Only ever this node's own broker: the passwords are per node, so a
    // reconnect to a server the cluster advertised would be refused there
    // (and logged by it as an authentication error).
    opts = opts
        .name("natsmeshd")
        .connection_timeout(std::time::Duration::from_secs(2))
        .max_reconnects(Some(0))
        .ignore_discovered_servers();
    if settings.server.tls.is_some()
        && let Some(tls) = &settings.tls
    {
        opts = opts
            .add_root_certificates(tls.ca_file.clone())
            .require_tls(true);
        if let Some(c) = &tls.client_cert_file {
            opts = opts.add_root_certificates(c.clone());
        }
    }
    opts.connect(addr.to_string())
        .await
        .map_err(AuthError::Connect)
}

/// Sends a `$SYS` ping (`subject`, every server answers) and gathers the
/// answers that arrive within `wait`.
pub async fn sys_ping(
    client: &async_nats::Client,
    subject: &'static str,
    body: String,
    wait: std::time::Duration,
) -> Result<Vec<async_nats::Message>, AuthError> {
    use futures_util::StreamExt as _;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(AuthError::Subscribe)?;
    client
        .publish_with_reply(subject, inbox, body.into())
        .await
        .map_err(AuthError::Publish)?;
    client.flush().await.map_err(AuthError::Flush)?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        out.push(msg);
    }
    Ok(out)
}

/// Every server's account names, from `$SYS.REQ.SERVER.PING.ACCOUNTZ`
/// (answers gathered for a second), as (server name, accounts).
pub async fn accounts_of_all(
    client: &async_nats::Client,
) -> Result<Vec<(String, std::collections::BTreeSet<String>)>, AuthError> {
    let answers = sys_ping(
        client,
        "$SYS.REQ.SERVER.PING.ACCOUNTZ",
        "{}".into(),
        std::time::Duration::from_secs(1),
    )
    .await?;
    let mut out = Vec::new();
    for msg in answers {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&msg.payload) else {
            continue;
        };
        let server = v["server"]["name"].as_str().unwrap_or_default().to_owned();
        let accounts = v["data"]["accounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    // Every server has these of its own.
                    .filter(|n| *n != "$G" && *n != "$SYS")
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        out.push((server, accounts));
    }
    if out.is_empty() {
        return Err(AuthError::NoAccountsAnswer);
    }
    Ok(out)
}

/// Asks the broker to reload its configuration through `$SYS` (2.10+):
/// `Ok(())`, or the broker's reason for refusing.
pub async fn sys_reload(client: &async_nats::Client, server_id: &str) -> Result<(), AuthError> {
    let subject = format!("$SYS.REQ.SERVER.{server_id}.RELOAD");
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.request(subject, "".into()),
    )
    .await
    .map_err(|_| AuthError::ReloadTimeout)?
    .map_err(AuthError::ReloadRequest)?;
    api_answer(&reply.payload)
}

/// A `$SYS` or JetStream API answer: `Ok`, or its error's description.
pub fn api_answer(payload: &[u8]) -> Result<(), AuthError> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(AuthError::Unreadable)?;
    match v.get("error") {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(e) => Err(AuthError::Refused(
            e.get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("refused")
                .to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_generated_password_is_0600_and_never_read_through_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("system.password");
        let pw = system_password(&file, true).expect("generated");
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(system_password(&file, true).expect("read again"), pw);

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = system_password(&file, true).expect_err("0640").to_string();
        assert!(e.contains("chmod 600"), "{e}");

        std::fs::remove_file(&file).expect("rm");
        let other = dir.path().join("shadow");
        std::fs::write(&other, "TOPSECRET").expect("write");
        std::os::unix::fs::symlink(&other, &file).expect("symlink");
        let e = system_password(&file, true).expect_err("link").to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn a_linked_hash_cache_is_not_believed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = Secret("pw".into());
        let key = hex::encode(Sha256::digest("pw"));
        let planted = dir.path().join("planted");
        std::fs::write(&planted, format!("{key} not-a-hash\n")).expect("write");
        std::os::unix::fs::symlink(&planted, dir.path().join("system.password.bcrypt"))
            .expect("symlink");
        let hash = cached_hash(&pw, dir.path()).expect("hash");
        assert!(bcrypt::verify("pw", &hash).expect("verify"), "{hash}");
        // The link was replaced, not written through.
        assert!(
            std::fs::read_to_string(&planted)
                .expect("read")
                .contains("not-a-hash")
        );
    }
}
