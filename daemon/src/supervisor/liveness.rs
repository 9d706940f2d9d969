//! The liveness judge: when is a broker hung?
//!
//! Only a *timeout* is evidence of a hang. An answer of any status proves
//! the broker alive; a refused connection is not evidence either way (the
//! listener is closed during start and lame duck). A broker is hung after
//! `budget` of nothing but timeouts, outside the start-up grace. The grace
//! runs from the start and is extended by every answer until the broker
//! first serves, so a broker that answers 503 for an hour while JetStream
//! recovers is never killed.
//!
//! A broker that has not answered at all since it was spawned (refused or
//! timed out, not even a 503) is not recovering a store: nats-server opens
//! its monitoring port before JetStream recovery. Its silence counts from
//! [`SILENT_START_GRACE`] after the spawn (or the start-up grace, if
//! shorter), and a budget of it is a hang: killed after grace-of-silence
//! plus budget (70 s by default) rather than the full start-up grace plus
//! budget (180 s).

use std::time::Duration;

use tokio::time::Instant;

/// How long a freshly spawned broker may stay silent (no answer of any
/// kind on its monitoring port) before silence counts against its budget:
/// nats-server opens the port within a second of its start, long before
/// JetStream recovery; ten seconds leave room for a loaded machine.
pub const SILENT_START_GRACE: Duration = Duration::from_secs(10);

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
    /// Never answered at all since its spawn, for the grace of silence
    /// and a budget more: kill it.
    Silent {
        /// Time since the spawn.
        since_spawn: Duration,
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
    started: Instant,
    /// Any answer (a 503 included) since the spawn.
    answered: bool,
    /// When a silent broker is judged hung.
    silent_deadline: Instant,
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
            started,
            answered: false,
            silent_deadline: started + SILENT_START_GRACE.min(grace) + budget,
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
        if seen != Observation::Answered
            && !self.answered
            && !self.served
            && now >= self.silent_deadline
        {
            return Verdict::Silent {
                since_spawn: now - self.started,
            };
        }
        match seen {
            Observation::Answered => {
                self.answered = true;
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
    async fn a_broker_that_answered_once_then_only_times_out_gets_grace_and_budget() {
        let mut l = Liveness::new(Instant::now(), BUDGET, GRACE);
        assert_eq!(
            l.observe(Observation::Answered, Instant::now()),
            Verdict::Alive
        );
        let hung = feed(
            &mut l,
            Observation::Timeout,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )
        .await;
        assert_eq!(hung, Some(GRACE + BUDGET));
    }

    /// Feeds `seen` every `step`; the first kill verdict (hung or silent).
    async fn until_killed(
        l: &mut Liveness,
        seen: Observation,
        step: Duration,
    ) -> (Duration, Verdict) {
        let start = Instant::now();
        loop {
            tokio::time::advance(step).await;
            let v = l.observe(seen, Instant::now());
            if matches!(v, Verdict::Hung { .. } | Verdict::Silent { .. })
                || Instant::now() - start > Duration::from_secs(3600)
            {
                return (Instant::now() - start, v);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_start_is_killed_after_the_grace_of_silence_and_the_budget() {
        // Timeouts only, or refusals only (no listener ever opened): the
        // same silence, judged after SILENT_START_GRACE + BUDGET (70 s),
        // not GRACE + BUDGET (180 s).
        for seen in [Observation::Timeout, Observation::NoListener] {
            let mut l = Liveness::new(Instant::now(), BUDGET, GRACE);
            let (at, v) = until_killed(&mut l, seen, Duration::from_secs(1)).await;
            assert_eq!(at, SILENT_START_GRACE + BUDGET, "{seen:?}");
            assert_eq!(
                v,
                Verdict::Silent {
                    since_spawn: SILENT_START_GRACE + BUDGET
                },
                "{seen:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_start_up_grace_shortens_the_grace_of_silence() {
        let grace = Duration::from_secs(4);
        let mut l = Liveness::new(Instant::now(), Duration::from_secs(3), grace);
        let (at, _) = until_killed(&mut l, Observation::NoListener, Duration::from_secs(1)).await;
        assert_eq!(at, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn one_answer_ends_the_silence_and_refusals_never_count_after_it() {
        let mut l = Liveness::new(Instant::now(), BUDGET, GRACE);
        tokio::time::advance(Duration::from_secs(30)).await;
        // A 503 while JetStream recovers: alive.
        assert_eq!(
            l.observe(Observation::Answered, Instant::now()),
            Verdict::Alive
        );
        // Then the listener closes (lame duck, a restart of the listener):
        // refusals are no evidence, for however long.
        assert_eq!(
            feed(
                &mut l,
                Observation::NoListener,
                Duration::from_secs(2),
                Duration::from_secs(3600)
            )
            .await,
            None
        );
    }
}
