//! Fakes of what cannot be reached from here: the cloud providers' APIs.
//! Each follows the provider's published contract (paths, content types,
//! status codes, error bodies) as recorded in shared/reference, and can be
//! told to misbehave (a status, a delay, an empty or garbage body).
//!
//! Every exchange with a provider-API fake is checked against the
//! provider's OpenAPI files while it is served ([`contract`]); a violation
//! fails the test.
//!
//! Each fake serves on 127.0.0.1 from a runtime thread of its own, so sync
//! tests can use it; it stops when dropped.

pub mod contract;
pub mod dns_api;
pub mod do_lb;
pub mod do_metadata;
pub mod lb;
pub mod linode_lb;
pub mod linode_metadata;
pub mod openapi;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;

/// A way for a fake to misbehave, for every request until cleared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// Answer every request with this status (and the provider's error body).
    Status(u16),
    /// Answer with this status for the next `n` requests, then behave.
    StatusTimes(u16, u32),
    /// Answer after this delay.
    Delay(Duration),
    /// 200 with an empty body.
    EmptyBody,
    /// 200 with a body that is not what the provider documents.
    Garbage,
}

/// A running fake server.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `router` on a free loopback port.
    pub fn start(router: Router) -> Self {
        Self::start_in(router, None)
    }

    /// Serves `router` on a free loopback port of the network namespace at
    /// `netns` (`/proc/<pid>/ns/net`, e.g. a container's, so a daemon in a
    /// container with a private network reaches it on its own loopback).
    pub fn start_in(router: Router, netns: Option<std::path::PathBuf>) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                // Only this thread moves; its runtime and sockets live there.
                let file = std::fs::File::open(&ns).expect("open netns");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind fake");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx.recv().expect("fake address");
        Self {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request body as the request logs keep it: the JSON, or the text when
/// it was not JSON; nothing for an empty body.
pub(crate) fn logged_body(
    body: &[u8],
    parsed: Option<&serde_json::Value>,
) -> Option<serde_json::Value> {
    (!body.is_empty()).then(|| {
        parsed.cloned().unwrap_or_else(|| {
            serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
        })
    })
}

/// The raw `Authorization` header, for the fakes' logs of what was sent.
pub(crate) fn authorization(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
}

/// This request's misbehaviour: a pending 429 first (counted down), else
/// the fault (`StatusTimes` counted down). Returns the fault and whether
/// the request is rate limited.
pub(crate) fn next_fault(rate_limited: &mut u32, fault: &mut Fault) -> (Fault, bool) {
    if *rate_limited > 0 {
        *rate_limited -= 1;
        (Fault::None, true)
    } else {
        (take(fault), false)
    }
}

/// The front every provider-API fake puts before its routes, once the
/// request is logged: a 429 when rate limited, the fault (with the
/// provider's error body), 401 without the right token, then an empty or
/// `garbage` 200. `refuse` answers 429 and 401 the provider's way.
pub(crate) async fn gate(
    limited: bool,
    fault: &Fault,
    headers: &axum::http::HeaderMap,
    token: &str,
    refuse: impl Fn(u16) -> axum::response::Response,
    fault_body: impl Fn(u16) -> (String, &'static str),
    garbage: &str,
) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    if limited {
        return Some(refuse(429));
    }
    if let Some(r) = act(fault, fault_body).await {
        return Some(r);
    }
    if !bearer_ok(headers, token) {
        return Some(refuse(401));
    }
    // Malformed on purpose: the contract check lets these through.
    let injected = |mut r: axum::response::Response| {
        r.extensions_mut().insert(contract::Injected);
        Some(r)
    };
    match fault {
        Fault::EmptyBody => injected((axum::http::StatusCode::OK, "").into_response()),
        Fault::Garbage => {
            injected((axum::http::StatusCode::OK, garbage.to_owned()).into_response())
        }
        _ => None,
    }
}

/// Whether the request carries exactly `Bearer <token>`.
pub(crate) fn bearer_ok(headers: &axum::http::HeaderMap, token: &str) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"))
}

/// Whether `METHOD /path` is one of `forbidden` (each `METHOD /path-prefix`):
/// what a token without the operation's scope is refused (403 after the
/// token itself was accepted, as the providers check authentication first).
pub(crate) fn forbidden(forbidden: &[String], method: &str, path: &str) -> bool {
    forbidden.iter().any(|f| {
        f.split_once(' ')
            .is_some_and(|(m, prefix)| m == method && path.starts_with(prefix))
    })
}

/// Shared state of a fake, with a request log.
pub type Shared<T> = Arc<Mutex<T>>;

/// The fault that applies to this request, counting down `StatusTimes`.
pub(crate) fn take(fault: &mut Fault) -> Fault {
    match fault.clone() {
        Fault::StatusTimes(s, n) => {
            *fault = if n <= 1 {
                Fault::None
            } else {
                Fault::StatusTimes(s, n - 1)
            };
            Fault::Status(s)
        }
        other => other,
    }
}

/// Acts on a request's fault: waits out a delay, or answers with an error
/// status and the provider's error body (`Some`).
pub(crate) async fn act(
    fault: &Fault,
    error_body: impl Fn(u16) -> (String, &'static str),
) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    match fault {
        Fault::Delay(d) => {
            tokio::time::sleep(*d).await;
            None
        }
        Fault::Status(status) => {
            let (body, ctype) = error_body(*status);
            let code = axum::http::StatusCode::from_u16(*status)
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            Some((code, [(axum::http::header::CONTENT_TYPE, ctype)], body).into_response())
        }
        _ => None,
    }
}
