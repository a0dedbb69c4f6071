//! An identity provider's public keys, from a JWKS file or URL, kept fresh.
//!
//! Keys are read at start, again every `jwt.jwks_refresh_s`, and at once when a token names a
//! key id the set lacks (an identity provider rotating its keys), at most once per
//! [`MIN_REFETCH`] so tokens with made-up key ids cannot make silta hammer the provider. A
//! fetch that fails or returns no usable set keeps the keys already held.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use rustls_platform_verifier::BuilderVerifierExt;

use crate::config::JwtIssuer;

/// The least time between two fetches prompted by unknown key ids.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// A JWKS larger than this is refused (real ones are a few KB).
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the keys come from.
enum Source {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
    },
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Url { url, .. } => url.to_string(),
        }
    }

    async fn load(&self) -> Result<JwkSet, String> {
        let text = match self {
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read: {e}"))?,
            Source::Url { url, client } => fetch(client, url).await?,
        };
        let set: JwkSet = serde_json::from_slice(&text).map_err(|e| format!("not a JWKS: {e}"))?;
        if set.keys.is_empty() {
            return Err("the JWKS holds no key".into());
        }
        Ok(set)
    }
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("fetch failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("the server answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("fetch failed: {e}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One issuer's current keys.
pub struct Jwks {
    source: Source,
    keys: RwLock<Arc<JwkSet>>,
    /// When the last fetch prompted by an unknown key id started; also serialises such
    /// fetches, so a burst of tokens with a new key id makes one request.
    last_prompted: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source.describe())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Checks `issuer`'s key source and loads it once. A file must load; a URL that cannot be
    /// fetched yet is logged and retried, so an identity provider's outage does not keep the
    /// gateway (and every organisation that sends no token) down.
    pub async fn load(issuer: &JwtIssuer, refresh: Duration) -> Result<Arc<Self>, String> {
        let source = match (&issuer.jwks_file, &issuer.jwks_url) {
            (Some(path), None) => {
                if issuer.jwks_ca_file.is_some() {
                    return Err(
                        "jwt.issuers.jwks_ca_file applies to jwks_url only; remove it".into(),
                    );
                }
                Source::File(path.clone())
            }
            (None, Some(url)) => Source::Url {
                url: check_url(url)?,
                client: client(issuer)?,
            },
            _ => {
                return Err(format!(
                    "jwt.issuers for {:?}: set exactly one of jwks_file and jwks_url",
                    issuer.org
                ));
            }
        };
        let first = source.load().await;
        let keys = match (first, &source) {
            (Ok(set), _) => set,
            (Err(e), Source::File(path)) => {
                return Err(format!("jwt.issuers.jwks_file {}: {e}", path.display()));
            }
            (Err(e), Source::Url { url, .. }) => {
                tracing::error!(org = %issuer.org, %url, error = %e,
                    "JWKS not fetched at start; tokens of this organisation are refused until it is");
                JwkSet { keys: Vec::new() }
            }
        };
        let jwks = Arc::new(Jwks {
            source,
            keys: RwLock::new(Arc::new(keys)),
            last_prompted: tokio::sync::Mutex::new(None),
        });
        spawn_refresh(Arc::downgrade(&jwks), refresh, issuer.org.clone());
        Ok(jwks)
    }

    /// The keys held now.
    pub fn current(&self) -> Arc<JwkSet> {
        // Poisoned only if a thread panicked while swapping an Arc in: the value is whole.
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the keys again after a token named a key id they lack, unless that was done less
    /// than [`MIN_REFETCH`] ago. Returns the keys held afterwards.
    pub async fn refresh_for_unknown_key(&self) -> Arc<JwkSet> {
        let mut last = self.last_prompted.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return self.current();
        }
        *last = Some(Instant::now());
        self.reload("a token named an unknown key id").await;
        self.current()
    }

    async fn reload(&self, why: &str) {
        match self.source.load().await {
            Ok(set) => {
                let count = set.keys.len();
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                tracing::debug!(source = %self.source.describe(), keys = count, why, "JWKS loaded");
            }
            Err(e) => tracing::warn!(source = %self.source.describe(), error = %e, why,
                "JWKS not reloaded; the keys held before stay in use"),
        }
    }
}

/// Reloads every `refresh` until the issuer's keys are dropped with the gateway.
fn spawn_refresh(jwks: Weak<Jwks>, refresh: Duration, org: String) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(refresh).await;
            let Some(jwks) = jwks.upgrade() else { return };
            tracing::trace!(%org, "JWKS refresh");
            jwks.reload("periodic refresh").await;
        }
    });
}

/// `https://`, or `http://` to a loopback address (a local agent or a test), nothing else: the
/// keys decide who may act, so they must not travel in clear.
fn check_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("jwt.issuers.jwks_url {text:?}: not a URL: {e}"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!(
            "jwt.issuers.jwks_url {text:?}: must be https:// (http:// only on loopback)"
        )),
    }
}

/// An HTTP client that verifies the server with `jwks_ca_file`, or else the system's roots,
/// follows at most three redirects and only to `https://`, and gives up after ten seconds.
fn client(issuer: &JwtIssuer) -> Result<reqwest::Client, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?;
    let tls = match &issuer.jwks_ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in crate::tls::load_certs(path).map_err(|e| format!("jwt.issuers.{e}"))? {
                roots
                    .add(cert)
                    .map_err(|e| format!("jwt.issuers.jwks_ca_file {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .with_platform_verifier()
            .map_err(|e| format!("TLS: the system's trusted roots: {e}"))?,
    }
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 3 || attempt.url().scheme() != "https" {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .user_agent(concat!("silta/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn keys_travel_over_https_or_stay_on_loopback() {
        assert!(check_url("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        for bad in [
            "http://idp.example/jwks",
            "ftp://127.0.0.1/x",
            "idp.example",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
