//! One backoff for every retry natsmeshd makes against something outside
//! it: the pointers' provider calls (`reconcile`), DNS lookups
//! (`discovery`) and the metadata service (`provider`). A leaf: it names
//! no other module, so every layer may use it.

use std::time::Duration;

use tokio::time::Instant;

/// Capped exponential waits with jitter, or what the provider asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure; doubled after each further one.
    pub first: Duration,
    /// The longest wait the doubling reaches.
    pub max: Duration,
    /// The longest wait a provider's own hint (`Retry-After`) is followed
    /// for: a broken header must not park the pointer for days.
    pub hint_max: Duration,
    /// Random extra, so nodes failing together do not retry together.
    pub jitter: Duration,
}

impl Backoff {
    /// The wait after `failures` failures in a row (1 for the first),
    /// `hint` when the provider named one.
    pub fn wait(&self, failures: u32, hint: Option<Duration>) -> Duration {
        // 2^20 times the first wait at most before the cap: far past every
        // cap in use (DNS doubles from its shortest refresh to its longest),
        // and saturating, so no overflow however many failures.
        let doubled = self
            .first
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.max);
        let jitter_ms = u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX);
        hint.map_or(doubled, |h| h.min(self.hint_max))
            + Duration::from_millis(fastrand::u64(0..=jitter_ms))
    }
}

/// Failures in a row and when the next attempt is due.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    failures: u32,
    at: Option<Instant>,
}

impl Retry {
    /// No failure yet: due now.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: 0,
            at: None,
        }
    }

    /// Whether an attempt may be made at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.at.is_none_or(|t| now >= t)
    }

    /// When the next attempt is due, if one waits.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// One more failure: waits the backoff (or the provider's `hint`).
    /// Returns the wait.
    pub fn failed(&mut self, hint: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = self.backoff.wait(self.failures, hint);
        self.at = Some(Instant::now() + wait);
        wait
    }

    /// One more failure, not worth a quick retry: waits `wait` whatever
    /// the count.
    pub fn failed_for(&mut self, wait: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.at = Some(Instant::now() + wait);
        wait
    }

    /// It worked: no failures, nothing to wait for.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.at = None;
    }

    /// Due now again, the failures still counted (a different aim is not
    /// held back by the backoff of an earlier one).
    pub fn due_now(&mut self) {
        self.at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
        hint_max: Duration::from_secs(300),
        jitter: Duration::from_millis(200),
    };

    #[test]
    fn waits_double_to_the_cap_and_follow_hints_to_theirs() {
        let within = |d: Duration, lo_ms: u64| {
            d >= Duration::from_millis(lo_ms) && d <= Duration::from_millis(lo_ms + 200)
        };
        assert!(within(B.wait(1, None), 500), "{:?}", B.wait(1, None));
        assert!(within(B.wait(2, None), 1000));
        assert!(within(B.wait(4, None), 4000));
        assert!(within(B.wait(7, None), 30_000));
        assert!(within(B.wait(u32::MAX, None), 30_000));
        assert!(within(B.wait(1, Some(Duration::from_secs(42))), 42_000));
        assert!(within(B.wait(1, Some(Duration::from_secs(9999))), 300_000));
        // No jitter: exact.
        let exact = Backoff {
            jitter: Duration::ZERO,
            ..B
        };
        assert_eq!(exact.wait(3, None), Duration::from_secs(2));
        // A long way from the first wait to the cap is walked in full.
        let long = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            hint_max: Duration::from_secs(3600),
            jitter: Duration::ZERO,
        };
        assert_eq!(long.wait(9, None), Duration::from_secs(256));
        assert_eq!(long.wait(13, None), Duration::from_secs(3600));
        let huge = Backoff {
            first: Duration::MAX,
            ..long
        };
        assert_eq!(huge.wait(u32::MAX, None), Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_counts_failures_and_is_due_after_its_wait() {
        let mut r = Retry::new(Backoff {
            jitter: Duration::ZERO,
            ..B
        });
        assert!(r.due(Instant::now()) && r.at().is_none());
        assert_eq!(r.failed(None), Duration::from_millis(500));
        assert_eq!(r.failed(None), Duration::from_secs(1));
        assert_eq!(r.failures(), 2);
        assert!(!r.due(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(r.due(Instant::now()));
        assert_eq!(
            r.failed_for(Duration::from_secs(15)),
            Duration::from_secs(15)
        );
        assert_eq!(r.failures(), 3);
        r.due_now();
        assert!(r.due(Instant::now()) && r.failures() == 3);
        r.failed(None);
        r.succeeded();
        assert!(r.due(Instant::now()) && r.failures() == 0);
    }
}
