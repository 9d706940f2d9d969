//! The supervisor against real nats-servers (2.9.10 and the pinned current
//! release): start, crash, hang, false positives, reload, restart, refusal,
//! lame-duck stop, parent death, and what systemd is told.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::{Daemon, Options, alive, signal};
use natsmesh_harness::{OLDEST_AND_CURRENT, free_port};

fn each_version(test: impl Fn(&str)) {
    for v in OLDEST_AND_CURRENT {
        test(v);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn starts_to_ready_and_tells_systemd() {
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        let s = d.wait_ready();
        assert_eq!(s.broker_version, v);
        assert!(
            d.wait_note(|l| l == "READY=1", Duration::from_secs(5)),
            "{v}: no READY=1: {:?}",
            d.notes()
        );
        // The first ready line may come before /varz was read; the counts
        // follow within a probe interval.
        assert!(
            d.wait_note(
                |l| l == "STATUS=ready: 0 clients, JetStream current — n1",
                Duration::from_secs(5)
            ),
            "{v}: {:?}",
            d.notes()
        );
        let screen = text(&d.cli(&["status"]).stdout);
        assert!(
            screen.contains("n1 (region fra1)") && screen.contains(&format!("nats-server {v}")),
            "{screen}"
        );
    });
}

#[test]
fn kill_9_of_the_broker_is_restarted_at_once() {
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        let first = d.wait_ready().broker_pid.unwrap();
        let killed_at = Instant::now();
        signal(first, "KILL");
        let s = d.wait_status(
            "ready again",
            |s| s.state == "ready" && s.broker_pid != Some(first),
            Duration::from_secs(10),
        );
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "{v}: {:?}",
            killed_at.elapsed()
        );
        assert_eq!((s.crashes, s.restarts, s.hang_kills), (1, 1, 0), "{v}");
    });
}

#[test]
fn a_stopped_broker_is_killed_only_after_the_liveness_budget() {
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        let first = d.wait_ready().broker_pid.unwrap();
        let stopped_at = Instant::now();
        signal(first, "STOP");
        // The fast profile's budget is 3 s of nothing but timeouts.
        std::thread::sleep(Duration::from_millis(2000));
        let s = d.status().unwrap();
        assert_eq!(
            s.broker_pid,
            Some(first),
            "{v}: restarted before the budget"
        );
        assert_eq!(s.hang_kills, 0, "{v}");
        let s = d.wait_status(
            "restarted after a hang",
            |s| s.state == "ready" && s.broker_pid != Some(first),
            Duration::from_secs(15),
        );
        let took = stopped_at.elapsed();
        assert!(took >= Duration::from_secs(3), "{v}: killed after {took:?}");
        assert_eq!((s.hang_kills, s.crashes), (1, 0), "{v}");
        assert!(!alive(first), "{v}: the hung broker is still there");
    });
}

#[test]
fn a_busy_broker_is_not_restarted() {
    // Freezes shorter than the budget, again and again for 12 s: slow
    // answers and timeouts, but never a budget's worth in a row.
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        let pid = d.wait_ready().broker_pid.unwrap();
        let until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < until {
            signal(pid, "STOP");
            std::thread::sleep(Duration::from_millis(1500));
            signal(pid, "CONT");
            std::thread::sleep(Duration::from_millis(400));
        }
        let s = d.wait_ready();
        assert_eq!(s.broker_pid, Some(pid), "{v}: restarted a busy broker");
        assert_eq!((s.hang_kills, s.crashes, s.restarts), (0, 0, 0), "{v}");
    });
}

/// A region whose other two servers are unreachable: JetStream has no meta
/// leader and `/healthz` answers 503 for as long as that lasts.
fn lonely_cluster() -> String {
    let me = free_port();
    format!(
        "[broker.cluster]\nenabled = true\nbind = \"127.0.0.1\"\nport = {me}\nroutes = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n\n[health]\nroute_wait = \"1s\"\n",
        free_port(),
        free_port()
    )
}

#[test]
fn a_jetstream_wide_problem_keeps_core_nats_in_service() {
    each_version(|v| {
        let mut d = Daemon::start(
            v,
            Options {
                extra: lonely_cluster(),
                ..Options::default()
            },
        );
        let s = d.wait_ready();
        assert!(s.jetstream.contains("not current"), "{v}: {}", s.jetstream);
        let pid = s.broker_pid;
        // Core NATS works through it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nc = async_nats::connect(d.client_addr()).await.unwrap();
            let mut sub = nc.subscribe("orders.new").await.unwrap();
            nc.publish("orders.new", "x".into()).await.unwrap();
            nc.flush().await.unwrap();
            use futures_util::StreamExt as _;
            let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&msg.payload[..], b"x");
        });
        // And it is left alone while JetStream stays unavailable (503s).
        std::thread::sleep(Duration::from_secs(8));
        let s = d.status().unwrap();
        assert_eq!(
            (s.state.as_str(), s.broker_pid, s.restarts),
            ("ready", pid, 0),
            "{v}"
        );
        assert!(s.jetstream.contains("not current"), "{v}: {}", s.jetstream);
    });
}

#[test]
fn a_reloadable_change_is_reloaded_and_confirmed() {
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        let pid = d.wait_ready().broker_pid;
        let cfg = std::fs::read_to_string(d.config_path()).unwrap();
        std::fs::write(
            d.config_path(),
            cfg.replace(
                "[broker.client]",
                "debug = true\ntags = [\"az:1\"]\n\n[broker.client]",
            ),
        )
        .unwrap();
        let before = d.note_lines().len();
        let out = d.cli(&["reload", "--wait"]);
        assert!(
            out.status.success(),
            "{v}: {}{}",
            text(&out.stderr),
            d.log()
        );
        assert!(
            text(&out.stdout).contains("reloaded (debug, server_tags)"),
            "{v}: {}",
            text(&out.stdout)
        );
        let s = d.status().unwrap();
        assert_eq!((s.broker_pid, s.reloads_ok, s.restarts), (pid, 1, 0), "{v}");
        let rendered =
            std::fs::read_to_string(d.dir.path().join("state/nats-server.conf")).unwrap();
        assert!(rendered.contains("debug: true"), "{rendered}");
        // RELOADING=1 with MONOTONIC_USEC, then READY=1.
        let lines: Vec<String> = d.note_lines()[before..].to_vec();
        let reloading = lines
            .iter()
            .position(|l| l == "RELOADING=1")
            .unwrap_or_else(|| panic!("{lines:?}"));
        assert!(
            lines[reloading + 1].starts_with("MONOTONIC_USEC="),
            "{lines:?}"
        );
        assert!(
            lines[reloading..].iter().any(|l| l == "READY=1"),
            "{lines:?}"
        );
    });
}

#[test]
fn a_non_reloadable_change_restarts_through_lame_duck() {
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        let pid = d.wait_ready().broker_pid;
        let new_port = free_port();
        let cfg = std::fs::read_to_string(d.config_path()).unwrap();
        std::fs::write(
            d.config_path(),
            cfg.replace(
                &format!("port = {}", d.client_port),
                &format!("port = {new_port}"),
            ),
        )
        .unwrap();
        let out = d.cli(&["reload", "--wait"]);
        assert!(out.status.success(), "{v}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with("restarted"),
            "{v}: {}",
            text(&out.stdout)
        );
        let s = d.status().unwrap();
        assert_ne!(s.broker_pid, pid, "{v}");
        assert_eq!(
            (s.state.as_str(), s.restarts, s.crashes),
            ("ready", 1, 0),
            "{v}"
        );
        assert!(s.restart_pending.is_empty(), "{v}: {:?}", s.restart_pending);
        std::net::TcpStream::connect(("127.0.0.1", new_port)).unwrap();
        let log = d.log();
        assert!(
            log.contains("restart pending")
                && log.contains("listen: the client listener cannot move"),
            "{log}"
        );
    });
}

#[test]
fn an_invalid_change_is_refused_and_the_old_config_keeps_serving() {
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        let pid = d.wait_ready().broker_pid;
        let rendered = d.dir.path().join("state/nats-server.conf");
        let before = std::fs::read_to_string(&rendered).unwrap();
        let cfg = std::fs::read_to_string(d.config_path()).unwrap();
        std::fs::write(
            d.config_path(),
            cfg.replace(
                "lame_duck_duration = \"30s\"",
                "lame_duck_duration = \"5s\"",
            ),
        )
        .unwrap();
        let out = d.cli(&["reload", "--wait"]);
        assert_eq!(out.status.code(), Some(1), "{v}");
        let err = text(&out.stderr);
        assert!(
            err.contains("broker.lame_duck_duration") && err.contains("previous one keeps serving"),
            "{v}: {err}"
        );
        let s = d.status().unwrap();
        assert_eq!(
            (s.state.as_str(), s.broker_pid, s.reloads_failed),
            ("ready", pid, 1),
            "{v}"
        );
        assert_eq!(
            std::fs::read_to_string(&rendered).unwrap(),
            before,
            "{v}: the running file changed"
        );
    });
}

#[test]
fn a_restart_into_a_config_that_cannot_start_rolls_back() {
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        d.wait_ready();
        // The new client port is taken by someone else: the broker will
        // fail to bind after `-t` and validation passed.
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let cfg = std::fs::read_to_string(d.config_path()).unwrap();
        std::fs::write(
            d.config_path(),
            cfg.replace(
                &format!("port = {}", d.client_port),
                &format!("port = {taken}"),
            ),
        )
        .unwrap();
        let out = d.cli(&["reload", "--wait"]);
        assert_eq!(out.status.code(), Some(1), "{v}: {}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("rolled back"),
            "{v}: {}",
            text(&out.stderr)
        );
        let s = d.wait_ready();
        assert_eq!(s.reloads_failed, 1, "{v}");
        std::net::TcpStream::connect(d.client_addr()).unwrap();
        drop(squatter);
    });
}

#[test]
fn sigterm_drains_with_lame_duck_and_exits_zero() {
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        let broker = d.wait_ready().broker_pid.unwrap();
        let mut client = std::net::TcpStream::connect(d.client_addr()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("INFO "), "{line}");
        // protocol 1: the client takes asynchronous INFO updates, as real clients do.
        client
            .write_all(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n")
            .unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "PONG\r\n");

        let term_at = Instant::now();
        d.signal("TERM");
        let mut saw_ldm = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.starts_with("INFO ") && line.contains("\"ldm\":true") => {
                    saw_ldm = true
                }
                Ok(_) if line == "PING\r\n" => client.write_all(b"PONG\r\n").unwrap(),
                Ok(_) => {}
            }
        }
        assert!(saw_ldm, "{v}: the client never saw the lame-duck INFO");
        let status = d.wait_exit(Duration::from_secs(45));
        assert!(status.success(), "{v}: {status}\n{}", d.log());
        // Within the budget: lame duck (30 s) + margin.
        assert!(
            term_at.elapsed() < Duration::from_secs(40),
            "{v}: {:?}",
            term_at.elapsed()
        );
        assert!(!alive(broker), "{v}");
        // The broker's last words reach the log before natsmeshd's own
        // word on its exit (its pipes are read to the end first).
        let log = d.log();
        let last_words = log
            .rfind("Server Exiting")
            .unwrap_or_else(|| panic!("{v}: the broker's shutdown line is missing:\n{log}"));
        let stopped = log.rfind("nats-server stopped").unwrap();
        assert!(last_words < stopped, "{v}:\n{log}");
        let lines = d.note_lines();
        let stopping = lines
            .iter()
            .position(|l| l == "STOPPING=1")
            .unwrap_or_else(|| panic!("{lines:?}"));
        assert!(lines.iter().position(|l| l == "READY=1").unwrap() < stopping);
        assert!(
            lines[stopping..]
                .iter()
                .any(|l| l.starts_with("STATUS=draining")),
            "{lines:?}"
        );
    });
}

#[test]
fn the_broker_dies_with_natsmeshd() {
    each_version(|v| {
        let mut d = Daemon::start(v, Options::default());
        let broker = d.wait_ready().broker_pid.unwrap();
        d.signal("KILL");
        let killed = Instant::now();
        while alive(broker) {
            assert!(
                killed.elapsed() < Duration::from_secs(3),
                "{v}: broker {broker} outlived natsmeshd"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

#[test]
fn a_crash_loop_ends_natsmeshd_with_an_error() {
    let d0 = natsmesh_harness::scratch();
    // Answers --version and -t like the real one, then dies at start.
    let fake = d0.path().join("nats-server");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version|-t) exec {} \"$@\";; esac\necho '[1] [FTL] simulated crash' >&2\nexit 1\n",
            natsmesh_harness::broker_binary(natsmesh_harness::CURRENT).display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x"])
        .arg(&fake)
        .status()
        .unwrap();
    let mut d = Daemon::start(
        natsmesh_harness::CURRENT,
        Options {
            binary: Some(fake),
            extra: "\n[restart]\ncrash_loop_count = 3\n".into(),
            ..Options::default()
        },
    );
    let status = d.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", d.log());
    let log = d.log();
    assert!(log.contains("crashed 3 times within"), "{log}");
    assert!(
        log.contains("simulated crash"),
        "broker output reaches the log: {log}"
    );
}

#[test]
fn watchdog_pings_come_from_the_supervision_loop() {
    let mut d = Daemon::start(
        natsmesh_harness::CURRENT,
        Options {
            env: vec![("WATCHDOG_USEC".into(), "400000".into())],
            ..Options::default()
        },
    );
    d.wait_ready();
    std::thread::sleep(Duration::from_secs(1));
    let n = d.note_lines().iter().filter(|l| *l == "WATCHDOG=1").count();
    assert!(n >= 3, "only {n} WATCHDOG=1 in {:?}", d.notes());
}

#[test]
fn drain_leaves_service_natsmeshd_keeps_running_and_undrain_serves_again() {
    let mut d = Daemon::start(natsmesh_harness::CURRENT, Options::default());
    let broker = d.wait_ready().broker_pid.unwrap();
    let out = d.cli(&["drain"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("draining"));
    let s = d.wait_status(
        "stopped after drain",
        |s| s.state == "stopped",
        Duration::from_secs(10),
    );
    assert!(s.reason.contains("drained"), "{}", s.reason);
    assert!(!alive(broker));
    assert!(alive(d.pid()), "natsmeshd exited after a drain");

    let out = d.cli(&["undrain"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = d.wait_ready();
    assert_ne!(s.broker_pid, Some(broker));
    std::net::TcpStream::connect(d.client_addr()).unwrap();
    // Only a drained node can be undrained.
    let out = d.cli(&["undrain"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not drained"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn only_root_and_the_service_user_may_use_the_control_socket() {
    let mut d = Daemon::start(natsmesh_harness::CURRENT, Options::default());
    d.wait_ready();
    let mode = std::fs::metadata(d.socket()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(mode.permissions().mode() & 0o777, 0o660);
    // Open the file mode so only the peer-credential check stands in the way.
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::NATSMESHD,
            "status",
            "--socket",
        ])
        .arg(d.socket())
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_include_change_the_broker_cannot_reload_becomes_a_restart() {
    each_version(|v| {
        let me = free_port();
        let gw = free_port();
        let extra = format!(
            "[broker.cluster]\nbind = \"127.0.0.1\"\nport = {me}\n\n[broker.gateway]\nenabled = true\nbind = \"127.0.0.1\"\nport = {gw}\n\n[broker.include]\ngateway = \"gateway.conf\"\n"
        );
        let dir = natsmesh_harness::scratch();
        let include = dir.path().join("natsmesh.d/gateway.conf");
        std::fs::create_dir_all(include.parent().unwrap()).unwrap();
        std::fs::write(&include, "connect_retries: 3\n").unwrap();
        let mut d = Daemon::start_in(
            dir,
            v,
            Options {
                extra,
                ..Options::default()
            },
        );
        let pid = d.wait_ready().broker_pid;
        // Same file name, new content: the classifier tries a reload; the
        // broker refuses gateway changes; natsmeshd restarts through lame duck.
        std::fs::write(&include, "connect_retries: 5\n").unwrap();
        let out = d.cli(&["reload", "--wait"]);
        assert!(out.status.success(), "{v}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with("restarted"),
            "{v}: {}",
            text(&out.stdout)
        );
        let s = d.status().unwrap();
        assert_ne!(s.broker_pid, pid, "{v}");
        assert_eq!((s.restarts, s.crashes), (1, 0), "{v}");
        let log = d.log();
        assert!(
            log.contains("config reload not supported for Gateway"),
            "{v}: {log}"
        );
    });
}

/// A file an include includes in turn is part of the configuration: its
/// change is seen at reload (and the broker sees it too: it refuses the
/// gateway change).
#[test]
fn a_change_in_a_nested_include_is_a_config_change() {
    let (me, gw) = (free_port(), free_port());
    let extra = format!(
        "[broker.cluster]\nbind = \"127.0.0.1\"\nport = {me}\n\n[broker.gateway]\nenabled = true\nbind = \"127.0.0.1\"\nport = {gw}\n\n[broker.include]\ngateway = \"gateway.conf\"\n"
    );
    let dir = natsmesh_harness::scratch();
    let include = dir.path().join("natsmesh.d/gateway.conf");
    let nested = dir.path().join("natsmesh.d/gateway/retries.conf");
    std::fs::create_dir_all(nested.parent().unwrap()).unwrap();
    std::fs::write(&include, "include \"gateway/retries.conf\"\n").unwrap();
    std::fs::write(&nested, "connect_retries: 3\n").unwrap();
    let mut d = Daemon::start_in(
        dir,
        natsmesh_harness::CURRENT,
        Options {
            extra,
            ..Options::default()
        },
    );
    let pid = d.wait_ready().broker_pid;
    let out = d.cli(&["reload", "--wait"]);
    assert!(
        text(&out.stdout).starts_with("no change"),
        "unchanged files: {}",
        text(&out.stdout)
    );
    std::fs::write(&nested, "connect_retries: 5\n").unwrap();
    let out = d.cli(&["reload", "--wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("restarted"),
        "{}",
        text(&out.stdout)
    );
    assert_ne!(d.status().unwrap().broker_pid, pid);
    assert!(
        d.log().contains("config reload not supported for Gateway"),
        "{}",
        d.log()
    );
}

#[test]
fn systemd_start_timeout_is_extended_while_the_broker_starts() {
    // A broker that takes 6 s before it opens any port, like one reading a
    // large JetStream store: systemd is asked to keep waiting.
    let d0 = natsmesh_harness::scratch();
    let slow = d0.path().join("nats-server");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version|-t) exec {real} \"$@\";; esac\nsleep 6\nexec {real} \"$@\"\n",
            real = natsmesh_harness::broker_binary(natsmesh_harness::CURRENT).display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&slow)
        .status()
        .unwrap();
    let t = Instant::now();
    let mut d = Daemon::start(
        natsmesh_harness::CURRENT,
        Options {
            binary: Some(slow),
            // Long enough a grace that the slow start is not a hang.
            extra: "[health]\nstartup_grace = \"30s\"\n".into(),
            ..Options::default()
        },
    );
    d.wait_ready();
    let lines = d.note_lines();
    let extend = lines
        .iter()
        .position(|l| l.starts_with("EXTEND_TIMEOUT_USEC="))
        .unwrap_or_else(|| panic!("no EXTEND_TIMEOUT_USEC: {lines:?}"));
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    assert!(extend < ready, "{lines:?}");
    assert!(t.elapsed() >= Duration::from_secs(6));
}

/// `--broker-user` (the packaged unit passes natsmesh-broker; here root
/// runs natsmeshd and the broker runs as `nobody`): the broker has that
/// user, its group and nothing else, reads the files natsmeshd shares
/// through its group, writes its JetStream store, and cannot read what
/// natsmeshd keeps; a restart brings it back the same way with its stream.
#[test]
fn with_a_broker_user_the_broker_runs_as_it_and_reads_only_what_is_shared() {
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::process::CommandExt as _;
    let Some((dir, binary)) = common::broker_user_dir() else {
        return;
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let state = dir.path().join("state");
    let mut d = Daemon::start_in(
        dir,
        natsmesh_harness::CURRENT,
        Options {
            args: vec!["--broker-user".into(), "nobody".into()],
            binary: Some(binary),
            ..Options::default()
        },
    );
    let first = d.wait_ready().broker_pid.unwrap();
    let proc_status = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |status: &str, name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or(String::new(), |v| v.trim().to_owned())
    };
    let check_identity = |pid: u32| {
        let s = proc_status(pid);
        assert_eq!(
            field(&s, "Uid:"),
            format!("{uid}\t{uid}\t{uid}\t{uid}"),
            "{s}"
        );
        assert_eq!(
            field(&s, "Gid:"),
            format!("{gid}\t{gid}\t{gid}\t{gid}"),
            "{s}"
        );
        assert_eq!(field(&s, "Groups:"), "", "{s}");
        assert_eq!(field(&s, "CapEff:"), "0000000000000000", "{s}");
    };
    check_identity(first);
    // Shared through the broker's group: the rendered config (0640), the
    // store it writes (0770), whose contents are its own.
    let conf = std::fs::metadata(state.join("nats-server.conf")).unwrap();
    assert_eq!((conf.mode() & 0o7777, conf.gid()), (0o640, gid));
    let store = std::fs::metadata(state.join("jetstream")).unwrap();
    assert_eq!((store.mode() & 0o7777, store.gid()), (0o770, gid));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = d.client_addr();
    let stream_messages = || {
        rt.block_on(async {
            let nc = async_nats::connect(&client).await.unwrap();
            let js = async_nats::jetstream::new(nc);
            let mut s = js
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: "ORDERS".into(),
                    subjects: vec!["orders.>".into()],
                    ..Default::default()
                })
                .await
                .unwrap();
            js.publish("orders.1", "x".into())
                .await
                .unwrap()
                .await
                .unwrap();
            s.info().await.unwrap().state.messages
        })
    };
    assert_eq!(stream_messages(), 1);
    let mut owners = Vec::new();
    for e in walk(&state.join("jetstream")) {
        owners.push((e.clone(), std::fs::symlink_metadata(&e).unwrap().uid()));
    }
    assert!(owners.len() > 2, "{owners:?}");
    assert!(owners.iter().all(|(_, o)| *o == uid), "{owners:?}");

    // As the broker's user: what is shared opens, nothing else does.
    let open_as_broker = |path: &std::path::Path| {
        std::process::Command::new("cat")
            .arg(path)
            .uid(uid)
            .gid(gid)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(open_as_broker(&state.join("nats-server.conf")));
    let kept: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.ends_with("nats-server.conf"))
        .collect();
    assert!(!kept.is_empty());
    for p in &kept {
        assert!(!open_as_broker(p), "the broker read {}", p.display());
    }

    // A restart: the same user again, and the stream is still there.
    d.change_needing_restart();
    let s = d.wait_status(
        "restarted",
        |s| s.state == "ready" && s.broker_pid.is_some_and(|p| p != first),
        Duration::from_secs(60),
    );
    check_identity(s.broker_pid.unwrap());
    assert_eq!(stream_messages(), 2);
}

/// Every path under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A wrapper around the real nats-server whose `-t` sleeps `secs` once
/// while `flag` exists (it removes the flag first), so only the check the
/// test provokes is slow; everything else runs the real binary.
fn slow_check_broker(
    dir: &std::path::Path,
    flag: &std::path::Path,
    secs: u32,
) -> std::path::PathBuf {
    let path = dir.join("nats-server");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = -t ] && [ -e {flag} ]; then rm -f {flag}; sleep {secs}; fi\ndone\nexec {real} \"$@\"\n",
            flag = flag.display(),
            real = natsmesh_harness::broker_binary(natsmesh_harness::CURRENT).display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .unwrap();
    path
}

/// A `nats-server -t` that takes 25 s (longer than its 20 s timeout) runs
/// off the supervision loop: for those 25 s the control socket answers,
/// WATCHDOG=1 keeps its pace (WatchdogSec 6 s: every 3 s at least) and
/// the probes go on (a broker frozen meanwhile is judged hung and
/// restarted). A second SIGHUP during the check is queued: once the slow
/// check has been refused (timed out), the queued one runs a quick check
/// and the reload applies.
#[test]
fn a_slow_config_check_does_not_stall_the_supervision_loop() {
    let scratch = natsmesh_harness::scratch();
    let flag = scratch.path().join("slow");
    let binary = slow_check_broker(scratch.path(), &flag, 25);
    let mut d = Daemon::start(
        natsmesh_harness::CURRENT,
        Options {
            binary: Some(binary),
            env: vec![("WATCHDOG_USEC".into(), "6000000".into())],
            ..Options::default()
        },
    );
    let first = d.wait_ready().broker_pid.unwrap();
    std::fs::write(
        d.dir.path().join("natsmesh.d/60-debug.toml"),
        "[broker]\ndebug = true\n",
    )
    .unwrap();
    std::fs::write(&flag, "").unwrap();
    let hup_at = Instant::now();
    d.signal("HUP");
    // The slow check has begun once the wrapper took the flag.
    while flag.exists() {
        assert!(hup_at.elapsed() < Duration::from_secs(10), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Coalesced with the one in flight, applied after it.
    d.signal("HUP");
    d.signal("HUP");
    let window_start = Instant::now();
    let mut stopped = false;
    let mut slowest = Duration::ZERO;
    let mut hang_seen = None;
    while window_start.elapsed() < Duration::from_secs(25) {
        if !stopped && window_start.elapsed() >= Duration::from_secs(1) {
            // A frozen broker: only probes that go on can notice it.
            signal(first, "STOP");
            stopped = true;
        }
        let t = Instant::now();
        let s = d.status();
        let took = t.elapsed();
        slowest = slowest.max(took);
        assert!(
            took <= Duration::from_secs(2),
            "status took {took:?} at {:?} into the slow check\n{}",
            window_start.elapsed(),
            d.log()
        );
        let s = s.unwrap_or_else(|| panic!("no status\n{}", d.log()));
        if hang_seen.is_none() && s.hang_kills == 1 && s.broker_pid != Some(first) {
            hang_seen = Some(window_start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let hang_seen = hang_seen.unwrap_or_else(|| {
        panic!(
            "the frozen broker was not judged hung during the slow check\n{}",
            d.log()
        )
    });
    // The fast profile's budget is 3 s of timeouts; allow for a restart.
    assert!(hang_seen < Duration::from_secs(12), "{hang_seen:?}");
    // WATCHDOG=1 every WatchdogSec/2 = 3 s at least, throughout.
    let pings: Vec<Instant> = d
        .notes_timed()
        .into_iter()
        .filter(|(t, n)| *t >= hup_at && n.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| t)
        .collect();
    let mut last = hup_at;
    for t in pings.iter().chain(std::iter::once(&Instant::now())) {
        let gap = t.duration_since(last);
        assert!(
            gap <= Duration::from_millis(3200),
            "no WATCHDOG=1 for {gap:?} ({:?} after SIGHUP); {} pings",
            last.duration_since(hup_at),
            pings.len()
        );
        last = *t;
    }
    // The slow check timed out and was refused; the queued reload applies.
    let s = d.wait_status(
        "reloaded after the slow check",
        |s| s.reloads_ok == 1,
        Duration::from_secs(30),
    );
    assert_eq!(s.reloads_failed, 1, "{s:#?}");
    assert_eq!(s.state, "ready");
    let rendered = std::fs::read_to_string(d.dir.path().join("state/nats-server.conf")).unwrap();
    assert!(rendered.contains("debug: true"), "{rendered}");
    eprintln!("slowest status answer {slowest:?}; hang noticed after {hang_seen:?}");
}

/// SIGTERM while a slow `-t` runs: natsmeshd stops at once (lame duck,
/// exit 0) instead of waiting for the check, and the check's late result
/// changes nothing.
#[test]
fn sigterm_during_a_slow_config_check_stops_at_once() {
    let scratch = natsmesh_harness::scratch();
    let flag = scratch.path().join("slow");
    let binary = slow_check_broker(scratch.path(), &flag, 25);
    let mut d = Daemon::start(
        natsmesh_harness::CURRENT,
        Options {
            binary: Some(binary),
            ..Options::default()
        },
    );
    d.wait_ready();
    std::fs::write(
        d.dir.path().join("natsmesh.d/60-debug.toml"),
        "[broker]\ndebug = true\n",
    )
    .unwrap();
    std::fs::write(&flag, "").unwrap();
    d.signal("HUP");
    let t = Instant::now();
    while flag.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(15));
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "{}", d.log());
    // Never served a client: a clean SIGINT, no lame-duck wait; far less
    // than the 20 s the check would have held the loop.
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    let log = d.log();
    assert!(
        log.contains("configuration change given up: natsmeshd is stopping"),
        "{log}"
    );
    let rendered = std::fs::read_to_string(d.dir.path().join("state/nats-server.conf")).unwrap();
    assert!(!rendered.contains("debug: true"), "{rendered}");
}

/// Polls `f` every 2 ms until it holds; the time it first did.
fn first_true(deadline: Instant, mut f: impl FnMut() -> bool) -> Option<Instant> {
    while Instant::now() < deadline {
        if f() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// After a crash restart natsmeshd's own ready (what `status`, `/ready`
/// and STATUS= show) follows the broker at the start-up probe pace, not at
/// the next 2 s probe of the default profile: over 10 kill -9, ready lags
/// the broker's own `/healthz` by at most 300 ms at p99 (a loaded 2-core
/// machine; typically tens of ms).
#[test]
fn ready_follows_the_broker_at_once_after_a_crash_restart() {
    let mut d = Daemon::start(
        natsmesh_harness::CURRENT,
        Options {
            extra: "[health]\nprofile = \"default\"\n\n[restart]\ncrash_loop_count = 100\n".into(),
            log_level: Some("info".into()),
            ..Options::default()
        },
    );
    let healthz = format!("http://{}:{}/healthz", d.host, d.monitor_port);
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(200)))
            .build(),
    );
    let mut lags = Vec::new();
    for round in 0..10 {
        let pid = d.wait_ready().broker_pid.unwrap();
        // Let a probe round of the default schedule pass, so the kill lands
        // anywhere within an interval.
        std::thread::sleep(Duration::from_millis(300 + 170 * round));
        signal(pid, "KILL");
        let deadline = Instant::now() + Duration::from_secs(15);
        let (served, ready) = std::thread::scope(|s| {
            let broker = s.spawn(|| {
                first_true(deadline, || {
                    !alive(pid) && agent.get(&healthz).call().is_ok_and(|r| r.status() == 200)
                })
            });
            let daemon = s.spawn(|| {
                first_true(deadline, || {
                    d.request(&natsmesh::control::Request::Status)
                        .status
                        .is_some_and(|s| {
                            s.state == "ready" && s.broker_pid.is_some_and(|p| p != pid)
                        })
                })
            });
            (broker.join().unwrap(), daemon.join().unwrap())
        });
        let (served, ready) = (
            served.unwrap_or_else(|| panic!("round {round}: the broker never served\n{}", d.log())),
            ready.unwrap_or_else(|| panic!("round {round}: never ready\n{}", d.log())),
        );
        lags.push(ready.saturating_duration_since(served));
    }
    lags.sort();
    let p99 = lags[lags.len() - 1];
    eprintln!("ready after /healthz: {lags:?}");
    assert!(
        p99 <= Duration::from_millis(300),
        "p99 lag {p99:?}: {lags:?}"
    );
}

/// A broker that answers nothing at all after its spawn (a fake that
/// passes `--version` and `-t` to the real binary, then sleeps without
/// opening any port) is killed after the grace of silence (10 s; the fast
/// profile's start-up grace is 10 s too) plus the liveness budget (3 s),
/// not after the start-up grace extended by answers, and the log says why.
#[test]
fn a_broker_silent_from_its_start_is_killed_after_the_grace_of_silence_and_budget() {
    let scratch = natsmesh_harness::scratch();
    let fake = scratch.path().join("nats-server");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version|-t) exec {real} \"$@\";; esac\nexec sleep 600\n",
            real = natsmesh_harness::broker_binary(natsmesh_harness::CURRENT).display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .unwrap();
    let t = Instant::now();
    let mut d = Daemon::start(
        natsmesh_harness::CURRENT,
        Options {
            binary: Some(fake),
            ..Options::default()
        },
    );
    let first = d
        .wait_status(
            "a broker running",
            |s| s.broker_pid.is_some(),
            Duration::from_secs(10),
        )
        .broker_pid
        .unwrap();
    let s = d.wait_status(
        "the silent broker killed",
        |s| s.hang_kills >= 1,
        Duration::from_secs(30),
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(13) && took <= Duration::from_secs(18),
        "killed after {took:?}"
    );
    assert_eq!(s.crashes, 0, "{s:#?}");
    assert!(!alive(first), "the silent broker is still there");
    let log = d.log();
    assert!(
        log.contains("has not answered on its monitoring port at all")
            && log.contains("since its start"),
        "{log}"
    );
}

/// Lame duck is as long as its clients make it: nats-server closes its
/// clients over `lame_duck_duration` (after the grace period) at most a
/// second apart and shuts down once the last is gone, or at once when
/// there is none (server.go, `lameDuckMode`). The 30 s minimum it enforces
/// bounds the duration, not the stop: with none of the 30 s spent, a
/// stop without clients takes well under a second of lame duck, and one
/// with five clients about the grace period and four intervals.
#[test]
fn lame_duck_ends_when_its_clients_are_gone() {
    for v in OLDEST_AND_CURRENT {
        for clients in [0usize, 5] {
            let mut d = Daemon::start(v, Options::default());
            d.wait_ready();
            let addr = d.client_addr();
            let mut held = Vec::new();
            for _ in 0..clients {
                let mut c = std::net::TcpStream::connect(&addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut line = String::new();
                BufReader::new(c.try_clone().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                assert!(line.starts_with("INFO "), "{line}");
                c.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
                    .unwrap();
                held.push(c);
            }
            let varz = d.monitor("/varz").unwrap();
            assert_eq!(varz["connections"], clients, "{v}: {varz}");
            let t = Instant::now();
            d.signal("TERM");
            let lame = loop {
                if d.log().contains("Entering lame duck mode") {
                    break Instant::now();
                }
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "{v}: no lame duck\n{}",
                    d.log()
                );
                std::thread::sleep(Duration::from_millis(5));
            };
            let status = d.wait_exit(Duration::from_secs(45));
            let took = t.elapsed();
            assert!(status.success(), "{v}: {status}\n{}", d.log());
            let log = d.log();
            assert!(!log.contains("sending SIGINT"), "{v}: {log}");
            println!(
                "nats-server {v}, {clients} clients: SIGTERM → lame duck {:?}, → natsmeshd exit {took:?} (lame_duck_duration 30 s, grace 1 s)",
                lame - t
            );
            if clients == 0 {
                assert!(took < Duration::from_secs(3), "{v}: {took:?}");
            } else {
                // The grace period, then one client at most every second.
                assert!(took >= Duration::from_secs(1), "{v}: {took:?}");
                assert!(took < Duration::from_secs(10), "{v}: {took:?}");
            }
        }
    }
}
