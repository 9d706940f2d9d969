//! From settings to a broker config that is known to load: detect the
//! broker version, render for it, validate, and run `nats-server -t`.

use std::path::{Path, PathBuf};

use natsmesh_broker::Version;
use natsmesh_broker::check::{CheckError, CheckReport, check_file};
use natsmesh_broker::classify::Snapshot;
use natsmesh_broker::include::{self, IncludeError};
use natsmesh_broker::model::{RenderError, Rendered, render};
use natsmesh_broker::version::{VersionError, detect};

use crate::config::Settings;

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
