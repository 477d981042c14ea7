//! Several real `bursar serve` processes on one PostgreSQL database and one
//! Redis prefix behave as one gateway: keys and key changes reach every
//! replica within a second, rate limits and budgets are shared, and losing
//! Redis, PostgreSQL or a replica (SIGTERM) loses no request and no usage row.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

/// The key-cache settings of most tests: the periodic refresh is so slow
/// that only invalidation can explain a change arriving within a second.
const SLOW_REFRESH: &str = "cache_refresh_seconds = 60";

/// How fast a key change must reach the other replicas.
const PROPAGATION: Duration = Duration::from_secs(1);

/// One gateway made of replicas. Fields drop in order: the processes
/// first, the database last.
struct Cluster {
    replicas: Vec<Gateway>,
    mock: MockUpstream,
    redis_url: String,
    prefix: RedisPrefix,
    db: PgDb,
}

/// Configuration of every replica: the shared database is given on the
/// command line, Redis here, `cache` the key-cache settings.
fn replica_config(mock: &MockUpstream, redis_url: &str, prefix: &str, cache: &str) -> String {
    format!(
        "redis = \"{redis_url}\"\nredis_prefix = \"{prefix}\"\n{cache}\n\n{}\n[usage]\nspool_path = \"usage.spool\"\n",
        standard_config(&mock.url())
    )
}

async fn start_replica(config: &str, database: &str) -> Gateway {
    GatewayBuilder::from_config(config.to_string())
        .database(database)
        .no_settle()
        .start()
        .await
}

impl Cluster {
    /// `n` replicas on a new database and the shared Redis (own prefix).
    async fn start(n: usize) -> Cluster {
        Self::start_with(n, REDIS_URL.to_string(), None, SLOW_REFRESH).await
    }

    /// `n` replicas on `redis_url`; `db_port` puts another port (a proxy)
    /// in the replicas' database URL.
    async fn start_with(
        n: usize,
        redis_url: String,
        db_port: Option<PgProxyPort>,
        cache: &str,
    ) -> Cluster {
        let db = PgDb::create().await;
        let prefix = RedisPrefix::new();
        let mock = MockUpstream::start().await;
        let config = replica_config(&mock, &redis_url, &prefix.prefix, cache);
        let url = match db_port {
            Some(PgProxyPort(p)) => db.url_on_port(p),
            None => db.url.clone(),
        };
        // The first one alone: it migrates and installs the admin key.
        let mut replicas = vec![start_replica(&config, &url).await];
        replicas.extend(join_all((1..n).map(|_| start_replica(&config, &url))).await);
        let c = Cluster {
            replicas,
            mock,
            redis_url,
            prefix,
            db,
        };
        c.wait_shared().await;
        c
    }

    fn a(&self) -> &Gateway {
        &self.replicas[0]
    }

    /// Wait until every replica uses Redis for its counters and listens for
    /// key changes on it.
    async fn wait_shared(&self) {
        let channel = format!("{}invalidate", self.prefix.prefix);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut ready = numsub(&self.redis_url, &channel).await == self.replicas.len() as i64;
            for gw in &self.replicas {
                ready = ready && readyz(gw).await.1["counters_shared"] == true;
            }
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas never all used Redis ({channel})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Request ids of the usage rows of `key_id`, read from PostgreSQL
    /// directly, with how often each occurs.
    async fn usage_ids(&self, key_id: &str) -> Vec<String> {
        let mut c = self.db.connect().await;
        sqlx::query_scalar::<_, String>(
            "SELECT request_id FROM usage WHERE key_id = $1 ORDER BY request_id",
        )
        .bind(key_id)
        .fetch_all(&mut c)
        .await
        .unwrap()
    }

    /// (settled spend on the key, sum of its usage rows' cost), from PostgreSQL.
    async fn spend(&self, key_id: &str) -> (f64, f64) {
        let mut c = self.db.connect().await;
        let spend: f64 = sqlx::query_scalar("SELECT spend_usd FROM api_keys WHERE id = $1")
            .bind(key_id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        let sum: Option<f64> =
            sqlx::query_scalar("SELECT SUM(cost_usd) FROM usage WHERE key_id = $1")
                .bind(key_id)
                .fetch_one(&mut c)
                .await
                .unwrap();
        (spend, sum.unwrap_or(0.0))
    }

    /// Poll PostgreSQL until `key_id` has exactly the usage rows `want`
    /// (each once), or fail with what is missing and what is extra.
    async fn wait_usage_exactly(&self, key_id: &str, want: &BTreeSet<String>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rows = self.usage_ids(key_id).await;
            let have: BTreeSet<String> = rows.iter().cloned().collect();
            assert_eq!(have.len(), rows.len(), "a usage row is doubled");
            if &have == want {
                return;
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = want.difference(&have).collect();
                let extra: Vec<_> = have.difference(want).collect();
                panic!(
                    "usage rows of {key_id}: {} missing {missing:?}, {} unexpected {extra:?}",
                    missing.len(),
                    extra.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct PgProxyPort(u16);

/// Subscribers of a Redis channel.
async fn numsub(redis_url: &str, channel: &str) -> i64 {
    let Ok(client) = redis::Client::open(redis_url) else {
        return -1;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return -1;
    };
    redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async::<(String, i64)>(&mut c)
        .await
        .map(|(_, n)| n)
        .unwrap_or(-1)
}

/// `/readyz`: status and body.
async fn readyz(gw: &Gateway) -> (u16, Value) {
    let r = gw.http.get(gw.url("/readyz")).send().await.expect("readyz");
    let status = r.status().as_u16();
    (status, body_json(r).await)
}

/// The value of an unlabelled metric in `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let text = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Poll `probe` every 50 ms until it answers `want`; answers how long that
/// took. Fails after [`PATIENCE`].
async fn time_until<F, Fut>(what: &str, want: u16, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let started = Instant::now();
    loop {
        let got = probe().await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: never {want} (last {got})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Assert a key change reached a replica within [`PROPAGATION`].
fn assert_fast(what: &str, took: Duration) {
    assert!(
        took < PROPAGATION,
        "{what} took {took:?} (the limit is {PROPAGATION:?})"
    );
}

fn error_type(body: &Value) -> &str {
    body["error"]["type"].as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_key_changes_reach_every_replica_within_a_second() {
    let c = Cluster::start(3).await;
    let (a, b, cc) = (&c.replicas[0], &c.replicas[1], &c.replicas[2]);

    // Made on A, it works on B and C.
    let (id, secret) = a.create_key(json!({"name": "shared"})).await;
    for (name, gw) in [("B", b), ("C", cc)] {
        let took = time_until(&format!("the new key on {name}"), 200, || {
            gw.whoami_status(&secret)
        })
        .await;
        assert_fast(&format!("a new key reaching {name}"), took);
    }
    let mut rids = Vec::new();
    for gw in [a, b, cc] {
        let (s, h, body) = gw.chat(&secret, "gpt-4o-mini", "hello there").await;
        assert_eq!(s, 200, "{body}");
        rids.push(request_id(&h));
    }
    // One database: A's admin API sees the rows written by B and C.
    for rid in &rids {
        assert_eq!(a.wait_usage(rid).await["key_id"], id.as_str());
    }

    // Updated on C: A and B enforce the new scope.
    let (s, v) = cc
        .admin(
            "PATCH",
            &format!("/admin/v1/keys/{id}"),
            Some(json!({"models": ["echo"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for (name, gw) in [("A", a), ("B", b)] {
        let took = time_until(&format!("the narrowed scope on {name}"), 403, || async {
            gw.chat(&secret, "gpt-4o-mini", "hi").await.0
        })
        .await;
        assert_fast(&format!("an update reaching {name}"), took);
    }
    assert_eq!(b.chat(&secret, "echo", "hi").await.0, 200);

    // A child minted on B (self-service) works on C.
    let r = b
        .http
        .post(b.url("/bursar/v1/keys"))
        .bearer_auth(&secret)
        .json(&json!({"name": "child"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let child = body_json(r).await["key"].as_str().unwrap().to_string();
    let took = time_until("the child key on C", 200, || cc.whoami_status(&child)).await;
    assert_fast("a minted child reaching C", took);

    // Rotated on A (no grace): the old secret dies on B and C, the new one works.
    let (s, v) = a
        .admin(
            "POST",
            &format!("/admin/v1/keys/{id}/rotate"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let rotated = v["key"].as_str().unwrap().to_string();
    for (name, gw) in [("B", b), ("C", cc)] {
        let took = time_until(&format!("the old secret on {name}"), 401, || {
            gw.whoami_status(&secret)
        })
        .await;
        assert_fast(&format!("a rotation reaching {name}"), took);
        assert_eq!(
            gw.whoami_status(&rotated).await,
            200,
            "the new secret on {name}"
        );
    }

    // Revoked on A: refused on B and C within a second, and so is the child.
    let (s, v) = a
        .admin(
            "POST",
            &format!("/admin/v1/keys/{id}/revoke"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let revoked_at = Instant::now();
    let took = time_until("the revoked key on B", 401, || b.whoami_status(&rotated)).await;
    assert_fast("a revocation reaching B", took);
    let took = time_until("the revoked key's child on C", 401, || {
        cc.whoami_status(&child)
    })
    .await;
    assert_fast("a cascading revocation reaching C", took);
    assert!(revoked_at.elapsed() < PROPAGATION * 2);
    let (s, _, body) = cc.chat(&rotated, "echo", "hi").await;
    assert_eq!((s, error_type(&body)), (401, "invalid_api_key"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_shared_across_replicas() {
    let c = Cluster::start(3).await;
    let (_, secret) = c.a().create_key(json!({"name": "rpm", "rpm": 10})).await;
    for gw in &c.replicas[1..] {
        time_until("the key on every replica", 200, || {
            gw.whoami_status(&secret)
        })
        .await;
    }
    // 30 requests at once, 10 per replica. The bucket refills one request
    // per 6 s: on a slow machine a burst that takes longer may earn one more.
    let started = Instant::now();
    let answers =
        join_all((0..30).map(|i| c.replicas[i % 3].chat(&secret, "gpt-4o-mini", "hi"))).await;
    let refill = (started.elapsed().as_secs_f64() / 6.0).floor() as usize;
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    for (s, h, body) in &answers {
        if *s != 200 {
            assert_eq!(
                (*s, error_type(body)),
                (429, "rate_limit_exceeded"),
                "{body}"
            );
            assert!(h.get("retry-after").is_some());
        }
    }
    assert!(
        (10..=10 + refill).contains(&ok),
        "{ok} of 30 succeeded: the rpm of 10 is shared, not 10 per replica (refill allowance {refill})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_is_shared_across_replicas_under_parallel_load() {
    let c = Cluster::start(3).await;
    // "summarizer" costs $1 per million tokens in and out. Each request
    // reserves (body bytes / 4 + max_tokens) tokens' worth and really costs
    // (9 + 3) tokens (the mock's count for "hi there").
    let budget = 0.0003;
    let (key_id, secret) = c
        .a()
        .create_key(json!({"name": "budget", "budget": {"usd": budget, "period": "monthly"}}))
        .await;
    for gw in &c.replicas[1..] {
        time_until("the key on every replica", 200, || {
            gw.whoami_status(&secret)
        })
        .await;
    }
    let body = json!({
        "model": "summarizer",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi there"}],
    });
    let reservation = ((serde_json::to_vec(&body).unwrap().len() / 4) as f64 + 20.0) * 1e-6;

    // Four clients per replica, each sending until the budget refuses it.
    let mut answers: Vec<_> =
        join_all((0..12).map(|i| send_until_refused(&c.replicas[i % 3], &secret, &body)))
            .await
            .into_iter()
            .flatten()
            .collect();
    assert!(
        answers.iter().any(|a| a.0 != 200),
        "the budget never refused a request"
    );
    // Those refusals may be for open reservations that settled below their
    // estimate; go on, one request at a time, until a refusal with nothing
    // reserved: the settled spend itself reached the budget.
    let deadline = Instant::now() + PATIENCE;
    for i in 0.. {
        let gw = &c.replicas[i % 3];
        let r = gw.post("/v1/chat/completions", &secret, &body).await;
        let status = r.status().as_u16();
        let rid = request_id(r.headers());
        let v = body_json(r).await;
        let exhausted = status == 429 && reserved_in(&v) == Some(0.0);
        answers.push((status, rid, v));
        if exhausted {
            break;
        }
        assert!(Instant::now() < deadline, "the budget never ran out");
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut admitted = BTreeSet::new();
    for (s, rid, v) in &answers {
        match s {
            200 => {
                admitted.insert(rid.clone());
            }
            _ => assert_eq!((*s, error_type(v)), (429, "budget_exceeded"), "{v}"),
        }
    }
    // Refused requests are metered too (status 429, no cost): one row each.
    let all: BTreeSet<String> = answers.iter().map(|a| a.1.clone()).collect();
    c.wait_usage_exactly(&key_id, &all).await;
    let (spend, sum) = c.spend(&key_id).await;
    assert_close(spend, sum, "the key's spend and its usage rows");
    let bound = budget + 3.0 * reservation;
    assert!(
        sum <= bound + 1e-12,
        "spent ${sum:.6} of a ${budget:.6} budget over {} requests: more than one reservation \
         (${reservation:.6}) per replica over",
        admitted.len()
    );
    assert!(
        sum >= budget - 1e-12,
        "refused with nothing reserved after spending only ${sum:.6} of ${budget:.6}"
    );
    // Spent: every replica refuses from now on.
    for gw in &c.replicas {
        let r = gw.post("/v1/chat/completions", &secret, &body).await;
        assert_eq!(r.status(), 429);
    }
}

/// The reserved amount a budget refusal reports ("… (with $X reserved) …").
fn reserved_in(v: &Value) -> Option<f64> {
    let msg = v["error"]["message"].as_str()?;
    let rest = msg.split("(with $").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

/// Send `body` up to 40 times, one after the other, until a request is
/// refused; answers (status, request id, body) of each.
async fn send_until_refused(gw: &Gateway, secret: &str, body: &Value) -> Vec<(u16, String, Value)> {
    let mut out = Vec::new();
    for _ in 0..40 {
        let r = gw.post("/v1/chat/completions", secret, body).await;
        let status = r.status().as_u16();
        let rid = request_id(r.headers());
        out.push((status, rid, body_json(r).await));
        if status != 200 {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_per_replica_limits_and_shares_them_again_after() {
    let mut redis = RedisServer::start().await;
    let c = Cluster::start_with(2, redis.url(), None, SLOW_REFRESH).await;
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    // rpm 4: the bucket refills one request per 15 s, longer than this test
    // spends on any one step.
    let (_, secret) = a.create_key(json!({"name": "rpm", "rpm": 4})).await;
    time_until("the key on B", 200, || b.whoami_status(&secret)).await;
    let shared =
        join_all((0..8).map(|i| c.replicas[i % 2].chat(&secret, "gpt-4o-mini", "hi"))).await;
    let ok = shared.iter().filter(|a| a.0 == 200).count();
    assert_eq!(ok, 4, "shared while Redis is up");
    for gw in [a, b] {
        assert_eq!(metric(gw, "bursar_counters_degraded").await, Some(0.0));
        assert_eq!(readyz(gw).await.0, 200);
    }

    redis.kill();
    // Requests keep flowing, limited per replica: each one admits its own 4.
    for (name, gw) in [("A", a), ("B", b)] {
        let started = Instant::now();
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let (s, _, body) = gw.chat(&secret, "gpt-4o-mini", "hi").await;
            if s != 200 {
                assert_eq!(error_type(&body), "rate_limit_exceeded", "{body}");
            }
            statuses.push(s);
        }
        assert_eq!(
            statuses,
            [200, 200, 200, 200, 429],
            "replica {name} while Redis is down"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "requests on {name} were held up by the dead Redis: {:?}",
            started.elapsed()
        );
        let (status, ready) = readyz(gw).await;
        assert_eq!(status, 503, "{ready}");
        assert_eq!(ready["store"], true, "{ready}");
        assert_eq!(ready["counters"], false, "{ready}");
        assert_eq!(ready["counters_shared"], false, "{ready}");
        assert_eq!(metric(gw, "bursar_counters_degraded").await, Some(1.0));
    }

    // Back on the same port (empty: no persistence). The replicas switch
    // back and resubscribe on their own.
    redis.spawn().await;
    c.wait_shared().await;
    for gw in [a, b] {
        assert_eq!(metric(gw, "bursar_counters_degraded").await, Some(0.0));
        assert_eq!(readyz(gw).await.0, 200);
    }
    // Shared again: 4 of 8 across both (per replica, the local buckets
    // emptied above would admit none).
    let again =
        join_all((0..8).map(|i| c.replicas[i % 2].chat(&secret, "gpt-4o-mini", "hi"))).await;
    let ok = again.iter().filter(|a| a.0 == 200).count();
    assert_eq!(ok, 4, "shared again after Redis returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_cached_keys_keep_working_and_no_usage_row_is_lost_or_doubled() {
    let mut proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let c = Cluster::start_with(
        2,
        REDIS_URL.into(),
        Some(PgProxyPort(proxy.port)),
        SLOW_REFRESH,
    )
    .await;
    let (key_id, secret) = c.a().create_key(json!({"name": "outage"})).await;
    for gw in &c.replicas {
        time_until("the key on every replica", 200, || {
            gw.whoami_status(&secret)
        })
        .await;
    }
    let unknown = bursar::keys::generate(bursar::keys::KEY_PREFIX);
    let spools: Vec<_> = c
        .replicas
        .iter()
        .map(|gw| gw.dir.path().join("usage.spool"))
        .collect();

    // Two clients per replica send requests with the cached key throughout.
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(u16, String, Value)>> = Mutex::default();
    let sent = || results.lock().unwrap().len();
    let wait_sent = |n: usize| async move {
        let deadline = Instant::now() + PATIENCE;
        while sent() < n {
            assert!(Instant::now() < deadline, "requests stalled at {}", sent());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let load = join_all(c.replicas.iter().chain(c.replicas.iter()).map(|gw| async {
        while !stop.load(Ordering::Relaxed) {
            let (s, h, body) = gw.chat(&secret, "gpt-4o-mini", "during the outage").await;
            results.lock().unwrap().push((s, request_id(&h), body));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }));
    let control = async {
        wait_sent(10).await;
        proxy.cut().await;
        let cut_at = sent();
        // Fail closed: a key the replicas never saw is refused.
        for gw in &c.replicas {
            let (s, _, body) = gw.chat(&unknown, "gpt-4o-mini", "let me in").await;
            assert_eq!((s, error_type(&body)), (401, "invalid_api_key"), "{body}");
        }
        // Usage rows go to the spool file while the database is away.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !spools.iter().any(|p| p.exists()) {
            assert!(
                Instant::now() < deadline,
                "no usage row was spooled 20 s into the database outage"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_sent(cut_at + 20).await;
        proxy.restore().await;
        let restored_at = sent();
        wait_sent(restored_at + 10).await;
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(load, control);

    let results = results.into_inner().unwrap();
    for (s, rid, body) in &results {
        assert_eq!(*s, 200, "{rid}: {body}");
    }
    let want: BTreeSet<String> = results.iter().map(|r| r.1.clone()).collect();
    assert_eq!(want.len(), results.len(), "request ids are unique");
    c.wait_usage_exactly(&key_id, &want).await;
    let (spend, sum) = c.spend(&key_id).await;
    assert!(sum > 0.0);
    assert_close(spend, sum, "the key's spend (added once per row)");
    // The spool is replayed and removed.
    let deadline = Instant::now() + PATIENCE;
    while spools.iter().any(|p| p.exists()) {
        assert!(
            Instant::now() < deadline,
            "the usage spool was never replayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The database is back for everything: a new key works everywhere.
    let (_, fresh) = c.a().create_key(json!({"name": "after"})).await;
    for gw in &c.replicas {
        time_until("a key made after the outage", 200, || {
            gw.whoami_status(&fresh)
        })
        .await;
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_requests_and_flushes_usage() {
    let mut c = Cluster::start(2).await;
    let (key_id, secret) = c.a().create_key(json!({"name": "drain"})).await;
    const STREAMS: usize = 8;
    const N: usize = 12;
    let before = mock_requests(&c.mock, "/v1/chat/completions").len();
    let a = &c.replicas[0];
    // mock-slow: streams send an event every 200 ms (5 words → ~1.6 s),
    // plain answers come after 1 s.
    let requests = join_all((0..N).map(|i| {
        let secret = secret.clone();
        async move {
            let stream = i < STREAMS;
            let r = a
                .post(
                    "/v1/chat/completions",
                    &secret,
                    &json!({"model": "mock-slow", "stream": stream,
                            "messages": [{"role": "user", "content": "one two three four five"}]}),
                )
                .await;
            let status = r.status().as_u16();
            let rid = request_id(r.headers());
            let mut body = Vec::new();
            let mut broken = None;
            let mut chunks = futures_util::StreamExt::boxed(r.bytes_stream());
            while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
                match chunk {
                    Ok(b) => body.extend_from_slice(&b),
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                }
            }
            (
                status,
                rid,
                stream,
                String::from_utf8_lossy(&body).into_owned(),
                broken,
            )
        }
    }));
    let stopper = async {
        // SIGTERM once every request is in flight at the upstream.
        let deadline = Instant::now() + PATIENCE;
        while mock_requests(&c.mock, "/v1/chat/completions").len() < before + N {
            assert!(
                Instant::now() < deadline,
                "the requests never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a.sigterm();
    };
    let (answers, ()) = tokio::join!(requests, stopper);
    let mut rids = BTreeSet::new();
    for (status, rid, stream, body, broken) in &answers {
        assert_eq!(*status, 200, "{rid}: {body}");
        assert_eq!(broken, &None, "{rid} was cut during shutdown: {body}");
        if *stream {
            assert!(
                body.trim_end().ends_with("data: [DONE]"),
                "{rid} cut: {body}"
            );
            assert_eq!(
                chat_stream_text(&sse_json(body)),
                "mock: one two three four five"
            );
        } else {
            let v: Value = serde_json::from_str(body).expect("a JSON answer");
            assert_eq!(
                v["choices"][0]["message"]["content"],
                "mock: one two three four five"
            );
        }
        rids.insert(rid.clone());
    }
    assert_eq!(rids.len(), N);

    let status = c.replicas[0].wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        c.replicas[0].log()
    );
    // The usage queue was drained before the process exited: every row is
    // there now, without waiting for anything else.
    let stored: BTreeSet<String> = c.usage_ids(&key_id).await.into_iter().collect();
    let missing: Vec<_> = rids.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "usage rows lost at shutdown: {missing:?}"
    );
    assert_eq!(stored, rids);
    // The other replica goes on serving.
    let (s, _, body) = c.replicas[1]
        .chat(&secret, "gpt-4o-mini", "still here")
        .await;
    assert_eq!(s, 200, "{body}");
}

/// A deployment's replicas usually start together on a fresh database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_at_once_on_a_fresh_database_all_come_up() {
    let db = PgDb::create().await;
    let prefix = RedisPrefix::new();
    let mock = MockUpstream::start().await;
    let config = replica_config(&mock, REDIS_URL, &prefix.prefix, SLOW_REFRESH);
    let replicas = join_all((0..3).map(|_| start_replica(&config, &db.url))).await;
    let (_, secret) = replicas[0].create_key(json!({"name": "k"})).await;
    for gw in &replicas {
        time_until("the key on every replica", 200, || {
            gw.whoami_status(&secret)
        })
        .await;
        let (s, v) = gw.admin("GET", "/admin/v1/keys", None).await;
        assert_eq!(s, 200, "the admin key works on every replica: {v}");
    }
    let mut c = db.connect().await;
    let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM admin_keys")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(admins, 1, "one bootstrap admin key");
}

/// "Database down: cached keys keep working for a configurable window":
/// past `cache_max_stale_seconds` without a successful refresh every key is
/// refused (fail closed), and keys work again once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_past_the_stale_window_fails_closed_until_it_returns() {
    let mut proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let c = Cluster::start_with(
        1,
        REDIS_URL.into(),
        Some(PgProxyPort(proxy.port)),
        "cache_refresh_seconds = 1\ncache_max_stale_seconds = 2",
    )
    .await;
    let gw = c.a();
    let (_, secret) = gw.create_key(json!({"name": "stale"})).await;
    assert_eq!(gw.whoami_status(&secret).await, 200);
    proxy.cut().await;
    let cut_at = Instant::now();
    assert_eq!(
        gw.chat(&secret, "gpt-4o-mini", "cached").await.0,
        200,
        "the cached key works at first"
    );
    let took = time_until("the stale key refused", 401, || gw.whoami_status(&secret)).await;
    let (s, _, body) = gw.chat(&secret, "gpt-4o-mini", "stale").await;
    assert_eq!((s, error_type(&body)), (401, "invalid_api_key"), "{body}");
    // The window counts from the last good refresh, at most 1 s before the cut.
    assert!(
        cut_at.elapsed() >= Duration::from_secs(1),
        "refused after {took:?}, before the 2 s window was over"
    );
    proxy.restore().await;
    time_until("the key working again", 200, || gw.whoami_status(&secret)).await;
    assert_eq!(gw.chat(&secret, "gpt-4o-mini", "back").await.0, 200);
}

/// With Redis down, a key change is still published by PostgreSQL NOTIFY
/// (`invalidate::publish` falls back to it), so it must still reach the
/// other replicas within a second rather than at their next cache refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_during_a_redis_outage_still_reaches_every_replica_within_a_second() {
    let mut redis = RedisServer::start().await;
    let c = Cluster::start_with(2, redis.url(), None, SLOW_REFRESH).await;
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    let (id, secret) = a.create_key(json!({"name": "k"})).await;
    time_until("the key on B", 200, || b.whoami_status(&secret)).await;
    redis.kill();
    let (s, v) = a
        .admin(
            "POST",
            &format!("/admin/v1/keys/{id}/revoke"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let started = Instant::now();
    while b.whoami_status(&secret).await != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "B still accepts the key revoked on A 3 s ago"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_fast("a revocation during a Redis outage", started.elapsed());
}
