//! The day-one walkthrough (docs/day-one.md) runs as written: the blocks
//! marked `<!-- walkthrough: operator -->` are extracted from the page and
//! run in order in one bash, with only what a test must changed (the page's
//! "What the test replaces" says what: the tokens on stdin, a stand-in
//! `terraform`, a `natsmeshd` adding the fakes' addresses to `user-data`,
//! the repository, one node per region). Then what main.tf declares is
//! created in the fakes, and (as root, in containers) one NoCloud droplet
//! per region boots from the user-data the walkthrough made, and a client
//! with the user `user add` made publishes through one region's balancer
//! to a subscriber behind another's. The boot test runs in the nextest
//! `serial` group.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::NATSMESHD;
use common::cloud::{addr_of, seeded_root, wait_ready};
use common::terraform::{self, lit};
use natsmesh::balancer::{self, Backend, LbProvider, LbSettings};
use natsmesh_harness::fakes::dns_api::{FakeDnsApi, Flavor};
use natsmesh_harness::fakes::do_lb::FakeDoLb;
use natsmesh_harness::fakes::do_metadata::{Droplet, FakeDoMetadata};
use natsmesh_harness::fakes::lb::Model;
use natsmesh_harness::fakes::linode_lb::{FakeLinodeLb, LinodeNb};
use natsmesh_harness::fakes::linode_metadata::{FakeLinodeMetadata, Linode};

const DOMAIN: &str = "nats.example.com";
const REGIONS: [&str; 3] = ["fra1", "nyc3", "sgp1"];
/// What the operator pastes in step 1: the balancer, DNS and Terraform
/// tokens, in the order the page reads them.
const LB_TOKEN: &str = "dop_v1_walk-lb";
const DNS_TOKEN: &str = "dop_v1_walk-dns";
const TF_TOKEN: &str = "dop_v1_walk-terraform";
/// Where each machine reaches the APIs: a relay on its own loopback to the
/// fakes (as an egress proxy would be).
const DNS_API: &str = "http://127.0.0.1:18081";
const LB_API: &str = "http://127.0.0.1:18082";
/// The test's signed repository as the machines see it.
const TEST_APT: &str = "file:/srv/natsmesh-apt";

/// The Linode twin's regions.
const LINODE_REGIONS: [&str; 3] = ["eu-central", "us-east", "ap-south"];

/// The id the stand-in Terraform gives region `r`'s balancer: a UUID on
/// DigitalOcean, a NodeBalancer number on Linode.
fn lb_id(r: &str) -> String {
    if let Some(n) = LINODE_REGIONS.iter().position(|x| *x == r) {
        return format!("{}", 7001 + n);
    }
    let n = REGIONS.iter().position(|x| *x == r).unwrap();
    format!("4de7ac8b-495b-4884-9a69-1050c6793cd{n}")
}

/// Which of the page's walkthroughs: its blocks' marks, its regions, the
/// variable Terraform's provider takes its token from, and where its
/// machines live in the test.
struct Cloud {
    provider: LbProvider,
    mark: &'static str,
    client_mark: &'static str,
    regions: [&'static str; 3],
    token_env: &'static str,
    /// What the provider's API URLs end in (`--dns-api-url`, `--lb-api-url`).
    api_path: &'static str,
    /// The test's LAN (its index).
    lan: u8,
    /// The machines' private network, when not the LAN's own (Linode's
    /// private addresses come from 192.168.128.0/17, the only range a
    /// NodeBalancer takes without a VPC).
    private_net: Option<[u8; 3]>,
    /// Machine `h`'s id is this plus `h`.
    first_id: u64,
}

const DIGITALOCEAN: Cloud = Cloud {
    provider: LbProvider::DigitalOcean,
    mark: "operator",
    client_mark: "client",
    regions: REGIONS,
    token_env: "DIGITALOCEAN_TOKEN",
    api_path: "",
    lan: 61,
    private_net: None,
    first_id: 4_300_000,
};
const LINODE: Cloud = Cloud {
    provider: LbProvider::Linode,
    mark: "linode-operator",
    client_mark: "linode-client",
    regions: LINODE_REGIONS,
    token_env: "LINODE_TOKEN",
    api_path: "/v4",
    lan: 62,
    private_net: Some([192, 168, 130]),
    first_id: 53_000_000,
};

impl Cloud {
    /// The zones the provider's DNS holds: DigitalOcean's one domain;
    /// Linode's Domain of the domain and one per region below it, where
    /// that region's nodes publish (all served by one BIND zone here).
    fn zones(&self) -> Vec<String> {
        let mut zones = vec![DOMAIN.to_owned()];
        if self.provider == LbProvider::Linode {
            zones.extend(self.regions.iter().map(|r| format!("{r}.{DOMAIN}")));
        }
        zones
    }

    /// The provider's DNS API fake, mirrored into `bind` when given.
    fn dns(&self, bind: Option<natsmesh_harness::bind::BindWriter>) -> FakeDnsApi {
        match self.provider {
            LbProvider::DigitalOcean => {
                FakeDnsApi::start(Flavor::DigitalOcean, DOMAIN, DNS_TOKEN, bind)
            }
            LbProvider::Linode => {
                let zones = self.zones();
                let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
                FakeDnsApi::start_linode_domains(&zones, DNS_TOKEN, bind)
            }
        }
    }

    /// Machine `h`'s id and private address on `lan`.
    fn machine(&self, lan: &natsmesh_harness::netns::Lan, h: u8) -> (u64, IpAddr) {
        let addr = match self.private_net {
            Some([a, b, c]) => IpAddr::from([a, b, c, h]),
            None => IpAddr::V4(lan.host(h)),
        };
        (self.first_id + u64::from(h), addr)
    }
}

fn page() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/day-one.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fenced blocks marked `<!-- walkthrough: KIND -->`, in page order.
fn walkthrough(page: &str, kind: &str) -> Vec<String> {
    let mark = format!("<!-- walkthrough: {kind} -->");
    let mut out = Vec::new();
    let mut lines = page.lines();
    while let Some(l) = lines.next() {
        if l.trim() != mark {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence == "```sh" || fence == "```bash",
            "a {mark} must be followed by a ```sh or ```bash block, not {fence:?}"
        );
        let mut block = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            block.push_str(l);
            block.push('\n');
        }
        out.push(block);
    }
    out
}

/// `text` with `from` replaced by `to`; `from` must be there (a page that
/// no longer says it would otherwise be run unchanged).
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the walkthrough no longer says {from:?}"
    );
    text.replace(from, to)
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What the operator's commands left behind.
struct Walked {
    dir: tempfile::TempDir,
    /// The password `user add` printed once.
    password: String,
    /// The stand-in Terraform's invocations, in order.
    terraform: Vec<String>,
}

impl Walked {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn user_data(&self, region: &str) -> String {
        std::fs::read_to_string(self.path(&format!("infra/user-data-{region}.yaml"))).unwrap()
    }
}

/// Runs the page's operator blocks for `cloud` in an empty directory, with
/// `nameserver` as the nodes' DNS server and `repo_key` as `natsmesh.asc`.
fn walk(cloud: &Cloud, nameserver: &str, repo_key: &str) -> Walked {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join(".test-bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(d.join("natsmesh.asc"), repo_key).unwrap();
    let log = d.join(".terraform.log");

    // natsmeshd: the real one; user-data also gets the fakes' addresses.
    write_exec(
        &bin.join("natsmeshd"),
        &format!(
            "#!/bin/sh\nif [ \"$1\" = user-data ]; then\n  shift\n  exec {NATSMESHD} user-data \"$@\" \
             --dns-api-url {DNS_API}{path} --lb-api-url {LB_API}{path} --nameserver {nameserver} \
             --jetstream-memory 64MiB --jetstream-store 256MiB\nfi\nexec {NATSMESHD} \"$@\"\n",
            path = cloud.api_path,
        ),
    );
    // terraform: what the page relies on, checked; ids of the fakes.
    let outputs: String = cloud
        .regions
        .iter()
        .map(|r| format!("  lb_id_{r}) echo {} ;;\n", lb_id(r)))
        .collect();
    write_exec(
        &bin.join("terraform"),
        &format!(
            r#"#!/bin/sh
echo "$*" >> {log}
case "$1" in -chdir=*) d=${{1#-chdir=}}; shift ;; *) echo "stand-in terraform: no -chdir" >&2; exit 1 ;; esac
[ -f "$d/main.tf" ] || {{ echo "stand-in terraform: no $d/main.tf" >&2; exit 1; }}
case "$1" in
init) exit 0 ;;
apply)
  [ "${token_env}" = {TF_TOKEN} ] || {{ echo "stand-in terraform: {token_env} is not the Terraform token" >&2; exit 1; }}
  shift; targeted=no
  for a in "$@"; do
    case "$a" in
    -target=*) t=${{a#-target=}}; targeted=yes
      grep -q "^resource \"${{t%%.*}}\" \"${{t#*.}}\"" "$d/main.tf" || {{ echo "stand-in terraform: main.tf has no $t" >&2; exit 1; }} ;;
    -auto-approve) ;;
    *) echo "stand-in terraform: $a?" >&2; exit 1 ;;
    esac
  done
  if [ $targeted = no ]; then
    for f in $(sed -n 's/.*file[a-z0-9]*("${{path.module}}\/\([^"]*\)").*/\1/p' "$d/main.tf"); do
      [ -f "$d/$f" ] || {{ echo "stand-in terraform: file(): $d/$f does not exist" >&2; exit 1; }}
    done
  fi
  exit 0 ;;
output)
  grep -q -- "-target=" {log} || {{ echo "stand-in terraform: no balancer applied yet" >&2; exit 1; }}
  [ "$2" = -raw ] || exit 1
  case "$3" in
{outputs}  *) exit 1 ;;
  esac
  exit 0 ;;
esac
exit 1
"#,
            log = log.display(),
            token_env = cloud.token_env,
        ),
    );

    let page = page();
    let mut script = String::from("set -euo pipefail\n");
    for block in walkthrough(&page, cloud.mark) {
        script.push_str(&block);
    }
    let script = substitute(&script, "https://apt.example.com/natsmesh", TEST_APT);
    let script = substitute(&script, "--nodes 3", "--nodes 1");
    std::fs::write(d.join(".walkthrough.sh"), &script).unwrap();
    std::fs::write(
        d.join(".stdin"),
        format!("{LB_TOKEN}\n{DNS_TOKEN}\n{TF_TOKEN}\n"),
    )
    .unwrap();

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("timeout")
        .args(["120", "bash", ".walkthrough.sh"])
        .current_dir(d)
        .env("PATH", path)
        .env_remove(cloud.token_env)
        .env_remove("NATSMESHD")
        .stdin(std::fs::File::open(d.join(".stdin")).unwrap())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{said}\n--- script:\n{script}"
    );
    let password = said
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("user add printed no password:\n{said}"))
        .trim()
        .to_owned();
    let terraform = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    Walked {
        dir,
        password,
        terraform,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The files of a user-data's `write_files`, by path.
fn written_files(user_data: &str) -> BTreeMap<String, String> {
    let doc: serde_json::Value = serde_norway::from_str(user_data).unwrap();
    doc["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The client block's (`kind`) `--server` URLs' hosts and the user it
/// names.
fn client_block(kind: &str) -> (Vec<String>, String) {
    let blocks = walkthrough(&page(), kind);
    assert_eq!(blocks.len(), 1, "one client block");
    let words: Vec<&str> = blocks[0].split_whitespace().collect();
    let hosts = words
        .windows(2)
        .filter(|w| w[0] == "--server")
        .map(|w| {
            let url = w[1].strip_prefix("tls://").expect("a tls:// server");
            url.rsplit_once(':').unwrap().0.to_owned()
        })
        .collect();
    let user = words
        .windows(2)
        .find(|w| w[0] == "--user")
        .map(|w| w[1].to_owned())
        .unwrap();
    (hosts, user)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// natsmeshd's balancer settings for a node of `region` with the
/// configuration's defaults.
fn settings(provider: LbProvider, url: String, region: &str, id: &str, droplet: u64) -> LbSettings {
    LbSettings {
        provider,
        id: id.to_owned(),
        url,
        token_file: "/nonexistent".into(),
        instance_id: droplet.to_string(),
        private_ip: Some("127.0.0.1".parse().unwrap()),
        backend: Backend::Private,
        client_bind: "127.0.0.1".parse().unwrap(),
        server_name: format!("digitalocean-{region}-{droplet}"),
        region: region.to_owned(),
        client_port: 4222,
        monitoring_port: Some(8222),
        ready: "127.0.0.1:8223".parse().unwrap(),
        dwell: Duration::from_secs(5),
        stop_budget: None,
    }
}

/// natsmeshd's own set-up check of a planned balancer served by the fake.
fn setup_problems(fake: &FakeDoLb, region: &str, id: &str, droplet: u64) -> Vec<String> {
    let s = settings(
        LbProvider::DigitalOcean,
        fake.api_url(),
        region,
        id,
        droplet,
    );
    let client =
        natsmesh::provider::digitalocean::balancer::DigitalOcean::new(&s.url, id, droplet).unwrap();
    let setup = runtime().block_on(client.read(LB_TOKEN)).unwrap();
    balancer::check(&setup, &s)
}

/// What main.tf declares, in the fakes: each region's balancer (its
/// forwarding rule and health check as planned, judged by natsmeshd's
/// set-up check), and the zone's `lb.<region>` records through the
/// DigitalOcean Domains fake. `droplets` are each region's (id, address).
fn apply(walked: &Walked, dns: &FakeDnsApi, droplets: &[(u64, IpAddr)]) -> Vec<FakeDoLb> {
    let all = terraform::resources(&terraform::parse(&walked.path("infra/main.tf")));
    let zone = terraform::one(&all, "digitalocean_domain", "zone");
    assert_eq!(lit(&zone.body["name"]).as_deref(), Some(DOMAIN));
    let mut lbs = Vec::new();
    for (r, (id, addr)) in REGIONS.iter().zip(droplets) {
        let planned = terraform::one(&all, "digitalocean_loadbalancer", r);
        let fake = FakeDoLb::start(
            LB_TOKEN,
            terraform::do_lb(planned, &lb_id(r)),
            vec![(*id, *addr)],
            Model::default(),
        );
        if let IpAddr::V4(a) = addr {
            let [a, b, c, _] = a.octets();
            fake.pool().allow_network(IpAddr::from([a, b, c, 0]), 24);
        }
        let problems = setup_problems(&fake, r, &lb_id(r), *id);
        assert!(
            problems.is_empty(),
            "{r}: the planned balancer: {problems:?}"
        );
        // Its record, pointing where the fake balancer takes clients.
        let record = terraform::one(&all, "digitalocean_record", &format!("lb_{r}"));
        let name = lit(&record.body["name"]).unwrap();
        assert_eq!(name, format!("lb.{r}"));
        let body = serde_json::json!({
            "type": lit(&record.body["type"]).unwrap(), "name": name,
            "data": fake.frontend().ip().to_string(), "ttl": record.body["ttl"],
        });
        let resp = ureq::post(&format!("{}/v2/domains/{DOMAIN}/records", dns.url()))
            .header("Authorization", &format!("Bearer {DNS_TOKEN}"))
            .header("Content-Type", "application/json")
            .send(body.to_string());
        assert!(resp.is_ok(), "{r}: creating {body}: {resp:?}");
        lbs.push(fake);
    }
    lbs
}

/// What main.tf declares on Linode, in the fakes: each region's
/// NodeBalancer with its planned `tcp` config (judged by natsmeshd's set-up
/// check for that region's machine), the data plane allowed to reach the
/// machine's private network, and `lb` in the region's Domain through the
/// Linode Domains fake (the Domain found by name, as the API is asked).
/// `machines` are each region's (id, private address).
fn apply_linode(
    walked: &Walked,
    dns: &FakeDnsApi,
    machines: &[(u64, IpAddr)],
) -> Vec<FakeLinodeLb> {
    let all = terraform::resources(&terraform::parse(&walked.path("infra/main.tf")));
    let zone = terraform::one(&all, "linode_domain", "zone");
    assert_eq!(lit(&zone.body["domain"]).as_deref(), Some(DOMAIN));
    let mut lbs = Vec::new();
    for (r, (id, addr)) in LINODE_REGIONS.iter().zip(machines) {
        let nb = terraform::one(&all, "linode_nodebalancer", r);
        let config = terraform::one(&all, "linode_nodebalancer_config", r);
        let nb_id: u64 = lb_id(r).parse().unwrap();
        let mut planned = LinodeNb::tcp(nb_id, &lit(&nb.body["region"]).unwrap(), 31, 0);
        for (k, v) in terraform::api_object(&config.body).as_object().unwrap() {
            if k != "nodebalancer_id" {
                planned.configs[0][k] = v.clone();
            }
        }
        let fake = FakeLinodeLb::start(LB_TOKEN, planned, Model::default());
        let IpAddr::V4(private) = *addr else {
            panic!("{r}: a Linode's private address is IPv4, not {addr}");
        };
        let [a, b, c, _] = private.octets();
        fake.pool(31)
            .unwrap()
            .allow_network(IpAddr::from([a, b, c, 0]), 24);
        let mut s = settings(LbProvider::Linode, fake.api_url(), r, &lb_id(r), *id);
        s.private_ip = Some(private);
        let client = natsmesh::provider::linode::balancer::Linode::new(
            &s.url,
            &s.id,
            natsmesh::provider::linode::balancer::Reach::Private(private),
            s.client_port,
            &s.server_name,
        )
        .unwrap();
        let seen = runtime().block_on(client.read(LB_TOKEN)).unwrap();
        let problems = balancer::check(&seen.setup, &s);
        assert!(
            problems.is_empty(),
            "{r}: the planned NodeBalancer: {problems:?}"
        );
        // Clients' name: `lb` in the region's Domain, pointing where the
        // fake NodeBalancer takes clients.
        let record = terraform::one(&all, "linode_domain_record", &format!("lb_{r}"));
        assert_eq!(lit(&record.body["name"]).as_deref(), Some("lb"));
        let domain = terraform::one(&all, "linode_domain", r);
        let name = lit(&domain.body["domain"]).unwrap();
        assert_eq!(name, format!("{r}.{DOMAIN}"));
        let auth = format!("Bearer {DNS_TOKEN}");
        let found: serde_json::Value = ureq::get(&format!("{}/domains", dns.url()))
            .header("Authorization", &auth)
            .header(
                "X-Filter",
                &serde_json::json!({ "domain": name }).to_string(),
            )
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        let domain_id = &found["data"][0]["id"];
        assert!(domain_id.is_u64(), "{name}: {found}");
        let body = serde_json::json!({
            "type": lit(&record.body["record_type"]).unwrap(), "name": "lb",
            "target": fake.frontend().ip().to_string(), "ttl_sec": record.body["ttl_sec"],
        });
        let resp = ureq::post(&format!("{}/domains/{domain_id}/records", dns.url()))
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.to_string());
        assert!(resp.is_ok(), "{r}: creating {body}: {resp:?}");
        lbs.push(fake);
    }
    lbs
}

#[test]
fn the_walkthroughs_operator_commands_make_every_file_and_resource_it_promises() {
    // Only the armour's shape is checked; no machine installs from it here.
    let walked = walk(
        &DIGITALOCEAN,
        "192.0.2.53",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0test\n-----END PGP PUBLIC KEY BLOCK-----\n",
    );

    // Step 1: the node tokens, 0600 (user-data refuses anything else).
    for (f, t) in [
        ("tokens/lb-token", LB_TOKEN),
        ("tokens/dns-token", DNS_TOKEN),
    ] {
        assert_eq!(mode(&walked.path(f)), 0o600, "{f}");
        assert_eq!(std::fs::read_to_string(walked.path(f)).unwrap().trim(), t);
    }
    // Step 2: the root (its key 0600) and one intermediate per region.
    assert_eq!(mode(&walked.path("pki/root.key")), 0o600);
    for r in REGIONS {
        assert!(walked.path(&format!("pki/{r}.crt")).exists(), "{r}");
        assert_eq!(mode(&walked.path(&format!("pki/{r}.key"))), 0o600);
    }
    // Step 3: the password printed once, only its hash in users.toml.
    let users = std::fs::read_to_string(walked.path("users.toml")).unwrap();
    assert!(!users.contains(&walked.password));
    let table: toml::Table = toml::from_str(&users).unwrap();
    let hash = table["accounts"]["APP"]["users"][0]["password_hash"]
        .as_str()
        .unwrap();
    assert!(bcrypt::verify(&walked.password, hash).unwrap());
    // Steps 4 and 6, in the order the page gives and Terraform needs.
    let tf: Vec<&str> = walked.terraform.iter().map(String::as_str).collect();
    assert_eq!(tf.first(), Some(&"-chdir=infra init"), "{tf:?}");
    assert!(tf[1].starts_with("-chdir=infra apply") && tf[1].contains("-target="));
    for r in REGIONS {
        assert!(tf[1].contains(&format!("-target=digitalocean_loadbalancer.{r}")));
        assert!(tf.contains(&format!("-chdir=infra output -raw lb_id_{r}").as_str()));
    }
    assert_eq!(
        tf.last(),
        Some(&"-chdir=infra apply -auto-approve"),
        "{tf:?}"
    );
    let main_tf = std::fs::read_to_string(walked.path("infra/main.tf")).unwrap();
    assert!(!main_tf.contains(LB_TOKEN) && !main_tf.contains("PRIVATE KEY"));

    // Each region's user-data: 0600, the whole node.
    let (client_hosts, client_user) = client_block("client");
    for r in REGIONS {
        let f = walked.path(&format!("infra/user-data-{r}.yaml"));
        assert_eq!(mode(&f), 0o600, "{r}");
        let files = written_files(&walked.user_data(r));
        let node: toml::Table =
            toml::from_str(&files["/etc/natsmesh/natsmesh.d/10-node.toml"]).unwrap();
        assert_eq!(node["node"]["region"].as_str(), Some(r));
        assert_eq!(node["node"]["domain"].as_str(), Some(DOMAIN));
        assert_eq!(
            node["load_balancer"]["id"].as_str(),
            Some(lb_id(r).as_str())
        );
        assert_eq!(node["broker"]["client"]["advertise"].as_str(), Some("none"));
        let names: Vec<&str> = node["tls"]["extra_names"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            names.contains(&format!("lb.{r}.{DOMAIN}").as_str()),
            "{names:?}"
        );
        assert_eq!(node["discovery"]["bootstrap_expect"].as_integer(), Some(1));
        // The users, exactly as user add wrote them.
        assert_eq!(
            files["/etc/natsmesh/natsmesh.d/20-accounts.toml"].trim(),
            users.trim()
        );
        assert_eq!(files["/etc/natsmesh/credentials/lb-token"].trim(), LB_TOKEN);
        assert_eq!(
            files["/etc/natsmesh/credentials/dns-token"].trim(),
            DNS_TOKEN
        );
        assert_eq!(
            files["/etc/natsmesh/credentials/intermediate.crt"],
            std::fs::read_to_string(walked.path(&format!("pki/{r}.crt"))).unwrap()
        );
    }
    // The client block names balancers whose names the certificates carry,
    // and the user made in step 3.
    assert_eq!(client_user, "app");
    assert_eq!(
        client_hosts,
        vec![format!("lb.fra1.{DOMAIN}"), format!("lb.nyc3.{DOMAIN}")]
    );

    // What main.tf declares, served by the fakes and accepted by natsmeshd.
    let dns = FakeDnsApi::start(Flavor::DigitalOcean, DOMAIN, DNS_TOKEN, None);
    let droplets: Vec<(u64, IpAddr)> = (1..=3)
        .map(|h| (4_300_000 + h, IpAddr::from([127, 0, 0, 1])))
        .collect();
    let _lbs = apply(&walked, &dns, &droplets);
    let records: Vec<String> = dns.records().iter().map(|r| format!("{r:?}")).collect();
    for r in REGIONS {
        assert!(
            records.iter().any(|x| x.contains(&format!("lb.{r}"))),
            "{records:?}"
        );
    }
}

/// Numbered lines of the page: (number, text).
type Numbered = Vec<(usize, String)>;

/// The manual actions the page counts: the rows of "What is left by
/// hand" (number, action) and the steps marked `(manual action N)`.
fn manual_actions(page: &str) -> (Numbered, Numbered) {
    let table = page
        .split("## What is left by hand")
        .nth(1)
        .expect("a section What is left by hand");
    let rows = table
        .lines()
        .skip_while(|l| !l.starts_with("| # |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1].parse().expect("an action's number"),
                cells[2].to_owned(),
            )
        })
        .collect();
    let steps = page
        .lines()
        .filter_map(|l| {
            let (title, n) = l.strip_prefix("## ")?.split_once("(manual action ")?;
            Some((
                n.trim_end_matches(')').parse().ok()?,
                title.trim().to_owned(),
            ))
        })
        .collect();
    (rows, steps)
}

/// The target of issue 24: for 3 × 3 the operator does at most three
/// things by hand (make the tokens, point the domain's NS, `terraform
/// apply`), and the page counts them where it tells them: the table's rows
/// are the steps marked as manual, numbered 1, 2, 3; every other step is
/// a command the walkthrough test runs. The Linode twin says it has the
/// same three.
#[test]
fn the_walkthrough_counts_at_most_three_manual_actions() {
    let page = page();
    let (rows, steps) = manual_actions(&page);
    assert!(
        !rows.is_empty() && rows.len() <= 3,
        "manual actions: {rows:?}"
    );
    let numbers: Vec<usize> = rows.iter().map(|r| r.0).collect();
    assert_eq!(numbers, (1..=rows.len()).collect::<Vec<_>>());
    let step_numbers: Vec<usize> = steps.iter().map(|s| s.0).collect();
    assert_eq!(step_numbers, numbers, "steps marked manual: {steps:?}");
    for ((_, action), want) in rows.iter().zip(["token", "NS", "terraform apply"]) {
        assert!(action.contains(want), "{action:?} is not {want:?}");
    }
    // Every step not marked manual is run by the test as a command block
    // (or is the client, which is the application's).
    for line in page
        .lines()
        .filter(|l| l.starts_with("## ") && l[3..].starts_with(|c: char| c.is_ascii_digit()))
    {
        let manual = line.contains("(manual action ");
        let n: usize = line[3..].split('.').next().unwrap().parse().unwrap();
        let body = page
            .split(line)
            .nth(1)
            .unwrap()
            .split("\n## ")
            .next()
            .unwrap();
        let run = body.contains("<!-- walkthrough: operator -->")
            || body.contains("<!-- walkthrough: client -->");
        assert!(
            manual || run,
            "step {n} is neither a counted manual action nor run by the test"
        );
    }
    let words = ["One", "Two", "Three"];
    assert!(
        page.contains(&format!(
            "{} manual actions for 3 × 3",
            words[rows.len() - 1]
        )),
        "the page's sentence does not say {} actions",
        rows.len()
    );
    let twin = page.split("## The Linode twin").nth(1).unwrap();
    let twin = twin.split("\n## ").next().unwrap();
    assert!(
        twin.contains(&format!(
            "The same {} manual actions",
            words[rows.len() - 1].to_lowercase()
        )),
        "the Linode twin does not count its manual actions"
    );
}

#[test]
fn the_linode_twins_operator_commands_make_every_file_and_resource_it_promises() {
    let walked = walk(
        &LINODE,
        "192.0.2.53",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0test\n-----END PGP PUBLIC KEY BLOCK-----\n",
    );
    let users = std::fs::read_to_string(walked.path("users.toml")).unwrap();
    let tf: Vec<&str> = walked.terraform.iter().map(String::as_str).collect();
    assert_eq!(tf.first(), Some(&"-chdir=infra init"), "{tf:?}");
    assert_eq!(
        tf.last(),
        Some(&"-chdir=infra apply -auto-approve"),
        "{tf:?}"
    );
    for r in LINODE_REGIONS {
        assert!(tf[1].contains(&format!("-target=linode_nodebalancer_config.{r}")));
        let f = walked.path(&format!("infra/user-data-{r}.yaml"));
        assert_eq!(mode(&f), 0o600, "{r}");
        let files = written_files(&walked.user_data(r));
        let node: toml::Table =
            toml::from_str(&files["/etc/natsmesh/natsmesh.d/10-node.toml"]).unwrap();
        assert_eq!(node["node"]["region"].as_str(), Some(r));
        assert_eq!(node["node"]["provider"].as_str(), Some("linode"));
        assert_eq!(
            node["load_balancer"]["id"].as_str(),
            Some(lb_id(r).as_str())
        );
        assert_eq!(node["broker"]["client"]["advertise"].as_str(), Some("none"));
        let names = node["tls"]["extra_names"].as_array().unwrap();
        assert!(
            names
                .iter()
                .any(|n| n.as_str() == Some(&format!("lb.{r}.{DOMAIN}")))
        );
        assert_eq!(
            files["/etc/natsmesh/natsmesh.d/20-accounts.toml"].trim(),
            users.trim()
        );
        assert_eq!(files["/etc/natsmesh/credentials/lb-token"].trim(), LB_TOKEN);
    }
    // The client block names the NodeBalancers whose names the
    // certificates carry, and the user made with the same command.
    let (hosts, user) = client_block(LINODE.client_mark);
    assert_eq!(user, "app");
    assert_eq!(
        hosts,
        vec![
            format!("lb.eu-central.{DOMAIN}"),
            format!("lb.us-east.{DOMAIN}")
        ]
    );
    // What main.tf declares, served by the fakes and accepted by natsmeshd:
    // each NodeBalancer, and `lb` in each region's Domain.
    let dns = LINODE.dns(None);
    let machines: Vec<(u64, IpAddr)> = (1..=3)
        .map(|h| (53_000_000 + h, IpAddr::from([192, 168, 130, 5])))
        .collect();
    let _lbs = apply_linode(&walked, &dns, &machines);
    let records = dns.records();
    for r in LINODE_REGIONS {
        assert!(
            records
                .iter()
                .any(|x| x.kind == "A" && x.name == format!("lb.{r}.{DOMAIN}")),
            "{records:?}"
        );
    }
}

/// A NATS connection through a balancer: INFO in clear, then TLS verified
/// against `root` for `name`, then CONNECT with a user.
struct Client {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    /// What was read past the last whole line.
    pending: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr, name: &str, root: &Path, user: &str, pass: &str) -> Self {
        let (c, reply) = Self::open(addr, name, root, user, pass);
        assert_eq!(
            reply.as_deref(),
            Some("PONG"),
            "{name}: the user is refused"
        );
        c
    }

    /// Connects and says CONNECT; the server's first answer (`None`: it
    /// closed the connection).
    fn open(
        addr: SocketAddr,
        name: &str,
        root: &Path,
        user: &str,
        pass: &str,
    ) -> (Self, Option<String>) {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The INFO line, byte by byte: nothing of the TLS handshake may be
        // read past it.
        let mut info = Vec::new();
        let mut byte = [0u8; 1];
        while !info.ends_with(b"\r\n") {
            if let Err(e) = (&tcp).read_exact(&mut byte) {
                panic!(
                    "{name} ({addr}): no INFO ({e}) after {:?}",
                    String::from_utf8_lossy(&info)
                );
            }
            info.push(byte[0]);
        }
        assert!(
            info.starts_with(b"INFO "),
            "{:?}",
            String::from_utf8_lossy(&info)
        );
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(root).unwrap();
        for c in pem::parse_many(&pem).unwrap() {
            roots.add(c.contents().to_vec().into()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server_name = pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
        let mut c = Self {
            tls: rustls::StreamOwned::new(conn, tcp),
            pending: Vec::new(),
        };
        let connect = serde_json::json!({
            "user": user, "pass": pass, "verbose": false, "pedantic": false,
            "tls_required": true, "protocol": 1, "name": "day-one",
        });
        c.send(&format!("CONNECT {connect}\r\nPING\r\n"));
        let reply = c.line();
        (c, reply)
    }

    fn send(&mut self, s: &str) {
        self.tls.write_all(s.as_bytes()).unwrap();
        self.tls.flush().unwrap();
    }

    /// The next protocol line that is not a PING (answered) or INFO; `None`
    /// when the server closed or nothing came within the read timeout.
    fn line(&mut self) -> Option<String> {
        loop {
            while let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                self.pending.drain(..end + 2);
                if line == "PING" {
                    self.send("PONG\r\n");
                } else if !line.starts_with("INFO ") {
                    return Some(line);
                }
            }
            let mut buf = [0u8; 4096];
            match self.tls.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// Prints the regions this server's gateways are connected to, both ways
/// (its /gatewayz), sorted.
const GATEWAYS: &str = "import json, urllib.request as u; \
g = json.load(u.urlopen('http://127.0.0.1:8222/gatewayz', timeout=5)); \
print(' '.join(sorted(set(g.get('outbound_gateways') or {}) & set(g.get('inbound_gateways') or {}))))";

/// A region's balancer in its provider's fake.
enum Balancer {
    DigitalOcean(FakeDoLb),
    Linode(FakeLinodeLb),
}

impl Balancer {
    fn api_url(&self) -> String {
        match self {
            Self::DigitalOcean(b) => b.api_url(),
            Self::Linode(b) => b.api_url(),
        }
    }

    /// Where its data plane takes clients.
    fn frontend(&self) -> SocketAddr {
        match self {
            Self::DigitalOcean(b) => b.frontend(),
            Self::Linode(b) => b.frontend(),
        }
    }

    /// Whether exactly `machine` (id, private address) is in service.
    fn serves_only(&self, machine: (u64, IpAddr)) -> bool {
        match self {
            Self::DigitalOcean(b) => b.in_service() == vec![machine.0],
            // A NodeBalancer knows a node by `ip:port`.
            Self::Linode(b) => b.in_service() == vec![format!("{}:4222", machine.1)],
        }
    }

    /// What it says about its members, for a failure's message.
    fn describe(&self) -> String {
        match self {
            Self::DigitalOcean(b) => format!(
                "in service {:?}, requests {:?}",
                b.in_service(),
                b.requests().iter().map(|r| &r.0).collect::<Vec<_>>()
            ),
            Self::Linode(b) => format!(
                "nodes {:?}, requests {:?}",
                b.nodes(),
                b.requests().iter().map(|r| &r.0).collect::<Vec<_>>()
            ),
        }
    }
}

/// A machine's metadata service, in its provider's fake.
enum Metadata {
    DigitalOcean(FakeDoMetadata),
    Linode(FakeLinodeMetadata),
}

impl Metadata {
    /// The service for machine (`id`, private `addr`) of `region`; no
    /// public address (none is needed: see docs/day-one.md step 2).
    fn start(cloud: &Cloud, region: &str, (id, addr): (u64, IpAddr)) -> Self {
        let hostname = format!("natsmesh-{region}-1");
        match cloud.provider {
            LbProvider::DigitalOcean => Self::DigitalOcean(FakeDoMetadata::start(Droplet {
                id,
                hostname,
                region: region.to_owned(),
                private_ipv4: Some(addr.to_string()),
                public_ipv4: None,
                public_ipv6: None,
                tags: vec!["natsmesh".into()],
            })),
            LbProvider::Linode => Self::Linode(FakeLinodeMetadata::start(Linode {
                id,
                label: hostname,
                region: region.to_owned(),
                tags: vec!["natsmesh".into()],
                public_ipv4: Vec::new(),
                // Linode's private addresses are a /17.
                private_ipv4: vec![format!("{addr}/17")],
                slaac: None,
            })),
        }
    }

    fn url(&self) -> String {
        match self {
            Self::DigitalOcean(m) => m.url(),
            Self::Linode(m) => m.url(),
        }
    }
}

/// The walkthrough of `cloud`, booted: the page's operator commands, what
/// main.tf declares in the provider's fakes (balancers, DNS, one metadata
/// service per machine), and one NoCloud machine per region from the
/// user-data the walkthrough made. The three regions publish themselves
/// into an empty zone, form the supercluster, and the page's client block
/// (its user from `user add`) is run as a client would: subscribed through
/// the first region's balancer, published through the second's.
fn boot_one_machine_per_region(cloud: &Cloud) {
    natsmesh_harness::container::require_container_tools();
    natsmesh_harness::netns::require_netns();
    natsmesh_harness::bind::require_bind();
    use natsmesh_harness::container::Network;
    use natsmesh_harness::netns::{Lan, Relay};
    use natsmesh_harness::packages::{AptRepo, built};
    let regions = cloud.regions;

    // Declared in reverse order of teardown: containers go first, the
    // namespaces last.
    let lan = Lan::new(cloud.lan, 3);
    if let Some(net) = cloud.private_net {
        lan.add_network(net);
    }
    // The zone's name server, on port 53: the machines' resolv.conf names
    // it, standing in for the delegation of step 5 (nats-server resolves the
    // gateways' names with the system resolver, as natsmeshd does). It
    // serves every zone the provider's DNS holds (Linode's region Domains
    // lie below the domain's own).
    let bind = natsmesh_harness::bind::Bind::start_on_port_53(DOMAIN, lan.gateway());
    let dns = cloud.dns(Some(bind.writer()));
    let repo = AptRepo::new(&[built("natsmesh", "deb"), built("natsmesh-broker", "deb")]);
    let walked = walk(cloud, &bind.addr().to_string(), &repo.armored_key());
    let machines: Vec<(u64, IpAddr)> = (1..=3u8).map(|h| cloud.machine(&lan, h)).collect();
    let lbs: Vec<Balancer> = match cloud.provider {
        LbProvider::DigitalOcean => apply(&walked, &dns, &machines)
            .into_iter()
            .map(Balancer::DigitalOcean)
            .collect(),
        LbProvider::Linode => apply_linode(&walked, &dns, &machines)
            .into_iter()
            .map(Balancer::Linode)
            .collect(),
    };

    let mut metadata = Vec::new();
    let mut relays = Vec::new();
    let mut booted = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        let h = u8::try_from(i + 1).unwrap();
        let meta = Metadata::start(cloud, r, machines[i]);
        lan.add_local(h, "169.254.169.254/32");
        for (listen, target) in [
            (
                SocketAddr::from(([169, 254, 169, 254], 80)),
                addr_of(&meta.url()),
            ),
            (addr_of(DNS_API), addr_of(&dns.url())),
            (addr_of(LB_API), addr_of(&lbs[i].api_url())),
        ] {
            relays.push(Relay::start(lan.netns(h), listen, target));
        }
        metadata.push(meta);
        let root = seeded_root(
            &repo,
            &format!("machine-{}", machines[i].0),
            &walked.user_data(r),
        );
        let c = root.start_on(&Network::Namespace(lan.netns(h)));
        // systemd-nspawn puts the host's resolv.conf in place at start (a
        // copy or a mount): replaced inside the container, never followed
        // out of it.
        c.ok(&[
            "sh",
            "-c",
            &format!(
                "umount /etc/resolv.conf 2>/dev/null; rm -f /etc/resolv.conf; echo 'nameserver {}' > /etc/resolv.conf",
                lan.gateway()
            ),
        ]);
        booted.push(c);
    }
    let began = Instant::now();
    // One budget per phase, shared by the three machines, so the test's
    // own bounds (about 10.5 minutes at worst; nextest stops it after 12) end it before nextest would.
    let boot_deadline = began + Duration::from_secs(150);
    for c in &booted {
        wait_ready(
            c,
            boot_deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1),
        );
    }
    eprintln!("three regions ready in {:?}", began.elapsed());
    // Each node may still restart once or twice as `_nats-regions` fills
    // (leaving and rejoining its balancer each time); on a loaded CI
    // machine that took over a minute.
    let deadline = Instant::now() + Duration::from_secs(150);
    for (i, lb) in lbs.iter().enumerate() {
        while !lb.serves_only(machines[i]) {
            assert!(
                Instant::now() < deadline,
                "{}: {}",
                regions[i],
                lb.describe()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // The supercluster forms: each region's gateways reach the two others
    // (the regions found in `_nats-regions`, which the nodes published).
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, c) in booted.iter().enumerate() {
        let want: Vec<&str> = {
            let mut v: Vec<&str> = regions
                .iter()
                .copied()
                .filter(|r| *r != regions[i])
                .collect();
            v.sort_unstable();
            v
        };
        loop {
            let seen = c.ok(&["python3", "-c", GATEWAYS]);
            let seen: Vec<&str> = seen.split_whitespace().collect();
            if seen == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: gateways to {seen:?}, not {want:?}\n{:?}\n{}\n{}",
                regions[i],
                bind.dig(&format!("_nats-regions.{DOMAIN}"), "TXT"),
                c.ok(&["natsmeshd", "status"]),
                c.ok(&[
                    "sh",
                    "-c",
                    "journalctl -u natsmeshd --no-pager | grep -i -e gateway -e error -e warn -e regions -e restart -e changed | grep -v Healthcheck | tail -n 40; \
                     grep -A12 '^gateway' /var/lib/natsmesh/nats-server.conf"
                ])
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // The list of regions is what the nodes published: one record per
    // region, none made by hand.
    let mut listed: Vec<String> = bind
        .dig(&format!("_nats-regions.{DOMAIN}"), "TXT")
        .iter()
        .map(|t| t.trim_matches('"').to_owned())
        .collect();
    listed.sort();
    let mut all: Vec<&str> = regions.to_vec();
    all.sort_unstable();
    assert_eq!(listed, all);

    eprintln!(
        "supercluster formed {:?} after boot; {:?}",
        began.elapsed(),
        booted
            .iter()
            .map(|c| c.ok(&["sh", "-c", "natsmeshd status | grep restarts"]))
            .collect::<Vec<_>>()
    );

    // Each node answers NATS on its own address, where the balancer sends
    // clients (else the client below could not tell why it got nothing).
    for (i, c) in booted.iter().enumerate() {
        let at = SocketAddr::new(machines[i].1, 4222);
        let info = TcpStream::connect_timeout(&at, Duration::from_secs(5)).and_then(|t| {
            t.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut b = [0u8; 5];
            (&t).read_exact(&mut b)?;
            Ok(b)
        });
        assert!(
            info.as_ref().is_ok_and(|b| b == b"INFO "),
            "{}: {info:?}\n{}\n{}",
            regions[i],
            c.ok(&["ss", "-ltnp"]),
            c.ok(&["journalctl", "-u", "natsmeshd", "--no-pager", "-n", "60"])
        );
    }

    // The client block: through the first two regions' balancers by name,
    // as the user `user add` made, verified against the root.
    let (hosts, user) = client_block(cloud.client_mark);
    let root = walked.path("pki/root.crt");
    let frontend = |host: &str| {
        let region = host.split('.').nth(1).unwrap();
        let i = regions.iter().position(|r| *r == region).unwrap();
        // The name resolves (in the zone the nodes and main.tf wrote) to
        // where the balancer takes clients.
        let fe = lbs[i].frontend();
        let a = bind.dig(host, "A");
        assert_eq!(a, vec![fe.ip().to_string()], "{host}");
        // The balancer's data plane takes clients to the node (bounded: a
        // node that restarts once its gateways are complete leaves and
        // rejoins — on a NodeBalancer after its drain and a new start,
        // which took over 30 s on the loaded CI machine).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = TcpStream::connect_timeout(&fe, Duration::from_secs(5)).and_then(|t| {
                t.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut b = [0u8; 5];
                (&t).read_exact(&mut b)?;
                Ok(b)
            });
            if got.as_ref().is_ok_and(|b| b == b"INFO ") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: through the balancer {got:?}; {}",
                lbs[i].describe()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        fe
    };
    let mut sub = Client::connect(
        frontend(&hosts[0]),
        &hosts[0],
        &root,
        &user,
        &walked.password,
    );
    sub.send("SUB greetings 1\r\nPING\r\n");
    assert_eq!(sub.line().as_deref(), Some("PONG"));
    let mut publisher = Client::connect(
        frontend(&hosts[1]),
        &hosts[1],
        &root,
        &user,
        &walked.password,
    );
    // Interest crosses the gateways on its own time: publish until heard.
    let deadline = Instant::now() + Duration::from_secs(60);
    sub.tls
        .sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let heard = loop {
        publisher.send("PUB greetings 5\r\nhello\r\nPING\r\n");
        assert_eq!(publisher.line().as_deref(), Some("PONG"));
        if let Some(msg) = sub.line() {
            assert!(msg.starts_with("MSG greetings 1 5"), "{msg}");
            break sub.line();
        }
        assert!(
            Instant::now() < deadline,
            "nothing published through {} reached {}'s subscriber",
            hosts[1],
            hosts[0]
        );
    };
    assert_eq!(heard.as_deref(), Some("hello"));
    // A wrong password is refused through the same balancer.
    let (_, refused) = Client::open(frontend(&hosts[0]), &hosts[0], &root, &user, "wrong");
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("Authorization Violation")),
        "a wrong password: {refused:?}"
    );
    drop(booted);
    drop(relays);
}

#[test]
fn one_droplet_per_region_from_the_walkthroughs_user_data_serves_its_user_across_regions() {
    boot_one_machine_per_region(&DIGITALOCEAN);
}

/// The Linode twin booted: one NoCloud Linode per region with Linode's
/// Metadata Service, its NodeBalancer (the planned `tcp` config, nodes by
/// private address) and Linode's Domains API holding the domain's Domain
/// and each region's.
#[test]
fn one_linode_per_region_from_the_twins_user_data_serves_its_user_across_regions() {
    boot_one_machine_per_region(&LINODE);
}
