//! The `Store` suite, run against SQLite (a temp file) and PostgreSQL (a
//! database of each test's own on 127.0.0.1:5432): keys, revocation
//! cascades, idempotent usage, usage queries and aggregates, owners, the
//! audit hash chain (also under concurrent appends) and its verification,
//! and `copy_into` from SQLite to PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use bursar::store::{
    AuditEntry, AuditRow, KeyFilter, KeyRow, OwnerRow, SqlStore, Store, UsageFilter, UsageRow,
    audit_hash,
};
use common::PgDb;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A fresh, migrated store of one kind, cleaned up on drop.
struct Db {
    store: Arc<SqlStore>,
    kind: &'static str,
    _dir: Option<TempDir>,
    _pg: Option<PgDb>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = SqlStore::connect(&url).await.expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        Db {
            store: Arc::new(store),
            kind: "sqlite",
            _dir: Some(dir),
            _pg: None,
        }
    }

    async fn postgres() -> Db {
        let pg = PgDb::create().await;
        let store = SqlStore::connect(&pg.url).await.expect("open PostgreSQL");
        store.migrate().await.expect("migrate PostgreSQL");
        Db {
            store: Arc::new(store),
            kind: "postgres",
            _dir: None,
            _pg: Some(pg),
        }
    }

    /// Run one statement directly on the database (tampering, inspection).
    async fn exec(&self, sql: &str) -> u64 {
        let pool = self.store.sql_pool().expect("an SQL store");
        sqlx::query(sql)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .rows_affected()
    }
}

/// Generate a SQLite and a PostgreSQL test for each suite function.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::sqlite().await;
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::Db::postgres().await;
                    super::$name(&db).await;
                }
            )*
        }
    };
}

on_both!(
    keys_insert_get_update_list_and_page,
    revoke_cascade_covers_a_three_level_tree,
    usage_insert_is_idempotent_per_request_id,
    usage_list_filters_and_cursor,
    usage_group_sums,
    spend_since_sums_settled_usage,
    owners_upsert_get_list,
    audit_chain_links_and_lists,
    audit_concurrent_appends_keep_one_chain,
    verify_audit_detects_tampering,
);

/// 2026-11-23T00:00:00Z in epoch ms.
const DAY0: i64 = 1_795_392_000_000;
const DAY: i64 = 86_400_000;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn key(id: &str, user: Option<&str>, team: Option<&str>) -> KeyRow {
    KeyRow {
        id: id.into(),
        name: format!("name-{id}"),
        user: user.map(Into::into),
        team: team.map(Into::into),
        purpose: Some("testing".into()),
        environment: None,
        prefix: format!("bsr_{}", &id[id.len().saturating_sub(4)..]),
        // Unique and 64 hex characters, like a real SHA-256.
        key_hash: format!("{:0>64}", hex_of(id)),
        old_key_hash: None,
        old_key_expires_at: None,
        status: "active".into(),
        parent_id: None,
        expires_at: None,
        spec: json!({"rpm": 10}).to_string(),
        spend_usd: 0.0,
        created_at: DAY0,
        updated_at: DAY0,
        revoked_at: None,
        last_used_at: None,
    }
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn child(id: &str, parent: &str) -> KeyRow {
    let mut k = key(id, Some("alice"), None);
    k.parent_id = Some(parent.into());
    k
}

#[allow(clippy::too_many_arguments)]
fn usage(
    rid: &str,
    key_id: &str,
    user: Option<&str>,
    team: Option<&str>,
    model: &str,
    provider: &str,
    cost: f64,
    created_at: i64,
) -> UsageRow {
    UsageRow {
        request_id: rid.into(),
        key_id: key_id.into(),
        user: user.map(Into::into),
        team: team.map(Into::into),
        purpose: None,
        provider: provider.into(),
        model: model.into(),
        endpoint: "chat".into(),
        status: 200,
        prompt_tokens: 10,
        completion_tokens: 5,
        cost_usd: cost,
        latency_ms: 12,
        created_at,
        flags: None,
    }
}

fn ids(rows: &[KeyRow]) -> Vec<&str> {
    rows.iter().map(|k| k.id.as_str()).collect()
}

fn filter() -> KeyFilter {
    KeyFilter {
        limit: 100,
        ..Default::default()
    }
}

fn ufilter() -> UsageFilter {
    UsageFilter {
        limit: 1000,
        ..Default::default()
    }
}

fn entry(n: usize) -> AuditEntry {
    AuditEntry {
        ts: DAY0 + n as i64,
        actor: "admin:bsra_test".into(),
        action: "key.create".into(),
        target: Some(format!("key_{n}")),
        ip: n.is_multiple_of(2).then(|| "127.0.0.1".to_string()),
        detail: json!({"n": n, "name": format!("k{n}")}),
    }
}

async fn keys_insert_get_update_list_and_page(db: &Db) {
    let s = &db.store;
    let now = DAY0 + 1000;
    let k1 = key("key_01", Some("alice"), Some("t1"));
    let mut k2 = key("key_02", Some("alice"), Some("t2"));
    k2.expires_at = Some(now + 3_600_000);
    let mut k3 = key("key_03", Some("bob"), Some("t1"));
    k3.status = "revoked".into();
    k3.revoked_at = Some(now - 10);
    let mut k4 = key("key_04", Some("bob"), Some("t2"));
    k4.expires_at = Some(now - 1);
    let k5 = key("key_05", Some("carol"), None);
    for k in [&k1, &k2, &k3, &k4, &k5] {
        s.insert_key(k).await.unwrap();
    }

    assert_eq!(s.get_key("key_01").await.unwrap().as_ref(), Some(&k1));
    assert_eq!(s.get_key("key_04").await.unwrap().as_ref(), Some(&k4));
    assert_eq!(s.get_key("key_99").await.unwrap(), None);
    assert!(
        s.insert_key(&k1).await.is_err(),
        "a second key with the same id is refused"
    );
    let mut same_hash = key("key_06", None, None);
    same_hash.key_hash = k1.key_hash.clone();
    assert!(
        s.insert_key(&same_hash).await.is_err(),
        "a second key with the same hash is refused"
    );

    // update_key overwrites the row, except the usage writer's columns.
    let mut u = k1.clone();
    u.name = "renamed".into();
    u.spec = json!({"rpm": 20, "models": ["gpt-*"]}).to_string();
    u.team = Some("t9".into());
    u.old_key_hash = Some(format!("{:0>64}", "ab"));
    u.old_key_expires_at = Some(now + 60_000);
    u.updated_at = now;
    u.spend_usd = 99.0;
    u.last_used_at = Some(now);
    s.update_key(&u).await.unwrap();
    let got = s.get_key("key_01").await.unwrap().unwrap();
    let mut want = u.clone();
    want.spend_usd = 0.0;
    want.last_used_at = None;
    assert_eq!(got, want, "spend_usd and last_used_at are not overwritten");
    // Put it back in t1 for the filters below.
    u.team = Some("t1".into());
    s.update_key(&u).await.unwrap();

    let list = |f: KeyFilter| async move { s.list_keys(&f, now).await.unwrap() };
    assert_eq!(ids(&s.all_keys().await.unwrap()).len(), 5);
    assert_eq!(
        ids(&list(filter()).await),
        ["key_01", "key_02", "key_03", "key_04", "key_05"]
    );
    let by_user = KeyFilter {
        user: Some("alice".into()),
        ..filter()
    };
    assert_eq!(ids(&list(by_user).await), ["key_01", "key_02"]);
    let by_team = KeyFilter {
        team: Some("t1".into()),
        ..filter()
    };
    assert_eq!(ids(&list(by_team).await), ["key_01", "key_03"]);
    for (status, want) in [
        ("active", vec!["key_01", "key_02", "key_05"]),
        ("revoked", vec!["key_03"]),
        ("expired", vec!["key_04"]),
    ] {
        let f = KeyFilter {
            status: Some(status.into()),
            ..filter()
        };
        assert_eq!(ids(&list(f).await), want, "status={status}");
    }
    let bob_expired = KeyFilter {
        user: Some("bob".into()),
        status: Some("expired".into()),
        ..filter()
    };
    assert_eq!(ids(&list(bob_expired).await), ["key_04"]);
    // key_02 expires an hour from `now`: later it is expired, not active.
    let later = KeyFilter {
        status: Some("expired".into()),
        ..filter()
    };
    assert_eq!(
        ids(&s.list_keys(&later, now + 3_600_000).await.unwrap()),
        ["key_02", "key_04"]
    );

    // Cursor paging: every key once, in id order.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = list(KeyFilter {
            limit: 2,
            cursor: cursor.clone(),
            ..filter()
        })
        .await;
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        cursor = Some(page.last().unwrap().id.clone());
        seen.extend(page.into_iter().map(|k| k.id));
    }
    assert_eq!(seen, ["key_01", "key_02", "key_03", "key_04", "key_05"]);
    // Paging with a filter.
    let t2 = |cursor: Option<String>| KeyFilter {
        team: Some("t2".into()),
        limit: 1,
        cursor,
        ..filter()
    };
    assert_eq!(ids(&list(t2(None)).await), ["key_02"]);
    assert_eq!(ids(&list(t2(Some("key_02".into()))).await), ["key_04"]);
    assert!(list(t2(Some("key_04".into()))).await.is_empty());
}

async fn revoke_cascade_covers_a_three_level_tree(db: &Db) {
    let s = &db.store;
    // root ─┬─ c1 ─┬─ g1
    //       │      └─ g2 (already revoked)
    //       └─ c2 ─── g3
    // other (unrelated)
    let root = key("key_root", Some("alice"), None);
    let mut g2 = child("key_g2", "key_c1");
    g2.status = "revoked".into();
    g2.revoked_at = Some(DAY0 + 5);
    for k in [
        root,
        child("key_c1", "key_root"),
        child("key_c2", "key_root"),
        child("key_g1", "key_c1"),
        g2,
        child("key_g3", "key_c2"),
        key("key_other", Some("alice"), None),
        child("key_other_child", "key_other"),
    ] {
        s.insert_key(&k).await.unwrap();
    }
    let t = DAY0 + 10_000;
    let revoked: BTreeSet<String> = s
        .revoke_cascade("key_root", t)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let want: BTreeSet<String> = ["key_root", "key_c1", "key_c2", "key_g1", "key_g3"]
        .map(String::from)
        .into();
    assert_eq!(revoked, want, "answers the keys revoked now");
    for id in &want {
        let k = s.get_key(id).await.unwrap().unwrap();
        assert_eq!(k.status, "revoked", "{id}");
        assert_eq!(k.revoked_at, Some(t), "{id}");
        assert_eq!(k.updated_at, t, "{id}");
    }
    let g2 = s.get_key("key_g2").await.unwrap().unwrap();
    assert_eq!(
        g2.revoked_at,
        Some(DAY0 + 5),
        "an earlier revocation stands"
    );
    for id in ["key_other", "key_other_child"] {
        assert_eq!(s.get_key(id).await.unwrap().unwrap().status, "active");
    }
    assert!(
        s.revoke_cascade("key_root", t + 1)
            .await
            .unwrap()
            .is_empty(),
        "revoking again revokes nothing"
    );
    // A middle key takes only its own subtree.
    let got = s.revoke_cascade("key_other_child", t).await.unwrap();
    assert_eq!(got, ["key_other_child"]);
    assert_eq!(
        s.get_key("key_other").await.unwrap().unwrap().status,
        "active"
    );
}

async fn usage_insert_is_idempotent_per_request_id(db: &Db) {
    let s = &db.store;
    s.insert_key(&key("key_a", Some("alice"), Some("t1")))
        .await
        .unwrap();
    s.insert_key(&key("key_b", Some("bob"), None))
        .await
        .unwrap();
    let u1 = usage(
        "req_1",
        "key_a",
        Some("alice"),
        Some("t1"),
        "m1",
        "openai",
        0.5,
        DAY0 + 100,
    );
    let u2 = usage(
        "req_2",
        "key_a",
        Some("alice"),
        Some("t1"),
        "m1",
        "openai",
        0.25,
        DAY0 + 300,
    );
    let u3 = usage(
        "req_3",
        "key_b",
        Some("bob"),
        None,
        "m2",
        "anthropic",
        0.125,
        DAY0 + 200,
    );
    s.insert_usage(std::slice::from_ref(&u1)).await.unwrap();
    s.insert_usage(std::slice::from_ref(&u1)).await.unwrap();
    // A batch that repeats a stored row and holds one row twice.
    s.insert_usage(&[u1.clone(), u2.clone(), u3.clone(), u3.clone()])
        .await
        .unwrap();
    // Same request id with different content: still the first row.
    let mut u1_again = u1.clone();
    u1_again.cost_usd = 7.0;
    s.insert_usage(&[u1_again]).await.unwrap();
    s.insert_usage(&[]).await.unwrap();

    let rows = s.list_usage(&ufilter()).await.unwrap();
    assert_eq!(
        rows,
        vec![u3.clone(), u2.clone(), u1.clone()],
        "one row per request id"
    );
    let a = s.get_key("key_a").await.unwrap().unwrap();
    assert_eq!(a.spend_usd, 0.75, "spend added once per request");
    assert_eq!(a.last_used_at, Some(DAY0 + 300));
    let b = s.get_key("key_b").await.unwrap().unwrap();
    assert_eq!(b.spend_usd, 0.125);
    assert_eq!(b.last_used_at, Some(DAY0 + 200));
    // An older row does not move last_used_at back.
    let old = usage("req_0", "key_a", None, None, "m1", "openai", 0.0, DAY0);
    s.insert_usage(&[old]).await.unwrap();
    assert_eq!(
        s.get_key("key_a").await.unwrap().unwrap().last_used_at,
        Some(DAY0 + 300)
    );
}

/// Ten rows over two keys, users, teams, models and providers.
fn usage_fixture() -> Vec<UsageRow> {
    (0..10usize)
        .map(|i| {
            let (k, user, team) = if i.is_multiple_of(2) {
                ("key_a", Some("alice"), Some("t1"))
            } else {
                ("key_b", None, Some("t2"))
            };
            let model = if i < 6 { "m1" } else { "m2" };
            let provider = if i % 3 == 0 { "anthropic" } else { "openai" };
            let day = if i < 4 { DAY0 } else { DAY0 + DAY };
            let mut u = usage(
                &format!("req_{i:02}"),
                k,
                user,
                team,
                model,
                provider,
                0.125 * (i + 1) as f64,
                day + i as i64 * 1000,
            );
            u.prompt_tokens = 10 * (i + 1) as i64;
            u.completion_tokens = (i + 1) as i64;
            u
        })
        .collect()
}

fn rids(rows: &[UsageRow]) -> Vec<&str> {
    rows.iter().map(|r| r.request_id.as_str()).collect()
}

async fn usage_list_filters_and_cursor(db: &Db) {
    let s = &db.store;
    let all = usage_fixture();
    s.insert_usage(&all).await.unwrap();
    let q = |f: UsageFilter| async move { s.list_usage(&f).await.unwrap() };
    let newest_first: Vec<String> = (0..10).rev().map(|i| format!("req_{i:02}")).collect();
    assert_eq!(rids(&q(ufilter()).await), newest_first);
    let stored = q(ufilter()).await;
    for r in &all {
        assert!(stored.contains(r), "row stored as given: {r:?}");
    }

    let f = UsageFilter {
        key_id: Some("key_a".into()),
        ..ufilter()
    };
    assert_eq!(
        rids(&q(f).await),
        ["req_08", "req_06", "req_04", "req_02", "req_00"]
    );
    let f = UsageFilter {
        user: Some("alice".into()),
        model: Some("m2".into()),
        ..ufilter()
    };
    assert_eq!(rids(&q(f).await), ["req_08", "req_06"]);
    let f = UsageFilter {
        team: Some("t2".into()),
        provider: Some("anthropic".into()),
        ..ufilter()
    };
    assert_eq!(rids(&q(f).await), ["req_09", "req_03"]);
    // since is inclusive, until exclusive.
    let f = UsageFilter {
        since: Some(DAY0 + 2000),
        until: Some(DAY0 + DAY + 6000),
        ..ufilter()
    };
    assert_eq!(rids(&q(f).await), ["req_05", "req_04", "req_03", "req_02"]);
    let f = UsageFilter {
        model: Some("nope".into()),
        ..ufilter()
    };
    assert!(q(f).await.is_empty());

    // Cursor paging, newest first, with and without a filter.
    for (f, want) in [
        (ufilter(), newest_first.clone()),
        (
            UsageFilter {
                team: Some("t2".into()),
                ..ufilter()
            },
            vec!["req_09", "req_07", "req_05", "req_03", "req_01"]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
    ] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = q(UsageFilter {
                limit: 3,
                cursor: cursor.clone(),
                ..f.clone()
            })
            .await;
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            cursor = Some(last.request_id.clone());
            seen.extend(page.iter().map(|r| r.request_id.clone()));
        }
        assert_eq!(seen, want);
    }
}

fn group(fields: &[(&str, Value)], requests: i64, pt: i64, ct: i64, cost: f64) -> Value {
    json!({
        "fields": fields.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "requests": requests,
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "cost_usd": cost,
    })
}

async fn usage_group_sums(db: &Db) {
    let s = &db.store;
    s.insert_usage(&usage_fixture()).await.unwrap();
    let g = |f: UsageFilter, by: &[&str]| {
        let by: Vec<String> = by.iter().map(|s| s.to_string()).collect();
        async move { serde_json::to_value(s.group_usage(&f, &by).await.unwrap()).unwrap() }
    };
    // Row i (0-based) has prompt 10(i+1), completion i+1, cost 0.125(i+1);
    // m1 = rows 0..6, m2 = rows 6..10.
    assert_eq!(
        g(ufilter(), &["model"]).await,
        json!([
            group(&[("model", json!("m1"))], 6, 210, 21, 2.625),
            group(&[("model", json!("m2"))], 4, 340, 34, 4.25),
        ])
    );
    // Day 0 = rows 0..4, day 1 = rows 4..10.
    assert_eq!(
        g(ufilter(), &["day"]).await,
        json!([
            group(&[("day", json!("2026-11-23"))], 4, 100, 10, 1.25),
            group(&[("day", json!("2026-11-24"))], 6, 450, 45, 5.625),
        ])
    );
    // key_a = even rows, key_b = odd rows.
    assert_eq!(
        g(ufilter(), &["key_id"]).await,
        json!([
            group(&[("key_id", json!("key_a"))], 5, 250, 25, 3.125),
            group(&[("key_id", json!("key_b"))], 5, 300, 30, 3.75),
        ])
    );
    assert_eq!(
        g(ufilter(), &["model", "day"]).await,
        json!([
            group(
                &[("model", json!("m1")), ("day", json!("2026-11-23"))],
                4,
                100,
                10,
                1.25
            ),
            group(
                &[("model", json!("m1")), ("day", json!("2026-11-24"))],
                2,
                110,
                11,
                1.375
            ),
            group(
                &[("model", json!("m2")), ("day", json!("2026-11-24"))],
                4,
                340,
                34,
                4.25
            ),
        ])
    );
    // A NULL group value; a filter.
    let by_user = g(
        UsageFilter {
            model: Some("m2".into()),
            ..ufilter()
        },
        &["user"],
    )
    .await;
    let by_user = by_user.as_array().unwrap();
    assert_eq!(by_user.len(), 2, "{by_user:?}");
    let alice = by_user
        .iter()
        .find(|v| v["fields"][0][1] == "alice")
        .expect("alice's group");
    let none = by_user
        .iter()
        .find(|v| v["fields"][0][1].is_null())
        .expect("the group without a user");
    // m2 rows 6..10: alice = 6, 8 (i+1 = 7, 9); none = 7, 9 (i+1 = 8, 10).
    assert_eq!(alice, &group(&[("user", json!("alice"))], 2, 160, 16, 2.0));
    assert_eq!(none, &group(&[("user", Value::Null)], 2, 180, 18, 2.25));
    let f = UsageFilter {
        key_id: Some("nobody".into()),
        ..ufilter()
    };
    assert_eq!(g(f, &["model"]).await, json!([]));
    assert!(
        s.group_usage(&ufilter(), &["cost_usd; DROP TABLE usage".into()])
            .await
            .is_err(),
        "an unknown group column is refused"
    );
}

async fn spend_since_sums_settled_usage(db: &Db) {
    let s = &db.store;
    s.insert_usage(&usage_fixture()).await.unwrap();
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-9, "{a} != {b}");
    // key_a: rows 0,2,4,6,8 → cost 0.125 × (1+3+5+7+9) = 3.125
    close(s.spend_since("key_id", "key_a", 0).await.unwrap(), 3.125);
    // since day 1 (rows 4.. at DAY0+DAY+i s): rows 4,6,8 → 0.125 × 21
    close(
        s.spend_since("key_id", "key_a", DAY0 + DAY).await.unwrap(),
        2.625,
    );
    close(
        s.spend_since("key_id", "key_a", DAY0 + 10 * DAY)
            .await
            .unwrap(),
        0.0,
    );
    close(s.spend_since("user_name", "alice", 0).await.unwrap(), 3.125);
    // t2: odd rows → 0.125 × (2+4+6+8+10)
    close(s.spend_since("team", "t2", 0).await.unwrap(), 3.75);
    close(s.spend_since("team", "nobody", 0).await.unwrap(), 0.0);
    assert!(s.spend_since("model", "m1", 0).await.is_err());
}

fn owner(kind: &str, name: &str, team: Option<&str>, spec: Value, t: i64) -> OwnerRow {
    OwnerRow {
        kind: kind.into(),
        name: name.into(),
        team: team.map(Into::into),
        spec: spec.to_string(),
        created_at: t,
        updated_at: t,
    }
}

async fn owners_upsert_get_list(db: &Db) {
    let s = &db.store;
    let alice = owner("user", "alice", Some("t1"), json!({"rpm": 5}), 100);
    let bob = owner("user", "bob", None, json!({}), 110);
    let t1 = owner(
        "team",
        "t1",
        None,
        json!({"budget": {"usd": 10.0, "period": "monthly"}}),
        120,
    );
    for o in [&bob, &alice, &t1] {
        s.upsert_owner(o).await.unwrap();
    }
    assert_eq!(
        s.get_owner("user", "alice").await.unwrap().as_ref(),
        Some(&alice)
    );
    assert_eq!(s.get_owner("team", "t1").await.unwrap().as_ref(), Some(&t1));
    assert_eq!(s.get_owner("team", "alice").await.unwrap(), None);
    assert_eq!(s.get_owner("user", "zed").await.unwrap(), None);

    // Upsert: team, spec and updated_at change; created_at stays.
    let mut again = owner("user", "alice", Some("t2"), json!({"rpm": 6}), 999);
    again.updated_at = 200;
    s.upsert_owner(&again).await.unwrap();
    let got = s.get_owner("user", "alice").await.unwrap().unwrap();
    assert_eq!(got.team.as_deref(), Some("t2"));
    assert_eq!(got.spec, json!({"rpm": 6}).to_string());
    assert_eq!(got.created_at, 100);
    assert_eq!(got.updated_at, 200);

    let names = |v: Vec<OwnerRow>| {
        v.into_iter()
            .map(|o| format!("{}:{}", o.kind, o.name))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.list_owners(Some("user")).await.unwrap()),
        ["user:alice", "user:bob"]
    );
    assert_eq!(
        names(s.list_owners(Some("team")).await.unwrap()),
        ["team:t1"]
    );
    assert_eq!(
        names(s.list_owners(None).await.unwrap()),
        ["team:t1", "user:alice", "user:bob"]
    );
}

async fn audit_chain_links_and_lists(db: &Db) {
    let s = &db.store;
    let v = s.verify_audit().await.unwrap();
    assert!(v.ok && v.checked == 0, "an empty log verifies: {v:?}");
    let mut rows: Vec<AuditRow> = Vec::new();
    for n in 1..=5 {
        let e = entry(n);
        let r = s.append_audit(&e).await.unwrap();
        let prev = rows
            .last()
            .map(|p| p.hash.clone())
            .unwrap_or(GENESIS.into());
        assert_eq!(r.seq, n as i64);
        assert_eq!(r.prev_hash, prev);
        assert_eq!(r.detail, serde_json::to_string(&e.detail).unwrap());
        assert_eq!(r.hash, audit_hash(&prev, r.seq, &e, &r.detail));
        rows.push(r);
    }
    assert_eq!(s.list_audit(None, None, 100, None).await.unwrap(), rows);
    // since inclusive, until exclusive, cursor after a seq, limit.
    let seqs = |v: Vec<AuditRow>| v.into_iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(
            s.list_audit(Some(DAY0 + 2), Some(DAY0 + 5), 100, None)
                .await
                .unwrap()
        ),
        [2, 3, 4]
    );
    assert_eq!(
        seqs(s.list_audit(None, None, 2, Some(2)).await.unwrap()),
        [3, 4]
    );
    assert_eq!(
        seqs(s.list_audit(None, None, 100, Some(5)).await.unwrap()),
        Vec::<i64>::new()
    );
    let v = s.verify_audit().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.checked, 5);
}

async fn audit_concurrent_appends_keep_one_chain(db: &Db) {
    // Appenders with no lock between them, as on several replicas: on
    // PostgreSQL two may take the same seq, and the loser must retry.
    const TASKS: usize = 12;
    const EACH: usize = 10;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let s = db.store.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..EACH {
                    let r = s.append_audit(&entry(t * 100 + i)).await;
                    out.push(r.map_err(|e| format!("{e:#}")));
                }
                out
            })
        })
        .collect();
    let mut failed = Vec::new();
    let mut seqs = Vec::new();
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(row) => seqs.push(row.seq),
                Err(e) => failed.push(e),
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} concurrent appends failed on {}: {:?}",
        failed.len(),
        TASKS * EACH,
        db.kind,
        failed.first()
    );
    seqs.sort();
    let want: Vec<i64> = (1..=(TASKS * EACH) as i64).collect();
    assert_eq!(seqs, want, "every append got its own seq, without gaps");
    let rows = db.store.list_audit(None, None, 1000, None).await.unwrap();
    assert_eq!(rows.len(), TASKS * EACH);
    for w in rows.windows(2) {
        assert_eq!(
            w[1].prev_hash, w[0].hash,
            "row {} links to row {}",
            w[1].seq, w[0].seq
        );
    }
    let v = db.store.verify_audit().await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.checked, (TASKS * EACH) as i64);
}

async fn verify_audit_detects_tampering(db: &Db) {
    let s = &db.store;
    for n in 1..=6 {
        s.append_audit(&entry(n)).await.unwrap();
    }
    let rows = s.list_audit(None, None, 100, None).await.unwrap();
    let ok = || async { s.verify_audit().await.unwrap() };
    assert!(ok().await.ok);
    let bad_at = |seq: i64| async move {
        let v = s.verify_audit().await.unwrap();
        assert!(!v.ok, "tampering at {seq} went unnoticed: {v:?}");
        assert_eq!(v.first_bad_seq, Some(seq), "{v:?}");
        assert!(v.reason.is_some());
    };
    let put_back = |r: AuditRow| async move {
        db.exec(&format!(
            "INSERT INTO audit (seq, ts, actor, action, target, ip, detail, prev_hash, hash) VALUES ({}, {}, '{}', '{}', {}, {}, '{}', '{}', '{}')",
            r.seq,
            r.ts,
            r.actor,
            r.action,
            r.target.map(|t| format!("'{t}'")).unwrap_or("NULL".into()),
            r.ip.map(|t| format!("'{t}'")).unwrap_or("NULL".into()),
            r.detail,
            r.prev_hash,
            r.hash
        ))
        .await;
    };

    // An edited row.
    db.exec(r#"UPDATE audit SET detail = '{"n":3,"name":"evil"}' WHERE seq = 3"#)
        .await;
    bad_at(3).await;
    db.exec("DELETE FROM audit WHERE seq = 3").await;
    put_back(rows[2].clone()).await;
    assert!(ok().await.ok, "restored");

    // An edited row whose own hash was recomputed: the next row's link breaks.
    let r3 = &rows[2];
    let forged = AuditEntry {
        actor: "someone-else".into(),
        ..entry(3)
    };
    let hash = audit_hash(&r3.prev_hash, 3, &forged, &r3.detail);
    db.exec(&format!(
        "UPDATE audit SET actor = 'someone-else', hash = '{hash}' WHERE seq = 3"
    ))
    .await;
    bad_at(4).await;
    db.exec("DELETE FROM audit WHERE seq = 3").await;
    put_back(rows[2].clone()).await;
    assert!(ok().await.ok, "restored");

    // A deleted middle row.
    db.exec("DELETE FROM audit WHERE seq = 4").await;
    bad_at(4).await;
    put_back(rows[3].clone()).await;
    assert!(ok().await.ok, "restored");

    // A deleted last row (only the chain head can tell).
    db.exec("DELETE FROM audit WHERE seq = 6").await;
    bad_at(6).await;
    // And the last two.
    db.exec("DELETE FROM audit WHERE seq = 5").await;
    bad_at(5).await;
    put_back(rows[4].clone()).await;
    put_back(rows[5].clone()).await;
    let v = ok().await;
    assert!(v.ok && v.checked == 6, "restored: {v:?}");

    // The last row edited with a recomputed hash: the head no longer matches.
    let r6 = &rows[5];
    let forged = AuditEntry {
        action: "key.delete".into(),
        ..entry(6)
    };
    let hash = audit_hash(&r6.prev_hash, 6, &forged, &r6.detail);
    db.exec(&format!(
        "UPDATE audit SET action = 'key.delete', hash = '{hash}' WHERE seq = 6"
    ))
    .await;
    let v = s.verify_audit().await.unwrap();
    assert!(!v.ok, "a re-hashed last row went unnoticed: {v:?}");
}

// ---------------------------------------------------------------------------
// copy_into: SQLite → PostgreSQL.

/// A populated SQLite store: keys (a tree, a revoked one), an admin key,
/// owners, usage and an audit chain.
async fn populated_sqlite() -> Db {
    let db = Db::sqlite().await;
    let s = &db.store;
    for i in 0..20usize {
        let mut k = key(&format!("key_{i:03}"), Some("alice"), Some("t1"));
        if i > 0 && i.is_multiple_of(5) {
            k.parent_id = Some(format!("key_{:03}", i - 1));
        }
        if i == 7 {
            k.status = "revoked".into();
            k.revoked_at = Some(DAY0 + 7);
        }
        if i == 8 {
            k.old_key_hash = Some(format!("{:0>64}", "8888"));
            k.old_key_expires_at = Some(DAY0 + 8);
            k.expires_at = Some(DAY0 + DAY);
        }
        s.insert_key(&k).await.unwrap();
    }
    s.insert_admin_key(&bursar::store::AdminKeyRow {
        id: "adm_1".into(),
        name: "bootstrap".into(),
        prefix: "bsra_abcd".into(),
        key_hash: format!("{:0>64}", "ad"),
        created_at: DAY0,
        revoked_at: None,
    })
    .await
    .unwrap();
    for o in [
        owner("user", "alice", Some("t1"), json!({"rpm": 5}), 1),
        owner("team", "t1", None, json!({}), 2),
        owner("user", "bob", None, json!({}), 3),
    ] {
        s.upsert_owner(&o).await.unwrap();
    }
    let rows: Vec<UsageRow> = (0..250usize)
        .map(|i| {
            let mut u = usage(
                &format!("req_{i:04}"),
                &format!("key_{:03}", i % 20),
                Some("alice"),
                if i.is_multiple_of(2) {
                    Some("t1")
                } else {
                    None
                },
                "gpt-4o-mini",
                "openai",
                0.001 * i as f64,
                DAY0 + i as i64,
            );
            if i.is_multiple_of(10) {
                u.flags = Some("dlp:redacted".into());
            }
            u
        })
        .collect();
    s.insert_usage(&rows).await.unwrap();
    for n in 1..=20 {
        s.append_audit(&entry(n)).await.unwrap();
    }
    // Rows in the tables of later migrations (the web console).
    db.exec("INSERT INTO console_users (id, name, role, team, password_hash, status, created_at, updated_at) VALUES ('cu_1', 'alice', 'admin', NULL, 'x', 'active', 1, 1)").await;
    db.exec("INSERT INTO console_invites (token_hash, user_id, created_at, expires_at) VALUES ('ih', 'cu_1', 1, 2)").await;
    db.exec("INSERT INTO console_sessions (token_hash, user_id, csrf, created_at, expires_at, last_seen_at) VALUES ('sh', 'cu_1', 'c', 1, 2, 1)").await;
    db
}

async fn sorted_keys(s: &SqlStore) -> Vec<KeyRow> {
    let mut k = s.all_keys().await.unwrap();
    k.sort_by(|a, b| a.id.cmp(&b.id));
    k
}

async fn assert_same_content(src: &SqlStore, dst: &SqlStore) {
    assert_eq!(
        src.table_counts().await.unwrap(),
        dst.table_counts().await.unwrap()
    );
    assert_eq!(sorted_keys(src).await, sorted_keys(dst).await);
    let mut a = src.admin_keys().await.unwrap();
    let mut b = dst.admin_keys().await.unwrap();
    a.sort_by(|x, y| x.id.cmp(&y.id));
    b.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    let all = UsageFilter {
        limit: 100_000,
        ..Default::default()
    };
    assert_eq!(
        src.list_usage(&all).await.unwrap(),
        dst.list_usage(&all).await.unwrap()
    );
    assert_eq!(
        src.list_owners(None).await.unwrap(),
        dst.list_owners(None).await.unwrap()
    );
    assert_eq!(
        src.list_audit(None, None, 10_000, None).await.unwrap(),
        dst.list_audit(None, None, 10_000, None).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_into_sqlite_to_postgres_keeps_every_row_and_reruns() {
    let src = populated_sqlite().await;
    let dst = Db::postgres().await;
    let counts = src.store.table_counts().await.unwrap();
    assert!(
        counts.iter().all(|(_, n)| *n > 0),
        "every table has rows: {counts:?}"
    );

    let report = src.store.copy_into(&dst.store).await.unwrap();
    let copied: Vec<(String, i64)> = report.iter().map(|(t, n)| (t.clone(), *n as i64)).collect();
    assert_eq!(copied, counts, "the first copy copies every row");
    assert_same_content(&src.store, &dst.store).await;
    let v = dst.store.verify_audit().await.unwrap();
    assert!(v.ok && v.checked == 20, "the copied chain verifies: {v:?}");

    // Re-run: nothing new, nothing doubled.
    let report = src.store.copy_into(&dst.store).await.unwrap();
    assert!(
        report.iter().all(|(_, n)| *n == 0),
        "a re-run copies nothing: {report:?}"
    );
    assert_same_content(&src.store, &dst.store).await;

    // Resume after a partial copy: rows missing in the target come back.
    dst.exec("DELETE FROM usage WHERE request_id >= 'req_0200'")
        .await;
    dst.exec("DELETE FROM owners WHERE name = 'bob'").await;
    let report = src.store.copy_into(&dst.store).await.unwrap();
    let get = |t: &str| report.iter().find(|(n, _)| n == t).unwrap().1;
    assert_eq!(get("usage"), 50);
    assert_eq!(get("owners"), 1);
    assert_eq!(get("api_keys"), 0);
    assert_same_content(&src.store, &dst.store).await;
    // The copied store works: the spend is the source's, not re-added.
    let k = dst.store.get_key("key_001").await.unwrap().unwrap();
    let want = src.store.get_key("key_001").await.unwrap().unwrap();
    assert_eq!(k.spend_usd, want.spend_usd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_rerun_after_the_source_grew_keeps_the_audit_chain_verifiable() {
    let src = populated_sqlite().await;
    let dst = Db::postgres().await;
    src.store.copy_into(&dst.store).await.unwrap();
    // The old installation keeps running for a while, then the copy is re-run.
    for n in 21..=23 {
        src.store.append_audit(&entry(n)).await.unwrap();
    }
    let more: Vec<UsageRow> = (0..5)
        .map(|i| {
            usage(
                &format!("req_new_{i}"),
                "key_001",
                None,
                None,
                "m",
                "openai",
                0.5,
                DAY0 + DAY,
            )
        })
        .collect();
    src.store.insert_usage(&more).await.unwrap();
    src.store.copy_into(&dst.store).await.unwrap();
    assert_eq!(
        src.store.table_counts().await.unwrap(),
        dst.store.table_counts().await.unwrap()
    );
    assert_eq!(
        dst.store
            .list_audit(None, None, 100, None)
            .await
            .unwrap()
            .len(),
        23
    );
    let v = dst.store.verify_audit().await.unwrap();
    assert!(
        v.ok,
        "after a catch-up copy the target's audit chain must verify: {v:?}"
    );
}

/// Every table of the schema, not just the ones `table_counts` reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_into_copies_every_table_of_the_schema() {
    let src = populated_sqlite().await;
    let dst = Db::postgres().await;
    src.store.copy_into(&dst.store).await.unwrap();

    let pool = src.store.sql_pool().unwrap();
    let tables: Vec<String> = sqlx::query_scalar::<_, String>(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.len() >= 6, "{tables:?}");
    let dst_pool = dst.store.sql_pool().unwrap();
    let mut differ = Vec::new();
    for t in &tables {
        let count = |p: sqlx::AnyPool| {
            let sql = format!("SELECT COUNT(*) FROM {t}");
            async move {
                sqlx::query_scalar::<_, i64>(&sql)
                    .fetch_one(&p)
                    .await
                    .unwrap()
            }
        };
        let (a, b) = (count(pool.clone()).await, count(dst_pool.clone()).await);
        if a != b {
            differ.push(format!("{t}: {a} in the source, {b} in the target"));
        }
    }
    assert!(differ.is_empty(), "tables not copied: {differ:?}");
}
