//! Holds a fake to the provider's published contract while it serves:
//! every request that reaches a provider-API fake is checked against the
//! provider's OpenAPI files ([`super::openapi::validate_request`]) before
//! the fake sees it, and every answer the fake gives is checked
//! ([`super::openapi::validate_response`]) before the client sees it. So
//! every test that uses a fake (balancer, publication, drills, systemd,
//! cloud-init) is checked without opting in, and a fake that drifts from
//! the provider is caught as surely as a daemon that does.
//!
//! A violation must fail the test that caused it, and cannot pass
//! silently:
//! * it is recorded, with the request and the reason;
//! * the offending exchange is answered 500 with the provider's error body,
//!   its message starting `contract violation:` (so a daemon's log and
//!   `status` show it too), unless [`Contract::answer_as_provider`] was
//!   set (a test of the fake itself that sends a bad request on purpose and
//!   wants the provider's own refusal);
//! * the fake panics when dropped while violations are recorded that no
//!   test took with [`Contract::take`] (and [`Contract::assert_clean`]
//!   panics at once, for a check in the middle of a test).
//!
//! Answers the test asked to be malformed ([`super::Fault::EmptyBody`],
//! [`super::Fault::Garbage`]) are marked [`Injected`] and not checked: they
//! break the contract on purpose.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::openapi::{Spec, response_problems, validate_request};

/// Marks an answer that breaks the contract because the test asked for it.
#[derive(Debug, Clone, Copy)]
pub struct Injected;

/// Bodies larger than this are not buffered for the check (none of the
/// fakes' answers comes near).
const MAX_BODY: usize = 8 << 20;

/// What one fake's checks found.
#[derive(Debug)]
pub struct Contract {
    /// `None`: a provider without a vendored OpenAPI file (Cloudflare);
    /// nothing is checked.
    spec: Option<Spec>,
    violations: Mutex<Vec<String>>,
    as_provider: AtomicBool,
}

impl Contract {
    /// Checks against `spec`.
    pub fn new(spec: Option<Spec>) -> Arc<Self> {
        Arc::new(Self {
            spec,
            violations: Mutex::new(Vec::new()),
            as_provider: AtomicBool::new(false),
        })
    }

    /// Answer a violating request the way the provider would (its own 400,
    /// 404 or 422) instead of with the 500 contract violation; the
    /// violation is recorded all the same.
    pub fn answer_as_provider(&self, on: bool) {
        self.as_provider.store(on, Ordering::SeqCst);
    }

    /// The violations so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().clone()
    }

    /// The violations so far, cleared: a test that provoked them on purpose
    /// takes them (and asserts on them), so the fake's drop does not fail.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lock())
    }

    /// Panics when a violation is recorded.
    pub fn assert_clean(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "{}", report(&v));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.violations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, what: String) {
        eprintln!("fake: contract violation: {what}");
        self.lock().push(what);
    }

    /// Serves one exchange through `fake`, checking the request before and
    /// the answer after.
    pub(crate) async fn check<F>(
        &self,
        method: &Method,
        uri: &Uri,
        body: &[u8],
        fake: F,
    ) -> Response
    where
        F: Future<Output = Response>,
    {
        let Some(spec) = self.spec else {
            return fake.await;
        };
        let path = uri.path();
        let request = if body.is_empty() {
            validate_request(spec, method.as_str(), path, None)
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(json) => validate_request(spec, method.as_str(), path, Some(&json)),
                Err(e) => Err(format!("the request body is not JSON: {e}")),
            }
        };
        if let Err(e) = request {
            let what = format!("request {method} {uri}: {e}");
            self.record(what.clone());
            if !self.as_provider.load(Ordering::SeqCst) {
                return violation(spec, &what);
            }
            // The provider's own refusal: its answer is not checked, as
            // an operation the spec lacks has no answers to check against.
            return fake.await;
        }
        let resp = fake.await;
        if resp.extensions().get::<Injected>().is_some() {
            return resp;
        }
        let (parts, inner) = resp.into_parts();
        let bytes = match axum::body::to_bytes(inner, MAX_BODY).await {
            Ok(b) => b,
            Err(e) => {
                let what = format!("answer to {method} {uri}: unreadable body: {e}");
                self.record(what.clone());
                return violation(spec, &what);
            }
        };
        let status = parts.status.as_u16();
        let problems = response_problems(spec, method.as_str(), path, status, &bytes)
            .map(|p| {
                p.into_iter()
                    .filter(|p| !erratum(spec, p))
                    .collect::<Vec<_>>()
            })
            .and_then(|p| {
                if p.is_empty() {
                    Ok(())
                } else {
                    Err(p.join("; "))
                }
            });
        if let Err(e) = problems {
            let what = format!("answer {status} to {method} {uri}: {e}");
            self.record(what.clone());
            if !self.as_provider.load(Ordering::SeqCst) {
                return violation(spec, &what);
            }
        }
        Response::from_parts(parts, axum::body::Body::from(bytes))
    }
}

/// Where the provider's API is known to answer outside its own OpenAPI
/// file, and the fake models the API: each entry is one exact problem
/// text and its source. Kept this narrow so nothing else slips by.
const ERRATA: &[(Spec, &str, &str)] = &[
    // The SOA record is listed with `"id": null` (octoDNS's recorded
    // fixture, dns_api_contracts.md §1); the spec says integer.
    (
        Spec::DigitalOcean,
        r"^body\.domain_records\[\d+\]\.id: null is not of type integer$",
        "dns_api_contracts.md: SOA id null",
    ),
    // A new node's status is "Unknown" as the real API writes it (the
    // fake's module notes, linode_lb.rs); v4.176's enum says "unknown".
    (
        Spec::Linode,
        r#"^body(\.data\[\d+\])?\.status: "Unknown" is not one of \["unknown","UP","DOWN"\]$"#,
        "linode_lb.rs: node status Unknown",
    ),
    // A private address has no gateway and no reverse DNS: null, as the
    // spec's own examples of IPAddressPrivate show, though its type says
    // string.
    (
        Spec::Linode,
        r"^body\.ipv4\.private\[\d+\]\.(gateway|rdns): null is not of type string$",
        "v4.176 IPAddressPrivate examples",
    ),
    // A record at the Domain's apex is shown with the name "": the spec's
    // own prose for `name` gives "" as the apex (CAA, null MX), though its
    // minLength says 1. (A request still names the apex by its FQDN.)
    (
        Spec::Linode,
        r#"^body(\.data\[\d+\])?\.name: "" is shorter than 1$"#,
        "v4.176 DomainRecord.name prose",
    ),
];

/// Whether `problem` is a known, sourced deviation of the real API.
fn erratum(spec: Spec, problem: &str) -> bool {
    ERRATA.iter().any(|(s, pattern, _)| {
        *s == spec && regex::Regex::new(pattern).is_ok_and(|re| re.is_match(problem))
    })
}

/// The panic text for recorded violations.
fn report(v: &[String]) -> String {
    format!(
        "the fake saw {} exchange(s) outside the provider's OpenAPI contract:\n  {}",
        v.len(),
        v.join("\n  ")
    )
}

/// A 500 in the provider's error shape, saying what broke the contract.
fn violation(spec: Spec, what: &str) -> Response {
    let message = format!("contract violation: {what}");
    let body = match spec {
        Spec::DigitalOcean => json!({"id": "server_error", "message": message}),
        Spec::Linode => json!({"errors": [{"reason": message}]}),
    };
    let mut r = (StatusCode::INTERNAL_SERVER_ERROR, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.extensions_mut().insert(Injected);
    r
}

/// Fails the test when dropped with violations nobody took. Put it last in
/// a fake's fields, so the server has stopped (and every exchange is
/// recorded) before it looks.
#[derive(Debug)]
pub struct Guard(pub Arc<Contract>);

impl Drop for Guard {
    fn drop(&mut self) {
        let v = self.0.violations();
        if v.is_empty() {
            return;
        }
        if std::thread::panicking() {
            // Already failing: say it, a second panic would abort.
            eprintln!("{}", report(&v));
        } else {
            panic!("{}", report(&v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Fault;
    use super::super::do_lb::{DoLb, FakeDoLb};
    use super::super::lb::Model;
    use super::super::lb::testkit::call;
    use super::super::linode_lb::{FakeLinodeLb, LinodeNb};
    use serde_json::json;
    use std::net::IpAddr;

    const TOKEN: &str = "dop_v1_contract";
    const LB: &str = "4de7ac8b-495b-4884-9a69-1050c6793cd6";

    fn do_fake(lb: DoLb) -> FakeDoLb {
        FakeDoLb::start(
            TOKEN,
            lb,
            vec![(101, IpAddr::from([127, 0, 0, 1]))],
            Model::default(),
        )
    }

    /// Whether dropping `fake` panics, and with what.
    fn drop_panics<T: Send + 'static>(fake: T) -> Option<String> {
        std::thread::spawn(move || drop(fake))
            .join()
            .err()
            .map(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "(not a string)".into())
            })
    }

    #[test]
    fn contract_a_bad_request_is_answered_500_and_fails_on_drop() {
        let fake = do_fake(DoLb::tcp(LB, "fra1", 4222, 8222));
        let url = format!("{}/v2/load_balancers/{LB}/droplets", fake.api_url());
        // A string where the spec says integer: the real API would say
        // 400, and a daemon that sent it must not pass.
        let got = call(
            "POST",
            &url,
            Some(TOKEN),
            Some(json!({"droplet_ids": ["101"]})),
        );
        assert_eq!(got.status, 500, "{}", got.text);
        let message = got.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.starts_with("contract violation: request POST"),
            "{message}"
        );
        assert!(message.contains("droplet_ids[0]"), "{message}");
        // Nothing reached the fake's model.
        assert!(fake.registered().is_empty());
        // An undocumented operation is one too.
        let put = call("PUT", &url, Some(TOKEN), None);
        assert_eq!(put.status, 500, "{}", put.text);
        assert_eq!(fake.contract().violations().len(), 2);
        let text = drop_panics(fake).expect("the drop fails the test");
        assert!(text.contains("2 exchange(s)"), "{text}");
        assert!(text.contains("PUT is not an operation"), "{text}");
    }

    #[test]
    fn contract_a_bad_answer_is_replaced_and_fails_on_drop() {
        let mut lb = DoLb::tcp(LB, "fra1", 4222, 8222);
        // The fake is told to show what DigitalOcean never would.
        lb.forwarding_rules[0]["entry_protocol"] = json!("carrier-pigeon");
        let fake = do_fake(lb);
        let url = format!("{}/v2/load_balancers/{LB}", fake.api_url());
        let got = call("GET", &url, Some(TOKEN), None);
        assert_eq!(got.status, 500, "{}", got.text);
        let message = got.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains("answer 200 to GET"), "{message}");
        assert!(message.contains("entry_protocol"), "{message}");
        // `assert_clean` fails at once; `take` clears, and then the drop
        // passes.
        let clean = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fake.contract().assert_clean()
        }));
        assert!(clean.is_err());
        assert_eq!(fake.contract().take().len(), 1);
        assert_eq!(drop_panics(fake), None);
    }

    #[test]
    fn contract_injected_garbage_passes_and_good_exchanges_are_clean() {
        let fake = do_fake(DoLb::tcp(LB, "fra1", 4222, 8222));
        let url = format!("{}/v2/load_balancers/{LB}", fake.api_url());
        assert_eq!(call("GET", &url, Some(TOKEN), None).status, 200);
        let add = call(
            "POST",
            &format!("{url}/droplets"),
            Some(TOKEN),
            Some(json!({"droplet_ids": [101]})),
        );
        assert_eq!(add.status, 204, "{}", add.text);
        // Errors in the provider's shape are documented answers.
        assert_eq!(call("GET", &url, Some("wrong"), None).status, 401);
        fake.state.lock().expect("state").fault = Fault::Garbage;
        let junk = call("GET", &url, Some(TOKEN), None);
        assert_eq!(junk.status, 200);
        assert!(junk.text.contains("\"links\":7"), "{}", junk.text);
        fake.state.lock().expect("state").fault = Fault::Status(503);
        assert_eq!(call("GET", &url, Some(TOKEN), None).status, 503);
        assert_eq!(fake.contract().violations(), Vec::<String>::new());
        assert_eq!(drop_panics(fake), None);
    }

    #[test]
    fn contract_linode_bad_request_answered_in_linode_shape() {
        let fake = FakeLinodeLb::start(
            "lin",
            LinodeNb::tcp(1, "us-east", 2, 4222),
            Model::default(),
        );
        let url = format!("{}/nodebalancers/1/configs/2/nodes", fake.api_url());
        let got = call(
            "POST",
            &url,
            Some("lin"),
            Some(json!({"label": "x", "address": "192.168.128.5:4222"})),
        );
        assert_eq!(got.status, 500, "{}", got.text);
        let reason = got.json()["errors"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(reason.contains("body.label"), "{reason}");
        assert!(drop_panics(fake).is_some());
    }
}
