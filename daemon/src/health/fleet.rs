//! What the fleet's coordination is doing for this node, as a typed value:
//! metrics decide on it, and the words a person reads (`natsmeshd status`,
//! the fleet report's `lease`) are made from it at the edge.

use std::fmt;

/// This node's part in the fleet's coordination of planned work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Coordinating {
    /// Nothing planned waits for the fleet.
    #[default]
    Idle,
    /// A planned change is held back by `natsmeshd pause` or a fleet pause.
    Paused {
        /// What follows the pause.
        then: String,
    },
    /// The ask for the restart lease has gone; no answer yet.
    Asking {
        /// What the lease is for.
        why: String,
        /// Whose lease ("region" or "supercluster").
        scope: &'static str,
    },
    /// The lease's holder or a precondition makes this node wait.
    Waiting {
        /// Why, for a person.
        why: String,
    },
    /// This node holds the restart lease.
    Holding {
        /// What the lease is for.
        why: String,
        /// Whose lease ("region" or "supercluster").
        scope: &'static str,
    },
    /// Leaving the JetStream group before a decommission.
    Decommissioning,
    /// The decommission failed; the node keeps serving.
    DecommissionFailed(String),
    /// Decommissioned and leaving.
    Decommissioned(String),
}

impl Coordinating {
    /// This node holds a restart lease.
    pub fn holds_lease(&self) -> bool {
        matches!(self, Self::Holding { .. })
    }

    /// This node waits for a restart lease (asked, or told to wait).
    pub fn waits(&self) -> bool {
        matches!(self, Self::Asking { .. } | Self::Waiting { .. })
    }
}

impl fmt::Display for Coordinating {
    /// The words `natsmeshd status` has always shown (empty when idle).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle => Ok(()),
            Self::Paused { then } => write!(f, "paused; then: {then}"),
            Self::Asking { why, scope } => {
                write!(f, "{why}: asking the {scope} for the restart lease")
            }
            Self::Waiting { why } => write!(f, "waiting to restart: {why}"),
            Self::Holding { why, scope } => {
                write!(f, "{why}: holding the {scope}'s restart lease")
            }
            Self::Decommissioning => f.write_str("decommission: leaving the JetStream group"),
            Self::DecommissionFailed(e) => write!(f, "decommission failed: {e}"),
            Self::Decommissioned(msg) => write!(f, "decommissioned: {msg}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_word_is_written_as_it_always_was_and_only_holding_holds() {
        let why = || "a new broker binary (holding nothing)".to_owned();
        let cases = [
            (Coordinating::Idle, "", false, false),
            (
                Coordinating::Paused { then: why() },
                "paused; then: a new broker binary (holding nothing)",
                false,
                false,
            ),
            (
                Coordinating::Asking {
                    why: why(),
                    scope: "region",
                },
                "a new broker binary (holding nothing): asking the region for the restart lease",
                false,
                true,
            ),
            (
                Coordinating::Waiting {
                    why: "n2 is holding the region's lease".into(),
                },
                "waiting to restart: n2 is holding the region's lease",
                false,
                true,
            ),
            (
                Coordinating::Holding {
                    why: why(),
                    scope: "supercluster",
                },
                "a new broker binary (holding nothing): holding the supercluster's restart lease",
                true,
                false,
            ),
            (
                Coordinating::Decommissioning,
                "decommission: leaving the JetStream group",
                false,
                false,
            ),
            (
                Coordinating::DecommissionFailed("no quorum".into()),
                "decommission failed: no quorum",
                false,
                false,
            ),
            (
                Coordinating::Decommissioned("left".into()),
                "decommissioned: left",
                false,
                false,
            ),
        ];
        for (c, words, holds, waits) in cases {
            assert_eq!(c.to_string(), words);
            // Decided on the value, not the words: a reason that says
            // "holding" does not make a holder.
            assert_eq!((c.holds_lease(), c.waits()), (holds, waits), "{c:?}");
        }
    }
}
