//! The other providers' wire formats: Cohere (v1 and v2 chat, embed,
//! rerank), Google Gemini API / Vertex AI (generateContent,
//! streamGenerateContent with `alt=sse`, countTokens, embedContent,
//! batchEmbedContents), Azure OpenAI deployment paths, Hugging Face
//! (serverless models, feature extraction), Vectara v2 query, and an OAuth2
//! token endpoint (`POST /token`, JWT-bearer grant) for Vertex AI.
//!
//! Credentials whose value contains `mock-fail-401`, `mock-fail-429` or
//! `mock-fail-500` make any API request fail that way (failover tests).

use super::*;

/// Which native API a path belongs to.
pub(crate) enum Native<'a> {
    CohereChat { v2: bool },
    CohereEmbed { v2: bool },
    CohereRerank,
    Google { model: &'a str, method: &'a str },
    AzureDeployment { deployment: &'a str, rest: &'a str },
    HfFeatureExtraction { model: &'a str },
    HfModel { model: &'a str },
    VectaraQuery,
    Token,
}

pub(crate) fn classify<'a>(method: &Method, path: &'a str) -> Option<Native<'a>> {
    if method != Method::POST {
        return None;
    }
    Some(match path {
        "/v1/chat" => Native::CohereChat { v2: false },
        "/v2/chat" => Native::CohereChat { v2: true },
        "/v1/embed" => Native::CohereEmbed { v2: false },
        "/v2/embed" => Native::CohereEmbed { v2: true },
        "/v1/rerank" | "/v2/rerank" => Native::CohereRerank,
        "/v2/query" => Native::VectaraQuery,
        "/token" => Native::Token,
        p if p.starts_with("/v2/corpora/") && p.ends_with("/query") => Native::VectaraQuery,
        p if p.starts_with("/openai/deployments/") => {
            let tail = &p["/openai/deployments/".len()..];
            let (deployment, rest) = tail.split_once('/')?;
            Native::AzureDeployment { deployment, rest }
        }
        p if p.starts_with("/hf-inference/models/")
            && p.ends_with("/pipeline/feature-extraction") =>
        {
            let model =
                &p["/hf-inference/models/".len()..p.len() - "/pipeline/feature-extraction".len()];
            Native::HfFeatureExtraction { model }
        }
        p if p.contains("models/") && p.contains(':') => {
            let i = p.rfind("models/")?;
            let (model, method) = p[i + "models/".len()..].split_once(':')?;
            Native::Google { model, method }
        }
        p if p.starts_with("/models/") => Native::HfModel {
            model: &p["/models/".len()..],
        },
        _ => return None,
    })
}

fn google_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        _ => "INTERNAL",
    }
}

/// An error in the API's own shape.
fn native_error(n: &Native<'_>, status: StatusCode, message: &str) -> Response {
    let body = match n {
        Native::CohereChat { .. } | Native::CohereEmbed { .. } | Native::CohereRerank => {
            json!({"id": "mock-error", "message": message})
        }
        Native::Google { .. } => json!({"error": {
            "code": status.as_u16(), "message": message, "status": google_status(status.as_u16())
        }}),
        Native::VectaraQuery => json!({"messages": [message], "request_id": "mock"}),
        _ => {
            json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
        }
    };
    let retry = [("retry-after", "1")];
    let extra: &[(&'static str, &str)] = if status == StatusCode::TOO_MANY_REQUESTS {
        &retry
    } else {
        &[]
    };
    json_response(status, &body, extra)
}

/// The credential of a native request, from every header a provider uses
/// (and Gemini's `?key=`).
fn native_credential(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    for h in ["authorization", "x-api-key", "api-key", "x-goog-api-key"] {
        if let Some(v) = headers.get(h) {
            return Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("key="))
        .map(str::to_owned)
}

pub(crate) async fn handle_native(
    state: &MockState,
    n: Native<'_>,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &Bytes,
) -> Response {
    if let Native::Token = n {
        return token(state, query, body);
    }
    let Some(cred) = native_credential(headers, query) else {
        return native_error(&n, StatusCode::UNAUTHORIZED, "no API key (mock)");
    };
    for (marker, status) in [
        ("mock-fail-401", StatusCode::UNAUTHORIZED),
        ("mock-fail-429", StatusCode::TOO_MANY_REQUESTS),
        ("mock-fail-500", StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        if cred.contains(marker) {
            return native_error(&n, status, &format!("{marker} (mock)"));
        }
    }
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if !req.is_object() {
        return native_error(
            &n,
            StatusCode::BAD_REQUEST,
            "request body must be a JSON object (mock)",
        );
    }
    let body_model = req.get("model").and_then(Value::as_str).unwrap_or("");
    let model = match &n {
        Native::Google { model, .. } => *model,
        Native::AzureDeployment { deployment, .. } => *deployment,
        Native::HfFeatureExtraction { model } | Native::HfModel { model } => *model,
        _ => body_model,
    };
    match model {
        "mock-error-400" => {
            return native_error(&n, StatusCode::BAD_REQUEST, "bad request from mock");
        }
        "mock-error-429" => {
            return native_error(
                &n,
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit exceeded (mock)",
            );
        }
        "mock-error-500" => {
            return native_error(
                &n,
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("internal error from mock; received credential: {cred}"),
            );
        }
        _ => {}
    }
    let streaming = req.get("stream").and_then(Value::as_bool) == Some(true);
    let id = state.next_id();
    match n {
        Native::CohereChat { v2 } => cohere_chat(id, model, &req, v2, streaming),
        Native::CohereEmbed { v2 } => cohere_embed(id, &req, v2),
        Native::CohereRerank => cohere_rerank(id, &req),
        Native::Google { model, method } => google(id, model, method, &req, query),
        Native::AzureDeployment { deployment, rest } => {
            let mut req = req.clone();
            if req.get("model").is_none() {
                req["model"] = Value::from(deployment);
            }
            let ctx = Ctx {
                id,
                model: req["model"].as_str().unwrap_or(deployment).to_owned(),
                req: &req,
                mode: Mode::Normal,
                streaming,
            };
            match rest {
                "chat/completions" => chat_completions(ctx),
                "completions" => completions(ctx),
                "embeddings" => embeddings(ctx),
                _ => native_error(&n, StatusCode::NOT_FOUND, "unknown deployment path (mock)"),
            }
        }
        Native::HfFeatureExtraction { .. } => {
            let inputs: Vec<String> = match req.get("inputs") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => vec![],
            };
            let rows: Vec<Value> = inputs
                .iter()
                .map(|t| {
                    Value::Array(
                        embedding_of(t)
                            .iter()
                            .map(|f| json!(f64::from(*f)))
                            .collect(),
                    )
                })
                .collect();
            let v = if matches!(req.get("inputs"), Some(Value::String(_))) {
                rows.into_iter().next().unwrap_or(Value::Null)
            } else {
                Value::Array(rows)
            };
            json_response(StatusCode::OK, &v, &[])
        }
        Native::HfModel { .. } => {
            let text = req.get("inputs").and_then(Value::as_str).unwrap_or("");
            json_response(
                StatusCode::OK,
                &json!([{"generated_text": format!("{text} mock: {text}")}]),
                &[],
            )
        }
        Native::VectaraQuery => {
            let q = req.get("query").and_then(Value::as_str).unwrap_or("");
            json_response(
                StatusCode::OK,
                &json!({
                    "summary": format!("mock: {q}"),
                    "search_results": [{"text": format!("mock result for {q}"), "score": 0.9, "document_id": "doc1"}],
                    "factual_consistency_score": 0.8
                }),
                &[],
            )
        }
        Native::Token => unreachable!("handled above"),
    }
}

/// `POST /token` (OAuth2 JWT-bearer grant). The assertion's claims are
/// checked for shape (its signature is checked by the tests, which hold the
/// public key). `?expires_in=N` sets the token's lifetime.
fn token(state: &MockState, query: Option<&str>, body: &Bytes) -> Response {
    let form = String::from_utf8_lossy(body);
    let field = |name: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    let bad = |msg: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "invalid_grant", "error_description": msg}),
            &[],
        )
    };
    if field("grant_type").as_deref()
        != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
    {
        return bad("grant_type must be the JWT bearer grant");
    }
    let Some(assertion) = field("assertion") else {
        return bad("no assertion");
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return bad("assertion is not a JWT");
    }
    let expires_in: u64 = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("expires_in=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3600);
    let id = state.next_id();
    json_response(
        StatusCode::OK,
        &json!({"access_token": format!("ya29.mock-token-{id}"), "expires_in": expires_in, "token_type": "Bearer"}),
        &[],
    )
}

// ----------------------------------------------------------------- Cohere

fn cohere_chat(id: u64, _model: &str, req: &Value, v2: bool, streaming: bool) -> Response {
    // v2: messages[]; v1: message + chat_history[] + preamble.
    let mut words = 0;
    let mut last_user = String::new();
    if v2 {
        for m in req
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = content_text(m.get("content").unwrap_or(&Value::Null));
            words += count_words(&text);
            if m.get("role").and_then(Value::as_str) == Some("user") {
                last_user = text;
            }
        }
    } else {
        last_user = req
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        words += count_words(&last_user);
        for m in req
            .get("chat_history")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            words += count_words(m.get("message").and_then(Value::as_str).unwrap_or(""));
        }
        words += count_words(req.get("preamble").and_then(Value::as_str).unwrap_or(""));
    }
    let reply = format!("mock: {last_user}");
    let (p, c) = (words, count_words(&reply));
    let billed = json!({"input_tokens": p, "output_tokens": c});
    let tokens = json!({"input_tokens": p + 60, "output_tokens": c});
    let gid = format!("mock-gen-{id}");
    if v2 {
        let usage = json!({"billed_units": billed, "tokens": tokens});
        if !streaming {
            return json_response(
                StatusCode::OK,
                &json!({
                    "id": gid,
                    "finish_reason": "COMPLETE",
                    "message": {"role": "assistant", "content": [{"type": "text", "text": reply}]},
                    "usage": usage
                }),
                &[],
            );
        }
        let mut events = Vec::new();
        let mut push = |name: &str, mut v: Value| {
            v["type"] = Value::from(name);
            events.push(sse_event(name, &v));
        };
        push(
            "message-start",
            json!({"id": gid, "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
        );
        push(
            "content-start",
            json!({"index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
        );
        for w in word_chunks(&reply) {
            push(
                "content-delta",
                json!({"index": 0, "delta": {"message": {"content": {"text": w}}}}),
            );
        }
        push("content-end", json!({"index": 0}));
        push(
            "message-end",
            json!({"delta": {"finish_reason": "COMPLETE", "usage": usage}}),
        );
        return sse_response(Flavor::OpenAi, id, events, false);
    }
    let meta = json!({"api_version": {"version": "1"}, "billed_units": billed, "tokens": tokens});
    let full = json!({
        "response_id": format!("mock-resp-{id}"),
        "text": reply,
        "generation_id": gid,
        "chat_history": [
            {"role": "USER", "message": last_user},
            {"role": "CHATBOT", "message": reply}
        ],
        "finish_reason": "COMPLETE",
        "meta": meta
    });
    if !streaming {
        return json_response(StatusCode::OK, &full, &[]);
    }
    // v1 streams JSON lines.
    let mut lines =
        vec![json!({"is_finished": false, "event_type": "stream-start", "generation_id": gid})];
    for w in word_chunks(&reply) {
        lines.push(json!({"is_finished": false, "event_type": "text-generation", "text": w}));
    }
    lines.push(json!({"is_finished": true, "event_type": "stream-end", "finish_reason": "COMPLETE", "response": full}));
    let chunks: Vec<Bytes> = lines
        .iter()
        .map(|l| Bytes::from(format!("{l}\n")))
        .collect();
    let mut resp = Response::new(Body::from_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, Infallible>),
    )));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/stream+json"),
    );
    resp
}

fn cohere_embed(id: u64, req: &Value, v2: bool) -> Response {
    let texts: Vec<String> = req
        .get("texts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let p: u64 = texts.iter().map(|t| count_words(t)).sum();
    let vecs: Vec<Value> = texts
        .iter()
        .map(|t| {
            Value::Array(
                embedding_of(t)
                    .iter()
                    .map(|f| json!(f64::from(*f)))
                    .collect(),
            )
        })
        .collect();
    let meta = json!({"api_version": {"version": if v2 { "2" } else { "1" }}, "billed_units": {"input_tokens": p}});
    let v = if v2 {
        json!({"id": format!("mock-embed-{id}"), "response_type": "embeddings_by_type",
               "embeddings": {"float": vecs}, "texts": texts, "meta": meta})
    } else {
        json!({"id": format!("mock-embed-{id}"), "response_type": "embeddings_floats",
               "embeddings": vecs, "texts": texts, "meta": meta})
    };
    json_response(StatusCode::OK, &v, &[])
}

fn cohere_rerank(id: u64, req: &Value) -> Response {
    let n = req
        .get("documents")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let top = req
        .get("top_n")
        .and_then(Value::as_u64)
        .map_or(n, |t| (t as usize).min(n));
    let results: Vec<Value> = (0..top)
        .map(|i| json!({"index": i, "relevance_score": 1.0 / (i as f64 + 1.0)}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"id": format!("mock-rerank-{id}"), "results": results,
                "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}}),
        &[],
    )
}

// ----------------------------------------------------------------- Google

/// Words of every text part of `contents` and `systemInstruction`, and the
/// last user text.
fn google_input(req: &Value) -> (u64, String) {
    let mut words = 0;
    let mut last_user = String::new();
    let parts_text = |c: &Value| -> String {
        c.get("parts")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    if let Some(si) = req
        .get("systemInstruction")
        .or_else(|| req.get("system_instruction"))
    {
        words += count_words(&parts_text(si));
    }
    for c in req
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let t = parts_text(c);
        words += count_words(&t);
        if c.get("role").and_then(Value::as_str).unwrap_or("user") == "user" {
            last_user = t;
        }
    }
    (words, last_user)
}

fn google(id: u64, model: &str, method: &str, req: &Value, query: Option<&str>) -> Response {
    match method {
        "generateContent" | "streamGenerateContent" => {}
        "countTokens" => {
            let inner = req.get("generateContentRequest").unwrap_or(req);
            let (p, _) = google_input(inner);
            return json_response(StatusCode::OK, &json!({"totalTokens": p}), &[]);
        }
        "embedContent" => {
            let t = req
                .pointer("/content/parts/0/text")
                .and_then(Value::as_str)
                .unwrap_or("");
            let values: Vec<Value> = embedding_of(t)
                .iter()
                .map(|f| json!(f64::from(*f)))
                .collect();
            return json_response(
                StatusCode::OK,
                &json!({"embedding": {"values": values}}),
                &[],
            );
        }
        "batchEmbedContents" => {
            let embeddings: Vec<Value> = req
                .get("requests")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| {
                    let t = r.pointer("/content/parts/0/text").and_then(Value::as_str).unwrap_or("");
                    json!({"values": embedding_of(t).iter().map(|f| json!(f64::from(*f))).collect::<Vec<_>>()})
                })
                .collect();
            return json_response(StatusCode::OK, &json!({"embeddings": embeddings}), &[]);
        }
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"code": 404, "message": format!("method {method} not found (mock)"), "status": "NOT_FOUND"}}),
                &[],
            );
        }
    }
    let (p, last_user) = google_input(req);
    let reply = format!("mock: {last_user}");
    let c = count_words(&reply);
    let usage = json!({"promptTokenCount": p, "candidatesTokenCount": c, "totalTokenCount": p + c});
    let candidate = |text: &str, finish: Option<&str>| {
        let mut v = json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
        if let Some(f) = finish {
            v["finishReason"] = Value::from(f);
        }
        v
    };
    let rid = format!("mock-resp-{id}");
    if method == "generateContent" {
        return json_response(
            StatusCode::OK,
            &json!({"candidates": [candidate(&reply, Some("STOP"))], "usageMetadata": usage,
                    "modelVersion": model, "responseId": rid}),
            &[],
        );
    }
    let sse = query.is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
    let words = word_chunks(&reply);
    let n = words.len();
    let chunks: Vec<Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let last = i + 1 == n;
            let u = if last {
                usage.clone()
            } else {
                json!({"promptTokenCount": p, "totalTokenCount": p})
            };
            json!({"candidates": [candidate(w, last.then_some("STOP"))], "usageMetadata": u,
                   "modelVersion": model, "responseId": rid})
        })
        .collect();
    if !sse {
        // Without alt=sse the API streams one JSON array.
        return json_response(StatusCode::OK, &Value::Array(chunks), &[]);
    }
    let events: Vec<Bytes> = chunks
        .iter()
        .map(|v| Bytes::from(format!("data: {v}\r\n\r\n")))
        .collect();
    sse_response(Flavor::OpenAi, id, events, false)
}
