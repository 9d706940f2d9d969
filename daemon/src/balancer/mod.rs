//! Load-balancer membership: this node is in the provider's balancer only
//! while it serves, and out before it drains.
//!
//! The member task follows the supervisor's status. `ready` means "in";
//! anything else means "out", but only after the state has held for the
//! dwell time (hysteresis; the first join after start does not wait), so a
//! blip the balancer's own health check rides out does not churn the API. Only this node's own serving probe
//! decides; JetStream's state, which every node sees alike during a
//! cluster-wide outage, never does, so the balancer is never emptied by
//! one. On stop and drain the node leaves at once, then waits a drain delay
//! derived from the balancer's own health-check settings, and only then
//! does the supervisor start lame duck.
//!
//! Before registering, the balancer's set-up is read and checked (TCP to
//! the client port, a health check on natsmeshd's readiness endpoint, the
//! same region); a wrong set-up is never joined, and the log and
//! `natsmeshd status` say exactly what to change.
//!
//! The cloud's API calls are in `provider::<cloud>::balancer`, behind
//! [`LoadBalancer`]; the loop, its backoff and its reports are the ones
//! DNS publication uses too (`reconcile`). What is here is membership's
//! own: the set-up check, the dwell, joining, leaving and the drain delay.

pub mod ready;

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use crate::config::settings::balancer::{Backend, LbProvider, LbSettings};
use crate::health::{self, Announced};
use crate::provider::LoadBalancer;
pub use crate::provider::lb::{Health, LbError, Rule, Setup};
use crate::reconcile::{self, Announcer, Backoff, Next, Phase, Reconciler, Retry, Turn, Word};
use crate::secret::Secret;

/// What a derived stop budget allows beyond the drain delay: the API
/// calls that take the node out, a busy answer or two retried included.
pub const LEAVING_ALLOWANCE: Duration = Duration::from_secs(15);

/// The stop budget while the balancer's health check is not known yet
/// (the balancer never read): the old fixed default.
pub const UNKNOWN_STOP_BUDGET: Duration = Duration::from_secs(60);

/// How long a stop may spend leaving the balancer: `stop_budget` if set;
/// otherwise the drain delay the balancer's own health check implies plus
/// [`LEAVING_ALLOWANCE`], so a slow check (DigitalOcean's API defaults:
/// 10 s, 5 s, 5 failures, 75 s) is waited out in full instead of cut
/// short and lame duck never begins while the balancer still sends
/// clients here.
pub fn stop_budget(s: &LbSettings, health: Option<&Health>) -> Duration {
    match (s.stop_budget, health) {
        (Some(set), _) => set,
        (None, Some(h)) => h.drain_delay() + LEAVING_ALLOWANCE,
        (None, None) => UNKNOWN_STOP_BUDGET,
    }
}

/// The protocol a forwarding rule (DigitalOcean) or a config (Linode)
/// must use on both sides: NATS sends INFO before the client speaks, so
/// only a TCP pass-through carries it (clients use TLS end to end).
pub const RULE_PROTOCOL: &str = "tcp";
/// The protocol of a DigitalOcean health check on natsmeshd's readiness
/// endpoint ([`ready::PATH`] on `load_balancer.ready_port`).
pub const HEALTH_PROTOCOL: &str = "http";
/// The only NodeBalancer check that works on a NATS port (it has no
/// separate check port, so it cannot ask the readiness endpoint).
pub const LINODE_CHECK: &str = "connection";

/// Why the set-up is not one to join, one line per thing to change.
pub fn check(setup: &Setup, s: &LbSettings) -> Vec<String> {
    let mut wrong = setup.wrong.clone();
    // DigitalOcean's `status`: `new` while it is being created (it routes
    // nothing yet), `errored` when creation failed (it never will). Only
    // `active` is joined; a new one is read again until it is.
    match setup.status.as_str() {
        "new" => wrong.push(
            "the balancer is still being created (status new); waiting for it to become active"
                .to_owned(),
        ),
        "errored" => wrong.push(
            "the balancer's status is errored: DigitalOcean failed to create it; recreate it (natsmeshd does not join an errored balancer)"
                .to_owned(),
        ),
        _ => {}
    }
    if s.provider == LbProvider::Linode {
        wrong.extend(check_linode(setup, s));
        return wrong;
    }
    let port = s.client_port;
    let to_client: Vec<&Rule> = setup
        .rules
        .iter()
        .filter(|r| r.target_port == Some(port))
        .collect();
    if to_client.is_empty() {
        wrong.push(format!(
            "no forwarding rule targets the client port {port}: add entry tcp:4222 → target tcp:{port}"
        ));
    }
    for r in to_client {
        if r.entry.split_once(':').map(|(p, _)| p) != Some(RULE_PROTOCOL)
            || r.target_protocol != RULE_PROTOCOL
        {
            wrong.push(format!(
                "forwarding rule {} → {}:{port} must be tcp → tcp: NATS sends INFO before the client speaks, so an HTTP or TLS-terminating rule breaks it (clients use TLS end to end)",
                r.entry, r.target_protocol
            ));
        }
    }
    let h = &setup.health;
    let ready_port = s.ready.port();
    if h.port.is_some() && h.port == s.monitoring_port {
        wrong.push(format!(
            "the health check targets the monitoring port {}: it has no authentication and says nothing about serving; use http, port {ready_port}, path {}",
            s.monitoring_port.unwrap_or_default(),
            ready::PATH
        ));
    } else if h.protocol != HEALTH_PROTOCOL || h.port != Some(ready_port) || h.path != ready::PATH {
        wrong.push(format!(
            "the health check is {}:{}{}; it must ask natsmeshd's readiness endpoint: protocol http, port {ready_port}, path {} (a TCP check on the client port keeps passing while a node drains)",
            h.protocol,
            h.port.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            h.path,
            ready::PATH
        ));
    }
    if !s.region.is_empty() && !setup.region.is_empty() && setup.region != s.region {
        wrong.push(format!(
            "the balancer is in {}, this machine in {}: a balancer reaches only its own region's private network",
            setup.region, s.region
        ));
    }
    wrong
}

/// A NodeBalancer: every config forwards TCP (to this machine's client
/// port, where its node points), and checks nodes with `connection`, the
/// only check that works on a NATS port (it has no separate check port).
fn check_linode(setup: &Setup, s: &LbSettings) -> Vec<String> {
    let mut wrong = Vec::new();
    for r in &setup.rules {
        if r.target_protocol != RULE_PROTOCOL {
            wrong.push(format!(
                "config {} must use protocol tcp: NATS sends INFO before the client speaks, so HTTP or TLS termination breaks it",
                r.entry
            ));
        }
    }
    if setup.health.protocol != LINODE_CHECK {
        wrong.push(format!(
            "the health check is {:?}; set check = \"connection\": a NodeBalancer checks the node's own port ({}), which speaks NATS, not HTTP, and a connection check fails once lame duck closes it (natsmeshd drains the node before that)",
            setup.health.protocol, s.client_port
        ));
    }
    if !s.region.is_empty() && !setup.region.is_empty() && setup.region != s.region {
        wrong.push(format!(
            "the NodeBalancer is in {}, this Linode in {}: it reaches only its own region's private network",
            setup.region, s.region
        ));
    }
    wrong
}

/// Retry waits: 500 ms doubling to 30 s, or what the provider asked for
/// (at most 5 minutes).
pub const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(30),
    hint_max: Duration::from_secs(300),
    jitter: Duration::from_millis(200),
};

/// How often a set-up is read again: soon while it is wrong (an operator
/// is fixing it), rarely while it is right.
const RECHECK_WRONG: Duration = Duration::from_secs(15);
/// How often a balancer still being created (`new`) is read again.
const RECHECK_NEW: Duration = Duration::from_secs(3);
const RECHECK_RIGHT: Duration = Duration::from_secs(300);

/// Follows the supervisor's health until it ends; `up` tells the
/// supervisor whether this node may still receive clients through the
/// balancer (a stop waits for `false` before lame duck).
#[tracing::instrument(name = "balancer", skip_all)]
pub async fn follow(
    s: LbSettings,
    status: watch::Receiver<health::Health>,
    up: watch::Sender<Announced>,
) {
    // Every word keeps the budget last derived, so a stop's wait follows
    // the health check as last read.
    let up = Announcer::new(up);
    let client = match crate::provider::load_balancer(&s) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "load-balancer membership cannot start");
            up.say(false, None, Word::Trouble(format!("not managed: {e}")));
            // Kept open, so `status` keeps the reason (a closed channel
            // reads as "nothing to say").
            return std::future::pending().await;
        }
    };
    let name = format!("{} load balancer {}", s.provider, s.id);
    let membership = Membership {
        s,
        up,
        client,
        name,
        setup: None,
        setup_wrong: Vec::new(),
        check_at: Instant::now(),
        member: None,
        joined_once: false,
        left: false,
    };
    reconcile::follow(status, membership, BACKOFF).await;
}

/// Membership's own side of the reconcile loop.
struct Membership {
    s: LbSettings,
    up: Announcer,
    client: Box<dyn LoadBalancer>,
    name: String,
    setup: Option<Setup>,
    setup_wrong: Vec<String>,
    check_at: Instant,
    /// Membership as last seen or made (None: unknown).
    member: Option<bool>,
    /// Whether this run has joined the balancer once (the first join does
    /// not wait for the dwell).
    joined_once: bool,
    left: bool,
}

impl Reconciler for Membership {
    async fn turn(&mut self, t: Turn, retry: &mut Retry) -> Next {
        let (s, name, now) = (&self.s, self.name.as_str(), t.now);
        let leaving = t.phase == Phase::Leaving;
        let due = retry.due(now);
        if due && (self.setup.is_none() || (now >= self.check_at && !leaving)) {
            match read(self.client.as_ref(), s, name).await {
                Ok(found) => {
                    let derived = stop_budget(s, Some(&found.health));
                    self.up.sender().send_if_modified(|a| {
                        let new = a.budget != Some(derived);
                        a.budget = Some(derived);
                        new
                    });
                    self.setup_wrong = check(&found, s);
                    self.check_at = Instant::now()
                        + if self.setup_wrong.is_empty() {
                            RECHECK_RIGHT
                        } else if found.status == "new" {
                            // Creation takes about a minute; join soon after.
                            RECHECK_NEW
                        } else {
                            RECHECK_WRONG
                        };
                    if !self.setup_wrong.is_empty() {
                        tracing::error!(
                            balancer = %name,
                            problems = ?self.setup_wrong,
                            "the load balancer is not set up for NATS; this node does not join it until it is"
                        );
                        self.up.say(
                            found.registered,
                            Some(found.registered),
                            Word::Trouble(format!(
                                "not joining {name}: {}",
                                self.setup_wrong.join("; ")
                            )),
                        );
                    } else if self.member != Some(found.registered) || self.up.in_trouble() {
                        // What the balancer says now (a crashed run may
                        // have left this machine in it).
                        let line = if found.registered {
                            format!("in {name}")
                        } else {
                            format!("not in {name}")
                        };
                        self.up
                            .say(found.registered, Some(found.registered), Word::Fine(line));
                    }
                    self.member = Some(found.registered);
                    self.setup = Some(found);
                    retry.succeeded();
                }
                Err(e) => {
                    let wait = if e.retry {
                        retry.failed(e.retry_after)
                    } else {
                        retry.failed_for(RECHECK_WRONG)
                    };
                    tracing::warn!(balancer = %name, error = %e, retry_in = ?wait, "cannot read the load balancer");
                    self.up.say(
                        self.member.unwrap_or(false),
                        self.member,
                        Word::Trouble(format!(
                            "cannot read {name}: {e}; retrying in {}s",
                            wait.as_secs()
                        )),
                    );
                }
            }
            return Next::Again;
        }
        // What membership should be now.
        let want_in = t.phase == Phase::Serving && self.setup_wrong.is_empty();
        // The dwell guards against flapping; a node's first ready since it
        // started has no history to flap, and a fresh machine should take
        // clients as soon as it serves.
        let settled = now.duration_since(t.since) >= s.dwell || (want_in && !self.joined_once);
        let change = self.setup.is_some()
            && match self.member {
                _ if leaving => self.member != Some(false),
                Some(m) => m != want_in && settled,
                None => false,
            };
        if change && due {
            let Some(found) = self.setup.clone() else {
                return Next::Again;
            };
            let token = match Secret::read(&s.token_file, &format!("{} API token", s.provider)) {
                Ok(t) => t,
                Err(e) => {
                    retry.failed(None);
                    self.up.say(
                        self.member.unwrap_or(false),
                        self.member,
                        Word::Trouble(format!("cannot act on {name}: {e}")),
                    );
                    return Next::Again;
                }
            };
            let joining = want_in && !leaving;
            let result = if joining {
                self.client.join(token.expose(), &found).await
            } else {
                self.client.leave(token.expose(), &found).await
            };
            match result {
                Ok(()) => {
                    retry.succeeded();
                    self.member = Some(joining);
                    if joining {
                        self.joined_once = true;
                        tracing::info!(balancer = %name, "joined the load balancer");
                        self.up
                            .say(true, self.member, Word::Fine(format!("in {name}")));
                    } else {
                        tracing::info!(balancer = %name, state = %t.state, "left the load balancer");
                        self.up
                            .say(true, self.member, Word::Fine(format!("left {name}")));
                    }
                }
                Err(e) => {
                    let wait = if e.retry {
                        retry.failed(e.retry_after)
                    } else {
                        // Refused: read the balancer again before another
                        // try (its set-up may have changed, e.g. to a tag).
                        self.check_at = Instant::now();
                        retry.failed_for(RECHECK_WRONG)
                    };
                    if e.retry {
                        tracing::warn!(balancer = %name, error = %e, retry_in = ?wait, "load-balancer change failed; retrying");
                    } else {
                        tracing::error!(balancer = %name, error = %e, "load-balancer change refused (token needs {})", s.provider.scopes());
                    }
                    self.up.say(
                        self.member.unwrap_or(true),
                        self.member,
                        Word::Trouble(format!(
                            "change failing on {name}: {e}; retrying in {}s",
                            wait.as_secs()
                        )),
                    );
                }
            }
            return Next::Again;
        }
        if leaving && (self.member == Some(false) || self.setup.is_none()) && !self.left {
            // Out: the balancer may still send until its health check
            // notices; wait that long before lame duck.
            self.left = true;
            // Only a budget set by hand cuts the delay short; a derived one
            // holds it whole.
            let delay = self
                .setup
                .as_ref()
                .map_or(Duration::ZERO, |f| f.health.drain_delay())
                .min(s.stop_budget.unwrap_or(Duration::MAX));
            if !delay.is_zero() {
                let line = format!(
                    "out of {name}; drain delay {}s (health check {}×{}s)",
                    delay.as_secs(),
                    self.setup.as_ref().map_or(0, |f| f.health.unhealthy),
                    self.setup
                        .as_ref()
                        .map_or(0, |f| f.health.interval.as_secs())
                );
                tracing::info!(balancer = %name, delay = ?delay, "out of the load balancer; waiting for its health check before lame duck");
                self.up.say(true, self.member, Word::Fine(line));
                tokio::time::sleep(delay).await;
            }
            if self.setup.is_some()
                && let Ok(token) = Secret::read(&s.token_file, &format!("{} API token", s.provider))
                && let Err(e) = self.client.finish_leaving(token.expose()).await
            {
                // Drained already: a leftover node takes no new clients.
                tracing::warn!(balancer = %name, error = %e, "cannot remove this node after draining it");
            }
            self.up
                .say(false, self.member, Word::Fine(format!("out of {name}")));
            return Next::Again;
        }
        if !leaving {
            self.left = false;
        }
        let wake = [
            retry.at(),
            (!leaving).then_some(self.check_at),
            (self.member.is_some_and(|m| m != want_in) && !settled).then(|| t.since + s.dwell),
        ]
        .into_iter()
        .flatten()
        .min();
        Next::Wait(wake)
    }
}

async fn read(client: &dyn LoadBalancer, s: &LbSettings, name: &str) -> Result<Setup, LbError> {
    let token = Secret::read(&s.token_file, &format!("{} API token", s.provider))
        .map_err(|e| LbError::fatal(format!("reading {name}'s token"), e.why))?;
    client.setup(token.expose()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LbSettings {
        LbSettings {
            provider: LbProvider::DigitalOcean,
            id: "lb".into(),
            url: "http://127.0.0.1:1".into(),
            token_file: "/nonexistent".into(),
            instance_id: "42".into(),
            private_ip: None,
            backend: Backend::Private,
            client_bind: "10.0.0.5".parse().expect("addr"),
            server_name: "n1".into(),
            region: "fra1".into(),
            client_port: 4222,
            monitoring_port: Some(8222),
            ready: "10.0.0.5:8223".parse().expect("addr"),
            dwell: Duration::from_secs(5),
            stop_budget: None,
        }
    }

    fn good() -> Setup {
        Setup {
            rules: vec![Rule {
                entry: "tcp:4222".into(),
                target_protocol: "tcp".into(),
                target_port: Some(4222),
                tls_passthrough: false,
            }],
            health: Health {
                protocol: "http".into(),
                port: Some(8223),
                path: "/ready".into(),
                interval: Duration::from_secs(3),
                timeout: Duration::from_secs(2),
                unhealthy: 2,
                healthy: 2,
            },
            region: "fra1".into(),
            status: "active".into(),
            tag: None,
            registered: false,
            members: Vec::new(),
            wrong: Vec::new(),
        }
    }

    #[test]
    fn a_right_set_up_passes_and_each_wrong_one_says_what_to_change() {
        let s = settings();
        assert!(check(&good(), &s).is_empty());
        assert_eq!(good().health.drain_delay(), Duration::from_secs(10));

        let mut https = good();
        https.rules[0].entry = "https:443".into();
        https.rules[0].target_protocol = "http".into();
        let w = check(&https, &s);
        assert!(w[0].contains("must be tcp → tcp"), "{w:?}");

        let mut elsewhere = good();
        elsewhere.rules[0].target_port = Some(4333);
        assert!(
            check(&elsewhere, &s)[0].contains("no forwarding rule targets the client port 4222")
        );

        let mut monitoring = good();
        monitoring.health.port = Some(8222);
        assert!(check(&monitoring, &s)[0].contains("monitoring port 8222"));

        let mut tcp_check = good();
        tcp_check.health.protocol = "tcp".into();
        tcp_check.health.port = Some(4222);
        assert!(check(&tcp_check, &s)[0].contains("port 8223, path /ready"));

        let mut region = good();
        region.region = "nyc3".into();
        assert!(check(&region, &s)[0].contains("in nyc3, this machine in fra1"));

        // What reading found (another VPC) comes first, with the rest.
        let mut vpc = good();
        vpc.wrong
            .push("the balancer is in VPC a, this droplet in VPC b".into());
        vpc.region = "nyc3".into();
        let w = check(&vpc, &s);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("VPC a"), "{w:?}");
    }

    #[test]
    fn the_default_stop_budget_covers_the_drain_delay_of_the_health_check() {
        // DigitalOcean's API defaults: every 10 s, 5 s timeout, 5 failures.
        let api_defaults = Health {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            unhealthy: 5,
            ..good().health
        };
        assert_eq!(api_defaults.drain_delay(), Duration::from_secs(75));
        let s = settings();
        assert_eq!(
            stop_budget(&s, Some(&api_defaults)),
            Duration::from_secs(90)
        );
        assert!(stop_budget(&s, Some(&api_defaults)) > api_defaults.drain_delay());
        // Linode's NodeBalancer defaults: 31 s, 30 s, 3 attempts.
        let linode = Health {
            interval: Duration::from_secs(31),
            timeout: Duration::from_secs(30),
            unhealthy: 3,
            ..good().health
        };
        assert_eq!(stop_budget(&s, Some(&linode)), Duration::from_secs(198));
        // Not read yet: the old fixed default; set by hand: as set.
        assert_eq!(stop_budget(&s, None), UNKNOWN_STOP_BUDGET);
        let set = LbSettings {
            stop_budget: Some(Duration::from_secs(30)),
            ..settings()
        };
        assert_eq!(
            stop_budget(&set, Some(&api_defaults)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_nodebalancer_needs_tcp_configs_and_a_connection_check() {
        let s = LbSettings {
            provider: LbProvider::Linode,
            region: "eu-central".into(),
            ..settings()
        };
        let mut nb = good();
        nb.region = "eu-central".into();
        nb.health.protocol = "connection".into();
        assert!(check(&nb, &s).is_empty(), "{:?}", check(&nb, &s));
        nb.health.protocol = "http".into();
        nb.rules[0].target_protocol = "https".into();
        let w = check(&nb, &s);
        assert!(w[0].contains("must use protocol tcp"), "{w:?}");
        assert!(w[1].contains("set check = \"connection\""), "{w:?}");
    }

    #[test]
    fn a_new_or_errored_balancer_is_not_joined() {
        let s = settings();
        let mut setup = good();
        assert_eq!(check(&setup, &s), Vec::<String>::new());
        setup.status = "new".into();
        let wrong = check(&setup, &s);
        assert!(wrong[0].contains("still being created"), "{wrong:?}");
        setup.status = "errored".into();
        let wrong = check(&setup, &s);
        assert!(wrong[0].contains("status is errored"), "{wrong:?}");
    }
}
