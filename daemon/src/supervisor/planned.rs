//! Planned disruptions. A restart natsmeshd decides on (a change only a
//! restart applies, a new nats-server binary), a hand-over to a new
//! natsmeshd binary and a decommission all wait for the region's restart
//! lease when restarts are coordinated. A restart then runs the one
//! pipeline every stop runs — out of DNS and the load balancer, drain
//! delay, lame duck, stop — and starts the broker again; the lease goes
//! back once the new broker serves with JetStream current. `pause` (this
//! node's) and a fleet pause (`fleet pause`, every node's or a region's)
//! hold planned restarts back (not an operator's decommission); crash
//! recovery never waits.

use tokio::sync::{mpsc, oneshot};

use super::lifecycle::Event as Step;
use super::tasks::Event;
use super::{Reply, State, Supervisor, answer};
use crate::command::{Answer, Refused};
use crate::fleet::decommission;
use crate::fleet::view::StreamId;
use crate::fleet::{Coordination, Gate};
use crate::health::Coordinating;

/// What a node waits for the lease to do.
#[derive(Debug, Clone)]
pub(super) enum Plan {
    /// Restart the broker, for this reason.
    Restart(String),
    /// Leave the region for good; these streams have replicas here.
    Decommission(Vec<(StreamId, usize)>),
    /// Hand the broker over to a new natsmeshd binary.
    Reexec,
}

impl Plan {
    fn why(&self) -> String {
        match self {
            Plan::Restart(why) => why.clone(),
            Plan::Decommission(_) => "decommission".into(),
            Plan::Reexec => "a new natsmeshd binary".into(),
        }
    }
}

impl Supervisor {
    /// Restarts for `why` as soon as the region allows.
    pub(super) fn plan_restart(&mut self, why: String) {
        if matches!(self.planned, Some(Plan::Decommission(_))) || self.removal.is_some() {
            tracing::info!(reason = %why, "no restart: this node is being decommissioned");
            return;
        }
        self.planned = Some(Plan::Restart(why));
        self.ask_for_lease();
    }

    /// Starts (or restarts) the wait for the lease, or drains at once
    /// when restarts are not coordinated.
    pub(super) fn ask_for_lease(&mut self) {
        let Some(plan) = self.planned.clone() else {
            return;
        };
        let why = plan.why();
        let decommission = matches!(plan, Plan::Decommission(_));
        if self.held_back() && !decommission {
            self.health.fleet = Coordinating::Paused { then: why };
            self.gate = None;
            self.publish();
            return;
        }
        match &self.settings.fleet {
            Coordination::Off(reason) => {
                tracing::debug!(%reason, "not coordinated");
                self.planned = None;
                self.health.fleet = Coordinating::Idle;
                self.carry_out(plan);
            }
            // Nobody else in the region to keep serving (and a lone
            // server's JetStream may have no meta leader to hold a lease).
            // A supercluster's lease still orders its regions.
            Coordination::Lease(f)
                if f.scope == crate::config::schema::LeaseScope::Region
                    && crate::fleet::region_size(&self.settings) <= 1 =>
            {
                tracing::debug!("a region of one server: nothing to coordinate");
                self.planned = None;
                self.health.fleet = Coordinating::Idle;
                self.carry_out(plan);
            }
            Coordination::Lease(fleet) => {
                if self.gate.is_some() || self.lease.is_some() {
                    return;
                }
                let (tx, rx) = mpsc::channel(4);
                self.tasks.spawn(crate::fleet::acquire(
                    self.settings.clone(),
                    fleet.clone(),
                    why.clone(),
                    self.nonce.clone(),
                    tx,
                ));
                self.gate = Some(rx);
                self.health.fleet = Coordinating::Asking {
                    why,
                    scope: fleet.scope.noun(),
                };
                self.publish();
            }
        }
    }

    /// New settings took effect: a wait for the lease under the old ones
    /// starts again (`fleet.coordinate = false` is the way out of a wait
    /// that cannot end, such as a region whose JetStream lost its quorum).
    pub(super) fn settings_changed(&mut self) {
        if self.gate.take().is_some() {
            self.ask_for_lease();
        }
    }

    /// What the lease (or no need for one) allows.
    fn carry_out(&mut self, plan: Plan) {
        match plan {
            Plan::Restart(why) => self.drain_for_restart(why),
            Plan::Decommission(streams) => self.start_removal(streams),
            // In the loop, where it can wait for the lease's release.
            Plan::Reexec => self.reexec_due = true,
        }
    }

    /// The core drains and restarts (and gives a lease held back once the
    /// new broker serves with JetStream current).
    fn drain_for_restart(&mut self, why: String) {
        let pointed = self.pointed_at();
        let leased = self.lease.is_some();
        self.step(Step::Restart {
            why,
            pointed,
            leased,
        });
    }

    pub(super) fn on_gate(&mut self, gate: Option<Gate>) {
        match gate {
            Some(Gate::Waiting(why)) => {
                self.health.fleet = Coordinating::Waiting { why };
                self.publish();
            }
            Some(Gate::Granted(held)) => {
                self.gate = None;
                let Some(plan) = self.planned.take() else {
                    // Nothing to do any more (a crash restart applied it).
                    self.tasks.spawn_awaited(release(*held));
                    return;
                };
                self.health.fleet = Coordinating::Holding {
                    why: plan.why(),
                    scope: held.scope.noun(),
                };
                self.lease = Some(*held);
                self.carry_out(plan);
            }
            // The task ended without a lease (it cannot, but be safe).
            None => self.gate = None,
        }
    }

    /// A new broker process runs the current configuration: a planned
    /// restart is done (or no longer needed).
    pub(super) fn started(&mut self) {
        if matches!(self.planned, Some(Plan::Restart(_))) {
            self.planned = None;
            self.gate = None;
            if self.lease.is_none() {
                self.health.fleet = Coordinating::Idle;
            }
        }
    }

    /// Planned restarts wait: this node's pause or a fleet pause holds.
    fn held_back(&self) -> bool {
        self.paused || self.fleet_paused.is_some()
    }

    /// The fleet pause keys said something new.
    pub(super) fn on_fleet_pause(&mut self, pauses: crate::fleet::pause::Pauses) {
        let line = pauses.holding(&self.settings.region);
        if line == self.fleet_paused {
            return;
        }
        let was_held = self.held_back();
        self.fleet_paused = line;
        match (was_held, self.held_back()) {
            (false, true) => {
                // As `pause`: a restart under way (lease held) or a
                // decommission finishes; a wait for the lease stops.
                let decommission = matches!(self.planned, Some(Plan::Decommission(_)));
                if self.lease.is_none() && !decommission {
                    self.gate = None;
                    if let Some(plan) = &self.planned {
                        self.health.fleet = Coordinating::Paused { then: plan.why() };
                    }
                }
            }
            (true, false) => {
                self.health.fleet = Coordinating::Idle;
                self.ask_for_lease();
            }
            _ => {}
        }
        self.publish();
    }

    pub(super) fn pause(&mut self) -> Answer {
        if self.paused {
            return Ok("already paused".into());
        }
        self.paused = true;
        let decommission = matches!(self.planned, Some(Plan::Decommission(_)));
        let msg = if self.lease.is_some() || decommission {
            "paused; what is in progress finishes first"
        } else {
            self.gate = None;
            if let Some(plan) = &self.planned {
                self.health.fleet = Coordinating::Paused { then: plan.why() };
            }
            "paused: no planned restarts until `natsmeshd resume`"
        };
        tracing::info!("{msg}");
        self.publish();
        Ok(msg.into())
    }

    pub(super) fn resume(&mut self) -> Answer {
        if !self.paused {
            return Ok(match &self.fleet_paused {
                Some(fleet) => format!(
                    "not paused here, but planned restarts still wait: {fleet} (`natsmeshd fleet resume` lifts it)"
                ),
                None => "not paused".into(),
            });
        }
        self.paused = false;
        if let Some(fleet) = self.fleet_paused.clone() {
            // The fleet's word is lifted only by `fleet resume`.
            tracing::info!(pause = %fleet, "resumed here; a fleet pause still holds");
            self.publish();
            return Ok(format!(
                "resumed here, but planned restarts still wait: {fleet} (`natsmeshd fleet resume` lifts it)"
            ));
        }
        self.health.fleet = Coordinating::Idle;
        tracing::info!("resumed: planned restarts go ahead");
        self.ask_for_lease();
        self.publish();
        Ok(match &self.planned {
            Some(plan) => format!("resumed; pending: {}", plan.why()),
            None => "resumed".into(),
        })
    }

    /// `natsmeshd decommission`: checked now (in a task: a refusal names
    /// the streams it would break), carried out under the region's lease.
    pub(super) fn decommission(&mut self, reply: Option<Reply>) {
        if matches!(self.planned, Some(Plan::Decommission(_)))
            || self.removal.is_some()
            || self.decommission_checking
        {
            answer(reply, Ok("already decommissioning".into()));
            return;
        }
        if self.core.state() != State::Ready {
            let why = format!(
                "only a serving node can be decommissioned (state {})",
                self.core.state()
            );
            answer(reply, Err(why.into()));
            return;
        }
        let me = self.settings.server.server_name.clone();
        if self.settings.server.jetstream.is_none() {
            // No JetStream group to leave.
            self.planned = None;
            self.finish_decommission(format!("{me} has no JetStream to move"));
            answer(
                reply,
                Ok("decommissioning: leaving DNS and the load balancer, then stopping".into()),
            );
            return;
        }
        if self.settings.system_user.is_none() {
            answer(reply, Err("removing a server from the JetStream group needs natsmeshd's system user (auth.mode = \"accounts\" or \"operator\")".into()));
            return;
        }
        self.decommission_checking = true;
        let settings = self.settings.clone();
        let tx = self.events.clone();
        self.tasks.spawn(async move {
            let result = decommission::check(&settings).await;
            let _ = tx.send(Event::DecommissionChecked { reply, result }).await;
        });
    }

    /// The decommission's check ended.
    pub(super) fn on_decommission_checked(
        &mut self,
        reply: Option<Reply>,
        result: Result<Vec<(StreamId, usize)>, decommission::DecommissionError>,
    ) {
        self.decommission_checking = false;
        let streams = match result {
            Ok(s) => s,
            Err(e) => return answer(reply, Err(Refused::because(e))),
        };
        // A stop (or a crash) came while it was checked.
        if self.core.state() != State::Ready {
            let why = format!(
                "only a serving node can be decommissioned (state {})",
                self.core.state()
            );
            return answer(reply, Err(why.into()));
        }
        let me = self.settings.server.server_name.clone();
        tracing::info!(streams = streams.len(), "decommission accepted");
        self.gate = None;
        let n = streams.len();
        self.planned = Some(Plan::Decommission(streams));
        self.ask_for_lease();
        answer(
            reply,
            Ok(format!(
                "decommissioning {me}: {n} stream{} to re-place; then out of DNS and the load balancer, lame duck, stop (`natsmeshd status` follows it)",
                if n == 1 { "" } else { "s" }
            )),
        );
    }

    fn start_removal(&mut self, streams: Vec<(StreamId, usize)>) {
        let (tx, rx) = oneshot::channel();
        let settings = self.settings.clone();
        self.tasks.spawn_awaited(async move {
            let removed = decommission::remove_self(&settings, &streams).await;
            let _ = tx.send(removed);
        });
        self.removal = Some(rx);
        self.health.fleet = Coordinating::Decommissioning;
        self.publish();
    }

    pub(super) fn on_removed(&mut self, res: Result<String, super::RemovalError>) {
        self.removal = None;
        if let Some(held) = self.lease.take() {
            self.tasks.spawn_awaited(release(held));
        }
        match res {
            Ok(msg) => {
                tracing::info!("{msg}");
                self.finish_decommission(msg);
            }
            Err(e) => {
                tracing::error!(error = %e, "decommission failed; this node keeps serving");
                self.health.fleet = Coordinating::DecommissionFailed(e.to_string());
                self.publish();
            }
        }
    }

    /// Marks the state directory and leaves like any stop.
    fn finish_decommission(&mut self, msg: String) {
        if let Err(e) =
            decommission::mark(&self.settings.state_dir, &self.settings.server.server_name)
        {
            tracing::error!(error = %e, "cannot mark this node decommissioned");
        }
        self.health.fleet = Coordinating::Decommissioned(msg);
        self.notifier.stopping();
        self.leave("decommissioned: leaving the region");
    }

    /// Back into service after `drain`.
    pub(super) fn undrain(&mut self) -> Answer {
        self.step(Step::Undrain)
            .unwrap_or_else(|| Err("no answer".into()))
    }
}

pub(super) async fn release(held: crate::fleet::Held) {
    let scope = held.scope;
    match held.release().await {
        Ok(()) => tracing::info!("released the {}'s restart lease", scope.noun()),
        // It expires by itself.
        Err(e) => {
            tracing::warn!(error = %e, "cannot release the restart lease; it expires by itself")
        }
    }
}
