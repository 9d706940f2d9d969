//! `[fleet]` as validated: the data the `fleet` feature reads, and the
//! names of natsmeshd's own account and user that validation reserves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::schema::LeaseScope;
use crate::config::validate::SystemUser;

/// The account natsmeshd keeps (accounts mode) for the lease bucket: the
/// system account cannot hold JetStream.
pub const FLEET_ACCOUNT: &str = "NATSMESH";

/// natsmeshd's user in it (the system user's password).
pub const FLEET_USER: &str = "natsmesh-fleet";

/// Whether planned restarts are coordinated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coordination {
    /// Through the region's lease.
    Lease(FleetSettings),
    /// Not, and why.
    Off(String),
}

/// How the lease is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// Expiry of an unrenewed lease.
    pub ttl: Duration,
    /// The user in the lease bucket's account.
    pub login: SystemUser,
    /// Its name (password logins).
    pub user: String,
    /// One node per region or per supercluster.
    pub scope: LeaseScope,
}

/// The file that marks a decommissioned node's state directory.
pub fn marker(state_dir: &Path) -> PathBuf {
    state_dir.join("decommissioned")
}

/// `[maintenance]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceSettings {
    /// How long a maintenance lease holds without its node coming back.
    pub max_down: std::time::Duration,
    /// Coordinated reboots (`reboot = "coordinated"`), if on.
    pub reboot: Option<super::reboot::RebootSettings>,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self {
            max_down: std::time::Duration::from_secs(15 * 60),
            reboot: None,
        }
    }
}
