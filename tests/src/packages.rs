//! natsmesh's built packages (`make packages` puts them in
//! target/packages/) and a signed apt repository made from them, the way
//! an operator's machines would get them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::container::Root;

/// Where `make deb` and `make rpm` leave the packages.
pub fn packages_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/packages")
}

/// The one built package `name` with extension `ext` ("deb" or "rpm"),
/// failing the test with the command that makes it when there is none.
pub fn built(name: &str, ext: &str) -> PathBuf {
    // natsmesh_0.1.0-1_amd64.deb, natsmesh-0.1.0-1.x86_64.rpm: the name is
    // followed by the separator and a version digit, so "natsmesh" never
    // matches natsmesh-broker's files.
    let sep = if ext == "deb" { '_' } else { '-' };
    let found: Vec<PathBuf> = std::fs::read_dir(packages_dir())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let file = p.file_name().unwrap_or_default().to_string_lossy();
                    file.ends_with(&format!(".{ext}"))
                        && file
                            .strip_prefix(name)
                            .and_then(|rest| rest.strip_prefix(sep))
                            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        found.len() == 1,
        "want exactly one {name} .{ext} in {}, found {found:?}: build them with `make packages`",
        packages_dir().display()
    );
    found.into_iter().next().expect("one package")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of `deb` whose version is `version` (dpkg-deb unpacks and
/// rebuilds it; nothing else changes), as a newer release would be.
pub fn with_version(deb: &Path, version: &str, into: &Path) -> PathBuf {
    let tree = into.join(format!("repack-{version}"));
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version: ") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&control, text).expect("control");
    let name = deb
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.split('_').next())
        .expect("package file name");
    let out = into.join(format!("{name}_{version}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "-b"])
        .arg(&tree)
        .arg(&out));
    std::fs::remove_dir_all(&tree).expect("remove the unpacked tree");
    out
}

/// A flat apt repository signed with a throw-away OpenPGP key, as
/// `apt-ftparchive` and `gpg` make a real one.
pub struct AptRepo {
    dir: tempfile::TempDir,
    gnupg: tempfile::TempDir,
}

impl AptRepo {
    /// A repository holding `debs`, signed.
    pub fn new(debs: &[PathBuf]) -> Self {
        crate::require_tools(&["apt-ftparchive", "gpg", "dpkg-deb"], "apt-utils gpg dpkg");
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-apt-")
            .tempdir()
            .expect("repo dir");
        let gnupg = tempfile::Builder::new()
            .prefix("natsmesh-gnupg-")
            .tempdir()
            .expect("gnupg home");
        let repo = Self { dir, gnupg };
        run(repo.gpg().args([
            "--passphrase",
            "",
            "--quick-generate-key",
            "natsmesh test repository <test@natsmesh.invalid>",
            "ed25519",
            "sign",
            "never",
        ]));
        for deb in debs {
            repo.add(deb);
        }
        repo
    }

    fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.gnupg.path())
            .args(["--batch", "--pinentry-mode", "loopback"]);
        c
    }

    /// Adds a package and signs the new index.
    pub fn add(&self, deb: &Path) {
        let file = deb.file_name().expect("file name");
        std::fs::copy(deb, self.dir.path().join(file)).expect("copy the package");
        let packages = run(Command::new("apt-ftparchive")
            .arg("packages")
            .arg(".")
            .current_dir(self.dir.path()));
        std::fs::write(self.dir.path().join("Packages"), packages).expect("Packages");
        // Release must not list itself or its signature.
        let _ = std::fs::remove_file(self.dir.path().join("Release"));
        let _ = std::fs::remove_file(self.dir.path().join("InRelease"));
        let release = run(Command::new("apt-ftparchive")
            .args(["-o", "APT::FTPArchive::Release::Origin=natsmesh-test"])
            .arg("release")
            .arg(".")
            .current_dir(self.dir.path()));
        std::fs::write(self.dir.path().join("Release"), release).expect("Release");
        run(self
            .gpg()
            .arg("--clearsign")
            .arg("-o")
            .arg(self.dir.path().join("InRelease"))
            .arg(self.dir.path().join("Release")));
    }

    /// The repository's public key, ASCII-armoured (as an operator hands
    /// it to cloud-init).
    pub fn armored_key(&self) -> String {
        run(self.gpg().args(["--armor", "--export"]))
    }

    /// Puts the repository (at /srv/natsmesh-apt) and its key into a
    /// container root as its only apt source: the container has no
    /// network, so Debian's own sources are removed.
    pub fn publish_into(&self, root: &Root) {
        let inside = |p: &str| root.inside(p);
        let dest = inside("/srv/natsmesh-apt");
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir_all(&dest).expect("repo dir");
        for entry in std::fs::read_dir(self.dir.path()).expect("repo") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), dest.join(entry.file_name())).expect("copy");
        }
        let key = self
            .gpg()
            .arg("--export")
            .output()
            .expect("gpg --export")
            .stdout;
        let keyring = inside("/usr/share/keyrings/natsmesh-test.gpg");
        std::fs::create_dir_all(keyring.parent().expect("parent")).expect("mkdir");
        std::fs::write(&keyring, key).expect("keyring");
        let _ = std::fs::remove_file(inside("/etc/apt/sources.list"));
        let _ = std::fs::remove_file(inside("/etc/apt/sources.list.d/debian.sources"));
        std::fs::write(
            inside("/etc/apt/sources.list.d/natsmesh.sources"),
            "Types: deb\nURIs: file:/srv/natsmesh-apt\nSuites: ./\nSigned-By: /usr/share/keyrings/natsmesh-test.gpg\n",
        )
        .expect("natsmesh.sources");
    }
}
