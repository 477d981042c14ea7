//! Admission: rate (requests and tokens per minute), concurrency and budget
//! along key → user → team, each level with its own counters, so a key's
//! effective limits are the tightest of the three. Budgets reserve a
//! worst-case cost before forwarding and settle the real cost after.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

use super::App;
use super::cache::CachedKey;
use super::error::ApiError;
use crate::counters::{Counters, period_end, period_start};
use crate::keys::spec::Budget;
use crate::providers::sse::Usage;
use crate::usage::prices::Price;

/// How long a concurrency slot outlives a replica that crashed while holding it.
const SLOT_TTL_MS: i64 = 15 * 60 * 1000;

/// Output tokens assumed for a budget reservation when the request names no maximum.
pub const DEFAULT_MAX_OUTPUT: u64 = 4096;

/// Whose usage rows make up a level's spend.
pub enum SpendOf {
    /// A key and all its descendants: a parent's budget covers the child
    /// keys minted from it.
    KeyTree(String),
    /// A user (`user_name`) or team (`team`).
    Column(&'static str, String),
}

/// One level's limits.
pub struct Level {
    /// Counter namespace: `key:ID`, `user:NAME`, `team:NAME`.
    pub scope: String,
    pub spend: SpendOf,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u64>,
    pub budget: Option<Budget>,
}

impl Level {
    /// Settled spend of this level since `since_ms`, from the store.
    pub async fn spent_since(&self, app: &App, since_ms: i64) -> anyhow::Result<f64> {
        match &self.spend {
            SpendOf::KeyTree(id) => {
                app.store
                    .spend_since_keys(&app.keys.subtree(id), since_ms)
                    .await
            }
            SpendOf::Column(column, value) => app.store.spend_since(column, value, since_ms).await,
        }
    }
}

/// The levels that apply to a key: the key itself, the budgets of its
/// ancestors (a child's spend counts against every parent's budget), its
/// user and its team.
pub fn levels(app: &App, key: &CachedKey) -> Vec<Level> {
    let s = &key.spec;
    let mut out = vec![Level {
        scope: format!("key:{}", key.row.id),
        spend: SpendOf::KeyTree(key.row.id.clone()),
        rpm: s.rpm,
        tpm: s.tpm,
        max_concurrency: s.max_concurrency,
        budget: s.budget.clone(),
    }];
    for ancestor in app.keys.ancestors(key) {
        if let Some(b) = &ancestor.spec.budget {
            out.push(Level {
                scope: format!("key:{}", ancestor.row.id),
                spend: SpendOf::KeyTree(ancestor.row.id.clone()),
                rpm: None,
                tpm: None,
                max_concurrency: None,
                budget: Some(b.clone()),
            });
        }
    }
    for (kind, name, column) in [
        ("user", &key.row.user, "user_name"),
        ("team", &key.row.team, "team"),
    ] {
        if let Some(name) = name
            && let Some(o) = app.keys.owner(kind, name)
        {
            out.push(Level {
                scope: format!("{kind}:{name}"),
                spend: SpendOf::Column(column, name.clone()),
                rpm: o.rpm,
                tpm: o.tpm,
                max_concurrency: o.max_concurrency,
                budget: o.budget.clone(),
            });
        }
    }
    out
}

/// The tightest max-tokens-per-request along the levels.
pub fn max_tokens_limit(app: &App, key: &CachedKey) -> Option<u64> {
    let mut limit = key.spec.max_tokens_per_request;
    for (kind, name) in [("user", &key.row.user), ("team", &key.row.team)] {
        if let Some(o) = name.as_ref().and_then(|n| app.keys.owner(kind, n)) {
            limit = match (limit, o.max_tokens_per_request) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    limit
}

struct Reservation {
    scope: String,
    period_start: i64,
    limit: f64,
    amount: f64,
    budget: Budget,
}

/// What a request holds while it runs; settled when its answer is metered.
pub struct Admission {
    app: Arc<App>,
    slots: Vec<(String, String)>,
    tokens: Vec<(String, u64, u64)>,
    reservations: Vec<Reservation>,
    pub headers: HeaderMap,
    key_id: String,
}

fn fmt_reset(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", ms.div_ceil(1000))
    } else {
        let s = ms.div_ceil(1000);
        format!("{}m{}s", s / 60, s % 60)
    }
}

fn retry_after(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

fn set(h: &mut HeaderMap, name: &'static str, v: String) {
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(HeaderName::from_static(name), v);
    }
}

impl Admission {
    /// Admit a request or refuse it with 429. `prompt_estimate` and
    /// `max_output` are token estimates; `price` the model's price.
    pub async fn admit(
        app: &Arc<App>,
        key: &CachedKey,
        prompt_estimate: u64,
        max_output: Option<u64>,
        price: Option<Price>,
    ) -> Result<Admission, ApiError> {
        let now = crate::util::now_ms();
        let mut adm = Admission {
            app: app.clone(),
            slots: Vec::new(),
            tokens: Vec::new(),
            reservations: Vec::new(),
            headers: HeaderMap::new(),
            key_id: key.row.id.clone(),
        };
        let counters = &app.counters;
        let token_estimate = prompt_estimate + max_output.unwrap_or(0);
        // Tightest remaining request/token windows, for the headers.
        let mut req_hdr: Option<crate::counters::RateState> = None;
        let mut tok_hdr: Option<crate::counters::RateState> = None;
        for level in levels(app, key) {
            if let Some(rpm) = level.rpm {
                let s = counters
                    .take(&format!("rpm:{}", level.scope), rpm, 1, now)
                    .await;
                if !s.allowed {
                    return Err(refuse_rate(&level.scope, "requests", rpm, s.reset_ms));
                }
                if req_hdr.is_none_or(|h| s.remaining < h.remaining) {
                    req_hdr = Some(s);
                }
            }
            if let Some(tpm) = level.tpm {
                let s = counters
                    .take(&format!("tpm:{}", level.scope), tpm, token_estimate, now)
                    .await;
                if !s.allowed {
                    return Err(refuse_rate(&level.scope, "tokens", tpm, s.reset_ms));
                }
                adm.tokens
                    .push((format!("tpm:{}", level.scope), tpm, token_estimate));
                if tok_hdr.is_none_or(|h| s.remaining < h.remaining) {
                    tok_hdr = Some(s);
                }
            }
            if let Some(max) = level.max_concurrency {
                let name = format!("conc:{}", level.scope);
                match counters.acquire(&name, max, SLOT_TTL_MS, now).await {
                    Some(token) => adm.slots.push((name, token)),
                    None => {
                        let mut e = ApiError::rate_limited(format!(
                            "{} has {max} requests in flight, its concurrency limit",
                            level.scope
                        ));
                        e.retry_after = Some(1);
                        return Err(e);
                    }
                }
            }
            if let Some(b) = &level.budget {
                let start = period_start(&b.period, now);
                let name = format!("budget:{}", level.scope);
                if !counters.budget_loaded(&name, start).await {
                    let spent = level.spent_since(app, start).await.map_err(|e| {
                        tracing::error!(error = %e, "budget: cannot read spend");
                        ApiError::internal("the budget could not be checked")
                    })?;
                    counters.budget_load(&name, start, spent).await;
                }
                let amount = price
                    .map(|p| p.cost(prompt_estimate, max_output.unwrap_or(DEFAULT_MAX_OUTPUT)))
                    .unwrap_or(0.0);
                let s = counters.budget_reserve(&name, start, b.usd, amount).await;
                if !s.allowed {
                    let mut e = ApiError::budget_exceeded(format!(
                        "{} has spent ${:.6} (with ${:.6} reserved) of its {} budget of ${:.6}",
                        level.scope, s.spent_usd, s.reserved_usd, b.period, b.usd
                    ));
                    e.retry_after = period_end(&b.period, now)
                        .map(|end| retry_after((end - now).max(0) as u64));
                    return Err(e);
                }
                adm.reservations.push(Reservation {
                    scope: level.scope.clone(),
                    period_start: start,
                    limit: b.usd,
                    amount,
                    budget: b.clone(),
                });
            }
        }
        if let Some(s) = req_hdr {
            set(
                &mut adm.headers,
                "x-ratelimit-limit-requests",
                s.limit.to_string(),
            );
            set(
                &mut adm.headers,
                "x-ratelimit-remaining-requests",
                s.remaining.to_string(),
            );
            set(
                &mut adm.headers,
                "x-ratelimit-reset-requests",
                fmt_reset(s.reset_ms),
            );
        }
        if let Some(s) = tok_hdr {
            set(
                &mut adm.headers,
                "x-ratelimit-limit-tokens",
                s.limit.to_string(),
            );
            set(
                &mut adm.headers,
                "x-ratelimit-remaining-tokens",
                s.remaining.to_string(),
            );
            set(
                &mut adm.headers,
                "x-ratelimit-reset-tokens",
                fmt_reset(s.reset_ms),
            );
        }
        Ok(adm)
    }

    /// Replace estimates by the real usage and cost, free the slots. The
    /// counter updates run in the background: the answer never waits on them.
    pub fn settle(mut self, usage: Usage, cost: f64) {
        self.finish(usage, cost);
    }

    fn finish(&mut self, usage: Usage, cost: f64) {
        let slots = std::mem::take(&mut self.slots);
        let tokens = std::mem::take(&mut self.tokens);
        let reservations = std::mem::take(&mut self.reservations);
        if slots.is_empty() && tokens.is_empty() && reservations.is_empty() {
            return;
        }
        let app = self.app.clone();
        let key_id = self.key_id.clone();
        let work = async move {
            let now = crate::util::now_ms();
            let counters = &app.counters;
            for (name, token) in slots {
                counters.release(&name, &token).await;
            }
            let real = usage.prompt + usage.completion;
            for (name, limit, estimate) in tokens {
                counters
                    .adjust(&name, limit, real as i64 - estimate as i64, now)
                    .await;
            }
            let threshold = app.config.alerts.budget_threshold;
            for r in reservations {
                let s = counters
                    .budget_settle(
                        &format!("budget:{}", r.scope),
                        r.period_start,
                        r.limit,
                        r.amount,
                        cost,
                        threshold,
                    )
                    .await;
                if s.crossed_threshold {
                    budget_alert(&app, &r.scope, &key_id, &r.budget, s.spent_usd, threshold);
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(work);
            }
            Err(_) => {
                tracing::error!("admission settled outside the runtime; counters not updated")
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        // Never metered (refused later, or dropped): give everything back.
        self.finish(Usage::default(), 0.0);
    }
}

fn refuse_rate(scope: &str, what: &str, limit: u64, reset_ms: u64) -> ApiError {
    let mut e = ApiError::rate_limited(format!(
        "{scope} is over its limit of {limit} {what} per minute; retry in {}",
        fmt_reset(reset_ms)
    ));
    e.retry_after = Some(retry_after(reset_ms));
    e
}

/// The soft budget threshold was crossed: audit it and call the webhook.
fn budget_alert(
    app: &Arc<App>,
    scope: &str,
    key_id: &str,
    budget: &Budget,
    spent: f64,
    threshold: f64,
) {
    let detail = json!({
        "scope": scope,
        "key_id": key_id,
        "period": budget.period,
        "budget_usd": budget.usd,
        "spent_usd": spent,
        "threshold": threshold,
    });
    app.audit.event(
        "system",
        "budget.threshold",
        Some(scope),
        None,
        detail.clone(),
    );
    let alerts = &app.config.alerts;
    let Some(url) = alerts.webhook_url.clone().filter(|u| !u.is_empty()) else {
        return;
    };
    let secret = alerts.webhook_secret.clone().unwrap_or_default();
    let client = app.webhook_client.clone();
    tokio::spawn(async move {
        let body = json!({"type": "budget.threshold", "data": detail}).to_string();
        let sig = crate::util::hmac_sha256_hex(secret.as_bytes(), body.as_bytes());
        let sent = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-bursar-signature", format!("sha256={sig}"))
            .body(body)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "budget webhook failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_formats_like_openai() {
        assert_eq!(fmt_reset(20), "20ms");
        assert_eq!(fmt_reset(1500), "2s");
        assert_eq!(fmt_reset(360_000), "6m0s");
        assert_eq!(retry_after(1), 1);
        assert_eq!(retry_after(2001), 3);
    }
}
