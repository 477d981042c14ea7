//! The counters suite, run against the in-process `LocalCounters` and
//! against Redis (the machine's Redis on 127.0.0.1:6379, under a key prefix
//! of each test's own, through `Resilient` — the type the gateway uses —
//! asserting it never fell back): token buckets with injected times, slots,
//! budgets, atomicity under concurrent tasks; then `Resilient`'s fallback to
//! per-replica counters while Redis is unreachable and its switch back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bursar::counters::{Counters, LocalCounters, Resilient};
use common::{PATIENCE, REDIS_URL, RedisPrefix, RedisServer, TcpProxy, redis_keys};

/// Counters under test, with what is needed to check and clean up after them.
struct Ctr {
    c: Arc<dyn Counters>,
    redis: Option<(Arc<Resilient>, RedisPrefix)>,
}

impl Ctr {
    fn local() -> Ctr {
        Ctr {
            c: Arc::new(LocalCounters::default()),
            redis: None,
        }
    }

    async fn redis() -> Ctr {
        let prefix = RedisPrefix::new();
        let r = Arc::new(
            Resilient::redis(REDIS_URL, &prefix.prefix)
                .await
                .expect("Resilient::redis"),
        );
        assert!(
            !r.is_degraded(),
            "Redis at {REDIS_URL} does not answer: these tests need it"
        );
        Ctr {
            c: r.clone(),
            redis: Some((r, prefix)),
        }
    }

    /// Another replica on the same Redis prefix (`None` in-process).
    async fn other_replica(&self) -> Option<Arc<Resilient>> {
        let (_, prefix) = self.redis.as_ref()?;
        Some(Arc::new(
            Resilient::redis(REDIS_URL, &prefix.prefix).await.unwrap(),
        ))
    }

    /// For Redis: every call went to Redis (no silent fallback) and the
    /// state is under the test's prefix.
    fn check_shared(&self) {
        if let Some((r, prefix)) = &self.redis {
            assert!(!r.is_degraded(), "the Redis counters fell back to local");
            assert!(
                !prefix.keys().is_empty(),
                "nothing under {} in Redis",
                prefix.prefix
            );
        }
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(&super::Ctr::local()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let c = super::Ctr::redis().await;
                    super::$name(&c).await;
                    c.check_shared();
                }
            )*
        }
    };
}

on_both!(
    bucket_takes_and_refills_with_injected_time,
    adjust_corrects_an_estimate,
    peek_takes_nothing,
    slots_hold_max_and_free_on_release,
    budget_reserve_settle_threshold_once_and_period_rollover,
    budget_load_sets_the_period_spend,
    concurrent_takes_admit_exactly_the_limit,
    concurrent_slots_admit_exactly_max,
    concurrent_reservations_overshoot_by_at_most_one,
    concurrent_reserve_and_settle_stays_within_one_reservation,
);

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-9, "{what}: {a} != {b}");
}

async fn bucket_takes_and_refills_with_injected_time(ctr: &Ctr) {
    let c = &ctr.c;
    let t0 = 1_800_000_000_000;
    let s = c.take("rpm:a", 3, 1, t0).await;
    assert!(s.allowed);
    assert_eq!((s.limit, s.remaining, s.reset_ms), (3, 2, 20_000));
    assert!(c.take("rpm:a", 3, 1, t0).await.allowed);
    assert!(c.take("rpm:a", 3, 1, t0).await.allowed);
    let s = c.take("rpm:a", 3, 1, t0).await;
    assert!(
        !s.allowed,
        "the fourth request in the same instant is refused"
    );
    assert_eq!(s.remaining, 0);
    assert_eq!(s.reset_ms, 20_000, "one request refills in 60 s / 3");
    // 19 s later: 0.95 of a request refilled, not enough.
    let s = c.take("rpm:a", 3, 1, t0 + 19_000).await;
    assert!(!s.allowed);
    assert!((1_000..=1_001).contains(&s.reset_ms), "{s:?}");
    assert!(c.take("rpm:a", 3, 1, t0 + 20_500).await.allowed);
    assert!(!c.take("rpm:a", 3, 1, t0 + 20_500).await.allowed);
    // A full minute later the bucket is full again, and never fuller.
    let s = c.peek("rpm:a", 3, t0 + 200_000).await;
    assert_eq!(s.remaining, 3);
    for _ in 0..3 {
        assert!(c.take("rpm:a", 3, 1, t0 + 200_000).await.allowed);
    }
    assert!(!c.take("rpm:a", 3, 1, t0 + 200_000).await.allowed);
    // A clock that goes backwards refills nothing.
    assert!(!c.take("rpm:a", 3, 1, t0 + 100_000).await.allowed);
    // Amounts larger than the bucket never fit; names are independent.
    assert!(!c.take("tpm:a", 100, 101, t0).await.allowed);
    assert!(c.take("tpm:a", 100, 100, t0).await.allowed);
    assert!(c.take("rpm:b", 3, 3, t0).await.allowed);
}

async fn adjust_corrects_an_estimate(ctr: &Ctr) {
    let c = &ctr.c;
    let t = 1_800_000_000_000;
    assert!(c.take("tpm:k", 100, 80, t).await.allowed);
    assert!(!c.take("tpm:k", 100, 30, t).await.allowed);
    c.adjust("tpm:k", 100, -50, t).await; // real usage was 30, not 80
    assert_eq!(c.peek("tpm:k", 100, t).await.remaining, 70);
    assert!(c.take("tpm:k", 100, 30, t).await.allowed);
    // Positive: the request used more than estimated.
    c.adjust("tpm:k", 100, 25, t).await;
    assert_eq!(c.peek("tpm:k", 100, t).await.remaining, 15);
    // Never above the bucket's size.
    c.adjust("tpm:k", 100, -1_000, t).await;
    assert_eq!(c.peek("tpm:k", 100, t).await.remaining, 100);
    // Adjusting a bucket that does not exist creates nothing.
    c.adjust("tpm:none", 100, 50, t).await;
    assert_eq!(c.peek("tpm:none", 100, t).await.remaining, 100);
}

async fn peek_takes_nothing(ctr: &Ctr) {
    let c = &ctr.c;
    let t = 1_800_000_000_000;
    let s = c.peek("rpm:p", 5, t).await;
    assert!(s.allowed);
    assert_eq!((s.limit, s.remaining), (5, 5));
    assert!(c.take("rpm:p", 5, 2, t).await.allowed);
    for _ in 0..3 {
        assert_eq!(c.peek("rpm:p", 5, t).await.remaining, 3);
    }
    // 12 s refill one of 5 per minute.
    assert_eq!(c.peek("rpm:p", 5, t + 12_000).await.remaining, 4);
}

async fn slots_hold_max_and_free_on_release(ctr: &Ctr) {
    let c = &ctr.c;
    let t = 1_800_000_000_000;
    let ttl = 60_000;
    let a = c.acquire("conc:k", 2, ttl, t).await.expect("first slot");
    let b = c.acquire("conc:k", 2, ttl, t).await.expect("second slot");
    assert!(c.acquire("conc:k", 2, ttl, t).await.is_none(), "max 2");
    assert!(
        c.acquire("conc:other", 1, ttl, t).await.is_some(),
        "names are independent"
    );
    c.release("conc:k", &a).await;
    let a2 = c.acquire("conc:k", 2, ttl, t).await.expect("freed slot");
    assert!(c.acquire("conc:k", 2, ttl, t).await.is_none());
    c.release("conc:k", &b).await;
    c.release("conc:k", &a2).await;
    for _ in 0..2 {
        assert!(c.acquire("conc:k", 2, ttl, t).await.is_some());
    }
}

async fn budget_reserve_settle_threshold_once_and_period_rollover(ctr: &Ctr) {
    let c = &ctr.c;
    let p0 = 1_795_392_000_000; // a period start
    let p1 = p0 + 86_400_000; // the next one
    assert!(!c.budget_loaded("budget:b", p0).await);
    c.budget_load("budget:b", p0, 0.5).await;
    assert!(c.budget_loaded("budget:b", p0).await);
    assert!(!c.budget_loaded("budget:b", p1).await);

    let r = c.budget_reserve("budget:b", p0, 1.0, 0.4).await;
    assert!(r.allowed);
    close(r.spent_usd, 0.5, "spent");
    close(r.reserved_usd, 0.4, "reserved");
    assert!(
        c.budget_reserve("budget:b", p0, 1.0, 0.4).await.allowed,
        "0.5 + 0.4 < 1.0 still admits"
    );
    let r = c.budget_reserve("budget:b", p0, 1.0, 0.4).await;
    assert!(!r.allowed, "0.5 + 0.8 ≥ 1.0 refuses");
    close(
        r.reserved_usd,
        0.8,
        "a refused reservation reserves nothing",
    );

    let s = c.budget_settle("budget:b", p0, 1.0, 0.4, 0.1, 0.8).await;
    close(s.spent_usd, 0.6, "spent after the first settlement");
    close(s.reserved_usd, 0.4, "reserved after the first settlement");
    assert!(!s.crossed_threshold, "0.6 < 80%");
    assert!(s.allowed);
    let s = c.budget_settle("budget:b", p0, 1.0, 0.4, 0.3, 0.8).await;
    close(s.spent_usd, 0.9, "spent");
    close(s.reserved_usd, 0.0, "reserved");
    assert!(s.crossed_threshold, "0.9 ≥ 80% crosses");
    let s = c.budget_settle("budget:b", p0, 1.0, 0.0, 0.05, 0.8).await;
    assert!(
        !s.crossed_threshold,
        "the threshold is crossed once per period"
    );
    let p = c.budget_peek("budget:b", p0, 1.0).await;
    close(p.spent_usd, 0.95, "peek");
    assert!(p.allowed, "0.95 < 1.0");
    assert!(c.budget_reserve("budget:b", p0, 1.0, 0.2).await.allowed);
    let s = c.budget_settle("budget:b", p0, 1.0, 0.2, 0.2, 0.8).await;
    assert!(!s.allowed, "spent 1.15 ≥ 1.0");
    assert!(!c.budget_reserve("budget:b", p0, 1.0, 0.01).await.allowed);
    assert!(!c.budget_peek("budget:b", p0, 1.0).await.allowed);

    // The next period starts from zero, and may alert again.
    let p = c.budget_peek("budget:b", p1, 1.0).await;
    close(p.spent_usd, 0.0, "a new period's spend");
    assert!(p.allowed);
    assert!(c.budget_reserve("budget:b", p1, 1.0, 0.5).await.allowed);
    let s = c.budget_settle("budget:b", p1, 1.0, 0.5, 0.85, 0.8).await;
    close(s.spent_usd, 0.85, "spent in the new period");
    assert!(s.crossed_threshold, "a new period alerts again");
    // A zero threshold never alerts.
    let s = c.budget_settle("budget:z", p1, 1.0, 0.0, 5.0, 0.0).await;
    assert!(!s.crossed_threshold);
}

async fn budget_load_sets_the_period_spend(ctr: &Ctr) {
    let c = &ctr.c;
    let p0 = 1_795_392_000_000;
    let p1 = p0 + 86_400_000;
    c.budget_load("budget:l", p0, 0.99).await;
    assert!(c.budget_reserve("budget:l", p0, 1.0, 0.5).await.allowed);
    assert!(!c.budget_reserve("budget:l", p0, 1.0, 0.5).await.allowed);
    let p = c.budget_peek("budget:l", p0, 1.0).await;
    close(p.spent_usd, 0.99, "spent");
    close(p.reserved_usd, 0.5, "reserved");
    // (Loading the same period again: see late_budget_load_keeps_spend_settled_since.)
    // A new period's load: the new spend, reservations carry over.
    c.budget_load("budget:l", p1, 0.1).await;
    assert!(c.budget_loaded("budget:l", p1).await);
    assert!(!c.budget_loaded("budget:l", p0).await);
    let p = c.budget_peek("budget:l", p1, 1.0).await;
    close(p.spent_usd, 0.1, "spent");
    close(p.reserved_usd, 0.5, "reserved");
}

async fn concurrent_takes_admit_exactly_the_limit(ctr: &Ctr) {
    let t = 1_800_000_000_000;
    let admitted = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let c = ctr.c.clone();
            let admitted = admitted.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    if c.take("rpm:shared", 50, 1, t).await.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 50);
}

async fn concurrent_slots_admit_exactly_max(ctr: &Ctr) {
    let t = 1_800_000_000_000;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let c = ctr.c.clone();
            tokio::spawn(async move { c.acquire("conc:shared", 5, 60_000, t).await })
        })
        .collect();
    let mut held = Vec::new();
    for task in tasks {
        if let Some(tok) = task.await.unwrap() {
            held.push(tok);
        }
    }
    assert_eq!(held.len(), 5);
    for tok in &held {
        ctr.c.release("conc:shared", tok).await;
    }
    assert!(ctr.c.acquire("conc:shared", 5, 60_000, t).await.is_some());
}

async fn concurrent_reservations_overshoot_by_at_most_one(ctr: &Ctr) {
    let p = 1_795_392_000_000;
    let (limit, amount) = (1.0, 0.125);
    let admitted = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = ctr.c.clone();
            let admitted = admitted.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    if c.budget_reserve("budget:x", p, limit, amount).await.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = admitted.load(Ordering::Relaxed);
    let bound = (limit / amount) as u64 + 1;
    assert!(n <= bound, "{n} reservations admitted, at most {bound}");
    assert!(n >= (limit / amount) as u64, "only {n} admitted");
    let s = ctr.c.budget_peek("budget:x", p, limit).await;
    close(s.reserved_usd, n as f64 * amount, "reserved");
}

async fn concurrent_reserve_and_settle_stays_within_one_reservation(ctr: &Ctr) {
    // Requests reserve a worst case and settle a smaller real cost, as the
    // gateway does; the settled spend may pass the limit by less than one
    // reservation.
    let p = 1_795_392_000_000;
    let (limit, reserve) = (1.0, 0.05);
    let admitted = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let c = ctr.c.clone();
            let admitted = admitted.clone();
            tokio::spawn(async move {
                for j in 0..40 {
                    let s = c.budget_reserve("budget:s", p, limit, reserve).await;
                    if s.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                        let actual = 0.01 + 0.01 * ((i + j) % 4) as f64;
                        c.budget_settle("budget:s", p, limit, reserve, actual, 0.8)
                            .await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = ctr.c.budget_peek("budget:s", p, limit).await;
    close(s.reserved_usd, 0.0, "every reservation settled");
    assert!(
        s.spent_usd < limit + reserve + 1e-9,
        "spent {} with a limit of {limit}: more than one reservation over",
        s.spent_usd
    );
    assert!(s.spent_usd >= limit - reserve, "spent only {}", s.spent_usd);
    assert!(!s.allowed);
    assert!(admitted.load(Ordering::Relaxed) > (limit / reserve) as u64);
}

// ---------------------------------------------------------------------------
// Redis only.

/// A slot whose holder never releases it (a crashed replica) expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slots_expire_after_their_ttl() {
    let ctr = Ctr::redis().await;
    let c = &ctr.c;
    let t0 = 1_800_000_000_000;
    assert!(c.acquire("conc:ttl", 1, 1000, t0).await.is_some());
    assert!(c.acquire("conc:ttl", 1, 1000, t0 + 500).await.is_none());
    let tok = c.acquire("conc:ttl", 1, 1000, t0 + 1500).await;
    assert!(
        tok.is_some(),
        "the slot taken at t=0 with ttl 1000 is gone at t=1500"
    );
    // Another replica sees the same slots, and a crashed one's expire.
    let other = ctr.other_replica().await.unwrap();
    assert!(
        other
            .acquire("conc:ttl", 1, 1000, t0 + 1600)
            .await
            .is_none()
    );
    assert!(
        other
            .acquire("conc:ttl", 1, 1000, t0 + 2600)
            .await
            .is_some()
    );
    // The set itself expires in Redis (real time), so no key is left behind.
    ctr.check_shared();
}

/// Two replicas (two clients on one prefix) share buckets, slots and budgets;
/// another prefix shares nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replicas_share_counters_and_prefixes_isolate() {
    let a = Ctr::redis().await;
    let b = a.other_replica().await.unwrap();
    let stranger = Ctr::redis().await;
    let t = 1_800_000_000_000;
    let p = 1_795_392_000_000;
    assert!(a.c.take("rpm:k", 2, 1, t).await.allowed);
    assert!(b.take("rpm:k", 2, 1, t).await.allowed);
    assert!(!a.c.take("rpm:k", 2, 1, t).await.allowed);
    assert!(!b.take("rpm:k", 2, 1, t).await.allowed);
    assert!(stranger.c.take("rpm:k", 2, 1, t).await.allowed);

    a.c.budget_load("budget:k", p, 0.0).await;
    assert!(b.budget_loaded("budget:k", p).await);
    assert!(!stranger.c.budget_loaded("budget:k", p).await);
    assert!(a.c.budget_reserve("budget:k", p, 1.0, 0.6).await.allowed);
    assert!(b.budget_reserve("budget:k", p, 1.0, 0.6).await.allowed);
    assert!(!b.budget_reserve("budget:k", p, 1.0, 0.6).await.allowed);
    b.budget_settle("budget:k", p, 1.0, 0.6, 0.2, 0.8).await;
    close(
        a.c.budget_peek("budget:k", p, 1.0).await.spent_usd,
        0.2,
        "shared spend",
    );
    a.check_shared();
    stranger.check_shared();
}

// ---------------------------------------------------------------------------
// Resilient: fallback while Redis is unreachable, and back.

/// A port nothing listens on.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilient_with_unreachable_redis_falls_back_and_still_limits() {
    let url = format!("redis://127.0.0.1:{}", dead_port());
    let started = Instant::now();
    let r = Resilient::redis(&url, "bursar_t_dead:")
        .await
        .expect("starts degraded, not failing");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "start is not held up"
    );
    assert!(r.is_degraded());
    assert!(!r.healthy().await);
    let t = 1_800_000_000_000;
    let p = 1_795_392_000_000;
    let started = Instant::now();
    for _ in 0..3 {
        assert!(r.take("rpm:k", 3, 1, t).await.allowed);
    }
    assert!(!r.take("rpm:k", 3, 1, t).await.allowed, "still limits");
    let a = r
        .acquire("conc:k", 1, 60_000, t)
        .await
        .expect("a local slot");
    assert!(r.acquire("conc:k", 1, 60_000, t).await.is_none());
    r.release("conc:k", &a).await;
    assert!(r.acquire("conc:k", 1, 60_000, t).await.is_some());
    r.budget_load("budget:k", p, 0.9).await;
    assert!(r.budget_loaded("budget:k", p).await);
    assert!(r.budget_reserve("budget:k", p, 1.0, 0.5).await.allowed);
    assert!(!r.budget_reserve("budget:k", p, 1.0, 0.5).await.allowed);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "degraded calls do not wait on Redis: {:?}",
        started.elapsed()
    );
    // The in-process counters never report a problem.
    assert!(!Resilient::local().is_degraded());
    assert!(Resilient::local().healthy().await);
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis dies mid-run: calls fall back at once and still limit; the probe
/// switches back when it answers again, and the limits are shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilient_falls_back_when_redis_dies_and_switches_back() {
    let mut server = RedisServer::start().await;
    let prefix = "bursar_t_resilient:";
    let a = Arc::new(Resilient::redis(&server.url(), prefix).await.unwrap());
    let b = Arc::new(Resilient::redis(&server.url(), prefix).await.unwrap());
    let probes = [
        tokio::spawn(a.clone().probe_loop(server.url(), prefix.into())),
        tokio::spawn(b.clone().probe_loop(server.url(), prefix.into())),
    ];
    assert!(!a.is_degraded() && a.healthy().await);
    let t = 1_800_000_000_000;
    assert!(a.take("rpm:k", 2, 1, t).await.allowed);
    assert!(b.take("rpm:k", 2, 1, t).await.allowed);
    assert!(!a.take("rpm:k", 2, 1, t).await.allowed, "shared");
    let held = a
        .acquire("conc:k", 1, 60_000, t)
        .await
        .expect("a Redis slot");

    server.kill();
    let started = Instant::now();
    // The first call notices, falls back and answers from local counters.
    assert!(
        a.take("rpm:k", 2, 1, t).await.allowed,
        "local bucket is fresh"
    );
    assert!(a.is_degraded());
    assert!(!a.healthy().await);
    assert!(a.take("rpm:k", 2, 1, t).await.allowed);
    assert!(
        !a.take("rpm:k", 2, 1, t).await.allowed,
        "still limited, per replica"
    );
    // Releasing a Redis slot while Redis is down must not panic or block.
    a.release("conc:k", &held).await;
    assert!(a.acquire("conc:k", 1, 60_000, t).await.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fallback took {:?}",
        started.elapsed()
    );
    assert!(b.take("rpm:k", 2, 1, t).await.allowed);
    assert!(b.is_degraded());

    server.spawn().await;
    wait_until("both replicas use Redis again", async || {
        !a.is_degraded() && !b.is_degraded()
    })
    .await;
    assert!(a.healthy().await);
    // Shared again: what one takes, the other cannot.
    let t2 = t + 1_000_000;
    assert!(a.take("rpm:again", 2, 1, t2).await.allowed);
    assert!(b.take("rpm:again", 2, 1, t2).await.allowed);
    assert!(!a.take("rpm:again", 2, 1, t2).await.allowed);
    assert!(!b.take("rpm:again", 2, 1, t2).await.allowed);
    let keys = redis_keys(&server.url(), prefix).unwrap();
    assert!(
        keys.iter().any(|k| k == "bursar_t_resilient:rpm:again"),
        "{keys:?}"
    );
    for p in probes {
        p.abort();
    }
}

/// Redis is down when the replica starts and comes up later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilient_started_before_redis_switches_to_it() {
    let mut server = RedisServer::start().await;
    server.kill();
    let prefix = "bursar_t_late:";
    let r = Arc::new(Resilient::redis(&server.url(), prefix).await.unwrap());
    assert!(r.is_degraded());
    let probe = tokio::spawn(r.clone().probe_loop(server.url(), prefix.into()));
    let t = 1_800_000_000_000;
    assert!(r.take("rpm:k", 1, 1, t).await.allowed);
    assert!(!r.take("rpm:k", 1, 1, t).await.allowed);
    server.spawn().await;
    wait_until("the replica uses Redis", async || !r.is_degraded()).await;
    assert!(r.healthy().await);
    assert!(r.take("rpm:k2", 1, 1, t).await.allowed);
    assert!(!r.take("rpm:k2", 1, 1, t).await.allowed);
    let keys = redis_keys(&server.url(), prefix).unwrap();
    assert_eq!(keys, ["bursar_t_late:rpm:k2"]);
    probe.abort();
}

/// Redis hangs (a partition: connections open, no answers): calls fall back
/// within the response timeout instead of hanging the request path, and the
/// probe switches back when it answers again — with the state it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilient_falls_back_when_redis_hangs_and_switches_back() {
    let server = RedisServer::start().await;
    let prefix = "bursar_t_hang:";
    let r = Arc::new(Resilient::redis(&server.url(), prefix).await.unwrap());
    let probe = tokio::spawn(r.clone().probe_loop(server.url(), prefix.into()));
    let t = 1_800_000_000_000;
    assert!(r.take("rpm:k", 2, 1, t).await.allowed);
    assert!(r.take("rpm:k", 2, 1, t).await.allowed);

    server.pause();
    let started = Instant::now();
    assert!(r.take("rpm:k", 2, 1, t).await.allowed, "local bucket");
    assert!(r.is_degraded());
    assert!(r.take("rpm:k", 2, 1, t).await.allowed);
    assert!(!r.take("rpm:k", 2, 1, t).await.allowed, "still limited");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a hung Redis held calls up for {:?}",
        started.elapsed()
    );

    server.resume();
    wait_until("the replica uses Redis again", async || !r.is_degraded()).await;
    // Redis kept its state: the bucket emptied before the hang is still empty.
    assert!(!r.take("rpm:k", 2, 1, t).await.allowed);
    probe.abort();
}

/// A replica that finds a budget not yet loaded reads the period's spend
/// from the database and loads it; meanwhile another replica may already
/// have loaded it and settled requests into it. The late load, from a
/// database read that does not have those settlements yet, must not wipe
/// them out (else every replica's first request can reset the spend).
async fn late_budget_load_keeps_spend_settled_since(ctr: &Ctr) {
    let c = &ctr.c;
    let p = 1_795_392_000_000;
    // Replicas A and B both see "not loaded" and read 0.0 from the store.
    assert!(!c.budget_loaded("budget:race", p).await);
    c.budget_load("budget:race", p, 0.0).await; // A
    assert!(c.budget_reserve("budget:race", p, 1.0, 0.5).await.allowed);
    c.budget_settle("budget:race", p, 1.0, 0.5, 0.5, 0.8).await;
    assert!(c.budget_reserve("budget:race", p, 1.0, 0.5).await.allowed);
    c.budget_settle("budget:race", p, 1.0, 0.5, 0.5, 0.8).await;
    c.budget_load("budget:race", p, 0.0).await; // B, late, with its stale read
    let s = c.budget_peek("budget:race", p, 1.0).await;
    assert!(
        s.spent_usd >= 1.0 - 1e-9,
        "a late load erased settled spend: {} of 1.0 spent",
        s.spent_usd
    );
    assert!(!c.budget_reserve("budget:race", p, 1.0, 0.5).await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_late_budget_load_keeps_spend_settled_since() {
    late_budget_load_keeps_spend_settled_since(&Ctr::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_late_budget_load_keeps_spend_settled_since() {
    let c = Ctr::redis().await;
    late_budget_load_keeps_spend_settled_since(&c).await;
    c.check_shared();
}

/// Spend settled while Redis was unreachable (per-replica fallback) must
/// count once Redis is back ("counters resync when it returns"), and the
/// fallback itself must start from the spend known when Redis went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilient_resyncs_budget_spend_settled_during_an_outage() {
    let server = RedisServer::start().await;
    let prefix = "bursar_t_resync:";
    let r = Arc::new(Resilient::redis(&server.url(), prefix).await.unwrap());
    let probe = tokio::spawn(r.clone().probe_loop(server.url(), prefix.into()));
    let p = 1_795_392_000_000;
    r.budget_load("budget:k", p, 0.0).await;
    assert!(r.budget_reserve("budget:k", p, 1.0, 0.4).await.allowed);
    r.budget_settle("budget:k", p, 1.0, 0.4, 0.4, 0.8).await;

    server.pause();
    assert!(r.budget_reserve("budget:k", p, 1.0, 0.4).await.allowed);
    assert!(r.is_degraded());
    let s = r.budget_settle("budget:k", p, 1.0, 0.4, 0.4, 0.8).await;
    let during = s.spent_usd;

    server.resume();
    wait_until("the replica uses Redis again", async || !r.is_degraded()).await;
    let after = r.budget_peek("budget:k", p, 1.0).await.spent_usd;
    probe.abort();
    assert!(
        during >= 0.8 - 1e-9 && after >= 0.8 - 1e-9,
        "0.8 was spent: the fallback counted {during}, Redis after its return {after}"
    );
}

/// A request that took a Redis slot and ends while Redis is unreachable (a
/// partition: Redis keeps its data) cannot release it then; once Redis is
/// back the slot must be free again (released late, or expired in
/// reasonable time) — not held for the gateway's 15-minute slot TTL,
/// locking a concurrency-limited key out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilient_frees_slots_released_while_redis_was_unreachable() {
    let server = RedisServer::start().await;
    let mut proxy = TcpProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap()).await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let prefix = "bursar_t_slots:";
    let r = Arc::new(Resilient::redis(&url, prefix).await.unwrap());
    let probe = tokio::spawn(r.clone().probe_loop(url.clone(), prefix.into()));
    let ttl = 15 * 60 * 1000; // admit.rs SLOT_TTL_MS
    let now = bursar::util::now_ms();
    let slot = r.acquire("conc:k", 1, ttl, now).await.expect("a slot");
    assert!(slot.starts_with("r:"), "a Redis slot: {slot}");

    proxy.cut().await;
    r.release("conc:k", &slot).await; // the request ends during the partition
    proxy.restore().await;
    wait_until("the replica uses Redis again", async || !r.is_degraded()).await;
    let again = r
        .acquire("conc:k", 1, ttl, bursar::util::now_ms() + 1000)
        .await;
    probe.abort();
    assert!(
        again.is_some(),
        "the slot released during the partition is still held in Redis"
    );
}
