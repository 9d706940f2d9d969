//! `[dns_publish]`: which records this node writes about itself, where,
//! and with which credential.
//!
//! The records are discovery's own, seen from this node:
//! - `SRV <route_record>` → `<server>.<region>.<domain>:<cluster port>`,
//!   and that host's A/AAAA record (the advertised cluster address);
//! - A/AAAA at `<region>.<domain>` (the gateway's address: the advertised
//!   one, or with the region's name advertised the bound or public one),
//!   the stable name every region's gateway block dials.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::{Checker, Discovered, Environment};
use crate::config::schema::{DnsBackend, RawConfig};
use crate::config::settings::provider::token_safe_url;
use crate::config::settings::publish::{
    self as rfc2136, BackendSettings, Provider, PublishSettings, RegionListing,
};
use crate::config::settings::record::{Record, relative};
use natsmesh_broker::model::ServerConfig;

/// What `[dns_publish]` asks for, or `None` when it is off or wrong.
pub(super) fn apply_publish(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    env: &Environment,
    state_dir: &Path,
    server: &ServerConfig,
    gateway_address: Option<IpAddr>,
    discovery: Option<&Discovered>,
) -> Option<PublishSettings> {
    let p = &raw.dns_publish;
    if p.backend == DnsBackend::None {
        for (key, set) in [
            ("dns_publish.server", p.server.is_some()),
            ("dns_publish.tsig_key_name", p.tsig_key_name.is_some()),
            ("dns_publish.tsig_secret_file", p.tsig_secret_file.is_some()),
            ("dns_publish.token_file", p.token_file.is_some()),
            ("dns_publish.api_url", p.api_url.is_some()),
        ] {
            if set {
                c.problem(key, "set, but dns_publish.backend is \"none\"");
            }
        }
        return None;
    }
    let Some(d) = discovery else {
        c.problem(
            "dns_publish.backend",
            "publishes the records discovery reads: enable [discovery] (and node.domain)",
        );
        return None;
    };
    let domain = &d.settings.domain;
    let region = &d.settings.region;
    // Linode keeps SRV records at a Domain's apex: one Domain per region.
    let default_zone = if p.backend == DnsBackend::Linode {
        format!("{region}.{domain}")
    } else {
        domain.clone()
    };
    let zone = p
        .zone
        .as_deref()
        .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or(default_zone);
    if !natsmesh_broker::model::is_dns_name(&zone) {
        c.problem("dns_publish.zone", format!("{zone:?} is not a DNS name"));
        return None;
    }

    let mut host = format!(
        "{}.{region}.{domain}",
        server.server_name.to_ascii_lowercase()
    );
    let mut records = Vec::new();
    if let (Some(route_record), Some(own)) = (&d.settings.route_record, &d.settings.own_route) {
        match own.ip() {
            Some(ip) => {
                records.push(Record::srv(route_record, own.port(), &host));
                records.push(Record::address(&host, ip));
            }
            None => {
                // An advertised host name: point at it, publish no address.
                let name = own.to_string();
                let name = name.rsplit_once(':').map_or(name.as_str(), |(h, _)| h);
                host = name.to_ascii_lowercase();
                records.push(Record::srv(route_record, own.port(), &host));
            }
        }
    }
    if p.gateway && server.gateway.is_some() {
        match gateway_address {
            Some(ip) => records.push(Record::address(&format!("{region}.{domain}"), ip)),
            None => c.problem(
                "dns_publish.gateway",
                "the gateway advertises no address to publish: bind broker.gateway to one address, set its advertise, or set gateway = false",
            ),
        }
    }
    if records.is_empty() {
        c.problem(
            "dns_publish.backend",
            "nothing to publish: enable broker.cluster (route records) or broker.gateway",
        );
        return None;
    }
    for r in &records {
        if relative(&r.name, &zone).is_none() {
            c.problem(
                "dns_publish.zone",
                format!("{} is outside the zone {zone:?}", r.name),
            );
        }
    }

    let requested = u32::try_from(p.ttl.0.as_secs()).unwrap_or(u32::MAX);
    let backend = match p.backend {
        DnsBackend::None => return None,
        DnsBackend::Rfc2136 => rfc2136_backend(c, raw, env)?,
        DnsBackend::Digitalocean => api_backend(c, raw, env, Provider::DigitalOcean)?,
        DnsBackend::Linode => api_backend(c, raw, env, Provider::Linode)?,
        DnsBackend::Cloudflare => api_backend(c, raw, env, Provider::Cloudflare)?,
    };
    let ttl = match &backend {
        BackendSettings::Api { provider, .. } => provider.ttl(requested),
        BackendSettings::Rfc2136 { .. } => requested.max(1),
    };
    if p.withdraw_timeout.0 > Duration::from_secs(300) {
        c.problem(
            "dns_publish.withdraw_timeout",
            "at most 5m: a stop must not wait on DNS for longer",
        );
    }
    if p.verify_every.0 < Duration::from_secs(10) {
        c.problem("dns_publish.verify_every", "at least 10s");
    }
    // The regions record lives in the publication's zone, or (Linode's
    // per-region zones lie below it) in the domain's own.
    let regions = d
        .settings
        .regions_record
        .as_ref()
        .zip(d.settings.route_record.as_ref())
        .map(|(name, route_record)| {
            let record = Record::txt(name, region);
            let zone = if relative(&record.name, &zone).is_some() {
                zone.clone()
            } else {
                domain.clone()
            };
            RegionListing {
                record,
                region: region.clone(),
                zone,
                route_record: route_record.clone(),
                decommissioned: crate::config::settings::fleet::marker(state_dir),
            }
        });
    if let Some(l) = &regions
        && relative(&l.record.name, &l.zone).is_none()
    {
        c.problem(
            "discovery.regions_record",
            format!("{} is outside the domain {domain:?}", l.record.name),
        );
    }
    Some(PublishSettings {
        regions,
        backend,
        zone,
        ttl,
        records,
        host,
        withdraw_timeout: p.withdraw_timeout.0,
        verify_every: p.verify_every.0,
        state_file: state_dir.join("dns-published.json"),
    })
}

fn rfc2136_backend(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    env: &Environment,
) -> Option<BackendSettings> {
    let p = &raw.dns_publish;
    for (key, set) in [
        ("dns_publish.token_file", p.token_file.is_some()),
        ("dns_publish.api_url", p.api_url.is_some()),
    ] {
        if set {
            c.problem(key, "only for the API backends, not rfc2136");
        }
    }
    let server = match p.server.as_deref() {
        None => {
            c.problem(
                "dns_publish.server",
                "required with rfc2136: the primary, ip or ip:port",
            );
            None
        }
        Some(s) => match s
            .parse::<SocketAddr>()
            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        {
            Ok(a) => Some(a),
            Err(_) => {
                c.problem("dns_publish.server", format!("{s:?} is not ip or ip:port"));
                None
            }
        },
    };
    let key_name = p.tsig_key_name.clone().filter(|k| !k.is_empty());
    if key_name.is_none() {
        c.problem(
            "dns_publish.tsig_key_name",
            "required with rfc2136 (updates are signed with TSIG)",
        );
    }
    let algorithm = p.tsig_algorithm.to_ascii_lowercase();
    if !rfc2136::ALGORITHMS.contains(&algorithm.as_str()) {
        c.problem(
            "dns_publish.tsig_algorithm",
            format!(
                "{:?} is not one of {}",
                p.tsig_algorithm,
                rfc2136::ALGORITHMS.join(", ")
            ),
        );
    }
    let secret_file = secret_file(
        c,
        env,
        "dns_publish.tsig_secret_file",
        p.tsig_secret_file.as_deref(),
    );
    Some(BackendSettings::Rfc2136 {
        server: server?,
        key_name: key_name?,
        algorithm,
        secret_file: secret_file?,
    })
}

fn api_backend(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    env: &Environment,
    provider: Provider,
) -> Option<BackendSettings> {
    let p = &raw.dns_publish;
    for (key, set) in [
        ("dns_publish.server", p.server.is_some()),
        ("dns_publish.tsig_key_name", p.tsig_key_name.is_some()),
        ("dns_publish.tsig_secret_file", p.tsig_secret_file.is_some()),
    ] {
        if set {
            c.problem(key, format!("only for rfc2136, not {provider}"));
        }
    }
    let url = p
        .api_url
        .clone()
        .unwrap_or_else(|| provider.default_url().to_owned());
    let url = url.trim_end_matches('/').to_owned();
    if let Err(why) = token_safe_url(&url) {
        c.problem("dns_publish.api_url", why.to_string());
    }
    let token_file = secret_file(c, env, "dns_publish.token_file", p.token_file.as_deref())?;
    Some(BackendSettings::Api {
        provider,
        url,
        token_file,
    })
}

/// A secret file: required, a systemd credential name when relative,
/// readable, and by its owner alone.
pub(super) fn secret_file(
    c: &mut Checker<'_>,
    env: &Environment,
    key: &str,
    path: Option<&Path>,
) -> Option<std::path::PathBuf> {
    let Some(path) = path else {
        c.problem(
            key,
            "required: a file (or systemd credential) holding the secret",
        );
        return None;
    };
    let path = c.file(key, path, env, true);
    c.secret(key, &path, env);
    Some(path)
}
