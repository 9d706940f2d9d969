//! Into and out of maintenance through the supervisor's commands: the
//! marker, the drain that stays down, waiting for the broker to be down.
//! `natsmeshd maintenance` (the control socket) and coordinated reboots
//! ([`super::reboot`]) both go this way, once they hold the lease.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::FleetOps;
use super::maintenance::MaintenanceError;
use crate::command::{Command, Refused};
use crate::health::{Health, State};

/// Why maintenance could not begin or end.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// The marker could not be kept or removed.
    #[error(transparent)]
    Marker(#[from] MaintenanceError),
    /// The supervisor refused, or did not answer.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// In maintenance, but the broker did not stop in time.
    #[error(
        "in maintenance, but the broker is not down yet (state {state}); `natsmeshd status` follows it"
    )]
    NotDown {
        /// The supervisor's state.
        state: State,
    },
}

/// How long `maintenance start` waits for the broker to be down, and
/// `maintenance stop` for JetStream to be current, before answering.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(600);

/// Into maintenance with the lease `taken`: the marker (`reboot`: taken
/// by a coordinated reboot), then out of service and down; answers once
/// the broker is down ("safe to reboot"). Any failure gives the lease
/// back.
pub async fn enter(
    commands: &mpsc::Sender<Command>,
    mut status: watch::Receiver<Health>,
    access: &FleetOps,
    reason: String,
    taken: crate::fleet::maintenance::Taken,
    reboot: bool,
) -> Result<String, MaintainError> {
    use crate::fleet::maintenance::{self, Marker, Taken};
    let s = &access.settings;
    let now = crate::unix_ms(std::time::SystemTime::now());
    let (until, note) = match taken {
        Taken::Until(t) => (t, String::new()),
        Taken::Uncoordinated(why) => (
            now.saturating_add(u64::try_from(s.maintenance.max_down.as_millis()).unwrap_or(0)),
            format!(" ({why})"),
        ),
    };
    let marker = Marker {
        why: reason.clone(),
        boot_id: maintenance::boot_id(),
        since_unix_ms: now,
        expires_unix_ms: until,
        reboot,
    };
    let undo = |e: MaintainError| async move {
        let _ = maintenance::forget(&access.settings.state_dir);
        if let Err(r) = maintenance::release(&access.settings).await {
            tracing::warn!(error = %r, "cannot give the maintenance lease back; it lapses by itself");
        }
        Err(e)
    };
    if let Err(e) = maintenance::keep(&s.state_dir, &marker) {
        return undo(e.into()).await;
    }
    let (tx, rx) = oneshot::channel();
    let why = if reason.is_empty() {
        "maintenance".to_owned()
    } else {
        reason.clone()
    };
    if commands
        .send(Command::Maintenance {
            why: Some(why),
            reply: Some(tx),
        })
        .await
        .is_err()
    {
        return undo(Refused::Stopping.into()).await;
    }
    match rx.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return undo(e.into()).await,
        Err(_) => return undo(Refused::NoAnswer.into()).await,
    }
    tracing::info!(reason = %reason, until_unix_ms = until, "maintenance: leaving service");
    let down = matches!(
        tokio::time::timeout(ANSWER_WITHIN, status.wait_for(Health::down),).await,
        Ok(Ok(_))
    );
    let until_text =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(until));
    let state: State = status.borrow().state;
    match down {
        true => {
            tracing::info!("maintenance: the broker is down; safe to reboot");
            Ok(format!(
                "{}: safe to reboot (the maintenance lease holds until {until_text}){note}; `natsmeshd maintenance stop` or the reboot brings it back",
                s.server.server_name
            ))
        }
        false => Err(MaintainError::NotDown { state }),
    }
}

/// Out of maintenance: the marker goes and the supervisor is told to
/// serve again; its answer. The lease is the caller's to give back.
pub async fn end(
    commands: &mpsc::Sender<Command>,
    access: &FleetOps,
) -> Result<String, MaintainError> {
    crate::fleet::maintenance::forget(&access.settings.state_dir)?;
    let (tx, rx) = oneshot::channel();
    if commands
        .send(Command::Maintenance {
            why: None,
            reply: Some(tx),
        })
        .await
        .is_err()
    {
        return Err(Refused::Stopping.into());
    }
    Ok(rx.await.map_err(|_| Refused::NoAnswer)??)
}

/// Out of maintenance without waiting: the settle task gives the lease
/// back once the node serves.
pub async fn leave(
    commands: &mpsc::Sender<Command>,
    access: &FleetOps,
) -> Result<String, MaintainError> {
    let said = end(commands, access).await?;
    access.settle.notify_one();
    Ok(said)
}
