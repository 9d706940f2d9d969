//! A region of droplets behind one fake DigitalOcean Load Balancer, for
//! the load-balancer tests and benchmark: the balancer (modelled delays:
//! health check every 1 s, 2 successes in, 2 failures out, 1 s timeout,
//! changes propagate after 500 ms), each droplet's metadata service, and a
//! token file; `options` is a node's configuration drop-in.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use natsmesh_harness::fakes::do_lb::{DoLb, FakeDoLb};
use natsmesh_harness::fakes::do_metadata::{Droplet, FakeDoMetadata};
use natsmesh_harness::fakes::lb::Model;
use natsmesh_harness::fakes::openapi::{Spec, validate_request};
use natsmesh_harness::{CURRENT, free_port};

use super::{Daemon, Options};

/// The API token the balancer accepts.
pub const TOKEN: &str = "dop_v1_lb-test-51c0ffee";
/// The balancer's id.
pub const LB: &str = "4de7ac8b-495b-4884-9a69-1050c6793cd6";

pub fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 5, n])
}

pub fn droplet_id(n: u8) -> u64 {
    3_164_440 + u64::from(n)
}

pub fn model() -> Model {
    Model {
        check_interval: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        propagation: Duration::from_millis(500),
        response_timeout: Duration::from_secs(1),
    }
}

/// A region of `n` droplets behind one balancer.
pub struct Fleet {
    /// The balancer.
    pub lb: FakeDoLb,
    /// Each droplet's metadata service.
    pub metadata: Vec<FakeDoMetadata>,
    /// The broker's client port on every droplet.
    pub client_port: u16,
    /// natsmeshd's readiness port on every droplet.
    pub ready_port: u16,
    /// Holds the token file.
    pub token: tempfile::TempDir,
}

impl Fleet {
    pub fn new(n: u8, lb: impl FnOnce(u16, u16) -> DoLb) -> Self {
        Self::with_model(n, lb, model())
    }

    /// As [`Fleet::new`], the balancer's data plane following `model`.
    pub fn with_model(n: u8, lb: impl FnOnce(u16, u16) -> DoLb, model: Model) -> Self {
        let (client_port, ready_port) = (free_port(), free_port());
        let droplets = (1..=n).map(|i| (droplet_id(i), ip(i))).collect();
        let fake = FakeDoLb::start(TOKEN, lb(client_port, ready_port), droplets, model);
        let metadata = (1..=n)
            .map(|i| {
                FakeDoMetadata::start(Droplet {
                    id: droplet_id(i),
                    hostname: format!("node-{i}"),
                    region: "fra1".into(),
                    private_ipv4: Some(ip(i).to_string()),
                    public_ipv4: None,
                    public_ipv6: None,
                    tags: Vec::new(),
                })
            })
            .collect();
        let token = natsmesh_harness::scratch();
        natsmesh_harness::bind::write_private(&token.path().join("token"), &format!("{TOKEN}\n"));
        Self {
            lb: fake,
            metadata,
            client_port,
            ready_port,
            token,
        }
    }

    pub fn good(n: u8) -> Self {
        Self::new(n, |client, ready| DoLb::tcp(LB, "fra1", client, ready))
    }

    pub fn options(&self, n: u8, extra: &str) -> Options {
        Options {
            extra: format!(
                r#"[node]
provider = "digitalocean"

[node.metadata]
url = "{meta}"
timeout = "300ms"
retry_for = "5s"

[broker.client]
bind = "private"
port = {client}
advertise = "none"

[load_balancer]
provider = "digitalocean"
id = "{LB}"
token_file = "{token}"
api_url = "{api}"
ready_port = {ready}
{dwell}
{extra}"#,
                dwell = if extra.contains("dwell =") {
                    ""
                } else {
                    "dwell = \"1s\""
                },
                meta = self.metadata[usize::from(n - 1)].url(),
                client = self.client_port,
                token = self.token.path().join("token").display(),
                api = self.lb.api_url(),
                ready = self.ready_port,
            ),
            cloud: true,
            ..Options::default()
        }
    }

    pub fn node(&self, n: u8) -> Daemon {
        Daemon::start(CURRENT, self.options(n, ""))
    }

    pub fn wait_in_service(&self, ids: &[u64], what: &str) {
        let mut want = ids.to_vec();
        want.sort_unstable();
        wait_for(what, Duration::from_secs(30), || {
            let mut got = self.lb.in_service();
            got.sort_unstable();
            got == want
        });
    }

    /// Every request natsmeshd sent matches DigitalOcean's OpenAPI files.
    pub fn assert_requests_follow_the_spec(&self) {
        for (req, body) in self.lb.requests() {
            let (method, path) = req.split_once(' ').unwrap();
            validate_request(Spec::DigitalOcean, method, path, body.as_ref())
                .unwrap_or_else(|e| panic!("{req} {body:?}: {e}"));
        }
    }
}

/// Polls `f` until it holds; fails the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        // Fine-grained: the benchmark times by it.
        std::thread::sleep(Duration::from_millis(5));
    }
}
