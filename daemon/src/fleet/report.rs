//! What every node tells the supercluster about itself, and the table a
//! node keeps of what it heard: `natsmeshd fleet status` on any node reads
//! that table through the control socket, so it sees the whole
//! supercluster over NATS and never over SSH.
//!
//! Each natsmeshd publishes a [`NodeReport`] on `natsmesh.v1.node.<server>`
//! in the system account every [`INTERVAL`] (and at once when its state
//! changes) and listens to everyone's. A node not heard from for two
//! intervals is `missing`, unless the last thing it said was that it was
//! leaving service (draining, stopping): then it is `stopped`.
//!
//! The report is a stable, versioned JSON document (`schema` 1): fields
//! are only ever added.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::{State, Status};

/// The subject prefix; a node publishes on `<prefix>.<server name>`.
pub const SUBJECT_PREFIX: &str = "natsmesh.v1.node";
/// How often a node reports.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// The schema version of [`NodeReport`].
pub const SCHEMA: u32 = 1;

/// One node's report of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The server name.
    pub server_name: String,
    /// Its region.
    pub region: String,
    /// natsmeshd's state: `starting`, `syncing`, `ready`, `draining`,
    /// `restarting`, `stopped`, ….
    pub state: String,
    /// Why.
    pub reason: String,
    /// Serving, but not where it should be (balancer, DNS), and why.
    #[serde(default)]
    pub degraded_why: Vec<String>,
    /// natsmeshd's version.
    pub natsmesh_version: String,
    /// nats-server's version.
    pub broker_version: String,
    /// Why a restart is pending (empty: none).
    pub restart_pending: Vec<String>,
    /// Planned restarts are held back (`natsmeshd pause` here, or a fleet
    /// pause that applies here).
    pub paused: bool,
    /// The fleet pause that holds (`natsmeshd fleet pause`), for a person;
    /// `None` when only the node's own pause (or none) holds.
    #[serde(default)]
    pub fleet_paused: Option<String>,
    /// The restart lease: waited for (and why), held, or nothing; or the
    /// maintenance lease of a node in maintenance.
    pub lease: String,
    /// When the node certificate expires (Unix seconds), with TLS.
    pub certificate_not_after_unix: Option<u64>,
    /// When the region's intermediate expires (Unix seconds), where known.
    #[serde(default)]
    pub intermediate_not_after_unix: Option<u64>,
    /// When the earliest trusted root expires (Unix seconds).
    #[serde(default)]
    pub root_not_after_unix: Option<u64>,
    /// Load-balancer membership, as natsmeshd last saw or made it.
    pub load_balancer: String,
    /// Whether the balancer lists the node (when natsmeshd manages one).
    pub load_balancer_registered: Option<bool>,
    /// DNS publication, as natsmeshd last did it.
    pub dns: String,
    /// Whether the node's records are (or may be) in DNS.
    pub dns_up: Option<bool>,
    /// When the report was made (Unix milliseconds, the sender's clock).
    pub sent_unix_ms: u64,
}

impl NodeReport {
    /// This node's report from its status.
    pub fn from_status(s: &Status, now_unix_ms: u64) -> Self {
        Self {
            schema: SCHEMA,
            server_name: s.server_name.clone(),
            region: s.region.clone(),
            state: s.state.clone(),
            reason: s.reason.clone(),
            degraded_why: s.degraded_why.clone(),
            natsmesh_version: s.natsmesh_version.clone(),
            broker_version: s.broker_version.clone(),
            restart_pending: s.restart_pending.clone(),
            paused: s.paused || s.fleet_paused.is_some(),
            fleet_paused: s.fleet_paused.clone(),
            // A node in maintenance holds the maintenance lease.
            lease: match &s.maintenance {
                Some(m) if s.fleet.is_empty() => m.clone(),
                _ => s.fleet.clone(),
            },
            certificate_not_after_unix: s.certificate_not_after_unix,
            intermediate_not_after_unix: s.intermediate_not_after_unix,
            root_not_after_unix: s.root_not_after_unix,
            load_balancer: s.load_balancer.clone(),
            load_balancer_registered: s.load_balancer_registered,
            dns: s.dns.clone(),
            dns_up: s.dns_up,
            sent_unix_ms: now_unix_ms,
        }
    }

    /// Whether the node said it was leaving service: silence after this
    /// is a stop, not a loss. The report's word is read into the state
    /// once, here at the edge (a word no natsmeshd writes is not leaving).
    fn leaving(&self) -> bool {
        matches!(
            self.state.parse::<State>(),
            Ok(State::Draining | State::Stopped)
        )
    }
}

/// A row of `fleet status`: the last report and what the silence since
/// means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    /// The server name.
    pub server_name: String,
    /// Its region.
    pub region: String,
    /// The state as this node judges it: the reported one while the node
    /// reports, else `missing` or `stopped`.
    pub state: String,
    /// The last report.
    pub last_report: NodeReport,
    /// When this node last heard it (Unix milliseconds, this node's clock).
    pub last_seen_unix_ms: u64,
}

/// What a node heard, by server name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    heard: BTreeMap<String, (NodeReport, u64)>,
}

impl Table {
    /// Records a report heard at `now_unix_ms` (a report that is not newer
    /// than the one kept, by the sender's clock, is ignored).
    pub fn observe(&mut self, report: NodeReport, now_unix_ms: u64) {
        if report.schema == 0 || report.server_name.is_empty() {
            return;
        }
        if let Some((kept, _)) = self.heard.get(&report.server_name)
            && kept.sent_unix_ms > report.sent_unix_ms
        {
            return;
        }
        self.heard
            .insert(report.server_name.clone(), (report, now_unix_ms));
    }

    /// The rows at `now_unix_ms`, sorted by region and name; `region`
    /// keeps one region only.
    pub fn rows(&self, now_unix_ms: u64, region: Option<&str>) -> Vec<NodeRow> {
        let silent_after = u64::try_from((INTERVAL * 2).as_millis()).unwrap_or(u64::MAX);
        let mut rows: Vec<NodeRow> = self
            .heard
            .values()
            .filter(|(r, _)| region.is_none_or(|want| r.region == want))
            .map(|(r, seen)| {
                let silent = now_unix_ms.saturating_sub(*seen) > silent_after;
                let state = match (silent, r.leaving()) {
                    (false, _) => r.state.clone(),
                    (true, true) => "stopped".to_owned(),
                    (true, false) => "missing".to_owned(),
                };
                NodeRow {
                    server_name: r.server_name.clone(),
                    region: r.region.clone(),
                    state,
                    last_report: r.clone(),
                    last_seen_unix_ms: *seen,
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.region, &a.server_name).cmp(&(&b.region, &b.server_name)));
        rows
    }
}

/// The table as a person reads it.
pub fn render(rows: &[NodeRow], now_unix_ms: u64) -> String {
    let mut out = format!(
        "{:<34} {:<8} {:<10} {:>6}  {:<9} {:<8} {:<7} {}\n",
        "SERVER", "REGION", "STATE", "SEEN", "NATSMESH", "NATS", "PAUSED", "RESTART PENDING / WHY"
    );
    for r in rows {
        let seen = now_unix_ms.saturating_sub(r.last_seen_unix_ms) / 1000;
        let why = if r.last_report.restart_pending.is_empty() {
            r.last_report.reason.clone()
        } else {
            format!(
                "restart pending: {}",
                r.last_report.restart_pending.join("; ")
            )
        };
        out.push_str(&format!(
            "{:<34} {:<8} {:<10} {:>5}s  {:<9} {:<8} {:<7} {}\n",
            r.server_name,
            r.region,
            r.state,
            seen,
            r.last_report.natsmesh_version,
            r.last_report.broker_version,
            if r.last_report.paused { "yes" } else { "no" },
            why
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, region: &str, state: &str, sent: u64) -> NodeReport {
        NodeReport {
            schema: SCHEMA,
            server_name: name.into(),
            region: region.into(),
            state: state.into(),
            reason: String::new(),
            degraded_why: Vec::new(),
            natsmesh_version: "0.1.0".into(),
            broker_version: "2.15.1".into(),
            restart_pending: Vec::new(),
            paused: false,
            fleet_paused: None,
            lease: String::new(),
            certificate_not_after_unix: None,
            intermediate_not_after_unix: None,
            root_not_after_unix: None,
            load_balancer: String::new(),
            load_balancer_registered: None,
            dns: String::new(),
            dns_up: None,
            sent_unix_ms: sent,
        }
    }

    #[test]
    fn silence_is_missing_after_two_intervals_unless_the_node_was_leaving() {
        let mut t = Table::default();
        t.observe(report("a", "fra1", "ready", 1_000), 1_000);
        t.observe(report("b", "fra1", "draining", 1_000), 1_000);
        t.observe(report("c", "nyc3", "syncing", 1_000), 1_000);
        let at = |ms: u64| -> Vec<(String, String)> {
            t.rows(ms, None)
                .into_iter()
                .map(|r| (r.server_name, r.state))
                .collect()
        };
        // Within two intervals: as reported.
        assert_eq!(
            at(11_000),
            [("a", "ready"), ("b", "draining"), ("c", "syncing")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        // Past them: lost, or stopped when it said it was leaving.
        assert_eq!(
            at(11_001),
            [("a", "missing"), ("b", "stopped"), ("c", "missing")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        // Heard again: back as reported.
        t.observe(report("a", "fra1", "ready", 20_000), 20_000);
        assert_eq!(t.rows(20_000, None)[0].state, "ready");
    }

    #[test]
    fn an_older_report_never_replaces_a_newer_one_and_regions_filter() {
        let mut t = Table::default();
        t.observe(report("a", "fra1", "ready", 5_000), 5_000);
        t.observe(report("a", "fra1", "starting", 4_000), 6_000);
        t.observe(report("z", "sgp1", "ready", 5_000), 5_000);
        t.observe(report("", "sgp1", "ready", 5_000), 5_000);
        let mut bad = report("q", "sgp1", "ready", 5_000);
        bad.schema = 0;
        t.observe(bad, 5_000);
        let rows = t.rows(6_000, None);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].last_report.state, "ready");
        assert_eq!(rows[0].last_seen_unix_ms, 5_000);
        let only = t.rows(6_000, Some("sgp1"));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].server_name, "z");
        let text = render(&rows, 6_000);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("a ") && l.contains("fra1"))
        );
    }

    #[test]
    fn a_node_in_maintenance_reports_its_maintenance_lease() {
        let mut s = Status {
            state: "draining".into(),
            ..Status::default()
        };
        assert_eq!(NodeReport::from_status(&s, 1).lease, "");
        s.maintenance = Some("in maintenance since … (kernel): safe to reboot".into());
        assert!(NodeReport::from_status(&s, 1).lease.contains("kernel"));
        // A restart lease in play is shown first.
        s.fleet = "waiting to restart: …".into();
        assert_eq!(
            NodeReport::from_status(&s, 1).lease,
            "waiting to restart: …"
        );
    }

    #[test]
    fn a_report_of_each_state_reads_back_as_leaving_only_when_it_leaves() {
        for state in State::ALL {
            let h = crate::health::Health {
                state,
                ..crate::health::Health::default()
            };
            let r = NodeReport::from_status(&Status::from_health(&h), 1);
            assert_eq!(r.state, state.as_str());
            assert_eq!(
                r.leaving(),
                matches!(state, State::Draining | State::Stopped),
                "{state}"
            );
        }
        assert!(!report("x", "fra1", "unheard-of", 1).leaving());
    }
}
