//! Regions forming a supercluster from DNS alone: real nats-servers, each
//! on its own loopback address, in a private mount namespace whose
//! `/etc/resolv.conf` names a real DNS server (dnsmasq on port 53) — the
//! daemon's system resolver and nats-server's own gateway lookups both go
//! there. No address appears in any config. A fleet pause reaches every
//! region. Needs root; serialised.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::mesh::{DOMAIN, FRA1, Mesh, NYC3, SGP1, wait_gateways};
use futures_util::StreamExt as _;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Publishes on `from` until a subscriber on `to` receives (bounded).
async fn across(from: &str, to: &str, subject: &str) {
    let a = async_nats::connect(from).await.unwrap();
    let b = async_nats::connect(to).await.unwrap();
    let mut sub = b.subscribe(subject.to_owned()).await.unwrap();
    b.flush().await.unwrap();
    // Interest crosses a gateway asynchronously: retry, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        a.publish(subject.to_owned(), "hello".into()).await.unwrap();
        a.flush().await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(250), sub.next()).await {
            assert_eq!(&m.payload[..], b"hello");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message from {from} to {to} on {subject}"
        );
    }
}

/// A responder on `at`, a request from `from` (bounded retries).
async fn request_reply(at: &str, from: &str) {
    let responder = async_nats::connect(at).await.unwrap();
    let mut svc = responder.subscribe("svc.echo").await.unwrap();
    responder.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
                let _ = responder.flush().await;
            }
        }
    });
    let client = async_nats::connect(from).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(1),
            client.request("svc.echo", "ping".into()),
        )
        .await
        {
            Ok(Ok(m)) => {
                assert_eq!(&m.payload[..], b"ping");
                return;
            }
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "no reply from {at} to {from}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn regions_form_a_supercluster_from_dns_and_a_new_region_joins_without_restarts() {
    let mut mesh = Mesh::new(&[FRA1, NYC3]);
    mesh.start(FRA1);
    mesh.start(NYC3);
    mesh.wait_joined(FRA1, &[NYC3]);
    mesh.wait_joined(NYC3, &[FRA1]);
    for d in mesh.nodes.values_mut() {
        d.wait_ready();
    }
    // No address in any config: routes come from DNS, gateways are names.
    for d in mesh.nodes.values() {
        let conf = std::fs::read_to_string(d.dir.path().join("natsmesh.toml")).unwrap();
        let dropin = std::fs::read_to_string(d.dir.path().join("natsmesh.d/50-test.toml")).unwrap();
        assert!(!conf.contains("routes") && !dropin.contains("routes"));
        let rendered =
            std::fs::read_to_string(d.dir.path().join("state/nats-server.conf")).unwrap();
        assert!(rendered.contains(&format!("fra1.{DOMAIN}")), "{rendered}");
        assert!(rendered.contains(&format!("nyc3.{DOMAIN}")), "{rendered}");
    }

    let url = |mesh: &Mesh, n: &str| mesh.nodes[n].client_addr();
    let rt = runtime();
    rt.block_on(across(
        &url(&mesh, "fra1-n1"),
        &url(&mesh, "nyc3-n2"),
        "east.west",
    ));
    rt.block_on(across(
        &url(&mesh, "nyc3-n1"),
        &url(&mesh, "fra1-n3"),
        "west.east",
    ));
    rt.block_on(request_reply(
        &url(&mesh, "fra1-n2"),
        &url(&mesh, "nyc3-n1"),
    ));

    // A region added later: its servers dial the existing regions, which
    // answer with implicit gateways. Nobody restarts; the existing nodes'
    // explicit gateway lists are out of date, marked for a later restart.
    let before = mesh.pids();
    mesh.publish(&[FRA1, NYC3, SGP1]);
    mesh.start(SGP1);
    mesh.wait_joined(SGP1, &[FRA1, NYC3]);
    for n in ["fra1-n1", "fra1-n2", "fra1-n3", "nyc3-n1", "nyc3-n2"] {
        wait_gateways(mesh.node(n), n, &[SGP1]);
    }
    rt.block_on(across(
        &url(&mesh, "sgp1-n1"),
        &url(&mesh, "fra1-n1"),
        "south.north",
    ));
    rt.block_on(across(
        &url(&mesh, "nyc3-n2"),
        &url(&mesh, "sgp1-n2"),
        "north.south",
    ));
    let after = mesh.pids();
    for (name, pid) in &before {
        assert_eq!(pid, &after[name], "{name} restarted");
    }
    for n in ["fra1-n1", "nyc3-n1"] {
        let d = mesh.node(n);
        let s = d.wait_status(
            "a restart marked pending for the new region",
            |s| !s.restart_pending.is_empty(),
            Duration::from_secs(10),
        );
        assert_eq!(s.restarts, 0, "{n}");
        assert!(
            s.restart_pending.iter().any(|p| p.contains("gateway")),
            "{n}: {:?}",
            s.restart_pending
        );
    }

    // JetStream R3 in fra1, used from another region; it survives one of
    // its servers going away.
    let fra1 = url(&mesh, "fra1-n1");
    let sgp1 = url(&mesh, "sgp1-n1");
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&sgp1).await.unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let stream = loop {
            let config = jetstream::stream::Config {
                name: "ORDERS".into(),
                subjects: vec!["orders.>".into()],
                num_replicas: 3,
                placement: Some(jetstream::stream::Placement {
                    cluster: Some("fra1".into()),
                    tags: vec![],
                }),
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(s) => break s,
                // The meta group may still be settling after sgp1 joined.
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "stream not created: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let mut stream = stream;
        let info = stream.info().await.unwrap().clone();
        let cluster = info.cluster.unwrap();
        assert_eq!(cluster.name.as_deref(), Some("fra1"));
        assert_eq!(cluster.replicas.len(), 2, "R3: a leader and two replicas");
        for i in 0..50u32 {
            js.publish("orders.new", i.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    // One of fra1's servers goes away: the stream keeps its quorum.
    drop(mesh.nodes.remove("fra1-n3"));
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&fra1).await.unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // A message id: a retry after a lost ack is not stored twice.
            let msg = jetstream::message::PublishMessage::build()
                .payload("50".into())
                .message_id("orders-50");
            match tokio::time::timeout(Duration::from_secs(2), js.send_publish("orders.new", msg))
                .await
            {
                Ok(Ok(ack)) => match ack.await {
                    Ok(_) => break,
                    Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
                },
                other => assert!(tokio::time::Instant::now() < deadline, "{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut stream = js.get_stream("ORDERS").await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.state.messages, 51);
        let first = stream.get_raw_message(1).await.unwrap();
        assert_eq!(&first.payload[..], b"0");
    });
}

/// Day one on a cloud: every machine's gateway is on a public address
/// nobody knew when the intermediates were made (`ca init`, then
/// `ca intermediate --region R --domain D` per region, as the README has
/// it: no `--permit-ip`), in ranges those intermediates do not permit.
/// The gateways advertise their region's name, which their certificates
/// carry, so three regions link over mutual TLS, the third joining later
/// through implicit gateways whose gossiped URLs are names too.
#[test]
fn regions_link_by_name_though_their_public_addresses_are_in_no_intermediates_ranges() {
    const USER: &str = "app";
    const PASSWORD: &str = "app-secret";
    let mut mesh = Mesh::in_namespaces(&[FRA1, NYC3, SGP1], 40, &[]);
    mesh.public_gateways();
    mesh.secure(&[FRA1, NYC3, SGP1]);
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    mesh.extra.push_str(&format!(
        "\n[auth]\nmode = \"accounts\"\n\n[accounts.APP]\n\n[[accounts.APP.users]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\n"
    ));
    mesh.publish(&[FRA1, NYC3]);
    mesh.start(FRA1);
    mesh.start(NYC3);
    mesh.wait_joined(FRA1, &[NYC3]);
    mesh.wait_joined(NYC3, &[FRA1]);

    // Each certificate names its region and carries no public address;
    // the node said why.
    for (name, d) in &mesh.nodes {
        let cert = d.dir.path().join("state/tls/node.crt");
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        let sans = String::from_utf8_lossy(&out.stdout).into_owned();
        let region = &name[..4];
        assert!(
            sans.contains(&format!("DNS:{region}.{DOMAIN}")),
            "{name}: {sans}"
        );
        for public in ["198.51.100.", "203.0.113."] {
            assert!(!sans.contains(public), "{name}: {sans}");
        }
        assert!(
            d.log().contains("left out of the node certificate"),
            "{name}"
        );
    }

    let rt = runtime();
    let root = mesh.root_ca().unwrap();
    let connect = |addr: String| {
        let root = root.clone();
        async move {
            async_nats::ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into())
                .add_root_certificates(root)
                .require_tls(true)
                .connect(addr)
                .await
                .unwrap()
        }
    };
    let across = |from: String, to: String, subject: &'static str| async move {
        let a = connect(from.clone()).await;
        let b = connect(to.clone()).await;
        let mut sub = b.subscribe(subject).await.unwrap();
        b.flush().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            a.publish(subject, "hello".into()).await.unwrap();
            a.flush().await.unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(250), sub.next()).await
            {
                assert_eq!(&m.payload[..], b"hello");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message from {from} to {to} on {subject}"
            );
        }
    };
    let addr = |mesh: &Mesh, n: &str| mesh.nodes[n].client_addr();
    rt.block_on(across(
        addr(&mesh, "fra1-n1"),
        addr(&mesh, "nyc3-n2"),
        "east.west",
    ));

    // A third region later: the others learn it from its inbound
    // gateways and dial it back by the name it advertises.
    mesh.publish(&[FRA1, NYC3, SGP1]);
    mesh.start(SGP1);
    mesh.wait_joined(SGP1, &[FRA1, NYC3]);
    for n in ["fra1-n1", "fra1-n2", "fra1-n3", "nyc3-n1", "nyc3-n2"] {
        wait_gateways(mesh.node(n), n, &[SGP1]);
    }
    rt.block_on(across(
        addr(&mesh, "sgp1-n1"),
        addr(&mesh, "fra1-n3"),
        "south.north",
    ));
    rt.block_on(across(
        addr(&mesh, "nyc3-n1"),
        addr(&mesh, "sgp1-n2"),
        "north.south",
    ));
    // fra1 reached sgp1 through an implicit gateway: by the URL sgp1
    // gossiped (its region's name), verified against sgp1's certificate,
    // which carries no public address.
    let gz = mesh.node("fra1-n1").monitor("/gatewayz").unwrap();
    assert_eq!(gz["outbound_gateways"]["sgp1"]["configured"], false, "{gz}");

    // Any node sees the whole supercluster over NATS: every node of every
    // region reports in the system account, which spans the gateways.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = mesh.node("sgp1-n2").cli(&["fleet", "status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let ready: Vec<String> = rows
            .iter()
            .filter(|r| r["state"] == "ready")
            .map(|r| {
                format!(
                    "{}/{}",
                    r["region"].as_str().unwrap(),
                    r["server_name"].as_str().unwrap()
                )
            })
            .collect();
        if ready.len() == 7 {
            for region in ["fra1", "nyc3", "sgp1"] {
                assert!(ready.iter().any(|r| r.starts_with(region)), "{ready:?}");
            }
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A fleet pause written in one region holds in every region (its bucket
/// lives in natsmeshd's own account, which the gateways join), and a
/// region's pause holds that region only: a planned restart goes ahead in
/// fra1 while nyc3's waits.
#[test]
fn a_fleet_pause_reaches_every_region_and_a_regions_pause_only_its_own() {
    let mut mesh = Mesh::new(&[FRA1, NYC3]);
    mesh.extra.push_str(
        "\n[auth]\nmode = \"accounts\"\nanonymous_account = \"APP\"\n\n[accounts.APP]\njetstream = true\n",
    );
    mesh.publish(&[FRA1, NYC3]);
    mesh.start(FRA1);
    mesh.start(NYC3);
    mesh.wait_joined(FRA1, &[NYC3]);
    mesh.wait_joined(NYC3, &[FRA1]);
    let names: Vec<String> = mesh.nodes.keys().cloned().collect();
    for name in &names {
        mesh.node(name).wait_status(
            "serving with JetStream current",
            |s| s.state == "ready" && s.jetstream == "JetStream current",
            Duration::from_secs(60),
        );
    }
    let ok = |mesh: &Mesh, node: &str, args: &[&str]| {
        let out = mesh.nodes[node].cli(args);
        assert!(
            out.status.success(),
            "{node} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    ok(
        &mesh,
        "nyc3-n1",
        &["fleet", "pause", "--why", "supercluster freeze"],
    );
    for name in &names {
        mesh.node(name).wait_status(
            "the supercluster's pause, written in nyc3",
            |s| {
                s.fleet_paused.as_deref().is_some_and(|p| {
                    p.starts_with("fleet pause (all regions) by nyc3-n1")
                        && p.contains("supercluster freeze")
                })
            },
            Duration::from_secs(20),
        );
    }

    // nyc3's own pause, written in fra1; the supercluster's lifted.
    ok(&mesh, "fra1-n1", &["fleet", "pause", "--region", "nyc3"]);
    ok(&mesh, "fra1-n2", &["fleet", "resume"]);
    for name in &names {
        let nyc3 = name.starts_with("nyc3");
        mesh.node(name).wait_status(
            if nyc3 {
                "nyc3 held by its region's pause"
            } else {
                "fra1 free"
            },
            |s| {
                if nyc3 {
                    s.fleet_paused
                        .as_deref()
                        .is_some_and(|p| p.starts_with("fleet pause (region nyc3) by fra1-n1"))
                } else {
                    s.fleet_paused.is_none()
                }
            },
            Duration::from_secs(20),
        );
    }
    mesh.nodes["fra1-n2"].change_needing_restart();
    mesh.nodes["nyc3-n2"].change_needing_restart();
    mesh.node("fra1-n2").wait_status(
        "fra1-n2 restarts: no pause holds fra1",
        |s| s.state == "ready" && s.restarts == 1 && s.restart_pending.is_empty(),
        Duration::from_secs(90),
    );
    let s = mesh.node("nyc3-n2").wait_status(
        "nyc3-n2 holds its restart back",
        |s| !s.restart_pending.is_empty() && s.fleet.starts_with("paused"),
        Duration::from_secs(10),
    );
    assert_eq!(s.restarts, 0, "{s:?}");
}
