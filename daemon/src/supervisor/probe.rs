//! One round of the three probes against a running broker.
//!
//! 1. *alive*: `/healthz?js-enabled-only=true` — any answer counts as alive;
//!    only a timeout is evidence of a hang (see `liveness`).
//! 2. *serving*: a client connects to the client port and reads INFO; it
//!    serves unless refused or in lame duck (`"ldm": true`). Where the
//!    broker requires TLS it completes the handshake against the configured
//!    roots and closes the session (no error line in the broker's log), so a
//!    TLS failure is also "not serving".
//! 3. *JetStream*: `js-server-only` (2.9/2.10) or `js-meta-only` (2.11+),
//!    then the full `/healthz`. Reported, never used to kill or deregister.
//!
//! The three run concurrently, each bounded by the probe timeout, after a
//! `/varz` read for the status line.

use std::net::SocketAddr;
use std::time::Duration;

use natsmesh_broker::Version;
use natsmesh_broker::monitor::{
    ClientPort, HEALTHZ_ALIVE, Http, Monitor, Varz, healthz_js_meta_query, probe_client_port,
};
use tokio::time::Instant;

use super::liveness::Observation;
pub use crate::addr::local_addr;
/// The JetStream probe's answer: a value of the published health.
pub use crate::health::JetStream;
use crate::tls::probe::ClientPortTls;

/// Where and how to probe one broker.
#[derive(Debug, Clone)]
pub struct Targets {
    monitor: Monitor,
    client: SocketAddr,
    js_meta_query: &'static str,
    jetstream: bool,
    timeout: Duration,
    gateways: bool,
    client_tls: Option<ClientPortTls>,
}

impl Targets {
    /// Targets for a broker with these listeners; `https` when monitoring
    /// is served over TLS.
    pub fn new(
        monitoring: SocketAddr,
        client: SocketAddr,
        version: &Version,
        jetstream: bool,
        timeout: Duration,
        https: Option<tokio_rustls::rustls::ClientConfig>,
    ) -> Self {
        let monitor = match https {
            Some(tls) => Monitor::with_tls(monitoring, timeout, tls),
            None => Monitor::new(monitoring, timeout),
        };
        Self {
            monitor,
            client,
            js_meta_query: healthz_js_meta_query(version),
            jetstream,
            timeout,
            gateways: false,
            client_tls: None,
        }
    }

    /// The client port's TLS, for brokers that require it there.
    pub fn with_client_tls(mut self, tls: Option<ClientPortTls>) -> Self {
        self.client_tls = tls;
        self
    }

    /// Also reads `/gatewayz` with `/varz` (gateways are configured).
    pub fn with_gateways(mut self, gateways: bool) -> Self {
        self.gateways = gateways;
        self
    }

    /// The monitoring client.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }
}

/// What one round saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// When the round started.
    pub at: Instant,
    /// The liveness observation.
    pub alive: Observation,
    /// The raw liveness answer, for status.
    pub alive_detail: String,
    /// The client port.
    pub client: ClientPort,
    /// JetStream.
    pub jetstream: JetStream,
    /// `/varz`, when it answered.
    pub varz: Option<Varz>,
    /// `/gatewayz`, read with `/varz` when gateways are configured.
    pub gatewayz: Option<natsmesh_broker::monitor::Gatewayz>,
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(120).collect())
}

async fn jetstream(t: &Targets) -> JetStream {
    if !t.jetstream {
        return JetStream::Disabled;
    }
    match t.monitor.get(t.js_meta_query).await {
        Http::Answered { status: 200, .. } => {}
        Http::Answered { body, .. } => return JetStream::NotCurrent(error_of(&body)),
        Http::Refused => return JetStream::Unknown("monitoring port closed".into()),
        Http::Timeout => return JetStream::Unknown("timeout".into()),
        Http::Failed(e) => return JetStream::Unknown(e),
    }
    match t.monitor.get("/healthz").await {
        Http::Answered { status: 200, .. } => JetStream::Current,
        Http::Answered { body, .. } => JetStream::Catching(error_of(&body)),
        Http::Timeout => JetStream::Unknown("timeout".into()),
        Http::Refused => JetStream::Unknown("monitoring port closed".into()),
        Http::Failed(e) => JetStream::Unknown(e),
    }
}

async fn client_port(t: &Targets) -> ClientPort {
    match t.client_tls.as_ref().map(ClientPortTls::load).transpose() {
        Ok(tls) => probe_client_port(t.client, t.timeout, tls.as_ref()).await,
        // Nothing is dialled: without trust the handshake cannot be made,
        // and hanging up before it is what fills the broker's log.
        Err(e) => ClientPort::Failed(format!("cannot load the client port's TLS trust: {e}")),
    }
}

/// Runs one round; `/varz` (for routes and the status line) only when
/// asked: it is not needed before the broker serves, and it answers late
/// while JetStream starts.
pub async fn probe(t: &Targets, with_varz: bool) -> Report {
    let at = Instant::now();
    // /varz first: the client-port probe is itself a client connection and
    // would show up in the count.
    let varz = if with_varz {
        t.monitor.varz().await.ok()
    } else {
        None
    };
    let gatewayz = if t.gateways && varz.is_some() {
        t.monitor.gatewayz().await.ok()
    } else {
        None
    };
    let (alive, client, js) =
        tokio::join!(t.monitor.get(HEALTHZ_ALIVE), client_port(t), jetstream(t),);
    let (alive, alive_detail) = match alive {
        Http::Answered { status, .. } => (Observation::Answered, format!("answered {status}")),
        Http::Refused => (Observation::NoListener, "monitoring port refused".into()),
        Http::Timeout => (
            Observation::Timeout,
            format!("no answer within {:?}", t.timeout),
        ),
        Http::Failed(e) => (Observation::NoListener, e),
    };
    Report {
        at,
        alive,
        alive_detail,
        client,
        jetstream: js,
        varz,
        gatewayz,
    }
}
