//! Where a listener binds: an address, or a policy resolved from this
//! machine's identity (`private`, `public`, `any`, `loopback`, or `auto`,
//! the listener's own default).

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// A bind setting as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// The listener's default policy (see the README's table).
    Auto,
    /// The private / VPC address.
    Private,
    /// The public address.
    Public,
    /// Every address (`0.0.0.0`).
    Any,
    /// `127.0.0.1`.
    Loopback,
    /// This address.
    Ip(IpAddr),
}

impl fmt::Display for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bind::Auto => f.write_str("auto"),
            Bind::Private => f.write_str("private"),
            Bind::Public => f.write_str("public"),
            Bind::Any => f.write_str("any"),
            Bind::Loopback => f.write_str("loopback"),
            Bind::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl<'de> Deserialize<'de> for Bind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "auto" => Bind::Auto,
            "private" => Bind::Private,
            "public" => Bind::Public,
            "any" => Bind::Any,
            "loopback" => Bind::Loopback,
            other => Bind::Ip(other.parse().map_err(|_| {
                de::Error::custom(format!(
                    "{other:?} is not an IP address or one of auto, private, public, any, loopback"
                ))
            })?),
        })
    }
}

impl Serialize for Bind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
