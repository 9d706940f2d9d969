//! `scripts/deps` (the step `.ci/run` and `make test` start with) on the two
//! machines CI may be handed: a fresh Debian 12 root holding none of the
//! packages, and one whose image carries bookworm-backports' `qemu-utils`
//! 10.0, which bookworm's `qemu-system-x86` once removed silently. Each root
//! is made by mmdebstrap; the script runs inside it as root, installs, and
//! verifies every command the tests call.
//!
//! Needs root and mmdebstrap, and reaches Debian's mirror (like every
//! container test's mmdebstrap).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use natsmesh_harness::container::require_container_tools;

fn deps_script() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/deps"))
}

/// Builds a Debian 12 minbase root (discarded afterwards), runs `prepare`
/// as a customize hook (`$1` is the root), then `scripts/deps` inside it,
/// then `after`. Returns mmdebstrap's combined output; fails the test when
/// any step fails.
fn in_fresh_bookworm(prepare: &str, after: &str) -> String {
    require_container_tools();
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--mode=root", "--verbose"]);
    if !prepare.is_empty() {
        cmd.arg(format!("--customize-hook={prepare}"));
    }
    // The machine's own extra trust (an egress proxy's CA, as this
    // project's CI machines have) is the fresh machine's too: pip reaches
    // PyPI over HTTPS through it, where apt's mirror is plain HTTP.
    let local_cas: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/local/share/ca-certificates")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    if !local_cas.is_empty() {
        cmd.arg("--customize-hook=mkdir -p \"$1/usr/local/share/ca-certificates\"");
        for ca in &local_cas {
            cmd.arg(format!(
                "--customize-hook=copy-in {} /usr/local/share/ca-certificates",
                ca.display()
            ));
        }
    }
    cmd.arg(format!(
        "--customize-hook=copy-in {} /usr/local/bin",
        deps_script().display()
    ))
    // The script's own verdict, then the state it left, from inside.
    .arg("--customize-hook=chroot \"$1\" /usr/local/bin/deps")
    .arg("--customize-hook=chroot \"$1\" /usr/local/bin/deps --verify");
    if !after.is_empty() {
        cmd.arg(format!("--customize-hook={after}"));
    }
    // No output is kept: the root exists only while the hooks run.
    let out = cmd
        .args(["bookworm", "/dev/null"])
        .output()
        .expect("mmdebstrap");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/deps in a fresh root failed:\n{text}"
    );
    text
}

/// Every package the script installs, read from the script itself so the
/// test follows its list.
fn listed_packages() -> Vec<String> {
    let script = std::fs::read_to_string(deps_script()).expect("read scripts/deps");
    let block = |name: &str| -> Vec<String> {
        let start = script.find(&format!("{name}=(")).expect(name) + name.len() + 2;
        let end = start + script[start..].find(')').expect("closing paren");
        script[start..end]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let mut all = block("PACKAGES");
    all.extend(block("QEMU"));
    all
}

/// The packages installed in the root, as a hook prints them with `tag`.
const LIST_INSTALLED: &str =
    r#"chroot "$1" dpkg-query -W -f='TAG: ${Package} ${db:Status-Abbrev}\n'"#;

fn installed(log: &str, tag: &str) -> Vec<String> {
    let prefix = format!("{tag}: ");
    log.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(pkg, _)| pkg.to_owned())
        .collect()
}

#[test]
fn installs_and_verifies_on_a_root_with_none_of_the_packages() {
    let packages = listed_packages();
    assert!(packages.len() > 20, "read the script's lists: {packages:?}");
    let log = in_fresh_bookworm(
        &LIST_INSTALLED.replace("TAG", "before"),
        &LIST_INSTALLED.replace("TAG", "after"),
    );
    // Before: none of ours but util-linux and e2fsprogs, which are
    // Priority: required in Debian 12 and so part of every minbase.
    let before = installed(&log, "before");
    assert!(
        !before.is_empty(),
        "the hook listed the root's packages:\n{log}"
    );
    let ours_before: Vec<&String> = packages
        .iter()
        .filter(|p| !["util-linux", "e2fsprogs"].contains(&p.as_str()) && before.contains(p))
        .collect();
    assert!(
        ours_before.is_empty(),
        "the fresh root already had {ours_before:?}"
    );
    let after = installed(&log, "after");
    let missing: Vec<&String> = packages.iter().filter(|p| !after.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "not installed afterwards: {missing:?}\n{log}"
    );
    assert_eq!(
        log.matches("deps: verified").count(),
        2,
        "the install and the --verify run both verify:\n{log}"
    );
}

#[test]
fn keeps_a_consistent_qemu_when_the_image_carries_backports_qemu_utils() {
    // The state CI's machines were found in: qemu-utils from
    // bookworm-backports installed, the backports source gone.
    let prepare = r#"echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$1/etc/apt/sources.list.d/bpo.list" && chroot "$1" apt-get update -qq && chroot "$1" apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-utils && rm "$1/etc/apt/sources.list.d/bpo.list" && chroot "$1" dpkg-query -W -f='before: qemu-utils ${Version}\n' qemu-utils"#;
    let after = r#"chroot "$1" dpkg-query -W -f='after: ${Package} ${Version}\n' qemu-utils qemu-system-x86 && chroot "$1" qemu-img --version | sed 's/^/after: /' && chroot "$1" qemu-system-x86_64 --version | sed 's/^/after: /'"#;
    let log = in_fresh_bookworm(prepare, after);
    let before = log
        .lines()
        .find_map(|l| l.strip_prefix("before: qemu-utils "))
        .unwrap_or_else(|| panic!("no backports qemu-utils before the script:\n{log}"));
    assert!(
        before.contains("bpo12"),
        "the starting state needs the backports build, got {before}"
    );
    let version = |pkg: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("after: {pkg} ")))
            .unwrap_or_else(|| panic!("{pkg} not installed afterwards:\n{log}"))
            .to_owned()
    };
    let utils = version("qemu-utils");
    assert_eq!(
        utils,
        version("qemu-system-x86"),
        "QEMU at one version afterwards"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("after: qemu-img version ")),
        "qemu-img runs:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("after: QEMU emulator version ")),
        "qemu-system-x86_64 runs:\n{log}"
    );
    assert_eq!(log.matches("deps: verified").count(), 2, "{log}");
}
