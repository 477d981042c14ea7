//! Shared counters in Redis (every replica sees the same windows, slots and
//! budgets), each operation one atomic Lua script; and `Resilient`, which
//! falls back to per-replica counters while Redis is unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

use super::{BudgetState, Counters, LocalCounters, RateState};

const WINDOW_MS: f64 = 60_000.0;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const TAKE: &str = r#"
local cap = tonumber(ARGV[1]); local amount = tonumber(ARGV[2]); local now = tonumber(ARGV[3]); local mode = ARGV[4]
local t = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(t[1]); local last = tonumber(t[2])
if tokens == nil then
  if mode == 'adjust' then return {1, tostring(cap)} end
  tokens = cap; last = now
end
local elapsed = now - last
if elapsed < 0 then elapsed = 0 end
tokens = math.min(cap, tokens + elapsed * cap / 60000)
if now > last then last = now end
local allowed = 1
if mode == 'take' then
  if tokens >= amount then tokens = tokens - amount else allowed = 0 end
elseif mode == 'adjust' then
  tokens = math.min(cap, tokens - amount)
end
if mode ~= 'peek' then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(last))
  redis.call('PEXPIRE', KEYS[1], 120000)
end
return {allowed, tostring(tokens)}
"#;

const ACQUIRE: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  return 1
end
return 0
"#;

/// Budget hash fields: ps (period start), spent, reserved, alerted.
/// ARGV: op, period_start, limit, a, b, threshold
const BUDGET: &str = r#"
local op = ARGV[1]; local ps = ARGV[2]; local limit = tonumber(ARGV[3])
local a = tonumber(ARGV[4]); local b = tonumber(ARGV[5]); local threshold = tonumber(ARGV[6])
local h = redis.call('HMGET', KEYS[1], 'ps', 'spent', 'reserved', 'alerted')
local cur_ps = h[1]; local spent = tonumber(h[2]) or 0; local reserved = tonumber(h[3]) or 0; local alerted = h[4] == '1'
if op == 'loaded' then
  if cur_ps == ps then return {1, '0', '0', 0} else return {0, '0', '0', 0} end
end
if op == 'peek' then
  if cur_ps ~= ps then spent = 0 end
  local ok = 0
  if spent + reserved < limit then ok = 1 end
  return {ok, tostring(spent), tostring(reserved), 0}
end
if cur_ps ~= ps then
  if op ~= 'load' then spent = 0 end
  alerted = false
end
local ok = 1; local crossed = 0
if op == 'load' then
  if cur_ps == ps then spent = math.max(spent, a) else spent = a end
elseif op == 'reserve' then
  if spent + reserved < limit then reserved = reserved + a else ok = 0 end
elseif op == 'settle' then
  reserved = math.max(0, reserved - a)
  spent = spent + b
  if (not alerted) and threshold > 0 and limit > 0 and spent >= threshold * limit then
    alerted = true; crossed = 1
  end
  if spent >= limit then ok = 0 end
end
local al = '0'
if alerted then al = '1' end
redis.call('HSET', KEYS[1], 'ps', ps, 'spent', tostring(spent), 'reserved', tostring(reserved), 'alerted', al)
redis.call('PEXPIRE', KEYS[1], 3456000000)
return {ok, tostring(spent), tostring(reserved), crossed}
"#;

/// Counters in Redis, under a key prefix.
#[derive(Clone)]
pub struct RedisCounters {
    conn: ConnectionManager,
    prefix: String,
    take: Arc<Script>,
    acquire: Arc<Script>,
    budget: Arc<Script>,
}

fn rate_state(allowed: i64, tokens: &str, limit: u64, wanted: u64) -> RateState {
    let tokens: f64 = tokens.parse().unwrap_or(0.0);
    let cap = limit as f64;
    let missing = if allowed == 1 {
        cap - tokens
    } else {
        wanted.min(limit) as f64 - tokens
    };
    RateState {
        allowed: allowed == 1,
        limit,
        remaining: tokens.max(0.0).floor() as u64,
        reset_ms: (missing.max(0.0) * WINDOW_MS / cap.max(1.0)).ceil() as u64,
    }
}

impl RedisCounters {
    /// Connect (fails when Redis does not answer).
    pub async fn connect(url: &str, prefix: &str) -> RedisResult<RedisCounters> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(RedisCounters {
            conn,
            prefix: prefix.to_string(),
            take: Arc::new(Script::new(TAKE)),
            acquire: Arc::new(Script::new(ACQUIRE)),
            budget: Arc::new(Script::new(BUDGET)),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    pub async fn ping(&self) -> RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
    }

    async fn bucket(
        &self,
        name: &str,
        limit: u64,
        amount: i64,
        now_ms: i64,
        mode: &str,
    ) -> RedisResult<(i64, String)> {
        let mut c = self.conn.clone();
        self.take
            .key(self.key(name))
            .arg(limit)
            .arg(amount)
            .arg(now_ms)
            .arg(mode)
            .invoke_async(&mut c)
            .await
    }

    pub async fn try_take(
        &self,
        name: &str,
        limit: u64,
        amount: u64,
        now_ms: i64,
    ) -> RedisResult<RateState> {
        let (ok, tokens) = self
            .bucket(name, limit, amount as i64, now_ms, "take")
            .await?;
        Ok(rate_state(ok, &tokens, limit, amount))
    }

    pub async fn try_adjust(
        &self,
        name: &str,
        limit: u64,
        delta: i64,
        now_ms: i64,
    ) -> RedisResult<()> {
        self.bucket(name, limit, delta, now_ms, "adjust")
            .await
            .map(|_| ())
    }

    pub async fn try_peek(&self, name: &str, limit: u64, now_ms: i64) -> RedisResult<RateState> {
        let (ok, tokens) = self.bucket(name, limit, 0, now_ms, "peek").await?;
        Ok(rate_state(ok, &tokens, limit, 0))
    }

    pub async fn try_acquire(
        &self,
        name: &str,
        max: u64,
        ttl_ms: i64,
        now_ms: i64,
    ) -> RedisResult<Option<String>> {
        let token = uuid::Uuid::now_v7().simple().to_string();
        let mut c = self.conn.clone();
        let ok: i64 = self
            .acquire
            .key(self.key(name))
            .arg(max)
            .arg(now_ms)
            .arg(ttl_ms.max(1000))
            .arg(&token)
            .invoke_async(&mut c)
            .await?;
        Ok((ok == 1).then_some(token))
    }

    pub async fn try_release(&self, name: &str, token: &str) -> RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.key(name))
            .arg(token)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    async fn budget_op(
        &self,
        name: &str,
        op: &str,
        ps: i64,
        limit: f64,
        a: f64,
        b: f64,
        threshold: f64,
    ) -> RedisResult<BudgetState> {
        let mut c = self.conn.clone();
        let (ok, spent, reserved, crossed): (i64, String, String, i64) = self
            .budget
            .key(self.key(name))
            .arg(op)
            .arg(ps)
            .arg(limit)
            .arg(a)
            .arg(b)
            .arg(threshold)
            .invoke_async(&mut c)
            .await?;
        Ok(BudgetState {
            allowed: ok == 1,
            limit_usd: limit,
            spent_usd: spent.parse().unwrap_or(0.0),
            reserved_usd: reserved.parse().unwrap_or(0.0),
            crossed_threshold: crossed == 1,
        })
    }
}

/// Redis counters with a per-replica fallback: while Redis is unreachable
/// every call goes to in-process counters (and a warning and the
/// `bursar_counters_degraded` gauge say so); a background probe switches back
/// when Redis answers again.
pub struct Resilient {
    /// Whether Redis is configured at all.
    configured: bool,
    /// Budget settlements made in the fallback, replayed into Redis when it
    /// returns: (name, period start, limit, cost).
    pending_settlements: std::sync::Mutex<Vec<(String, i64, f64, f64)>>,
    /// Slot releases that could not reach Redis: (name, token).
    pending_releases: std::sync::Mutex<Vec<(String, String)>>,
    redis: std::sync::RwLock<Option<RedisCounters>>,
    local: LocalCounters,
    down: Arc<AtomicBool>,
}

impl Resilient {
    /// In-process only.
    pub fn local() -> Resilient {
        Resilient {
            configured: false,
            pending_settlements: Default::default(),
            pending_releases: Default::default(),
            redis: std::sync::RwLock::new(None),
            local: LocalCounters::default(),
            down: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Shared through Redis; starts degraded when Redis does not answer yet.
    pub async fn redis(url: &str, prefix: &str) -> anyhow::Result<Resilient> {
        let client_ok =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("redis: bad URL: {e}"))?;
        drop(client_ok);
        let (redis, down) = match RedisCounters::connect(url, prefix).await {
            Ok(r) => (Some(r), false),
            Err(e) => {
                tracing::warn!(error = %e, "redis unreachable at start; limits are per replica until it answers");
                (None, true)
            }
        };
        let r = Resilient {
            configured: true,
            pending_settlements: Default::default(),
            pending_releases: Default::default(),
            redis: std::sync::RwLock::new(redis),
            local: LocalCounters::default(),
            down: Arc::new(AtomicBool::new(down)),
        };
        metrics::gauge!("bursar_counters_degraded").set(if down { 1.0 } else { 0.0 });
        Ok(r)
    }

    /// Probe Redis every second while degraded (call once from a task).
    pub async fn probe_loop(self: Arc<Self>, url: String, prefix: String) {
        if !self.configured {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !self.down.load(Ordering::Relaxed) {
                continue;
            }
            let current = self.current();
            let redis = match current {
                Some(r) => Some(r),
                None => RedisCounters::connect(&url, &prefix).await.ok(),
            };
            if let Some(r) = redis
                && r.ping().await.is_ok()
                && self.resync(&r).await
            {
                if let Ok(mut g) = self.redis.write() {
                    *g = Some(r);
                }
                self.down.store(false, Ordering::Relaxed);
                metrics::gauge!("bursar_counters_degraded").set(0.0);
                tracing::warn!("redis answers again; limits are shared across replicas again");
            }
        }
    }

    /// Replay into Redis what happened while it was away; false (and the
    /// rest kept for the next try) when Redis fails again.
    async fn resync(&self, r: &RedisCounters) -> bool {
        let settlements = std::mem::take(&mut *lock(&self.pending_settlements));
        let mut left = Vec::new();
        for (i, (name, ps, limit, cost)) in settlements.iter().enumerate() {
            if r.budget_op(name, "settle", *ps, *limit, 0.0, *cost, 0.0)
                .await
                .is_err()
            {
                left.extend_from_slice(&settlements[i..]);
                break;
            }
        }
        let releases = std::mem::take(&mut *lock(&self.pending_releases));
        let mut left_releases = Vec::new();
        for (i, (name, token)) in releases.iter().enumerate() {
            if r.try_release(name, token).await.is_err() {
                left_releases.extend_from_slice(&releases[i..]);
                break;
            }
        }
        let ok = left.is_empty() && left_releases.is_empty();
        lock(&self.pending_settlements).extend(left);
        lock(&self.pending_releases).extend(left_releases);
        ok
    }

    fn current(&self) -> Option<RedisCounters> {
        self.redis.read().ok().and_then(|g| g.clone())
    }

    fn shared(&self) -> Option<RedisCounters> {
        if self.down.load(Ordering::Relaxed) {
            return None;
        }
        self.current()
    }

    fn degrade(&self, e: &redis::RedisError) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "redis failed; limits fall back to per-replica counters");
            metrics::gauge!("bursar_counters_degraded").set(1.0);
        }
    }

    /// Redis is configured but not answering: limits are per replica.
    pub fn is_degraded(&self) -> bool {
        self.configured && self.down.load(Ordering::Relaxed)
    }
}

macro_rules! shared_or_local {
    ($self:ident, $r:ident => $shared:expr, $local:expr) => {{
        if let Some($r) = $self.shared() {
            match $shared {
                Ok(v) => return v,
                Err(e) => $self.degrade(&e),
            }
        }
        $local
    }};
}

#[async_trait::async_trait]
impl Counters for Resilient {
    async fn take(&self, name: &str, limit: u64, amount: u64, now_ms: i64) -> RateState {
        shared_or_local!(self, r => r.try_take(name, limit, amount, now_ms).await, self.local.take(name, limit, amount, now_ms).await)
    }
    async fn adjust(&self, name: &str, limit: u64, delta: i64, now_ms: i64) {
        shared_or_local!(self, r => r.try_adjust(name, limit, delta, now_ms).await, self.local.adjust(name, limit, delta, now_ms).await)
    }
    async fn peek(&self, name: &str, limit: u64, now_ms: i64) -> RateState {
        shared_or_local!(self, r => r.try_peek(name, limit, now_ms).await, self.local.peek(name, limit, now_ms).await)
    }
    async fn acquire(&self, name: &str, max: u64, ttl_ms: i64, now_ms: i64) -> Option<String> {
        if let Some(r) = self.shared() {
            match r.try_acquire(name, max, ttl_ms, now_ms).await {
                Ok(t) => return t.map(|t| format!("r:{t}")),
                Err(e) => self.degrade(&e),
            }
        }
        self.local
            .acquire(name, max, ttl_ms, now_ms)
            .await
            .map(|t| format!("l:{t}"))
    }
    async fn release(&self, name: &str, token: &str) {
        match token.split_once(':') {
            Some(("r", t)) => {
                if let Some(r) = self.current()
                    && let Err(e) = r.try_release(name, t).await
                {
                    // Released when Redis answers again (or it expires).
                    self.degrade(&e);
                    lock(&self.pending_releases).push((name.to_string(), t.to_string()));
                }
            }
            _ => self.local.release(name, token).await,
        }
    }
    async fn budget_loaded(&self, name: &str, period_start: i64) -> bool {
        shared_or_local!(self, r => r.budget_op(name, "loaded", period_start, 0.0, 0.0, 0.0, 0.0).await.map(|s| s.allowed), self.local.budget_loaded(name, period_start).await)
    }
    async fn budget_load(&self, name: &str, period_start: i64, spent_usd: f64) {
        // Both, so a fallback starts from the real spend.
        self.local.budget_load(name, period_start, spent_usd).await;
        shared_or_local!(self, r => r.budget_op(name, "load", period_start, 0.0, spent_usd, 0.0, 0.0).await.map(|_| ()), ())
    }
    async fn budget_reserve(
        &self,
        name: &str,
        period_start: i64,
        limit_usd: f64,
        amount: f64,
    ) -> BudgetState {
        shared_or_local!(self, r => r.budget_op(name, "reserve", period_start, limit_usd, amount, 0.0, 0.0).await, self.local.budget_reserve(name, period_start, limit_usd, amount).await)
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
        // The local counters always follow this replica's settlements, so a
        // fallback starts from the spend known when Redis went away.
        let local = self
            .local
            .budget_settle(name, period_start, limit_usd, reserved, actual, threshold)
            .await;
        if let Some(r) = self.shared() {
            match r
                .budget_op(
                    name,
                    "settle",
                    period_start,
                    limit_usd,
                    reserved,
                    actual,
                    threshold,
                )
                .await
            {
                Ok(v) => return v,
                Err(e) => self.degrade(&e),
            }
        }
        if self.configured && actual > 0.0 {
            lock(&self.pending_settlements).push((
                name.to_string(),
                period_start,
                limit_usd,
                actual,
            ));
        }
        local
    }
    async fn budget_peek(&self, name: &str, period_start: i64, limit_usd: f64) -> BudgetState {
        shared_or_local!(self, r => r.budget_op(name, "peek", period_start, limit_usd, 0.0, 0.0, 0.0).await, self.local.budget_peek(name, period_start, limit_usd).await)
    }
    async fn healthy(&self) -> bool {
        if !self.configured {
            return true;
        }
        match self.current() {
            Some(r) => r.ping().await.is_ok(),
            None => false,
        }
    }
}
