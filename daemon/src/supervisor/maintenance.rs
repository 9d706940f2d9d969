//! The supervisor's part of coordinated maintenance (the lease, the rule
//! and the marker are `crate::fleet::maintenance`'s): the broker leaves
//! service as in a drain and stays down; it starts again on
//! `maintenance stop`; a natsmeshd started in the same boot as the
//! maintenance keeps it down (an upgrade of natsmeshd while the operator
//! works must not bring the node back before the reboot).

use super::{AfterExit, Reply, State, Supervisor, answer};
use crate::fleet::maintenance::{self, AtStart};

impl Supervisor {
    /// At start (no broker handed over): whether the kept maintenance
    /// holds the broker down; `true` when it does.
    pub(super) fn stays_in_maintenance(&mut self) -> bool {
        let dir = self.settings.state_dir.clone();
        match maintenance::at_start(maintenance::kept(&dir), maintenance::boot_id().as_deref()) {
            AtStart::Serve => {
                if maintenance::kept(&dir).is_some() {
                    tracing::info!("a new boot since maintenance began: serving again");
                }
                if let Err(e) = maintenance::forget(&dir) {
                    tracing::warn!(error = %e, "the maintenance marker stays");
                }
                false
            }
            AtStart::StayDown(m) => {
                let line = m.describe(crate::unix_ms(std::time::SystemTime::now()));
                tracing::info!(maintenance = %line, "in maintenance (same boot): the broker stays down");
                self.status.maintenance = Some(line);
                self.go(
                    State::Stopped,
                    "in maintenance: `natsmeshd maintenance stop` (or a reboot) brings it back",
                );
                // natsmeshd itself runs as it should: systemd's start ends.
                let line = self.status.line();
                self.notifier.ready(&line);
                true
            }
        }
    }

    /// `Some(why)`: into maintenance (the lease is taken, the marker kept);
    /// `None`: out of it.
    pub(super) fn maintenance(&mut self, why: Option<String>, reply: Option<Reply>) {
        match why {
            Some(why) => {
                let line = maintenance::kept(&self.settings.state_dir).map_or_else(
                    || format!("in maintenance ({why})"),
                    |m| m.describe(crate::unix_ms(std::time::SystemTime::now())),
                );
                self.status.maintenance = Some(line);
                if self.running.is_none() {
                    self.publish();
                    return answer(reply, Ok("the broker is not running".into()));
                }
                let res = self.begin_drain(AfterExit::StayDown, &format!("maintenance: {why}"));
                answer(reply, res);
            }
            None => {
                if self.status.maintenance.take().is_none() {
                    return answer(reply, Ok("not in maintenance".into()));
                }
                self.publish();
                if self.life.state() == State::Stopped && self.running.is_none() {
                    tracing::info!("maintenance over: starting nats-server again");
                    self.start_broker();
                    answer(reply, Ok("starting nats-server".into()));
                } else {
                    // Still leaving (the drain ends first): back once down.
                    self.after_exit = AfterExit::Restart("maintenance over".into());
                    answer(
                        reply,
                        Ok("the drain ends first, then nats-server starts again".into()),
                    );
                }
            }
        }
    }
}
