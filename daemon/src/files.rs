//! Files on disk, the careful way: the one atomic writer every file
//! natsmeshd writes goes through, the reader for files in directories
//! another user may write (the state directory belongs to the service
//! user, and root runs `check` on it), and the rule on secrets' modes.
//!
//! A leaf module: it imports nothing from the crate, so every feature can
//! use it and it can never grow a dependency on one of them.
//!
//! Why each step:
//! - the temporary file has a random name and is opened
//!   `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`: a file or link someone put
//!   there first is never written through, and never lends its owner or
//!   mode to ours (a name taken is retried with a new one, a few times);
//! - its mode is given at creation (the umask may only narrow it), so a
//!   secret is never readable by others, not even for a moment;
//! - it is fsynced, then renamed over the final path: a reader sees the old
//!   file or the new one, never half of one. `rename(2)` replaces a final
//!   path that is a symbolic link with the new file; it does not follow it;
//! - the directory is fsynced so the rename survives a crash;
//! - on any failure the temporary file is removed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Mode of files that hold no secret (the rendered config, certificates
/// natsmeshd issued, markers).
pub const PLAIN: u32 = 0o640;
/// Mode of secrets: the owner alone reads them.
pub const SECRET: u32 = 0o600;

/// How many random temporary names are tried before giving up (a
/// collision of 96 random bits means someone is squatting names).
const ATTEMPTS: usize = 8;

/// Writes `bytes` to `path` atomically with `mode` (see the module doc).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, bytes, mode, None, &mut random_tag)
}

/// [`write_atomic`] for a file another user reads through `group` (the
/// broker's, when it runs as its own user): the temporary file is given
/// that group and then exactly `mode` (past the umask, which would take
/// the group's read bit) before anything is written into it or it is
/// renamed into place. The owner may give a file any group it is a member
/// of, so this needs no privilege.
pub fn write_atomic_shared(path: &Path, bytes: &[u8], mode: u32, group: u32) -> io::Result<()> {
    write_atomic_with(path, bytes, mode, Some(group), &mut random_tag)
}

/// Gives the existing file or directory at `path` (not followed if a link)
/// the group `group` and the mode `mode`: for what natsmeshd wrote before
/// the broker ran as its own user.
pub fn share(path: &Path, mode: u32, group: u32) -> io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    std::os::unix::fs::fchown(&f, None, Some(group))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// [`write_atomic`] with the temporary names' random part from `tag`
/// (tests inject collisions through it).
fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    group: Option<u32>,
    tag: &mut dyn FnMut() -> io::Result<String>,
) -> io::Result<()> {
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        ));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    for _ in 0..ATTEMPTS {
        let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), tag()?));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp);
        match file {
            Ok(f) => {
                let done = match group {
                    Some(g) => std::os::unix::fs::fchown(&f, None, Some(g))
                        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode))),
                    None => Ok(()),
                }
                .and_then(|()| fill_and_rename(f, bytes, &tmp, path));
                if done.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                done?;
                return File::open(dir)?.sync_all();
            }
            // Taken (a file or a link): never touch it, pick another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{ATTEMPTS} random temporary names next to {} were all taken",
            path.display()
        ),
    ))
}

fn fill_and_rename(mut f: File, bytes: &[u8], tmp: &Path, path: &Path) -> io::Result<()> {
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)
}

/// 96 random bits, hex.
fn random_tag() -> io::Result<String> {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

/// Reads a file from a directory another user may write (the state
/// directory): never through a symbolic link, only a regular file with no
/// other hard link, at most `max` bytes. The errors say why and never
/// carry the content. A missing file is `NotFound`, as usual.
pub fn read_private(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let refused = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    // O_NONBLOCK: opening a FIFO put there must not hang the reader (it
    // has no effect on a regular file's reads).
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refused("it is a symbolic link, which natsmeshd does not follow here")
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(refused("it is not a regular file"));
    }
    // A hard link to a file the writer could not read otherwise is the
    // other way to point at it.
    if meta.nlink() > 1 {
        return Err(refused("it has other hard links"));
    }
    if meta.len() > max {
        return Err(refused(&format!("it is larger than {max} bytes")));
    }
    let mut out = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(refused(&format!("it is larger than {max} bytes")));
    }
    Ok(out)
}

/// [`read_private`] as UTF-8 text.
pub fn read_private_string(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_private(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

/// A secret others may read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} has mode {mode:04o}: a secret must not be readable by group or others; chmod 600 {}",
    path.display(),
    path.display()
)]
pub struct UnsafeMode {
    /// The file.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

/// Checks a secret's mode: no bit for group or others. A file inside
/// systemd's credentials directory (`credentials_dir`) may show the group
/// read bit: systemd writes credentials 0400 owned by root and grants the
/// service user read access with an ACL, and `stat` shows the ACL's mask
/// (`r--`) as the group bits, so such a file reads 0440 although no group
/// can read it; that directory is private to the unit anyway.
pub fn check_secret_mode(
    path: &Path,
    mode: u32,
    credentials_dir: Option<&Path>,
) -> Result<(), UnsafeMode> {
    let delivered = credentials_dir.is_some_and(|d| path.starts_with(d));
    let forbidden = if delivered { 0o037 } else { 0o077 };
    if mode & forbidden == 0 {
        Ok(())
    } else {
        Err(UnsafeMode {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        })
    }
}

/// [`check_secret_mode`] on the file at `path` (followed, as it will be
/// read). `Ok` when it cannot be stat'ed: the read reports that.
pub fn check_secret(path: &Path, credentials_dir: Option<&Path>) -> Result<(), UnsafeMode> {
    match std::fs::metadata(path) {
        Ok(m) => check_secret_mode(path, m.mode(), credentials_dir),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
    }

    fn foreign(p: &Path) {
        std::fs::write(p, "foreign").expect("write");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    }

    /// The final path kinds natsmeshd writes, with the mode each gets.
    const KINDS: &[(&str, u32)] = &[
        ("natsmesh.conf", PLAIN),
        ("node.key", SECRET),
        ("system.password", SECRET),
        ("root.key", SECRET),
        ("server-name", PLAIN),
    ];

    #[test]
    fn writes_content_and_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, m) in KINDS {
            let p = dir.path().join(name);
            write_atomic(&p, b"one", *m).expect("write");
            write_atomic(&p, b"two", *m).expect("rewrite");
            assert_eq!(std::fs::read(&p).expect("read"), b"two");
            assert_eq!(mode(&p) & !m, 0, "{name}: no bit beyond {m:o}");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), KINDS.len(), "{left:?}");
    }

    #[test]
    fn old_predictable_temporary_names_are_never_used() {
        // The former writer's `.<name>.tmp-<pid>`: a link to a victim and
        // a foreign 0666 file must both stay untouched.
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "victim").expect("write");
        for (name, m) in KINDS {
            let p = dir.path().join(name);
            let old = dir
                .path()
                .join(format!(".{name}.tmp-{}", std::process::id()));
            symlink(&victim, &old).expect("symlink");
            write_atomic(&p, b"secret", *m).expect("write");
            assert_eq!(std::fs::read(&victim).expect("read"), b"victim");
            assert_eq!(mode(&p) & !m, 0);
            std::fs::remove_file(&old).expect("rm");
            foreign(&old);
            write_atomic(&p, b"secret2", *m).expect("write");
            assert_eq!(std::fs::read(&old).expect("read"), b"foreign");
            assert_eq!(mode(&p) & !m, 0, "{name} took the foreign mode");
            std::fs::remove_file(&old).expect("rm");
        }
    }

    #[test]
    fn a_final_path_that_is_a_link_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "victim").expect("write");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        for (name, m) in KINDS {
            let p = dir.path().join(name);
            symlink(&victim, &p).expect("symlink");
            write_atomic(&p, b"mine", *m).expect("write");
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            assert!(meta.file_type().is_file(), "{name} is still a link");
            assert_eq!(std::fs::read(&p).expect("read"), b"mine");
            assert_eq!(mode(&p) & !m, 0);
            assert_eq!(std::fs::read(&victim).expect("read"), b"victim");
            assert_eq!(mode(&victim), 0o644);
        }
    }

    #[test]
    fn a_foreign_file_at_the_final_path_does_not_lend_its_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, m) in KINDS {
            let p = dir.path().join(name);
            foreign(&p);
            write_atomic(&p, b"mine", *m).expect("write");
            assert_eq!(std::fs::read(&p).expect("read"), b"mine");
            assert_eq!(mode(&p) & !m, 0, "{name} kept 0666");
        }
    }

    #[test]
    fn a_taken_temporary_name_is_retried_with_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("node.key");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "victim").expect("write");
        // The first two names are taken (a link, a foreign file).
        symlink(&victim, dir.path().join(".node.key.a.tmp")).expect("symlink");
        foreign(&dir.path().join(".node.key.b.tmp"));
        let mut tags = ["a", "b", "c"].into_iter();
        let mut tag = || Ok(tags.next().unwrap_or("z").to_owned());
        write_atomic_with(&p, b"mine", SECRET, None, &mut tag).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"mine");
        assert_eq!(mode(&p), SECRET);
        assert_eq!(std::fs::read(&victim).expect("read"), b"victim");
        assert_eq!(
            std::fs::read(dir.path().join(".node.key.b.tmp")).expect("read"),
            b"foreign"
        );
        assert!(!dir.path().join(".node.key.c.tmp").exists());
    }

    #[test]
    fn gives_up_when_every_name_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("node.key");
        foreign(&dir.path().join(".node.key.same.tmp"));
        let mut calls = 0;
        let mut tag = || {
            calls += 1;
            Ok("same".to_owned())
        };
        let e = write_atomic_with(&p, b"mine", SECRET, None, &mut tag).expect_err("all taken");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(calls, ATTEMPTS);
        assert!(!p.exists());
    }

    #[test]
    fn a_failed_write_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The rename fails: the final path is a non-empty directory.
        let p = dir.path().join("natsmesh.conf");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(p.join("x"), "x").expect("write");
        let mut tag = || Ok("t".to_owned());
        write_atomic_with(&p, b"mine", PLAIN, None, &mut tag).expect_err("rename fails");
        assert!(!dir.path().join(".natsmesh.conf.t.tmp").exists());
    }

    #[test]
    fn read_private_refuses_links_hard_links_fifos_and_big_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("shadow");
        std::fs::write(&secret, "root-only content").expect("write");
        let link = dir.path().join("server-name");
        symlink(&secret, &link).expect("symlink");
        let e = read_private(&link, 100).expect_err("link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!e.to_string().contains("root-only"));

        let hard = dir.path().join("hard");
        std::fs::hard_link(&secret, &hard).expect("link");
        let e = read_private(&hard, 100).expect_err("hard link");
        assert!(e.to_string().contains("hard links"), "{e}");
        std::fs::remove_file(&hard).expect("rm");

        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let e = read_private(&fifo, 100).expect_err("fifo");
        assert!(e.to_string().contains("regular file"), "{e}");

        let e = read_private(&secret, 4).expect_err("big");
        assert!(e.to_string().contains("larger than 4"), "{e}");
        assert_eq!(
            read_private(&secret, 100).expect("read"),
            b"root-only content"
        );
        let e = read_private(&dir.path().join("none"), 100).expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_shared_file_gets_the_group_and_exactly_its_mode_past_the_umask() {
        let d = tempfile::tempdir().expect("tempdir");
        // The unit's UMask=0077 would take the group's read bit.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        // Root may give any group; anyone else one of its own.
        let group = if nix::unistd::geteuid().is_root() {
            4242
        } else {
            nix::unistd::getegid().as_raw()
        };
        let p = d.path().join("nats-server.conf");
        foreign(&p);
        write_atomic_shared(&p, b"shared", 0o640, group).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"shared");
        let m = std::fs::symlink_metadata(&p).expect("stat");
        assert_eq!((m.mode() & 0o7777, m.gid()), (0o640, group));
        // Plain writes keep the process's group and the umask's narrowing.
        write_atomic(&p, b"plain", 0o640).expect("write");
        assert_eq!(mode(&p), 0o600);
        // An existing file or directory is shared in place.
        share(&p, 0o640, group).expect("share");
        let m = std::fs::symlink_metadata(&p).expect("stat");
        assert_eq!((m.mode() & 0o7777, m.gid()), (0o640, group));
        let sub = d.path().join("tls");
        std::fs::create_dir(&sub).expect("mkdir");
        share(&sub, 0o710, group).expect("share");
        let m = std::fs::symlink_metadata(&sub).expect("stat");
        assert_eq!((m.mode() & 0o7777, m.gid()), (0o710, group));
        // A link is not followed.
        let link = d.path().join("link");
        symlink(&p, &link).expect("symlink");
        assert!(share(&link, 0o644, group).is_err());
        assert_eq!(mode(&p), 0o640);
    }

    #[test]
    fn secret_modes() {
        let p = Path::new("/etc/natsmesh/node.key");
        assert!(check_secret_mode(p, 0o100600, None).is_ok());
        assert!(check_secret_mode(p, 0o100400, None).is_ok());
        for bad in [0o644, 0o640, 0o604, 0o620, 0o440] {
            let e = check_secret_mode(p, 0o100000 | bad, None).expect_err("refused");
            assert_eq!(e.mode, bad);
            let msg = e.to_string();
            assert!(msg.contains(&format!("{bad:04o}")), "{msg}");
            assert!(msg.contains("chmod 600 /etc/natsmesh/node.key"), "{msg}");
        }
        // systemd's credentials: 0440 shown for the ACL mask is fine
        // there, anything more is not; outside, 0440 is refused (above).
        let creds = Path::new("/run/credentials/natsmeshd.service");
        let c = creds.join("natsmesh_node.key");
        assert!(check_secret_mode(&c, 0o100440, Some(creds)).is_ok());
        assert!(check_secret_mode(&c, 0o100400, Some(creds)).is_ok());
        for bad in [0o444, 0o460, 0o404, 0o442] {
            assert!(check_secret_mode(&c, bad, Some(creds)).is_err(), "{bad:o}");
        }
        assert!(check_secret_mode(p, 0o100440, Some(creds)).is_err());
    }

    #[test]
    fn check_secret_reads_the_mode_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("token");
        std::fs::write(&p, "t").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(check_secret(&p, None).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(check_secret(&p, None).is_ok());
    }
}
