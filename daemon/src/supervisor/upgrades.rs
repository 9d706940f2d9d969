//! New binaries (see [`crate::upgrade`]): noticed every few seconds while
//! the node serves; a new natsmeshd re-executes itself under the region's
//! lease and the new image adopts the running broker; a new nats-server is
//! checked against the configuration and restarted under the lease.

use std::time::Duration;

use natsmesh_broker::process::adopt;
use tokio::time::Instant;

use super::lifecycle::Event as Step;
use super::planned::Plan;
use super::{Event, NEXT_NAME, State, Supervisor};
use crate::logging::ids;
use crate::prepare::{PrepareError, Prepared, prepare_in};
use crate::upgrade::{self, HandoffFile};

/// How often the binaries are looked at.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(5);

impl Supervisor {
    /// Has a package replaced natsmeshd or nats-server?
    pub(super) fn check_binaries(&mut self) {
        self.next_binary_check = Instant::now() + CHECK_EVERY;
        if self.binary_checking
            || self.reexec_checking
            || self.job.is_some()
            || self.planned.is_some()
            || self.lease.is_some()
            || self.removal.is_some()
            || self.core.state() != State::Ready
        {
            return;
        }
        if let Some((path, id)) = &self.exe
            && upgrade::file_id(path).is_some_and(|now| now != *id)
        {
            tracing::info!(
                path = %path.display(),
                "a new natsmeshd binary: it takes over under the restart lease; the broker keeps running"
            );
            self.planned = Some(Plan::Reexec);
            self.ask_for_lease();
            return;
        }
        let Some(path) = upgrade::resolve(&self.settings.binary) else {
            return;
        };
        let now = upgrade::file_id(&path);
        if now.is_none() || now == self.broker_bin {
            return;
        }
        // Looked at once per new file, whatever comes of it.
        self.broker_bin = now;
        self.binary_checking = true;
        // The settings the running broker was built with (by
        // `prepare::effective`), checked against the new binary.
        let settings = self.settings.clone();
        let tx = self.events.clone();
        self.tasks.spawn(async move {
            let next = prepare_in(&settings, &settings.state_dir, NEXT_NAME).await;
            let _ = tx.send(Event::NewBroker { path, next }).await;
        });
    }

    /// The new nats-server binary was checked against the configuration.
    pub(super) fn on_new_broker(
        &mut self,
        path: std::path::PathBuf,
        next: Result<Prepared, PrepareError>,
    ) {
        self.binary_checking = false;
        match next {
            Err(e) => {
                tracing::error!(
                    path = %path.display(),
                    error = %e,
                    "a new nats-server binary cannot run this configuration; the running broker stays"
                );
                self.health.warnings.push(format!(
                    "new nats-server at {} refused: {e}",
                    path.display()
                ));
                self.publish();
            }
            // Something else began meanwhile (a change, a restart, a
            // drain): look at the binary again at the next check.
            Ok(next)
                if self.job.is_some()
                    || self.planned.is_some()
                    || self.core.state() != State::Ready =>
            {
                let _ = std::fs::remove_file(&next.path);
                self.broker_bin = None;
            }
            Ok(next) => {
                let running = self.running_version();
                let why = format!("a new nats-server binary ({running} → {})", next.version);
                let built = self.built();
                let _ = self.restart_for(built, next, vec![why]);
            }
        }
    }

    /// Hands the broker over to the new natsmeshd binary: only returns if
    /// that failed (and then this image goes on as before).
    pub(super) fn reexec(&mut self) {
        let Some((exe, _)) = self.exe.clone() else {
            return;
        };
        if self.reexec_checking {
            return;
        }
        self.reexec_checking = true;
        let held = self.lease.take();
        self.health.fleet = crate::health::Coordinating::Idle;
        let tx = self.events.clone();
        let output = self.output.clone();
        self.tasks.spawn(async move {
            if let Some(held) = held {
                // The exec is quick and the broker keeps serving.
                let _ = tokio::time::timeout(Duration::from_secs(2), held.release()).await;
            }
            // The new binary must accept this configuration before it gets
            // the broker: an image that refused it would exit, and the
            // broker with it.
            let result = upgrade::check_with(&exe).await;
            if result.is_ok() {
                // The broker's lines so far reach the log before the exec.
                let _ = tokio::time::timeout(Duration::from_secs(1), output.flush()).await;
            }
            let _ = tx.send(Event::ReexecChecked { exe, result }).await;
        });
    }

    /// The new binary was checked: hand over (only returns if that failed,
    /// and then this image goes on as before).
    pub(super) fn on_reexec_checked(
        &mut self,
        exe: std::path::PathBuf,
        result: Result<(), upgrade::CheckError>,
    ) {
        self.reexec_checking = false;
        if let Err(e) = result {
            tracing::error!(error = %e, "the new natsmeshd refuses this configuration; this one keeps running");
            self.health
                .warnings
                .push(format!("new natsmeshd not taken: {e}"));
            self.exe = upgrade::file_id(&exe).map(|id| (exe, id));
            self.publish();
            return;
        }
        if matches!(self.core.state(), State::Draining | State::Stopped) {
            // A stop or drain began while the new binary was checked: it
            // takes over at the next start instead.
            tracing::info!("not re-executing while {}", self.core.state());
            return;
        }
        let Some(run) = self.running.as_mut() else {
            tracing::warn!(
                "no broker running: the new natsmeshd binary takes over at the next start"
            );
            return;
        };
        let Some(broker) = run.process.handoff() else {
            tracing::error!(
                "this broker cannot be handed over; the new natsmeshd binary takes over at the next restart"
            );
            self.exe = None;
            return;
        };
        let file = HandoffFile {
            broker,
            broker_binary: self.broker_bin,
            broker_version: Some(run.version.clone()),
            rendered: self.current.rendered.text.clone(),
            served: self.core.broker().is_some_and(|b| b.first_served.is_some()),
        };
        let pid = run.pid;
        let path = match upgrade::write_handoff(&self.settings.state_dir, &file) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot hand over; this natsmeshd keeps running");
                self.exe = None;
                return;
            }
        };
        tracing::info!(message_id = ids::RESTART, exe = %exe.display(), broker_pid = pid, "re-executing natsmeshd; nats-server keeps running");
        self.notifier.status(&format!(
            "re-executing natsmeshd ({}); nats-server pid {pid} keeps running",
            exe.display()
        ));
        let err = upgrade::exec_self(&exe, &path);
        // Still here: the exec failed and this image goes on.
        let _ = std::fs::remove_file(&path);
        tracing::error!(error = %err, "cannot re-execute natsmeshd; this one keeps running");
        self.health.warnings.push(err);
        self.exe = upgrade::file_id(&exe).map(|id| (exe, id));
        self.publish();
    }

    /// Takes over the broker the previous image handed over (or starts
    /// one, if that cannot be done).
    pub(super) fn adopt(&mut self, h: HandoffFile) {
        let targets = match self.probe_targets() {
            Ok(t) => t,
            Err(why) => {
                self.step(Step::SpawnFailed(why.to_string()));
                return;
            }
        };
        let process = match adopt(h.broker, &self.current.path) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot take over the running broker; starting one");
                self.step(Step::Start);
                return;
            }
        };
        let pid = process.pid();
        tracing::info!(
            broker_pid = pid,
            "natsmeshd re-executed; took over the running nats-server"
        );
        let version = h
            .broker_version
            .clone()
            .unwrap_or_else(|| self.current.version.to_string());
        self.install(process, targets);
        self.broker_bin = h.broker_binary;
        if let Some(run) = self.running.as_mut()
            && let Some(v) = h.broker_version.clone()
        {
            run.version = v;
        }
        // The core takes it over like any start, as served if it was.
        self.step(Step::Adopted {
            pid,
            config: super::config_id_of(&h.rendered),
            served: h.served,
            what: format!(
                "took over nats-server {version} (pid {pid}) from the previous natsmeshd"
            ),
        });
        if h.rendered != self.current.rendered.text {
            let why = "this natsmeshd renders a different configuration".to_owned();
            self.health.restart_pending = vec![why.clone()];
            self.plan_restart(why);
        }
    }
}
