//! The console's own tables (accounts, invites, sessions) and the read-only
//! queries its pages need beyond the `Store` trait (usage samples for charts,
//! audit rows newest first with filters). Same SQL for SQLite and PostgreSQL:
//! `$N` placeholders, only TEXT/BIGINT/DOUBLE PRECISION, times in epoch ms.

use anyhow::{Context, Result};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::gateway::App;
use crate::store::query::{Arg, Where, usage_where};
use crate::store::{AuditRow, UsageFilter};

/// A console account.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleUser {
    pub id: String,
    pub name: String,
    /// `admin`, `member` or `viewer`.
    pub role: String,
    pub team: Option<String>,
    /// argon2id PHC string; `None` until an invite is used.
    pub password_hash: Option<String>,
    /// `active` or `disabled`.
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login_at: Option<i64>,
}

/// A signed-in session (looked up by the hash of its cookie).
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub token_hash: String,
    pub user: ConsoleUser,
    pub csrf: String,
    pub expires_at: i64,
}

/// What a usage chart needs of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub created_at: i64,
    pub latency_ms: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub ok: bool,
}

/// Filters of the audit page.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Substring of the actor.
    pub actor: Option<String>,
    /// Prefix of the action (`key.` matches every key action).
    pub action: Option<String>,
    /// Rows older than this sequence number.
    pub before: Option<i64>,
    pub limit: i64,
}

const USER_COLUMNS: &str =
    "id, name, role, team, password_hash, status, created_at, updated_at, last_login_at";

fn user_from_row(r: &AnyRow) -> Result<ConsoleUser> {
    Ok(ConsoleUser {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        team: r.try_get("team")?,
        password_hash: r.try_get("password_hash")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        last_login_at: r.try_get("last_login_at")?,
    })
}

/// Escape `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Clone)]
pub struct ConsoleDb {
    pool: AnyPool,
}

impl ConsoleDb {
    /// The console's tables live in the gateway's database.
    pub fn of(app: &App) -> Result<ConsoleDb> {
        let pool = app
            .store
            .sql_pool()
            .context("the web console needs an SQL store (SQLite or PostgreSQL)")?;
        Ok(ConsoleDb { pool })
    }

    // ---- accounts -------------------------------------------------------

    pub async fn insert_user(&self, u: &ConsoleUser) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO console_users ({USER_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
        ))
        .bind(u.id.as_str())
        .bind(u.name.as_str())
        .bind(u.role.as_str())
        .bind(u.team.as_deref())
        .bind(u.password_hash.as_deref())
        .bind(u.status.as_str())
        .bind(u.created_at)
        .bind(u.updated_at)
        .bind(u.last_login_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Overwrite an account's role, team, status and password hash.
    pub async fn update_user(&self, u: &ConsoleUser) -> Result<()> {
        sqlx::query(
            "UPDATE console_users SET role = $2, team = $3, password_hash = $4, status = $5, updated_at = $6 WHERE id = $1",
        )
        .bind(u.id.as_str())
        .bind(u.role.as_str())
        .bind(u.team.as_deref())
        .bind(u.password_hash.as_deref())
        .bind(u.status.as_str())
        .bind(u.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<ConsoleUser>> {
        let r = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM console_users WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(user_from_row).transpose()
    }

    pub async fn users(&self) -> Result<Vec<ConsoleUser>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM console_users ORDER BY name LIMIT 10000"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    pub async fn set_last_login(&self, user_id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE console_users SET last_login_at = $1 WHERE id = $2")
            .bind(now)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- invites --------------------------------------------------------

    pub async fn insert_invite(
        &self,
        token_hash: &str,
        user_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        // One open invite per account: a new link replaces the old one.
        sqlx::query("DELETE FROM console_invites WHERE user_id = $1 AND used_at IS NULL")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO console_invites (token_hash, user_id, created_at, expires_at, used_at) VALUES ($1,$2,$3,$4,NULL)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The account an unused, unexpired invite is for.
    pub async fn invite_user(&self, token_hash: &str, now: i64) -> Result<Option<ConsoleUser>> {
        let r = sqlx::query(&format!(
            "SELECT {} FROM console_users u JOIN console_invites i ON i.user_id = u.id \
             WHERE i.token_hash = $1 AND i.used_at IS NULL AND i.expires_at > $2",
            USER_COLUMNS
                .split(", ")
                .map(|c| format!("u.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(user_from_row).transpose()
    }

    /// Mark an invite used; false when it was already used or expired
    /// (a second use of the same link loses the race).
    pub async fn use_invite(&self, token_hash: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE console_invites SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Accounts with an open invite.
    pub async fn open_invites(&self, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT user_id FROM console_invites WHERE used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("user_id")?))
            .collect()
    }

    // ---- sessions -------------------------------------------------------

    pub async fn insert_session(
        &self,
        token_hash: &str,
        user_id: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
        ip: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, user_id, csrf, created_at, expires_at, last_seen_at, ip) VALUES ($1,$2,$3,$4,$5,$4,$6)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .bind(ip)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A live session of an active account.
    pub async fn session(&self, token_hash: &str, now: i64) -> Result<Option<SessionRow>> {
        let cols = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let r = sqlx::query(&format!(
            "SELECT s.token_hash AS s_token, s.csrf AS s_csrf, s.expires_at AS s_expires, {cols} \
             FROM console_sessions s JOIN console_users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.status = 'active'"
        ))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match r {
            None => Ok(None),
            Some(r) => Ok(Some(SessionRow {
                token_hash: r.try_get("s_token")?,
                csrf: r.try_get("s_csrf")?,
                expires_at: r.try_get("s_expires")?,
                user: user_from_row(&r)?,
            })),
        }
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sign an account out everywhere (password change, disable, role change).
    pub async fn delete_sessions_of(&self, user_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_expired(&self, now: i64) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM console_invites WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- usage and audit reads ------------------------------------------

    /// The newest `limit` requests matching the filter, for charts.
    pub async fn usage_samples(&self, f: &UsageFilter, limit: i64) -> Result<Vec<Sample>> {
        let w = usage_where(f);
        let sql = format!(
            "SELECT created_at, latency_ms, prompt_tokens, completion_tokens, cost_usd, status FROM usage{} ORDER BY created_at DESC LIMIT {}",
            w.sql(),
            w.next_placeholder()
        );
        let rows = w
            .bind(sqlx::query(&sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let status: i64 = r.try_get("status")?;
                Ok(Sample {
                    created_at: r.try_get("created_at")?,
                    latency_ms: r.try_get("latency_ms")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    cost_usd: r.try_get("cost_usd")?,
                    ok: (200..400).contains(&status),
                })
            })
            .collect()
    }

    /// Distinct values of a usage column (for filter suggestions).
    pub async fn usage_values(&self, column: &str, user: Option<&str>) -> Result<Vec<String>> {
        let col = match column {
            "model" | "provider" | "team" | "user_name" => column,
            other => anyhow::bail!("usage_values: unknown column {other}"),
        };
        let mut w = Where::default();
        if let Some(u) = user {
            w.push("user_name = ?", Arg::S(Some(u.to_string())));
        }
        let sql = format!(
            "SELECT DISTINCT {col} AS v FROM usage{} ORDER BY v LIMIT 200",
            w.sql()
        );
        let rows = w.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(v) = r.try_get::<Option<String>, _>("v")? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Audit rows newest first.
    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let mut w = Where::default();
        if let Some(s) = q.since {
            w.push("ts >= ?", Arg::I(Some(s)));
        }
        if let Some(u) = q.until {
            w.push("ts < ?", Arg::I(Some(u)));
        }
        if let Some(a) = &q.actor {
            w.push(
                "actor LIKE ? ESCAPE '\\'",
                Arg::S(Some(format!("%{}%", like_escape(a)))),
            );
        }
        if let Some(a) = &q.action {
            w.push(
                "action LIKE ? ESCAPE '\\'",
                Arg::S(Some(format!("{}%", like_escape(a)))),
            );
        }
        if let Some(b) = q.before {
            w.push("seq < ?", Arg::I(Some(b)));
        }
        let sql = format!(
            "SELECT seq, ts, actor, action, target, ip, detail, prev_hash, hash FROM audit{} ORDER BY seq DESC LIMIT {}",
            w.sql(),
            w.next_placeholder()
        );
        let rows = w
            .bind(sqlx::query(&sql))
            .bind(q.limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
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
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(like_escape("a%b_c\\"), "a\\%b\\_c\\\\");
        assert_eq!(like_escape("key."), "key.");
    }

    #[test]
    fn usage_where_numbers_placeholders() {
        let f = UsageFilter {
            key_id: Some("k".into()),
            model: Some("m".into()),
            since: Some(5),
            ..Default::default()
        };
        let w = usage_where(&f);
        assert_eq!(
            w.sql(),
            " WHERE key_id = $1 AND model = $2 AND created_at >= $3"
        );
        assert_eq!(w.next_placeholder(), "$4");
    }
}
