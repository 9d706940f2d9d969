//! The status natsmeshd reports: on the control socket (`natsmeshd status`),
//! and as systemd STATUS= lines a person can read. It is built at the edge
//! from the supervisor's [`Health`] ([`Status::from_health`]), never kept
//! as a second copy: its text is for people and for the JSON schema, and
//! nothing inside natsmeshd decides on it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::probes::describe_client_port;
use super::{Certificate, Health, State};

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

/// Unix seconds, as the status writes times.
fn unix_s(t: std::time::SystemTime) -> u64 {
    crate::unix_ms(t) / 1000
}

/// The certificate line: serial, expiry and the next check.
fn describe_cert(c: &Certificate) -> String {
    let t = |x| humantime::format_rfc3339_seconds(x).to_string();
    format!(
        "serial {}, valid until {}, next check {}",
        c.serial,
        t(c.not_after),
        t(c.renew_at)
    )
}

impl Status {
    /// The printable status of `h`: the control socket's JSON
    /// (`natsmeshd status --json`, a documented schema whose names and
    /// values do not change) and the source of the STATUS= line. Pure: it
    /// reads no clock and no file.
    pub fn from_health(h: &Health) -> Self {
        let cert = h.certificate.as_ref();
        let degraded_why = h.degraded_why();
        Self {
            natsmesh_version: env!("CARGO_PKG_VERSION").into(),
            state: h.state.as_str().into(),
            reason: h.reason.clone(),
            since_unix_ms: crate::unix_ms(h.since),
            server_name: h.server_name.clone(),
            region: h.region.clone(),
            identity: h.identity.clone(),
            broker_version: h.broker_version.clone(),
            broker_pid: h.broker_pid,
            config_file: h.config_file.display().to_string(),
            // A failing renewal says so in place of the certificate's line;
            // the dates stay those of the certificate still in use.
            certificate: match (&h.certificate_failing, cert) {
                (Some(e), _) => format!("renewal failing: {e}"),
                (None, Some(c)) => describe_cert(c),
                (None, None) => "TLS off".into(),
            },
            certificate_not_after_unix: cert.map(|c| unix_s(c.not_after)),
            intermediate_not_after_unix: cert.and_then(|c| c.intermediate_not_after).map(unix_s),
            root_not_after_unix: cert.and_then(|c| c.root_not_after).map(unix_s),
            certificate_failing: h.certificate_failing.is_some(),
            warnings: h.warnings.clone(),
            alive: h
                .alive
                .as_ref()
                .map(|a| a.detail.clone())
                .unwrap_or_default(),
            serving: h
                .client_port
                .as_ref()
                .map(describe_client_port)
                .unwrap_or_default(),
            jetstream: h
                .jetstream
                .as_ref()
                .map(super::JetStream::describe)
                .unwrap_or_default(),
            routes: h.routes,
            clients: h.clients,
            gateways: h.gateways.clone(),
            clock_synchronized: h.clock_synchronized,
            restart_pending: h.restart_pending.clone(),
            natsmeshd_restart_pending: h.natsmeshd_restart_pending.clone(),
            restarts: h.restarts,
            crashes: h.crashes,
            hang_kills: h.hang_kills,
            reloads_ok: h.reloads_ok,
            reloads_failed: h.reloads_failed,
            last_reload: h.last_reload.clone(),
            log_lines_dropped: h.log_lines_dropped,
            dns: h.dns.as_ref().map(|a| a.line.clone()).unwrap_or_default(),
            load_balancer: h
                .load_balancer
                .as_ref()
                .map(|a| a.line.clone())
                .unwrap_or_default(),
            dns_up: h.dns.as_ref().map(|a| a.up),
            load_balancer_registered: h.load_balancer.as_ref().and_then(|a| a.member),
            fleet: h.fleet.to_string(),
            paused: h.paused,
            fleet_paused: h.fleet_paused.clone(),
            maintenance: h.maintenance.clone(),
            reboot: h.reboot.clone(),
            dns_problem: h.dns.as_ref().and_then(|a| a.problem.clone()),
            load_balancer_problem: h.load_balancer.as_ref().and_then(|a| a.problem.clone()),
            degraded: !degraded_why.is_empty(),
            degraded_why,
        }
    }

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

    /// One line for systemd's STATUS=, e.g. "ready: 2 routes, 14 clients,
    /// JetStream current — digitalocean-nyc3-2756294".
    pub fn line(&self) -> String {
        // Serving, but not where it should be: never plain "ready".
        let mut s = if self.degraded {
            format!("degraded ({}): ", self.degraded_why.join("; "))
        } else {
            format!("{}: ", self.state)
        };
        // The state read back into the enum: this status may have come as
        // JSON from the daemon (`natsmeshd status`).
        let state = self.state.parse::<State>().ok();
        match state {
            Some(State::Ready | State::Syncing) => {
                let mut parts = Vec::new();
                if let Some(r) = self.routes {
                    parts.push(format!("{r} route{}", if r == 1 { "" } else { "s" }));
                }
                if let Some(c) = self.clients {
                    parts.push(format!("{c} client{}", if c == 1 { "" } else { "s" }));
                }
                parts.push(self.jetstream.clone());
                s.push_str(&parts.join(", "));
                if state == Some(State::Syncing) {
                    let _ = write!(s, " ({})", self.reason);
                }
            }
            Some(State::Draining) if !self.load_balancer.is_empty() => {
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
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use natsmesh_broker::monitor::ClientPort;

    use super::*;
    use crate::health::{Alive, Announced, JetStream};

    fn serving_health() -> Health {
        Health {
            state: State::Ready,
            reason: "serving clients".into(),
            server_name: "n1".into(),
            routes: Some(2),
            clients: Some(3),
            client_port: Some(ClientPort::Serving),
            jetstream: Some(JetStream::Current),
            ..Health::default()
        }
    }

    fn serving() -> Status {
        Status::from_health(&serving_health())
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn trouble(line: &str) -> Announced {
        Announced {
            up: true,
            member: Some(true),
            line: line.into(),
            problem: Some(line.into()),
            budget: None,
        }
    }

    #[test]
    fn every_state_is_written_as_it_always_was() {
        // The JSON schema's values: `natsmeshd status --json` readers and
        // the fleet reports parse these words.
        let words = [
            (State::Starting, "starting"),
            (State::Syncing, "syncing"),
            (State::Ready, "ready"),
            (State::Draining, "draining"),
            (State::Restarting, "restarting"),
            (State::Stopped, "stopped"),
        ];
        assert_eq!(words.len(), State::ALL.len());
        for (state, word) in words {
            let s = Status::from_health(&Health {
                state,
                reason: "why".into(),
                ..Health::default()
            });
            assert_eq!(s.state, word);
            let json = serde_json::to_value(&s).expect("json");
            assert_eq!(json["state"], word);
            assert!(s.line().starts_with(&format!("{word}: ")), "{}", s.line());
        }
    }

    #[test]
    fn every_field_of_health_reaches_the_status() {
        let h = Health {
            state: State::Syncing,
            reason: "waiting for the first route".into(),
            since: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            server_name: "n1".into(),
            region: "nyc3".into(),
            identity: "digitalocean droplet 1 in nyc3".into(),
            broker_version: "2.11.11".into(),
            broker_pid: Some(42),
            config_file: "/var/lib/natsmesh/nats-server.conf".into(),
            certificate: Some(Certificate {
                serial: "0a1b".into(),
                not_after: at(2_000_000_000),
                renew_at: at(1_900_000_000),
                intermediate_not_after: Some(at(2_100_000_000)),
                root_not_after: Some(at(2_200_000_000)),
            }),
            certificate_failing: None,
            warnings: vec!["a root key on the node".into()],
            alive: Some(Alive {
                answered: true,
                detail: "answered 200".into(),
            }),
            client_port: Some(ClientPort::LameDuck),
            jetstream: Some(JetStream::Catching("stream X".into())),
            routes: Some(1),
            clients: Some(7),
            gateways: Some(vec!["fra1".into()]),
            clock_synchronized: Some(false),
            restart_pending: vec!["cluster port".into()],
            natsmeshd_restart_pending: vec!["metrics.listen".into()],
            restarts: 1,
            crashes: 2,
            hang_kills: 3,
            reloads_ok: 4,
            reloads_failed: 5,
            last_reload: Some("reloaded".into()),
            log_lines_dropped: 6,
            dns: Some(Announced {
                up: true,
                member: None,
                line: "published n1.example.".into(),
                problem: None,
                budget: None,
            }),
            load_balancer: Some(Announced {
                up: false,
                member: Some(false),
                line: "out of lb-1".into(),
                problem: None,
                budget: None,
            }),
            fleet: crate::health::Coordinating::Waiting { why: "x".into() },
            paused: true,
            fleet_paused: Some("fleet pause".into()),
            maintenance: Some("in maintenance".into()),
            reboot: Some("reboot required".into()),
        };
        let s = Status::from_health(&h);
        assert_eq!(
            s,
            Status {
                natsmesh_version: env!("CARGO_PKG_VERSION").into(),
                state: "syncing".into(),
                reason: "waiting for the first route".into(),
                since_unix_ms: 1_700_000_000_123,
                server_name: "n1".into(),
                region: "nyc3".into(),
                identity: "digitalocean droplet 1 in nyc3".into(),
                broker_version: "2.11.11".into(),
                broker_pid: Some(42),
                config_file: "/var/lib/natsmesh/nats-server.conf".into(),
                certificate:
                    "serial 0a1b, valid until 2033-05-18T03:33:20Z, next check 2030-03-17T17:46:40Z"
                        .into(),
                certificate_not_after_unix: Some(2_000_000_000),
                intermediate_not_after_unix: Some(2_100_000_000),
                root_not_after_unix: Some(2_200_000_000),
                certificate_failing: false,
                warnings: vec!["a root key on the node".into()],
                alive: "answered 200".into(),
                serving: "lame duck".into(),
                jetstream: "JetStream catching up (stream X)".into(),
                routes: Some(1),
                clients: Some(7),
                gateways: Some(vec!["fra1".into()]),
                clock_synchronized: Some(false),
                restart_pending: vec!["cluster port".into()],
                natsmeshd_restart_pending: vec!["metrics.listen".into()],
                restarts: 1,
                crashes: 2,
                hang_kills: 3,
                reloads_ok: 4,
                reloads_failed: 5,
                last_reload: Some("reloaded".into()),
                log_lines_dropped: 6,
                dns: "published n1.example.".into(),
                load_balancer: "out of lb-1".into(),
                dns_up: Some(true),
                load_balancer_registered: Some(false),
                fleet: "waiting to restart: x".into(),
                paused: true,
                fleet_paused: Some("fleet pause".into()),
                maintenance: Some("in maintenance".into()),
                reboot: Some("reboot required".into()),
                dns_problem: None,
                load_balancer_problem: None,
                degraded: false,
                degraded_why: vec![],
            }
        );
        // The STATUS= line, word for word.
        assert_eq!(
            s.line(),
            "syncing: 1 route, 7 clients, JetStream catching up (stream X) (waiting for the first route); restart pending: cluster port; waiting to restart: x; paused; fleet pause; in maintenance; reboot required — n1"
        );
    }

    #[test]
    fn nothing_probed_yet_and_tls_off_read_as_before() {
        let s = Status::from_health(&Health::default());
        assert_eq!(
            (s.alive.as_str(), s.serving.as_str(), s.jetstream.as_str()),
            ("", "", "")
        );
        assert_eq!(s.certificate, "TLS off");
        assert_eq!(s.certificate_not_after_unix, None);
        assert_eq!((s.dns.as_str(), s.dns_up), ("", None));
        assert_eq!(
            (s.load_balancer.as_str(), s.load_balancer_registered),
            ("", None)
        );
        assert_eq!(s.since_unix_ms, 0);
    }

    #[test]
    fn each_probe_word_is_the_phrase_it_always_was() {
        for (port, word) in [
            (ClientPort::Serving, "accepting clients"),
            (ClientPort::LameDuck, "lame duck"),
            (ClientPort::Refused, "client port closed"),
            (ClientPort::Timeout, "client port: no INFO in time"),
            (ClientPort::Failed("reset".into()), "client port: reset"),
        ] {
            let h = Health {
                client_port: Some(port.clone()),
                ..Health::default()
            };
            assert_eq!(h.serving(), port == ClientPort::Serving, "{word}");
            assert_eq!(Status::from_health(&h).serving, word);
        }
        for (js, word, settled) in [
            (JetStream::Disabled, "JetStream off", true),
            (JetStream::Current, "JetStream current", true),
            (
                JetStream::Catching("s".into()),
                "JetStream catching up (s)",
                false,
            ),
            (
                JetStream::NotCurrent("m".into()),
                "JetStream not current (m)",
                false,
            ),
            (
                JetStream::Unknown("timeout".into()),
                "JetStream unknown (timeout)",
                false,
            ),
        ] {
            assert_eq!(js.settled(), settled, "{word}");
            let h = Health {
                state: State::Ready,
                jetstream: Some(js),
                ..Health::default()
            };
            assert_eq!(h.ready_and_settled(), settled, "{word}");
            assert_eq!(Status::from_health(&h).jetstream, word);
        }
        // Not probed yet: nothing is settled.
        let h = Health {
            state: State::Ready,
            ..Health::default()
        };
        assert!(!h.ready_and_settled());
    }

    #[test]
    fn a_failing_renewal_replaces_the_line_and_keeps_the_dates() {
        let mut h = serving_health();
        h.certificate = Some(Certificate {
            serial: "ff".into(),
            not_after: at(2_000_000_000),
            renew_at: at(1_900_000_000),
            intermediate_not_after: None,
            root_not_after: None,
        });
        h.certificate_failing = Some("issuer unreachable".into());
        let s = Status::from_health(&h);
        assert_eq!(s.certificate, "renewal failing: issuer unreachable");
        assert!(s.certificate_failing);
        assert_eq!(s.certificate_not_after_unix, Some(2_000_000_000));
        assert_eq!(
            (s.intermediate_not_after_unix, s.root_not_after_unix),
            (None, None)
        );
    }

    #[test]
    fn serving_with_a_balancer_or_dns_problem_is_degraded_never_plain_ready() {
        let mut h = serving_health();
        h.load_balancer = Some(trouble("cannot read digitalocean load balancer x: 404"));
        h.dns = Some(trouble("publication failing via digitalocean"));
        let s = Status::from_health(&h);
        assert!(s.degraded);
        assert_eq!(
            s.degraded_why,
            [
                "load balancer: cannot read digitalocean load balancer x: 404",
                "DNS: publication failing via digitalocean"
            ]
        );
        assert_eq!(
            s.load_balancer_problem.as_deref(),
            Some("cannot read digitalocean load balancer x: 404")
        );
        let line = s.line();
        assert!(
            line.starts_with("degraded (load balancer: cannot read digitalocean load balancer x: 404; DNS: publication failing via digitalocean): 2 routes, 3 clients"),
            "{line}"
        );
        assert!(s.screen().contains("degraded: load balancer: cannot read"));
        // Fixed: plain ready again.
        h.load_balancer = Some(Announced::default());
        h.dns = None;
        let s = Status::from_health(&h);
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
        for state in State::ALL.into_iter().filter(|s| *s != State::Ready) {
            let mut h = serving_health();
            h.state = state;
            h.load_balancer = Some(trouble("not joining x: health check"));
            assert!(h.degraded_why().is_empty(), "{state}");
            let s = Status::from_health(&h);
            assert!(!s.degraded, "{state}");
            assert!(s.line().starts_with(&format!("{state}: ")), "{}", s.line());
        }
    }

    #[test]
    fn a_status_read_back_from_json_prints_the_same_line() {
        // `natsmeshd status` prints what the daemon sent as JSON: the line
        // reads the state back from its word.
        let mut h = serving_health();
        h.state = State::Syncing;
        let s = Status::from_health(&h);
        let back: Status =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parse");
        assert_eq!(back.line(), s.line());
        assert!(
            back.line().ends_with("(serving clients) — n1"),
            "{}",
            back.line()
        );
    }
}
