//! TLS and trust against real nats-servers (2.9.10 and the pinned current
//! release): mutual TLS routes (also by gossip), refusal of another
//! region's or another CA's node, client TLS, renewal under a connected
//! client, CA rotation, bad material, file modes, and probes that leave
//! the broker's log quiet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{Daemon, NATSMESHD, Options};
use natsmesh_harness::{CURRENT, OLDEST_AND_CURRENT, scratch};

fn each_version(test: impl Fn(&str)) {
    for v in OLDEST_AND_CURRENT {
        test(v);
    }
}

/// The `[node]` and `[tls]` drop-in for issuing from an intermediate.
fn tls_issue(ca_file: &Path, cert: &Path, key: &Path, validity: &str) -> String {
    format!(
        "[node]\ndomain = \"nats.test\"\n\n{}client = \"required\"\n",
        common::pki::issue_config(ca_file, cert, key, validity)
    )
}

/// `tls` (from [`tls_issue`]) for a cluster member on its own loopback
/// address, named after it.
fn cluster(tls: &str, ip: &str, port: u16, routes: &[&str]) -> String {
    let routes: Vec<String> = routes.iter().map(|r| format!("\"{r}:{port}\"")).collect();
    let name = format!("n{}", ip.rsplit('.').next().unwrap_or("0"));
    // The node table comes first in `tls`: add the name there.
    let tls = tls.replacen("[node]\n", &format!("[node]\nname = \"{name}\"\n"), 1);
    format!(
        "{tls}\n[broker.cluster]\nenabled = true\nbind = \"{ip}\"\nport = {port}\nroutes = [{}]\n\n[health]\nroute_wait = \"30s\"\n",
        routes.join(", ")
    )
}

fn routes(d: &mut Daemon) -> u64 {
    d.status().and_then(|s| s.routes).unwrap_or(0)
}

fn wait_routes(d: &mut Daemon, n: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while routes(d) != n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} routes, wanted {n}\n{}",
            routes(d),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_nodes_form_a_cluster_over_mutual_tls_one_of_them_by_gossip() {
    each_version(|v| {
        let pki = Pki::new();
        pki.root("r1").intermediate("r1", "fra1", "i1");
        let tls = tls_issue(
            &pki.path("r1/root.crt"),
            &pki.path("i1/fra1.crt"),
            &pki.path("i1/fra1.key"),
            "1h",
        );
        let port = natsmesh_harness::free_port();
        let opts = |ip: &str, routes: &[&str]| Options {
            extra: cluster(&tls, ip, port, routes),
            ..Options::default()
        };
        let mut a = Daemon::start(v, opts("127.0.1.1", &["127.0.1.1", "127.0.1.2"]));
        let mut b = Daemon::start(v, opts("127.0.1.2", &["127.0.1.1", "127.0.1.2"]));
        // c knows only a; it learns b from a's gossip.
        let mut c = Daemon::start(v, opts("127.0.1.3", &["127.0.1.1"]));
        for (d, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
            wait_routes(d, 2, &format!("{v} {name}"));
        }
        let vz = c.monitor("/varz").unwrap();
        assert_eq!(vz["cluster"]["tls_required"], true, "{v}: {vz}");
        assert_eq!(vz["cluster"]["tls_verify"], true, "{v}: {vz}");
    });
}

#[test]
fn a_node_of_another_region_or_another_ca_is_refused() {
    each_version(|v| {
        let pki = Pki::new();
        pki.root("r1")
            .intermediate("r1", "fra1", "fra1")
            .intermediate("r1", "nyc3", "nyc3");
        pki.root("r9").intermediate("r9", "fra1", "other");
        let port = natsmesh_harness::free_port();
        let node = |ip: &str, int: &str, root: &str| Options {
            extra: {
                let file = if int == "nyc3" { "nyc3" } else { "fra1" };
                let tls = tls_issue(
                    &pki.path(&format!("{root}/root.crt")),
                    &pki.path(&format!("{int}/{file}.crt")),
                    &pki.path(&format!("{int}/{file}.key")),
                    "1h",
                );
                cluster(&tls, ip, port, &["127.0.1.1", ip])
            },
            ..Options::default()
        };
        let mut a = Daemon::start(v, node("127.0.1.1", "fra1", "r1"));
        a.wait_ready();
        // Same root, but the nyc3 intermediate: not a member of fra1's routes.
        let mut d = Daemon::start(v, node("127.0.1.4", "nyc3", "r1"));
        // Another CA altogether.
        let mut e = Daemon::start(v, node("127.0.1.5", "other", "r9"));
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(
            routes(&mut a),
            0,
            "{v}: a accepted a foreign route\n{}",
            a.log()
        );
        assert_eq!(routes(&mut d), 0, "{v}");
        assert_eq!(routes(&mut e), 0, "{v}");
        let log = a.log();
        assert!(
            log.contains("TLS route handshake error") || log.contains("TLS handshake error"),
            "{v}: no refusal in the broker log:\n{log}"
        );
        let routez: serde_json::Value = {
            let url = format!("http://127.0.0.1:{}/routez", a.monitor_port);
            serde_json::from_str(
                &ureq::get(&url)
                    .call()
                    .unwrap()
                    .body_mut()
                    .read_to_string()
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(routez["num_routes"], 0, "{v}: {routez}");
    });
}

fn client_tls_node(v: &str, pki: &Pki, validity: &str) -> Daemon {
    let tls = tls_issue(
        &pki.path("r1/root.crt"),
        &pki.path("i1/fra1.crt"),
        &pki.path("i1/fra1.key"),
        validity,
    );
    Daemon::start(
        v,
        Options {
            extra: tls,
            ..Options::default()
        },
    )
}

#[test]
fn clients_need_tls_and_the_root() {
    each_version(|v| {
        let pki = Pki::new();
        pki.root("r1").intermediate("r1", "fra1", "i1");
        pki.root("r9");
        let mut d = client_tls_node(v, &pki, "1h");
        d.wait_ready();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let trusted = async_nats::ConnectOptions::new()
                .add_root_certificates(pki.path("r1/root.crt"))
                .require_tls(true)
                .connect(d.client_addr())
                .await
                .unwrap();
            let mut sub = trusted.subscribe("t").await.unwrap();
            trusted.publish("t", "ok".into()).await.unwrap();
            use futures_util::StreamExt as _;
            let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&m.payload[..], b"ok");
            let untrusted = async_nats::ConnectOptions::new()
                .add_root_certificates(pki.path("r9/root.crt"))
                .require_tls(true)
                .connect(d.client_addr())
                .await;
            assert!(
                untrusted.is_err(),
                "{v}: a client trusting another root connected"
            );
        });
        // A plaintext client is told TLS is required and cannot proceed.
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(d.client_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"tls_required\":true"), "{v}: {line}");
        let _ = s.write_all(b"CONNECT {}\r\nPING\r\n");
        let mut rest = String::new();
        let _ = r.read_line(&mut rest);
        assert!(
            !rest.starts_with("PONG"),
            "{v}: a plaintext client got through: {rest}"
        );
    });
}

#[test]
fn renewal_never_disturbs_a_connected_client() {
    each_version(|v| {
        let pki = Pki::new();
        pki.root("r1").intermediate("r1", "fra1", "i1");
        // 12 s certificates: renewed about every 8 s.
        let mut d = client_tls_node(v, &pki, "12s");
        d.wait_ready();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (sent, got, events) = rt.block_on(async {
            let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let ev = events.clone();
            let nc = async_nats::ConnectOptions::new()
                .add_root_certificates(pki.path("r1/root.crt"))
                .require_tls(true)
                .event_callback(move |e| {
                    let ev = ev.clone();
                    async move {
                        ev.lock().unwrap().push(e.to_string());
                    }
                })
                .connect(d.client_addr())
                .await
                .unwrap();
            let mut sub = nc.subscribe("seq").await.unwrap();
            let mut sent = 0u32;
            let until = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < until {
                nc.publish("seq", sent.to_string().into()).await.unwrap();
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            nc.flush().await.unwrap();
            let mut got = Vec::new();
            use futures_util::StreamExt as _;
            while got.len() < sent as usize {
                match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                    Ok(Some(m)) => {
                        got.push(String::from_utf8_lossy(&m.payload).parse::<u32>().unwrap())
                    }
                    _ => break,
                }
            }
            let events = events.lock().unwrap().clone();
            (sent, got, events)
        });
        assert_eq!(
            got,
            (0..sent).collect::<Vec<_>>(),
            "{v}: messages lost or out of order"
        );
        // The initial "connected" is the only event a quiet client sees.
        let trouble: Vec<&String> = events
            .iter()
            .filter(|e| e.as_str() != "connected")
            .collect();
        assert!(trouble.is_empty(), "{v}: the client saw {events:?}");
        // /metrics shows the certificate in use: 12 s certificates expire
        // within 12 s of now, whichever renewal is current.
        let expiry = d.wait_metric(
            "natsmesh_certificate_expiry_timestamp_seconds",
            Duration::from_secs(5),
            |t| t > 0.0,
        );
        let now = common::unix_now();
        assert!(
            expiry > now - 1.0 && expiry < now + 13.0,
            "{v}: {expiry} vs {now}"
        );
        assert_eq!(
            common::metric(
                &d.metrics().unwrap(),
                "natsmesh_certificate_renewal_failing"
            ),
            Some(0.0)
        );
        let renewals = d.log().matches("certificate renewal: reloaded").count();
        let confirmed = d.log().matches("confirmed=true").count();
        assert!(renewals >= 3, "{v}: only {renewals} renewals\n{}", d.log());
        assert_eq!(
            confirmed, renewals,
            "{v}: a renewal was not confirmed by the served serial"
        );
    });
}

#[test]
fn ca_rotation_keeps_the_cluster_together() {
    each_version(|v| {
        let pki = Pki::new();
        pki.root("r1").intermediate("r1", "fra1", "i1");
        pki.root("r2").intermediate("r2", "fra1", "i2");
        let bundle = pki.bundle("bundle.pem", &["r1/root.crt"]);
        let inter = pki.bundle("inter.pem", &["i1/fra1.crt"]);
        let key = pki.path("inter.key");
        std::fs::copy(pki.path("i1/fra1.key"), &key).unwrap();
        let port = natsmesh_harness::free_port();
        let opts = |ip: &str| Options {
            extra: cluster(
                &tls_issue(&bundle, &inter, &key, "1h"),
                ip,
                port,
                &["127.0.1.1", "127.0.1.2"],
            ),
            ..Options::default()
        };
        let mut a = Daemon::start(v, opts("127.0.1.1"));
        let mut b = Daemon::start(v, opts("127.0.1.2"));
        wait_routes(&mut a, 1, "start");
        let step = |a: &mut Daemon, b: &mut Daemon, what: &str| {
            for d in [&mut *a, &mut *b] {
                let out = d.cli(&["reload", "--wait"]);
                assert!(
                    out.status.success(),
                    "{v} {what}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            wait_routes(a, 1, what);
            // A new connection must work too: restart b's broker.
            let pid = b.status().unwrap().broker_pid.unwrap();
            common::signal(pid, "KILL");
            b.wait_status(
                "restarted",
                |s| s.state == "ready" && s.broker_pid != Some(pid),
                Duration::from_secs(20),
            );
            wait_routes(a, 1, &format!("{what}, after a new connection"));
            wait_routes(b, 1, &format!("{what}, after a new connection (b)"));
        };
        // 1. Trust both roots.
        pki.bundle("bundle.pem", &["r1/root.crt", "r2/root.crt"]);
        step(&mut a, &mut b, "both roots trusted");
        // 2. Announce the new intermediate (still issuing from the old one).
        pki.bundle("inter.pem", &["i1/fra1.crt", "i2/fra1.crt"]);
        step(&mut a, &mut b, "new intermediate announced");
        // 3. Issue from the new intermediate; the old one stays trusted.
        pki.bundle("inter.pem", &["i2/fra1.crt", "i1/fra1.crt"]);
        std::fs::copy(pki.path("i2/fra1.key"), &key).unwrap();
        step(&mut a, &mut b, "issuing from the new intermediate");
        let served = b.status().unwrap().certificate;
        assert!(
            a.log()
                .contains("issued a node certificate for the new configuration"),
            "{v}: {served}"
        );
        // 4. Drop the old root and intermediate.
        pki.bundle("bundle.pem", &["r2/root.crt"]);
        pki.bundle("inter.pem", &["i2/fra1.crt"]);
        step(&mut a, &mut b, "old root removed");
    });
}

#[test]
fn bad_material_is_refused_with_a_clear_message() {
    let pki = Pki::new();
    pki.root("r1").intermediate("r1", "fra1", "i1");
    pki.root("r9").intermediate("r9", "fra1", "i9");
    std::fs::write(
        pki.path("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let check = |extra: String| -> (Option<i32>, String) {
        let d = natsmesh_harness::scratch();
        let main = d.path().join("natsmesh.toml");
        std::fs::write(
            &main,
            format!(
                "[node]\nregion = \"fra1\"\nname = \"n1\"\n\n[broker]\nbinary = \"{}\"\nstate_dir = \"{}\"\n\n[broker.client]\nbind = \"127.0.0.1\"\n\n[broker.jetstream]\nenabled = false\n",
                natsmesh_harness::broker_binary(CURRENT).display(),
                d.path().join("state").display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("natsmesh.d")).unwrap();
        std::fs::write(d.path().join("natsmesh.d/50-tls.toml"), extra).unwrap();
        let out = Command::new(NATSMESHD)
            .args(["check", "-c", main.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let root = pki.path("r1/root.crt");
    let ok = tls_issue(
        &root,
        &pki.path("i1/fra1.crt"),
        &pki.path("i1/fra1.key"),
        "7d",
    );
    assert_eq!(check(ok).0, Some(0));
    let (code, err) = check(tls_issue(
        &root,
        &pki.path("missing.crt"),
        &pki.path("i1/fra1.key"),
        "7d",
    ));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tls.intermediate_cert") && err.contains("missing.crt"),
        "{err}"
    );
    let (code, err) = check(tls_issue(
        &root,
        &pki.path("i1/fra1.crt"),
        &pki.path("i9/fra1.key"),
        "7d",
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("does not belong to the certificate"), "{err}");
    let (code, err) = check(tls_issue(
        &root,
        &pki.path("garbage.pem"),
        &pki.path("i1/fra1.key"),
        "7d",
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("garbage.pem"), "{err}");
    // An intermediate of another root: the chain does not verify.
    let (code, err) = check(tls_issue(
        &root,
        &pki.path("i9/fra1.crt"),
        &pki.path("i9/fra1.key"),
        "7d",
    ));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("does not verify against the trusted roots"),
        "{err}"
    );
    // The root itself as issuer: works, with a loud warning.
    let d = Daemon::start(
        CURRENT,
        Options {
            extra: tls_issue(&root, &root, &pki.path("r1/root.key"), "7d"),
            ..Options::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("is a ROOT CA") {
        assert!(
            Instant::now() < deadline,
            "no warning about the root key:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No key material in the log.
    let key = std::fs::read_to_string(pki.path("r1/root.key")).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!d.log().contains(&body));
}

#[test]
fn an_expired_node_certificate_is_replaced_at_start_and_files_have_safe_modes() {
    let pki = Pki::new();
    pki.root("r1").intermediate("r1", "fra1", "i1");
    let dir = scratch();
    let state = dir.path().join("state/tls");
    std::fs::create_dir_all(&state).unwrap();
    // An expired certificate from the right intermediate.
    let issuer = natsmesh::tls::issue::Issued {
        cert_pem: std::fs::read_to_string(pki.path("i1/fra1.crt")).unwrap(),
        key_pem: std::fs::read_to_string(pki.path("i1/fra1.key")).unwrap(),
    };
    let names = natsmesh::tls::issue::NodeNames {
        common_name: "n1".into(),
        dns: vec!["n1.fra1.nats.test".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        by_name: vec![],
    };
    let old = natsmesh::tls::issue::node(
        &issuer,
        &names,
        std::time::SystemTime::now() - Duration::from_secs(3600),
        Duration::from_secs(60),
    )
    .unwrap();
    std::fs::write(state.join("node.crt"), &old.cert_pem).unwrap();
    std::fs::write(state.join("node.key"), &old.key_pem).unwrap();
    let mut d = Daemon::start_in(
        dir,
        CURRENT,
        Options {
            extra: tls_issue(
                &pki.path("r1/root.crt"),
                &pki.path("i1/fra1.crt"),
                &pki.path("i1/fra1.key"),
                "7d",
            ),
            ..Options::default()
        },
    );
    d.wait_ready();
    let cert = std::fs::read_to_string(state.join("node.crt")).unwrap();
    assert_ne!(
        cert, old.cert_pem,
        "the expired certificate is still in use"
    );
    // The intermediate's and the root's expiry are in the status (and so
    // in /metrics and the fleet reports), to the second.
    let expiry = |file: &str| {
        let pem = std::fs::read(pki.path(file)).unwrap();
        let der = natsmesh::tls::pki::certs_from_pem(file, &pem).unwrap();
        let info = natsmesh::tls::pki::inspect(file, &der[0]).unwrap();
        info.not_after
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let s = d.status().unwrap();
    assert_eq!(s.intermediate_not_after_unix, Some(expiry("i1/fra1.crt")));
    assert_eq!(s.root_not_after_unix, Some(expiry("r1/root.crt")));
    assert!(s.intermediate_not_after_unix < s.root_not_after_unix);
    let me = nix::unistd::geteuid().as_raw();
    for (file, mode) in [
        ("node.key", 0o600),
        ("node.crt", 0o640),
        ("region-ca.pem", 0o640),
    ] {
        let m = std::fs::metadata(state.join(file)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, mode, "{file}");
        assert_eq!(m.uid(), me, "{file}");
    }
    let m = std::fs::metadata(pki.path("r1/root.key")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    let m = std::fs::metadata(pki.path("i1/fra1.key")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
}

#[test]
fn two_regions_link_over_mutual_tls_gateways() {
    each_version(|v| {
        let pki = Pki::new();
        pki.root("r1")
            .intermediate("r1", "fra1", "fra1")
            .intermediate("r1", "nyc3", "nyc3");
        let (ga, gb) = (natsmesh_harness::free_port(), natsmesh_harness::free_port());
        let region = |region: &str,
                      ip: &str,
                      gw: u16,
                      remote: &str,
                      remote_ip: &str,
                      remote_gw: u16| {
            let tls = tls_issue(
                &pki.path("r1/root.crt"),
                &pki.path(&format!("{region}/{region}.crt")),
                &pki.path(&format!("{region}/{region}.key")),
                "12s",
            );
            let base = cluster(&tls, ip, natsmesh_harness::free_port(), &[ip]);
            Options {
                extra: format!(
                    "{base}\n[broker.gateway]\nenabled = true\nbind = \"{ip}\"\nport = {gw}\n[[broker.gateway.remotes]]\nname = \"{remote}\"\nurls = [\"{remote_ip}:{remote_gw}\"]\n"
                )
                .replace("[node]\n", &format!("[node]\nregion = \"{region}\"\n")),
                ..Options::default()
            }
        };
        let mut a = Daemon::start(v, region("fra1", "127.0.1.1", ga, "nyc3", "127.0.1.2", gb));
        let mut b = Daemon::start(v, region("nyc3", "127.0.1.2", gb, "fra1", "127.0.1.1", ga));
        a.wait_ready();
        b.wait_ready();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let opts = || {
                async_nats::ConnectOptions::new()
                    .add_root_certificates(pki.path("r1/root.crt"))
                    .require_tls(true)
            };
            let na = opts().connect(a.client_addr()).await.unwrap();
            let nb = opts().connect(b.client_addr()).await.unwrap();
            let mut sub = nb.subscribe("across").await.unwrap();
            nb.flush().await.unwrap();
            use futures_util::StreamExt as _;
            // Gateways take a moment to learn interest: publish until seen.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                na.publish("across", "hello".into()).await.unwrap();
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(250), sub.next()).await
                {
                    assert_eq!(&m.payload[..], b"hello");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{v}: nothing crossed the gateway\n{}",
                    a.log()
                );
            }
        });
        let vz = a.monitor("/varz").unwrap();
        assert_eq!(vz["gateway"]["tls_required"], true, "{v}: {vz}");
        // The status screen names the region each one reaches (once a
        // probe round has seen the gateway the messages just crossed).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = String::from_utf8_lossy(&a.cli(&["status"]).stdout).into_owned();
            if screen.contains("gateways  1 connected: nyc3") {
                break;
            }
            assert!(Instant::now() < deadline, "{v}: {screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
        // /metrics: each region has the one gateway it should have.
        for d in [&a, &b] {
            d.wait_metric(
                "natsmesh_broker_gateway_regions_connected",
                Duration::from_secs(10),
                |n| n == 1.0,
            );
            let text = d.metrics().unwrap();
            assert_eq!(
                common::metric(&text, "natsmesh_gateway_regions_expected"),
                Some(1.0),
                "{v}: {text}"
            );
        }
        // Renewal with gateways: a reload from 2.11.4 on; before that a
        // restart, because implicit gateways would keep the old certificate.
        let old_gw = natsmesh_harness::semver(v) < natsmesh_harness::semver("2.11.4");
        let want = if old_gw { "restart" } else { "reload" };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = a.status().unwrap();
            let renewed = if old_gw {
                s.restarts >= 1 && s.state == "ready"
            } else {
                a.log().contains("certificate renewal: reloaded")
            };
            if renewed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{v}: no renewal by {want}\n{}",
                a.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        if old_gw {
            assert!(
                a.log()
                    .contains("before 2.11.4 a reload does not reach implicit gateways"),
                "{v}"
            );
        }
    });
}

#[test]
fn every_listener_renders_tls_that_the_broker_accepts() {
    each_version(|v| {
        let pki = Pki::new();
        pki.root("r1");
        // Without the public range, the node's public address is refused.
        pki.intermediate("r1", "fra1", "private-only");
        pki.intermediate_with("r1", "fra1", "i1", &["--permit-ip", "192.0.2.0/24"]);
        let dir = scratch();
        let main = dir.path().join("natsmesh.toml");
        std::fs::write(
            &main,
            format!(
                "[node]\nregion = \"fra1\"\nname = \"n1\"\ndomain = \"nats.test\"\nprivate_address = \"10.0.0.5\"\npublic_address = \"192.0.2.5\"\n\n[broker]\nbinary = \"{}\"\nstate_dir = \"{}\"\n\n[broker.jetstream]\nmax_memory_store = \"64MiB\"\nmax_file_store = \"1GiB\"\ndomain = \"hub\"\n\n[broker.cluster]\nenabled = true\n\n[broker.gateway]\nenabled = true\n\n[broker.leafnodes]\nenabled = true\n\n[[broker.leafnodes.users]]\nname = \"edge\"\npassword_hash = \"$2b$11$abcdefghijklmnopqrstuu5tWpD5xXnQvGq8wN3y8pB2oC6j0mS1e\"\naccount = \"APP\"\n\n[[broker.leafnodes.remotes]]\nurls = [\"hub.nats.test:7422\"]\n\n[accounts.APP]\n\n[broker.mqtt]\nenabled = true\n\n[broker.websocket]\nenabled = true\n\n[tls]\nmode = \"issue\"\nca_file = \"{}\"\nintermediate_cert = \"{}\"\nintermediate_key = \"{}\"\n",
                natsmesh_harness::broker_binary(v).display(),
                dir.path().join("state").display(),
                pki.path("r1/root.crt").display(),
                pki.path("i1/fra1.crt").display(),
                pki.path("i1/fra1.key").display(),
            ),
        )
        .unwrap();
        let out = Command::new(NATSMESHD)
            .args(["check", "-c", main.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let strict = std::fs::read_to_string(&main).unwrap().replace(
            &pki.path("i1/").display().to_string(),
            &pki.path("private-only/").display().to_string(),
        );
        std::fs::write(&main, strict).unwrap();
        let out = Command::new(NATSMESHD)
            .args(["check", "-c", main.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{v}: {err}");
        assert!(
            err.contains("192.0.2.5") && err.contains("--permit-ip"),
            "{v}: {err}"
        );
        let fine = std::fs::read_to_string(&main).unwrap().replace(
            &pki.path("private-only/").display().to_string(),
            &pki.path("i1/").display().to_string(),
        );
        std::fs::write(&main, fine).unwrap();
        let out = Command::new(NATSMESHD)
            .args(["render", "-c", main.to_str().unwrap()])
            .output()
            .unwrap();
        let r = String::from_utf8_lossy(&out.stdout);
        // Client, cluster, gateway, leafnodes (+ remote), MQTT, websocket.
        assert_eq!(r.matches("tls: {").count(), 7, "{v}:\n{r}");
        assert!(!r.contains("no_tls"), "{r}");
    });
}

#[test]
fn files_mode_follows_the_operators_pki() {
    each_version(|v| {
        let pki = Pki::new();
        pki.root("r1").intermediate("r1", "fra1", "i1");
        let issuer = natsmesh::tls::issue::Issued {
            cert_pem: std::fs::read_to_string(pki.path("i1/fra1.crt")).unwrap(),
            key_pem: std::fs::read_to_string(pki.path("i1/fra1.key")).unwrap(),
        };
        let names = natsmesh::tls::issue::NodeNames {
            common_name: "n1".into(),
            dns: vec!["n1.fra1.nats.test".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
            by_name: vec![],
        };
        let issue = || {
            natsmesh::tls::issue::node(
                &issuer,
                &names,
                std::time::SystemTime::now(),
                Duration::from_secs(3600),
            )
            .unwrap()
        };
        let serial_of = |pem: &str| {
            let der = natsmesh::tls::pki::certs_from_pem("t", pem.as_bytes()).unwrap();
            natsmesh::tls::pki::inspect("t", &der[0]).unwrap().serial
        };
        let (cert, key) = (pki.path("node.crt"), pki.path("node.key"));
        // The operator's tooling replaces files by rename.
        let install = |c: &str, k: &str| {
            // 0600: natsmeshd refuses a key others may read.
            natsmesh_harness::bind::write_private(&pki.path("node.key.tmp"), k);
            std::fs::write(pki.path("node.crt.tmp"), c).unwrap();
            std::fs::rename(pki.path("node.key.tmp"), &key).unwrap();
            std::fs::rename(pki.path("node.crt.tmp"), &cert).unwrap();
        };
        let first = issue();
        install(&first.cert_pem, &first.key_pem);
        let extra = format!(
            "[tls]\nmode = \"files\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient = \"required\"\n",
            pki.path("r1/root.crt").display(),
            cert.display(),
            key.display()
        );
        let mut d = Daemon::start(
            v,
            Options {
                extra,
                ..Options::default()
            },
        );
        let s = d.wait_ready();
        assert!(
            s.certificate.contains(&serial_of(&first.cert_pem)),
            "{v}: {}",
            s.certificate
        );
        // A new certificate from the PKI: loaded and confirmed.
        let second = issue();
        install(&second.cert_pem, &second.key_pem);
        let want = serial_of(&second.cert_pem);
        d.wait_status(
            "new certificate",
            |s| s.certificate.contains(&want),
            Duration::from_secs(20),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.log().contains("confirmed=true") {
            assert!(Instant::now() < deadline, "{v}: not confirmed\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        // A broken pair: refused, the good certificate keeps serving.
        let third = issue();
        install(&third.cert_pem, &first.key_pem);
        d.wait_status(
            "refusal",
            |s| s.certificate.starts_with("renewal failing"),
            Duration::from_secs(20),
        );
        assert!(
            d.log().contains("does not belong to the certificate"),
            "{v}"
        );
        let s = d.status().unwrap();
        assert_eq!(s.state, "ready", "{v}");
    });
}

#[test]
fn monitoring_over_https_when_asked() {
    each_version(|v| {
        let pki = Pki::new();
        pki.root("r1").intermediate("r1", "fra1", "i1");
        let tls = tls_issue(
            &pki.path("r1/root.crt"),
            &pki.path("i1/fra1.crt"),
            &pki.path("i1/fra1.key"),
            "1h",
        )
        .replace("client = \"required\"\n", "monitoring = true\n")
            + "\n[metrics]\ntls = true\n";
        let mut d = Daemon::start(
            v,
            Options {
                extra: tls,
                ..Options::default()
            },
        );
        // natsmeshd's own probes go over HTTPS: it becomes ready.
        let s = d.wait_ready();
        assert!(s.alive.starts_with("answered 200"), "{v}: {}", s.alive);
        let rendered =
            std::fs::read_to_string(d.dir.path().join("state/nats-server.conf")).unwrap();
        assert!(
            rendered.contains(&format!("https: \"127.0.0.1:{}\"", d.monitor_port)),
            "{rendered}"
        );
        // Plain HTTP gets no answer a client could use.
        let plain = ureq::get(&format!("http://127.0.0.1:{}/varz", d.monitor_port))
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .call();
        assert!(
            plain.is_err() || plain.is_ok_and(|r| r.status() != 200),
            "{v}: plain HTTP answered"
        );
        // HTTPS trusting the root does.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let roots = pki.path("r1/root.crt");
        let body = rt.block_on(async {
            let mut store = tokio_rustls::rustls::RootCertStore::empty();
            for c in natsmesh::tls::pki::certs_from_pem(
                "root",
                std::fs::read(&roots).unwrap().as_slice(),
            )
            .unwrap()
            {
                store.add(c).unwrap();
            }
            let cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(
                std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()),
            )
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
            let cfg_for_metrics = cfg.clone();
            let m = natsmesh_broker::monitor::Monitor::with_tls(
                format!("127.0.0.1:{}", d.monitor_port).parse().unwrap(),
                Duration::from_secs(2),
                cfg,
            );
            let healthz = m.get("/healthz").await;
            // natsmeshd's /metrics over HTTPS with the node certificate,
            // reading the broker's figures over HTTPS too.
            let metrics = natsmesh_broker::monitor::Monitor::with_tls(
                format!("127.0.0.1:{}", d.metrics_port).parse().unwrap(),
                Duration::from_secs(2),
                cfg_for_metrics,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            let scraped = loop {
                let got = metrics.get("/metrics").await;
                let done = matches!(&got, natsmesh_broker::monitor::Http::Answered { status: 200, body } if body.contains("\nnatsmesh_broker_up 1"));
                if done || Instant::now() > deadline {
                    break got;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            (healthz, scraped)
        });
        let (healthz, scraped) = body;
        assert!(
            matches!(
                healthz,
                natsmesh_broker::monitor::Http::Answered { status: 200, .. }
            ),
            "{v}: {healthz:?}"
        );
        assert!(
            matches!(&scraped, natsmesh_broker::monitor::Http::Answered { status: 200, body } if body.contains("\nnatsmesh_broker_up 1")),
            "{v}: {scraped:?}\n{}",
            d.log()
        );
        // Plain HTTP on the metrics port gets nothing.
        let plain = ureq::get(&format!("http://127.0.0.1:{}/metrics", d.metrics_port))
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .call();
        assert!(plain.is_err(), "{v}: /metrics answered plain HTTP");
    });
}

/// Regional trust: fra1's intermediate permits fra1's names (and the shared
/// client names given to it), so what it signs for `nyc3.<domain>` is
/// refused by both rustls' verifier (webpki) and openssl, a fra1 node asking
/// for another region's name is refused by `check`, and `ca intermediate`
/// refuses an empty or top-level domain.
#[test]
fn a_regions_intermediate_cannot_speak_for_another_region() {
    let pki = Pki::new();
    pki.root("r1")
        .intermediate_with("r1", "fra1", "i1", &["--permit-name", "nats.example.com"]);
    let root = pki.path("r1/root.crt");
    let pem =
        |p: &Path| natsmesh::tls::pki::certs_from_pem("test", &std::fs::read(p).unwrap()).unwrap();
    let inter = pem(&pki.path("i1/fra1.crt"));
    for (name, file, allowed) in [
        ("nyc3.nats.test", "nyc3", false),
        ("n9.nyc3.nats.test", "n9-nyc3", false),
        ("nats.test", "apex", false),
        ("n1.fra1.nats.test", "n1-fra1", true),
        ("nats.example.com", "shared", true),
    ] {
        let leaf = pki.mint_with_openssl("i1/fra1", &format!("DNS:{name}"), file);
        // rustls' verifier.
        let mut chain = pem(&leaf);
        chain.extend(inter.clone());
        let verdict = natsmesh::tls::pki::verify_chain(
            name,
            &chain,
            &pem(&root),
            std::time::SystemTime::now(),
            &[name.to_owned()],
        );
        assert_eq!(verdict.is_ok(), allowed, "webpki on {name}: {verdict:?}");
        if !allowed {
            let why = verdict.unwrap_err().to_string();
            assert!(why.contains("NameConstraint"), "{name}: {why}");
        }
        // openssl's.
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(pki.path("i1/fra1.crt"))
            .arg(&leaf)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), allowed, "openssl on {name}: {text}");
        if !allowed {
            assert!(
                text.contains("permitted subtree violation"),
                "{name}: {text}"
            );
        }
    }

    // A fra1 node: its own names and the shared client name pass `check`;
    // another region's name is refused, naming it and why.
    let check = |extra_names: &str| {
        let d = scratch();
        let main = d.path().join("natsmesh.toml");
        std::fs::write(
            &main,
            format!(
                "[node]\nregion = \"fra1\"\nname = \"n1\"\ndomain = \"nats.test\"\n\n[broker]\nbinary = \"{}\"\nstate_dir = \"{}\"\n\n[broker.jetstream]\nenabled = false\n\n{}extra_names = [{extra_names}]\n",
                natsmesh_harness::broker_binary(CURRENT).display(),
                d.path().join("state").display(),
                common::pki::issue_config(
                    &root,
                    &pki.path("i1/fra1.crt"),
                    &pki.path("i1/fra1.key"),
                    "7d"
                ),
            ),
        )
        .unwrap();
        let out = Command::new(NATSMESHD)
            .args(["check", "-c", main.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check("\"nats.example.com\"");
    assert_eq!(code, Some(0), "{err}");
    for other in ["nyc3.nats.test", "api.nyc3.nats.test", "evil.example.org"] {
        let (code, err) = check(&format!("\"{other}\""));
        assert_eq!(code, Some(2), "{other}: {err}");
        assert!(
            err.contains(other) && err.contains("only its own region's names"),
            "{other}: {err}"
        );
    }

    // A shared client name inside (or above) the supercluster's domain
    // would reach into other regions: refused.
    for name in ["nats.test", "nyc3.nats.test", "api.nyc3.nats.test"] {
        let out = Command::new(NATSMESHD)
            .args(["ca", "intermediate", "--root"])
            .arg(pki.path("r1"))
            .args([
                "--region",
                "fra1",
                "--domain",
                "nats.test",
                "--permit-name",
                name,
                "--out",
            ])
            .arg(pki.path("bad"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--permit-name {name}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("outside the supercluster's domain"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // An intermediate without name constraints (made by hand with openssl)
    // could name anything: a node refuses to issue from it.
    let p = |f: &str| pki.path(f).to_str().unwrap().to_owned();
    std::fs::write(
        pki.path("ca.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n",
    )
    .unwrap();
    for args in [
        vec![
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("open.key"),
            "-subj",
            "/CN=open",
            "-out",
            &p("open.csr"),
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &p("open.csr"),
            "-CA",
            &p("r1/root.crt"),
            "-CAkey",
            &p("r1/root.key"),
            "-set_serial",
            "5",
            "-days",
            "2",
            "-extfile",
            &p("ca.ext"),
            "-out",
            &p("open.crt"),
        ],
    ] {
        common::pki::openssl(&args);
    }
    let mut perms = std::fs::metadata(pki.path("open.key"))
        .unwrap()
        .permissions();
    perms.set_mode(0o600);
    std::fs::set_permissions(pki.path("open.key"), perms).unwrap();
    let d = scratch();
    let main = d.path().join("natsmesh.toml");
    std::fs::write(
        &main,
        format!(
            "[node]\nregion = \"fra1\"\nname = \"n1\"\ndomain = \"nats.test\"\n\n[broker]\nbinary = \"{}\"\nstate_dir = \"{}\"\n\n[broker.jetstream]\nenabled = false\n\n{}",
            natsmesh_harness::broker_binary(CURRENT).display(),
            d.path().join("state").display(),
            common::pki::issue_config(&root, &pki.path("open.crt"), &pki.path("open.key"), "7d"),
        ),
    )
    .unwrap();
    let out = Command::new(NATSMESHD)
        .args(["check", "-c", main.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no DNS name constraints"), "{err}");

    // No intermediate for an empty or top-level domain.
    for domain in ["", ".", "test"] {
        let out = Command::new(NATSMESHD)
            .args(["ca", "intermediate", "--root"])
            .arg(pki.path("r1"))
            .args(["--region", "fra1", "--domain", domain, "--out"])
            .arg(pki.path("bad"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--domain {domain:?}");
        assert!(!pki.path("bad/fra1.key").exists());
    }
}

/// How long the quiet-log tests watch the brokers: 60 s (CI), or
/// `NATSMESH_QUIET_SECS` for a quicker local run.
fn quiet_window() -> Duration {
    let secs = std::env::var("NATSMESH_QUIET_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(60);
    Duration::from_secs(secs.max(1))
}

/// The broker's lines (natsmeshd logs them with `broker_pid`) at WARN or
/// ERROR among `lines`.
fn broker_complaints(lines: &str) -> Vec<&str> {
    lines
        .lines()
        .filter(|l| l.contains("broker_pid="))
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect()
}

fn total_connections(d: &Daemon) -> u64 {
    d.monitor("/varz")
        .and_then(|v| v["total_connections"].as_u64())
        .expect("/varz answers with total_connections")
}

/// natsmeshd with client TLS required and one without it run a window
/// with no client at all: their serving probes (every 250 ms here) leave
/// no `TLS handshake error` and no WARN or ERROR line of the broker, and
/// they did probe: each stayed ready and serving, natsmeshd logged probe
/// rounds, and the broker counted the probes' connections.
fn probes_leave_the_brokers_log_quiet(v: &str) {
    // The filter sees a broker error as natsmeshd logs it.
    let seen = "2026-12-06T21:34:20.5Z ERROR 127.0.0.1:57410 - cid:7 - TLS handshake error: EOF broker_pid=19748";
    assert_eq!(broker_complaints(seen), [seen]);
    let pki = Pki::new();
    pki.root("r1").intermediate("r1", "fra1", "i1");
    let tls = client_tls_node(v, &pki, "1h");
    let plain = Daemon::start(v, Options::default());
    let mut nodes = [("tls", tls), ("plain", plain)];
    for (_, d) in &mut nodes {
        d.wait_ready();
    }
    let rendered =
        std::fs::read_to_string(nodes[0].1.dir.path().join("state/nats-server.conf")).unwrap();
    assert!(rendered.contains("tls"), "{v}: no client TLS: {rendered}");
    // The broker logs at its default level (debug and trace off), as
    // natsmesh renders it.
    assert!(rendered.contains("debug: false"), "{rendered}");
    assert!(rendered.contains("trace: false"), "{rendered}");
    let marks: Vec<(usize, u64)> = nodes
        .iter()
        .map(|(_, d)| (d.log().len(), total_connections(d)))
        .collect();
    let window = quiet_window();
    let started = Instant::now();
    while started.elapsed() < window {
        std::thread::sleep(Duration::from_millis(500));
        for (what, d) in &mut nodes {
            let s = d.status().expect("status answers");
            assert_eq!(s.state, "ready", "{v} {what}: {s:?}\n{}", d.log());
            assert_eq!(s.serving, "accepting clients", "{v} {what}: {s:?}");
        }
    }
    let secs = window.as_secs();
    for ((what, d), (from, conns_before)) in nodes.iter().zip(marks) {
        let log = d.log();
        let during = &log[from..];
        assert_eq!(
            during.matches("TLS handshake error").count(),
            0,
            "{v} {what}: the broker logged TLS handshake errors:\n{during}"
        );
        let complaints = broker_complaints(during);
        assert!(
            complaints.is_empty(),
            "{v} {what}: the broker complained during {window:?}:\n{}",
            complaints.join("\n")
        );
        // Four rounds a second; at least one a second even on a loaded
        // machine.
        let rounds = during.matches("probe round").count() as u64;
        assert!(
            rounds >= secs,
            "{v} {what}: only {rounds} probe rounds in {window:?}"
        );
        let conns = total_connections(d) - conns_before;
        assert!(
            conns >= secs,
            "{v} {what}: the broker saw only {conns} probe connections in {window:?}"
        );
    }
}

#[test]
fn probes_leave_the_brokers_log_quiet_oldest() {
    probes_leave_the_brokers_log_quiet(natsmesh_harness::DEBIAN_12);
}

#[test]
fn probes_leave_the_brokers_log_quiet_current() {
    probes_leave_the_brokers_log_quiet(CURRENT);
}

/// `tls.mode = "files"` with the broker as its own user (`--broker-user`;
/// root runs natsmeshd, the broker runs as `nobody`): the operator's
/// files stay natsmeshd's to read (here in a root-only directory), the
/// broker serves natsmeshd's copies (0640, its group) and a new pair from
/// the PKI reaches the copies.
#[test]
fn files_mode_with_a_broker_user_serves_natsmeshds_copies() {
    let Some((dir, binary)) = common::broker_user_dir() else {
        return;
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let pki = Pki::new();
    pki.root("r1").intermediate("r1", "fra1", "i1");
    // The roots are public (the packages put them in /etc, 0644).
    let roots = dir.path().join("roots.pem");
    std::fs::copy(pki.path("r1/root.crt"), &roots).unwrap();
    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o644)).unwrap();
    let issuer = natsmesh::tls::issue::Issued {
        cert_pem: std::fs::read_to_string(pki.path("i1/fra1.crt")).unwrap(),
        key_pem: std::fs::read_to_string(pki.path("i1/fra1.key")).unwrap(),
    };
    let names = natsmesh::tls::issue::NodeNames {
        common_name: "n1".into(),
        dns: vec!["n1.fra1.nats.test".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        by_name: vec![],
    };
    let issue = || {
        natsmesh::tls::issue::node(
            &issuer,
            &names,
            std::time::SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap()
    };
    let (cert, key) = (pki.path("node.crt"), pki.path("node.key"));
    let install = |c: &str, k: &str| {
        natsmesh_harness::bind::write_private(&pki.path("node.key.tmp"), k);
        std::fs::write(pki.path("node.crt.tmp"), c).unwrap();
        std::fs::rename(pki.path("node.key.tmp"), &key).unwrap();
        std::fs::rename(pki.path("node.crt.tmp"), &cert).unwrap();
    };
    let first = issue();
    install(&first.cert_pem, &first.key_pem);
    let extra = format!(
        "[tls]\nmode = \"files\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient = \"required\"\n",
        roots.display(),
        cert.display(),
        key.display()
    );
    let mut d = Daemon::start_in(
        dir,
        CURRENT,
        Options {
            extra,
            binary: Some(binary),
            args: vec!["--broker-user".into(), "nobody".into()],
            ..Options::default()
        },
    );
    d.wait_ready();
    let state = d.dir.path().join("state");
    let rendered = std::fs::read_to_string(state.join("nats-server.conf")).unwrap();
    let copy_crt = state.join("tls/node.crt");
    let copy_key = state.join("tls/node.key");
    assert!(
        rendered.contains(&copy_key.display().to_string())
            && !rendered.contains(&key.display().to_string()),
        "{rendered}"
    );
    for (copy, want) in [(&copy_crt, &first.cert_pem), (&copy_key, &first.key_pem)] {
        assert_eq!(&std::fs::read_to_string(copy).unwrap(), want);
        let m = std::fs::metadata(copy).unwrap();
        assert_eq!((m.mode() & 0o7777, m.gid()), (0o640, nobody.gid.as_raw()));
    }
    // A new pair from the PKI reaches the copies the broker reads.
    let second = issue();
    install(&second.cert_pem, &second.key_pem);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&copy_key).unwrap() != second.key_pem
        || std::fs::read_to_string(&copy_crt).unwrap() != second.cert_pem
    {
        assert!(Instant::now() < deadline, "the copies stayed old");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.status().unwrap().state, "ready");
}

/// `tls.mode = "issue"` with the broker as its own user (`--broker-user`;
/// root runs natsmeshd, the broker runs as `nobody`), as the packaged unit
/// does on a cloud node: the intermediate stays natsmeshd's (here in a
/// root-only directory), the issued pair and the region's intermediates
/// are shared with the broker's group, and two such nodes route to each
/// other over mutual TLS.
#[test]
fn issue_mode_with_a_broker_user_shares_the_issued_pair_and_routes() {
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let pki = Pki::new();
    pki.root("r1").intermediate("r1", "fra1", "i1");
    let start = |ip: &str, peer: &str| {
        let (dir, binary) = common::broker_user_dir()?;
        let roots = dir.path().join("roots.pem");
        std::fs::copy(pki.path("r1/root.crt"), &roots).unwrap();
        std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o644)).unwrap();
        let tls = tls_issue(
            &roots,
            &pki.path("i1/fra1.crt"),
            &pki.path("i1/fra1.key"),
            "1h",
        );
        let d = Daemon::start_in(
            dir,
            CURRENT,
            Options {
                extra: cluster(&tls, ip, 26222, &[ip, peer]),
                binary: Some(binary),
                args: vec!["--broker-user".into(), "nobody".into()],
                host: Some(ip.parse().unwrap()),
                ..Options::default()
            },
        );
        Some(d)
    };
    let Some(mut a) = start("127.0.0.61", "127.0.0.62") else {
        return;
    };
    let Some(mut b) = start("127.0.0.62", "127.0.0.61") else {
        return;
    };
    a.wait_ready();
    b.wait_ready();
    wait_routes(&mut a, 1, "a routes to b");
    wait_routes(&mut b, 1, "b routes to a");
    let tls = a.dir.path().join("state/tls");
    let m = std::fs::metadata(&tls).unwrap();
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o710, nobody.gid.as_raw()));
    for f in ["node.crt", "node.key", "region-ca.pem"] {
        let m = std::fs::metadata(tls.join(f)).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.gid()),
            (0o640, nobody.gid.as_raw()),
            "{f}"
        );
    }
    let s = a.status().unwrap();
    let pid = s.broker_pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains(&format!("\nUid:\t{}\t", nobody.uid.as_raw())),
        "{status}"
    );
}

/// A droplet's public address is not known before it exists, and lies in
/// no range the operator could give `ca intermediate`: a listener reached
/// by name (the gateway advertised as `<region>.<domain>`, clients by their
/// names) keeps such an address out of the certificate instead of failing
/// issuance; an intermediate that permits it still gets it in.
#[test]
fn an_address_reached_by_name_is_in_the_certificate_only_where_the_intermediate_permits_it() {
    use natsmesh::tls::issue::NodeNames;
    use natsmesh::tls::{Source, TlsSettings};
    let pki = Pki::new();
    pki.root("r1")
        .intermediate("r1", "fra1", "ranges")
        .intermediate_with("r1", "fra1", "public", &["--permit-ip", "203.0.113.0/24"]);
    let private: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    let public: std::net::IpAddr = "203.0.113.10".parse().unwrap();
    for (inter, public_in_cert) in [("ranges", false), ("public", true)] {
        let dir = scratch();
        let settings = TlsSettings {
            source: Source::Issue {
                intermediate_cert: pki.path(&format!("{inter}/fra1.crt")),
                intermediate_key: pki.path(&format!("{inter}/fra1.key")),
                validity: Duration::from_secs(3600),
            },
            ca_file: pki.path("r1/root.crt"),
            cert_file: dir.path().join("node.crt"),
            key_file: dir.path().join("node.key"),
            client_cert_file: None,
            monitoring: false,
            files_check_every: Duration::from_secs(60),
            region_ca_file: Some(dir.path().join("region-ca.pem")),
            names: NodeNames {
                common_name: "n1".into(),
                dns: vec!["n1.fra1.nats.test".into(), "fra1.nats.test".into()],
                ips: vec![private],
                by_name: vec![public],
            },
            broker_copies: Vec::new(),
        };
        let (current, issued) =
            natsmesh::tls::ensure(&settings, std::time::SystemTime::now(), false)
                .unwrap_or_else(|e| panic!("{inter}: {e}"));
        assert!(issued, "{inter}");
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(dir.path().join("node.crt"))
            .output()
            .unwrap();
        let sans = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(sans.contains("DNS:fra1.nats.test"), "{inter}: {sans}");
        assert!(sans.contains("IP Address:10.0.0.1"), "{inter}: {sans}");
        assert_eq!(
            sans.contains("IP Address:203.0.113.10"),
            public_in_cert,
            "{inter}: {sans}"
        );
        // Left out, and said so, naming the address and the names to use.
        let said = current.warnings.iter().any(|w| {
            w.contains("203.0.113.10") && w.contains("fra1.nats.test") && w.contains("left out")
        });
        assert_eq!(said, !public_in_cert, "{inter}: {:?}", current.warnings);
        // Asked again, the certificate is kept: it covers what it must.
        let (_, again) =
            natsmesh::tls::ensure(&settings, std::time::SystemTime::now(), false).unwrap();
        assert!(!again, "{inter}: issued again");
    }
}
