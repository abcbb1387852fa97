//! The instance's address: which URLs an authentication may send its
//! secrets to. Checked when an authentication is added or changed
//! ([`crate::tokens`]) and again on every row the store loads
//! ([`crate::store`]), so that an edited database cannot point a stored
//! secret elsewhere in the clear.

use std::net::IpAddr;

/// Why a URL cannot be an instance's; each message says what to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceUrlError {
    #[error("instance URL {input:?} is not a URL ({reason}): use https://NAME.service-now.com")]
    NotAUrl { input: String, reason: String },
    #[error("instance URL {0:?} has no host: use https://NAME.service-now.com")]
    NoHost(String),
    #[error(
        "instance URL {0:?} uses plain http: tokens would cross the network in clear; use https://"
    )]
    PlainHttp(String),
    #[error("instance URL {input:?} has scheme {scheme:?}: use https://")]
    Scheme { input: String, scheme: String },
    #[error("instance URL {0:?} must not carry a user name or password")]
    Credentials(String),
    #[error("instance URL {0:?} must be the instance root, like https://NAME.service-now.com")]
    NotTheRoot(String),
}

/// Checks and normalises an instance URL: `https://host[:port]`, or
/// `http://` for loopback hosts only (tests and demos).
pub fn normalize_instance_url(input: &str) -> Result<String, InstanceUrlError> {
    let url = url::Url::parse(input.trim()).map_err(|e| InstanceUrlError::NotAUrl {
        input: input.to_string(),
        reason: e.to_string(),
    })?;
    let host = url
        .host_str()
        .ok_or_else(|| InstanceUrlError::NoHost(input.to_string()))?;
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(InstanceUrlError::PlainHttp(input.to_string())),
        other => {
            return Err(InstanceUrlError::Scheme {
                input: input.to_string(),
                scheme: other.to_string(),
            })
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InstanceUrlError::Credentials(input.to_string()));
    }
    if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
        return Err(InstanceUrlError::NotTheRoot(input.to_string()));
    }
    let mut out = format!("{}://{}", url.scheme(), host);
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_urls_are_https_except_loopback() {
        assert_eq!(
            normalize_instance_url("https://acme.service-now.com/").unwrap(),
            "https://acme.service-now.com"
        );
        assert_eq!(
            normalize_instance_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_instance_url("http://[::1]:80").unwrap(),
            "http://[::1]"
        );
        assert!(normalize_instance_url("http://acme.service-now.com").is_err());
        assert!(normalize_instance_url("ftp://acme").is_err());
        assert!(normalize_instance_url("https://u:p@acme.service-now.com").is_err());
        assert!(normalize_instance_url("https://acme.service-now.com/now/nav").is_err());
        assert!(normalize_instance_url("acme.service-now.com").is_err());
    }
}
