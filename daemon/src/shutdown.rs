//! One shutdown for every task natsmeshd runs: those `run` starts beside
//! the supervisor (the control socket, signals, discovery, the pointers,
//! metrics, the fleet's watchers) and the work the supervisor runs off its
//! loop. Every task is tracked, and when supervision ends the tasks that
//! may be given up (servers, followers, checks, the wait for the lease)
//! are cancelled while those that must finish (giving the restart lease
//! back, removing this server from the JetStream group) are awaited — all
//! within a bounded grace, so natsmeshd's exit never waits on a peer that
//! does not answer, and never drops a lease release half-sent either.
//! A leaf: it names no other module.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the end of supervision waits for the work that must finish (a
/// lease release is one request; a JetStream removal a few). systemd's
/// stop budget has room for it after the broker's own stop.
pub const GRACE: Duration = Duration::from_secs(10);

/// natsmeshd's tasks; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// Work that may be given up: it ends as soon as shutdown begins.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            cancel.run_until_cancelled(work).await;
        });
    }

    /// Work that must finish: awaited at shutdown (up to the grace).
    pub fn spawn_awaited<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(work);
    }

    /// Ends them: cancels what may be given up and waits up to `grace` for
    /// the rest; whether every task ended.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_what_may_be_given_up_and_awaits_what_must_finish() {
        let tasks = Tasks::default();
        // A wait that never ends (the lease's, a check stuck on a peer).
        let given_up = Arc::new(AtomicBool::new(true));
        let flag = given_up.clone();
        tasks.spawn(async move {
            std::future::pending::<()>().await;
            flag.store(false, Ordering::SeqCst);
        });
        // A release that takes 3 s.
        let released = Arc::new(AtomicBool::new(false));
        let flag = released.clone();
        tasks.spawn_awaited(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            flag.store(true, Ordering::SeqCst);
        });
        let t = Instant::now();
        assert!(tasks.shutdown(GRACE).await, "not every task ended");
        assert!(
            released.load(Ordering::SeqCst),
            "the release was not awaited"
        );
        assert!(given_up.load(Ordering::SeqCst));
        assert_eq!(t.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_no_longer_than_its_grace() {
        let tasks = Tasks::default();
        tasks.spawn_awaited(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let t = Instant::now();
        assert!(!tasks.shutdown(GRACE).await);
        assert_eq!(t.elapsed(), GRACE);
        // Nothing new starts once it began.
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        tasks.spawn(async move { flag.store(true, Ordering::SeqCst) });
        tokio::task::yield_now().await;
        assert!(!ran.load(Ordering::SeqCst));
    }

    /// Counts the tasks still alive: dropped when a task's future is.
    struct Alive(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_task_that_watches_the_shutdown_ends_and_one_that_ignores_it_is_left_at_the_grace()
     {
        let tasks = Tasks::default();
        let alive = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Servers and followers as run starts them: loops that never end
        // by themselves.
        for _ in 0..12 {
            alive.fetch_add(1, Ordering::SeqCst);
            let guard = Alive(alive.clone());
            tasks.spawn(async move {
                let _guard = guard;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        // One that must finish but never does.
        tasks.spawn_awaited(std::future::pending());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(alive.load(Ordering::SeqCst), 12);
        let t = Instant::now();
        assert!(
            !tasks.shutdown(GRACE).await,
            "the stuck task counted as ended"
        );
        assert_eq!(
            t.elapsed(),
            GRACE,
            "the shutdown was not bounded by its grace"
        );
        assert_eq!(alive.load(Ordering::SeqCst), 0, "a cancelled task lives on");
    }
}
