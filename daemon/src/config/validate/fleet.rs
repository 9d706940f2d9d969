//! `[fleet]`: whether planned restarts take the region's lease, and how
//! natsmeshd reaches the bucket that holds it.

use std::time::Duration;

use super::{Checker, Environment, SystemUser};
use crate::config::schema::{AuthMode, RawConfig};
use crate::config::settings::fleet::{Coordination, FLEET_ACCOUNT, FLEET_USER, FleetSettings};
use natsmesh_broker::conf::Name;
use natsmesh_broker::model::{Account, AccountJetStream, ServerConfig};

/// The lease must outlive a restart: lame duck plus a start.
const RESTART_ALLOWANCE: Duration = Duration::from_secs(10);

/// `[maintenance]`: the lease must outlast the drain before the reboot.
pub(super) fn apply_maintenance(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    server: &ServerConfig,
) -> crate::config::settings::fleet::MaintenanceSettings {
    let max_down = raw.maintenance.max_down.0;
    let least = server.lame_duck_duration + RESTART_ALLOWANCE;
    if max_down < least {
        c.problem(
            "maintenance.max_down",
            format!(
                "{max_down:?} could lapse before the node is even down: at least broker.lame_duck_duration + {RESTART_ALLOWANCE:?} ({least:?})"
            ),
        );
    }
    crate::config::settings::fleet::MaintenanceSettings {
        max_down,
        reboot: apply_reboot(c, &raw.maintenance),
    }
}

/// `[maintenance] reboot`, `window`, `reboot_command`, `reboot_required`.
fn apply_reboot(
    c: &mut Checker<'_>,
    raw: &crate::config::schema::RawMaintenance,
) -> Option<crate::config::settings::reboot::RebootSettings> {
    use crate::config::schema::RebootMode;
    use crate::config::settings::reboot::Window;
    let window = match raw.window.as_deref().map(str::parse::<Window>) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            c.problem("maintenance.window", e.to_string());
            None
        }
    };
    if raw
        .reboot_command
        .first()
        .is_none_or(|p| p.trim().is_empty())
    {
        c.problem(
            "maintenance.reboot_command",
            "empty: the program and its arguments, as a list (e.g. [\"systemctl\", \"reboot\"])",
        );
    }
    if !raw.reboot_required.is_absolute() {
        c.problem(
            "maintenance.reboot_required",
            format!(
                "{}: an absolute path (unattended-upgrades writes /run/reboot-required)",
                raw.reboot_required.display()
            ),
        );
    }
    (raw.reboot == RebootMode::Coordinated).then(|| {
        crate::config::settings::reboot::RebootSettings {
            window,
            command: raw.reboot_command.clone(),
            required: raw.reboot_required.clone(),
        }
    })
}

/// The coordination `[fleet]` asks for and the set-up allows; in accounts
/// mode this renders natsmeshd's own account for the lease bucket.
pub(super) fn apply_fleet(
    c: &mut Checker<'_>,
    raw: &RawConfig,
    env: &Environment,
    system_user: Option<&SystemUser>,
    server: &mut ServerConfig,
) -> Coordination {
    let f = &raw.fleet;
    // The account is there whether or not this node coordinates, so every
    // node of a region holds the same accounts. It is there without
    // JetStream too: its user is then the only one outside the system
    // account, and nats-server, finding every configured user in the
    // system account, would otherwise admit clients without credentials
    // into `$G` (an implicit no-auth user).
    let own_account =
        raw.auth.mode == AuthMode::Accounts && system_user.is_some() && add_account(server);
    if !f.coordinate {
        return Coordination::Off("fleet.coordinate is false".into());
    }
    let ttl = f.lease_ttl.0;
    let least = server.lame_duck_duration + RESTART_ALLOWANCE;
    if ttl < least {
        c.problem(
            "fleet.lease_ttl",
            format!(
                "{ttl:?} could expire while this node is still down: at least broker.lame_duck_duration + {RESTART_ALLOWANCE:?} ({least:?})"
            ),
        );
    }
    if server.jetstream.is_none() {
        if f.lease_creds.is_some() {
            c.problem(
                "fleet.lease_creds",
                "the lease lives in JetStream, but broker.jetstream.enabled is false",
            );
        }
        return Coordination::Off("JetStream is off, and the lease lives in JetStream".into());
    }
    let (login, user) = match (raw.auth.mode, system_user) {
        (AuthMode::None, _) | (_, None) => {
            return Coordination::Off("no system user (auth.mode = \"none\")".into());
        }
        (AuthMode::Accounts, Some(login)) => {
            if f.lease_creds.is_some() {
                c.problem(
                    "fleet.lease_creds",
                    "only for auth.mode = \"operator\"; in accounts mode natsmeshd keeps its own account",
                );
            }
            if !own_account {
                return Coordination::Off("no account for the lease bucket".into());
            }
            (login.clone(), FLEET_USER.to_owned())
        }
        (AuthMode::Operator, Some(_)) => match &f.lease_creds {
            Some(p) => {
                let p = c.file("fleet.lease_creds", p, env, true);
                c.secret("fleet.lease_creds", &p, env);
                (SystemUser::Creds(p), String::new())
            }
            None => {
                return Coordination::Off(
                    "auth.mode = \"operator\" without fleet.lease_creds (a user in a JetStream account)".into(),
                );
            }
        },
    };
    Coordination::Lease(FleetSettings {
        ttl,
        login,
        user,
        scope: f.lease_scope,
    })
}

/// natsmeshd's own account, where the lease buckets and the fleet pause
/// bucket live (small limits: each holds a few keys; one lease bucket per
/// region plus the pause bucket, so streams are counted generously); its user is added with the system user's
/// password hash when the configuration is prepared.
fn add_account(server: &mut ServerConfig) -> bool {
    let Some(name) = Name::new(FLEET_ACCOUNT) else {
        return false;
    };
    let jetstream = server.jetstream.is_some().then_some(AccountJetStream {
        max_memory: Some(1 << 20),
        max_file: Some(16 << 20),
        max_streams: Some(32),
        max_consumers: Some(16),
    });
    server.accounts.push(Account {
        name,
        jetstream,
        users: Vec::new(),
        exports: Vec::new(),
        imports: Vec::new(),
    });
    true
}
