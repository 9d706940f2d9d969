//! Checks on provider API settings shared by validation and the REST client.

/// A token only travels over HTTPS, or plain HTTP to this machine (a
/// local proxy or a test double).
pub fn token_safe_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => match parsed
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        {
            Some("localhost") => Ok(()),
            Some(h)
                if h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()) =>
            {
                Ok(())
            }
            _ => Err(format!(
                "{url:?}: the token would travel in clear text; use https (plain http only to loopback)"
            )),
        },
        other => Err(format!("{url:?}: scheme {other:?} is not https")),
    }
}
