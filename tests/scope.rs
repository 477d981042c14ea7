//! A key's scope and the gateway's request limits: refused before anything
//! reaches the upstream, with the contract's status and error type.

mod common;

use common::*;
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "scope test"}]})
}

/// Assert an OpenAI-shaped refusal.
async fn assert_refused(resp: reqwest::Response, status: u16, kind: &str) -> Value {
    let got = resp.status().as_u16();
    assert!(resp.headers().contains_key("x-request-id"));
    let body = body_json(resp).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_outside_the_key_globs_is_denied() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw
        .create_key(json!({"name": "globs", "models": ["gpt-4o-mini", "claude-*"]}))
        .await;

    for model in ["gpt-4o", "echo", "summarizer", "gpt-4o-mini-2024-07-18"] {
        let resp = gw
            .post("/v1/chat/completions", &secret, &chat_body(model))
            .await;
        let body = assert_refused(resp, 403, "permission_denied").await;
        assert!(
            body["error"]["message"].as_str().unwrap().contains(model),
            "{body}"
        );
    }
    assert!(
        mock.requests().is_empty(),
        "a refused request reached the upstream"
    );

    // Inside the globs: allowed, on both surfaces.
    let resp = gw
        .post("/v1/chat/completions", &secret, &chat_body("gpt-4o-mini"))
        .await;
    assert_eq!(resp.status(), 200);
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &json!({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_outside_the_scope_is_denied() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw
        .create_key(json!({"name": "chat-only", "endpoints": ["chat"]}))
        .await;

    let resp = gw
        .post(
            "/v1/embeddings",
            &secret,
            &json!({"model": "text-embedding-3-small", "input": "x"}),
        )
        .await;
    assert_refused(resp, 403, "permission_denied").await;
    let resp = gw
        .post(
            "/v1/responses",
            &secret,
            &json!({"model": "gpt-4o-mini", "input": "x"}),
        )
        .await;
    assert_refused(resp, 403, "permission_denied").await;
    assert!(mock.requests().is_empty());

    let resp = gw
        .post("/v1/chat/completions", &secret, &chat_body("gpt-4o-mini"))
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outside_the_scope_is_denied() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw
        .create_key(json!({"name": "anthropic-only", "providers": ["anthropic"]}))
        .await;

    for model in ["gpt-4o-mini", "summarizer", "echo"] {
        let resp = gw
            .post("/v1/chat/completions", &secret, &chat_body(model))
            .await;
        assert_refused(resp, 403, "permission_denied").await;
    }
    // The native surface of another provider is refused too.
    let resp = gw
        .post(
            "/openai/v1/chat/completions",
            &secret,
            &chat_body("gpt-4o-mini"),
        )
        .await;
    assert_refused(resp, 403, "permission_denied").await;
    assert!(mock.requests().is_empty());

    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &json!({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_outside_the_allow_list_is_denied() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, far) = gw
        .create_key(json!({"name": "far", "ip_allow": ["10.0.0.0/8"]}))
        .await;
    let (_, near) = gw
        .create_key(json!({"name": "near", "ip_allow": ["10.0.0.0/8", "127.0.0.1/32"]}))
        .await;

    let resp = gw
        .post("/v1/chat/completions", &far, &chat_body("echo"))
        .await;
    assert_refused(resp, 403, "permission_denied").await;
    // X-Forwarded-For from an untrusted peer is not believed.
    let resp = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&far)
        .header("x-forwarded-for", "10.1.2.3")
        .json(&chat_body("echo"))
        .send()
        .await
        .unwrap();
    assert_refused(resp, 403, "permission_denied").await;

    let resp = gw
        .post("/v1/chat/completions", &near, &chat_body("echo"))
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_above_the_key_limit_is_blocked() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw
        .create_key(json!({"name": "small", "max_tokens_per_request": 100}))
        .await;

    for field in ["max_tokens", "max_completion_tokens"] {
        let mut body = chat_body("gpt-4o-mini");
        body[field] = json!(500);
        let resp = gw.post("/v1/chat/completions", &secret, &body).await;
        assert_refused(resp, 400, "request_blocked").await;
    }
    let resp = gw
        .post(
            "/v1/responses",
            &secret,
            &json!({"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 101}),
        )
        .await;
    assert_refused(resp, 400, "request_blocked").await;
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &json!({"model": "claude-haiku-4-5", "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body = body_json(resp).await;
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "request_blocked", "{body}");
    assert!(mock.requests().is_empty());

    // At the limit: allowed. Without a limit in the request: the key's limit is sent.
    let mut body = chat_body("gpt-4o-mini");
    body["max_tokens"] = json!(100);
    let resp = gw.post("/v1/chat/completions", &secret, &body).await;
    assert_eq!(resp.status(), 200);
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "no limit marker"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let up = mock_requests(&mock, "/v1/chat/completions")
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains("no limit marker"))
        .unwrap();
    let sent = up.json().unwrap();
    assert_eq!(sent["max_completion_tokens"], 100, "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_too_large() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder(&mock)
        .top_level("max_body_bytes = 2048")
        .start()
        .await;
    let (_, secret) = gw.open_key().await;

    let big = "x".repeat(8 * 1024);
    let resp = gw
        .post("/v1/chat/completions", &secret, &chat_body(&big))
        .await;
    assert_refused(resp, 413, "request_too_large").await;
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &json!({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": big}]}),
        )
        .await;
    assert_eq!(resp.status(), 413);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["type"], "request_too_large", "{body}");
    assert!(mock.requests().is_empty());

    let resp = gw
        .post("/v1/chat/completions", &secret, &chat_body("gpt-4o-mini"))
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_is_not_found() {
    // Only Anthropic configured: no provider serves an OpenAI model name.
    let mock = MockUpstream::start().await;
    let config = format!(
        "[providers.anthropic]\nbase_url = \"{}\"\napi_key = \"{ANTHROPIC_KEY}\"\n",
        mock.url()
    );
    let gw = Gateway::builder(&mock).config(config).start().await;
    let (_, secret) = gw.open_key().await;

    for model in ["gpt-4o-mini", "no-such-model-anywhere"] {
        let resp = gw
            .post("/v1/chat/completions", &secret, &chat_body(model))
            .await;
        assert_eq!(resp.status(), 404);
        let body = body_json(resp).await;
        assert!(
            body["error"]["message"].as_str().unwrap().contains(model),
            "{body}"
        );
    }
    // An unconfigured native surface answers only the echo model.
    let resp = gw
        .post(
            "/openai/v1/chat/completions",
            &secret,
            &chat_body("gpt-4o-mini"),
        )
        .await;
    assert_eq!(resp.status(), 404);
    let resp = gw
        .post("/openai/v1/chat/completions", &secret, &chat_body("echo"))
        .await;
    assert_eq!(resp.status(), 200);
    // An unknown surface.
    let resp = gw
        .post("/nowhere/v1/chat/completions", &secret, &chat_body("echo"))
        .await;
    assert_eq!(resp.status(), 404);
    assert!(mock.requests().is_empty());
}
