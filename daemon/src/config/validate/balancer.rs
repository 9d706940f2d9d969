//! `[load_balancer]`: whose balancer, which machine joins it, and where
//! natsmeshd's readiness endpoint listens for its health check.

use std::net::SocketAddr;

use super::{Checker, Environment, Role};
use crate::config::identity::Identity;
use crate::config::schema::{LbBackend, LbKind, Provider, RawConfig};
use crate::config::settings::balancer::{Backend, LbProvider, LbSettings};
use natsmesh_broker::model::{Port, ServerConfig};

/// What `[load_balancer]` asks for, or `None` when it is off or wrong.
pub(super) fn apply_balancer(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    env: &Environment,
    id: &Identity,
    server: &ServerConfig,
) -> Option<LbSettings> {
    let b = &raw.load_balancer;
    let provider = match b.provider {
        LbKind::None => {
            for (key, set) in [
                ("load_balancer.id", b.id.is_some()),
                ("load_balancer.token_file", b.token_file.is_some()),
                ("load_balancer.api_url", b.api_url.is_some()),
                ("load_balancer.subnet_id", b.subnet_id.is_some()),
            ] {
                if set {
                    c.problem(key, "set, but load_balancer.provider is \"none\"");
                }
            }
            return None;
        }
        LbKind::Digitalocean => LbProvider::DigitalOcean,
        LbKind::Linode => LbProvider::Linode,
    };
    let needs = match provider {
        LbProvider::DigitalOcean => Provider::DigitalOcean,
        LbProvider::Linode => Provider::Linode,
    };
    if raw.node.provider != needs {
        c.problem(
            "load_balancer.provider",
            format!("a {provider} balancer needs node.provider = \"{provider}\" (the machine is named by the id and address its metadata service gives)"),
        );
        return None;
    }
    let backend = match (b.backend, provider) {
        (LbBackend::Vpc, LbProvider::DigitalOcean) => {
            c.problem(
                "load_balancer.backend",
                "a DigitalOcean balancer reaches droplets in its VPC by their droplet id: \"vpc\" is for Linode NodeBalancers",
            );
            Backend::Private
        }
        (LbBackend::Vpc, LbProvider::Linode) => Backend::Vpc {
            subnet_id: b.subnet_id,
        },
        (LbBackend::Private, _) => {
            if b.subnet_id.is_some() {
                c.problem(
                    "load_balancer.subnet_id",
                    "set, but load_balancer.backend is \"private\" (a subnet is for VPC backends)",
                );
            }
            Backend::Private
        }
    };
    if provider == LbProvider::Linode && backend == Backend::Private && id.private_ipv4.is_none() {
        c.problem(
            "load_balancer.provider",
            "a NodeBalancer reaches nodes on their private IPv4 address: add a private IP to this Linode, or with a VPC interface set load_balancer.backend = \"vpc\"",
        );
    }
    let lb_id = b.id.clone().filter(|i| !i.trim().is_empty());
    if lb_id.is_none() {
        c.problem(
            "load_balancer.id",
            "required: the balancer's id (DigitalOcean: its uuid)",
        );
    }
    let url = b
        .api_url
        .clone()
        .unwrap_or_else(|| provider.default_url().to_owned());
    if let Err(why) = crate::config::settings::provider::token_safe_url(&url) {
        c.problem("load_balancer.api_url", why.to_string());
    }
    let token_file =
        super::publish::secret_file(c, env, "load_balancer.token_file", b.token_file.as_deref());
    let client_port = match server.listen.port {
        Port::Fixed(p) => p,
        Port::Random => {
            c.problem(
                "broker.client.port",
                "a load balancer forwards to a fixed port: set one",
            );
            0
        }
    };
    let monitoring_port = server.monitoring.as_ref().and_then(|m| match m.port {
        Port::Fixed(p) => Some(p),
        Port::Random => None,
    });
    let ip = c.bind("load_balancer.ready_bind", b.ready_bind, Role::Client, id);
    if b.ready_port == 0 || Some(b.ready_port) == monitoring_port || b.ready_port == client_port {
        c.problem(
            "load_balancer.ready_port",
            format!(
                "{} must be a port of its own (not the client or monitoring port)",
                b.ready_port
            ),
        );
    }
    if b.stop_budget.is_some_and(|budget| b.dwell.0 > budget.0) {
        c.problem(
            "load_balancer.dwell",
            "must not exceed load_balancer.stop_budget",
        );
    }
    Some(LbSettings {
        provider,
        id: lb_id?,
        url: url.trim_end_matches('/').to_owned(),
        token_file: token_file?,
        instance_id: id.instance_id.clone(),
        private_ip: id.private_ipv4,
        backend,
        client_bind: server.listen.host,
        server_name: server.server_name.clone(),
        region: id.provider_region.clone(),
        client_port,
        monitoring_port,
        ready: SocketAddr::new(ip, b.ready_port),
        dwell: b.dwell.0,
        stop_budget: b.stop_budget.map(|budget| budget.0),
    })
}
