//! Cloudflare: DNS only (no machines, so no metadata or balancer).

pub mod dns;
