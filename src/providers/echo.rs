//! The built-in `echo` model: answers every client surface's request shape by
//! echoing the last user message, with real token counts, streaming included,
//! so the gateway works with zero provider keys.
//!
//! The answers follow the real APIs' wire shapes closely enough for the
//! official `openai`, `anthropic`, `cohere` (v1 and v2 clients) and
//! `google-genai` SDKs (including their stream helpers) to parse them.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::tokens::count;

/// The reply when the last user message has no text.
const EMPTY_REPLY: &str = "(echo) empty message";
/// Embedding width when the request names no `dimensions`.
const DEFAULT_DIMENSIONS: usize = 8;
/// Largest `dimensions` accepted for embeddings.
const MAX_DIMENSIONS: u64 = 3072;

const JSON: &str = "application/json";
const SSE: &str = "text/event-stream";
/// Cohere v1 streams: one JSON object per line.
const NDJSON: &str = "application/stream+json";

/// Which wire shape to answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoShape {
    OpenAi,
    Anthropic,
    /// Cohere: v2 chat (SSE streams) and v1 chat (newline-delimited JSON streams).
    Cohere,
    /// Google (Gemini API): generateContent, streamGenerateContent, countTokens.
    Google,
}

pub struct EchoAnswer {
    /// 200, or 400/404 for refusals.
    pub status: u16,
    /// "application/json", "text/event-stream", or "application/stream+json"
    /// (Cohere v1 streams).
    pub content_type: &'static str,
    /// The whole body; for SSE one element per event (each ending in "\n\n",
    /// "\r\n\r\n" for Google), for Cohere v1 streams one JSON line each.
    pub chunks: Vec<Bytes>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Answer one request to the echo model.
///
/// `endpoint` is one of "chat" (POST /v1/chat/completions), "completions"
/// (POST /v1/completions), "embeddings", "responses" (POST /v1/responses),
/// "messages" (POST /v1/messages, Anthropic), "count_tokens"
/// (POST /v1/messages/count_tokens, Anthropic), "chat_v2" (POST /v2/chat,
/// Cohere), "chat_v1" (POST /v1/chat, Cohere), "generateContent",
/// "streamGenerateContent" and "countTokens" (POST
/// /v1beta/models/{model}:{method}, Google). `model` is the model name to
/// report back. `body` is the parsed JSON request body.
///
/// An endpoint the echo model does not serve in `shape` answers 404, a body
/// it cannot read answers 400, each with an error body in the shape's format.
pub fn respond(shape: EchoShape, endpoint: &str, model: &str, body: &Value) -> EchoAnswer {
    let answered = match (shape, endpoint) {
        (EchoShape::OpenAi, "chat") => chat(model, body),
        (EchoShape::OpenAi, "completions") => completions(model, body),
        (EchoShape::OpenAi, "embeddings") => embeddings(model, body),
        (EchoShape::OpenAi, "responses") => responses(model, body),
        (EchoShape::Anthropic, "messages") => messages(model, body),
        (EchoShape::Anthropic, "count_tokens") => count_tokens(body),
        (EchoShape::Cohere, "chat_v2") => cohere_chat_v2(body),
        (EchoShape::Cohere, "chat_v1") => cohere_chat_v1(body),
        (EchoShape::Google, "generateContent") => google_generate(model, body, false),
        (EchoShape::Google, "streamGenerateContent") => google_generate(model, body, true),
        (EchoShape::Google, "countTokens") => google_count_tokens(body),
        _ => {
            return error(
                shape,
                404,
                &format!("The echo model does not serve the '{endpoint}' endpoint."),
            );
        }
    };
    match answered {
        Ok(answer) => answer,
        Err(message) => error(shape, 400, &message),
    }
}

type Answered = Result<EchoAnswer, String>;

fn error(shape: EchoShape, status: u16, message: &str) -> EchoAnswer {
    let body = match shape {
        EchoShape::OpenAi => json!({
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": null,
                "code": null,
            }
        }),
        EchoShape::Anthropic => json!({
            "type": "error",
            "error": {"type": "invalid_request_error", "message": message},
        }),
        EchoShape::Cohere => json!({
            "message": message,
            "type": if status == 404 { "not_found" } else { "invalid_request_error" },
        }),
        EchoShape::Google => json!({
            "error": {
                "code": status,
                "message": message,
                "status": if status == 404 { "NOT_FOUND" } else { "INVALID_ARGUMENT" },
            }
        }),
    };
    EchoAnswer {
        status,
        content_type: JSON,
        chunks: vec![Bytes::from(body.to_string())],
        prompt_tokens: 0,
        completion_tokens: 0,
    }
}

fn json_answer(body: &Value, prompt_tokens: u64, completion_tokens: u64) -> EchoAnswer {
    EchoAnswer {
        status: 200,
        content_type: JSON,
        chunks: vec![Bytes::from(body.to_string())],
        prompt_tokens,
        completion_tokens,
    }
}

fn sse_answer(chunks: Vec<Bytes>, prompt_tokens: u64, completion_tokens: u64) -> EchoAnswer {
    EchoAnswer {
        status: 200,
        content_type: SSE,
        chunks,
        prompt_tokens,
        completion_tokens,
    }
}

/// `data: {json}\n\n` (OpenAI chat and completions streams).
fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// `event: name\ndata: {json}\n\n` (Responses and Anthropic streams).
fn sse_event(name: &str, value: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {value}\n\n"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fresh_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn object(body: &Value) -> Result<&Map<String, Value>, String> {
    body.as_object()
        .ok_or_else(|| "The request body must be a JSON object.".to_string())
}

fn wants_stream(body: &Map<String, Value>) -> bool {
    body.get("stream").and_then(Value::as_bool) == Some(true)
}

fn include_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true)
}

/// The smallest of the limits named by `keys` that are present and not null
/// (each must be a positive integer): clients may send more than one, and the
/// gateway adds `max_tokens` for a key's default cap.
fn token_limit(body: &Map<String, Value>, keys: &[&str]) -> Result<Option<u64>, String> {
    let mut limit: Option<u64> = None;
    for key in keys {
        match body.get(*key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => limit = Some(limit.map_or(n, |l| l.min(n))),
                _ => return Err(format!("'{key}' must be a positive integer.")),
            },
        }
    }
    Ok(limit)
}

/// The text of a message's content: a string, or the concatenated `text` of
/// the text parts of a content array (`text`, `input_text`, `output_text`,
/// and the nested content of Anthropic `tool_result` blocks).
fn content_text(content: Option<&Value>) -> String {
    let mut out = String::new();
    push_content_text(content, &mut out);
    out
}

fn push_content_text(content: Option<&Value>, out: &mut String) {
    match content {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                match part {
                    Value::String(s) => out.push_str(s),
                    Value::Object(p) => match p.get("type").and_then(Value::as_str) {
                        None | Some("text" | "input_text" | "output_text") => {
                            if let Some(t) = p.get("text").and_then(Value::as_str) {
                                out.push_str(t);
                            }
                        }
                        Some("tool_result") => push_content_text(p.get("content"), out),
                        Some(_) => {}
                    },
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// The reply to send: the echoed text, split into stream pieces, possibly
/// cut to a token limit.
struct Reply {
    text: String,
    /// Stream pieces; concatenated they equal `text`.
    words: Vec<String>,
    tokens: u64,
    /// Cut short by a token limit.
    cut: bool,
}

impl Reply {
    fn new(last_user: Option<String>, limit: Option<u64>) -> Reply {
        let full = match last_user {
            Some(text) if !text.is_empty() => text,
            _ => EMPTY_REPLY.to_string(),
        };
        let tokens = count(&full);
        let words: Vec<String> = split_words(&full).into_iter().map(str::to_string).collect();
        let max = match limit {
            Some(max) if tokens > max => max,
            _ => {
                return Reply {
                    text: full,
                    words,
                    tokens,
                    cut: false,
                };
            }
        };
        // Keep at most `max` words, and fewer if those still exceed `max`
        // tokens (a word may be several tokens): the largest such prefix.
        let cap = usize::try_from(max).unwrap_or(usize::MAX).min(words.len());
        let prefix_tokens = |n: usize| count(&words[..n].concat());
        let (mut lo, mut hi) = (0usize, cap);
        if prefix_tokens(hi) > max {
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if prefix_tokens(mid) <= max {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
        } else {
            lo = hi;
        }
        let words: Vec<String> = words.into_iter().take(lo).collect();
        let text = words.concat();
        let tokens = count(&text);
        Reply {
            text,
            words,
            tokens,
            cut: true,
        }
    }
}

/// Split into stream pieces, a new piece starting at every whitespace run
/// that follows a non-whitespace character, so "a b  c" is "a", " b", "  c".
fn split_words(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = 0usize;
    let mut prev_ws = true;
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if ws && !prev_ws && i > start {
            words.push(&text[start..i]);
            start = i;
        }
        prev_ws = ws;
    }
    if start < text.len() {
        words.push(&text[start..]);
    }
    words
}

// ---------------------------------------------------------------- OpenAI chat

fn chat_usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

/// OpenAI-style `messages` (also Cohere v2's): the prompt tokens, counted
/// like OpenAI (3 per message plus 3), and the last user message's text.
fn chat_messages(body: &serde_json::Map<String, Value>) -> Result<(u64, Option<String>), String> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| "'messages' must be a non-empty array.".to_string())?;
    let mut prompt_tokens = 3u64;
    let mut last_user = None;
    for message in messages {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| "Each message must have a string 'role'.".to_string())?;
        let text = content_text(message.get("content"));
        prompt_tokens += count(&text) + 3;
        if role == "user" {
            last_user = Some(text);
        }
    }
    Ok((prompt_tokens, last_user))
}

fn chat(model: &str, body: &Value) -> Answered {
    let body = object(body)?;
    let (prompt_tokens, last_user) = chat_messages(body)?;
    let limit = token_limit(body, &["max_completion_tokens", "max_tokens"])?;
    let reply = Reply::new(last_user, limit);
    let finish = if reply.cut { "length" } else { "stop" };
    let id = format!("chatcmpl-echo-{}", fresh_id());
    let created = now_secs();
    let completion_tokens = reply.tokens;

    if !wants_stream(body) {
        let answer = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.text,
                    "refusal": null,
                    "annotations": [],
                },
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": chat_usage(prompt_tokens, completion_tokens),
            "service_tier": "default",
            "system_fingerprint": null,
        });
        return Ok(json_answer(&answer, prompt_tokens, completion_tokens));
    }

    let with_usage = include_usage(body);
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": null,
            "choices": choices,
        });
        if with_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        sse_data(&c)
    };
    let choice = |delta: Value, finish: Option<&str>| {
        json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish,
        }])
    };
    let mut chunks = Vec::with_capacity(reply.words.len() + 4);
    chunks.push(chunk(
        choice(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ),
        None,
    ));
    for word in &reply.words {
        chunks.push(chunk(choice(json!({"content": word}), None), None));
    }
    chunks.push(chunk(choice(json!({}), Some(finish)), None));
    if with_usage {
        chunks.push(chunk(
            json!([]),
            Some(chat_usage(prompt_tokens, completion_tokens)),
        ));
    }
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Ok(sse_answer(chunks, prompt_tokens, completion_tokens))
}

// --------------------------------------------------------- OpenAI completions

/// Whether `v` is an array of integers (a pre-tokenized input).
fn is_token_array(v: &Value) -> bool {
    v.as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|t| t.is_i64() || t.is_u64()))
}

fn completions(model: &str, body: &Value) -> Answered {
    let body = object(body)?;
    let bad = || "'prompt' must be a string, an array of strings, or token arrays.".to_string();
    let prompt = body.get("prompt").ok_or_else(bad)?;
    // (reply source, prompt tokens)
    let (first, prompt_tokens): (Option<String>, u64) = match prompt {
        Value::String(s) => (Some(s.clone()), count(s)),
        v if is_token_array(v) => (None, v.as_array().map_or(0, |a| a.len() as u64)),
        Value::Array(items) if !items.is_empty() => {
            let mut first = None;
            let mut tokens = 0u64;
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => {
                        tokens += count(s);
                        if i == 0 {
                            first = Some(s.clone());
                        }
                    }
                    v if is_token_array(v) => {
                        tokens += v.as_array().map_or(0, |a| a.len() as u64);
                    }
                    _ => return Err(bad()),
                }
            }
            (first, tokens)
        }
        _ => return Err(bad()),
    };
    let limit = token_limit(body, &["max_tokens"])?;
    let reply = Reply::new(first, limit);
    let finish = if reply.cut { "length" } else { "stop" };
    let id = format!("cmpl-echo-{}", fresh_id());
    let created = now_secs();
    let completion_tokens = reply.tokens;
    let usage = || {
        json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        })
    };

    if !wants_stream(body) {
        let answer = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": null,
            "choices": [{
                "text": reply.text,
                "index": 0,
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage(),
        });
        return Ok(json_answer(&answer, prompt_tokens, completion_tokens));
    }

    let with_usage = include_usage(body);
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if with_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        sse_data(&c)
    };
    let choice = |text: &str, finish: Option<&str>| {
        json!([{
            "text": text,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish,
        }])
    };
    let mut chunks = Vec::with_capacity(reply.words.len() + 3);
    for word in &reply.words {
        chunks.push(chunk(choice(word, None), None));
    }
    chunks.push(chunk(choice("", Some(finish)), None));
    if with_usage {
        chunks.push(chunk(json!([]), Some(usage())));
    }
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Ok(sse_answer(chunks, prompt_tokens, completion_tokens))
}

// --------------------------------------------------------- OpenAI embeddings

/// One embedding input: text, or a pre-tokenized array (its JSON as the seed).
struct EmbedItem {
    seed: String,
    tokens: u64,
}

fn embed_item(v: &Value) -> Option<EmbedItem> {
    match v {
        Value::String(s) => Some(EmbedItem {
            seed: s.clone(),
            tokens: count(s),
        }),
        v if is_token_array(v) => Some(EmbedItem {
            seed: v.to_string(),
            tokens: v.as_array().map_or(0, |a| a.len() as u64),
        }),
        _ => None,
    }
}

/// A deterministic unit vector of `dims` components derived from `seed`
/// (FNV-1a of the seed feeding a SplitMix64 stream).
fn embed(seed: &str, dims: usize) -> Vec<f32> {
    let mut state = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut vector: Vec<f32> = (0..dims)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // 24 high bits to [-1, 1).
            ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x /= norm;
        }
    } else if let Some(first) = vector.first_mut() {
        *first = 1.0;
    }
    vector
}

fn embeddings(model: &str, body: &Value) -> Answered {
    let body = object(body)?;
    let bad = || {
        "'input' must be a string, an array of strings, or an array of token arrays.".to_string()
    };
    let input = body.get("input").ok_or_else(bad)?;
    let items: Vec<EmbedItem> = match input {
        Value::String(_) => embed_item(input).into_iter().collect(),
        v if is_token_array(v) => embed_item(v).into_iter().collect(),
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .map(embed_item)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let dims = match body.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_DIMENSIONS).contains(&n) => {
                usize::try_from(n).unwrap_or(DEFAULT_DIMENSIONS)
            }
            _ => {
                return Err(format!(
                    "'dimensions' must be between 1 and {MAX_DIMENSIONS}."
                ));
            }
        },
    };
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => return Err("'encoding_format' must be 'float' or 'base64'.".to_string()),
    };
    let prompt_tokens: u64 = items.iter().map(|i| i.tokens).sum();
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let vector = embed(&item.seed, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let answer = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok(json_answer(&answer, prompt_tokens, 0))
}

// ---------------------------------------------------------- OpenAI responses

fn responses(model: &str, body: &Value) -> Answered {
    let body = object(body)?;
    let mut prompt_tokens = 3u64;
    let mut last_user = None;
    match body.get("instructions") {
        Some(Value::String(s)) => prompt_tokens += count(s) + 3,
        Some(Value::Array(items)) => {
            for item in items {
                prompt_tokens += count(&content_text(item.get("content"))) + 3;
            }
        }
        _ => {}
    }
    match body.get("input") {
        Some(Value::String(s)) => {
            prompt_tokens += count(s) + 3;
            last_user = Some(s.clone());
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            for item in items {
                let Value::Object(item) = item else {
                    return Err("Each item of 'input' must be an object.".to_string());
                };
                let text = match item.get("type").and_then(Value::as_str) {
                    None | Some("message") => content_text(item.get("content")),
                    Some("function_call_output" | "custom_tool_call_output") => {
                        content_text(item.get("output"))
                    }
                    Some("function_call") => item
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    Some(_) => String::new(),
                };
                prompt_tokens += count(&text) + 3;
                if item.get("role").and_then(Value::as_str) == Some("user") {
                    last_user = Some(text);
                }
            }
        }
        _ => {
            return Err(
                "'input' must be a string or a non-empty array of input items.".to_string(),
            );
        }
    }
    let limit = token_limit(body, &["max_output_tokens", "max_tokens"])?;
    let reply = Reply::new(last_user, limit);
    let completion_tokens = reply.tokens;
    let id = format!("resp_echo_{}", fresh_id());
    let item_id = format!("msg_echo_{}", fresh_id());
    let created = now_secs();
    let final_status = if reply.cut { "incomplete" } else { "completed" };

    let usage = json!({
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let part = |text: &str| {
        json!({
            "type": "output_text",
            "text": text,
            "annotations": [],
            "logprobs": [],
        })
    };
    let message = |status: &str, content: Value| {
        json!({
            "id": item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        })
    };
    let metadata = body
        .get("metadata")
        .filter(|m| m.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let response = |status: &str, output: Value, usage: Value| {
        let done = status != "in_progress";
        json!({
            "id": id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": false,
            "completed_at": if status == "completed" { json!(now_secs()) } else { Value::Null },
            "error": null,
            "incomplete_details": if done && reply.cut {
                json!({"reason": "max_output_tokens"})
            } else {
                Value::Null
            },
            "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": body.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "max_tool_calls": null,
            "model": model,
            "output": output,
            "parallel_tool_calls": body
                .get("parallel_tool_calls")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": false,
            "temperature": body.get("temperature").and_then(Value::as_f64).unwrap_or(1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": body.get("top_p").and_then(Value::as_f64).unwrap_or(1.0),
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": metadata,
        })
    };
    let final_item = message(final_status, json!([part(&reply.text)]));
    let final_response = response(final_status, json!([final_item]), usage);

    if !wants_stream(body) {
        return Ok(json_answer(
            &final_response,
            prompt_tokens,
            completion_tokens,
        ));
    }

    let mut seq = 0u64;
    let mut chunks = Vec::with_capacity(reply.words.len() + 9);
    let mut push = |kind: &str, mut event: Value| {
        event["type"] = json!(kind);
        event["sequence_number"] = json!(seq);
        seq += 1;
        chunks.push(sse_event(kind, &event));
    };
    let started = response("in_progress", json!([]), Value::Null);
    push("response.created", json!({"response": started}));
    push("response.in_progress", json!({"response": started}));
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": message("in_progress", json!([]))}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part("")}),
    );
    for word in &reply.words {
        push(
            "response.output_text.delta",
            json!({
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": word,
                "logprobs": [],
            }),
        );
    }
    push(
        "response.output_text.done",
        json!({
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "text": reply.text,
            "logprobs": [],
        }),
    );
    push(
        "response.content_part.done",
        json!({
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "part": part(&reply.text),
        }),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": final_item}),
    );
    let closing = if reply.cut {
        "response.incomplete"
    } else {
        "response.completed"
    };
    push(closing, json!({"response": final_response}));
    Ok(sse_answer(chunks, prompt_tokens, completion_tokens))
}

// ---------------------------------------------------------- Anthropic

/// Prompt tokens of an Anthropic request: count of every message's text plus
/// 3 per message, plus the system prompt. Also returns the last user text.
fn anthropic_prompt(body: &Map<String, Value>) -> Result<(u64, Option<String>), String> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| "messages: must be a non-empty array".to_string())?;
    let mut tokens = count(&content_text(body.get("system")));
    let mut last_user = None;
    for message in messages {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| "messages: each message must have a string 'role'".to_string())?;
        let text = content_text(message.get("content"));
        tokens += count(&text) + 3;
        if role == "user" {
            last_user = Some(text);
        }
    }
    Ok((tokens, last_user))
}

fn messages(model: &str, body: &Value) -> Answered {
    let body = object(body)?;
    let (prompt_tokens, last_user) = anthropic_prompt(body)?;
    let limit = token_limit(body, &["max_tokens"])?;
    let reply = Reply::new(last_user, limit);
    let completion_tokens = reply.tokens;
    let stop_reason = if reply.cut { "max_tokens" } else { "end_turn" };
    let id = format!("msg_echo_{}", fresh_id());
    let usage = |output: u64| {
        json!({
            "input_tokens": prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output,
        })
    };

    if !wants_stream(body) {
        let answer = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage(completion_tokens),
        });
        return Ok(json_answer(&answer, prompt_tokens, completion_tokens));
    }

    let mut chunks = Vec::with_capacity(reply.words.len() + 6);
    let mut push = |kind: &str, mut event: Value| {
        event["type"] = json!(kind);
        chunks.push(sse_event(kind, &event));
    };
    push(
        "message_start",
        json!({"message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(1),
        }}),
    );
    push(
        "content_block_start",
        json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    push("ping", json!({}));
    for word in &reply.words {
        push(
            "content_block_delta",
            json!({"index": 0, "delta": {"type": "text_delta", "text": word}}),
        );
    }
    push("content_block_stop", json!({"index": 0}));
    push(
        "message_delta",
        json!({
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
        }),
    );
    push("message_stop", json!({}));
    Ok(sse_answer(chunks, prompt_tokens, completion_tokens))
}

fn count_tokens(body: &Value) -> Answered {
    let body = object(body)?;
    let (prompt_tokens, _) = anthropic_prompt(body)?;
    Ok(json_answer(
        &json!({"input_tokens": prompt_tokens}),
        prompt_tokens,
        0,
    ))
}

// ---------------------------------------------------------------- Cohere

/// Cohere's finish reason.
fn cohere_finish(reply: &Reply) -> &'static str {
    if reply.cut { "MAX_TOKENS" } else { "COMPLETE" }
}

/// `usage` (v2) and `meta` (v1) token accounting.
fn cohere_usage(prompt: u64, completion: u64) -> Value {
    json!({
        "billed_units": {"input_tokens": prompt, "output_tokens": completion},
        "tokens": {"input_tokens": prompt, "output_tokens": completion},
    })
}

/// Cohere v2 chat: `messages` as in OpenAI chat (string or text-part
/// content), prompt tokens counted the same way.
fn cohere_chat_v2(body: &Value) -> Answered {
    let body = object(body)?;
    let (prompt_tokens, last_user) = chat_messages(body)?;
    let limit = token_limit(body, &["max_tokens"])?;
    let reply = Reply::new(last_user, limit);
    let finish = cohere_finish(&reply);
    let completion_tokens = reply.tokens;
    let id = fresh_id();
    let usage = cohere_usage(prompt_tokens, completion_tokens);

    if !wants_stream(body) {
        let answer = json!({
            "id": id,
            "finish_reason": finish,
            "message": {
                "role": "assistant",
                "content": [{"type": "text", "text": reply.text}],
            },
            "usage": usage,
        });
        return Ok(json_answer(&answer, prompt_tokens, completion_tokens));
    }

    let mut chunks = Vec::with_capacity(reply.words.len() + 4);
    let mut push = |kind: &str, mut event: Value| {
        event["type"] = json!(kind);
        chunks.push(sse_event(kind, &event));
    };
    push(
        "message-start",
        json!({"id": id, "delta": {"message": {
            "role": "assistant",
            "content": [],
            "tool_plan": "",
            "tool_calls": [],
            "citations": [],
        }}}),
    );
    push(
        "content-start",
        json!({"index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
    );
    for word in &reply.words {
        push(
            "content-delta",
            json!({"index": 0, "delta": {"message": {"content": {"text": word}}}}),
        );
    }
    push("content-end", json!({"index": 0}));
    push(
        "message-end",
        json!({"id": id, "delta": {"finish_reason": finish, "usage": usage}}),
    );
    Ok(sse_answer(chunks, prompt_tokens, completion_tokens))
}

/// Cohere v1 chat: the user's turn is `message`; `preamble` and
/// `chat_history` (`{role, message}`) count into the prompt, 3 tokens per
/// turn plus 3.
fn cohere_chat_v1(body: &Value) -> Answered {
    let body = object(body)?;
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .ok_or_else(|| "'message' must be a string.".to_string())?;
    let mut prompt_tokens = 3 + count(message) + 3;
    if let Some(preamble) = body.get("preamble").and_then(Value::as_str) {
        prompt_tokens += count(preamble) + 3;
    }
    let mut history = Vec::new();
    match body.get("chat_history") {
        None | Some(Value::Null) => {}
        Some(Value::Array(turns)) => {
            for turn in turns {
                let text = turn.get("message").and_then(Value::as_str).unwrap_or("");
                prompt_tokens += count(text) + 3;
                history.push(turn.clone());
            }
        }
        Some(_) => return Err("'chat_history' must be an array.".to_string()),
    }
    let limit = token_limit(body, &["max_tokens"])?;
    let reply = Reply::new(Some(message.to_string()), limit);
    let finish = cohere_finish(&reply);
    let completion_tokens = reply.tokens;
    let generation_id = fresh_id();
    history.push(json!({"role": "USER", "message": message}));
    history.push(json!({"role": "CHATBOT", "message": reply.text}));
    let response = json!({
        "response_id": fresh_id(),
        "text": reply.text,
        "generation_id": generation_id,
        "chat_history": history,
        "finish_reason": finish,
        "meta": {
            "api_version": {"version": "1"},
            "billed_units": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
            "tokens": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
        },
    });

    if !wants_stream(body) {
        return Ok(json_answer(&response, prompt_tokens, completion_tokens));
    }

    let line = |v: Value| Bytes::from(format!("{v}\n"));
    let mut chunks = Vec::with_capacity(reply.words.len() + 2);
    chunks.push(line(json!({
        "is_finished": false,
        "event_type": "stream-start",
        "generation_id": generation_id,
    })));
    for word in &reply.words {
        chunks.push(line(json!({
            "is_finished": false,
            "event_type": "text-generation",
            "text": word,
        })));
    }
    chunks.push(line(json!({
        "is_finished": true,
        "event_type": "stream-end",
        "finish_reason": finish,
        "response": response,
    })));
    Ok(EchoAnswer {
        status: 200,
        content_type: NDJSON,
        chunks,
        prompt_tokens,
        completion_tokens,
    })
}

// ---------------------------------------------------------------- Google

/// The concatenated `parts[].text` of a Gemini `Content` (or a bare string).
fn google_parts_text(content: Option<&Value>) -> String {
    let mut out = String::new();
    match content {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Object(c)) => {
            if let Some(parts) = c.get("parts").and_then(Value::as_array) {
                for part in parts {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// A field under its camelCase or snake_case name.
fn either<'a>(body: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    body.get(camel).or_else(|| body.get(snake))
}

/// Prompt tokens of a Gemini request (the text of every `contents[]` item
/// plus `systemInstruction`), and the last user text (the last item with
/// role "user" or no role).
fn google_prompt(body: &Map<String, Value>) -> Result<(u64, Option<String>), String> {
    let contents = match body.get("contents") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => return Err("'contents' must be a non-empty array.".to_string()),
    };
    let mut tokens = count(&google_parts_text(either(
        body,
        "systemInstruction",
        "system_instruction",
    )));
    let mut last_user = None;
    for item in contents {
        if !item.is_object() {
            return Err("Each item of 'contents' must be an object.".to_string());
        }
        let text = google_parts_text(Some(item));
        tokens += count(&text);
        match item.get("role") {
            None | Some(Value::Null) => last_user = Some(text),
            Some(Value::String(r)) if r == "user" => last_user = Some(text),
            Some(Value::String(_)) => {}
            Some(_) => return Err("A content's 'role' must be a string.".to_string()),
        }
    }
    Ok((tokens, last_user))
}

fn google_usage(prompt: u64, completion: u64) -> Value {
    json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    })
}

fn google_generate(model: &str, body: &Value, stream: bool) -> Answered {
    let body = object(body)?;
    let (prompt_tokens, last_user) = google_prompt(body)?;
    let mut limit = token_limit(body, &["max_tokens"])?;
    if let Some(config) = either(body, "generationConfig", "generation_config") {
        let config = config
            .as_object()
            .ok_or_else(|| "'generationConfig' must be an object.".to_string())?;
        if let Some(n) = token_limit(config, &["maxOutputTokens", "max_output_tokens"])? {
            limit = Some(limit.map_or(n, |l| l.min(n)));
        }
    }
    let reply = Reply::new(last_user, limit);
    let finish = if reply.cut { "MAX_TOKENS" } else { "STOP" };
    let completion_tokens = reply.tokens;
    let response_id = fresh_id();
    let answer = |text: &str, finish: Option<&str>, completion: u64| {
        let mut candidate = json!({
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        });
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": google_usage(prompt_tokens, completion),
            "modelVersion": model,
            "responseId": response_id,
        })
    };

    if !stream {
        let v = answer(&reply.text, Some(finish), completion_tokens);
        return Ok(json_answer(&v, prompt_tokens, completion_tokens));
    }

    let data = |v: &Value| Bytes::from(format!("data: {v}\r\n\r\n"));
    let mut chunks = Vec::with_capacity(reply.words.len().max(1));
    if reply.words.is_empty() {
        chunks.push(data(&answer("", Some(finish), completion_tokens)));
    }
    let mut so_far = String::new();
    for (i, word) in reply.words.iter().enumerate() {
        so_far.push_str(word);
        let last = i + 1 == reply.words.len();
        // The last chunk reports the whole reply's count; before it, the
        // count so far.
        let completion = if last {
            completion_tokens
        } else {
            count(&so_far)
        };
        chunks.push(data(&answer(word, last.then_some(finish), completion)));
    }
    Ok(sse_answer(chunks, prompt_tokens, completion_tokens))
}

/// countTokens: `contents` (and `systemInstruction`), directly or inside
/// `generateContentRequest`.
fn google_count_tokens(body: &Value) -> Answered {
    let outer = object(body)?;
    let inner = match either(outer, "generateContentRequest", "generate_content_request") {
        Some(Value::Object(inner)) => inner,
        Some(_) => return Err("'generateContentRequest' must be an object.".to_string()),
        None => outer,
    };
    let (prompt_tokens, _) = google_prompt(inner)?;
    Ok(json_answer(
        &json!({"totalTokens": prompt_tokens, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}]}),
        prompt_tokens,
        0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_body(text: &str) -> Value {
        json!({"model": "echo", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "earlier"},
            {"role": "user", "content": text},
        ]})
    }

    fn single_json(a: &EchoAnswer) -> Value {
        assert_eq!(a.content_type, JSON);
        assert_eq!(a.chunks.len(), 1);
        serde_json::from_slice(&a.chunks[0]).unwrap()
    }

    /// `data:` payloads of an OpenAI-style stream, `[DONE]` excluded (and
    /// asserted to be last).
    fn data_events(a: &EchoAnswer) -> Vec<Value> {
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, SSE);
        let last = a.chunks.last().unwrap();
        assert_eq!(&last[..], b"data: [DONE]\n\n");
        a.chunks[..a.chunks.len() - 1]
            .iter()
            .map(|c| {
                let s = std::str::from_utf8(c).unwrap();
                assert!(s.ends_with("\n\n"));
                let payload = s.strip_prefix("data: ").unwrap().trim_end();
                serde_json::from_str(payload).unwrap()
            })
            .collect()
    }

    /// (event name, payload) of a named-event stream; the payload's `type`
    /// must equal the event name.
    fn named_events(a: &EchoAnswer) -> Vec<(String, Value)> {
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, SSE);
        a.chunks
            .iter()
            .map(|c| {
                let s = std::str::from_utf8(c).unwrap();
                assert!(s.ends_with("\n\n"));
                let mut lines = s.trim_end().lines();
                let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
                let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
                assert!(lines.next().is_none());
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["type"], name);
                (name.to_string(), v)
            })
            .collect()
    }

    fn expected_chat_prompt(texts: &[&str]) -> u64 {
        3 + texts.iter().map(|t| count(t) + 3).sum::<u64>()
    }

    #[test]
    fn split_words_keeps_spaces() {
        assert_eq!(split_words("a b  c"), vec!["a", " b", "  c"]);
        assert_eq!(split_words("  lead trail "), vec!["  lead", " trail", " "]);
        assert_eq!(split_words(""), Vec::<&str>::new());
        assert_eq!(split_words("one"), vec!["one"]);
        assert_eq!(split_words("x\ny"), vec!["x", "\ny"]);
    }

    #[test]
    fn chat_plain() {
        let text = "Hello there, echo!";
        let a = respond(EchoShape::OpenAi, "chat", "echo", &chat_body(text));
        assert_eq!(a.status, 200);
        let v = single_json(&a);
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-echo-"));
        assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(v["model"], "echo");
        let choice = &v["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], text);
        assert!(choice["message"]["refusal"].is_null());
        assert_eq!(choice["finish_reason"], "stop");
        assert!(choice["logprobs"].is_null());
        let prompt = expected_chat_prompt(&["Be brief.", "earlier", text]);
        assert_eq!(a.prompt_tokens, prompt);
        assert_eq!(a.completion_tokens, count(text));
        assert_eq!(v["usage"]["prompt_tokens"], prompt);
        assert_eq!(v["usage"]["completion_tokens"], count(text));
        assert_eq!(v["usage"]["total_tokens"], prompt + count(text));
    }

    #[test]
    fn chat_content_parts_and_empty() {
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "part one, "},
            {"type": "image_url", "image_url": {"url": "data:,"}},
            {"type": "text", "text": "part two"},
        ]}]});
        let v = single_json(&respond(EchoShape::OpenAi, "chat", "echo", &body));
        assert_eq!(v["choices"][0]["message"]["content"], "part one, part two");

        let body = json!({"messages": [{"role": "user", "content": ""}]});
        let v = single_json(&respond(EchoShape::OpenAi, "chat", "echo", &body));
        assert_eq!(v["choices"][0]["message"]["content"], EMPTY_REPLY);

        let body = json!({"messages": [{"role": "system", "content": "only system"}]});
        let v = single_json(&respond(EchoShape::OpenAi, "chat", "echo", &body));
        assert_eq!(v["choices"][0]["message"]["content"], EMPTY_REPLY);
    }

    #[test]
    fn chat_stream_without_usage() {
        let text = "The quick  brown fox jumps.";
        let mut body = chat_body(text);
        body["stream"] = json!(true);
        let a = respond(EchoShape::OpenAi, "chat", "echo", &body);
        let events = data_events(&a);
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(events[0]["choices"][0]["delta"]["content"], "");
        let mut joined = String::new();
        for e in &events {
            assert_eq!(e["object"], "chat.completion.chunk");
            assert_eq!(e["id"], events[0]["id"]);
            assert!(e.get("usage").is_none());
            if let Some(c) = e["choices"][0]["delta"]["content"].as_str() {
                joined.push_str(c);
            }
        }
        assert_eq!(joined, text);
        assert_eq!(events.len(), 1 + split_words(text).len() + 1);
        let last = events.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(a.completion_tokens, count(text));
    }

    #[test]
    fn chat_stream_include_usage() {
        let text = "stream me please";
        let mut body = chat_body(text);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let a = respond(EchoShape::OpenAi, "chat", "echo", &body);
        let events = data_events(&a);
        let (last, rest) = events.split_last().unwrap();
        for e in rest {
            assert!(e["usage"].is_null());
            assert!(e.as_object().unwrap().contains_key("usage"));
            assert_eq!(e["choices"].as_array().unwrap().len(), 1);
        }
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], a.prompt_tokens);
        assert_eq!(last["usage"]["completion_tokens"], a.completion_tokens);
        assert_eq!(
            last["usage"]["total_tokens"],
            a.prompt_tokens + a.completion_tokens
        );
        assert_eq!(a.completion_tokens, count(text));
        let finish = &rest.last().unwrap()["choices"][0]["finish_reason"];
        assert_eq!(finish, "stop");
    }

    #[test]
    fn chat_max_tokens_cut() {
        let text = "one two three four five six seven";
        let mut body = chat_body(text);
        body["max_tokens"] = json!(3);
        let a = respond(EchoShape::OpenAi, "chat", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["choices"][0]["message"]["content"], "one two three");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(a.completion_tokens, 3);

        // The smaller of both limits applies, and streams cut the same way.
        body["max_completion_tokens"] = json!(2);
        body["stream"] = json!(true);
        let a = respond(EchoShape::OpenAi, "chat", "echo", &body);
        let events = data_events(&a);
        let joined: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(joined, "one two");
        assert_eq!(
            events.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
        assert_eq!(a.completion_tokens, 2);

        // A limit the reply fits in changes nothing.
        let mut body = chat_body(text);
        body["max_tokens"] = json!(100);
        let v = single_json(&respond(EchoShape::OpenAi, "chat", "echo", &body));
        assert_eq!(v["choices"][0]["message"]["content"], text);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn cut_never_exceeds_limit() {
        let text = "antidisestablishmentarianism floccinaucinihilipilification pneumonoultra";
        let reply = Reply::new(Some(text.to_string()), Some(4));
        assert!(reply.cut);
        assert!(reply.tokens <= 4);
        assert_eq!(reply.words.concat(), reply.text);
        assert!(text.starts_with(&reply.text));
    }

    #[test]
    fn chat_bad_bodies() {
        for body in [
            json!({}),
            json!({"messages": []}),
            json!({"messages": "hi"}),
            json!({"messages": [{"content": "no role"}]}),
            json!([1, 2]),
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
        ] {
            let a = respond(EchoShape::OpenAi, "chat", "echo", &body);
            assert_eq!(a.status, 400, "{body}");
            let v = single_json(&a);
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(v["error"]["message"].is_string());
            assert!(v["error"]["param"].is_null());
            assert!(v["error"]["code"].is_null());
        }
    }

    #[test]
    fn unknown_endpoints_are_404_in_shape() {
        let body = chat_body("x");
        let a = respond(EchoShape::OpenAi, "images", "echo", &body);
        assert_eq!(a.status, 404);
        assert_eq!(single_json(&a)["error"]["type"], "invalid_request_error");
        let a = respond(EchoShape::OpenAi, "messages", "echo", &body);
        assert_eq!(a.status, 404);
        let a = respond(EchoShape::Anthropic, "chat", "echo", &body);
        assert_eq!(a.status, 404);
        let v = single_json(&a);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].is_string());
    }

    #[test]
    fn completions_plain_and_stream() {
        let text = "Once upon a time";
        let body = json!({"model": "echo", "prompt": text});
        let a = respond(EchoShape::OpenAi, "completions", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], text);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(a.prompt_tokens, count(text));
        assert_eq!(a.completion_tokens, count(text));
        assert_eq!(v["usage"]["total_tokens"], 2 * count(text));

        let body = json!({"prompt": [text, "second"], "stream": true,
                          "stream_options": {"include_usage": true}});
        let a = respond(EchoShape::OpenAi, "completions", "echo", &body);
        assert_eq!(a.prompt_tokens, count(text) + count("second"));
        let events = data_events(&a);
        let (last, rest) = events.split_last().unwrap();
        let joined: String = rest
            .iter()
            .map(|e| e["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(joined, text);
        assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
        assert!(rest.iter().all(|e| e["usage"].is_null()));
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["completion_tokens"], a.completion_tokens);

        let body = json!({"prompt": "alpha beta gamma delta", "max_tokens": 2, "stream": true});
        let a = respond(EchoShape::OpenAi, "completions", "echo", &body);
        let events = data_events(&a);
        let joined: String = events
            .iter()
            .map(|e| e["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(joined, "alpha beta");
        assert_eq!(
            events.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
        assert!(events.iter().all(|e| e.get("usage").is_none()));

        let body = json!({"prompt": [1, 2, 3]});
        let a = respond(EchoShape::OpenAi, "completions", "echo", &body);
        assert_eq!(a.prompt_tokens, 3);
        assert_eq!(single_json(&a)["choices"][0]["text"], EMPTY_REPLY);

        let a = respond(EchoShape::OpenAi, "completions", "echo", &json!({}));
        assert_eq!(a.status, 400);
    }

    fn decode_b64(s: &str) -> Vec<f32> {
        let bytes = STANDARD.decode(s).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn embeddings_float_and_base64() {
        let body = json!({"input": ["hello world", "second text"], "model": "echo"});
        let a = respond(EchoShape::OpenAi, "embeddings", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "echo");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        let floats: Vec<f32> = data[0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(floats.len(), DEFAULT_DIMENSIONS);
        let norm: f32 = floats.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(data[1]["index"], 1);
        assert_eq!(data[0]["object"], "embedding");
        let prompt = count("hello world") + count("second text");
        assert_eq!(v["usage"]["prompt_tokens"], prompt);
        assert_eq!(v["usage"]["total_tokens"], prompt);
        assert_eq!(a.prompt_tokens, prompt);
        assert_eq!(a.completion_tokens, 0);

        let body = json!({"input": "hello world", "encoding_format": "base64"});
        let v = single_json(&respond(EchoShape::OpenAi, "embeddings", "echo", &body));
        let decoded = decode_b64(v["data"][0]["embedding"].as_str().unwrap());
        assert_eq!(decoded.len(), DEFAULT_DIMENSIONS);
        // Deterministic: the same text gives the same vector in both encodings.
        assert_eq!(decoded, floats);

        let body = json!({"input": "x", "encoding_format": "base64", "dimensions": 1536});
        let v = single_json(&respond(EchoShape::OpenAi, "embeddings", "echo", &body));
        let decoded = decode_b64(v["data"][0]["embedding"].as_str().unwrap());
        assert_eq!(decoded.len(), 1536);
        let norm: f32 = decoded.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn embeddings_token_arrays_and_errors() {
        let body = json!({"input": [1, 2, 3, 4]});
        let a = respond(EchoShape::OpenAi, "embeddings", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        assert_eq!(a.prompt_tokens, 4);

        let body = json!({"input": [[1, 2], [3], "text"]});
        let a = respond(EchoShape::OpenAi, "embeddings", "echo", &body);
        assert_eq!(single_json(&a)["data"].as_array().unwrap().len(), 3);
        assert_eq!(a.prompt_tokens, 3 + count("text"));

        for body in [
            json!({}),
            json!({"input": []}),
            json!({"input": [{"x": 1}]}),
            json!({"input": "x", "dimensions": 0}),
            json!({"input": "x", "dimensions": 3073}),
            json!({"input": "x", "encoding_format": "hex"}),
        ] {
            let a = respond(EchoShape::OpenAi, "embeddings", "echo", &body);
            assert_eq!(a.status, 400, "{body}");
        }
    }

    fn response_output_text(v: &Value) -> String {
        v["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn responses_plain() {
        let text = "Tell me something";
        let body = json!({"model": "echo", "input": text, "instructions": "Be kind."});
        let a = respond(EchoShape::OpenAi, "responses", "echo", &body);
        let v = single_json(&a);
        assert!(v["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "echo");
        assert_eq!(v["parallel_tool_calls"], true);
        assert_eq!(v["tool_choice"], "auto");
        assert_eq!(v["tools"], json!([]));
        assert!(v["created_at"].is_u64());
        let item = &v["output"][0];
        assert_eq!(item["type"], "message");
        assert_eq!(item["role"], "assistant");
        assert_eq!(item["status"], "completed");
        assert_eq!(item["content"][0]["type"], "output_text");
        assert_eq!(item["content"][0]["annotations"], json!([]));
        assert_eq!(response_output_text(&v), text);
        let prompt = expected_chat_prompt(&["Be kind.", text]);
        assert_eq!(a.prompt_tokens, prompt);
        assert_eq!(v["usage"]["input_tokens"], prompt);
        assert_eq!(v["usage"]["output_tokens"], count(text));
        assert_eq!(v["usage"]["total_tokens"], prompt + count(text));
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 0);
        assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 0);

        let body = json!({"input": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "reply"}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "last "},
                {"type": "input_text", "text": "one"},
            ]},
        ]});
        let a = respond(EchoShape::OpenAi, "responses", "echo", &body);
        let v = single_json(&a);
        assert_eq!(response_output_text(&v), "last one");
        assert_eq!(
            a.prompt_tokens,
            expected_chat_prompt(&["first", "reply", "last one"])
        );

        for body in [json!({}), json!({"input": []}), json!({"input": [3]})] {
            let a = respond(EchoShape::OpenAi, "responses", "echo", &body);
            assert_eq!(a.status, 400, "{body}");
        }
    }

    #[test]
    fn responses_stream() {
        let text = "streaming  responses work";
        let body = json!({"input": text, "stream": true});
        let a = respond(EchoShape::OpenAi, "responses", "echo", &body);
        let events = named_events(&a);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        let words = split_words(text).len();
        let mut expected = vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ];
        expected.extend(std::iter::repeat_n("response.output_text.delta", words));
        expected.extend([
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]);
        assert_eq!(names, expected);
        for (i, (_, e)) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        let joined: String = events
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .map(|(_, e)| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(joined, text);
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert!(events[0].1["response"]["usage"].is_null());
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(response_output_text(done), text);
        assert_eq!(done["usage"]["input_tokens"], a.prompt_tokens);
        assert_eq!(done["usage"]["output_tokens"], a.completion_tokens);
        assert_eq!(a.completion_tokens, count(text));
        let item_id = &events[2].1["item"]["id"];
        assert!(
            events[3..events.len() - 1]
                .iter()
                .all(|(_, e)| &e["item_id"] == item_id || &e["item"]["id"] == item_id)
        );
    }

    #[test]
    fn responses_max_output_tokens() {
        let body = json!({"input": "a b c d e f g h", "max_output_tokens": 3});
        let a = respond(EchoShape::OpenAi, "responses", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(response_output_text(&v), "a b c");
        assert_eq!(a.completion_tokens, 3);

        let body = json!({"input": "a b c d e f g h", "max_output_tokens": 3, "stream": true});
        let events = named_events(&respond(EchoShape::OpenAi, "responses", "echo", &body));
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "response.incomplete");
        assert_eq!(response_output_text(&last["response"]), "a b c");

        // The gateway's default cap arrives as `max_tokens`; the smaller limit wins.
        let body = json!({"input": "a b c d e f g h", "max_output_tokens": 100, "max_tokens": 2});
        let a = respond(EchoShape::OpenAi, "responses", "echo", &body);
        assert_eq!(response_output_text(&single_json(&a)), "a b");
        assert_eq!(a.completion_tokens, 2);
    }

    fn anthropic_body(text: &str) -> Value {
        json!({
            "model": "echo",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [
                {"role": "user", "content": "earlier question"},
                {"role": "assistant", "content": [{"type": "text", "text": "earlier answer"}]},
                {"role": "user", "content": [{"type": "text", "text": text}]},
            ],
        })
    }

    fn expected_anthropic_prompt(text: &str) -> u64 {
        count("You are terse.")
            + count("earlier question")
            + count("earlier answer")
            + count(text)
            + 9
    }

    #[test]
    fn messages_plain() {
        let text = "Hi Claude, echo this.";
        let a = respond(
            EchoShape::Anthropic,
            "messages",
            "echo",
            &anthropic_body(text),
        );
        let v = single_json(&a);
        assert!(v["id"].as_str().unwrap().starts_with("msg_echo"));
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "echo");
        assert_eq!(v["content"], json!([{"type": "text", "text": text}]));
        assert_eq!(v["stop_reason"], "end_turn");
        assert!(v["stop_sequence"].is_null());
        let prompt = expected_anthropic_prompt(text);
        assert_eq!(a.prompt_tokens, prompt);
        assert_eq!(v["usage"]["input_tokens"], prompt);
        assert_eq!(v["usage"]["output_tokens"], count(text));
        assert_eq!(a.completion_tokens, count(text));

        // A plain-string system prompt counts the same.
        let mut body = anthropic_body(text);
        body["system"] = json!("You are terse.");
        let a = respond(EchoShape::Anthropic, "messages", "echo", &body);
        assert_eq!(a.prompt_tokens, prompt);
    }

    #[test]
    fn messages_stream() {
        let text = "word by word, please";
        let mut body = anthropic_body(text);
        body["stream"] = json!(true);
        let a = respond(EchoShape::Anthropic, "messages", "echo", &body);
        let events = named_events(&a);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected = vec!["message_start", "content_block_start", "ping"];
        expected.extend(std::iter::repeat_n(
            "content_block_delta",
            split_words(text).len(),
        ));
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names, expected);
        let start = &events[0].1["message"];
        assert_eq!(start["usage"]["input_tokens"], a.prompt_tokens);
        assert_eq!(start["usage"]["output_tokens"], 1);
        assert_eq!(start["content"], json!([]));
        assert!(start["stop_reason"].is_null());
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        let joined: String = events
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, e)| {
                assert_eq!(e["delta"]["type"], "text_delta");
                assert_eq!(e["index"], 0);
                e["delta"]["text"].as_str().unwrap()
            })
            .collect();
        assert_eq!(joined, text);
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], count(text));
        assert_eq!(a.completion_tokens, count(text));
    }

    #[test]
    fn messages_max_tokens() {
        let mut body = anthropic_body("one two three four five");
        body["max_tokens"] = json!(2);
        let a = respond(EchoShape::Anthropic, "messages", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["content"][0]["text"], "one two");
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(a.completion_tokens, 2);

        body["stream"] = json!(true);
        let events = named_events(&respond(EchoShape::Anthropic, "messages", "echo", &body));
        let joined: String = events
            .iter()
            .filter_map(|(_, e)| e["delta"]["text"].as_str())
            .collect();
        assert_eq!(joined, "one two");
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
        assert_eq!(delta["usage"]["output_tokens"], 2);
    }

    #[test]
    fn messages_bad_bodies() {
        for body in [
            json!({"max_tokens": 10}),
            json!({"messages": []}),
            json!({"messages": [{"content": "x"}]}),
            json!("text"),
        ] {
            let a = respond(EchoShape::Anthropic, "messages", "echo", &body);
            assert_eq!(a.status, 400, "{body}");
            let v = single_json(&a);
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn count_tokens_matches_messages() {
        let text = "how many tokens?";
        let a = respond(
            EchoShape::Anthropic,
            "count_tokens",
            "echo",
            &anthropic_body(text),
        );
        let v = single_json(&a);
        assert_eq!(v, json!({"input_tokens": expected_anthropic_prompt(text)}));
        assert_eq!(a.prompt_tokens, expected_anthropic_prompt(text));
        assert_eq!(a.completion_tokens, 0);
        let a = respond(EchoShape::Anthropic, "count_tokens", "echo", &json!({}));
        assert_eq!(a.status, 400);
    }

    #[test]
    fn tool_result_text_is_read() {
        let body = json!({"messages": [{"role": "user", "content": [
            {
                "type": "tool_result",
                "tool_use_id": "t1",
                "content": [{"type": "text", "text": "result!"}],
            },
        ]}]});
        let v = single_json(&respond(EchoShape::Anthropic, "messages", "echo", &body));
        assert_eq!(v["content"][0]["text"], "result!");
    }

    #[test]
    fn cohere_v2_plain_and_stream() {
        let text = "echo for cohere  v2";
        let body = json!({"model": "echo", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": text}]},
        ]});
        let a = respond(EchoShape::Cohere, "chat_v2", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["message"]["role"], "assistant");
        assert_eq!(
            v["message"]["content"],
            json!([{"type": "text", "text": text}])
        );
        assert_eq!(v["finish_reason"], "COMPLETE");
        let prompt = expected_chat_prompt(&["be brief", text]);
        assert_eq!(a.prompt_tokens, prompt);
        assert_eq!(a.completion_tokens, count(text));
        assert_eq!(v["usage"]["billed_units"]["input_tokens"], prompt);
        assert_eq!(v["usage"]["billed_units"]["output_tokens"], count(text));
        assert_eq!(v["usage"]["tokens"], v["usage"]["billed_units"]);

        let mut body = body;
        body["stream"] = json!(true);
        let a = respond(EchoShape::Cohere, "chat_v2", "echo", &body);
        assert_eq!(a.content_type, SSE);
        let events = named_events(&a);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected = vec!["message-start", "content-start"];
        expected.extend(std::iter::repeat_n(
            "content-delta",
            split_words(text).len(),
        ));
        expected.extend(["content-end", "message-end"]);
        assert_eq!(names, expected);
        for (name, e) in &events {
            assert_eq!(&e["type"], name);
        }
        let joined: String = events
            .iter()
            .filter(|(n, _)| n == "content-delta")
            .map(|(_, e)| e["delta"]["message"]["content"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(joined, text);
        let end = &events.last().unwrap().1["delta"];
        assert_eq!(end["finish_reason"], "COMPLETE");
        assert_eq!(end["usage"]["billed_units"]["input_tokens"], prompt);
        assert_eq!(end["usage"]["billed_units"]["output_tokens"], count(text));
        assert_eq!(end["usage"]["tokens"]["output_tokens"], count(text));
    }

    #[test]
    fn cohere_v2_max_tokens_and_errors() {
        let body = json!({"messages": [{"role": "user", "content": "a b c d e"}], "max_tokens": 2});
        let a = respond(EchoShape::Cohere, "chat_v2", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["message"]["content"][0]["text"], "a b");
        assert_eq!(v["finish_reason"], "MAX_TOKENS");
        assert_eq!(a.completion_tokens, 2);
        for body in [
            json!({}),
            json!({"messages": []}),
            json!({"messages": [{"content": "x"}]}),
        ] {
            let a = respond(EchoShape::Cohere, "chat_v2", "echo", &body);
            assert_eq!(a.status, 400, "{body}");
            assert_eq!(single_json(&a)["type"], "invalid_request_error");
            assert!(single_json(&a)["message"].is_string());
        }
        let a = respond(EchoShape::Cohere, "embeddings", "echo", &json!({}));
        assert_eq!(a.status, 404);
        assert_eq!(single_json(&a)["type"], "not_found");
    }

    #[test]
    fn cohere_v1_plain_and_stream() {
        let text = "echo for cohere v1";
        let body = json!({
            "model": "echo",
            "message": text,
            "preamble": "be brief",
            "chat_history": [
                {"role": "USER", "message": "before"},
                {"role": "CHATBOT", "message": "reply"},
            ],
        });
        let a = respond(EchoShape::Cohere, "chat_v1", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["text"], text);
        assert!(v["generation_id"].is_string());
        assert_eq!(v["finish_reason"], "COMPLETE");
        let prompt = expected_chat_prompt(&["be brief", "before", "reply", text]);
        assert_eq!(a.prompt_tokens, prompt);
        assert_eq!(v["meta"]["billed_units"]["input_tokens"], prompt);
        assert_eq!(v["meta"]["billed_units"]["output_tokens"], count(text));
        assert_eq!(v["chat_history"].as_array().unwrap().len(), 4);
        assert_eq!(
            v["chat_history"][3],
            json!({"role": "CHATBOT", "message": text})
        );

        let mut body = body;
        body["stream"] = json!(true);
        let a = respond(EchoShape::Cohere, "chat_v1", "echo", &body);
        assert_eq!(a.content_type, NDJSON);
        let lines: Vec<Value> = a
            .chunks
            .iter()
            .map(|c| {
                let s = std::str::from_utf8(c).unwrap();
                assert!(s.ends_with('\n') && !s[..s.len() - 1].contains('\n'));
                serde_json::from_str(s).unwrap()
            })
            .collect();
        assert_eq!(lines[0]["event_type"], "stream-start");
        assert_eq!(lines.len(), split_words(text).len() + 2);
        let joined: String = lines[1..lines.len() - 1]
            .iter()
            .map(|e| {
                assert_eq!(e["event_type"], "text-generation");
                e["text"].as_str().unwrap()
            })
            .collect();
        assert_eq!(joined, text);
        let end = lines.last().unwrap();
        assert_eq!(end["event_type"], "stream-end");
        assert_eq!(end["is_finished"], true);
        assert_eq!(end["response"]["text"], text);
        assert_eq!(end["response"]["generation_id"], lines[0]["generation_id"]);
        assert_eq!(
            end["response"]["meta"]["billed_units"]["output_tokens"],
            count(text)
        );
        assert_eq!(a.completion_tokens, count(text));

        for body in [
            json!({}),
            json!({"message": 3}),
            json!({"message": "x", "chat_history": "no"}),
        ] {
            assert_eq!(
                respond(EchoShape::Cohere, "chat_v1", "echo", &body).status,
                400
            );
        }
    }

    fn gemini_body(text: &str) -> Value {
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "earlier"}]},
                {"role": "model", "parts": [{"text": "answer"}]},
                {"role": "user", "parts": [{"text": text}, {"text": "!"}]},
            ],
            "systemInstruction": {"parts": [{"text": "be brief"}]},
        })
    }

    #[test]
    fn google_generate_plain() {
        let text = "echo for gemini";
        let a = respond(
            EchoShape::Google,
            "generateContent",
            "echo",
            &gemini_body(text),
        );
        let v = single_json(&a);
        let reply = format!("{text}!");
        let cand = &v["candidates"][0];
        assert_eq!(
            cand["content"],
            json!({"parts": [{"text": reply}], "role": "model"})
        );
        assert_eq!(cand["finishReason"], "STOP");
        assert_eq!(cand["index"], 0);
        assert_eq!(v["modelVersion"], "echo");
        let prompt = count("be brief") + count("earlier") + count("answer") + count(&reply);
        assert_eq!(a.prompt_tokens, prompt);
        assert_eq!(a.completion_tokens, count(&reply));
        let u = &v["usageMetadata"];
        assert_eq!(u["promptTokenCount"], prompt);
        assert_eq!(u["candidatesTokenCount"], count(&reply));
        assert_eq!(u["totalTokenCount"], prompt + count(&reply));

        // No role counts as the user; a later model turn does not.
        let body = json!({"contents": [{"parts": [{"text": "mine"}]}, {"role": "model", "parts": [{"text": "x"}]}]});
        let v = single_json(&respond(
            EchoShape::Google,
            "generateContent",
            "echo",
            &body,
        ));
        assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "mine");

        // maxOutputTokens (and the gateway's max_tokens) cut the reply.
        let mut body = gemini_body("one two three four");
        body["generationConfig"] = json!({"maxOutputTokens": 2});
        let a = respond(EchoShape::Google, "generateContent", "echo", &body);
        let v = single_json(&a);
        assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "one two");
        assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(a.completion_tokens, 2);
    }

    #[test]
    fn google_stream_chunks() {
        let text = "echo gemini  in a stream";
        let body = json!({"contents": [{"role": "user", "parts": [{"text": text}]}]});
        let a = respond(EchoShape::Google, "streamGenerateContent", "echo", &body);
        assert_eq!(a.content_type, SSE);
        assert_eq!(a.chunks.len(), split_words(text).len());
        let mut joined = String::new();
        for (i, c) in a.chunks.iter().enumerate() {
            let s = std::str::from_utf8(c).unwrap();
            let json = s
                .strip_prefix("data: ")
                .unwrap()
                .strip_suffix("\r\n\r\n")
                .unwrap();
            let v: Value = serde_json::from_str(json).unwrap();
            let cand = &v["candidates"][0];
            joined.push_str(cand["content"]["parts"][0]["text"].as_str().unwrap());
            assert_eq!(cand["content"]["role"], "model");
            assert_eq!(v["usageMetadata"]["promptTokenCount"], count(text));
            if i + 1 == a.chunks.len() {
                assert_eq!(cand["finishReason"], "STOP");
                assert_eq!(v["usageMetadata"]["candidatesTokenCount"], count(text));
            } else {
                assert!(cand.get("finishReason").is_none());
            }
        }
        assert_eq!(joined, text);
        assert_eq!(a.prompt_tokens, count(text));
        assert_eq!(a.completion_tokens, count(text));
    }

    #[test]
    fn google_count_tokens_and_errors() {
        let body = gemini_body("count me");
        let generated = respond(EchoShape::Google, "generateContent", "echo", &body);
        let a = respond(EchoShape::Google, "countTokens", "echo", &body);
        assert_eq!(single_json(&a)["totalTokens"], generated.prompt_tokens);
        assert_eq!(a.completion_tokens, 0);
        let wrapped = json!({"generateContentRequest": body});
        let a = respond(EchoShape::Google, "countTokens", "echo", &wrapped);
        assert_eq!(single_json(&a)["totalTokens"], generated.prompt_tokens);

        for body in [
            json!({}),
            json!({"contents": []}),
            json!({"contents": ["x"]}),
            json!({"contents": [{"parts": []}], "generationConfig": {"maxOutputTokens": 0}}),
        ] {
            let a = respond(EchoShape::Google, "generateContent", "echo", &body);
            assert_eq!(a.status, 400, "{body}");
            let v = single_json(&a);
            assert_eq!(v["error"]["code"], 400);
            assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
        }
        let a = respond(EchoShape::Google, "embedContent", "echo", &json!({}));
        assert_eq!(a.status, 404);
        assert_eq!(single_json(&a)["error"]["status"], "NOT_FOUND");
        // Other shapes do not answer Google's or Cohere's endpoints.
        assert_eq!(
            respond(EchoShape::OpenAi, "generateContent", "echo", &json!({})).status,
            404
        );
        assert_eq!(
            respond(EchoShape::Anthropic, "chat_v2", "echo", &json!({})).status,
            404
        );
    }
}
