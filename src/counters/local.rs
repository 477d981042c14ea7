//! The exact in-process implementation of `Counters`.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{BudgetState, Counters, RateState};

const WINDOW_MS: f64 = 60_000.0;

struct Bucket {
    tokens: f64,
    last_ms: i64,
}

struct Budget {
    period_start: i64,
    spent: f64,
    reserved: f64,
    alerted: bool,
}

#[derive(Default)]
pub struct LocalCounters {
    buckets: Mutex<HashMap<String, Bucket>>,
    slots: Mutex<HashMap<String, u64>>,
    budgets: Mutex<HashMap<String, Budget>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A budget's state in the period starting at `period_start`: a new period
/// starts with no spend and no alert; open reservations carry over.
fn budget_in_period<'a>(
    map: &'a mut HashMap<String, Budget>,
    name: &str,
    period_start: i64,
) -> &'a mut Budget {
    let b = map.entry(name.to_string()).or_insert(Budget {
        period_start,
        spent: 0.0,
        reserved: 0.0,
        alerted: false,
    });
    if b.period_start != period_start {
        b.period_start = period_start;
        b.spent = 0.0;
        b.alerted = false;
    }
    b
}

fn refill(b: &mut Bucket, limit: u64, now_ms: i64) {
    let cap = limit as f64;
    let elapsed = (now_ms - b.last_ms).max(0) as f64;
    b.tokens = (b.tokens + elapsed * cap / WINDOW_MS).min(cap);
    b.last_ms = now_ms.max(b.last_ms);
}

fn state(b: &Bucket, limit: u64, allowed: bool, wanted: u64) -> RateState {
    let cap = limit as f64;
    let missing = if allowed {
        cap - b.tokens
    } else {
        wanted as f64 - b.tokens
    };
    RateState {
        allowed,
        limit,
        remaining: b.tokens.max(0.0).floor() as u64,
        reset_ms: (missing.max(0.0) * WINDOW_MS / cap).ceil() as u64,
    }
}

#[async_trait::async_trait]
impl Counters for LocalCounters {
    async fn take(&self, name: &str, limit: u64, amount: u64, now_ms: i64) -> RateState {
        let mut map = lock(&self.buckets);
        let b = map.entry(name.to_string()).or_insert(Bucket {
            tokens: limit as f64,
            last_ms: now_ms,
        });
        refill(b, limit, now_ms);
        if b.tokens >= amount as f64 {
            b.tokens -= amount as f64;
            state(b, limit, true, amount)
        } else {
            state(b, limit, false, amount.min(limit))
        }
    }

    async fn adjust(&self, name: &str, limit: u64, delta: i64, now_ms: i64) {
        let mut map = lock(&self.buckets);
        if let Some(b) = map.get_mut(name) {
            refill(b, limit, now_ms);
            b.tokens = (b.tokens - delta as f64).min(limit as f64);
        }
    }

    async fn peek(&self, name: &str, limit: u64, now_ms: i64) -> RateState {
        let mut map = lock(&self.buckets);
        match map.get_mut(name) {
            Some(b) => {
                refill(b, limit, now_ms);
                state(b, limit, true, 0)
            }
            None => RateState {
                allowed: true,
                limit,
                remaining: limit,
                reset_ms: 0,
            },
        }
    }

    async fn acquire(&self, name: &str, max: u64, _ttl_ms: i64, _now_ms: i64) -> Option<String> {
        let mut map = lock(&self.slots);
        let n = map.entry(name.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some("local".into())
    }

    async fn release(&self, name: &str, _token: &str) {
        let mut map = lock(&self.slots);
        if let Some(n) = map.get_mut(name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(name);
            }
        }
    }

    async fn budget_loaded(&self, name: &str, period_start: i64) -> bool {
        lock(&self.budgets)
            .get(name)
            .is_some_and(|b| b.period_start == period_start)
    }

    async fn budget_load(&self, name: &str, period_start: i64, spent_usd: f64) {
        let mut map = lock(&self.budgets);
        let b = budget_in_period(&mut map, name, period_start);
        // A load that raced with settlements must not undo them.
        b.spent = b.spent.max(spent_usd);
    }

    async fn budget_reserve(
        &self,
        name: &str,
        period_start: i64,
        limit_usd: f64,
        amount: f64,
    ) -> BudgetState {
        let mut map = lock(&self.budgets);
        let b = budget_in_period(&mut map, name, period_start);
        // Admit while something remains; the overshoot is bounded by this
        // one reservation, because it is counted before the next check.
        let allowed = b.spent + b.reserved < limit_usd;
        if allowed {
            b.reserved += amount;
        }
        BudgetState {
            allowed,
            limit_usd,
            spent_usd: b.spent,
            reserved_usd: b.reserved,
            crossed_threshold: false,
        }
    }

    async fn budget_settle(
        &self,
        name: &str,
        period_start: i64,
        limit_usd: f64,
        reserved: f64,
        actual: f64,
        threshold: f64,
    ) -> BudgetState {
        let mut map = lock(&self.budgets);
        let b = budget_in_period(&mut map, name, period_start);
        b.reserved = (b.reserved - reserved).max(0.0);
        b.spent += actual;
        let crossed =
            !b.alerted && threshold > 0.0 && limit_usd > 0.0 && b.spent >= threshold * limit_usd;
        if crossed {
            b.alerted = true;
        }
        BudgetState {
            allowed: b.spent < limit_usd,
            limit_usd,
            spent_usd: b.spent,
            reserved_usd: b.reserved,
            crossed_threshold: crossed,
        }
    }

    async fn budget_peek(&self, name: &str, period_start: i64, limit_usd: f64) -> BudgetState {
        let map = lock(&self.budgets);
        let (spent, reserved) = match map.get(name) {
            Some(b) if b.period_start == period_start => (b.spent, b.reserved),
            Some(b) => (0.0, b.reserved),
            None => (0.0, 0.0),
        };
        BudgetState {
            allowed: spent + reserved < limit_usd,
            limit_usd,
            spent_usd: spent,
            reserved_usd: reserved,
            crossed_threshold: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bucket_refills_over_a_minute() {
        let c = LocalCounters::default();
        for _ in 0..3 {
            assert!(c.take("k", 3, 1, 0).await.allowed);
        }
        let s = c.take("k", 3, 1, 0).await;
        assert!(!s.allowed);
        assert_eq!(s.remaining, 0);
        assert_eq!(s.reset_ms, 20_000);
        assert!(!c.take("k", 3, 1, 19_999).await.allowed);
        assert!(c.take("k", 3, 1, 20_000).await.allowed);
        assert_eq!(c.peek("k", 3, 80_000).await.remaining, 3);
    }

    #[tokio::test]
    async fn adjust_corrects_an_estimate() {
        let c = LocalCounters::default();
        assert!(c.take("t", 100, 80, 0).await.allowed);
        assert!(!c.take("t", 100, 30, 0).await.allowed);
        c.adjust("t", 100, -50, 0).await; // real usage was 30, not 80
        assert!(c.take("t", 100, 30, 0).await.allowed);
        assert!(
            !c.take("t", 100, 1000, 0).await.allowed,
            "larger than the window never fits"
        );
    }

    #[tokio::test]
    async fn slots() {
        let c = LocalCounters::default();
        assert!(c.acquire("s", 2, 0, 0).await.is_some());
        assert!(c.acquire("s", 2, 0, 0).await.is_some());
        assert!(c.acquire("s", 2, 0, 0).await.is_none());
        c.release("s", "local").await;
        assert!(c.acquire("s", 2, 0, 0).await.is_some());
    }

    #[tokio::test]
    async fn budget_reserves_settles_and_rolls_over() {
        let c = LocalCounters::default();
        c.budget_load("b", 0, 0.5).await;
        assert!(c.budget_loaded("b", 0).await);
        assert!(!c.budget_loaded("b", 1).await);
        let r = c.budget_reserve("b", 0, 1.0, 0.4).await;
        assert!(r.allowed);
        assert!(
            c.budget_reserve("b", 0, 1.0, 0.4).await.allowed,
            "0.5 + 0.4 < 1.0 still admits"
        );
        assert!(
            !c.budget_reserve("b", 0, 1.0, 0.4).await.allowed,
            "0.5 + 0.8 ≥ 1.0 refuses"
        );
        let s = c.budget_settle("b", 0, 1.0, 0.4, 0.1, 0.8).await;
        assert!((s.spent_usd - 0.6).abs() < 1e-9);
        assert!(!s.crossed_threshold);
        let s = c.budget_settle("b", 0, 1.0, 0.4, 0.3, 0.8).await;
        assert!(s.crossed_threshold, "0.9 ≥ 80%");
        assert!(
            !c.budget_settle("b", 0, 1.0, 0.0, 0.0, 0.8)
                .await
                .crossed_threshold,
            "once per period"
        );
        // next period: spend starts from zero
        assert!(c.budget_reserve("b", 86_400_000, 1.0, 0.4).await.allowed);
        assert_eq!(c.budget_peek("b", 86_400_000, 1.0).await.spent_usd, 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reservations_overshoot_by_at_most_one() {
        use std::sync::Arc;
        let c = Arc::new(LocalCounters::default());
        let admitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                let admitted = admitted.clone();
                tokio::spawn(async move {
                    for _ in 0..100 {
                        if c.budget_reserve("x", 0, 1.0, 0.125).await.allowed {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.await.unwrap();
        }
        // Reservations of 1/8 against 1.0: admitted while 0, 1/8, …, 7/8 < 1.0,
        // so exactly 8, reserving exactly the budget: never more than one over.
        assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 8);
    }
}
