//! `natsmeshd fleet creds`: time-limited users of the system account, so
//! that operators' own tools (`nats server list`, `nats server report
//! jetstream`) work without anyone learning a node's own password.
//!
//! Accounts mode only. A user lives in `<state_dir>/operators.json`
//! (0600, bcrypt hashes only): [`crate::auth::system_account`] renders
//! the ones not yet expired beside natsmeshd's own user, so a reload adds
//! one, a restart keeps it, and the reload after its expiry (the expiry
//! task's, or any other) drops it. The plaintext password exists only in
//! the control socket's reply: never in a file natsmeshd keeps, never in
//! a log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;
use crate::files::{SECRET, write_atomic};

/// The file in the state directory.
pub const FILE: &str = "operators.json";
/// What a user's name starts with.
pub const PREFIX: &str = "operator-";
/// The longest time a credential may live: a forgotten one must not stay
/// a standing way into the system account.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest (a reload must have time to add it).
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The most users the file may hold (and the most bytes it may have).
const MAX_USERS: usize = 256;
const MAX_BYTES: u64 = 256 * 1024;

/// A temporary user of the system account, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempUser {
    /// Its name (`operator-<8 hex>`).
    pub name: String,
    /// The bcrypt hash of its password.
    pub hash: String,
    /// When it expires (Unix milliseconds).
    pub expires_ms: u64,
}

/// What the control socket hands back once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// The user name.
    pub user: String,
    /// The password (shown once, kept nowhere by natsmeshd).
    pub password: String,
    /// This node's client URL.
    pub url: String,
    /// The CA a client must trust, when the client port speaks TLS.
    pub ca: Option<PathBuf>,
    /// When it expires (Unix milliseconds).
    pub expires_ms: u64,
}

/// Why a credential was not issued or the file not read.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// A TTL out of bounds.
    #[error("--ttl {0:?}: must be between 1s and 7 days")]
    Ttl(Duration),
    /// Not accounts mode.
    #[error("{0}")]
    Mode(&'static str),
    /// Too many live users.
    #[error("{MAX_USERS} temporary users already exist; let some expire first")]
    Full,
    /// No randomness, bcrypt failed.
    #[error("{0}")]
    Crypto(String),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not what natsmeshd writes.
    #[error("{path}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        why: String,
    },
}

/// Read-modify-write of the file, by the control socket's tasks and the
/// expiry task alike, one at a time.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The users kept in `dir` (none when the file does not exist). Read
/// through [`crate::files::read_private_string`]: never through a link,
/// never one others may read.
pub fn load(dir: &Path) -> Result<Vec<TempUser>, CredsError> {
    let path = dir.join(FILE);
    match crate::files::read_private_string(&path, MAX_BYTES) {
        Ok(text) => {
            // Hashes are not passwords, but they are not for others to
            // attack offline either.
            crate::files::check_secret(&path, None).map_err(|e| CredsError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?;
            serde_json::from_str(&text).map_err(|e| CredsError::Corrupt {
                path,
                why: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CredsError::Io { path, source }),
    }
}

fn save(dir: &Path, users: &[TempUser]) -> Result<(), CredsError> {
    let path = dir.join(FILE);
    let text = serde_json::to_string_pretty(users).map_err(|e| CredsError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    write_atomic(&path, text.as_bytes(), SECRET).map_err(|source| CredsError::Io { path, source })
}

/// The users of `users` still valid at `now_ms`.
pub fn live(users: Vec<TempUser>, now_ms: u64) -> Vec<TempUser> {
    users
        .into_iter()
        .filter(|u| u.expires_ms > now_ms)
        .collect()
}

/// Whether `mode` (the system user) allows temporary users: only a
/// password system user (accounts mode) has users natsmeshd renders.
pub fn check_mode(user: Option<&crate::config::validate::SystemUser>) -> Result<(), CredsError> {
    use crate::config::validate::SystemUser;
    match user {
        Some(SystemUser::Password { .. }) => Ok(()),
        Some(SystemUser::Creds(_)) => Err(CredsError::Mode(
            "fleet creds: operator mode (JWTs) is not supported: the system account's users are the operator's to sign (nsc add user --account SYS --expiry 1h; nsc generate context)",
        )),
        None => Err(CredsError::Mode(
            "fleet creds needs the system account natsmeshd renders (auth.mode = \"accounts\")",
        )),
    }
}

/// Adds a new user valid for `ttl` from `now_ms` to the file in `dir`
/// (expired ones are dropped on the way) and returns it with its
/// password. Blocking (bcrypt, files).
pub fn add(dir: &Path, ttl: Duration, now_ms: u64) -> Result<(TempUser, Secret), CredsError> {
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(CredsError::Ttl(ttl));
    }
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| CredsError::Crypto(format!("no randomness: {e}")))?;
    let password = super::random_password().map_err(|e| CredsError::Crypto(e.to_string()))?;
    let hash =
        bcrypt::hash(&password, 10).map_err(|e| CredsError::Crypto(format!("bcrypt: {e}")))?;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let user = TempUser {
        name: format!("{PREFIX}{}", hex::encode(tag)),
        hash,
        expires_ms: now_ms.saturating_add(ttl_ms),
    };
    let _held = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut users = live(load(dir)?, now_ms);
    if users.len() >= MAX_USERS {
        return Err(CredsError::Full);
    }
    users.push(user.clone());
    save(dir, &users)?;
    Ok((user, Secret::new(password)))
}

/// Takes the user `name` out of the file (its reload failed).
pub fn remove(dir: &Path, name: &str) -> Result<(), CredsError> {
    let _held = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut users = load(dir)?;
    users.retain(|u| u.name != name);
    save(dir, &users)
}

/// Drops the users expired at `now_ms` from the file; the names dropped.
pub fn prune(dir: &Path, now_ms: u64) -> Result<Vec<String>, CredsError> {
    let _held = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let users = load(dir)?;
    let (keep, gone): (Vec<_>, Vec<_>) = users.into_iter().partition(|u| u.expires_ms > now_ms);
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    save(dir, &keep)?;
    Ok(gone.into_iter().map(|u| u.name).collect())
}

/// The expiry task, beside the supervisor's loop: every second, drops the
/// expired users from the file and, when it dropped any, asks the loop for
/// a reload (a command, as `natsmeshd reload` sends) so the broker forgets
/// them. A failed reload is retried 10 s later: the file no longer holds
/// the user, so any later reload (or start) drops it too.
#[tracing::instrument(name = "fleet", skip_all, fields(task = "creds"))]
pub async fn expire(dir: PathBuf, commands: tokio::sync::mpsc::Sender<crate::command::Command>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owed = false;
    // After a refused reload (a drained node refuses them), the next try
    // waits: one warning every ten seconds, not every second.
    let mut retry_at = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let d = dir.clone();
        let now = crate::unix_ms(std::time::SystemTime::now());
        match tokio::task::spawn_blocking(move || prune(&d, now)).await {
            Ok(Ok(gone)) if !gone.is_empty() => {
                tracing::info!(users = %gone.join(", "), "temporary system-account users expired; reloading");
                owed = true;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot prune the temporary system-account users")
            }
            Err(e) => tracing::warn!(error = %e, "the temporary users' pruning failed"),
        }
        if owed && tokio::time::Instant::now() >= retry_at {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if commands
                .send(crate::command::Command::Reload { reply: Some(tx) })
                .await
                .is_err()
            {
                return;
            }
            match rx.await {
                Ok(Ok(_)) => owed = false,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the reload dropping expired users failed; retrying in 10 s");
                    retry_at = tokio::time::Instant::now() + Duration::from_secs(10);
                }
                Err(_) => return,
            }
        }
    }
}

/// A NATS CLI context (`~/.config/nats/context/<name>.json`, the fields of
/// NATS ADR-21) for `issued`.
pub fn context_json(issued: &Issued, description: &str) -> String {
    let mut v = serde_json::json!({
        "description": description,
        "url": issued.url,
        "user": issued.user,
        "password": issued.password,
    });
    if let Some(ca) = &issued.ca
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert("ca".into(), ca.display().to_string().into());
    }
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    text.push('\n');
    text
}

/// Writes `text` to a new file `path`, 0600: an existing file (or link) is
/// never overwritten.
pub fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A log line buffer for a `fmt` subscriber.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The task's lines carry its subsystem (the span journald shows as
    /// SPAN_NAME, stderr as a prefix): an expired user's line is logged
    /// inside `fleet{task="creds"}`.
    #[tokio::test]
    async fn the_expiry_task_logs_inside_its_span() {
        use tracing::instrument::WithSubscriber as _;
        let dir = tempfile::tempdir().expect("tempdir");
        // Valid for MIN_TTL from 1970: long expired.
        add(dir.path(), MIN_TTL, 1_000).expect("added");
        let lines = Lines::default();
        let out = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(expire(dir.path().to_path_buf(), tx).with_subscriber(subscriber));
        let cmd = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a reload within 10 s");
        let Some(crate::command::Command::Reload { reply: Some(reply) }) = cmd else {
            panic!("not a reload that waits: {cmd:?}");
        };
        let _ = reply.send(Ok("reloaded".into()));
        task.abort();
        let text = String::from_utf8_lossy(&lines.0.lock().expect("lines")).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("temporary system-account users expired"))
            .unwrap_or_else(|| panic!("no expiry line in {text:?}"));
        assert!(line.contains("fleet{task=\"creds\"}:"), "{line}");
    }

    #[test]
    fn a_user_is_kept_hashed_0600_and_pruned_when_it_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (user, pw) = add(dir.path(), Duration::from_secs(5), 1_000).expect("added");
        assert!(user.name.starts_with(PREFIX) && user.name.len() == PREFIX.len() + 8);
        assert_eq!(user.expires_ms, 6_000);
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("read");
        assert!(!text.contains(pw.expose()), "{text}");
        assert!(bcrypt::verify(pw.expose(), &user.hash).expect("verify"));
        let mode = std::fs::metadata(dir.path().join(FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let (other, _) = add(dir.path(), Duration::from_secs(60), 1_000).expect("added");
        assert_ne!(other.name, user.name);
        assert_eq!(
            prune(dir.path(), 5_999).expect("prune"),
            Vec::<String>::new()
        );
        assert_eq!(
            prune(dir.path(), 6_000).expect("prune"),
            vec![user.name.clone()]
        );
        assert_eq!(load(dir.path()).expect("load"), vec![other.clone()]);
        remove(dir.path(), &other.name).expect("remove");
        assert!(load(dir.path()).expect("load").is_empty());
    }

    #[test]
    fn ttls_out_of_bounds_and_operator_mode_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            add(dir.path(), Duration::from_millis(500), 0),
            Err(CredsError::Ttl(_))
        ));
        assert!(matches!(
            add(dir.path(), MAX_TTL + Duration::from_secs(1), 0),
            Err(CredsError::Ttl(_))
        ));
        use crate::config::validate::SystemUser;
        let e = check_mode(Some(&SystemUser::Creds("/x.creds".into()))).expect_err("operator");
        assert!(e.to_string().contains("operator mode"), "{e}");
        assert!(check_mode(None).is_err());
        assert!(
            check_mode(Some(&SystemUser::Password {
                file: "/p".into(),
                generate: true
            }))
            .is_ok()
        );
    }

    #[test]
    fn a_file_others_may_read_or_a_link_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        add(dir.path(), Duration::from_secs(5), 0).expect("added");
        let file = dir.path().join(FILE);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(load(dir.path()).is_err());
        std::fs::remove_file(&file).expect("rm");
        let planted = dir.path().join("planted");
        std::fs::write(&planted, "[]").expect("write");
        std::os::unix::fs::symlink(&planted, &file).expect("link");
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn the_context_has_the_nats_cli_fields_and_ca_only_with_tls() {
        let mut issued = Issued {
            user: "operator-0a1b2c3d".into(),
            password: "pw".into(),
            url: "nats://127.0.0.1:4222".into(),
            ca: None,
            expires_ms: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&context_json(&issued, "d")).expect("json");
        assert_eq!(v["url"], "nats://127.0.0.1:4222");
        assert_eq!(v["user"], "operator-0a1b2c3d");
        assert_eq!(v["password"], "pw");
        assert!(v.get("ca").is_none());
        issued.ca = Some("/etc/natsmesh/ca.pem".into());
        let v: serde_json::Value = serde_json::from_str(&context_json(&issued, "d")).expect("json");
        assert_eq!(v["ca"], "/etc/natsmesh/ca.pem");
    }

    #[test]
    fn write_new_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("ctx.json");
        write_new(&f, "{}").expect("new");
        let mode = std::fs::metadata(&f).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_new(&f, "x").is_err());
        assert_eq!(std::fs::read_to_string(&f).expect("read"), "{}");
    }
}
