//! Discovery through a real DNS server (dnsmasq on loopback) with real
//! nats-servers, each node on its own loopback address: a region's cluster
//! from DNS alone, a record appearing and disappearing, a DNS outage, and
//! garbage answers; a region found in DNS over mutual TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Daemon, Options};
use natsmesh_harness::dns::{Dns, Records};
use natsmesh_harness::{CURRENT, OLDEST_AND_CURRENT, free_port};

const SRV: &str = "_nats-route._tcp.fra1.nats.test";

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 2, n])
}

/// Records for servers `ns` of fra1, routes on `port`.
fn region(ns: &[u8], port: u16) -> Records {
    let mut r = Records::default();
    for n in ns {
        let host = format!("n{n}.fra1.nats.test");
        r.srv.push((SRV.into(), host.clone(), port));
        r.hosts.push((host, ip(*n)));
    }
    r
}

fn node(v: &str, n: u8, port: u16, dns: &Dns) -> Daemon {
    node_in(v, "fra1", n, port, dns)
}

fn node_in(v: &str, region: &str, n: u8, port: u16, dns: &Dns) -> Daemon {
    node_with(v, region, n, port, dns, "")
}

/// A node of `region` on its own loopback address, found through `dns`,
/// with `extra` appended to its drop-in.
fn node_with(v: &str, region: &str, n: u8, port: u16, dns: &Dns, extra: &str) -> Daemon {
    Daemon::start(
        v,
        Options {
            extra: format!(
                "[node]\nname = \"n{n}\"\nregion = \"{region}\"\ndomain = \"nats.test\"\n\n[broker.cluster]\nenabled = true\nbind = \"{}\"\nport = {port}\n\n[discovery]\nenabled = true\nnameservers = [\"{}\"]\nmin_refresh = \"300ms\"\nmax_refresh = \"1s\"\n\n[health]\nroute_wait = \"30s\"\n{extra}",
                ip(n),
                dns.addr()
            ),
            ..Options::default()
        },
    )
}

fn wait_routes(d: &mut Daemon, n: u64, what: &str) {
    d.wait_status(what, |s| s.routes == Some(n), Duration::from_secs(30));
}

fn rendered_routes(d: &Daemon) -> String {
    let text = std::fs::read_to_string(d.dir.path().join("state/nats-server.conf")).unwrap();
    text.lines()
        .find(|l| l.trim_start().starts_with("routes:"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_region_forms_from_dns_and_follows_it() {
    for v in OLDEST_AND_CURRENT {
        let port = free_port();
        let mut dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &region(&[1, 2, 3], port));
        let mut a = node(v, 1, port, &dns);
        let mut b = node(v, 2, port, &dns);
        let mut c = node(v, 3, port, &dns);
        for (d, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
            wait_routes(d, 2, &format!("{v} {name} formed the region from DNS"));
        }
        // The same route list everywhere, by address, this node included.
        let list = rendered_routes(&a);
        assert!(
            list.contains("127.0.2.1") && list.contains("127.0.2.2") && list.contains("127.0.2.3"),
            "{v}: {list}\n{}",
            a.log()
        );
        assert_eq!(list, rendered_routes(&b), "{v}");
        // /metrics: what DNS said, and when.
        a.wait_metric("natsmesh_discovery_routes", Duration::from_secs(10), |n| {
            n == 3.0
        });
        let last = a.wait_metric(
            "natsmesh_discovery_last_success_timestamp_seconds",
            Duration::from_secs(10),
            |t| t > 0.0,
        );
        let now = common::unix_now();
        assert!(
            (now - last).abs() < 30.0,
            "{v}: last lookup at {last}, now {now}"
        );
        let pids: Vec<_> = [&mut a, &mut b, &mut c]
            .iter_mut()
            .map(|d| d.status().unwrap().broker_pid)
            .collect();
        // Unchanged answers (a 1 s TTL: several lookups) reload nothing.
        let reloads = a.status().unwrap().reloads_ok;
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(a.status().unwrap().reloads_ok, reloads, "{v}");

        // A fourth server appears in DNS: everyone routes to it, no restart.
        dns.set(&region(&[1, 2, 3, 4], port));
        let mut d4 = node(v, 4, port, &dns);
        for (d, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c"), (&mut d4, "d")] {
            wait_routes(d, 3, &format!("{v} {name} with the fourth server"));
        }
        // Gossip alone connects the newcomer; the rendered config must
        // follow too, so a restart later keeps the route.
        for (d, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
            d.wait_status(
                &format!("{v} {name} reloaded with the fourth route"),
                |s| s.reloads_ok >= 1,
                Duration::from_secs(15),
            );
            assert!(rendered_routes(d).contains("127.0.2.4"), "{v} {name}");
        }
        let now: Vec<_> = [&mut a, &mut b, &mut c]
            .iter_mut()
            .map(|d| d.status().unwrap().broker_pid)
            .collect();
        assert_eq!(pids, now, "{v}: a broker restarted");
        assert!(
            a.log().contains("Reloaded: cluster routes")
                || a.log().contains("configuration reloaded"),
            "{v}"
        );

        // It leaves DNS: the configured route goes.
        dns.set(&region(&[1, 2, 3], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while rendered_routes(&a).contains("127.0.2.4") {
            assert!(
                Instant::now() < deadline,
                "{v}: the route to the fourth server stayed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(d4);
        wait_routes(&mut a, 2, &format!("{v} after the fourth server left"));
        let after: Vec<_> = [&mut a, &mut b, &mut c]
            .iter_mut()
            .map(|d| d.status().unwrap().broker_pid)
            .collect();
        assert_eq!(pids, after, "{v}: a broker restarted");
    }
}

/// Discovery and trust together, as a cloud node runs them: the routes
/// DNS names are dialled over mutual TLS with certificates each node
/// issued itself from its region's intermediate.
#[test]
fn a_region_found_in_dns_forms_over_mutual_tls() {
    for v in OLDEST_AND_CURRENT {
        let pki = common::pki::Pki::new();
        pki.root("r1").intermediate("r1", "fra1", "i1");
        let tls = common::pki::issue_config(
            &pki.path("r1/root.crt"),
            &pki.path("i1/fra1.crt"),
            &pki.path("i1/fra1.key"),
            "1h",
        );
        let port = free_port();
        let dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &region(&[1, 2, 3], port));
        let mut nodes: Vec<Daemon> = (1..=3)
            .map(|n| node_with(v, "fra1", n, port, &dns, &tls))
            .collect();
        for (i, d) in nodes.iter_mut().enumerate() {
            wait_routes(d, 2, &format!("{v} n{} over TLS", i + 1));
        }
        let vz = nodes[0].monitor("/varz").unwrap();
        assert_eq!(vz["cluster"]["tls_required"], true, "{v}: {vz}");
        assert_eq!(vz["cluster"]["tls_verify"], true, "{v}: {vz}");
        // The routes are DNS's, not configured.
        let routes = rendered_routes(&nodes[0]);
        assert!(routes.contains(&format!("{}:{port}", ip(2))), "{routes}");
    }
}

#[test]
fn another_regions_record_naming_this_server_is_refused_by_cluster_name() {
    let v = CURRENT;
    let port = free_port();
    let mut records = region(&[1, 2], port);
    // nyc3's record wrongly lists fra1's n1 beside its own n3.
    let nyc3 = "_nats-route._tcp.nyc3.nats.test";
    records
        .srv
        .push((nyc3.into(), "n1.fra1.nats.test".into(), port));
    records
        .srv
        .push((nyc3.into(), "n3.nyc3.nats.test".into(), port));
    records.hosts.push(("n3.nyc3.nats.test".into(), ip(3)));
    let dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &records);
    let mut a = node(v, 1, port, &dns);
    let mut b = node(v, 2, port, &dns);
    let mut c = node_in(v, "nyc3", 3, port, &dns);
    wait_routes(&mut a, 1, "fra1 formed");
    wait_routes(&mut b, 1, "fra1 formed");
    a.wait_ready();
    // The stray route is refused for its cluster name; fra1 keeps its one
    // route, nothing restarts, and nyc3 routes to nobody.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(c.log().contains("does not match") || a.log().contains("does not match")) {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}\n{}",
            a.log(),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let s = a.status().unwrap();
    assert_eq!(
        (s.routes, s.restarts, s.state.as_str()),
        (Some(1), 0, "ready")
    );
    assert_eq!(c.status().unwrap().routes, Some(0));
    assert!(
        rendered_routes(&c).contains("127.0.2.1"),
        "{}",
        rendered_routes(&c)
    );
}

#[test]
fn a_single_server_region_renders_only_its_own_route() {
    let port = free_port();
    let dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &region(&[1], port));
    let mut a = node(CURRENT, 1, port, &dns);
    a.wait_ready();
    let routes = rendered_routes(&a);
    assert_eq!(routes.matches("nats-route://").count(), 1, "{routes}");
    assert!(routes.contains(&format!("127.0.2.1:{port}")), "{routes}");
}

fn bootstrap(v: &str, n: u8, port: u16, dns: &Dns, timeout: &str) -> Daemon {
    Daemon::start(
        v,
        Options {
            extra: format!(
                "[node]\nname = \"n{n}\"\ndomain = \"nats.test\"\n\n[broker.cluster]\nenabled = true\nbind = \"{}\"\nport = {port}\n\n[discovery]\nenabled = true\nnameservers = [\"{}\"]\nmin_refresh = \"300ms\"\nmax_refresh = \"1s\"\nbootstrap_expect = 2\nbootstrap_timeout = \"{timeout}\"\n",
                ip(n),
                dns.addr()
            ),
            ..Options::default()
        },
    )
}

#[test]
fn jetstreams_first_start_waits_for_the_expected_servers() {
    let v = CURRENT;
    let port = free_port();
    let mut dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &region(&[1], port));
    let mut a = bootstrap(v, 1, port, &dns, "60s");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a
        .log()
        .contains("waiting for the region's servers before JetStream's first start")
    {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Not started: no broker, no state directory for JetStream yet.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!a.log().contains("natsmeshd starting"), "{}", a.log());
    assert!(!a.dir.path().join("state/jetstream").exists());
    assert!(
        a.notes()
            .iter()
            .any(|n| n.contains("STATUS=waiting for 2 servers")),
        "{:?}",
        a.notes()
    );
    dns.set(&region(&[1, 2], port));
    let mut b = bootstrap(v, 2, port, &dns, "60s");
    wait_routes(&mut a, 1, "started once the second server was in DNS");
    wait_routes(&mut b, 1, "started with its peer");
    a.wait_ready();
    b.wait_ready();
}

#[test]
fn jetstreams_first_start_gives_up_loudly() {
    let port = free_port();
    let dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &region(&[1], port));
    let mut a = bootstrap(CURRENT, 1, port, &dns, "2s");
    let status = a.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = a.log();
    assert!(
        log.contains("found 1 of the 2 servers discovery.bootstrap_expect asks for"),
        "{log}"
    );
    assert!(!a.dir.path().join("state/jetstream").exists());
}

#[test]
fn a_dns_outage_changes_nothing_and_traffic_flows() {
    let v = CURRENT;
    let port = free_port();
    let mut dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &region(&[1, 2], port));
    let mut a = node(v, 1, port, &dns);
    let mut b = node(v, 2, port, &dns);
    wait_routes(&mut a, 1, "formed");
    wait_routes(&mut b, 1, "formed");
    let before = (a.status().unwrap(), b.status().unwrap());
    let routes = rendered_routes(&a);
    // The record vanishes (NXDOMAIN): the last good routes stay.
    dns.set(&Records::default());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !a.log().contains("_nats-route._tcp.fra1.nats.test failed") {
        assert!(
            Instant::now() < deadline,
            "no failed lookup logged:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rendered_routes(&a), routes);
    // Then the server stops answering at all.
    let failed = |d: &Daemon| {
        d.log()
            .matches("DNS lookup failed; keeping the last good peers")
            .count()
    };
    let failures = failed(&a);
    dns.stop();
    // Long enough for several failed lookups (timeouts included).
    let deadline = Instant::now() + Duration::from_secs(30);
    while failed(&a) < failures + 2 {
        assert!(
            Instant::now() < deadline,
            "no failed lookup logged:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = (a.status().unwrap(), b.status().unwrap());
    for (x, y) in [(&before.0, &after.0), (&before.1, &after.1)] {
        assert_eq!(
            (x.broker_pid, x.reloads_ok, x.reloads_failed, x.restarts),
            (y.broker_pid, y.reloads_ok, y.reloads_failed, y.restarts)
        );
        assert_eq!(y.routes, Some(1));
        assert_eq!(y.state, "ready");
    }
    assert!(
        a.log()
            .contains("DNS lookup failed; keeping the last good peers"),
        "{}",
        a.log()
    );
    // Traffic still flows across the route.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::StreamExt as _;
        let na = async_nats::connect(a.client_addr()).await.unwrap();
        let nb = async_nats::connect(b.client_addr()).await.unwrap();
        let mut sub = common::subscribed(&nb, "across").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            na.publish("across", "x".into()).await.unwrap();
            na.flush().await.unwrap();
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(250), sub.next()).await
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no traffic across the route during the DNS outage"
            );
        }
    });
}

#[test]
fn bad_records_are_skipped_with_a_warning() {
    let v = CURRENT;
    let port = free_port();
    let mut records = region(&[1, 2], port);
    // Port 0, and a target that resolves to nothing.
    records
        .srv
        .push((SRV.into(), "zero.fra1.nats.test".into(), 0));
    records.hosts.push(("zero.fra1.nats.test".into(), ip(9)));
    records
        .srv
        .push((SRV.into(), "nowhere.fra1.nats.test".into(), port));
    let dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &records);
    let mut a = node(v, 1, port, &dns);
    let mut b = node(v, 2, port, &dns);
    wait_routes(&mut a, 1, "formed despite the bad records");
    b.wait_ready();
    let log = a.log();
    assert!(log.contains("SRV record with port 0 ignored"), "{log}");
    assert!(
        log.contains("SRV target does not resolve; ignored"),
        "{log}"
    );
    let routes = rendered_routes(&a);
    assert!(!routes.contains("127.0.2.9"), "{routes}");
    assert_eq!(routes.matches("nats-route://").count(), 2, "{routes}");
}

/// 300 records (a 12 KB answer, over TCP). Observed: at 450 and more
/// (about 19 KB) the lookup times out between hickory-resolver 0.26 and
/// dnsmasq, although dnsmasq answers such a query over TCP in 3 ms; a
/// failed lookup keeps the last good set, so a flood cannot empty a region.
#[test]
fn a_flood_of_records_is_capped() {
    let v = CURRENT;
    let port = free_port();
    let mut records = region(&[1], port);
    for i in 0..300u16 {
        let host = format!("flood{i}.fra1.nats.test");
        records.srv.push((SRV.into(), host.clone(), 40000 + i));
        records
            .hosts
            .push((host, IpAddr::from([127, 0, 3, (i % 250) as u8 + 1])));
    }
    let dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &records);
    let mut a = node(v, 1, port, &dns);
    let s = a.wait_status(
        "broker up",
        |s| s.broker_pid.is_some(),
        Duration::from_secs(20),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a
        .log()
        .contains("too many route records; using the first 64")
    {
        assert!(Instant::now() < deadline, "no warning:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let routes = rendered_routes(&a);
    assert_eq!(routes.matches("nats-route://").count(), 64 + 1, "{routes}");
    // Routes that go nowhere keep JetStream from a meta leader, so the node
    // does not serve; but nothing crashes or restarts over it.
    std::thread::sleep(Duration::from_secs(2));
    let now = a.status().unwrap();
    assert_eq!((now.broker_pid, now.restarts), (s.broker_pid, s.restarts));
}

/// A hub server of fra1 accepting leafnodes on `leaf_port`.
fn hub(v: &str, n: u8, port: u16, leaf_port: u16, dns: &Dns) -> Daemon {
    Daemon::start(
        v,
        Options {
            extra: format!(
                "[node]\nname = \"n{n}\"\ndomain = \"nats.test\"\n\n[broker.cluster]\nenabled = true\nbind = \"{ip}\"\nport = {port}\n\n[broker.leafnodes]\nenabled = true\nbind = \"{ip}\"\nport = {leaf_port}\n\n[discovery]\nenabled = true\nnameservers = [\"{ns}\"]\nmin_refresh = \"300ms\"\nmax_refresh = \"1s\"\n\n[health]\nroute_wait = \"30s\"\n",
                ip = ip(n),
                ns = dns.addr()
            ),
            ..Options::default()
        },
    )
}

/// An edge: no cluster, its own JetStream domain, its hub from DNS.
fn edge(v: &str, dns: &Dns) -> Daemon {
    Daemon::start(
        v,
        Options {
            extra: format!(
                "[node]\nname = \"edge1\"\nregion = \"edge\"\ndomain = \"nats.test\"\n\n[broker.jetstream]\ndomain = \"edge\"\n\n[[broker.leafnodes.remotes]]\nrecord = \"_nats-leaf._tcp.fra1.{{domain}}\"\n\n[discovery]\nenabled = true\nnameservers = [\"{}\"]\nmin_refresh = \"300ms\"\nmax_refresh = \"1s\"\n",
                dns.addr()
            ),
            ..Options::default()
        },
    )
}

fn with_leaf(mut r: Records, ns: &[u8], leaf_port: u16) -> Records {
    for n in ns {
        r.srv.push((
            "_nats-leaf._tcp.fra1.nats.test".into(),
            format!("n{n}.fra1.nats.test"),
            leaf_port,
        ));
    }
    r
}

fn rendered_leaf_urls(d: &Daemon) -> String {
    let text = std::fs::read_to_string(d.dir.path().join("state/nats-server.conf")).unwrap();
    text.lines()
        .filter(|l| l.contains("nats-leaf://"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_edge_finds_its_hub_in_dns_and_follows_it() {
    // 2.14 reloads leafnode remotes; before it a change waits for a restart.
    for v in ["2.12.8", CURRENT] {
        let port = free_port();
        let leaf_port = free_port();
        let mut dns = Dns::start(
            IpAddr::from([127, 0, 0, 1]),
            &with_leaf(region(&[1, 2], port), &[1], leaf_port),
        );
        let mut h1 = hub(v, 1, port, leaf_port, &dns);
        let mut h2 = hub(v, 2, port, leaf_port, &dns);
        wait_routes(&mut h1, 1, "hub formed");
        wait_routes(&mut h2, 1, "hub formed");
        let mut e = edge(v, &dns);
        e.wait_ready();
        let urls = rendered_leaf_urls(&e);
        assert!(
            urls.contains(&format!("127.0.2.1:{leaf_port}")) && !urls.contains("127.0.2.2"),
            "{v}: {urls}"
        );

        // A message from the edge reaches a subscriber on the hub.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (edge_url, hub_url) = (e.client_addr(), h2.client_addr());
        rt.block_on(async {
            use futures_util::StreamExt as _;
            let at_hub = async_nats::connect(&hub_url).await.unwrap();
            let at_edge = async_nats::connect(&edge_url).await.unwrap();
            let mut sub = at_hub.subscribe("edge.readings").await.unwrap();
            at_hub.flush().await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                at_edge
                    .publish("edge.readings", "21.5".into())
                    .await
                    .unwrap();
                at_edge.flush().await.unwrap();
                if let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(250), sub.next()).await
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{v}: nothing from the edge reached the hub"
                );
            }
        });

        // The hub's record grows: the edge follows without a restart.
        let pid = e.status().unwrap().broker_pid;
        dns.set(&with_leaf(region(&[1, 2], port), &[1, 2], leaf_port));
        if natsmesh_harness::semver(v) >= natsmesh_harness::semver("2.14.0") {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !rendered_leaf_urls(&e).contains("127.0.2.2") {
                assert!(
                    Instant::now() < deadline,
                    "{v}: the new hub server was not rendered\n{}",
                    e.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            e.wait_status(
                &format!("{v} reloaded"),
                |s| s.reloads_ok >= 1,
                Duration::from_secs(10),
            );
        } else {
            let s = e.wait_status(
                &format!("{v} restart pending"),
                |s| s.restart_pending.iter().any(|p| p.contains("leafnodes")),
                Duration::from_secs(15),
            );
            assert_eq!(s.restarts, 0, "{v}");
        }
        assert_eq!(
            e.status().unwrap().broker_pid,
            pid,
            "{v}: discovery restarted the edge"
        );
    }
}

/// A new supercluster's zone has no regions record yet: the region still
/// forms from its route records (gateways stay as configured), takes the
/// record when it appears, and keeps its last answer if it goes again.
#[test]
fn a_region_forms_before_the_regions_record_exists() {
    let port = free_port();
    let gw = free_port();
    let mut dns = Dns::start(IpAddr::from([127, 0, 0, 1]), &region(&[1, 2], port));
    let gateway = |n: u8| {
        Daemon::start(
            CURRENT,
            Options {
                extra: format!(
                    "[node]\nname = \"n{n}\"\nregion = \"fra1\"\ndomain = \"nats.test\"\n\n[broker.cluster]\nenabled = true\nbind = \"{ip}\"\nport = {port}\n\n[broker.gateway]\nenabled = true\nbind = \"{ip}\"\nport = {gw}\n\n[discovery]\nenabled = true\nnameservers = [\"{}\"]\nmin_refresh = \"300ms\"\nmax_refresh = \"1s\"\n\n[health]\nroute_wait = \"30s\"\n",
                    dns.addr(),
                    ip = ip(n),
                ),
                ..Options::default()
            },
        )
    };
    let mut a = gateway(1);
    let mut b = gateway(2);
    wait_routes(&mut a, 1, "a formed the region without a regions record");
    wait_routes(&mut b, 1, "b formed the region without a regions record");
    let said = a.log().matches("no regions record (TXT)").count();
    assert_eq!(said, 1, "said once, not per lookup:\n{}", a.log());
    let conf = || std::fs::read_to_string(a.dir.path().join("state/nats-server.conf")).unwrap();
    assert!(!conf().contains("nyc3.nats.test"), "{}", conf());

    // The record appears: the gateways follow it (a gateway list takes a
    // restart, so it waits for a coordinated one).
    let mut with_regions = region(&[1, 2], port);
    with_regions
        .txt
        .push(("_nats-regions.nats.test".into(), "fra1 nyc3".into()));
    dns.set(&with_regions);
    a.wait_status(
        "the regions record taken",
        |s| s.restart_pending.iter().any(|r| r.contains("gateway")),
        Duration::from_secs(15),
    );
    assert!(a.log().contains(r#"regions=Some(["fra1", "nyc3"])"#));
    // It goes again: its last answer stays.
    dns.set(&region(&[1, 2], port));
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.log().matches("no regions record (TXT)").count() < 2 {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let log = a.log();
    let gone = &log[log.rfind("no regions record (TXT)").unwrap()..];
    assert!(gone.contains(r#"kept=Some(["fra1", "nyc3"])"#), "{gone}");
    assert!(!gone.contains("DNS answer changed"), "{gone}");
}
