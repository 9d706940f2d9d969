//! The status natsmeshd reports: on the control socket (`natsmeshd status`),
//! and as systemd STATUS= lines a person can read.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Everything `natsmeshd status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// natsmeshd's version.
    pub natsmesh_version: String,
    /// Supervisor state.
    pub state: String,
    /// Why it is in that state.
    pub reason: String,
    /// When the state began (Unix milliseconds).
    pub since_unix_ms: u64,
    /// Identity.
    pub server_name: String,
    /// Region.
    pub region: String,
    /// Where the identity came from, with the provider's own facts:
    /// `digitalocean droplet 2756294 in nyc3, private 10.0.0.5, public 203.0.113.5`.
    pub identity: String,
    /// nats-server version.
    pub broker_version: String,
    /// Broker pid, when running.
    pub broker_pid: Option<u32>,
    /// The rendered config in use.
    pub config_file: String,
    /// The node certificate.
    pub certificate: String,
    /// When the node certificate in use expires (Unix seconds), with TLS.
    #[serde(default)]
    pub certificate_not_after_unix: Option<u64>,
    /// When the region's intermediate (the certificate's issuer) expires
    /// (Unix seconds), where known.
    #[serde(default)]
    pub intermediate_not_after_unix: Option<u64>,
    /// When the earliest-expiring trusted root expires (Unix seconds).
    #[serde(default)]
    pub root_not_after_unix: Option<u64>,
    /// The last renewal (or re-read) failed; the certificate in use stays.
    #[serde(default)]
    pub certificate_failing: bool,
    /// Things a person should fix (a root key on the node, a clock far off).
    pub warnings: Vec<String>,
    /// Liveness probe.
    pub alive: String,
    /// Serving probe.
    pub serving: String,
    /// JetStream probe.
    pub jetstream: String,
    /// Route peers.
    pub routes: Option<u64>,
    /// Client connections.
    pub clients: Option<u64>,
    /// Regions with an outbound gateway connection (gateways configured).
    #[serde(default)]
    pub gateways: Option<Vec<String>>,
    /// systemd-timesyncd's verdict on the clock (where it runs).
    #[serde(default)]
    pub clock_synchronized: Option<bool>,
    /// Why a restart is pending, when one is.
    pub restart_pending: Vec<String>,
    /// natsmeshd's own settings changed since it started that only
    /// `systemctl restart natsmeshd` applies (it runs with the old ones).
    #[serde(default)]
    pub natsmeshd_restart_pending: Vec<String>,
    /// Restarts of the broker (any cause).
    pub restarts: u64,
    /// Unexpected exits.
    pub crashes: u64,
    /// Kills of a hung broker.
    pub hang_kills: u64,
    /// Confirmed reloads.
    pub reloads_ok: u64,
    /// Refused reloads.
    pub reloads_failed: u64,
    /// The last reload's outcome.
    pub last_reload: Option<String>,
    /// Broker log lines dropped because the log was slow.
    pub log_lines_dropped: u64,
    /// This node's DNS records (`[dns_publish]`), when natsmeshd writes them.
    #[serde(default)]
    pub dns: String,
    /// Membership of the provider's load balancer, when natsmeshd manages it.
    #[serde(default)]
    pub load_balancer: String,
    /// The records are (or may be) in DNS, when natsmeshd writes them.
    #[serde(default)]
    pub dns_up: Option<bool>,
    /// The balancer lists this node (as last seen or made), when managed.
    #[serde(default)]
    pub load_balancer_registered: Option<bool>,
    /// The region's restart lease: waiting for it (and why), or held.
    #[serde(default)]
    pub fleet: String,
    /// Planned restarts are paused on this node (`natsmeshd pause`).
    #[serde(default)]
    pub paused: bool,
    /// The fleet pause that holds planned restarts back here (`natsmeshd
    /// fleet pause`): which one, by whom, since when and why.
    #[serde(default)]
    pub fleet_paused: Option<String>,
    /// Maintenance (`natsmeshd maintenance start`): since when, why, until
    /// when its lease holds; `None`: not in maintenance.
    #[serde(default)]
    pub maintenance: Option<String>,
    /// A coordinated reboot (`[maintenance] reboot = "coordinated"`):
    /// required, and what it waits for; `None`: none required.
    #[serde(default)]
    pub reboot: Option<String>,
    /// What keeps this node's DNS records from being as they should.
    #[serde(default)]
    pub dns_problem: Option<String>,
    /// What keeps the load balancer from pointing here as it should.
    #[serde(default)]
    pub load_balancer_problem: Option<String>,
    /// Serving, but not where it should be (see `degraded_why`). Shown at
    /// the edge only: not a supervisor state, nothing follows it.
    #[serde(default)]
    pub degraded: bool,
    /// Why degraded, one reason per pointer.
    #[serde(default)]
    pub degraded_why: Vec<String>,
}

/// systemd-timesyncd's own word: this file exists while the clock is
/// synchronised (systemd 239+). Other time daemons (chrony, ntpd) have
/// their own exporters; without timesyncd there is no verdict.
const TIMESYNC_DIR: &str = "/run/systemd/timesync";

/// Whether systemd-timesyncd has the clock synchronised (`None`: it does
/// not run here).
pub fn clock_synchronized() -> Option<bool> {
    let dir = std::path::Path::new(TIMESYNC_DIR);
    dir.is_dir().then(|| dir.join("synchronized").exists())
}

impl Status {
    /// When the intermediate and the root expire, for the screen.
    fn ca_expiry(&self) -> String {
        let at = |secs: u64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string()
        };
        match (self.intermediate_not_after_unix, self.root_not_after_unix) {
            (None, None) => "—".into(),
            (i, r) => format!(
                "intermediate until {}, root until {}",
                i.map_or("?".into(), at),
                r.map_or("?".into(), at)
            ),
        }
    }

    /// Sets `degraded` and `degraded_why` from the other fields: a serving
    /// node whose balancer cannot be read or is set up wrong, or whose DNS
    /// publication fails. Derived for people and metrics; serving,
    /// membership and publication do not follow it.
    pub fn derive_degraded(&mut self) {
        self.degraded_why = if self.state == "ready" {
            [
                self.load_balancer_problem
                    .as_ref()
                    .map(|p| format!("load balancer: {p}")),
                self.dns_problem.as_ref().map(|p| format!("DNS: {p}")),
            ]
            .into_iter()
            .flatten()
            .collect()
        } else {
            Vec::new()
        };
        self.degraded = !self.degraded_why.is_empty();
    }

    /// One line for systemd's STATUS=, e.g. "ready: 2 routes, 14 clients,
    /// JetStream current — digitalocean-nyc3-2756294".
    pub fn line(&self) -> String {
        // Serving, but not where it should be: never plain "ready".
        let mut s = if self.degraded {
            format!("degraded ({}): ", self.degraded_why.join("; "))
        } else {
            format!("{}: ", self.state)
        };
        match self.state.as_str() {
            "ready" | "syncing" => {
                let mut parts = Vec::new();
                if let Some(r) = self.routes {
                    parts.push(format!("{r} route{}", if r == 1 { "" } else { "s" }));
                }
                if let Some(c) = self.clients {
                    parts.push(format!("{c} client{}", if c == 1 { "" } else { "s" }));
                }
                parts.push(self.jetstream.clone());
                s.push_str(&parts.join(", "));
                if self.state == "syncing" {
                    let _ = write!(s, " ({})", self.reason);
                }
            }
            "draining" if !self.load_balancer.is_empty() => {
                // The drain delay the balancer's health check implies.
                let _ = write!(s, "{}; {}", self.reason, self.load_balancer);
            }
            _ => s.push_str(&self.reason),
        }
        if !self.restart_pending.is_empty() {
            let _ = write!(s, "; restart pending: {}", self.restart_pending.join("; "));
        }
        if !self.fleet.is_empty() {
            let _ = write!(s, "; {}", self.fleet);
        }
        if self.paused {
            s.push_str("; paused");
        }
        if let Some(f) = &self.fleet_paused {
            let _ = write!(s, "; {f}");
        }
        if self.maintenance.is_some() {
            s.push_str("; in maintenance");
        }
        if self.reboot.is_some() {
            s.push_str("; reboot required");
        }
        if !self.server_name.is_empty() {
            let _ = write!(s, " — {}", self.server_name);
        }
        s
    }

    /// The one screen `natsmeshd status` prints.
    pub fn screen(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.line());
        let _ = writeln!(s);
        let rows = [
            (
                "server",
                format!("{} (region {})", self.server_name, self.region),
            ),
            ("identity", self.identity.clone()),
            (
                "state",
                if self.degraded {
                    format!(
                        "{} — {}; degraded: {}",
                        self.state,
                        self.reason,
                        self.degraded_why.join("; ")
                    )
                } else {
                    format!("{} — {}", self.state, self.reason)
                },
            ),
            (
                "broker",
                format!(
                    "nats-server {}{}",
                    self.broker_version,
                    self.broker_pid
                        .map(|p| format!(", pid {p}"))
                        .unwrap_or_default()
                ),
            ),
            ("config", self.config_file.clone()),
            ("tls", self.certificate.clone()),
            ("ca", self.ca_expiry()),
            ("alive", self.alive.clone()),
            ("serving", self.serving.clone()),
            ("jetstream", self.jetstream.clone()),
            (
                "peers",
                format!(
                    "{} routes, {} clients",
                    self.routes.map_or("?".into(), |r| r.to_string()),
                    self.clients.map_or("?".into(), |c| c.to_string())
                ),
            ),
            (
                "restarts",
                format!(
                    "{} ({} crashes, {} hang kills)",
                    self.restarts, self.crashes, self.hang_kills
                ),
            ),
            (
                "reloads",
                format!(
                    "{} ok, {} refused{}",
                    self.reloads_ok,
                    self.reloads_failed,
                    self.last_reload
                        .as_ref()
                        .map(|l| format!("; last: {l}"))
                        .unwrap_or_default()
                ),
            ),
            ("pending", {
                let mut p = if self.restart_pending.is_empty() {
                    "no restart pending".to_owned()
                } else {
                    format!("restart pending: {}", self.restart_pending.join("; "))
                };
                if !self.natsmeshd_restart_pending.is_empty() {
                    let _ = write!(
                        p,
                        "; {}: {}",
                        crate::config::reload::NEEDS_RESTART,
                        self.natsmeshd_restart_pending.join(", ")
                    );
                }
                p
            }),
            ("fleet", {
                let mut f = match (self.paused, self.fleet.is_empty()) {
                    (true, true) => "paused: no planned restarts".into(),
                    (true, false) => format!("paused: {}", self.fleet),
                    (false, true) if self.fleet_paused.is_some() => "no planned restarts".into(),
                    (false, true) => "no restart lease wanted".into(),
                    (false, false) => self.fleet.clone(),
                };
                if let Some(p) = &self.fleet_paused {
                    let _ = write!(f, " ({p})");
                }
                f
            }),
            ("maintenance", self.maintenance.clone().unwrap_or_default()),
            ("reboot", self.reboot.clone().unwrap_or_default()),
            (
                "gateways",
                self.gateways.as_ref().map_or_else(String::new, |g| {
                    if g.is_empty() {
                        "no region connected".into()
                    } else {
                        format!("{} connected: {}", g.len(), g.join(", "))
                    }
                }),
            ),
            (
                "clock",
                match self.clock_synchronized {
                    Some(true) => "synchronised (systemd-timesyncd)".into(),
                    Some(false) => "NOT synchronised (systemd-timesyncd)".into(),
                    None => String::new(),
                },
            ),
            ("dns", self.dns.clone()),
            ("balancer", self.load_balancer.clone()),
            ("natsmeshd", self.natsmesh_version.clone()),
        ];
        for (k, v) in rows.into_iter().filter(|(k, v)| {
            !matches!(
                *k,
                "dns" | "balancer" | "gateways" | "clock" | "maintenance" | "reboot"
            ) || !v.is_empty()
        }) {
            let _ = writeln!(s, "{k:>10}  {v}");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "{:>10}  {w}", "WARNING");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving() -> Status {
        Status {
            state: "ready".into(),
            reason: "serving clients".into(),
            server_name: "n1".into(),
            routes: Some(2),
            clients: Some(3),
            jetstream: "JetStream current".into(),
            ..Status::default()
        }
    }

    #[test]
    fn serving_with_a_balancer_or_dns_problem_is_degraded_never_plain_ready() {
        let mut s = serving();
        s.load_balancer_problem = Some("cannot read digitalocean load balancer x: 404".into());
        s.dns_problem = Some("publication failing via digitalocean".into());
        s.derive_degraded();
        assert!(s.degraded);
        assert_eq!(
            s.degraded_why,
            [
                "load balancer: cannot read digitalocean load balancer x: 404",
                "DNS: publication failing via digitalocean"
            ]
        );
        let line = s.line();
        assert!(
            line.starts_with("degraded (load balancer: cannot read digitalocean load balancer x: 404; DNS: publication failing via digitalocean): 2 routes, 3 clients"),
            "{line}"
        );
        assert!(s.screen().contains("degraded: load balancer: cannot read"));
        // Fixed: plain ready again.
        s.load_balancer_problem = None;
        s.dns_problem = None;
        s.derive_degraded();
        assert!(!s.degraded && s.degraded_why.is_empty());
        assert!(s.line().starts_with("ready: 2 routes"), "{}", s.line());
    }

    #[test]
    fn a_fleet_pause_shows_which_pause_holds() {
        let mut s = serving();
        s.fleet_paused = Some("fleet pause (all regions) by n1 since 2026-12-07T00:00:00Z".into());
        s.fleet = "paused; then: a new broker binary".into();
        assert!(
            s.line().ends_with("; paused; then: a new broker binary; fleet pause (all regions) by n1 since 2026-12-07T00:00:00Z — n1"),
            "{}",
            s.line()
        );
        assert!(
            s.screen().contains(
                "fleet  paused; then: a new broker binary (fleet pause (all regions) by n1"
            ),
            "{}",
            s.screen()
        );
        s.fleet.clear();
        assert!(
            s.screen()
                .contains("fleet  no planned restarts (fleet pause (all regions)"),
            "{}",
            s.screen()
        );
    }

    #[test]
    fn a_node_that_does_not_serve_is_not_degraded_its_state_says_why() {
        for state in ["starting", "syncing", "draining", "stopped", "restarting"] {
            let mut s = serving();
            s.state = state.into();
            s.load_balancer_problem = Some("not joining x: health check".into());
            s.derive_degraded();
            assert!(!s.degraded, "{state}");
            assert!(s.line().starts_with(&format!("{state}: ")), "{}", s.line());
        }
    }
}
