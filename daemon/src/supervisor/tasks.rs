//! Slow work off the supervision loop. The loop is the only one that
//! sends WATCHDOG=1 and runs the probes, so nothing that may take seconds
//! runs on it: the configuration check (`nats-server -t`, up to 20 s), the
//! reload's confirmation (up to 10 s), certificate issuance and renewal,
//! `$SYS` requests, the decommission check, the new binaries' checks and
//! the lease's release before a re-execution each run as a task whose
//! result comes back to the loop as an [`Event`]. The loop keeps the state:
//! one configuration change at a time (another request meanwhile is
//! queued and coalesced), and a result for a job the loop has given up on
//! (a stop came first) is ignored.
//!
//! The runtime has one thread, the loop's: blocking file and key work runs
//! on the blocking pool (`spawn_blocking`), never in an async task.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use natsmesh_broker::classify::{Action, classify};
use natsmesh_broker::log::{ReloadOutcome, needs_restart};
use natsmesh_broker::monitor::Varz;
use nix::sys::signal::Signal;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    Built, Inputs, NEXT_NAME, RELOAD_CONFIRM, Reloaded, Reply, State, Supervisor, cert_set, due,
    local_addr,
};
use crate::auth::AuthError;
use crate::config;
use crate::files::PLAIN;
use crate::fleet::decommission::DecommissionError;
use crate::fleet::view::StreamId;
use crate::logging::ids;
use crate::prepare::{PrepareError, Prepared, prepare_in};
use crate::tls::TlsError;

/// Why a configuration change (SIGHUP, `natsmeshd reload`, a new
/// certificate, what DNS found) was not applied. The words are what the
/// operator reads in the reload's answer, the log and `status`'s last
/// reload, and what the tests match: each variant keeps them word for
/// word. Every refusal leaves the running configuration in force.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChangeError {
    /// The files do not read as valid settings.
    #[error("configuration refused, the previous one keeps serving:\n{0}")]
    Settings(#[source] config::Problems),
    /// natsmeshd's system user cannot be set up for the new settings.
    #[error("system user: {0}; the previous configuration keeps serving")]
    SystemUser(#[source] AuthError),
    /// The node certificate the new settings need cannot be issued or read.
    #[error("TLS: {0}; the previous configuration keeps serving")]
    Tls(#[source] TlsError),
    /// The blocking part of the check ended without a result (it
    /// panicked or the runtime is going away).
    #[error("the configuration check failed: {0}")]
    CheckTask(#[source] tokio::task::JoinError),
    /// The broker's file cannot be rendered, or `nats-server -t` refused
    /// it (boxed: it is the largest kind, and refusals are rare).
    #[error("configuration refused, the previous one keeps serving: {0}")]
    Prepare(#[source] Box<PrepareError>),
    /// The node is stopping, draining or restarting: there is no broker
    /// to load a change into.
    #[error("cannot reload while {0}")]
    NotWhile(State),
    /// The broker is not running (it exited, or never started).
    #[error("no broker is running")]
    NoBroker,
    /// The checked file cannot take the running one's place.
    #[error("cannot install the new configuration: {0}")]
    Install(#[source] std::io::Error),
    /// SIGHUP cannot be delivered.
    #[error("cannot signal the broker: {0}")]
    Signal(#[source] std::io::Error),
    /// The broker answered (through `$SYS` or its log) that it refused
    /// the file; its own words.
    #[error("nats-server refused the new configuration, the previous one keeps serving: {0}")]
    BrokerRefused(String),
    /// The broker said nothing about the reload in time.
    #[error(
        "nats-server logged no reload outcome within {:?}; the previous configuration stays",
        RELOAD_CONFIRM
    )]
    NoOutcome,
    /// The broker exited while it was asked to load the new file.
    #[error("the broker exited during the reload; it starts again with the new configuration")]
    BrokerExited,
}

/// Why the node certificate could not be renewed (or read again).
#[derive(Debug, thiserror::Error)]
pub(super) enum RenewError {
    /// Issuance or the files failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The blocking task ended without a result.
    #[error("the renewal task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// What a task tells the loop.
pub(super) enum Event {
    /// A configuration change was read and checked.
    Checked {
        /// The job it belongs to.
        job: u64,
        /// What came of it.
        checked: Box<Checked>,
    },
    /// The broker was asked to reload through `$SYS` (or cannot be, and
    /// gets SIGHUP from the loop).
    Asked {
        job: u64,
        /// `/varz` before the reload.
        before: Option<Box<Varz>>,
        /// The broker's verdict through `$SYS`, when it was asked there.
        via_sys: Option<Result<(), AuthError>>,
    },
    /// The reload's outcome, confirmed against `/varz`.
    Confirmed {
        job: u64,
        outcome: Option<ReloadOutcome>,
        /// `/varz` shows the new configuration.
        confirmed: bool,
    },
    /// The certificate renewal (or look at the files) ended.
    Certificate(Result<crate::tls::Current, RenewError>),
    /// The peers' account sets, asked for the broker `pid`.
    Accounts {
        pid: u32,
        answers: Result<Vec<(String, BTreeSet<String>)>, AuthError>,
    },
    /// A new nats-server binary was checked against the configuration.
    NewBroker {
        path: PathBuf,
        next: Result<Prepared, PrepareError>,
    },
    /// The new natsmeshd binary was checked (and the lease given back).
    ReexecChecked {
        exe: PathBuf,
        result: Result<(), crate::upgrade::CheckError>,
    },
    /// `natsmeshd decommission` was checked against the JetStream group.
    DecommissionChecked {
        reply: Option<Reply>,
        result: Result<Vec<(StreamId, usize)>, DecommissionError>,
    },
}

/// A configuration change, read and checked off the loop.
pub(super) struct Checked {
    /// The node certificate, when TLS is on and it was looked at: it
    /// counts even when the rest was refused (as before the change).
    cert: Option<(crate::tls::Current, bool)>,
    /// natsmeshd's own settings that changed, and how each applies.
    changes: Vec<config::reload::Change>,
    /// The settings and their prepared broker file, or why refused.
    result: Result<(Built, Prepared), ChangeError>,
}

/// Who asked for a configuration change, and who waits for its outcome.
pub(super) enum Origin {
    /// SIGHUP or `natsmeshd reload`: the files are read again.
    Request(Vec<Reply>),
    /// A new node certificate: the files are read again and the broker
    /// loads it.
    Certificate {
        serial: String,
        tls: Box<crate::tls::TlsSettings>,
    },
    /// What DNS found changed.
    Discovery,
}

/// Where a change is.
enum Phase {
    /// `nats-server -t` and the rest of the check run.
    Checking,
    /// The new file is installed; the broker is being asked to load it.
    Reloading {
        settings: Box<Built>,
        next: Box<Prepared>,
        keys: Vec<String>,
        targets: Box<super::probe::Targets>,
    },
}

/// The configuration change in flight.
pub(super) struct Job {
    id: u64,
    origin: Origin,
    phase: Phase,
    /// natsmeshd's own settings that changed (known once checked).
    changes: Vec<config::reload::Change>,
}

/// Changes asked for while one was in flight: run after it, coalesced.
#[derive(Default)]
pub(super) struct Queued {
    request: Option<Vec<Reply>>,
    certificate: Option<(String, Box<crate::tls::TlsSettings>)>,
    discovery: bool,
}

impl Queued {
    fn take_next(&mut self) -> Option<Origin> {
        if let Some(replies) = self.request.take() {
            // A request reads the files and applies what DNS found: it
            // covers a queued discovery change too.
            self.discovery = false;
            return Some(Origin::Request(replies));
        }
        if let Some((serial, tls)) = self.certificate.take() {
            self.discovery = false;
            return Some(Origin::Certificate { serial, tls });
        }
        std::mem::take(&mut self.discovery).then_some(Origin::Discovery)
    }
}

/// What the check task needs.
struct CheckInput {
    config_path: Option<PathBuf>,
    /// The running settings' inputs: the base of a discovery change, and
    /// what [dns_publish] stays at.
    running: Inputs,
    found: Option<crate::discovery::Found>,
    /// Read the files again (else: the running settings with `found`).
    reread: bool,
    /// Which pointer tasks can be restarted with new settings.
    live: config::reload::Live,
}

/// Reads (or derives) the new settings, looks at the certificate and runs
/// `nats-server -t` on the rendered file.
async fn check_change(input: CheckInput) -> Checked {
    let staged = tokio::task::spawn_blocking(move || stage(input)).await;
    let (inputs, found, cert, changes) = match staged {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => {
            return Checked {
                cert: None,
                changes: Vec::new(),
                result: Err(why),
            };
        }
        Err(e) => {
            return Checked {
                cert: None,
                changes: Vec::new(),
                result: Err(ChangeError::CheckTask(e)),
            };
        }
    };
    let cert = match cert {
        Some(Err(e)) => {
            return Checked {
                cert: None,
                changes: Vec::new(),
                result: Err(ChangeError::Tls(e)),
            };
        }
        Some(Ok(c)) => Some(c),
        None => None,
    };
    // The one function that builds what the broker runs with.
    let settings = crate::prepare::effective(
        &inputs.validated,
        found.as_ref(),
        cert_set(&inputs.validated, cert.as_ref().map(|(c, _)| c)).as_ref(),
        inputs.system.as_ref(),
    );
    let result = prepare_in(&settings, &settings.state_dir, NEXT_NAME)
        .await
        .map(|next| (Built { inputs, settings }, next))
        .map_err(|e| ChangeError::Prepare(Box::new(e)));
    Checked {
        cert,
        changes,
        result,
    }
}

type Staged = (
    Inputs,
    Option<crate::discovery::Found>,
    Option<Result<(crate::tls::Current, bool), TlsError>>,
    Vec<config::reload::Change>,
);

/// The blocking part of a check: the files, the system account, the
/// certificate (new roots, a new intermediate or new names may need a new
/// one; a broken one refuses the change).
fn stage(input: CheckInput) -> Result<Staged, ChangeError> {
    let (inputs, changes) = if input.reread {
        let running = &input.running.validated;
        let identity = running.identity.clone();
        let found = config::discover(input.config_path.as_deref());
        let (_, mut settings) = found
            .and_then(|sources| config::load_settings_as(&sources, &identity))
            .map_err(ChangeError::Settings)?;
        // natsmeshd's own keys a reload cannot apply keep their running
        // values: part of reading the new settings, before they are used.
        let changes = config::reload::sort_out(running, &mut settings, input.live);
        let system = crate::auth::system_account(&settings, &settings.state_dir)
            .map_err(ChangeError::SystemUser)?;
        let restart = config::reload::restart_keys(&changes);
        if !restart.is_empty() {
            tracing::warn!(
                keys = %restart.join(", "),
                "changed, but natsmeshd keeps the old value until `systemctl restart natsmeshd`"
            );
        }
        let inputs = Inputs {
            validated: std::sync::Arc::new(settings),
            system,
        };
        (inputs, changes)
    } else {
        (input.running, Vec::new())
    };
    let cert = inputs
        .validated
        .tls
        .as_ref()
        .map(|tls| crate::tls::ensure(tls, std::time::SystemTime::now(), false));
    Ok((inputs, input.found, cert, changes))
}

impl Supervisor {
    /// SIGHUP or `natsmeshd reload`.
    pub(super) fn request_reload(&mut self, reply: Option<Reply>) {
        if let Some(job) = &self.job {
            tracing::info!(
                job = job.id,
                "a configuration change is in flight; the reload follows it"
            );
            self.queued
                .request
                .get_or_insert_with(Vec::new)
                .extend(reply);
            return;
        }
        self.begin_change(Origin::Request(reply.into_iter().collect()));
    }

    /// What DNS found changed: apply it to the running settings. Routes
    /// reload; a gateway list that would need a restart is only marked
    /// "restart pending" (discovery never restarts a broker by itself).
    pub(super) fn follow_discovery(&mut self) {
        if self.job.is_some() {
            self.queued.discovery = true;
            return;
        }
        self.begin_change(Origin::Discovery);
    }

    /// Starts a change's check, or answers at once why not.
    fn begin_change(&mut self, origin: Origin) {
        let state = self.core.state();
        match &origin {
            Origin::Discovery => {
                if !matches!(state, State::Starting | State::Syncing | State::Ready) {
                    return;
                }
            }
            Origin::Request(_) | Origin::Certificate { .. } => {
                self.notifier.reloading();
                if matches!(state, State::Draining | State::Stopped | State::Restarting) {
                    self.finish_change(origin, Reloaded::Done(Err(ChangeError::NotWhile(state))));
                    return;
                }
            }
        }
        self.next_job += 1;
        let id = self.next_job;
        let input = CheckInput {
            config_path: self.config_path.clone(),
            running: self.inputs.clone(),
            found: self.found.clone(),
            reread: !matches!(origin, Origin::Discovery),
            // The publisher and the balancer's membership run with the
            // settings they started with.
            live: config::reload::Live::default(),
        };
        if matches!(origin, Origin::Discovery) && input.found.is_none() {
            return;
        }
        self.job = Some(Job {
            id,
            origin,
            phase: Phase::Checking,
            changes: Vec::new(),
        });
        let tx = self.events.clone();
        self.tasks.spawn(async move {
            let checked = Box::new(check_change(input).await);
            let _ = tx.send(Event::Checked { job: id, checked }).await;
        });
    }

    /// The job `id` if it is still the one in flight.
    fn current_job(&self, id: u64) -> bool {
        self.job.as_ref().is_some_and(|j| j.id == id)
    }

    /// The check ended: refuse, do nothing, reload or plan a restart.
    fn on_checked(&mut self, id: u64, checked: Checked) {
        if !self.current_job(id) {
            tracing::debug!(
                job = id,
                "a configuration check ended after it was given up"
            );
            if let Ok((_, next)) = checked.result {
                let _ = std::fs::remove_file(&next.path);
            }
            return;
        }
        if let Some((current, issued)) = checked.cert {
            if issued {
                tracing::info!(serial = %current.info.serial, "issued a node certificate for the new configuration");
            }
            self.cert_due = Some(due(current.renew_at));
            self.show_cert(&current);
            self.cert = Some(current);
        }
        let (settings, next) = match checked.result {
            Ok(v) => v,
            Err(why) => {
                let res = self.refused(why);
                self.end_job(res);
                return;
            }
        };
        if let Some(job) = self.job.as_mut() {
            job.changes = checked.changes;
        }
        let from_discovery = matches!(
            self.job.as_ref().map(|j| &j.origin),
            Some(Origin::Discovery)
        );
        // The state may have changed while the check ran.
        let state = self.core.state();
        let allowed = if from_discovery {
            matches!(state, State::Starting | State::Syncing | State::Ready)
        } else {
            !matches!(state, State::Draining | State::Stopped | State::Restarting)
        };
        if !allowed {
            let _ = std::fs::remove_file(&next.path);
            self.end_job(Reloaded::Done(Err(ChangeError::NotWhile(state))));
            return;
        }
        let decision = classify(&self.current.snapshot, &next.snapshot);
        let res = match decision.action {
            Action::Nothing => {
                let _ = std::fs::remove_file(&next.path);
                self.adopt_settings(settings);
                self.settings_changed();
                Reloaded::Done(Ok("no change".into()))
            }
            Action::Reload => {
                let keys = decision.changes.iter().map(|c| c.key.clone()).collect();
                match self.install_for_reload(id, settings, next, keys) {
                    Some(res) => res,
                    // Under way: its outcome comes back as an event.
                    None => return,
                }
            }
            Action::Restart
                if from_discovery
                    && matches!(self.settings.fleet, crate::fleet::Coordination::Off(_)) =>
            {
                let _ = std::fs::remove_file(&next.path);
                let reasons = decision.restart_reasons();
                tracing::warn!(message_id = ids::RESTART, reasons = %reasons.join("; "), "restart pending: DNS changed what only a restart applies; waiting for a coordinated restart");
                self.health.restart_pending = reasons.clone();
                self.publish();
                Reloaded::Done(Ok(format!("restart pending: {}", reasons.join("; "))))
            }
            Action::Restart => self.restart_for(settings, next, decision.restart_reasons()),
        };
        self.end_job(res);
    }

    /// Installs `next` as the running file and asks the broker to load it
    /// (the asking runs as a task); `Some` when it ended at once.
    fn install_for_reload(
        &mut self,
        id: u64,
        settings: Built,
        next: Prepared,
        keys: Vec<String>,
    ) -> Option<Reloaded> {
        let Some(targets) = self.running.as_ref().map(|r| r.targets.clone()) else {
            let _ = std::fs::remove_file(&next.path);
            return Some(Reloaded::Done(Err(ChangeError::NoBroker)));
        };
        let path = self.current.path.clone();
        if let Err(e) = std::fs::rename(&next.path, &path) {
            return Some(self.refused(ChangeError::Install(e)));
        }
        let next = Prepared { path, ..next };
        // From 2.10 the broker answers a reload request on `$SYS` with its
        // verdict; SIGHUP only logs it. Use the request where possible.
        let sys = (self.current.version >= natsmesh_broker::Version::new(2, 10, 0)
            && self.settings.system_user.is_some())
        .then(|| self.settings.clone());
        let tx = self.events.clone();
        let t = targets.clone();
        self.tasks.spawn(async move {
            let before = t.monitor().varz().await.ok();
            let via_sys = match (sys, before.as_ref().and_then(|v| v.server_id.clone())) {
                (Some(settings), Some(server_id)) => {
                    match crate::auth::system_client(&settings).await {
                        Ok(client) => Some(crate::auth::sys_reload(&client, &server_id).await),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reach the broker as the system user; reloading with SIGHUP");
                            None
                        }
                    }
                }
                _ => None,
            };
            let before = before.map(Box::new);
            let _ = tx
                .send(Event::Asked {
                    job: id,
                    before,
                    via_sys,
                })
                .await;
        });
        if let Some(job) = self.job.as_mut() {
            job.phase = Phase::Reloading {
                settings: Box::new(settings),
                next: Box::new(next),
                keys,
                targets: Box::new(targets),
            };
        }
        None
    }

    /// The `$SYS` request's verdict, or SIGHUP (sent here, where the
    /// broker process is known to be the one running) and a wait for the
    /// outcome it logs; confirmed against `/varz` in a task.
    fn on_asked(
        &mut self,
        id: u64,
        before: Option<Box<Varz>>,
        via_sys: Option<Result<(), AuthError>>,
    ) {
        if !self.current_job(id) {
            return;
        }
        let Some(Job {
            phase: Phase::Reloading { next, targets, .. },
            ..
        }) = &self.job
        else {
            return;
        };
        let (want_digest, targets) = (next.check.digest.clone(), targets.as_ref().clone());
        let (known, outcomes) = match via_sys {
            Some(Ok(())) => {
                tracing::debug!("the broker confirmed the reload through $SYS");
                (Some(ReloadOutcome::Reloaded), None)
            }
            Some(Err(why)) => {
                tracing::warn!(reason = %why, "the broker refused the reload (answered through $SYS)");
                // The broker's verdict is its words: the same as it logs
                // after SIGHUP, read by `needs_restart`.
                (Some(ReloadOutcome::Failed(why.to_string())), None)
            }
            None => {
                let outcomes = self.output.reloads();
                let sent = match &self.running {
                    Some(run) => run.process.signal(Signal::SIGHUP),
                    None => Err(std::io::Error::other("the broker exited")),
                };
                if let Err(e) = sent {
                    self.write_back_current();
                    let res = self.refused(ChangeError::Signal(e));
                    self.end_job(res);
                    return;
                }
                (None, Some(outcomes))
            }
        };
        let tx = self.events.clone();
        self.tasks.spawn(async move {
            let outcome = match (known, outcomes) {
                (Some(o), _) => Some(o),
                (None, Some(rx)) => wait_outcome(rx).await,
                (None, None) => None,
            };
            let confirmed = match outcome {
                Some(ReloadOutcome::Reloaded) => {
                    // Confirm from the broker's own view: the digest `-t`
                    // printed (2.11+), else a new config_load_time.
                    let after = targets.monitor().varz().await.ok();
                    match (
                        want_digest,
                        after.as_ref().and_then(|v| v.config_digest.clone()),
                    ) {
                        (Some(want), Some(got)) => want == got,
                        _ => {
                            after.as_ref().and_then(|v| v.config_load_time.clone())
                                != before.as_ref().and_then(|v| v.config_load_time.clone())
                        }
                    }
                }
                _ => false,
            };
            let _ = tx
                .send(Event::Confirmed {
                    job: id,
                    outcome,
                    confirmed,
                })
                .await;
        });
    }

    /// The reload's outcome: the new configuration is current, or a
    /// restart applies it, or the old file goes back.
    fn on_confirmed(&mut self, id: u64, outcome: Option<ReloadOutcome>, confirmed: bool) {
        if !self.current_job(id) {
            return;
        }
        let phase = match self.job.as_mut() {
            Some(j) => std::mem::replace(&mut j.phase, Phase::Checking),
            None => return,
        };
        let Phase::Reloading {
            settings,
            next,
            keys,
            ..
        } = phase
        else {
            return;
        };
        let res = match outcome {
            Some(ReloadOutcome::Reloaded) => {
                if !confirmed {
                    tracing::warn!(
                        "the broker logged a reload, but /varz does not show the new configuration yet"
                    );
                }
                let msg = format!("reloaded ({})", keys.join(", "));
                tracing::info!(message_id = ids::RELOADED, changes = %keys.join(", "), "configuration reloaded");
                self.adopt_settings(*settings);
                self.set_current(*next, true);
                self.health.reloads_ok += 1;
                self.health.last_reload = Some(msg.clone());
                self.publish();
                Reloaded::Done(Ok(msg))
            }
            Some(ReloadOutcome::Failed(why)) if needs_restart(&why) => self.restart_for(
                *settings,
                *next,
                vec![format!("the broker cannot reload this change: {why}")],
            ),
            Some(ReloadOutcome::Failed(why)) => {
                self.write_back_current();
                self.refused(ChangeError::BrokerRefused(why))
            }
            None => {
                self.write_back_current();
                self.refused(ChangeError::NoOutcome)
            }
        };
        self.end_job(res);
    }

    /// The running configuration's file gets its text back.
    fn write_back_current(&self) {
        let _ = crate::broker_user::write_readable(
            &self.current.path,
            self.current.rendered.text.as_bytes(),
            PLAIN,
        );
    }

    /// The change in flight ended with `res`: tell whoever asked, then
    /// start what was queued meanwhile.
    fn end_job(&mut self, res: Reloaded) {
        if let Some(job) = self.job.take() {
            let res = self.with_changes(&job.origin, res, &job.changes);
            self.finish_change(job.origin, res);
        }
        if let Some(origin) = self.queued.take_next() {
            self.begin_change(origin);
        }
    }

    fn finish_change(&mut self, origin: Origin, res: Reloaded) {
        match origin {
            Origin::Discovery => match res {
                Reloaded::Done(Ok(msg)) => tracing::info!("discovery: {msg}"),
                Reloaded::Done(Err(e)) => tracing::warn!("discovery: {e}"),
                Reloaded::Pending => {}
            },
            Origin::Request(replies) => {
                let line = self.status_line();
                self.notifier.ready(&line);
                for reply in replies {
                    match &res {
                        Reloaded::Done(r) => {
                            let _ = reply.send(answer_of(r));
                        }
                        Reloaded::Pending => {
                            if let Some(old) = self.pending_reply.replace(reply) {
                                let _ = old.send(Err("superseded by a newer reload".into()));
                            }
                        }
                    }
                }
            }
            Origin::Certificate { serial, tls } => {
                match res {
                    Reloaded::Done(Ok(msg)) => self.confirm_serial(*tls, serial, msg),
                    Reloaded::Done(Err(e)) => {
                        tracing::error!(%serial, "certificate renewal not loaded: {e}")
                    }
                    Reloaded::Pending => {
                        tracing::warn!(%serial, "certificate renewal goes through a restart (see restart pending)")
                    }
                }
                let line = self.status_line();
                self.notifier.ready(&line);
                self.publish();
            }
        }
    }

    /// A stop: the change in flight and those queued are given up (their
    /// late results are ignored) and their askers told.
    pub(super) fn abandon_changes(&mut self, why: &str) {
        let queued = std::mem::take(&mut self.queued);
        for reply in queued.request.into_iter().flatten() {
            let _ = reply.send(Err(why.into()));
        }
        let Some(job) = self.job.take() else {
            return;
        };
        tracing::info!(job = job.id, "configuration change given up: {why}");
        if let Phase::Reloading { settings, next, .. } = job.phase {
            // The new file is installed: whatever runs next starts from
            // it, so it is the configuration in force.
            self.set_built(*settings);
            self.set_current(*next, false);
        }
        if let Origin::Request(replies) = job.origin {
            for reply in replies {
                let _ = reply.send(Err(why.into()));
            }
        }
    }

    /// The broker exited while it was asked to load a new file: that
    /// file is installed, so the next broker starts from it.
    pub(super) fn broker_exited_during_change(&mut self) {
        let reloading = matches!(
            self.job,
            Some(Job {
                phase: Phase::Reloading { .. },
                ..
            })
        );
        if !reloading {
            return;
        }
        let Some(job) = self.job.take() else {
            return;
        };
        if let Phase::Reloading { settings, next, .. } = job.phase {
            self.set_built(*settings);
            self.set_current(*next, false);
        }
        let why = ChangeError::BrokerExited;
        tracing::warn!("{why}");
        self.finish_change(job.origin, Reloaded::Done(Err(why)));
        if let Some(origin) = self.queued.take_next() {
            self.begin_change(origin);
        }
    }

    /// The running settings become `settings`; what natsmeshd applies
    /// itself follows (the restart policy).
    pub(super) fn adopt_settings(&mut self, settings: Built) {
        let old = self.set_built(settings);
        if old.restart != self.settings.restart {
            self.retune(false);
        }
    }

    /// A reread change that went through says, after the broker's part,
    /// what came of natsmeshd's own settings, and `status` keeps what
    /// waits for a restart of natsmeshd.
    fn with_changes(
        &mut self,
        origin: &Origin,
        res: Reloaded,
        changes: &[config::reload::Change],
    ) -> Reloaded {
        if matches!(origin, Origin::Discovery) || matches!(res, Reloaded::Done(Err(_))) {
            return res;
        }
        let restart = config::reload::restart_keys(changes);
        if self.health.natsmeshd_restart_pending != restart {
            self.health.natsmeshd_restart_pending = restart;
            self.publish();
        }
        let notes = config::reload::describe(changes);
        match res {
            Reloaded::Done(Ok(msg)) if !notes.is_empty() => {
                let msg = if msg == "no change" {
                    format!("no change to the broker; {notes}")
                } else {
                    format!("{msg}; {notes}")
                };
                self.health.last_reload = Some(msg.clone());
                self.publish();
                Reloaded::Done(Ok(msg))
            }
            Reloaded::Pending => {
                self.pending_notes = notes;
                Reloaded::Pending
            }
            other => other,
        }
    }

    fn refused(&mut self, why: ChangeError) -> Reloaded {
        tracing::error!(message_id = ids::RELOAD_FAILED, "{why}");
        self.health.reloads_failed += 1;
        self.health.last_reload = Some(last_reload_line(&why));
        self.publish();
        Reloaded::Done(Err(why))
    }

    /// A change only a restart applies: install it, mark it pending and
    /// plan the restart (through the region's lease when coordinated).
    pub(super) fn restart_for(
        &mut self,
        settings: Built,
        next: Prepared,
        reasons: Vec<String>,
    ) -> Reloaded {
        let path = self.current.path.clone();
        if next.path != path
            && let Err(e) = std::fs::rename(&next.path, &path)
        {
            return self.refused(ChangeError::Install(e));
        }
        tracing::warn!(message_id = ids::RESTART, reasons = %reasons.join("; "), "restart pending: the change needs a broker restart");
        self.health.restart_pending = reasons.clone();
        self.adopt_settings(settings);
        self.retune(true);
        self.set_current(Prepared { path, ..next }, false);
        if self.running.is_none() {
            return Reloaded::Done(Err(ChangeError::NoBroker));
        }
        self.plan_restart(format!("configuration change: {}", reasons.join("; ")));
        Reloaded::Pending
    }

    /// Renews (mode `issue`) or re-reads (mode `files`) the node
    /// certificate on the blocking pool; [`Self::on_certificate`] goes on.
    pub(super) fn renew_certificate(&mut self) {
        let Some(tls) = self.settings.tls.clone() else {
            self.cert_due = None;
            return;
        };
        // Due again when the result says.
        self.cert_due = None;
        let tx = self.events.clone();
        self.tasks.spawn(async move {
            let res = tokio::task::spawn_blocking(move || {
                crate::tls::ensure(&tls, std::time::SystemTime::now(), false)
                    .map(|(current, _)| current)
                    .map_err(RenewError::Tls)
            })
            .await
            .unwrap_or_else(|e| Err(RenewError::Task(e)));
            let _ = tx.send(Event::Certificate(res)).await;
        });
    }

    /// When the certificate changed, has the broker load it: a reload,
    /// confirmed by asking the broker which certificate it serves; or a
    /// restart where the broker would keep an old one (gateways before
    /// 2.11.4).
    fn on_certificate(&mut self, res: Result<crate::tls::Current, RenewError>) {
        let Some(tls) = self.settings.tls.clone() else {
            return;
        };
        match res {
            Err(e) => {
                // Keep the certificate in use; try again soon.
                let until = self.cert.as_ref().map(|c| c.info.not_after);
                tracing::error!(error = %e, valid_until = ?until.map(humantime::format_rfc3339_seconds), "certificate renewal failed; the current certificate stays");
                self.health.certificate_failing = Some(e.to_string());
                self.cert_due = Some(Instant::now() + Duration::from_secs(30));
                self.publish();
            }
            Ok(current) => {
                for w in &current.warnings {
                    tracing::warn!("{w}");
                }
                let old = self.cert.as_ref().map(|c| c.info.serial.clone());
                let changed = old.as_deref() != Some(current.info.serial.as_str());
                self.cert_due = Some(due(current.renew_at));
                self.show_cert(&current);
                let serial = current.info.serial.clone();
                self.cert = Some(current);
                self.publish();
                if changed {
                    tracing::info!(%serial, "new node certificate; loading it into the broker");
                    let tls = Box::new(tls);
                    if self.job.is_some() {
                        self.queued.certificate = Some((serial, tls));
                    } else {
                        self.begin_change(Origin::Certificate { serial, tls });
                    }
                }
            }
        }
    }

    /// Asks whether a TLS listener of the broker now serves `serial`, in
    /// a task that logs the answer.
    fn confirm_serial(&self, tls: crate::tls::TlsSettings, serial: String, msg: String) {
        let s = &self.settings.server;
        let (listener, info_first) = if s.tls.is_some() {
            (Some(s.listen), true)
        } else {
            (
                s.cluster
                    .as_ref()
                    .map(|c| c.listen)
                    .or(s.gateway.as_ref().map(|g| g.listen)),
                false,
            )
        };
        let addr = listener.as_ref().and_then(local_addr);
        let timeout = self.settings.health.timeout * 4;
        self.tasks.spawn(async move {
            let confirmed = match addr {
                None => false,
                Some(addr) => match crate::tls::probe::served_serial(
                    &tls,
                    addr,
                    &addr.ip().to_string(),
                    info_first,
                    timeout,
                )
                .await
                {
                    Ok(got) if got == serial => true,
                    Ok(got) => {
                        tracing::warn!(expected = %serial, served = %got, "the broker still serves the previous certificate");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot ask the broker which certificate it serves");
                        false
                    }
                },
            };
            tracing::info!(message_id = ids::RELOADED, %serial, confirmed, "certificate renewal: {msg}");
        });
    }

    /// Asks every server for its accounts (`$SYS.REQ.SERVER.PING.ACCOUNTZ`)
    /// in a task; one at a time.
    pub(super) fn check_accounts(&mut self) {
        if !matches!(self.core.state(), State::Starting | State::Syncing) {
            return;
        }
        let Some(pid) = self.running.as_ref().map(|r| r.pid) else {
            return;
        };
        if self.accounts_asked == Some(pid) {
            return;
        }
        self.accounts_asked = Some(pid);
        let settings = self.settings.clone();
        let tx = self.events.clone();
        self.tasks.spawn(async move {
            let answers = match crate::auth::system_client(&settings).await {
                Ok(client) => crate::auth::accounts_of_all(&client).await,
                Err(e) => Err(e),
            };
            let _ = tx.send(Event::Accounts { pid, answers }).await;
        });
    }

    /// Compares this node's accounts with every server's answer. The same:
    /// the node serves. Not the same: it stays out of service, saying what
    /// differs, until they agree (a reload on either side).
    fn on_accounts(
        &mut self,
        pid: u32,
        answers: Result<Vec<(String, BTreeSet<String>)>, AuthError>,
    ) {
        if self.accounts_asked == Some(pid) {
            self.accounts_asked = None;
        }
        if self.running.as_ref().map(|r| r.pid) != Some(pid)
            || !matches!(self.core.state(), State::Starting | State::Syncing)
        {
            return;
        }
        let answers = match answers {
            Ok(a) => a,
            Err(e) => {
                // Cannot ask: do not hold service hostage to it.
                tracing::warn!(error = %e, "cannot compare accounts with the peers; serving anyway");
                self.step(super::lifecycle::Event::AccountsAgreed { pid });
                return;
            }
        };
        let name = self.settings.server.server_name.clone();
        let Some(mine) = answers
            .iter()
            .find(|(server, _)| *server == name)
            .map(|(_, a)| a.clone())
        else {
            self.step(super::lifecycle::Event::AccountsAgreed { pid });
            return;
        };
        let mut differences = Vec::new();
        for (server, theirs) in &answers {
            if *server == name || *theirs == mine {
                continue;
            }
            let missing: Vec<&String> = theirs.difference(&mine).collect();
            let extra: Vec<&String> = mine.difference(theirs).collect();
            differences.push(format!(
                "{server} (this node lacks {missing:?}, has extra {extra:?})"
            ));
        }
        if differences.is_empty() {
            self.step(super::lifecycle::Event::AccountsAgreed { pid });
        } else {
            let why = format!(
                "accounts differ from the peers': {}",
                differences.join("; ")
            );
            tracing::error!("{why}; staying out of service until they agree");
            self.step(super::lifecycle::Event::AccountsDiffer { pid, why });
        }
    }

    /// One event from a task.
    pub(super) fn on_event(&mut self, event: Event) {
        match event {
            Event::Checked { job, checked } => self.on_checked(job, *checked),
            Event::Asked {
                job,
                before,
                via_sys,
            } => self.on_asked(job, before, via_sys),
            Event::Confirmed {
                job,
                outcome,
                confirmed,
            } => self.on_confirmed(job, outcome, confirmed),
            Event::Certificate(res) => self.on_certificate(res),
            Event::Accounts { pid, answers } => self.on_accounts(pid, answers),
            Event::NewBroker { path, next } => self.on_new_broker(path, next),
            Event::ReexecChecked { exe, result } => self.on_reexec_checked(exe, result),
            Event::DecommissionChecked { reply, result } => {
                self.on_decommission_checked(reply, result)
            }
        }
    }
}

/// A change's outcome as a command's answer: the refusal's words go back
/// to whoever asked (the control socket's reply).
fn answer_of(res: &Result<String, ChangeError>) -> crate::command::Answer {
    match res {
        Ok(msg) => Ok(msg.clone()),
        Err(why) => Err(crate::command::Refused::because(why)),
    }
}

/// What `status` shows as the last reload for a refusal: its first line
/// (the config problems that follow it are in the log and the answer).
fn last_reload_line(why: &ChangeError) -> String {
    why.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The outcome the broker logs after SIGHUP, within [`RELOAD_CONFIRM`].
async fn wait_outcome(mut outcomes: broadcast::Receiver<ReloadOutcome>) -> Option<ReloadOutcome> {
    tokio::time::timeout(RELOAD_CONFIRM, async {
        loop {
            match outcomes.recv().await {
                Ok(o) => return Some(o),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    #[test]
    fn a_queued_request_covers_a_queued_discovery_change() {
        let mut q = Queued {
            request: Some(Vec::new()),
            discovery: true,
            ..Queued::default()
        };
        assert!(matches!(q.take_next(), Some(Origin::Request(_))));
        assert!(q.take_next().is_none());
        let mut q = Queued {
            discovery: true,
            ..Queued::default()
        };
        assert!(matches!(q.take_next(), Some(Origin::Discovery)));
        assert!(q.take_next().is_none());
    }

    /// The refusals' words are what operators read and tests match: the
    /// typed kinds say exactly what the strings said before them.
    #[test]
    fn change_refusals_keep_their_words() {
        let problems = config::Problems(vec![
            config::Problem {
                location: None,
                key: Some("broker.listen".into()),
                message: "not an address".into(),
            },
            config::Problem {
                location: None,
                key: Some("broker.cluster.routes".into()),
                message: "empty".into(),
            },
        ]);
        let settings = ChangeError::Settings(problems.clone());
        assert_eq!(
            settings.to_string(),
            format!("configuration refused, the previous one keeps serving:\n{problems}")
        );
        // `status` shows the first line; the problems follow in the log.
        assert_eq!(
            last_reload_line(&settings),
            "configuration refused, the previous one keeps serving:"
        );
        let tls = TlsError::Read {
            path: "/etc/natsmesh/ca.pem".into(),
            why: "gone".into(),
        };
        let cases = [
            (
                ChangeError::Tls(tls.clone()),
                "TLS: cannot read /etc/natsmesh/ca.pem: gone; the previous configuration keeps serving".to_owned(),
            ),
            (
                ChangeError::SystemUser(AuthError::NoSystemUser),
                "system user: no system user configured; the previous configuration keeps serving".to_owned(),
            ),
            (
                ChangeError::Prepare(Box::new(PrepareError::Write {
                    path: "/var/lib/natsmesh/nats-server.next.conf".into(),
                    source: std::io::Error::other("denied"),
                })),
                "configuration refused, the previous one keeps serving: cannot write /var/lib/natsmesh/nats-server.next.conf: denied".to_owned(),
            ),
            (
                ChangeError::NotWhile(State::Draining),
                "cannot reload while draining".to_owned(),
            ),
            (ChangeError::NoBroker, "no broker is running".to_owned()),
            (
                ChangeError::Install(std::io::Error::other("denied")),
                "cannot install the new configuration: denied".to_owned(),
            ),
            (
                ChangeError::Signal(std::io::Error::other("no such process")),
                "cannot signal the broker: no such process".to_owned(),
            ),
            (
                ChangeError::BrokerRefused("config reload not supported for jetstream".into()),
                "nats-server refused the new configuration, the previous one keeps serving: config reload not supported for jetstream".to_owned(),
            ),
            (
                ChangeError::NoOutcome,
                format!(
                    "nats-server logged no reload outcome within {RELOAD_CONFIRM:?}; the previous configuration stays"
                ),
            ),
            (
                ChangeError::BrokerExited,
                "the broker exited during the reload; it starts again with the new configuration".to_owned(),
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
            assert_eq!(last_reload_line(&err), want, "one line");
        }
        // A failed renewal shows the TLS error itself in `status`.
        assert_eq!(RenewError::Tls(tls.clone()).to_string(), tls.to_string());
    }

    /// Whoever asked for the change gets the refusal's words, or what
    /// was done.
    #[test]
    fn a_change_answers_its_asker_in_the_same_words() {
        use crate::command::Refused;
        assert_eq!(
            answer_of(&Err(ChangeError::NotWhile(State::Stopped))),
            Err(Refused::Because("cannot reload while stopped".into()))
        );
        assert_eq!(
            answer_of(&Ok("reloaded (max_payload)".into())),
            Ok("reloaded (max_payload)".into())
        );
    }

    #[test]
    fn coalesced_requests_share_one_reload() {
        let mut q = Queued::default();
        for _ in 0..3 {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            q.request.get_or_insert_with(Vec::new).push(tx);
        }
        match q.take_next() {
            Some(Origin::Request(replies)) => assert_eq!(replies.len(), 3),
            _ => panic!("no request"),
        }
        assert!(q.take_next().is_none());
    }
}
