//! The node's voice in the supercluster: publishes this node's
//! [`NodeReport`] every [`INTERVAL`] and at once on a change of state, and
//! keeps the [`Table`] of every node's reports it hears, all in the system
//! account (which spans every region through the gateways). It runs beside
//! the supervisor and only reads its status: a broker that is down means
//! nothing is said or heard until it is back.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use tokio::sync::watch;

use super::report::{INTERVAL, NodeReport, SUBJECT_PREFIX, Table};
use crate::config::Settings;
use crate::health::{Health, State, Status};

/// A report larger than this is not natsmeshd's.
const MAX_REPORT: usize = 64 * 1024;

fn now_ms() -> u64 {
    crate::unix_ms(SystemTime::now())
}

/// Runs until the status channel closes.
#[tracing::instrument(name = "fleet", skip_all, fields(task = "heartbeat"))]
pub async fn run(
    settings: Settings,
    mut status: watch::Receiver<Health>,
    table: watch::Sender<Table>,
) {
    let me = settings.server.server_name.clone();
    let subject = format!("{SUBJECT_PREFIX}.{me}");
    let mut failures = 0u32;
    loop {
        // Only a node whose broker runs can speak.
        let client = match crate::auth::system_client(&settings).await {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::debug!(error = %e, "fleet reports wait for the broker");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    changed = status.changed() => if changed.is_err() { return } else { continue },
                }
            }
        };
        failures = 0;
        let mut heard = match client.subscribe(format!("{SUBJECT_PREFIX}.>")).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for fleet reports");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_state: Option<State> = None;
        loop {
            let say = tokio::select! {
                _ = tick.tick() => true,
                changed = status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    Some(status.borrow().state) != last_state
                }
                msg = heard.next() => {
                    let Some(msg) = msg else { break };
                    if msg.payload.len() <= MAX_REPORT {
                        match serde_json::from_slice::<NodeReport>(&msg.payload) {
                            // A report names the server it is about by
                            // its subject too: one cannot speak for another
                            // under its own subject.
                            Ok(r) if msg.subject.as_str() == format!("{SUBJECT_PREFIX}.{}", r.server_name) => {
                                table.send_modify(|t| t.observe(r, now_ms()));
                            }
                            Ok(_) => tracing::debug!(subject = %msg.subject, "a fleet report under another server's subject; ignored"),
                            Err(e) => tracing::debug!(subject = %msg.subject, error = %e, "not a fleet report; ignored"),
                        }
                    }
                    false
                }
            };
            if !say {
                continue;
            }
            // The report is a wire format, made from the printable status.
            let (state, printable) = {
                let h = status.borrow();
                (h.state, Status::from_health(&h))
            };
            last_state = Some(state);
            let report = NodeReport::from_status(&printable, now_ms());
            let Ok(body) = serde_json::to_vec(&report) else {
                continue;
            };
            table.send_modify(|t| t.observe(report, now_ms()));
            if let Err(e) = client.publish(subject.clone(), body.into()).await {
                tracing::debug!(error = %e, "cannot publish this node's fleet report");
            }
            // A change of state goes out now, not at the next tick.
            let _ = client.flush().await;
        }
    }
}
