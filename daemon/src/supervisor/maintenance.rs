//! The supervisor's part of coordinated maintenance (the lease, the rule
//! and the marker are `crate::fleet::maintenance`'s): the broker leaves
//! service as in a drain and stays down; it starts again on
//! `maintenance stop`; a natsmeshd started in the same boot as the
//! maintenance keeps it down (an upgrade of natsmeshd while the operator
//! works must not bring the node back before the reboot).

use super::{Reply, Step, Supervisor, answer};
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
                self.health.maintenance = Some(line);
                self.step(Step::StayDown {
                    why:
                        "in maintenance: `natsmeshd maintenance stop` (or a reboot) brings it back"
                            .into(),
                });
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
                self.health.maintenance = Some(line);
                if self.running.is_none() {
                    self.publish();
                    return answer(reply, Ok("the broker is not running".into()));
                }
                let pointed = self.pointed_at();
                let res = self.step(Step::Maintenance { why, pointed });
                answer(reply, res.unwrap_or_else(|| Err("no answer".into())));
            }
            None => {
                if self.health.maintenance.take().is_none() {
                    return answer(reply, Ok("not in maintenance".into()));
                }
                self.publish();
                let res = self.step(Step::MaintenanceOver);
                answer(reply, res.unwrap_or_else(|| Err("no answer".into())));
            }
        }
    }
}
