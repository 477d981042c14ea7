//! Configuration: TOML file + `BURSAR_<SECTION>__<FIELD>` environment
//! overrides + `${VAR}` interpolation, validated once at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::{Deserialize, Serialize};

/// Environment variables with the `BURSAR_` prefix that belong to the CLI,
/// not to the configuration.
const NOT_CONFIG: &[&str] = &["admin_key", "url", "api_key", "config", "log"];

pub const PROVIDER_KINDS: &[&str] = &[
    "openai",
    "anthropic",
    "cohere",
    "gemini",
    "vertex",
    "huggingface",
    "azure",
    "vectara",
    "echo",
];

/// A provider entry bursar knows by name: its kind, official base URL and
/// the environment variables (first non-empty wins) that enable it with no
/// configuration at all.
pub struct Builtin {
    pub name: &'static str,
    pub kind: &'static str,
    pub base_url: &'static str,
    pub key_vars: &'static [&'static str],
}

pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "openai",
        kind: "openai",
        base_url: "https://api.openai.com/v1",
        key_vars: &["OPENAI_API_KEY"],
    },
    Builtin {
        name: "anthropic",
        kind: "anthropic",
        base_url: "https://api.anthropic.com",
        key_vars: &["ANTHROPIC_API_KEY"],
    },
    Builtin {
        name: "cohere",
        kind: "cohere",
        base_url: "https://api.cohere.com",
        key_vars: &["CO_API_KEY", "COHERE_API_KEY"],
    },
    Builtin {
        name: "gemini",
        kind: "gemini",
        base_url: "https://generativelanguage.googleapis.com",
        key_vars: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
    },
    Builtin {
        name: "huggingface",
        kind: "huggingface",
        base_url: "https://router.huggingface.co",
        key_vars: &["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"],
    },
    Builtin {
        name: "vectara",
        kind: "vectara",
        base_url: "https://api.vectara.io",
        key_vars: &["VECTARA_API_KEY"],
    },
    Builtin {
        name: "vertex",
        kind: "vertex",
        base_url: "https://aiplatform.googleapis.com",
        key_vars: &[],
    },
    Builtin {
        name: "perplexity",
        kind: "openai",
        base_url: "https://api.perplexity.ai",
        key_vars: &["PERPLEXITYAI_API_KEY", "PPLX_API_KEY"],
    },
    Builtin {
        name: "anyscale",
        kind: "openai",
        base_url: "https://api.endpoints.anyscale.com/v1",
        key_vars: &["ANYSCALE_API_KEY"],
    },
    Builtin {
        name: "mistral",
        kind: "openai",
        base_url: "https://api.mistral.ai/v1",
        key_vars: &["MISTRAL_API_KEY"],
    },
    Builtin {
        name: "groq",
        kind: "openai",
        base_url: "https://api.groq.com/openai/v1",
        key_vars: &["GROQ_API_KEY"],
    },
];

/// The built-in entry of this name.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The kind of a provider entry: its `kind`, else the built-in entry's of
/// that name, else the name itself.
pub fn kind_of(name: &str, p: &ProviderConfig) -> String {
    p.kind
        .clone()
        .or_else(|| builtin(name).map(|b| b.kind.to_string()))
        .unwrap_or_else(|| name.to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default)]
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel (several installations can share one Redis).
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// Seconds between full key-cache refreshes (the safety net behind invalidation).
    #[serde(default = "default_refresh")]
    pub cache_refresh_seconds: u64,
    /// While the database is unreachable, cached keys keep working for this
    /// long after the last successful refresh; then every key is refused.
    #[serde(default = "default_stale")]
    pub cache_max_stale_seconds: u64,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// `text` (default) or `json` log lines.
    #[serde(default)]
    pub log_format: Option<String>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub usage: UsageConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub guardrails: GuardrailsConfig,
}

/// Gateway-wide guardrail settings; each key, user or team picks its modes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsConfig {
    /// Extra DLP rules: `[{ name = "project_code", pattern = "PRJ-[0-9]{6}" }]`.
    #[serde(default)]
    pub dlp_custom: Vec<crate::policy::CustomRule>,
    /// A request is anomalous above this many times the key's baseline.
    #[serde(default = "default_anomaly_factor")]
    pub anomaly_factor: f64,
    /// Requests per key before anomalies are judged.
    #[serde(default = "default_anomaly_warmup")]
    pub anomaly_warmup: u64,
}

impl Default for GuardrailsConfig {
    fn default() -> Self {
        Self {
            dlp_custom: Vec::new(),
            anomaly_factor: default_anomaly_factor(),
            anomaly_warmup: default_anomaly_warmup(),
        }
    }
}

fn default_anomaly_factor() -> f64 {
    10.0
}
fn default_anomaly_warmup() -> u64 {
    20
}

/// Budget alerts: an audit event and a signed webhook once per period when
/// spend crosses `budget_threshold` of a budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default = "default_threshold")]
    pub budget_threshold: f64,
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key for the `x-bursar-signature` header.
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            budget_threshold: default_threshold(),
            webhook_url: None,
            webhook_secret: None,
        }
    }
}

fn default_threshold() -> f64 {
    0.8
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire shape; defaults to the entry's name when that is a known kind.
    pub kind: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Seconds to wait for the upstream's response headers (default 600).
    pub timeout_seconds: Option<u64>,
    /// Seconds to establish a connection (default 10).
    pub connect_timeout_seconds: Option<u64>,
    /// Seconds to wait for the upstream's response headers (overrides
    /// `timeout_seconds` for that wait).
    pub first_byte_timeout_seconds: Option<u64>,
    /// Seconds a whole exchange may take, body included (default: none).
    pub total_timeout_seconds: Option<u64>,
    /// Extra headers sent upstream with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Vertex AI: the service-account JSON file whose key mints access tokens.
    pub credentials_file: Option<String>,
    /// Consecutive 401 answers after which a real key is taken out of
    /// rotation (default 3).
    pub max_auth_failures: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub provider: String,
    pub model: Option<String>,
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
    /// Models (client-facing names) tried in order when this one's provider
    /// fails with 429/5xx or cannot be reached.
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Capacity of the in-memory usage queue.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Where rows go while the database is unreachable (default:
    /// `bursar-usage-<listen address>.spool` in the working directory).
    #[serde(default)]
    pub spool_path: Option<String>,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            queue_capacity: default_queue(),
            spool_path: None,
        }
    }
}

fn default_redis_prefix() -> String {
    "bursar:".into()
}
fn default_refresh() -> u64 {
    5
}
fn default_stale() -> u64 {
    3600
}
fn default_listen() -> String {
    "127.0.0.1:8000".into()
}
fn default_database() -> String {
    "sqlite://bursar.db".into()
}
fn default_max_body() -> usize {
    32 * 1024 * 1024
}
fn default_queue() -> usize {
    100_000
}

/// Default base URL and the first environment variable that enables a
/// built-in provider in zero-config mode.
pub fn builtin_provider(name: &str) -> Option<(&'static str, &'static str)> {
    builtin(name).map(|b| (b.base_url, b.key_vars.first().copied().unwrap_or("")))
}

/// Replace `${VAR}` with the environment's value (empty when unset).
fn interpolate(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find('}') {
            Some(end) => {
                let var = &rest[start + 2..start + 2 + end];
                out.push_str(&std::env::var(var).unwrap_or_default());
                rest = &rest[start + 3 + end..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn interpolate_value(v: &mut toml::Value) {
    match v {
        toml::Value::String(s) => *s = interpolate(s),
        toml::Value::Array(a) => a.iter_mut().for_each(interpolate_value),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| interpolate_value(v)),
        _ => {}
    }
}

impl Config {
    /// The usage spool file.
    pub fn spool_path(&self) -> std::path::PathBuf {
        match &self.usage.spool_path {
            Some(p) => p.into(),
            None => format!(
                "bursar-usage-{}.spool",
                self.listen.replace([':', '[', ']'], "_")
            )
            .into(),
        }
    }

    /// Load from an optional file plus the environment, then validate.
    pub fn load(path: Option<&str>) -> Result<Config> {
        let mut figment = Figment::new();
        let mut from_file = false;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("config: cannot read {path}"))?;
            let mut table: toml::Value = toml::from_str(&text)
                .with_context(|| format!("config: {path} is not valid TOML"))?;
            interpolate_value(&mut table);
            figment = figment.merge(Serialized::defaults(table));
            from_file = true;
        }
        figment = figment.merge(Env::prefixed("BURSAR_").split("__").filter(|k| {
            !NOT_CONFIG
                .iter()
                .any(|n| k.as_str().eq_ignore_ascii_case(n))
        }));
        let mut config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let explicit_providers = !config.providers.is_empty();
        if !explicit_providers {
            for b in BUILTINS {
                if let Some(key) = b
                    .key_vars
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|k| !k.is_empty()))
                {
                    config.providers.insert(
                        b.name.to_string(),
                        ProviderConfig {
                            api_key: Some(key),
                            ..Default::default()
                        },
                    );
                }
            }
            // Azure OpenAI: the resource endpoint is the SDK's own variable.
            if let (Ok(key), Ok(endpoint)) = (
                std::env::var("AZURE_OPENAI_API_KEY"),
                std::env::var("AZURE_OPENAI_ENDPOINT"),
            ) && !key.is_empty()
                && !endpoint.is_empty()
            {
                config.providers.insert(
                    "azure".to_string(),
                    ProviderConfig {
                        kind: Some("azure".into()),
                        base_url: Some(endpoint),
                        api_key: Some(key),
                        ..Default::default()
                    },
                );
            }
        }
        let _ = from_file;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.listen.parse::<SocketAddr>().with_context(|| {
            format!(
                "config: listen: '{}' is not an address like 127.0.0.1:8000",
                self.listen
            )
        })?;
        if !(self.database.starts_with("sqlite:")
            || self.database.starts_with("postgres://")
            || self.database.starts_with("postgresql://"))
        {
            bail!(
                "config: database: '{}' must start with sqlite: or postgres://",
                self.database
            );
        }
        if let Some(r) = self.redis.as_deref().filter(|r| !r.is_empty())
            && !(r.starts_with("redis://")
                || r.starts_with("rediss://")
                || r.starts_with("unix://"))
        {
            bail!("config: redis: '{r}' must start with redis://");
        }
        if self.cache_refresh_seconds == 0 {
            bail!("config: cache_refresh_seconds: must be at least 1");
        }
        if self.max_body_bytes == 0 {
            bail!("config: max_body_bytes: must be greater than 0");
        }
        for (i, cidr) in self.trusted_proxies.iter().enumerate() {
            parse_cidr(cidr)
                .with_context(|| format!("config: trusted_proxies[{i}]: '{cidr}' is not a CIDR"))?;
        }
        for (name, p) in &self.providers {
            if name == "echo" {
                bail!(
                    "config: providers.echo: the name 'echo' is reserved for the built-in provider"
                );
            }
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                || name.is_empty()
            {
                bail!(
                    "config: providers.{name}: a provider name may hold only letters, digits, '-' and '_'"
                );
            }
            if [
                "v1", "admin", "bursar", "healthz", "readyz", "metrics", "console",
            ]
            .contains(&name.as_str())
            {
                bail!(
                    "config: providers.{name}: '{name}' is a reserved path and cannot name a provider"
                );
            }
            let kind = kind_of(name, p);
            if !PROVIDER_KINDS.contains(&kind.as_str()) || kind == "echo" {
                bail!(
                    "config: providers.{name}.kind: unknown kind '{kind}' (supported: {}; an OpenAI-compatible upstream uses kind = \"openai\")",
                    PROVIDER_KINDS[..PROVIDER_KINDS.len() - 1].join(", ")
                );
            }
            if kind == "vertex" && p.credentials_file.as_deref().is_none_or(str::is_empty) {
                bail!(
                    "config: providers.{name}.credentials_file: a vertex provider needs the service-account JSON file"
                );
            }
            for (field, v) in [
                ("timeout_seconds", p.timeout_seconds),
                ("connect_timeout_seconds", p.connect_timeout_seconds),
                ("first_byte_timeout_seconds", p.first_byte_timeout_seconds),
                ("total_timeout_seconds", p.total_timeout_seconds),
            ] {
                if v == Some(0) {
                    bail!("config: providers.{name}.{field}: must be at least 1");
                }
            }
            let base = self.base_url(name, p);
            match base {
                None => bail!(
                    "config: providers.{name}.base_url: required for a provider that is not a built-in one"
                ),
                Some(b) => {
                    reqwest::Url::parse(&b)
                        .ok()
                        .filter(|u| u.scheme() == "http" || u.scheme() == "https")
                        .with_context(|| {
                            format!(
                                "config: providers.{name}.base_url: '{b}' is not an http(s) URL"
                            )
                        })?;
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        let names: std::collections::HashSet<&str> =
            self.models.iter().map(|m| m.name.as_str()).collect();
        for (i, m) in self.models.iter().enumerate() {
            for (j, f) in m.fallbacks.iter().enumerate() {
                if f == &m.name {
                    bail!("config: models[{i}].fallbacks[{j}]: a model cannot fall back to itself");
                }
                let routable = f == "echo"
                    || names.contains(f.as_str())
                    || f.split_once('/')
                        .is_some_and(|(p, _)| self.providers.contains_key(p))
                    || !self.providers.is_empty();
                if !routable {
                    bail!(
                        "config: models[{i}].fallbacks[{j}]: '{f}' is not a model any configured provider serves"
                    );
                }
            }
            if m.name.is_empty() {
                bail!("config: models[{i}].name: must not be empty");
            }
            if !seen.insert(&m.name) {
                bail!("config: models[{i}].name: '{}' is defined twice", m.name);
            }
            if m.provider != "echo" && !self.providers.contains_key(&m.provider) {
                bail!(
                    "config: models[{i}].provider: '{}' is not a configured provider (have: {})",
                    m.provider,
                    self.providers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for (field, v) in [
                ("input_per_mtok", m.input_per_mtok),
                ("output_per_mtok", m.output_per_mtok),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v >= 0.0)
                {
                    bail!("config: models[{i}].{field}: must be a non-negative number");
                }
            }
        }
        crate::policy::Dlp::new(&self.guardrails.dlp_custom)
            .map_err(|e| anyhow::anyhow!("config: guardrails.dlp_custom: {e}"))?;
        if !(self.guardrails.anomaly_factor.is_finite() && self.guardrails.anomaly_factor >= 1.0) {
            bail!("config: guardrails.anomaly_factor: must be a number of at least 1");
        }
        if !(0.0..=1.0).contains(&self.alerts.budget_threshold) {
            bail!("config: alerts.budget_threshold: must be between 0 and 1");
        }
        if let Some(u) = self.alerts.webhook_url.as_deref().filter(|u| !u.is_empty()) {
            reqwest::Url::parse(u)
                .with_context(|| format!("config: alerts.webhook_url: '{u}' is not a URL"))?;
        }
        if let Some(f) = &self.log_format
            && f != "text"
            && f != "json"
        {
            bail!("config: log_format: '{f}' must be 'text' or 'json'");
        }
        Ok(())
    }

    /// The effective base URL of a provider entry.
    pub fn base_url(&self, name: &str, p: &ProviderConfig) -> Option<String> {
        let kind = kind_of(name, p);
        // Only the built-in entries (by name, of their own kind) have a default URL.
        p.base_url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                builtin(name)
                    .filter(|b| b.kind == kind)
                    .map(|b| b.base_url.to_string())
            })
            .map(|u| u.trim_end_matches('/').to_string())
    }
}

pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    let ip: std::net::IpAddr = s.parse()?;
    Ok(ipnet::IpNet::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_variables() {
        // SAFETY-free: set_var is unsafe in edition 2024, so use an always-present variable.
        let home = std::env::var("PATH").unwrap_or_default();
        assert_eq!(interpolate("a${PATH}b"), format!("a{home}b"));
        assert_eq!(interpolate("${BURSAR_SURELY_UNSET_VAR}"), "");
        assert_eq!(interpolate("no vars"), "no vars");
        assert_eq!(interpolate("broken ${X"), "broken ${X");
    }

    fn base() -> Config {
        Figment::new().extract::<Config>().unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = base();
        c.listen = "nope".into();
        assert!(c.validate().unwrap_err().to_string().contains("listen"));
        let mut c = base();
        c.providers.insert(
            "x".into(),
            ProviderConfig {
                kind: Some("weird".into()),
                ..Default::default()
            },
        );
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("providers.x.kind")
        );
        let mut c = base();
        c.models.push(ModelConfig {
            name: "m".into(),
            provider: "nope".into(),
            model: None,
            input_per_mtok: None,
            output_per_mtok: None,
            fallbacks: vec![],
        });
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("models[0].provider")
        );
        let mut c = base();
        c.providers.insert(
            "onprem".into(),
            ProviderConfig {
                kind: Some("openai".into()),
                ..Default::default()
            },
        );
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("providers.onprem.base_url")
        );
        let mut c = base();
        c.providers.insert(
            "vx".into(),
            ProviderConfig {
                kind: Some("vertex".into()),
                base_url: Some("https://x.example".into()),
                ..Default::default()
            },
        );
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("providers.vx.credentials_file")
        );
    }

    #[test]
    fn builtin_entries_know_their_kind_and_url() {
        let c = base();
        let p = ProviderConfig::default();
        for (name, kind, url) in [
            ("perplexity", "openai", "https://api.perplexity.ai"),
            (
                "anyscale",
                "openai",
                "https://api.endpoints.anyscale.com/v1",
            ),
            ("mistral", "openai", "https://api.mistral.ai/v1"),
            ("groq", "openai", "https://api.groq.com/openai/v1"),
            ("cohere", "cohere", "https://api.cohere.com"),
            (
                "gemini",
                "gemini",
                "https://generativelanguage.googleapis.com",
            ),
            (
                "huggingface",
                "huggingface",
                "https://router.huggingface.co",
            ),
        ] {
            assert_eq!(kind_of(name, &p), kind, "{name}");
            assert_eq!(c.base_url(name, &p).as_deref(), Some(url), "{name}");
        }
        // A differently-kinded entry of a built-in name gets no default URL.
        let anth = ProviderConfig {
            kind: Some("anthropic".into()),
            ..Default::default()
        };
        assert_eq!(c.base_url("mistral", &anth), None);
        assert_eq!(kind_of("onprem", &p), "onprem");
    }
}
