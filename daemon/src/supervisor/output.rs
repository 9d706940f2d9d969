//! The broker's stdout and stderr, into natsmeshd's log.
//!
//! A reader per pipe takes lines as fast as the broker writes them, so the
//! broker never blocks on a full pipe. Lines go through a bounded queue to
//! one writer task that logs them at the matching level; when the queue is
//! full (journald slow) lines are dropped and counted, never waited for.
//! Reload outcomes are recognised in the reader, so none is ever lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use natsmesh_broker::log::{Level, ReloadOutcome, parse_line, reload_outcome};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

const QUEUE: usize = 1024;

/// What the writer task is given.
#[derive(Debug)]
enum Item {
    /// A line of the broker with this pid.
    Line(u32, String),
    /// Acknowledge once every line before this one is written.
    Flush(oneshot::Sender<()>),
}

/// Shared between the readers and the writer.
#[derive(Debug, Clone)]
pub struct BrokerOutput {
    lines: mpsc::Sender<Item>,
    reloads: broadcast::Sender<ReloadOutcome>,
    dropped: Arc<AtomicU64>,
}

impl BrokerOutput {
    /// Starts the writer task.
    pub fn start() -> Self {
        let (lines, mut rx) = mpsc::channel::<Item>(QUEUE);
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Item::Line(pid, line) => emit(pid, &line),
                    Item::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        let (reloads, _) = broadcast::channel(16);
        Self {
            lines,
            reloads,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Subscribes to reload outcomes logged from now on.
    pub fn reloads(&self) -> broadcast::Receiver<ReloadOutcome> {
        self.reloads.subscribe()
    }

    /// Lines dropped because the log was slower than the broker.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every line queued so far is written (a broker's last
    /// words before natsmeshd itself exits).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.lines.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Starts a reader for one pipe of the broker with `pid`; it ends at
    /// the pipe's end.
    pub fn read(&self, pid: u32, pipe: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(outcome) = reload_outcome(parse_line(&line).1) {
                    let _ = this.reloads.send(outcome);
                }
                if this.lines.try_send(Item::Line(pid, line)).is_err() {
                    this.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }
}

fn emit(pid: u32, line: &str) {
    let (level, msg) = parse_line(line);
    match level {
        Some(Level::Trace) => tracing::trace!(target: "nats-server", broker_pid = pid, "{msg}"),
        Some(Level::Debug) => tracing::debug!(target: "nats-server", broker_pid = pid, "{msg}"),
        Some(Level::Info) => tracing::info!(target: "nats-server", broker_pid = pid, "{msg}"),
        Some(Level::Warn) => tracing::warn!(target: "nats-server", broker_pid = pid, "{msg}"),
        Some(Level::Error | Level::Fatal) => {
            tracing::error!(target: "nats-server", broker_pid = pid, "{msg}")
        }
        // Panics and stack dumps carry no tag; they matter.
        None => tracing::warn!(target: "nats-server", broker_pid = pid, "{msg}"),
    }
}
