//! A DigitalOcean region in miniature for the cloud-init tests and the boot
//! benchmark: droplets are Debian 13 roots with cloud-init booted in
//! systemd-nspawn, each in its own network namespace on a private LAN with
//! its own metadata service at 169.254.169.254; an initially empty zone on
//! a real DNS server (BIND) the machines ask over the LAN; the DigitalOcean
//! Domains and Load Balancer APIs (fakes) writing into that zone and
//! balancing over the LAN, reached on each machine's loopback through a
//! relay (as a local egress proxy would be); natsmesh installed from a
//! signed apt repository by the user-data `natsmeshd user-data` made.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use natsmesh_harness::bind::Bind;
use natsmesh_harness::container::{Container, Network, Root};
use natsmesh_harness::fakes::dns_api::{FakeDnsApi, Flavor};
use natsmesh_harness::fakes::do_lb::{DoLb, FakeDoLb};
use natsmesh_harness::fakes::do_metadata::{Droplet, FakeDoMetadata};
use natsmesh_harness::fakes::lb::Model;
use natsmesh_harness::netns::{Lan, Relay};
use natsmesh_harness::packages::{AptRepo, built};

use super::NATSMESHD;
use super::pki::Pki;

pub const ZONE: &str = "nats.test";
pub const REGION: &str = "fra1";
pub const LB_ID: &str = "4de7ac8b-495b-4884-9a69-1050c6793cd6";

/// Runs `natsmeshd ARGS` in `dir`; its stdout.
pub fn natsmeshd(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(NATSMESHD)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "natsmeshd {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The user-data arguments every test shares: the PKI, small JetStream
/// limits (and [`repository_args`] unless the machine is the appliance).
pub fn common_args(bootstrap_expect: usize) -> Vec<String> {
    [
        "--roots",
        "root/root.crt",
        "--intermediate-cert",
        "inter/fra1.crt",
        "--intermediate-key",
        "inter/fra1.key",
        "--jetstream-memory",
        "64MiB",
        "--jetstream-store",
        "256MiB",
        "--bootstrap-expect",
        &bootstrap_expect.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// User-data for a NoCloud machine `name` at 127.0.0.1, a region of one
/// found through a DNS server that is not there (discovery keeps the
/// node's own route and goes on asking), with `extra` arguments.
pub fn nocloud_user_data(pki: &Pki, name: &str, extra: &[String]) -> String {
    let mut args: Vec<String> = [
        "user-data",
        "--provider",
        "nocloud",
        "--name",
        name,
        "--private-address",
        "127.0.0.1",
        "--region",
        REGION,
        "--domain",
        ZONE,
        "--nameserver",
        "127.0.0.1:53",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(common_args(1));
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    natsmeshd(&pki.path(""), &args)
}

/// The test's signed repository, as the machines see it.
pub fn repository_args() -> Vec<String> {
    [
        "--apt-url",
        "file:/srv/natsmesh-apt",
        "--apt-key",
        "key.asc",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The signed repository and the region's PKI (root, fra1 intermediate,
/// the repository key as `key.asc`), in one scratch directory.
pub fn repo_and_pki() -> (AptRepo, Pki) {
    let repo = AptRepo::new(&[built("natsmesh", "deb"), built("natsmesh-broker", "deb")]);
    let pki = Pki::new();
    pki.root("root").intermediate("root", REGION, "inter");
    std::fs::write(pki.path("key.asc"), repo.armored_key()).unwrap();
    (repo, pki)
}

/// A Debian 13 root with cloud-init holding a NoCloud seed of `user_data`
/// and the test's offline mirror of the natsmesh repository (the
/// user-data brings its own source list, keyed, as it would on a cloud).
pub fn seeded_root(repo: &AptRepo, instance: &str, user_data: &str) -> Root {
    let root = Root::with_cloud_init("trixie");
    repo.publish_into(&root);
    std::fs::remove_file(root.inside("/etc/apt/sources.list.d/natsmesh.sources")).unwrap();
    root.write(
        "/var/lib/cloud/seed/nocloud/meta-data",
        &format!("instance-id: {instance}\nlocal-hostname: {instance}\n"),
        0o600,
    );
    root.write("/var/lib/cloud/seed/nocloud/user-data", user_data, 0o600);
    root.write(
        "/etc/cloud/cloud.cfg.d/90-natsmesh-test.cfg",
        // The minimal image has no ssh: no host keys to make.
        "datasource_list: [ NoCloud, None ]\napt:\n  preserve_sources_list: true\nssh_genkeytypes: []\n",
        0o644,
    );
    root
}

/// Waits (bounded) for cloud-init to finish without error or warning.
pub fn wait_cloud_init(c: &Container) {
    let waited = c.exec(&["cloud-init", "status", "--wait", "--long"]);
    // 0: done without any error or warning (2 would be "degraded").
    assert!(
        waited.status.success(),
        "cloud-init: {}\n{}",
        String::from_utf8_lossy(&waited.stdout),
        cloud_log(c)
    );
}

fn cloud_log(c: &Container) -> String {
    String::from_utf8_lossy(
        &c.exec(&["tail", "-n", "60", "/var/log/cloud-init-output.log"])
            .stdout,
    )
    .into_owned()
}

/// Waits (bounded) for cloud-init to finish without error, then for
/// natsmeshd to say it is ready; returns its status line.
pub fn wait_ready(c: &Container, limit: Duration) -> String {
    wait_cloud_init(c);
    let deadline = Instant::now() + limit;
    loop {
        let active = c.unit_property("natsmeshd", "ActiveState");
        let status = c.unit_property("natsmeshd", "StatusText");
        if active == "active" && status.starts_with("ready") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "natsmeshd not ready ({active}: {status}):\n{}\n{}",
            c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager", "-n", "80"]),
            cloud_log(c)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `addr` of an `http://addr/...` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A region of droplets and the cloud around them. Containers booted from
/// its roots must be dropped before it (declare them after it).
pub struct Region {
    pub bind: Bind,
    pub dns: FakeDnsApi,
    pub lb: FakeDoLb,
    /// Each droplet's metadata service, by host (index 0 is host 1).
    pub metadata: Vec<FakeDoMetadata>,
    /// Droplet ids and private addresses, by host.
    pub droplets: Vec<(u64, IpAddr)>,
    pub repo: AptRepo,
    pub pki: Pki,
    /// One user-data for every droplet, as an operator pastes it.
    pub user_data: String,
    relays: Vec<Relay>,
    /// Last: the namespaces go after everything that listens in them.
    pub lan: Lan,
}

impl Region {
    /// `hosts` droplets on LAN `index`, JetStream waiting for
    /// `bootstrap_expect` of them.
    pub fn new(index: u8, hosts: u8, bootstrap_expect: usize) -> Self {
        let lan = Lan::new(index, hosts);
        let droplets: Vec<(u64, IpAddr)> = (1..=hosts)
            .map(|h| (4_200_000 + u64::from(h), IpAddr::V4(lan.host(h))))
            .collect();
        let bind = Bind::start_on(ZONE, lan.gateway());
        let dns = FakeDnsApi::start(
            Flavor::DigitalOcean,
            ZONE,
            "dns-token-fra1",
            Some(bind.writer()),
        );
        let lb = FakeDoLb::start(
            "lb-token-fra1",
            DoLb::tcp(LB_ID, REGION, 4222, 8223),
            droplets.clone(),
            Model::default(),
        );
        let [a, b, c, _] = lan.gateway().octets();
        lb.pool().allow_network(IpAddr::from([a, b, c, 0]), 24);

        let (repo, pki) = repo_and_pki();
        // Tokens are secrets: user-data refuses one others may read.
        for (name, token) in [
            ("dns.token", "dns-token-fra1\n"),
            ("lb.token", "lb-token-fra1\n"),
        ] {
            natsmesh::files::write_atomic(&pki.path(name), token.as_bytes(), 0o600).unwrap();
        }
        let mut args: Vec<String> = [
            "user-data",
            "--provider",
            "digitalocean",
            "--region",
            REGION,
            "--domain",
            ZONE,
            "--dns",
            "digitalocean",
            "--dns-token",
            "dns.token",
            "--lb-id",
            LB_ID,
            "--lb-token",
            "lb.token",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(common_args(bootstrap_expect));
        args.extend(repository_args());
        args.extend([
            "--nameserver".into(),
            bind.addr().to_string(),
            "--dns-api-url".into(),
            format!("http://{}", addr_of(&dns.url())),
            "--lb-api-url".into(),
            format!("http://{}", addr_of(&lb.api_url())),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let user_data = natsmeshd(&pki.path(""), &args);
        Self {
            bind,
            dns,
            lb,
            metadata: Vec::new(),
            droplets,
            repo,
            pki,
            user_data,
            relays: Vec::new(),
            lan,
        }
    }

    /// Host `h`'s root (1-based), seeded and ready to boot, its metadata
    /// service and API relays running in its namespace.
    pub fn machine(&mut self, h: u8) -> Root {
        let (id, addr) = self.droplets[usize::from(h) - 1];
        let meta = FakeDoMetadata::start(Droplet {
            id,
            hostname: format!("natsmesh-{REGION}-{h}"),
            region: REGION.into(),
            private_ipv4: Some(addr.to_string()),
            public_ipv4: None,
            public_ipv6: None,
            tags: vec!["natsmesh".into()],
        });
        self.lan.add_local(h, "169.254.169.254/32");
        let dns_at = addr_of(&self.dns.url());
        let lb_at = addr_of(&self.lb.api_url());
        for (listen, target) in [
            (
                SocketAddr::from(([169, 254, 169, 254], 80)),
                addr_of(&meta.url()),
            ),
            (dns_at, dns_at),
            (lb_at, lb_at),
        ] {
            self.relays
                .push(Relay::start(self.lan.netns(h), listen, target));
        }
        self.metadata.push(meta);
        seeded_root(&self.repo, &format!("droplet-{id}"), &self.user_data)
    }

    /// Host `h`'s network.
    pub fn network(&self, h: u8) -> Network {
        Network::Namespace(self.lan.netns(h))
    }

    /// Host `h`'s server name.
    pub fn server_name(&self, h: u8) -> String {
        format!(
            "digitalocean-{REGION}-{}",
            self.droplets[usize::from(h) - 1].0
        )
    }
}
