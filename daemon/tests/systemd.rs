//! natsmeshd under real systemd: Debian 12 booted in systemd-nspawn, the
//! unit file and binaries installed as the package will, then start, STATUS,
//! journald MESSAGE_IDs, reload and stop — what an operator does with
//! systemctl. Runs in the nextest `serial` group (root, containers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use natsmesh::logging::ids;
use natsmesh_harness::container::Root;
use natsmesh_harness::fakes::dns_api::{FakeDnsApi, Flavor};
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

/// A Debian 12 root with natsmeshd, the pinned broker, the unit, the
/// sysusers entry and the packaged defaults, where the package puts them.
fn installed() -> Root {
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
        &packaging("natsmesh-tmpfiles.conf"),
        "/usr/lib/tmpfiles.d/natsmesh.conf",
        0o644,
    );
    root.install(
        &packaging("natsmesh.toml"),
        "/etc/natsmesh/natsmesh.toml",
        0o644,
    );
    root
}

#[test]
fn the_unit_starts_reports_reloads_and_stops_under_systemd() {
    let root = installed();
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
    // The kernel's OOM killer picks the broker before its supervisor.
    let oom = |pid: &str| -> i32 {
        c.ok(&["cat", &format!("/proc/{}/oom_score_adj", pid.trim())])
            .trim()
            .parse()
            .unwrap()
    };
    let main_pid = c.unit_property("natsmeshd", "MainPID");
    let broker_pid = c.ok(&["pgrep", "-x", "nats-server"]);
    // (Inside systemd-nspawn systemd may not lower a score below 0, so the
    // unit's OOMScoreAdjust=-500 can read 0 here; the gap is what counts.)
    let (own, broker) = (oom(&main_pid), oom(&broker_pid));
    assert!(
        own <= 0 && broker == (own + 500).min(1000),
        "{own} {broker}"
    );
    // Sandboxed: no capability, a read-only system, no new privileges.
    let caps = c.ok(&[
        "grep",
        "-E",
        "^(CapEff|CapBnd|NoNewPrivs)",
        &format!("/proc/{main_pid}/status"),
    ]);
    assert!(
        caps.contains("CapEff:\t0000000000000000")
            && caps.contains("CapBnd:\t0000000000000000")
            && caps.contains("NoNewPrivs:\t1"),
        "{caps}"
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

    // An upgrade installs a new natsmeshd binary the way dpkg does (written
    // beside, renamed over) and restarts nothing: natsmeshd re-executes
    // itself, same main pid, and keeps its broker.
    let main_pid = c.unit_property("natsmeshd", "MainPID");
    let broker = c.ok(&["pgrep", "-x", "nats-server"]);
    let staged = c.root().inside("/usr/bin/.natsmeshd.dpkg-new");
    std::fs::copy(NATSMESHD, &staged).unwrap();
    std::fs::rename(&staged, c.root().inside("/usr/bin/natsmeshd")).unwrap();
    c.wait_journal("natsmeshd", &[], "took over the running nats-server");
    assert_eq!(c.unit_property("natsmeshd", "MainPID"), main_pid);
    assert_eq!(c.unit_property("natsmeshd", "ActiveState"), "active");
    assert_eq!(c.unit_property("natsmeshd", "NRestarts"), "0");
    assert_eq!(c.ok(&["pgrep", "-x", "nats-server"]), broker);
    let exe = c.ok(&["readlink", &format!("/proc/{main_pid}/exe")]);
    assert!(!exe.contains("deleted"), "runs the new file: {exe}");

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

/// The load balancer's token as a systemd credential: the droplet joins
/// the (fake) DigitalOcean balancer with it and leaves before lame duck on
/// stop; the token is in no process's argv or environment and not in the
/// journal.
/// `secret` is in neither natsmeshd's nor its broker's argv or
/// environment.
fn assert_not_in_processes(c: &natsmesh_harness::container::Container, secret: &str) {
    let main_pid = c.unit_property("natsmeshd", "MainPID");
    let broker_pid = c.ok(&["pgrep", "-x", "nats-server"]).trim().to_owned();
    for pid in [main_pid.as_str(), broker_pid.as_str()] {
        for file in ["environ", "cmdline"] {
            let text = c.ok(&["cat", &format!("/proc/{pid}/{file}")]);
            assert!(!text.contains(secret), "secret in /proc/{pid}/{file}");
        }
    }
}

#[test]
fn a_balancer_token_arrives_as_a_credential_and_goes_nowhere_else() {
    use natsmesh_harness::fakes::do_lb::{DoLb, FakeDoLb};
    use natsmesh_harness::fakes::do_metadata::{Droplet, FakeDoMetadata};
    use natsmesh_harness::fakes::lb::Model;
    const TOKEN: &str = "dop_v1_natsmesh-test-lb-7e57ab1e";
    const DROPLET: u64 = 5_100_001;
    let (client_port, ready_port) = (4222, 8223);
    let root = installed();
    root.write(
        "/etc/natsmesh/credentials/lb-token",
        &format!("{TOKEN}\n"),
        0o600,
    );
    let c = root.boot();
    let meta = FakeDoMetadata::start_in(
        Droplet {
            id: DROPLET,
            hostname: "n1".into(),
            region: "fra1".into(),
            private_ipv4: Some("127.0.0.1".into()),
            public_ipv4: None,
            public_ipv6: None,
            tags: Vec::new(),
        },
        Some(c.netns()),
    );
    let lb = FakeDoLb::start_in(
        TOKEN,
        DoLb::tcp(
            "4de7ac8b-495b-4884-9a69-1050c6793cd6",
            "fra1",
            client_port,
            ready_port,
        ),
        vec![(DROPLET, "127.0.0.1".parse().unwrap())],
        Model::default(),
        Some(c.netns()),
    );
    // The droplet's name comes from its metadata.
    c.root().write(
        "/etc/natsmesh/natsmesh.d/10-node.toml",
        &NODE.replace("name = \"n1\"\n", ""),
        0o644,
    );
    c.root().write(
        "/etc/natsmesh/natsmesh.d/20-lb.toml",
        &format!(
            "[node]\nprovider = \"digitalocean\"\n\n[node.metadata]\nurl = \"{}\"\n\n[broker.client]\nport = {client_port}\n\n[load_balancer]\nprovider = \"digitalocean\"\nid = \"4de7ac8b-495b-4884-9a69-1050c6793cd6\"\ntoken_file = \"lb-token\"\napi_url = \"{}\"\nready_bind = \"127.0.0.1\"\nready_port = {ready_port}\n",
            meta.url(),
            lb.api_url()
        ),
        0o644,
    );
    let started = c.exec(&["systemctl", "start", "natsmeshd"]);
    let journal = || c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager"]);
    assert!(started.status.success(), "{}", journal());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while lb.in_service() != vec![DROPLET] {
        assert!(
            std::time::Instant::now() < deadline,
            "not in service: {:?}\n{}",
            lb.requests(),
            journal()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let seen = lb.state.lock().unwrap().authorization_seen.clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|h| *h == format!("Bearer {TOKEN}")),
        "{seen:?}"
    );
    assert_not_in_processes(&c, TOKEN);
    c.ok(&["systemctl", "stop", "natsmeshd"]);
    assert!(lb.registered().is_empty(), "still registered after stop");
    let journal = journal();
    assert!(!journal.contains(TOKEN), "token in the journal");
    let left = journal
        .find("left the load balancer")
        .unwrap_or_else(|| panic!("{journal}"));
    let lame_duck = journal
        .find("Entering lame duck mode")
        .expect("lame duck logged");
    assert!(left < lame_duck, "{journal}");
}

#[test]
fn a_dns_token_arrives_as_a_credential_and_goes_nowhere_else() {
    const TOKEN: &str = "dop_v1_natsmesh-test-4b1d0c0ffee";
    let root = installed();
    // Readable by root only; the service user gets it through systemd
    // (the unit loads the whole directory).
    root.write(
        "/etc/natsmesh/credentials/dns-token",
        &format!("{TOKEN}\n"),
        0o600,
    );
    let c = root.boot();
    // The provider's API, on the container's own loopback.
    let fake = FakeDnsApi::start_in(
        Flavor::DigitalOcean,
        "nats.test",
        TOKEN,
        None,
        Some(c.netns()),
    );
    c.root()
        .write("/etc/natsmesh/natsmesh.d/10-node.toml", NODE, 0o644);
    c.root().write(
        "/etc/natsmesh/natsmesh.d/20-dns.toml",
        &format!(
            "[node]\ndomain = \"nats.test\"\n\n[broker.cluster]\nenabled = true\nbind = \"127.0.0.1\"\n\n[discovery]\nenabled = true\nnameservers = [\"127.0.0.1:5399\"]\n\n[dns_publish]\nbackend = \"digitalocean\"\ntoken_file = \"dns-token\"\napi_url = \"{}\"\n",
            fake.url()
        ),
        0o644,
    );

    let started = c.exec(&["systemctl", "start", "natsmeshd"]);
    assert!(
        started.status.success(),
        "{}",
        c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager"])
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fake.records().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "not published: {:?}\n{}",
            fake.requests(),
            c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager"])
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let screen = c.ok(&["natsmeshd", "status"]);
    assert!(
        screen.contains("2 records published via digitalocean"),
        "{screen}"
    );
    let seen = fake.state.lock().unwrap().authorization_seen.clone();
    assert!(
        seen.iter().all(|h| *h == format!("Bearer {TOKEN}")),
        "{seen:?}"
    );

    // Not in either process's argv or environment, not in the journal.
    assert_not_in_processes(&c, TOKEN);
    c.ok(&["systemctl", "stop", "natsmeshd"]);
    assert!(
        fake.records().is_empty(),
        "not withdrawn: {:?}",
        fake.records()
    );
    let journal = c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager"]);
    assert!(!journal.contains(TOKEN), "token in the journal");
    let withdrawn = journal
        .find("DNS records withdrawn")
        .expect("withdrawal logged");
    let lame_duck = journal
        .find("Entering lame duck mode")
        .expect("lame duck logged");
    assert!(withdrawn < lame_duck, "{journal}");
}
