//! Load-balancer membership against a fake DigitalOcean Load Balancer that
//! follows the published API and models the real one: registration takes
//! effect after a propagation delay, its own HTTP health check (on
//! natsmeshd's readiness endpoint) takes nodes in and out after thresholds,
//! writes are refused while it applies an earlier change, and it proxies
//! TCP round robin to the nodes it considers in service, so a client
//! "behind the balancer" sees what a real user would.
//!
//! Modelled delays (every test): health check every 1 s, 2 successes in,
//! 2 failures out, 1 s timeout; changes propagate after 500 ms.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::fleet::{Fleet, LB, TOKEN, droplet_id, model, wait_for};
use common::{Daemon, Options};
use natsmesh_harness::fakes::do_lb::{DoLb, FakeDoLb};
use natsmesh_harness::fakes::openapi::{Spec, validate_request};
use natsmesh_harness::{CURRENT, free_port};

/// One connection through the balancer: the server's INFO line arrives.
fn connect_through(lb: &FakeDoLb) -> Result<String, String> {
    connect_through_addr(lb.frontend())
}

fn connect_through_addr(frontend: std::net::SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&frontend, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut line = String::new();
    BufReader::new(&mut s)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.starts_with("INFO ") {
        Ok(line)
    } else {
        Err(format!("no INFO: {line:?}"))
    }
}

/// Every request natsmeshd sent matches Linode's OpenAPI file.
fn assert_linode_requests_follow_the_spec(lb: &natsmesh_harness::fakes::linode_lb::FakeLinodeLb) {
    for (req, body) in lb.requests() {
        let (method, path) = req.split_once(' ').unwrap();
        validate_request(Spec::Linode, method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{req} {body:?}: {e}"));
    }
}

#[test]
fn a_node_joins_once_ready_and_leaves_before_lame_duck() {
    let fleet = Fleet::good(1);
    let mut a = fleet.node(1);
    a.wait_ready();
    fleet.wait_in_service(&[droplet_id(1)], "in service behind the balancer");
    assert_eq!(fleet.lb.registered(), vec![droplet_id(1)]);
    let info = connect_through(&fleet.lb).unwrap();
    assert!(
        info.contains("\"server_name\":\"digitalocean-fra1-"),
        "{info}"
    );
    let screen = a.status().unwrap().load_balancer;
    assert!(
        screen.starts_with("in digitalocean load balancer"),
        "{screen}"
    );

    let asked = Instant::now();
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        a.log()
    );
    assert!(fleet.lb.registered().is_empty());
    let log = a.log();
    let left = log.find("left the load balancer").expect("left");
    let lame_duck = log
        .find("Entering lame duck mode")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(left < lame_duck, "{log}");
    // The drain delay the health check implies: (1 s + 1 s) × 2.
    assert!(
        log.contains("waiting for its health check before lame duck") && log.contains("delay=4s"),
        "{log}"
    );
    assert!(asked.elapsed() >= Duration::from_secs(4));
    // systemd's STATUS says why the stop waits.
    let notes = a.note_lines();
    assert!(
        notes
            .iter()
            .any(|l| l.starts_with("STATUS=draining") && l.contains("drain delay 4s")),
        "{notes:?}"
    );
    assert!(!log.contains(TOKEN), "the token was logged");
    fleet.assert_requests_follow_the_spec();
}

/// At DigitalOcean's API defaults for the health check (every 10 s, 5 s
/// timeout, 5 failures out: a drain delay of (10 + 5) × 5 = 75 s, more
/// than the old fixed `stop_budget` of 60 s) and with a data plane that
/// keeps sending a removed droplet clients until its check fails, a node
/// stopped with SIGTERM at natsmeshd's defaults is out of service before
/// lame duck begins, and systemd is asked to wait for the whole stop. Only
/// the healthy threshold is lowered (2, not 5), so joining takes 20 s
/// instead of 50: it plays no part in leaving. About 100 s.
#[test]
fn at_the_api_default_health_check_a_stop_leaves_the_balancer_before_lame_duck() {
    let model = natsmesh_harness::fakes::lb::Model {
        check_interval: Duration::from_secs(10),
        response_timeout: Duration::from_secs(5),
        unhealthy_threshold: 5,
        healthy_threshold: 2,
        propagation: Duration::from_millis(500),
    };
    let fleet = Fleet::with_model(
        1,
        |client, ready| DoLb::tcp(LB, "fra1", client, ready).with_model(&model),
        model,
    );
    fleet.lb.pool().removal_waits_for_health();
    // No stop_budget: the default.
    let mut a = fleet.node(1);
    a.wait_ready();
    wait_for("in service", Duration::from_secs(60), || {
        fleet.lb.in_service() == vec![droplet_id(1)]
    });

    let asked = Instant::now();
    a.signal("TERM");
    let (mut out_at, mut lame_at) = (None, None);
    let deadline = asked + Duration::from_secs(200);
    while lame_at.is_none() && Instant::now() < deadline {
        if out_at.is_none() && fleet.lb.in_service().is_empty() {
            out_at = Some(asked.elapsed());
        }
        if a.log().contains("Entering lame duck mode") {
            lame_at = Some(asked.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        a.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        a.log()
    );
    let log = a.log();
    let out_at = out_at.unwrap_or_else(|| panic!("never out of service\n{log}"));
    let lame_at = lame_at.unwrap_or_else(|| panic!("no lame duck\n{log}"));
    println!("SIGTERM → out of service {out_at:?}, → lame duck {lame_at:?}");
    // The balancer stopped sending clients here before the broker began
    // turning them away; the drain delay was waited whole, not cut to 60 s.
    assert!(out_at < lame_at, "out {out_at:?}, lame duck {lame_at:?}");
    assert!(
        log.contains("delay=75s") && !log.contains("lame duck anyway"),
        "{log}"
    );
    assert!(lame_at >= Duration::from_secs(75), "{lame_at:?}");
    // systemd was told to wait past the unit's TimeoutStopSec for the
    // stop's own end: the drain delay and the allowance (90 s), this
    // test's lame duck (30 s), the stop margin (10 s) and SIGKILL's wait
    // (20 s).
    let notes = a.note_lines();
    let stopping = notes
        .iter()
        .position(|l| l == "STOPPING=1")
        .unwrap_or_else(|| panic!("{notes:?}"));
    let extends: Vec<u64> = notes[stopping..]
        .iter()
        .filter_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC=")?.parse().ok())
        .collect();
    assert!(extends.len() >= 2, "{notes:?}");
    assert!(extends[0] >= 150_000_000, "{extends:?}");
    // Each one reaches the same end, so each is shorter than the last.
    assert!(extends.windows(2).all(|w| w[1] < w[0]), "{extends:?}");
    fleet.assert_requests_follow_the_spec();
}

#[test]
fn the_first_join_after_start_does_not_wait_for_the_dwell() {
    let fleet = Fleet::good(1);
    let mut a = Daemon::start(CURRENT, fleet.options(1, "dwell = \"30s\""));
    a.wait_ready();
    // A fresh node takes clients as soon as it serves: well within the
    // 30 s a later change of state would have to hold.
    wait_for("registered at once", Duration::from_secs(10), || {
        fleet.lb.registered() == vec![droplet_id(1)]
    });
    fleet.wait_in_service(&[droplet_id(1)], "in service");
}

#[test]
fn a_hung_broker_leaves_the_balancer_and_returns() {
    let fleet = Fleet::good(1);
    let mut a = fleet.node(1);
    let pid = a.wait_ready().broker_pid.unwrap();
    wait_for("registered", Duration::from_secs(20), || {
        fleet.lb.registered() == vec![droplet_id(1)]
    });
    let registered = "natsmesh_load_balancer_registered";
    a.wait_metric(registered, Duration::from_secs(10), |v| v == 1.0);
    common::signal(pid, "STOP");
    // Bounded as wait_for, but a miss shows what natsmeshd saw and did.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !fleet.lb.registered().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: deregistered while not serving\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    a.wait_metric(registered, Duration::from_secs(10), |v| v == 0.0);
    a.wait_status(
        "a new broker serves",
        |s| s.state == "ready" && s.broker_pid != Some(pid),
        Duration::from_secs(30),
    );
    fleet.wait_in_service(&[droplet_id(1)], "back in service");
    connect_through(&fleet.lb).unwrap();
    a.wait_metric(registered, Duration::from_secs(10), |v| v == 1.0);
}

#[test]
fn a_misconfigured_balancer_is_never_joined_and_the_reason_is_given() {
    let monitoring = free_port();
    let fleet = Fleet::new(1, |client, ready| {
        let mut lb = DoLb::tcp(LB, "fra1", client, ready);
        // TLS terminated at the balancer, health check on the monitoring port.
        lb.forwarding_rules = vec![serde_json::json!({
            "entry_protocol": "https", "entry_port": 443, "target_protocol": "http",
            "target_port": client, "certificate_id": "cert", "tls_passthrough": false,
        })];
        lb.health_check["port"] = serde_json::json!(monitoring);
        lb
    });
    let mut opts = fleet.options(1, "");
    opts.extra
        .push_str(&format!("\n[broker.monitoring]\nport = {monitoring}\n"));
    let mut a = Daemon::start(CURRENT, opts);
    a.wait_ready();
    wait_for("the refusal is reported", Duration::from_secs(20), || {
        a.log().contains("not set up for NATS")
    });
    let line = a.status().unwrap().load_balancer;
    assert!(line.contains("must be tcp → tcp"), "{line}");
    assert!(
        line.contains(&format!("monitoring port {monitoring}")),
        "{line}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(fleet.lb.registered().is_empty(), "joined a wrong balancer");
}

#[test]
fn a_new_balancer_is_waited_for_and_an_errored_one_never_joined() {
    let fleet = Fleet::new(1, |client, ready| {
        let mut lb = DoLb::tcp(LB, "fra1", client, ready);
        lb.status = "new".into();
        lb
    });
    let mut a = fleet.node(1);
    a.wait_ready();
    wait_for("the wait is reported", Duration::from_secs(20), || {
        a.status()
            .is_some_and(|s| s.load_balancer.contains("still being created (status new)"))
    });
    assert!(
        fleet.lb.registered().is_empty(),
        "joined a balancer being created"
    );
    // Created: joined on a later read, without a restart.
    fleet.lb.state.lock().unwrap().lb.status = "active".into();
    fleet.wait_in_service(&[droplet_id(1)], "joined once active");
    drop(a);

    let fleet = Fleet::new(1, |client, ready| {
        let mut lb = DoLb::tcp(LB, "fra1", client, ready);
        lb.status = "errored".into();
        lb
    });
    let mut a = fleet.node(1);
    a.wait_ready();
    wait_for("the error is reported", Duration::from_secs(20), || {
        a.status()
            .is_some_and(|s| s.load_balancer.contains("status is errored"))
    });
    assert!(a.log().contains("status is errored"), "{}", a.log());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        fleet.lb.registered().is_empty(),
        "joined an errored balancer"
    );
}

#[test]
fn busy_and_rate_limited_answers_are_retried() {
    let fleet = Fleet::good(2);
    {
        let mut s = fleet.lb.state.lock().unwrap();
        s.rate_limited = 1;
        s.retry_after_secs = 1;
        // Long enough that the second droplet's add meets it.
        s.processing = Duration::from_secs(2);
    }
    // Two droplets join at once: one meets "can't be updated while it
    // processes previous actions" and tries again.
    let mut a = fleet.node(1);
    let mut b = fleet.node(2);
    a.wait_ready();
    b.wait_ready();
    fleet.wait_in_service(&[droplet_id(1), droplet_id(2)], "both in service");
    let log = format!("{}{}", a.log(), b.log());
    assert!(log.contains("429"), "no 429 met:\n{log}");
    assert!(
        log.contains("processes previous actions"),
        "no 403 while processing met:\n{log}"
    );
    fleet.assert_requests_follow_the_spec();
}

#[test]
fn a_jetstream_wide_outage_keeps_every_node_in() {
    // Two servers whose configured region has two more that never come:
    // no JetStream meta leader anywhere, clients still served.
    let fleet = Fleet::good(2);
    let (route, ghost1, ghost2) = (free_port(), free_port(), free_port());
    let cluster = format!(
        "\n[broker.cluster]\nenabled = true\nport = {route}\nroutes = [\"127.0.5.1:{route}\", \"127.0.5.2:{route}\", \"127.0.5.9:{ghost1}\", \"127.0.5.9:{ghost2}\"]\n\n[health]\nroute_wait = \"2s\"\n"
    );
    let mut a = Daemon::start(CURRENT, fleet.options(1, &cluster));
    let mut b = Daemon::start(CURRENT, fleet.options(2, &cluster));
    for d in [&mut a, &mut b] {
        d.wait_status(
            "serving without JetStream",
            |s| s.state == "ready" && s.jetstream.contains("not current"),
            Duration::from_secs(30),
        );
    }
    fleet.wait_in_service(&[droplet_id(1), droplet_id(2)], "both stay in");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fleet.lb.registered().len(),
        2,
        "a JetStream outage emptied the balancer"
    );
    connect_through(&fleet.lb).unwrap();
}

#[test]
fn a_rolling_restart_behind_the_balancer_fails_no_connection() {
    let fleet = Fleet::good(3);
    let mut nodes: Vec<Daemon> = (1..=3).map(|n| fleet.node(n)).collect();
    for d in &mut nodes {
        d.wait_ready();
    }
    fleet.wait_in_service(&[droplet_id(1), droplet_id(2), droplet_id(3)], "all in");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        let frontend = fleet.lb.frontend();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            // Bounded: one connection every 20 ms, two minutes at most.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let r = TcpStream::connect_timeout(&frontend, Duration::from_secs(2))
                    .map_err(|e| e.to_string())
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                        let mut line = String::new();
                        BufReader::new(&mut s)
                            .read_line(&mut line)
                            .map_err(|e| e.to_string())?;
                        if line.starts_with("INFO ") {
                            Ok(())
                        } else {
                            Err(format!("{line:?}"))
                        }
                    });
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };
    for (n, d) in (1u8..).zip(nodes.iter_mut()) {
        d.signal("TERM");
        assert!(d.wait_exit(Duration::from_secs(60)).success());
        let dir = std::mem::replace(&mut d.dir, natsmesh_harness::scratch());
        *d = Daemon::start_in(dir, CURRENT, fleet.options(n, ""));
        d.wait_ready();
        fleet.wait_in_service(
            &[droplet_id(1), droplet_id(2), droplet_id(3)],
            "back to three",
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    assert!(ok > 100, "too few connections to say anything: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
}

#[test]
fn a_linode_nodebalancer_node_joins_through_busy_answers_drains_on_stop_and_is_removed() {
    use natsmesh_harness::fakes::linode_lb::{FakeLinodeLb, LinodeNb};
    use natsmesh_harness::fakes::linode_metadata::{FakeLinodeMetadata, Linode};
    let client_port = free_port();
    let nb = LinodeNb::tcp(1_774_401, "eu-central", 2_706_113, 4222)
        .with_model(&model())
        .with_check("connection");
    let lb = FakeLinodeLb::start(TOKEN, nb, model());
    // Its first write meets "busy": retried.
    lb.state.lock().unwrap().busy = 1;
    let meta = FakeLinodeMetadata::start(Linode {
        id: 532_754_976,
        label: "nats-fra1-1".into(),
        region: "eu-central".into(),
        tags: Vec::new(),
        public_ipv4: Vec::new(),
        private_ipv4: vec!["127.0.5.21/17".into()],
        slaac: None,
    });
    let token = natsmesh_harness::scratch();
    natsmesh_harness::bind::write_private(&token.path().join("token"), &format!("{TOKEN}\n"));
    let extra = format!(
        r#"[node]
provider = "linode"

[node.metadata]
url = "{meta}"
timeout = "300ms"
retry_for = "5s"

[broker.client]
bind = "private"
port = {client_port}
advertise = "none"

[load_balancer]
provider = "linode"
id = "1774401"
token_file = "{token}"
api_url = "{api}"
ready_port = {ready}
dwell = "1s"
"#,
        meta = meta.url(),
        token = token.path().join("token").display(),
        api = lb.api_url(),
        ready = free_port(),
    );
    let mut a = Daemon::start(
        CURRENT,
        Options {
            extra,
            cloud: true,
            ..Options::default()
        },
    );
    a.wait_ready();
    let address = format!("127.0.5.21:{client_port}");
    wait_for(
        "in service behind the NodeBalancer",
        Duration::from_secs(30),
        || lb.in_service() == vec![address.clone()],
    );
    let node = lb.nodes().into_iter().next().unwrap();
    assert_eq!(node["mode"], "accept");
    let label = node["label"].as_str().unwrap().to_owned();
    assert!(label.starts_with("linode-"), "{label}");
    connect_through_addr(lb.frontend()).unwrap();

    // Stop: drain (no new connections), the drain delay, then the node goes.
    a.signal("TERM");
    wait_for("drained", Duration::from_secs(10), || {
        lb.nodes().first().is_some_and(|n| n["mode"] == "drain")
    });
    assert!(
        a.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        a.log()
    );
    assert!(lb.nodes().is_empty(), "{:?}", lb.nodes());
    let log = a.log();
    let left = log.find("left the load balancer").expect("left");
    let lame_duck = log
        .find("Entering lame duck mode")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(left < lame_duck, "{log}");
    assert!(!log.contains(TOKEN));
    assert!(log.contains("busy"), "the busy answer was not met:\n{log}");
    assert_linode_requests_follow_the_spec(&lb);
}

#[test]
fn a_nodebalancer_checking_http_on_the_nats_port_is_refused() {
    use natsmesh_harness::fakes::linode_lb::{FakeLinodeLb, LinodeNb};
    use natsmesh_harness::fakes::linode_metadata::{FakeLinodeMetadata, Linode};
    let nb = LinodeNb::tcp(1_774_401, "eu-central", 2_706_113, 4222).with_model(&model());
    let lb = FakeLinodeLb::start(TOKEN, nb, model());
    let meta = FakeLinodeMetadata::start(Linode {
        region: "eu-central".into(),
        private_ipv4: vec!["127.0.5.22/17".into()],
        ..Linode::default()
    });
    let token = natsmesh_harness::scratch();
    natsmesh_harness::bind::write_private(&token.path().join("token"), &format!("{TOKEN}\n"));
    let extra = format!(
        "[node]\nprovider = \"linode\"\n[node.metadata]\nurl = \"{}\"\ntimeout = \"300ms\"\nretry_for = \"5s\"\n[broker.client]\nbind = \"private\"\nport = {}\n[load_balancer]\nprovider = \"linode\"\nid = \"1774401\"\ntoken_file = \"{}\"\napi_url = \"{}\"\nready_port = {}\n",
        meta.url(),
        free_port(),
        token.path().join("token").display(),
        lb.api_url(),
        free_port()
    );
    let mut a = Daemon::start(
        CURRENT,
        Options {
            extra,
            cloud: true,
            ..Options::default()
        },
    );
    a.wait_ready();
    wait_for("the refusal", Duration::from_secs(20), || {
        a.status()
            .is_some_and(|s| s.load_balancer.contains("set check = \"connection\""))
    });
    assert!(lb.nodes().is_empty());
}

/// A Linode in a VPC: its node is its VPC address with the subnet id,
/// read through the API (the metadata service shows neither); a client
/// listener bound elsewhere is refused with the address to bind.
#[test]
fn a_linode_vpc_backend_is_its_vpc_address_and_subnet() {
    use natsmesh_harness::fakes::linode_lb::{FakeLinodeLb, LinodeNb, linode_ips};
    use natsmesh_harness::fakes::linode_metadata::{FakeLinodeMetadata, Linode};
    const LINODE: u64 = 532_754_977;
    let client_port = free_port();
    let nb = LinodeNb::tcp(1_774_401, "eu-central", 2_706_113, client_port)
        .with_model(&model())
        .with_check("connection");
    let lb = FakeLinodeLb::start(TOKEN, nb, model());
    // 127.0.5.33 stands for its VPC address (subnet 101); an inactive
    // interface in subnet 300 does not count.
    lb.state.lock().unwrap().linodes.insert(
        LINODE,
        linode_ips(
            LINODE,
            Some("127.0.5.23"),
            &[("127.0.5.33", 101, true), ("127.0.5.43", 300, false)],
        ),
    );
    let meta = FakeLinodeMetadata::start(Linode {
        id: LINODE,
        region: "eu-central".into(),
        private_ipv4: vec!["127.0.5.23/17".into()],
        ..Linode::default()
    });
    let token = natsmesh_harness::scratch();
    natsmesh_harness::bind::write_private(&token.path().join("token"), &format!("{TOKEN}\n"));
    let config = |bind: &str| {
        format!(
            "[node]\nprovider = \"linode\"\n[node.metadata]\nurl = \"{}\"\ntimeout = \"300ms\"\nretry_for = \"5s\"\n[broker.client]\nbind = \"{bind}\"\nport = {client_port}\nadvertise = \"none\"\n[load_balancer]\nprovider = \"linode\"\nid = \"1774401\"\nbackend = \"vpc\"\ntoken_file = \"{}\"\napi_url = \"{}\"\nready_port = {}\ndwell = \"1s\"\n",
            meta.url(),
            token.path().join("token").display(),
            lb.api_url(),
            free_port()
        )
    };
    let start = |extra: String| {
        Daemon::start(
            CURRENT,
            Options {
                extra,
                cloud: true,
                ..Options::default()
            },
        )
    };

    // Bound to the private address only: the VPC address gets nothing.
    let mut a = start(config("private"));
    a.wait_ready();
    wait_for("the refusal", Duration::from_secs(20), || {
        a.status().is_some_and(|s| {
            s.load_balancer
                .contains("VPC address 127.0.5.33, but broker.client.bind is 127.0.5.23")
        })
    });
    assert!(lb.nodes().is_empty(), "{:?}", lb.nodes());
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        a.log()
    );

    let mut a = start(config("127.0.5.33"));
    a.wait_ready();
    let address = format!("127.0.5.33:{client_port}");
    wait_for(
        "the VPC address in service",
        Duration::from_secs(30),
        || lb.in_service() == vec![address.clone()],
    );
    let node = lb.nodes().into_iter().next().unwrap();
    assert_eq!(node["address"], address.as_str());
    let created = lb
        .requests()
        .into_iter()
        .find(|(r, _)| r.starts_with("POST ") && r.ends_with("/nodes"))
        .and_then(|(_, body)| body)
        .expect("a node was created");
    assert_eq!(created["subnet_id"], 101, "{created}");
    connect_through_addr(lb.frontend()).unwrap();
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        a.log()
    );
    assert!(lb.nodes().is_empty(), "{:?}", lb.nodes());
    assert!(!a.log().contains(TOKEN));
    assert_linode_requests_follow_the_spec(&lb);
}

/// A balancer reaches droplets only in its own VPC: a droplet elsewhere
/// never joins, and the reason names both VPCs. A token that may not read
/// droplets leaves the check undone with a warning, and the node joins.
#[test]
fn a_droplet_in_another_vpc_is_never_joined() {
    let fleet = Fleet::good(2);
    const OTHER: &str = "5a4981aa-9653-4bd1-bef5-d6bff52042e4";
    fleet
        .lb
        .state
        .lock()
        .unwrap()
        .droplet_vpcs
        .insert(droplet_id(1), OTHER.into());
    let mut a = fleet.node(1);
    a.wait_ready();
    wait_for("the refusal", Duration::from_secs(20), || {
        a.status().is_some_and(|s| {
            s.load_balancer
                .contains(&format!("this droplet in VPC {OTHER}"))
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(fleet.lb.registered().is_empty(), "joined across VPCs");

    fleet.lb.state.lock().unwrap().droplet_read_forbidden = true;
    let mut b = fleet.node(2);
    b.wait_ready();
    fleet.wait_in_service(&[droplet_id(2)], "joined without the VPC check");
    assert!(b.log().contains("droplet:read"), "{}", b.log());
    fleet.assert_requests_follow_the_spec();
}

#[test]
fn a_tag_based_balancer_is_joined_through_its_tag() {
    const TAG: &str = "natsmesh:fra1";
    let fleet = Fleet::new(1, |client, ready| {
        DoLb::tcp(LB, "fra1", client, ready).with_tag(TAG)
    });
    fleet
        .lb
        .state
        .lock()
        .unwrap()
        .tags
        .insert(TAG.into(), Vec::new());
    fleet.lb.sync();
    let mut a = fleet.node(1);
    a.wait_ready();
    fleet.wait_in_service(&[droplet_id(1)], "in service through the tag");
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        a.log()
    );
    assert!(fleet.lb.registered().is_empty());
    let requests: Vec<String> = fleet.lb.requests().into_iter().map(|(r, _)| r).collect();
    let tag_path = format!("/v2/tags/{TAG}/resources");
    assert!(
        requests.contains(&format!("POST {tag_path}")),
        "{requests:?}"
    );
    assert!(
        requests.contains(&format!("DELETE {tag_path}")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.ends_with("/droplets")),
        "droplet ids sent to a tag-based balancer: {requests:?}"
    );
    fleet.assert_requests_follow_the_spec();
}

#[test]
fn a_refused_token_is_reported_not_hammered() {
    let fleet = Fleet::good(1);
    natsmesh_harness::bind::write_private(&fleet.token.path().join("token"), "dop_v1_wrong\n");
    let mut a = fleet.node(1);
    a.wait_ready();
    wait_for("the refusal", Duration::from_secs(20), || {
        a.log().contains("401")
    });
    let before = fleet.lb.requests().len();
    std::thread::sleep(Duration::from_secs(5));
    let more = fleet.lb.requests().len() - before;
    assert!(more <= 1, "{more} requests in 5 s after a 401");
    assert!(fleet.lb.registered().is_empty());
    let line = a.status().unwrap().load_balancer;
    assert!(line.contains("401"), "{line}");
}

#[test]
fn an_api_outage_at_stop_delays_lame_duck_by_the_budget_only() {
    let fleet = Fleet::good(1);
    let mut a = Daemon::start(CURRENT, fleet.options(1, "stop_budget = \"3s\"\n"));
    a.wait_ready();
    fleet.wait_in_service(&[droplet_id(1)], "in service");
    fleet.lb.state.lock().unwrap().fault = natsmesh_harness::fakes::Fault::Status(500);
    let asked = Instant::now();
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        a.log()
    );
    let took = asked.elapsed();
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(a.log().contains("lame duck anyway"), "{}", a.log());
}

/// When each answer of `answered` left, after the first 429: how many
/// requests came before `until` (the time the provider said to wait for).
fn early_after_first_429(
    answered: &[(std::time::SystemTime, u16)],
    wait: impl FnOnce(std::time::SystemTime) -> std::time::SystemTime,
) -> (usize, usize) {
    let first = answered
        .iter()
        .position(|(_, s)| *s == 429)
        .unwrap_or_else(|| panic!("no 429 answered: {answered:?}"));
    let until = wait(answered[first].0);
    let early = answered[first + 1..]
        .iter()
        .filter(|(t, _)| *t < until)
        .count();
    (early, answered.len() - first - 1)
}

/// A node that meets a DigitalOcean rate limit on its first read waits as
/// long as the 429 says, shows why meanwhile, then joins.
fn a_digitalocean_rate_limit_is_waited_out(exhausted_window: bool) {
    let fleet = Fleet::good(1);
    let reset = {
        let mut s = fleet.lb.state.lock().unwrap();
        if exhausted_window {
            // No retry-after: only ratelimit-reset (with remaining 0) says
            // when the hourly window frees a request.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            s.exhausted_until = Some(now + 4);
            std::time::UNIX_EPOCH + Duration::from_secs(now + 4)
        } else {
            s.rate_limited = 1;
            s.retry_after_secs = 3;
            std::time::UNIX_EPOCH
        }
    };
    let mut a = fleet.node(1);
    wait_for("the wait is reported", Duration::from_secs(10), || {
        a.status().is_some_and(|s| {
            s.load_balancer.contains("429 API rate limit exceeded")
                && s.load_balancer.contains("retrying in")
        })
    });
    a.wait_ready();
    fleet.wait_in_service(&[droplet_id(1)], "joined after the wait");
    assert_eq!(fleet.lb.registered(), vec![droplet_id(1)]);
    let answered = fleet.lb.state.lock().unwrap().answered.clone();
    let (early, after) = early_after_first_429(&answered, |first| {
        if exhausted_window {
            reset
        } else {
            first + Duration::from_secs(3)
        }
    });
    assert_eq!(
        early, 0,
        "asked again before the wait was over: {answered:?}"
    );
    assert!(after >= 3, "{answered:?}");
    // Only the first answer was a 429.
    assert_eq!(answered.iter().filter(|(_, s)| *s == 429).count(), 1);
    let screen = a.status().unwrap().load_balancer;
    assert!(
        screen.starts_with("in digitalocean load balancer"),
        "{screen}"
    );
    assert!(
        a.log().contains("cannot read the load balancer"),
        "{}",
        a.log()
    );
    fleet.assert_requests_follow_the_spec();
}

#[test]
fn a_digitalocean_burst_limit_is_waited_out_as_retry_after_says() {
    a_digitalocean_rate_limit_is_waited_out(false);
}

#[test]
fn a_digitalocean_exhausted_window_is_waited_out_until_ratelimit_reset() {
    a_digitalocean_rate_limit_is_waited_out(true);
}

#[test]
fn a_token_without_load_balancer_update_is_reported_not_hammered() {
    let fleet = Fleet::good(1);
    let add = format!("POST /v2/load_balancers/{LB}/droplets");
    fleet.lb.state.lock().unwrap().forbidden.push(add.clone());
    let mut a = fleet.node(1);
    a.wait_ready();
    wait_for("the refusal is reported", Duration::from_secs(20), || {
        a.status()
            .is_some_and(|s| s.load_balancer.contains("load_balancer:update"))
    });
    let first = Instant::now();
    let line = a.status().unwrap().load_balancer;
    assert!(
        line.contains("403 You are not authorized to perform this operation")
            && line.contains("the token lacks the load_balancer:update scope"),
        "{line}"
    );
    // Not joined, not claimed: the readiness endpoint keeps answering and
    // the broker serves on.
    assert!(fleet.lb.registered().is_empty());
    a.wait_metric(
        "natsmesh_load_balancer_registered",
        Duration::from_secs(5),
        |v| v == 0.0,
    );
    // The token is fixed: the next try (a refusal is retried after 15 s,
    // with a fresh read) joins. Until then, no more than that one read and
    // one write.
    let before = fleet.lb.requests().len();
    fleet.lb.state.lock().unwrap().forbidden.clear();
    fleet.wait_in_service(&[droplet_id(1)], "joined once the token may");
    let took = first.elapsed();
    assert!(
        took >= Duration::from_secs(12),
        "retried a refusal after {took:?}"
    );
    let requests = fleet.lb.requests();
    let writes = requests[before..].iter().filter(|(r, _)| *r == add).count();
    assert_eq!(writes, 1, "{:?}", &requests[before..]);
    assert!(requests.len() - before <= 4, "{:?}", &requests[before..]);
    assert_eq!(a.status().unwrap().state, "ready");
    fleet.assert_requests_follow_the_spec();
}

/// A node of one Linode behind a fake NodeBalancer with one TCP config
/// checked by `connection`.
struct LinodeSite {
    lb: natsmesh_harness::fakes::linode_lb::FakeLinodeLb,
    _meta: natsmesh_harness::fakes::linode_metadata::FakeLinodeMetadata,
    _token: tempfile::TempDir,
    client_port: u16,
    extra: String,
}

impl LinodeSite {
    fn new() -> Self {
        use natsmesh_harness::fakes::linode_lb::{FakeLinodeLb, LinodeNb};
        use natsmesh_harness::fakes::linode_metadata::{FakeLinodeMetadata, Linode};
        let client_port = free_port();
        let nb = LinodeNb::tcp(1_774_401, "eu-central", 2_706_113, 4222)
            .with_model(&model())
            .with_check("connection");
        let lb = FakeLinodeLb::start(TOKEN, nb, model());
        let meta = FakeLinodeMetadata::start(Linode {
            id: 532_754_976,
            label: "nats-fra1-1".into(),
            region: "eu-central".into(),
            tags: Vec::new(),
            public_ipv4: Vec::new(),
            private_ipv4: vec!["127.0.5.21/17".into()],
            slaac: None,
        });
        let token = natsmesh_harness::scratch();
        natsmesh_harness::bind::write_private(&token.path().join("token"), &format!("{TOKEN}\n"));
        let extra = format!(
            r#"[node]
provider = "linode"

[node.metadata]
url = "{meta}"
timeout = "300ms"
retry_for = "5s"

[broker.client]
bind = "private"
port = {client_port}
advertise = "none"

[load_balancer]
provider = "linode"
id = "1774401"
token_file = "{token}"
api_url = "{api}"
ready_port = {ready}
dwell = "1s"
"#,
            meta = meta.url(),
            token = token.path().join("token").display(),
            api = lb.api_url(),
            ready = free_port(),
        );
        Self {
            lb,
            _meta: meta,
            _token: token,
            client_port,
            extra,
        }
    }

    fn node(&self) -> Daemon {
        Daemon::start(
            CURRENT,
            Options {
                extra: self.extra.clone(),
                cloud: true,
                ..Options::default()
            },
        )
    }

    fn wait_in_service(&self, what: &str) {
        let address = format!("127.0.5.21:{}", self.client_port);
        wait_for(what, Duration::from_secs(30), || {
            self.lb.in_service() == vec![address.clone()]
        });
    }

    fn answered(&self) -> Vec<(std::time::SystemTime, u16)> {
        self.lb.state.lock().unwrap().answered.clone()
    }
}

#[test]
fn a_linode_rate_limit_is_waited_out_as_retry_after_says() {
    let site = LinodeSite::new();
    {
        let mut s = site.lb.state.lock().unwrap();
        s.rate_limited = 1;
        s.retry_after_secs = 3;
    }
    let mut a = site.node();
    wait_for("the wait is reported", Duration::from_secs(10), || {
        a.status().is_some_and(|s| {
            s.load_balancer.contains("429 Too many requests")
                && s.load_balancer.contains("retrying in")
        })
    });
    a.wait_ready();
    site.wait_in_service("joined after the wait");
    let answered = site.answered();
    let (early, after) = early_after_first_429(&answered, |first| first + Duration::from_secs(3));
    assert_eq!(early, 0, "asked again before Retry-After: {answered:?}");
    assert!(after >= 3, "{answered:?}");
    assert_eq!(site.lb.nodes().len(), 1, "{:?}", site.lb.nodes());
    assert_linode_requests_follow_the_spec(&site.lb);
}

#[test]
fn linode_maintenance_is_backed_off_reported_and_recovered_from() {
    let site = LinodeSite::new();
    site.lb.state.lock().unwrap().maintenance = true;
    let mut a = site.node();
    a.wait_ready();
    wait_for(
        "four tries met maintenance",
        Duration::from_secs(15),
        || site.answered().len() >= 4,
    );
    let line = a.status().unwrap().load_balancer;
    assert!(
        line.contains("503 the API is in planned maintenance (X-Maintenance-Mode)")
            && line.contains("retrying in"),
        "{line}"
    );
    site.lb.state.lock().unwrap().maintenance = false;
    let during = site.answered();
    // Backing off: each wait longer than the one before.
    let gaps: Vec<Duration> = during
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0).unwrap())
        .collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "not backing off: {gaps:?}"
    );
    assert!(during.iter().all(|(_, s)| *s == 503), "{during:?}");
    assert_eq!(a.status().unwrap().state, "ready");
    site.wait_in_service("joined once maintenance is over");
    assert_eq!(site.lb.nodes().len(), 1, "{:?}", site.lb.nodes());
    assert!(a.log().contains("planned maintenance"), "{}", a.log());
    assert_linode_requests_follow_the_spec(&site.lb);
}

#[test]
fn a_read_only_nodebalancer_token_is_reported_not_hammered() {
    let site = LinodeSite::new();
    {
        let mut s = site.lb.state.lock().unwrap();
        for m in ["POST", "PUT", "DELETE"] {
            s.forbidden.push(format!("{m} /v4/nodebalancers/"));
        }
    }
    let mut a = site.node();
    a.wait_ready();
    wait_for("the refusal is reported", Duration::from_secs(20), || {
        a.status()
            .is_some_and(|s| s.load_balancer.contains("nodebalancers:read_write"))
    });
    let line = a.status().unwrap().load_balancer;
    assert!(
        line.contains("403 Unauthorized (the token lacks the nodebalancers:read_write scope"),
        "{line}"
    );
    let before = site.lb.requests().len();
    std::thread::sleep(Duration::from_secs(6));
    let window: Vec<String> = site.lb.requests()[before..]
        .iter()
        .map(|(r, _)| r.clone())
        .collect();
    assert!(
        window.iter().filter(|r| r.starts_with("POST")).count() <= 1 && window.len() <= 7,
        "{window:?}"
    );
    assert!(site.lb.nodes().is_empty(), "{:?}", site.lb.nodes());
    let status = a.status().unwrap();
    assert_eq!(status.state, "ready");
    assert!(
        status.load_balancer.starts_with("change failing"),
        "{status:?}"
    );
    assert_linode_requests_follow_the_spec(&site.lb);
}

/// A reload names every natsmeshd setting it does not apply as needing
/// `systemctl restart natsmeshd` (never "no change"), says how the rest
/// was applied, and keeps saying it until natsmeshd restarts; the node
/// stays in the balancer it runs with.
#[test]
fn a_changed_balancer_id_is_named_as_needing_a_restart_never_no_change() {
    let fleet = Fleet::good(1);
    let mut a = fleet.node(1);
    a.wait_ready();
    fleet.wait_in_service(&[droplet_id(1)], "in service");
    let dropin = a.config_path().with_file_name("natsmesh.d/70-lb.toml");
    std::fs::write(
        &dropin,
        "[load_balancer]\nid = \"0b3c0b3c-495b-4884-9a69-1050c6793cd6\"\n\n[health]\ninterval = \"300ms\"\n",
    )
    .unwrap();
    for round in ["first", "second"] {
        let out = a.cli(&["reload", "--wait"]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{round}: {out:?}");
        assert!(
            said.contains("needs `systemctl restart natsmeshd`: [load_balancer]"),
            "{round}: {said}"
        );
        assert!(!said.starts_with("no change\n"), "{round}: {said}");
        if round == "first" {
            assert!(
                said.starts_with("no change to the broker")
                    && said.contains("applied by natsmeshd: [health]"),
                "{said}"
            );
        }
        let s = a.status().unwrap();
        assert_eq!(s.natsmeshd_restart_pending, ["[load_balancer]"], "{round}");
    }
    let screen = String::from_utf8_lossy(&a.cli(&["status"]).stdout).into_owned();
    assert!(
        screen.contains("needs `systemctl restart natsmeshd`: [load_balancer]"),
        "{screen}"
    );
    // Still a member of the balancer it runs with.
    assert_eq!(fleet.lb.registered(), vec![droplet_id(1)]);
    // Taken back: nothing waits for a restart any more.
    std::fs::remove_file(&dropin).unwrap();
    let out = a.cli(&["reload", "--wait"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("applied by natsmeshd: [health]"), "{said}");
    assert!(!said.contains("needs `systemctl restart"), "{said}");
    assert!(a.status().unwrap().natsmeshd_restart_pending.is_empty());
}

/// A serving node whose balancer id answers 404 is `degraded` (status,
/// `--json`, STATUS=, `natsmesh_degraded`) with the reason, not "ready";
/// serving does not follow it; once the id answers, plain ready again.
#[test]
fn a_balancer_answering_404_shows_degraded_until_it_answers() {
    let fleet = Fleet::good(1);
    fleet.lb.state.lock().unwrap().lb.id = "0b3c0b3c-495b-4884-9a69-1050c6793cd6".into();
    let mut a = fleet.node(1);
    a.wait_ready();
    let s = a.wait_status(
        "degraded with the reason",
        |s| s.degraded,
        Duration::from_secs(20),
    );
    assert_eq!(s.state, "ready", "degraded is no supervisor state");
    assert_eq!(s.degraded_why.len(), 1, "{:?}", s.degraded_why);
    assert!(
        s.degraded_why[0].starts_with("load balancer: cannot read digitalocean load balancer")
            && s.degraded_why[0].contains("404"),
        "{:?}",
        s.degraded_why
    );
    let screen = String::from_utf8_lossy(&a.cli(&["status"]).stdout).into_owned();
    assert!(
        screen.starts_with("degraded (load balancer: cannot read"),
        "{screen}"
    );
    a.wait_metric("natsmesh_degraded", Duration::from_secs(10), |v| v == 1.0);
    assert!(
        a.wait_note(
            |l| l.starts_with("STATUS=degraded (load balancer: cannot read"),
            Duration::from_secs(10)
        ),
        "{:?}",
        a.note_lines()
    );
    // Still serving its clients directly.
    connect_through_addr(std::net::SocketAddr::new(
        common::fleet::ip(1),
        fleet.client_port,
    ))
    .unwrap();
    // The balancer answers again (read again within 15 s): joined, ready.
    fleet.lb.state.lock().unwrap().lb.id = LB.into();
    let s = a.wait_status(
        "plain ready again",
        |s| !s.degraded && s.load_balancer.starts_with("in digitalocean load balancer"),
        Duration::from_secs(40),
    );
    assert!(s.degraded_why.is_empty());
    fleet.wait_in_service(&[droplet_id(1)], "in service");
    a.wait_metric("natsmesh_degraded", Duration::from_secs(10), |v| v == 0.0);
    assert!(
        a.wait_note(|l| l.starts_with("STATUS=ready: "), Duration::from_secs(10)),
        "{:?}",
        a.note_lines()
    );
}
