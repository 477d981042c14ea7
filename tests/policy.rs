//! Policy: limits, budgets (key, user, team), IP and proxies, max tokens,
//! guardrails, child keys, leak reports, whoami — through the real binary.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

fn chat_body(text: &str) -> Value {
    json!({"model": "echo", "max_tokens": 16, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn rpm_limit_refuses_with_retry_after_and_openai_headers() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, key) = gw.create_key(json!({"name": "r", "rpm": 2})).await;
    let first = gw
        .post("/v1/chat/completions", &key, &chat_body("one"))
        .await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert!(first.headers().contains_key("x-ratelimit-reset-requests"));
    assert_eq!(
        gw.post("/v1/chat/completions", &key, &chat_body("two"))
            .await
            .status(),
        200
    );
    let third = gw
        .post("/v1/chat/completions", &key, &chat_body("three"))
        .await;
    assert_eq!(third.status(), 429);
    let retry: u64 = third.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    let body = body_json(third).await;
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    // Another key is not disturbed.
    let (_, other) = gw.open_key().await;
    assert_eq!(
        gw.post("/v1/chat/completions", &other, &chat_body("x"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn tpm_limit_counts_the_estimate_and_corrects_it() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, key) = gw.create_key(json!({"name": "t", "tpm": 300})).await;
    let ok = gw
        .post("/v1/chat/completions", &key, &chat_body("short"))
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-ratelimit-limit-tokens"], "300");
    // A prompt estimated far above the window is refused before forwarding.
    let big = "word ".repeat(2000);
    let refused = gw
        .post("/v1/chat/completions", &key, &chat_body(&big))
        .await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        body_json(refused).await["error"]["type"],
        "rate_limit_exceeded"
    );
}

#[tokio::test]
async fn concurrency_limit_holds_a_slot_for_the_whole_stream() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, key) = gw
        .create_key(json!({"name": "c", "max_concurrency": 1}))
        .await;
    let slow = json!({"model": "mock-slow", "stream": true, "messages": [{"role": "user", "content": "a b c d e f"}]});
    let streaming = gw.post("/v1/chat/completions", &key, &slow).await;
    assert_eq!(streaming.status(), 200);
    let second = gw
        .post("/v1/chat/completions", &key, &chat_body("meanwhile"))
        .await;
    assert_eq!(
        second.status(),
        429,
        "a second request while the stream runs"
    );
    assert_eq!(
        body_json(second).await["error"]["type"],
        "rate_limit_exceeded"
    );
    let _ = read_stream(streaming).await;
    // The slot is free once the stream ended.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let s = gw
            .post("/v1/chat/completions", &key, &chat_body("after"))
            .await
            .status();
        if s == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never released");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn parallel_requests_overshoot_a_budget_by_at_most_one_reservation() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    // echo costs $1/$2 per Mtok; one request reserves about
    // (body/4)·1e-6 + 16·2e-6 ≈ $0.00006 and really costs ≈ $0.00004.
    let budget = 0.0005;
    let (id, key) = gw
        .create_key(json!({"name": "b", "budget": {"usd": budget, "period": "daily"}}))
        .await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let http = gw.http.clone();
        let url = gw.url("/v1/chat/completions");
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&chat_body(&format!("request number {i} with a few words")))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(body["error"]["type"], "budget_exceeded", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    let rows = gw.wait_usage_count(&format!("key_id={id}"), 60).await;
    let spent: f64 = rows
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .sum();
    let max_one: f64 = rows
        .iter()
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        spent <= budget + 2.0 * max_one,
        "spent {spent} over budget {budget} by more than one request ({max_one})"
    );
    let (_, shown) = gw.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert!((shown["spend_usd"].as_f64().unwrap() - spent).abs() < 1e-9);
}

#[tokio::test]
async fn user_and_team_limits_apply_across_their_keys() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/v1/teams",
            Some(json!({"name": "research", "budget": {"usd": 0.00001, "period": "monthly"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/v1/users",
            Some(json!({"name": "alice", "team": "research", "rpm": 2})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = gw
        .admin("POST", "/admin/v1/users", Some(json!({"name": "alice"})))
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = gw
        .admin(
            "POST",
            "/admin/v1/users",
            Some(json!({"name": "bob", "rpm": 0})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("rpm"));

    let (_, k1) = gw.create_key(json!({"name": "a1", "user": "alice"})).await;
    let (_, k2) = gw.create_key(json!({"name": "a2", "user": "alice"})).await;
    assert_eq!(
        gw.post("/v1/chat/completions", &k1, &chat_body("x"))
            .await
            .status(),
        200
    );
    assert_eq!(
        gw.post("/v1/chat/completions", &k2, &chat_body("x"))
            .await
            .status(),
        200
    );
    let third = gw.post("/v1/chat/completions", &k1, &chat_body("x")).await;
    assert_eq!(third.status(), 429, "alice's rpm holds across her keys");

    // The team's budget is spent by its members' keys.
    let (_, t1) = gw
        .create_key(json!({"name": "t1", "team": "research"}))
        .await;
    let mut refused = None;
    for _ in 0..5 {
        let r = gw
            .post("/v1/chat/completions", &t1, &chat_body("spend it"))
            .await;
        if r.status() == 429 {
            refused = Some(body_json(r).await);
            break;
        }
    }
    let refused = refused.expect("the team budget refused");
    assert_eq!(refused["error"]["type"], "budget_exceeded");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team:research")
    );
    let (s, team) = gw.admin("GET", "/admin/v1/teams/research", None).await;
    assert_eq!(s, 200);
    assert_eq!(team["spend_period"], "monthly");
    let spent = gw.wait_usage_count("team=research", 1).await;
    assert!(!spent.is_empty());
}

#[tokio::test]
async fn max_tokens_per_request_is_the_default_and_the_ceiling() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, key) = gw
        .create_key(json!({"name": "m", "max_tokens_per_request": 7}))
        .await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let seen = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/chat/completions"))
        .unwrap();
    assert_eq!(seen.json().unwrap()["max_completion_tokens"], 7);
    let r = gw
        .post_anthropic("/anthropic/v1/messages", &key, &json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 400);
    let body = body_json(r).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "request_blocked");
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let mock = MockUpstream::start().await;
    let trusting = Gateway::builder(&mock)
        .top_level("trusted_proxies = [\"127.0.0.1/32\"]")
        .start()
        .await;
    let plain = Gateway::start(&mock).await;
    for (gw, believed) in [(&trusting, true), (&plain, false)] {
        let (_, key) = gw
            .create_key(json!({"name": "ip", "ip_allow": ["203.0.113.0/24"]}))
            .await;
        let from = |xff: Option<&str>| {
            let mut rb = gw
                .http
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&chat_body("hi"));
            if let Some(x) = xff {
                rb = rb.header("x-forwarded-for", x);
            }
            rb.send()
        };
        assert_eq!(
            from(None).await.unwrap().status(),
            403,
            "the socket address is 127.0.0.1"
        );
        let s = from(Some("203.0.113.7")).await.unwrap().status();
        assert_eq!(
            s == 200,
            believed,
            "X-Forwarded-For from 127.0.0.1 (trusted: {believed}) gave {s}"
        );
        assert_eq!(from(Some("198.51.100.1")).await.unwrap().status(), 403);
    }
}

fn guardrail_config(mock: &MockUpstream) -> String {
    format!(
        "{}\n[guardrails]\nanomaly_warmup = 3\nanomaly_factor = 5.0\ndlp_custom = [{{ name = \"project_code\", pattern = \"PRJ-[0-9]{{6}}\" }}]\n",
        standard_config(&mock.url())
    )
}

#[tokio::test]
async fn dlp_redacts_every_surface_and_keeps_json_valid() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder(&mock)
        .config(guardrail_config(&mock))
        .start()
        .await;
    let (id, key) = gw
        .create_key(json!({"name": "d", "guardrails": {"dlp": "redact"}}))
        .await;
    let card = "4111 1111 1111 1111";
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "gpt-4o-mini", "messages": [
                {"role": "system", "content": "ref PRJ-123456"},
                {"role": "user", "content": [{"type": "text", "text": format!("card {card}, mail a@b.example")}]}
            ]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rid = request_id(r.headers());
    let seen = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/chat/completions"))
        .unwrap();
    let sent = seen.json().expect("still valid JSON");
    let text = sent.to_string();
    assert!(
        !text.contains(card) && !text.contains("a@b.example") && !text.contains("PRJ-123456"),
        "{text}"
    );
    assert!(
        text.contains("[REDACTED:credit_card]")
            && text.contains("[REDACTED:email]")
            && text.contains("[REDACTED:project_code]")
    );
    let r = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &key,
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 20, "system": [{"type": "text", "text": "ssn 078-05-1120"}],
                    "messages": [{"role": "user", "content": "iban GB82 WEST 1234 5698 7654 32"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let seen = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/messages"))
        .unwrap();
    let text = seen.json().expect("valid JSON").to_string();
    assert!(
        text.contains("[REDACTED:us_ssn]") && text.contains("[REDACTED:iban]"),
        "{text}"
    );
    let row = gw.wait_usage(&rid).await;
    assert!(row["flags"].as_str().unwrap_or("").contains("dlp:redacted"));
    let audit = gw
        .wait_audit("dlp_redacted", |r| {
            r["action"] == "guardrail.dlp_redacted" && r["target"] == id.as_str()
        })
        .await;
    assert!(
        !audit.to_string().contains(card),
        "the audit names rules, never the text"
    );
}

#[tokio::test]
async fn dlp_block_refuses_naming_the_rule_and_false_positives_pass() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder(&mock)
        .config(guardrail_config(&mock))
        .start()
        .await;
    let (_, key) = gw
        .create_key(json!({"name": "d", "guardrails": {"dlp": "block"}}))
        .await;
    let (s, _, body) = gw
        .chat(&key, "gpt-4o-mini", "my key is AKIAABCDEFGHIJKLMNOP")
        .await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["type"], "request_blocked");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("aws_access_key") && !msg.contains("AKIAABCDEFGHIJKLMNOP"),
        "{msg}"
    );
    // A 16-digit number that fails Luhn is not a card.
    let (s, _, body) = gw
        .chat(&key, "gpt-4o-mini", "order 4111 1111 1111 1112 shipped")
        .await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test]
async fn anomalous_prompts_are_flagged_after_warm_up() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder(&mock)
        .config(guardrail_config(&mock))
        .start()
        .await;
    let (id, key) = gw
        .create_key(json!({"name": "a", "guardrails": {"anomaly": "flag"}}))
        .await;
    for i in 0..5 {
        let (s, _, _) = gw.chat(&key, "echo", &format!("small prompt {i}")).await;
        assert_eq!(s, 200);
    }
    let huge = "lorem ipsum ".repeat(3000);
    let (s, headers, _) = gw.chat(&key, "echo", &huge).await;
    assert_eq!(s, 200, "flag mode forwards");
    let row = gw.wait_usage(&request_id(&headers)).await;
    assert!(
        row["flags"]
            .as_str()
            .unwrap_or("")
            .contains("anomaly:prompt_tokens"),
        "{row}"
    );
    gw.wait_audit("anomaly", |r| {
        r["action"] == "guardrail.anomaly_flagged" && r["target"] == id.as_str()
    })
    .await;

    let (_, blocker) = gw
        .create_key(json!({"name": "b", "guardrails": {"anomaly": "block"}}))
        .await;
    for i in 0..5 {
        gw.chat(&blocker, "echo", &format!("small prompt {i}"))
            .await;
    }
    let (s, _, body) = gw.chat(&blocker, "echo", &huge).await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["type"], "request_blocked");
}

#[tokio::test]
async fn child_keys_are_narrower_and_die_with_their_parent() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (pid, parent) = gw
        .create_key(json!({"name": "p", "models": ["echo", "gpt-4o-mini"], "rpm": 100, "ttl_seconds": 3600, "budget": {"usd": 1.0}}))
        .await;
    let mint = |body: Value| {
        gw.http
            .post(gw.url("/bursar/v1/keys"))
            .bearer_auth(&parent)
            .json(&body)
            .send()
    };
    let r = mint(json!({"name": "ci", "models": ["echo"], "ttl_seconds": 60, "rpm": 10}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let child = body_json(r).await;
    assert_eq!(child["parent_id"], pid.as_str());
    assert_eq!(child["models"], json!(["echo"]));
    assert!(child["budget"]["usd"].as_f64().unwrap() <= 1.0);
    let child_key = child["key"].as_str().unwrap().to_string();
    let (s, _, _) = gw.chat(&child_key, "echo", "hi").await;
    assert_eq!(s, 200);
    let (s, _, _) = gw.chat(&child_key, "gpt-4o-mini", "hi").await;
    assert_eq!(s, 403, "the child may not use what it did not ask for");

    for wider in [
        json!({"name": "w", "models": ["gpt-*"]}),
        json!({"name": "w", "rpm": 1000}),
        json!({"name": "w", "ttl_seconds": 7200}),
        json!({"name": "w", "budget": {"usd": 5.0}}),
        json!({"name": "w", "models": []}),
    ] {
        let r = mint(wider.clone()).await.unwrap();
        assert_eq!(r.status(), 403, "{wider}");
        assert_eq!(body_json(r).await["error"]["type"], "permission_denied");
    }
    // A grandchild through the CLI.
    let out = gw
        .cli(
            &[
                "keys", "derive", "--name", "gc", "--models", "echo", "--format", "json",
            ],
            &[("BURSAR_API_KEY", &child_key)],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let grandchild: Value = serde_json::from_str(&out.stdout).unwrap();
    let gc_key = grandchild["key"].as_str().unwrap().to_string();
    assert_eq!(gw.chat(&gc_key, "echo", "hi").await.0, 200);

    let (s, v) = gw
        .admin("POST", &format!("/admin/v1/keys/{pid}/revoke"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["revoked_ids"].as_array().unwrap().len(), 3);
    for k in [&parent, &child_key, &gc_key] {
        assert_eq!(gw.chat(k, "echo", "hi").await.0, 401);
    }
}

#[tokio::test]
async fn a_reported_leak_revokes_the_key_and_its_children() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (id, key) = gw.open_key().await;
    let (_, bystander) = gw.open_key().await;
    let r = gw
        .http
        .post(gw.url("/bursar/v1/keys"))
        .bearer_auth(&key)
        .json(&json!({"name": "child"}))
        .send()
        .await
        .unwrap();
    let child = body_json(r).await["key"].as_str().unwrap().to_string();
    let text = format!(
        "found in a public gist: OPENAI_API_KEY={key}\nand bsr_000000000000000000000000000000000000 noise"
    );
    let r = gw
        .http
        .post(gw.url("/bursar/v1/report-leak"))
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = body_json(r).await;
    assert_eq!(v["checked"], 1);
    assert_eq!(v["revoked"], 2);
    assert_eq!(gw.chat(&key, "echo", "hi").await.0, 401);
    assert_eq!(gw.chat(&child, "echo", "hi").await.0, 401);
    assert_eq!(gw.chat(&bystander, "echo", "hi").await.0, 200);
    let row = gw
        .wait_audit("leak", |r| {
            r["action"] == "key.leak_revoked" && r["target"] == id.as_str()
        })
        .await;
    assert!(!row.to_string().contains(&key));
}

#[tokio::test]
async fn whoami_shows_effective_limits_and_remaining_budget() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    gw.admin(
        "POST",
        "/admin/v1/users",
        Some(json!({"name": "carol", "tpm": 5000})),
    )
    .await;
    let (_, key) = gw.create_key(json!({"name": "w", "user": "carol", "rpm": 10, "models": ["echo"], "budget": {"usd": 2.0, "period": "weekly"}})).await;
    gw.chat(&key, "echo", "hello").await;
    let r = gw
        .http
        .get(gw.url("/bursar/v1/whoami"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let v = body_json(r).await;
    let limits = v["limits"].as_array().unwrap();
    assert_eq!(limits[0]["rpm"]["limit"], 10);
    assert_eq!(limits[0]["rpm"]["remaining"], 9);
    assert_eq!(limits[0]["budget"]["period"], "weekly");
    assert!(limits[0]["budget"]["remaining_usd"].as_f64().unwrap() <= 2.0);
    assert_eq!(limits[1]["scope"], "user:carol");
    assert_eq!(limits[1]["tpm"]["limit"], 5000);
    assert_eq!(v["models"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn budget_threshold_sends_one_signed_webhook_and_an_audit_event() {
    use axum::routing::post;
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let sig = headers
                    .get("x-bursar-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                sink.lock().unwrap().push((sig, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mock = MockUpstream::start().await;
    let cfg = format!(
        "{}\n[alerts]\nbudget_threshold = 0.5\nwebhook_url = \"{hook}\"\nwebhook_secret = \"s3cret\"\n",
        standard_config(&mock.url())
    );
    let gw = Gateway::builder(&mock).config(cfg).start().await;
    let (id, key) = gw
        .create_key(json!({"name": "w", "budget": {"usd": 0.0001, "period": "monthly"}}))
        .await;
    for _ in 0..6 {
        gw.chat(&key, "echo", "spend a little of the budget").await;
    }
    gw.wait_audit("threshold", |r| {
        r["action"] == "budget.threshold" && r["detail"]["key_id"] == id.as_str()
    })
    .await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while seen.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no webhook");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "once per period: {calls:?}");
    let (sig, body) = &calls[0];
    let expected = bursar::util::hmac_sha256_hex(b"s3cret", body.as_bytes());
    assert_eq!(sig, &format!("sha256={expected}"));
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["type"], "budget.threshold");
}

#[tokio::test]
async fn a_malformed_body_cannot_slip_past_the_model_scope() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, key) = gw
        .create_key(json!({"name": "s", "models": ["echo"]}))
        .await;
    // A decision field of the wrong type must not make the model unreadable.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "gpt-4o", "stream": "yes", "messages": []}),
        )
        .await;
    assert_eq!(r.status(), 400);
    // A request whose model the gateway cannot read (multipart) is refused
    // for a model-limited key.
    let body =
        "--b\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n";
    let r = gw
        .http
        .post(gw.url("/v1/audio/transcriptions"))
        .bearer_auth(&key)
        .header("content-type", "multipart/form-data; boundary=b")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        mock.requests()
            .iter()
            .all(|r| !r.path.contains("chat") && !r.path.contains("audio")),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn models_command_lists_what_the_key_reaches_with_prices() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, key) = gw
        .create_key(json!({"name": "m", "models": ["echo", "gpt-4o-mini"]}))
        .await;
    let out = gw
        .cli(
            &["models", "--format", "json"],
            &[("BURSAR_API_KEY", &key)],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["echo", "gpt-4o-mini"]);
    let mini = &rows[1];
    assert_eq!(mini["input_per_mtok"], 0.15);
    assert_eq!(mini["output_per_mtok"], 0.6);
    let out = gw.cli(&["models"], &[], None).await;
    assert_eq!(out.code, 2, "no key is bad usage");
}

#[tokio::test]
async fn the_openapi_document_describes_the_admin_api() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (status, doc) = gw.admin("GET", "/admin/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/keys",
        "/keys/{id}/rotate",
        "/usage",
        "/audit/verify",
        "/users",
        "/teams/{name}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
}

#[tokio::test]
async fn a_child_keys_spend_counts_against_its_parents_budget() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (pid, parent) = gw
        .create_key(json!({"name": "p", "budget": {"usd": 0.0001, "period": "monthly"}}))
        .await;
    let r = gw
        .http
        .post(gw.url("/bursar/v1/keys"))
        .bearer_auth(&parent)
        .json(&json!({"name": "job"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let child = body_json(r).await["key"].as_str().unwrap().to_string();
    // The child spends until the budget (its own, inherited, and the
    // parent's) is gone. A refusal can also come from a reservation still
    // open (settlement is asynchronous): keep going until the parent's
    // settled spend has reached its budget.
    let parent_spent = || async {
        let r = gw
            .http
            .get(gw.url("/bursar/v1/whoami"))
            .bearer_auth(&parent)
            .send()
            .await
            .unwrap();
        let w = body_json(r).await;
        w["limits"][0]["budget"]["spent_usd"].as_f64().unwrap()
    };
    let mut refused = None;
    for _ in 0..100 {
        let (s, _, v) = gw.chat(&child, "echo", "spend the parent's money").await;
        match s {
            200 => {}
            429 if parent_spent().await >= 0.0001 => {
                refused = Some(v);
                break;
            }
            429 => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(
        refused.expect("the child hit a budget")["error"]["type"],
        "budget_exceeded"
    );
    // The parent's budget is spent too: the child's spend counted against it.
    let (s, _, v) = gw.chat(&parent, "echo", "anything left?").await;
    assert_eq!(s, 429, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&pid),
        "{v}"
    );
    // whoami of the child shows the parent's budget as a level.
    let r = gw
        .http
        .get(gw.url("/bursar/v1/whoami"))
        .bearer_auth(&child)
        .send()
        .await
        .unwrap();
    let w = body_json(r).await;
    let scopes: Vec<&str> = w["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["scope"].as_str().unwrap())
        .collect();
    assert!(
        scopes.contains(&format!("key:{pid}").as_str()),
        "{scopes:?}"
    );
}
