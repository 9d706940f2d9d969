//! The Linode plan (linode/linode): per region a NodeBalancer with one TCP
//! config, the Linodes and a Cloud Firewall; the Domain `<domain>` and one
//! Domain per region, `<region>.<domain>`, as natsmesh's Linode DNS
//! publication expects (Linode keeps an SRV record's owner at a Domain's
//! apex); the client names' records.
//!
//! No VPC: natsmesh on Linode routes and reaches the NodeBalancer over the
//! Linodes' private IPv4 addresses (what the metadata service shows, and
//! the NodeBalancer backend natsmeshd registers by default), so the
//! firewall limits those ports to the region's own Linodes instead.

use super::hcl::{Block, Item, Value, e, s};
use super::{Checked, Cloud, LINODE_HEALTH, Source, ident, numbered, steps};
use crate::balancer::{LINODE_CHECK, RULE_PROTOCOL};

/// Where a NodeBalancer's connections to its backends come from (Linode's
/// NodeBalancer documentation: the 192.168.255.0/24 range).
pub const NODEBALANCER_SOURCES: &str = "192.168.255.0/24";

/// Linode's name servers, which serve every Domain.
const NAME_SERVERS: [&str; 5] = [
    "ns1.linode.com",
    "ns2.linode.com",
    "ns3.linode.com",
    "ns4.linode.com",
    "ns5.linode.com",
];

/// `["a/32", …]` from a list expression of addresses.
fn hosts(list: &str) -> Value {
    e(format!("[for ip in {list} : \"${{ip}}/32\"]"))
}

/// main.tf.
pub(crate) fn main_tf(c: &Checked<'_>) -> String {
    let r = c.r;
    let p = c.ports;
    let balancers: Vec<String> = r
        .regions
        .iter()
        .map(|g| format!("linode_nodebalancer_config.{}", ident(g)))
        .collect();
    let soa = r
        .soa_email
        .clone()
        .unwrap_or_else(|| format!("hostmaster@{}", c.domain));
    let mut items = vec![Item::Comment(format!(
        "Written by `natsmeshd plan linode`: what {} regions of {} Linodes need besides natsmesh.\n\
         No secret is in this file: the Linodes' user-data enters through filebase64().\n\
         \n\
         Tokens (none is written here):\n\
         - Terraform: LINODE_TOKEN in the environment, allowed to create Linodes,\n\
           NodeBalancers, Firewalls and Domains (read/write on each).\n\
         - The nodes' NodeBalancer token (tokens/lb-token): {}.\n\
         - The nodes' DNS token (tokens/dns-token): {}.\n\
         \n\
         {}\n\
         \n\
         Not opened: SSH (add your own rule), the broker's monitoring port {} (no\n\
         authentication; natsmeshd keeps it on loopback). The region must offer the\n\
         Metadata service (natsmeshd's identity and the user-data come from it).",
        r.regions.len(),
        r.nodes,
        super::lb_scopes(Cloud::Linode),
        super::dns_scopes(Cloud::Linode),
        steps(c, &balancers),
        p.monitoring,
    ))];
    items.push(Item::Block(
        Block::new("terraform", &[]).block(
            Block::new("required_providers", &[])
                .comment("Pin the provider version you have tested with.")
                .attr("linode", e("{\n      source = \"linode/linode\"\n    }")),
        ),
    ));
    items.push(Item::Block(Block::new("provider", &["linode"])));
    for region in &r.regions {
        let id = ident(region);
        items.push(Item::Comment(format!("---- {region} ----")));
        items.push(Item::Block(
            Block::new("resource", &["linode_nodebalancer", &id])
                .attr("label", s(format!("natsmesh-{region}")))
                .attr("region", s(region))
                .attr("tags", Value::List(vec![s("natsmesh")])),
        ));
        items.push(Item::Block(
            Block::new("resource", &["linode_nodebalancer_config", &id])
                .comment(format!(
                    "TCP straight through (NATS speaks first, clients use TLS end to end), checked by\n\
                     connecting: a NodeBalancer checks the node's own port, which speaks NATS, not HTTP.\n\
                     Drain delay (interval + timeout) x attempts = {} s, waited before lame duck.\n\
                     Nodes are natsmeshd's: it adds a Linode once it serves, drains it before it stops.",
                    LINODE_HEALTH.drain_delay().as_secs()
                ))
                .attr("nodebalancer_id", e(format!("linode_nodebalancer.{id}.id")))
                .attr("port", Value::Num(p.client.into()))
                .attr("protocol", s(RULE_PROTOCOL))
                .attr("algorithm", s("roundrobin"))
                .attr("check", s(LINODE_CHECK))
                .attr("check_interval", Value::Num(LINODE_HEALTH.interval.as_secs()))
                .attr("check_timeout", Value::Num(LINODE_HEALTH.timeout.as_secs()))
                .attr("check_attempts", Value::Num(LINODE_HEALTH.unhealthy.into())),
        ));
        items.push(Item::Block(
            Block::new("resource", &["linode_instance", &id])
                .attr("count", Value::Num(r.nodes.into()))
                .attr("label", numbered(region))
                .attr("region", s(region))
                .attr(
                    "image",
                    s(r.image.clone().unwrap_or_else(|| "linode/debian12".into())),
                )
                .attr(
                    "type",
                    s(r.size.clone().unwrap_or_else(|| "g6-standard-2".into())),
                )
                .comment("Routes and the NodeBalancer use the private address.")
                .attr("private_ip", Value::Bool(true))
                .attr("tags", Value::List(vec![s("natsmesh")]))
                .block(
                    Block::new("metadata", &[])
                        .comment("Made by ./user-data.sh; read at apply time, never written here.")
                        .attr(
                            "user_data",
                            e(format!(
                                "filebase64(\"${{path.module}}/user-data-{region}.yaml\")"
                            )),
                        ),
                ),
        ));
        let own_private = hosts(&format!("linode_instance.{id}[*].private_ip_address"));
        let others: Vec<String> = r
            .regions
            .iter()
            .filter(|g| *g != region)
            .map(|g| format!("linode_instance.{}[*].ip_address", ident(g)))
            .collect();
        let mut fw = Block::new("resource", &["linode_firewall", &id])
            .attr("label", s(format!("natsmesh-{region}")))
            .attr("linodes", e(format!("linode_instance.{id}[*].id")))
            .attr("inbound_policy", s("DROP"))
            .attr("outbound_policy", s("ACCEPT"));
        // A NodeBalancer checks the client port itself: no readiness rule.
        for rule in c.inbound_rules(false) {
            let block = Block::new("inbound", &[])
                .attr("label", s(rule.label))
                .attr("action", s("ACCEPT"))
                .attr("protocol", s("TCP"))
                .attr("ports", s(rule.port.to_string()));
            fw = fw.block(match rule.from {
                Source::Balancer | Source::HealthCheck => block
                    .comment(format!(
                        "{}: through the NodeBalancer, whose connections come from its backend range.",
                        rule.serves
                    ))
                    .attr("ipv4", Value::List(vec![s(NODEBALANCER_SOURCES)])),
                Source::Region => block
                    .comment(format!(
                        "{}: the region's own Linodes, at their private addresses.",
                        rule.serves
                    ))
                    .attr("ipv4", own_private.clone()),
                Source::OtherRegions => block
                    .comment(format!(
                        "{}: the other regions' Linodes, at their public addresses.",
                        rule.serves
                    ))
                    .attr("ipv4", hosts(&format!("concat({})", others.join(", ")))),
                Source::Anywhere => block
                    .comment(format!("{}: from anywhere.", rule.serves))
                    .attr("ipv4", Value::List(vec![s("0.0.0.0/0")]))
                    .attr("ipv6", Value::List(vec![s("::/0")])),
            });
        }
        items.push(Item::Block(fw));
        items.push(Item::Block(
            Block::new("output", &[&format!("lb_id_{id}")])
                .attr("value", e(format!("linode_nodebalancer.{id}.id"))),
        ));
        items.push(Item::Block(
            Block::new("output", &[&format!("lb_ip_{id}")])
                .attr("value", e(format!("linode_nodebalancer.{id}.ipv4"))),
        ));
    }
    items.push(Item::Comment(format!(
        "---- DNS ----\n\
         {d} holds _nats-regions and the client names; each region's Domain\n\
         <region>.{d} holds its routes, server names and gateway address. The nodes\n\
         make and remove those records themselves.",
        d = c.domain
    )));
    items.push(Item::Block(
        Block::new("resource", &["linode_domain", "zone"])
            .attr("domain", s(&c.domain))
            .attr("type", s("master"))
            .attr("soa_email", s(&soa)),
    ));
    for region in &r.regions {
        let id = ident(region);
        items.push(Item::Block(
            Block::new("resource", &["linode_domain", &id])
                .attr("domain", s(format!("{region}.{}", c.domain)))
                .attr("type", s("master"))
                .attr("soa_email", s(&soa)),
        ));
        items.push(Item::Block(
            Block::new("resource", &["linode_domain_record", &format!("ns_{id}")])
                .comment(format!(
                    "{region}.{}: delegated to its own Domain.",
                    c.domain
                ))
                .attr(
                    "for_each",
                    e(format!(
                        "toset([{}])",
                        NAME_SERVERS
                            .iter()
                            .map(|n| format!("\"{n}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                )
                .attr("domain_id", e("linode_domain.zone.id"))
                .attr("name", s(region))
                .attr("record_type", s("NS"))
                .attr("target", e("each.value")),
        ));
        items.push(Item::Block(
            Block::new("resource", &["linode_domain_record", &format!("lb_{id}")])
                .comment(format!(
                    "{}: {region}'s NodeBalancer, in its nodes' certificates.",
                    super::lb_name(region, &c.domain)
                ))
                .attr("domain_id", e(format!("linode_domain.{id}.id")))
                .attr("name", s("lb"))
                .attr("record_type", s("A"))
                .attr("target", e(format!("linode_nodebalancer.{id}.ipv4")))
                .attr("ttl_sec", Value::Num(300)),
        ));
    }
    let zones = c.client_zones();
    for (z, zone) in zones.iter().enumerate() {
        items.push(Item::Block(
            Block::new("data", &["linode_domain", &format!("client_zone{z}")])
                .comment(format!(
                    "{zone}: a Domain already at Linode, where shared client names go."
                ))
                .attr("domain", s(*zone)),
        ));
    }
    for region in &r.regions {
        let id = ident(region);
        for (name, z, n) in c.client_records(region) {
            items.push(Item::Block(
                Block::new("resource", &["linode_domain_record", &name])
                    .comment(format!(
                        "{}: one of the regions' NodeBalancers, {region}'s.",
                        n.name
                    ))
                    .attr(
                        "domain_id",
                        e(format!("data.linode_domain.client_zone{z}.id")),
                    )
                    .attr("name", s(&n.relative))
                    .attr("record_type", s("A"))
                    .attr("target", e(format!("linode_nodebalancer.{id}.ipv4")))
                    .attr("ttl_sec", Value::Num(300)),
            ));
        }
    }
    super::hcl::file(&items)
}
