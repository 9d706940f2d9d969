//! Reading nats-server's log lines.
//!
//! Lines look like `[1234] 2026/11/23 12:19:26.438732 [INF] message`, or
//! without the timestamp when `logtime` is off (natsmesh turns it off under
//! journald, which stamps lines itself).

/// A broker log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `[TRC]`
    Trace,
    /// `[DBG]`
    Debug,
    /// `[INF]`
    Info,
    /// `[WRN]`
    Warn,
    /// `[ERR]`
    Error,
    /// `[FTL]`
    Fatal,
}

/// Splits a line into its level and message; lines without a level tag
/// (panics, multi-line dumps) come back as `None` with the whole line.
pub fn parse_line(line: &str) -> (Option<Level>, &str) {
    for (tag, level) in [
        ("[INF] ", Level::Info),
        ("[WRN] ", Level::Warn),
        ("[ERR] ", Level::Error),
        ("[DBG] ", Level::Debug),
        ("[TRC] ", Level::Trace),
        ("[FTL] ", Level::Fatal),
    ] {
        if let Some(i) = line.find(tag) {
            return (Some(level), &line[i + tag.len()..]);
        }
    }
    (None, line)
}

/// The outcome of a signal-driven reload, as the broker logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// `Reloaded server configuration`.
    Reloaded,
    /// `Failed to reload server configuration: <why>`.
    Failed(String),
}

/// Recognises the reload outcome lines.
pub fn reload_outcome(message: &str) -> Option<ReloadOutcome> {
    if let Some(why) = message.strip_prefix("Failed to reload server configuration: ") {
        Some(ReloadOutcome::Failed(why.to_owned()))
    } else if message.starts_with("Reloaded server configuration") {
        Some(ReloadOutcome::Reloaded)
    } else {
        None
    }
}

/// Whether a refused reload says the change needs a restart (as opposed to
/// a config that would not start either).
pub fn needs_restart(why: &str) -> bool {
    why.contains("config reload not supported for")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_line_forms() {
        assert_eq!(
            parse_line("[3398] 2026/11/23 12:19:26.438732 [INF] Server is ready"),
            (Some(Level::Info), "Server is ready")
        );
        assert_eq!(
            parse_line("[3398] [ERR] Failed to reload server configuration: x"),
            (
                Some(Level::Error),
                "Failed to reload server configuration: x"
            )
        );
        assert_eq!(
            parse_line("goroutine 1 [running]:"),
            (None, "goroutine 1 [running]:")
        );
    }

    #[test]
    fn reload_lines() {
        assert_eq!(
            reload_outcome("Reloaded server configuration (sha256:ab)"),
            Some(ReloadOutcome::Reloaded)
        );
        let f = reload_outcome(
            "Failed to reload server configuration: config reload not supported for ServerName: old=a, new=b",
        );
        assert!(matches!(&f, Some(ReloadOutcome::Failed(w)) if needs_restart(w)));
        assert!(!needs_restart("Parse error on line 7"));
    }
}
