//! Real provider keys and virtual keys never leak: not in answers, headers,
//! streams, error bodies or the gateway's log. Upstream errors pass through
//! (scrubbed), and every response carries the contract's headers.

mod common;

use common::*;
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

fn chat_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "secrets test"}]})
}

fn anthropic_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": "secrets test"}]})
}

/// Status, all headers as text, and the body text of a response.
async fn read_all(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let headers = headers_text(resp.headers());
    (status, headers, read_stream(resp).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_500_becomes_a_scrubbed_502() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    // OpenAI surface.
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &chat_body("mock-error-500", false),
        )
        .await;
    assert!(resp.headers().contains_key("x-request-id"));
    let (status, headers, body) = read_all(resp).await;
    assert_eq!(status, 502, "{body}");
    assert_no_real_key(&headers, "502 headers");
    assert_no_real_key(&body, "502 body");
    assert!(
        !body.contains(&secret),
        "the virtual key is in the error: {body}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "upstream_error", "{v}");
    assert!(
        body.contains("[REDACTED]"),
        "the upstream's error does not pass through scrubbed: {body}"
    );

    // Anthropic surface: its own error shape, scrubbed the same way.
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &anthropic_body("mock-error-500", false),
        )
        .await;
    let (status, headers, body) = read_all(resp).await;
    assert_eq!(status, 502, "{body}");
    assert_no_real_key(&headers, "502 headers");
    assert_no_real_key(&body, "502 body");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "upstream_error", "{v}");
    assert!(body.contains("[REDACTED]"), "{body}");

    // An aliased on-prem model's key too.
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &chat_body("onprem/mock-error-500", false),
        )
        .await;
    let (status, _, body) = read_all(resp).await;
    assert_eq!(status, 502, "{body}");
    assert_no_real_key(&body, "502 body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_credentials_are_scrubbed_plain_and_streamed() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    let cases = [
        (
            "/v1/chat/completions",
            chat_body("mock-echo-key", false),
            false,
        ),
        (
            "/v1/chat/completions",
            chat_body("mock-echo-key", true),
            false,
        ),
        (
            "/v1/chat/completions",
            chat_body("onprem/mock-echo-key", false),
            false,
        ),
        (
            "/v1/chat/completions",
            chat_body("onprem/mock-echo-key", true),
            false,
        ),
        (
            "/v1/responses",
            json!({"model": "mock-echo-key", "input": "x"}),
            false,
        ),
        (
            "/v1/responses",
            json!({"model": "mock-echo-key", "input": "x", "stream": true}),
            false,
        ),
        (
            "/anthropic/v1/messages",
            anthropic_body("mock-echo-key", false),
            true,
        ),
        (
            "/anthropic/v1/messages",
            anthropic_body("mock-echo-key", true),
            true,
        ),
    ];
    for (path, body, anthropic) in cases {
        let resp = if anthropic {
            gw.post_anthropic(path, &secret, &body).await
        } else {
            gw.post(path, &secret, &body).await
        };
        let (status, headers, text) = read_all(resp).await;
        assert_eq!(status, 200, "{path} {body}: {text}");
        assert_no_real_key(&headers, "echo-key headers");
        assert_no_real_key(&text, "echo-key answer");
        assert!(!text.contains(&secret), "the virtual key came back: {text}");
        assert!(
            text.contains("[REDACTED]"),
            "{path} {body}: the echoed credential is not redacted: {text}"
        );
    }
    // The mock did get the real keys (so the scrubbing was needed).
    let all = mock_text(&mock);
    assert!(all.contains(OPENAI_KEY) && all.contains(ANTHROPIC_KEY) && all.contains(ONPREM_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_4xx_passes_through() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    // 429 with the upstream's retry-after.
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &chat_body("mock-error-429", false),
        )
        .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let rid = request_id(resp.headers());
    let body = body_json(resp).await;
    assert_eq!(
        body["error"]["message"], "rate limit exceeded (mock)",
        "{body}"
    );
    let row = gw.wait_usage(&rid).await;
    assert_eq!(row["status"], 429);

    // 400 with the upstream's body.
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &chat_body("mock-error-400", false),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let rid = request_id(resp.headers());
    let body = body_json(resp).await;
    assert_eq!(body["error"]["message"], "bad request from mock", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let row = gw.wait_usage(&rid).await;
    assert_eq!(row["status"], 400);
    assert_eq!(row["cost_usd"].as_f64(), Some(0.0));

    // And on the Anthropic surface, in Anthropic's shape.
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &anthropic_body("mock-error-429", false),
        )
        .await;
    assert_eq!(resp.status(), 429);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &anthropic_body("mock-error-400", false),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_never_holds_a_secret() {
    let mock = MockUpstream::start().await;
    // The most talkative log level bursar's own filter offers.
    let gw = Gateway::builder(&mock)
        .env("BURSAR_LOG", "debug")
        .start()
        .await;
    let (id, secret) = gw.open_key().await;
    let (_, revoked) = gw.open_key().await;

    for model in [
        "gpt-4o-mini",
        "mock-error-500",
        "mock-echo-key",
        "mock-error-400",
        "echo",
        "summarizer",
    ] {
        for stream in [false, true] {
            let resp = gw
                .post("/v1/chat/completions", &secret, &chat_body(model, stream))
                .await;
            read_all(resp).await;
        }
        let resp = gw
            .post_anthropic(
                "/anthropic/v1/messages",
                &secret,
                &anthropic_body(model, false),
            )
            .await;
        read_all(resp).await;
    }
    // Refused credentials: a revoked key, a rotated-out key, garbage.
    let revoked_id = gw.admin("GET", "/admin/v1/keys", None).await.1["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] != id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = gw
        .admin("POST", &format!("/admin/v1/keys/{revoked_id}/revoke"), None)
        .await;
    assert_eq!(status, 200);
    let (status, v) = gw
        .admin("POST", &format!("/admin/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(status, 200);
    let rotated_to = v["key"].as_str().unwrap().to_string();
    for k in [secret.as_str(), revoked.as_str(), "bsr_garbage", OPENAI_KEY] {
        let (s, _, _) = gw.chat(k, "gpt-4o-mini", "refused").await;
        assert_eq!(s, 401);
    }
    // The rotated-to secret works (and is not logged either).
    let (s, _, _) = gw.chat(&rotated_to, "gpt-4o-mini", "one more").await;
    assert_eq!(s, 200);
    let (s, h, _) = gw.chat(&rotated_to, "echo", "flush").await;
    assert_eq!(s, 200);
    gw.wait_usage(&request_id(&h)).await;

    let log = gw.log();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "BURSAR_LOG=debug had no effect:\n{log}"
    );
    assert_no_real_key(&log, "the gateway's log");
    for k in [&secret, &revoked, &rotated_to] {
        assert!(!log.contains(k.as_str()), "the log holds a virtual key");
    }
    assert!(!log.contains(ADMIN_KEY), "the log holds the admin key");
    // Nor any other well-formed virtual key.
    for (i, _) in log.match_indices("bsr_") {
        if let Some(candidate) = log.get(i..i + 40) {
            assert!(
                !is_key_format(candidate),
                "the log holds a virtual key: {candidate}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_a_502_without_secrets() {
    let mock = MockUpstream::start().await;
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "{}\n[providers.gone]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{dead}/v1\"\napi_key = \"sk-gone-real-secret-123456\"\n",
        standard_config(&mock.url())
    );
    let gw = Gateway::builder(&mock).config(config).start().await;
    let (_, secret) = gw.open_key().await;
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &chat_body("gone/some-model", false),
        )
        .await;
    let (status, headers, body) = read_all(resp).await;
    assert_eq!(status, 502, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "upstream_error");
    assert!(
        !body.contains("sk-gone-real-secret-123456")
            && !headers.contains("sk-gone-real-secret-123456")
    );
    assert!(!gw.log().contains("sk-gone-real-secret-123456"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_responses_carry_request_id_and_cost() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;
    let (_, narrow) = gw
        .create_key(json!({"name": "narrow", "models": ["echo"]}))
        .await;

    // Metered answers: x-request-id and x-bursar-cost-usd, matching the usage row.
    let metered = [
        (
            "/v1/chat/completions",
            chat_body("gpt-4o-mini", false),
            false,
        ),
        ("/v1/chat/completions", chat_body("echo", false), false),
        ("/v1/chat/completions", chat_body("echo", true), false),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "a b"}),
            false,
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "a b"}),
            false,
        ),
        (
            "/openai/v1/chat/completions",
            chat_body("gpt-4o-mini", false),
            false,
        ),
        (
            "/anthropic/v1/messages",
            anthropic_body("claude-haiku-4-5", false),
            true,
        ),
        (
            "/anthropic/v1/messages",
            anthropic_body("echo", false),
            true,
        ),
    ];
    let mut ids = std::collections::HashSet::new();
    for (path, body, anthropic) in metered {
        let resp = if anthropic {
            gw.post_anthropic(path, &secret, &body).await
        } else {
            gw.post(path, &secret, &body).await
        };
        assert_eq!(resp.status(), 200, "{path} {body}");
        let rid = request_id(resp.headers());
        assert!(ids.insert(rid.clone()), "request ids repeat");
        let cost = cost_header(resp.headers())
            .unwrap_or_else(|| panic!("{path} {body}: no x-bursar-cost-usd"));
        read_stream(resp).await;
        let row = gw.wait_usage(&rid).await;
        assert!(
            (row["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-8,
            "{path}: header {cost} vs row {row}"
        );
    }

    // Refusals and errors still carry a request id.
    let refusals = [
        gw.post(
            "/v1/chat/completions",
            "bsr_nope",
            &chat_body("echo", false),
        )
        .await,
        gw.http
            .post(gw.url("/v1/chat/completions"))
            .json(&chat_body("echo", false))
            .send()
            .await
            .unwrap(),
        gw.post("/v1/chat/completions", &narrow, &chat_body("gpt-4o", false))
            .await,
        gw.post(
            "/v1/chat/completions",
            &secret,
            &chat_body("mock-error-500", false),
        )
        .await,
        gw.post(
            "/v1/chat/completions",
            &secret,
            &chat_body("mock-error-429", false),
        )
        .await,
        gw.post("/no/such/surface", &secret, &chat_body("echo", false))
            .await,
        gw.http
            .get(gw.url("/v1/models"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap(),
    ];
    for resp in refusals {
        let status = resp.status();
        let rid = request_id(resp.headers());
        assert!(rid.len() > 8, "{status}: {rid}");
        assert!(ids.insert(rid), "request ids repeat");
        if !status.is_success() {
            assert!(
                !resp.headers().contains_key("x-bursar-cost-usd"),
                "{status} carries a cost"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;
    let responses = [
        (
            "admin list",
            gw.http
                .get(gw.url("/admin/v1/keys"))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap(),
        ),
        (
            "admin 401",
            gw.http.get(gw.url("/admin/v1/keys")).send().await.unwrap(),
        ),
        (
            "admin 400",
            gw.http
                .post(gw.url("/admin/v1/keys"))
                .bearer_auth(ADMIN_KEY)
                .json(&json!({}))
                .send()
                .await
                .unwrap(),
        ),
        (
            "whoami",
            gw.http
                .get(gw.url("/bursar/v1/whoami"))
                .bearer_auth(&secret)
                .send()
                .await
                .unwrap(),
        ),
        (
            "whoami 401",
            gw.http
                .get(gw.url("/bursar/v1/whoami"))
                .send()
                .await
                .unwrap(),
        ),
        (
            "healthz",
            gw.http.get(gw.url("/healthz")).send().await.unwrap(),
        ),
    ];
    let missing: Vec<&str> = responses
        .iter()
        .filter(|(_, r)| !r.headers().contains_key("x-request-id"))
        .map(|(what, _)| *what)
        .collect();
    assert!(missing.is_empty(), "no x-request-id on: {missing:?}");
}
