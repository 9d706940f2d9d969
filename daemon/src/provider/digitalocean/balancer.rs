//! DigitalOcean Load Balancers (reference §1): read the balancer, and add
//! or remove this droplet through the add/remove endpoints, never a PUT of
//! the whole balancer (a full replace would overwrite what other nodes
//! wrote). A balancer defined by a droplet tag refuses droplet ids (422):
//! membership is then the tag itself, assigned to and removed from this
//! droplet.
//!
//! A balancer reaches droplets only inside its own VPC. The metadata
//! service does not name a droplet's VPC, so the droplet is read
//! (`GET /v2/droplets/{id}`, scope `droplet:read`) and its `vpc_uuid`
//! compared with the balancer's. A token without that scope leaves the
//! check undone with a warning rather than keeping a node out that served
//! before the check existed.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::provider::LoadBalancer;
use crate::provider::lb::{Health, LbError, Rule, Setup, name_missing_scope};
use crate::provider::rest::{ClientError, Flavor, Purpose, Rest, RestError};

/// One balancer, seen from one droplet.
pub struct DigitalOcean {
    rest: Rest,
    lb_id: String,
    droplet_id: u64,
}

impl DigitalOcean {
    /// Nothing is contacted yet.
    pub fn new(base: &str, lb_id: &str, droplet_id: u64) -> Result<Self, ClientError> {
        Ok(Self {
            rest: Rest::new(Flavor::DigitalOcean, base, Purpose::LoadBalancer)?,
            lb_id: lb_id.to_owned(),
            droplet_id,
        })
    }

    /// `GET /v2/load_balancers/{id}`, read into what natsmesh checks.
    pub async fn read(&self, token: &str) -> Result<Setup, LbError> {
        let path = format!("/v2/load_balancers/{}", self.lb_id);
        let v = self
            .rest
            .call(token, Method::GET, &path, None, &[], StatusCode::OK)
            .await
            .map_err(classify)?;
        let lb = &v["load_balancer"];
        if !lb.is_object() {
            return Err(LbError::fatal(
                format!("GET {path}"),
                "no load_balancer in the answer",
            ));
        }
        let droplets: Vec<u64> = lb["droplet_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        let hc = &lb["health_check"];
        let num = |k: &str, default: u64| hc[k].as_u64().unwrap_or(default);
        let mut wrong = Vec::new();
        if let Some(lb_vpc) = lb["vpc_uuid"].as_str().filter(|v| !v.is_empty())
            && let Some(own) = self.droplet_vpc(token).await?
            && own != lb_vpc
        {
            wrong.push(format!(
                "the balancer is in VPC {lb_vpc}, this droplet in VPC {own}: a balancer reaches droplets only in its own VPC; create one in VPC {own} (a balancer's VPC cannot be changed) or this droplet in VPC {lb_vpc}"
            ));
        }
        Ok(Setup {
            rules: lb["forwarding_rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| Rule {
                    entry: format!(
                        "{}:{}",
                        r["entry_protocol"].as_str().unwrap_or("?"),
                        r["entry_port"]
                    ),
                    target_protocol: r["target_protocol"].as_str().unwrap_or("?").to_owned(),
                    target_port: r["target_port"]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok()),
                    tls_passthrough: r["tls_passthrough"].as_bool().unwrap_or(false),
                })
                .collect(),
            health: Health {
                protocol: hc["protocol"].as_str().unwrap_or("http").to_owned(),
                port: u16::try_from(num("port", 80)).ok(),
                path: hc["path"].as_str().unwrap_or("/").to_owned(),
                interval: std::time::Duration::from_secs(num("check_interval_seconds", 10)),
                timeout: std::time::Duration::from_secs(num("response_timeout_seconds", 5)),
                unhealthy: u32::try_from(num("unhealthy_threshold", 5)).unwrap_or(5),
                healthy: u32::try_from(num("healthy_threshold", 3)).unwrap_or(3),
            },
            region: lb["region"]["slug"].as_str().unwrap_or("").to_owned(),
            status: lb["status"].as_str().unwrap_or("").to_owned(),
            tag: lb["tag"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            registered: droplets.contains(&self.droplet_id),
            members: Vec::new(),
            wrong,
        })
    }

    /// This droplet's VPC, or `None` when the token may not read it
    /// (warned: the VPC check is then not made).
    async fn droplet_vpc(&self, token: &str) -> Result<Option<String>, LbError> {
        let path = format!("/v2/droplets/{}", self.droplet_id);
        match self
            .rest
            .call(token, Method::GET, &path, None, &[], StatusCode::OK)
            .await
        {
            Ok(v) => Ok(v["droplet"]["vpc_uuid"]
                .as_str()
                .filter(|v| !v.is_empty())
                .map(str::to_owned)),
            Err(e) if e.status == Some(403) => {
                tracing::warn!(
                    error = %e,
                    "cannot read this droplet to check that it is in the balancer's VPC: give the token the droplet:read scope"
                );
                Ok(None)
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Adds this droplet (or the balancer's tag to it). Idempotent.
    pub async fn register(&self, token: &str, tag: Option<&str>) -> Result<(), LbError> {
        self.write(token, Method::POST, tag).await
    }

    /// Removes this droplet (or the tag from it); 404 means done.
    pub async fn deregister(&self, token: &str, tag: Option<&str>) -> Result<(), LbError> {
        match self.write(token, Method::DELETE, tag).await {
            Err(e) if e.status == Some(404) => Ok(()),
            other => other,
        }
    }

    async fn write(&self, token: &str, method: Method, tag: Option<&str>) -> Result<(), LbError> {
        let (path, body) = match tag {
            None => (
                format!("/v2/load_balancers/{}/droplets", self.lb_id),
                json!({ "droplet_ids": [self.droplet_id] }),
            ),
            Some(tag) => (
                format!("/v2/tags/{tag}/resources"),
                json!({ "resources": [{ "resource_id": self.droplet_id.to_string(), "resource_type": "droplet" }] }),
            ),
        };
        self.rest
            .call(
                token,
                method,
                &path,
                Some(&body),
                &[],
                StatusCode::NO_CONTENT,
            )
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

/// Which answers are worth a retry: transport failures, 429, 5xx, and the
/// 403 a balancer gives while it applies an earlier change; not 401, not
/// the 422 of a tag-based balancer, not other refusals.
fn classify(e: RestError) -> LbError {
    let retry = match e.status {
        None => true,
        Some(429) => true,
        Some(s) if s >= 500 => true,
        Some(403) => e.text.contains("processes previous actions"),
        Some(_) => false,
    };
    name_missing_scope(e, retry, scope)
}

/// The custom scope each call needs (DigitalOcean's scope reference; a
/// token without it is refused 403).
fn scope(op: &str) -> Option<&'static str> {
    let (method, path) = op.split_once(' ')?;
    if path.starts_with("/v2/load_balancers") {
        Some(if method == "GET" {
            "load_balancer:read"
        } else {
            "load_balancer:update"
        })
    } else if path.starts_with("/v2/tags/") {
        Some(if method == "DELETE" {
            "tag:delete and droplet:update"
        } else {
            "tag:create and droplet:update"
        })
    } else if path.starts_with("/v2/droplets/") {
        Some("droplet:read")
    } else {
        None
    }
}

#[async_trait::async_trait]
impl LoadBalancer for DigitalOcean {
    async fn setup(&self, token: &str) -> Result<Setup, LbError> {
        self.read(token).await
    }

    async fn join(&self, token: &str, setup: &Setup) -> Result<(), LbError> {
        self.register(token, setup.tag.as_deref()).await
    }

    async fn leave(&self, token: &str, setup: &Setup) -> Result<(), LbError> {
        self.deregister(token, setup.tag.as_deref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, text: &str) -> RestError {
        RestError {
            what: "x".into(),
            status: Some(status),
            text: text.into(),
            retry_after: None,
        }
    }

    #[test]
    fn retries_what_passes_and_not_what_will_not() {
        assert!(classify(err(429, "API rate limit exceeded.")).retry);
        assert!(classify(err(503, "")).retry);
        assert!(
            classify(err(
                403,
                "Load Balancer can't be updated while it processes previous actions"
            ))
            .retry
        );
        assert!(!classify(err(403, "You do not have access for the attempted action.")).retry);
        // A refusal names the scope its call needs; a retried 403 does not.
        let refused = |what: &str| {
            classify(RestError {
                what: what.into(),
                ..err(403, "You are not authorized to perform this operation")
            })
            .why
        };
        let lb = "digitalocean POST /v2/load_balancers/4de7/droplets";
        assert!(refused(lb).ends_with("(the token lacks the load_balancer:update scope for this)"));
        assert!(
            refused("digitalocean GET /v2/load_balancers/4de7")
                .contains("load_balancer:read scope")
        );
        assert!(
            refused("digitalocean DELETE /v2/tags/nats/resources")
                .contains("tag:delete and droplet:update")
        );
        assert!(
            refused("digitalocean POST /v2/tags/nats/resources")
                .contains("tag:create and droplet:update")
        );
        let busy = classify(RestError {
            what: lb.into(),
            ..err(
                403,
                "Load Balancer can't be updated while it processes previous actions",
            )
        });
        assert!(!busy.why.contains("scope"), "{}", busy.why);
        assert!(!classify(err(401, "Unable to authenticate you.")).retry);
        assert!(!classify(err(422, "tag-based")).retry);
    }
}
