//! Linode's NodeBalancer API (`/v4`, shared/reference/provider-apis.md
//! §2.1–2.6) over one NodeBalancer, with a real data plane behind each of
//! its configs ([`super::lb`]): nodes created through the API become
//! backends that are health-checked and proxied to from that config's
//! frontend ([`FakeLinodeLb::frontend`] for the first config).
//!
//! Routes (also under `/v4beta`): `GET /v4/nodebalancers/{id}`;
//! `GET /v4/nodebalancers/{id}/configs[/{configId}]`;
//! `GET`/`POST …/configs/{configId}/nodes`;
//! `GET`/`PUT`/`DELETE …/configs/{configId}/nodes/{nodeId}` (DELETE answers
//! 200 `{}`); `GET /v4/linode/instances/{linodeId}/ips` (a Linode's
//! addresses, `ipv4.vpc` among them: what a VPC backend is made of; the
//! Linodes are `linodes`, built with [`linode_ips`]). Lists are paginated (`data`, `page`, `pages`, `results`;
//! `page_size` 25–500, default 100). Anything else is 404. The `rebuild`
//! endpoint is not modelled.
//!
//! Every request is logged (method, path, JSON body), then: `maintenance`
//! answers 503 with `X-Maintenance-Mode: true` (linodego's marker of planned
//! maintenance, which it does not retry); a pending `rate_limited` count
//! answers 429 with `Retry-After`; the [`Fault`] applies; the token is
//! checked (401 "Invalid Token"); an operation in `forbidden` gets 403
//! "Unauthorized" (a token whose scope is read-only there); a pending
//! `busy` count answers the next writes 400 with `busy_reason`; then the
//! route. Each answer's time and status is kept in `answered`. Every answer carries
//! `X-RateLimit-Limit/Remaining/Reset` and `Content-Type: application/json`
//! exactly (linodego compares it to its `Accept`). Errors are
//! `{"errors":[{"reason":…,"field"?:…}]}`.
//!
//! Modelling decisions:
//! * Health checks go to the node's own address: a NodeBalancerConfig has
//!   `check` (`none`|`connection`|`http`|`http_body`), `check_path` and
//!   `check_body` but no check port (the v4.176 spec's NodeBalancerConfig;
//!   linodego's config structs, whose only check port is `udp_check_port`,
//!   for UDP configs). So `http` is `GET check_path` on the node's
//!   `ip:port`, the port its clients use; `connection` is a TCP connect
//!   there; `http_body` also wants `check_body` in the body; `none` puts a
//!   node in service as soon as it is known. A node whose port speaks only
//!   NATS therefore never passes an `http` check.
//! * Addresses: the spec says only "must be a private IP address" in
//!   `ip:port` form. Linode's private IPv4 addresses come from
//!   192.168.128.0/17 (the range VPC subnets must not overlap, v4.176 spec),
//!   so that range is always accepted; another RFC 1918 address only with a
//!   `subnet_id` (a VPC backend, as linodego's fixtures show); 127.0.0.0/8
//!   only while `allow_loopback` (default true: tests run on loopback);
//!   anything else (public, IPv6) is 400 on `address`. The real texts of
//!   these errors are unknown; the fake's follow the style of observed ones.
//! * A new node's `status` is "Unknown" (as the real API writes it) until a
//!   threshold is reached, then "UP" or "DOWN". `check_attempts`,
//!   `check_interval` and `check_timeout` are shown as set; the timing used
//!   is the [`Model`]'s.
//! * `mode`: `accept` takes traffic; `drain` takes no new connections while
//!   existing ones go on; `reject` takes none and its connections are cut;
//!   `backup` takes new ones only while no `accept` node is UP. Weights
//!   drive a smooth weighted round robin. Mode and weight changes reach the
//!   data plane after `propagation` like every other change.
//! * `busy_reason` defaults to "Linode busy.", the only busy text the
//!   reference attests (linodego's fixtures, and the one text linodego
//!   retries on); no NodeBalancer-specific text was found. The 503 body of
//!   `maintenance` is not attested either.
//! * Creating a node with an address already on the config is accepted
//!   (nothing documents a refusal, and CAPL dedupes client-side) unless
//!   `reject_duplicate_address`; node writes are otherwise not idempotent.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::contract::{Contract, Guard};
use super::lb::{Health, Mode, Model, Pool, Probe, Running, Target, in_network};
use super::openapi::Spec;
use super::{Fault, Shared};

/// The NodeBalancer as the test sets it up.
#[derive(Debug, Clone, PartialEq)]
pub struct LinodeNb {
    /// Its id.
    pub id: u64,
    /// Region id, e.g. `eu-central`.
    pub region: String,
    /// NodeBalancerConfig objects as the API shows them (`id`, `port`,
    /// `protocol`, `check`, `check_path`, …; `nodes_status` is computed).
    pub configs: Vec<Value>,
}

impl LinodeNb {
    /// One TCP config `config_id` listening on `frontend_port`, checking
    /// `GET /ready` on each node's own address (there is no check port).
    pub fn tcp(id: u64, region: &str, config_id: u64, frontend_port: u16) -> Self {
        let m = Model::default();
        Self {
            id,
            region: region.to_owned(),
            configs: vec![json!({
                "id": config_id, "nodebalancer_id": id, "port": frontend_port,
                "protocol": "tcp", "algorithm": "roundrobin", "stickiness": "none",
                "check": "http", "check_path": "/ready", "check_body": "",
                // Shown as set; the data plane uses the Model. Linode wants
                // the interval above the timeout.
                "check_interval": Model::secs(m.check_interval) + 1,
                "check_timeout": Model::secs(m.response_timeout),
                "check_attempts": m.unhealthy_threshold,
                "check_passive": true, "proxy_protocol": "none",
                "cipher_suite": "recommended", "ssl_commonname": "", "ssl_fingerprint": "",
                "ssl_cert": null, "ssl_key": null,
            })],
        }
    }

    /// The same with `model`'s timing shown in every config (what the data
    /// plane uses in any case).
    pub fn with_model(mut self, model: &Model) -> Self {
        for c in &mut self.configs {
            c["check_interval"] = json!(Model::secs(model.check_interval) + 1);
            c["check_timeout"] = json!(Model::secs(model.response_timeout));
            c["check_attempts"] = json!(model.unhealthy_threshold);
        }
        self
    }

    /// The same with `check` (`none`, `connection`, `http`, `http_body`)
    /// on every config.
    pub fn with_check(mut self, check: &str) -> Self {
        for c in &mut self.configs {
            c["check"] = json!(check);
        }
        self
    }
}

/// A node as the fake keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinodeNode {
    /// Its id.
    pub id: u64,
    /// Its config.
    pub config_id: u64,
    /// Display label.
    pub label: String,
    /// `ip:port`.
    pub address: String,
    /// 1–255.
    pub weight: u32,
    /// `accept`, `reject`, `drain` or `backup`.
    pub mode: String,
    /// VPC subnet when created with one.
    pub subnet_id: Option<u64>,
}

/// The fake's state; change it while it runs (call [`FakeLinodeLb::sync`]
/// after changing nodes or configs here).
#[derive(Debug)]
pub struct LinodeLbState {
    /// The only token accepted.
    pub token: String,
    /// The NodeBalancer.
    pub nb: LinodeNb,
    /// Its nodes, in creation order.
    pub nodes: Vec<LinodeNode>,
    /// The id the next node gets.
    pub next_node_id: u64,
    /// Accept 127.0.0.0/8 addresses (default true).
    pub allow_loopback: bool,
    /// Refuse a second node with the same address on a config.
    pub reject_duplicate_address: bool,
    /// The next this many writes get 400 `busy_reason`.
    pub busy: u32,
    /// Reason of a busy 400.
    pub busy_reason: String,
    /// Every request gets 503 with `X-Maintenance-Mode: true`.
    pub maintenance: bool,
    /// Misbehaviour, with error bodies in Linode's shape.
    pub fault: Fault,
    /// The next this many requests get 429.
    pub rate_limited: u32,
    /// `Retry-After` on a 429.
    pub retry_after_secs: u64,
    /// Operations refused 403 for want of a scope, each `METHOD
    /// /path-prefix` (`POST /v4/nodebalancers/` for a token with
    /// `nodebalancers:read_only`).
    pub forbidden: Vec<String>,
    /// When each answer left and its status, in order.
    pub answered: Vec<(std::time::SystemTime, u16)>,
    /// Every request in order: `POST /v4/nodebalancers/1/configs/2/nodes`
    /// and its body (JSON, or a string when it was not; `None` if empty).
    pub requests: Vec<(String, Option<Value>)>,
    /// Every `Authorization` header received.
    pub authorization_seen: Vec<String>,
    /// The account's Linodes: id → the answer of their `…/ips`.
    pub linodes: BTreeMap<u64, Value>,
}

/// A Linode's `GET /linode/instances/{id}/ips` answer (the v4.176 spec's
/// shape): its private IPv4 and its VPC interfaces, each `(address,
/// subnet_id, active)` in VPC 7654.
pub fn linode_ips(linode_id: u64, private: Option<&str>, vpc: &[(&str, u64, bool)]) -> Value {
    let private: Vec<Value> = private
        .into_iter()
        .map(|a| json!({"address": a, "gateway": null, "linode_id": linode_id, "prefix": 17, "public": false, "rdns": null, "region": "eu-central", "subnet_mask": "255.255.128.0", "type": "ipv4"}))
        .collect();
    let vpc: Vec<Value> = vpc
        .iter()
        .enumerate()
        .map(|(i, (address, subnet_id, active))| {
            json!({
                "active": active, "address": address, "address_range": null,
                "config_id": 4567, "gateway": "10.0.0.1", "interface_id": 2435 + i as u64,
                "linode_id": linode_id, "nat_1_1": "", "prefix": 24, "region": "eu-central",
                "subnet_id": subnet_id, "subnet_mask": "255.255.255.0", "vpc_id": 7654,
            })
        })
        .collect();
    json!({
        "ipv4": {"public": [], "private": private, "shared": [], "reserved": [], "vpc": vpc},
        // No IPv6 objects: the spec has no null for them.
        "ipv6": {"global": []},
    })
}

/// A running fake.
pub struct FakeLinodeLb {
    /// Its state.
    pub state: Shared<LinodeLbState>,
    pools: Vec<(u64, Pool)>,
    running: Running,
    // Last: looks once the server has stopped.
    contract: Guard,
}

struct Ctx {
    state: Shared<LinodeLbState>,
    contract: Arc<Contract>,
    /// One pool per config, in config order.
    pools: Vec<(u64, Pool)>,
    started: u64,
}

impl FakeLinodeLb {
    /// Serves `nb` for `token`.
    pub fn start(token: &str, nb: LinodeNb, model: Model) -> Self {
        Self::start_in(token, nb, model, None)
    }

    /// As [`FakeLinodeLb::start`], in the network namespace at `netns`.
    pub fn start_in(
        token: &str,
        nb: LinodeNb,
        model: Model,
        netns: Option<std::path::PathBuf>,
    ) -> Self {
        let pools: Vec<(u64, Pool)> = nb
            .configs
            .iter()
            .map(|c| (c["id"].as_u64().unwrap_or(0), Pool::new(model)))
            .collect();
        let state = Arc::new(Mutex::new(LinodeLbState {
            token: token.to_owned(),
            nb,
            nodes: Vec::new(),
            next_node_id: 54_321,
            allow_loopback: true,
            reject_duplicate_address: false,
            busy: 0,
            busy_reason: "Linode busy.".to_owned(),
            maintenance: false,
            fault: Fault::None,
            rate_limited: 0,
            retry_after_secs: 1,
            forbidden: Vec::new(),
            answered: Vec::new(),
            requests: Vec::new(),
            authorization_seen: Vec::new(),
            linodes: BTreeMap::new(),
        }));
        let contract = Contract::new(Some(Spec::Linode));
        let ctx = Arc::new(Ctx {
            state: state.clone(),
            contract: contract.clone(),
            pools: pools.clone(),
            started: super::lb::unix_now(),
        });
        let router = Router::new().fallback(handle).with_state(ctx);
        let running = Running::start(
            router,
            pools.iter().map(|(_, p)| p.clone()).collect(),
            netns,
        );
        Self {
            state,
            pools,
            running,
            contract: Guard(contract),
        }
    }

    /// What the in-flight check of the provider's contract found.
    pub fn contract(&self) -> &Contract {
        &self.contract.0
    }

    /// The API base URL (`http://127.0.0.1:P/v4`).
    pub fn api_url(&self) -> String {
        format!("{}/v4", self.running.url())
    }

    /// The first config's frontend.
    pub fn frontend(&self) -> SocketAddr {
        self.running.frontend(0).expect("frontend")
    }

    /// Config `config_id`'s frontend.
    pub fn frontend_of(&self, config_id: u64) -> Option<SocketAddr> {
        let i = self.pools.iter().position(|(c, _)| *c == config_id)?;
        self.running.frontend(i)
    }

    /// Config `config_id`'s data plane (health, connections, networks).
    pub fn pool(&self, config_id: u64) -> Option<&Pool> {
        self.pools
            .iter()
            .find(|(c, _)| *c == config_id)
            .map(|(_, p)| p)
    }

    /// Every node as the API shows it, with its status now.
    pub fn nodes(&self) -> Vec<Value> {
        let s = lock(&self.state);
        s.nodes
            .iter()
            .map(|n| node_json(&self.pools, s.nb.id, n))
            .collect()
    }

    /// Addresses of nodes in service (UP), any config, in creation order.
    pub fn in_service(&self) -> Vec<String> {
        let s = lock(&self.state);
        s.nodes
            .iter()
            .filter(|n| health(&self.pools, n) == Some(Health::Up))
            .map(|n| n.address.clone())
            .collect()
    }

    /// Requests so far (`METHOD /path`, body).
    pub fn requests(&self) -> Vec<(String, Option<Value>)> {
        lock(&self.state).requests.clone()
    }

    /// Hands the state's nodes and configs to the data plane (after
    /// `propagation`), as the API does after each write.
    pub fn sync(&self) {
        sync(&self.state, &self.pools);
    }
}

fn lock(state: &Shared<LinodeLbState>) -> MutexGuard<'_, LinodeLbState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pool_of(pools: &[(u64, Pool)], config_id: u64) -> Option<&Pool> {
    pools.iter().find(|(c, _)| *c == config_id).map(|(_, p)| p)
}

fn health(pools: &[(u64, Pool)], n: &LinodeNode) -> Option<Health> {
    pool_of(pools, n.config_id)?.health(&n.id.to_string())
}

/// Tells each config's pool what its nodes are now.
fn sync(state: &Shared<LinodeLbState>, pools: &[(u64, Pool)]) {
    let s = lock(state);
    for (config_id, pool) in pools {
        let Some(config) =
            s.nb.configs
                .iter()
                .find(|c| c["id"].as_u64() == Some(*config_id))
        else {
            continue;
        };
        let targets: Vec<(String, Target)> = s
            .nodes
            .iter()
            .filter(|n| n.config_id == *config_id)
            .filter_map(|n| {
                let addr: SocketAddr = n.address.parse().ok()?;
                let target = Target {
                    addr,
                    probe: probe_of(config, addr.port()),
                    weight: n.weight,
                    mode: mode_of(&n.mode),
                };
                Some((n.id.to_string(), target))
            })
            .collect();
        for old in pool.registered() {
            if !targets.iter().any(|(k, _)| *k == old) {
                pool.remove(&old);
            }
        }
        for (key, target) in targets {
            pool.set(&key, target);
        }
    }
}

/// The config's check, aimed at the node's own port.
fn probe_of(config: &Value, port: u16) -> Probe {
    let path = config["check_path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    match config["check"].as_str().unwrap_or("none") {
        "connection" => Probe::Tcp { port },
        "http" => Probe::Http {
            port,
            path: path.to_owned(),
            body: None,
        },
        "http_body" => Probe::Http {
            port,
            path: path.to_owned(),
            body: Some(config["check_body"].as_str().unwrap_or("").to_owned()),
        },
        _ => Probe::None,
    }
}

fn mode_of(mode: &str) -> Mode {
    match mode {
        "reject" => Mode::Reject,
        "drain" => Mode::Drain,
        "backup" => Mode::Backup,
        _ => Mode::Accept,
    }
}

fn node_json(pools: &[(u64, Pool)], nb_id: u64, n: &LinodeNode) -> Value {
    let status = match health(pools, n) {
        Some(Health::Up) => "UP",
        Some(Health::Down) => "DOWN",
        _ => "Unknown",
    };
    json!({
        "id": n.id,
        "address": n.address,
        "label": n.label,
        "status": status,
        "weight": n.weight,
        "mode": n.mode,
        "config_id": n.config_id,
        "nodebalancer_id": nb_id,
        "vpc_config_id": n.subnet_id.map(|s| s + 10_000),
    })
}

// Dispatch -------------------------------------------------------------------

async fn handle(
    State(ctx): State<Arc<Ctx>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fake = async { finish(&ctx, serve(&ctx, &method, &uri, &headers, &body).await) };
    ctx.contract.check(&method, &uri, &body, fake).await
}

async fn serve(
    ctx: &Ctx,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let path = uri.path().to_owned();
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let write = matches!(*method, Method::POST | Method::PUT | Method::DELETE);
    let (maintenance, fault, limited, token) = {
        let mut s = lock(&ctx.state);
        let logged = super::logged_body(body, parsed.as_ref());
        s.requests.push((format!("{method} {path}"), logged));
        s.authorization_seen.extend(super::authorization(headers));
        if s.maintenance {
            (true, Fault::None, false, String::new())
        } else {
            let s = &mut *s;
            let (fault, limited) = super::next_fault(&mut s.rate_limited, &mut s.fault);
            (false, fault, limited, s.token.clone())
        }
    };
    if maintenance {
        let mut r = reply(503, &reason("Currently in maintenance mode."));
        r.headers_mut()
            .insert("x-maintenance-mode", HeaderValue::from_static("true"));
        return r;
    }
    if let Some(r) = super::gate(
        limited,
        &fault,
        headers,
        &token,
        error,
        |status| (error_body(status).to_string(), CONTENT_TYPE),
        r#"{"data":"none","page":"one"}"#,
    )
    .await
    {
        return r;
    }
    if super::forbidden(&lock(&ctx.state).forbidden, method.as_str(), &path) {
        return error(403);
    }
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let Some((version, rest)) = segs.split_first() else {
        return error(404);
    };
    let nb_id = lock(&ctx.state).nb.id;
    let ours = |id: &str| id.parse::<u64>().ok() == Some(nb_id);
    let num = |id: &str| id.parse::<u64>().ok();
    if !matches!(*version, "v4" | "v4beta") {
        return error(404);
    }
    if write && matches!(rest, ["nodebalancers", id, ..] if ours(id)) {
        let mut s = lock(&ctx.state);
        if s.busy > 0 {
            s.busy -= 1;
            return reply(400, &reason(&s.busy_reason));
        }
    }
    let req = Req {
        uri,
        body: parsed.as_ref(),
        raw: body,
    };
    match (method.as_str(), rest) {
        ("GET", ["linode", "instances", id, "ips"]) => {
            match num(id).and_then(|id| lock(&ctx.state).linodes.get(&id).cloned()) {
                Some(ips) => reply(200, &ips),
                None => error(404),
            }
        }
        ("GET", ["nodebalancers", id]) if ours(id) => reply(200, &nb_json(ctx)),
        ("GET", ["nodebalancers", id, "configs"]) if ours(id) => {
            let configs = configs_json(ctx);
            paginated(&req, configs)
        }
        ("GET", ["nodebalancers", id, "configs", cid]) if ours(id) => {
            match configs_json(ctx)
                .into_iter()
                .find(|c| c["id"].as_u64() == num(cid))
            {
                Some(c) => reply(200, &c),
                None => error(404),
            }
        }
        (m, ["nodebalancers", id, "configs", cid, "nodes", more @ ..]) if ours(id) => {
            let Some(config_id) = num(cid).filter(|c| pool_of(&ctx.pools, *c).is_some()) else {
                return error(404);
            };
            match (m, more) {
                ("GET", []) => {
                    let nodes = nodes_of(ctx, config_id);
                    paginated(&req, nodes)
                }
                ("POST", []) => create(ctx, config_id, &req),
                (_, [nid]) => match num(nid) {
                    Some(node_id) => node_op(ctx, m, config_id, node_id, &req),
                    None => error(404),
                },
                _ => error(404),
            }
        }
        _ => error(404),
    }
}

/// One request's parts the routes use.
struct Req<'a> {
    uri: &'a Uri,
    body: Option<&'a Value>,
    raw: &'a [u8],
}

const CONTENT_TYPE: &str = "application/json";

/// Rate-limit headers on every answer (800 per two minutes), `Retry-After`
/// on a 429.
fn finish(ctx: &Ctx, mut resp: Response) -> Response {
    let (count, retry) = {
        let mut s = lock(&ctx.state);
        s.answered
            .push((std::time::SystemTime::now(), resp.status().as_u16()));
        (s.requests.len() as u64, s.retry_after_secs)
    };
    let limited = resp.status() == StatusCode::TOO_MANY_REQUESTS;
    let now = super::lb::unix_now();
    let elapsed = now.saturating_sub(ctx.started);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    let (remaining, reset) = if limited {
        (0, now + retry)
    } else {
        (
            800u64.saturating_sub(count % 800),
            now + 120 - elapsed % 120,
        )
    };
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-ratelimit-limit", "800".into());
    set("x-ratelimit-remaining", remaining.to_string());
    set("x-ratelimit-reset", reset.to_string());
    if limited {
        set("retry-after", retry.to_string());
    }
    resp
}

// Errors ---------------------------------------------------------------------

fn reason(text: &str) -> Value {
    json!({"errors": [{"reason": text}]})
}

fn error_body(status: u16) -> Value {
    reason(match status {
        400 => "Bad request",
        401 => "Invalid Token",
        403 => "Unauthorized",
        404 => "Not found",
        429 => "Too many requests",
        _ => "Internal Server Error",
    })
}

fn reply(status: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, body.to_string()).into_response()
}

fn error(status: u16) -> Response {
    reply(status, &error_body(status))
}

/// 400 naming fields: `(field, reason)`.
fn invalid(errors: &[(&str, String)]) -> Response {
    let errors: Vec<Value> = errors
        .iter()
        .map(|(field, reason)| json!({"field": field, "reason": reason}))
        .collect();
    reply(400, &json!({"errors": errors}))
}

// Reads ----------------------------------------------------------------------

/// Linode's timestamps: `2018-01-01T00:01:01`.
fn linode_time(secs: u64) -> String {
    super::lb::rfc3339(secs).trim_end_matches('Z').to_owned()
}

fn nb_json(ctx: &Ctx) -> Value {
    let s = lock(&ctx.state);
    let t = linode_time(ctx.started);
    json!({
        "id": s.nb.id,
        "label": format!("natsmesh-{}", s.nb.region),
        "region": s.nb.region,
        "hostname": "127.0.0.1.ip.linodeusercontent.com",
        "ipv4": "127.0.0.1",
        "ipv6": null,
        "created": t,
        "updated": t,
        "client_conn_throttle": 0,
        "transfer": {"total": 0.0, "out": 0.0, "in": 0.0},
        "tags": [],
    })
}

/// The configs with `nodes_status` now.
fn configs_json(ctx: &Ctx) -> Vec<Value> {
    let s = lock(&ctx.state);
    s.nb.configs
        .iter()
        .map(|c| {
            let id = c["id"].as_u64().unwrap_or(0);
            let nodes: Vec<&LinodeNode> = s.nodes.iter().filter(|n| n.config_id == id).collect();
            let up = nodes
                .iter()
                .filter(|n| health(&ctx.pools, n) == Some(Health::Up))
                .count();
            let mut c = c.clone();
            c["nodebalancer_id"] = json!(s.nb.id);
            c["nodes_status"] = json!({"up": up, "down": nodes.len() - up});
            c
        })
        .collect()
}

fn nodes_of(ctx: &Ctx, config_id: u64) -> Vec<Value> {
    let s = lock(&ctx.state);
    s.nodes
        .iter()
        .filter(|n| n.config_id == config_id)
        .map(|n| node_json(&ctx.pools, s.nb.id, n))
        .collect()
}

/// A page of `items` per `page` and `page_size`, or the 400 for bad ones.
fn paginated(req: &Req<'_>, items: Vec<Value>) -> Response {
    let q = super::lb::query(req.uri);
    let param = |key: &str| {
        q.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let page = match param("page") {
        None => 1,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => return invalid(&[("page", "Must be greater than or equal to 1".into())]),
        },
    };
    let size = match param("page_size") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (25..=500).contains(&n) => n,
            _ => return invalid(&[("page_size", "Must be 25-500".into())]),
        },
    };
    let results = items.len();
    let pages = results.div_ceil(size).max(1);
    // Past the end the last page is returned.
    let page = page.min(pages);
    let data: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * size)
        .take(size)
        .collect();
    reply(
        200,
        &json!({"data": data, "page": page, "pages": pages, "results": results}),
    )
}

// Writes ---------------------------------------------------------------------

/// Checks an `ip:port` node address; the reason when it is refused.
fn check_address(address: &str, vpc: bool, allow_loopback: bool) -> Result<(), String> {
    let Ok(addr) = address.parse::<SocketAddr>() else {
        return Err("Must be a valid IPv4 address and port, as IP:port".into());
    };
    if addr.port() == 0 {
        return Err("Port must be between 1 and 65535".into());
    }
    let IpAddr::V4(ip) = addr.ip() else {
        return Err("Must be a private IPv4 address".into());
    };
    let linode_private = in_network(
        IpAddr::V4(ip),
        IpAddr::V4(Ipv4Addr::new(192, 168, 128, 0)),
        17,
    );
    let ok = linode_private || (vpc && ip.is_private()) || (allow_loopback && ip.is_loopback());
    if ok {
        Ok(())
    } else {
        Err("Must be a private IPv4 address".into())
    }
}

/// Validates the writable fields present in `body` onto `node`; field
/// errors otherwise.
fn apply_fields(
    s: &LinodeLbState,
    node: &mut LinodeNode,
    body: &Map<String, Value>,
) -> Result<(), Vec<(&'static str, String)>> {
    let mut errors = Vec::new();
    if let Some(v) = body.get("subnet_id") {
        match v.as_u64() {
            Some(id) => node.subnet_id = Some(id),
            None if v.is_null() => {}
            None => errors.push(("subnet_id", "Must be an integer".to_owned())),
        }
    }
    if let Some(v) = body.get("label") {
        match v.as_str() {
            Some(l) if !(3..=32).contains(&l.chars().count()) => {
                errors.push(("label", "Length must be 3-32 characters".to_owned()));
            }
            Some(l)
                if !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
            {
                errors.push((
                    "label",
                    "Must only use ASCII letters, numbers, underscores, dashes, and periods"
                        .to_owned(),
                ));
            }
            Some(l) => node.label = l.to_owned(),
            None => errors.push(("label", "Must be a string".to_owned())),
        }
    }
    if let Some(v) = body.get("address") {
        match v.as_str() {
            Some(a) => match check_address(a, node.subnet_id.is_some(), s.allow_loopback) {
                Ok(()) => node.address = a.to_owned(),
                Err(e) => errors.push(("address", e)),
            },
            None => errors.push(("address", "Must be a string".to_owned())),
        }
    }
    if let Some(v) = body.get("weight") {
        match v.as_u64() {
            Some(w @ 1..=255) => node.weight = w as u32,
            _ => errors.push(("weight", "Must be between 1 and 255".to_owned())),
        }
    }
    if let Some(v) = body.get("mode") {
        match v.as_str() {
            Some(m @ ("accept" | "reject" | "drain" | "backup")) => node.mode = m.to_owned(),
            _ => errors.push((
                "mode",
                "Must be one of accept, reject, drain, backup".to_owned(),
            )),
        }
    }
    let duplicate = s
        .nodes
        .iter()
        .any(|n| n.config_id == node.config_id && n.id != node.id && n.address == node.address);
    if s.reject_duplicate_address && duplicate && body.contains_key("address") {
        errors.push((
            "address",
            "This address is already used by a node of this config".to_owned(),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The JSON object a write carries, or the reason of its 400.
fn body_object<'a>(req: &Req<'a>) -> Result<&'a Map<String, Value>, &'static str> {
    match req.body {
        Some(Value::Object(m)) => Ok(m),
        _ if req.raw.is_empty() => Err("Request body is empty"),
        _ => Err("Invalid JSON"),
    }
}

/// `POST …/configs/{configId}/nodes`.
fn create(ctx: &Ctx, config_id: u64, req: &Req<'_>) -> Response {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(why) => return reply(400, &reason(why)),
    };
    let node = {
        let mut s = lock(&ctx.state);
        let mut node = LinodeNode {
            id: s.next_node_id,
            config_id,
            label: String::new(),
            address: String::new(),
            weight: 100,
            mode: "accept".to_owned(),
            subnet_id: None,
        };
        let mut errors = match apply_fields(&s, &mut node, body) {
            Ok(()) => Vec::new(),
            Err(e) => e,
        };
        for field in ["label", "address"] {
            if !body.contains_key(field) {
                errors.push((field, format!("{field} is required")));
            }
        }
        if !errors.is_empty() {
            return invalid(&errors);
        }
        s.next_node_id += 1;
        s.nodes.push(node.clone());
        node
    };
    sync(&ctx.state, &ctx.pools);
    let nb_id = lock(&ctx.state).nb.id;
    reply(200, &node_json(&ctx.pools, nb_id, &node))
}

/// `GET`/`PUT`/`DELETE …/nodes/{nodeId}`.
fn node_op(ctx: &Ctx, method: &str, config_id: u64, node_id: u64, req: &Req<'_>) -> Response {
    let found = {
        let s = lock(&ctx.state);
        s.nodes
            .iter()
            .find(|n| n.id == node_id && n.config_id == config_id)
            .cloned()
    };
    let Some(mut node) = found else {
        return error(404);
    };
    let nb_id = lock(&ctx.state).nb.id;
    match method {
        "GET" => reply(200, &node_json(&ctx.pools, nb_id, &node)),
        "PUT" => {
            let body = match body_object(req) {
                Ok(b) => b,
                Err(why) => return reply(400, &reason(why)),
            };
            {
                let mut s = lock(&ctx.state);
                if let Err(errors) = apply_fields(&s, &mut node, body) {
                    return invalid(&errors);
                }
                if let Some(n) = s.nodes.iter_mut().find(|n| n.id == node_id) {
                    *n = node.clone();
                }
            }
            sync(&ctx.state, &ctx.pools);
            reply(200, &node_json(&ctx.pools, nb_id, &node))
        }
        "DELETE" => {
            lock(&ctx.state).nodes.retain(|n| n.id != node_id);
            sync(&ctx.state, &ctx.pools);
            reply(200, &json!({}))
        }
        _ => error(404),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::lb::testkit::call;
    use super::super::lb::{TestBackend, ask, ask_once, wait_for};
    use super::*;

    const TOKEN: &str = "linode-test-token";

    fn fast() -> Model {
        Model {
            check_interval: Duration::from_millis(100),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            propagation: Duration::from_millis(200),
            response_timeout: Duration::from_millis(400),
        }
    }

    fn node(label: &str, address: &str) -> Value {
        json!({"label": label, "address": address, "mode": "accept"})
    }

    #[test]
    fn linode_nodes_health_drain_and_proxy() {
        let (b1, b2) = (TestBackend::start("n1"), TestBackend::start("n2"));
        let model = fast();
        let fake = FakeLinodeLb::start(TOKEN, LinodeNb::tcp(1234, "eu-central", 5678, 4222), model);
        // Bad requests on purpose: the provider's own refusals are tested.
        fake.contract().answer_as_provider(true);
        let base = fake.api_url();
        assert!(base.ends_with("/v4"));
        let nodes = format!("{base}/nodebalancers/1234/configs/5678/nodes");
        assert_eq!(ask_once(fake.frontend(), "hi"), None);

        let n1 = call(
            "POST",
            &nodes,
            Some(TOKEN),
            Some(node("node-1", &b1.client.to_string())),
        );
        assert_eq!(n1.status, 200, "{}", n1.text);
        let n1 = n1.json();
        assert_eq!(n1["status"], "Unknown");
        assert_eq!(n1["weight"], 100);
        assert_eq!(n1["mode"], "accept");
        assert_eq!(n1["config_id"], 5678);
        assert_eq!(n1["nodebalancer_id"], 1234);
        assert_eq!(n1["vpc_config_id"], Value::Null);
        let n2 = call(
            "POST",
            &nodes,
            Some(TOKEN),
            Some(node("node_2.b", &b2.client.to_string())),
        );
        assert_eq!(n2.status, 200, "{}", n2.text);
        assert!(fake.in_service().is_empty());

        let bad = |body: Value, field: &str| {
            let r = call("POST", &nodes, Some(TOKEN), Some(body));
            assert_eq!(r.status, 400, "{}", r.text);
            assert_eq!(r.json()["errors"][0]["field"], field, "{}", r.text);
        };
        bad(node("a b", "192.168.130.5:4222"), "label");
        bad(node("ab", "192.168.130.5:4222"), "label");
        bad(node("public", "8.8.8.8:4222"), "address");
        bad(node("noport", "192.168.130.5"), "address");
        bad(node("lan", "192.168.1.5:4222"), "address");
        bad(
            json!({"label": "heavy", "address": "192.168.130.5:4222", "weight": 0}),
            "weight",
        );
        bad(
            json!({"label": "moody", "address": "192.168.130.5:4222", "mode": "maybe"}),
            "mode",
        );
        bad(json!({"address": "192.168.130.5:4222"}), "label");
        assert_eq!(fake.nodes().len(), 2);

        let both = vec![b1.client.to_string(), b2.client.to_string()];
        assert!(
            wait_for(model.time_to_serve() * 2, || fake.in_service() == both),
            "{:?}",
            fake.nodes()
        );
        let list = call(
            "GET",
            &format!("{nodes}?page=1&page_size=25"),
            Some(TOKEN),
            None,
        );
        assert_eq!(list.status, 200);
        let list = list.json();
        assert_eq!(
            (
                list["page"].clone(),
                list["pages"].clone(),
                list["results"].clone()
            ),
            (json!(1), json!(1), json!(2))
        );
        assert_eq!(list["data"][0]["status"], "UP");
        let configs = call(
            "GET",
            &format!("{base}/nodebalancers/1234/configs"),
            Some(TOKEN),
            None,
        )
        .json();
        assert_eq!(
            configs["data"][0]["nodes_status"],
            json!({"up": 2, "down": 0})
        );
        assert_eq!(configs["data"][0]["check_path"], "/ready");
        let mut seen: Vec<String> = (0..4)
            .filter_map(|_| ask_once(fake.frontend(), "hi"))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec!["n1", "n2"]);

        // Drain n1: a connection already on it goes on, new ones go to n2.
        let mut held = loop {
            let mut c = std::net::TcpStream::connect(fake.frontend()).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            if ask(&mut c, "who").as_deref() == Some("n1") {
                break c;
            }
        };
        let n1_url = format!("{nodes}/{}", n1["id"]);
        let drained = call("PUT", &n1_url, Some(TOKEN), Some(json!({"mode": "drain"})));
        assert_eq!(drained.status, 200, "{}", drained.text);
        assert_eq!(drained.json()["mode"], "drain");
        std::thread::sleep(model.propagation * 2);
        for _ in 0..4 {
            assert_eq!(ask_once(fake.frontend(), "hi").as_deref(), Some("n2"));
        }
        assert_eq!(ask(&mut held, "still").as_deref(), Some("n1"));

        // n2 fails its checks: nothing takes new connections.
        b2.set_ready(false);
        assert!(wait_for(model.time_to_fail() * 2, || fake.in_service()
            == vec![b1.client.to_string()]));
        let n2_status = call(
            "GET",
            &format!("{nodes}/{}", n2.json()["id"]),
            Some(TOKEN),
            None,
        )
        .json();
        assert_eq!(n2_status["status"], "DOWN");
        assert_eq!(ask_once(fake.frontend(), "hi"), None);

        let del = call("DELETE", &n1_url, Some(TOKEN), None);
        assert_eq!((del.status, del.json()), (200, json!({})));
        let gone = call("GET", &n1_url, Some(TOKEN), None);
        assert_eq!(
            (gone.status, gone.json()),
            (404, json!({"errors": [{"reason": "Not found"}]}))
        );
        std::thread::sleep(model.propagation * 2);
        assert_eq!(ask(&mut held, "after").as_deref(), Some("n1"));

        let (ops, bodies): (Vec<String>, Vec<Option<Value>>) = fake.requests().into_iter().unzip();
        assert_eq!(ops[0], "POST /v4/nodebalancers/1234/configs/5678/nodes");
        assert_eq!(
            bodies[0].as_ref().map(|b| b["label"].clone()),
            Some(json!("node-1"))
        );
        let broken = fake.contract().take();
        assert!(
            broken
                .iter()
                .any(|v| v.contains("body.label: \"a b\" does not match")),
            "{broken:?}"
        );
    }

    #[test]
    fn linode_checks_go_to_the_node_port() {
        // A node whose port speaks only its own protocol, as nats-server's
        // client port does, never passes an HTTP check.
        let plain = TestBackend::plain("p");
        let model = fast();
        let fake = FakeLinodeLb::start(TOKEN, LinodeNb::tcp(1, "us-east", 2, 4222), model);
        let nodes = format!("{}/nodebalancers/1/configs/2/nodes", fake.api_url());
        let created = call(
            "POST",
            &nodes,
            Some(TOKEN),
            Some(node("plain", &plain.client.to_string())),
        );
        assert_eq!(created.status, 200, "{}", created.text);
        assert!(wait_for(
            model.time_to_fail() * 2,
            || fake.nodes()[0]["status"] == "DOWN"
        ));
        assert!(fake.in_service().is_empty());

        // A connection check passes.
        fake.state.lock().expect("state").nb.configs[0]["check"] = json!("connection");
        fake.sync();
        assert!(wait_for(
            model.time_to_serve() * 2,
            || fake.nodes()[0]["status"] == "UP"
        ));
        assert_eq!(ask_once(fake.frontend(), "hi").as_deref(), Some("p"));
    }

    #[test]
    fn linode_errors_and_address_rules() {
        let fake = FakeLinodeLb::start(TOKEN, LinodeNb::tcp(7, "eu-central", 8, 4222), fast());
        let base = fake.api_url();
        let nodes = format!("{base}/nodebalancers/7/configs/8/nodes");

        let denied = call("GET", &nodes, Some("nope"), None);
        assert_eq!(
            (denied.status, denied.json()),
            (401, json!({"errors": [{"reason": "Invalid Token"}]}))
        );
        assert_eq!(
            denied.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            call(
                "GET",
                &format!("{base}/nodebalancers/8/configs"),
                Some(TOKEN),
                None
            )
            .status,
            404
        );
        assert_eq!(
            call(
                "GET",
                &format!("{base}/nodebalancers/7/configs/9/nodes"),
                Some(TOKEN),
                None
            )
            .status,
            404
        );
        let small = call("GET", &format!("{nodes}?page_size=10"), Some(TOKEN), None);
        assert_eq!(small.status, 400);
        assert_eq!(small.json()["errors"][0]["field"], "page_size");
        let nb = call("GET", &format!("{base}/nodebalancers/7"), Some(TOKEN), None).json();
        assert_eq!(
            (nb["id"].clone(), nb["region"].clone()),
            (json!(7), json!("eu-central"))
        );

        // Linode's own private range; other RFC 1918 only for VPC nodes.
        let linode_private = call(
            "POST",
            &nodes,
            Some(TOKEN),
            Some(node("priv", "192.168.130.5:4222")),
        );
        assert_eq!(linode_private.status, 200, "{}", linode_private.text);
        let lan = call(
            "POST",
            &nodes,
            Some(TOKEN),
            Some(node("vpc", "10.0.0.5:4222")),
        );
        assert_eq!(lan.status, 400);
        let mut vpc = node("vpc", "10.0.0.5:4222");
        vpc["subnet_id"] = json!(241_169);
        let vpc = call("POST", &nodes, Some(TOKEN), Some(vpc));
        assert_eq!(vpc.status, 200, "{}", vpc.text);
        assert!(vpc.json()["vpc_config_id"].is_u64());
        fake.state.lock().expect("state").allow_loopback = false;
        let lo = call(
            "POST",
            &nodes,
            Some(TOKEN),
            Some(node("loop", "127.0.0.1:4222")),
        );
        assert_eq!(lo.status, 400);
        assert_eq!(lo.json()["errors"][0]["field"], "address");

        fake.state.lock().expect("state").busy = 1;
        let busy = call(
            "POST",
            &nodes,
            Some(TOKEN),
            Some(node("again", "192.168.130.6:4222")),
        );
        assert_eq!(
            (busy.status, busy.json()),
            (400, json!({"errors": [{"reason": "Linode busy."}]}))
        );
        let again = call(
            "POST",
            &nodes,
            Some(TOKEN),
            Some(node("again", "192.168.130.6:4222")),
        );
        assert_eq!(again.status, 200);

        {
            let mut s = fake.state.lock().expect("state");
            s.rate_limited = 1;
            s.retry_after_secs = 4;
        }
        let limited = call("GET", &nodes, Some(TOKEN), None);
        assert_eq!(limited.status, 429);
        assert_eq!(limited.json()["errors"][0]["reason"], "Too many requests");
        assert_eq!(limited.header("retry-after").as_deref(), Some("4"));
        assert_eq!(
            limited.header("x-ratelimit-remaining").as_deref(),
            Some("0")
        );
        assert!(limited.header("x-ratelimit-reset").is_some());

        fake.state.lock().expect("state").maintenance = true;
        let down = call("GET", &nodes, Some(TOKEN), None);
        assert_eq!(down.status, 503);
        assert_eq!(down.header("x-maintenance-mode").as_deref(), Some("true"));
        assert!(down.json()["errors"][0]["reason"].is_string());
        fake.state.lock().expect("state").maintenance = false;
        // A token with nodebalancers:read_only: writes 403, reads served.
        fake.state
            .lock()
            .expect("state")
            .forbidden
            .push("POST /v4/nodebalancers/".into());
        let refused = call(
            "POST",
            &nodes,
            Some(TOKEN),
            Some(node("readonly", "192.168.130.7:4222")),
        );
        assert_eq!(refused.status, 403);
        assert_eq!(
            refused.json(),
            json!({"errors": [{"reason": "Unauthorized"}]})
        );
        assert_eq!(
            call(
                "POST",
                &nodes,
                Some("wrong"),
                Some(node("readonly", "192.168.130.7:4222"))
            )
            .status,
            401
        );
        fake.state.lock().expect("state").forbidden.clear();
        let answered = fake.state.lock().expect("state").answered.clone();
        assert_eq!(
            answered
                .iter()
                .map(|(_, s)| *s)
                .rev()
                .take(4)
                .collect::<Vec<_>>(),
            vec![401, 403, 503, 429]
        );
        let ok = call("GET", &nodes, Some(TOKEN), None);
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("x-ratelimit-limit").as_deref(), Some("800"));
        assert_eq!(ok.json()["results"], 3);
        // Nothing off loopback is probed: those nodes never come UP.
        assert!(fake.in_service().is_empty());
    }
}
