//! Checks on provider API settings shared by validation and the REST client.

/// A token only travels over HTTPS, or plain HTTP to this machine (a
/// local proxy or a test double).
pub fn token_safe_url(url: &str) -> Result<(), UnsafeUrl> {
    let parsed = reqwest::Url::parse(url).map_err(|e| UnsafeUrl::NotAUrl {
        url: url.to_owned(),
        why: e.to_string(),
    })?;
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
            _ => Err(UnsafeUrl::ClearText {
                url: url.to_owned(),
            }),
        },
        other => Err(UnsafeUrl::Scheme {
            url: url.to_owned(),
            scheme: other.to_owned(),
        }),
    }
}

/// Why a token may not be sent to a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeUrl {
    /// It does not parse.
    #[error("{url:?} is not a URL: {why}")]
    NotAUrl {
        /// The URL as written.
        url: String,
        /// The parser's reason.
        why: String,
    },
    /// Plain HTTP to another machine.
    #[error(
        "{url:?}: the token would travel in clear text; use https (plain http only to loopback)"
    )]
    ClearText {
        /// The URL as written.
        url: String,
    },
    /// Neither https nor http.
    #[error("{url:?}: scheme {scheme:?} is not https")]
    Scheme {
        /// The URL as written.
        url: String,
        /// Its scheme.
        scheme: String,
    },
}
