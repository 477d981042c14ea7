//! The keys admin API: create, list, show, patch, revoke, rotate, expiry, and
//! admin authentication — against the real binary.

mod common;

use std::collections::HashSet;

use common::*;
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

/// Assert a key as read back never carries its secret.
fn assert_no_secret(view: &Value, secret: &str) {
    assert!(
        view.get("key").is_none(),
        "a read-back key has a 'key' field: {view}"
    );
    assert!(
        !view.to_string().contains(secret),
        "a read-back key contains its secret: {view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_the_secret_once() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;

    let (status, v) = gw
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({
                "name": "my-vscode-plugin",
                "user": "alice",
                "team": "research",
                "purpose": "summarization",
                "environment": "production",
                "models": ["gpt-4o-mini", "claude-*"],
                "endpoints": ["chat", "embeddings"],
                "providers": ["openai", "anthropic"],
                "ip_allow": ["127.0.0.1/32"],
                "expires_at": "2099-01-01T00:00:00Z",
                "max_tokens_per_request": 2000,
                "metadata": {"cost_center": "4711"}
            })),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let secret = v["key"].as_str().expect("key in the create answer");
    assert!(is_key_format(secret), "key format: {secret}");
    let prefix = v["prefix"].as_str().expect("prefix");
    assert!(
        prefix.starts_with("bsr_") && secret.starts_with(prefix),
        "prefix {prefix}"
    );
    assert!(prefix.len() < secret.len());
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(v["status"], "active");
    assert_eq!(v["name"], "my-vscode-plugin");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["team"], "research");
    assert_eq!(v["models"], json!(["gpt-4o-mini", "claude-*"]));
    assert_eq!(v["metadata"]["cost_center"], "4711");
    assert_eq!(v["spend_usd"].as_f64(), Some(0.0));

    // Two keys never share a secret or an id.
    let (id2, secret2) = gw.create_key(json!({"name": "second"})).await;
    assert_ne!(id, id2);
    assert_ne!(secret, secret2);
    assert!(is_key_format(&secret2));

    // A changed character breaks the checksum: refused as malformed.
    let mut tampered = secret2.clone().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (s, _, body) = gw.chat_settled(&tampered, "echo", "hi").await;
    assert_eq!(s, 401, "{body}");
    let (s, _, body) = gw.chat_settled(&secret2, "echo", "hi").await;
    assert_eq!(s, 200, "{body}");

    // Never again: not in show, not in list.
    let (status, shown) = gw.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(status, 200);
    assert_no_secret(&shown, secret);
    assert_eq!(shown["prefix"], prefix);
    let (status, list) = gw.admin("GET", "/admin/v1/keys", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    for k in list["data"].as_array().unwrap() {
        assert_no_secret(k, secret);
        assert_no_secret(k, &secret2);
    }

    // Missing name, bad values and unknown fields are refused, naming the field.
    let (status, v) = gw
        .admin("POST", "/admin/v1/keys", Some(json!({"user": "x"})))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("name"),
        "{v}"
    );
    let (status, v) = gw
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"name": "x", "endpoints": ["chat", "nope"]})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("endpoints[1]"),
        "{v}"
    );
    let (status, v) = gw
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"name": "x", "bogus_field": 1})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bogus_field"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_and_filters() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;

    let specs = [
        ("k1", "alice", "red"),
        ("k2", "alice", "blue"),
        ("k3", "bob", "red"),
        ("k4", "bob", "blue"),
        ("k5", "carol", "red"),
    ];
    let mut ids = Vec::new();
    for (name, user, team) in specs {
        let (id, _) = gw
            .create_key(json!({"name": name, "user": user, "team": team}))
            .await;
        ids.push(id);
    }

    // Paging with limit and cursor visits every key exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/v1/keys?limit=2&cursor={c}"),
            None => "/admin/v1/keys?limit=2".to_string(),
        };
        let (status, v) = gw.admin("GET", &path, None).await;
        assert_eq!(status, 200, "{v}");
        let data = v["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|k| k["id"].as_str().unwrap().to_string()));
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );

    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let (_, v) = gw.admin("GET", "/admin/v1/keys?user=alice", None).await;
    assert_eq!(names(&v), ["k1", "k2"]);
    let (_, v) = gw.admin("GET", "/admin/v1/keys?team=red", None).await;
    assert_eq!(names(&v), ["k1", "k3", "k5"]);
    let (_, v) = gw
        .admin("GET", "/admin/v1/keys?user=bob&team=blue", None)
        .await;
    assert_eq!(names(&v), ["k4"]);

    // Status filter.
    let (status, _) = gw
        .admin("POST", &format!("/admin/v1/keys/{}/revoke", ids[2]), None)
        .await;
    assert_eq!(status, 200);
    let (_, v) = gw.admin("GET", "/admin/v1/keys?status=revoked", None).await;
    assert_eq!(names(&v), ["k3"]);
    let (_, v) = gw.admin("GET", "/admin/v1/keys?status=active", None).await;
    assert_eq!(names(&v), ["k1", "k2", "k4", "k5"]);
    let (_, v) = gw.admin("GET", "/admin/v1/keys?status=expired", None).await;
    assert_eq!(names(&v), Vec::<String>::new());
    let (status, v) = gw.admin("GET", "/admin/v1/keys?status=bogus", None).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = gw.admin("GET", "/admin/v1/keys?limit=0", None).await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_has_fields_spend_and_no_secret() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (id, secret) = gw
        .create_key(json!({"name": "shown", "user": "dave", "rpm": 60, "budget": {"usd": 25.0, "period": "monthly"}}))
        .await;

    // Spend a little through the echo model.
    let (s, h, _) = gw
        .chat_settled(&secret, "echo", "spend some money please")
        .await;
    assert_eq!(s, 200);
    let row = gw.wait_usage(&request_id(&h)).await;
    let cost = row["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0);

    let (status, v) = gw.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(status, 200, "{v}");
    assert_no_secret(&v, &secret);
    for field in [
        "id",
        "name",
        "prefix",
        "status",
        "parent_id",
        "spend_usd",
        "created_at",
        "expires_at",
        "models",
    ] {
        assert!(v.get(field).is_some(), "show lacks '{field}': {v}");
    }
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["user"], "dave");
    assert_eq!(v["rpm"], 60);
    assert_eq!(v["budget"]["usd"].as_f64(), Some(25.0));
    assert_eq!(v["parent_id"], Value::Null);
    assert_close(v["spend_usd"].as_f64().unwrap(), cost, "spend_usd");

    let (status, v) = gw
        .admin("GET", "/admin/v1/keys/key_does_not_exist", None)
        .await;
    assert_eq!(status, 404, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_clears_and_refuses() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (id, secret) = gw
        .create_key(json!({"name": "patched", "user": "erin", "models": ["gpt-4o-mini"], "rpm": 5}))
        .await;
    let path = format!("/admin/v1/keys/{id}");

    // The scope is enforced...
    let (s, _, body) = gw.chat_settled(&secret, "echo", "hi").await;
    assert_eq!(s, 403, "{body}");

    // ...a patch changes fields and keeps the others...
    let (status, v) = gw
        .admin(
            "PATCH",
            &path,
            Some(json!({"team": "ops", "metadata": {"a": "b"}})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["team"], "ops");
    assert_eq!(v["user"], "erin");
    assert_eq!(v["rpm"], 5);
    assert_eq!(v["models"], json!(["gpt-4o-mini"]));
    assert_eq!(v["metadata"]["a"], "b");
    assert_no_secret(&v, &secret);

    // ...null clears a field, and the change applies at once.
    let (status, v) = gw
        .admin("PATCH", &path, Some(json!({"models": null, "user": null})))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["models"], json!([]));
    assert_eq!(v["user"], Value::Null);
    assert_eq!(v["team"], "ops");
    let (s, _, body) = gw.chat_settled(&secret, "echo", "hi").await;
    assert_eq!(s, 200, "{body}");
    let (_, shown) = gw.admin("GET", &path, None).await;
    assert_eq!(shown["user"], Value::Null);
    assert_eq!(shown["team"], "ops");

    // Bad values: 400 naming the field, nothing changed.
    let (status, v) = gw.admin("PATCH", &path, Some(json!({"rpm": 0}))).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("rpm"),
        "{v}"
    );
    let (status, v) = gw
        .admin("PATCH", &path, Some(json!({"ip_allow": ["not-an-ip"]})))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("ip_allow"),
        "{v}"
    );
    let (status, v) = gw
        .admin("PATCH", &path, Some(json!({"unknown_thing": true})))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown_thing"),
        "{v}"
    );
    let (status, v) = gw
        .admin("PATCH", &path, Some(json!(["not", "an", "object"])))
        .await;
    assert_eq!(status, 400, "{v}");
    let (_, shown) = gw.admin("GET", &path, None).await;
    assert_eq!(shown["rpm"], 5);
    assert_eq!(shown["ip_allow"], json!([]));

    // A patch can set an expiry; unknown ids are 404.
    let (status, v) = gw
        .admin("PATCH", &path, Some(json!({"ttl_seconds": 3600})))
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    let (status, _) = gw
        .admin("PATCH", "/admin/v1/keys/key_nope", Some(json!({"rpm": 1})))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_and_create_name_a_field_of_the_wrong_type() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (id, _) = gw.create_key(json!({"name": "typed"})).await;

    let (status, v) = gw
        .admin(
            "PATCH",
            &format!("/admin/v1/keys/{id}"),
            Some(json!({"rpm": "lots"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("rpm"),
        "{v}"
    );

    let (status, v) = gw
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"name": "x", "max_tokens_per_request": -5})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens_per_request"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_takes_effect_at_once() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (id, secret) = gw.open_key().await;
    let (s, _, _) = gw.chat_settled(&secret, "echo", "before").await;
    assert_eq!(s, 200);

    let (status, v) = gw
        .admin("POST", &format!("/admin/v1/keys/{id}/revoke"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "revoked");
    assert_no_secret(&v, &secret);

    // No waiting: the very next request is refused.
    let (s, _, body) = gw.chat_settled(&secret, "echo", "after").await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(body["error"]["type"], "invalid_api_key", "{body}");
    let (_, shown) = gw.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(shown["status"], "revoked");
    assert!(shown["revoked_at"].is_string(), "{shown}");

    // A revoked key can be neither changed nor rotated; unknown ids are 404.
    let (status, _) = gw
        .admin(
            "PATCH",
            &format!("/admin/v1/keys/{id}"),
            Some(json!({"rpm": 1})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = gw
        .admin("POST", &format!("/admin/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = gw
        .admin("POST", "/admin/v1/keys/key_nope/revoke", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_with_and_without_grace() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (id, old) = gw.open_key().await;

    // With a grace period both secrets work.
    let (status, v) = gw
        .admin(
            "POST",
            &format!("/admin/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": 300})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let new = v["key"].as_str().expect("new secret").to_string();
    assert!(is_key_format(&new));
    assert_ne!(new, old);
    assert_eq!(v["id"], id.as_str(), "rotation keeps the id");
    assert!(v["rotation_grace_until"].is_string(), "{v}");
    assert!(new.starts_with(v["prefix"].as_str().unwrap()));
    for k in [&old, &new] {
        let (s, _, body) = gw.chat_settled(k, "echo", "both work").await;
        assert_eq!(s, 200, "{body}");
    }
    let (_, shown) = gw.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert_no_secret(&shown, &new);
    assert_no_secret(&shown, &old);

    // Rotating again without grace: only the newest secret works, at once.
    let (status, v) = gw
        .admin(
            "POST",
            &format!("/admin/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let newest = v["key"].as_str().unwrap().to_string();
    for k in [&old, &new] {
        let (s, _, body) = gw.chat_settled(k, "echo", "old").await;
        assert_eq!(s, 401, "{body}");
    }
    let (s, _, _) = gw.chat_settled(&newest, "echo", "newest").await;
    assert_eq!(s, 200);

    // A short grace period ends.
    let (status, v) = gw
        .admin(
            "POST",
            &format!("/admin/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": 1})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let last = v["key"].as_str().unwrap().to_string();
    gw.wait_status(&newest, 401).await;
    let (s, _, _) = gw.chat_settled(&last, "echo", "last").await;
    assert_eq!(s, 200);

    // Bad grace values are refused.
    let (status, _) = gw
        .admin(
            "POST",
            &format!("/admin/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": -1})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_key_is_refused() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (id, secret) = gw
        .create_key(json!({"name": "short-lived", "ttl_seconds": 1}))
        .await;
    let (_, shown) = gw.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert!(shown["expires_at"].is_string(), "{shown}");

    gw.wait_status(&secret, 401).await;
    let (s, _, body) = gw.chat_settled(&secret, "echo", "late").await;
    assert_eq!(s, 401);
    assert_eq!(body["error"]["type"], "invalid_api_key", "{body}");
    let (_, shown) = gw.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(shown["status"], "expired");
    let (_, v) = gw.admin("GET", "/admin/v1/keys?status=expired", None).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["id"], id.as_str());
    let (_, v) = gw.admin("GET", "/admin/v1/keys?status=active", None).await;
    assert!(v["data"].as_array().unwrap().is_empty(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_admin_key() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, user_key) = gw.open_key().await;

    let routes = [
        ("GET", "/admin/v1/keys"),
        ("POST", "/admin/v1/keys"),
        ("GET", "/admin/v1/keys/key_x"),
        ("PATCH", "/admin/v1/keys/key_x"),
        ("POST", "/admin/v1/keys/key_x/revoke"),
        ("POST", "/admin/v1/keys/key_x/rotate"),
        ("GET", "/admin/v1/usage"),
        ("GET", "/admin/v1/audit"),
        ("GET", "/admin/v1/audit/verify"),
    ];
    let wrong_admin = format!("{ADMIN_KEY}x");
    let credentials: [Option<&str>; 4] = [
        None,
        Some("bsra_wrong_admin_key_00000000"),
        Some(&wrong_admin),
        Some(&user_key),
    ];
    for (method, path) in routes {
        for cred in credentials {
            let mut rb = gw.http.request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                gw.url(path),
            );
            if let Some(c) = cred {
                rb = rb.bearer_auth(c);
            }
            if method != "GET" {
                rb = rb.json(&json!({"name": "x"}));
            }
            let resp = rb.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = body_json(resp).await;
            assert_eq!(status, 401, "{method} {path} with {cred:?}: {body}");
            assert_eq!(body["error"]["type"], "invalid_api_key", "{body}");
        }
    }
    // Nothing was created by the refused calls.
    let (status, v) = gw.admin("GET", "/admin/v1/keys", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
}

/// Create keys, revoke every other one, and check the newest ones keep their
/// state, for `span`; answers what went wrong.
async fn churn_keys(gw: &Gateway, span: std::time::Duration) -> Vec<String> {
    let started = std::time::Instant::now();
    let mut problems = Vec::new();
    let mut live: Vec<String> = Vec::new();
    let mut dead: Vec<String> = Vec::new();
    let mut i = 0;
    while started.elapsed() < span {
        i += 1;
        let (status, v) = gw
            .admin(
                "POST",
                "/admin/v1/keys",
                Some(json!({"name": format!("k{i}")})),
            )
            .await;
        if status != 201 {
            problems.push(format!("create answered {status}: {v}"));
            continue;
        }
        let (id, secret) = (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        );
        if i % 2 == 0 {
            let (status, v) = gw
                .admin("POST", &format!("/admin/v1/keys/{id}/revoke"), None)
                .await;
            if status != 200 {
                problems.push(format!("revoke answered {status}: {v}"));
            }
            dead.push(secret);
        } else {
            live.push(secret);
        }
        for k in live.iter().rev().take(3) {
            let s = gw.whoami_status(k).await;
            if s != 200 {
                problems.push(format!("a live key got {s} at {:?}", started.elapsed()));
            }
        }
        for k in dead.iter().rev().take(3) {
            let s = gw.whoami_status(k).await;
            if s != 401 {
                problems.push(format!("a revoked key got {s} at {:?}", started.elapsed()));
            }
        }
    }
    problems
}

/// Stress test (intermittent by nature): a periodic key-cache reload must
/// never swap in a snapshot older than an admin change. The refresh fires at
/// start-up and every 5 s; several gateways start at once (so that one is
/// slow) and are changed at once and across a refresh tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_cache_never_goes_stale() {
    let mock = MockUpstream::start().await;
    let config = standard_config(&mock.url());
    // Each gateway and its client on their own runtime, as parallel tests are.
    let threads: Vec<_> = (0..4u64)
        .map(|n| {
            let config = config.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let gw = GatewayBuilder::from_config(config)
                        .no_settle()
                        .start()
                        .await;
                    let span = std::time::Duration::from_millis(if n == 0 { 5600 } else { 2000 });
                    churn_keys(&gw, span).await
                })
            })
        })
        .collect();
    let problems: Vec<String> = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    })
    .await
    .unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Admin writes while the usage writer commits rows must not fail with
/// SQLite's "database is locked" (read-then-write transactions need
/// `BEGIN IMMEDIATE`; a regression test for that fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_succeed_while_usage_is_written() {
    let mock = MockUpstream::start().await;
    let gw = std::sync::Arc::new(Gateway::start(&mock).await);
    let (_, traffic_key) = gw.open_key().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut traffic = Vec::new();
    for _ in 0..3 {
        let (gw, key, stop) = (gw.clone(), traffic_key.clone(), stop.clone());
        traffic.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (s, _, _) = gw.chat(&key, "echo", "usage rows please").await;
                assert_eq!(s, 200);
            }
        }));
    }
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(3) {
        let (status, v) = gw
            .admin("POST", "/admin/v1/keys", Some(json!({"name": "busy"})))
            .await;
        if status != 201 {
            failures.push(format!("create: {status} {v}"));
            continue;
        }
        let id = v["id"].as_str().unwrap();
        let (status, v) = gw
            .admin("POST", &format!("/admin/v1/keys/{id}/revoke"), None)
            .await;
        if status != 200 {
            failures.push(format!("revoke: {status} {v}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in traffic {
        t.await.unwrap();
    }
    let log = gw.log();
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{}",
        log.lines()
            .filter(|l| l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
