use super::*;
use std::time::Instant;

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

async fn post(m: &MockUpstream, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", m.url()))
        .header("authorization", "Bearer sk-test-secret-123")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn post_anthropic(m: &MockUpstream, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", m.url()))
        .header("x-api-key", "sk-ant-secret-456")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Parse an SSE body into (event name, data) pairs.
fn parse_sse(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (event, data)
        })
        .collect()
}

#[test]
fn word_chunks_keep_whitespace() {
    assert_eq!(
        word_chunks("mock: hello world"),
        vec!["mock: ", "hello ", "world"]
    );
    assert_eq!(word_chunks("a  b\n"), vec!["a  ", "b\n"]);
    assert_eq!(word_chunks(" x"), vec![" x"]);
    assert!(word_chunks("").is_empty());
}

#[test]
fn base64_matches_known_vectors() {
    assert_eq!(base64_encode(b""), "");
    assert_eq!(base64_encode(b"f"), "Zg==");
    assert_eq!(base64_encode(b"fo"), "Zm8=");
    assert_eq!(base64_encode(b"foo"), "Zm9v");
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
}

#[test]
fn ring_buffer_is_bounded() {
    let st = MockState::new();
    for i in 0..(MAX_RECORDED + 5) {
        st.record(RecordedRequest {
            method: "GET".into(),
            path: format!("/{i}"),
            query: None,
            headers: vec![],
            body: Bytes::new(),
        });
    }
    let r = st.requests();
    assert_eq!(r.len(), MAX_RECORDED);
    assert_eq!(r[0].path, "/5");
    assert_eq!(r[MAX_RECORDED - 1].path, format!("/{}", MAX_RECORDED + 4));
    st.clear();
    assert!(st.requests().is_empty());
}

#[tokio::test]
async fn chat_non_stream_shape_and_recording() {
    let m = MockUpstream::start().await;
    assert!(m.url().starts_with("http://127.0.0.1:"));
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there world"}]}
        ]
    });
    let resp = post(&m, "/v1/chat/completions?x=1", body.clone()).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "mock: hello there world");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    // 2 + 3 words + 7
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 16);

    // Without the /v1 prefix too.
    let resp = post(&m, "/chat/completions", body.clone()).await;
    assert_eq!(resp.status(), 200);

    let reqs = m.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].query.as_deref(), Some("x=1"));
    assert_eq!(
        reqs[0].header("Authorization"),
        Some("Bearer sk-test-secret-123")
    );
    assert!(reqs[0].headers.iter().all(|(k, _)| *k == k.to_lowercase()));
    assert_eq!(reqs[0].json().unwrap(), body);
    assert_eq!(reqs[1].path, "/chat/completions");
    assert_eq!(reqs[1].query, None);
    m.clear();
    assert!(m.requests().is_empty());
}

#[tokio::test]
async fn chat_stream_with_include_usage() {
    let m = MockUpstream::start().await;
    let resp = post(
        &m,
        "/v1/chat/completions",
        json!({
            "model": "gpt-4o",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "one two three"}]
        }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(e, d)| {
            assert!(e.is_none());
            serde_json::from_str(d).unwrap()
        })
        .collect();
    // role chunk + 4 words ("mock:", "one", "two", "three") + finish + usage
    assert_eq!(chunks.len(), 7);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o");
        assert!(c.as_object().unwrap().contains_key("usage"));
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let content: String = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, "mock: one two three");
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "mock: ");
    assert_eq!(chunks[4]["choices"][0]["delta"]["content"], "three");
    for c in &chunks[..5] {
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(c["usage"], Value::Null);
    }
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"]["prompt_tokens"], 10);
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);
    assert_eq!(chunks[6]["usage"]["total_tokens"], 14);

    // Without include_usage: no usage key, no usage chunk.
    let resp = post(
        &m,
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let events = parse_sse(&resp.text().await.unwrap());
    assert_eq!(events.len(), 1 + 2 + 1 + 1);
    let last: Value = serde_json::from_str(&events[3].1).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(!last.as_object().unwrap().contains_key("usage"));
}

#[tokio::test]
async fn anthropic_stream_event_order() {
    let m = MockUpstream::start().await;
    let resp = post_anthropic(
        &m,
        "/v1/messages",
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "stream": true,
            "system": "you are terse",
            "messages": [{"role": "user", "content": "say hi"}]
        }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = parse_sse(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        vec![
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for ((name, _), d) in events.iter().zip(&data) {
        assert_eq!(d["type"], name.as_deref().unwrap());
    }
    let start = &data[0]["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["model"], "claude-sonnet-4-5");
    assert_eq!(start["usage"]["input_tokens"], 3 + 2 + 7);
    assert_eq!(start["usage"]["output_tokens"], 1);
    let text: String = data[3..6]
        .iter()
        .map(|d| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "mock: say hi");
    assert_eq!(data[7]["delta"]["stop_reason"], "end_turn");
    assert_eq!(data[7]["usage"]["output_tokens"], 3);

    // Non-streaming, and count_tokens.
    let v: Value = post_anthropic(
        &m,
        "/v1/messages",
        json!({"model": "claude-haiku-4-5", "max_tokens": 10,
               "system": [{"type": "text", "text": "sys prompt"}],
               "messages": [{"role": "user", "content": [{"type": "text", "text": "a b c"}]}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "mock: a b c");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 2 + 3 + 7);
    assert_eq!(v["usage"]["output_tokens"], 4);
    let v: Value = post_anthropic(
        &m,
        "/v1/messages/count_tokens",
        json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "a b c"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v, json!({"input_tokens": 10}));
}

#[tokio::test]
async fn error_triggers() {
    let m = MockUpstream::start().await;
    let msgs = json!([{"role": "user", "content": "hi"}]);

    // 400, OpenAI shape.
    let r = post(
        &m,
        "/v1/chat/completions",
        json!({"model": "mock-error-400", "messages": msgs}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"error": {"message": "bad request from mock", "type": "invalid_request_error", "param": null, "code": null}})
    );
    // 400, Anthropic shape.
    let r = post_anthropic(
        &m,
        "/v1/messages",
        json!({"model": "mock-error-400", "max_tokens": 5, "messages": msgs}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad request from mock"}})
    );

    // 429 with retry-after.
    let r = post(
        &m,
        "/v1/chat/completions",
        json!({"model": "mock-error-429", "messages": msgs}),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let r = post_anthropic(
        &m,
        "/v1/messages",
        json!({"model": "mock-error-429", "max_tokens": 5, "messages": msgs}),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");

    // 500 echoing the credential.
    let r = post(
        &m,
        "/v1/responses",
        json!({"model": "mock-error-500", "input": "x"}),
    )
    .await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer sk-test-secret-123")
    );
    let r = post_anthropic(
        &m,
        "/v1/messages",
        json!({"model": "mock-error-500", "max_tokens": 5, "messages": msgs}),
    )
    .await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sk-ant-secret-456")
    );

    // 401 without any credential.
    let r = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .json(&json!({"model": "gpt-4o", "messages": msgs}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let r = client()
        .post(format!("{}/v1/messages", m.url()))
        .json(&json!({"model": "claude-sonnet-4-5", "messages": msgs}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");

    // 404 under /v1.
    let r = post(&m, "/v1/nope", json!({})).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Invalid URL (POST /v1/nope)");

    // Every request was recorded.
    assert_eq!(m.requests().len(), 9);
}

#[tokio::test]
async fn echo_key_non_stream_and_stream() {
    let m = MockUpstream::start().await;
    let v: Value = post(
        &m,
        "/v1/chat/completions",
        json!({"model": "mock-echo-key", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Bearer sk-test-secret-123"
    );
    assert_eq!(v["model"], "mock-echo-key");

    let r = post_anthropic(
        &m,
        "/v1/messages",
        json!({"model": "mock-echo-key", "max_tokens": 5, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let text = r.text().await.unwrap();
    let joined: String = parse_sse(&text)
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(joined, "sk-ant-secret-456");
}

#[tokio::test]
async fn slow_streams_and_hang() {
    let m = MockUpstream::start().await;
    let t0 = Instant::now();
    let mut r = post(
        &m,
        "/v1/chat/completions",
        json!({"model": "mock-slow", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let first = r.chunk().await.unwrap().unwrap();
    let t_first = t0.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let total = t0.elapsed();
    // 5 events: 4 delays of 200 ms after the first.
    assert!(
        t_first < Duration::from_millis(150),
        "first chunk after {t_first:?}"
    );
    assert!(total >= Duration::from_millis(780), "total {total:?}");
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));

    let t0 = Instant::now();
    let r = post(
        &m,
        "/v1/messages",
        json!({"model": "mock-slow", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(t0.elapsed() >= Duration::from_millis(990));

    let r = client()
        .post(format!("{}/v1/chat/completions", m.url()))
        .header("authorization", "Bearer x")
        .timeout(Duration::from_millis(300))
        .json(&json!({"model": "mock-hang", "messages": []}))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let m = MockUpstream::start().await;
    let v: Value = post(
        &m,
        "/v1/embeddings",
        json!({"model": "text-embedding-3-small", "input": ["hello world", "foo"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    let floats: Vec<f32> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats.len(), 8);

    let v: Value = post(
        &m,
        "/embeddings",
        json!({"model": "text-embedding-3-small", "input": "hello world", "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let b64 = v["data"][0]["embedding"].as_str().unwrap();
    let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
    assert_eq!(b64, base64_encode(&bytes));
    assert_eq!(v["usage"]["prompt_tokens"], 2);
}

#[tokio::test]
async fn responses_non_stream_and_stream() {
    let m = MockUpstream::start().await;
    let v: Value = post(
        &m,
        "/v1/responses",
        json!({"model": "gpt-4o-mini", "input": "tell me more"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["output"][0]["content"][0]["text"], "mock: tell me more");
    assert_eq!(v["usage"]["input_tokens"], 10);
    assert_eq!(v["usage"]["output_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 14);
    assert_eq!(v["parallel_tool_calls"], true);

    let r = post(
        &m,
        "/v1/responses",
        json!({"model": "gpt-4o-mini", "stream": true, "instructions": "be nice",
               "input": [{"role": "user", "content": [{"type": "input_text", "text": "yo"}]}]}),
    )
    .await;
    let events = parse_sse(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (i, (name, d)) in events.iter().enumerate() {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["type"], name.as_deref().unwrap());
        assert_eq!(v["sequence_number"], i);
    }
    let done: Value = serde_json::from_str(&events[9].1).unwrap();
    assert_eq!(done["response"]["usage"]["input_tokens"], 1 + 2 + 7);
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        "mock: yo"
    );
}

#[tokio::test]
async fn models_and_control_endpoints() {
    let m = MockUpstream::start().await;
    let v: Value = client()
        .get(format!("{}/v1/models", m.url()))
        .header("authorization", "Bearer x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, OPENAI_MODELS);

    let v: Value = client()
        .get(format!("{}/v1/models", m.url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["has_more"], false);
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["first_id"], "claude-sonnet-4-5");

    // Control endpoints: listed as JSON, not themselves recorded.
    let list: Value = client()
        .get(format!("{}/__mock/requests", m.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["method"], "GET");
    assert_eq!(list[1]["path"], "/v1/models");
    assert_eq!(list[1]["headers"]["x-api-key"], "k");
    assert_eq!(list[1]["body"], "");
    let r = client()
        .post(format!("{}/__mock/clear", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(m.requests().is_empty());
}

#[tokio::test]
async fn drop_stops_server_and_cuts_connections() {
    let m = MockUpstream::start().await;
    let url = format!("{}/v1/models", m.url());
    let c = client();
    let r = c
        .get(&url)
        .header("authorization", "Bearer x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    // An in-flight request to mock-hang is cut when the mock is dropped.
    let hang = tokio::spawn({
        let c = c.clone();
        let url = format!("{}/v1/chat/completions", m.url());
        async move {
            c.post(url)
                .header("authorization", "Bearer x")
                .json(&json!({"model": "mock-hang", "messages": []}))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(m);
    let hang = tokio::time::timeout(Duration::from_secs(5), hang)
        .await
        .expect("hanging request not cut")
        .unwrap();
    assert!(hang.is_err());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        c.get(&url)
            .header("authorization", "Bearer x")
            .send()
            .await
            .is_err()
    );
}
