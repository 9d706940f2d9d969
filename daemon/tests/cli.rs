//! The natsmeshd command line against real brokers: check, render,
//! --explain, and run with the embedded default.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use natsmesh_harness::{CURRENT, DEBIAN_12, OLDEST_AND_CURRENT, broker_binary, scratch};

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
