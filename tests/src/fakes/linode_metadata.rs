//! The Linode Metadata Service (reference §2.7): `PUT /v1/token` with
//! `Metadata-Token-Expiry-Seconds` returns a token (text, or `["…"]` as
//! JSON); `GET /v1/instance` and `/v1/network` need `Metadata-Token` and
//! answer 401 with the API v4 error body when it is missing, unknown or
//! expired; IPv4 addresses come as CIDR strings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::{Fault, Server, Shared};

/// What the Linode looks like.
#[derive(Debug, Clone)]
pub struct Linode {
    /// Linode id.
    pub id: u64,
    /// Label.
    pub label: String,
    /// Region.
    pub region: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Public IPv4 addresses, CIDR.
    pub public_ipv4: Vec<String>,
    /// Private IPv4 addresses, CIDR.
    pub private_ipv4: Vec<String>,
    /// SLAAC IPv6, CIDR.
    pub slaac: Option<String>,
}

impl Default for Linode {
    fn default() -> Self {
        Self {
            id: 532754976,
            label: "nats-fra1-1".into(),
            region: "us-east".into(),
            tags: vec!["natsmesh".into()],
            public_ipv4: vec!["192.0.2.10/24".into()],
            private_ipv4: vec!["192.168.139.7/17".into()],
            slaac: Some("2600:3c03::f03c:91ff:fe24:3a2f/128".into()),
        }
    }
}

/// The fake's state.
#[derive(Debug, Default)]
pub struct LinodeState {
    /// The Linode.
    pub linode: Linode,
    /// Misbehaviour.
    pub fault: Fault,
    /// Issued tokens and when they expire.
    pub tokens: HashMap<String, Instant>,
    /// Tokens issued so far.
    pub issued: u32,
    /// `(method path, had a valid token)` in order.
    pub requests: Vec<String>,
}

/// A running fake.
pub struct FakeLinodeMetadata {
    /// Its state.
    pub state: Shared<LinodeState>,
    server: Server,
}

impl FakeLinodeMetadata {
    /// Starts with `linode`.
    pub fn start(linode: Linode) -> Self {
        let state = Arc::new(Mutex::new(LinodeState {
            linode,
            ..LinodeState::default()
        }));
        let router = Router::new()
            .route("/v1/token", put(token))
            .route("/v1/instance", get(instance))
            .route("/v1/network", get(network))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "Not found") })
            .with_state(state.clone());
        Self {
            state,
            server: Server::start(router),
        }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Sets a fault.
    pub fn fault(&self, f: Fault) {
        self.state.lock().expect("state").fault = f;
    }

    /// Makes every issued token expire now.
    pub fn expire_tokens(&self) {
        let mut s = self.state.lock().expect("state");
        for t in s.tokens.values_mut() {
            *t = Instant::now();
        }
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u32 {
        self.state.lock().expect("state").issued
    }
}

fn error(status: StatusCode, reason: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"errors": [{"reason": reason}]}).to_string(),
    )
        .into_response()
}

fn error_body(status: u16) -> (String, &'static str) {
    let reason = match status {
        401 => "Unauthorized",
        404 => "Not found",
        429 => "Too many requests",
        _ => "Internal server error",
    };
    (
        serde_json::json!({"errors": [{"reason": reason}]}).to_string(),
        "application/json",
    )
}

async fn misbehave(state: &Shared<LinodeState>, what: &str) -> Result<Fault, Response> {
    let fault = {
        let mut s = state.lock().expect("state");
        s.requests.push(what.to_owned());
        super::take(&mut s.fault)
    };
    match super::act(&fault, error_body).await {
        Some(r) => Err(r),
        None => Ok(fault),
    }
}

async fn token(State(state): State<Shared<LinodeState>>, headers: HeaderMap) -> Response {
    if let Err(r) = misbehave(&state, "PUT /v1/token").await {
        return r;
    }
    let Some(secs) = headers
        .get("Metadata-Token-Expiry-Seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "Metadata-Token-Expiry-Seconds is required",
        );
    };
    let mut s = state.lock().expect("state");
    s.issued += 1;
    let token = format!(
        "{:064x}",
        0xe80e_b809_u64.wrapping_mul(u64::from(s.issued)) ^ 0x6e3f
    );
    s.tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(secs));
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if json {
        (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!([token]).to_string(),
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/plain")], token).into_response()
    }
}

/// Whether the token is known and not expired.
fn authorized(state: &Shared<LinodeState>, headers: &HeaderMap) -> bool {
    let s = state.lock().expect("state");
    headers
        .get("Metadata-Token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| s.tokens.get(t))
        .is_some_and(|until| Instant::now() < *until)
}

async fn instance(State(state): State<Shared<LinodeState>>, headers: HeaderMap) -> Response {
    let fault = match misbehave(&state, "GET /v1/instance").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !authorized(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    match fault {
        Fault::EmptyBody => {
            return ([(header::CONTENT_TYPE, "application/json")], "").into_response();
        }
        Fault::Garbage => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"id\": \"x\"}",
            )
                .into_response();
        }
        _ => {}
    }
    let s = state.lock().expect("state");
    let l = &s.linode;
    let doc = serde_json::json!({
        "id": l.id, "label": l.label, "region": l.region, "type": "g6-standard-2",
        "host_uuid": "3a3ddd59d9a78bb8de041391075df44de62bfec8", "tags": l.tags,
        "specs": {"vcpus": 2, "memory": 4096, "disk": 81920, "transfer": 4000, "gpus": 0},
        "backups": {"enabled": false, "status": null},
        "image": {"id": "linode/debian12", "label": "Debian 12"},
        "account_euuid": "A712B3C4-D5E6-F7G8-H9I0J1K2L3M4N5O6",
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

async fn network(State(state): State<Shared<LinodeState>>, headers: HeaderMap) -> Response {
    let fault = match misbehave(&state, "GET /v1/network").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !authorized(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    match fault {
        Fault::EmptyBody => {
            return ([(header::CONTENT_TYPE, "application/json")], "").into_response();
        }
        Fault::Garbage => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"ipv4\": {\"private\": [\"192.168.300.7/17\"]}}",
            )
                .into_response();
        }
        _ => {}
    }
    let s = state.lock().expect("state");
    let l = &s.linode;
    let doc = serde_json::json!({
        "interfaces": [],
        "ipv4": {"public": l.public_ipv4, "private": l.private_ipv4, "shared": []},
        "ipv6": {"slaac": l.slaac, "link_local": "fe80::f03c:91ff:fe24:3a2f/64", "ranges": [], "shared_ranges": []},
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}
