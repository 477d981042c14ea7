//! Counters for rate windows, concurrency slots and budget reservations,
//! behind one trait so a shared (Redis) implementation can stand beside the
//! exact in-process one. Every call takes the time explicitly, so periods and
//! windows are testable with an injected clock.

mod local;
mod redis;

pub use local::LocalCounters;
pub use redis::{RedisCounters, Resilient};

/// The answer of a rate-window check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateState {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the window is full again (allowed) or until the
    /// request would fit (refused).
    pub reset_ms: u64,
}

/// The answer of a budget reservation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetState {
    pub allowed: bool,
    pub limit_usd: f64,
    /// Settled spend in the current period.
    pub spent_usd: f64,
    /// Open reservations.
    pub reserved_usd: f64,
    /// Whether this settlement crossed the soft threshold for the first time
    /// this period.
    pub crossed_threshold: bool,
}

/// Shared counters. Every call takes the time explicitly; an implementation
/// must be atomic per name (several replicas may call at once).
#[async_trait::async_trait]
pub trait Counters: Send + Sync {
    /// Take `amount` from a window of `limit` per minute (a token bucket that
    /// refills `limit` per 60 s).
    async fn take(&self, name: &str, limit: u64, amount: u64, now_ms: i64) -> RateState;
    /// Put back (negative) or take more (positive) after the real amount is known.
    async fn adjust(&self, name: &str, limit: u64, delta: i64, now_ms: i64);
    /// Current state without taking anything.
    async fn peek(&self, name: &str, limit: u64, now_ms: i64) -> RateState;

    /// Take a concurrency slot; `None` when `max` are in use. The answer is
    /// the slot's token for `release`. Slots expire after `ttl_ms` so a
    /// crashed replica cannot hold them forever.
    async fn acquire(&self, name: &str, max: u64, ttl_ms: i64, now_ms: i64) -> Option<String>;
    async fn release(&self, name: &str, token: &str);

    /// Whether the budget `name` knows its spend for the period starting at `period_start`.
    async fn budget_loaded(&self, name: &str, period_start: i64) -> bool;
    /// Set the settled spend of a period (from the store, on first use).
    async fn budget_load(&self, name: &str, period_start: i64, spent_usd: f64);
    /// Reserve `amount` when something of `limit` remains.
    async fn budget_reserve(
        &self,
        name: &str,
        period_start: i64,
        limit_usd: f64,
        amount: f64,
    ) -> BudgetState;
    /// Replace a reservation by the real cost.
    async fn budget_settle(
        &self,
        name: &str,
        period_start: i64,
        limit_usd: f64,
        reserved: f64,
        actual: f64,
        threshold: f64,
    ) -> BudgetState;
    /// Current state without reserving.
    async fn budget_peek(&self, name: &str, period_start: i64, limit_usd: f64) -> BudgetState;

    /// Whether the backing service answers (always true in-process).
    async fn healthy(&self) -> bool {
        true
    }
}

/// Start (epoch ms, UTC) of the budget period containing `now_ms`.
pub fn period_start(period: &str, now_ms: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    match period {
        "daily" => now_ms.div_euclid(DAY) * DAY,
        // 1970-01-01 was a Thursday; weeks start on Monday.
        "weekly" => {
            let day = now_ms.div_euclid(DAY);
            let monday = day - (day + 3).rem_euclid(7);
            monday * DAY
        }
        "monthly" => {
            let t = time::OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let first = t.date().replace_day(1).unwrap_or(t.date());
            first.midnight().assume_utc().unix_timestamp() * 1000
        }
        _ => 0,
    }
}

/// When the period containing `now_ms` ends.
pub fn period_end(period: &str, now_ms: i64) -> Option<i64> {
    const DAY: i64 = 86_400_000;
    let start = period_start(period, now_ms);
    match period {
        "daily" => Some(start + DAY),
        "weekly" => Some(start + 7 * DAY),
        "monthly" => {
            let t = time::OffsetDateTime::from_unix_timestamp(start / 1000).ok()?;
            let (y, m) = (t.year(), t.month());
            let next = if m == time::Month::December {
                time::Date::from_calendar_date(y + 1, time::Month::January, 1)
            } else {
                time::Date::from_calendar_date(y, m.next(), 1)
            }
            .ok()?;
            Some(next.midnight().assume_utc().unix_timestamp() * 1000)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_on_utc_boundaries() {
        // 2026-11-23T05:00:00Z is a Monday.
        let t = 1_795_410_000_000;
        assert_eq!(
            crate::util::rfc3339(period_start("daily", t)),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            crate::util::rfc3339(period_start("weekly", t)),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            crate::util::rfc3339(period_start("weekly", t - 86_400_000)),
            "2026-11-16T00:00:00Z"
        );
        assert_eq!(
            crate::util::rfc3339(period_start("monthly", t)),
            "2026-11-01T00:00:00Z"
        );
        assert_eq!(period_start("total", t), 0);
        assert_eq!(
            period_end("monthly", t)
                .map(crate::util::rfc3339)
                .as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        let dec = crate::util::parse_time("2026-12-31T23:00:00Z", 0).unwrap();
        assert_eq!(
            period_end("monthly", dec)
                .map(crate::util::rfc3339)
                .as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        assert_eq!(period_end("total", t), None);
    }
}
