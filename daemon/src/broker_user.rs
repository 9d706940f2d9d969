//! The broker's own user (`natsmeshd --broker-user <name>`, which the
//! packaged unit passes): nats-server, natsmeshd's child, runs as that user
//! and group with no other group, so a compromised broker cannot read the
//! credentials, the intermediate key, the tokens or natsmeshd's state, nor
//! (the metadata guard names only root and natsmesh) fetch the user-data.
//!
//! What the broker must read, natsmeshd shares through the broker's group,
//! of which natsmeshd is a supplementary member (the unit's
//! `SupplementaryGroups=`): the rendered config and the issued certificate,
//! key and region intermediates (0640, group the broker's; the `tls/`
//! directory 0710). What it writes, the JetStream store and the resolver's
//! directory, are directories natsmeshd makes 0770 with the broker's group;
//! their contents are the broker's own (the unit's root `ExecStartPre=`
//! hands the contents an earlier version left to natsmesh over to it).
//!
//! Changing user takes `CAP_SETUID` and `CAP_SETGID`, and signalling a
//! process of another user `CAP_KILL`; `run` refuses to start without them
//! rather than run the broker as natsmeshd's user unannounced. Without the
//! option (tests, `make run`, natsmeshd started by hand) nothing changes:
//! the broker runs as natsmeshd does. The option rides in the unit's
//! command line, beside the capabilities it needs, so the two always
//! change together: an upgrade's re-execution keeps the old command line
//! and the old capabilities alike, and the next start of the unit brings
//! both.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use natsmesh_broker::process::RunAs;

/// The broker's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary group, the one it runs with and the one natsmeshd shares
    /// files through.
    pub gid: u32,
}

/// Why the broker cannot run as its own user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerUserError {
    /// No such user.
    #[error("--broker-user {0}: no such user (the package's sysusers.d entry creates it)")]
    Unknown(String),
    /// The user database could not be read.
    #[error("--broker-user {name}: cannot look it up: {why}")]
    Lookup {
        /// The user.
        name: String,
        /// What failed.
        why: String,
    },
    /// natsmeshd's own user: there is nothing to separate.
    #[error(
        "--broker-user {0}: that is natsmeshd's own user (root and natsmeshd's user are refused)"
    )]
    Same(String),
    /// A capability is missing.
    #[error(
        "--broker-user {name}: natsmeshd lacks {missing} (the packaged unit grants CAP_SETUID CAP_SETGID CAP_KILL as AmbientCapabilities=)"
    )]
    Capability {
        /// The user.
        name: String,
        /// The missing capabilities.
        missing: String,
    },
    /// natsmeshd is not in the broker's group.
    #[error(
        "--broker-user {name}: natsmeshd is not a member of its group (gid {gid}), through which it shares the broker's files (the packaged unit sets SupplementaryGroups={name})"
    )]
    NotInGroup {
        /// The user.
        name: String,
        /// Its group.
        gid: u32,
    },
}

/// Looks `name` up in the user database.
pub fn resolve(name: &str) -> Result<BrokerUser, BrokerUserError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(BrokerUser {
            name: name.to_owned(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(BrokerUserError::Unknown(name.to_owned())),
        Err(e) => Err(BrokerUserError::Lookup {
            name: name.to_owned(),
            why: e.to_string(),
        }),
    }
}

/// The capabilities changing the broker's user needs, as bits of
/// `CapEff`: CAP_KILL (5), CAP_SETGID (6), CAP_SETUID (7).
const NEEDED: [(u32, &str); 3] = [(7, "CAP_SETUID"), (6, "CAP_SETGID"), (5, "CAP_KILL")];

/// Whether a process with effective capabilities `cap_eff`, effective ids
/// `euid`/`egid` and supplementary `groups` can run the broker as `u`.
pub fn can_switch(
    u: &BrokerUser,
    cap_eff: u64,
    euid: u32,
    egid: u32,
    groups: &[u32],
) -> Result<(), BrokerUserError> {
    if u.uid == euid || u.uid == 0 {
        return Err(BrokerUserError::Same(u.name.clone()));
    }
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(BrokerUserError::Capability {
            name: u.name.clone(),
            missing: missing.join(" "),
        });
    }
    // Root may give a file any group; anyone else only one of its own.
    if euid != 0 && egid != u.gid && !groups.contains(&u.gid) {
        return Err(BrokerUserError::NotInGroup {
            name: u.name.clone(),
            gid: u.gid,
        });
    }
    Ok(())
}

/// `CapEff` from the text of `/proc/self/status`.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// [`can_switch`] for this process.
pub fn check_this_process(u: &BrokerUser) -> Result<(), BrokerUserError> {
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(parse_cap_eff)
        .unwrap_or(0);
    let groups: Vec<u32> = nix::unistd::getgroups()
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    can_switch(
        u,
        cap_eff,
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
        &groups,
    )
}

static CHOSEN: OnceLock<BrokerUser> = OnceLock::new();

/// Makes `u` the broker's user for the life of this process (`run`, once,
/// after [`check_this_process`]). A second call changes nothing.
pub fn choose(u: BrokerUser) {
    let _ = CHOSEN.set(u);
}

/// The broker's user, when it is not natsmeshd's.
pub fn chosen() -> Option<&'static BrokerUser> {
    CHOSEN.get()
}

/// Who the broker is started as.
pub fn run_as() -> Option<RunAs> {
    chosen().map(|u| RunAs {
        uid: u.uid,
        gid: u.gid,
    })
}

/// Mode of a file the broker reads: its group may read it too.
pub const SHARED_FILE: u32 = 0o640;
/// Mode of a directory the broker only passes through.
pub const SHARED_DIR: u32 = 0o710;
/// Mode of a directory the broker writes in.
pub const BROKER_DIR: u32 = 0o770;

/// Writes a file the broker reads: through the broker's group (0640) when
/// it runs as its own user, else as [`crate::files::write_atomic`] with
/// `mode`.
pub fn write_readable(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    match chosen() {
        Some(u) => crate::files::write_atomic_shared(path, bytes, SHARED_FILE, u.gid),
        None => crate::files::write_atomic(path, bytes, mode),
    }
}

/// Shares the existing file at `path` with the broker (an issued
/// certificate or key written before the broker ran as its own user); a
/// missing one is fine.
pub fn share_existing(path: &Path) -> io::Result<()> {
    let Some(u) = chosen() else {
        return Ok(());
    };
    match crate::files::share(path, SHARED_FILE, u.gid) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Lets the broker pass through the directory `dir` (natsmeshd's `tls/`).
pub fn share_dir(dir: &Path) -> io::Result<()> {
    match chosen() {
        Some(u) => crate::files::share(dir, SHARED_DIR, u.gid),
        None => Ok(()),
    }
}

/// Why a directory the broker writes in is not ready for it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerDirError {
    /// Left with another group by a version whose broker ran as natsmeshd.
    #[error(
        "{} (group {gid}) is not the broker's ({user}): run /usr/lib/natsmesh/broker-dirs as root (the unit's ExecStartPre= does) to hand it over",
        dir.display()
    )]
    WrongGroup {
        /// The directory.
        dir: PathBuf,
        /// Its group.
        gid: u32,
        /// The broker's user.
        user: String,
    },
    /// Something else is in its place.
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// It could not be created (or given the broker's group).
    #[error("cannot make {}: {source}", dir.display())]
    Make {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It could not be looked at.
    #[error("{}: {source}", dir.display())]
    Stat {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Makes `dir` (the JetStream store, the resolver's directory) a directory
/// the broker can write in: natsmeshd's, 0770, the broker's group. One
/// that exists with another group was left by a version whose broker ran
/// as natsmeshd: its contents are natsmesh's, which only root can give the
/// broker (the unit's `ExecStartPre=`), so it is refused, not half fixed.
pub fn ensure_broker_dir(dir: &Path) -> Result<(), BrokerDirError> {
    use std::os::unix::fs::MetadataExt as _;
    let Some(u) = chosen() else {
        return Ok(());
    };
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() && m.gid() == u.gid => Ok(()),
        Ok(m) if m.is_dir() => Err(BrokerDirError::WrongGroup {
            dir: dir.to_path_buf(),
            gid: m.gid(),
            user: u.name.clone(),
        }),
        Ok(_) => Err(BrokerDirError::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(dir)
            .and_then(|()| crate::files::share(dir, BROKER_DIR, u.gid))
            .map_err(|source| BrokerDirError::Make {
                dir: dir.to_path_buf(),
                source,
            }),
        Err(source) => Err(BrokerDirError::Stat {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> BrokerUser {
        BrokerUser {
            name: "natsmesh-broker".into(),
            uid: 990,
            gid: 985,
        }
    }

    const ALL: u64 = (1 << 5) | (1 << 6) | (1 << 7);

    #[test]
    fn switching_needs_the_three_capabilities_and_the_group() {
        let u = broker();
        assert_eq!(can_switch(&u, ALL, 991, 991, &[985]), Ok(()));
        // The primary group does as well as a supplementary one.
        assert_eq!(can_switch(&u, ALL, 991, 985, &[]), Ok(()));
        for (bit, name) in NEEDED {
            match can_switch(&u, ALL & !(1 << bit), 991, 991, &[985]) {
                Err(BrokerUserError::Capability { missing, .. }) => assert_eq!(missing, name),
                other => panic!("without {name}: {other:?}"),
            }
        }
        match can_switch(&u, 0, 991, 991, &[985]) {
            Err(BrokerUserError::Capability { missing, .. }) => {
                assert_eq!(missing, "CAP_SETUID CAP_SETGID CAP_KILL");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            can_switch(&u, ALL, 991, 991, &[4, 27]),
            Err(BrokerUserError::NotInGroup {
                name: "natsmesh-broker".into(),
                gid: 985
            })
        );
        // Root (natsmeshd by hand) may share files through any group.
        assert_eq!(can_switch(&u, ALL, 0, 0, &[]), Ok(()));
    }

    #[test]
    fn natsmeshds_own_user_and_root_are_refused() {
        let u = broker();
        assert!(matches!(
            can_switch(&u, ALL, 990, 985, &[]),
            Err(BrokerUserError::Same(_))
        ));
        let root = BrokerUser {
            name: "root".into(),
            uid: 0,
            gid: 0,
        };
        assert!(matches!(
            can_switch(&root, ALL, 991, 991, &[0]),
            Err(BrokerUserError::Same(_))
        ));
    }

    #[test]
    fn cap_eff_is_read_from_proc_status() {
        let status = "Name:\tnatsmeshd\nCapInh:\t00000000000000e0\nCapPrm:\t00000000000000e0\nCapEff:\t00000000000000e0\nCapBnd:\t00000000000000e0\n";
        assert_eq!(parse_cap_eff(status), Some(ALL));
        assert_eq!(parse_cap_eff("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn users_are_looked_up() {
        assert_eq!(resolve("root").map(|u| u.uid), Ok(0));
        assert_eq!(
            resolve("natsmesh-no-such-user-7f3a"),
            Err(BrokerUserError::Unknown(
                "natsmesh-no-such-user-7f3a".into()
            ))
        );
    }
}
