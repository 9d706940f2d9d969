//! DigitalOcean's Load Balancer API (`/v2`, shared/reference/provider-apis.md
//! §1.1–1.7) over one load balancer, with a real data plane behind it
//! ([`super::lb`]): droplets added through the API become backends that are
//! health-checked and proxied to from [`FakeDoLb::frontend`].
//!
//! Routes: `GET /v2/load_balancers` and `GET /v2/load_balancers/{id}` (the
//! object with every field of the spec's example, `region` as a full region
//! object, `droplet_ids` the current members, `status` "active");
//! `POST`/`DELETE /v2/load_balancers/{id}/droplets` with
//! `{"droplet_ids":[…]}` (204); `POST`/`DELETE /v2/tags/{tag}/resources`
//! with `{"resources":[{"resource_id":"<id>","resource_type":"droplet"}]}`
//! (204); `GET /v2/droplets/{id}` (`{"droplet":{…}}` with `vpc_uuid`).
//! Anything else (among it `PUT`, the full update) is 404.
//!
//! Every request is logged (method, path and JSON body), then: while
//! `exhausted_until` (Unix seconds) is ahead, 429 without `retry-after`,
//! `ratelimit-remaining: 0` and `ratelimit-reset` that time (the hourly
//! window used up: "subsequent requests will receive a 429 error code
//! until the request reset has been reached"); a pending `rate_limited`
//! count answers 429 with `retry-after` (the burst limit); the [`Fault`]
//! applies; the token is checked (`Authorization: Bearer <token>`, else 401
//! `unauthorized`); an operation in `forbidden` gets 403 `forbidden` "You
//! are not authorized to perform this operation" (a custom-scoped token
//! without its scope); then the route. Every answer carries
//! `ratelimit-limit`, `ratelimit-remaining` and `ratelimit-reset`; bodies
//! are JSON in the `{"id","message","request_id"?}` shape. Each answer's
//! time and status is kept in `answered`.
//!
//! Choices where the reference finds nothing (§6):
//! * Adding a droplet already attached, or removing one that is not, is a
//!   204 no-op (the reference's recommendation); with
//!   `strict_membership` both are 422 `unprocessable_entity` instead, so a
//!   daemon can be tested against either.
//! * A droplet id the account does not have (not in `droplets`) is 404
//!   `not_found` with the generic message, for droplet and tag writes alike.
//!   Nothing in the request is applied then.
//! * A tag-based load balancer answers droplet writes 422
//!   `unprocessable_entity` (the spec's prose); its members are the droplets
//!   carrying its tag, shown in `droplet_ids` (as the spec's
//!   `load_balancer_using_tag_response` example does).
//! * After each successful droplet write the load balancer "processes" for
//!   `processing`: droplet writes then get 403 `forbidden` "Load Balancer
//!   can't be updated while it processes previous actions" (the message
//!   seen in the field), while GET keeps showing `status` "active" (the
//!   spec's `new` is for a load balancer being created, and DO's own CCM
//!   treats any status but `active` as an error). Tag writes are droplet
//!   operations, never refused for this, and start no processing window.
//! * A body that is not JSON, or whose `droplet_ids` are not integers, is
//!   400 `bad_request` "error parsing request body" (Go's decoder fails);
//!   a body without `droplet_ids`, or an empty list, is 422.
//! * Tags exist when they are keys of `tags` (the load balancer's own tag
//!   from the start); a write to another tag is 404. Resources that are not
//!   droplets are accepted and ignored.
//! * The backend of a member: its private IP from `droplets`, the client
//!   port from the first forwarding rule's `target_port`, the check from
//!   `health_check` (`http`: GET `path` on `port`; `tcp`: connect to
//!   `port`; `https` cannot be probed here and never passes). Check timing
//!   comes from the [`Model`], not from the `*_seconds` fields.
//! * VPCs: every droplet is in the balancer's VPC unless `droplet_vpcs`
//!   names another; a member in another VPC is unreachable (its checks
//!   fail), as the balancer reaches only its own VPC's private network.
//!   `droplet_read_forbidden` answers droplet reads 403 `forbidden` (a
//!   token without `droplet:read`). The droplet object carries the spec's
//!   required fields (image and size as small valid objects) and
//!   `vpc_uuid`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::contract::{Contract, Guard};
use super::lb::{Model, Pool, Probe, Running, Target};
use super::openapi::Spec;
use super::{Fault, Shared};

/// The load balancer as the test sets it up.
#[derive(Debug, Clone, PartialEq)]
pub struct DoLb {
    /// Its UUID.
    pub id: String,
    /// Region slug, e.g. `fra1`.
    pub region: String,
    /// Droplet tag for a tag-based load balancer, `""` otherwise.
    pub tag: String,
    /// As the API shows them; the first one's `target_port` is where
    /// client connections go.
    pub forwarding_rules: Vec<Value>,
    /// As the API shows it (`protocol`, `port`, `path`, …).
    pub health_check: Value,
    /// Its VPC's UUID.
    pub vpc_uuid: String,
    /// `EXTERNAL` or `INTERNAL`.
    pub network: String,
    /// What reads show: `active`, or the spec's `new` (being created) and
    /// `errored`.
    pub status: String,
}

impl DoLb {
    /// A TCP load balancer on entry port 4222 forwarding to `client_port`,
    /// checking `GET /ready` on `health_port`, with the default [`Model`]'s
    /// timing shown in the health check.
    pub fn tcp(id: &str, region: &str, client_port: u16, health_port: u16) -> Self {
        let m = Model::default();
        Self {
            id: id.to_owned(),
            region: region.to_owned(),
            tag: String::new(),
            forwarding_rules: vec![json!({
                "entry_protocol": "tcp", "entry_port": 4222,
                "target_protocol": "tcp", "target_port": client_port,
                "certificate_id": "", "tls_passthrough": false,
            })],
            health_check: json!({
                "protocol": "http", "port": health_port, "path": "/ready",
                "check_interval_seconds": Model::secs(m.check_interval),
                "response_timeout_seconds": Model::secs(m.response_timeout),
                "unhealthy_threshold": m.unhealthy_threshold,
                "healthy_threshold": m.healthy_threshold,
            }),
            vpc_uuid: "c33931f2-a26a-4e61-b85c-4e95a2ec431b".to_owned(),
            network: "EXTERNAL".to_owned(),
            status: "active".to_owned(),
        }
    }

    /// The same with `model`'s timing shown in the health check (what the
    /// data plane uses in any case).
    pub fn with_model(mut self, model: &Model) -> Self {
        let hc = &mut self.health_check;
        hc["check_interval_seconds"] = json!(Model::secs(model.check_interval));
        hc["response_timeout_seconds"] = json!(Model::secs(model.response_timeout));
        hc["unhealthy_threshold"] = json!(model.unhealthy_threshold);
        hc["healthy_threshold"] = json!(model.healthy_threshold);
        self
    }

    /// The same, assigning droplets by `tag`.
    pub fn with_tag(mut self, tag: &str) -> Self {
        self.tag = tag.to_owned();
        self
    }
}

/// The fake's state; change it while it runs (call [`FakeDoLb::sync`]
/// after changing membership or the load balancer's rules here).
#[derive(Debug)]
pub struct DoLbState {
    /// The only token accepted.
    pub token: String,
    /// The load balancer.
    pub lb: DoLb,
    /// The account's droplets: id and the private IP the balancer reaches.
    pub droplets: Vec<(u64, IpAddr)>,
    /// Droplets in a VPC other than the balancer's.
    pub droplet_vpcs: BTreeMap<u64, String>,
    /// Droplet reads are refused 403 (the token lacks `droplet:read`).
    pub droplet_read_forbidden: bool,
    /// Droplets attached by id (an id-based load balancer's members), in
    /// the order added.
    pub droplet_ids: Vec<u64>,
    /// Tags and the droplets carrying them.
    pub tags: BTreeMap<String, Vec<u64>>,
    /// How long the load balancer processes a droplet write.
    pub processing: Duration,
    /// Until when it processes (writes get 403).
    pub processing_until: Option<Instant>,
    /// Refuse adding an attached droplet or removing a detached one (422).
    pub strict_membership: bool,
    /// Misbehaviour, with error bodies in DigitalOcean's shape.
    pub fault: Fault,
    /// The next this many requests get 429.
    pub rate_limited: u32,
    /// `retry-after` on a 429.
    pub retry_after_secs: u64,
    /// Until this Unix time every request gets 429 without `retry-after`
    /// (the hourly window exhausted; `ratelimit-reset` says when it ends).
    pub exhausted_until: Option<u64>,
    /// Operations refused 403 for want of a scope, each `METHOD
    /// /path-prefix` (`POST /v2/load_balancers/` for a token without
    /// `load_balancer:update`).
    pub forbidden: Vec<String>,
    /// When each answer left and its status, in order.
    pub answered: Vec<(SystemTime, u16)>,
    /// Every request in order: `POST /v2/load_balancers/{id}/droplets` and
    /// its body (JSON, or a string when it was not JSON; `None` if empty).
    pub requests: Vec<(String, Option<Value>)>,
    /// Every `Authorization` header received.
    pub authorization_seen: Vec<String>,
}

impl DoLbState {
    /// The load balancer's members now.
    pub fn members(&self) -> Vec<u64> {
        if self.lb.tag.is_empty() {
            self.droplet_ids.clone()
        } else {
            self.tags.get(&self.lb.tag).cloned().unwrap_or_default()
        }
    }
}

/// A running fake.
pub struct FakeDoLb {
    /// Its state.
    pub state: Shared<DoLbState>,
    pool: Pool,
    running: Running,
    // Last: looks once the server has stopped.
    contract: Guard,
}

struct Ctx {
    state: Shared<DoLbState>,
    contract: Arc<Contract>,
    pool: Pool,
    started: u64,
    serial: AtomicU64,
}

impl FakeDoLb {
    /// Serves `lb` for `token`; `droplets` are the account's droplets and
    /// their private IPs.
    pub fn start(token: &str, lb: DoLb, droplets: Vec<(u64, IpAddr)>, model: Model) -> Self {
        Self::start_in(token, lb, droplets, model, None)
    }

    /// As [`FakeDoLb::start`], in the network namespace at `netns`.
    pub fn start_in(
        token: &str,
        lb: DoLb,
        droplets: Vec<(u64, IpAddr)>,
        model: Model,
        netns: Option<std::path::PathBuf>,
    ) -> Self {
        let mut tags = BTreeMap::new();
        if !lb.tag.is_empty() {
            tags.insert(lb.tag.clone(), Vec::new());
        }
        let state = Arc::new(Mutex::new(DoLbState {
            token: token.to_owned(),
            lb,
            droplets,
            droplet_vpcs: BTreeMap::new(),
            droplet_read_forbidden: false,
            droplet_ids: Vec::new(),
            tags,
            processing: Duration::from_millis(300),
            processing_until: None,
            strict_membership: false,
            fault: Fault::None,
            rate_limited: 0,
            retry_after_secs: 1,
            exhausted_until: None,
            forbidden: Vec::new(),
            answered: Vec::new(),
            requests: Vec::new(),
            authorization_seen: Vec::new(),
        }));
        let pool = Pool::new(model);
        let contract = Contract::new(Some(Spec::DigitalOcean));
        let ctx = Arc::new(Ctx {
            state: state.clone(),
            contract: contract.clone(),
            pool: pool.clone(),
            started: super::lb::unix_now(),
            serial: AtomicU64::new(0),
        });
        let router = Router::new().fallback(handle).with_state(ctx);
        let running = Running::start(router, vec![pool.clone()], netns);
        Self {
            state,
            pool,
            running,
            contract: Guard(contract),
        }
    }

    /// What the in-flight check of the provider's contract found.
    pub fn contract(&self) -> &Contract {
        &self.contract.0
    }

    /// The API base URL (`http://127.0.0.1:P`).
    pub fn api_url(&self) -> String {
        self.running.url()
    }

    /// Where clients connect: the balancer's TCP frontend.
    pub fn frontend(&self) -> SocketAddr {
        self.running.frontend(0).expect("frontend")
    }

    /// The load balancer's members (what `droplet_ids` shows).
    pub fn registered(&self) -> Vec<u64> {
        lock(&self.state).members()
    }

    /// Members the balancer sends new connections to now.
    pub fn in_service(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .pool
            .in_service()
            .iter()
            .filter_map(|k| k.parse().ok())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The data plane underneath (health, connections).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Requests so far (`METHOD /path`, body).
    pub fn requests(&self) -> Vec<(String, Option<Value>)> {
        lock(&self.state).requests.clone()
    }

    /// Hands the state's membership and rules to the data plane (after
    /// `propagation`), as the API does after each write.
    pub fn sync(&self) {
        sync(&self.state, &self.pool);
    }
}

fn lock(state: &Shared<DoLbState>) -> MutexGuard<'_, DoLbState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tells the pool what the members and rules are now.
fn sync(state: &Shared<DoLbState>, pool: &Pool) {
    let targets: Vec<(String, Target)> = {
        let s = lock(state);
        let port =
            s.lb.forwarding_rules
                .first()
                .and_then(|r| r["target_port"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(80);
        let probe = probe_of(&s.lb.health_check);
        s.members()
            .into_iter()
            .filter_map(|id| {
                let ip = s.droplets.iter().find(|(d, _)| *d == id)?.1;
                // Outside the balancer's VPC nothing answers its checks.
                let probe = match s.droplet_vpcs.get(&id) {
                    Some(vpc) if *vpc != s.lb.vpc_uuid => {
                        Probe::Unsupported(format!("droplet {id} is in VPC {vpc}"))
                    }
                    _ => probe.clone(),
                };
                let target = Target::new(SocketAddr::new(ip, port), probe);
                Some((id.to_string(), target))
            })
            .collect()
    };
    for old in pool.registered() {
        if !targets.iter().any(|(k, _)| *k == old) {
            pool.remove(&old);
        }
    }
    for (key, target) in targets {
        pool.set(&key, target);
    }
}

/// The health check as a probe, with the spec's defaults.
fn probe_of(hc: &Value) -> Probe {
    let port = hc["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(80);
    match hc["protocol"].as_str().unwrap_or("http") {
        "tcp" => Probe::Tcp { port },
        "http" => Probe::Http {
            port,
            path: hc["path"].as_str().unwrap_or("/").to_owned(),
            body: None,
        },
        other => Probe::Unsupported(format!("{other} health checks")),
    }
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
    let (exhausted, fault, limited, token, forbidden) = {
        let mut s = lock(&ctx.state);
        let logged = super::logged_body(body, parsed.as_ref());
        s.requests.push((format!("{method} {path}"), logged));
        s.authorization_seen.extend(super::authorization(headers));
        let s = &mut *s;
        let exhausted = s
            .exhausted_until
            .filter(|until| super::lb::unix_now() < *until);
        let (fault, limited) = if exhausted.is_some() {
            (Fault::None, false)
        } else {
            super::next_fault(&mut s.rate_limited, &mut s.fault)
        };
        let forbidden = super::forbidden(&s.forbidden, method.as_str(), &path);
        (exhausted, fault, limited, s.token.clone(), forbidden)
    };
    if let Some(until) = exhausted {
        let mut r = error(ctx, 429);
        r.extensions_mut().insert(Exhausted(until));
        return r;
    }
    let rid = request_id(ctx);
    if let Some(r) = super::gate(
        limited,
        &fault,
        headers,
        &token,
        |status| error(ctx, status),
        |status| (error_body(status, &rid).to_string(), CONTENT_TYPE),
        r#"{"load_balancer":"none","links":7}"#,
    )
    .await
    {
        return r;
    }
    if forbidden {
        return fail(
            ctx,
            403,
            "forbidden",
            "You are not authorized to perform this operation",
        );
    }
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let lb_id = lock(&ctx.state).lb.id.clone();
    let add = method == Method::POST;
    let write = method == Method::POST || method == Method::DELETE;
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["v2", "load_balancers"]) => list(ctx, uri),
        ("GET", ["v2", "load_balancers", id]) if *id == lb_id => {
            reply(200, &json!({"load_balancer": lb_json(ctx)}))
        }
        (_, ["v2", "load_balancers", id, "droplets"]) if write && *id == lb_id => {
            droplets(ctx, add, body, parsed.as_ref())
        }
        ("GET", ["v2", "droplets", id]) => droplet(ctx, id),
        (_, ["v2", "tags", tag, "resources"]) if write => {
            tag_resources(ctx, add, tag, body, parsed.as_ref())
        }
        _ => error(ctx, 404),
    }
}

const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Marks a 429 of the exhausted window, which ends at this Unix time.
#[derive(Clone, Copy)]
struct Exhausted(u64);

/// Rate-limit headers on every answer (5,000 an hour), `retry-after` on a
/// burst 429; JSON content type on every body.
fn finish(ctx: &Ctx, mut resp: Response) -> Response {
    let (count, retry) = {
        let mut s = lock(&ctx.state);
        s.answered.push((SystemTime::now(), resp.status().as_u16()));
        (s.requests.len() as u64, s.retry_after_secs)
    };
    let exhausted = resp.extensions().get::<Exhausted>().map(|e| e.0);
    let limited = resp.status() == StatusCode::TOO_MANY_REQUESTS;
    let now = super::lb::unix_now();
    let has_body = resp.status() != StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    if has_body {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    }
    let (remaining, reset) = match exhausted {
        Some(until) => (0, until),
        None if limited => (0, now + retry),
        None => (5000u64.saturating_sub(count), ctx.started + 3600),
    };
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set("ratelimit-limit", "5000".into());
    set("ratelimit-remaining", remaining.to_string());
    set("ratelimit-reset", reset.to_string());
    // Only the burst limit's 429 says `retry-after`.
    if limited && exhausted.is_none() {
        set("retry-after", retry.to_string());
    }
    resp
}

// Errors ---------------------------------------------------------------------

/// The spec's example body for `status`.
fn error_body(status: u16, request_id: &str) -> Value {
    let (id, message) = match status {
        400 => ("bad_request", "error parsing request body"),
        401 => ("unauthorized", "Unable to authenticate you."),
        403 => (
            "forbidden",
            "You do not have access for the attempted action.",
        ),
        404 => (
            "not_found",
            "The resource you requested could not be found.",
        ),
        409 => (
            "conflict",
            "The request could not be completed due to a conflict.",
        ),
        422 => ("unprocessable_entity", "request payload validation failed"),
        429 => ("too_many_requests", "API rate limit exceeded."),
        500..=599 => ("server_error", "Unexpected server-side error"),
        _ => ("example_error", "some error message"),
    };
    body(id, message, status, request_id)
}

fn body(id: &str, message: &str, status: u16, request_id: &str) -> Value {
    let mut v = json!({"id": id, "message": message});
    if matches!(status, 400 | 403 | 422) || status >= 500 {
        v["request_id"] = json!(request_id);
    }
    v
}

fn reply(status: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, body.to_string()).into_response()
}

fn error(ctx: &Ctx, status: u16) -> Response {
    reply(status, &error_body(status, &request_id(ctx)))
}

fn fail(ctx: &Ctx, status: u16, id: &str, message: &str) -> Response {
    reply(status, &body(id, message, status, &request_id(ctx)))
}

fn request_id(ctx: &Ctx) -> String {
    let n = ctx.serial.fetch_add(1, Ordering::SeqCst) + 1;
    format!("f80013f6-{:04x}-4c3e-8a51-{:012x}", ctx.started & 0xffff, n)
}

// Reads ----------------------------------------------------------------------

/// The region object a read shows.
fn region_json(slug: &str) -> Value {
    let name = match slug {
        "nyc1" => "New York 1",
        "nyc2" => "New York 2",
        "nyc3" => "New York 3",
        "ams3" => "Amsterdam 3",
        "sfo2" => "San Francisco 2",
        "sfo3" => "San Francisco 3",
        "sgp1" => "Singapore 1",
        "lon1" => "London 1",
        "fra1" => "Frankfurt 1",
        "tor1" => "Toronto 1",
        "blr1" => "Bangalore 1",
        "syd1" => "Sydney 1",
        "atl1" => "Atlanta 1",
        _ => slug,
    };
    json!({
        "name": name,
        "slug": slug,
        "sizes": ["s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-2gb", "s-2vcpu-4gb", "s-4vcpu-8gb"],
        "features": ["private_networking", "backups", "ipv6", "metadata", "install_agent"],
        "available": true,
    })
}

fn lb_json(ctx: &Ctx) -> Value {
    let s = lock(&ctx.state);
    let lb = &s.lb;
    json!({
        "id": lb.id,
        "name": format!("natsmesh-{}", lb.region),
        "ip": "127.0.0.1",
        "size_unit": 1,
        "size": "lb-small",
        "algorithm": "round_robin",
        "status": lb.status,
        "created_at": super::lb::rfc3339(ctx.started),
        "forwarding_rules": lb.forwarding_rules,
        "health_check": lb.health_check,
        "sticky_sessions": {"type": "none"},
        "region": region_json(&lb.region),
        "tag": lb.tag,
        "droplet_ids": s.members(),
        "redirect_http_to_https": false,
        "enable_proxy_protocol": false,
        "enable_backend_keepalive": false,
        "http_idle_timeout_seconds": 60,
        "vpc_uuid": lb.vpc_uuid,
        "project_id": "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30",
        "disable_lets_encrypt_dns_records": false,
        "firewall": {"deny": [], "allow": []},
        "network": lb.network,
        "network_stack": "IPV4",
        "type": "REGIONAL",
        "tls_cipher_policy": "DEFAULT",
    })
}

/// `GET /v2/droplets/{id}`: what the spec's droplet model says of one of
/// the account's droplets.
fn droplet(ctx: &Ctx, id: &str) -> Response {
    let s = lock(&ctx.state);
    if s.droplet_read_forbidden {
        drop(s);
        return fail(
            ctx,
            403,
            "forbidden",
            "You do not have access for the attempted action.",
        );
    }
    let Some((id, ip)) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| s.droplets.iter().find(|(d, _)| *d == id).copied())
    else {
        drop(s);
        return error(ctx, 404);
    };
    let vpc = s
        .droplet_vpcs
        .get(&id)
        .cloned()
        .unwrap_or_else(|| s.lb.vpc_uuid.clone());
    let body = json!({"droplet": {
        "id": id,
        "name": format!("droplet-{id}"),
        "memory": 1024,
        "vcpus": 1,
        "disk": 25,
        "locked": false,
        "status": "active",
        "created_at": super::lb::rfc3339(ctx.started),
        "features": ["private_networking"],
        "backup_ids": [],
        "next_backup_window": null,
        "snapshot_ids": [],
        "volume_ids": [],
        "size_slug": "s-1vcpu-1gb",
        // Required by the spec, read by nobody here.
        "image": {"id": 129_211_873, "name": "12 x64", "distribution": "Debian", "slug": "debian-12-x64", "public": true, "regions": [s.lb.region], "type": "base", "min_disk_size": 7, "size_gigabytes": 2.4, "status": "available", "tags": []},
        "size": {"slug": "s-1vcpu-1gb", "memory": 1024, "vcpus": 1, "disk": 25, "transfer": 1.0, "price_monthly": 6.0, "price_hourly": 0.00893, "regions": [s.lb.region], "available": true, "description": "Basic"},
        "networks": {"v4": [{"ip_address": ip.to_string(), "netmask": "255.255.240.0", "gateway": "10.116.0.1", "type": "private"}], "v6": []},
        "region": region_json(&s.lb.region),
        "tags": s.tags.iter().filter(|(_, ds)| ds.contains(&id)).map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        "vpc_uuid": vpc,
    }});
    reply(200, &body)
}

/// `GET /v2/load_balancers`: the one load balancer, paginated.
fn list(ctx: &Ctx, uri: &Uri) -> Response {
    let q = super::lb::query(uri);
    let num = |key: &str| {
        q.iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<usize>().ok())
    };
    let per_page = num("per_page").unwrap_or(20).clamp(1, 200);
    let page = num("page").unwrap_or(1).max(1);
    let all = [lb_json(ctx)];
    let items: Vec<&Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    reply(
        200,
        &json!({"load_balancers": items, "links": {}, "meta": {"total": all.len()}}),
    )
}

// Writes ---------------------------------------------------------------------

/// Why a write is refused: (status, id, message); `None` for the generic
/// body of the status.
type Refusal = (u16, Option<(&'static str, String)>);

/// `POST`/`DELETE /v2/load_balancers/{id}/droplets`.
fn droplets(ctx: &Ctx, add: bool, raw: &[u8], body: Option<&Value>) -> Response {
    let outcome = {
        let mut s = lock(&ctx.state);
        droplet_write(&mut s, add, raw, body)
    };
    match outcome {
        Ok(()) => {
            sync(&ctx.state, &ctx.pool);
            StatusCode::NO_CONTENT.into_response()
        }
        Err((status, None)) => error(ctx, status),
        Err((status, Some((id, message)))) => fail(ctx, status, id, &message),
    }
}

fn droplet_write(
    s: &mut DoLbState,
    add: bool,
    raw: &[u8],
    body: Option<&Value>,
) -> Result<(), Refusal> {
    if !s.lb.tag.is_empty() {
        return Err((
            422,
            Some((
                "unprocessable_entity",
                "Individual Droplets can not be added to or removed from a load balancer configured with a Droplet tag.".to_owned(),
            )),
        ));
    }
    if s.processing_until.is_some_and(|t| Instant::now() < t) {
        return Err((
            403,
            Some((
                "forbidden",
                "Load Balancer can't be updated while it processes previous actions".to_owned(),
            )),
        ));
    }
    let Some(body) = body.and_then(Value::as_object) else {
        return Err((if raw.is_empty() { 422 } else { 400 }, None));
    };
    let ids: Vec<u64> = match body.get("droplet_ids") {
        None | Some(Value::Null) => return Err((422, None)),
        Some(Value::Array(a)) => {
            let ids: Option<Vec<u64>> = a.iter().map(Value::as_u64).collect();
            ids.ok_or((400, None))?
        }
        Some(_) => return Err((400, None)),
    };
    if ids.is_empty() {
        return Err((422, None));
    }
    if ids
        .iter()
        .any(|id| !s.droplets.iter().any(|(d, _)| d == id))
    {
        return Err((404, None));
    }
    for id in &ids {
        let attached = s.droplet_ids.contains(id);
        if s.strict_membership && attached == add {
            let message = if add {
                format!("droplet {id} is already assigned to this load balancer")
            } else {
                format!("droplet {id} is not assigned to this load balancer")
            };
            return Err((422, Some(("unprocessable_entity", message))));
        }
    }
    for id in ids {
        if add && !s.droplet_ids.contains(&id) {
            s.droplet_ids.push(id);
        } else if !add {
            s.droplet_ids.retain(|d| *d != id);
        }
    }
    s.processing_until = Some(Instant::now() + s.processing);
    Ok(())
}

/// `POST`/`DELETE /v2/tags/{tag}/resources`.
fn tag_resources(ctx: &Ctx, add: bool, tag: &str, raw: &[u8], body: Option<&Value>) -> Response {
    let outcome = {
        let mut s = lock(&ctx.state);
        tag_write(&mut s, add, tag, raw, body)
    };
    match outcome {
        Ok(()) => {
            sync(&ctx.state, &ctx.pool);
            StatusCode::NO_CONTENT.into_response()
        }
        Err((status, None)) => error(ctx, status),
        Err((status, Some((id, message)))) => fail(ctx, status, id, &message),
    }
}

fn tag_write(
    s: &mut DoLbState,
    add: bool,
    tag: &str,
    raw: &[u8],
    body: Option<&Value>,
) -> Result<(), Refusal> {
    if !s.tags.contains_key(tag) {
        return Err((404, None));
    }
    let Some(body) = body.and_then(Value::as_object) else {
        return Err((if raw.is_empty() { 422 } else { 400 }, None));
    };
    let Some(resources) = body.get("resources").and_then(Value::as_array) else {
        return Err((422, None));
    };
    let mut ids = Vec::new();
    for r in resources {
        let (Some(id), Some(kind)) = (r["resource_id"].as_str(), r["resource_type"].as_str())
        else {
            // A number where the spec says string fails Go's decoder.
            return Err((400, None));
        };
        match kind {
            "droplet" => match id.parse::<u64>() {
                Ok(n) if s.droplets.iter().any(|(d, _)| *d == n) => ids.push(n),
                _ => return Err((404, None)),
            },
            "image" | "volume" | "volume_snapshot" | "database" => {}
            _ => {
                let message = format!("resource_type {kind} is not supported");
                return Err((422, Some(("unprocessable_entity", message))));
            }
        }
    }
    let tagged = s.tags.entry(tag.to_owned()).or_default();
    for id in ids {
        if add && !tagged.contains(&id) {
            tagged.push(id);
        } else if !add {
            tagged.retain(|d| *d != id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::lb::testkit::call;
    use super::super::lb::{TestBackend, ask, ask_once, wait_for};
    use super::*;

    const TOKEN: &str = "dop_v1_test";
    const LB: &str = "4de7ac8b-495b-4884-9a69-1050c6793cd6";

    fn fast() -> Model {
        Model {
            check_interval: Duration::from_millis(100),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            propagation: Duration::from_millis(200),
            response_timeout: Duration::from_millis(400),
        }
    }

    /// Two backends on 127.0.0.1 and 127.0.0.2 sharing client and health
    /// ports (a forwarding rule has one target port for every droplet).
    fn two_backends() -> (TestBackend, TestBackend) {
        for _ in 0..20 {
            let a = TestBackend::start("b1");
            if let Some(b) = TestBackend::start_on(
                "b2",
                IpAddr::from([127, 0, 0, 2]),
                a.client.port(),
                a.health.port(),
            ) {
                return (a, b);
            }
        }
        panic!("no common free ports on 127.0.0.1 and 127.0.0.2");
    }

    fn droplets() -> Vec<(u64, IpAddr)> {
        vec![
            (101, IpAddr::from([127, 0, 0, 1])),
            (102, IpAddr::from([127, 0, 0, 2])),
            (103, IpAddr::from([127, 0, 0, 3])),
        ]
    }

    #[test]
    fn do_lb_registration_health_and_proxy() {
        let (b1, _b2) = two_backends();
        let model = fast();
        let lb = DoLb::tcp(LB, "fra1", b1.client.port(), b1.health.port()).with_model(&model);
        let fake = FakeDoLb::start(TOKEN, lb, droplets(), model);
        // Bad requests on purpose: the provider's own refusals are tested.
        fake.contract().answer_as_provider(true);
        fake.state.lock().expect("state").processing = Duration::from_secs(1);
        let url = format!("{}/v2/load_balancers/{LB}", fake.api_url());
        let members = format!("{url}/droplets");

        // No backend yet: a client is turned away at once.
        assert_eq!(ask_once(fake.frontend(), "hi"), None);

        let got = call("GET", &url, Some(TOKEN), None);
        assert_eq!(got.status, 200, "{}", got.text);
        let v = got.json()["load_balancer"].clone();
        assert_eq!(v["status"], "active");
        assert_eq!(v["droplet_ids"], json!([]));
        assert_eq!(v["region"]["slug"], "fra1");
        assert_eq!(v["region"]["name"], "Frankfurt 1");
        assert_eq!(v["forwarding_rules"][0]["target_port"], b1.client.port());
        assert_eq!(v["health_check"]["path"], "/ready");
        assert_eq!(v["health_check"]["check_interval_seconds"], 1);
        assert_eq!(v["health_check"]["healthy_threshold"], 2);
        assert_eq!(got.header("ratelimit-limit").as_deref(), Some("5000"));

        let add = call(
            "POST",
            &members,
            Some(TOKEN),
            Some(json!({"droplet_ids": [101]})),
        );
        assert_eq!(add.status, 204, "{}", add.text);
        assert!(add.header("ratelimit-remaining").is_some());
        // Known only after propagation, in service only after the checks.
        assert!(fake.in_service().is_empty());
        let busy = call(
            "POST",
            &members,
            Some(TOKEN),
            Some(json!({"droplet_ids": [102]})),
        );
        assert_eq!(busy.status, 403);
        assert_eq!(busy.json()["id"], "forbidden");
        assert_eq!(
            busy.json()["message"],
            "Load Balancer can't be updated while it processes previous actions"
        );
        assert!(busy.json()["request_id"].is_string());
        // The window ends; later writes here start none.
        std::thread::sleep(Duration::from_millis(1050));
        fake.state.lock().expect("state").processing = Duration::ZERO;
        let add = call(
            "POST",
            &members,
            Some(TOKEN),
            Some(json!({"droplet_ids": [102]})),
        );
        assert_eq!(add.status, 204, "{}", add.text);
        assert_eq!(fake.registered(), vec![101, 102]);
        let v = call("GET", &url, Some(TOKEN), None).json();
        assert_eq!(v["load_balancer"]["droplet_ids"], json!([101, 102]));

        let limit = model.time_to_serve() * 2;
        assert!(
            wait_for(limit, || fake.in_service() == vec![101, 102]),
            "in service: {:?}",
            fake.in_service()
        );
        // Round robin over both.
        let mut seen: Vec<String> = (0..4)
            .filter_map(|_| ask_once(fake.frontend(), "hi"))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec!["b1", "b2"]);

        // A connection held open to b1 outlives b1's failing checks.
        let mut held = loop {
            let mut c = std::net::TcpStream::connect(fake.frontend()).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            if ask(&mut c, "who").as_deref() == Some("b1") {
                break c;
            }
        };
        b1.set_ready(false);
        assert!(
            wait_for(model.time_to_fail() * 2, || fake.in_service() == vec![102]),
            "in service: {:?}",
            fake.in_service()
        );
        for _ in 0..3 {
            assert_eq!(ask_once(fake.frontend(), "hi").as_deref(), Some("b2"));
        }
        assert_eq!(ask(&mut held, "still").as_deref(), Some("b1"));

        // Removing b2 leaves nothing in service: clients are refused.
        let del = call(
            "DELETE",
            &members,
            Some(TOKEN),
            Some(json!({"droplet_ids": [102]})),
        );
        assert_eq!(del.status, 204, "{}", del.text);
        assert!(wait_for(model.propagation * 3, || fake
            .in_service()
            .is_empty()));
        assert_eq!(ask_once(fake.frontend(), "hi"), None);

        // Idempotent writes; unknown droplets.
        let again = call(
            "POST",
            &members,
            Some(TOKEN),
            Some(json!({"droplet_ids": [101]})),
        );
        assert_eq!(again.status, 204);
        let absent = call(
            "DELETE",
            &members,
            Some(TOKEN),
            Some(json!({"droplet_ids": [103]})),
        );
        assert_eq!(absent.status, 204);
        let unknown = call(
            "POST",
            &members,
            Some(TOKEN),
            Some(json!({"droplet_ids": [999]})),
        );
        assert_eq!(unknown.status, 404);
        assert_eq!(unknown.json()["id"], "not_found");
        let bad = call(
            "POST",
            &members,
            Some(TOKEN),
            Some(json!({"droplet_ids": ["x"]})),
        );
        assert_eq!(bad.status, 400);
        assert_eq!(bad.json()["id"], "bad_request");
        fake.state.lock().expect("state").strict_membership = true;
        let strict = call(
            "POST",
            &members,
            Some(TOKEN),
            Some(json!({"droplet_ids": [101]})),
        );
        assert_eq!(strict.status, 422);
        assert_eq!(fake.registered(), vec![101]);

        let (ops, bodies): (Vec<String>, Vec<Option<Value>>) = fake.requests().into_iter().unzip();
        assert_eq!(ops[0], format!("GET /v2/load_balancers/{LB}"));
        assert_eq!(bodies[0], None);
        let first_add = ops
            .iter()
            .position(|o| *o == format!("POST /v2/load_balancers/{LB}/droplets"))
            .expect("logged");
        assert_eq!(bodies[first_add], Some(json!({"droplet_ids": [101]})));
        assert!(ops.contains(&format!("DELETE /v2/load_balancers/{LB}/droplets")));
        let broken = fake.contract().take();
        assert!(
            broken
                .iter()
                .any(|v| v.contains("droplet_ids[0]: \"x\" is not of type integer")),
            "{broken:?}"
        );
    }

    #[test]
    fn do_lb_auth_rate_limit_and_errors() {
        let fake = FakeDoLb::start(TOKEN, DoLb::tcp(LB, "nyc3", 4222, 8222), droplets(), fast());
        let url = format!("{}/v2/load_balancers/{LB}", fake.api_url());
        let denied = call("GET", &url, Some("dop_v1_wrong"), None);
        assert_eq!(denied.status, 401);
        assert_eq!(
            denied.json(),
            json!({"id": "unauthorized", "message": "Unable to authenticate you."})
        );
        assert!(denied.header("ratelimit-reset").is_some());
        let missing = call("GET", &format!("{url}x"), Some(TOKEN), None);
        assert_eq!(missing.status, 404);
        assert_eq!(missing.json()["id"], "not_found");
        {
            let mut s = fake.state.lock().expect("state");
            s.rate_limited = 1;
            s.retry_after_secs = 3;
        }
        let limited = call("GET", &url, Some(TOKEN), None);
        assert_eq!(limited.status, 429);
        assert_eq!(
            limited.json(),
            json!({"id": "too_many_requests", "message": "API rate limit exceeded."})
        );
        assert_eq!(limited.header("retry-after").as_deref(), Some("3"));
        assert_eq!(limited.header("ratelimit-remaining").as_deref(), Some("0"));
        // The hourly window used up: 429 until the reset, which only
        // `ratelimit-reset` tells.
        let until = super::super::lb::unix_now() + 2;
        fake.state.lock().expect("state").exhausted_until = Some(until);
        for _ in 0..2 {
            let out = call("GET", &url, Some(TOKEN), None);
            assert_eq!(out.status, 429);
            assert_eq!(out.json()["id"], "too_many_requests");
            assert_eq!(out.header("retry-after"), None);
            assert_eq!(out.header("ratelimit-remaining").as_deref(), Some("0"));
            assert_eq!(
                out.header("ratelimit-reset").as_deref(),
                Some(until.to_string().as_str())
            );
        }
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(call("GET", &url, Some(TOKEN), None).status, 200);
        // A token without load_balancer:update: writes refused, reads not.
        fake.state
            .lock()
            .expect("state")
            .forbidden
            .push(format!("POST /v2/load_balancers/{LB}/droplets"));
        let refused = call(
            "POST",
            &format!("{url}/droplets"),
            Some(TOKEN),
            Some(json!({"droplet_ids": [101]})),
        );
        assert_eq!(refused.status, 403);
        assert_eq!(refused.json()["id"], "forbidden");
        assert_eq!(
            refused.json()["message"],
            "You are not authorized to perform this operation"
        );
        assert!(fake.registered().is_empty());
        assert_eq!(call("GET", &url, Some(TOKEN), None).status, 200);
        // A wrong token is still 401 first.
        let wrong = call(
            "POST",
            &format!("{url}/droplets"),
            Some("dop_v1_wrong"),
            Some(json!({"droplet_ids": [101]})),
        );
        assert_eq!(wrong.status, 401);
        let answered = fake.state.lock().expect("state").answered.clone();
        assert_eq!(answered.len(), fake.requests().len());
        assert!(answered.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(answered.iter().filter(|(_, s)| *s == 429).count() == 3);
        fake.state.lock().expect("state").forbidden.clear();
        fake.state.lock().expect("state").fault = Fault::StatusTimes(500, 1);
        let failed = call("GET", &url, Some(TOKEN), None);
        assert_eq!(failed.status, 500);
        assert_eq!(failed.json()["id"], "server_error");
        let list = call(
            "GET",
            &format!("{}/v2/load_balancers", fake.api_url()),
            Some(TOKEN),
            None,
        );
        assert_eq!(list.status, 200);
        assert_eq!(list.json()["load_balancers"][0]["id"], LB);
        assert_eq!(list.json()["meta"]["total"], 1);
        let seen = fake.state.lock().expect("state").authorization_seen.clone();
        assert!(seen.contains(&"Bearer dop_v1_wrong".to_owned()));
    }

    #[test]
    fn do_lb_tag_based() {
        let (b1, _b2) = two_backends();
        let model = fast();
        let lb = DoLb::tcp(LB, "fra1", b1.client.port(), b1.health.port()).with_tag("natsmesh");
        let fake = FakeDoLb::start(TOKEN, lb, droplets(), model);
        // Bad requests on purpose: the provider's own refusals are tested.
        fake.contract().answer_as_provider(true);
        let base = fake.api_url();
        let by_id = call(
            "POST",
            &format!("{base}/v2/load_balancers/{LB}/droplets"),
            Some(TOKEN),
            Some(json!({"droplet_ids": [101]})),
        );
        assert_eq!(by_id.status, 422);
        assert_eq!(by_id.json()["id"], "unprocessable_entity");
        assert!(by_id.json()["message"].is_string());

        let tag = format!("{base}/v2/tags/natsmesh/resources");
        let resource = json!({"resources": [{"resource_id": "101", "resource_type": "droplet"}]});
        let tagged = call("POST", &tag, Some(TOKEN), Some(resource.clone()));
        assert_eq!(tagged.status, 204, "{}", tagged.text);
        let v = call(
            "GET",
            &format!("{base}/v2/load_balancers/{LB}"),
            Some(TOKEN),
            None,
        )
        .json();
        assert_eq!(v["load_balancer"]["tag"], "natsmesh");
        assert_eq!(v["load_balancer"]["droplet_ids"], json!([101]));
        assert!(wait_for(model.time_to_serve() * 2, || fake.in_service() == vec![101]));
        assert_eq!(ask_once(fake.frontend(), "hi").as_deref(), Some("b1"));

        let other = call(
            "POST",
            &format!("{base}/v2/tags/other/resources"),
            Some(TOKEN),
            Some(resource.clone()),
        );
        assert_eq!(other.status, 404);
        let numeric = call(
            "POST",
            &tag,
            Some(TOKEN),
            Some(json!({"resources": [{"resource_id": 101, "resource_type": "droplet"}]})),
        );
        assert_eq!(numeric.status, 400);

        let untagged = call("DELETE", &tag, Some(TOKEN), Some(resource));
        assert_eq!(untagged.status, 204);
        assert!(fake.registered().is_empty());
        assert!(wait_for(model.propagation * 3, || fake
            .in_service()
            .is_empty()));
        let broken = fake.contract().take();
        assert!(
            broken
                .iter()
                .any(|v| v.contains("resource_id: 101 is not of type string")),
            "{broken:?}"
        );
    }
}
