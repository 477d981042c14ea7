//! The client surfaces (OpenAI, native OpenAI, Anthropic, echo) forwarded to
//! the mock upstream through the real binary, with usage rows checked.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

/// The recorded request to `path` that carried `marker` in its body.
fn sent_upstream(mock: &MockUpstream, path: &str, marker: &str) -> mock_upstream::RecordedRequest {
    mock_requests(mock, path)
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains(marker))
        .unwrap_or_else(|| panic!("the mock never got a request to {path} with '{marker}'"))
}

/// The real OpenAI key went upstream as the only credential; the virtual key did not.
fn assert_openai_credentials(r: &mock_upstream::RecordedRequest, real: &str) {
    assert_eq!(
        header_values(r, "authorization"),
        vec![format!("Bearer {real}").as_str()]
    );
    for (k, v) in &r.headers {
        assert!(
            !v.contains("bsr_"),
            "the virtual key went upstream in {k}: {v}"
        );
    }
    assert!(header_values(r, "x-api-key").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_non_stream() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (key_id, secret) = gw
        .create_key(json!({"name": "chat", "user": "alice", "team": "t1", "purpose": "p1"}))
        .await;

    let text = "chat marker alpha";
    let (status, headers, body) = gw.chat(&secret, "gpt-4o-mini", text).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("mock: {text}")
    );
    let (p, c) = mock_chat_tokens(text);
    assert_eq!(body["usage"]["prompt_tokens"], p);
    assert_eq!(body["usage"]["completion_tokens"], c);

    let up = sent_upstream(&mock, "/v1/chat/completions", "chat marker alpha");
    assert_eq!(up.method, "POST");
    assert_openai_credentials(&up, OPENAI_KEY);
    assert_eq!(up.json().unwrap()["model"], "gpt-4o-mini");
    assert!(!mock_text(&mock).contains(&secret));

    // The answer is metered: request id, cost header, usage row.
    let rid = request_id(&headers);
    assert!(headers.contains_key("x-upstream-request-id"), "{headers:?}");
    let cost = cost_header(&headers).expect("x-bursar-cost-usd");
    let row = gw.wait_usage(&rid).await;
    assert_eq!(row["key_id"], key_id.as_str());
    assert_eq!(row["user"], "alice");
    assert_eq!(row["team"], "t1");
    assert_eq!(row["purpose"], "p1");
    assert_eq!(row["provider"], "openai");
    assert_eq!(row["model"], "gpt-4o-mini");
    assert_eq!(row["endpoint"], "chat");
    assert_eq!(row["status"], 200);
    assert_eq!(row["prompt_tokens"], p);
    assert_eq!(row["completion_tokens"], c);
    let expected = (p as f64 * 0.15 + c as f64 * 0.60) / 1e6;
    assert_close(row["cost_usd"].as_f64().unwrap(), expected, "cost_usd");
    assert!(
        (cost - expected).abs() < 1e-8,
        "header {cost} vs {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_stream_without_include_usage_is_still_metered() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    let text = "stream marker beta gamma";
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": text}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let rid = request_id(resp.headers());
    let raw = read_stream(resp).await;
    let events = sse_json(&raw);
    assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
    assert_eq!(chat_stream_text(&events), format!("mock: {text}"));
    // The usage-only chunk bursar asked for on the client's behalf is hidden.
    for e in &events {
        assert!(
            !e["choices"].as_array().is_some_and(|c| c.is_empty()),
            "the client saw the usage chunk it did not ask for: {e}"
        );
        assert!(e["usage"].is_null(), "usage leaked into a chunk: {e}");
    }

    // bursar asked the upstream for usage...
    let up = sent_upstream(&mock, "/v1/chat/completions", "stream marker beta");
    assert_eq!(up.json().unwrap()["stream_options"]["include_usage"], true);
    assert_openai_credentials(&up, OPENAI_KEY);

    // ...and metered it.
    let (p, c) = mock_chat_tokens(text);
    let row = gw.wait_usage(&rid).await;
    assert_eq!(row["status"], 200);
    assert_eq!(row["endpoint"], "chat");
    assert_eq!(row["prompt_tokens"], p);
    assert_eq!(row["completion_tokens"], c);
    assert!(row["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_stream_with_include_usage_passes_the_usage_chunk() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    let text = "usage chunk wanted";
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &json!({
                "model": "gpt-4o-mini", "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": text}]
            }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let events = sse_json(&read_stream(resp).await);
    let (p, c) = mock_chat_tokens(text);
    let usage_chunks: Vec<&Value> = events
        .iter()
        .filter(|e| e["choices"].as_array().is_some_and(|c| c.is_empty()))
        .collect();
    assert_eq!(usage_chunks.len(), 1, "{events:#?}");
    assert_eq!(usage_chunks[0]["usage"]["prompt_tokens"], p);
    assert_eq!(usage_chunks[0]["usage"]["completion_tokens"], c);
    assert_eq!(chat_stream_text(&events), format!("mock: {text}"));

    let row = gw.wait_usage(&rid).await;
    assert_eq!(row["prompt_tokens"], p);
    assert_eq!(row["completion_tokens"], c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_embeddings_and_responses() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    // Embeddings.
    let resp = gw
        .post(
            "/v1/embeddings",
            &secret,
            &json!({"model": "text-embedding-3-small", "input": ["one two three", "four five"]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let body = body_json(resp).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
    let row = gw.wait_usage(&request_id(&headers)).await;
    assert_eq!(row["endpoint"], "embeddings");
    assert_eq!(row["model"], "text-embedding-3-small");
    assert_eq!(row["prompt_tokens"], 5);
    assert_eq!(row["completion_tokens"], 0);
    assert_close(
        row["cost_usd"].as_f64().unwrap(),
        5.0 * 0.02 / 1e6,
        "embedding cost",
    );
    assert!(cost_header(&headers).is_some());
    assert_openai_credentials(
        &sent_upstream(&mock, "/v1/embeddings", "one two three"),
        OPENAI_KEY,
    );

    // Responses, plain.
    let resp = gw
        .post(
            "/v1/responses",
            &secret,
            &json!({"model": "gpt-4o-mini", "input": "responses marker here"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let body = body_json(resp).await;
    assert_eq!(body["object"], "response");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "mock: responses marker here"
    );
    let row = gw.wait_usage(&request_id(&headers)).await;
    assert_eq!(row["endpoint"], "responses");
    assert_eq!(row["prompt_tokens"], 3 + 7);
    assert_eq!(row["completion_tokens"], 4);
    assert!(cost_header(&headers).is_some());

    // Responses, streamed: usage read from response.completed.
    let resp = gw
        .post(
            "/v1/responses",
            &secret,
            &json!({"model": "gpt-4o-mini", "input": "streamed responses marker", "stream": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let events = sse_json(&read_stream(resp).await);
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    let row = gw.wait_usage(&rid).await;
    assert_eq!(row["prompt_tokens"], 3 + 7);
    assert_eq!(row["completion_tokens"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_only_what_the_key_may_use() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let ids = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let list = |key: String| {
        let gw = &gw;
        async move {
            let resp = gw
                .http
                .get(gw.url("/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            body_json(resp).await
        }
    };

    let (_, open) = gw.open_key().await;
    let all = ids(&list(open).await);
    for m in [
        "echo",
        "summarizer",
        "gpt-4o-mini",
        "gpt-4o",
        "claude-sonnet-4-5",
    ] {
        assert!(
            all.iter().any(|x| x == m),
            "an open key does not see {m}: {all:?}"
        );
    }

    let (_, narrow) = gw
        .create_key(json!({"name": "narrow", "models": ["gpt-4o-mini", "claude-*"]}))
        .await;
    let seen = ids(&list(narrow.clone()).await);
    assert!(seen.iter().any(|m| m == "gpt-4o-mini"), "{seen:?}");
    assert!(seen.iter().any(|m| m.starts_with("claude-")), "{seen:?}");
    for m in &seen {
        assert!(
            m == "gpt-4o-mini" || m.starts_with("claude-"),
            "a narrow key sees {m}: {seen:?}"
        );
    }

    let (_, onprem_only) = gw
        .create_key(json!({"name": "onprem", "providers": ["onprem"]}))
        .await;
    assert_eq!(ids(&list(onprem_only).await), ["summarizer"]);

    // One model by id: allowed or 404.
    let resp = gw
        .http
        .get(gw.url("/v1/models/gpt-4o-mini"))
        .bearer_auth(&narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await["id"], "gpt-4o-mini");
    let resp = gw
        .http
        .get(gw.url("/v1/models/gpt-4o"))
        .bearer_auth(&narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let resp = gw.http.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_alias_reaches_its_provider_with_the_upstream_name() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    let text = "alias marker delta";
    let (status, headers, body) = gw.chat(&secret, "summarizer", text).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("mock: {text}")
    );
    let up = sent_upstream(&mock, "/v1/chat/completions", "alias marker delta");
    assert_eq!(up.json().unwrap()["model"], "llama3.1:8b");
    assert_openai_credentials(&up, ONPREM_KEY);

    let (p, c) = mock_chat_tokens(text);
    let row = gw.wait_usage(&request_id(&headers)).await;
    assert_eq!(row["provider"], "onprem");
    assert_eq!(row["model"], "summarizer");
    assert_eq!(row["prompt_tokens"], p);
    assert_eq!(row["completion_tokens"], c);
    assert_close(
        row["cost_usd"].as_f64().unwrap(),
        (p + c) as f64 / 1e6,
        "configured price",
    );

    // `provider/model` on the OpenAI surface routes to that entry.
    let (status, headers, body) = gw.chat(&secret, "onprem/qwen2", "prefixed marker").await;
    assert_eq!(status, 200, "{body}");
    let up = sent_upstream(&mock, "/v1/chat/completions", "prefixed marker");
    assert_eq!(up.json().unwrap()["model"], "qwen2");
    assert_openai_credentials(&up, ONPREM_KEY);
    let row = gw.wait_usage(&request_id(&headers)).await;
    assert_eq!(row["provider"], "onprem");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_openai_path() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    let resp = gw
        .post(
            "/openai/v1/chat/completions",
            &secret,
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "native marker"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let body = body_json(resp).await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "mock: native marker"
    );
    let up = sent_upstream(&mock, "/v1/chat/completions", "native marker");
    assert_openai_credentials(&up, OPENAI_KEY);
    let row = gw.wait_usage(&request_id(&headers)).await;
    assert_eq!(row["provider"], "openai");
    assert_eq!(row["endpoint"], "chat");
    assert_eq!(row["prompt_tokens"], 2 + 7);

    // A non-metered path passes through too (model listing of the provider).
    let resp = gw
        .http
        .get(gw.url("/openai/v1/models"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = body_json(resp).await;
    assert!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-4o-mini"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_plain_and_stream() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (key_id, secret) = gw.open_key().await;
    let body = |text: &str, stream: bool| {
        json!({
            "model": "claude-haiku-4-5", "max_tokens": 100, "stream": stream,
            "system": "be brief",
            "messages": [{"role": "user", "content": text}]
        })
    };

    // Plain, with the client's anthropic-version.
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &body("anthropic plain marker", false),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let msg = body_json(resp).await;
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["content"][0]["text"], "mock: anthropic plain marker");
    let up = sent_upstream(&mock, "/v1/messages", "anthropic plain marker");
    assert_eq!(header_values(&up, "x-api-key"), vec![ANTHROPIC_KEY]);
    assert_eq!(header_values(&up, "anthropic-version"), vec!["2023-06-01"]);
    assert!(header_values(&up, "authorization").is_empty());
    // system (2 words) + message (3 words) + 7
    let (p, c) = (2 + 3 + 7, 4);
    assert_eq!(msg["usage"]["input_tokens"], p);
    let row = gw.wait_usage(&request_id(&headers)).await;
    assert_eq!(row["key_id"], key_id.as_str());
    assert_eq!(row["provider"], "anthropic");
    assert_eq!(row["model"], "claude-haiku-4-5");
    assert_eq!(row["endpoint"], "messages");
    assert_eq!(row["prompt_tokens"], p);
    assert_eq!(row["completion_tokens"], c);
    assert_close(
        row["cost_usd"].as_f64().unwrap(),
        (p as f64 * 1.0 + c as f64 * 5.0) / 1e6,
        "claude cost",
    );
    let cost = cost_header(&headers).expect("cost header");
    assert!((cost - row["cost_usd"].as_f64().unwrap()).abs() < 1e-8);

    // Without the client's anthropic-version bursar sets one.
    let resp = gw
        .http
        .post(gw.url("/anthropic/v1/messages"))
        .header("x-api-key", &secret)
        .json(&body("no version marker", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let up = sent_upstream(&mock, "/v1/messages", "no version marker");
    assert_eq!(header_values(&up, "anthropic-version").len(), 1);
    assert_eq!(header_values(&up, "x-api-key"), vec![ANTHROPIC_KEY]);

    // Streamed.
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &body("anthropic stream marker", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let raw = read_stream(resp).await;
    let sse = parse_sse(&raw);
    assert_eq!(sse.first().unwrap().0.as_deref(), Some("message_start"));
    assert_eq!(sse.last().unwrap().0.as_deref(), Some("message_stop"));
    let events = sse_json(&raw);
    assert_eq!(
        anthropic_stream_text(&events),
        "mock: anthropic stream marker"
    );
    let row = gw.wait_usage(&rid).await;
    assert_eq!(row["status"], 200);
    assert_eq!(row["prompt_tokens"], p);
    assert_eq!(row["completion_tokens"], c);

    assert!(
        !mock_text(&mock).contains("bsr_"),
        "a virtual key went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_errors_are_anthropic_shaped() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let msg = json!({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});

    for cred in [
        None,
        Some("bsr_not_a_key"),
        Some("sk-ant-something-else-entirely"),
    ] {
        let mut rb = gw
            .http
            .post(gw.url("/anthropic/v1/messages"))
            .header("anthropic-version", "2023-06-01");
        if let Some(c) = cred {
            rb = rb.header("x-api-key", c);
        }
        let resp = rb.json(&msg).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().contains_key("x-request-id"));
        let body = body_json(resp).await;
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], "invalid_api_key", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }

    // Scope refusals too.
    let (_, secret) = gw
        .create_key(json!({"name": "gpt-only", "models": ["gpt-4o-mini"]}))
        .await;
    let resp = gw
        .post_anthropic("/anthropic/v1/messages", &secret, &msg)
        .await;
    assert_eq!(resp.status(), 403);
    let body = body_json(resp).await;
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "permission_denied", "{body}");

    // Nothing reached the upstream.
    assert!(mock_requests(&mock, "/v1/messages").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_count_tokens() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages/count_tokens",
            &secret,
            &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "count these four words"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body = body_json(resp).await;
    assert_eq!(body["input_tokens"], 4 + 7);
    let up = sent_upstream(&mock, "/v1/messages/count_tokens", "count these four words");
    assert_eq!(header_values(&up, "x-api-key"), vec![ANTHROPIC_KEY]);

    // The echo model counts too.
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages/count_tokens",
            &secret,
            &json!({"model": "echo", "messages": [{"role": "user", "content": "count me"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body = body_json(resp).await;
    assert!(body["input_tokens"].as_u64().unwrap() > 0, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_is_not_billed() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;
    for model in ["claude-sonnet-4-5", "echo"] {
        let resp = gw
            .post_anthropic(
                "/anthropic/v1/messages/count_tokens",
                &secret,
                &json!({"model": model, "messages": [{"role": "user", "content": "count these words please"}]}),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let rid = request_id(resp.headers());
        let row = gw.wait_usage(&rid).await;
        assert_eq!(row["cost_usd"].as_f64(), Some(0.0), "{model}: {row}");
        assert_eq!(row["completion_tokens"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_model_on_both_surfaces() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;
    let mut request_ids = Vec::new();

    // OpenAI, plain.
    let (status, headers, body) = gw.chat(&secret, "echo", "echo me plain").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "echo me plain");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(cost_header(&headers).unwrap() > 0.0);
    request_ids.push((request_id(&headers), "chat"));

    // OpenAI, streamed.
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": "echo me streamed"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    request_ids.push((request_id(resp.headers()), "chat"));
    let raw = read_stream(resp).await;
    assert_eq!(chat_stream_text(&sse_json(&raw)), "echo me streamed");
    assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");

    // Anthropic, plain.
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &json!({"model": "echo", "max_tokens": 100, "messages": [{"role": "user", "content": "echo anthropic plain"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    request_ids.push((request_id(resp.headers()), "messages"));
    let msg = body_json(resp).await;
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["content"][0]["text"], "echo anthropic plain");

    // Anthropic, streamed.
    let resp = gw
        .post_anthropic(
            "/anthropic/v1/messages",
            &secret,
            &json!({"model": "echo", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "echo anthropic streamed"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    request_ids.push((request_id(resp.headers()), "messages"));
    let events = sse_json(&read_stream(resp).await);
    assert_eq!(anthropic_stream_text(&events), "echo anthropic streamed");

    for (rid, endpoint) in request_ids {
        let row = gw.wait_usage(&rid).await;
        assert_eq!(row["provider"], "echo", "{row}");
        assert_eq!(row["model"], "echo");
        assert_eq!(row["endpoint"], endpoint);
        assert_eq!(row["status"], 200);
        assert!(row["prompt_tokens"].as_i64().unwrap() > 0, "{row}");
        assert!(row["completion_tokens"].as_i64().unwrap() > 0, "{row}");
        assert!(row["cost_usd"].as_f64().unwrap() > 0.0, "{row}");
    }
    // The echo model never calls the upstream.
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_is_not_buffered() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    // mock-slow: 200 ms between events; 6 words → 10 events → about 1.8 s.
    let started = Instant::now();
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &json!({"model": "mock-slow", "stream": true, "messages": [{"role": "user", "content": "one two three four five six"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut first_chunk_at = None;
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if first_chunk_at.is_none() && !chunk.is_empty() {
            first_chunk_at = Some(started.elapsed());
        }
        text.extend_from_slice(&chunk);
    }
    let ended_at = started.elapsed();
    let first = first_chunk_at.expect("no chunk");
    assert!(
        ended_at.saturating_sub(first) >= Duration::from_millis(800),
        "the first chunk came at {first:?}, the end at {ended_at:?}: the stream was buffered"
    );
    let text = String::from_utf8(text).unwrap();
    assert_eq!(
        chat_stream_text(&sse_json(&text)),
        "mock: one two three four five six"
    );
}
