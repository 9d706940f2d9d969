//! The natsmeshd command line against real brokers: check, render,
//! --explain, and run with the embedded default.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use natsmesh_harness::fakes::do_metadata::{Droplet, FakeDoMetadata};
use natsmesh_harness::{CURRENT, DEBIAN_12, OLDEST_AND_CURRENT, broker_binary, free_port, scratch};

const NATSMESHD: &str = env!("CARGO_BIN_EXE_natsmeshd");

fn natsmeshd(args: &[&str], path_dir: &Path) -> Output {
    Command::new(NATSMESHD)
        .args(args)
        .env_clear()
        .env("PATH", path_dir)
        .env("HOME", path_dir)
        .output()
        .unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn write_config(dir: &Path, version: &str, extra: &str) -> PathBuf {
    let main = dir.join("natsmesh.toml");
    std::fs::write(
        &main,
        format!(
            r#"
[node]
region = "fra1"
name = "n1"

[broker]
binary = "{}"
state_dir = "{}"

[broker.client]
bind = "127.0.0.1"

[broker.jetstream]
max_memory_store = "64MiB"
max_file_store = "1GiB"
{extra}
"#,
            broker_binary(version).display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    main
}

#[test]
fn check_passes_a_good_config_on_both_releases() {
    for version in OLDEST_AND_CURRENT {
        let dir = scratch();
        let main = write_config(dir.path(), version, "");
        let out = natsmeshd(&["check", "--config", main.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{version}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(&format!("nats-server {version}")));
    }
}

#[test]
fn check_lists_every_problem_and_exits_2() {
    let dir = scratch();
    let main = write_config(dir.path(), CURRENT, "[broker.client]\nprot = 1\n");
    std::fs::create_dir(dir.path().join("natsmesh.d")).unwrap();
    std::fs::write(
        dir.path().join("natsmesh.d/10-x.toml"),
        "[broker]\nlame_duck_duration = \"5s\"\n",
    )
    .unwrap();
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    // TOML refuses a table defined twice: that is the first, syntax, problem.
    assert!(err.contains("natsmesh.toml:"), "{err}");
    std::fs::write(
        &main,
        std::fs::read_to_string(&main)
            .unwrap()
            .replace("[broker.client]\nprot = 1\n", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("natsmesh.d/20-y.toml"),
        "[broker.client]\nprot = 1\n",
    )
    .unwrap();
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("20-y.toml:2:1: broker.client.prot: unknown key `prot`; did you mean `port`?"),
        "{err}"
    );
}

#[test]
fn semantic_problems_are_all_listed_with_their_files() {
    let dir = scratch();
    let main = write_config(dir.path(), CURRENT, "");
    std::fs::create_dir(dir.path().join("natsmesh.d")).unwrap();
    std::fs::write(
        dir.path().join("natsmesh.d/10-x.toml"),
        "[broker]\nlame_duck_duration = \"5s\"\n[broker.monitoring]\nbind = \"203.0.113.9\"\n",
    )
    .unwrap();
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("10-x.toml:2:1: broker.lame_duck_duration:"),
        "{err}"
    );
    assert!(
        err.contains("10-x.toml:4:1: broker.monitoring.bind:"),
        "{err}"
    );
}

#[test]
fn a_key_the_broker_version_lacks_is_refused_naming_the_key() {
    let dir = scratch();
    let extra = "[broker.cluster]\nenabled = true\nbind = \"127.0.0.1\"\npool_size = 3\n";
    let main = write_config(dir.path(), DEBIAN_12, extra);
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("broker.cluster.pool_size: `cluster.pool_size` needs nats-server 2.10.0 or newer; this broker is 2.9.10"),
        "{err}"
    );
    let main = write_config(dir.path(), CURRENT, extra);
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn sync_interval_is_rendered_where_the_broker_knows_it_and_refused_where_not() {
    let dir = scratch();
    let extra = "sync_interval = \"always\"\n";
    let main = write_config(dir.path(), DEBIAN_12, extra);
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("broker.jetstream.sync_interval: `jetstream.sync_interval` needs nats-server 2.10.0 or newer; this broker is 2.9.10"),
        "{err}"
    );
    for (written, rendered_as) in [("always", "\"always\""), ("10s", "\"10s\"")] {
        let main = write_config(
            dir.path(),
            CURRENT,
            &format!("sync_interval = \"{written}\"\n"),
        );
        let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{written}: {}", text(&out.stderr));
        let out = natsmeshd(&["render", "-c", main.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let rendered = text(&out.stdout);
        assert!(
            rendered.contains(&format!("sync_interval: {rendered_as}")),
            "{rendered}"
        );
    }
    let main = write_config(dir.path(), CURRENT, "sync_interval = \"2h\"\n");
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("broker.jetstream.sync_interval: \"2h\" is longer than 1h"),
        "{err}"
    );
}

#[test]
fn an_include_the_broker_refuses_fails_the_check_with_its_message() {
    let dir = scratch();
    std::fs::write(
        dir.path().join("accounts.conf"),
        "A: { users: [ { user: a, password: x, pasword: x } ] }\n",
    )
    .unwrap();
    let main = write_config(
        dir.path(),
        CURRENT,
        "[broker.include]\naccounts = \"accounts.conf\"\n",
    );
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("nats-server refused") && err.contains("pasword"),
        "{err}"
    );
}

#[test]
fn an_include_tree_is_read_once_and_judged_before_the_broker_sees_it() {
    let dir = scratch();
    let main = write_config(
        dir.path(),
        CURRENT,
        "[broker.include]\naccounts = \"accounts.conf\"\n",
    );
    let check = || {
        let started = Instant::now();
        let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
        (out, started.elapsed())
    };
    // Eight self-includes: 8^8 reads if each were followed; refused at the
    // first, naming the chain.
    std::fs::write(
        dir.path().join("accounts.conf"),
        "A: { users: [ { user: a, password: x } ] }\n".to_owned()
            + &"include accounts.conf\n".repeat(8),
    )
    .unwrap();
    let (out, took) = check();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("include cycle: ") && err.contains("accounts.conf → "),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // A key natsmesh owns, two includes down, is refused naming that file.
    std::fs::create_dir_all(dir.path().join("users")).unwrap();
    std::fs::write(
        dir.path().join("accounts.conf"),
        "A: { include users/a.conf }\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("users/a.conf"), "include more.conf\n").unwrap();
    std::fs::write(
        dir.path().join("users/more.conf"),
        "users: [ { user: a, password: x }, { user: open } ]\n",
    )
    .unwrap();
    let (out, _) = check();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("users/more.conf:1: `accounts.A.users[1]` is not allowed here: every user needs a password or an nkey"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("users/more.conf"),
        "users: [ { user: a, password: x } ]\nno_auth_user: a\n",
    )
    .unwrap();
    let (out, _) = check();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("users/more.conf:2: `accounts.A.no_auth_user` is not allowed here"),
        "{err}"
    );
    // The same tree without it passes.
    std::fs::write(
        dir.path().join("users/more.conf"),
        "users: [ { user: a, password: x } ]\n",
    )
    .unwrap();
    let (out, _) = check();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn render_prints_the_file_for_the_state_directory_and_explains_origins() {
    let dir = scratch();
    std::fs::write(
        dir.path().join("accounts.conf"),
        "A: { users: [ { user: a, password: x } ] }\n",
    )
    .unwrap();
    let main = write_config(
        dir.path(),
        CURRENT,
        "[broker.include]\naccounts = \"accounts.conf\"\n",
    );
    let out = natsmeshd(&["render", "-c", main.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered = text(&out.stdout);
    assert!(rendered.contains("server_name: \"n1\""), "{rendered}");
    assert!(
        rendered.contains("max_file_store: 1073741824"),
        "{rendered}"
    );
    // The include is relative to the state directory, where the file lives.
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("nats-server.conf"), &rendered).unwrap();
    let (ok, stderr) =
        natsmesh_harness::check(&broker_binary(CURRENT), &state.join("nats-server.conf"));
    assert!(ok, "{stderr}\n{rendered}");

    let out = natsmeshd(
        &["render", "--explain", "-c", main.to_str().unwrap()],
        dir.path(),
    );
    let explained = text(&out.stdout);
    let line = explained
        .lines()
        .find(|l| l.starts_with("broker.jetstream.max_file_store"))
        .unwrap();
    assert!(line.contains(&format!("{}:", main.display())), "{line}");
    let line = explained
        .lines()
        .find(|l| l.starts_with("broker.lame_duck_duration"))
        .unwrap();
    assert!(line.ends_with("# default"), "{line}");
}

/// Kills the process on drop, so a failed test leaves nothing behind.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn healthz(port: u16) -> Option<u16> {
    ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}

#[test]
fn run_without_config_starts_the_embedded_default_and_stops_cleanly() {
    assert!(
        !Path::new("/etc/natsmesh/natsmesh.toml").exists()
            && !Path::new("/etc/natsmesh/natsmesh.d").exists(),
        "this test needs a machine without /etc/natsmesh (natsmesh installed here?)"
    );
    for version in OLDEST_AND_CURRENT {
        let home = scratch();
        let bin_dir = broker_binary(version).parent().unwrap().to_path_buf();
        let child = Command::new(NATSMESHD)
            .arg("run")
            .env_clear()
            .env("PATH", &bin_dir)
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut guard = Guard(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while healthz(8222) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "{version}: embedded default never became healthy"
            );
            assert!(
                guard.0.try_wait().unwrap().is_none(),
                "{version}: natsmeshd exited"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let state = home.path().join(".local/state/natsmesh");
        let rendered = std::fs::read_to_string(state.join("nats-server.conf")).unwrap();
        assert!(
            rendered.contains("listen: \"127.0.0.1:4222\""),
            "{rendered}"
        );
        assert!(
            state.join("jetstream").is_dir(),
            "JetStream store in the per-user state directory"
        );
        std::net::TcpStream::connect("127.0.0.1:4222").unwrap();

        let pid = guard.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        // A connection still open when lame duck begins (this test's own,
        // or a serving probe's) makes nats-server wait its grace period
        // (10 s by default) before closing it and exiting; on a loaded
        // machine that happens, so allow the grace period and a margin.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = guard.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{version}: natsmeshd did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{version}: {status}");
        assert_eq!(
            healthz(8222),
            None,
            "{version}: the broker outlived natsmeshd"
        );
    }
}

#[test]
fn run_under_systemd_without_config_refuses() {
    assert!(!Path::new("/etc/natsmesh/natsmesh.toml").exists());
    let dir = scratch();
    let out = Command::new(NATSMESHD)
        .arg("run")
        .env_clear()
        .env("INVOCATION_ID", "0123456789abcdef")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does not fall back to its embedded default"),
        "{}",
        text(&out.stderr)
    );
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A file holding a secret (or a placeholder for one), 0600.
fn private(p: &Path, text: &str) -> PathBuf {
    std::fs::write(p, text).unwrap();
    chmod(p, 0o600);
    p.to_path_buf()
}

/// Every kind of secret `check` reads: refused at 0644 and 0640 (exit 2,
/// naming the key, the file, its mode and the chmod), accepted at 0600.
/// The tests run as root, so the mode is the refusal, not ownership.
#[test]
fn check_refuses_every_secret_that_group_or_others_may_read() {
    let dir = scratch();
    let d = dir.path();
    let ca = private(&d.join("ca.crt"), "not a certificate\n");
    let crt = private(&d.join("node.crt"), "not a certificate\n");
    let node_key = private(&d.join("other.key"), "not a key\n");
    let operator = "[auth]\nmode = \"operator\"\n\n[auth.operator]\n";
    // DNS publication publishes what discovery reads, under node.domain
    // (a drop-in: the main file has its own [node]).
    std::fs::create_dir(d.join("natsmesh.d")).unwrap();
    std::fs::write(
        d.join("natsmesh.d/10-domain.toml"),
        "[node]\ndomain = \"example.net\"\n",
    )
    .unwrap();
    let discovery =
        "[broker.cluster]\nenabled = true\nbind = \"127.0.0.1\"\n\n[discovery]\nenabled = true\n";
    let kinds: Vec<(&str, String, String)> = vec![
        (
            "tls.intermediate_key",
            "inter.key".into(),
            format!(
                "[tls]\nmode = \"issue\"\nca_file = \"{}\"\nintermediate_cert = \"{}\"\nintermediate_key = \"@\"\n",
                ca.display(),
                crt.display()
            ),
        ),
        (
            "tls.key_file",
            "node.key".into(),
            format!(
                "[tls]\nmode = \"files\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"@\"\n",
                ca.display(),
                crt.display()
            ),
        ),
        (
            "tls.client_key_file",
            "client.key".into(),
            format!(
                "[tls]\nmode = \"files\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"@\"\n",
                ca.display(),
                crt.display(),
                node_key.display(),
                crt.display()
            ),
        ),
        (
            "auth.system_password_file",
            "system.password".into(),
            "[auth]\nsystem_password_file = \"@\"\n".into(),
        ),
        (
            "auth.operator.system_creds",
            "natsmesh.creds".into(),
            format!("{operator}system_creds = \"@\"\n"),
        ),
        (
            "fleet.lease_creds",
            "lease.creds".into(),
            format!(
                "[fleet]\nlease_scope = \"supercluster\"\nlease_creds = \"@\"\n\n{operator}system_creds = \"{}\"\n",
                node_key.display()
            ),
        ),
        (
            "dns_publish.token_file",
            "dns.token".into(),
            format!("{discovery}\n[dns_publish]\nbackend = \"digitalocean\"\ntoken_file = \"@\"\n"),
        ),
        (
            "dns_publish.tsig_secret_file",
            "tsig.key".into(),
            format!(
                "{discovery}\n[dns_publish]\nbackend = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_key_name = \"k\"\ntsig_secret_file = \"@\"\n"
            ),
        ),
        (
            "load_balancer.token_file",
            "lb.token".into(),
            "[load_balancer]\nprovider = \"digitalocean\"\nid = \"4de7ac8b\"\ntoken_file = \"@\"\n"
                .into(),
        ),
    ];
    // A DigitalOcean balancer needs the droplet's identity.
    let metadata = FakeDoMetadata::start(Droplet::default());
    let on_do = format!(
        "[node]\nprovider = \"digitalocean\"\n\n[node.metadata]\nurl = \"{}\"\n",
        metadata.url()
    );
    for (key, name, extra) in &kinds {
        let dropin = if key.starts_with("load_balancer.") {
            on_do.as_str()
        } else {
            ""
        };
        std::fs::write(d.join("natsmesh.d/20-kind.toml"), dropin).unwrap();
        let secret = private(&d.join(name), "secret-value\n");
        let main = write_config(d, CURRENT, &extra.replace('@', secret.to_str().unwrap()));
        let chmod_hint = format!("chmod 600 {}", secret.display());
        for mode in [0o644, 0o640] {
            chmod(&secret, mode);
            let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], d);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{key} {mode:o}: {err}");
            let line = err
                .lines()
                .find(|l| l.contains(&chmod_hint))
                .unwrap_or_else(|| panic!("{key} {mode:o}: no refusal in {err}"));
            assert!(line.contains(key), "{line}");
            assert!(line.contains(&format!("has mode {mode:04o}")), "{line}");
            assert!(!err.contains("secret-value"), "{err}");
        }
        chmod(&secret, 0o600);
        let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], d);
        let err = text(&out.stderr);
        assert!(!err.contains(&chmod_hint), "{key} at 0600: {err}");
        assert!(
            !err.contains(&secret.display().to_string()),
            "{key} at 0600: {err}"
        );
    }
    // With nothing else wrong, a 0600 secret passes the whole check.
    std::fs::remove_dir_all(d.join("natsmesh.d")).unwrap();
    let secret = private(&d.join("system.password"), "secret-value\n");
    let main = write_config(
        d,
        CURRENT,
        &format!("[auth]\nsystem_password_file = \"{}\"\n", secret.display()),
    );
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], d);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The state directory belongs to the service user; root runs `check`. A
/// `server-name` there that links to a root-only file must not make
/// `check` print that file, nor may a file that holds no server name.
#[test]
fn check_never_prints_what_a_planted_server_name_points_at() {
    let dir = scratch();
    let d = dir.path();
    let main = write_config(d, CURRENT, "");
    let state = d.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let shadow = private(&d.join("shadow"), "n9\n");
    std::os::unix::fs::symlink(&shadow, state.join("server-name")).unwrap();
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], d);
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{o}{e}");
    assert!(
        e.contains(&state.join("server-name").display().to_string()),
        "{e}"
    );
    assert!(e.contains("symbolic link"), "{e}");
    assert!(!o.contains("n9") && !e.contains("\"n9\""), "{o}{e}");
    // Not followed when written either.
    assert_eq!(std::fs::read_to_string(&shadow).unwrap(), "n9\n");

    std::fs::remove_file(state.join("server-name")).unwrap();
    std::fs::write(state.join("server-name"), "root:TOPSECRET:0:0\n").unwrap();
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], d);
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{o}{e}");
    assert!(e.contains("does not hold a valid server name"), "{e}");
    assert!(
        !o.contains("TOPSECRET") && !e.contains("TOPSECRET"),
        "{o}{e}"
    );

    std::fs::write(state.join("server-name"), "n1\n").unwrap();
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], d);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `ca init` writes its key 0600 even where a link was planted at the key's
/// path (the link is replaced, never followed), and `ca intermediate`
/// refuses a root key that group or others may read.
#[test]
fn ca_root_keys_are_written_and_read_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch();
    let d = dir.path();
    let root = d.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let victim = d.join("victim.key");
    std::os::unix::fs::symlink(&victim, root.join("root.key")).unwrap();
    let out = natsmeshd(&["ca", "init", "--out", root.to_str().unwrap()], d);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("(0600)"));
    let meta = std::fs::symlink_metadata(root.join("root.key")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(!victim.exists(), "the key went through the link");

    let key = root.join("root.key");
    let intermediate = |out: &str| {
        natsmeshd(
            &[
                "ca",
                "intermediate",
                "--root",
                root.to_str().unwrap(),
                "--region",
                "fra1",
                "--domain",
                "example.net",
                "--out",
                d.join(out).to_str().unwrap(),
            ],
            d,
        )
    };
    for (mode, out) in [(0o644, "a"), (0o640, "b")] {
        chmod(&key, mode);
        let o = intermediate(out);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{mode:o}");
        assert!(
            err.contains(&format!("chmod 600 {}", key.display())),
            "{err}"
        );
        assert!(err.contains(&format!("{mode:04o}")), "{err}");
        assert!(!d.join(out).join("fra1.key").exists());
    }
    chmod(&key, 0o600);
    let o = intermediate("c");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m = std::fs::metadata(d.join("c/fra1.key")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
}

/// Runs natsmeshd in `dir`.
fn natsmeshd_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(NATSMESHD)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Every file under `dir`, relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

#[test]
fn user_add_with_a_bare_file_name_writes_the_user_and_prints_its_password() {
    let dir = scratch();
    let out = natsmeshd_in(
        dir.path(),
        &[
            "user",
            "add",
            "--account",
            "APP",
            "--name",
            "svc",
            "--file",
            "users.toml",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let said = text(&out.stdout);
    let password = said
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no password printed: {said}"));
    // The file, in the current directory, holds the hash of what was
    // printed, not the password; no temporary file is left beside it.
    let written = std::fs::read_to_string(dir.path().join("users.toml")).unwrap();
    let users: toml::Table = toml::from_str(&written).unwrap();
    let hash = users["accounts"]["APP"]["users"][0]["password_hash"]
        .as_str()
        .unwrap();
    assert!(bcrypt::verify(password, hash).unwrap(), "{written}");
    assert!(!written.contains(password));
    assert_eq!(tree(dir.path()), vec![PathBuf::from("users.toml")]);
}

#[test]
fn ca_intermediate_writes_only_into_out_and_refuses_a_region_that_is_no_label() {
    let dir = scratch();
    let init = natsmeshd_in(dir.path(), &["ca", "init", "--out", "ca/root"]);
    assert!(init.status.success(), "{init:?}");
    let before = tree(dir.path());
    let intermediate = |region: &str, domain: &str| {
        natsmeshd_in(
            dir.path(),
            &[
                "ca",
                "intermediate",
                "--root",
                "ca/root",
                "--region",
                region,
                "--domain",
                domain,
                "--out",
                "ca/out",
            ],
        )
    };
    for region in [
        "../x", "../../x", "/tmp/x", "x/y", "..", ".", "FRA1", "fra1\n", "", "-fra1", "fra.1",
    ] {
        let out = intermediate(region, "nats.test");
        assert_eq!(out.status.code(), Some(2), "{region:?}: {out:?}");
        assert!(
            text(&out.stderr).contains("--region"),
            "{region:?}: {out:?}"
        );
        assert_eq!(tree(dir.path()), before, "{region:?} wrote something");
    }
    assert!(!Path::new("/tmp/x.key").exists());
    let out = intermediate("fra1", "nats.test\nx");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--domain"), "{out:?}");
    assert_eq!(tree(dir.path()), before);
    // A region label: its pair, inside --out and nowhere else.
    let out = intermediate("fra1", "nats.test");
    assert!(out.status.success(), "{out:?}");
    let mut want = before.clone();
    want.extend(["ca/out", "ca/out/fra1.crt", "ca/out/fra1.key"].map(PathBuf::from));
    want.sort();
    assert_eq!(tree(dir.path()), want);
}

/// Starts the real nats-server on `conf` and waits (at most 10 s) for it
/// to exit on its own: its exit status, or `None` if it became ready (then
/// it is stopped), and what it logged.
fn broker_start_outcome(version: &str, conf: &Path) -> (Option<std::process::ExitStatus>, String) {
    let log = conf.with_extension("log");
    let mut child = Command::new(broker_binary(version))
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Server is ready")
            || Instant::now() > deadline
        {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn a_leafnode_remote_bound_to_a_missing_account_fails_the_check_as_the_broker_would() {
    let dir = scratch();
    // Ports of its own: the broker is started below.
    let (client, monitoring) = (free_port(), free_port());
    let config = |account: &str| {
        let main = write_config(
            dir.path(),
            CURRENT,
            &format!(
                "domain = \"edge\"\n\n[broker.monitoring]\nport = {monitoring}\n\n[[broker.leafnodes.remotes]]\nurls = [\"127.0.0.1:7422\"]\naccount = \"{account}\"\n\n[accounts.APP]\n"
            ),
        );
        let text = std::fs::read_to_string(&main).unwrap().replace(
            "bind = \"127.0.0.1\"\n",
            &format!("bind = \"127.0.0.1\"\nport = {client}\n"),
        );
        std::fs::write(&main, text).unwrap();
        main
    };
    let main = config("NOPE");
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("broker.leafnodes.remotes[0].account: no local account \"NOPE\""),
        "{err}"
    );
    // An account that exists, the system account and the global one pass.
    for account in ["APP", "SYS", "$G"] {
        let main = config(account);
        let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{account}: {}", text(&out.stderr));
    }

    // The rule is the broker's: the file natsmeshd renders for APP starts;
    // the same file bound to NOPE passes `nats-server -t` (so natsmeshd's
    // usual check would not see it) and then the broker refuses to start.
    let main = config("APP");
    let out = natsmeshd(&["render", "-c", main.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rendered = text(&out.stdout);
    assert_eq!(
        rendered.matches("account: \"APP\"").count(),
        1,
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!("127.0.0.1:{client}")),
        "{rendered}"
    );
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let good = dir.path().join("good.conf");
    std::fs::write(&good, &rendered).unwrap();
    let (status, log) = broker_start_outcome(CURRENT, &good);
    assert!(status.is_none(), "APP: {status:?} {log}");
    let bad = dir.path().join("bad.conf");
    std::fs::write(
        &bad,
        rendered.replace("account: \"APP\"", "account: \"NOPE\""),
    )
    .unwrap();
    let t = Command::new(broker_binary(CURRENT))
        .args(["-t", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(t.status.success(), "-t refused it: {t:?}");
    let (status, log) = broker_start_outcome(CURRENT, &bad);
    assert!(
        status.is_some_and(|s| !s.success()),
        "NOPE: {status:?} {log}"
    );
    assert!(log.contains("cannot find local account \"NOPE\""), "{log}");
}

/// `user add` rewrites a drop-in keeping its mode, owner and group, and a
/// new drop-in takes its directory's group: `sudo natsmeshd user add` in
/// /etc/natsmesh/natsmesh.d must not leave a file natsmeshd (reading as its
/// own user, through the group) cannot read.
#[test]
fn user_add_keeps_the_drop_ins_owner_group_and_mode() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let dir = scratch();
    let d = dir.path().join("natsmesh.d");
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(0), Some(4242)).unwrap();
    let add = |file: &Path, name: &str| {
        let out = natsmeshd_in(
            dir.path(),
            &[
                "user",
                "add",
                "--account",
                "APP",
                "--name",
                name,
                "--file",
                file.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    let fresh = d.join("users.toml");
    add(&fresh, "a");
    let m = std::fs::metadata(&fresh).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o777), (4242, 0o640));
    let kept = d.join("kept.toml");
    std::fs::write(&kept, "").unwrap();
    std::os::unix::fs::chown(&kept, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o644)).unwrap();
    add(&kept, "b");
    let m = std::fs::metadata(&kept).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1234, 5678, 0o644));
    assert!(
        std::fs::read_to_string(&kept)
            .unwrap()
            .contains("[[accounts.APP.users]]")
    );
}

/// `--broker-user`: an unknown user fails `check` and `run`; natsmeshd's
/// own user (root here, or any uid 0) is refused by `run` before anything
/// starts, since there would be nothing to separate.
#[test]
fn a_broker_user_that_does_not_exist_or_is_natsmeshds_own_is_refused() {
    let dir = scratch();
    let config = write_config(dir.path(), CURRENT, "");
    let config = config.to_str().unwrap();
    for cmd in ["check", "run"] {
        let out = natsmeshd(
            &[
                "--config",
                config,
                "--broker-user",
                "natsmesh-no-such-user-7f3a",
                cmd,
            ],
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}: {out:?}");
        assert!(
            text(&out.stderr).contains("natsmesh-no-such-user-7f3a: no such user"),
            "{cmd}: {}",
            text(&out.stderr)
        );
    }
    let out = natsmeshd(
        &["--config", config, "--broker-user", "root", "run"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("natsmeshd's own user"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("state/jetstream").exists());
    // `check` only looks the user up.
    let out = natsmeshd(
        &["--config", config, "--broker-user", "root", "check"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `sudo natsmeshd check` outside the unit finds credential names where
/// the unit loads them from (its `LoadCredential=` source directory, here
/// named by `NATSMESH_CREDENTIALS_SOURCE` because the test cannot write
/// /etc/natsmesh/credentials), not next to the drop-in; the secret-mode
/// check there stays strict; inside the unit `$CREDENTIALS_DIRECTORY` wins.
#[test]
fn check_outside_the_unit_reads_the_units_credentials_source() {
    let dir = scratch();
    let d = dir.path();
    let pki = d.join("pki");
    let ok = |o: Output| assert!(o.status.success(), "{}", text(&o.stderr));
    ok(natsmeshd_in(
        d,
        &["ca", "init", "--out", pki.to_str().unwrap()],
    ));
    ok(natsmeshd_in(
        d,
        &[
            "ca",
            "intermediate",
            "--root",
            pki.to_str().unwrap(),
            "--region",
            "fra1",
            "--domain",
            "nats.test",
            "--out",
            pki.to_str().unwrap(),
        ],
    ));
    // The unit's source directory holds `<file>`; systemd delivers each
    // as `natsmesh_<file>`.
    let source = d.join("credentials");
    let delivered = d.join("delivered");
    for (dir, prefix) in [(&source, ""), (&delivered, "natsmesh_")] {
        std::fs::create_dir(dir).unwrap();
        chmod(dir, 0o700);
        let put = |name: &str, text: &str| private(&dir.join(format!("{prefix}{name}")), text);
        put(
            "intermediate.crt",
            &std::fs::read_to_string(pki.join("fra1.crt")).unwrap(),
        );
        put(
            "intermediate.key",
            &std::fs::read_to_string(pki.join("fra1.key")).unwrap(),
        );
        put(
            "system.password",
            "a-long-enough-system-password-0123456789\n",
        );
    }
    std::fs::create_dir(d.join("natsmesh.d")).unwrap();
    std::fs::write(
        d.join("natsmesh.d/10-domain.toml"),
        "[node]\ndomain = \"nats.test\"\n",
    )
    .unwrap();
    let main = write_config(
        d,
        CURRENT,
        &format!(
            "[tls]\nmode = \"issue\"\nca_file = \"{}\"\nintermediate_cert = \"intermediate.crt\"\nintermediate_key = \"intermediate.key\"\n\n[auth]\nsystem_password_file = \"system.password\"\n",
            pki.join("root.crt").display()
        ),
    );
    let check = |vars: &[(&str, &Path)]| {
        let mut cmd = Command::new(NATSMESHD);
        cmd.args(["check", "--config", main.to_str().unwrap()])
            .env_clear()
            .env("PATH", d)
            .env("HOME", d);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    // Without the unit's source, the names resolve next to the file and
    // are not there.
    let out = check(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&d.join("intermediate.key").display().to_string()),
        "{err}"
    );
    let out = check(&[("NATSMESH_CREDENTIALS_SOURCE", &source)]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "credentials: relative names were read from {}",
            source.display()
        )),
        "{err}"
    );
    // The source is not systemd's copy: group read is refused there.
    chmod(&source.join("intermediate.key"), 0o640);
    let out = check(&[("NATSMESH_CREDENTIALS_SOURCE", &source)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tls.intermediate_key") && err.contains("chmod 600"),
        "{err}"
    );
    // Inside the unit its own credentials directory wins over any source.
    let out = check(&[
        ("CREDENTIALS_DIRECTORY", &delivered),
        ("NATSMESH_CREDENTIALS_SOURCE", &source),
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("credentials: relative names"), "{err}");
}
