//! The readiness endpoint the load balancer's health check polls: a tiny
//! HTTP/1.1 responder on the private address. `GET /ready` answers 200
//! while the supervisor says `ready`, 503 (with the state) otherwise, so
//! the balancer's view follows the same serving probe as membership. It
//! says nothing else: no version, no peers (the monitoring port, which
//! has no authentication, is never the health check's target).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::httpd::{read_request, respond};
use tokio::sync::watch;

use crate::health::{Health, State};

/// The path the health check must ask for.
pub const PATH: &str = "/ready";
/// A request must arrive whole within this.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds now (so a taken port fails the start), serves until dropped.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves health checks from `listener` with the latest health.
#[tracing::instrument(name = "balancer", skip_all, fields(task = "ready"))]
pub async fn serve(listener: TcpListener, status: watch::Receiver<Health>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: back off, keep serving.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let state = status.borrow().state;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, state)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, state: State) -> std::io::Result<()> {
    let Some(req) = read_request(&mut stream).await? else {
        return Ok(());
    };
    let (code, text) = verdict(&req.method, &req.path, state);
    respond(&mut stream, code, "text/plain", &format!("{text}\n")).await
}

/// The answer to `method path` in `state`: 200 only in `ready` (the same
/// serving probe as membership: `syncing` is not in the balancer), 503
/// with the state's name otherwise.
fn verdict(method: &str, path: &str, state: State) -> (u16, &'static str) {
    match (method, path) {
        ("GET" | "HEAD", PATH) => match state {
            State::Ready => (200, "ready"),
            State::Starting
            | State::Syncing
            | State::Draining
            | State::Restarting
            | State::Stopped => (503, state.as_str()),
        },
        ("GET" | "HEAD", _) => (404, "not found"),
        _ => (405, "method not allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn answers_with_the_supervisors_state() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = watch::channel(Health::default());
        let task = tokio::spawn(serve(listener, rx));
        let r = get(addr, "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 503 ") && r.ends_with("starting\n"),
            "{r}"
        );
        tx.send_modify(|s| s.state = State::Ready);
        let r = get(addr, "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        let r = get(addr, "GET /varz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = get(addr, "POST /ready HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        task.abort();
    }

    #[test]
    fn only_ready_is_in_service_every_other_state_says_its_name() {
        for state in State::ALL {
            let (code, text) = verdict("GET", PATH, state);
            if state == State::Ready {
                assert_eq!((code, text), (200, "ready"));
            } else {
                assert_eq!((code, text), (503, state.as_str()), "{state}");
            }
            assert_eq!(verdict("HEAD", PATH, state).0, code, "{state}");
            assert_eq!(verdict("GET", "/varz", state), (404, "not found"));
            assert_eq!(verdict("POST", PATH, state), (405, "method not allowed"));
        }
    }
}
