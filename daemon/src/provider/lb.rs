//! What a load balancer is to natsmesh, whatever the cloud: its set-up as
//! read (forwarding rules, health check, region), and why a call failed.
//! The clouds fill these in (`digitalocean::balancer`, `linode::balancer`);
//! the balancer feature checks them and decides membership.

use std::time::Duration;

use super::rest::RestError;

/// A forwarding rule, as natsmesh checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `tcp:4222`
    pub entry: String,
    /// `tcp`, `http`, …
    pub target_protocol: String,
    /// The port on the node.
    pub target_port: Option<u16>,
    /// TLS passed through (DigitalOcean).
    pub tls_passthrough: bool,
}

/// The balancer's health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `http`, `https`, `tcp`.
    pub protocol: String,
    /// Port on the node.
    pub port: Option<u16>,
    /// HTTP path.
    pub path: String,
    /// Between checks.
    pub interval: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Failures before out.
    pub unhealthy: u32,
    /// Successes before in.
    pub healthy: u32,
}

impl Health {
    /// How long the balancer may keep sending after this node stops
    /// passing its check: every failing check it needs, each up to its
    /// timeout late.
    pub fn drain_delay(&self) -> Duration {
        (self.interval + self.timeout) * self.unhealthy.max(1)
    }
}

/// What the API says of the balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// Forwarding rules.
    pub rules: Vec<Rule>,
    /// Health check.
    pub health: Health,
    /// Provider region.
    pub region: String,
    /// `active`, `new`, `errored`.
    pub status: String,
    /// DigitalOcean: the droplet tag a tag-based balancer targets.
    pub tag: Option<String>,
    /// Whether this machine is a member now.
    pub registered: bool,
    /// Linode: this machine's node on each config.
    pub members: Vec<super::linode::balancer::Member>,
    /// What reading found wrong beyond the balancer's own settings (a
    /// droplet in another VPC, a Linode without the VPC address a VPC
    /// backend needs).
    pub wrong: Vec<String>,
}

/// A provider call that did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbError {
    /// What was asked.
    pub what: String,
    /// The HTTP status, if any.
    pub status: Option<u16>,
    /// Why.
    pub why: String,
    /// Worth retrying.
    pub retry: bool,
    /// When the provider asked to be called again.
    pub retry_after: Option<Duration>,
}

impl LbError {
    pub(crate) fn fatal(what: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            status: None,
            why: why.into(),
            retry: false,
            retry_after: None,
        }
    }

    pub(crate) fn from_rest(e: RestError, retry: bool) -> Self {
        Self {
            why: match e.status {
                Some(s) => format!("{s} {}", e.text),
                None => e.text,
            },
            what: e.what,
            status: e.status,
            retry,
            retry_after: e.retry_after,
        }
    }
}

/// Adds to a refusal (403, not retried) the scope the token lacks for the
/// call, when the call tells it (`scope` maps `METHOD /path` to it).
pub(crate) fn name_missing_scope(
    e: RestError,
    retry: bool,
    scope: impl Fn(&str) -> Option<&'static str>,
) -> LbError {
    let needs = (e.status == Some(403) && !retry)
        .then(|| scope(e.what.split_once(' ').map_or("", |(_, op)| op)))
        .flatten();
    let mut err = LbError::from_rest(e, retry);
    if let Some(scope) = needs {
        err.why
            .push_str(&format!(" (the token lacks the {scope} scope for this)"));
    }
    err
}

impl std::fmt::Display for LbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.why)
    }
}
