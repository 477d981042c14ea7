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

pub const PROVIDER_KINDS: &[&str] = &["openai", "anthropic", "echo"];

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
    /// Extra headers sent upstream with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub provider: String,
    pub model: Option<String>,
    pub input_per_mtok: Option<f64>,
    pub output_per_mtok: Option<f64>,
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

/// Default base URLs and the environment variables that enable a provider in
/// zero-config mode.
pub fn builtin_provider(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "openai" => Some(("https://api.openai.com/v1", "OPENAI_API_KEY")),
        "anthropic" => Some(("https://api.anthropic.com", "ANTHROPIC_API_KEY")),
        _ => None,
    }
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
            for kind in ["openai", "anthropic"] {
                if let Some((_, var)) = builtin_provider(kind)
                    && let Ok(key) = std::env::var(var)
                    && !key.is_empty()
                {
                    config.providers.insert(
                        kind.to_string(),
                        ProviderConfig {
                            api_key: Some(key),
                            ..Default::default()
                        },
                    );
                }
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
            let kind = p.kind.clone().unwrap_or_else(|| name.clone());
            if !PROVIDER_KINDS.contains(&kind.as_str()) || kind == "echo" {
                bail!(
                    "config: providers.{name}.kind: unknown kind '{kind}' (supported: openai, anthropic; an OpenAI-compatible upstream uses kind = \"openai\")"
                );
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
        for (i, m) in self.models.iter().enumerate() {
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
        let kind = p.kind.clone().unwrap_or_else(|| name.to_string());
        // Only the built-in entries (named after their kind) have a default URL.
        p.base_url
            .clone()
            .or_else(|| {
                (kind == name)
                    .then(|| builtin_provider(&kind).map(|(u, _)| u.to_string()))
                    .flatten()
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
    }
}
