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
        srv_targets(&bind) == targets(&[1])
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
