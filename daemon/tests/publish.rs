//! DNS self-publication against a real authoritative server: BIND 9 on
//! loopback taking RFC 2136 updates signed with TSIG. Nodes start against
//! an empty zone, publish themselves once serving, find each other through
//! the records they wrote, and take exactly their own records away when
//! they stop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Daemon, Options};
use natsmesh_harness::bind::{Bind, KEY_NAME};
use natsmesh_harness::fakes::Fault;
use natsmesh_harness::fakes::dns_api::{ApiRecord, FakeDnsApi, Flavor};
use natsmesh_harness::{CURRENT, free_port};

const ZONE: &str = "nats.test";
const SRV: &str = "_nats-route._tcp.fra1.nats.test";

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 3, n])
}

fn host(n: u8) -> String {
    format!("n{n}.fra1.nats.test")
}

/// A node of fra1 on 127.0.3.n that reads and writes `bind`.
fn node_opts(n: u8, port: u16, bind: &Bind, publish: &str) -> Options {
    Options {
        extra: format!(
            r#"[node]
name = "n{n}"
region = "fra1"
domain = "{ZONE}"

[broker.cluster]
enabled = true
bind = "{ip}"
port = {port}

[discovery]
enabled = true
nameservers = ["{ns}"]
min_refresh = "300ms"
max_refresh = "1s"

[dns_publish]
ttl = "1s"
{publish}

[health]
route_wait = "30s"
"#,
            ip = ip(n),
            ns = bind.addr(),
        ),
        ..Options::default()
    }
}

fn rfc2136(bind: &Bind) -> String {
    format!(
        "backend = \"rfc2136\"\nserver = \"{}\"\ntsig_key_name = \"{KEY_NAME}\"\ntsig_secret_file = \"{}\"\n",
        bind.addr(),
        bind.key_file().display()
    )
}

fn node(n: u8, port: u16, bind: &Bind) -> Daemon {
    Daemon::start(CURRENT, node_opts(n, port, bind, &rfc2136(bind)))
}

/// The SRV targets at the route record, sorted.
fn srv_targets(bind: &Bind) -> Vec<String> {
    let mut v: Vec<String> = bind
        .dig(SRV, "SRV")
        .iter()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect();
    v.sort();
    v
}

fn targets(ns: &[u8]) -> Vec<String> {
    ns.iter().map(|n| format!("{}.", host(*n))).collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_routes(d: &mut Daemon, n: u64, what: &str) {
    d.wait_status(what, |s| s.routes == Some(n), Duration::from_secs(40));
}

#[test]
fn three_nodes_publish_themselves_form_a_cluster_and_one_leaves() {
    let bind = Bind::start(ZONE);
    assert!(srv_targets(&bind).is_empty(), "the zone starts empty");
    let port = free_port();
    let mut a = node(1, port, &bind);
    let mut b = node(2, port, &bind);
    let mut c = node(3, port, &bind);
    for (d, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        d.wait_ready();
        wait_routes(
            d,
            2,
            &format!("{name} found both peers through the zone they wrote"),
        );
    }
    assert_eq!(srv_targets(&bind), targets(&[1, 2, 3]), "{}", bind.log());
    for n in 1..=3 {
        assert_eq!(bind.dig(&host(n), "A"), vec![ip(n).to_string()]);
    }
    // `natsmeshd status` says what is in DNS.
    let dns = a.status().unwrap().dns;
    assert!(dns.starts_with("2 records published via rfc2136"), "{dns}");
    // The SRV record points at the route port.
    assert!(
        bind.dig(SRV, "SRV")
            .iter()
            .all(|l| l.contains(&format!(" {port} ")))
    );

    // b stops: its records go before lame duck; the others' stay.
    b.signal("TERM");
    let status = b.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", b.log());
    assert_eq!(srv_targets(&bind), targets(&[1, 3]), "{}", b.log());
    assert!(bind.dig(&host(2), "A").is_empty());
    assert_eq!(bind.dig(&host(1), "A"), vec![ip(1).to_string()]);
    let log = b.log();
    let withdrawn = log
        .find("DNS records withdrawn")
        .expect("withdrawal logged");
    let lame_duck = log
        .find("Entering lame duck mode")
        .expect("lame duck logged");
    assert!(
        withdrawn < lame_duck,
        "withdrawn only after lame duck:\n{log}"
    );
    wait_routes(&mut a, 1, "a after b left");
    wait_routes(&mut c, 1, "c after b left");
}

#[test]
fn a_crashed_nodes_records_are_repaired_not_duplicated() {
    let bind = Bind::start(ZONE);
    let port = free_port();
    let mut a = node(1, port, &bind);
    a.wait_ready();
    wait_for("a published", Duration::from_secs(20), || {
        srv_targets(&bind) == targets(&[1]) && bind.dig(&host(1), "A") == vec![ip(1).to_string()]
    });
    // A record this node published in an earlier life at another address.
    bind.update(&[format!("update add {} 30 A 127.0.3.99", host(1))])
        .unwrap();
    let state = a.dir.path().join("state/dns-published.json");
    assert!(
        std::fs::read_to_string(&state)
            .unwrap()
            .contains("127.0.3.1")
    );

    // natsmeshd is killed (SIGKILL: no withdrawal); its records stay.
    let dir = std::mem::replace(&mut a.dir, natsmesh_harness::scratch());
    drop(a);
    assert_eq!(srv_targets(&bind), targets(&[1]));
    assert_eq!(bind.dig(&host(1), "A"), vec!["127.0.3.1", "127.0.3.99"]);

    // Started again: while it is not serving its records are taken away
    // (stale address included), then published once it serves: one each.
    let mut a = Daemon::start_in(dir, CURRENT, node_opts(1, port, &bind, &rfc2136(&bind)));
    a.wait_ready();
    wait_for("a republished, repaired", Duration::from_secs(20), || {
        bind.dig(&host(1), "A") == vec!["127.0.3.1".to_owned()]
    });
    assert_eq!(srv_targets(&bind), targets(&[1]));
    assert!(a.log().contains("DNS records withdrawn"), "{}", a.log());
}

#[test]
fn a_wrong_key_is_reported_retried_and_never_blocks_serving() {
    let bind = Bind::start(ZONE);
    let port = free_port();
    let wrong = natsmesh_harness::scratch();
    let key = wrong.path().join("wrong.key");
    natsmesh_harness::bind::write_private(&key, "c2VjcmV0LXRoYXQtYmluZC1kb2VzLW5vdC1rbm93\n");
    let publish = format!(
        "backend = \"rfc2136\"\nserver = \"{}\"\ntsig_key_name = \"{KEY_NAME}\"\ntsig_secret_file = \"{}\"\n",
        bind.addr(),
        key.display()
    );
    let mut a = Daemon::start(CURRENT, node_opts(1, port, &bind, &publish));
    a.wait_ready();
    wait_for("the refusal is logged", Duration::from_secs(20), || {
        a.log().contains("DNS publication failed")
    });
    let log = a.log();
    assert!(
        log.contains("refused the TSIG signature"),
        "the reason is named:\n{log}"
    );
    assert!(!log.contains("c2VjcmV0"), "the secret was logged:\n{log}");
    assert!(srv_targets(&bind).is_empty());

    // Fixed in place (a rotated credential): the next retry publishes.
    let good = std::fs::read_to_string(bind.key_file()).unwrap();
    natsmesh_harness::bind::write_private(&key, &good);
    wait_for(
        "published after the key was fixed",
        Duration::from_secs(30),
        || srv_targets(&bind) == targets(&[1]),
    );
    // Supervision carried on: one broker all along.
    assert_eq!(a.status().unwrap().restarts, 0);
}

#[test]
fn jetstreams_first_start_waits_for_peers_that_announce_themselves() {
    let bind = Bind::start(ZONE);
    let port = free_port();
    let boot = |n: u8| {
        let mut o = node_opts(n, port, &bind, &rfc2136(&bind));
        // A route_wait far beyond the test's patience: a node must never
        // reach service only because waiting for a peer gave up.
        o.extra = o
            .extra
            .replace(
                "max_refresh = \"1s\"\n",
                "max_refresh = \"1s\"\nbootstrap_expect = 3\nbootstrap_timeout = \"60s\"\n",
            )
            .replace("route_wait = \"30s\"", "route_wait = \"10m\"");
        Daemon::start(CURRENT, o)
    };
    // Each waits for the others, which it can only see because every one
    // announces itself while waiting.
    let mut a = boot(1);
    let mut b = boot(2);
    let mut c = boot(3);
    for (d, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        d.wait_status(
            &format!("{name} ready"),
            |s| s.state == "ready",
            Duration::from_secs(60),
        );
        wait_routes(d, 2, &format!("{name} routed to both peers"));
    }
    // One JetStream group of three, not three groups of one.
    wait_for(
        "a JetStream meta group of three",
        Duration::from_secs(30),
        || {
            a.monitor("/jsz")
                .and_then(|j| j["meta_cluster"]["cluster_size"].as_u64())
                == Some(3)
        },
    );
    assert_eq!(srv_targets(&bind), targets(&[1, 2, 3]));
}

/// Publishes through a provider's API (a fake that follows its published
/// contract and writes into BIND), so discovery reads what the API wrote.
fn through_provider(flavor: Flavor, backend: &str, zone: &str) {
    let bind = Bind::start(zone);
    let token = format!("{backend}-token-7f3a9c");
    let fake = FakeDnsApi::start(flavor, zone, &token, Some(bind.writer()));
    // A peer's record the node must never touch.
    let peer = ApiRecord {
        id: String::new(),
        kind: "SRV".into(),
        name: SRV.into(),
        value: host(7),
        priority: 10,
        weight: 10,
        port: 6222,
        ttl: 300,
    };
    {
        let mut s = fake.state.lock().unwrap();
        let mut p = peer.clone();
        p.id = "900001".into();
        s.records.push(p);
        // The provider's rate limit on the first request: honoured, retried.
        s.rate_limited = 1;
        s.retry_after_secs = 1;
    }
    let scratch = natsmesh_harness::scratch();
    let token_file = scratch.path().join("token");
    natsmesh_harness::bind::write_private(&token_file, &format!("{token}\n"));
    let port = free_port();
    let gw = free_port();
    let publish = format!(
        "backend = \"{backend}\"\nzone = \"{zone}\"\ntoken_file = \"{}\"\napi_url = \"{}\"\n\n[broker.gateway]\nenabled = true\nbind = \"{}\"\nport = {gw}\n",
        token_file.display(),
        fake.url(),
        ip(1),
    );
    let mut opts = node_opts(1, port, &bind, &publish);
    // The region lists itself where the zone holds the regions record;
    // Linode's per-region zone does not (the domain's own Domain does:
    // `the_regions_record_keeps_itself_through_linodes_domains_api`), so
    // here the regions are configured.
    let listed = zone == ZONE;
    if !listed {
        opts.extra = opts.extra.replace(
            "max_refresh = \"1s\"\n",
            "max_refresh = \"1s\"\nregions = [\"fra1\"]\n",
        );
    }
    let mut a = Daemon::start(CURRENT, opts);
    a.wait_ready();
    wait_for(
        &format!("{backend}: records in BIND through the API"),
        Duration::from_secs(30),
        || {
            srv_targets(&bind) == targets(&[1])
                && bind.dig(&host(1), "A") == vec![ip(1).to_string()]
                && bind.dig("fra1.nats.test", "A") == vec![ip(1).to_string()]
                && fake.records().len() == 4 + usize::from(listed)
                && (!listed || listed_regions(&bind) == ["fra1"])
        },
    );
    let log = a.log();
    assert!(
        log.contains("429"),
        "{backend}: the rate limit is reported:\n{log}"
    );
    // Exactly three records of this node's, the peer's untouched.
    let mine: Vec<ApiRecord> = fake
        .records()
        .into_iter()
        .filter(|r| r.name == host(1) || r.value == host(1) || r.name == "fra1.nats.test")
        .collect();
    assert_eq!(mine.len(), 3, "{backend}: {mine:?}");

    // Stop: withdrawn through the API before lame duck; the peer's stays.
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        a.log()
    );
    assert!(
        srv_targets(&bind).is_empty(),
        "{backend}: {:?}",
        srv_targets(&bind)
    );
    assert!(bind.dig(&host(1), "A").is_empty());
    assert!(bind.dig("fra1.nats.test", "A").is_empty());
    // The peer's record stays, and the region stays listed (a stop is
    // not a region leaving).
    let left = fake.records();
    assert_eq!(left.len(), 1 + usize::from(listed), "{backend}: {left:?}");
    assert!(
        left.iter().any(|r| r.value == peer.value),
        "{backend}: {left:?}"
    );
    if listed {
        assert_eq!(listed_regions(&bind), ["fra1"], "{backend}");
    }
    // The token went only where it belongs.
    let log = a.log();
    assert!(!log.contains(&token), "{backend}: token in the log");
    let seen = fake.state.lock().unwrap().authorization_seen.clone();
    assert!(!seen.is_empty() && seen.iter().all(|h| *h == format!("Bearer {token}")));
}

#[test]
fn digitalocean_domains_api() {
    through_provider(Flavor::DigitalOcean, "digitalocean", ZONE);
}

#[test]
fn linode_domains_api() {
    // Linode keeps SRV owners at a Domain's apex: the region's own Domain.
    through_provider(Flavor::Linode, "linode", "fra1.nats.test");
}

#[test]
fn cloudflare_dns_api() {
    through_provider(Flavor::Cloudflare, "cloudflare", ZONE);
}

#[test]
fn a_provider_outage_never_blocks_serving_or_stopping() {
    let bind = Bind::start(ZONE);
    let fake = FakeDnsApi::start(Flavor::DigitalOcean, ZONE, "tok", Some(bind.writer()));
    fake.state.lock().unwrap().fault = Fault::Status(500);
    let scratch = natsmesh_harness::scratch();
    let token_file = scratch.path().join("token");
    natsmesh_harness::bind::write_private(&token_file, "tok\n");
    let publish = format!(
        "backend = \"digitalocean\"\ntoken_file = \"{}\"\napi_url = \"{}\"\nwithdraw_timeout = \"2s\"\ngateway = false\n",
        token_file.display(),
        fake.url(),
    );
    let mut a = Daemon::start(CURRENT, node_opts(1, free_port(), &bind, &publish));
    a.wait_ready();
    wait_for("the outage is reported", Duration::from_secs(20), || {
        a.log().contains("DNS publication failed")
    });
    assert!(a.log().contains("500"), "{}", a.log());
    a.wait_metric(
        "natsmesh_provider_api_errors_total{purpose=\"dns_publish\",provider=\"digitalocean\",status=\"500\"}",
        Duration::from_secs(10),
        |n| n >= 1.0,
    );
    let dns = a.status().unwrap().dns;
    assert!(
        dns.starts_with("publication failing via digitalocean"),
        "{dns}"
    );
    // The provider recovers: published on the next retry.
    fake.state.lock().unwrap().fault = Fault::None;
    wait_for("published after recovery", Duration::from_secs(30), || {
        srv_targets(&bind) == targets(&[1])
    });
    a.wait_metric("natsmesh_dns_published", Duration::from_secs(10), |v| {
        v == 1.0
    });
    // Down again at stop: the stop waits withdraw_timeout, no longer.
    fake.state.lock().unwrap().fault = Fault::Status(500);
    let asked = Instant::now();
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(60)).success());
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "did not wait for the withdrawal: {took:?}"
    );
    assert!(
        a.log().contains("not withdrawn in time; lame duck anyway"),
        "{}",
        a.log()
    );
}

#[test]
fn a_rate_limit_is_waited_out_as_the_provider_asks() {
    let bind = Bind::start(ZONE);
    let fake = FakeDnsApi::start(Flavor::Linode, "fra1.nats.test", "tok", None);
    let scratch = natsmesh_harness::scratch();
    let token_file = scratch.path().join("token");
    natsmesh_harness::bind::write_private(&token_file, "tok\n");
    let publish = format!(
        "backend = \"linode\"\ntoken_file = \"{}\"\napi_url = \"{}\"\ngateway = false\n",
        token_file.display(),
        fake.url(),
    );
    let mut a = Daemon::start(CURRENT, node_opts(1, free_port(), &bind, &publish));
    a.wait_ready();
    wait_for("published", Duration::from_secs(20), || {
        fake.records().len() == 2
    });
    {
        let mut s = fake.state.lock().unwrap();
        s.rate_limited = 1;
        s.retry_after_secs = 3;
    }
    // Drain: the withdrawal meets the 429 and waits as long as it says.
    let asked = Instant::now();
    let out = a.cli(&["drain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("withdrawn after the wait", Duration::from_secs(20), || {
        fake.records().is_empty()
    });
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "retried before Retry-After: {took:?}"
    );
    let log = a.log();
    assert!(log.contains("429") && log.contains("retry_in=3."), "{log}");
}

#[test]
fn records_follow_serving_a_hung_broker_leaves_dns_and_returns() {
    let bind = Bind::start(ZONE);
    let mut a = node(1, free_port(), &bind);
    let pid = a.wait_ready().broker_pid.unwrap();
    wait_for("published", Duration::from_secs(20), || {
        srv_targets(&bind) == targets(&[1])
    });
    // The broker stops answering: out of service, out of DNS.
    common::signal(pid, "STOP");
    wait_for(
        "withdrawn while not serving",
        Duration::from_secs(20),
        || srv_targets(&bind).is_empty() && bind.dig(&host(1), "A").is_empty(),
    );
    // The hang is killed and a new broker serves: back in DNS.
    a.wait_status(
        "a new broker serves",
        |s| s.state == "ready" && s.broker_pid != Some(pid),
        Duration::from_secs(30),
    );
    wait_for("published again", Duration::from_secs(20), || {
        srv_targets(&bind) == targets(&[1]) && bind.dig(&host(1), "A") == vec![ip(1).to_string()]
    });
}

#[test]
fn a_record_deleted_behind_natsmeshds_back_is_restored() {
    let bind = Bind::start(ZONE);
    let port = free_port();
    let mut a = Daemon::start(
        CURRENT,
        node_opts(
            1,
            port,
            &bind,
            &format!("{}verify_every = \"10s\"\n", rfc2136(&bind)),
        ),
    );
    a.wait_ready();
    wait_for("published", Duration::from_secs(20), || {
        srv_targets(&bind) == targets(&[1])
    });
    bind.update(&[format!("update delete {SRV} SRV 10 10 {port} {}.", host(1))])
        .unwrap();
    assert!(srv_targets(&bind).is_empty());
    wait_for(
        "restored by the periodic check",
        Duration::from_secs(30),
        || srv_targets(&bind) == targets(&[1]),
    );
}

/// A node publishing through `flavor`'s API with a token file, no
/// gateway record, verified every 10 s (the least allowed).
fn api_node(
    flavor: &str,
    zone: &str,
    fake: &FakeDnsApi,
    bind: &Bind,
) -> (Daemon, tempfile::TempDir) {
    let scratch = natsmesh_harness::scratch();
    let token_file = scratch.path().join("token");
    natsmesh_harness::bind::write_private(&token_file, "tok\n");
    let publish = format!(
        "backend = \"{flavor}\"\nzone = \"{zone}\"\ntoken_file = \"{}\"\napi_url = \"{}\"\ngateway = false\nverify_every = \"10s\"\n",
        token_file.display(),
        fake.url(),
    );
    let a = Daemon::start(CURRENT, node_opts(1, free_port(), bind, &publish));
    (a, scratch)
}

#[test]
fn a_token_without_domain_create_withdraws_nothing_and_is_not_hammered() {
    let bind = Bind::start(ZONE);
    let fake = FakeDnsApi::start(Flavor::DigitalOcean, ZONE, "tok", None);
    let (mut a, _token) = api_node("digitalocean", ZONE, &fake, &bind);
    a.wait_ready();
    let has = |kind: &str| fake.records().iter().any(|r| r.kind == kind);
    wait_for("published", Duration::from_secs(20), || {
        has("A") && has("SRV")
    });
    // The token loses domain:create, and the address record goes behind
    // natsmeshd's back: the next verification's create is refused.
    let done = fake.requests().len();
    {
        let mut s = fake.state.lock().unwrap();
        s.forbidden.push("POST /v2/domains/".into());
        s.records.retain(|r| r.kind != "A");
    }
    wait_for("the refusal is reported", Duration::from_secs(15), || {
        a.status().is_some_and(|s| s.dns.contains("domain:create"))
    });
    let dns = a.status().unwrap().dns;
    assert!(
        dns.starts_with("publication failing via digitalocean")
            && dns.contains("403 You are not authorized to perform this operation (the token lacks the domain:create scope for this"),
        "{dns}"
    );
    let before = fake.requests().len();
    std::thread::sleep(Duration::from_secs(4));
    let requests = fake.requests();
    let creates = requests[before..]
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count();
    assert!(
        creates <= 2,
        "{creates} creates in 4 s: {:?}",
        &requests[before..]
    );
    // Nothing withdrawn: the route record stays, no delete was sent.
    assert!(has("SRV"), "{:?}", fake.records());
    assert!(
        !requests[done..].iter().any(|r| r.starts_with("DELETE")),
        "{:?}",
        &requests[done..]
    );
    assert_eq!(a.status().unwrap().state, "ready");
    // The scope is given back: restored on a later try.
    fake.state.lock().unwrap().forbidden.clear();
    wait_for("restored", Duration::from_secs(15), || {
        has("A") && has("SRV")
    });
    assert_eq!(fake.records().len(), 2, "{:?}", fake.records());
}

#[test]
fn a_read_only_linode_domains_token_is_reported_and_not_hammered() {
    let bind = Bind::start(ZONE);
    let zone = "fra1.nats.test";
    let fake = FakeDnsApi::start(Flavor::Linode, zone, "tok", None);
    {
        let mut s = fake.state.lock().unwrap();
        for m in ["POST", "PUT", "DELETE"] {
            s.forbidden.push(format!("{m} /v4/domains/"));
        }
    }
    let (mut a, _token) = api_node("linode", zone, &fake, &bind);
    a.wait_ready();
    wait_for("the refusal is reported", Duration::from_secs(15), || {
        a.status()
            .is_some_and(|s| s.dns.contains("domains:read_write"))
    });
    let dns = a.status().unwrap().dns;
    assert!(
        dns.contains("403 Unauthorized (the token lacks the domains:read_write scope for this)"),
        "{dns}"
    );
    let before = fake.requests().len();
    std::thread::sleep(Duration::from_secs(5));
    let requests = fake.requests();
    let writes = requests[before..]
        .iter()
        .filter(|r| !r.starts_with("GET"))
        .count();
    assert!(
        writes <= 3,
        "{writes} writes in 5 s: {:?}",
        &requests[before..]
    );
    assert!(fake.records().is_empty(), "{:?}", fake.records());
    assert_eq!(a.status().unwrap().state, "ready");
    assert!(a.log().contains("domains:read_write"), "{}", a.log());
}

/// The TXT records at `_nats-regions.nats.test`, unquoted, sorted.
fn listed_regions(bind: &Bind) -> Vec<String> {
    let mut v: Vec<String> = bind
        .dig("_nats-regions.nats.test", "TXT")
        .iter()
        .map(|l| l.trim_matches('"').to_owned())
        .collect();
    v.sort();
    v
}

/// A new supercluster needs no hand-made record: from an empty zone, each
/// region's serving node lists its region in `_nats-regions` (one TXT
/// record per region, once however many nodes try), the regions find each
/// other through it and link; a plain stop leaves the region listed, and
/// the decommission of a region's last node takes it out. nats-server
/// resolves the gateway names itself, so BIND answers on port 53 in the
/// nodes' own `resolv.conf`. On the oldest and the current release.
#[test]
fn the_regions_record_keeps_itself_from_an_empty_zone() {
    for version in natsmesh_harness::OLDEST_AND_CURRENT {
        regions_keep_themselves(version, None);
    }
}

/// The same through Linode's Domains API, where a region's route records
/// live in a Domain of their own (`fra1.nats.test`) and the regions record
/// in the domain's (`nats.test`): from no record at all in any of the
/// three Domains (the fake holding them, mirrored into BIND), each region
/// lists itself through the API, the regions link, and the decommission of
/// nyc3's last node deletes its record there and nothing else.
#[test]
fn the_regions_record_keeps_itself_through_linodes_domains_api() {
    let token = "linode-token-5b21";
    let scratch = natsmesh_harness::scratch();
    let token_file = scratch.path().join("token");
    natsmesh_harness::bind::write_private(&token_file, &format!("{token}\n"));
    let fake =
        regions_keep_themselves(CURRENT, Some((token, &token_file))).expect("the Linode fake");
    // Every write went through the Domain its name lives in: the TXT
    // records into nats.test's (1234), the routes into their region's.
    let s = fake.state.lock().unwrap();
    let txt: Vec<&serde_json::Value> = s.bodies.iter().filter(|b| b["type"] == "TXT").collect();
    assert_eq!(txt.len(), 2, "{txt:?}");
    assert!(txt.iter().all(|b| b["name"] == "_nats-regions"), "{txt:?}");
    let posts: Vec<&String> = s
        .requests
        .iter()
        .filter(|r| r.starts_with("POST"))
        .collect();
    assert_eq!(
        posts
            .iter()
            .filter(|r| **r == "POST /v4/domains/1234/records")
            .count(),
        2,
        "{posts:?}"
    );
    for (id, region) in [(1235, "fra1"), (1236, "nyc3")] {
        assert!(
            posts.contains(&&format!("POST /v4/domains/{id}/records")),
            "{region}: {posts:?}"
        );
    }
    // One DELETE in the domain's own Domain: nyc3's record, once.
    let deletes: Vec<&String> = s
        .requests
        .iter()
        .filter(|r| r.starts_with("DELETE /v4/domains/1234/"))
        .collect();
    assert_eq!(deletes.len(), 1, "{:?}", s.requests);
    assert!(
        !s.records.iter().any(|r| r.value.contains("nyc3")),
        "{:?}",
        s.records
    );
}

/// Two regions of one node each from an empty zone, publishing over RFC
/// 2136, or (`linode`: its token and token file) through Linode's Domains
/// API, whose fake this returns.
fn regions_keep_themselves(
    version: &str,
    linode: Option<(&str, &std::path::Path)>,
) -> Option<FakeDnsApi> {
    {
        let bind = Bind::start_on_port_53(ZONE, std::net::Ipv4Addr::LOCALHOST);
        assert!(listed_regions(&bind).is_empty(), "the zone starts empty");
        let fake = linode.map(|(token, _)| {
            FakeDnsApi::start_linode_domains(
                &[ZONE, "fra1.nats.test", "nyc3.nats.test"],
                token,
                Some(bind.writer()),
            )
        });
        let publish = |region: &str| match (&fake, linode) {
            (Some(f), Some((_, token_file))) => format!(
                "backend = \"linode\"\nzone = \"{region}.{ZONE}\"\ntoken_file = \"{}\"\napi_url = \"{}\"\n",
                token_file.display(),
                f.url()
            ),
            _ => rfc2136(&bind),
        };
        let dir = natsmesh_harness::scratch();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n",
        )
        .unwrap();
        let (route, gateway) = (free_port(), free_port());
        let node = |region: &str, octet: u8| {
            let ip = IpAddr::from([127, 0, octet, 1]);
            Options {
                extra: format!(
                    r#"[node]
name = "{region}-n1"
region = "{region}"
domain = "{ZONE}"

[broker.cluster]
enabled = true
bind = "{ip}"
port = {route}

[broker.gateway]
enabled = true
bind = "{ip}"
port = {gateway}

[broker.jetstream]
enabled = false

[discovery]
enabled = true
min_refresh = "300ms"
max_refresh = "1s"

[dns_publish]
ttl = "1s"
{publish}
"#,
                    publish = publish(region),
                ),
                resolv_conf: Some(resolv.clone()),
                ..Options::default()
            }
        };
        let mut fra1 = Daemon::start(version, node("fra1", 6));
        fra1.wait_ready();
        wait_for("fra1 listed", Duration::from_secs(20), || {
            listed_regions(&bind) == ["fra1"]
        });
        let mut nyc3 = Daemon::start(version, node("nyc3", 7));
        nyc3.wait_ready();
        wait_for(
            &format!("{version}: both regions listed, once each"),
            Duration::from_secs(20),
            || listed_regions(&bind) == ["fra1", "nyc3"],
        );
        // The regions found each other through the record alone.
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (a, b) = (
                fra1.monitor("/gatewayz").unwrap_or_default(),
                nyc3.monitor("/gatewayz").unwrap_or_default(),
            );
            if a["outbound_gateways"]["nyc3"].is_object()
                && b["outbound_gateways"]["fra1"].is_object()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{version}: regions not linked: {a}\n{b}\n{}\n{}",
                fra1.log(),
                nyc3.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }

        // The grown list of regions still needs a restart for fra1's
        // explicit gateways.
        fra1.wait_status(
            "restart pending for the new region",
            |s| s.restart_pending.iter().any(|p| p.contains("gateway")),
            Duration::from_secs(10),
        );

        // nyc3's last node leaves for good: its region leaves the list.
        let out = nyc3.cli(&["decommission"]);
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            nyc3.wait_exit(Duration::from_secs(90)).success(),
            "{}",
            nyc3.log()
        );
        wait_for(
            &format!("{version}: nyc3 delisted"),
            Duration::from_secs(10),
            || listed_regions(&bind) == ["fra1"],
        );
        assert!(nyc3.log().contains("taken out of the regions record"));
        // fra1 stops as any node does: its region stays listed.
        fra1.signal("TERM");
        assert!(fra1.wait_exit(Duration::from_secs(60)).success());
        assert_eq!(listed_regions(&bind), ["fra1"], "{version}");
        assert!(srv_targets(&bind).is_empty());
        fake
    }
}

/// A changed `[dns_publish]` is named by the reload as needing
/// `systemctl restart natsmeshd` beside the broker's keys it reloaded;
/// the records stay those natsmeshd runs with.
#[test]
fn a_changed_dns_publish_is_named_as_needing_a_restart_beside_what_reloaded() {
    let bind = Bind::start(ZONE);
    let mut a = node(1, free_port(), &bind);
    a.wait_ready();
    wait_for("published", Duration::from_secs(30), || {
        srv_targets(&bind) == targets(&[1])
    });
    // Unchanged files: nothing of natsmeshd's is reported as changed.
    let out = a.cli(&["reload", "--wait"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no change\n");
    std::fs::write(
        a.config_path().with_file_name("natsmesh.d/70-change.toml"),
        "[dns_publish]\nttl = \"7s\"\n\n[broker]\ndebug = true\n",
    )
    .unwrap();
    let out = a.cli(&["reload", "--wait"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(said.starts_with("reloaded (debug)"), "{said}");
    assert!(
        said.contains("needs `systemctl restart natsmeshd`: [dns_publish]"),
        "{said}"
    );
    assert_eq!(
        a.status().unwrap().natsmeshd_restart_pending,
        ["[dns_publish]"]
    );
    assert_eq!(srv_targets(&bind), targets(&[1]));
}

/// A serving node whose DNS publication fails (the provider answers 500,
/// then refuses the token with 401) is `degraded` with the reason, in
/// status, STATUS= and `natsmesh_degraded`; it keeps serving; once the
/// provider answers, plain ready.
#[test]
fn failing_publication_shows_degraded_until_published() {
    let bind = Bind::start(ZONE);
    let fake = FakeDnsApi::start(Flavor::DigitalOcean, ZONE, "tok", Some(bind.writer()));
    fake.state.lock().unwrap().fault = Fault::Status(500);
    let scratch = natsmesh_harness::scratch();
    let token_file = scratch.path().join("token");
    natsmesh_harness::bind::write_private(&token_file, "tok\n");
    let publish = format!(
        "backend = \"digitalocean\"\ntoken_file = \"{}\"\napi_url = \"{}\"\nwithdraw_timeout = \"2s\"\ngateway = false\n",
        token_file.display(),
        fake.url(),
    );
    let mut a = Daemon::start(CURRENT, node_opts(1, free_port(), &bind, &publish));
    a.wait_ready();
    for (fault, code) in [(Fault::Status(500), "500"), (Fault::Status(401), "401")] {
        fake.state.lock().unwrap().fault = fault;
        let s = a.wait_status(
            &format!("degraded by {code}"),
            |s| s.degraded && s.degraded_why.iter().any(|w| w.contains(code)),
            Duration::from_secs(30),
        );
        assert_eq!(s.state, "ready", "degraded is no supervisor state");
        assert!(
            s.degraded_why[0].starts_with("DNS: publication failing via digitalocean"),
            "{:?}",
            s.degraded_why
        );
        a.wait_metric("natsmesh_degraded", Duration::from_secs(10), |v| v == 1.0);
        assert!(
            a.wait_note(
                |l| l.starts_with("STATUS=degraded (DNS: publication failing"),
                Duration::from_secs(10)
            ),
            "{:?}",
            a.note_lines()
        );
    }
    fake.state.lock().unwrap().fault = Fault::None;
    a.wait_status(
        "plain ready once published",
        |s| !s.degraded && s.state == "ready",
        Duration::from_secs(90),
    );
    assert_eq!(srv_targets(&bind), targets(&[1]));
    a.wait_metric("natsmesh_degraded", Duration::from_secs(10), |v| v == 0.0);
}
