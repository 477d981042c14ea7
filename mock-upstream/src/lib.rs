//! A fast, faithful mock of the OpenAI and Anthropic HTTP APIs, and of
//! Cohere, Gemini / Vertex AI, Azure OpenAI, Hugging Face and Vectara
//! (see `native.rs`).
//!
//! Used by bursar's Rust integration tests, its Python-SDK tests and its load
//! benchmark. Every request is recorded (method, path, query, headers, body) in
//! a ring buffer bounded to the last [`MAX_RECORDED`] requests.
//!
//! Special `model` values provoke test behaviours:
//!
//! | model            | behaviour                                                        |
//! |------------------|------------------------------------------------------------------|
//! | `mock-error-400` | 400, provider-shaped `invalid_request_error`                     |
//! | `mock-error-500` | 500, provider-shaped error whose message echoes the credential   |
//! | `mock-error-429` | 429 with `retry-after: 1`, provider-shaped rate-limit error      |
//! | `mock-echo-key`  | normal 200 answer whose reply text is the credential header value|
//! | `mock-slow`      | streaming: 200 ms between events; non-streaming: answer after 1 s|
//! | `mock-hang`      | never answers (sleeps one hour)                                  |

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

/// How many requests are kept in the recording ring buffer.
pub const MAX_RECORDED: usize = 1000;

/// Largest request body the mock accepts.
const MAX_BODY: usize = 64 << 20;

/// Delay between streamed events for `mock-slow`.
const SLOW_CHUNK_DELAY: Duration = Duration::from_millis(200);

/// Delay before a non-streamed answer for `mock-slow`.
const SLOW_ANSWER_DELAY: Duration = Duration::from_secs(1);

/// How long `mock-hang` waits (effectively forever for a test).
const HANG_DELAY: Duration = Duration::from_secs(3600);

/// Fixed `created` timestamp of the listed models.
const MODELS_CREATED: u64 = 1_700_000_000;

/// One request received by the mock.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names are lowercase, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for (k, v) in &self.headers {
            match headers.get_mut(k) {
                Some(Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(v);
                }
                _ => {
                    headers.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
        json!({
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

/// Shared state of the mock: the request recording and an id counter.
#[derive(Clone)]
pub struct MockState {
    inner: Arc<Inner>,
}

struct Inner {
    requests: Mutex<VecDeque<RecordedRequest>>,
    next_id: AtomicU64,
}

impl Default for MockState {
    fn default() -> Self {
        Self::new()
    }
}

impl MockState {
    pub fn new() -> Self {
        MockState {
            inner: Arc::new(Inner {
                requests: Mutex::new(VecDeque::with_capacity(MAX_RECORDED)),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, req: RecordedRequest) {
        let mut q = self.lock();
        if q.len() >= MAX_RECORDED {
            q.pop_front();
        }
        q.push_back(req);
    }

    /// Every recorded request (at most the last [`MAX_RECORDED`]), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().iter().cloned().collect()
    }

    /// Forget all recorded requests.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A mock upstream serving on 127.0.0.1 in a background task. Dropping it
/// stops the server: the listener closes and every open connection (idle
/// keep-alive or in flight) is cut.
pub struct MockUpstream {
    addr: SocketAddr,
    state: MockState,
    /// Dropping this sender shuts the server and its connections down.
    _shutdown: watch::Sender<()>,
}

impl MockUpstream {
    /// Bind 127.0.0.1:0, serve in a background tokio task, return a handle.
    pub async fn start() -> MockUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock-upstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock-upstream: local_addr");
        let state = MockState::new();
        let app = router(state.clone());
        let (tx, rx) = watch::channel(());
        tokio::spawn(serve_until_dropped(listener, app, rx));
        MockUpstream {
            addr,
            state,
            _shutdown: tx,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far (at most the last [`MAX_RECORDED`]), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    pub fn clear(&self) {
        self.state.clear()
    }

    /// The shared state (recording) behind this server.
    pub fn state(&self) -> &MockState {
        &self.state
    }
}

/// Serve `app` (HTTP/1.1, TCP_NODELAY) on `listener` until the future is
/// dropped; dropping it also cuts every connection it accepted.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let (_tx, rx) = watch::channel(());
    serve_until_dropped(listener, app, rx).await
}

/// Serve until the sender of `shutdown` is dropped, then close the listener
/// and cut all connections.
async fn serve_until_dropped(
    listener: tokio::net::TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    // Transient (e.g. too many open files): back off briefly.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}

/// Build the mock's router: the provider APIs plus the control endpoints
/// `GET /__mock/requests`, `POST /__mock/clear` and `GET /__mock/health`
/// (control requests are not recorded).
pub fn router(state: MockState) -> Router {
    Router::new()
        .route("/__mock/requests", get(list_requests))
        .route("/__mock/clear", post(clear_requests))
        .route("/__mock/health", get(|| async { "ok" }))
        .fallback(handle)
        .with_state(state)
}

async fn list_requests(State(state): State<MockState>) -> Response {
    let list: Vec<Value> = state.lock().iter().map(RecordedRequest::to_json).collect();
    json_response(StatusCode::OK, &Value::Array(list), &[])
}

async fn clear_requests(State(state): State<MockState>) -> Response {
    state.clear();
    json_response(StatusCode::OK, &json!({"cleared": true}), &[])
}

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flavor {
    OpenAi,
    Anthropic,
}

enum Endpoint<'a> {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
    Models,
    Model(&'a str),
}

async fn handle(State(state): State<MockState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                Flavor::OpenAi,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body unreadable or too large",
                &[],
            );
        }
    };
    let path = parts.uri.path();
    state.record(RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: path.to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });
    if let Some(n) = native::classify(&parts.method, path) {
        return native::handle_native(&state, n, &parts.headers, parts.uri.query(), &body).await;
    }
    dispatch(&state, &parts.method, path, &parts.headers, &body).await
}

async fn dispatch(
    state: &MockState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let rest = match path.strip_prefix("/v1") {
        Some(r) if r.starts_with('/') => r,
        _ => path,
    };
    let rest = if rest.len() > 1 {
        rest.trim_end_matches('/')
    } else {
        rest
    };
    let anthropic_version = headers.contains_key("anthropic-version");
    let endpoint = match (method, rest) {
        (&Method::POST, "/chat/completions") => Endpoint::Chat,
        (&Method::POST, "/completions") => Endpoint::Completions,
        (&Method::POST, "/embeddings") => Endpoint::Embeddings,
        (&Method::POST, "/responses") => Endpoint::Responses,
        (&Method::POST, "/messages") => Endpoint::Messages,
        (&Method::POST, "/messages/count_tokens") => Endpoint::CountTokens,
        (&Method::GET, "/models") => Endpoint::Models,
        (&Method::GET, p) if p.len() > "/models/".len() && p.starts_with("/models/") => {
            Endpoint::Model(&p["/models/".len()..])
        }
        _ => {
            let flavor = if anthropic_version {
                Flavor::Anthropic
            } else {
                Flavor::OpenAi
            };
            return not_found(flavor, method, path);
        }
    };
    let flavor = match endpoint {
        Endpoint::Messages | Endpoint::CountTokens => Flavor::Anthropic,
        Endpoint::Models | Endpoint::Model(_)
            if anthropic_version || headers.contains_key("x-api-key") =>
        {
            Flavor::Anthropic
        }
        _ => Flavor::OpenAi,
    };

    let Some(credential) = credential(headers, flavor) else {
        return unauthorized(flavor);
    };
    // Failover tests: a credential can carry a failure to provoke.
    for (marker, status) in [
        ("mock-fail-401", StatusCode::UNAUTHORIZED),
        ("mock-fail-429", StatusCode::TOO_MANY_REQUESTS),
        ("mock-fail-500", StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        if credential.contains(marker) {
            let extra: &[(&'static str, &str)] = if status == StatusCode::TOO_MANY_REQUESTS {
                &[("retry-after", "1")]
            } else {
                &[]
            };
            return error_response(flavor, status, &format!("{marker} (mock)"), extra);
        }
    }

    match endpoint {
        Endpoint::Models => return models_list(flavor),
        Endpoint::Model(id) => return model_get(flavor, id),
        _ => {}
    }

    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error_response(
                flavor,
                StatusCode::BAD_REQUEST,
                "request body must be a JSON object (mock)",
                &[],
            );
        }
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return error_response(
            flavor,
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter (mock)",
            &[],
        );
    };

    let mut mode = Mode::Normal;
    match model {
        "mock-error-400" => {
            return error_response(
                flavor,
                StatusCode::BAD_REQUEST,
                "bad request from mock",
                &[],
            );
        }
        "mock-error-429" => {
            return error_response(
                flavor,
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit exceeded (mock)",
                &[("retry-after", "1")],
            );
        }
        "mock-error-500" => {
            let all = all_credentials(headers).join(" ; ");
            return error_response(
                flavor,
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("internal error from mock; received credential: {all}"),
                &[],
            );
        }
        "mock-hang" => {
            tokio::time::sleep(HANG_DELAY).await;
            return error_response(
                flavor,
                StatusCode::GATEWAY_TIMEOUT,
                "mock-hang gave up",
                &[],
            );
        }
        "mock-slow" => mode = Mode::Slow,
        "mock-echo-key" => mode = Mode::EchoKey(credential),
        _ => {}
    }

    let streaming = req.get("stream").and_then(Value::as_bool) == Some(true);
    if mode == Mode::Slow && !streaming {
        tokio::time::sleep(SLOW_ANSWER_DELAY).await;
    }
    let ctx = Ctx {
        id: state.next_id(),
        model: model.to_owned(),
        req: &req,
        mode,
        streaming,
    };
    match endpoint {
        Endpoint::Chat => chat_completions(ctx),
        Endpoint::Completions => completions(ctx),
        Endpoint::Embeddings => embeddings(ctx),
        Endpoint::Responses => responses(ctx),
        Endpoint::Messages => messages(ctx),
        Endpoint::CountTokens => count_tokens(ctx),
        Endpoint::Models | Endpoint::Model(_) => unreachable!("handled above"),
    }
}

#[derive(PartialEq, Eq, Debug)]
enum Mode {
    Normal,
    Slow,
    EchoKey(String),
}

struct Ctx<'a> {
    id: u64,
    model: String,
    req: &'a Value,
    mode: Mode,
    streaming: bool,
}

impl Ctx<'_> {
    /// The reply text: `mock: <text>`, or the credential for `mock-echo-key`.
    fn reply(&self, text: &str) -> String {
        match &self.mode {
            Mode::EchoKey(cred) => cred.clone(),
            _ => format!("mock: {text}"),
        }
    }

    fn slow(&self) -> bool {
        self.mode == Mode::Slow
    }
}

/// The credential header value: for Anthropic `x-api-key` is preferred, for
/// OpenAI `authorization`.
fn credential(headers: &HeaderMap, flavor: Flavor) -> Option<String> {
    let order = match flavor {
        Flavor::OpenAi => ["authorization", "x-api-key"],
        Flavor::Anthropic => ["x-api-key", "authorization"],
    };
    order.iter().find_map(|name| {
        headers
            .get(*name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    })
}

fn all_credentials(headers: &HeaderMap) -> Vec<String> {
    ["authorization", "x-api-key"]
        .iter()
        .flat_map(|name| headers.get_all(*name).iter())
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Text of a message `content`: a string, or the `text` of its parts joined by
/// a space.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(t);
                }
            }
            out
        }
        _ => String::new(),
    }
}

/// Split `s` into word chunks, each word keeping the whitespace that follows
/// it (so the chunks concatenate back to `s`).
fn word_chunks(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen_word = false;
    let mut after_word_ws = false;
    for (i, c) in s.char_indices() {
        if c.is_whitespace() {
            if seen_word {
                after_word_ws = true;
            }
        } else {
            if after_word_ws {
                out.push(&s[start..i]);
                start = i;
                after_word_ws = false;
            }
            seen_word = true;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

fn json_response(status: StatusCode, v: &Value, extra: &[(&'static str, &str)]) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    resp
}

fn request_id_header(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::OpenAi => "x-request-id",
        Flavor::Anthropic => "request-id",
    }
}

fn ok_json(flavor: Flavor, id: u64, v: &Value) -> Response {
    let rid = format!("req_mock{id}");
    json_response(StatusCode::OK, v, &[(request_id_header(flavor), &rid)])
}

fn sse_data(v: &Value) -> Bytes {
    let mut s = String::with_capacity(128);
    s.push_str("data: ");
    s.push_str(&v.to_string());
    s.push_str("\n\n");
    Bytes::from(s)
}

fn sse_event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

/// A `text/event-stream` response sending `events`; with `slow`, every event
/// after the first is delayed by [`SLOW_CHUNK_DELAY`].
fn sse_response(flavor: Flavor, id: u64, events: Vec<Bytes>, slow: bool) -> Response {
    let body = if slow {
        Body::from_stream(
            futures_util::stream::iter(events.into_iter().enumerate()).then(|(i, ev)| async move {
                if i > 0 {
                    tokio::time::sleep(SLOW_CHUNK_DELAY).await;
                }
                Ok::<_, Infallible>(ev)
            }),
        )
    } else {
        Body::from_stream(futures_util::stream::iter(
            events.into_iter().map(Ok::<_, Infallible>),
        ))
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&format!("req_mock{id}")) {
        h.insert(request_id_header(flavor), v);
    }
    resp
}

fn error_response(
    flavor: Flavor,
    status: StatusCode,
    message: &str,
    extra: &[(&'static str, &str)],
) -> Response {
    let body = match flavor {
        Flavor::OpenAi => {
            let (ty, code) = match status.as_u16() {
                401 => ("invalid_request_error", Value::from("invalid_api_key")),
                404 => ("invalid_request_error", Value::Null),
                429 => ("requests", Value::from("rate_limit_exceeded")),
                500..=599 => ("server_error", Value::Null),
                _ => ("invalid_request_error", Value::Null),
            };
            json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
        }
        Flavor::Anthropic => {
            let ty = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                500..=599 => "api_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": ty, "message": message}})
        }
    };
    json_response(status, &body, extra)
}

fn unauthorized(flavor: Flavor) -> Response {
    let msg = match flavor {
        Flavor::OpenAi => {
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (mock)."
        }
        Flavor::Anthropic => "x-api-key header is required (mock)",
    };
    error_response(flavor, StatusCode::UNAUTHORIZED, msg, &[])
}

fn not_found(flavor: Flavor, method: &Method, path: &str) -> Response {
    let msg = match flavor {
        Flavor::OpenAi => format!("Invalid URL ({method} {path})"),
        Flavor::Anthropic => format!("Not found: {method} {path} (mock)"),
    };
    error_response(flavor, StatusCode::NOT_FOUND, &msg, &[])
}

// ---------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------

fn chat_usage(p: u64, c: u64) -> Value {
    json!({
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

fn include_usage(req: &Value) -> bool {
    req.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
}

fn chat_completions(ctx: Ctx<'_>) -> Response {
    let mut words = 0;
    let mut last_user = String::new();
    if let Some(msgs) = ctx.req.get("messages").and_then(Value::as_array) {
        for m in msgs {
            let text = content_text(m.get("content").unwrap_or(&Value::Null));
            words += count_words(&text);
            if m.get("role").and_then(Value::as_str) == Some("user") {
                last_user = text;
            }
        }
    }
    let p = words + 7;
    let reply = ctx.reply(&last_user);
    let c = count_words(&reply);
    let id = format!("chatcmpl-mock{}", ctx.id);
    let created = now();
    let model = ctx.model.as_str();

    if !ctx.streaming {
        let v = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": chat_usage(p, c),
            "service_tier": "default",
            "system_fingerprint": "fp_mock"
        });
        return ok_json(Flavor::OpenAi, ctx.id, &v);
    }

    let with_usage = include_usage(ctx.req);
    let chunk = |delta: Value, finish: Value| {
        let mut v = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if with_usage {
            v["usage"] = Value::Null;
        }
        sse_data(&v)
    };
    let words = word_chunks(&reply);
    let mut events = Vec::with_capacity(words.len() + 4);
    events.push(chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    for w in words {
        events.push(chunk(json!({"content": w}), Value::Null));
    }
    events.push(chunk(json!({}), Value::from("stop")));
    if with_usage {
        events.push(sse_data(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": chat_usage(p, c)
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(Flavor::OpenAi, ctx.id, events, ctx.slow())
}

fn completions(ctx: Ctx<'_>) -> Response {
    let prompt = match ctx.req.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    let p = count_words(&prompt);
    let reply = ctx.reply(&prompt);
    let c = count_words(&reply);
    let id = format!("cmpl-mock{}", ctx.id);
    let created = now();
    let model = ctx.model.as_str();
    let usage = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});

    if !ctx.streaming {
        let v = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"text": reply, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage
        });
        return ok_json(Flavor::OpenAi, ctx.id, &v);
    }

    let with_usage = include_usage(ctx.req);
    let chunk = |text: &str, finish: Value| {
        let mut v = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]
        });
        if with_usage {
            v["usage"] = Value::Null;
        }
        sse_data(&v)
    };
    let words = word_chunks(&reply);
    let mut events = Vec::with_capacity(words.len() + 3);
    for w in words {
        events.push(chunk(w, Value::Null));
    }
    events.push(chunk("", Value::from("stop")));
    if with_usage {
        events.push(sse_data(&json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(Flavor::OpenAi, ctx.id, events, ctx.slow())
}

/// Deterministic 8-dimensional embedding of `seed`; every value is k/128 for
/// an integer k, so it is exact in f32 and f64.
fn embedding_of(seed: &str) -> [f32; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = [0f32; 8];
    for (i, o) in out.iter_mut().enumerate() {
        let byte = ((h >> (i * 8)) & 0xff) as u8;
        *o = (f32::from(byte) - 128.0) / 128.0;
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn embeddings(ctx: Ctx<'_>) -> Response {
    // Each input: (seed for the vector, token count).
    let mut inputs: Vec<(String, u64)> = Vec::new();
    match ctx.req.get("input") {
        Some(Value::String(s)) => inputs.push((s.clone(), count_words(s))),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            inputs.push((Value::Array(items.clone()).to_string(), items.len() as u64));
        }
        Some(Value::Array(items)) => {
            for it in items {
                match it {
                    Value::String(s) => inputs.push((s.clone(), count_words(s))),
                    Value::Array(toks) => inputs.push((it.to_string(), toks.len() as u64)),
                    other => inputs.push((other.to_string(), 1)),
                }
            }
        }
        _ => {
            return error_response(
                Flavor::OpenAi,
                StatusCode::BAD_REQUEST,
                "'input' is a required property (mock)",
                &[],
            );
        }
    }
    let base64 = ctx.req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut p = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, (seed, toks))| {
            p += toks;
            let e = embedding_of(seed);
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                Value::Array(e.iter().map(|f| json!(f64::from(*f))).collect())
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let v = json!({
        "object": "list",
        "data": data,
        "model": ctx.model,
        "usage": {"prompt_tokens": p, "total_tokens": p}
    });
    ok_json(Flavor::OpenAi, ctx.id, &v)
}

fn responses(ctx: Ctx<'_>) -> Response {
    let mut words = 0;
    let mut last_user = String::new();
    match ctx.req.get("input") {
        Some(Value::String(s)) => {
            words += count_words(s);
            last_user = s.clone();
        }
        Some(Value::Array(items)) => {
            for it in items {
                let text = content_text(it.get("content").unwrap_or(&Value::Null));
                words += count_words(&text);
                if it.get("role").and_then(Value::as_str) == Some("user") {
                    last_user = text;
                }
            }
        }
        _ => {}
    }
    if let Some(s) = ctx.req.get("instructions").and_then(Value::as_str) {
        words += count_words(s);
    }
    let p = words + 7;
    let reply = ctx.reply(&last_user);
    let c = count_words(&reply);
    let resp_id = format!("resp_mock{}", ctx.id);
    let msg_id = format!("msg_mock{}", ctx.id);
    let created = now();

    let usage = json!({
        "input_tokens": p,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": c,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": p + c
    });
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let message = |status: &str, content: Vec<Value>| {
        json!({
            "type": "message",
            "id": msg_id,
            "status": status,
            "role": "assistant",
            "content": content
        })
    };
    let req = ctx.req;
    let response = |status: &str, output: Vec<Value>, usage: Value| {
        json!({
            "id": resp_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": false,
            "completed_at": if status == "completed" { json!(created) } else { Value::Null },
            "error": null,
            "incomplete_details": null,
            "instructions": req.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": req.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "max_tool_calls": null,
            "model": ctx.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": req.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": req.get("store").cloned().unwrap_or(Value::Bool(true)),
            "temperature": req.get("temperature").cloned().unwrap_or(json!(1.0)),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": req.get("top_p").cloned().unwrap_or(json!(1.0)),
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": req.get("metadata").cloned().unwrap_or_else(|| json!({}))
        })
    };

    if !ctx.streaming {
        let v = response(
            "completed",
            vec![message("completed", vec![part(&reply)])],
            usage,
        );
        return ok_json(Flavor::OpenAi, ctx.id, &v);
    }

    let words = word_chunks(&reply);
    let mut events = Vec::with_capacity(words.len() + 8);
    let mut seq = 0u64;
    let mut push = |name: &str, mut v: Value| {
        v["type"] = Value::from(name);
        v["sequence_number"] = Value::from(seq);
        seq += 1;
        events.push(sse_event(name, &v));
    };
    push(
        "response.created",
        json!({"response": response("in_progress", vec![], Value::Null)}),
    );
    push(
        "response.in_progress",
        json!({"response": response("in_progress", vec![], Value::Null)}),
    );
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": message("in_progress", vec![])}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part("")}),
    );
    for w in words {
        push(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": w, "logprobs": []}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": reply, "logprobs": []}),
    );
    push(
        "response.content_part.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part(&reply)}),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": message("completed", vec![part(&reply)])}),
    );
    push(
        "response.completed",
        json!({"response": response(
            "completed",
            vec![message("completed", vec![part(&reply)])],
            usage,
        )}),
    );
    sse_response(Flavor::OpenAi, ctx.id, events, ctx.slow())
}

const OPENAI_MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"];
const ANTHROPIC_MODELS: [(&str, &str); 2] = [
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
];

fn openai_model(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": MODELS_CREATED, "owned_by": "mock"})
}

fn anthropic_model(id: &str, display_name: &str) -> Value {
    json!({
        "type": "model",
        "id": id,
        "display_name": display_name,
        "created_at": "2025-01-01T00:00:00Z",
        "lifecycle": "active"
    })
}

fn models_list(flavor: Flavor) -> Response {
    let v = match flavor {
        Flavor::OpenAi => json!({
            "object": "list",
            "data": OPENAI_MODELS.iter().map(|id| openai_model(id)).collect::<Vec<_>>()
        }),
        Flavor::Anthropic => json!({
            "data": ANTHROPIC_MODELS
                .iter()
                .map(|(id, name)| anthropic_model(id, name))
                .collect::<Vec<_>>(),
            "has_more": false,
            "first_id": ANTHROPIC_MODELS[0].0,
            "last_id": ANTHROPIC_MODELS[ANTHROPIC_MODELS.len() - 1].0
        }),
    };
    json_response(StatusCode::OK, &v, &[])
}

fn model_get(flavor: Flavor, id: &str) -> Response {
    let v = match flavor {
        Flavor::OpenAi => openai_model(id),
        Flavor::Anthropic => {
            let name = ANTHROPIC_MODELS
                .iter()
                .find(|(m, _)| *m == id)
                .map_or(id, |(_, n)| *n);
            anthropic_model(id, name)
        }
    };
    json_response(StatusCode::OK, &v, &[])
}

// ---------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------

/// Words of the system prompt and all messages, and the last user text.
fn anthropic_input(req: &Value) -> (u64, String) {
    let mut words = 0;
    if let Some(system) = req.get("system") {
        words += count_words(&content_text(system));
    }
    let mut last_user = String::new();
    if let Some(msgs) = req.get("messages").and_then(Value::as_array) {
        for m in msgs {
            let text = content_text(m.get("content").unwrap_or(&Value::Null));
            words += count_words(&text);
            if m.get("role").and_then(Value::as_str) == Some("user") {
                last_user = text;
            }
        }
    }
    (words + 7, last_user)
}

fn count_tokens(ctx: Ctx<'_>) -> Response {
    let (p, _) = anthropic_input(ctx.req);
    ok_json(Flavor::Anthropic, ctx.id, &json!({"input_tokens": p}))
}

fn messages(ctx: Ctx<'_>) -> Response {
    let (p, last_user) = anthropic_input(ctx.req);
    let reply = ctx.reply(&last_user);
    let c = count_words(&reply);
    let id = format!("msg_mock{}", ctx.id);
    let model = ctx.model.as_str();

    if !ctx.streaming {
        let v = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": p,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": c,
                "service_tier": "standard"
            }
        });
        return ok_json(Flavor::Anthropic, ctx.id, &v);
    }

    let words = word_chunks(&reply);
    let mut events = Vec::with_capacity(words.len() + 6);
    let mut push = |name: &str, mut v: Value| {
        v["type"] = Value::from(name);
        events.push(sse_event(name, &v));
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
            "usage": {
                "input_tokens": p,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
                "service_tier": "standard"
            }
        }}),
    );
    push(
        "content_block_start",
        json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    push("ping", json!({}));
    for w in words {
        push(
            "content_block_delta",
            json!({"index": 0, "delta": {"type": "text_delta", "text": w}}),
        );
    }
    push("content_block_stop", json!({"index": 0}));
    push(
        "message_delta",
        json!({
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": c}
        }),
    );
    push("message_stop", json!({}));
    sse_response(Flavor::Anthropic, ctx.id, events, ctx.slow())
}

mod native;

#[cfg(test)]
mod tests;
