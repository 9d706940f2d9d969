//! DigitalOcean's droplet metadata service (reference §1.8): text/plain
//! data endpoints, `/metadata/v1.json` as an object, 301 for an index
//! without its trailing slash, 404 for anything unknown, no authentication.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{Fault, Server, Shared};

/// What the droplet looks like.
#[derive(Debug, Clone)]
pub struct Droplet {
    /// Droplet id.
    pub id: u64,
    /// Host name.
    pub hostname: String,
    /// Region slug.
    pub region: String,
    /// Private (VPC) IPv4.
    pub private_ipv4: Option<String>,
    /// Public IPv4.
    pub public_ipv4: Option<String>,
    /// Public IPv6.
    pub public_ipv6: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
}

impl Default for Droplet {
    fn default() -> Self {
        Self {
            id: 2756294,
            hostname: "sample-droplet".into(),
            region: "nyc3".into(),
            private_ipv4: Some("10.132.0.5".into()),
            public_ipv4: Some("104.131.20.105".into()),
            public_ipv6: Some("2604:a880:1:20::2e7:f001".into()),
            tags: vec!["natsmesh".into(), "fra1".into()],
        }
    }
}

/// How `/metadata/v1.json` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JsonForm {
    /// A JSON object (what the service and go-metadata use).
    #[default]
    Object,
    /// Wrapped in an array (what the published spec says).
    Array,
    /// 404.
    Missing,
}

/// The fake's state.
#[derive(Debug, Default)]
pub struct DoState {
    /// The droplet.
    pub droplet: Droplet,
    /// The JSON endpoint's form.
    pub json: JsonForm,
    /// Misbehaviour.
    pub fault: Fault,
    /// Paths requested, in order.
    pub requests: Vec<String>,
}

/// A running fake.
pub struct FakeDoMetadata {
    /// Its state; change it while it runs.
    pub state: Shared<DoState>,
    server: Server,
}

impl FakeDoMetadata {
    /// Starts with `droplet`.
    pub fn start(droplet: Droplet) -> Self {
        Self::start_in(droplet, None)
    }

    /// As [`FakeDoMetadata::start`], in the network namespace at `netns`
    /// (a container's: its natsmeshd finds it on its own loopback).
    pub fn start_in(droplet: Droplet, netns: Option<std::path::PathBuf>) -> Self {
        let state = Arc::new(Mutex::new(DoState {
            droplet,
            ..DoState::default()
        }));
        let router = Router::new()
            .route("/metadata/v1.json", get(json))
            .route("/metadata/v1", get(index_no_slash))
            .route("/metadata/v1/", get(index))
            .route("/metadata/v1/{*path}", get(data))
            .with_state(state.clone());
        Self {
            state,
            server: Server::start_in(router, netns),
        }
    }

    /// Base URL (`node.metadata.url`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Sets a fault.
    pub fn fault(&self, f: Fault) {
        self.state.lock().expect("state").fault = f;
    }

    /// Paths requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state").requests.clone()
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

fn error_body(status: u16) -> (String, &'static str) {
    (format!("{status} error\n"), "text/plain; charset=utf-8")
}

/// Logs the request and applies the fault; `Err(response)` when the fault
/// answers instead.
async fn misbehave(state: &Shared<DoState>, path: &str) -> Result<Fault, Response> {
    let fault = {
        let mut s = state.lock().expect("state");
        s.requests.push(path.to_owned());
        super::take(&mut s.fault)
    };
    match super::act(&fault, error_body).await {
        Some(r) => Err(r),
        None => Ok(fault),
    }
}

async fn json(State(state): State<Shared<DoState>>) -> Response {
    let fault = match misbehave(&state, "/metadata/v1.json").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match fault {
        Fault::EmptyBody => {
            return ([(header::CONTENT_TYPE, "application/json")], "").into_response();
        }
        Fault::Garbage => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"droplet_id\": \"twelve\", \"hostname\": 7}",
            )
                .into_response();
        }
        _ => {}
    }
    let s = state.lock().expect("state");
    let d = &s.droplet;
    let iface = |v4: &Option<String>, v6: &Option<String>| {
        let mut o = serde_json::json!({"ipv4": {"ip_address": v4, "netmask": "255.255.240.0", "gateway": "10.132.0.1"}, "mac": "22:d7:b1:7e:2c:a8", "type": "public"});
        if let Some(v6) = v6 {
            o["ipv6"] =
                serde_json::json!({"ip_address": v6, "cidr": 64, "gateway": "2604:a880:1:20::1"});
        }
        o
    };
    let mut interfaces = serde_json::Map::new();
    if d.public_ipv4.is_some() {
        interfaces.insert(
            "public".into(),
            serde_json::json!([iface(&d.public_ipv4, &d.public_ipv6)]),
        );
    }
    if d.private_ipv4.is_some() {
        interfaces.insert(
            "private".into(),
            serde_json::json!([iface(&d.private_ipv4, &None)]),
        );
    }
    let doc = serde_json::json!({
        "droplet_id": d.id,
        "hostname": d.hostname,
        "user_data": "",
        "vendor_data": "",
        "public_keys": [],
        "region": d.region,
        "tags": d.tags,
        "dns": {"nameservers": ["67.207.67.2", "67.207.67.3"]},
        "interfaces": interfaces,
        "features": {"dhcp_enabled": false},
    });
    match s.json {
        JsonForm::Object => (
            [(header::CONTENT_TYPE, "application/json")],
            doc.to_string(),
        )
            .into_response(),
        JsonForm::Array => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!([doc]).to_string(),
        )
            .into_response(),
        JsonForm::Missing => not_found(),
    }
}

async fn index_no_slash() -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, "/metadata/v1/")],
    )
        .into_response()
}

async fn index(State(state): State<Shared<DoState>>) -> Response {
    if let Err(r) = misbehave(&state, "/metadata/v1/").await {
        return r;
    }
    text("id\nhostname\nuser-data\nvendor-data\npublic-keys\nregion\ninterfaces/\ndns/\nfloating_ip/\nreserved_ip/\ntags/\nfeatures/\n".into())
}

async fn data(State(state): State<Shared<DoState>>, Path(path): Path<String>) -> Response {
    let fault = match misbehave(&state, &format!("/metadata/v1/{path}")).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match fault {
        Fault::EmptyBody => return text(String::new()),
        Fault::Garbage => return text("<html>captive portal</html>".into()),
        _ => {}
    }
    let s = state.lock().expect("state");
    let d = &s.droplet;
    let value = match path.as_str() {
        "id" => Some(d.id.to_string()),
        "hostname" => Some(d.hostname.clone()),
        "region" => Some(d.region.clone()),
        "tags" => Some(d.tags.join("\n")),
        "interfaces/public/0/ipv4/address" => d.public_ipv4.clone(),
        "interfaces/public/0/ipv6/address" => d.public_ipv6.clone(),
        "interfaces/private/0/ipv4/address" => d.private_ipv4.clone(),
        _ => None,
    };
    value.map_or_else(not_found, text)
}
