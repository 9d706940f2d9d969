//! Regions forming a supercluster from DNS alone: real nats-servers, each
//! on its own loopback address, in a private mount namespace whose
//! `/etc/resolv.conf` names a real DNS server (dnsmasq on port 53) — the
//! daemon's system resolver and nats-server's own gateway lookups both go
//! there. No address appears in any config. A fleet pause reaches every
//! region. In a 3×3 supercluster, a region that lost two servers for good
//! is rebuilt by the quorum-loss runbook. Needs root; serialised.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::mesh::{DOMAIN, FRA1, Mesh, NYC3, Region, SGP1, wait_gateways};
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

/// nyc3 and sgp1 with three servers each: a 3×3 supercluster.
const NYC3_3: Region = Region { nodes: 3, ..NYC3 };
const SGP1_3: Region = Region { nodes: 3, ..SGP1 };
/// fra1 as rebuilt: its survivor, the two destroyed (retired, out of
/// DNS) and two new machines under new names, `fra1-n4` and `fra1-n5`.
const FRA1_REBUILT: Region = Region { nodes: 5, ..FRA1 };

/// `natsmeshd <args>` on `node`, which must succeed; its output.
fn ok_cli(mesh: &Mesh, node: &str, args: &[&str]) -> String {
    let out = mesh.nodes[node].cli(args);
    assert!(
        out.status.success(),
        "{node} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `natsmeshd fleet peers --json` on `node`.
fn meta_peers(mesh: &Mesh, node: &str) -> serde_json::Value {
    // On this shared machine the system connection it opens can time out
    // now and then: a few attempts, then the failure.
    for attempt in 1..=5 {
        let out = mesh.nodes[node].cli(&["fleet", "peers", "--json"]);
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        assert!(
            attempt < 5,
            "{node} fleet peers: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    unreachable!()
}

fn peer<'a>(group: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    group["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name))
}

/// Creates stream `name` (R3, subjects `<name>.>`) placed in `region`
/// and publishes `count` acknowledged messages to it.
async fn placed_stream(js: &jetstream::Context, name: &str, region: &str, count: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let config = jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.>")],
            num_replicas: 3,
            placement: Some(jetstream::stream::Placement {
                cluster: Some(region.into()),
                tags: vec![],
            }),
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(_) => break,
            // A young meta group may still be settling.
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "stream {name}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The new stream's leader may still be being elected: each message
    // retried (bounded) under its own id, so none is stored twice.
    for i in 0..count {
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{name}-{i}").as_str());
            let sent = async {
                js.publish_with_headers(format!("{name}.m"), headers, format!("{i}").into())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            }
            .await;
            match sent {
                Ok(_) => break,
                Err(e) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name}: message {i}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A stream's state, leader and replicas (`None`: no leader answers).
async fn stream_info(js: &jetstream::Context, name: &str) -> Option<jetstream::stream::Info> {
    let info = tokio::time::timeout(Duration::from_secs(3), async {
        js.get_stream(name).await.ok()?.info().await.ok().cloned()
    })
    .await
    .ok()??;
    // Without a leader the meta leader may still answer, naming none.
    info.cluster
        .as_ref()?
        .leader
        .as_ref()
        .filter(|l| !l.is_empty())?;
    Some(info)
}

/// What server `d` itself holds of stream `name` in account APP (its
/// `/jsz`, which answers without a stream leader): messages, first and
/// last sequence.
fn held_here(d: &common::Daemon, name: &str) -> Option<(u64, u64, u64)> {
    let jsz = d.monitor("/jsz?accounts=true&streams=true")?;
    let stream = jsz["account_details"]
        .as_array()?
        .iter()
        .filter(|a| a["name"] == "APP")
        .filter_map(|a| a["stream_detail"].as_array())
        .flatten()
        .find(|s| s["name"] == name)?
        .clone();
    let state = &stream["state"];
    Some((
        state["messages"].as_u64()?,
        state["first_seq"].as_u64()?,
        state["last_seq"].as_u64()?,
    ))
}

/// The runbook "a region lost its JetStream quorum", step 4, in a 3×3
/// supercluster whose JetStream meta group spans the regions: two servers
/// of fra1 are destroyed (natsmeshd and nats-server killed, state deleted)
/// under acknowledged publishes to an R3 stream placed in fra1. Then, with
/// the real commands: `fleet pause` (from nyc3), `fleet peers` shows the
/// two offline, `fleet remove-peer` refuses the live survivor and removes
/// each lost one, two new machines under new names join through DNS, the
/// stream is back on three current replicas, `fleet resume`. Measured and
/// printed: what the fra1 stream kept (what its survivor held; acknowledged
/// messages only the lost replicas had are gone). Pinned: once the lost
/// servers are removed, and before new machines join, the stream runs on
/// its survivor alone (leader, no replicas) and takes publishes. A stream
/// placed in nyc3 loses nothing.
#[test]
fn a_region_that_lost_two_servers_for_good_is_rebuilt_under_new_names_by_the_runbook() {
    let began = std::time::Instant::now();
    let regions = [FRA1, NYC3_3, SGP1_3];
    let mut mesh = Mesh::new(&regions);
    mesh.extra.push_str(
        "\n[auth]\nmode = \"accounts\"\nanonymous_account = \"APP\"\n\n[accounts.APP]\njetstream = true\n",
    );
    mesh.publish(&regions);
    // nyc3 and sgp1 first: the fleet bucket (made by the first node that
    // follows it, in its region) is then outside the region that is hit,
    // so the runbook's pause can be written.
    mesh.start(NYC3_3);
    mesh.start(SGP1_3);
    mesh.wait_joined(NYC3_3, &[SGP1_3]);
    mesh.wait_joined(SGP1_3, &[NYC3_3]);
    let wait_current = |mesh: &mut Mesh, names: &[String]| {
        for name in names {
            mesh.node(name).wait_status(
                "serving with JetStream current",
                |s| s.state == "ready" && s.jetstream == "JetStream current",
                Duration::from_secs(90),
            );
        }
    };
    let first: Vec<String> = mesh.nodes.keys().cloned().collect();
    wait_current(&mut mesh, &first);
    mesh.start(FRA1);
    for r in regions {
        let others: Vec<_> = regions
            .iter()
            .filter(|o| o.name != r.name)
            .copied()
            .collect();
        mesh.wait_joined(r, &others);
    }
    let all: Vec<String> = mesh.nodes.keys().cloned().collect();
    wait_current(&mut mesh, &all);
    let g = meta_peers(&mesh, "fra1-n1");
    assert_eq!(g["peers"].as_array().unwrap().len(), 9, "{g:#}");
    println!("supercluster up after {:?}", began.elapsed());

    // An R3 stream in fra1, one in nyc3, each with 300 acknowledged
    // messages; then acknowledged publishes to fra1's go on while two of
    // its servers are destroyed.
    let rt = runtime();
    let client_url = |mesh: &Mesh, n: &str| format!("nats://{}", mesh.nodes[n].client_addr());
    let urls: Vec<async_nats::ServerAddr> = ["nyc3-n1", "sgp1-n1", "nyc3-n2"]
        .iter()
        .map(|n| client_url(&mesh, n).parse().unwrap())
        .collect();
    let js = rt.block_on(async {
        let js = jetstream::new(async_nats::connect(urls).await.unwrap());
        placed_stream(&js, "FRA", "fra1", 300).await;
        placed_stream(&js, "US", "nyc3", 300).await;
        js
    });
    let info = rt
        .block_on(stream_info(&js, "FRA"))
        .expect("FRA has a leader");
    let cluster = info.cluster.clone().unwrap();
    let leader = cluster.leader.clone().unwrap();
    // The leader and one follower go; the other follower survives.
    let mut followers: Vec<String> = cluster.replicas.iter().map(|r| r.name.clone()).collect();
    followers.sort();
    let survivor = followers.pop().unwrap();
    let lost = [leader.clone(), followers.pop().unwrap()];
    println!("FRA on {leader} (leader), {lost:?} lost, {survivor} survives");

    // The load runs on its own thread and runtime (this one's tasks run
    // only inside block_on).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let urls: Vec<async_nats::ServerAddr> = ["nyc3-n2", "sgp1-n2"]
            .iter()
            .map(|n| client_url(&mesh, n).parse().unwrap())
            .collect();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let js = jetstream::new(async_nats::connect(urls).await.unwrap());
                let (mut acked, mut failed) = (Vec::new(), 0u64);
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = tokio::time::timeout(Duration::from_secs(1), async {
                        js.publish("FRA.m", format!("load {i}").into())
                            .await?
                            .await
                            .map_err(async_nats::Error::from)
                    })
                    .await;
                    match sent {
                        Ok(Ok(ack)) => acked.push(ack.sequence),
                        _ => failed += 1,
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (acked, failed)
            })
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let destroyed = std::time::Instant::now();
    for name in &lost {
        // Killed with its broker; its state directory deleted.
        let d = mesh.nodes.remove(name).unwrap();
        let dir = d.dir.path().to_path_buf();
        drop(d);
        assert!(!dir.exists());
        mesh.retired.insert(name.clone());
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, failed) = publisher.join().unwrap();
    assert!(
        !acked.is_empty(),
        "the load was acknowledged before the loss"
    );
    let acked_last = acked.iter().copied().max().unwrap_or(300);
    let held = held_here(&mesh.nodes[&survivor], "FRA").expect("the survivor's FRA");
    // Only on the lost replicas: acknowledged (by the leader and the lost
    // follower, a majority) but not on the survivor.
    let only_lost = acked.iter().filter(|s| **s > held.2).count();
    println!(
        "load: {} acknowledged (last sequence {acked_last}), {failed} failed; the survivor holds {held:?} (messages, first, last): {only_lost} acknowledged messages only on the lost replicas",
        acked.len()
    );
    assert_eq!(
        (held.0, held.1),
        (held.2, 1),
        "the survivor's copy has no gap"
    );
    assert!(
        rt.block_on(stream_info(&js, "FRA")).is_none(),
        "FRA kept a leader with one of three replicas"
    );

    // Step 1: stop other work, from a region whose JetStream answers.
    let out = ok_cli(
        &mesh,
        "nyc3-n1",
        &["fleet", "pause", "--why", "fra1 lost its JetStream quorum"],
    );
    assert!(out.contains("every region"), "{out}");

    // Step 2: look. The lost servers show offline and silent.
    let g = loop {
        let g = meta_peers(&mesh, &survivor);
        let offline = |n: &str| {
            peer(&g, n).is_some_and(|p| {
                p["state"] == "offline"
                    && p["answers"] == false
                    && (p["offline"] == true || p["current"] == false)
            })
        };
        if lost.iter().all(|n| offline(n)) {
            break g;
        }
        assert!(
            destroyed.elapsed() < Duration::from_secs(90),
            "lost servers offline: {g:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("both offline after {:?}: {g:#}", destroyed.elapsed());
    // `fleet status` shows the lost natsmesh nodes as missing (killed,
    // silent for two report intervals).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&ok_cli(&mesh, "nyc3-n1", &["fleet", "status", "--json"]))
                .unwrap();
        let state = |n: &str| {
            rows.iter()
                .find(|r| r["server_name"] == n)
                .map(|r| r["state"].clone())
        };
        if lost.iter().all(|n| state(n) == Some("missing".into())) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "missing: {rows:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = ok_cli(&mesh, "sgp1-n2", &["fleet", "peers"]);
    for n in &lost {
        assert!(
            text.lines()
                .any(|l| l.starts_with(n.as_str()) && l.contains("offline")),
            "{text}"
        );
    }

    // Step 4: gone for good. A live server is refused; each lost one goes.
    let out = mesh.nodes["nyc3-n2"].cli(&["fleet", "remove-peer", &survivor]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{survivor} answers")), "{err}");
    for n in &lost {
        let out = ok_cli(&mesh, &survivor, &["fleet", "remove-peer", n]);
        assert!(out.contains(&format!("removed {n}")), "{out}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let g = meta_peers(&mesh, "sgp1-n1");
        if lost.iter().all(|n| peer(&g, n).is_none()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "removed: {g:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let removed = destroyed.elapsed();
    // Before new machines join, fra1 has no server to re-place the
    // replicas on: the stream shrinks to its survivor, which leads alone
    // and takes publishes again, each acknowledged on one copy.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (meanwhile, alone_state) = loop {
        let info = rt.block_on(stream_info(&js, "FRA"));
        if let Some(i) = info.filter(|i| {
            i.cluster
                .as_ref()
                .is_some_and(|c| c.leader.as_deref() == Some(survivor.as_str()))
        }) {
            break (i.cluster.unwrap(), i.state);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "FRA led by {survivor}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    println!("FRA after the removals, before new machines: {meanwhile:?}");
    assert!(meanwhile.replicas.is_empty(), "{meanwhile:?}");
    let alone = rt.block_on(async {
        js.publish("FRA.m", "on the survivor alone".into())
            .await
            .unwrap()
            .await
            .unwrap()
    });
    // Leading, the survivor may have applied entries its log held but its
    // store did not yet show (read from `/jsz` just after the loss): never
    // fewer than it held, and those are kept too.
    assert!(
        alone_state.last_sequence >= held.2 && alone_state.first_sequence == held.1,
        "the survivor alone {alone_state:?} against what it held {held:?}"
    );
    let held = (
        alone_state.messages,
        alone_state.first_sequence,
        alone_state.last_sequence,
    );
    assert_eq!(alone.sequence, held.2 + 1, "{alone:?}");

    // New machines under new names join through DNS.
    mesh.publish(&[FRA1_REBUILT, NYC3_3, SGP1_3]);
    mesh.start_node(FRA1, 4);
    mesh.start_node(FRA1, 5);
    for name in [survivor.as_str(), "fra1-n4", "fra1-n5"] {
        let d = mesh.node(name);
        d.wait_status(
            &format!("{name} routes to the rebuilt region, JetStream current"),
            |s| s.state == "ready" && s.routes == Some(2) && s.jetstream == "JetStream current",
            Duration::from_secs(90),
        );
        wait_gateways(d, name, &[NYC3_3, SGP1_3]);
    }
    let joined = destroyed.elapsed();

    // The meta leader places FRA's missing replicas on them.
    let rebuilt = [survivor.clone(), "fra1-n4".into(), "fra1-n5".into()];
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let info = loop {
        let info = rt.block_on(stream_info(&js, "FRA"));
        if let Some(c) = info.as_ref().and_then(|i| i.cluster.as_ref()) {
            let mut on: Vec<String> = c.replicas.iter().map(|r| r.name.clone()).collect();
            on.extend(c.leader.clone());
            on.sort();
            if on == rebuilt && c.replicas.iter().all(|r| r.current) {
                break info.unwrap();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "FRA on three current replicas: {:?}",
            info.map(|i| i.cluster)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let replaced = destroyed.elapsed();
    let state = &info.state;
    println!(
        "FRA back on {:?} + {:?}: {state:?}; destroyed → removed {removed:?}, → joined {joined:?}, → three current replicas {replaced:?}",
        info.cluster.as_ref().unwrap().leader,
        info.cluster.as_ref().unwrap().replicas
    );
    // What the survivor held (and the one message it took alone) is what
    // the stream has: the rebuild itself loses nothing more; acknowledged
    // messages beyond it are gone.
    assert_eq!(
        (state.messages, state.first_sequence, state.last_sequence),
        (held.0 + 1, held.1, held.2 + 1),
        "FRA after the rebuild against what the survivor held"
    );
    println!(
        "FRA: {} of {acked_last} acknowledged sequences kept, {only_lost} acknowledged only on the lost replicas gone",
        state.last_sequence.min(acked_last),
    );

    // The stream in nyc3 lost nothing.
    let us = rt
        .block_on(stream_info(&js, "US"))
        .expect("US has a leader");
    assert_eq!(
        (
            us.state.messages,
            us.state.first_sequence,
            us.state.last_sequence
        ),
        (300, 1, 300)
    );
    let c = us.cluster.unwrap();
    assert!(
        c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current),
        "{c:?}"
    );

    // `fleet peers`: the new servers current, the removed ones gone.
    let listed = |g: &serde_json::Value| {
        ["fra1-n4", "fra1-n5", survivor.as_str()].iter().all(|n| {
            peer(g, n).is_some_and(|p| {
                (p["state"] == "current" || p["state"] == "leader")
                    && p["answers"] == true
                    && p["region"] == "fra1"
            })
        }) && lost.iter().all(|n| peer(g, n).is_none())
            && g["peers"].as_array().is_some_and(|p| p.len() == 9)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let g = meta_peers(&mesh, "nyc3-n3");
        if listed(&g) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new servers current, the removed ones gone: {g:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Last step: planned restarts may go again.
    let out = ok_cli(&mesh, "fra1-n4", &["fleet", "resume"]);
    assert!(
        out.contains("resumed planned restarts in every region"),
        "{out}"
    );
    println!("runbook played in {:?}", began.elapsed());
}
