//! Regions of natsmeshd nodes found through a real DNS server (dnsmasq on
//! port 53), each node in a private mount namespace whose
//! `/etc/resolv.conf` names it: the daemon's system resolver and
//! nats-server's own gateway lookups both go there. Needs root.
//!
//! Two placements. [`Mesh::new`]: every node on its own loopback address
//! (cheap, but every connection comes from 127.0.0.1, so no firewall can
//! tell regions apart). [`Mesh::in_namespaces`]: every node its own network
//! namespace on one LAN (`natsmesh_harness::netns::Lan`), and the gateway
//! address each node advertises (and its region's DNS name) points at a
//! delaying TCP proxy in front of it, so links between regions have
//! latency and can be cut with nftables in the nodes' namespaces.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use natsmesh_harness::delay::DelayProxy;
use natsmesh_harness::dns::{Dns, Records, require_root};
use natsmesh_harness::fakes::do_lb::{DoLb, FakeDoLb};
use natsmesh_harness::fakes::do_metadata::{Droplet, FakeDoMetadata};
use natsmesh_harness::fakes::lb::Model;
use natsmesh_harness::netns::Lan;
use natsmesh_harness::netns::Relay;
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

/// The "public" networks of [`Mesh::public_gateways`] (documentation
/// ranges: in no intermediate's default ranges).
const PUBLIC_NETS: [std::net::Ipv4Addr; 2] = [
    std::net::Ipv4Addr::new(198, 51, 100, 0),
    std::net::Ipv4Addr::new(203, 0, 113, 0),
];

/// Most nodes a region may have in [`Mesh::in_namespaces`].
pub const MAX_NODES: u8 = 4;

/// Nodes in namespaces on a LAN, with delaying proxies in front of their
/// gateways.
struct Net {
    lan: Lan,
    /// Regions in LAN order: region `i`'s node `n` is host `i * 4 + n`.
    order: Vec<&'static str>,
    /// One-way delay into each region's gateways.
    latency: BTreeMap<&'static str, Duration>,
    proxies: BTreeMap<String, DelayProxy>,
    /// A region behind a DigitalOcean Load Balancer (see
    /// [`Mesh::balance`]).
    balanced: Option<Balanced>,
    /// With [`Mesh::public_gateways`]: gateways on "public" addresses of
    /// their own, without proxies.
    public: bool,
}

/// A region whose droplets (metadata services at 169.254.169.254 in their
/// namespaces) are behind one fake DigitalOcean Load Balancer.
struct Balanced {
    region: &'static str,
    lb: FakeDoLb,
    token: PathBuf,
    metadata: Vec<FakeDoMetadata>,
    relays: Vec<Relay>,
}

/// The balanced region's balancer; the client port of its nodes and
/// natsmeshd's readiness port (the balancer's health check).
pub const LB_ID: &str = "8c4e1b0a-6f0d-4d5e-9a4b-2f3c1d7e5a90";
pub const LB_TOKEN: &str = "dop_v1_drill-lb-0b5e55ed";
pub const BALANCED_CLIENT_PORT: u16 = 4222;
pub const READY_PORT: u16 = 8223;

/// The droplet id of the node on LAN host `h`.
fn droplet_id(h: u8) -> u64 {
    5_100_000 + u64::from(h)
}

impl Net {
    fn host(&self, r: Region, n: u8) -> u8 {
        let i = self
            .order
            .iter()
            .position(|o| *o == r.name)
            .expect("a region of the mesh");
        assert!((1..=MAX_NODES).contains(&n), "node {n} of {}", r.name);
        u8::try_from(i).expect("regions") * MAX_NODES + n
    }

    /// Host `h`'s "public" address (see [`Mesh::public_gateways`]).
    fn public(&self, h: u8) -> std::net::Ipv4Addr {
        let region = usize::from((h - 1) / MAX_NODES);
        let [a, b, c, _] = PUBLIC_NETS[usize::from(region >= 2)].octets();
        std::net::Ipv4Addr::new(a, b, c, h)
    }

    /// The proxy in front of host `h`'s gateway.
    fn proxy(&self, h: u8) -> std::net::Ipv4Addr {
        let [a, b, c, _] = self.lan.gateway().octets();
        std::net::Ipv4Addr::new(a, b, c, 100 + h)
    }
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
    /// Appended to every node's drop-in.
    pub extra: String,
    /// Every node at the product's defaults where the tests speed things
    /// up (lame duck, probes, discovery refresh, route wait, metadata
    /// timeouts, the balancer's dwell): see [`Options::defaults`].
    pub defaults: bool,
    /// Nodes taken out for good: left out of DNS.
    pub retired: std::collections::BTreeSet<String>,
    /// Nodes whose state directory (the JetStream store with it) is
    /// elsewhere than their scratch directory, e.g. on a filesystem that
    /// can lose power (`common::power`).
    pub state_dirs: BTreeMap<String, PathBuf>,
    /// The broker every node runs instead of the cached one (without
    /// [`Mesh::own_binaries`]), e.g. a wrapper that adds a setting
    /// natsmeshd does not render.
    pub broker_binary: Option<PathBuf>,
    /// With [`Mesh::own_binaries`], every node's own copies of natsmeshd
    /// and nats-server (`<dir>/<node>/`), for upgrades.
    bins: Option<tempfile::TempDir>,
    natsmeshd: Option<PathBuf>,
    /// With [`Mesh::secure`]: a root and one intermediate per region, from
    /// which every node issues its own certificate.
    pki: Option<super::pki::Pki>,
    /// Last: the nodes (above) go before their namespaces.
    net: Option<Net>,
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
        Self::with(regions, dir, ns, None)
    }

    /// Every node in its own network namespace on LAN `index`; gateways
    /// reached through proxies that delay each direction by the region's
    /// entry in `latency` (so a round trip into region R costs twice R's).
    pub fn in_namespaces(
        regions: &[Region],
        index: u8,
        latency: &[(&'static str, Duration)],
    ) -> Self {
        require_root();
        natsmesh_harness::require_tools(&["nft"], "nftables");
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-mesh-")
            .tempdir()
            .unwrap();
        let lan = Lan::new(index, u8::try_from(regions.len()).unwrap() * MAX_NODES);
        let ns = SocketAddr::new(IpAddr::V4(lan.gateway()), 53);
        let net = Net {
            lan,
            order: regions.iter().map(|r| r.name).collect(),
            latency: latency.iter().copied().collect(),
            proxies: BTreeMap::new(),
            balanced: None,
            public: false,
        };
        Self::with(regions, dir, ns, Some(net))
    }

    fn with(regions: &[Region], dir: tempfile::TempDir, ns: SocketAddr, net: Option<Net>) -> Self {
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {}\noptions timeout:1 attempts:2\n", ns.ip()),
        )
        .unwrap();
        let route_port = free_port();
        let gateway_port = free_port();
        let dns = Dns::start_on(ns, &Records::default());
        let mut mesh = Self {
            dns,
            net,
            resolv,
            _dir: dir,
            route_port,
            gateway_port,
            nodes: BTreeMap::new(),
            refresh: ("300ms", "1s"),
            log_level: None,
            extra: String::new(),
            defaults: false,
            retired: std::collections::BTreeSet::new(),
            state_dirs: BTreeMap::new(),
            broker_binary: None,
            bins: None,
            natsmeshd: None,
            pki: None,
        };
        mesh.publish(regions);
        mesh
    }

    /// Puts region `r` behind a fake DigitalOcean Load Balancer (before
    /// its nodes start): its nodes learn who they are from their droplets'
    /// metadata services and keep themselves in the balancer while they
    /// serve. Needs [`Mesh::in_namespaces`].
    pub fn balance(&mut self, r: Region) {
        self.balance_with(r, super::fleet::model(), Duration::from_millis(300));
    }

    /// [`Mesh::balance`] with the balancer's data plane as `model` (the
    /// API shows its health check) and `processing` after each write, as
    /// DigitalOcean's "processing previous actions" window.
    pub fn balance_with(&mut self, r: Region, model: Model, processing: Duration) {
        let dir = self._dir.path().to_owned();
        let net = self
            .net
            .as_mut()
            .expect("balance needs Mesh::in_namespaces");
        let droplets = (1..=MAX_NODES)
            .map(|n| {
                let h = net.host(r, n);
                (droplet_id(h), IpAddr::V4(net.lan.host(h)))
            })
            .collect();
        let lb = FakeDoLb::start(
            LB_TOKEN,
            DoLb::tcp(LB_ID, r.name, BALANCED_CLIENT_PORT, READY_PORT).with_model(&model),
            droplets,
            model,
        );
        lb.state.lock().unwrap().processing = processing;
        let [a, b, c, _] = net.lan.gateway().octets();
        lb.pool().allow_network(IpAddr::from([a, b, c, 0]), 24);
        let token = dir.join("lb.token");
        natsmesh_harness::bind::write_private(&token, &format!("{LB_TOKEN}\n"));
        net.balanced = Some(Balanced {
            region: r.name,
            lb,
            token,
            metadata: Vec::new(),
            relays: Vec::new(),
        });
    }

    /// The balancer of [`Mesh::balance`].
    pub fn balancer(&self) -> &FakeDoLb {
        &self.balanced().expect("a balanced region").lb
    }

    fn balanced(&self) -> Option<&Balanced> {
        self.net.as_ref().and_then(|n| n.balanced.as_ref())
    }

    fn is_balanced(&self, r: Region) -> bool {
        self.balanced().is_some_and(|b| b.region == r.name)
    }

    /// Node `n` of region `r`'s server name (a balanced region's droplets
    /// are named by natsmeshd from their metadata).
    pub fn server_name(&self, r: Region, n: u8) -> String {
        match &self.net {
            Some(net) if self.is_balanced(r) => {
                format!("digitalocean-{}-{}", r.name, droplet_id(net.host(r, n)))
            }
            _ => format!("{}-n{n}", r.name),
        }
    }

    /// Node `n` of region `r`'s address.
    pub fn addr(&self, r: Region, n: u8) -> IpAddr {
        match &self.net {
            None => ip(r, n),
            Some(net) => IpAddr::V4(net.lan.host(net.host(r, n))),
        }
    }

    /// The address other regions reach node `n` of `r`'s gateway at.
    pub fn gateway_addr(&self, r: Region, n: u8) -> IpAddr {
        match &self.net {
            None => ip(r, n),
            Some(net) if net.public => IpAddr::V4(net.public(net.host(r, n))),
            Some(net) => IpAddr::V4(net.proxy(net.host(r, n))),
        }
    }

    /// Gives every node a "public" address of its own for its gateway, as
    /// a droplet has: in documentation ranges no intermediate was issued
    /// for (the first two regions' in 198.51.100.0/24, the others' in
    /// 203.0.113.0/24, on-link to each other), bound by the gateway and
    /// published as the region's name; the gateway advertises nothing, so
    /// natsmeshd's default (the region's name) holds. No proxies.
    pub fn public_gateways(&mut self) {
        let net = self
            .net
            .as_mut()
            .expect("public_gateways needs Mesh::in_namespaces");
        net.public = true;
        let hosts = u8::try_from(net.order.len()).unwrap() * MAX_NODES;
        for h in 1..=hosts {
            let own = net.public(h);
            let mut ops: Vec<Vec<String>> = vec![vec![
                "addr".into(),
                "add".into(),
                format!("{own}/24"),
                "dev".into(),
                "eth0".into(),
            ]];
            for other in PUBLIC_NETS {
                if other.octets()[..3] != own.octets()[..3] {
                    ops.push(vec![
                        "route".into(),
                        "add".into(),
                        format!("{other}/24"),
                        "dev".into(),
                        "eth0".into(),
                    ]);
                }
            }
            for op in ops {
                let mut args = vec!["ip"];
                args.extend(op.iter().map(String::as_str));
                let out = net.lan.exec(h, &args);
                assert!(
                    out.status.success(),
                    "{args:?} on host {h}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// Puts `regions` (with their node counts) in DNS: per region the
    /// route SRV and each server's address, the region's gateway name
    /// (every server's gateway address), and the list of regions.
    pub fn publish(&mut self, regions: &[Region]) {
        let mut rec = Records::default();
        for r in regions {
            for n in 1..=r.nodes {
                if self.retired.contains(&format!("{}-n{n}", r.name)) {
                    continue;
                }
                let host = format!("n{n}.{}.{DOMAIN}", r.name);
                rec.srv.push((
                    format!("_nats-route._tcp.{}.{DOMAIN}", r.name),
                    host.clone(),
                    self.route_port,
                ));
                rec.hosts.push((host, self.addr(*r, n)));
                rec.hosts
                    .push((format!("{}.{DOMAIN}", r.name), self.gateway_addr(*r, n)));
            }
        }
        let names: Vec<_> = regions.iter().map(|r| r.name).collect();
        rec.txt
            .push((format!("_nats-regions.{DOMAIN}"), names.join(" ")));
        self.dns.set(&rec);
    }

    pub fn start(&mut self, r: Region) {
        for n in 1..=r.nodes {
            self.start_node(r, n);
        }
    }

    /// Starts node `n` of region `r` (named `<region>-n<n>`).
    pub fn start_node(&mut self, r: Region, n: u8) {
        self.start_node_with(r, n, CURRENT);
    }

    /// Starts node `n` of region `r` with broker `version`.
    pub fn start_node_with(&mut self, r: Region, n: u8, version: &str) {
        let gateway_port = self.gateway_port;
        if let Some(net) = self.net.as_mut().filter(|net| !net.public) {
            let h = net.host(r, n);
            let (proxy, node) = (net.proxy(h), net.lan.host(h));
            let one_way = net.latency.get(r.name).copied().unwrap_or_default();
            if !net.proxies.contains_key(&format!("{}-n{n}", r.name)) {
                net.lan.add_own(proxy);
                net.proxies.insert(
                    format!("{}-n{n}", r.name),
                    DelayProxy::start(
                        SocketAddr::new(proxy.into(), gateway_port),
                        SocketAddr::new(node.into(), gateway_port),
                        one_way,
                    ),
                );
            }
        }
        if let Some(bins) = &self.bins {
            let dir = bins.path().join(format!("{}-n{n}", r.name));
            std::fs::create_dir_all(&dir).unwrap();
            let natsmeshd = self
                .natsmeshd
                .clone()
                .unwrap_or_else(|| super::NATSMESHD.into());
            std::fs::copy(natsmeshd, dir.join("natsmeshd")).unwrap();
            std::fs::copy(
                natsmesh_harness::broker_binary(version),
                dir.join("nats-server"),
            )
            .unwrap();
        }
        if self.is_balanced(r) {
            let net = self.net.as_mut().unwrap();
            let h = net.host(r, n);
            let addr = net.lan.host(h);
            let netns = net.lan.netns(h);
            let b = net.balanced.as_mut().unwrap();
            let meta = FakeDoMetadata::start(Droplet {
                id: droplet_id(h),
                hostname: format!("{}-n{n}", r.name),
                region: r.name.into(),
                private_ipv4: Some(addr.to_string()),
                public_ipv4: None,
                public_ipv6: None,
                tags: Vec::new(),
            });
            net.lan.add_local(h, "169.254.169.254/32");
            let api = super::cloud::addr_of(&b.lb.api_url());
            b.relays.push(Relay::start(
                netns.clone(),
                SocketAddr::from(([169, 254, 169, 254], 80)),
                super::cloud::addr_of(&meta.url()),
            ));
            b.relays.push(Relay::start(netns, api, api));
            b.metadata.push(meta);
        }
        let d = Daemon::start(version, self.options(r, n));
        self.nodes.insert(format!("{}-n{n}", r.name), d);
    }

    /// TLS everywhere, as a cloud node runs it: a root (`root/root.crt`)
    /// and an intermediate per region in `regions`; every node started
    /// from now on issues its certificate from its region's, and routes,
    /// gateways and clients (on its LAN address) require TLS.
    pub fn secure(&mut self, regions: &[Region]) {
        let pki = super::pki::Pki::new();
        pki.root("root");
        for r in regions {
            pki.intermediate("root", r.name, r.name);
        }
        self.pki = Some(pki);
    }

    /// The root clients trust, with [`Mesh::secure`].
    pub fn root_ca(&self) -> Option<PathBuf> {
        self.pki.as_ref().map(|p| p.path("root/root.crt"))
    }

    /// A node's `[tls]` with [`Mesh::secure`].
    fn tls_config(&self, r: Region) -> String {
        let (Some(pki), Some(root)) = (&self.pki, self.root_ca()) else {
            return String::new();
        };
        let issue = super::pki::issue_config(
            &root,
            &pki.path(&format!("{0}/{0}.crt", r.name)),
            &pki.path(&format!("{0}/{0}.key", r.name)),
            "1h",
        );
        format!("\n{issue}")
    }

    /// Gives every node started from now on its own copies of natsmeshd
    /// (`natsmeshd`, default the one cargo built) and its broker, which
    /// [`Mesh::replace_binary`] upgrades.
    pub fn own_binaries(&mut self, natsmeshd: Option<PathBuf>) {
        self.bins = Some(
            tempfile::Builder::new()
                .prefix("natsmesh-bins-")
                .tempdir()
                .unwrap(),
        );
        self.natsmeshd = natsmeshd;
    }

    /// Installs `from` over `node`'s copy of `name` (`natsmeshd` or
    /// `nats-server`) as a package manager does: written beside it,
    /// renamed over it.
    pub fn replace_binary(&self, node: &str, name: &str, from: &std::path::Path) {
        let dir = self.bins.as_ref().expect("own_binaries").path().join(node);
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
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
        let version = d.version.clone();
        *d = Daemon::start_in(dir, &version, opts);
    }

    fn options(&self, r: Region, n: u8) -> Options {
        {
            let extra = format!(
                r#"[node]
{identity}
region = "{region}"
domain = "{DOMAIN}"

[broker.cluster]
enabled = true
bind = "{ip}"
port = {route}

[broker.gateway]
enabled = true
{gateway_block}

[discovery]
enabled = true
{refresh}"#,
                region = r.name,
                identity = if self.is_balanced(r) {
                    "provider = \"digitalocean\"".to_owned()
                } else {
                    format!("name = \"{}-n{n}\"", r.name)
                },
                ip = self.addr(r, n),
                gateway_block = if self.net.as_ref().is_some_and(|net| net.public) {
                    format!(
                        "bind = \"{}\"\nport = {}",
                        self.gateway_addr(r, n),
                        self.gateway_port
                    )
                } else {
                    format!(
                        "bind = \"{}\"\nport = {gw}\nadvertise = \"{}:{gw}\"",
                        self.addr(r, n),
                        self.gateway_addr(r, n),
                        gw = self.gateway_port
                    )
                },
                route = self.route_port,
                refresh = if self.defaults {
                    String::new()
                } else {
                    format!(
                        "min_refresh = \"{}\"\nmax_refresh = \"{}\"\n\n[health]\nroute_wait = \"30s\"\n",
                        self.refresh.0, self.refresh.1
                    )
                },
            ) + &self.balancer_config(r)
                + &self.tls_config(r)
                + &self.extra
                + &self
                    .state_dirs
                    .get(&format!("{}-n{n}", r.name))
                    .map_or_else(String::new, |d| {
                        format!("\n[broker]\nstate_dir = \"{}\"\n", d.display())
                    });
            let bins = self
                .bins
                .as_ref()
                .map(|b| b.path().join(format!("{}-n{n}", r.name)));
            Options {
                extra,
                binary: bins
                    .as_ref()
                    .map(|d| d.join("nats-server"))
                    .or_else(|| self.broker_binary.clone()),
                natsmeshd: bins.as_ref().map(|d| d.join("natsmeshd")),
                resolv_conf: Some(self.resolv.clone()),
                log_level: self.log_level.clone(),
                netns: self
                    .net
                    .as_ref()
                    .map(|net| net.lan.name(net.host(r, n)).to_owned()),
                host: self.net.as_ref().map(|_| self.addr(r, n)),
                cloud: self.is_balanced(r),
                client_port: self.is_balanced(r).then_some(BALANCED_CLIENT_PORT),
                defaults: self.defaults,
                ..Options::default()
            }
        }
    }

    /// Cuts every link between region `r` and the others: nftables in each
    /// of its nodes' namespaces drops all traffic to and from the gateway
    /// proxies (the only way between regions). Clients, DNS and the
    /// region's own routes go on.
    pub fn cut(&self, r: Region) {
        let net = self.net.as_ref().expect("cut needs Mesh::in_namespaces");
        let hosts = u8::try_from(net.order.len()).unwrap() * MAX_NODES;
        let links: Vec<String> = (1..=hosts).map(|h| net.proxy(h).to_string()).collect();
        let ruleset = format!(
            "table inet natsmesh_drill {{\n\
             \tset links {{ type ipv4_addr; elements = {{ {} }} }}\n\
             \tchain input {{ type filter hook input priority 0; policy accept; ip saddr @links drop; }}\n\
             \tchain output {{ type filter hook output priority 0; policy accept; ip daddr @links drop; }}\n\
             }}\n",
            links.join(", ")
        );
        for n in 1..=MAX_NODES {
            net.lan.nft(net.host(r, n), &ruleset);
        }
    }

    /// Restores what [`Mesh::cut`] cut.
    pub fn heal(&self, r: Region) {
        let net = self.net.as_ref().expect("heal needs Mesh::in_namespaces");
        for n in 1..=MAX_NODES {
            net.lan
                .nft(net.host(r, n), "delete table inet natsmesh_drill\n");
        }
    }

    /// The one-way delay into region `r`'s gateways.
    pub fn latency(&self, r: Region) -> Duration {
        self.net
            .as_ref()
            .and_then(|net| net.latency.get(r.name).copied())
            .unwrap_or_default()
    }

    /// The round-trip times a node's outbound gateways measured, by
    /// region, from its `/gatewayz`.
    pub fn gateway_rtts(&mut self, name: &str) -> BTreeMap<String, Duration> {
        let out = self
            .node(name)
            .monitor("/gatewayz")
            .and_then(|g| g["outbound_gateways"].as_object().cloned())
            .unwrap_or_default();
        out.into_iter()
            .filter_map(|(region, g)| {
                // Zero until the first PING's PONG.
                let rtt = go_duration(g["connection"]["rtt"].as_str()?)?;
                (!rtt.is_zero()).then_some((region, rtt))
            })
            .collect()
    }

    /// A balanced region's nodes' drop-in: metadata and the balancer.
    fn balancer_config(&self, r: Region) -> String {
        let Some(b) = self.balanced().filter(|b| b.region == r.name) else {
            return String::new();
        };
        format!(
            r#"
{metadata}
[load_balancer]
provider = "digitalocean"
id = "{LB_ID}"
token_file = "{token}"
api_url = "{api}"
ready_port = {READY_PORT}
{dwell}"#,
            metadata = if self.defaults {
                ""
            } else {
                "[node.metadata]\ntimeout = \"300ms\"\nretry_for = \"5s\"\n"
            },
            dwell = if self.defaults {
                ""
            } else {
                "dwell = \"1s\"\n"
            },
            token = b.token.display(),
            api = b.lb.api_url(),
        )
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

/// A Go duration as nats-server prints it (`40.2ms`, `1.5s`, `1m2s`,
/// `800µs`).
pub fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let (scale, unit) = [
            ("ns", 1e-9),
            ("µs", 1e-6),
            ("us", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .iter()
        .find(|(u, _)| rest.starts_with(u))
        .map(|(u, f)| (*f, u.len()))?;
        total += value * scale;
        rest = &rest[unit..];
    }
    Some(Duration::from_secs_f64(total))
}
