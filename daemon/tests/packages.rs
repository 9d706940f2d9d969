//! The packages as users get them: `make packages` builds the .debs and
//! .rpms; Debian 12 and Debian 13 boot with systemd as PID 1 in
//! systemd-nspawn and `apt-get install natsmesh` from a signed local
//! repository; then what an operator does with systemctl, an upgrade and a
//! purge. lintian and rpmlint judge the packages, and the .rpm's payload is
//! installed into a scratch root with `rpm --root`. Runs in the nextest
//! `serial` group (root, containers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use natsmesh::logging::ids;
use natsmesh_harness::container::{Container, Root};
use natsmesh_harness::packages::{AptRepo, built, with_version};
use natsmesh_harness::{CURRENT, broker_binary};

const NODE: &str = r#"
[node]
region = "fra1"
name = "n1"

[broker]
lame_duck_duration = "30s"
lame_duck_grace_period = "1s"

[broker.client]
bind = "127.0.0.1"

[broker.cluster]
enabled = true
bind = "127.0.0.1"
# Its own address among the routes, as discovery renders it: the broker
# must recognise itself from inside the sandbox.
routes = ["127.0.0.1:6222"]

[broker.jetstream]
max_memory_store = "64MiB"
max_file_store = "256MiB"

[auth]
# A credential from /etc/natsmesh/credentials, loaded by the packaged unit.
system_password_file = "system.password"
# Loopback only: a raw client (bash's /dev/tcp) keeps a stream in APP.
anonymous_account = "APP"

[accounts.APP]
jetstream = true
"#;

/// A secret only the credential can carry.
const SYSTEM_PASSWORD: &str = "natsmesh-test-sys-7c4f2a9e1b";

fn apt(c: &Container, args: &[&str]) -> std::process::Output {
    let mut full = vec![
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-y",
        "-q",
    ];
    full.extend_from_slice(args);
    c.exec(&full)
}

fn apt_ok(c: &Container, args: &[&str]) -> String {
    let out = apt(c, args);
    assert!(
        out.status.success(),
        "apt-get {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn broker_pids(c: &Container) -> Vec<String> {
    let out = c.exec(&["pgrep", "-x", "nats-server"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// GET `path` from the broker's monitoring port inside the container
/// (bash's /dev/tcp: the minimal image has no HTTP client).
fn monitoring(c: &Container, path: &str) -> String {
    c.ok(&[
        "bash",
        "-c",
        &format!(
            "exec 3<>/dev/tcp/127.0.0.1/8222; printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
        ),
    ])
}

/// Over the raw NATS protocol (bash's /dev/tcp) as the anonymous client:
/// makes stream KEEP (idempotent) and stores one message; the PubAck's
/// sequence number. JetStream's meta group may still be electing itself
/// right after `ready` (its API is silent until then): tried again for a
/// while.
fn keep_a_message(c: &Container) -> u64 {
    let script = r#"exec 3<>/dev/tcp/127.0.0.1/4222
p='{"name":"KEEP","subjects":["keep.>"],"storage":"file"}'
printf 'CONNECT {"verbose":false}\r\nSUB _INBOX.r 1\r\nPUB $JS.API.STREAM.CREATE.KEEP _INBOX.r %d\r\n%s\r\n' "${#p}" "$p" >&3
sleep 1
printf 'PUB keep.1 _INBOX.r 1\r\nx\r\n' >&3
timeout 2 cat <&3 || true"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let said = c.ok(&["bash", "-c", script]);
        let seq = said
            .split("\"seq\":")
            .nth(1)
            .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok());
        if let Some(seq) = seq {
            return seq;
        }
        assert!(Instant::now() < deadline, "no PubAck: {said}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// How many messages the broker's JetStream holds (its /jsz).
fn stored_messages(c: &Container) -> String {
    let jsz = monitoring(c, "/jsz");
    jsz.lines()
        .find_map(|l| l.trim().strip_prefix("\"messages\": "))
        .map(|v| v.trim_end_matches(',').to_owned())
        .unwrap_or_else(|| panic!("{jsz}"))
}

/// The uid a process runs as.
fn uid_of(c: &Container, pid: &str) -> String {
    c.ok(&["stat", "-c", "%u", &format!("/proc/{}", pid.trim())])
        .trim()
        .to_owned()
}

/// The package as released before the broker had its own user: this
/// build with that release's packaging (the unit without --broker-user,
/// capabilities or supplementary group, and with a 0700 state directory;
/// no natsmesh-broker user; no broker-dirs), so natsmeshd runs the broker
/// as natsmesh, as that release did.
fn before_broker_user(deb: &Path, into: &Path) -> std::path::PathBuf {
    let tree = into.join("before-broker-user");
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let edit = |rel: &str, f: &dyn Fn(&str) -> String| {
        let p = tree.join(rel);
        let before = std::fs::read_to_string(&p).unwrap();
        let after = f(&before);
        assert_ne!(before, after, "{rel} unchanged");
        std::fs::write(&p, after).unwrap();
    };
    edit("usr/lib/systemd/system/natsmeshd.service", &|s| {
        s.lines()
            .filter(|l| {
                !l.starts_with("ExecStartPre=+/usr/lib/natsmesh/broker-dirs")
                    && !l.starts_with("SupplementaryGroups=")
                    && !l.starts_with("SystemCallFilter=@setuid")
            })
            .map(|l| match l {
                l if l.starts_with("ExecStart=") => "ExecStart=/usr/bin/natsmeshd run".to_owned(),
                l if l.starts_with("CapabilityBoundingSet=") => "CapabilityBoundingSet=".to_owned(),
                l if l.starts_with("AmbientCapabilities=") => "AmbientCapabilities=".to_owned(),
                l if l.starts_with("StateDirectoryMode=") => "StateDirectoryMode=0700".to_owned(),
                l => l.to_owned(),
            })
            .map(|l| l + "\n")
            .collect()
    });
    edit("usr/lib/sysusers.d/natsmesh.conf", &|s| {
        s.lines()
            .filter(|l| !l.starts_with("u natsmesh-broker"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    edit("DEBIAN/postinst", &|s| {
        let cut = s.find("\n# The broker runs as natsmesh-broker").unwrap();
        format!("{}\n", &s[..cut])
    });
    std::fs::remove_file(tree.join("usr/lib/natsmesh/broker-dirs")).unwrap();
    let out = into.join("natsmesh_before-broker-user_amd64.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "-b"])
        .arg(&tree)
        .arg(&out));
    out
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Install, serve, refuse a bad reload, upgrade without a restart, stop
/// through lame duck, lose natsmeshd to SIGKILL, purge: on one release.
fn install_and_operate(release: &str, purge_state: bool) {
    let natsmesh = built("natsmesh", "deb");
    let broker = built("natsmesh-broker", "deb");
    let scratch = tempfile::Builder::new()
        .prefix("natsmesh-debs-")
        .tempdir()
        .unwrap();
    // Installed first: the release before the broker had its own user;
    // the upgrade below brings this build.
    let older = before_broker_user(&natsmesh, scratch.path());
    let repo = AptRepo::new(&[older, broker]);
    let root = Root::new(release);
    repo.publish_into(&root);
    let c = root.boot();

    // apt verifies the repository's signature and pulls the broker package
    // in as a dependency.
    apt_ok(&c, &["update"]);
    apt_ok(&c, &["install", "natsmesh"]);
    let installed = c.ok(&["dpkg-query", "-W", "-f", "${Package} ${Status}\\n"]);
    for pkg in ["natsmesh", "natsmesh-broker"] {
        assert!(
            installed.contains(&format!("{pkg} install ok installed")),
            "{installed}"
        );
    }
    // Debian's own nats-server (and its unit on port 4222) is not there.
    assert!(!installed.contains("nats-server "), "{installed}");
    // The broker is the pinned upstream release, byte for byte.
    let shipped = std::fs::read(c.root().inside("/usr/lib/natsmesh/nats-server")).unwrap();
    let pinned = std::fs::read(broker_binary(CURRENT)).unwrap();
    assert_eq!(sha256(&shipped), sha256(&pinned));
    // Installed, enabled, not started: there is no configuration yet.
    assert_eq!(
        c.ok(&["systemctl", "is-enabled", "natsmeshd"]).trim(),
        "enabled"
    );
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "inactive");
    assert_eq!(c.unit_property("natsmeshd", "ConditionResult"), "no");
    assert!(
        c.ok(&["getent", "passwd", "natsmesh"])
            .starts_with("natsmesh:")
    );
    assert_eq!(
        c.ok(&["stat", "-c", "%a %U", "/etc/natsmesh/credentials"])
            .trim(),
        "700 root"
    );

    // The operator's configuration and a secret; then start.
    c.root().write(
        "/etc/natsmesh/credentials/system.password",
        SYSTEM_PASSWORD,
        0o600,
    );
    c.root()
        .write("/etc/natsmesh/natsmesh.d/10-node.toml", NODE, 0o644);
    c.ok(&["systemctl", "start", "natsmeshd"]);
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "active");
    let status = c.unit_property("natsmeshd", "StatusText");
    assert!(status.starts_with("ready: "), "{status}");
    let brokers = broker_pids(&c);
    assert_eq!(brokers.len(), 1, "exactly one broker: {brokers:?}");
    let exe = c.ok(&["readlink", &format!("/proc/{}/exe", brokers[0])]);
    assert_eq!(exe.trim(), "/usr/lib/natsmesh/nats-server");
    // That release's broker runs as natsmesh.
    let natsmesh_uid = c.ok(&["id", "-u", "natsmesh"]).trim().to_owned();
    assert_eq!(uid_of(&c, &brokers[0]), natsmesh_uid);
    // Inside the sandbox the broker serves its cluster listener, knows its
    // own route for what it is, and logs no error.
    let routez = monitoring(&c, "/routez");
    assert!(routez.contains("\"num_routes\": 0"), "{routez}");
    let varz = monitoring(&c, "/varz");
    assert!(varz.contains("\"cluster\": {"), "{varz}");
    let journal = c.ok(&["journalctl", "-u", "natsmeshd", "-o", "cat", "--no-pager"]);
    assert!(!journal.contains("[ERR]"), "{journal}");
    let journal = c.wait_journal(
        "natsmeshd",
        &["-o", "json", &format!("MESSAGE_ID={}", ids::READY)],
        "\"STATUS\"",
    );
    assert!(journal.contains("\"MESSAGE\":\"ready\""), "{journal}");

    // A bad configuration: reload fails, says why, the old one serves on.
    c.root().write(
        "/etc/natsmesh/natsmesh.d/30-bad.toml",
        "[broker]\nlame_duck_duration = \"1s\"\n",
        0o644,
    );
    let reload = c.exec(&["systemctl", "reload", "natsmeshd"]);
    assert!(!reload.status.success(), "a refused configuration reloaded");
    let why = c.wait_journal("natsmeshd", &[], "lame_duck_duration");
    assert!(why.contains("30s"), "{why}");
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "active");
    assert_eq!(broker_pids(&c), brokers, "the broker was restarted");
    assert!(c.ok(&["natsmeshd", "status"]).contains("ready"));
    std::fs::remove_file(c.root().inside("/etc/natsmesh/natsmesh.d/30-bad.toml")).unwrap();

    // A stream to carry across the upgrade, in a store natsmesh owns as
    // that release left it. JetStream on its own: a cluster of one, as
    // above, never elects its meta leader.
    c.root().write(
        "/etc/natsmesh/natsmesh.d/20-standalone.toml",
        "[broker.cluster]\nenabled = false\n",
        0o644,
    );
    c.ok(&["systemctl", "restart", "natsmeshd"]);
    let brokers = broker_pids(&c);
    assert_eq!(brokers.len(), 1, "exactly one broker: {brokers:?}");
    assert_eq!(uid_of(&c, &brokers[0]), natsmesh_uid);
    assert_eq!(keep_a_message(&c), 1);
    assert_eq!(stored_messages(&c), "1");
    assert_eq!(
        c.ok(&["stat", "-c", "%U", "/var/lib/natsmesh/jetstream"])
            .trim(),
        "natsmesh"
    );

    // An upgrade restarts nothing: natsmeshd re-executes its new binary
    // with the same main pid and keeps its broker.
    let main_pid = c.unit_property("natsmeshd", "MainPID");
    let current = c.ok(&["dpkg-query", "-W", "-f", "${Version}", "natsmesh"]);
    let newer = with_version(&natsmesh, &format!("{current}+upgrade1"), scratch.path());
    repo.add(&newer);
    repo.publish_into(c.root());
    apt_ok(&c, &["update"]);
    let said = apt(&c, &["install", "natsmesh"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&said.stdout),
        String::from_utf8_lossy(&said.stderr)
    );
    // The running broker stays natsmesh's until the unit starts again,
    // and the package says so.
    assert!(said.contains("from natsmeshd's next start"), "{said}");
    assert_eq!(
        c.ok(&["dpkg-query", "-W", "-f", "${Version}", "natsmesh"]),
        format!("{current}+upgrade1")
    );
    c.wait_journal("natsmeshd", &[], "took over the running nats-server");
    assert_eq!(c.unit_property("natsmeshd", "MainPID"), main_pid);
    assert_eq!(c.unit_property("natsmeshd", "NRestarts"), "0");
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "active");
    assert_eq!(broker_pids(&c), brokers);
    let exe = c.ok(&["readlink", &format!("/proc/{main_pid}/exe")]);
    assert!(!exe.contains("deleted"), "runs the new file: {exe}");
    assert_eq!(uid_of(&c, &brokers[0]), natsmesh_uid);

    // The next start of the unit: the store is handed to natsmesh-broker
    // (ExecStartPre=) and the broker comes back as that user, its stream
    // and message still there.
    c.ok(&["systemctl", "restart", "natsmeshd"]);
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "active");
    let brokers = broker_pids(&c);
    assert_eq!(brokers.len(), 1, "exactly one broker: {brokers:?}");
    assert_eq!(
        uid_of(&c, &brokers[0]),
        c.ok(&["id", "-u", "natsmesh-broker"]).trim()
    );
    assert_eq!(
        c.ok(&["stat", "-c", "%U %G %a", "/var/lib/natsmesh/jetstream"])
            .trim(),
        "natsmesh natsmesh-broker 770"
    );
    let foreign = c.not_owned_by("/var/lib/natsmesh/jetstream", "natsmesh-broker");
    assert!(foreign.is_empty(), "not handed over: {foreign:?}");
    assert_eq!(stored_messages(&c), "1");
    assert_eq!(keep_a_message(&c), 2);
    let journal = c.ok(&["journalctl", "-u", "natsmeshd", "-o", "cat", "--no-pager"]);
    assert!(!journal.contains("[ERR]"), "{journal}");

    // Stop: out of service, lame duck, a clean exit within TimeoutStopSec.
    let budget = humantime::parse_duration(&c.unit_property("natsmeshd", "TimeoutStopUSec"))
        .expect("TimeoutStopUSec");
    let began = Instant::now();
    c.ok(&["systemctl", "stop", "natsmeshd"]);
    let took = began.elapsed();
    assert!(took < budget, "stopping took {took:?} of {budget:?}");
    assert_eq!(c.unit_property("natsmeshd", "Result"), "success");
    c.wait_journal(
        "natsmeshd",
        &[&format!("MESSAGE_ID={}", ids::DRAINING)],
        "draining",
    );
    c.wait_journal("natsmeshd", &[], "Entering lame duck mode");
    assert!(broker_pids(&c).is_empty(), "a broker outlived the unit");

    // natsmeshd killed outright: its broker goes with it at once, long
    // before systemd's own final SIGKILL (TimeoutStopSec) would come. (The
    // fourth start within StartLimitIntervalSec: the counter is reset as
    // an operator would.)
    c.ok(&["systemctl", "reset-failed", "natsmeshd"]);
    c.ok(&["systemctl", "start", "natsmeshd"]);
    assert_eq!(broker_pids(&c).len(), 1);
    c.ok(&[
        "systemctl",
        "kill",
        "--kill-who=main",
        "-s",
        "KILL",
        "natsmeshd",
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !broker_pids(&c).is_empty() {
        assert!(Instant::now() < deadline, "the broker outlived natsmeshd");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ok(&["systemctl", "stop", "natsmeshd"]);

    // Purge: configuration and runtime files go; data and keys stay unless
    // the operator asked for them to go too.
    assert!(c.root().inside("/var/lib/natsmesh").is_dir());
    let purge = if purge_state {
        c.exec(&[
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "NATSMESH_PURGE_STATE=yes",
            "apt-get",
            "-y",
            "-q",
            "purge",
            "natsmesh",
        ])
    } else {
        apt(&c, &["purge", "natsmesh"])
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&purge.stdout),
        String::from_utf8_lossy(&purge.stderr)
    );
    assert!(purge.status.success(), "{said}");
    for gone in [
        "/etc/natsmesh/natsmesh.toml",
        "/etc/natsmesh/natsmesh.d",
        "/run/natsmesh",
        "/usr/bin/natsmeshd",
    ] {
        assert!(!c.root().inside(gone).exists(), "{gone} survived the purge");
    }
    for kept in [
        "/var/lib/natsmesh",
        "/etc/natsmesh/credentials/system.password",
    ] {
        assert_eq!(
            c.root().inside(kept).exists(),
            !purge_state,
            "{kept} after a purge with NATSMESH_PURGE_STATE={purge_state}"
        );
    }
    if !purge_state {
        assert!(said.contains("kept /var/lib/natsmesh"), "{said}");
    }
}

#[test]
fn debian_12_installs_operates_upgrades_and_purges_the_packages() {
    install_and_operate("bookworm", false);
}

#[test]
fn debian_13_installs_operates_upgrades_and_purges_the_packages() {
    install_and_operate("trixie", true);
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn lintian_finds_no_error_or_unexplained_warning() {
    natsmesh_harness::require_tools(&["lintian"], "lintian");
    let said = output(
        Command::new("lintian")
            .args(["--pedantic", "--display-info"])
            .arg(built("natsmesh", "deb"))
            .arg(built("natsmesh-broker", "deb")),
    );
    // Overridden tags (each justified in packaging/debian/*.lintian-overrides)
    // are not printed; errors and warnings must not remain.
    let bad: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(bad.is_empty(), "{said}");
}

fn rpmlintrc() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/rpm/natsmesh.rpmlintrc")
}

#[test]
fn rpmlint_finds_no_error() {
    natsmesh_harness::require_tools(&["rpmlint"], "rpmlint");
    let said = output(
        Command::new("rpmlint")
            .arg("-r")
            .arg(rpmlintrc())
            .arg(built("natsmesh", "rpm"))
            .arg(built("natsmesh-broker", "rpm")),
    );
    assert!(said.contains(" 0 errors,"), "{said}");
}

/// Files (not directories) a .deb installs, with their modes.
fn deb_files(deb: &Path) -> BTreeSet<(String, String)> {
    output(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            let mode = l.split_whitespace().next()?;
            let path = l.split_whitespace().nth(5)?;
            Some((path.trim_start_matches('.').to_owned(), mode.to_owned()))
        })
        .collect()
}

/// Where each format keeps its licence and packaging notes; everything
/// else must be the same files.
fn format_specific(path: &str) -> bool {
    path.ends_with("/copyright")
        || path.ends_with("/changelog.Debian.gz")
        || path.starts_with("/usr/share/lintian/")
        || path.starts_with("/usr/share/licenses/")
}

#[test]
fn the_rpm_payload_installs_the_debs_files_into_a_scratch_root() {
    natsmesh_harness::require_tools(&["rpm", "dpkg-deb"], "rpm dpkg");
    let scratch = tempfile::Builder::new()
        .prefix("natsmesh-rpmroot-")
        .tempdir()
        .unwrap();
    let root = scratch.path();
    let out = output(Command::new("rpm").arg("--root").arg(root).arg("--initdb"));
    assert!(out.is_empty(), "{out}");
    for name in ["natsmesh-broker", "natsmesh"] {
        let rpm = built(name, "rpm");
        // No RPM distribution here: the scratch root has neither systemd
        // nor a shell for the scriptlets, only the payload is checked.
        let status = Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(["-i", "--nodeps", "--noscripts"])
            .arg(&rpm)
            .status()
            .unwrap();
        assert!(status.success(), "rpm -i {}", rpm.display());

        let listed = output(Command::new("rpm").args(["-qlp"]).arg(&rpm));
        let rpm_files: BTreeSet<String> = listed
            .lines()
            .map(str::to_owned)
            .filter(|p| !format_specific(p))
            .collect();
        let deb = deb_files(&built(name, "deb"));
        let deb_paths: BTreeSet<String> = deb
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| !format_specific(p))
            .collect();
        assert_eq!(rpm_files, deb_paths, "{name}: the .rpm and the .deb differ");
        // Installed with the same modes and, for the programs, the same bytes.
        for (path, mode) in deb.iter().filter(|(p, _)| !format_specific(p)) {
            let installed = root.join(path.trim_start_matches('/'));
            let meta = std::fs::metadata(&installed)
                .unwrap_or_else(|e| panic!("{path} not installed by rpm: {e}"));
            use std::os::unix::fs::PermissionsExt as _;
            let want = if mode.contains('x') { 0o755 } else { 0o644 };
            assert_eq!(meta.permissions().mode() & 0o777, want, "{path}");
        }
    }
    let rpm_exe = std::fs::read(root.join("usr/lib/natsmesh/nats-server")).unwrap();
    assert_eq!(
        sha256(&rpm_exe),
        sha256(&std::fs::read(broker_binary(CURRENT)).unwrap())
    );
    let natsmeshd = root.join("usr/bin/natsmeshd");
    let version = output(Command::new(&natsmeshd).arg("--version"));
    assert!(version.starts_with("natsmeshd "), "{version}");
    let queried = output(Command::new("rpm").arg("--root").arg(root).args([
        "-q",
        "natsmesh",
        "natsmesh-broker",
    ]));
    assert!(
        queried.contains("natsmesh-0.") && queried.contains(&format!("natsmesh-broker-{CURRENT}")),
        "{queried}"
    );
}
