//! natsmeshd under real systemd: Debian 12 booted in systemd-nspawn, the
//! unit file and binaries installed as the package will, then start, STATUS,
//! journald MESSAGE_IDs, reload and stop — what an operator does with
//! systemctl. Runs in the nextest `serial` group (root, containers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use natsmesh::logging::ids;
use natsmesh_harness::container::Root;
use natsmesh_harness::{CURRENT, broker_binary};

const NATSMESHD: &str = env!("CARGO_BIN_EXE_natsmeshd");

fn packaging(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

const NODE: &str = r#"
[node]
region = "fra1"
name = "n1"

[broker]
lame_duck_duration = "30s"
lame_duck_grace_period = "1s"

[broker.client]
bind = "127.0.0.1"

[broker.jetstream]
max_memory_store = "64MiB"
max_file_store = "256MiB"
"#;

#[test]
fn the_unit_starts_reports_reloads_and_stops_under_systemd() {
    let root = Root::new("bookworm");
    root.install(Path::new(NATSMESHD), "/usr/bin/natsmeshd", 0o755);
    root.install(
        &broker_binary(CURRENT),
        "/usr/lib/natsmesh/nats-server",
        0o755,
    );
    root.install(
        &packaging("natsmeshd.service"),
        "/usr/lib/systemd/system/natsmeshd.service",
        0o644,
    );
    root.install(
        &packaging("natsmesh.sysusers"),
        "/usr/lib/sysusers.d/natsmesh.conf",
        0o644,
    );
    root.install(
        &packaging("natsmesh.toml"),
        "/etc/natsmesh/natsmesh.toml",
        0o644,
    );
    root.write("/etc/natsmesh/natsmesh.d/10-node.toml", NODE, 0o644);
    let c = root.boot();

    // Type=notify: `start` returns once READY=1 arrived.
    c.ok(&["systemctl", "start", "natsmeshd"]);
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "active");
    let status = c.unit_property("natsmeshd", "StatusText");
    assert!(
        // Client counts join the line at the next probe round.
        status.starts_with("ready: ") && status.contains("JetStream current"),
        "{status}"
    );
    // It runs as the service user, and so does the broker.
    let users = c.ok(&["ps", "-o", "user=,comm=", "-u", "natsmesh"]);
    assert!(
        users.contains("natsmeshd") && users.contains("nats-server"),
        "{users}"
    );
    c.wait_journal(
        "natsmeshd",
        &[&format!("MESSAGE_ID={}", ids::READY)],
        "ready",
    );
    // The broker's own output reaches the journal too.
    c.wait_journal("natsmeshd", &[], "Server is ready");
    // The operator's status screen, as root.
    let screen = c.ok(&["natsmeshd", "status"]);
    assert!(screen.contains("n1 (region fra1)"), "{screen}");

    // A reloadable change through ExecReload (`natsmeshd reload --wait`).
    c.root().write(
        "/etc/natsmesh/natsmesh.d/20-debug.toml",
        "[broker]\ndebug = true\n",
        0o644,
    );
    c.ok(&["systemctl", "reload", "natsmeshd"]);
    c.wait_journal(
        "natsmeshd",
        &[&format!("MESSAGE_ID={}", ids::RELOADED)],
        "reloaded",
    );
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "active");

    // A refused change: `systemctl reload` fails, the unit keeps running.
    c.root().write(
        "/etc/natsmesh/natsmesh.d/30-bad.toml",
        "[broker]\nlame_duck_duration = \"1s\"\n",
        0o644,
    );
    let out = c.exec(&["systemctl", "reload", "natsmeshd"]);
    assert!(!out.status.success(), "a refused config reloaded");
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "active");
    std::fs::remove_file(c.root().inside("/etc/natsmesh/natsmesh.d/30-bad.toml")).unwrap();

    // Stop: lame duck, then a clean exit 0.
    c.ok(&["systemctl", "stop", "natsmeshd"]);
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "inactive");
    assert_eq!(c.unit_property("natsmeshd", "Result"), "success");
    assert_eq!(c.unit_property("natsmeshd", "ExecMainStatus"), "0");
    c.wait_journal(
        "natsmeshd",
        &[&format!("MESSAGE_ID={}", ids::DRAINING)],
        "draining",
    );
    let left = c.exec(&["pgrep", "-x", "nats-server"]);
    assert!(!left.status.success(), "nats-server outlived the unit");
}

#[test]
fn without_a_configuration_the_unit_does_not_start() {
    let root = Root::new("bookworm");
    root.install(Path::new(NATSMESHD), "/usr/bin/natsmeshd", 0o755);
    root.install(
        &packaging("natsmeshd.service"),
        "/usr/lib/systemd/system/natsmeshd.service",
        0o644,
    );
    root.install(
        &packaging("natsmesh.sysusers"),
        "/usr/lib/sysusers.d/natsmesh.conf",
        0o644,
    );
    let c = root.boot();
    c.ok(&["systemctl", "start", "natsmeshd"]);
    // The condition is not met: skipped, not failed, and never running.
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "inactive");
    assert_eq!(c.unit_property("natsmeshd", "ConditionResult"), "no");
}
