//! The DigitalOcean plan (digitalocean/digitalocean): per region a VPC, a
//! load balancer, the droplets and a cloud firewall; the domain and the
//! client names' records. Membership of the balancer is natsmeshd's, so
//! Terraform is told to leave `droplet_ids` alone.

use super::hcl::{Block, Item, Value, e, s};
use super::{Checked, Cloud, DO_HEALTH, Source, ident, numbered, steps};
use crate::balancer::{HEALTH_PROTOCOL, RULE_PROTOCOL, ready};

/// Everywhere, for outbound rules and the leafnode port.
fn anywhere() -> Value {
    Value::List(vec![s("0.0.0.0/0"), s("::/0")])
}

/// main.tf.
pub(crate) fn main_tf(c: &Checked<'_>) -> String {
    let r = c.r;
    let p = c.ports;
    let balancers: Vec<String> = r
        .regions
        .iter()
        .map(|g| format!("digitalocean_loadbalancer.{}", ident(g)))
        .collect();
    let mut items = vec![Item::Comment(format!(
        "Written by `natsmeshd plan digitalocean`: what {} regions of {} droplets need besides natsmesh.\n\
         No secret is in this file: the droplets' user-data enters through file().\n\
         \n\
         Tokens (none is written here):\n\
         - Terraform: DIGITALOCEAN_TOKEN in the environment, allowed to create VPCs, load\n\
           balancers, droplets, firewalls, domains and records.\n\
         - The nodes' load-balancer token (tokens/lb-token): {}.\n\
         - The nodes' DNS token (tokens/dns-token): {}.\n\
         \n\
         {}\n\
         \n\
         Not opened: SSH (add your own rule), the broker's monitoring port {} (no\n\
         authentication; natsmeshd keeps it on loopback).",
        r.regions.len(),
        r.nodes,
        super::lb_scopes(Cloud::Digitalocean),
        super::dns_scopes(Cloud::Digitalocean),
        steps(c, &balancers),
        p.monitoring,
    ))];
    items.push(Item::Block(
        Block::new("terraform", &[]).block(Block::new("required_providers", &[]).attr(
            "digitalocean",
            e("{\n      source  = \"digitalocean/digitalocean\"\n      version = \"~> 2.0\"\n    }"),
        )),
    ));
    items.push(Item::Block(Block::new("provider", &["digitalocean"])));
    for region in &r.regions {
        let id = ident(region);
        items.push(Item::Comment(format!("---- {region} ----")));
        items.push(Item::Block(
            Block::new("resource", &["digitalocean_vpc", &id])
                .attr("name", s(format!("natsmesh-{region}")))
                .attr("region", s(region))
                .attr("description", s(format!("natsmesh region {region}"))),
        ));
        items.push(Item::Block(
            Block::new("resource", &["digitalocean_loadbalancer", &id])
                .attr("name", s(format!("natsmesh-{region}")))
                .attr("region", s(region))
                .attr("vpc_uuid", e(format!("digitalocean_vpc.{id}.id")))
                .block(
                    Block::new("forwarding_rule", &[])
                        .comment("TCP straight through: NATS speaks first, clients use TLS end to end.")
                        .attr("entry_protocol", s(RULE_PROTOCOL))
                        .attr("entry_port", Value::Num(p.client.into()))
                        .attr("target_protocol", s(RULE_PROTOCOL))
                        .attr("target_port", Value::Num(p.client.into()))
                        .attr("tls_passthrough", Value::Bool(false)),
                )
                .block(
                    Block::new("healthcheck", &[])
                        .comment(format!(
                            "natsmeshd's readiness endpoint: 200 only while the node serves. Drain delay\n\
                             (interval + timeout) x unhealthy = {} s, waited before lame duck.",
                            DO_HEALTH.drain_delay().as_secs()
                        ))
                        .attr("protocol", s(HEALTH_PROTOCOL))
                        .attr("port", Value::Num(p.ready.into()))
                        .attr("path", s(ready::PATH))
                        .attr("check_interval_seconds", Value::Num(DO_HEALTH.interval.as_secs()))
                        .attr(
                            "response_timeout_seconds",
                            Value::Num(DO_HEALTH.timeout.as_secs()),
                        )
                        .attr("unhealthy_threshold", Value::Num(DO_HEALTH.unhealthy.into()))
                        .attr("healthy_threshold", Value::Num(DO_HEALTH.healthy.into())),
                )
                .block(
                    Block::new("lifecycle", &[])
                        .comment("Members are natsmeshd's: it adds a droplet once it serves, removes it before it drains.")
                        .attr("ignore_changes", e("[droplet_ids]")),
                ),
        ));
        items.push(Item::Block(
            Block::new("resource", &["digitalocean_droplet", &id])
                .attr("count", Value::Num(r.nodes.into()))
                .attr("name", numbered(region))
                .attr("region", s(region))
                .attr(
                    "image",
                    s(r.image.clone().unwrap_or_else(|| "debian-12-x64".into())),
                )
                .attr(
                    "size",
                    s(r.size.clone().unwrap_or_else(|| "s-2vcpu-4gb".into())),
                )
                .attr("vpc_uuid", e(format!("digitalocean_vpc.{id}.id")))
                .attr("tags", Value::List(vec![s("natsmesh")]))
                .comment(
                    "Made by ./user-data.sh; the provider keeps only a hash of it in the state.",
                )
                .attr(
                    "user_data",
                    e(format!(
                        "file(\"${{path.module}}/user-data-{region}.yaml\")"
                    )),
                ),
        ));
        let others: Vec<String> = r
            .regions
            .iter()
            .filter(|g| *g != region)
            .map(|g| format!("digitalocean_droplet.{}[*].ipv4_address", ident(g)))
            .collect();
        let vpc_range = || Value::List(vec![e(format!("digitalocean_vpc.{id}.ip_range"))]);
        let balancer = || Value::List(vec![e(format!("digitalocean_loadbalancer.{id}.id"))]);
        let mut fw = Block::new("resource", &["digitalocean_firewall", &id])
            .attr("name", s(format!("natsmesh-{region}")))
            .attr("droplet_ids", e(format!("digitalocean_droplet.{id}[*].id")));
        for rule in c.inbound_rules(true) {
            let block = Block::new("inbound_rule", &[])
                .attr("protocol", s("tcp"))
                .attr("port_range", s(rule.port.to_string()));
            fw = fw.block(match rule.from {
                Source::Balancer => block
                    .comment(format!(
                        "{}: through the balancer (and from inside the VPC).",
                        rule.serves
                    ))
                    .attr("source_load_balancer_uids", balancer())
                    .attr("source_addresses", vpc_range()),
                Source::HealthCheck => block
                    .comment(format!("{}.", rule.serves))
                    .attr("source_load_balancer_uids", balancer()),
                Source::Region => block
                    .comment(format!(
                        "{}: the region's own droplets, inside the VPC.",
                        rule.serves
                    ))
                    .attr("source_addresses", vpc_range()),
                Source::OtherRegions => block
                    .comment(format!(
                        "{}: the other regions' droplets, at their public addresses.",
                        rule.serves
                    ))
                    .attr(
                        "source_addresses",
                        e(format!("concat({})", others.join(", "))),
                    ),
                Source::Anywhere => block
                    .comment(format!("{}: from anywhere.", rule.serves))
                    .attr("source_addresses", anywhere()),
            });
        }
        for proto in ["tcp", "udp"] {
            fw = fw.block(
                Block::new("outbound_rule", &[])
                    .attr("protocol", s(proto))
                    .attr("port_range", s("1-65535"))
                    .attr("destination_addresses", anywhere()),
            );
        }
        fw = fw.block(
            Block::new("outbound_rule", &[])
                .attr("protocol", s("icmp"))
                .attr("destination_addresses", anywhere()),
        );
        items.push(Item::Block(fw));
        items.push(Item::Block(
            Block::new("output", &[&format!("lb_id_{id}")])
                .attr("value", e(format!("digitalocean_loadbalancer.{id}.id"))),
        ));
        items.push(Item::Block(
            Block::new("output", &[&format!("lb_ip_{id}")])
                .attr("value", e(format!("digitalocean_loadbalancer.{id}.ip"))),
        ));
    }
    items.push(Item::Comment(format!(
        "---- DNS ----\n\
         The zone natsmeshd publishes into: routes, server names, <region>.{d} (gateways)\n\
         and _nats-regions are the nodes' own records, made and removed by them.",
        d = c.domain
    )));
    items.push(Item::Block(
        Block::new("resource", &["digitalocean_domain", "zone"]).attr("name", s(&c.domain)),
    ));
    for region in &r.regions {
        let id = ident(region);
        let name = super::lb_name(region, &c.domain);
        items.push(Item::Block(
            Block::new("resource", &["digitalocean_record", &format!("lb_{id}")])
                .comment(format!(
                    "{name}: {region}'s balancer, in its nodes' certificates."
                ))
                .attr("domain", e("digitalocean_domain.zone.id"))
                .attr("type", s("A"))
                .attr("name", s(format!("lb.{region}")))
                .attr("value", e(format!("digitalocean_loadbalancer.{id}.ip")))
                .attr("ttl", Value::Num(60)),
        ));
    }
    let zones = c.client_zones();
    for (z, zone) in zones.iter().enumerate() {
        items.push(Item::Block(
            Block::new("data", &["digitalocean_domain", &format!("client_zone{z}")])
                .comment(format!(
                    "{zone}: a zone already at DigitalOcean, where shared client names go."
                ))
                .attr("name", s(*zone)),
        ));
    }
    for region in &r.regions {
        let id = ident(region);
        for (name, z, n) in c.client_records(region) {
            items.push(Item::Block(
                Block::new("resource", &["digitalocean_record", &name])
                    .comment(format!(
                        "{}: one of the regions' balancers, {region}'s.",
                        n.name
                    ))
                    .attr(
                        "domain",
                        e(format!("data.digitalocean_domain.client_zone{z}.id")),
                    )
                    .attr("type", s("A"))
                    .attr(
                        "name",
                        s(if n.relative.is_empty() {
                            "@"
                        } else {
                            n.relative.as_str()
                        }),
                    )
                    .attr("value", e(format!("digitalocean_loadbalancer.{id}.ip")))
                    .attr("ttl", Value::Num(60)),
            ));
        }
    }
    super::hcl::file(&items)
}
