//! Tokens and TSIG secrets: read from a file (a systemd credential) when
//! needed, never printed. A leaf, shared by DNS publication and the load
//! balancer.

use std::fmt;
use std::path::Path;

/// A secret file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct SecretError {
    /// `reading the <what>`.
    pub what: String,
    /// The file and why.
    pub why: String,
}

/// A secret whose `Debug` and `Display` show nothing of it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Reads and trims `path`; an empty file is an error.
    pub fn read(path: &Path, what: &str) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|e| SecretError {
            what: format!("reading the {what}"),
            why: format!("{}: {e}", path.display()),
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError {
                what: format!("reading the {what}"),
                why: format!("{} is empty", path.display()),
            });
        }
        Ok(Self(text.to_owned()))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}
