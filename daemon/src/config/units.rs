//! Sizes and durations as an operator writes them in TOML.
//!
//! Sizes take explicit units only (`KB`/`MB`/`GB`/`TB` decimal,
//! `KiB`/`MiB`/`GiB`/`TiB` binary, `B`) or a plain integer of bytes: a bare
//! `G` means 10^9 to nats-server unquoted and 2^30 quoted, so natsmesh refuses
//! to guess. Durations are humantime strings (`30s`, `2m`, `1m 30s`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

/// Why a text is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number first.
    #[error("{input:?} is not a size (write e.g. \"256MiB\", \"10GB\" or bytes)")]
    NotASize {
        /// The text as written.
        input: String,
    },
    /// A unit natsmesh does not know (`1G` is ambiguous).
    #[error(
        "{input:?}: unknown size unit {unit:?}; use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
    )]
    UnknownUnit {
        /// The text as written.
        input: String,
        /// The unit in it.
        unit: String,
    },
    /// More bytes than a `u64` holds.
    #[error("{input:?} is too large")]
    TooLarge {
        /// The text as written.
        input: String,
    },
}

impl Size {
    /// Parses `"10GiB"`, `"500 MB"`, `"1024"`.
    pub fn parse(s: &str) -> Result<Self, SizeError> {
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let n: u64 = num
            .parse()
            .map_err(|_| SizeError::NotASize { input: s.into() })?;
        let unit = unit.trim();
        let mult = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, m)| *m)
                .ok_or_else(|| SizeError::UnknownUnit {
                    input: s.into(),
                    unit: unit.into(),
                })?
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| SizeError::TooLarge { input: s.into() })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in UNITS {
            if self.0 != 0 && self.0.is_multiple_of(*mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"256MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration written as `"30s"`, `"2m"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Span).map_err(|e| {
            de::Error::custom(format!(
                "{s:?} is not a duration ({e}); write e.g. \"30s\", \"2m\""
            ))
        })
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl From<Duration> for Span {
    fn from(d: Duration) -> Self {
        Span(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_need_explicit_units() {
        assert_eq!(Size::parse("10GiB"), Ok(Size(10 << 30)));
        assert_eq!(Size::parse("10 GB"), Ok(Size(10_000_000_000)));
        assert_eq!(Size::parse("1024"), Ok(Size(1024)));
        assert!(
            Size::parse("1G")
                .unwrap_err()
                .to_string()
                .contains("unknown size unit")
        );
        assert!(Size::parse("ten").is_err());
        assert!(
            Size::parse("99999999999TiB")
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
        assert_eq!(Size(256 << 20).to_string(), "256MiB");
        assert_eq!(Size(1000).to_string(), "1KB");
        assert_eq!(Size(1001).to_string(), "1001B");
    }
}
