//! Real hosts with systemd as PID 1: a Debian root made with mmdebstrap,
//! booted with systemd-nspawn under a pseudo-terminal (recipe in
//! shared/reference/test-hosts.md), commands run inside with nsenter.
//!
//! Needs root, `systemd-nspawn`, `mmdebstrap` and `script`; a missing one
//! fails the test. The container has a private network (only its own
//! loopback), so nothing it does reaches the host's ports. It is powered off
//! and its root removed on drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails the test unless this machine can run containers.
pub fn require_container_tools() {
    assert!(crate::is_root(), "container tests need root");
    crate::require_tools(
        &["systemd-nspawn", "mmdebstrap", "script", "nsenter"],
        "systemd-container mmdebstrap util-linux bsdutils",
    );
}

/// What every test root has.
const BASE: &str = "systemd,systemd-sysv,dbus,iproute2,ca-certificates,procps";

/// A cached tarball of a Debian root with systemd, built once per release.
pub fn image(release: &str) -> PathBuf {
    image_with(release, "systemd", "")
}

/// A cached tarball of a Debian root with systemd and `extra` packages
/// (comma-separated), cached under `<release>-<tag>.tar`.
pub fn image_with(release: &str, tag: &str, extra: &str) -> PathBuf {
    let dir = crate::brokers_dir().with_file_name("images");
    std::fs::create_dir_all(&dir).expect("image cache dir");
    let tar = dir.join(format!("{release}-{tag}.tar"));
    if tar.is_file() {
        return tar;
    }
    // mmdebstrap picks the output format from the extension.
    let partial = dir.join(format!(
        "{release}-{tag}.partial-{}.tar",
        std::process::id()
    ));
    let include = if extra.is_empty() {
        format!("--include={BASE}")
    } else {
        format!("--include={BASE},{extra}")
    };
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", &include, release])
        .arg(&partial)
        .output()
        .expect("mmdebstrap");
    assert!(
        out.status.success(),
        "mmdebstrap {release} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &tar).expect("install image");
    tar
}

/// A container root on disk, not yet booted.
pub struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    /// Unpacks `release` into a fresh directory.
    pub fn new(release: &str) -> Self {
        require_container_tools();
        Self::from_image(&image(release))
    }

    /// Unpacks `release` with cloud-init (and gpg, which its apt module
    /// uses for keys) into a fresh directory.
    pub fn with_cloud_init(release: &str) -> Self {
        require_container_tools();
        Self::from_image(&image_with(
            release,
            "cloud-init-nft",
            "cloud-init,gpg,nftables",
        ))
    }

    /// Unpacks `release` with `extra` packages (comma-separated), cached
    /// as `<release>-<tag>.tar`, into a fresh directory.
    pub fn with_packages(release: &str, tag: &str, extra: &str) -> Self {
        require_container_tools();
        Self::from_image(&image_with(release, tag, extra))
    }

    fn from_image(tar: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-nspawn-")
            .tempdir()
            .expect("container dir");
        let ok = Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(dir.path())
            .status()
            .expect("tar")
            .success();
        assert!(ok, "unpacking {}", tar.display());
        Self { dir }
    }

    /// The root directory on the host.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies a host file to `dest` (absolute, inside the container).
    pub fn install(&self, src: &Path, dest: &str, mode: u32) {
        let target = self.inside(dest);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(src, &target)
            .unwrap_or_else(|e| panic!("copy {} → {dest}: {e}", src.display()));
        set_mode(&target, mode);
    }

    /// Writes `text` to `dest` inside the container.
    pub fn write(&self, dest: &str, text: &str, mode: u32) {
        let target = self.inside(dest);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::write(&target, text).expect("write");
        set_mode(&target, mode);
    }

    /// A path inside the container, as seen from the host.
    pub fn inside(&self, dest: &str) -> PathBuf {
        self.dir.path().join(dest.trim_start_matches('/'))
    }

    /// Boots it with systemd as PID 1 on a private network (only its own
    /// loopback) and waits for the boot to finish.
    pub fn boot(self) -> Container {
        self.boot_on(&Network::Private)
    }

    /// Boots it on `net` and waits for the boot to finish.
    pub fn boot_on(self, net: &Network) -> Container {
        self.spawn(net, Boot::Finished)
    }

    /// Boots it on `net` and returns once systemd answers, with boot jobs
    /// possibly still running (a unit that waits for other machines, say).
    pub fn start_on(self, net: &Network) -> Container {
        self.spawn(net, Boot::Started)
    }

    fn spawn(self, net: &Network, wait: Boot) -> Container {
        let target = format!("-D {}", self.dir.path().display());
        let log = self.dir.path().with_extension("console.log");
        Container::start(Some(self), target, net, &[], log, wait)
    }
}

/// How far a boot is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot {
    /// Every boot job done (`running` or `degraded`).
    Finished,
    /// systemd up, jobs may still be queued (`starting` too).
    Started,
}

/// Where a container's network lives.
#[derive(Debug, Clone)]
pub enum Network {
    /// A network namespace of its own with only loopback.
    Private,
    /// A network namespace the test made (`/run/netns/NAME`), e.g. one
    /// host of a [`crate::netns::Lan`].
    Namespace(PathBuf),
}

impl Network {
    fn arg(&self) -> String {
        match self {
            Self::Private => "--private-network".into(),
            Self::Namespace(p) => format!("--network-namespace-path={}", p.display()),
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A booted container.
pub struct Container {
    root: Option<Root>,
    /// What nspawn boots (`-D DIR` or `--image=FILE`): names its process.
    target: String,
    script: Child,
    init: u32,
    log: PathBuf,
}

impl Container {
    /// Boots the root file system at `dir` (e.g. a [`MountedImage`]) with
    /// `extra` nspawn arguments (e.g. `--bind-ro=` for a seed) and returns
    /// once systemd answers.
    pub fn boot_dir(dir: &Path, net: &Network, extra: &[String]) -> Self {
        require_container_tools();
        let target = format!("-D {}", dir.display());
        let log = dir.with_extension("console.log");
        Self::start(None, target, net, extra, log, Boot::Started)
    }

    fn start(
        root: Option<Root>,
        target: String,
        net: &Network,
        extra: &[String],
        log: PathBuf,
        wait: Boot,
    ) -> Self {
        let cmd = format!(
            "exec systemd-nspawn --register=no --keep-unit {} --quiet {} {target} -b",
            net.arg(),
            extra.join(" "),
        );
        let script = Command::new("script")
            .arg("-qfc")
            .arg(&cmd)
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("script");
        let mut c = Self {
            root,
            target,
            script,
            init: 0,
            log,
        };
        c.init = c.find_init();
        // Boot takes well under a second alone; allow for a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = c.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running"
                || state == "degraded"
                || (wait == Boot::Started && state == "starting")
            {
                break;
            }
            if Instant::now() >= deadline {
                let jobs = c.exec(&["systemctl", "list-jobs", "--no-pager"]);
                panic!(
                    "container did not boot (state {state:?}); jobs:\n{}\nconsole:\n{}",
                    String::from_utf8_lossy(&jobs.stdout),
                    c.console()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// The pattern matching this container's systemd-nspawn process.
    fn nspawn_pattern(&self) -> String {
        format!("^systemd-nspawn.* {}( |$)", regex_escape(&self.target))
    }

    fn find_init(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let pattern = self.nspawn_pattern();
        loop {
            let nspawn = Command::new("pgrep")
                .args(["-f", &pattern])
                .output()
                .expect("pgrep");
            let nspawn = String::from_utf8_lossy(&nspawn.stdout).trim().to_owned();
            if let Some(pid) = nspawn.lines().next() {
                let init = Command::new("pgrep")
                    .args(["-P", pid])
                    .output()
                    .expect("pgrep -P");
                // nspawn's first child may still be its own helper; the
                // container's init is the one that became systemd.
                for child in String::from_utf8_lossy(&init.stdout).lines() {
                    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.trim()))
                        .unwrap_or_default();
                    if comm.trim() == "systemd"
                        && let Ok(pid) = child.trim().parse()
                    {
                        return pid;
                    }
                }
            }
            if let Ok(Some(status)) = self.script.try_wait() {
                panic!("systemd-nspawn exited ({status}):\n{}", self.console());
            }
            assert!(
                Instant::now() < deadline,
                "no container init:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The container's network namespace (it has a private network).
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.init))
    }

    /// The container's root (a directory-booted container only).
    pub fn root(&self) -> &Root {
        self.root
            .as_ref()
            .expect("booted from an image: no root directory")
    }

    /// Waits up to `timeout` for the container to end by itself (a
    /// reboot or power-off inside ends systemd-nspawn); its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.script.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// What the console printed.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a command inside, bounded to 120 s.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args([
                "120",
                "nsenter",
                "-t",
                &self.init.to_string(),
                "-m",
                "-u",
                "-i",
                "-n",
                "-p",
                "--",
            ])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("nsenter")
    }

    /// The files below `dir` (not `dir` itself) that `user` does not own.
    pub fn not_owned_by(&self, dir: &str, user: &str) -> Vec<String> {
        self.ok(&["find", dir, "-mindepth", "1", "!", "-user", user])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs a command inside and returns its stdout, failing the test on a
    /// non-zero exit.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (up to 15 s; journald writes asynchronously) until the journal
    /// of `unit`, filtered by `matches` (`FIELD=value`), contains `needle`;
    /// returns that journal text (`-o cat`).
    pub fn wait_journal(&self, unit: &str, matches: &[&str], needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut args = vec!["journalctl", "-u", unit, "-o", "cat", "--no-pager"];
            args.extend_from_slice(matches);
            let text = self.ok(&args);
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "journal of {unit} {matches:?} never showed {needle:?}:\n{}",
                self.ok(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn unit_property(&self, unit: &str, prop: &str) -> String {
        self.ok(&["systemctl", "show", "-p", prop, "--value", unit])
            .trim()
            .to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM to systemd-nspawn powers the container off cleanly.
        let pattern = self.nspawn_pattern();
        let _ = Command::new("pkill")
            .args(["-TERM", "-f", &pattern])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.script.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &pattern])
            .status();
        let _ = self.script.kill();
        let _ = self.script.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `s` with the characters `pgrep -f` (extended regex) treats specially
/// escaped.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The x86-64 root partition type (the Discoverable Partitions
/// Specification), which `systemd-nspawn --image` looks for.
const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// A raw disk image's root partition, loop-mounted read-write. For booting
/// an image where `systemd-nspawn --image` refuses: it needs udev, which a
/// machine that is itself a container may not have. Unmounted and detached
/// on drop (boot a copy: the image is written to).
pub struct MountedImage {
    dir: tempfile::TempDir,
    device: String,
}

impl MountedImage {
    /// Attaches `image` and mounts its root partition.
    pub fn mount(image: &Path) -> Self {
        crate::require_tools(&["losetup", "partx", "sfdisk"], "util-linux fdisk");
        let table = Command::new("sfdisk")
            .arg("--json")
            .arg(image)
            .output()
            .expect("sfdisk");
        let table: serde_json::Value =
            serde_json::from_slice(&table.stdout).expect("sfdisk --json");
        let index = table["partitiontable"]["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .position(|p| {
                p["type"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case(ROOT_X86_64))
            })
            .unwrap_or_else(|| panic!("{}: no x86-64 root partition", image.display()))
            + 1;
        let out = Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(image)
            .output()
            .expect("losetup");
        assert!(out.status.success(), "losetup: {out:?}");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-image-root-")
            .tempdir()
            .expect("mount point");
        let mounted = Self { dir, device };
        // Without udev the partition nodes may need asking for.
        let _ = Command::new("partx")
            .arg("-u")
            .arg(&mounted.device)
            .status();
        let part = format!("{}p{index}", mounted.device);
        if !Path::new(&part).exists() {
            let _ = Command::new("partx")
                .arg("-a")
                .arg(&mounted.device)
                .status();
        }
        let ok = Command::new("mount")
            .arg(&part)
            .arg(mounted.dir.path())
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount {part}");
        mounted
    }

    /// Where the root file system is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        let _ = Command::new("partx").arg("-d").arg(&self.device).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}
