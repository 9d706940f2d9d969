//! Logging: structured records to journald when stderr is connected to it,
//! human-readable lines on stderr otherwise.
//!
//! Lifecycle events carry a stable `MESSAGE_ID` (see [`ids`]) so operators
//! can `journalctl MESSAGE_ID=…` across versions.

use std::io::IsTerminal as _;
use std::os::unix::fs::MetadataExt as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Stable journald MESSAGE_IDs (128-bit, generated once, never changed).
pub mod ids {
    /// The broker serves: READY=1 sent.
    pub const READY: &str = "6b1c6e0a2f6e4b4f9a3d1c9e7f2a5b01";
    /// A configuration reload was confirmed.
    pub const RELOADED: &str = "6b1c6e0a2f6e4b4f9a3d1c9e7f2a5b02";
    /// The broker is being restarted.
    pub const RESTART: &str = "6b1c6e0a2f6e4b4f9a3d1c9e7f2a5b03";
    /// The broker exited or hung unexpectedly.
    pub const BROKER_LOST: &str = "6b1c6e0a2f6e4b4f9a3d1c9e7f2a5b04";
    /// Lame duck started: the node is leaving service.
    pub const DRAINING: &str = "6b1c6e0a2f6e4b4f9a3d1c9e7f2a5b05";
    /// A configuration reload was refused.
    pub const RELOAD_FAILED: &str = "6b1c6e0a2f6e4b4f9a3d1c9e7f2a5b06";
}

/// Whether stderr is the journal stream systemd connected
/// (`JOURNAL_STREAM=dev:inode` matches fd 2).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

/// Installs the global subscriber. `NATSMESH_LOG` sets the filter (default
/// `info`). The DNS library's own debug output (every packet) stays at
/// `warn` unless the filter names it: at `debug` it drowns natsmeshd's lines.
pub fn init() {
    let spec = std::env::var("NATSMESH_LOG").unwrap_or_else(|_| "info".to_owned());
    let spec = if spec.contains("hickory") {
        spec
    } else {
        format!("{spec},hickory_proto=warn,hickory_resolver=warn,hickory_net=warn")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        // No prefix: `message_id` must arrive as MESSAGE_ID.
        let journald = journald
            .with_field_prefix(None)
            .with_syslog_identifier("natsmeshd".into());
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .init();
        return;
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .init();
}
