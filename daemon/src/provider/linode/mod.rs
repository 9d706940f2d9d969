//! Linode (Akamai): the metadata service, NodeBalancers and the Domains
//! API.

pub mod balancer;
pub mod dns;
pub mod metadata;

pub use metadata::LinodeMetadata;
