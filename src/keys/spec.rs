//! A key's scope and limits: the API's input shape, validation, and the
//! stored form. Pure: no I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Endpoint names a key can be scoped to.
pub const ENDPOINTS: &[&str] = &[
    "chat",
    "completions",
    "embeddings",
    "responses",
    "models",
    "messages",
    "images",
    "audio",
    "files",
    "batches",
    "moderations",
    "fine_tuning",
    "assistants",
    "vector_stores",
    "realtime",
    "other",
];

pub const BUDGET_PERIODS: &[&str] = &["daily", "weekly", "monthly", "total"];

const MAX_LIST: usize = 100;
const MAX_STR: usize = 200;
const MAX_METADATA_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub usd: f64,
    #[serde(default = "default_period")]
    pub period: String,
}

fn default_period() -> String {
    "monthly".into()
}

/// Every field a key can be created or patched with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_request: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Opt in to prompt/response body logging (off by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_bodies: Option<bool>,
}

/// The stored scope and limits (the `spec` column).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeySpec {
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub ip_allow: Vec<String>,
    #[serde(default)]
    pub max_tokens_per_request: Option<u64>,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub max_concurrency: Option<u64>,
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub guardrails: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub log_bodies: bool,
}

fn check_str(field: &str, v: &Option<String>) -> Result<(), String> {
    if let Some(s) = v {
        if s.trim().is_empty() {
            return Err(format!("{field}: must not be empty"));
        }
        if s.len() > MAX_STR {
            return Err(format!("{field}: at most {MAX_STR} characters"));
        }
    }
    Ok(())
}

fn check_list(field: &str, v: &Option<Vec<String>>) -> Result<(), String> {
    if let Some(l) = v {
        if l.len() > MAX_LIST {
            return Err(format!("{field}: at most {MAX_LIST} entries"));
        }
        for (i, s) in l.iter().enumerate() {
            if s.trim().is_empty() || s.len() > MAX_STR {
                return Err(format!("{field}[{i}]: must be 1 to {MAX_STR} characters"));
            }
        }
    }
    Ok(())
}

impl KeyFields {
    /// Validate the fields and compute `expires_at` (epoch ms) from
    /// `expires_at` or `ttl_seconds`. Errors name the field.
    pub fn validate(&self, now_ms: i64) -> Result<Option<i64>, String> {
        match &self.name {
            None => return Err("name: required".into()),
            Some(_) => check_str("name", &self.name)?,
        }
        for (f, v) in [
            ("user", &self.user),
            ("team", &self.team),
            ("purpose", &self.purpose),
            ("environment", &self.environment),
        ] {
            check_str(f, v)?;
        }
        for (f, v) in [
            ("models", &self.models),
            ("endpoints", &self.endpoints),
            ("providers", &self.providers),
            ("ip_allow", &self.ip_allow),
        ] {
            check_list(f, v)?;
        }
        if let Some(eps) = &self.endpoints {
            for (i, e) in eps.iter().enumerate() {
                if !ENDPOINTS.contains(&e.as_str()) {
                    return Err(format!(
                        "endpoints[{i}]: unknown endpoint '{e}' (known: {})",
                        ENDPOINTS.join(", ")
                    ));
                }
            }
        }
        if let Some(ips) = &self.ip_allow {
            for (i, c) in ips.iter().enumerate() {
                if crate::config::parse_cidr(c).is_err() {
                    return Err(format!("ip_allow[{i}]: '{c}' is not an IP address or CIDR"));
                }
            }
        }
        for (f, v) in [
            ("max_tokens_per_request", self.max_tokens_per_request),
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrency", self.max_concurrency),
        ] {
            if v == Some(0) {
                return Err(format!("{f}: must be at least 1"));
            }
        }
        if let Some(b) = &self.budget {
            if !(b.usd.is_finite() && b.usd >= 0.0) {
                return Err("budget.usd: must be a non-negative number".into());
            }
            if !BUDGET_PERIODS.contains(&b.period.as_str()) {
                return Err(format!(
                    "budget.period: '{}' must be one of {}",
                    b.period,
                    BUDGET_PERIODS.join(", ")
                ));
            }
        }
        if let Some(g) = &self.guardrails {
            validate_guardrails(g)?;
        }
        if let Some(m) = &self.metadata
            && serde_json::to_string(m)
                .map(|s| s.len())
                .unwrap_or(usize::MAX)
                > MAX_METADATA_BYTES
        {
            return Err(format!(
                "metadata: at most {MAX_METADATA_BYTES} bytes of JSON"
            ));
        }
        let expires = match (&self.expires_at, self.ttl_seconds) {
            (Some(_), Some(_)) => {
                return Err("expires_at: give either expires_at or ttl_seconds, not both".into());
            }
            (Some(at), None) => {
                let ms = crate::util::parse_time(at, now_ms)
                    .filter(|_| at.contains('T') || at.len() == 10)
                    .ok_or_else(|| {
                        format!(
                            "expires_at: '{at}' is not an RFC 3339 time like 2027-01-01T00:00:00Z"
                        )
                    })?;
                if ms <= now_ms {
                    return Err("expires_at: must be in the future".into());
                }
                Some(ms)
            }
            (None, Some(ttl)) => {
                if ttl <= 0 || ttl > 100 * 365 * 86_400 {
                    return Err("ttl_seconds: must be between 1 and 100 years".into());
                }
                Some(now_ms + ttl * 1000)
            }
            (None, None) => None,
        };
        Ok(expires)
    }

    pub fn spec(&self) -> KeySpec {
        KeySpec {
            models: self.models.clone().unwrap_or_default(),
            endpoints: self.endpoints.clone().unwrap_or_default(),
            providers: self.providers.clone().unwrap_or_default(),
            ip_allow: self.ip_allow.clone().unwrap_or_default(),
            max_tokens_per_request: self.max_tokens_per_request,
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrency: self.max_concurrency,
            budget: self.budget.clone(),
            guardrails: self.guardrails.clone(),
            metadata: self.metadata.clone(),
            log_bodies: self.log_bodies.unwrap_or(false),
        }
    }
}

/// Guardrail modes: `{"dlp": "off|log|redact|block", "anomaly": "off|log|flag|block"}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guardrails {
    pub dlp: Option<crate::policy::Mode>,
    pub anomaly: Option<AnomalyMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnomalyMode {
    Off,
    Log,
    Flag,
    Block,
}

pub fn validate_guardrails(g: &Value) -> Result<Guardrails, String> {
    let obj = g
        .as_object()
        .ok_or("guardrails: must be an object like {\"dlp\": \"redact\"}")?;
    let mut out = Guardrails::default();
    for (k, v) in obj {
        match k.as_str() {
            "dlp" => {
                out.dlp =
                    Some(serde_json::from_value(v.clone()).map_err(|_| {
                        "guardrails.dlp: must be off, log, redact or block".to_string()
                    })?)
            }
            "anomaly" => {
                out.anomaly = Some(serde_json::from_value(v.clone()).map_err(|_| {
                    "guardrails.anomaly: must be off, log, flag or block".to_string()
                })?)
            }
            other => {
                return Err(format!(
                    "guardrails.{other}: unknown guardrail (dlp, anomaly)"
                ));
            }
        }
    }
    Ok(out)
}

impl KeyFields {
    /// A new key row for these (validated) fields, and its secret, shown once
    /// and never stored.
    pub fn new_row(
        &self,
        parent_id: Option<String>,
        expires_at: Option<i64>,
        now: i64,
    ) -> (crate::store::KeyRow, String) {
        let secret = super::generate(super::KEY_PREFIX);
        let row = crate::store::KeyRow {
            id: crate::util::new_id("key"),
            name: self.name.clone().unwrap_or_default(),
            user: self.user.clone(),
            team: self.team.clone(),
            purpose: self.purpose.clone(),
            environment: self.environment.clone(),
            prefix: super::display_prefix(&secret),
            key_hash: super::hash_hex(&secret),
            old_key_hash: None,
            old_key_expires_at: None,
            status: "active".into(),
            parent_id,
            expires_at,
            spec: serde_json::to_string(&self.spec()).unwrap_or_else(|_| "{}".into()),
            spend_usd: 0.0,
            created_at: now,
            updated_at: now,
            revoked_at: None,
            last_used_at: None,
        };
        (row, secret)
    }
}

/// Apply a JSON merge patch (RFC 7396 style at the top level: `null`
/// clears a field, an absent field is kept) to a key's fields.
pub fn merge_patch(current: &KeyFields, patch: &Map<String, Value>) -> Result<KeyFields, String> {
    let mut obj = match serde_json::to_value(current) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    for (k, v) in patch {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    if patch.contains_key("ttl_seconds") {
        obj.remove("expires_at");
    } else if patch.contains_key("expires_at") {
        obj.remove("ttl_seconds");
    }
    from_json(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> KeyFields {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validates_and_names_fields() {
        let now = 1_000_000;
        assert!(
            fields(serde_json::json!({}))
                .validate(now)
                .unwrap_err()
                .starts_with("name")
        );
        let ok = fields(serde_json::json!({"name": "a", "ttl_seconds": 60}));
        assert_eq!(ok.validate(now).unwrap(), Some(now + 60_000));
        let bad = fields(serde_json::json!({"name": "a", "endpoints": ["chat", "nope"]}));
        assert!(bad.validate(now).unwrap_err().starts_with("endpoints[1]"));
        let bad = fields(serde_json::json!({"name": "a", "ip_allow": ["10.0.0.0/33"]}));
        assert!(bad.validate(now).unwrap_err().starts_with("ip_allow[0]"));
        let bad =
            fields(serde_json::json!({"name": "a", "budget": {"usd": 5, "period": "hourly"}}));
        assert!(bad.validate(now).unwrap_err().starts_with("budget.period"));
        let bad = fields(serde_json::json!({"name": "a", "expires_at": "1970-01-01T00:00:00Z"}));
        assert!(bad.validate(now).unwrap_err().contains("future"));
        assert!(
            serde_json::from_value::<KeyFields>(serde_json::json!({"name": "a", "bogus": 1}))
                .is_err()
        );
    }

    #[test]
    fn patch_clears_and_keeps() {
        let cur = fields(serde_json::json!({"name": "a", "models": ["x"], "rpm": 5}));
        let patch = serde_json::json!({"models": null, "tpm": 10});
        let out = merge_patch(&cur, patch.as_object().unwrap()).unwrap();
        assert_eq!(out.models, None);
        assert_eq!(out.rpm, Some(5));
        assert_eq!(out.tpm, Some(10));
        assert_eq!(out.name.as_deref(), Some("a"));
    }
}

/// A user or team as created and patched through the admin API.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OwnerFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A user's team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_request: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

impl OwnerFields {
    pub fn validate(&self) -> Result<(), String> {
        match &self.name {
            None => return Err("name: required".into()),
            Some(n) => {
                check_str("name", &self.name)?;
                if !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
                {
                    return Err("name: only letters, digits and - _ . @".into());
                }
            }
        }
        check_str("team", &self.team)?;
        check_str("email", &self.email)?;
        let as_key = KeyFields {
            name: Some("x".into()),
            max_tokens_per_request: self.max_tokens_per_request,
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrency: self.max_concurrency,
            budget: self.budget.clone(),
            guardrails: self.guardrails.clone(),
            metadata: self.metadata.clone(),
            ..Default::default()
        };
        as_key.validate(0).map(|_| ())
    }
}

/// Deserialize API input; a type error names the field (`rpm: invalid type…`).
pub fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

#[cfg(test)]
mod from_json_tests {
    use super::*;

    #[test]
    fn type_errors_name_the_field() {
        let e =
            from_json::<KeyFields>(serde_json::json!({"name": "a", "rpm": "lots"})).unwrap_err();
        assert!(e.starts_with("rpm: invalid type"), "{e}");
        let e = from_json::<KeyFields>(serde_json::json!({"name": "a", "budget": {"usd": "x"}}))
            .unwrap_err();
        assert!(e.starts_with("budget.usd"), "{e}");
    }
}
