//! The built-in `echo` model on the Cohere (v2 and v1 chat) and Gemini
//! surfaces, plain and streamed, through the real binary: with the providers
//! configured (echo still never goes upstream) and with no providers at all.

mod common;

use common::*;
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

/// Cohere and Gemini pointed at the mock, so that a leak upstream would show.
fn native_config(mock_url: &str) -> String {
    format!(
        r#"[providers.cohere]
base_url = "{mock_url}"
api_key = "co-real-cohere-secret-123456"

[providers.gemini]
base_url = "{mock_url}"
api_key = "AIza-real-gemini-secret-123456"
"#
    )
}

async fn post_gemini(gw: &Gateway, path: &str, key: &str, body: &Value) -> reqwest::Response {
    gw.http
        .post(gw.url(path))
        .header("x-goog-api-key", key)
        .json(body)
        .send()
        .await
        .expect("request")
}

/// Echo's fictitious price: $1 / $2 per million tokens.
fn echo_cost(prompt: i64, completion: i64) -> f64 {
    (prompt as f64 + 2.0 * completion as f64) / 1_000_000.0
}

/// The usage row of `rid` names echo and carries these tokens and their cost.
async fn check_row(gw: &Gateway, rid: &str, endpoint: &str, prompt: i64, completion: i64) {
    let row = gw.wait_usage(rid).await;
    assert_eq!(row["provider"], "echo", "{row}");
    assert_eq!(row["model"], "echo", "{row}");
    assert_eq!(row["endpoint"], endpoint, "{row}");
    assert_eq!(row["status"], 200, "{row}");
    assert_eq!(row["prompt_tokens"], prompt, "{row}");
    assert_eq!(row["completion_tokens"], completion, "{row}");
    let cost = row["cost_usd"].as_f64().unwrap();
    assert_close(cost, echo_cost(prompt, completion), "echo cost");
    if prompt + completion > 0 {
        assert!(cost > 0.0, "{row}");
    }
}

fn as_i64(v: &Value) -> i64 {
    v.as_f64()
        .map(|f| f as i64)
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Every echo call on both surfaces, with its usage row.
async fn exercise(gw: &Gateway) {
    let (_, key) = gw.open_key().await;

    // Cohere v2, plain.
    let text = "echo cohere v2 plain";
    let resp = gw
        .post(
            "/cohere/v2/chat",
            &key,
            &json!({"model": "echo", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": text},
            ]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(cost_header(resp.headers()).unwrap() > 0.0);
    let rid = request_id(resp.headers());
    let v = body_json(resp).await;
    assert_eq!(v["message"]["role"], "assistant", "{v}");
    assert_eq!(v["message"]["content"][0]["type"], "text");
    assert_eq!(v["message"]["content"][0]["text"], text);
    assert_eq!(v["finish_reason"], "COMPLETE");
    let billed = &v["usage"]["billed_units"];
    assert_eq!(billed, &v["usage"]["tokens"]);
    let (p, c) = (
        as_i64(&billed["input_tokens"]),
        as_i64(&billed["output_tokens"]),
    );
    assert!(p > 0 && c > 0, "{v}");
    check_row(gw, &rid, "chat", p, c).await;

    // Cohere v2, streamed (SSE).
    let text = "echo cohere v2 streamed word by word";
    let resp = gw
        .post(
            "/cohere/v2/chat",
            &key,
            &json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": text}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let rid = request_id(resp.headers());
    let events = parse_sse(&read_stream(resp).await);
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    assert_eq!(names.first(), Some(&"message-start"));
    assert_eq!(names.get(1), Some(&"content-start"));
    assert_eq!(names[names.len() - 2..], ["content-end", "message-end"]);
    let payloads: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let got: String = payloads
        .iter()
        .filter(|e| e["type"] == "content-delta")
        .map(|e| e["delta"]["message"]["content"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, text);
    let end = payloads.last().unwrap();
    assert_eq!(end["delta"]["finish_reason"], "COMPLETE");
    let billed = &end["delta"]["usage"]["billed_units"];
    let (p, c) = (
        as_i64(&billed["input_tokens"]),
        as_i64(&billed["output_tokens"]),
    );
    assert_eq!(
        end["delta"]["usage"]["tokens"]["output_tokens"],
        billed["output_tokens"]
    );
    check_row(gw, &rid, "chat", p, c).await;

    // Cohere v1, plain.
    let text = "echo cohere v1 plain";
    let resp = gw
        .post(
            "/cohere/v1/chat",
            &key,
            &json!({"model": "echo", "message": text, "preamble": "be brief",
                    "chat_history": [{"role": "USER", "message": "before"}, {"role": "CHATBOT", "message": "reply"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let v = body_json(resp).await;
    assert_eq!(v["text"], text, "{v}");
    assert!(v["generation_id"].is_string());
    assert_eq!(v["finish_reason"], "COMPLETE");
    let billed = &v["meta"]["billed_units"];
    let (p, c) = (
        as_i64(&billed["input_tokens"]),
        as_i64(&billed["output_tokens"]),
    );
    check_row(gw, &rid, "chat", p, c).await;

    // Cohere v1, streamed (newline-delimited JSON).
    let text = "echo cohere v1 streamed please";
    let resp = gw
        .post(
            "/cohere/v1/chat",
            &key,
            &json!({"model": "echo", "message": text, "stream": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let raw = read_stream(resp).await;
    let lines: Vec<Value> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event_type"], "stream-start");
    let got: String = lines
        .iter()
        .filter(|e| e["event_type"] == "text-generation")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, text);
    let end = lines.last().unwrap();
    assert_eq!(end["event_type"], "stream-end");
    assert_eq!(end["is_finished"], true);
    assert_eq!(end["finish_reason"], "COMPLETE");
    assert_eq!(end["response"]["text"], text);
    let billed = &end["response"]["meta"]["billed_units"];
    let (p, c) = (
        as_i64(&billed["input_tokens"]),
        as_i64(&billed["output_tokens"]),
    );
    check_row(gw, &rid, "chat", p, c).await;

    // Gemini generateContent (v1beta), with a system instruction.
    let text = "echo gemini plain";
    let body = json!({
        "contents": [
            {"role": "user", "parts": [{"text": "first"}]},
            {"role": "model", "parts": [{"text": "answer"}]},
            {"role": "user", "parts": [{"text": "echo gemini "}, {"text": "plain"}]},
        ],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
    });
    let resp = post_gemini(
        gw,
        "/gemini/v1beta/models/echo:generateContent",
        &key,
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(cost_header(resp.headers()).unwrap() > 0.0);
    let rid = request_id(resp.headers());
    let v = body_json(resp).await;
    let cand = &v["candidates"][0];
    assert_eq!(cand["content"]["parts"][0]["text"], text, "{v}");
    assert_eq!(cand["content"]["role"], "model");
    assert_eq!(cand["finishReason"], "STOP");
    assert_eq!(cand["index"], 0);
    assert_eq!(v["modelVersion"], "echo");
    let u = &v["usageMetadata"];
    let (p, c) = (
        as_i64(&u["promptTokenCount"]),
        as_i64(&u["candidatesTokenCount"]),
    );
    assert_eq!(as_i64(&u["totalTokenCount"]), p + c);
    check_row(gw, &rid, "chat", p, c).await;

    // countTokens counts the same prompt, for free.
    let resp = post_gemini(gw, "/gemini/v1beta/models/echo:countTokens", &key, &body).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let v = body_json(resp).await;
    assert_eq!(as_i64(&v["totalTokens"]), p, "{v}");
    check_row(gw, &rid, "count_tokens", 0, 0).await;

    // streamGenerateContent on the v1 prefix.
    let text = "echo gemini streamed in pieces";
    let resp = post_gemini(
        gw,
        "/gemini/v1/models/echo:streamGenerateContent?alt=sse",
        &key,
        &json!({"contents": [{"parts": [{"text": text}]}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let raw = read_stream(resp).await;
    assert!(raw.starts_with("data: {"), "{raw}");
    assert!(raw.ends_with("}\r\n\r\n"), "{raw}");
    let chunks = sse_json(&raw);
    assert!(chunks.len() > 1);
    assert!(chunks.iter().all(|c| c["usageMetadata"].is_object()));
    let got: String = chunks
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(got, text);
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    let u = &last["usageMetadata"];
    let (p, c) = (
        as_i64(&u["promptTokenCount"]),
        as_i64(&u["candidatesTokenCount"]),
    );
    check_row(gw, &rid, "chat", p, c).await;

    // Unsupported echo paths: 404 in each surface's own error shape.
    let resp = gw
        .post(
            "/cohere/v2/embed",
            &key,
            &json!({"model": "echo", "texts": ["x"], "input_type": "search_document"}),
        )
        .await;
    assert_eq!(resp.status(), 404);
    let v = body_json(resp).await;
    assert!(v["message"].as_str().unwrap().contains("echo"), "{v}");
    assert!(v.get("error").is_none(), "{v}");

    let resp = post_gemini(
        gw,
        "/gemini/v1beta/models/echo:embedContent",
        &key,
        &json!({"content": {"parts": [{"text": "x"}]}}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let v = body_json(resp).await;
    assert_eq!(v["error"]["code"], 404, "{v}");
    assert_eq!(v["error"]["status"], "NOT_FOUND", "{v}");

    // A body echo cannot read: 400 in the surface's shape.
    let resp = post_gemini(
        gw,
        "/gemini/v1beta/models/echo:generateContent",
        &key,
        &json!({"contents": []}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v = body_json(resp).await;
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
    let resp = gw
        .post("/cohere/v1/chat", &key, &json!({"model": "echo"}))
        .await;
    assert_eq!(resp.status(), 400);
    assert!(body_json(resp).await["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_on_configured_cohere_and_gemini_never_goes_upstream() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder(&mock)
        .config(native_config(&mock.url()))
        .start()
        .await;
    exercise(&gw).await;
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_on_cohere_and_gemini_without_any_provider() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::builder(&mock).config(String::new()).start().await;
    exercise(&gw).await;

    // Other models on the unconfigured surfaces are refused in their shape.
    let (_, key) = gw.open_key().await;
    let resp = gw
        .post(
            "/cohere/v2/chat",
            &key,
            &json!({"model": "command-r", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(resp.status(), 404);
    assert!(body_json(resp).await["message"].is_string());
    let resp = post_gemini(
        &gw,
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        &key,
        &json!({"contents": [{"parts": [{"text": "x"}]}]}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(body_json(resp).await["error"]["status"], "NOT_FOUND");
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
}
