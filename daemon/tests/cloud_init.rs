//! cloud-init turns a fresh machine into a serving member from generated
//! user-data alone: Debian 13 with cloud-init and systemd booted in
//! systemd-nspawn with a NoCloud seed holding `natsmeshd user-data`;
//! cloud-init writes the drop-in and the credentials, installs natsmesh
//! from the signed repository, and natsmeshd becomes ready with nothing
//! done by hand. Runs in the nextest `serial` group (root, containers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::NATSMESHD;
use common::pki::Pki;
use natsmesh_harness::container::Root;
use natsmesh_harness::packages::{AptRepo, built};

fn natsmeshd(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(NATSMESHD)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "natsmeshd {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_nocloud_machine_becomes_a_ready_member_from_its_user_data_alone() {
    let repo = AptRepo::new(&[built("natsmesh", "deb"), built("natsmesh-broker", "deb")]);
    let pki = Pki::new();
    pki.root("root").intermediate("root", "fra1", "inter");
    std::fs::write(pki.path("key.asc"), repo.armored_key()).unwrap();
    // A region of one, found through a DNS server that is not there yet:
    // discovery keeps the node's own route and goes on asking.
    let user_data = natsmeshd(
        &pki.path(""),
        &[
            "user-data",
            "--provider",
            "nocloud",
            "--name",
            "node-1",
            "--private-address",
            "127.0.0.1",
            "--region",
            "fra1",
            "--domain",
            "nats.test",
            "--apt-url",
            "file:/srv/natsmesh-apt",
            "--apt-key",
            "key.asc",
            "--roots",
            "root/root.crt",
            "--intermediate-cert",
            "inter/fra1.crt",
            "--intermediate-key",
            "inter/fra1.key",
            "--bootstrap-expect",
            "1",
            "--jetstream-memory",
            "64MiB",
            "--jetstream-store",
            "256MiB",
            "--nameserver",
            "127.0.0.1:53",
        ],
    );

    let root = Root::with_cloud_init("trixie");
    repo.publish_into(&root);
    // The machine: a NoCloud seed and nothing else of natsmesh. (The
    // repository's own source list is the test's offline mirror; the
    // user-data brings its own, keyed, as it would on a cloud.)
    std::fs::remove_file(root.inside("/etc/apt/sources.list.d/natsmesh.sources")).unwrap();
    root.write(
        "/var/lib/cloud/seed/nocloud/meta-data",
        "instance-id: node-1\nlocal-hostname: node-1\n",
        0o600,
    );
    root.write("/var/lib/cloud/seed/nocloud/user-data", &user_data, 0o600);
    root.write(
        "/etc/cloud/cloud.cfg.d/90-natsmesh-test.cfg",
        // The minimal image has no ssh: no host keys to make.
        "datasource_list: [ NoCloud, None ]\napt:\n  preserve_sources_list: true\nssh_genkeytypes: []\n",
        0o644,
    );
    let c = root.boot();

    // cloud-init runs on its own; bounded (the exec helper stops at 120 s).
    let began = Instant::now();
    let waited = c.exec(&["cloud-init", "status", "--wait", "--long"]);
    // 0: done without any error or warning (2 would be "degraded").
    let cloud_log = || {
        c.exec(&["tail", "-n", "60", "/var/log/cloud-init-output.log"])
            .stdout
    };
    assert!(
        waited.status.success(),
        "cloud-init: {}\n{}",
        String::from_utf8_lossy(&waited.stdout),
        String::from_utf8_lossy(&cloud_log())
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active = c.unit_property("natsmeshd", "ActiveState");
        let status = c.unit_property("natsmeshd", "StatusText");
        if active == "active" && status.starts_with("ready") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "natsmeshd not ready ({active}: {status}):\n{}\n{}",
            c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager", "-n", "60"]),
            String::from_utf8_lossy(&cloud_log())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("boot → ready in {:?}", began.elapsed());
    // Installed from the repository the user-data named, keyed by it.
    assert!(
        c.ok(&["dpkg-query", "-W", "-f", "${Status}", "natsmesh"])
            .contains("installed")
    );
    // The credentials root-only; the node certificate issued from them.
    assert_eq!(
        c.ok(&[
            "stat",
            "-c",
            "%a %U",
            "/etc/natsmesh/credentials/intermediate.key"
        ])
        .trim(),
        "600 root"
    );
    let screen = c.ok(&["natsmeshd", "status"]);
    assert!(
        screen.contains("node-1 (region fra1)") && screen.contains("serial "),
        "{screen}"
    );

    // The metadata guard: user-data (secrets included) stays readable by
    // root and natsmesh only. A stand-in metadata service on the
    // container's own 169.254.169.254.
    assert_eq!(
        c.unit_property("natsmesh-metadata-guard", "ActiveState"),
        "active"
    );
    c.ok(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]);
    c.ok(&[
        "systemd-run",
        "--unit=natsmesh-test-metadata",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "169.254.169.254",
        "80",
    ]);
    let reach = |user: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = c.exec(&[
                "runuser",
                "-u",
                user,
                "--",
                "timeout",
                "10",
                "bash",
                "-c",
                "exec 3<>/dev/tcp/169.254.169.254/80 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && head -c 12 <&3",
            ]);
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            // root's answer means the stand-in is up; others wait for it.
            if said.starts_with("HTTP/1.0 200") || Instant::now() > deadline || user != "root" {
                return (
                    out.status.success(),
                    said,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (ok, said, err) = reach("root");
    assert!(ok && said.starts_with("HTTP/1.0 200"), "root: {said} {err}");
    let (ok, said, err) = reach("natsmesh");
    assert!(
        ok && said.starts_with("HTTP/1.0 200"),
        "natsmesh: {said} {err}"
    );
    let (ok, said, err) = reach("nobody");
    let rules = c.ok(&["nft", "list", "ruleset"]);
    assert!(
        !ok && said.is_empty(),
        "nobody reached the metadata service: {said} {err}\n{rules}"
    );
    // Refused at once, not left to time out.
    assert!(err.contains("refused"), "{err}\n{rules}");
}
