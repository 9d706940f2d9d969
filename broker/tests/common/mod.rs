//! Helpers shared by the broker crate's integration tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use natsmesh_broker::model::{Listen, Port, Rendered, ServerConfig, render};
use natsmesh_harness::{Broker, broker_binary, semver};

pub const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub fn random_port() -> Listen {
    Listen {
        host: LOCAL,
        port: Port::Random,
    }
}

/// A standalone server on random loopback ports, writing its ports file to `dir`.
pub fn base(dir: &Path) -> ServerConfig {
    let mut cfg = ServerConfig::standalone("n1", random_port());
    cfg.monitoring = Some(random_port());
    cfg.ports_file_dir = Some(dir.to_owned());
    cfg.logtime = false;
    cfg
}

/// Renders for `version` and writes the file; panics on a render error.
pub fn write(cfg: &ServerConfig, version: &str, path: &Path) -> Rendered {
    let r = render(cfg, &semver(version), path.parent().unwrap())
        .unwrap_or_else(|e| panic!("render for {version}: {e}"));
    std::fs::write(path, &r.text).unwrap();
    r
}

/// Renders, writes and starts.
pub fn start(cfg: &ServerConfig, version: &str, dir: &Path) -> Broker {
    let file = dir.join("nats-server.conf");
    write(cfg, version, &file);
    Broker::start(&broker_binary(version), &file, dir)
}
