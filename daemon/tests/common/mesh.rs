//! Regions on loopback addresses, each node of natsmeshd in a private
//! mount namespace whose `/etc/resolv.conf` names a real DNS server
//! (dnsmasq on port 53): the daemon's system resolver and nats-server's own
//! gateway lookups both go there. Needs root.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use natsmesh_harness::dns::{Dns, Records, require_root};
use natsmesh_harness::{CURRENT, free_port};

use super::{Daemon, Options};

pub const DOMAIN: &str = "nats.test";

/// One region: its name, the third octet of its nodes' addresses and how
/// many nodes it has.
#[derive(Clone, Copy)]
pub struct Region {
    pub name: &'static str,
    pub octet: u8,
    pub nodes: u8,
}

pub const FRA1: Region = Region {
    name: "fra1",
    octet: 11,
    nodes: 3,
};
pub const NYC3: Region = Region {
    name: "nyc3",
    octet: 12,
    nodes: 2,
};
pub const SGP1: Region = Region {
    name: "sgp1",
    octet: 13,
    nodes: 2,
};

pub fn ip(r: Region, n: u8) -> IpAddr {
    IpAddr::from([127, 0, r.octet, n])
}

pub struct Mesh {
    dns: Dns,
    resolv: PathBuf,
    _dir: tempfile::TempDir,
    pub route_port: u16,
    pub gateway_port: u16,
    pub nodes: BTreeMap<String, Daemon>,
    /// discovery.min_refresh and max_refresh of every node.
    pub refresh: (&'static str, &'static str),
    /// Log filter for the nodes (default: the tests' debug).
    pub log_level: Option<String>,
}

impl Mesh {
    pub fn new(regions: &[Region]) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-mesh-")
            .tempdir()
            .unwrap();
        // A nameserver address of this test's own, so that no other DNS
        // server on the machine is in the way.
        let ns = SocketAddr::new(IpAddr::from([127, 0, 10, 53]), 53);
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {}\noptions timeout:1 attempts:2\n", ns.ip()),
        )
        .unwrap();
        let route_port = free_port();
        let gateway_port = free_port();
        let dns = Dns::start_on(ns, &records(regions, route_port, gateway_port));
        Self {
            dns,
            resolv,
            _dir: dir,
            route_port,
            gateway_port,
            nodes: BTreeMap::new(),
            refresh: ("300ms", "1s"),
            log_level: None,
        }
    }

    pub fn publish(&mut self, regions: &[Region]) {
        self.dns
            .set(&records(regions, self.route_port, self.gateway_port));
    }

    pub fn start(&mut self, r: Region) {
        for n in 1..=r.nodes {
            self.start_node(r, n);
        }
    }

    /// Starts node `n` of region `r` (named `<region>-n<n>`).
    pub fn start_node(&mut self, r: Region, n: u8) {
        let d = Daemon::start(CURRENT, self.options(r, n));
        self.nodes.insert(format!("{}-n{n}", r.name), d);
    }

    /// Kills node `n` of region `r` at once (SIGKILL to natsmeshd; its
    /// broker follows it), keeping its state for [`Mesh::revive`].
    pub fn kill(&mut self, r: Region, n: u8) {
        let d = self.node(&format!("{}-n{n}", r.name));
        let broker = d.status().and_then(|s| s.broker_pid);
        d.signal("KILL");
        d.wait_exit(Duration::from_secs(10));
        if let Some(pid) = broker {
            let deadline = Instant::now() + Duration::from_secs(10);
            while super::alive(pid) {
                assert!(Instant::now() < deadline, "broker {pid} outlived natsmeshd");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts a killed node again on its old state.
    pub fn revive(&mut self, r: Region, n: u8) {
        let opts = self.options(r, n);
        let d = self.node(&format!("{}-n{n}", r.name));
        let dir = std::mem::replace(&mut d.dir, natsmesh_harness::scratch());
        *d = Daemon::start_in(dir, CURRENT, opts);
    }

    fn options(&self, r: Region, n: u8) -> Options {
        {
            let extra = format!(
                r#"[node]
name = "{region}-n{n}"
region = "{region}"
domain = "{DOMAIN}"

[broker.cluster]
enabled = true
bind = "{ip}"
port = {route}

[broker.gateway]
enabled = true
bind = "{ip}"
port = {gateway}

[discovery]
enabled = true
min_refresh = "{min}"
max_refresh = "{max}"

[health]
route_wait = "30s"
"#,
                region = r.name,
                ip = ip(r, n),
                route = self.route_port,
                gateway = self.gateway_port,
                min = self.refresh.0,
                max = self.refresh.1,
            );
            Options {
                extra,
                resolv_conf: Some(self.resolv.clone()),
                log_level: self.log_level.clone(),
                ..Options::default()
            }
        }
    }

    pub fn node(&mut self, name: &str) -> &mut Daemon {
        self.nodes.get_mut(name).unwrap()
    }

    /// Waits until every node of `r` routes to the rest of its region and
    /// has an outbound gateway to each of `others`.
    pub fn wait_joined(&mut self, r: Region, others: &[Region]) {
        for n in 1..=r.nodes {
            let name = format!("{}-n{n}", r.name);
            let d = self.node(&name);
            d.wait_status(
                &format!("{name} routes to its region"),
                |s| s.routes == Some(u64::from(r.nodes - 1)),
                Duration::from_secs(30),
            );
            wait_gateways(d, &name, others);
        }
    }

    pub fn pids(&mut self) -> BTreeMap<String, Option<u32>> {
        self.nodes
            .iter_mut()
            .map(|(k, d)| (k.clone(), d.status().unwrap().broker_pid))
            .collect()
    }
}

pub fn wait_gateways(d: &mut Daemon, name: &str, others: &[Region]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = d
            .monitor("/gatewayz")
            .and_then(|g| g["outbound_gateways"].as_object().cloned())
            .unwrap_or_default();
        if others.iter().all(|o| out.contains_key(o.name)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: outbound gateways {:?}, want {:?}\n{}",
            out.keys().collect::<Vec<_>>(),
            others.iter().map(|o| o.name).collect::<Vec<_>>(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The records natsmesh reads: per region the route SRV and each
/// server's address, the region's gateway name (every server's address),
/// and the list of regions.
pub fn records(regions: &[Region], route_port: u16, gateway_port: u16) -> Records {
    let _ = gateway_port; // the gateway port is in config; names carry no port
    let mut rec = Records::default();
    for r in regions {
        for n in 1..=r.nodes {
            let host = format!("n{n}.{}.{DOMAIN}", r.name);
            rec.srv.push((
                format!("_nats-route._tcp.{}.{DOMAIN}", r.name),
                host.clone(),
                route_port,
            ));
            rec.hosts.push((host, ip(*r, n)));
            rec.hosts.push((format!("{}.{DOMAIN}", r.name), ip(*r, n)));
        }
    }
    let names: Vec<_> = regions.iter().map(|r| r.name).collect();
    rec.txt
        .push((format!("_nats-regions.{DOMAIN}"), names.join(" ")));
    rec
}
