//! Node identity against fakes of both metadata services (built from the
//! providers' published contracts): the answers, a status-code matrix per
//! provider, the server name kept in the state directory, and the listeners
//! rendered from the identity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use natsmesh::provider::digitalocean::DoMetadata;
use natsmesh::provider::http::client;
use natsmesh::provider::linode::LinodeMetadata;
use natsmesh::provider::{Identity, MetadataError, identity_with_retry};
use natsmesh_harness::fakes::Fault;
use natsmesh_harness::fakes::do_metadata::{Droplet, FakeDoMetadata, JsonForm};
use natsmesh_harness::fakes::linode_metadata::{FakeLinodeMetadata, Linode};
use natsmesh_harness::{CURRENT, broker_binary, scratch};

const NATSMESHD: &str = env!("CARGO_BIN_EXE_natsmeshd");
const TIMEOUT: Duration = Duration::from_millis(300);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn do_identity(fake: &FakeDoMetadata, retry_for: Duration) -> Result<Identity, MetadataError> {
    rt().block_on(identity_with_retry(
        &DoMetadata::new(&fake.url(), client(TIMEOUT)),
        retry_for,
    ))
}

fn linode(bases: &[String]) -> LinodeMetadata {
    LinodeMetadata::new(bases, client(TIMEOUT))
}

fn linode_identity(
    fake: &FakeLinodeMetadata,
    retry_for: Duration,
) -> Result<Identity, MetadataError> {
    rt().block_on(identity_with_retry(&linode(&[fake.url()]), retry_for))
}

// --- DigitalOcean -----------------------------------------------------------

#[test]
fn digitalocean_identity_from_the_json_document() {
    let fake = FakeDoMetadata::start(Droplet::default());
    let id = do_identity(&fake, Duration::ZERO).unwrap();
    assert_eq!(id.instance_id, "2756294");
    assert_eq!(id.hostname, "sample-droplet");
    assert_eq!(id.provider_region, "nyc3");
    assert_eq!(id.private_ipv4, Some("10.132.0.5".parse().unwrap()));
    assert_eq!(id.public_ipv4, Some("104.131.20.105".parse().unwrap()));
    assert_eq!(
        id.public_ipv6,
        Some("2604:a880:1:20::2e7:f001".parse().unwrap())
    );
    assert_eq!(id.tags, ["natsmesh", "fra1"]);
    assert_eq!(id.server_name(), "digitalocean-nyc3-2756294");
    assert_eq!(fake.requests(), ["/metadata/v1.json"]);
}

#[test]
fn digitalocean_falls_back_to_the_per_path_endpoints() {
    for form in [JsonForm::Array, JsonForm::Missing] {
        let fake = FakeDoMetadata::start(Droplet::default());
        fake.state.lock().unwrap().json = form;
        let id = do_identity(&fake, Duration::ZERO).unwrap();
        assert_eq!(
            id,
            do_identity(&FakeDoMetadata::start(Droplet::default()), Duration::ZERO).unwrap(),
            "{form:?}"
        );
        assert!(
            fake.requests()
                .contains(&"/metadata/v1/interfaces/private/0/ipv4/address".to_owned())
        );
    }
}

#[test]
fn digitalocean_without_a_private_interface() {
    let fake = FakeDoMetadata::start(Droplet {
        private_ipv4: None,
        ..Droplet::default()
    });
    assert_eq!(
        do_identity(&fake, Duration::ZERO).unwrap().private_ipv4,
        None
    );
}

#[test]
fn digitalocean_status_matrix() {
    let fake = FakeDoMetadata::start(Droplet::default());
    // 5xx: retried, and a passing hiccup is survived.
    fake.fault(Fault::StatusTimes(500, 2));
    assert!(do_identity(&fake, Duration::from_secs(5)).is_ok());
    // 5xx for longer than the bound: the message names the endpoint.
    fake.fault(Fault::Status(503));
    let started = Instant::now();
    let err = do_identity(&fake, Duration::from_secs(1)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, MetadataError::Status { status: 503, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("{}/metadata/v1.json", fake.url())),
        "{err}"
    );
    // 404 everywhere: not retried, named.
    fake.fault(Fault::Status(404));
    let err = do_identity(&fake, Duration::from_secs(10)).unwrap_err();
    assert!(
        err.to_string().contains("/metadata/v1/id") && err.to_string().contains("404"),
        "{err}"
    );
    // 401 (a proxy in the way): not retried.
    fake.fault(Fault::Status(401));
    let started = Instant::now();
    assert!(matches!(
        do_identity(&fake, Duration::from_secs(10)),
        Err(MetadataError::Status { status: 401, .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
    // No answer in time: unreachable, retried within the bound.
    fake.fault(Fault::Delay(Duration::from_secs(2)));
    let err = do_identity(&fake, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, MetadataError::Unreachable { .. }), "{err}");
    // An empty body: the JSON is unusable, the text endpoints are empty.
    fake.fault(Fault::EmptyBody);
    let err = do_identity(&fake, Duration::ZERO).unwrap_err();
    assert!(
        matches!(&err, MetadataError::Invalid { field, .. } if field == "id"),
        "{err}"
    );
}

#[test]
fn digitalocean_garbage_is_refused_field_by_field() {
    let fake = FakeDoMetadata::start(Droplet::default());
    fake.fault(Fault::Garbage);
    let err = do_identity(&fake, Duration::ZERO).unwrap_err();
    assert!(
        matches!(&err, MetadataError::Invalid { field, .. } if field == "droplet_id"),
        "{err}"
    );
    fake.fault(Fault::None);
    fake.state.lock().unwrap().droplet.private_ipv4 = Some("10.132.0".into());
    let err = do_identity(&fake, Duration::ZERO).unwrap_err();
    assert!(
        matches!(&err, MetadataError::Invalid { field, .. } if field == "interfaces.private[0].ipv4.ip_address"),
        "{err}"
    );
    assert!(err.to_string().contains("\"10.132.0\""), "{err}");
}

#[test]
fn digitalocean_addresses_must_fit_their_role() {
    for form in [JsonForm::Object, JsonForm::Missing] {
        for (private, public, public6, field, value) in [
            (Some("0.0.0.0"), None, None, "private", "0.0.0.0"),
            (Some("8.8.8.8"), None, None, "private", "8.8.8.8"),
            (Some("224.0.0.1"), None, None, "private", "224.0.0.1"),
            (None, Some("10.0.0.9"), None, "public", "10.0.0.9"),
            (None, Some("127.0.0.1"), None, "public", "127.0.0.1"),
            (None, None, Some("fe80::1"), "public", "fe80::1"),
        ] {
            let fake = FakeDoMetadata::start(Droplet {
                private_ipv4: private.map(Into::into),
                public_ipv4: public.map(Into::into).or(Some("104.131.20.105".into())),
                public_ipv6: public6.map(Into::into),
                ..Droplet::default()
            });
            fake.state.lock().unwrap().json = form;
            let err = do_identity(&fake, Duration::ZERO).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, MetadataError::Invalid { field: f, .. } if f.contains(field)),
                "{form:?} {value}: {msg}"
            );
            assert!(
                msg.contains(&format!("DigitalOcean metadata gave {value}, which is not")),
                "{form:?}: {msg}"
            );
            assert!(!err.retryable());
        }
    }
    // The fake's own addresses, documentation ranges as public included.
    let fake = FakeDoMetadata::start(Droplet {
        public_ipv4: Some("203.0.113.5".into()),
        private_ipv4: Some("100.64.3.4".into()),
        ..Droplet::default()
    });
    do_identity(&fake, Duration::ZERO).unwrap();
}

#[test]
fn linode_addresses_must_fit_their_role() {
    for (private, public, slaac, field, value) in [
        (
            "0.0.0.0/17",
            "192.0.2.10/24",
            None,
            "ipv4.private[0]",
            "0.0.0.0",
        ),
        (
            "8.8.8.8/17",
            "192.0.2.10/24",
            None,
            "ipv4.private[0]",
            "8.8.8.8",
        ),
        (
            "192.168.139.7/17",
            "192.168.1.1/24",
            None,
            "ipv4.public[0]",
            "192.168.1.1",
        ),
        (
            "192.168.139.7/17",
            "100.64.0.1/24",
            None,
            "ipv4.public[0]",
            "100.64.0.1",
        ),
        (
            "192.168.139.7/17",
            "192.0.2.10/24",
            Some("fd00::1/128"),
            "ipv6.slaac",
            "fd00::1",
        ),
    ] {
        let fake = FakeLinodeMetadata::start(Linode {
            private_ipv4: vec![private.into()],
            public_ipv4: vec![public.into()],
            slaac: slaac.map(Into::into),
            ..Linode::default()
        });
        let err = linode_identity(&fake, Duration::ZERO).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, MetadataError::Invalid { field: f, .. } if f == field),
            "{value}: {msg}"
        );
        assert!(
            msg.contains(&format!("Linode metadata gave {value}, which is not")),
            "{msg}"
        );
    }
    let fake = FakeLinodeMetadata::start(Linode {
        public_ipv4: vec!["198.51.100.7/24".into()],
        ..Linode::default()
    });
    linode_identity(&fake, Duration::ZERO).unwrap();
}

#[test]
fn unreachable_metadata_names_the_endpoint() {
    // A port nothing listens on.
    let port = natsmesh_harness::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let err = rt()
        .block_on(identity_with_retry(
            &DoMetadata::new(&url, client(TIMEOUT)),
            Duration::from_millis(600),
        ))
        .unwrap_err();
    assert!(matches!(err, MetadataError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

// --- Linode -----------------------------------------------------------------

#[test]
fn linode_identity_through_the_token_flow() {
    let fake = FakeLinodeMetadata::start(Linode::default());
    let id = linode_identity(&fake, Duration::ZERO).unwrap();
    assert_eq!(id.instance_id, "532754976");
    assert_eq!(id.hostname, "nats-fra1-1");
    assert_eq!(id.provider_region, "us-east");
    // CIDR suffixes stripped.
    assert_eq!(id.private_ipv4, Some("192.168.139.7".parse().unwrap()));
    assert_eq!(id.public_ipv4, Some("192.0.2.10".parse().unwrap()));
    assert_eq!(
        id.public_ipv6,
        Some("2600:3c03::f03c:91ff:fe24:3a2f".parse().unwrap())
    );
    assert_eq!(id.server_name(), "linode-us-east-532754976");
    assert_eq!(fake.issued(), 1);
}

#[test]
fn linode_renews_an_expired_token_once() {
    let fake = FakeLinodeMetadata::start(Linode::default());
    let md = linode(&[fake.url()]);
    let rt = rt();
    rt.block_on(identity_with_retry(&md, Duration::ZERO))
        .unwrap();
    assert_eq!(fake.issued(), 1);
    // Cached: no new token while it is valid.
    rt.block_on(identity_with_retry(&md, Duration::ZERO))
        .unwrap();
    assert_eq!(fake.issued(), 1);
    fake.expire_tokens();
    rt.block_on(identity_with_retry(&md, Duration::ZERO))
        .unwrap();
    assert_eq!(fake.issued(), 2);
}

#[test]
fn linode_status_matrix() {
    let fake = FakeLinodeMetadata::start(Linode::default());
    fake.fault(Fault::Status(401));
    let err = linode_identity(&fake, Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(err, MetadataError::Status { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/v1/token"), "{err}");
    fake.fault(Fault::StatusTimes(502, 2));
    assert!(linode_identity(&fake, Duration::from_secs(5)).is_ok());
    fake.fault(Fault::Status(500));
    assert!(matches!(
        linode_identity(&fake, Duration::from_millis(700)),
        Err(MetadataError::Status { status: 500, .. })
    ));
    fake.fault(Fault::Status(404));
    assert!(matches!(
        linode_identity(&fake, Duration::from_secs(5)),
        Err(MetadataError::Status { status: 404, .. })
    ));
    fake.fault(Fault::Delay(Duration::from_secs(2)));
    assert!(matches!(
        linode_identity(&fake, Duration::from_millis(700)),
        Err(MetadataError::Unreachable { .. })
    ));
    fake.fault(Fault::EmptyBody);
    let err = linode_identity(&fake, Duration::ZERO).unwrap_err();
    assert!(matches!(err, MetadataError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("/v1/instance"), "{err}");
    fake.fault(Fault::Garbage);
    let err = linode_identity(&fake, Duration::ZERO).unwrap_err();
    assert!(
        matches!(&err, MetadataError::Invalid { field, .. } if field == "id"),
        "{err}"
    );
}

#[test]
fn linode_garbage_network_is_refused_naming_the_field() {
    let fake = FakeLinodeMetadata::start(Linode {
        private_ipv4: vec!["192.168.300.7/17".into()],
        ..Linode::default()
    });
    let err = linode_identity(&fake, Duration::ZERO).unwrap_err();
    assert!(
        matches!(&err, MetadataError::Invalid { field, .. } if field == "ipv4.private[0]"),
        "{err}"
    );
}

#[test]
fn linode_tries_its_ipv6_address_when_the_first_is_unreachable() {
    let fake = FakeLinodeMetadata::start(Linode::default());
    let dead = format!("http://127.0.0.1:{}", natsmesh_harness::free_port());
    let id = rt()
        .block_on(identity_with_retry(
            &linode(&[dead, fake.url()]),
            Duration::ZERO,
        ))
        .unwrap();
    assert_eq!(id.instance_id, "532754976");
}

// --- through natsmeshd ------------------------------------------------------

fn natsmeshd(args: &[&str], dir: &Path) -> Output {
    Command::new(NATSMESHD)
        .args(args)
        .env_clear()
        .env("HOME", dir)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn cloud_config(dir: &Path, provider: &str, url: &str, extra: &str) -> std::path::PathBuf {
    let main = dir.join("natsmesh.toml");
    std::fs::write(
        &main,
        format!(
            r#"[node]
region = "fra1"
provider = "{provider}"

[node.metadata]
url = "{url}"
timeout = "300ms"
retry_for = "1s"

[broker]
binary = "{}"
state_dir = "{}"

[broker.jetstream]
max_memory_store = "64MiB"
max_file_store = "1GiB"
{extra}"#,
            broker_binary(CURRENT).display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    main
}

const SUPERCLUSTER: &str = "\n[broker.cluster]\nenabled = true\n\n[broker.gateway]\nenabled = true\n\n[broker.client]\nadvertise = \"none\"\n";

/// Routes and gateways off loopback need mutual TLS: a region intermediate
/// that also permits the fakes' public gateway addresses, as a drop-in.
fn supercluster_tls(dir: &Path) -> (common::pki::Pki, String) {
    let pki = common::pki::Pki::new();
    pki.root("r").intermediate_with(
        "r",
        "fra1",
        "i",
        &[
            "--permit-ip",
            "104.131.20.0/24",
            "--permit-ip",
            "192.0.2.0/24",
        ],
    );
    let tls = common::pki::issue_config(
        &pki.path("r/root.crt"),
        &pki.path("i/fra1.crt"),
        &pki.path("i/fra1.key"),
        "1d",
    );
    std::fs::create_dir_all(dir.join("natsmesh.d")).unwrap();
    std::fs::write(
        dir.join("natsmesh.d/10-tls.toml"),
        format!("[node]\ndomain = \"nats.test\"\n\n{tls}"),
    )
    .unwrap();
    // The caller keeps the PKI (its files) alive while natsmeshd reads it.
    (pki, SUPERCLUSTER.to_owned())
}

#[test]
fn listeners_follow_the_identity_on_each_provider() {
    let dir = scratch();
    let do_fake = FakeDoMetadata::start(Droplet::default());
    let (_pki, extra) = supercluster_tls(dir.path());
    let main = cloud_config(dir.path(), "digitalocean", &do_fake.url(), &extra);
    let out = natsmeshd(&["render", "-c", main.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = text(&out.stdout);
    for line in [
        "server_name: \"digitalocean-nyc3-2756294\"",
        "listen: \"10.132.0.5:4222\"",
        "http: \"127.0.0.1:8222\"",
        "  listen: \"10.132.0.5:6222\"",
        "  advertise: \"10.132.0.5:6222\"",
        "  no_advertise: true",
        "  routes: [\"nats-route://10.132.0.5:6222\"]",
        // The gateway's public address is natsmeshd's gate (which binds a
        // peer's claimed region to its certificate); the broker's own
        // gateway listener is on loopback behind it.
        "  listen: \"127.0.0.1:7222\"",
        "  advertise: \"104.131.20.105:7222\"",
    ] {
        assert!(r.lines().any(|l| l == line), "missing {line:?} in\n{r}");
    }

    let dir = scratch();
    let lin = FakeLinodeMetadata::start(Linode::default());
    let (_pki, extra) = supercluster_tls(dir.path());
    let main = cloud_config(dir.path(), "linode", &lin.url(), &extra);
    let out = natsmeshd(&["render", "-c", main.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = text(&out.stdout);
    for line in [
        "server_name: \"linode-us-east-532754976\"",
        "listen: \"192.168.139.7:4222\"",
        "  advertise: \"192.168.139.7:6222\"",
        "  advertise: \"192.0.2.10:7222\"",
    ] {
        assert!(r.lines().any(|l| l == line), "missing {line:?} in\n{r}");
    }
}

#[test]
fn a_linode_without_a_private_address_is_told_what_to_do() {
    let dir = scratch();
    let lin = FakeLinodeMetadata::start(Linode {
        private_ipv4: vec![],
        ..Linode::default()
    });
    let main = cloud_config(
        dir.path(),
        "linode",
        &lin.url(),
        "\n[broker.cluster]\nenabled = true\nbind = \"private\"\n",
    );
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("broker.cluster.bind")
            && err.contains("no private IPv4")
            && err.contains("Add an IP Address"),
        "{err}"
    );
}

#[test]
fn unreachable_metadata_fails_check_naming_the_endpoint() {
    let dir = scratch();
    let url = format!("http://127.0.0.1:{}", natsmesh_harness::free_port());
    let main = cloud_config(dir.path(), "digitalocean", &url, "");
    let started = Instant::now();
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("node.provider") && err.contains(&url) && err.contains("unreachable"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn cloud_identity_keys_are_not_taken_from_the_file() {
    let dir = scratch();
    let do_fake = FakeDoMetadata::start(Droplet::default());
    let main = cloud_config(dir.path(), "digitalocean", &do_fake.url(), "");
    let text_ = std::fs::read_to_string(&main).unwrap().replace(
        "provider = \"digitalocean\"",
        "provider = \"digitalocean\"\nname = \"mine\"\nprivate_address = \"10.0.0.1\"",
    );
    std::fs::write(&main, text_).unwrap();
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("node.name: comes from the digitalocean metadata service"),
        "{err}"
    );
    assert!(err.contains("node.private_address: comes from"), "{err}");
}

#[test]
fn the_server_name_is_kept_and_a_different_identity_is_refused() {
    let dir = scratch();
    let fake = FakeDoMetadata::start(Droplet::default());
    let main = cloud_config(
        dir.path(),
        "digitalocean",
        &fake.url(),
        "\n[broker.client]\nbind = \"127.0.0.1\"\nport = 0\n",
    );
    // Loopback ports for a real start on this machine.
    let (client, http) = (natsmesh_harness::free_port(), natsmesh_harness::free_port());
    let cfg = std::fs::read_to_string(&main)
        .unwrap()
        .replace("port = 0", &format!("port = {client}"))
        + &format!(
            "\n[broker.monitoring]\nport = {http}\n\n[control]\nsocket = \"{}\"\n",
            dir.path().join("control.sock").display()
        );
    std::fs::write(&main, cfg).unwrap();

    let mut child = Command::new(NATSMESHD)
        .args(["run", "-c", main.to_str().unwrap()])
        .env_clear()
        .env("HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let name_file = dir.path().join("state/server-name");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !name_file.exists() {
        assert!(Instant::now() < deadline, "no server-name written");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&name_file).unwrap(),
        "digitalocean-nyc3-2756294\n"
    );
    let _ = child.kill();
    let _ = child.wait();

    // Same machine: fine. Another droplet id (a clone of the disk): refused.
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    fake.state.lock().unwrap().droplet.id = 99;
    let out = natsmeshd(&["run", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("first started as \"digitalocean-nyc3-2756294\"")
            && err.contains("digitalocean-nyc3-99")
            && err.contains("JetStream forbids renaming"),
        "{err}"
    );
}

#[test]
fn with_provider_none_a_changed_name_is_refused() {
    let dir = scratch();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/server-name"), "n1\n").unwrap();
    let main = dir.path().join("natsmesh.toml");
    std::fs::write(
        &main,
        format!(
            "[node]\nregion = \"fra1\"\nname = \"n2\"\n\n[broker]\nbinary = \"{}\"\nstate_dir = \"{}\"\n\n[broker.jetstream]\nenabled = false\n",
            broker_binary(CURRENT).display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("node.name: this node was first started as \"n1\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_metadata_token_never_reaches_the_log() {
    let dir = scratch();
    let lin = FakeLinodeMetadata::start(Linode::default());
    // Expired tokens force a renewal too; every token issued is checked.
    lin.fault(Fault::StatusTimes(500, 1));
    let main = cloud_config(dir.path(), "linode", &lin.url(), "");
    let out = Command::new(NATSMESHD)
        .args(["render", "--explain", "-c", main.to_str().unwrap()])
        .env_clear()
        .env("HOME", dir.path())
        .env("NATSMESH_LOG", "trace")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tokens: Vec<String> = lin.state.lock().unwrap().tokens.keys().cloned().collect();
    assert!(!tokens.is_empty());
    let everything = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for t in tokens {
        assert!(!everything.contains(&t), "token in the output");
    }
}

#[test]
fn check_names_listeners_that_answer_without_credentials() {
    let fake = FakeLinodeMetadata::start(Linode::default());
    let dir = scratch();
    let token = dir.path().join("token");
    natsmesh_harness::bind::write_private(&token, "linode-token\n");
    let balancer = format!(
        "\n[broker.client]\nbind = \"private\"\n[load_balancer]\nprovider = \"linode\"\nid = \"1774401\"\ntoken_file = \"{}\"\napi_url = \"http://127.0.0.1:9\"\nready_port = 18223\n",
        token.display()
    );
    let open = format!(
        "{balancer}\n[broker.monitoring]\nbind = \"private\"\n[metrics]\nenabled = true\nbind = \"private\"\n"
    );
    let main = cloud_config(dir.path(), "linode", &fake.url(), &open);
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for (key, reveals) in [
        ("broker.monitoring.bind: 192.168.139.7:8222", "(/connz)"),
        ("metrics.bind: 192.168.139.7:", "/metrics: the node's name"),
        (
            "load_balancer.ready_bind: 192.168.139.7:18223",
            "/ready: whether this node takes clients",
        ),
    ] {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("notice: {key}")))
            .unwrap_or_else(|| panic!("no notice for {key}: {err}"));
        assert!(
            line.contains("answers without credentials") && line.contains(reveals),
            "{line}"
        );
    }
    // On loopback they tell a stranger nothing: no notice.
    let closed = format!(
        "\n[broker.client]\nbind = \"private\"\n[load_balancer]\nprovider = \"linode\"\nid = \"1774401\"\ntoken_file = \"{}\"\napi_url = \"http://127.0.0.1:9\"\nready_port = 18223\nready_bind = \"loopback\"\n[metrics]\nenabled = true\n",
        token.display()
    );
    let main = cloud_config(dir.path(), "linode", &fake.url(), &closed);
    let out = natsmeshd(&["check", "-c", main.to_str().unwrap()], dir.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("notice:"), "{err}");
}
