//! The gateway's outbound HTTP client for files by URL: workers have no
//! network, so the gateway fetches and uploads on their behalf.
//!
//! Every URL is checked before anything is sent: http or https only, and the
//! host's addresses must pass [`crate::net_guard`] (a literal address at once,
//! a name through the client's own resolver, which hands the connector only
//! checked addresses). Redirects are not followed by the client; [`Transfers::get`]
//! follows at most [`MAX_REDIRECTS`], checking each target like the first URL.
//! No proxy is used (a proxy would connect on our behalf, unchecked). Bodies
//! stream: the caller reads or writes chunks and counts them against the cap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};

use crate::config::Config;
use crate::net_guard::{Guard, GuardedResolver, Refused};

/// Redirects one download may follow.
pub const MAX_REDIRECTS: usize = 5;
/// Longest accepted URL, bytes.
const MAX_URL: usize = 16 * 1024;

/// Why a transfer did not happen or did not finish.
#[derive(Debug)]
pub enum TransferError {
    /// The URL is not acceptable (scheme, syntax, a refused address): nothing was sent there.
    Refused(String),
    /// Larger than the cap (bytes).
    TooLarge(u64),
    /// The remote server failed, answered an error, or broke the connection.
    Remote(String),
    /// The transfer took longer than `files.url_timeout_secs`.
    Timeout(Duration),
}

/// The shared client and the limits of every transfer.
pub struct Transfers {
    client: reqwest::Client,
    guard: Arc<Guard>,
    /// Largest file moved either way, bytes.
    pub max_bytes: u64,
    pub timeout: Duration,
}

impl Transfers {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let guard = Arc::new(Guard::new(config.files.url_allow.clone()));
        let timeout = Duration::from_secs(config.files.url_timeout_secs);
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver(Arc::clone(&guard))))
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("code-interpreter/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let disk = config.limits.disk_mb.saturating_mul(1024 * 1024);
        Ok(Self {
            client,
            guard,
            max_bytes: config.files.max_url_bytes.min(disk),
            timeout,
        })
    }

    /// Parses `url` and checks what can be checked without the network: the
    /// scheme, and a literal address. A host name is checked when resolved.
    pub fn parse(&self, url: &str) -> Result<Url, TransferError> {
        if url.len() > MAX_URL {
            return Err(TransferError::Refused(format!(
                "URLs are limited to {MAX_URL} bytes"
            )));
        }
        let parsed = Url::parse(url)
            .map_err(|e| TransferError::Refused(format!("{:.200} is not a URL: {e}", url)))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(TransferError::Refused(format!(
                "only http and https URLs are accepted, not {}:",
                parsed.scheme()
            )));
        }
        let refused = |r: Refused| TransferError::Refused(r.0);
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => self.guard.check(ip.into()).map_err(refused)?,
            Some(url::Host::Ipv6(ip)) => self.guard.check(ip.into()).map_err(refused)?,
            Some(url::Host::Domain(_)) => {}
            None => return Err(TransferError::Refused("the URL has no host".into())),
        }
        Ok(parsed)
    }

    /// [`Self::parse`], then resolves a host name and checks its addresses,
    /// so that a refused name is a clear error before any connection.
    pub async fn check(&self, url: &str) -> Result<Url, TransferError> {
        let parsed = self.parse(url)?;
        if let Some(url::Host::Domain(name)) = parsed.host() {
            self.guard
                .resolve(name)
                .await
                .map_err(|e| match e.downcast::<Refused>() {
                    Ok(refused) => TransferError::Refused(refused.0),
                    Err(e) => TransferError::Remote(format!("cannot resolve {name}: {e}")),
                })?;
        }
        Ok(parsed)
    }

    /// A request to a checked URL, with the transfer timeout.
    pub fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.client.request(method, url).timeout(self.timeout)
    }

    /// A GET that must be over, body included, by `deadline`.
    fn get_until(
        &self,
        url: Url,
        deadline: Instant,
    ) -> Result<reqwest::RequestBuilder, TransferError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransferError::Timeout(self.timeout));
        }
        Ok(self.client.request(Method::GET, url).timeout(left))
    }

    /// GET `url`, following redirects (each target checked again); the
    /// response of a 2xx answer, its body not yet read. The Content-Length,
    /// when given, must be within the cap.
    pub async fn get(&self, url: &str) -> Result<reqwest::Response, TransferError> {
        // One timeout for the whole transfer, redirects included.
        let deadline = Instant::now() + self.timeout;
        let mut current = self.check(url).await?;
        for _ in 0..=MAX_REDIRECTS {
            let response = self
                .get_until(current.clone(), deadline)?
                .send()
                .await
                .map_err(|e| self.failure(e))?;
            let status = response.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| {
                        TransferError::Remote(format!(
                            "the server answered {status} without a Location"
                        ))
                    })?;
                let next = current.join(location).map_err(|e| {
                    TransferError::Remote(format!("the server redirected to a bad URL: {e}"))
                })?;
                current = self.check(next.as_str()).await.map_err(|e| match e {
                    TransferError::Refused(why) => {
                        TransferError::Refused(format!("redirect refused: {why}"))
                    }
                    other => other,
                })?;
                continue;
            }
            if !status.is_success() {
                return Err(TransferError::Remote(format!(
                    "the server answered {status} for {}",
                    redact(&current)
                )));
            }
            if let Some(length) = response.content_length() {
                if length > self.max_bytes {
                    return Err(TransferError::TooLarge(self.max_bytes));
                }
            }
            return Ok(response);
        }
        Err(TransferError::Remote(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// What a failed request means for the client: a refusal of the resolver
    /// (a name whose addresses changed to refused ones), a timeout, or the
    /// remote side's failure.
    pub fn failure(&self, error: reqwest::Error) -> TransferError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(refused) = e.downcast_ref::<Refused>() {
                return TransferError::Refused(refused.0.clone());
            }
            source = e.source();
        }
        if error.is_timeout() {
            return TransferError::Timeout(self.timeout);
        }
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(e) = source {
            detail.push_str(&format!(": {e}"));
            source = e.source();
        }
        TransferError::Remote(format!("the transfer failed: {detail}"))
    }
}

/// A URL without its query (presigned URLs carry credentials there) for messages.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfers(allow: &[&str]) -> Transfers {
        let mut config = Config::default();
        config.files.url_allow = allow
            .iter()
            .map(|a| crate::net_guard::Cidr::parse(a).unwrap())
            .collect();
        Transfers::new(&config).unwrap()
    }

    #[test]
    fn urls_are_checked_without_the_network() {
        let t = transfers(&[]);
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "gopher://example.com/",
            "not a url",
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://0/",
            "https://[fe80::1]/",
            "https://[64:ff9b::a9fe:a9fe]/",
        ] {
            assert!(
                matches!(t.parse(bad), Err(TransferError::Refused(_))),
                "{bad} accepted"
            );
        }
        assert!(t.parse("https://example.com/data.csv?sig=1").is_ok());
        assert!(t.parse("http://8.8.8.8/").is_ok());
        let allowed = transfers(&["127.0.0.1/32"]);
        assert!(allowed.parse("http://127.0.0.1:8080/x").is_ok());
        assert!(allowed.parse("http://127.0.0.2:8080/x").is_err());
    }

    #[test]
    fn messages_hide_the_query() {
        let url = Url::parse("https://u:p@bucket.example/key?X-Amz-Signature=s#f").unwrap();
        assert_eq!(redact(&url), "https://bucket.example/key");
    }

    #[test]
    fn the_cap_is_within_the_disk() {
        let mut config = Config::default();
        config.limits.disk_mb = 16;
        assert_eq!(Transfers::new(&config).unwrap().max_bytes, 16 * 1024 * 1024);
        assert_eq!(transfers(&[]).max_bytes, 100 * 1024 * 1024);
    }
}
