//! Restarting a broker that exited on its own: the shared capped
//! exponential backoff (`crate::backoff`) with jitter (the first retry is
//! immediate), and crash-loop detection so
//! that a broker that cannot stay up ends natsmeshd and systemd sees it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::validate::RestartSettings;

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCrash {
    /// Start again after this delay.
    RestartIn(Duration),
    /// Too many crashes in the window: give up.
    GiveUp {
        /// Crashes counted.
        crashes: usize,
        /// Within this window.
        window: Duration,
    },
}

/// Crash bookkeeping.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    settings: RestartSettings,
    recent: VecDeque<Instant>,
    consecutive: u32,
}

impl RestartPolicy {
    /// A policy with no crashes yet.
    pub fn new(settings: RestartSettings) -> Self {
        Self {
            settings,
            recent: VecDeque::new(),
            consecutive: 0,
        }
    }

    /// The broker served again: the next crash retries at once.
    pub fn healthy(&mut self) {
        self.consecutive = 0;
    }

    /// Records a crash at `now`; `jitter` in [0, 1) spreads retries of many
    /// nodes apart (±20 %).
    pub fn crashed(&mut self, now: Instant, jitter: f64) -> AfterCrash {
        let window = self.settings.crash_loop_window;
        self.recent.push_back(now);
        while self.recent.front().is_some_and(|t| now - *t > window) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.settings.crash_loop_count as usize {
            return AfterCrash::GiveUp {
                crashes: self.recent.len(),
                window,
            };
        }
        self.consecutive += 1;
        if self.consecutive == 1 {
            return AfterCrash::RestartIn(Duration::ZERO);
        }
        // The shared doubling (no jitter of its own: a crash's is relative,
        // below); the second crash in a row waits the initial backoff.
        let base = crate::backoff::Backoff {
            first: self.settings.backoff_initial,
            max: self.settings.backoff_max,
            hint_max: self.settings.backoff_max,
            jitter: Duration::ZERO,
        }
        .wait(self.consecutive - 1, None);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        AfterCrash::RestartIn(base.mul_f64(factor).min(self.settings.backoff_max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RestartSettings {
        RestartSettings {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            crash_loop_count: 6,
            crash_loop_window: Duration::from_secs(60),
            stop_margin: Duration::from_secs(10),
            kill_after: Duration::from_secs(20),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_retry_is_immediate_then_doubles_to_the_cap() {
        let mut p = RestartPolicy::new(settings());
        let mut delays = Vec::new();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(20)).await;
            match p.crashed(Instant::now(), 0.5) {
                AfterCrash::RestartIn(d) => delays.push(d.as_secs()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [0, 1, 2, 4, 8]);
        p.healthy();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            p.crashed(Instant::now(), 0.0),
            AfterCrash::RestartIn(Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_twenty_percent() {
        let mut p = RestartPolicy::new(settings());
        p.crashed(Instant::now(), 0.0);
        assert_eq!(
            p.crashed(Instant::now(), 0.0),
            AfterCrash::RestartIn(Duration::from_millis(800))
        );
        let mut p = RestartPolicy::new(settings());
        p.crashed(Instant::now(), 0.0);
        let AfterCrash::RestartIn(d) = p.crashed(Instant::now(), 0.999_999) else {
            panic!("no restart");
        };
        assert!(
            d > Duration::from_millis(1199) && d < Duration::from_millis(1200),
            "{d:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loop_gives_up_and_old_crashes_age_out() {
        let mut p = RestartPolicy::new(settings());
        for _ in 0..5 {
            assert!(matches!(
                p.crashed(Instant::now(), 0.5),
                AfterCrash::RestartIn(_)
            ));
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert_eq!(
            p.crashed(Instant::now(), 0.5),
            AfterCrash::GiveUp {
                crashes: 6,
                window: Duration::from_secs(60)
            }
        );
        let mut p = RestartPolicy::new(settings());
        for _ in 0..20 {
            assert!(matches!(
                p.crashed(Instant::now(), 0.5),
                AfterCrash::RestartIn(_)
            ));
            tokio::time::advance(Duration::from_secs(15)).await;
        }
    }
}
