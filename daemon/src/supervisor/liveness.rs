//! The liveness judge: when is a broker hung?
//!
//! Only a *timeout* is evidence of a hang. An answer of any status proves
//! the broker alive; a refused connection is not evidence either way (the
//! listener is closed during start and lame duck). A broker is hung after
//! `budget` of nothing but timeouts, outside the start-up grace. The grace
//! runs from the start and is extended by every answer until the broker
//! first serves, so a broker that answers 503 for an hour while JetStream
//! recovers is never killed.

use std::time::Duration;

use tokio::time::Instant;

/// What one liveness probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Any HTTP answer.
    Answered,
    /// Connection refused or reset.
    NoListener,
    /// No answer in time.
    Timeout,
}

/// The judge's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answering.
    Alive,
    /// No evidence yet (refused, in grace, or timeouts below the budget).
    Unknown,
    /// Only timeouts for this long: kill it.
    Hung {
        /// How long it has been silent.
        silent_for: Duration,
    },
}

/// Tracks one broker process's liveness from its start.
#[derive(Debug, Clone)]
pub struct Liveness {
    budget: Duration,
    grace: Duration,
    grace_until: Instant,
    served: bool,
    first_timeout: Option<Instant>,
}

impl Liveness {
    /// A judge for a broker started at `started`.
    pub fn new(started: Instant, budget: Duration, grace: Duration) -> Self {
        Self {
            budget,
            grace,
            grace_until: started + grace,
            served: false,
            first_timeout: None,
        }
    }

    /// The broker served clients: the start-up grace is over.
    pub fn served(&mut self, now: Instant) {
        if !self.served {
            self.served = true;
            self.grace_until = self.grace_until.min(now);
        }
    }

    /// Whether timeouts are currently forgiven.
    pub fn in_grace(&self, now: Instant) -> bool {
        now < self.grace_until
    }

    /// Records one observation and judges.
    pub fn observe(&mut self, seen: Observation, now: Instant) -> Verdict {
        match seen {
            Observation::Answered => {
                self.first_timeout = None;
                if !self.served {
                    // Still starting but answering: JetStream is recovering.
                    self.grace_until = self.grace_until.max(now + self.grace);
                }
                Verdict::Alive
            }
            Observation::NoListener => Verdict::Unknown,
            Observation::Timeout => {
                let first = *self.first_timeout.get_or_insert(now);
                if self.in_grace(now) {
                    return Verdict::Unknown;
                }
                // Count from the later of the first timeout and the grace end.
                let silent_for = now - first.max(self.grace_until.min(now));
                if silent_for >= self.budget {
                    Verdict::Hung { silent_for }
                } else {
                    Verdict::Unknown
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(60);
    const GRACE: Duration = Duration::from_secs(120);

    /// Feeds `seen` every `step` for `total`; returns the first Hung time.
    async fn feed(
        l: &mut Liveness,
        seen: Observation,
        step: Duration,
        total: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        while Instant::now() - start < total {
            tokio::time::advance(step).await;
            if let Verdict::Hung { .. } = l.observe(seen, Instant::now()) {
                return Some(Instant::now() - start);
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_budget_of_timeouts_after_serving_is_a_hang() {
        let mut l = Liveness::new(Instant::now(), BUDGET, GRACE);
        l.served(Instant::now());
        let step = Duration::from_secs(2);
        // 59 s of timeouts, then an answer: alive.
        assert_eq!(
            feed(&mut l, Observation::Timeout, step, Duration::from_secs(58)).await,
            None
        );
        assert_eq!(
            l.observe(Observation::Answered, Instant::now()),
            Verdict::Alive
        );
        // Refusals never count.
        assert_eq!(
            feed(
                &mut l,
                Observation::NoListener,
                step,
                Duration::from_secs(600)
            )
            .await,
            None
        );
        // A full budget of timeouts: hung, not before.
        let hung = feed(&mut l, Observation::Timeout, step, Duration::from_secs(600)).await;
        assert_eq!(hung, Some(Duration::from_secs(62)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_answering_while_it_recovers_is_never_killed() {
        let mut l = Liveness::new(Instant::now(), BUDGET, GRACE);
        // An hour of 503s (answers) with slow periods of timeouts shorter
        // than the grace between them.
        for _ in 0..30 {
            assert_eq!(
                feed(
                    &mut l,
                    Observation::Answered,
                    Duration::from_secs(2),
                    Duration::from_secs(60)
                )
                .await,
                None
            );
            assert_eq!(
                feed(
                    &mut l,
                    Observation::Timeout,
                    Duration::from_secs(2),
                    Duration::from_secs(60)
                )
                .await,
                None
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_that_never_answers_is_killed_after_grace_and_budget() {
        let mut l = Liveness::new(Instant::now(), BUDGET, GRACE);
        let hung = feed(
            &mut l,
            Observation::Timeout,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )
        .await;
        assert_eq!(hung, Some(GRACE + BUDGET));
    }
}
