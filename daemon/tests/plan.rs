//! `natsmeshd plan`: the HCL it writes is parsed (python-hcl2, installed by
//! scripts/deps) and checked against an excerpt of the providers' resource
//! schemas (tests/fixtures/terraform-schemas.toml), the balancer set-up
//! check's rules — the planned balancer is served by the provider fakes and
//! read and judged by natsmeshd's own code — and the listeners' ports. Its
//! script makes every region's user-data with the real `natsmeshd`, and no
//! secret reaches main.tf.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::NATSMESHD;
use common::terraform::{self, Res, api_object, blocks, expr, lit, of, one, resources};
use natsmesh::balancer::{self, Backend, LbProvider, LbSettings};
use natsmesh::plan::Ports;
use natsmesh_harness::fakes::do_lb::FakeDoLb;
use natsmesh_harness::fakes::lb::Model;
use natsmesh_harness::fakes::linode_lb::{FakeLinodeLb, LinodeNb};
use serde_json::{Map, Value, json};

const DOMAIN: &str = "nats.example.com";
const TOKEN: &str = "plan-test-token";

/// `natsmeshd plan ARGS --out DIR`; panics with its stderr on failure.
fn plan_into(dir: &Path, args: &[&str]) {
    let out = Command::new(NATSMESHD)
        .arg("plan")
        .args(args)
        .arg("--out")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// main.tf in `dir` as python-hcl2 reads it.
fn parse(dir: &Path) -> Value {
    terraform::parse(&dir.join("main.tf"))
}

fn schemas() -> toml::Table {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/terraform-schemas.toml");
    toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const META: [&str; 5] = ["count", "for_each", "depends_on", "lifecycle", "provider"];

/// Every problem of `body` against `schema` (a resource or a block).
fn against(what: &str, body: &Map<String, Value>, schema: &toml::Table, wrong: &mut Vec<String>) {
    let names = |k: &str| -> Vec<String> {
        schema
            .get(k)
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let required = names("required");
    let optional = names("optional");
    let empty = toml::Table::new();
    let block_schemas = schema
        .get("block")
        .and_then(toml::Value::as_table)
        .unwrap_or(&empty);
    for r in &required {
        if !body.contains_key(r) {
            wrong.push(format!("{what}: required {r} missing"));
        }
    }
    for (k, v) in body {
        // python-hcl2's own keys (`__is_block__`, `__comments__`).
        if k.starts_with("__") || META.contains(&k.as_str()) {
            continue;
        }
        if let Some(bs) = block_schemas.get(k).and_then(toml::Value::as_table) {
            for b in v
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
            {
                against(&format!("{what}.{k}"), b, bs, wrong);
            }
            continue;
        }
        if !required.contains(k) && !optional.contains(k) {
            wrong.push(format!("{what}: {k} is not an argument of it"));
            continue;
        }
        if let Some(allowed) = schema
            .get("one_of")
            .and_then(|o| o.get(k))
            .and_then(toml::Value::as_array)
            && let Some(text) = lit(v)
            && !allowed.iter().any(|a| a.as_str() == Some(text.as_str()))
        {
            wrong.push(format!("{what}: {k} = {text:?} is not one of {allowed:?}"));
        }
        if let Some(range) = schema
            .get("range")
            .and_then(|o| o.get(k))
            .and_then(toml::Value::as_array)
            && let (Some(lo), Some(hi)) = (range[0].as_integer(), range[1].as_integer())
            && let Some(n) = v.as_i64()
            && !(lo..=hi).contains(&n)
        {
            wrong.push(format!("{what}: {k} = {n} is outside [{lo}, {hi}]"));
        }
    }
    for (name, bs) in block_schemas {
        let min = bs.get("min").and_then(toml::Value::as_integer).unwrap_or(0);
        let n = blocks(body, name).len();
        if i64::try_from(n).unwrap() < min {
            wrong.push(format!("{what}: needs at least {min} {name} block(s)"));
        }
    }
}

/// Every problem of the plan against the vendored schemas.
fn schema_problems(all: &[Res]) -> Vec<String> {
    let s = schemas();
    let mut wrong = Vec::new();
    for r in all {
        match s
            .get(&r.kind)
            .and_then(|k| k.get(&r.ty))
            .and_then(toml::Value::as_table)
        {
            Some(schema) => against(&format!("{}.{}", r.ty, r.name), &r.body, schema, &mut wrong),
            None => wrong.push(format!("{} {}: not in the vendored schemas", r.kind, r.ty)),
        }
    }
    wrong
}

/// natsmeshd's balancer settings for a node of `region` with the
/// configuration's defaults.
fn settings(provider: LbProvider, region: &str, url: &str, id: &str) -> LbSettings {
    let p = Ports::defaults();
    LbSettings {
        provider,
        id: id.to_owned(),
        url: url.to_owned(),
        token_file: "/nonexistent".into(),
        instance_id: "42".into(),
        private_ip: Some("127.0.0.1".parse().unwrap()),
        backend: Backend::Private,
        client_bind: "127.0.0.1".parse().unwrap(),
        server_name: "digitalocean-fra1-42".into(),
        region: region.to_owned(),
        client_port: p.client,
        monitoring_port: Some(p.monitoring),
        ready: std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), p.ready),
        dwell: Duration::from_secs(5),
        stop_budget: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What the planned DigitalOcean balancer looks like to natsmeshd: served
/// by the fake, read by natsmeshd's client, judged by its set-up check.
fn do_setup_problems(lb: &Res, region: &str) -> Vec<String> {
    let id = "4de7ac8b-495b-4884-9a69-1050c6793cd6";
    let fake = terraform::do_lb(lb, id);
    let server = FakeDoLb::start(
        TOKEN,
        fake,
        vec![(42, "127.0.0.1".parse().unwrap())],
        Model::default(),
    );
    let s = settings(LbProvider::DigitalOcean, region, &server.api_url(), id);
    let client =
        natsmesh::provider::digitalocean::balancer::DigitalOcean::new(&s.url, id, 42).unwrap();
    let setup = runtime().block_on(client.read(TOKEN)).unwrap();
    balancer::check(&setup, &s)
}

/// The same for a planned NodeBalancer config.
fn linode_setup_problems(nb: &Res, config: &Res, region: &str) -> Vec<String> {
    let mut fake = LinodeNb::tcp(7001, &lit(&nb.body["region"]).unwrap(), 31, 0);
    let c = &mut fake.configs[0];
    for (k, v) in api_object(&config.body).as_object().unwrap() {
        if k != "nodebalancer_id" {
            c[k] = v.clone();
        }
    }
    let server = FakeLinodeLb::start(TOKEN, fake, Model::default());
    let s = settings(LbProvider::Linode, region, &server.api_url(), "7001");
    let client = natsmesh::provider::linode::balancer::Linode::new(
        &s.url,
        "7001",
        natsmesh::provider::linode::balancer::Reach::Private("192.168.130.5".parse().unwrap()),
        s.client_port,
        &s.server_name,
    )
    .unwrap();
    let seen = runtime().block_on(client.read(TOKEN)).unwrap();
    balancer::check(&seen.setup, &s)
}

/// Inbound rules as port → sources (each source an expression or a
/// literal, as written).
fn inbound(
    fw: &Res,
    block: &str,
    port_key: &str,
    source_keys: &[&str],
) -> BTreeMap<u16, BTreeSet<String>> {
    let mut out: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for rule in blocks(&fw.body, block) {
        let port: u16 = lit(&rule[port_key]).unwrap().parse().unwrap();
        let sources = out.entry(port).or_default();
        for k in source_keys {
            match rule.get(*k) {
                Some(Value::Array(items)) => {
                    for i in items {
                        sources.insert(lit(i).unwrap_or_else(|| expr(i)));
                    }
                }
                Some(v) => {
                    sources.insert(expr(v));
                }
                None => {}
            }
        }
    }
    out
}

#[test]
fn the_digitalocean_plan_matches_the_schemas_the_set_up_check_and_the_listeners() {
    let dir = tempfile::tempdir().unwrap();
    plan_into(
        dir.path(),
        &[
            "digitalocean",
            "--regions",
            "fra1,nyc3,sgp1",
            "--nodes",
            "3",
            "--domain",
            DOMAIN,
            "--client-name",
            "nats.example.org",
            "--metrics-private",
            "--leafnodes",
            "--appliance",
            "--image",
            "private/7",
        ],
    );
    let all = resources(&parse(dir.path()));
    assert_eq!(schema_problems(&all), Vec::<String>::new());
    let p = Ports::defaults();
    for ty in [
        "digitalocean_vpc",
        "digitalocean_loadbalancer",
        "digitalocean_droplet",
        "digitalocean_firewall",
    ] {
        assert_eq!(of(&all, ty).len(), 3, "{ty}");
    }
    let regions = ["fra1", "nyc3", "sgp1"];
    for region in regions {
        // The balancer natsmeshd would join: its own set-up check accepts it.
        let lb = one(&all, "digitalocean_loadbalancer", region);
        assert_eq!(do_setup_problems(lb, region), Vec::<String>::new());
        assert_eq!(
            expr(&lb.body["vpc_uuid"]),
            format!("digitalocean_vpc.{region}.id")
        );
        assert_eq!(
            blocks(&lb.body, "lifecycle")[0]["ignore_changes"],
            json!(["droplet_ids"]),
            "membership stays natsmeshd's"
        );
        // The machines: count, the region's VPC, user-data from a file.
        let d = one(&all, "digitalocean_droplet", region);
        assert_eq!(d.body["count"], json!(3));
        assert_eq!(lit(&d.body["region"]).as_deref(), Some(region));
        assert_eq!(
            expr(&d.body["user_data"]),
            format!("file(\"${{path.module}}/user-data-{region}.yaml\")")
        );
        // Exactly each listener's port, from exactly who needs it.
        let fw = one(&all, "digitalocean_firewall", region);
        assert_eq!(
            expr(&fw.body["droplet_ids"]),
            format!("digitalocean_droplet.{region}[*].id")
        );
        let rules = inbound(
            fw,
            "inbound_rule",
            "port_range",
            &[
                "source_addresses",
                "source_load_balancer_uids",
                "source_droplet_ids",
                "source_tags",
            ],
        );
        let vpc = format!("digitalocean_vpc.{region}.ip_range");
        let lb_uid = format!("digitalocean_loadbalancer.{region}.id");
        let others: Vec<String> = regions
            .iter()
            .filter(|g| **g != region)
            .map(|g| format!("digitalocean_droplet.{g}[*].ipv4_address"))
            .collect();
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let expected: BTreeMap<u16, BTreeSet<String>> = [
            (p.client, set(&[&lb_uid, &vpc])),
            (p.ready, set(&[&lb_uid])),
            (p.cluster, set(&[&vpc])),
            (p.gateway, set(&[&format!("concat({})", others.join(", "))])),
            (p.leafnodes, set(&["0.0.0.0/0", "::/0"])),
            (p.metrics, set(&[&vpc])),
        ]
        .into_iter()
        .collect();
        assert_eq!(rules, expected, "{region}");
        assert!(!rules.contains_key(&p.monitoring));
        // The balancer's own name, for clients and certificates.
        let rec = one(&all, "digitalocean_record", &format!("lb_{region}"));
        assert_eq!(lit(&rec.body["name"]), Some(format!("lb.{region}")));
        assert_eq!(
            expr(&rec.body["value"]),
            format!("digitalocean_loadbalancer.{region}.ip")
        );
        let out = all.iter().any(|r| {
            r.kind == "resource"
                && r.ty == "digitalocean_record"
                && r.name == format!("client0_{region}")
        });
        assert!(out, "nats.example.org → {region}'s balancer");
    }
    let zone = one(&all, "digitalocean_domain", "zone");
    assert_eq!(lit(&zone.body["name"]).as_deref(), Some(DOMAIN));
    let client_zone = all
        .iter()
        .find(|r| r.kind == "data" && r.ty == "digitalocean_domain")
        .unwrap();
    assert_eq!(
        lit(&client_zone.body["name"]).as_deref(),
        Some("example.org")
    );
}

#[test]
fn a_plan_the_set_up_check_would_refuse_is_seen_as_refused() {
    // The check above is not vacuous: the same path judges a balancer
    // whose health check asks the monitoring port, or that terminates TLS.
    let dir = tempfile::tempdir().unwrap();
    plan_into(
        dir.path(),
        &[
            "digitalocean",
            "--regions",
            "fra1",
            "--domain",
            DOMAIN,
            "--appliance",
            "--image",
            "private/7",
        ],
    );
    let all = resources(&parse(dir.path()));
    let mut lb = one(&all, "digitalocean_loadbalancer", "fra1").clone();
    let hc = lb.body.get_mut("healthcheck").unwrap()[0]
        .as_object_mut()
        .unwrap();
    hc.insert("port".into(), json!(Ports::defaults().monitoring));
    let wrong = do_setup_problems(&lb, "fra1");
    assert!(
        wrong.iter().any(|w| w.contains("monitoring port")),
        "{wrong:?}"
    );
    let mut lb = one(&all, "digitalocean_loadbalancer", "fra1").clone();
    let rule = lb.body.get_mut("forwarding_rule").unwrap()[0]
        .as_object_mut()
        .unwrap();
    rule.insert("entry_protocol".into(), json!("\"https\""));
    let wrong = do_setup_problems(&lb, "fra1");
    assert!(
        wrong.iter().any(|w| w.contains("must be tcp → tcp")),
        "{wrong:?}"
    );
    // A NodeBalancer config with an HTTP check on the NATS port.
    let dir = tempfile::tempdir().unwrap();
    plan_into(
        dir.path(),
        &[
            "linode",
            "--regions",
            "eu-central",
            "--domain",
            DOMAIN,
            "--appliance",
            "--image",
            "private/7",
        ],
    );
    let nb_all = resources(&parse(dir.path()));
    let mut config = one(&nb_all, "linode_nodebalancer_config", "eu-central").clone();
    config.body.insert("check".into(), json!("\"http\""));
    let nb = one(&nb_all, "linode_nodebalancer", "eu-central");
    let wrong = linode_setup_problems(nb, &config, "eu-central");
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("set check = \"connection\"")),
        "{wrong:?}"
    );
    // And the schema check catches an argument the provider does not have.
    let mut d = one(&all, "digitalocean_droplet", "fra1").clone();
    d.body.insert("user_data_file".into(), json!("\"x\""));
    assert!(schema_problems(&[d])[0].contains("user_data_file is not an argument"));
}

#[test]
fn the_linode_plan_matches_the_schemas_the_set_up_check_and_the_listeners() {
    let dir = tempfile::tempdir().unwrap();
    plan_into(
        dir.path(),
        &[
            "linode",
            "--regions",
            "eu-central,us-east",
            "--nodes",
            "2",
            "--domain",
            DOMAIN,
            "--client-name",
            "nats.example.org",
            "--appliance",
            "--image",
            "private/7",
        ],
    );
    let all = resources(&parse(dir.path()));
    assert_eq!(schema_problems(&all), Vec::<String>::new());
    let p = Ports::defaults();
    let regions = ["eu-central", "us-east"];
    for region in regions {
        let nb = one(&all, "linode_nodebalancer", region);
        let config = one(&all, "linode_nodebalancer_config", region);
        assert_eq!(
            expr(&config.body["nodebalancer_id"]),
            format!("linode_nodebalancer.{region}.id")
        );
        assert_eq!(config.body["port"], json!(p.client));
        assert_eq!(
            linode_setup_problems(nb, config, region),
            Vec::<String>::new()
        );
        let i = one(&all, "linode_instance", region);
        assert_eq!(i.body["count"], json!(2));
        assert_eq!(i.body["private_ip"], json!(true));
        assert_eq!(
            expr(&blocks(&i.body, "metadata")[0]["user_data"]),
            format!("filebase64(\"${{path.module}}/user-data-{region}.yaml\")")
        );
        let fw = one(&all, "linode_firewall", region);
        assert_eq!(lit(&fw.body["inbound_policy"]).as_deref(), Some("DROP"));
        let rules = inbound(fw, "inbound", "ports", &["ipv4", "ipv6"]);
        let other = regions.iter().find(|g| **g != region).unwrap();
        let expected: BTreeMap<u16, BTreeSet<String>> = [
            (
                p.client,
                [natsmesh::plan::linode::NODEBALANCER_SOURCES.to_owned()].into(),
            ),
            (
                p.cluster,
                [format!(
                    "[for ip in linode_instance.{region}[*].private_ip_address : \"${{ip}}/32\"]"
                )]
                .into(),
            ),
            (
                p.gateway,
                [format!(
                    "[for ip in concat(linode_instance.{other}[*].ip_address) : \"${{ip}}/32\"]"
                )]
                .into(),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(rules, expected, "{region}");
        // The region's own Domain, where its nodes publish, and the
        // NodeBalancer's name in it.
        let d = one(&all, "linode_domain", region);
        assert_eq!(lit(&d.body["domain"]), Some(format!("{region}.{DOMAIN}")));
        let lb = one(&all, "linode_domain_record", &format!("lb_{region}"));
        assert_eq!(
            expr(&lb.body["domain_id"]),
            format!("linode_domain.{region}.id")
        );
        assert_eq!(
            expr(&lb.body["target"]),
            format!("linode_nodebalancer.{region}.ipv4")
        );
    }
    // A master Domain needs its SOA e-mail (Linode refuses one without).
    for d in of(&all, "linode_domain") {
        assert_eq!(lit(&d.body["type"]).as_deref(), Some("master"));
        assert!(
            lit(&d.body["soa_email"]).is_some_and(|e| e.contains('@')),
            "{}",
            d.name
        );
    }
    let zone = one(&all, "linode_domain", "zone");
    assert_eq!(lit(&zone.body["domain"]).as_deref(), Some(DOMAIN));
}

#[test]
fn the_script_makes_each_regions_user_data_and_no_secret_reaches_main_tf() {
    let dir = tempfile::tempdir().unwrap();
    // The operator's directory (the root, the tokens) and the plan's.
    let d = dir.path();
    let infra = d.join("infra");
    plan_into(
        &infra,
        &[
            "digitalocean",
            "--regions",
            "fra1,nyc3",
            "--nodes",
            "3",
            "--domain",
            DOMAIN,
            "--client-name",
            "nats.example.org",
            "--appliance",
            "--image",
            "private/7",
        ],
    );
    let main_before = std::fs::read_to_string(infra.join("main.tf")).unwrap();
    // The operator's side: the offline root, two tokens, and Terraform's
    // outputs once the balancers exist (a stand-in `terraform`).
    let ok = |c: &mut Command| assert!(c.status().unwrap().success());
    ok(Command::new(NATSMESHD)
        .args(["ca", "init", "--out"])
        .arg(d.join("pki")));
    std::fs::create_dir(d.join("tokens")).unwrap();
    for t in ["lb-token", "dns-token"] {
        let f = d.join("tokens").join(t);
        std::fs::write(&f, format!("dop_v1_secret-{t}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let bin = d.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join("terraform"),
        // Asked in the plan's directory, where its state is.
        format!(
            "#!/bin/sh\n[ \"$1\" = \"-chdir={infra}\" ] || exit 1\n\
             [ \"$2 $3 $4\" = \"output -raw lb_id_fra1\" ] && {{ echo 4de7ac8b-495b-4884-9a69-1050c6793cd6; exit; }}\n\
             [ \"$2 $3 $4\" = \"output -raw lb_id_nyc3\" ] && {{ echo 0a1b2c3d-495b-4884-9a69-1050c6793cd6; exit; }}\nexit 1\n",
            infra = infra.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            bin.join("terraform"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Run from the operator's directory, as the README shows.
    let out = Command::new("sh")
        .arg(infra.join("user-data.sh"))
        .current_dir(d)
        .env("PATH", path)
        .env("NATSMESHD", NATSMESHD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (region, lb) in [
        ("fra1", "4de7ac8b-495b-4884-9a69-1050c6793cd6"),
        ("nyc3", "0a1b2c3d-495b-4884-9a69-1050c6793cd6"),
    ] {
        let f = infra.join(format!("user-data-{region}.yaml"));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let ud = std::fs::read_to_string(&f).unwrap();
        assert!(ud.contains(lb), "{region}: the balancer's id");
        assert!(
            ud.contains(&format!("lb.{region}.{DOMAIN}")),
            "{region}: its name"
        );
        assert!(ud.contains("nats.example.org"));
        assert!(ud.contains("PRIVATE KEY") && ud.contains("dop_v1_secret-lb-token"));
        // The intermediate the script made permits the shared name.
        assert!(d.join(format!("pki/{region}.crt")).exists());
    }
    // main.tf is what plan wrote, and none of the secrets is in it or in the
    // script.
    let main = std::fs::read_to_string(infra.join("main.tf")).unwrap();
    assert_eq!(main, main_before);
    let script = std::fs::read_to_string(infra.join("user-data.sh")).unwrap();
    for text in [&main, &script] {
        assert!(!text.contains("PRIVATE KEY") && !text.contains("dop_v1_"));
    }
}

#[test]
fn printed_the_plan_is_one_hcl_file_and_refusals_exit_2() {
    let out = Command::new(NATSMESHD)
        .args([
            "plan",
            "linode",
            "--regions",
            "eu-central",
            "--domain",
            DOMAIN,
            "--appliance",
            "--image",
            "private/7",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.tf"), &out.stdout).unwrap();
    let all = resources(&parse(dir.path()));
    assert_eq!(of(&all, "linode_nodebalancer_config").len(), 1);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("# ---- user-data.sh"), "{text}");

    let out = Command::new(NATSMESHD)
        .args([
            "plan",
            "digitalocean",
            "--regions",
            "fra1",
            "--domain",
            DOMAIN,
            "--appliance",
            "--image",
            "private/7",
            "--client-name",
            DOMAIN,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client-name"));
    // The appliance is an image of its own: a stock one has no natsmesh.
    let out = Command::new(NATSMESHD)
        .args([
            "plan",
            "linode",
            "--regions",
            "eu-central",
            "--domain",
            DOMAIN,
            "--appliance",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--image"));
}
