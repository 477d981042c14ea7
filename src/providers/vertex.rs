//! Vertex AI credentials: bursar holds a service-account JSON, mints OAuth2
//! access tokens with the JWT-bearer grant (RFC 7523, RS256 via `ring`)
//! against the account's `token_uri`, caches them, and refreshes them five
//! minutes before they expire.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;

/// The OAuth scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// A cached token is replaced this long before it expires.
const REFRESH_MARGIN_S: u64 = 300;
/// Lifetime asked for in the assertion (Google's maximum).
const ASSERTION_LIFETIME_S: u64 = 3600;

#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default = "default_expires")]
    expires_in: u64,
}

fn default_expires() -> u64 {
    3600
}

/// Mints and caches access tokens for one service account.
pub struct TokenSource {
    client_email: String,
    private_key_id: Option<String>,
    private_key_pem: String,
    pub token_uri: String,
    key: Arc<ring::signature::RsaKeyPair>,
    http: reqwest::Client,
    /// (token, expires at, epoch seconds).
    cache: tokio::sync::Mutex<Option<(String, u64)>>,
}

fn now_s() -> u64 {
    (crate::util::now_ms().max(0) / 1000) as u64
}

/// DER bytes of a PEM block (PKCS#8 `PRIVATE KEY`).
fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    STANDARD
        .decode(body.as_bytes())
        .context("private_key is not valid PEM")
}

impl TokenSource {
    pub fn from_file(path: &str) -> Result<TokenSource> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        TokenSource::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<TokenSource> {
        let sa: ServiceAccount =
            serde_json::from_str(text).context("not a service-account JSON key")?;
        if !sa.private_key.contains("BEGIN PRIVATE KEY") {
            bail!("private_key must be a PKCS#8 PEM block (-----BEGIN PRIVATE KEY-----)");
        }
        let der = pem_to_der(&sa.private_key)?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| anyhow::anyhow!("private_key is not an RSA key: {e}"))?;
        reqwest::Url::parse(&sa.token_uri)
            .with_context(|| format!("token_uri '{}' is not a URL", sa.token_uri))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .context("building the token client")?;
        Ok(TokenSource {
            client_email: sa.client_email,
            private_key_id: sa.private_key_id,
            private_key_pem: sa.private_key,
            token_uri: sa.token_uri,
            key: Arc::new(key),
            http,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// The key's PEM text (so the scrubber can keep it out of answers).
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    /// The signed JWT-bearer assertion for `now` (epoch seconds).
    pub fn assertion(&self, now: u64) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "signing the token assertion failed".to_string())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// A valid access token: the cached one, or a freshly minted one when
    /// the cache is empty or within five minutes of expiry.
    pub async fn token(&self) -> Result<String, String> {
        let mut cache = self.cache.lock().await;
        let now = now_s();
        if let Some((tok, exp)) = cache.as_ref()
            && *exp > now + REFRESH_MARGIN_S
        {
            return Ok(tok.clone());
        }
        let assertion = self.assertion(now)?;
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let resp = self
            .http
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("token endpoint unreachable: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("token endpoint answered HTTP {}", status.as_u16()));
        }
        let answer: TokenAnswer = resp
            .json()
            .await
            .map_err(|e| format!("token endpoint answer unreadable: {e}"))?;
        *cache = Some((answer.access_token.clone(), now + answer.expires_in));
        Ok(answer.access_token)
    }
}
