//! Persistent state behind one `Store` trait. `SqlStore` implements it for
//! SQLite and PostgreSQL with one schema (see `migrations/`).

pub(crate) mod query;
mod sql;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use sql::{SqlStore, redact_url as redact};

/// A virtual key as stored (never the secret, only its hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub user: Option<String>,
    pub team: Option<String>,
    pub purpose: Option<String>,
    pub environment: Option<String>,
    pub prefix: String,
    pub key_hash: String,
    pub old_key_hash: Option<String>,
    pub old_key_expires_at: Option<i64>,
    /// `active` or `revoked`; `expired` is derived from `expires_at` on read.
    pub status: String,
    pub parent_id: Option<String>,
    pub expires_at: Option<i64>,
    /// JSON of `crate::gateway::keyspec::KeySpec`.
    pub spec: String,
    pub spend_usd: f64,
    pub created_at: i64,
    pub updated_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct AdminKeyRow {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub key_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageRow {
    pub request_id: String,
    pub key_id: String,
    pub user: Option<String>,
    pub team: Option<String>,
    pub purpose: Option<String>,
    pub provider: String,
    pub model: String,
    pub endpoint: String,
    pub status: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub latency_ms: i64,
    pub created_at: i64,
    /// Guardrail flags, comma-separated (`anomaly:prompt_tokens`, `dlp:redacted`).
    #[serde(default)]
    pub flags: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRow {
    pub seq: i64,
    pub ts: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// A user or team: owner of keys, with limits and budgets of its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OwnerRow {
    /// `user` or `team`.
    pub kind: String,
    pub name: String,
    /// A user's team.
    pub team: Option<String>,
    /// JSON of `crate::keys::spec::OwnerSpec`.
    pub spec: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An audit entry before it is chained.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub ts: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub user: Option<String>,
    pub team: Option<String>,
    /// `active`, `revoked` or `expired`.
    pub status: Option<String>,
    pub limit: i64,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub key_id: Option<String>,
    pub user: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: i64,
    pub cursor: Option<String>,
}

/// Columns usage can be grouped by.
pub const GROUP_COLUMNS: &[&str] = &[
    "model", "key_id", "user", "team", "day", "provider", "purpose", "endpoint",
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageGroup {
    /// The group's fields, in `group_by` order.
    pub fields: Vec<(String, serde_json::Value)>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditVerdict {
    pub ok: bool,
    pub checked: i64,
    /// The first sequence number where the chain breaks.
    pub first_bad_seq: Option<i64>,
    pub reason: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn migrate(&self) -> Result<()>;
    /// PostgreSQL `NOTIFY channel, payload` (a no-op elsewhere).
    async fn notify(&self, channel: &str, payload: &str) -> Result<()>;
    async fn ping(&self) -> Result<()>;
    /// The SQL pool behind this store, for modules with tables of their own
    /// (the web console); `None` for a store that is not SQL.
    fn sql_pool(&self) -> Option<sqlx::AnyPool> {
        None
    }

    async fn insert_key(&self, key: &KeyRow) -> Result<()>;
    /// Overwrite a key's row (matched by id).
    async fn update_key(&self, key: &KeyRow) -> Result<()>;
    async fn get_key(&self, id: &str) -> Result<Option<KeyRow>>;
    async fn list_keys(&self, filter: &KeyFilter, now_ms: i64) -> Result<Vec<KeyRow>>;
    async fn all_keys(&self) -> Result<Vec<KeyRow>>;
    /// Revoke a key and all its descendants; answers the ids revoked now.
    async fn revoke_cascade(&self, id: &str, now_ms: i64) -> Result<Vec<String>>;

    async fn insert_admin_key(&self, key: &AdminKeyRow) -> Result<()>;
    async fn admin_keys(&self) -> Result<Vec<AdminKeyRow>>;

    /// Insert usage rows (idempotent per request_id) and add their cost to the
    /// keys' spend.
    async fn insert_usage(&self, rows: &[UsageRow]) -> Result<()>;
    async fn list_usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>>;
    async fn group_usage(
        &self,
        filter: &UsageFilter,
        group_by: &[String],
    ) -> Result<Vec<UsageGroup>>;

    /// Settled spend since `since_ms` of a key (`key_id`), user (`user_name`) or team (`team`).
    async fn spend_since(&self, column: &str, value: &str, since_ms: i64) -> Result<f64>;

    /// Settled spend since `since_ms` of a set of keys (a key and its descendants).
    async fn spend_since_keys(&self, key_ids: &[String], since_ms: i64) -> Result<f64>;

    async fn upsert_owner(&self, owner: &OwnerRow) -> Result<()>;
    async fn get_owner(&self, kind: &str, name: &str) -> Result<Option<OwnerRow>>;
    async fn list_owners(&self, kind: Option<&str>) -> Result<Vec<OwnerRow>>;

    /// Append an entry to the hash chain; answers the stored row.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRow>;
    async fn list_audit(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        limit: i64,
        cursor: Option<i64>,
    ) -> Result<Vec<AuditRow>>;
    async fn verify_audit(&self) -> Result<AuditVerdict>;
}

/// The hash of an audit row: SHA-256 over the previous hash and the row's fields.
pub fn audit_hash(prev_hash: &str, seq: i64, e: &AuditEntry, detail: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        prev_hash,
        &seq.to_string(),
        &e.ts.to_string(),
        &e.actor,
        &e.action,
        e.target.as_deref().unwrap_or(""),
        e.ip.as_deref().unwrap_or(""),
        detail,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Open the store named by a database URL and run migrations.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    let store = SqlStore::connect(url).await?;
    store.migrate().await?;
    Ok(std::sync::Arc::new(store))
}
