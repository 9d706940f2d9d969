//! Semantic checks that `nats-server -t` does not make.
//!
//! `-t` only parses; `validateOptions` and the JetStream start-up checks run
//! when the server starts, so a config that passes `-t` can still refuse to
//! start (reference §1.3). Everything here mirrors one of those start-time
//! refusals, or a natsmesh rule that protects the cluster (no duplicate
//! routes, the monitoring port off public addresses, no port bound twice).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::model::{Listen, Port, ServerConfig, SyncInterval};

/// One thing wrong with a model, naming the nats-server key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted nats-server key path.
    pub key: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// The lame-duck minimum enforced by nats-server.
pub const MIN_LAME_DUCK: Duration = Duration::from_secs(30);

/// Whether an address may carry the unauthenticated monitoring port:
/// loopback, or a private / unique-local / link-local range.
pub fn is_private_or_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback() || (seg0 & 0xfe00) == 0xfc00 || (seg0 & 0xffc0) == 0xfe80
        }
    }
}

fn name_problem(key: &'static str, what: &str, name: &str) -> Option<Problem> {
    if name.is_empty() {
        Some(Problem {
            key,
            message: format!("{what} is empty"),
        })
    } else if name.chars().any(char::is_whitespace) {
        Some(Problem {
            key,
            message: format!("{what} {name:?} contains whitespace, which nats-server refuses"),
        })
    } else {
        None
    }
}

/// Every problem with `cfg`; empty when it would start.
pub fn validate(cfg: &ServerConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    out.extend(name_problem("server_name", "server name", &cfg.server_name));

    if cfg.lame_duck_duration < MIN_LAME_DUCK {
        out.push(Problem {
            key: "lame_duck_duration",
            message: format!(
                "lame-duck duration {:?} is below nats-server's minimum of 30s",
                cfg.lame_duck_duration
            ),
        });
    }
    if cfg.lame_duck_grace_period >= cfg.lame_duck_duration {
        out.push(Problem {
            key: "lame_duck_grace_period",
            message: format!(
                "lame-duck grace period {:?} must be strictly lower than the duration {:?}",
                cfg.lame_duck_grace_period, cfg.lame_duck_duration
            ),
        });
    }

    let mut tags = HashSet::new();
    for tag in &cfg.tags {
        let canonical = tag.trim().to_lowercase();
        if canonical.is_empty() || canonical != *tag {
            out.push(Problem {
                key: "server_tags",
                message: format!(
                    "tag {tag:?}: nats-server trims, lower-cases and drops empty tags; write it as {canonical:?}"
                ),
            });
        } else if !tags.insert(canonical) {
            out.push(Problem {
                key: "server_tags",
                message: format!("tag {tag:?} is listed twice"),
            });
        }
    }

    if let Some(m) = &cfg.monitoring
        && !is_private_or_loopback(m.host)
    {
        out.push(Problem {
            key: "http",
            message: format!(
                "the monitoring port has no authentication and may not bind {} (loopback or a private address only)",
                m.host
            ),
        });
    }

    if let Some(js) = &cfg.jetstream {
        if js.max_memory_store == 0 {
            out.push(Problem {
                key: "jetstream.max_memory_store",
                message: "0 means \"dynamic\" to nats-server, not \"disabled\"; give a size".into(),
            });
        }
        if js.max_file_store == 0 {
            out.push(Problem {
                key: "jetstream.max_file_store",
                message: "0 means \"dynamic\" to nats-server, not \"disabled\"; give a size".into(),
            });
        }
        if let Some(d) = &js.domain {
            out.extend(name_problem("jetstream.domain", "JetStream domain", d));
        }
        // `-t` takes "0s" (and even "-1s"), but an interval of nothing is no
        // schedule; "always" is how to ask for a flush after every write.
        if js.sync_interval == Some(SyncInterval::Every(Duration::ZERO)) {
            out.push(Problem {
                key: "jetstream.sync_interval",
                message: "0 is no interval; use \"always\" to fsync after every write".into(),
            });
        }
    } else if cfg.mqtt.is_some() {
        out.push(Problem {
            key: "mqtt",
            message: "MQTT needs JetStream enabled (nats-server refuses to start otherwise)".into(),
        });
    }

    if let Some(c) = &cfg.cluster {
        out.extend(name_problem("cluster.name", "cluster name", &c.name));
        if c.routes.is_empty() {
            out.push(Problem {
                key: "cluster.routes",
                message: "a cluster needs at least its own route (self-routes are ignored by the server but counted for JetStream)".into(),
            });
        }
        let mut seen = HashSet::new();
        for r in &c.routes {
            if !seen.insert(r) {
                out.push(Problem {
                    key: "cluster.routes",
                    message: format!(
                        "duplicate route {r}: nats-server warns and `-t` fails, and JetStream would count it twice"
                    ),
                });
            }
        }
    }

    if let Some(g) = &cfg.gateway {
        out.extend(name_problem("gateway.name", "gateway name", &g.name));
        match &cfg.cluster {
            Some(c) if c.name != g.name => out.push(Problem {
                key: "gateway.name",
                message: format!(
                    "gateway name {:?} must equal the cluster name {:?}",
                    g.name, c.name
                ),
            }),
            None if cfg.jetstream.is_some() => out.push(Problem {
                key: "cluster",
                message: "JetStream with gateways needs a cluster block with at least this server's own route, even in a single-node region".into(),
            }),
            _ => {}
        }
        let mut names = HashSet::new();
        for r in &g.gateways {
            out.extend(name_problem(
                "gateway.gateways.name",
                "remote gateway name",
                &r.name,
            ));
            if !names.insert(r.name.as_str()) {
                out.push(Problem {
                    key: "gateway.gateways.name",
                    message: format!("remote gateway {:?} is listed twice", r.name),
                });
            }
            if r.urls.is_empty() {
                out.push(Problem {
                    key: "gateway.gateways.urls",
                    message: format!("remote gateway {:?} has no URL", r.name),
                });
            }
        }
    }

    // A remote without URLs (a hub DNS has not named yet) counts: it is
    // left out of the file until it has some.
    if let Some(l) = &cfg.leafnodes
        && l.listen.is_none()
        && l.remotes.is_empty()
    {
        out.push(Problem {
            key: "leafnodes",
            message: "a leafnodes block needs a listener or at least one remote".into(),
        });
    }

    if let Some(w) = &cfg.websocket
        && !w.no_tls
        && w.tls.is_none()
    {
        out.push(Problem {
            key: "websocket.no_tls",
            message: "websocket needs TLS or an explicit no_tls".into(),
        });
    }

    out.extend(port_clashes(cfg));
    out
}

/// Two listeners on the same address and port: the second fails to bind at
/// start, after `-t` said the file is fine.
fn port_clashes(cfg: &ServerConfig) -> Vec<Problem> {
    let mut listeners: Vec<(&'static str, Listen)> = vec![("listen", cfg.listen)];
    listeners.extend(cfg.monitoring.map(|l| ("http", l)));
    listeners.extend(cfg.cluster.as_ref().map(|c| ("cluster.listen", c.listen)));
    listeners.extend(cfg.gateway.as_ref().map(|g| ("gateway.listen", g.listen)));
    listeners.extend(
        cfg.leafnodes
            .as_ref()
            .and_then(|l| l.listen)
            .map(|l| ("leafnodes.listen", l)),
    );
    listeners.extend(cfg.mqtt.as_ref().map(|m| ("mqtt.listen", m.listen)));
    listeners.extend(
        cfg.websocket
            .as_ref()
            .map(|w| ("websocket.listen", w.listen)),
    );

    let mut out = Vec::new();
    let mut by_port: HashMap<u16, Vec<(&'static str, IpAddr)>> = HashMap::new();
    for (key, l) in listeners {
        let Port::Fixed(port) = l.port else { continue };
        if port == 0 {
            out.push(Problem {
                key,
                message: "port 0 means \"the default port\" to nats-server; give the port".into(),
            });
            continue;
        }
        let entry = by_port.entry(port).or_default();
        for (other_key, other_host) in entry.iter() {
            let overlap =
                *other_host == l.host || other_host.is_unspecified() || l.host.is_unspecified();
            if overlap {
                out.push(Problem {
                    key,
                    message: format!("port {port} on {} is already taken by {other_key}", l.host),
                });
            }
        }
        entry.push((key, l.host));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn base() -> ServerConfig {
        ServerConfig::standalone("n1", Listen::new(LOCAL, 4222))
    }

    fn keys(cfg: &ServerConfig) -> Vec<&'static str> {
        validate(cfg).into_iter().map(|p| p.key).collect()
    }

    fn cluster(name: &str, routes: Vec<HostPort>) -> Cluster {
        Cluster {
            name: name.into(),
            listen: Listen::new(LOCAL, 6222),
            advertise: None,
            no_advertise: false,
            routes,
            pool_size: None,
            compression: None,
            include: None,
            tls: None,
        }
    }

    #[test]
    fn default_is_valid() {
        assert!(validate(&base()).is_empty());
    }

    #[test]
    fn lame_duck_rules() {
        let mut c = base();
        c.lame_duck_duration = Duration::from_secs(29);
        c.lame_duck_grace_period = Duration::from_secs(5);
        assert_eq!(keys(&c), ["lame_duck_duration"]);
        c.lame_duck_duration = Duration::from_secs(30);
        c.lame_duck_grace_period = Duration::from_secs(30);
        assert_eq!(keys(&c), ["lame_duck_grace_period"]);
    }

    #[test]
    fn tags_as_the_server_keeps_them() {
        let mut c = base();
        c.tags = vec!["az:1".into(), "gpu".into()];
        assert!(validate(&c).is_empty());
        for bad in [vec!["GPU"], vec![" gpu"], vec!["\t"], vec!["a", "a"]] {
            c.tags = bad.iter().map(|t| t.to_string()).collect();
            assert_eq!(keys(&c), ["server_tags"], "{bad:?}");
        }
    }

    #[test]
    fn names_without_spaces() {
        let mut c = base();
        c.server_name = "a b".into();
        assert_eq!(keys(&c), ["server_name"]);
    }

    #[test]
    fn cluster_and_gateway_rules() {
        let me = HostPort::from_ip(LOCAL, 6222);
        let mut c = base();
        c.cluster = Some(cluster("fra1", vec![me.clone(), me.clone()]));
        assert_eq!(keys(&c), ["cluster.routes"]);
        c.cluster = Some(cluster("fra1", vec![]));
        assert_eq!(keys(&c), ["cluster.routes"]);
        c.cluster = Some(cluster("fra1", vec![me]));
        c.gateway = Some(Gateway {
            name: "nyc3".into(),
            listen: Listen::new(LOCAL, 7222),
            advertise: None,
            gateways: vec![],
            include: None,
            tls: None,
        });
        assert_eq!(keys(&c), ["gateway.name"]);
        c.cluster = None;
        c.jetstream = Some(JetStream {
            store_dir: "/tmp".into(),
            max_memory_store: 1,
            max_file_store: 1,
            domain: None,
            sync_interval: None,
        });
        assert_eq!(keys(&c), ["cluster"]);
    }

    #[test]
    fn monitoring_never_public_and_ports_never_shared() {
        let mut c = base();
        c.monitoring = Some(Listen::new("0.0.0.0".parse().expect("ip"), 8222));
        assert_eq!(keys(&c), ["http"]);
        c.monitoring = Some(Listen::new("10.0.0.5".parse().expect("ip"), 8222));
        assert!(validate(&c).is_empty());
        c.monitoring = Some(Listen::new(LOCAL, 4222));
        assert_eq!(keys(&c), ["http"]);
    }

    #[test]
    fn jetstream_sizes_and_mqtt() {
        let mut c = base();
        c.jetstream = Some(JetStream {
            store_dir: "/tmp".into(),
            max_memory_store: 0,
            max_file_store: 0,
            domain: None,
            sync_interval: Some(SyncInterval::Every(Duration::ZERO)),
        });
        assert_eq!(
            keys(&c),
            [
                "jetstream.max_memory_store",
                "jetstream.max_file_store",
                "jetstream.sync_interval"
            ]
        );
        c.jetstream = Some(JetStream {
            store_dir: "/tmp".into(),
            max_memory_store: 1,
            max_file_store: 1,
            domain: None,
            sync_interval: Some(SyncInterval::Every(Duration::from_millis(1))),
        });
        assert!(keys(&c).is_empty(), "{:?}", keys(&c));
        c.jetstream = Some(JetStream {
            sync_interval: Some(SyncInterval::Always),
            ..c.jetstream.clone().expect("set above")
        });
        assert!(keys(&c).is_empty(), "{:?}", keys(&c));
        c.jetstream = None;
        c.mqtt = Some(Mqtt {
            listen: Listen::new(LOCAL, 1883),
            include: None,
            tls: None,
        });
        assert_eq!(keys(&c), ["mqtt"]);
    }
}
