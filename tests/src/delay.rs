//! Latency between regions: a TCP proxy that holds every chunk it carries,
//! in both directions, for a fixed time before passing it on. This kernel
//! has no netem, so the addresses a region advertises to the others point
//! at such proxies; a round trip through one costs twice its delay.
//!
//! The delay is a pipeline, not a pause: each chunk is stamped when read
//! and written when its time comes, so throughput is not divided by the
//! delay. The proxy connects out from its own listening address, so a
//! namespace's firewall can tell its traffic apart from the test
//! process's (the partitions of the failure drills rely on it).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks in flight per direction before reading pauses (backpressure).
const IN_FLIGHT: usize = 256;

/// Listens at `listen`, connects to `target` from `listen`'s address, and
/// delays each direction by `one_way`. Stops, cutting its connections,
/// when dropped.
pub struct DelayProxy {
    pub listen: SocketAddr,
    pub one_way: Duration,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    pub fn start(listen: SocketAddr, target: SocketAddr, one_way: Duration) -> Self {
        let listener = std::net::TcpListener::bind(listen)
            .unwrap_or_else(|e| panic!("delay proxy bind {listen}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let from = listen.ip();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("delay proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((inbound, _)) = accepted else { continue };
                            conns.spawn(carry(inbound, from, target, one_way));
                        }
                    }
                }
                // Dropping the set aborts every connection.
                conns.abort_all();
            });
        });
        Self {
            listen,
            one_way,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn carry(
    inbound: tokio::net::TcpStream,
    from: IpAddr,
    target: SocketAddr,
    one_way: Duration,
) {
    let socket = match from {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    let Ok(socket) = socket else { return };
    if socket.bind(SocketAddr::new(from, 0)).is_err() {
        return;
    }
    let Ok(outbound) = socket.connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    // Either direction ending ends the connection, as a cut link would.
    tokio::select! {
        _ = direction(in_r, out_w, one_way) => {}
        _ = direction(out_r, in_w, one_way) => {}
    }
}

/// Reads chunks, stamps them, and writes each once `one_way` has passed.
async fn direction(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, one_way: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + one_way, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    // The writer drains what the reader stamped before the end.
    tokio::join!(reader, writer);
}
