//! The usage API (rows, aggregates, filters, paging) and the audit log
//! (what is recorded, no secrets, and its hash chain catching tampering).

mod common;

use std::collections::HashMap;

use common::*;
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

const USAGE_FIELDS: [&str; 14] = [
    "request_id",
    "key_id",
    "user",
    "team",
    "purpose",
    "provider",
    "model",
    "endpoint",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "created_at",
];

/// Send a spread of metered requests with two keys; answers their request ids.
async fn traffic(gw: &Gateway, alice: &str, bob: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for (key, model, text) in [
        (alice, "echo", "one two three"),
        (alice, "echo", "four five"),
        (alice, "gpt-4o-mini", "six seven eight nine"),
        (alice, "summarizer", "ten"),
        (bob, "gpt-4o-mini", "eleven twelve"),
        (bob, "echo", "thirteen"),
    ] {
        let (s, h, body) = gw.chat(key, model, text).await;
        assert_eq!(s, 200, "{body}");
        ids.push(request_id(&h));
    }
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            bob,
            &json!({"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "fourteen"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    ids.push(request_id(resp.headers()));
    for id in &ids {
        gw.wait_usage(id).await;
    }
    ids
}

async fn two_keys(gw: &Gateway) -> ((String, String), (String, String)) {
    let a = gw
        .create_key(json!({"name": "a", "user": "alice", "team": "red", "purpose": "research"}))
        .await;
    let b = gw
        .create_key(json!({"name": "b", "user": "bob", "team": "blue"}))
        .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rows_have_every_contract_field() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let ((alice_id, alice), (bob_id, bob)) = two_keys(&gw).await;
    let ids = traffic(&gw, &alice, &bob).await;

    let rows = gw.usage_rows("").await;
    assert_eq!(rows.len(), ids.len());
    for r in &rows {
        for f in USAGE_FIELDS {
            assert!(r.get(f).is_some(), "usage row lacks '{f}': {r}");
        }
        assert!(
            r["request_id"].is_string() && r["created_at"].is_string(),
            "{r}"
        );
        assert!(r["created_at"].as_str().unwrap().ends_with('Z'), "{r}");
        assert!(r["latency_ms"].as_i64().unwrap() >= 0);
        assert!(
            r["status"].is_i64() && r["prompt_tokens"].is_i64() && r["completion_tokens"].is_i64()
        );
        assert!(r["cost_usd"].as_f64().unwrap() >= 0.0);
        if r["key_id"] == alice_id.as_str() {
            assert_eq!(r["user"], "alice");
            assert_eq!(r["team"], "red");
            assert_eq!(r["purpose"], "research");
        } else {
            assert_eq!(r["key_id"], bob_id.as_str());
            assert_eq!(r["user"], "bob");
            assert_eq!(r["purpose"], Value::Null);
        }
    }
    // Newest first, and every request has exactly one row.
    let mut seen: Vec<&str> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    seen.sort();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(seen, expected);

    // The keys' spend adds up to their rows' cost.
    for (id, _) in [(&alice_id, ()), (&bob_id, ())] {
        let total: f64 = rows
            .iter()
            .filter(|r| r["key_id"] == id.as_str())
            .map(|r| r["cost_usd"].as_f64().unwrap())
            .sum();
        let (_, k) = gw.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
        assert_close(k["spend_usd"].as_f64().unwrap(), total, "spend_usd");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_aggregates_add_up() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let ((_, alice), (_, bob)) = two_keys(&gw).await;
    traffic(&gw, &alice, &bob).await;
    let rows = gw.usage_rows("").await;

    // Expected per model from the rows.
    let mut by_model: HashMap<String, (i64, i64, i64, f64)> = HashMap::new();
    for r in &rows {
        let e = by_model
            .entry(r["model"].as_str().unwrap().to_string())
            .or_default();
        e.0 += 1;
        e.1 += r["prompt_tokens"].as_i64().unwrap();
        e.2 += r["completion_tokens"].as_i64().unwrap();
        e.3 += r["cost_usd"].as_f64().unwrap();
    }
    let check = |groups: &[Value], what: &str| {
        let mut got: HashMap<String, (i64, i64, i64, f64)> = HashMap::new();
        for g in groups {
            for f in [
                "requests",
                "prompt_tokens",
                "completion_tokens",
                "cost_usd",
                "model",
            ] {
                assert!(g.get(f).is_some(), "{what}: group lacks '{f}': {g}");
            }
            let e = got
                .entry(g["model"].as_str().unwrap().to_string())
                .or_default();
            e.0 += g["requests"].as_i64().unwrap();
            e.1 += g["prompt_tokens"].as_i64().unwrap();
            e.2 += g["completion_tokens"].as_i64().unwrap();
            e.3 += g["cost_usd"].as_f64().unwrap();
        }
        assert_eq!(got.len(), by_model.len(), "{what}: {groups:#?}");
        for (m, want) in &by_model {
            let have = got
                .get(m)
                .unwrap_or_else(|| panic!("{what}: no group for {m}"));
            assert_eq!(
                (have.0, have.1, have.2),
                (want.0, want.1, want.2),
                "{what}: {m}"
            );
            assert_close(have.3, want.3, &format!("{what}: cost of {m}"));
        }
    };

    let (status, v) = gw
        .admin("GET", "/admin/v1/usage?group_by=model", None)
        .await;
    assert_eq!(status, 200, "{v}");
    let groups = v["data"].as_array().unwrap();
    assert_eq!(groups.len(), 4, "{groups:#?}");
    check(groups, "group_by=model");
    let echo = groups.iter().find(|g| g["model"] == "echo").unwrap();
    assert_eq!(echo["requests"], 3);

    let (status, v) = gw
        .admin("GET", "/admin/v1/usage?group_by=model,day", None)
        .await;
    assert_eq!(status, 200, "{v}");
    let groups = v["data"].as_array().unwrap();
    for g in groups {
        let day = g["day"].as_str().unwrap_or_else(|| panic!("no day: {g}"));
        assert_eq!(day.len(), 10, "{g}");
        assert_eq!(&day[4..5], "-");
    }
    check(groups, "group_by=model,day");

    // Other groupings add up to the same totals.
    for by in [
        "key_id",
        "user",
        "team",
        "provider",
        "endpoint",
        "user,team",
    ] {
        let (status, v) = gw
            .admin("GET", &format!("/admin/v1/usage?group_by={by}"), None)
            .await;
        assert_eq!(status, 200, "{by}: {v}");
        let groups = v["data"].as_array().unwrap();
        let requests: i64 = groups.iter().map(|g| g["requests"].as_i64().unwrap()).sum();
        assert_eq!(requests, rows.len() as i64, "{by}");
        let cost: f64 = groups.iter().map(|g| g["cost_usd"].as_f64().unwrap()).sum();
        assert_close(cost, by_model.values().map(|e| e.3).sum(), by);
    }
    let (status, v) = gw.admin("GET", "/admin/v1/usage?group_by=user", None).await;
    assert_eq!(status, 200);
    let users: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["user"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 2, "{v}");
    assert!(users.contains(&"alice") && users.contains(&"bob"));

    let (status, v) = gw
        .admin("GET", "/admin/v1/usage?group_by=colour", None)
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_filters_and_paging() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let ((alice_id, alice), (bob_id, bob)) = two_keys(&gw).await;
    let ids = traffic(&gw, &alice, &bob).await;
    let all = gw.usage_rows("").await;
    let count = |f: &dyn Fn(&Value) -> bool| all.iter().filter(|r| f(r)).count();

    let rows = gw.usage_rows(&format!("key_id={alice_id}")).await;
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["key_id"] == alice_id.as_str()));
    let rows = gw.usage_rows(&format!("key_id={bob_id}")).await;
    assert_eq!(rows.len(), 3);
    let rows = gw.usage_rows("model=gpt-4o-mini").await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["model"] == "gpt-4o-mini"));
    let rows = gw
        .usage_rows(&format!("model=echo&key_id={alice_id}"))
        .await;
    assert_eq!(rows.len(), 2);
    assert_eq!(gw.usage_rows("user=bob").await.len(), 3);
    assert_eq!(gw.usage_rows("team=red").await.len(), 4);
    assert_eq!(gw.usage_rows("provider=onprem").await.len(), 1);
    assert_eq!(
        gw.usage_rows("provider=echo").await.len(),
        count(&|r| r["provider"] == "echo")
    );

    // Time windows: spans back from now, dates, RFC 3339.
    assert_eq!(gw.usage_rows("since=1h").await.len(), ids.len());
    assert_eq!(gw.usage_rows("since=2000-01-01").await.len(), ids.len());
    assert_eq!(gw.usage_rows("since=2999-01-01T00:00:00Z").await.len(), 0);
    assert_eq!(gw.usage_rows("until=2000-01-01").await.len(), 0);
    assert_eq!(gw.usage_rows("since=1h&model=summarizer").await.len(), 1);
    let (status, v) = gw
        .admin("GET", "/admin/v1/usage?since=yesterday-ish", None)
        .await;
    assert_eq!(status, 400, "{v}");

    // Paging: limit + cursor visit every row once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/admin/v1/usage?limit=3&cursor={c}"),
            None => "/admin/v1/usage?limit=3".to_string(),
        };
        let (status, v) = gw.admin("GET", &path, None).await;
        assert_eq!(status, 200, "{v}");
        let data = v["data"].as_array().unwrap();
        assert!(data.len() <= 3);
        seen.extend(
            data.iter()
                .map(|r| r["request_id"].as_str().unwrap().to_string()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_actions_and_security_events_without_secrets() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (id, secret) = gw
        .create_key(json!({"name": "audited", "user": "alice"}))
        .await;
    let (status, v) = gw
        .admin(
            "PATCH",
            &format!("/admin/v1/keys/{id}"),
            Some(json!({"rpm": 10})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = gw
        .admin(
            "POST",
            &format!("/admin/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": 60})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let rotated = v["key"].as_str().unwrap().to_string();
    let (status, _) = gw
        .admin("POST", &format!("/admin/v1/keys/{id}/revoke"), None)
        .await;
    assert_eq!(status, 200);

    // Security events: a revoked key, garbage, no key at all, a bad admin key.
    let (s, _, _) = gw.chat(&rotated, "echo", "revoked").await;
    assert_eq!(s, 401);
    let (s, _, _) = gw.chat("bsr_garbage_attempt", "echo", "garbage").await;
    assert_eq!(s, 401);
    let resp = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = gw
        .http
        .get(gw.url("/admin/v1/keys"))
        .bearer_auth("bsra_not_the_admin_key_000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let create = gw
        .wait_audit("key.create", |r| r["action"] == "key.create")
        .await;
    assert_eq!(create["target"], id.as_str());
    assert!(
        create["actor"].as_str().unwrap().starts_with("admin:"),
        "{create}"
    );
    assert!(
        create["ts"].is_string() && create["seq"].is_i64() && create["hash"].is_string(),
        "{create}"
    );
    gw.wait_audit("key.update", |r| {
        r["action"] == "key.update" && r["target"] == id.as_str()
    })
    .await;
    gw.wait_audit("key.rotate", |r| {
        r["action"] == "key.rotate" && r["target"] == id.as_str()
    })
    .await;
    let revoke = gw
        .wait_audit("key.revoke", |r| r["action"] == "key.revoke")
        .await;
    assert_eq!(revoke["target"], id.as_str());
    let revoked_use = gw
        .wait_audit("auth.invalid_key (revoked)", |r| {
            r["action"] == "auth.invalid_key" && r["detail"]["reason"] == "revoked"
        })
        .await;
    assert_eq!(revoked_use["target"], id.as_str());
    assert_eq!(revoked_use["ip"], "127.0.0.1");
    gw.wait_audit("auth.invalid_key (malformed)", |r| {
        r["action"] == "auth.invalid_key" && r["detail"]["reason"] == "malformed"
    })
    .await;
    gw.wait_audit("auth.invalid_key (missing)", |r| {
        r["action"] == "auth.invalid_key" && r["detail"]["reason"] == "missing"
    })
    .await;
    gw.wait_audit("admin.auth_failed", |r| r["action"] == "admin.auth_failed")
        .await;

    // No secret anywhere in the log: not the virtual keys, the admin key or a real key.
    let text = serde_json::to_string(&gw.audit_rows().await).unwrap();
    for s in [
        secret.as_str(),
        rotated.as_str(),
        ADMIN_KEY,
        "bsra_not_the_admin_key_000",
        "bsr_garbage_attempt",
    ] {
        assert!(!text.contains(s), "the audit log holds a secret: {s}");
    }
    assert_no_real_key(&text, "the audit log");

    // Time filters and paging.
    let (status, v) = gw
        .admin("GET", "/admin/v1/audit?since=2999-01-01", None)
        .await;
    assert_eq!(status, 200);
    assert!(v["data"].as_array().unwrap().is_empty());
    let (status, v) = gw.admin("GET", "/admin/v1/audit?limit=2", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert!(v["next_cursor"].is_string(), "{v}");

    let (status, v) = gw.admin("GET", "/admin/v1/audit/verify", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checked"].as_i64().unwrap() >= 9, "{v}");
}

/// A gateway with some audit history, stopped cleanly; answers it and the
/// number of audit rows.
async fn stopped_with_history(mock: &MockUpstream) -> (Gateway, i64) {
    let mut gw = Gateway::start(mock).await;
    for n in 0..3 {
        let (id, _) = gw.create_key(json!({"name": format!("k{n}")})).await;
        if n == 1 {
            let (status, _) = gw
                .admin("POST", &format!("/admin/v1/keys/{id}/revoke"), None)
                .await;
            assert_eq!(status, 200);
        }
    }
    let (s, _, _) = gw.chat("bsr_bad_attempt", "echo", "x").await;
    assert_eq!(s, 401);
    gw.wait_audit("auth.invalid_key", |r| r["action"] == "auth.invalid_key")
        .await;
    let (status, v) = gw.admin("GET", "/admin/v1/audit/verify", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["ok"], true, "{v}");
    let checked = v["checked"].as_i64().unwrap();
    assert!(checked >= 6, "{v}");
    let out = gw.cli(&["audit", "verify"], &[], None).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let status = gw.stop().await;
    assert!(status.success(), "{status}");
    (gw, checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_detects_an_altered_row() {
    let mock = MockUpstream::start().await;
    let (mut gw, _) = stopped_with_history(&mock).await;

    let changed = exec_sql(
        &gw.db_path,
        "UPDATE audit SET detail = '{\"name\":\"innocent\"}' WHERE seq = 2",
    )
    .await;
    assert_eq!(changed, 1);
    gw.spawn().await;

    let (status, v) = gw.admin("GET", "/admin/v1/audit/verify", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_bad_seq"], 2, "{v}");
    assert!(v["reason"].is_string(), "{v}");

    let out = gw.cli(&["audit", "verify"], &[], None).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let out = gw
        .cli(&["audit", "verify", "--format", "json"], &[], None)
        .await;
    assert_eq!(out.code, 1);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_detects_a_deleted_last_row() {
    let mock = MockUpstream::start().await;
    let (mut gw, checked) = stopped_with_history(&mock).await;

    let deleted = exec_sql(
        &gw.db_path,
        "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
    )
    .await;
    assert_eq!(deleted, 1);
    gw.spawn().await;

    let (status, v) = gw.admin("GET", "/admin/v1/audit/verify", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["checked"], checked - 1, "{v}");
    let out = gw.cli(&["audit", "verify"], &[], None).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("BROKEN"), "{}", out.stdout);
}
