//! The records a node publishes about itself, compared by content (name,
//! type and data; never TTL), which is how a node recognises its own
//! records among its peers'.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// One DNS record. Names are absolute, lower-case, without the final dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Record {
    /// Owner name, e.g. `_nats-route._tcp.fra1.nats.example.net`.
    pub name: String,
    /// Type and data.
    pub data: Data,
}

/// The record types natsmesh publishes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum Data {
    /// An IPv4 address.
    A {
        /// The address.
        address: Ipv4Addr,
    },
    /// An IPv6 address.
    Aaaa {
        /// The address.
        address: Ipv6Addr,
    },
    /// A service location.
    Srv {
        /// Priority (lower first).
        priority: u16,
        /// Weight among equal priorities.
        weight: u16,
        /// Port.
        port: u16,
        /// Target host, absolute, without the final dot.
        target: String,
    },
    /// One character-string of text (natsmesh's: a region name).
    Txt {
        /// The text, unquoted.
        text: String,
    },
}

impl Record {
    /// An address record for `ip`.
    pub fn address(name: &str, ip: IpAddr) -> Self {
        let data = match ip {
            IpAddr::V4(address) => Data::A { address },
            IpAddr::V6(address) => Data::Aaaa { address },
        };
        Self {
            name: normal(name),
            data,
        }
    }

    /// An SRV record with priority 10 and weight 10 (Linode refuses a
    /// priority of 0; discovery ignores both).
    pub fn srv(name: &str, port: u16, target: &str) -> Self {
        Self {
            name: normal(name),
            data: Data::Srv {
                priority: 10,
                weight: 10,
                port,
                target: normal(target),
            },
        }
    }

    /// A TXT record holding `text` (one character-string).
    pub fn txt(name: &str, text: &str) -> Self {
        Self {
            name: normal(name),
            data: Data::Txt {
                text: text.to_owned(),
            },
        }
    }

    /// `A`, `AAAA`, `SRV` or `TXT`.
    pub fn kind(&self) -> &'static str {
        match self.data {
            Data::A { .. } => "A",
            Data::Aaaa { .. } => "AAAA",
            Data::Srv { .. } => "SRV",
            Data::Txt { .. } => "TXT",
        }
    }

    /// The record's data in zone-file presentation (`10.0.0.5`,
    /// `0 10 6222 n1.fra1.example.net.`).
    pub fn content(&self) -> String {
        match &self.data {
            Data::A { address } => address.to_string(),
            Data::Aaaa { address } => address.to_string(),
            Data::Srv {
                priority,
                weight,
                port,
                target,
            } => format!("{priority} {weight} {port} {target}."),
            Data::Txt { text } => {
                format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
            }
        }
    }

    /// The name relative to `zone` (`@` for the apex), as the DigitalOcean
    /// and Linode APIs name records; `None` outside the zone.
    pub fn relative_to(&self, zone: &str) -> Option<String> {
        relative(&self.name, zone)
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.name, self.kind(), self.content())
    }
}

/// Lower case, without the final dot.
pub fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `name` relative to `zone` (`@` for the apex), or `None` outside it.
pub fn relative(name: &str, zone: &str) -> Option<String> {
    let (name, zone) = (normal(name), normal(zone));
    if name == zone {
        return Some("@".into());
    }
    name.strip_suffix(&zone)
        .and_then(|rest| rest.strip_suffix('.'))
        .filter(|rest| !rest.is_empty())
        .map(str::to_owned)
}

/// The absolute name of `label` in `zone` (`@` or empty: the apex).
pub fn absolute(label: &str, zone: &str) -> String {
    let label = normal(label);
    let zone = normal(zone);
    if label.is_empty() || label == "@" {
        zone
    } else if label == zone || label.ends_with(&format!(".{zone}")) {
        // Some APIs answer with absolute names already.
        label
    } else {
        format!("{label}.{zone}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_relative_to_a_zone() {
        assert_eq!(
            relative("A.Example.NET.", "example.net").as_deref(),
            Some("a")
        );
        assert_eq!(
            relative("example.net", "example.net.").as_deref(),
            Some("@")
        );
        assert_eq!(relative("badexample.net", "example.net"), None);
        assert_eq!(relative("other.org", "example.net"), None);
        assert_eq!(absolute("@", "example.net"), "example.net");
        assert_eq!(
            absolute("_x._tcp.fra1", "example.net"),
            "_x._tcp.fra1.example.net"
        );
        assert_eq!(
            absolute("fra1.example.net", "example.net"),
            "fra1.example.net"
        );
    }

    #[test]
    fn content_is_presentation_format() {
        let s = Record::srv(
            "_nats-route._tcp.fra1.example.net.",
            6222,
            "N1.fra1.example.net",
        );
        assert_eq!(s.content(), "10 10 6222 n1.fra1.example.net.");
        assert_eq!(
            s.to_string(),
            "_nats-route._tcp.fra1.example.net SRV 10 10 6222 n1.fra1.example.net."
        );
        let a = Record::address(
            "n1.fra1.example.net",
            "10.0.0.5"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        );
        assert_eq!(a.kind(), "A");
    }
}
