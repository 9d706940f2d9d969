//! The DNS record APIs of DigitalOcean (Domains, `/v2`), Linode (Domains,
//! `/v4`) and Cloudflare (DNS, `/client/v4`), as tests/src/fakes/dns_api_contracts.md
//! records them: paths, bodies, status codes, error bodies, pagination and
//! rate-limit headers. A fake holds one zone's A, AAAA and SRV records in
//! memory with provider-style ids and, when given a [`BindWriter`], mirrors
//! every create and delete into a real BIND server with `nsupdate`, so DNS
//! queries see what the API wrote. When `nsupdate` fails the request gets a
//! 500 with the provider's error body and the records stay as they were.
//!
//! Every request is logged (method and path), then: a pending
//! `rate_limited` count answers 429; the [`Fault`] applies (delay, status);
//! the token is checked (`Authorization: Bearer <token>` exactly, else 401);
//! `EmptyBody` and `Garbage` answer 200; an operation in `forbidden` gets
//! the provider's 403 (a token without that operation's scope:
//! DigitalOcean `forbidden` "You are not authorized to perform this
//! operation", Linode "Unauthorized", Cloudflare code 10000); then the
//! provider's route. Every
//! answer has `Content-Type` JSON and the provider's rate-limit headers,
//! and a 429 also `retry-after`.
//!
//! Choices where the providers' documents say nothing (see dns_api_contracts.md's
//! [UNVERIFIED] marks): DigitalOcean lists its SOA (with a null id) and
//! three NS records at the apex besides what was created, and answers 422
//! for any invalid field; Linode rounds `ttl_sec` up to its fixed list (0
//! or none gives 300), takes only `tcp` and `udp` as SRV protocols and has
//! one Domain, id 1234 (or several, ids from 1234 in the order given, with
//! [`FakeDnsApi::start_linode_domains`]: a record belongs to the longest
//! Domain its name ends in, as natsmesh's per-region Domains lie below the
//! domain's own); Cloudflare requires `ttl`, answers every auth
//! failure with 401 code 10000, uses codes 1004/9005/9006/9021/9207 for
//! validation errors and writes SRV `content` as `<weight> <port> <target>`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::contract::{Contract, Guard};
use super::openapi::Spec;
use super::{Fault, Server, Shared};
use crate::bind::BindWriter;

/// Which provider's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `/v2/domains/{zone}/records`
    DigitalOcean,
    /// `/v4/domains/{id}/records`
    Linode,
    /// `/client/v4/zones/{id}/dns_records`
    Cloudflare,
}

impl Flavor {
    /// What the daemon's `api_url` appends paths to.
    fn prefix(self) -> &'static str {
        match self {
            Self::DigitalOcean => "",
            Self::Linode => "/v4",
            Self::Cloudflare => "/client/v4",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::DigitalOcean => "application/json; charset=utf-8",
            Self::Linode | Self::Cloudflare => "application/json",
        }
    }
}

/// One record the fake holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRecord {
    /// The provider's id: DigitalOcean and Linode integers, Cloudflare 32
    /// hex digits.
    pub id: String,
    /// `A`, `AAAA` or `SRV`.
    pub kind: String,
    /// Absolute, lower case, without the final dot.
    pub name: String,
    /// The address, or the SRV target (absolute, without the final dot).
    pub value: String,
    /// SRV priority (0 otherwise).
    pub priority: u16,
    /// SRV weight (0 otherwise).
    pub weight: u16,
    /// SRV port (0 otherwise).
    pub port: u16,
    /// As the API keeps it (Cloudflare's 1 means "automatic").
    pub ttl: u32,
}

impl ApiRecord {
    /// Zone-file data: `10.0.0.5`, `10 10 6222 n1.example.net.`.
    fn rdata(&self) -> String {
        match self.kind.as_str() {
            "SRV" => format!(
                "{} {} {} {}.",
                self.priority, self.weight, self.port, self.value
            ),
            // Presentation format: one quoted string (Cloudflare stores
            // the quotes it was given).
            "TXT" if self.value.starts_with('"') => self.value.clone(),
            "TXT" => format!(
                "\"{}\"",
                self.value.replace('\\', "\\\\").replace('"', "\\\"")
            ),
            _ => self.value.clone(),
        }
    }

    /// Same type, name and data (what Cloudflare calls identical).
    fn same(&self, other: &Self) -> bool {
        self.kind == other.kind && self.name == other.name && self.rdata() == other.rdata()
    }
}

/// The fake's state; change it while it runs.
#[derive(Debug)]
pub struct DnsApiState {
    /// Which API.
    pub flavor: Flavor,
    /// The zone (lower case, no final dot).
    pub zone: String,
    /// The only token accepted.
    pub token: String,
    /// The records, in creation order.
    pub records: Vec<ApiRecord>,
    /// Misbehaviour, with error bodies in the provider's shape.
    pub fault: Fault,
    /// The next this many requests get 429.
    pub rate_limited: u32,
    /// `retry-after` on a 429.
    pub retry_after_secs: u64,
    /// Operations refused 403 for want of a scope, each `METHOD
    /// /path-prefix` (`POST /v2/domains/` for a token without
    /// `domain:create`).
    pub forbidden: Vec<String>,
    /// `POST /v2/domains/nats.test/records` (method and path, no query),
    /// in order, every request.
    pub requests: Vec<String>,
    /// The JSON bodies of POSTs in order (a body that is not JSON as a
    /// string).
    pub bodies: Vec<Value>,
    /// Every `Authorization` header value received, in order (requests
    /// without one add nothing).
    pub authorization_seen: Vec<String>,
}

/// A running fake.
pub struct FakeDnsApi {
    /// Its state.
    pub state: Shared<DnsApiState>,
    server: Server,
    // Last: looks once the server has stopped.
    contract: Guard,
}

/// What the handlers share.
struct Ctx {
    flavor: Flavor,
    contract: Arc<Contract>,
    zone: String,
    state: Shared<DnsApiState>,
    bind: Option<BindWriter>,
    /// One create or delete at a time (checks, nsupdate, store).
    write: tokio::sync::Mutex<()>,
    /// Unix seconds at start: the rate-limit windows begin here.
    started: u64,
    /// For ids and request ids.
    serial: AtomicU64,
    /// The last integer id given (DigitalOcean, Linode).
    last_id: AtomicU64,
    /// Linode's Domains (ids from [`LINODE_DOMAIN_ID`] in this order); the
    /// first is `zone`.
    domains: Vec<String>,
}

/// Linode's one Domain.
const LINODE_DOMAIN_ID: u64 = 1234;
/// Cloudflare's zone.
const CF_ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";
/// Linode's record TTLs.
const LINODE_TTLS: [u32; 12] = [
    300, 3600, 7200, 14400, 28800, 57600, 86400, 172800, 345600, 604800, 1209600, 2419200,
];

impl FakeDnsApi {
    /// Serves `zone` for `token`; mirrors into `bind` when given.
    pub fn start(flavor: Flavor, zone: &str, token: &str, bind: Option<BindWriter>) -> Self {
        Self::start_in(flavor, zone, token, bind, None)
    }

    /// As [`FakeDnsApi::start`], listening in the network namespace at
    /// `netns` (see [`Server::start_in`]).
    pub fn start_in(
        flavor: Flavor,
        zone: &str,
        token: &str,
        bind: Option<BindWriter>,
        netns: Option<std::path::PathBuf>,
    ) -> Self {
        Self::serve(flavor, &[zone], token, bind, netns)
    }

    /// Linode's Domains API holding several Domains (the domain's own and
    /// a Domain per region below it, as natsmesh uses them), ids from 1234
    /// in the order given; mirrors into `bind` (whose zone holds them all)
    /// when given.
    pub fn start_linode_domains(domains: &[&str], token: &str, bind: Option<BindWriter>) -> Self {
        Self::serve(Flavor::Linode, domains, token, bind, None)
    }

    fn serve(
        flavor: Flavor,
        zones: &[&str],
        token: &str,
        bind: Option<BindWriter>,
        netns: Option<std::path::PathBuf>,
    ) -> Self {
        let domains: Vec<String> = zones.iter().map(|z| normal(z)).collect();
        let zone = domains.first().cloned().unwrap_or_default();
        let state = Arc::new(Mutex::new(DnsApiState {
            flavor,
            zone: zone.clone(),
            token: token.to_owned(),
            records: Vec::new(),
            fault: Fault::None,
            rate_limited: 0,
            retry_after_secs: 1,
            forbidden: Vec::new(),
            requests: Vec::new(),
            bodies: Vec::new(),
            authorization_seen: Vec::new(),
        }));
        // Cloudflare publishes no OpenAPI file here, and DigitalOcean's
        // Domains files are not among the reference specs this project may
        // vendor (tests/specs holds its balancer, droplet and tag files):
        // those two fakes follow dns_api_contracts.md and are not checked
        // in flight.
        let contract = Contract::new(match flavor {
            Flavor::DigitalOcean => None,
            Flavor::Linode => Some(Spec::Linode),
            Flavor::Cloudflare => None,
        });
        let ctx = Arc::new(Ctx {
            flavor,
            contract: contract.clone(),
            zone,
            state: state.clone(),
            bind,
            write: tokio::sync::Mutex::new(()),
            started: now(),
            serial: AtomicU64::new(0),
            last_id: AtomicU64::new(match flavor {
                Flavor::DigitalOcean => 28_448_432,
                _ => 123_455,
            }),
            domains,
        });
        let router = Router::new().fallback(handle).with_state(ctx);
        Self {
            state,
            server: Server::start_in(router, netns),
            contract: Guard(contract),
        }
    }

    /// What the in-flight check of the provider's contract found.
    pub fn contract(&self) -> &Contract {
        &self.contract.0
    }

    /// The base URL the daemon's `api_url` takes: DigitalOcean
    /// `http://127.0.0.1:P`, Linode `…/v4`, Cloudflare `…/client/v4`.
    pub fn url(&self) -> String {
        let flavor = lock(&self.state).flavor;
        format!("{}{}", self.server.url(), flavor.prefix())
    }

    /// The records now.
    pub fn records(&self) -> Vec<ApiRecord> {
        lock(&self.state).records.clone()
    }

    /// Requests so far (`METHOD /path`).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }
}

fn lock(state: &Shared<DnsApiState>) -> MutexGuard<'_, DnsApiState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

// Dispatch -----------------------------------------------------------------

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
    let (fault, limited, token) = {
        let mut s = lock(&ctx.state);
        s.requests.push(format!("{method} {path}"));
        s.authorization_seen.extend(super::authorization(headers));
        if method == Method::POST {
            // Every POST body, the empty one as an empty string.
            let logged = super::logged_body(body, parsed.as_ref())
                .unwrap_or_else(|| Value::String(String::new()));
            s.bodies.push(logged);
        }
        let s = &mut *s;
        let (fault, limited) = super::next_fault(&mut s.rate_limited, &mut s.fault);
        (fault, limited, s.token.clone())
    };
    let rid = request_id(ctx);
    let flavor = ctx.flavor;
    let junk = match flavor {
        Flavor::DigitalOcean => r#"{"domain_records":"none","links":7,"meta":null}"#,
        Flavor::Linode => r#"{"data":"none","page":"one","id":"x"}"#,
        Flavor::Cloudflare => r#"{"success":"maybe","result":"none"}"#,
    };
    if let Some(r) = super::gate(
        limited,
        &fault,
        headers,
        &token,
        |status| error(ctx, status, &path),
        |status| {
            (
                error_body(flavor, status, &path, &rid).to_string(),
                flavor.content_type(),
            )
        },
        junk,
    )
    .await
    {
        return r;
    }
    if super::forbidden(&lock(&ctx.state).forbidden, method.as_str(), &path) {
        return match flavor {
            Flavor::DigitalOcean => reply(
                403,
                &do_error_body(
                    "forbidden",
                    "You are not authorized to perform this operation",
                    403,
                    &rid,
                ),
            ),
            Flavor::Linode | Flavor::Cloudflare => error(ctx, 403, &path),
        };
    }
    let q = query(uri);
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let req = Req {
        method: method.as_str(),
        path: &path,
        q: &q,
        headers,
        body: parsed.as_ref(),
    };
    match flavor {
        Flavor::DigitalOcean => digitalocean(ctx, &req, &segs).await,
        Flavor::Linode => linode(ctx, &req, &segs).await,
        Flavor::Cloudflare => cloudflare(ctx, &req, &segs).await,
    }
}

/// One request, parsed.
struct Req<'a> {
    method: &'a str,
    path: &'a str,
    q: &'a [(String, String)],
    headers: &'a HeaderMap,
    /// The body as JSON, if it was.
    body: Option<&'a Value>,
}

impl Req<'_> {
    fn param(&self, key: &str) -> Option<&str> {
        self.q
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `page` (from 1) and `per_page` (`default`, clamped to `range`).
    fn paging(&self, default: usize, range: (usize, usize)) -> (usize, usize) {
        let num = |key: &str| self.param(key).and_then(|v| v.parse::<usize>().ok());
        let per_page = num("per_page").unwrap_or(default).clamp(range.0, range.1);
        (num("page").unwrap_or(1).max(1), per_page)
    }
}

/// Page `page` (from 1) of `items`, `size` a page.
fn page_of(items: Vec<Value>, page: usize, size: usize) -> Vec<Value> {
    items
        .into_iter()
        .skip((page - 1).saturating_mul(size))
        .take(size)
        .collect()
}

/// Content type and rate-limit headers on every answer; `retry-after` on
/// a 429.
fn finish(ctx: &Ctx, mut resp: Response) -> Response {
    let (count, retry) = {
        let s = lock(&ctx.state);
        (s.requests.len() as u64, s.retry_after_secs)
    };
    let limited = resp.status() == StatusCode::TOO_MANY_REQUESTS;
    let now = now();
    let elapsed = now.saturating_sub(ctx.started);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(ctx.flavor.content_type()),
    );
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    match ctx.flavor {
        Flavor::DigitalOcean => {
            let (remaining, reset) = if limited {
                (0, now + retry)
            } else {
                (5000u64.saturating_sub(count), ctx.started + 3600)
            };
            set("ratelimit-limit", "5000".into());
            set("ratelimit-remaining", remaining.to_string());
            set("ratelimit-reset", reset.to_string());
        }
        Flavor::Linode => {
            let (remaining, reset) = if limited {
                (0, now + retry)
            } else {
                (
                    800u64.saturating_sub(count % 800),
                    now + 120 - elapsed % 120,
                )
            };
            set("x-ratelimit-limit", "800".into());
            set("x-ratelimit-remaining", remaining.to_string());
            set("x-ratelimit-reset", reset.to_string());
        }
        Flavor::Cloudflare => {
            let (remaining, reset) = if limited {
                (0, retry)
            } else {
                (1200u64.saturating_sub(count % 1200), 300 - elapsed % 300)
            };
            set("ratelimit", format!("\"default\";r={remaining};t={reset}"));
            set("ratelimit-policy", "\"default\";q=1200;w=300".into());
        }
    }
    if limited {
        set("retry-after", retry.to_string());
    }
    resp
}

// Errors -------------------------------------------------------------------

/// The provider's error body for `status` when nothing more specific is
/// said.
fn error_body(flavor: Flavor, status: u16, path: &str, request_id: &str) -> Value {
    match flavor {
        Flavor::DigitalOcean => {
            let (id, message) = match status {
                400 => ("bad_request", "error parsing request body"),
                401 => ("unauthorized", "Unable to authenticate you."),
                403 => (
                    "forbidden",
                    "You do not have permission to perform this action.",
                ),
                404 => (
                    "not_found",
                    "The resource you requested could not be found.",
                ),
                422 => ("unprocessable_entity", "request payload validation failed"),
                429 => ("too_many_requests", "API rate limit exceeded."),
                500..=599 => ("server_error", "Unexpected server-side error"),
                _ => ("example_error", "some error message"),
            };
            do_error_body(id, message, status, request_id)
        }
        Flavor::Linode => {
            let reason = match status {
                400 => "Bad request",
                401 => "Invalid Token",
                403 => "Unauthorized",
                404 => "Not found",
                429 => "Too many requests",
                _ => "Internal Server Error",
            };
            json!({"errors": [{"reason": reason}]})
        }
        Flavor::Cloudflare => {
            let rel = path.strip_prefix("/client/v4").unwrap_or(path);
            let errors = match status {
                401 | 403 => vec![(10000, "Authentication error".to_owned())],
                400 | 404 => vec![
                    (
                        7003,
                        format!(
                            "Could not route to {rel}, perhaps your object identifier is invalid?"
                        ),
                    ),
                    (7000, "No route for that URI".to_owned()),
                ],
                429 => vec![(
                    971,
                    "Please wait and consider throttling your request speed".to_owned(),
                )],
                _ => vec![(10001, "Internal server error".to_owned())],
            };
            cf_error_body(&errors)
        }
    }
}

fn do_error_body(id: &str, message: &str, status: u16, request_id: &str) -> Value {
    let mut v = json!({"id": id, "message": message});
    if matches!(status, 400 | 422) || status >= 500 {
        v["request_id"] = json!(request_id);
    }
    v
}

fn cf_error_body(errors: &[(u32, String)]) -> Value {
    let errors: Vec<Value> = errors
        .iter()
        .map(|(code, message)| json!({"code": code, "message": message}))
        .collect();
    json!({"success": false, "errors": errors, "messages": [], "result": null})
}

fn reply(status: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, body.to_string()).into_response()
}

/// The provider's generic error answer.
fn error(ctx: &Ctx, status: u16, path: &str) -> Response {
    reply(
        status,
        &error_body(ctx.flavor, status, path, &request_id(ctx)),
    )
}

/// DigitalOcean 422 with a free-text message.
fn do_invalid(ctx: &Ctx, message: &str) -> Response {
    reply(
        422,
        &do_error_body("unprocessable_entity", message, 422, &request_id(ctx)),
    )
}

/// Linode 400 naming a field.
fn linode_invalid(field: &str, reason: &str) -> Response {
    reply(400, &linode_bad(field, reason))
}

/// Cloudflare failure with one error.
fn cf_fail(status: u16, code: u32, message: &str) -> Response {
    reply(status, &cf_error_body(&[(code, message.to_owned())]))
}

/// The answer to a record id that is not there.
fn no_record(ctx: &Ctx, path: &str) -> Response {
    match ctx.flavor {
        Flavor::Cloudflare => cf_fail(404, 81044, "Record does not exist."),
        _ => error(ctx, 404, path),
    }
}

// Writes -------------------------------------------------------------------

/// Gives `rec` an id, mirrors it into BIND and keeps it; Cloudflare
/// refuses an identical record.
async fn store(ctx: &Ctx, mut rec: ApiRecord, path: &str) -> Result<ApiRecord, Response> {
    let _write = ctx.write.lock().await;
    {
        let s = lock(&ctx.state);
        if ctx.flavor == Flavor::Cloudflare && s.records.iter().any(|r| r.same(&rec)) {
            return Err(cf_fail(400, 81058, "An identical record already exists."));
        }
        rec.id = next_id(ctx, &s.records);
    }
    let ttl = if ctx.flavor == Flavor::Cloudflare && rec.ttl == 1 {
        300 // Cloudflare's "automatic"
    } else {
        rec.ttl
    };
    let line = format!("update add {} {ttl} {} {}", rec.name, rec.kind, rec.rdata());
    mirror(ctx, line, path).await?;
    lock(&ctx.state).records.push(rec.clone());
    Ok(rec)
}

/// Mirrors the deletion of record `id` into BIND and forgets it.
async fn remove(ctx: &Ctx, id: &str, path: &str) -> Result<ApiRecord, Response> {
    let _write = ctx.write.lock().await;
    let found = lock(&ctx.state)
        .records
        .iter()
        .find(|r| r.id == id)
        .cloned();
    let Some(rec) = found else {
        return Err(no_record(ctx, path));
    };
    let line = format!("update delete {} {} {}", rec.name, rec.kind, rec.rdata());
    mirror(ctx, line, path).await?;
    lock(&ctx.state).records.retain(|r| r.id != id);
    Ok(rec)
}

/// One nsupdate transaction, when there is a BIND server; a 500 in the
/// provider's shape when it fails.
async fn mirror(ctx: &Ctx, line: String, path: &str) -> Result<(), Response> {
    let Some(writer) = ctx.bind.clone() else {
        return Ok(());
    };
    let lines = vec![line];
    let result = tokio::task::spawn_blocking(move || writer.update(&lines))
        .await
        .unwrap_or_else(|e| Err(format!("nsupdate task: {e}")));
    result.map_err(|e| {
        eprintln!("fake {:?} DNS API: {e}", ctx.flavor);
        error(ctx, 500, path)
    })
}

/// A fresh id in the provider's style, never one in use or given before.
fn next_id(ctx: &Ctx, records: &[ApiRecord]) -> String {
    match ctx.flavor {
        Flavor::DigitalOcean | Flavor::Linode => {
            let max = records
                .iter()
                .filter_map(|r| r.id.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            let id = ctx.last_id.load(Ordering::SeqCst).max(max) + 1;
            ctx.last_id.store(id, Ordering::SeqCst);
            id.to_string()
        }
        Flavor::Cloudflare => loop {
            let n = ctx.serial.fetch_add(1, Ordering::SeqCst);
            let id = format!(
                "{:016x}{:016x}",
                mix(n ^ 0x372e_6795_4025_e0ba),
                mix(n ^ 0x6aaa_6d58_6b9e_0b59)
            );
            if !records.iter().any(|r| r.id == id) {
                break id;
            }
        },
    }
}

fn request_id(ctx: &Ctx) -> String {
    let a = mix(ctx.serial.fetch_add(1, Ordering::SeqCst) ^ 0x4851_a473);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b & 0xfff,
        b >> 16
    )
}

/// splitmix64.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// DigitalOcean ---------------------------------------------------------------

async fn digitalocean(ctx: &Ctx, req: &Req<'_>, segs: &[&str]) -> Response {
    let zone_ok = |z: &str| normal(z) == ctx.zone;
    match (req.method, segs) {
        ("GET", ["v2", "domains", zone]) if zone_ok(zone) => {
            let zone_file = zone_file(ctx);
            reply(
                200,
                &json!({"domain": {"name": ctx.zone, "ttl": 1800, "zone_file": zone_file}}),
            )
        }
        ("GET", ["v2", "domains", zone, "records"]) if zone_ok(zone) => do_list(ctx, req),
        ("POST", ["v2", "domains", zone, "records"]) if zone_ok(zone) => do_create(ctx, req).await,
        ("GET", ["v2", "domains", zone, "records", id]) if zone_ok(zone) => {
            let found = lock(&ctx.state)
                .records
                .iter()
                .find(|r| r.id == *id)
                .map(|r| do_json(r, &ctx.zone));
            match found {
                Some(r) => reply(200, &json!({"domain_record": r})),
                None => no_record(ctx, req.path),
            }
        }
        ("DELETE", ["v2", "domains", zone, "records", id]) if zone_ok(zone) => {
            match remove(ctx, id, req.path).await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(r) => r,
            }
        }
        _ => error(ctx, 404, req.path),
    }
}

/// A record as DigitalOcean lists it: relative name (`@` apex), data
/// without the final dot, null for fields the type does not use.
fn do_json(r: &ApiRecord, zone: &str) -> Value {
    let srv = r.kind == "SRV";
    let data = if srv && r.value == zone {
        "@".to_owned()
    } else {
        r.value.clone()
    };
    json!({
        "id": r.id.parse::<u64>().map_or_else(|_| json!(r.id), |n| json!(n)),
        "type": r.kind,
        "name": relative(&r.name, zone),
        "data": data,
        "priority": srv.then_some(r.priority),
        "port": srv.then_some(r.port),
        "ttl": r.ttl,
        "weight": srv.then_some(r.weight),
        "flags": null,
        "tag": null,
    })
}

/// What DigitalOcean lists at the apex of every domain.
fn do_apex_records() -> Vec<Value> {
    let mut v = vec![json!({
        "id": null, "type": "SOA", "name": "@", "data": "1800", "priority": null,
        "port": null, "ttl": 1800, "weight": null, "flags": null, "tag": null,
    })];
    for (i, ns) in ["ns1", "ns2", "ns3"].iter().enumerate() {
        v.push(json!({
            "id": 28_448_429 + i as u64, "type": "NS", "name": "@",
            "data": format!("{ns}.digitalocean.com"), "priority": null, "port": null,
            "ttl": 1800, "weight": null, "flags": null, "tag": null,
        }));
    }
    v
}

fn do_list(ctx: &Ctx, req: &Req<'_>) -> Response {
    let name = req.param("name").map(normal);
    let kind = req.param("type").map(str::to_ascii_uppercase);
    let (page, per_page) = req.paging(20, (1, 200));
    let mut all = do_apex_records();
    all.extend(
        lock(&ctx.state)
            .records
            .iter()
            .map(|r| do_json(r, &ctx.zone)),
    );
    let matching: Vec<Value> = all
        .into_iter()
        .filter(|r| {
            let abs = absolute(r["name"].as_str().unwrap_or(""), &ctx.zone);
            name.as_ref().is_none_or(|n| *n == abs)
                && kind
                    .as_ref()
                    .is_none_or(|k| r["type"].as_str() == Some(k.as_str()))
        })
        .collect();
    let total = matching.len();
    let pages = total.div_ceil(per_page);
    let items: Vec<Value> = page_of(matching, page, per_page);
    let mut links = Map::new();
    if pages > 1 {
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let others: Vec<String> = req
            .q
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
            .collect();
        let link = |p: usize| {
            let mut qs = others.clone();
            qs.push(format!("page={p}"));
            json!(format!("http://{host}{}?{}", req.path, qs.join("&")))
        };
        let mut p = Map::new();
        if page > 1 {
            p.insert("first".into(), link(1));
            p.insert("prev".into(), link((page - 1).min(pages)));
        }
        if page < pages {
            p.insert("last".into(), link(pages));
            p.insert("next".into(), link(page + 1));
        }
        links.insert("pages".into(), Value::Object(p));
    }
    reply(
        200,
        &json!({"domain_records": items, "links": links, "meta": {"total": total}}),
    )
}

async fn do_create(ctx: &Ctx, req: &Req<'_>) -> Response {
    let Some(b) = req.body.and_then(Value::as_object) else {
        return error(ctx, 400, req.path);
    };
    let kind = match b.get("type").and_then(Value::as_str) {
        Some(k @ ("A" | "AAAA" | "SRV" | "TXT")) => k.to_owned(),
        Some(_) => {
            return do_invalid(
                ctx,
                "type is not a supported record type (A, AAAA, SRV, TXT)",
            );
        }
        None => return do_invalid(ctx, "type is required"),
    };
    let Some(name) = b.get("name").and_then(Value::as_str) else {
        return do_invalid(ctx, "name is required");
    };
    let name = name.to_ascii_lowercase();
    let in_zone_suffix = format!(".{}", ctx.zone);
    if name != "@" && (!hostname_ok(&name) || name == ctx.zone || name.ends_with(&in_zone_suffix)) {
        return do_invalid(
            ctx,
            "name must be relative to the domain ('@' for the apex), without a final dot",
        );
    }
    let Some(data) = b.get("data").and_then(Value::as_str) else {
        return do_invalid(ctx, "data is required");
    };
    let ttl = match uint(b, "ttl") {
        Err(()) => return do_invalid(ctx, "ttl must be an integer"),
        Ok(None) => 1800,
        Ok(Some(t)) if t < 30 => {
            return do_invalid(ctx, "ttl must be at least 30 seconds");
        }
        Ok(Some(t)) => u32::try_from(t).unwrap_or(u32::MAX),
    };
    let mut rec = ApiRecord {
        id: String::new(),
        kind: kind.clone(),
        name: absolute(&name, &ctx.zone),
        value: String::new(),
        priority: 0,
        weight: 0,
        port: 0,
        ttl,
    };
    match kind.as_str() {
        "A" => match data.parse::<Ipv4Addr>() {
            Ok(ip) => rec.value = ip.to_string(),
            Err(_) => return do_invalid(ctx, "data must be a valid IPv4 address"),
        },
        "AAAA" => match data.parse::<Ipv6Addr>() {
            Ok(ip) => rec.value = ip.to_string(),
            Err(_) => return do_invalid(ctx, "data must be a valid IPv6 address"),
        },
        // A TXT record's data is its text (DigitalOcean splits long text
        // itself); empty text is refused.
        "TXT" if data.is_empty() => return do_invalid(ctx, "data is required"),
        "TXT" => rec.value = data.to_owned(),
        _ => {
            let target = if data == "@" {
                ctx.zone.clone()
            } else {
                normal(data)
            };
            if !hostname_ok(&target) {
                return do_invalid(ctx, "data must be a valid hostname");
            }
            rec.value = target;
            let field = |k: &str, min: u64| match uint(b, k) {
                Ok(Some(n)) if (min..=65535).contains(&n) => Ok(n as u16),
                Ok(Some(_)) => Err(format!("{k} must be between {min} and 65535")),
                _ => Err(format!("{k} is required for SRV records")),
            };
            let fields = (field("priority", 0), field("weight", 0), field("port", 1));
            match fields {
                (Ok(p), Ok(w), Ok(port)) => {
                    rec.priority = p;
                    rec.weight = w;
                    rec.port = port;
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return do_invalid(ctx, &e),
            }
        }
    }
    match store(ctx, rec, req.path).await {
        Ok(rec) => reply(201, &json!({"domain_record": do_json(&rec, &ctx.zone)})),
        Err(r) => r,
    }
}

/// The domain's zone file, for `GET /v2/domains/{zone}`.
fn zone_file(ctx: &Ctx) -> String {
    let z = &ctx.zone;
    let mut out = format!(
        "$ORIGIN {z}.\n$TTL 1800\n{z}. IN SOA ns1.digitalocean.com. hostmaster.{z}. 1 10800 3600 604800 1800\n"
    );
    for ns in ["ns1", "ns2", "ns3"] {
        out.push_str(&format!("{z}. 1800 IN NS {ns}.digitalocean.com.\n"));
    }
    for r in &lock(&ctx.state).records {
        out.push_str(&format!(
            "{}. {} IN {} {}\n",
            r.name,
            r.ttl,
            r.kind,
            r.rdata()
        ));
    }
    out
}

// Linode ---------------------------------------------------------------------

async fn linode(ctx: &Ctx, req: &Req<'_>, segs: &[&str]) -> Response {
    // The Domain a path's id names, if the fake holds it.
    let domain = |id: &str| {
        let id = id.parse::<u64>().ok()?.checked_sub(LINODE_DOMAIN_ID)?;
        ctx.domains
            .get(usize::try_from(id).ok()?)
            .map(String::as_str)
    };
    // A record of Domain `zone`, by id.
    let record = |zone: &str, rid: &str| {
        lock(&ctx.state)
            .records
            .iter()
            .find(|r| r.id == rid && linode_domain_of(ctx, &r.name) == Some(zone))
            .cloned()
    };
    match (req.method, segs) {
        ("GET", ["v4", "domains"]) => linode_domains(ctx, req),
        ("GET", ["v4", "domains", id]) => match domain(id) {
            Some(zone) => reply(200, &linode_domain(ctx, zone)),
            None => error(ctx, 404, req.path),
        },
        ("GET", ["v4", "domains", id, "records"]) => match domain(id) {
            Some(zone) => linode_list(ctx, req, zone),
            None => error(ctx, 404, req.path),
        },
        ("POST", ["v4", "domains", id, "records"]) => match domain(id) {
            Some(zone) => linode_create(ctx, req, zone).await,
            None => error(ctx, 404, req.path),
        },
        ("GET", ["v4", "domains", id, "records", rid]) => {
            match domain(id).and_then(|zone| record(zone, rid).map(|r| (zone, r))) {
                Some((zone, r)) => reply(200, &linode_json(ctx, zone, &r)),
                None => no_record(ctx, req.path),
            }
        }
        ("DELETE", ["v4", "domains", id, "records", rid]) => {
            if domain(id).and_then(|zone| record(zone, rid)).is_none() {
                return no_record(ctx, req.path);
            }
            match remove(ctx, rid, req.path).await {
                Ok(_) => reply(200, &json!({})),
                Err(r) => r,
            }
        }
        _ => error(ctx, 404, req.path),
    }
}

/// The Domain a record named `name` belongs to: the longest one its name
/// ends in (the fake keeps no Domain per record; natsmesh never writes a
/// name of a region's Domain into the domain's own), else the first (a
/// record a test put in the state by hand).
fn linode_domain_of<'a>(ctx: &'a Ctx, name: &str) -> Option<&'a str> {
    ctx.domains
        .iter()
        .filter(|d| name == d.as_str() || name.ends_with(&format!(".{d}")))
        .max_by_key(|d| d.len())
        .or(ctx.domains.first())
        .map(String::as_str)
}

fn linode_time(ctx: &Ctx) -> String {
    rfc3339(ctx.started).trim_end_matches('Z').to_owned()
}

fn linode_domain(ctx: &Ctx, zone: &str) -> Value {
    let t = linode_time(ctx);
    let index = ctx.domains.iter().position(|d| d == zone).unwrap_or(0);
    json!({
        "id": LINODE_DOMAIN_ID + index as u64, "type": "master", "domain": zone, "status": "active",
        "soa_email": format!("admin@{zone}"), "ttl_sec": 300, "refresh_sec": 0,
        "retry_sec": 0, "expire_sec": 0, "tags": [],
        "master_ips": [], "axfr_ips": [], "created": t, "updated": t,
    })
}

/// A record as Linode lists it: relative name (`""` apex; SRV
/// `_service._protocol`), `service` and `protocol` without underscores.
fn linode_json(ctx: &Ctx, zone: &str, r: &ApiRecord) -> Value {
    let rel = relative(&r.name, zone);
    let name = if rel == "@" { String::new() } else { rel };
    let (service, protocol) = if r.kind == "SRV" {
        let (s, p) = name.split_once('.').unwrap_or((name.as_str(), ""));
        (
            json!(s.trim_start_matches('_')),
            json!(p.trim_start_matches('_')),
        )
    } else {
        (Value::Null, Value::Null)
    };
    let t = linode_time(ctx);
    json!({
        "id": r.id.parse::<u64>().map_or_else(|_| json!(r.id), |n| json!(n)),
        "type": r.kind, "name": name, "target": r.value,
        "priority": r.priority, "weight": r.weight, "port": r.port,
        "service": service, "protocol": protocol, "ttl_sec": r.ttl, "tag": null,
        "created": t, "updated": t,
    })
}

/// A Linode 400 body naming a field.
fn linode_bad(field: &str, reason: &str) -> Value {
    json!({"errors": [{"field": field, "reason": reason}]})
}

/// `page` and `page_size` (25–500); the 400 body otherwise.
fn linode_paging(req: &Req<'_>) -> Result<(usize, usize), Value> {
    let page = match req.param("page") {
        None => 1,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(linode_bad("page", "Must be greater than or equal to 1")),
        },
    };
    let size = match req.param("page_size") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (25..=500).contains(&n) => n,
            _ => return Err(linode_bad("page_size", "Must be 25-500")),
        },
    };
    Ok((page, size))
}

/// The `X-Filter` header: equality on the `allowed` fields; the 400 body
/// otherwise.
fn linode_filter(req: &Req<'_>, allowed: &[&str]) -> Result<Map<String, Value>, Value> {
    let Some(raw) = req.headers.get("x-filter") else {
        return Ok(Map::new());
    };
    let Some(Value::Object(filter)) = raw
        .to_str()
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    else {
        return Err(linode_bad("X-Filter", "The filter is not valid JSON"));
    };
    for k in filter.keys() {
        if !allowed.contains(&k.as_str()) && !matches!(k.as_str(), "+order_by" | "+order") {
            return Err(linode_bad("X-Filter", &format!("Cannot filter on {k}")));
        }
    }
    Ok(filter)
}

fn linode_matches(item: &Value, filter: &Map<String, Value>) -> bool {
    filter
        .iter()
        .filter(|(k, _)| !k.starts_with('+'))
        .all(|(k, want)| match (&item[k.as_str()], want) {
            (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        })
}

/// `data`, `page`, `pages` (at least 1) and `results`.
fn linode_page(items: Vec<Value>, page: usize, size: usize) -> Value {
    let results = items.len();
    let pages = results.div_ceil(size).max(1);
    let data: Vec<Value> = page_of(items, page, size);
    json!({"data": data, "page": page, "pages": pages, "results": results})
}

fn linode_domains(ctx: &Ctx, req: &Req<'_>) -> Response {
    let (page, size) = match linode_paging(req) {
        Ok(p) => p,
        Err(e) => return reply(400, &e),
    };
    let filter = match linode_filter(req, &["domain", "type", "status", "group", "tags"]) {
        Ok(f) => f,
        Err(e) => return reply(400, &e),
    };
    let items: Vec<Value> = ctx
        .domains
        .iter()
        .map(|zone| linode_domain(ctx, zone))
        .filter(|d| linode_matches(d, &filter))
        .collect();
    reply(200, &linode_page(items, page, size))
}

fn linode_list(ctx: &Ctx, req: &Req<'_>, zone: &str) -> Response {
    let (page, size) = match linode_paging(req) {
        Ok(p) => p,
        Err(e) => return reply(400, &e),
    };
    let filter = match linode_filter(req, &["type", "name", "target", "tag"]) {
        Ok(f) => f,
        Err(e) => return reply(400, &e),
    };
    let items: Vec<Value> = lock(&ctx.state)
        .records
        .iter()
        .filter(|r| linode_domain_of(ctx, &r.name) == Some(zone))
        .map(|r| linode_json(ctx, zone, r))
        .filter(|r| linode_matches(r, &filter))
        .collect();
    reply(200, &linode_page(items, page, size))
}

async fn linode_create(ctx: &Ctx, req: &Req<'_>, zone: &str) -> Response {
    let Some(b) = req.body.and_then(Value::as_object) else {
        return reply(400, &json!({"errors": [{"reason": "Invalid JSON"}]}));
    };
    let kind = match b.get("type").and_then(Value::as_str) {
        Some(k @ ("A" | "AAAA" | "SRV" | "TXT")) => k.to_owned(),
        Some(_) => return linode_invalid("type", "type is not a supported record type"),
        None => return linode_invalid("type", "type is required"),
    };
    let str_field = |k: &str| b.get(k).and_then(Value::as_str);
    let ttl = match uint(b, "ttl_sec") {
        Err(()) => return linode_invalid("ttl_sec", "ttl_sec must be an integer"),
        Ok(t) => {
            let t = t.unwrap_or(0);
            LINODE_TTLS
                .iter()
                .copied()
                .find(|v| u64::from(*v) >= t)
                .unwrap_or(2_419_200)
        }
    };
    let mut rec = ApiRecord {
        id: String::new(),
        kind: kind.clone(),
        name: String::new(),
        value: String::new(),
        priority: 0,
        weight: 0,
        port: 0,
        ttl,
    };
    if kind == "SRV" {
        let Some(service) = str_field("service").filter(|s| !s.is_empty()) else {
            return linode_invalid("service", "service is required for SRV records");
        };
        if !hostname_ok(service) || service.contains('.') {
            return linode_invalid("service", "service must be a valid service name");
        }
        let protocol = str_field("protocol").map(str::to_ascii_lowercase);
        let Some(protocol) = protocol.filter(|p| p == "tcp" || p == "udp") else {
            return linode_invalid("protocol", "Please select a valid protocol ('udp', 'tcp');");
        };
        let Some(target) = str_field("target").filter(|t| !t.is_empty()) else {
            return linode_invalid("target", "target is required for SRV records");
        };
        let target = normal(target);
        // A bare label is joined to the Domain; anything with a dot is a
        // name of its own.
        let target = if target.contains('.') {
            target
        } else {
            format!("{target}.{zone}")
        };
        if !hostname_ok(&target) {
            return linode_invalid("target", "target must be a valid hostname");
        }
        let field = |k: &str, max: u64| match uint(b, k) {
            Ok(Some(n)) if n <= max => Ok(n as u16),
            Ok(Some(_)) => Err((k.to_owned(), format!("Must be between 0 and {max}"))),
            _ => Err((k.to_owned(), format!("{k} is required for SRV records"))),
        };
        match (
            field("priority", 255),
            field("weight", 65535),
            field("port", 65535),
        ) {
            (Ok(p), Ok(w), Ok(port)) => {
                rec.priority = p;
                rec.weight = w;
                rec.port = port;
            }
            (Err((f, e)), _, _) | (_, Err((f, e)), _) | (_, _, Err((f, e))) => {
                return linode_invalid(&f, &e);
            }
        }
        rec.name = format!("_{}._{protocol}.{zone}", service.to_ascii_lowercase());
        rec.value = target;
    } else {
        let name = normal(str_field("name").unwrap_or(""));
        if !name.is_empty() && name != "@" && !hostname_ok(&name) {
            return linode_invalid("name", "name must be a valid hostname");
        }
        rec.name = absolute(&name, zone);
        let Some(target) = str_field("target") else {
            return linode_invalid("target", "target is required");
        };
        rec.value = match kind.as_str() {
            "TXT" if target.is_empty() => return linode_invalid("target", "target is required"),
            "TXT" => target.to_owned(),
            "A" => match target.parse::<Ipv4Addr>() {
                Ok(ip) => ip.to_string(),
                Err(_) => return linode_invalid("target", "Invalid IPv4 address"),
            },
            _ => match target.parse::<Ipv6Addr>() {
                Ok(ip) => ip.to_string(),
                Err(_) => return linode_invalid("target", "Invalid IPv6 address"),
            },
        };
    }
    match store(ctx, rec, req.path).await {
        Ok(rec) => reply(200, &linode_json(ctx, zone, &rec)),
        Err(r) => r,
    }
}

// Cloudflare -----------------------------------------------------------------

async fn cloudflare(ctx: &Ctx, req: &Req<'_>, segs: &[&str]) -> Response {
    match (req.method, segs) {
        ("GET", ["client", "v4", "zones"]) => cf_zones(ctx, req),
        ("GET", ["client", "v4", "zones", CF_ZONE_ID]) => cf_ok(&cf_zone(ctx), None),
        ("GET", ["client", "v4", "zones", CF_ZONE_ID, "dns_records"]) => cf_list(ctx, req),
        ("POST", ["client", "v4", "zones", CF_ZONE_ID, "dns_records"]) => cf_create(ctx, req).await,
        ("GET", ["client", "v4", "zones", CF_ZONE_ID, "dns_records", id]) => {
            let found = lock(&ctx.state)
                .records
                .iter()
                .find(|r| r.id == *id)
                .map(|r| cf_json(ctx, r));
            match found {
                Some(r) => cf_ok(&r, None),
                None => no_record(ctx, req.path),
            }
        }
        ("DELETE", ["client", "v4", "zones", CF_ZONE_ID, "dns_records", id]) => {
            match remove(ctx, id, req.path).await {
                Ok(rec) => cf_ok(&json!({"id": rec.id}), None),
                Err(r) => r,
            }
        }
        _ => error(ctx, 404, req.path),
    }
}

fn cf_ok(result: &Value, info: Option<Value>) -> Response {
    let mut v = json!({"success": true, "errors": [], "messages": [], "result": result});
    if let Some(info) = info {
        v["result_info"] = info;
    }
    reply(200, &v)
}

fn cf_time(ctx: &Ctx) -> String {
    rfc3339(ctx.started)
}

fn cf_zone(ctx: &Ctx) -> Value {
    let t = cf_time(ctx);
    json!({
        "id": CF_ZONE_ID, "name": ctx.zone, "status": "active", "paused": false,
        "type": "full", "development_mode": 0,
        "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
        "original_name_servers": null, "original_registrar": null, "original_dnshost": null,
        "created_on": t, "modified_on": t, "activated_on": t,
        "account": {"id": "01a7362d577a6c3019a474fd6f485823", "name": "natsmesh test"},
        "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
        "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website", "price": 0,
                 "currency": "USD", "frequency": "", "is_subscribed": false,
                 "can_subscribe": false, "legacy_id": "free", "legacy_discount": false,
                 "externally_managed": false},
    })
}

fn cf_info(page: usize, per_page: usize, count: usize, total: usize) -> Value {
    json!({
        "page": page, "per_page": per_page, "count": count,
        "total_count": total, "total_pages": total.div_ceil(per_page),
    })
}

fn cf_zones(ctx: &Ctx, req: &Req<'_>) -> Response {
    let (page, per_page) = req.paging(20, (5, 50));
    let name_ok = req.param("name").is_none_or(|n| normal(n) == ctx.zone);
    let status_ok = req.param("status").is_none_or(|s| s == "active");
    let all: Vec<Value> = if name_ok && status_ok {
        vec![cf_zone(ctx)]
    } else {
        Vec::new()
    };
    let total = all.len();
    let items: Vec<Value> = page_of(all, page, per_page);
    let info = cf_info(page, per_page, items.len(), total);
    cf_ok(&json!(items), Some(info))
}

/// SRV `content`: `<weight> <port> <target>`.
fn cf_content(r: &ApiRecord) -> String {
    if r.kind == "SRV" {
        format!("{} {} {}", r.weight, r.port, r.value)
    } else {
        r.value.clone()
    }
}

/// A record as Cloudflare answers it: absolute name; SRV fields in `data`.
fn cf_json(ctx: &Ctx, r: &ApiRecord) -> Value {
    let t = cf_time(ctx);
    let mut v = json!({
        "id": r.id, "type": r.kind, "name": r.name, "content": cf_content(r),
        "proxiable": r.kind != "SRV", "proxied": false, "ttl": r.ttl,
        "settings": {}, "meta": {}, "comment": null, "tags": [],
        "created_on": t, "modified_on": t,
    });
    if r.kind == "SRV" {
        v["data"] = json!({
            "priority": r.priority, "weight": r.weight, "port": r.port, "target": r.value,
        });
    }
    v
}

fn cf_list(ctx: &Ctx, req: &Req<'_>) -> Response {
    let (page, per_page) = req.paging(100, (1, 5_000_000));
    let any = req.param("match") == Some("any");
    let matching: Vec<Value> = lock(&ctx.state)
        .records
        .iter()
        .filter(|r| cf_matches(r, req.q, any))
        .map(|r| cf_json(ctx, r))
        .collect();
    let total = matching.len();
    let items: Vec<Value> = page_of(matching, page, per_page);
    let info = cf_info(page, per_page, items.len(), total);
    cf_ok(&json!(items), Some(info))
}

/// The `name[.op]`, `content[.op]`, `type` and `proxied` filters,
/// case-insensitive, combined by `match` (all unless `any`).
fn cf_matches(r: &ApiRecord, q: &[(String, String)], any: bool) -> bool {
    let mut tests = Vec::new();
    for (k, v) in q {
        let (field, op) = k.split_once('.').unwrap_or((k.as_str(), "exact"));
        let (subject, want) = match field {
            "name" => (r.name.clone(), normal(v)),
            "content" => (cf_content(r).to_ascii_lowercase(), v.to_ascii_lowercase()),
            "type" => (r.kind.clone(), v.to_ascii_uppercase()),
            "proxied" => ("false".to_owned(), v.to_ascii_lowercase()),
            _ => continue,
        };
        tests.push(match op {
            "exact" => subject == want,
            "contains" => subject.contains(&want),
            "startswith" => subject.starts_with(&want),
            "endswith" => subject.ends_with(&want),
            _ => continue,
        });
    }
    if tests.is_empty() {
        true
    } else if any {
        tests.iter().any(|t| *t)
    } else {
        tests.iter().all(|t| *t)
    }
}

async fn cf_create(ctx: &Ctx, req: &Req<'_>) -> Response {
    let Some(b) = req.body.and_then(Value::as_object) else {
        return cf_fail(400, 9207, "Request body is invalid.");
    };
    let kind = match b.get("type").and_then(Value::as_str) {
        Some(k @ ("A" | "AAAA" | "SRV" | "TXT")) => k.to_owned(),
        _ => return cf_fail(400, 1004, "DNS Validation Error: type is invalid"),
    };
    let Some(name) = b.get("name").and_then(Value::as_str) else {
        return cf_fail(400, 1004, "DNS Validation Error: name is required");
    };
    let name = if name == "@" {
        ctx.zone.clone()
    } else {
        absolute(name, &ctx.zone)
    };
    if !hostname_ok(&name) {
        return cf_fail(400, 1004, "DNS Validation Error: name is invalid");
    }
    let ttl = match uint(b, "ttl") {
        Ok(Some(t)) if t == 1 || (60..=86_400).contains(&t) => t as u32,
        _ => {
            return cf_fail(
                400,
                9021,
                "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic.",
            );
        }
    };
    let proxied = b.get("proxied").and_then(Value::as_bool) == Some(true);
    let mut rec = ApiRecord {
        id: String::new(),
        kind: kind.clone(),
        name,
        value: String::new(),
        priority: 0,
        weight: 0,
        port: 0,
        ttl,
    };
    let content = b.get("content").and_then(Value::as_str).unwrap_or("");
    match kind.as_str() {
        "A" => match content.parse::<Ipv4Addr>() {
            Ok(ip) => rec.value = ip.to_string(),
            Err(_) => {
                return cf_fail(
                    400,
                    9005,
                    "Content for A record is invalid. Must be a valid IPv4 address",
                );
            }
        },
        "AAAA" => match content.parse::<Ipv6Addr>() {
            Ok(ip) => rec.value = ip.to_string(),
            Err(_) => {
                return cf_fail(
                    400,
                    9006,
                    "Content for AAAA record is invalid. Must be a valid IPv6 address",
                );
            }
        },
        "TXT" if content.is_empty() => {
            return cf_fail(400, 1004, "DNS Validation Error: content is required");
        }
        "TXT" => rec.value = content.to_owned(),
        _ => {
            if proxied {
                return cf_fail(400, 9004, "This record type cannot be proxied.");
            }
            let mut labels = rec.name.split('.');
            let owner_ok = labels
                .next()
                .is_some_and(|l| l.len() > 1 && l.starts_with('_'))
                && labels
                    .next()
                    .is_some_and(|l| l.len() > 1 && l.starts_with('_'));
            if !owner_ok {
                return cf_fail(
                    400,
                    1004,
                    "DNS Validation Error: SRV name must start with _service._proto",
                );
            }
            let Some(data) = b.get("data").and_then(Value::as_object) else {
                return cf_fail(400, 1004, "DNS Validation Error: data is required for SRV");
            };
            let field = |k: &str| match uint(data, k) {
                Ok(Some(n)) if n <= 65535 => Ok(n as u16),
                _ => Err(format!(
                    "DNS Validation Error: data.{k} must be an integer 0-65535"
                )),
            };
            match (field("priority"), field("weight"), field("port")) {
                (Ok(p), Ok(w), Ok(port)) => {
                    rec.priority = p;
                    rec.weight = w;
                    rec.port = port;
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    return cf_fail(400, 1004, &e);
                }
            }
            let target = data.get("target").and_then(Value::as_str).map(normal);
            let Some(target) = target.filter(|t| hostname_ok(t)) else {
                return cf_fail(
                    400,
                    1004,
                    "DNS Validation Error: data.target must be a valid hostname",
                );
            };
            rec.value = target;
        }
    }
    match store(ctx, rec, req.path).await {
        Ok(rec) => cf_ok(&cf_json(ctx, &rec), None),
        Err(r) => r,
    }
}

// Names and little helpers ---------------------------------------------------

/// Lower case, without the final dot.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The absolute name of `label` in `zone` (`@` or empty: the apex; a name
/// already in the zone stays).
fn absolute(label: &str, zone: &str) -> String {
    let label = normal(label);
    if label.is_empty() || label == "@" {
        zone.to_owned()
    } else if label == zone || label.ends_with(&format!(".{zone}")) {
        label
    } else {
        format!("{label}.{zone}")
    }
}

/// `name` relative to `zone` (`@` for the apex; unchanged outside it).
fn relative(name: &str, zone: &str) -> String {
    if name == zone {
        return "@".into();
    }
    name.strip_suffix(zone)
        .and_then(|rest| rest.strip_suffix('.'))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(name)
        .to_owned()
}

/// Labels of letters, digits, `-` and `_` (or `*`), 1–63 long, 253 in all.
fn hostname_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            l == "*"
                || (!l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        })
}

/// A non-negative integer field: `Ok(None)` when absent or null, `Err` when
/// of another type.
fn uint(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, ()> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(()),
    }
}

fn query(uri: &Uri) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// Percent-encodes all but the unreserved characters.
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-01-02T03:04:05Z`.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Answer {
        status: u16,
        headers: ureq::http::HeaderMap,
        text: String,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_str(&self.text)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
        }

        fn header(&self, name: &str) -> Option<String> {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }
    }

    fn call(
        method: &str,
        url: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .build()
            .into();
        macro_rules! prepare {
            ($b:expr) => {{
                let mut b = $b;
                if let Some(a) = auth {
                    b = b.header("Authorization", a);
                }
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                b
            }};
        }
        let result = match method {
            "GET" => prepare!(agent.get(url)).call(),
            "DELETE" => prepare!(agent.delete(url)).call(),
            "POST" => prepare!(agent.post(url))
                .content_type("application/json")
                .send(body.unwrap_or(Value::Null).to_string()),
            _ => panic!("method {method}"),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    const ZONE: &str = "fra1.nats.test";

    #[test]
    fn digitalocean_contract() {
        let fake = FakeDnsApi::start(Flavor::DigitalOcean, ZONE, "dop_v1_t", None);
        let base = fake.url();
        let auth = Some("Bearer dop_v1_t");
        let records = format!("{base}/v2/domains/{ZONE}/records");

        let a = call(
            "POST",
            &records,
            auth,
            &[],
            Some(json!({"type": "A", "name": "n1", "data": "10.0.0.5", "ttl": 60})),
        );
        assert_eq!(a.status, 201, "{}", a.text);
        let a = a.json()["domain_record"].clone();
        assert_eq!(a["name"], "n1");
        assert_eq!(a["data"], "10.0.0.5");
        assert_eq!(a["priority"], Value::Null);
        assert!(a["id"].is_u64());

        let srv = call(
            "POST",
            &records,
            auth,
            &[],
            Some(
                json!({"type": "SRV", "name": "_nats-route._tcp", "data": "n1.fra1.nats.test.",
                        "priority": 10, "weight": 10, "port": 6222, "ttl": 60,
                        "flags": null, "tag": null}),
            ),
        );
        assert_eq!(srv.status, 201, "{}", srv.text);
        assert_eq!(srv.json()["domain_record"]["data"], "n1.fra1.nats.test");
        assert_eq!(srv.json()["domain_record"]["port"], 6222);

        for bad in [
            json!({"type": "A", "name": "n1", "data": "10.0.0.5", "ttl": 10}),
            json!({"type": "A", "name": "n1.fra1.nats.test", "data": "10.0.0.5"}),
            json!({"type": "A", "name": "n1", "data": "n1.example."}),
            json!({"type": "SRV", "name": "_x._tcp", "data": "n1", "priority": 1, "weight": 1, "port": 0}),
        ] {
            let r = call("POST", &records, auth, &[], Some(bad.clone()));
            assert_eq!(r.status, 422, "{bad}: {}", r.text);
            assert_eq!(r.json()["id"], "unprocessable_entity");
        }

        let list = call(
            "GET",
            &format!("{records}?name=n1.fra1.nats.test&per_page=200"),
            auth,
            &[],
            None,
        );
        assert_eq!(list.status, 200);
        let v = list.json();
        assert_eq!(v["domain_records"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["links"], json!({}));
        assert_eq!(v["meta"]["total"], 1);
        assert_eq!(list.header("ratelimit-limit").as_deref(), Some("5000"));
        assert!(list.header("ratelimit-remaining").is_some());
        assert!(list.header("ratelimit-reset").is_some());
        assert_eq!(
            list.header("content-type").as_deref(),
            Some("application/json; charset=utf-8")
        );

        // The apex: SOA (null id) and NS besides; paged by links.
        let apex = call(
            "GET",
            &format!("{records}?name={ZONE}&per_page=2"),
            auth,
            &[],
            None,
        );
        let v = apex.json();
        assert_eq!(v["domain_records"][0]["id"], Value::Null);
        assert_eq!(v["meta"]["total"], 4);
        let next = v["links"]["pages"]["next"].as_str().unwrap_or_default();
        assert!(next.starts_with(&base) && next.contains("page=2"), "{next}");
        let page2 = call("GET", next, auth, &[], None).json();
        assert_eq!(page2["domain_records"].as_array().map(Vec::len), Some(2));
        assert!(page2["links"]["pages"]["next"].is_null());

        let id = a["id"].to_string();
        let del = call("DELETE", &format!("{records}/{id}"), auth, &[], None);
        assert_eq!(del.status, 204);
        assert!(del.text.is_empty());
        let again = call("DELETE", &format!("{records}/{id}"), auth, &[], None);
        assert_eq!(again.status, 404);
        assert_eq!(again.json()["id"], "not_found");
        assert_eq!(fake.records().len(), 1);
        assert_eq!(fake.records()[0].name, "_nats-route._tcp.fra1.nats.test");

        let other = call(
            "GET",
            &format!("{base}/v2/domains/other.test/records"),
            auth,
            &[],
            None,
        );
        assert_eq!(other.status, 404);

        let denied = call("GET", &records, Some("Bearer wrong"), &[], None);
        assert_eq!(denied.status, 401);
        assert_eq!(
            denied.json(),
            json!({"id": "unauthorized", "message": "Unable to authenticate you."})
        );
        assert_eq!(call("GET", &records, None, &[], None).status, 401);

        {
            let mut s = fake.state.lock().expect("state");
            s.rate_limited = 1;
            s.retry_after_secs = 7;
        }
        let limited = call("GET", &records, auth, &[], None);
        assert_eq!(limited.status, 429);
        assert_eq!(limited.json()["id"], "too_many_requests");
        assert_eq!(limited.header("retry-after").as_deref(), Some("7"));
        assert_eq!(limited.header("ratelimit-remaining").as_deref(), Some("0"));
        assert_eq!(call("GET", &records, auth, &[], None).status, 200);

        // A token without domain:create: creates refused, reads served.
        fake.state
            .lock()
            .expect("state")
            .forbidden
            .push("POST /v2/domains/".into());
        let before = fake.records().len();
        let refused = call(
            "POST",
            &records,
            auth,
            &[],
            Some(json!({"type": "A", "name": "n9", "data": "10.0.0.9", "ttl": 30})),
        );
        assert_eq!(refused.status, 403);
        assert_eq!(
            refused.json(),
            json!({"id": "forbidden", "message": "You are not authorized to perform this operation"})
        );
        assert_eq!(fake.records().len(), before);
        assert_eq!(call("GET", &records, auth, &[], None).status, 200);
        fake.state.lock().expect("state").forbidden.clear();

        fake.state.lock().expect("state").fault = Fault::StatusTimes(500, 1);
        let failed = call("GET", &records, auth, &[], None);
        assert_eq!(failed.status, 500);
        assert_eq!(failed.json()["id"], "server_error");
        assert_eq!(call("GET", &records, auth, &[], None).status, 200);

        let s = fake.state.lock().expect("state");
        assert_eq!(s.requests[0], format!("POST /v2/domains/{ZONE}/records"));
        assert_eq!(s.bodies[0]["name"], "n1");
        assert!(s.authorization_seen.contains(&"Bearer wrong".to_owned()));
    }

    #[test]
    fn linode_contract() {
        let fake = FakeDnsApi::start(Flavor::Linode, ZONE, "lin-t", None);
        // Bad requests on purpose: the provider's own refusals are tested.
        fake.contract().answer_as_provider(true);
        let base = fake.url();
        assert!(base.ends_with("/v4"));
        let auth = Some("Bearer lin-t");

        let filter = json!({"domain": ZONE}).to_string();
        let domains = call(
            "GET",
            &format!("{base}/domains?page_size=25"),
            auth,
            &[("X-Filter", &filter)],
            None,
        );
        assert_eq!(domains.status, 200, "{}", domains.text);
        let v = domains.json();
        assert_eq!(v["data"][0]["id"], 1234);
        assert_eq!(v["data"][0]["type"], "master");
        assert_eq!(v["results"], 1);
        let other = json!({"domain": "other.test"}).to_string();
        let none = call(
            "GET",
            &format!("{base}/domains"),
            auth,
            &[("X-Filter", &other)],
            None,
        );
        assert_eq!(none.json()["results"], 0);

        let records = format!("{base}/domains/1234/records");
        let small = call("GET", &format!("{records}?page_size=10"), auth, &[], None);
        assert_eq!(small.status, 400);
        assert_eq!(
            small.json(),
            json!({"errors": [{"field": "page_size", "reason": "Must be 25-500"}]})
        );

        let a = call(
            "POST",
            &records,
            auth,
            &[],
            Some(json!({"type": "A", "name": "n1", "target": "10.0.0.5", "ttl_sec": 60})),
        );
        assert_eq!(a.status, 200, "{}", a.text);
        let a = a.json();
        assert_eq!(a["ttl_sec"], 300);
        assert_eq!(a["name"], "n1");
        assert_eq!(a["target"], "10.0.0.5");

        let sctp = call(
            "POST",
            &records,
            auth,
            &[],
            Some(
                json!({"type": "SRV", "service": "nats-route", "protocol": "sctp",
                        "target": "n1.fra1.nats.test", "priority": 10, "weight": 10, "port": 6222}),
            ),
        );
        assert_eq!(sctp.status, 400);
        assert_eq!(
            sctp.json()["errors"][0]["reason"],
            "Please select a valid protocol ('udp', 'tcp');"
        );
        let big = call(
            "POST",
            &records,
            auth,
            &[],
            Some(
                json!({"type": "SRV", "service": "nats-route", "protocol": "tcp",
                        "target": "n1.fra1.nats.test", "priority": 256, "weight": 10, "port": 6222}),
            ),
        );
        assert_eq!(big.status, 400);
        assert_eq!(big.json()["errors"][0]["field"], "priority");

        let srv = call(
            "POST",
            &records,
            auth,
            &[],
            Some(
                json!({"type": "SRV", "service": "nats-route", "protocol": "tcp",
                        "target": "n1.fra1.nats.test", "priority": 10, "weight": 10,
                        "port": 6222, "ttl_sec": 301}),
            ),
        );
        assert_eq!(srv.status, 200, "{}", srv.text);
        let srv = srv.json();
        assert_eq!(srv["name"], "_nats-route._tcp");
        assert_eq!(srv["service"], "nats-route");
        assert_eq!(srv["protocol"], "tcp");
        assert_eq!(srv["target"], "n1.fra1.nats.test");
        assert_eq!(srv["ttl_sec"], 3600);
        assert!(
            fake.records()
                .iter()
                .any(|r| r.name == "_nats-route._tcp.fra1.nats.test" && r.port == 6222)
        );

        let list = call(
            "GET",
            &format!("{records}?page=1&page_size=500"),
            auth,
            &[],
            None,
        );
        let v = list.json();
        assert_eq!(
            (v["page"].clone(), v["pages"].clone(), v["results"].clone()),
            (json!(1), json!(1), json!(2))
        );
        assert_eq!(list.header("x-ratelimit-limit").as_deref(), Some("800"));
        assert!(list.header("x-ratelimit-reset").is_some());

        let del = call("DELETE", &format!("{records}/{}", a["id"]), auth, &[], None);
        assert_eq!((del.status, del.json()), (200, json!({})));
        let again = call("DELETE", &format!("{records}/{}", a["id"]), auth, &[], None);
        assert_eq!(
            (again.status, again.json()),
            (404, json!({"errors": [{"reason": "Not found"}]}))
        );

        let denied = call("GET", &records, Some("Bearer lin-x"), &[], None);
        assert_eq!(
            (denied.status, denied.json()),
            (401, json!({"errors": [{"reason": "Invalid Token"}]}))
        );
        fake.state.lock().expect("state").rate_limited = 2;
        for _ in 0..2 {
            let limited = call("GET", &records, auth, &[], None);
            assert_eq!(limited.status, 429);
            assert_eq!(limited.header("retry-after").as_deref(), Some("1"));
            assert_eq!(
                limited.header("x-ratelimit-remaining").as_deref(),
                Some("0")
            );
            assert!(limited.json()["errors"][0]["reason"].is_string());
        }
        assert_eq!(call("GET", &records, auth, &[], None).status, 200);
        assert!(fake.requests().contains(&"GET /v4/domains".to_owned()));
        let broken = fake.contract().take();
        assert!(
            broken
                .iter()
                .any(|v| v.contains("body.priority: 256 is above the maximum 255")),
            "{broken:?}"
        );
    }

    /// Several Domains: each listed, found by its `domain` filter, and
    /// holding only its own records (a region's SRV at its own apex, the
    /// regions TXT at the domain's); a record is not reached through
    /// another Domain's id.
    #[test]
    fn linode_domains_hold_their_own_records() {
        let fake =
            FakeDnsApi::start_linode_domains(&["nats.test", "fra1.nats.test"], "lin-t", None);
        let base = fake.url();
        let auth = Some("Bearer lin-t");
        let all = call("GET", &format!("{base}/domains"), auth, &[], None).json();
        assert_eq!(all["results"], 2);
        let filter = json!({"domain": "fra1.nats.test"}).to_string();
        let fra1 = call(
            "GET",
            &format!("{base}/domains"),
            auth,
            &[("X-Filter", &filter)],
            None,
        )
        .json();
        assert_eq!(fra1["results"], 1);
        assert_eq!(fra1["data"][0]["id"], 1235);
        assert_eq!(fra1["data"][0]["domain"], "fra1.nats.test");

        let txt = call(
            "POST",
            &format!("{base}/domains/1234/records"),
            auth,
            &[],
            Some(json!({"type": "TXT", "name": "_nats-regions", "target": "fra1", "ttl_sec": 300})),
        );
        assert_eq!(txt.status, 200, "{}", txt.text);
        let srv = call(
            "POST",
            &format!("{base}/domains/1235/records"),
            auth,
            &[],
            Some(
                json!({"type": "SRV", "service": "nats-route", "protocol": "tcp",
                "target": "n1.fra1.nats.test", "priority": 10, "weight": 10, "port": 6222}),
            ),
        );
        assert_eq!(srv.status, 200, "{}", srv.text);
        assert_eq!(srv.json()["name"], "_nats-route._tcp");
        let names: Vec<String> = fake.records().into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            ["_nats-regions.nats.test", "_nats-route._tcp.fra1.nats.test"]
        );
        let listed = |id: u32| {
            let v = call(
                "GET",
                &format!("{base}/domains/{id}/records"),
                auth,
                &[],
                None,
            )
            .json();
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["type"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(listed(1234), ["TXT"]);
        assert_eq!(listed(1235), ["SRV"]);
        let id = srv.json()["id"].to_string();
        let wrong = call(
            "DELETE",
            &format!("{base}/domains/1234/records/{id}"),
            auth,
            &[],
            None,
        );
        assert_eq!(wrong.status, 404);
        assert_eq!(fake.records().len(), 2);
        let right = call(
            "DELETE",
            &format!("{base}/domains/1235/records/{id}"),
            auth,
            &[],
            None,
        );
        assert_eq!(right.status, 200);
        assert_eq!(fake.records().len(), 1);
        assert_eq!(
            call(
                "GET",
                &format!("{base}/domains/1236/records"),
                auth,
                &[],
                None
            )
            .status,
            404
        );
    }

    #[test]
    fn cloudflare_contract() {
        let fake = FakeDnsApi::start(Flavor::Cloudflare, "nats.test", "cf-t", None);
        let base = fake.url();
        assert!(base.ends_with("/client/v4"));
        let auth = Some("Bearer cf-t");

        let zones = call(
            "GET",
            &format!("{base}/zones?name=nats.test"),
            auth,
            &[],
            None,
        )
        .json();
        assert_eq!(zones["success"], true);
        let zid = zones["result"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(zid.len(), 32);
        assert_eq!(zones["result"][0]["status"], "active");
        let none = call(
            "GET",
            &format!("{base}/zones?name=other.test"),
            auth,
            &[],
            None,
        )
        .json();
        assert_eq!(none["result"], json!([]));

        let records = format!("{base}/zones/{zid}/dns_records");
        let a_body = json!({"type": "A", "name": "n1.fra1.nats.test", "content": "10.0.0.5",
                            "ttl": 60, "proxied": false});
        let short = {
            let mut b = a_body.clone();
            b["ttl"] = json!(30);
            call("POST", &records, auth, &[], Some(b))
        };
        assert_eq!(short.status, 400);
        assert_eq!(short.json()["success"], false);
        assert!(short.json()["errors"][0]["code"].is_u64());

        let a = call("POST", &records, auth, &[], Some(a_body.clone()));
        assert_eq!(a.status, 200, "{}", a.text);
        let a = a.json();
        assert_eq!(
            (
                a["success"].clone(),
                a["errors"].clone(),
                a["messages"].clone()
            ),
            (json!(true), json!([]), json!([]))
        );
        assert_eq!(a["result"]["name"], "n1.fra1.nats.test");
        assert_eq!(a["result"]["content"], "10.0.0.5");
        let dup = call("POST", &records, auth, &[], Some(a_body));
        assert_eq!(dup.status, 400);
        assert_eq!(
            dup.json(),
            json!({"success": false, "errors": [{"code": 81058, "message": "An identical record already exists."}],
                   "messages": [], "result": null})
        );

        let srv = call(
            "POST",
            &records,
            auth,
            &[],
            Some(
                json!({"type": "SRV", "name": "_nats-route._tcp.fra1.nats.test", "ttl": 60,
                        "data": {"priority": 10, "weight": 10, "port": 6222, "target": "n1.fra1.nats.test"}}),
            ),
        );
        assert_eq!(srv.status, 200, "{}", srv.text);
        let srv = srv.json();
        assert_eq!(srv["result"]["data"]["port"], 6222);
        assert_eq!(srv["result"]["content"], "10 6222 n1.fra1.nats.test");

        let by_name = call(
            "GET",
            &format!("{records}?name=n1.fra1.nats.test&page=1&per_page=100"),
            auth,
            &[],
            None,
        );
        let v = by_name.json();
        assert_eq!(v["result"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            v["result_info"],
            json!({"page": 1, "per_page": 100, "count": 1, "total_count": 1, "total_pages": 1})
        );
        assert!(by_name.header("ratelimit").is_some());
        assert!(by_name.header("ratelimit-policy").is_some());
        let exact = call(
            "GET",
            &format!("{records}?name.exact=_nats-route._tcp.fra1.nats.test&type=SRV"),
            auth,
            &[],
            None,
        )
        .json();
        assert_eq!(exact["result"][0]["data"]["target"], "n1.fra1.nats.test");
        let paged = call("GET", &format!("{records}?per_page=1"), auth, &[], None).json();
        assert_eq!(paged["result_info"]["total_pages"], 2);
        let by_content = call(
            "GET",
            &format!("{records}?content=10.0.0.5"),
            auth,
            &[],
            None,
        )
        .json();
        assert_eq!(by_content["result_info"]["total_count"], 1);

        let id = a["result"]["id"].as_str().unwrap_or_default().to_owned();
        let del = call("DELETE", &format!("{records}/{id}"), auth, &[], None);
        assert_eq!(del.status, 200);
        assert_eq!(del.json()["result"], json!({"id": id}));
        let again = call("DELETE", &format!("{records}/{id}"), auth, &[], None);
        assert_eq!(again.status, 404);
        assert_eq!(again.json()["errors"][0]["code"], 81044);
        assert_eq!(fake.records().len(), 1);

        let denied = call("GET", &records, Some("Bearer cf-x"), &[], None);
        assert_eq!(denied.status, 401);
        assert_eq!(
            denied.json()["errors"],
            json!([{"code": 10000, "message": "Authentication error"}])
        );
        fake.state.lock().expect("state").rate_limited = 1;
        let limited = call("GET", &records, auth, &[], None);
        assert_eq!(limited.status, 429);
        assert_eq!(limited.json()["errors"][0]["code"], 971);
        assert_eq!(limited.header("retry-after").as_deref(), Some("1"));
        assert_eq!(
            limited.header("ratelimit").as_deref(),
            Some("\"default\";r=0;t=1")
        );
    }

    #[test]
    fn dns_api_mirrors_into_bind() {
        let bind = crate::bind::Bind::start("nats.test");
        let fake = FakeDnsApi::start(Flavor::DigitalOcean, "nats.test", "t", Some(bind.writer()));
        let records = format!("{}/v2/domains/nats.test/records", fake.url());
        let auth = Some("Bearer t");
        let a = call(
            "POST",
            &records,
            auth,
            &[],
            Some(json!({"type": "A", "name": "n1.fra1", "data": "10.0.0.5", "ttl": 30})),
        );
        assert_eq!(a.status, 201, "{}", a.text);
        let srv = call(
            "POST",
            &records,
            auth,
            &[],
            Some(
                json!({"type": "SRV", "name": "_nats-route._tcp.fra1", "data": "n1.fra1.nats.test.",
                        "priority": 10, "weight": 10, "port": 6222, "ttl": 30}),
            ),
        );
        assert_eq!(srv.status, 201, "{}", srv.text);
        assert_eq!(bind.dig("n1.fra1.nats.test", "A"), vec!["10.0.0.5"]);
        assert_eq!(
            bind.dig("_nats-route._tcp.fra1.nats.test", "SRV"),
            vec!["10 10 6222 n1.fra1.nats.test."]
        );
        let id = a.json()["domain_record"]["id"].to_string();
        assert_eq!(
            call("DELETE", &format!("{records}/{id}"), auth, &[], None).status,
            204
        );
        assert!(bind.dig("n1.fra1.nats.test", "A").is_empty());

        // Outside BIND's zone nsupdate fails: 500, nothing kept.
        let outside = FakeDnsApi::start(Flavor::Cloudflare, "other.test", "t", Some(bind.writer()));
        let zid = CF_ZONE_ID;
        let failed = call(
            "POST",
            &format!("{}/zones/{zid}/dns_records", outside.url()),
            auth,
            &[],
            Some(json!({"type": "A", "name": "x.other.test", "content": "10.0.0.9", "ttl": 60})),
        );
        assert_eq!(failed.status, 500, "{}", failed.text);
        assert_eq!(failed.json()["success"], false);
        assert!(outside.records().is_empty());
    }
}
