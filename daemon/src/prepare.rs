//! From settings to a broker config that is known to load: the one pure
//! function that builds the broker's effective settings from its inputs
//! ([`effective`]), then detect the broker version, render for it,
//! validate, and run `nats-server -t`.

use std::path::{Path, PathBuf};

use natsmesh_broker::Version;
use natsmesh_broker::check::{CheckError, CheckReport, check_file};
use natsmesh_broker::classify::Snapshot;
use natsmesh_broker::include::{self, IncludeError};
use natsmesh_broker::model::{RenderError, Rendered, render};
use natsmesh_broker::version::{VersionError, detect};

use crate::auth::SystemAccount;
use crate::config::Settings;
use crate::discovery::Found;
use crate::tls::CertSet;

/// The settings the broker runs with, built from its inputs: the validated
/// `settings` (never changed: a new value is returned), what DNS found (the
/// routes, the leafnode hubs, and the gateways when the regions come from
/// DNS), the node certificate set in use (the broker loads its files) and
/// natsmeshd's logins (the system account). Pure — no I/O, no clock — so
/// every place that builds a broker configuration (start, reload, a DNS
/// change, a certificate renewal, a new broker binary, `check` and
/// `render`) builds the same one from the same inputs.
pub fn effective(
    settings: &Settings,
    found: Option<&Found>,
    certs: Option<&CertSet>,
    system: Option<&SystemAccount>,
) -> Settings {
    let mut s = settings.clone();
    if let Some(system) = system {
        system.add_to(&mut s.server);
    }
    if let Some(found) = found {
        with_peers(&mut s, found);
    }
    if let Some(set) = certs {
        with_cert_files(&mut s, set);
    }
    s
}

/// What DNS found: the routes, each leafnode hub's addresses, and the
/// gateways when the regions came from DNS (a pure function of the names).
fn with_peers(settings: &mut Settings, found: &Found) {
    if let Some(c) = settings.server.cluster.as_mut() {
        c.routes = found.routes.clone();
    }
    let leaf_remotes = settings
        .discovery
        .as_ref()
        .map(|d| d.settings.leaf_remotes.clone())
        .unwrap_or_default();
    if let Some(l) = settings.server.leafnodes.as_mut() {
        for (index, urls) in leaf_remotes.iter().zip(&found.leaves) {
            if let Some(remote) = l.remotes.get_mut(*index) {
                remote.urls = urls.clone();
            }
        }
    }
    let domain = settings
        .discovery
        .as_ref()
        .map(|d| d.settings.domain.clone());
    // Behind natsmeshd's gate the broker's own listener is on loopback,
    // maybe on another port: every region is dialled at the gate's.
    let gate_port = settings.gate.as_ref().map(|g| g.listen.port());
    if let (Some(g), Some(regions), Some(domain)) =
        (settings.server.gateway.as_mut(), &found.regions, domain)
        && !regions.is_empty()
    {
        let port = match (gate_port, g.listen.port) {
            (Some(p), _) => p,
            (None, natsmesh_broker::model::Port::Fixed(p)) => p,
            (None, natsmesh_broker::model::Port::Random) => 0,
        };
        g.gateways = regions
            .iter()
            .filter_map(|r| crate::config::validate::region_gateway(r, &domain, port))
            .collect();
    }
}

/// The broker loads the node certificate from the set's files: every TLS
/// block that names the configured node certificate and key names the
/// set's instead (the same files in the daemon; a scratch directory's
/// when a configuration is only checked).
fn with_cert_files(settings: &mut Settings, set: &CertSet) {
    let Some(tls) = settings.tls.as_mut() else {
        // TLS off: no block loads a node certificate.
        return;
    };
    let (cert, key) = (tls.cert_file.clone(), tls.key_file.clone());
    if cert == set.cert_file && key == set.key_file {
        return;
    }
    tls.cert_file = set.cert_file.clone();
    tls.key_file = set.key_file.clone();
    let point = |t: &mut Option<natsmesh_broker::model::Tls>| {
        if let Some(t) = t
            && t.cert_file == cert
            && t.key_file == key
        {
            t.cert_file = set.cert_file.clone();
            t.key_file = set.key_file.clone();
        }
    };
    let srv = &mut settings.server;
    point(&mut srv.tls);
    if let Some(c) = srv.cluster.as_mut() {
        point(&mut c.tls);
    }
    if let Some(g) = srv.gateway.as_mut() {
        point(&mut g.tls);
    }
    if let Some(l) = srv.leafnodes.as_mut() {
        point(&mut l.tls);
        for r in &mut l.remotes {
            point(&mut r.tls);
        }
    }
    if let Some(m) = srv.mqtt.as_mut() {
        point(&mut m.tls);
    }
    if let Some(w) = srv.websocket.as_mut() {
        point(&mut w.tls);
    }
}

/// A rendered config that passed `nats-server -t`.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The broker version it was rendered for.
    pub version: Version,
    /// The rendered config.
    pub rendered: Rendered,
    /// What `-t` reported.
    pub check: CheckReport,
    /// The config with its includes' content, as of rendering: what a later
    /// change is compared against (the include files may change on disk
    /// before that comparison).
    pub snapshot: Snapshot,
    /// Where it was written.
    pub path: PathBuf,
}

/// Why a config could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The broker binary did not tell its version.
    #[error("broker.binary: {0}")]
    Version(#[from] VersionError),
    /// A setting this broker version does not have.
    #[error("{key}: {source}")]
    Render {
        /// The TOML key.
        key: String,
        /// The renderer's reason.
        source: RenderError,
    },
    /// The operator's include files were refused (a cycle, too large, or a
    /// key natsmesh owns); one message per problem.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Include(Vec<IncludeError>),
    /// `nats-server -t` refused the rendered file.
    #[error("{0}")]
    Check(#[from] CheckError),
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl PrepareError {
    /// Whether the configuration (not the machine) is at fault.
    pub fn is_config_error(&self) -> bool {
        !matches!(self, PrepareError::Write { .. })
    }
}

/// Renders `settings` for the broker at `settings.binary`, as a file in
/// `dir`, writes it to `dir/name` atomically and checks it with `-t`.
pub async fn prepare_in(
    settings: &Settings,
    dir: &Path,
    name: &str,
) -> Result<Prepared, PrepareError> {
    let version = detect(&settings.binary).await?;
    let rendered =
        render(&settings.server, &version, dir).map_err(|source| PrepareError::Render {
            key: match &source {
                RenderError::UnsupportedKey { key, .. } => format!("broker.{key}"),
                RenderError::NonUtf8Path { key, .. } => format!("broker.{key}"),
                RenderError::UnsafeNoAuthUser { .. } => "auth.anonymous_account".to_owned(),
            },
            source,
        })?;
    // The include tree is read (once, bounded) and judged before the
    // broker is asked to parse it: `nats-server -t` follows includes
    // without a bound of its own, and accepts what natsmesh owns.
    let problems = match include::walk(&include::roots(&rendered)) {
        Ok(tree) => tree.problems(),
        Err(e) => vec![e],
    };
    if !problems.is_empty() {
        return Err(PrepareError::Include(problems));
    }
    let path = dir.join(name);
    crate::broker_user::write_readable(&path, rendered.text.as_bytes(), crate::files::PLAIN)
        .map_err(|source| PrepareError::Write {
            path: path.clone(),
            source,
        })?;
    let snapshot = Snapshot::capture(&rendered);
    let check = check_file(&settings.binary, &path, crate::broker_user::run_as()).await?;
    Ok(Prepared {
        version,
        rendered,
        check,
        snapshot,
        path,
    })
}
