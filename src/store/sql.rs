//! `Store` over sqlx's `Any` driver: one implementation, one schema and the
//! same SQL for SQLite and PostgreSQL.

use anyhow::{Context, Result};
use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row};

use super::query::{Arg, Where, bind_all, usage_where};
use super::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct SqlStore {
    pool: AnyPool,
    is_sqlite: bool,
}

const KEY_COLUMNS: &str = "id, name, user_name, team, purpose, environment, prefix, key_hash, old_key_hash, old_key_expires_at, status, parent_id, expires_at, spec, spend_usd, created_at, updated_at, revoked_at, last_used_at";
const USAGE_COLUMNS: &str = "request_id, key_id, user_name, team, purpose, provider, model, endpoint, status, prompt_tokens, completion_tokens, cost_usd, latency_ms, created_at, flags";
const AUDIT_COLUMNS: &str = "seq, ts, actor, action, target, ip, detail, prev_hash, hash";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn key_from_row(r: &AnyRow) -> Result<KeyRow> {
    Ok(KeyRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        user: r.try_get("user_name")?,
        team: r.try_get("team")?,
        purpose: r.try_get("purpose")?,
        environment: r.try_get("environment")?,
        prefix: r.try_get("prefix")?,
        key_hash: r.try_get("key_hash")?,
        old_key_hash: r.try_get("old_key_hash")?,
        old_key_expires_at: r.try_get("old_key_expires_at")?,
        status: r.try_get("status")?,
        parent_id: r.try_get("parent_id")?,
        expires_at: r.try_get("expires_at")?,
        spec: r.try_get("spec")?,
        spend_usd: r.try_get("spend_usd")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

fn key_args(k: &KeyRow) -> Vec<Arg> {
    vec![
        Arg::S(Some(k.id.clone())),
        Arg::S(Some(k.name.clone())),
        Arg::S(k.user.clone()),
        Arg::S(k.team.clone()),
        Arg::S(k.purpose.clone()),
        Arg::S(k.environment.clone()),
        Arg::S(Some(k.prefix.clone())),
        Arg::S(Some(k.key_hash.clone())),
        Arg::S(k.old_key_hash.clone()),
        Arg::I(k.old_key_expires_at),
        Arg::S(Some(k.status.clone())),
        Arg::S(k.parent_id.clone()),
        Arg::I(k.expires_at),
        Arg::S(Some(k.spec.clone())),
    ]
}

fn usage_from_row(r: &AnyRow) -> Result<UsageRow> {
    Ok(UsageRow {
        request_id: r.try_get("request_id")?,
        key_id: r.try_get("key_id")?,
        user: r.try_get("user_name")?,
        team: r.try_get("team")?,
        purpose: r.try_get("purpose")?,
        provider: r.try_get("provider")?,
        model: r.try_get("model")?,
        endpoint: r.try_get("endpoint")?,
        status: r.try_get("status")?,
        prompt_tokens: r.try_get("prompt_tokens")?,
        completion_tokens: r.try_get("completion_tokens")?,
        cost_usd: r.try_get("cost_usd")?,
        latency_ms: r.try_get("latency_ms")?,
        created_at: r.try_get("created_at")?,
        flags: r.try_get("flags")?,
    })
}

fn audit_from_row(r: &AnyRow) -> Result<AuditRow> {
    Ok(AuditRow {
        seq: r.try_get("seq")?,
        ts: r.try_get("ts")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        ip: r.try_get("ip")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

fn owner_from_row(r: &AnyRow) -> Result<OwnerRow> {
    Ok(OwnerRow {
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        team: r.try_get("team")?,
        spec: r.try_get("spec")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Adds `mode=rwc` to a SQLite URL so a fresh file is created.
fn normalize_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        if rest.contains(":memory:") || rest.contains("mode=") {
            return url.to_string();
        }
        let sep = if rest.contains('?') { '&' } else { '?' };
        let rest = rest.trim_start_matches("//");
        return format!("sqlite://{rest}{sep}mode=rwc");
    }
    url.to_string()
}

impl SqlStore {
    pub async fn connect(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 10 })
            // sqlx waits up to 30 s by default (retrying a refused connection
            // all along); a database server that is down must fail fast so
            // the usage writer spools, /readyz answers and shutdown drains.
            .acquire_timeout(std::time::Duration::from_secs(if is_sqlite {
                30
            } else {
                3
            }))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect(&normalize_url(url))
            .await
            .with_context(|| format!("store: cannot open database {}", redact_url(url)))?;
        Ok(SqlStore { pool, is_sqlite })
    }

    /// A transaction that will write: on SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`), so a read-then-write transaction waits for
    /// another writer instead of failing with "database is locked".
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Any>> {
        Ok(if self.is_sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        } else {
            self.pool.begin().await?
        })
    }

    async fn append_once(&self, entry: &AuditEntry, detail: &str) -> Result<AuditRow> {
        let mut tx = self.begin_write().await?;
        // On PostgreSQL, lock the head row so concurrent appenders (other
        // replicas) queue behind each other instead of racing for the same
        // seq; SQLite's BEGIN IMMEDIATE already serializes writers.
        let head_sql = if self.is_sqlite {
            "SELECT seq, hash FROM audit_head WHERE id = 1"
        } else {
            "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE"
        };
        let head = sqlx::query(head_sql).fetch_optional(&mut *tx).await?;
        let (prev_seq, prev_hash): (i64, String) = match head {
            Some(r) => (r.try_get("seq")?, r.try_get("hash")?),
            None => (0, GENESIS.to_string()),
        };
        let seq = prev_seq + 1;
        let hash = audit_hash(&prev_hash, seq, entry, detail);
        sqlx::query(&format!(
            "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
        ))
        .bind(seq)
        .bind(entry.ts)
        .bind(entry.actor.as_str())
        .bind(entry.action.as_str())
        .bind(entry.target.as_deref())
        .bind(entry.ip.as_deref())
        .bind(detail)
        .bind(prev_hash.as_str())
        .bind(hash.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE SET seq = $1, hash = $2",
        )
        .bind(seq)
        .bind(hash.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AuditRow {
            seq,
            ts: entry.ts,
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            ip: entry.ip.clone(),
            detail: detail.to_string(),
            prev_hash,
            hash,
        })
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("store: migration failed")?;
        Ok(())
    }

    async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        if !self.is_sqlite {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn sql_pool(&self) -> Option<AnyPool> {
        Some(self.pool.clone())
    }

    async fn insert_key(&self, k: &KeyRow) -> Result<()> {
        let args = key_args(k);
        let sql = format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)"
        );
        bind_all(sqlx::query(&sql), &args)
            .bind(k.spend_usd)
            .bind(k.created_at)
            .bind(k.updated_at)
            .bind(k.revoked_at)
            .bind(k.last_used_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn update_key(&self, k: &KeyRow) -> Result<()> {
        let args = key_args(k);
        // spend_usd and last_used_at belong to the usage writer: not overwritten here.
        let sql = "UPDATE api_keys SET name=$2, user_name=$3, team=$4, purpose=$5, environment=$6, prefix=$7, key_hash=$8, old_key_hash=$9, old_key_expires_at=$10, status=$11, parent_id=$12, expires_at=$13, spec=$14, updated_at=$15, revoked_at=$16 WHERE id=$1";
        bind_all(sqlx::query(sql), &args)
            .bind(k.updated_at)
            .bind(k.revoked_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRow>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_keys(&self, f: &KeyFilter, now_ms: i64) -> Result<Vec<KeyRow>> {
        let mut w = Where::default();
        if let Some(u) = &f.user {
            w.push("user_name = ?", Arg::S(Some(u.clone())));
        }
        if let Some(t) = &f.team {
            w.push("team = ?", Arg::S(Some(t.clone())));
        }
        match f.status.as_deref() {
            Some("revoked") => w.push("status = ?", Arg::S(Some("revoked".into()))),
            Some("expired") => {
                w.push("status = ?", Arg::S(Some("active".into())));
                w.push(
                    "expires_at IS NOT NULL AND expires_at <= ?",
                    Arg::I(Some(now_ms)),
                );
            }
            Some("active") => {
                w.push("status = ?", Arg::S(Some("active".into())));
                w.push(
                    "(expires_at IS NULL OR expires_at > ?)",
                    Arg::I(Some(now_ms)),
                );
            }
            _ => {}
        }
        if let Some(c) = &f.cursor {
            w.push("id > ?", Arg::S(Some(c.clone())));
        }
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys{} ORDER BY id LIMIT {}",
            w.sql(),
            w.next_placeholder()
        );
        let rows = w
            .bind(sqlx::query(&sql))
            .bind(f.limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn all_keys(&self) -> Result<Vec<KeyRow>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_cascade(&self, id: &str, now_ms: i64) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let mut all = vec![id.to_string()];
        let mut frontier = vec![id.to_string()];
        while let Some(parent) = frontier.pop() {
            let rows = sqlx::query("SELECT id FROM api_keys WHERE parent_id = $1")
                .bind(parent.as_str())
                .fetch_all(&mut *tx)
                .await?;
            for r in rows {
                let child: String = r.try_get("id")?;
                if !all.contains(&child) {
                    all.push(child.clone());
                    frontier.push(child);
                }
            }
        }
        let mut revoked = Vec::new();
        for k in &all {
            let done = sqlx::query(
                "UPDATE api_keys SET status = 'revoked', revoked_at = $1, updated_at = $1 WHERE id = $2 AND status <> 'revoked'",
            )
            .bind(now_ms)
            .bind(k.as_str())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                revoked.push(k.clone());
            }
        }
        tx.commit().await?;
        Ok(revoked)
    }

    async fn insert_admin_key(&self, k: &AdminKeyRow) -> Result<()> {
        sqlx::query("INSERT INTO admin_keys (id, name, prefix, key_hash, created_at, revoked_at) VALUES ($1,$2,$3,$4,$5,$6)")
            .bind(k.id.as_str())
            .bind(k.name.as_str())
            .bind(k.prefix.as_str())
            .bind(k.key_hash.as_str())
            .bind(k.created_at)
            .bind(k.revoked_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn admin_keys(&self) -> Result<Vec<AdminKeyRow>> {
        let rows = sqlx::query(
            "SELECT id, name, prefix, key_hash, created_at, revoked_at FROM admin_keys",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AdminKeyRow {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    prefix: r.try_get("prefix")?,
                    key_hash: r.try_get("key_hash")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    async fn insert_usage(&self, rows: &[UsageRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let mut spend: std::collections::HashMap<&str, (f64, i64)> =
            std::collections::HashMap::new();
        // Multi-row inserts; RETURNING names the rows that were new, so a
        // replayed row adds nothing to a key's spend.
        const COLS: usize = 15;
        // SQLite's binding of `$N` parameters grows with the square of their
        // number per statement: keep its statements small.
        let per_statement = if self.is_sqlite { 32 } else { 500 };
        for chunk in rows.chunks(per_statement) {
            let values: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let ps: Vec<String> =
                        (1..=COLS).map(|c| format!("${}", r * COLS + c)).collect();
                    format!("({})", ps.join(","))
                })
                .collect();
            let sql = format!(
                "INSERT INTO usage ({USAGE_COLUMNS}) VALUES {} ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                values.join(",")
            );
            let mut q = sqlx::query(&sql);
            for u in chunk {
                q = q
                    .bind(u.request_id.as_str())
                    .bind(u.key_id.as_str())
                    .bind(u.user.as_deref())
                    .bind(u.team.as_deref())
                    .bind(u.purpose.as_deref())
                    .bind(u.provider.as_str())
                    .bind(u.model.as_str())
                    .bind(u.endpoint.as_str())
                    .bind(u.status)
                    .bind(u.prompt_tokens)
                    .bind(u.completion_tokens)
                    .bind(u.cost_usd)
                    .bind(u.latency_ms)
                    .bind(u.created_at)
                    .bind(u.flags.as_deref());
            }
            let mut inserted: std::collections::HashSet<String> = q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .filter_map(|r| r.try_get::<String, _>("request_id").ok())
                .collect();
            // `remove`: a request id twice in one batch is inserted and
            // paid for once.
            for u in chunk.iter().filter(|u| inserted.remove(&u.request_id)) {
                let e = spend.entry(u.key_id.as_str()).or_insert((0.0, 0));
                e.0 += u.cost_usd;
                e.1 = e.1.max(u.created_at);
            }
        }
        for (key_id, (cost, last)) in spend {
            sqlx::query(
                "UPDATE api_keys SET spend_usd = spend_usd + $1, last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2 THEN $2 ELSE last_used_at END WHERE id = $3",
            )
            .bind(cost)
            .bind(last)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_usage(&self, f: &UsageFilter) -> Result<Vec<UsageRow>> {
        let mut w = usage_where(f);
        if let Some(c) = &f.cursor {
            w.push("request_id < ?", Arg::S(Some(c.clone())));
        }
        let sql = format!(
            "SELECT {USAGE_COLUMNS} FROM usage{} ORDER BY request_id DESC LIMIT {}",
            w.sql(),
            w.next_placeholder()
        );
        let rows = w
            .bind(sqlx::query(&sql))
            .bind(f.limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(usage_from_row).collect()
    }

    async fn group_usage(&self, f: &UsageFilter, group_by: &[String]) -> Result<Vec<UsageGroup>> {
        let w = usage_where(f);
        let mut exprs = Vec::new();
        for (i, g) in group_by.iter().enumerate() {
            let expr = match g.as_str() {
                "user" => "user_name".to_string(),
                "day" => "(created_at / 86400000)".to_string(),
                other if GROUP_COLUMNS.contains(&other) => other.to_string(),
                other => anyhow::bail!("unknown group_by column '{other}'"),
            };
            exprs.push(format!("{expr} AS g{i}"));
        }
        let groups = (0..group_by.len())
            .map(|i| format!("g{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {}, COUNT(*) AS requests, CAST(SUM(prompt_tokens) AS BIGINT) AS pt, CAST(SUM(completion_tokens) AS BIGINT) AS ct, SUM(cost_usd) AS cost FROM usage{} GROUP BY {groups} ORDER BY {groups}",
            exprs.join(", "),
            w.sql()
        );
        let rows = w.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut fields = Vec::new();
            for (i, g) in group_by.iter().enumerate() {
                let col = format!("g{i}");
                let v = if g == "day" {
                    let day: i64 = r.try_get(col.as_str())?;
                    serde_json::Value::String(crate::util::day_string(day))
                } else {
                    let s: Option<String> = r.try_get(col.as_str())?;
                    s.map(serde_json::Value::String)
                        .unwrap_or(serde_json::Value::Null)
                };
                fields.push((g.clone(), v));
            }
            out.push(UsageGroup {
                fields,
                requests: r.try_get("requests")?,
                prompt_tokens: r.try_get::<Option<i64>, _>("pt")?.unwrap_or(0),
                completion_tokens: r.try_get::<Option<i64>, _>("ct")?.unwrap_or(0),
                cost_usd: r.try_get::<Option<f64>, _>("cost")?.unwrap_or(0.0),
            });
        }
        Ok(out)
    }

    async fn spend_since(&self, column: &str, value: &str, since_ms: i64) -> Result<f64> {
        let col = match column {
            "key_id" | "user_name" | "team" => column,
            other => anyhow::bail!("spend_since: unknown column {other}"),
        };
        let r = sqlx::query(&format!(
            "SELECT SUM(cost_usd) AS s FROM usage WHERE {col} = $1 AND created_at >= $2"
        ))
        .bind(value)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(r.try_get::<Option<f64>, _>("s")?.unwrap_or(0.0))
    }

    async fn spend_since_keys(&self, key_ids: &[String], since_ms: i64) -> Result<f64> {
        let mut total = 0.0;
        for chunk in key_ids.chunks(500) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT SUM(cost_usd) AS s FROM usage WHERE created_at >= $1 AND key_id IN ({})",
                marks.join(",")
            );
            let mut q = sqlx::query(&sql).bind(since_ms);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            let r = q.fetch_one(&self.pool).await?;
            total += r.try_get::<Option<f64>, _>("s")?.unwrap_or(0.0);
        }
        Ok(total)
    }

    async fn upsert_owner(&self, o: &OwnerRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO owners (kind, name, team, spec, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6) \
             ON CONFLICT (kind, name) DO UPDATE SET team = $3, spec = $4, updated_at = $6",
        )
        .bind(o.kind.as_str())
        .bind(o.name.as_str())
        .bind(o.team.as_deref())
        .bind(o.spec.as_str())
        .bind(o.created_at)
        .bind(o.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_owner(&self, kind: &str, name: &str) -> Result<Option<OwnerRow>> {
        let r = sqlx::query("SELECT kind, name, team, spec, created_at, updated_at FROM owners WHERE kind = $1 AND name = $2")
            .bind(kind)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(owner_from_row).transpose()
    }

    async fn list_owners(&self, kind: Option<&str>) -> Result<Vec<OwnerRow>> {
        let rows = match kind {
            Some(k) => {
                sqlx::query("SELECT kind, name, team, spec, created_at, updated_at FROM owners WHERE kind = $1 ORDER BY name")
                    .bind(k)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT kind, name, team, spec, created_at, updated_at FROM owners ORDER BY kind, name")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(owner_from_row).collect()
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRow> {
        let detail = serde_json::to_string(&entry.detail)?;
        let mut last_err = None;
        // Another replica may take the same sequence number; the primary key
        // refuses the second writer, which then retries on the new head.
        for _ in 0..8 {
            match self.append_once(entry, &detail).await {
                Ok(row) => return Ok(row),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("audit append failed")))
    }

    async fn list_audit(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        limit: i64,
        cursor: Option<i64>,
    ) -> Result<Vec<AuditRow>> {
        let mut w = Where::default();
        if let Some(s) = since {
            w.push("ts >= ?", Arg::I(Some(s)));
        }
        if let Some(u) = until {
            w.push("ts < ?", Arg::I(Some(u)));
        }
        if let Some(c) = cursor {
            w.push("seq > ?", Arg::I(Some(c)));
        }
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit{} ORDER BY seq LIMIT {}",
            w.sql(),
            w.next_placeholder()
        );
        let rows = w
            .bind(sqlx::query(&sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn verify_audit(&self) -> Result<AuditVerdict> {
        let mut prev_seq = 0i64;
        let mut prev_hash = GENESIS.to_string();
        let mut checked = 0i64;
        let bad = |seq: i64, checked: i64, reason: String| AuditVerdict {
            ok: false,
            checked,
            first_bad_seq: Some(seq),
            reason: Some(reason),
        };
        loop {
            let rows = self.list_audit(None, None, 1000, Some(prev_seq)).await?;
            if rows.is_empty() {
                break;
            }
            for r in rows {
                if r.seq != prev_seq + 1 {
                    return Ok(bad(
                        prev_seq + 1,
                        checked,
                        format!("row {} is missing", prev_seq + 1),
                    ));
                }
                if r.prev_hash != prev_hash {
                    return Ok(bad(
                        r.seq,
                        checked,
                        format!("row {} does not link to row {}", r.seq, prev_seq),
                    ));
                }
                let entry = AuditEntry {
                    ts: r.ts,
                    actor: r.actor.clone(),
                    action: r.action.clone(),
                    target: r.target.clone(),
                    ip: r.ip.clone(),
                    detail: serde_json::Value::Null,
                };
                if audit_hash(&prev_hash, r.seq, &entry, &r.detail) != r.hash {
                    return Ok(bad(r.seq, checked, format!("row {} was altered", r.seq)));
                }
                checked += 1;
                prev_seq = r.seq;
                prev_hash = r.hash;
            }
        }
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        if let Some(h) = head {
            let head_seq: i64 = h.try_get("seq")?;
            let head_hash: String = h.try_get("hash")?;
            if head_seq != prev_seq || head_hash != prev_hash {
                return Ok(bad(
                    prev_seq + 1,
                    checked,
                    format!("rows after {prev_seq} were deleted (head is at {head_seq})"),
                ));
            }
        } else if checked > 0 {
            return Ok(bad(1, checked, "the chain head is missing".into()));
        }
        Ok(AuditVerdict {
            ok: true,
            checked,
            first_bad_seq: None,
            reason: None,
        })
    }
}

/// Column types for a generic table copy.
#[derive(Clone, Copy)]
enum Col {
    S,
    I,
    F,
}

/// A table's name, its columns with their types, and the column to order by.
type TableSpec = (&'static str, &'static [(&'static str, Col)], &'static str);

/// Every table.
const TABLES: &[TableSpec] = &[
    (
        "api_keys",
        &[
            ("id", Col::S),
            ("name", Col::S),
            ("user_name", Col::S),
            ("team", Col::S),
            ("purpose", Col::S),
            ("environment", Col::S),
            ("prefix", Col::S),
            ("key_hash", Col::S),
            ("old_key_hash", Col::S),
            ("old_key_expires_at", Col::I),
            ("status", Col::S),
            ("parent_id", Col::S),
            ("expires_at", Col::I),
            ("spec", Col::S),
            ("spend_usd", Col::F),
            ("created_at", Col::I),
            ("updated_at", Col::I),
            ("revoked_at", Col::I),
            ("last_used_at", Col::I),
        ],
        "id",
    ),
    (
        "admin_keys",
        &[
            ("id", Col::S),
            ("name", Col::S),
            ("prefix", Col::S),
            ("key_hash", Col::S),
            ("created_at", Col::I),
            ("revoked_at", Col::I),
        ],
        "id",
    ),
    (
        "owners",
        &[
            ("kind", Col::S),
            ("name", Col::S),
            ("team", Col::S),
            ("spec", Col::S),
            ("created_at", Col::I),
            ("updated_at", Col::I),
        ],
        "kind || ':' || name",
    ),
    (
        "usage",
        &[
            ("request_id", Col::S),
            ("key_id", Col::S),
            ("user_name", Col::S),
            ("team", Col::S),
            ("purpose", Col::S),
            ("provider", Col::S),
            ("model", Col::S),
            ("endpoint", Col::S),
            ("status", Col::I),
            ("prompt_tokens", Col::I),
            ("completion_tokens", Col::I),
            ("cost_usd", Col::F),
            ("latency_ms", Col::I),
            ("created_at", Col::I),
            ("flags", Col::S),
        ],
        "request_id",
    ),
    (
        "audit",
        &[
            ("seq", Col::I),
            ("ts", Col::I),
            ("actor", Col::S),
            ("action", Col::S),
            ("target", Col::S),
            ("ip", Col::S),
            ("detail", Col::S),
            ("prev_hash", Col::S),
            ("hash", Col::S),
        ],
        "seq",
    ),
    (
        "audit_head",
        &[("id", Col::I), ("seq", Col::I), ("hash", Col::S)],
        "id",
    ),
    // The web console's tables (migrations/…_console.sql).
    (
        "console_users",
        &[
            ("id", Col::S),
            ("name", Col::S),
            ("role", Col::S),
            ("team", Col::S),
            ("password_hash", Col::S),
            ("status", Col::S),
            ("created_at", Col::I),
            ("updated_at", Col::I),
            ("last_login_at", Col::I),
        ],
        "id",
    ),
    (
        "console_invites",
        &[
            ("token_hash", Col::S),
            ("user_id", Col::S),
            ("created_at", Col::I),
            ("expires_at", Col::I),
            ("used_at", Col::I),
        ],
        "token_hash",
    ),
    (
        "console_sessions",
        &[
            ("token_hash", Col::S),
            ("user_id", Col::S),
            ("csrf", Col::S),
            ("created_at", Col::I),
            ("expires_at", Col::I),
            ("last_seen_at", Col::I),
            ("ip", Col::S),
        ],
        "token_hash",
    ),
];

/// One value read from a row, to be bound again.
enum Val {
    S(Option<String>),
    I(Option<i64>),
    F(Option<f64>),
}

impl SqlStore {
    /// Rows per table (for `db copy` reports).
    pub async fn table_counts(&self) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for (table, _, _) in TABLES {
            let r = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                .fetch_one(&self.pool)
                .await?;
            out.push((table.to_string(), r.try_get::<i64, _>("n")?));
        }
        Ok(out)
    }

    /// Copy every row of every table into `to` (rows already there are kept:
    /// the copy can be resumed). Answers the rows copied per table.
    pub async fn copy_into(&self, to: &SqlStore) -> Result<Vec<(String, u64)>> {
        let mut report = Vec::new();
        for (table, cols, order) in TABLES {
            let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
            let select = format!("SELECT {} FROM {table} ORDER BY {order}", names.join(", "));
            let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
            // Rows already in the target are kept, except the audit chain's
            // head: a re-run after the source grew must move it forward to
            // the rows just copied, or the target's chain no longer verifies.
            let on_conflict = if *table == "audit_head" {
                "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash WHERE audit_head.seq < excluded.seq"
            } else {
                "ON CONFLICT DO NOTHING"
            };
            let insert = format!(
                "INSERT INTO {table} ({}) VALUES ({}) {on_conflict}",
                names.join(", "),
                placeholders.join(", ")
            );
            let rows = sqlx::query(&select).fetch_all(&self.pool).await?;
            let mut copied = 0u64;
            let mut tx = to.begin_write().await?;
            for r in &rows {
                let mut vals = Vec::with_capacity(cols.len());
                for (name, ty) in cols.iter() {
                    vals.push(match ty {
                        Col::S => Val::S(r.try_get(*name)?),
                        Col::I => Val::I(r.try_get(*name)?),
                        Col::F => Val::F(r.try_get(*name)?),
                    });
                }
                let mut q = sqlx::query(&insert);
                for v in &vals {
                    q = match v {
                        Val::S(s) => q.bind(s.as_deref()),
                        Val::I(i) => q.bind(*i),
                        Val::F(f) => q.bind(*f),
                    };
                }
                copied += q.execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            report.push((table.to_string(), copied));
        }
        Ok(report)
    }
}
