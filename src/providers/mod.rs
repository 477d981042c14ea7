//! Providers: one shape per kind behind `Kind`, the registry of configured
//! entries, model routing and the real-key scrubber.

pub mod echo;
pub mod sse;
pub mod tokens;
pub mod vertex;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use http::{HeaderName, HeaderValue};

use crate::config::Config;

/// The wire shape a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    Anthropic,
    Cohere,
    Gemini,
    Vertex,
    HuggingFace,
    Azure,
    Vectara,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "openai" => Some(Kind::OpenAi),
            "anthropic" => Some(Kind::Anthropic),
            "cohere" => Some(Kind::Cohere),
            "gemini" => Some(Kind::Gemini),
            "vertex" => Some(Kind::Vertex),
            "huggingface" => Some(Kind::HuggingFace),
            "azure" => Some(Kind::Azure),
            "vectara" => Some(Kind::Vectara),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Anthropic => "anthropic",
            Kind::Cohere => "cohere",
            Kind::Gemini => "gemini",
            Kind::Vertex => "vertex",
            Kind::HuggingFace => "huggingface",
            Kind::Azure => "azure",
            Kind::Vectara => "vectara",
        }
    }
    /// Whether the kind speaks OpenAI's chat/completions shape.
    pub fn is_openai_shaped(self) -> bool {
        matches!(self, Kind::OpenAi | Kind::Azure | Kind::HuggingFace)
    }
}

/// How long a key taken out of rotation after repeated 401s rests before it
/// is tried again (one probe request).
const KEY_REST_MS: u64 = 5 * 60 * 1000;

/// One real key and its health.
struct KeySlot {
    secret: String,
    /// Tick of its last use (least recently used is chosen next).
    last_used: AtomicU64,
    /// Consecutive 401 answers.
    auth_failures: AtomicU32,
    /// Out of rotation until this time (epoch ms); 0 when in rotation.
    disabled_until: AtomicU64,
}

/// The real key chosen for one attempt.
#[derive(Clone, Debug)]
pub struct KeyChoice {
    pub index: usize,
    pub secret: String,
}

/// What an attempt's answer says about the key it used.
pub enum KeyOutcome {
    /// Any answer other than 401.
    Ok,
    /// 401: counts toward taking the key out of rotation. Answers `true`
    /// when this failure took it out.
    Unauthorized,
}

/// One configured provider entry with its pooled client.
pub struct Provider {
    pub name: String,
    pub kind: Kind,
    pub base_url: String,
    keys: Vec<KeySlot>,
    tick: AtomicU64,
    pub client: reqwest::Client,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Longest wait for the upstream's response headers.
    pub first_byte_timeout: Duration,
    /// Longest a whole exchange (body included) may take.
    pub total_timeout: Option<Duration>,
    /// Consecutive 401s after which a key leaves the rotation.
    pub max_auth_failures: u32,
    /// Vertex AI: the service account that mints access tokens.
    pub vertex: Option<vertex::TokenSource>,
}

impl Provider {
    /// `base_url` joined with `path` (no leading slash) and `query`; where the
    /// base already ends in the path's first segment, it is not repeated.
    pub fn url(&self, path: &str, query: Option<&str>) -> String {
        join_url(&self.base_url, path, query)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The least recently used key that is in rotation, other than `exclude`;
    /// `None` for a keyless upstream or when no other key is usable.
    pub fn pick_key(&self, exclude: Option<usize>) -> Option<KeyChoice> {
        let now = crate::util::now_ms().max(0) as u64;
        let best = self
            .keys
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != exclude)
            .filter(|(_, k)| k.disabled_until.load(Ordering::Relaxed) <= now)
            .min_by_key(|(_, k)| k.last_used.load(Ordering::Relaxed))?;
        let tick = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        best.1.last_used.store(tick, Ordering::Relaxed);
        Some(KeyChoice {
            index: best.0,
            secret: best.1.secret.clone(),
        })
    }

    /// Whether every key is out of rotation (a keyless upstream never is).
    pub fn all_keys_disabled(&self) -> bool {
        let now = crate::util::now_ms().max(0) as u64;
        !self.keys.is_empty()
            && self
                .keys
                .iter()
                .all(|k| k.disabled_until.load(Ordering::Relaxed) > now)
    }

    /// Record what an answer said about a key; answers `true` when this
    /// took the key out of rotation.
    pub fn report(&self, index: usize, outcome: KeyOutcome) -> bool {
        let Some(k) = self.keys.get(index) else {
            return false;
        };
        match outcome {
            KeyOutcome::Ok => {
                k.auth_failures.store(0, Ordering::Relaxed);
                k.disabled_until.store(0, Ordering::Relaxed);
                false
            }
            KeyOutcome::Unauthorized => {
                let n = k.auth_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.max_auth_failures {
                    let until = crate::util::now_ms().max(0) as u64 + KEY_REST_MS;
                    k.disabled_until.store(until, Ordering::Relaxed);
                    k.auth_failures.store(0, Ordering::Relaxed);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Set the provider's own credential on an upstream request: the chosen
    /// key (or, for Vertex AI, a minted access token) in the kind's header.
    pub fn authorize(
        &self,
        mut rb: reqwest::RequestBuilder,
        key: Option<&str>,
        has_anthropic_version: bool,
    ) -> reqwest::RequestBuilder {
        match self.kind {
            Kind::OpenAi | Kind::HuggingFace | Kind::Cohere | Kind::Vertex => {
                if let Some(k) = key {
                    rb = rb.bearer_auth(k);
                }
            }
            Kind::Anthropic => {
                if let Some(k) = key {
                    rb = rb.header("x-api-key", k);
                }
                if !has_anthropic_version {
                    rb = rb.header("anthropic-version", "2023-06-01");
                }
            }
            Kind::Gemini => {
                if let Some(k) = key {
                    rb = rb.header("x-goog-api-key", k);
                }
            }
            Kind::Azure => {
                if let Some(k) = key {
                    rb = rb.header("api-key", k);
                }
            }
            Kind::Vectara => {
                if let Some(k) = key {
                    rb = rb.header("x-api-key", k);
                }
            }
        }
        for (n, v) in &self.extra_headers {
            rb = rb.header(n, v);
        }
        rb
    }
}

pub fn join_url(base: &str, path: &str, query: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    let path = path.trim_start_matches('/');
    let first = path.split('/').next().unwrap_or("");
    let path = if !first.is_empty() && base.rsplit('/').next() == Some(first) {
        path[first.len()..].trim_start_matches('/')
    } else {
        path
    };
    let mut url = if path.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{path}")
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Where a model name on the OpenAI surface goes.
#[derive(Clone)]
pub enum Route {
    Echo,
    Upstream {
        provider: Arc<Provider>,
        upstream_model: String,
    },
}

pub struct Registry {
    pub providers: HashMap<String, Arc<Provider>>,
    /// `[[models]]` aliases: name → (provider entry, upstream model).
    aliases: HashMap<String, (String, String)>,
    /// `[[models]]` fallbacks: name → models tried in order.
    fallbacks: HashMap<String, Vec<String>>,
    /// Every configured real key, for scrubbing.
    pub scrubber: Scrubber,
}

impl Registry {
    pub fn new(config: &Config) -> Result<Registry> {
        let mut providers = HashMap::new();
        let mut secrets = Vec::new();
        for (name, p) in &config.providers {
            let kind_name = crate::config::kind_of(name, p);
            let kind = Kind::parse(&kind_name).with_context(|| format!("providers.{name}.kind"))?;
            let base_url = config
                .base_url(name, p)
                .with_context(|| format!("providers.{name}.base_url"))?;
            let mut keys: Vec<String> = p
                .api_keys
                .iter()
                .filter(|k| !k.is_empty())
                .cloned()
                .collect();
            if let Some(k) = p.api_key.as_ref().filter(|k| !k.is_empty()) {
                keys.insert(0, k.clone());
            }
            keys.dedup();
            if keys.is_empty()
                && kind != Kind::Vertex
                && config::builtin_provider_needs_key(name, p)
            {
                tracing::warn!(provider = %name, "provider has no API key; upstream calls will be unauthenticated");
            }
            secrets.extend(keys.iter().cloned());
            let vertex = match (kind, p.credentials_file.as_deref()) {
                (Kind::Vertex, Some(path)) => {
                    let src = vertex::TokenSource::from_file(path)
                        .with_context(|| format!("providers.{name}.credentials_file"))?;
                    secrets.push(src.private_key_pem().to_string());
                    Some(src)
                }
                _ => None,
            };
            let read_timeout = p.timeout_seconds.unwrap_or(600);
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(p.connect_timeout_seconds.unwrap_or(10)))
                .read_timeout(Duration::from_secs(read_timeout))
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .no_proxy()
                .build()
                .context("building the HTTP client")?;
            let mut extra_headers = Vec::new();
            for (hn, hv) in &p.headers {
                let n = HeaderName::try_from(hn.as_str())
                    .with_context(|| format!("providers.{name}.headers: bad header name '{hn}'"))?;
                let v = HeaderValue::try_from(hv.as_str())
                    .with_context(|| format!("providers.{name}.headers.{hn}: bad header value"))?;
                secrets.push(hv.clone());
                extra_headers.push((n, v));
            }
            providers.insert(
                name.clone(),
                Arc::new(Provider {
                    name: name.clone(),
                    kind,
                    base_url,
                    keys: keys
                        .into_iter()
                        .map(|secret| KeySlot {
                            secret,
                            last_used: AtomicU64::new(0),
                            auth_failures: AtomicU32::new(0),
                            disabled_until: AtomicU64::new(0),
                        })
                        .collect(),
                    tick: AtomicU64::new(0),
                    client,
                    extra_headers,
                    first_byte_timeout: Duration::from_secs(
                        p.first_byte_timeout_seconds.unwrap_or(read_timeout),
                    ),
                    total_timeout: p.total_timeout_seconds.map(Duration::from_secs),
                    max_auth_failures: p.max_auth_failures.unwrap_or(3).max(1),
                    vertex,
                }),
            );
        }
        let aliases = config
            .models
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    (
                        m.provider.clone(),
                        m.model.clone().unwrap_or_else(|| m.name.clone()),
                    ),
                )
            })
            .collect();
        let fallbacks = config
            .models
            .iter()
            .filter(|m| !m.fallbacks.is_empty())
            .map(|m| (m.name.clone(), m.fallbacks.clone()))
            .collect();
        Ok(Registry {
            providers,
            aliases,
            fallbacks,
            scrubber: Scrubber::new(secrets),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }

    /// The provider for requests that name no model (files, batches, …).
    pub fn default_openai(&self) -> Option<&Arc<Provider>> {
        self.providers
            .get("openai")
            .filter(|p| p.kind == Kind::OpenAi)
            .or_else(|| {
                let mut it = self.providers.values().filter(|p| p.kind == Kind::OpenAi);
                match (it.next(), it.next()) {
                    (Some(p), None) => Some(p),
                    _ => None,
                }
            })
    }

    fn first_of_kind(&self, kind: Kind, preferred: &str) -> Option<&Arc<Provider>> {
        self.providers
            .get(preferred)
            .filter(|p| p.kind == kind)
            .or_else(|| {
                let mut v: Vec<_> = self.providers.values().filter(|p| p.kind == kind).collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                v.into_iter().next()
            })
    }

    /// Route a model name asked for on the OpenAI surface.
    pub fn route(&self, model: &str) -> Option<Route> {
        if let Some((prov, upstream)) = self.aliases.get(model) {
            if prov == "echo" {
                return Some(Route::Echo);
            }
            return self.providers.get(prov).map(|p| Route::Upstream {
                provider: p.clone(),
                upstream_model: upstream.clone(),
            });
        }
        if model == "echo" {
            return Some(Route::Echo);
        }
        if let Some((prov, rest)) = model.split_once('/')
            && let Some(p) = self.providers.get(prov)
        {
            return Some(Route::Upstream {
                provider: p.clone(),
                upstream_model: rest.to_string(),
            });
        }
        // A model the price table lists under an OpenAI-compatible entry
        // (`sonar` → perplexity, `mistral-large` → mistral) goes there.
        if let Some(entry) = crate::usage::prices::provider_of(model)
            && let Some(p) = self.providers.get(entry)
            && p.kind == Kind::OpenAi
        {
            return Some(Route::Upstream {
                provider: p.clone(),
                upstream_model: model.to_string(),
            });
        }
        let p = if model.starts_with("claude") {
            self.first_of_kind(Kind::Anthropic, "anthropic")
        } else {
            self.default_openai()
        }?;
        Some(Route::Upstream {
            provider: p.clone(),
            upstream_model: model.to_string(),
        })
    }

    /// The models to try, in order, when `model`'s provider fails.
    pub fn fallbacks(&self, model: &str) -> &[String] {
        self.fallbacks.get(model).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Model names the OpenAI surface can list: `echo`, aliases and the
    /// built-in price table's models of each configured kind.
    pub fn known_models(&self) -> Vec<(String, String)> {
        let mut out = vec![("echo".to_string(), "echo".to_string())];
        for (name, (prov, _)) in &self.aliases {
            if name != "echo" {
                out.push((name.clone(), prov.clone()));
            }
        }
        for p in self.providers.values() {
            if crate::config::builtin(&p.name).is_some_and(|b| b.kind == p.kind.as_str()) {
                for m in crate::usage::prices::models_of_provider(&p.name) {
                    out.push((m.to_string(), p.name.clone()));
                }
            }
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

pub mod config {
    use crate::config::ProviderConfig;
    /// Whether a provider of this kind normally needs a key (only to warn).
    pub fn builtin_provider_needs_key(kind: &str, p: &ProviderConfig) -> bool {
        p.base_url.is_none() && crate::config::builtin_provider(kind).is_some()
    }
}

/// Replaces every real provider credential in text with `[REDACTED]`: the
/// configured keys, and credentials minted at run time (Vertex access
/// tokens), added with [`Scrubber::add`].
pub struct Scrubber {
    set: std::sync::RwLock<Arc<ScrubSet>>,
}

struct ScrubSet {
    matcher: Option<aho_corasick::AhoCorasick>,
    longest: usize,
    secrets: Vec<String>,
}

pub const REDACTED: &str = "[REDACTED]";

impl ScrubSet {
    fn new(mut secrets: Vec<String>) -> ScrubSet {
        secrets.retain(|s| s.len() >= 8);
        secrets.sort();
        secrets.dedup();
        let longest = secrets.iter().map(String::len).max().unwrap_or(0);
        let matcher = if secrets.is_empty() {
            None
        } else {
            aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&secrets)
                .ok()
        };
        ScrubSet {
            matcher,
            longest,
            secrets,
        }
    }
}

impl Scrubber {
    pub fn new(secrets: Vec<String>) -> Scrubber {
        Scrubber {
            set: std::sync::RwLock::new(Arc::new(ScrubSet::new(secrets))),
        }
    }

    fn current(&self) -> Arc<ScrubSet> {
        match self.set.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Scrub one more secret from now on (a no-op when already known).
    pub fn add(&self, secret: &str) {
        let cur = self.current();
        if secret.len() < 8 || cur.secrets.iter().any(|s| s == secret) {
            return;
        }
        let mut all = cur.secrets.clone();
        all.push(secret.to_string());
        // Minted tokens expire: keep the configured ones and the newest few.
        if all.len() > 64 {
            all.drain(0..all.len() - 64);
        }
        let next = Arc::new(ScrubSet::new(all));
        if let Ok(mut g) = self.set.write() {
            *g = next;
        }
    }

    pub fn is_active(&self) -> bool {
        self.current().matcher.is_some()
    }

    /// Scrub a complete buffer.
    pub fn scrub(&self, data: bytes::Bytes) -> bytes::Bytes {
        let set = self.current();
        match &set.matcher {
            Some(m) if m.is_match(data.as_ref()) => {
                let replaced =
                    m.replace_all_bytes(&data, &vec![REDACTED.as_bytes(); set.secrets.len()]);
                bytes::Bytes::from(replaced)
            }
            _ => data,
        }
    }

    /// Scrub a string.
    pub fn scrub_str(&self, s: &str) -> String {
        let set = self.current();
        match &set.matcher {
            Some(m) => m.replace_all(s, &vec![REDACTED; set.secrets.len()]),
            None => s.to_string(),
        }
    }

    /// How many trailing bytes of `data` could be the start of a secret that
    /// continues in the next chunk (they must be held back).
    pub fn partial_tail(&self, data: &[u8]) -> usize {
        let set = self.current();
        if set.matcher.is_none() {
            return 0;
        }
        let max = set.longest.saturating_sub(1).min(data.len());
        for len in (1..=max).rev() {
            let tail = &data[data.len() - len..];
            if set.secrets.iter().any(|s| s.as_bytes().starts_with(tail)) {
                return len;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_urls_without_repeating_a_segment() {
        assert_eq!(
            join_url("https://api.openai.com/v1", "v1/chat/completions", None),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            join_url(
                "https://api.anthropic.com",
                "v1/messages",
                Some("beta=true")
            ),
            "https://api.anthropic.com/v1/messages?beta=true"
        );
        assert_eq!(
            join_url("http://h:1/v1/", "/v1/models", None),
            "http://h:1/v1/models"
        );
        assert_eq!(
            join_url("http://h:1/openai", "v1/models", None),
            "http://h:1/openai/v1/models"
        );
    }

    #[test]
    fn scrubs_secrets() {
        let s = Scrubber::new(vec!["sk-secret-123456".into()]);
        let out = s.scrub(bytes::Bytes::from_static(b"key sk-secret-123456 leaked"));
        assert_eq!(&out[..], b"key [REDACTED] leaked");
        assert_eq!(s.partial_tail(b"abc sk-sec"), 6);
        assert_eq!(s.partial_tail(b"abc"), 0);
        assert_eq!(s.scrub_str("Bearer sk-secret-123456"), "Bearer [REDACTED]");
        assert!(!Scrubber::new(vec![]).is_active());
        let s = Scrubber::new(vec![]);
        s.add("ya29.minted-access-token");
        assert_eq!(
            s.scrub_str("token ya29.minted-access-token"),
            "token [REDACTED]"
        );
        s.add("short");
        assert!(s.is_active());
    }
}
