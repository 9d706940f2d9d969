//! `natsmeshd user-data`: what it prints passes `cloud-init schema`
//! (Debian's cloud-init), writes natsmesh's drop-in (valid against the
//! schema) and the secrets root-only where the packaged unit loads them,
//! installs natsmesh from its signed repository, and says what it exposes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::NATSMESHD;
use common::pki::Pki;

struct Inputs {
    pki: Pki,
}

impl Inputs {
    /// A root, the fra1 intermediate, an apt key and two tokens.
    fn new() -> Self {
        let pki = Pki::new();
        pki.root("root").intermediate("root", "fra1", "inter");
        let p = pki.path("");
        // Only the armour's shape is checked; no key needs to be real here.
        std::fs::write(
            p.join("key.asc"),
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0test\n-----END PGP PUBLIC KEY BLOCK-----\n",
        )
        .unwrap();
        std::fs::write(p.join("dns.tok"), "dop_v1_dns-token-for-the-zone\n").unwrap();
        std::fs::write(p.join("lb.tok"), "dop_v1_lb-token-for-the-balancer\n").unwrap();
        Self { pki }
    }

    fn run(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "--apt-url",
            "https://apt.example.com/natsmesh",
            "--apt-key",
            "key.asc",
        ];
        args.extend_from_slice(extra);
        self.run_without_repository(&args)
    }

    fn run_without_repository(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "user-data",
            "--region",
            "fra1",
            "--domain",
            "nats.example.com",
            "--roots",
            "root/root.crt",
            "--intermediate-cert",
            "inter/fra1.crt",
            "--intermediate-key",
            "inter/fra1.key",
        ];
        args.extend_from_slice(extra);
        Command::new(NATSMESHD)
            .args(&args)
            .current_dir(self.path(""))
            .output()
            .unwrap()
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.pki.path(rel)
    }
}

fn schema_ok(dir: &Path, text: &str) {
    natsmesh_harness::require_tools(&["cloud-init"], "cloud-init");
    let file = dir.join("user-data.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cloud-init schema: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn file<'a>(doc: &'a serde_norway::Value, path: &str) -> &'a serde_norway::Value {
    doc["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("no {path} in write_files"))
}

/// A successful run's user-data: schema-checked, parsed, and its drop-in
/// read against natsmesh's schema.
fn valid(
    inputs: &Inputs,
    out: Output,
) -> (
    String,
    serde_norway::Value,
    natsmesh::config::schema::RawConfig,
) {
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    schema_ok(&inputs.path(""), &text);
    let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let raw = toml::from_str(
        file(&doc, "/etc/natsmesh/natsmesh.d/10-node.toml")["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    (text, doc, raw)
}

#[test]
fn digitalocean_user_data_is_valid_cloud_config_with_root_only_secrets() {
    let inputs = Inputs::new();
    let out = inputs.run(&[
        "--provider",
        "digitalocean",
        "--dns",
        "digitalocean",
        "--dns-token",
        "dns.tok",
        "--lb-id",
        "4de7ac8b-495b-4884-9a69-1050c6793cd6",
        "--lb-token",
        "lb.tok",
    ]);
    let said = String::from_utf8(out.stderr.clone()).unwrap();
    let (text, doc, raw) = valid(&inputs, out);
    // The node's settings: a drop-in natsmesh reads, every key known.
    let dropin = file(&doc, "/etc/natsmesh/natsmesh.d/10-node.toml");
    assert_eq!(dropin["permissions"].as_str(), Some("0644"));
    assert_eq!(raw.node.region.as_deref(), Some("fra1"));
    assert_eq!(raw.node.domain.as_deref(), Some("nats.example.com"));
    assert_eq!(
        raw.node.provider,
        natsmesh::config::schema::Provider::DigitalOcean
    );
    assert!(raw.discovery.enabled && raw.broker.cluster.enabled && raw.broker.gateway.enabled);
    assert_eq!(raw.discovery.bootstrap_expect, 3);
    // JetStream's limits, which natsmesh requires, have defaults.
    assert!(
        raw.broker.jetstream.max_file_store.is_some()
            && raw.broker.jetstream.max_memory_store.is_some()
    );
    assert_eq!(
        raw.load_balancer.token_file.as_deref(),
        Some(Path::new("lb-token"))
    );
    // Secrets: root-only, where the unit loads credentials, byte for byte.
    for (name, source) in [
        ("intermediate.key", "inter/fra1.key"),
        ("intermediate.crt", "inter/fra1.crt"),
        ("dns-token", "dns.tok"),
        ("lb-token", "lb.tok"),
    ] {
        let f = file(&doc, &format!("/etc/natsmesh/credentials/{name}"));
        assert_eq!(f["permissions"].as_str(), Some("0600"), "{name}");
        assert_eq!(f["owner"].as_str(), Some("root:root"), "{name}");
        assert_eq!(
            f["content"].as_str().unwrap(),
            std::fs::read_to_string(inputs.path(source)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        file(&doc, "/etc/natsmesh/roots.pem")["content"]
            .as_str()
            .unwrap(),
        std::fs::read_to_string(inputs.path("root/root.crt")).unwrap()
    );
    // The root's key never goes anywhere near a node.
    let root_key = std::fs::read_to_string(inputs.path("root/root.key")).unwrap();
    assert!(!text.contains(root_key.trim()));
    // natsmesh from its signed repository.
    let source = &doc["apt"]["sources"]["natsmesh.list"];
    assert_eq!(
        source["source"].as_str(),
        Some("deb [signed-by=$KEY_FILE] https://apt.example.com/natsmesh ./")
    );
    assert!(
        source["key"]
            .as_str()
            .unwrap()
            .contains("BEGIN PGP PUBLIC KEY BLOCK")
    );
    assert_eq!(doc["packages"][0].as_str(), Some("natsmesh"));
    // What it exposes is said, on stderr, never mixed into the YAML.
    assert!(
        said.contains("169.254.169.254") && said.contains("the DNS token"),
        "{said}"
    );
    assert!(!said.contains("dop_v1_"), "a token on stderr: {said}");
}

#[test]
fn linode_and_nocloud_user_data_are_valid_and_nocloud_needs_its_identity() {
    let inputs = Inputs::new();
    let linode = inputs.run(&[
        "--provider",
        "linode",
        "--lb-id",
        "12345",
        "--lb-token",
        "lb.tok",
    ]);
    let (_, _, raw) = valid(&inputs, linode);
    assert_eq!(
        raw.node.provider,
        natsmesh::config::schema::Provider::Linode
    );
    assert_eq!(raw.load_balancer.id.as_deref(), Some("12345"));
    assert_eq!(
        raw.load_balancer.backend,
        natsmesh::config::schema::LbBackend::Private
    );

    // A VPC backend: its subnet, and clients accepted where the VPC
    // address will be.
    let vpc = inputs.run(&[
        "--provider",
        "linode",
        "--lb-id",
        "12345",
        "--lb-token",
        "lb.tok",
        "--lb-vpc-subnet",
        "101",
    ]);
    let (_, _, raw) = valid(&inputs, vpc);
    assert_eq!(
        raw.load_balancer.backend,
        natsmesh::config::schema::LbBackend::Vpc
    );
    assert_eq!(raw.load_balancer.subnet_id, Some(101));
    assert_eq!(raw.broker.client.bind.to_string(), "any");
    let droplet = inputs.run(&[
        "--provider",
        "digitalocean",
        "--lb-id",
        "lb",
        "--lb-token",
        "lb.tok",
        "--lb-vpc-subnet",
        "101",
    ]);
    assert!(!droplet.status.success(), "{droplet:?}");
    assert!(
        String::from_utf8_lossy(&droplet.stderr).contains("for Linode NodeBalancers"),
        "{droplet:?}"
    );

    let missing = inputs.run(&["--provider", "nocloud"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("--name and --private-address"),
        "{missing:?}"
    );
    let nocloud = inputs.run(&[
        "--provider",
        "nocloud",
        "--name",
        "node-1",
        "--private-address",
        "10.251.0.1",
    ]);
    let (_, _, raw) = valid(&inputs, nocloud);
    assert_eq!(raw.node.name.as_deref(), Some("node-1"));
    assert_eq!(
        raw.node.private_address,
        Some(std::net::Ipv4Addr::new(10, 251, 0, 1))
    );
    // A balancer needs a provider's machine.
    let lb = inputs.run(&[
        "--provider",
        "nocloud",
        "--name",
        "node-1",
        "--private-address",
        "10.251.0.1",
        "--lb-id",
        "x",
        "--lb-token",
        "lb.tok",
    ]);
    assert!(!lb.status.success(), "{lb:?}");
}

#[test]
fn appliance_user_data_installs_nothing_and_names_the_api_proxies() {
    let inputs = Inputs::new();
    let out = inputs.run_without_repository(&[
        "--provider",
        "digitalocean",
        "--appliance",
        "--dns",
        "digitalocean",
        "--dns-token",
        "dns.tok",
        "--dns-api-url",
        "https://egress.example.com/do",
        "--lb-id",
        "4de7ac8b-495b-4884-9a69-1050c6793cd6",
        "--lb-token",
        "lb.tok",
        "--lb-api-url",
        "https://egress.example.com/do-lb",
    ]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let (_, doc, raw) = valid(&inputs, out);
    // natsmesh comes with the image: no source, no package, no apt run.
    for key in ["apt", "packages", "package_update"] {
        assert!(doc.get(key).is_none(), "{key} in appliance user-data");
    }
    assert!(said.contains("comes with the appliance image"), "{said}");
    assert_eq!(
        raw.dns_publish.api_url.as_deref(),
        Some("https://egress.example.com/do")
    );
    assert_eq!(
        raw.load_balancer.api_url.as_deref(),
        Some("https://egress.example.com/do-lb")
    );
    // Neither a repository nor the appliance; or both: refused.
    let neither = inputs.run_without_repository(&["--provider", "digitalocean"]);
    assert!(!neither.status.success(), "{neither:?}");
    assert!(
        String::from_utf8_lossy(&neither.stderr).contains("--apt-url"),
        "{neither:?}"
    );
    let both = inputs.run(&["--provider", "digitalocean", "--appliance"]);
    assert!(!both.status.success(), "{both:?}");
}
