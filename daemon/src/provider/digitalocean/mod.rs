//! DigitalOcean: the droplet metadata service, Load Balancers and the
//! Domains API.

pub mod balancer;
pub mod dns;
pub mod metadata;

pub use metadata::DoMetadata;
