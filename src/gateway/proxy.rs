//! The request pipeline: authenticate → authorize → forward (or echo) →
//! meter → respond.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::admit::{self, Admission};
use super::cache::{CachedKey, Lookup};
use super::error::{ApiError, Shape};
use super::guard;
use super::meter::{Meter, MeteredSse, ScrubbedStream};
use super::surface::{self, Surface};
use crate::keys;
use crate::providers::echo::{self, EchoShape};
use crate::providers::sse::{SseTap, Usage};
use crate::providers::{KeyOutcome, Kind, Provider, Route};

/// Largest non-streamed upstream answer that is buffered to read its usage.
const MAX_BUFFERED_ANSWER: usize = 64 * 1024 * 1024;

/// The request fields decisions need; everything else is forwarded untouched.
#[derive(Deserialize, Default)]
struct Facts {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    stream_options: Option<StreamOptions>,
    /// Gemini / Vertex AI: `generationConfig.maxOutputTokens`.
    #[serde(rename = "generationConfig", alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize, Default)]
struct GenerationConfig {
    #[serde(rename = "maxOutputTokens", alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl Facts {
    fn max_tokens(&self) -> Option<u64> {
        self.max_tokens
            .or(self.max_completion_tokens)
            .or(self.max_output_tokens)
            .or(self
                .generation_config
                .as_ref()
                .and_then(|g| g.max_output_tokens))
    }
}

pub async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let request_id = crate::util::new_id("req");
    let surface = Surface::classify(&app, req.uri().path());
    let mut resp = match surface.clone() {
        None => ApiError::not_found(format!(
            "no route for {} {}",
            req.method(),
            req.uri().path()
        ))
        .render(Shape::OpenAi),
        Some(s) => run(app, s, peer, req, &request_id, started).await,
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        // The Anthropic SDK reads `request-id`; everyone else `x-request-id`.
        if surface
            .as_ref()
            .is_some_and(|s| s.shape == Shape::Anthropic)
        {
            resp.headers_mut().insert("request-id", v.clone());
        }
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Resolve the presented credential to an active key, recording failures.
pub fn authenticate(
    app: &App,
    secret: Option<&str>,
    ip: IpAddr,
) -> Result<Arc<CachedKey>, ApiError> {
    let now = crate::util::now_ms();
    let fail = |reason: &str, target: Option<&str>, prefix: Option<String>| {
        app.audit.event(
            "anonymous",
            "auth.invalid_key",
            target,
            Some(ip.to_string()),
            json!({"reason": reason, "prefix": prefix}),
        );
    };
    let Some(secret) = secret else {
        fail("missing", None, None);
        return Err(ApiError::invalid_key(
            "no API key: send your bursar key as 'Authorization: Bearer bsr_…' (or x-api-key / api-key)",
        ));
    };
    if !keys::is_well_formed(secret, keys::KEY_PREFIX) {
        fail("malformed", None, None);
        return Err(ApiError::invalid_key(
            "the API key is not a valid bursar key (bsr_…)",
        ));
    }
    let prefix = Some(keys::display_prefix(secret));
    if app.keys.staleness_ms(now) > app.config.cache_max_stale_seconds.saturating_mul(1000) as i64 {
        fail("store_unreachable", None, prefix);
        return Err(ApiError::invalid_key(
            "the gateway cannot verify keys right now (its database has been unreachable too long)",
        ));
    }
    match app.keys.lookup(secret, now) {
        Lookup::Unknown => {
            fail("unknown", None, prefix);
            Err(ApiError::invalid_key(
                "the API key is not known to this gateway",
            ))
        }
        Lookup::Rotated(k) => {
            fail("rotated", Some(&k.row.id), prefix);
            Err(ApiError::invalid_key(
                "the API key was rotated and its grace period is over",
            ))
        }
        Lookup::Found(k) => {
            if k.row.status == "revoked" {
                fail("revoked", Some(&k.row.id), prefix);
                return Err(ApiError::invalid_key("the API key has been revoked"));
            }
            if k.row.expires_at.is_some_and(|e| e <= now) {
                fail("expired", Some(&k.row.id), prefix);
                return Err(ApiError::invalid_key("the API key has expired"));
            }
            // A child key dies with any ancestor.
            if !app.keys.ancestors_alive(&k, now) {
                fail("parent_inactive", Some(&k.row.id), prefix);
                return Err(ApiError::invalid_key(
                    "the API key's parent key is revoked or expired",
                ));
            }
            Ok(k)
        }
    }
}

async fn run(
    app: Arc<App>,
    surface: Surface,
    peer: SocketAddr,
    req: Request,
    request_id: &str,
    started: Instant,
) -> Response {
    let shape = surface.shape;
    let ip = surface::client_ip(peer, req.headers(), &app.trusted_proxies);
    let key = match authenticate(
        &app,
        surface::credential(req.headers(), req.uri().query()),
        ip,
    ) {
        Ok(k) => k,
        Err(e) => {
            metrics::counter!("bursar_refusals_total", "reason" => e.kind).increment(1);
            return e.render(shape);
        }
    };
    let mut meter = Some(Meter::new(app.clone(), &key, request_id, started));
    match serve(&app, &surface, &key, req, ip, &mut meter).await {
        Ok(resp) => resp,
        Err(e) => {
            metrics::counter!("bursar_refusals_total", "reason" => e.kind).increment(1);
            if e.kind == "upstream_error" || e.kind == "upstream_timeout" {
                let provider = meter
                    .as_ref()
                    .map(|m| m.row.provider.clone())
                    .unwrap_or_default();
                metrics::counter!("bursar_upstream_errors_total", "provider" => provider)
                    .increment(1);
            }
            if e.status == StatusCode::FORBIDDEN {
                app.audit.event(
                    &format!("key:{}", key.row.id),
                    "scope.denied",
                    Some(&key.row.id),
                    Some(ip.to_string()),
                    json!({"reason": e.message}),
                );
            }
            if let Some(m) = meter.take() {
                m.finish(e.status.as_u16(), Usage::default());
            }
            e.render(shape)
        }
    }
}

fn check_scope(key: &CachedKey, ip: IpAddr, endpoint: &str) -> Result<(), ApiError> {
    if !key.ip_nets.is_empty() && !key.ip_nets.iter().any(|n| n.contains(&ip)) {
        return Err(ApiError::denied(format!(
            "this key may not be used from {ip}"
        )));
    }
    let scope = surface::scope_name(endpoint);
    // Counting tokens belongs to `messages` (Anthropic) and to `chat` (Gemini).
    let counts_as_chat =
        endpoint == "count_tokens" && key.spec.endpoints.iter().any(|e| e == "chat");
    if endpoint != "models"
        && !counts_as_chat
        && !key.spec.endpoints.is_empty()
        && !key.spec.endpoints.iter().any(|e| e == scope)
    {
        return Err(ApiError::denied(format!(
            "this key may not use the '{scope}' endpoint"
        )));
    }
    Ok(())
}

fn check_target(key: &CachedKey, provider: &str, model: Option<&str>) -> Result<(), ApiError> {
    if !key.spec.providers.is_empty() && !key.spec.providers.iter().any(|p| p == provider) {
        return Err(ApiError::denied(format!(
            "this key may not use the provider '{provider}'"
        )));
    }
    if let Some(m) = model
        && !keys::matches_any(&key.spec.models, m)
    {
        return Err(ApiError::denied(format!(
            "this key may not use the model '{m}'"
        )));
    }
    Ok(())
}

/// Whether a key may reach a model served by a provider.
pub fn may_use(key: &CachedKey, provider: &str, model: &str) -> bool {
    check_target(key, provider, Some(model)).is_ok()
}

async fn serve(
    app: &Arc<App>,
    surface: &Surface,
    key: &Arc<CachedKey>,
    req: Request,
    ip: IpAddr,
    meter: &mut Option<Meter>,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let path_facts = surface::path_facts(surface.kind, &surface.rest);
    let endpoint = path_facts.endpoint;
    if let Some(m) = meter.as_mut() {
        m.row.endpoint = endpoint.to_string();
        m.row.provider = surface.native.clone().unwrap_or_default();
    }
    check_scope(key, ip, endpoint)?;
    let limit = app.config.max_body_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;

    // GET /v1/models on the OpenAI surface: what this key may use.
    // Model lists bursar answers itself (not metered): the OpenAI surface's,
    // and a native surface's whose provider is not configured (only echo).
    if endpoint == "models" && parts.method == Method::GET {
        let unconfigured = surface
            .native
            .as_ref()
            .is_some_and(|n| app.registry.get(n).is_none());
        if surface.native.is_none() || unconfigured {
            meter.take();
            return models_listing(app, key, &surface.rest, surface.shape);
        }
    }

    // A JSON body whose decision fields cannot be read is refused: forwarding
    // it would let a malformed `model` slip past the key's scope.
    let facts: Facts = if parts.method == Method::POST && body.first().is_some_and(|b| *b == b'{') {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid_request(format!("the request body cannot be read: {e}"))
        })?
    } else {
        Facts::default()
    };
    // Gemini, Vertex AI, Azure and Hugging Face name the model in the path.
    let model = path_facts.model.clone().or_else(|| facts.model.clone());
    // A key limited to some models may only make requests whose model
    // bursar can read (not, e.g., a multipart upload naming its own model).
    if model.is_none() && !key.spec.models.is_empty() && endpoint != "models" {
        return Err(ApiError::denied(
            "this key is limited to some models, and this request names none that the gateway can check",
        ));
    }

    let route = match (&surface.native, model.as_deref()) {
        (_, Some("echo")) => Route::Echo,
        (None, Some(m)) => app.registry.route(m).ok_or_else(|| ApiError::model_not_found(m))?,
        (None, None) => Route::Upstream {
            provider: app
                .registry
                .default_openai()
                .cloned()
                .ok_or_else(|| ApiError::not_found("no OpenAI provider is configured for requests without a model"))?,
            upstream_model: String::new(),
        },
        (Some(name), m) => Route::Upstream {
            provider: app.registry.get(name).cloned().ok_or_else(|| {
                ApiError::not_found(format!("the provider '{name}' is not configured on this gateway (only the 'echo' model answers here)"))
            })?,
            upstream_model: m.unwrap_or_default().to_string(),
        },
    };
    let (provider_name, upstream_model) = match &route {
        Route::Echo => ("echo".to_string(), "echo".to_string()),
        Route::Upstream {
            provider,
            upstream_model,
        } => (provider.name.clone(), upstream_model.clone()),
    };
    check_target(key, &provider_name, model.as_deref())?;

    let mut default_max_tokens = None;
    if let Some(limit) = admit::max_tokens_limit(app, key) {
        match facts.max_tokens() {
            Some(asked) if asked > limit => {
                return Err(ApiError::blocked(format!(
                    "max tokens {asked} is above this key's limit of {limit} per request"
                )));
            }
            None if surface::is_metered(endpoint) && endpoint != "embeddings" => {
                default_max_tokens = Some(limit)
            }
            _ => {}
        }
    }

    let model_name = model.clone().unwrap_or_default();
    let price = app.prices.price(&model_name, &upstream_model);
    if let Some(m) = meter.as_mut() {
        m.row.provider = provider_name.clone();
        m.row.model = model_name.clone();
        m.price = price;
    }

    // Guardrails, then admission: rate, tokens, concurrency and budget
    // along key → user → team.
    let metered = surface::is_metered(endpoint);
    let prompt_estimate = if metered { (body.len() / 4) as u64 } else { 0 };
    let body = guard::apply(app, key, ip, body, prompt_estimate, metered, meter)?;
    let max_output = match endpoint {
        "embeddings" => Some(0),
        _ if metered => facts.max_tokens().or(default_max_tokens),
        _ => Some(0),
    };
    let admission = Admission::admit(app, key, prompt_estimate, max_output, price).await?;
    let rate_headers = admission.headers.clone();
    if let Some(m) = meter.as_mut() {
        m.admission = Some(admission);
        m.prompt_estimate = prompt_estimate;
    }

    let mut resp = match route {
        Route::Echo => serve_echo(surface, &body, &model_name, default_max_tokens, meter),
        Route::Upstream {
            provider,
            upstream_model,
        } => {
            // The model asked for first, then its configured fallbacks the
            // key may use, served by providers that speak this surface's shape.
            let mut attempts = vec![Attempt {
                provider: provider.clone(),
                model: model_name.clone(),
                upstream_model: upstream_model.clone(),
                price,
            }];
            for f in app.registry.fallbacks(&model_name) {
                if let Some(Route::Upstream {
                    provider: fp,
                    upstream_model: fu,
                }) = app.registry.route(f)
                    && (surface.native.is_none() || fp.kind == provider.kind)
                    && may_use(key, &fp.name, f)
                {
                    attempts.push(Attempt {
                        provider: fp,
                        model: f.clone(),
                        upstream_model: fu,
                        price: app.prices.price(f, ""),
                    });
                }
            }
            let plan = Plan {
                body_model: facts.model.clone(),
                path_model: path_facts.model.is_some(),
                include_usage: facts.stream
                    && matches!(endpoint, "chat" | "completions")
                    && !facts
                        .stream_options
                        .as_ref()
                        .is_some_and(|s| s.include_usage),
                default_max_tokens,
                has_stream_options: facts.stream_options.is_some(),
            };
            forward(
                app, surface, key, parts, body, endpoint, &attempts, plan, meter,
            )
            .await
        }
    }?;
    resp.headers_mut().extend(rate_headers);
    Ok(resp)
}

/// One provider and model to try.
struct Attempt {
    provider: Arc<Provider>,
    /// The client-facing model name (usage rows, pricing).
    model: String,
    upstream_model: String,
    price: Option<crate::usage::prices::Price>,
}

/// What the request needs whatever provider serves it.
struct Plan {
    /// The model named in the body, if any.
    body_model: Option<String>,
    /// The model is named in the path (Gemini, Azure, …): never rewritten.
    path_model: bool,
    /// The client streams chat/completions without asking for usage.
    include_usage: bool,
    default_max_tokens: Option<u64>,
    /// The body already has `stream_options` (so it cannot simply be added).
    has_stream_options: bool,
}

impl Plan {
    fn rewrite(&self, attempt: &Attempt, endpoint: &str) -> Rewrite {
        let kind = attempt.provider.kind;
        Rewrite {
            model: (!self.path_model
                && self
                    .body_model
                    .as_deref()
                    .is_some_and(|m| m != attempt.upstream_model))
            .then(|| attempt.upstream_model.clone()),
            include_usage: self.include_usage && kind.is_openai_shaped(),
            default_max_tokens: self
                .default_max_tokens
                .map(|n| (n, max_tokens_field(kind, endpoint))),
            has_stream_options: self.has_stream_options,
        }
    }
}

fn max_tokens_field(kind: Kind, endpoint: &str) -> &'static str {
    match (kind, endpoint) {
        (_, "responses") => "max_output_tokens",
        (Kind::Gemini | Kind::Vertex, _) => "generationConfig.maxOutputTokens",
        (Kind::OpenAi | Kind::Azure, "chat") => "max_completion_tokens",
        _ => "max_tokens",
    }
}

fn serve_echo(
    surface: &Surface,
    body: &Bytes,
    model: &str,
    default_max: Option<u64>,
    meter: &mut Option<Meter>,
) -> Result<Response, ApiError> {
    let endpoint = surface::echo_endpoint(&surface.rest).ok_or_else(|| {
        ApiError::not_found(format!("the echo model does not serve /{}", surface.rest))
    })?;
    let mut json: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("request body is not valid JSON: {e}")))?;
    if let (Some(n), Some(obj)) = (default_max, json.as_object_mut()) {
        obj.insert("max_tokens".into(), json!(n));
    }
    let shape = match surface.shape {
        Shape::OpenAi => EchoShape::OpenAi,
        Shape::Anthropic => EchoShape::Anthropic,
        Shape::Cohere => EchoShape::Cohere,
        Shape::Google => EchoShape::Google,
        Shape::Vectara => {
            return Err(ApiError::not_found(format!(
                "the echo model does not serve /{}",
                surface.rest
            )));
        }
    };
    let answer = echo::respond(shape, endpoint, model, &json);
    // Counting tokens is free, as at Anthropic and Google.
    let usage = if matches!(endpoint, "count_tokens" | "countTokens") {
        Usage::default()
    } else {
        Usage {
            prompt: answer.prompt_tokens,
            completion: answer.completion_tokens,
        }
    };
    let cost = match meter.take() {
        Some(m) => m.finish(answer.status, usage),
        None => 0.0,
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let stream =
        futures_util::stream::iter(answer.chunks.into_iter().map(Ok::<Bytes, std::io::Error>));
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", answer.content_type)
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if status.is_success() {
        set_cost(&mut resp, cost);
    }
    Ok(resp)
}

fn set_cost(resp: &mut Response, cost: f64) {
    if let Ok(v) = HeaderValue::from_str(&format!("{cost:.8}")) {
        resp.headers_mut().insert("x-bursar-cost-usd", v);
    }
}

/// Changes bursar makes to a request body before forwarding it.
struct Rewrite {
    /// The upstream's name for an aliased model.
    model: Option<String>,
    /// Ask an OpenAI upstream for the usage chunk the client did not request.
    include_usage: bool,
    /// The key's max tokens, applied when the request gives none.
    default_max_tokens: Option<(u64, &'static str)>,
    has_stream_options: bool,
}

impl Rewrite {
    fn needed(&self) -> bool {
        self.model.is_some() || self.include_usage || self.default_max_tokens.is_some()
    }

    fn apply(&self, body: &Bytes) -> Result<Bytes, ApiError> {
        if let Some(spliced) = self.splice(body) {
            return Ok(spliced);
        }
        let mut v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_request(format!("request body is not valid JSON: {e}"))
        })?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| ApiError::invalid_request("request body must be a JSON object"))?;
        if let Some(m) = &self.model {
            obj.insert("model".into(), Value::String(m.clone()));
        }
        if self.include_usage {
            let so = obj.entry("stream_options").or_insert_with(|| json!({}));
            if let Some(so) = so.as_object_mut() {
                so.insert("include_usage".into(), Value::Bool(true));
            }
        }
        if let Some((n, field)) = self.default_max_tokens {
            match field.split_once('.') {
                Some((outer, inner)) => {
                    let o = obj.entry(outer).or_insert_with(|| json!({}));
                    if let Some(o) = o.as_object_mut() {
                        o.insert(inner.into(), json!(n));
                    }
                }
                None => {
                    obj.insert(field.into(), json!(n));
                }
            }
        }
        serde_json::to_vec(&v)
            .map(Bytes::from)
            .map_err(|e| ApiError::internal(e.to_string()))
    }
}

impl Rewrite {
    /// Add top-level members the body does not have by writing them after
    /// its opening brace: no parse and re-serialization of a large prompt.
    /// `None` when the change is not such an addition (an alias replaces
    /// `model`, `stream_options` exists, or the field is nested).
    fn splice(&self, body: &Bytes) -> Option<Bytes> {
        if self.model.is_some()
            || (self.include_usage && self.has_stream_options)
            || body.first() != Some(&b'{')
        {
            return None;
        }
        let mut added = String::new();
        if self.include_usage {
            added.push_str(r#""stream_options":{"include_usage":true},"#);
        }
        if let Some((n, field)) = self.default_max_tokens {
            if field.contains('.') {
                return None;
            }
            added.push_str(&format!("\"{field}\":{n},"));
        }
        let rest = &body[1..];
        if rest.trim_ascii_start().starts_with(b"}") {
            added.pop();
        }
        let mut out = Vec::with_capacity(body.len() + added.len() + 1);
        out.push(b'{');
        out.extend_from_slice(added.as_bytes());
        out.extend_from_slice(rest);
        Some(Bytes::from(out))
    }
}

/// How one try at an upstream ended.
enum Tried {
    Answer(reqwest::Response),
    Failed(ApiError),
}

/// Whether a failed try may be repeated on another key or a fallback.
fn retryable(t: &Tried) -> bool {
    match t {
        Tried::Answer(r) => {
            let s = r.status();
            s == StatusCode::TOO_MANY_REQUESTS
                || s.is_server_error()
                || s == StatusCode::UNAUTHORIZED
        }
        Tried::Failed(e) => e.kind == "upstream_error",
    }
}

/// Send one request to one provider with one real key.
#[allow(clippy::too_many_arguments)]
async fn try_once(
    app: &Arc<App>,
    surface: &Surface,
    provider: &Arc<Provider>,
    key: Option<&str>,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Tried {
    let query = surface::strip_key_param(parts.uri.query());
    let url = provider.url(&surface.rest, query.as_deref());
    let headers = surface::upstream_request_headers(&parts.headers);
    let has_version = headers.contains_key("anthropic-version");
    let mut rb = provider
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body);
    if let Some(total) = provider.total_timeout {
        rb = rb.timeout(total);
    }
    let rb = provider.authorize(rb, key, has_version);
    let sent = tokio::time::timeout(provider.first_byte_timeout, rb.send()).await;
    match sent {
        Err(_) => Tried::Failed(ApiError::upstream_timeout(format!(
            "the provider '{}' did not answer within {} s",
            provider.name,
            provider.first_byte_timeout.as_secs()
        ))),
        Ok(Err(e)) if e.is_timeout() => Tried::Failed(ApiError::upstream_timeout(format!(
            "the provider '{}' timed out",
            provider.name
        ))),
        Ok(Err(e)) => {
            tracing::warn!(provider = %provider.name, error = %app.registry.scrubber.scrub_str(&e.to_string()), "upstream request failed");
            Tried::Failed(ApiError::upstream_error(format!(
                "could not reach the provider '{}'{}",
                provider.name,
                if e.is_connect() {
                    " (connection failed)"
                } else {
                    ""
                }
            )))
        }
        Ok(Ok(r)) => Tried::Answer(r),
    }
}

/// Note what an answer said about the real key it used; a key that keeps
/// failing with 401 leaves the rotation, with an audit event and a log line
/// naming the provider and the key's position (never the key).
fn note_key(app: &Arc<App>, provider: &Provider, index: usize, tried: &Tried) {
    let Tried::Answer(r) = tried else {
        return;
    };
    if r.status() == StatusCode::UNAUTHORIZED {
        if provider.report(index, KeyOutcome::Unauthorized) {
            tracing::warn!(
                provider = %provider.name,
                key_index = index,
                "a provider key failed with 401 repeatedly and was taken out of rotation"
            );
            app.audit.event(
                "system",
                "provider.key_disabled",
                Some(&provider.name),
                None,
                json!({
                    "provider": provider.name,
                    "key_index": index,
                    "reason": "repeated 401 from the upstream",
                    "consecutive_failures": provider.max_auth_failures,
                }),
            );
        }
    } else {
        provider.report(index, KeyOutcome::Ok);
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    app: &Arc<App>,
    surface: &Surface,
    key: &CachedKey,
    parts: axum::http::request::Parts,
    body: Bytes,
    endpoint: &'static str,
    attempts: &[Attempt],
    plan: Plan,
    meter: &mut Option<Meter>,
) -> Result<Response, ApiError> {
    let mut last: Option<(Tried, usize, bool)> = None;
    'attempts: for (ai, attempt) in attempts.iter().enumerate() {
        let provider = &attempt.provider;
        let rewrite = plan.rewrite(attempt, endpoint);
        let body = if rewrite.needed() {
            rewrite.apply(&body)?
        } else {
            body.clone()
        };
        if ai > 0 {
            tracing::info!(provider = %provider.name, model = %attempt.model, "falling back");
            if let Some(m) = meter.as_mut() {
                m.row.provider = provider.name.clone();
                m.row.model = attempt.model.clone();
                m.price = attempt.price;
            }
        }
        let mut exclude = None;
        for try_no in 0..2 {
            let (index, secret) = if let Some(v) = &provider.vertex {
                match v.token().await {
                    Ok(t) => {
                        // A minted access token is a credential too: keep it
                        // out of every answer and log line.
                        app.registry.scrubber.add(&t);
                        (None, Some(t))
                    }
                    Err(e) => {
                        tracing::warn!(provider = %provider.name, error = %e, "minting a Vertex AI access token failed");
                        last = Some((
                            Tried::Failed(ApiError::upstream_error(format!(
                                "could not get an access token for the provider '{}'",
                                provider.name
                            ))),
                            ai,
                            rewrite.include_usage,
                        ));
                        continue 'attempts;
                    }
                }
            } else {
                match provider.pick_key(exclude) {
                    Some(k) => (Some(k.index), Some(k.secret)),
                    None if provider.key_count() == 0 => (None, None),
                    None if try_no == 0 => {
                        last = Some((
                            Tried::Failed(ApiError::upstream_error(format!(
                                "every key of the provider '{}' was refused (401) and is out of rotation",
                                provider.name
                            ))),
                            ai,
                            rewrite.include_usage,
                        ));
                        continue 'attempts;
                    }
                    // No other key to retry on.
                    None => continue 'attempts,
                }
            };
            let tried = try_once(
                app,
                surface,
                provider,
                secret.as_deref(),
                &parts,
                body.clone(),
            )
            .await;
            if let Some(i) = index {
                note_key(app, provider, i, &tried);
            }
            let again = retryable(&tried);
            last = Some((tried, ai, rewrite.include_usage));
            if !again {
                break 'attempts;
            }
            match index {
                Some(i) if provider.key_count() > 1 => exclude = Some(i),
                _ => continue 'attempts,
            }
        }
    }
    let Some((tried, ai, include_usage)) = last else {
        return Err(ApiError::upstream_error("no provider could be tried"));
    };
    let provider = &attempts[ai].provider;
    let upstream = match tried {
        Tried::Failed(e) => return Err(e),
        Tried::Answer(r) => r,
    };

    let status = upstream.status();
    let mut headers = surface::client_response_headers(app, upstream.headers());
    let content_type = upstream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let tap = if content_type.starts_with("text/event-stream") {
        Some(SseTap::new(include_usage))
    } else if content_type.starts_with("application/stream+json")
        || content_type.starts_with("application/x-ndjson")
    {
        Some(SseTap::json_lines())
    } else {
        None
    };

    if let Some(tap) = tap
        && status.is_success()
    {
        let Some(m) = meter.take() else {
            return Err(ApiError::internal("meter already settled"));
        };
        let stream = MeteredSse::new(
            upstream.bytes_stream().boxed(),
            tap,
            app.clone(),
            m,
            status.as_u16(),
        );
        let mut resp = Response::new(Body::from_stream(stream));
        *resp.status_mut() = status;
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
        *resp.headers_mut() = headers;
        return Ok(resp);
    }

    let buffered = surface::is_metered(endpoint)
        || !status.is_success()
        || (endpoint == "models" && parts.method == Method::GET);
    if !buffered {
        let Some(m) = meter.take() else {
            return Err(ApiError::internal("meter already settled"));
        };
        let stream = ScrubbedStream::new(
            upstream.bytes_stream().boxed(),
            app.clone(),
            m,
            status.as_u16(),
        );
        let mut resp = Response::new(Body::from_stream(stream));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        return Ok(resp);
    }

    let raw = read_bounded(upstream, MAX_BUFFERED_ANSWER)
        .await
        .map_err(|e| {
            ApiError::upstream_error(format!(
                "reading the answer of the provider '{}' failed: {}",
                provider.name,
                app.registry.scrubber.scrub_str(&e)
            ))
        })?;
    let raw = app.registry.scrubber.scrub(raw);

    // A provider that refuses the gateway's own credentials (401/403) is a
    // gateway-side failure: passing the status through would make the
    // client's SDK believe its bursar key is invalid.
    let rejected_credentials =
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    if status.is_server_error() || rejected_credentials {
        let upstream_body = serde_json::from_slice::<Value>(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
        let mut e = ApiError::upstream_error(if rejected_credentials {
            format!(
                "the provider '{}' refused the gateway's credentials (HTTP {}); your bursar key is fine — tell the gateway's admin",
                provider.name,
                status.as_u16()
            )
        } else {
            format!(
                "the provider '{}' failed with HTTP {}",
                provider.name,
                status.as_u16()
            )
        });
        e.upstream = Some(upstream_body);
        return Err(e);
    }

    let mut raw = raw;
    let mut usage = Usage::default();
    if status.is_success() {
        if endpoint == "models" && surface.native.is_some() {
            raw = filter_model_list(raw, |m| may_use(key, &provider.name, m));
        }
        if surface::is_metered(endpoint) {
            match Usage::from_answer(&raw) {
                Some(u) => usage = u,
                // Answers without usage (Gemini and Hugging Face embeddings):
                // the request's text, counted.
                None => usage.prompt = prompt_tokens_of(&body),
            }
        }
    }
    let cost = match meter.take() {
        Some(m) => m.finish(status.as_u16(), usage),
        None => 0.0,
    };
    let mut resp = Response::new(Body::from(raw));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if status.is_success() && surface::is_metered(endpoint) {
        set_cost(&mut resp, cost);
    }
    Ok(resp)
}

/// Tokens of the text a request body carries (every string but names,
/// roles and options), for answers that report no usage.
fn prompt_tokens_of(body: &Bytes) -> u64 {
    fn collect(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push(' ');
            }
            Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            Value::Object(o) => {
                for (k, x) in o {
                    if !matches!(
                        k.as_str(),
                        "model" | "role" | "taskType" | "task_type" | "encoding_format" | "title"
                    ) {
                        collect(x, out);
                    }
                }
            }
            _ => {}
        }
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (body.len() / 4) as u64;
    };
    let mut text = String::new();
    collect(&v, &mut text);
    crate::providers::tokens::count(text.trim_end())
}

async fn read_bounded(resp: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    let mut out = bytes::BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Keep only the models a key may use in a provider's model list (OpenAI's
/// `data[].id`, Gemini's `models[].name` = `models/ID`, Cohere's `models[].name`).
fn filter_model_list(raw: Bytes, allowed: impl Fn(&str) -> bool) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(&raw) else {
        return raw;
    };
    if let Some(data) = v.get_mut("data").and_then(Value::as_array_mut) {
        data.retain(|m| m.get("id").and_then(Value::as_str).is_some_and(&allowed));
    }
    if let Some(models) = v.get_mut("models").and_then(Value::as_array_mut) {
        models.retain(|m| {
            m.get("name")
                .and_then(Value::as_str)
                .map(|n| n.strip_prefix("models/").unwrap_or(n))
                .is_some_and(&allowed)
        });
    }
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(raw)
}

/// `GET /v1/models` and `GET /v1/models/{id}`: the models this key may use.
fn models_listing(
    app: &App,
    key: &CachedKey,
    rest: &str,
    shape: Shape,
) -> Result<Response, ApiError> {
    let entry = |id: &str, owner: &str| match shape {
        Shape::Anthropic => {
            json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"})
        }
        _ => json!({"id": id, "object": "model", "created": 0, "owned_by": owner}),
    };
    let allowed: Vec<(String, String)> = app
        .registry
        .known_models()
        .into_iter()
        .filter(|(m, p)| may_use(key, p, m))
        .collect();
    let one = rest.strip_prefix("v1/models/").filter(|s| !s.is_empty());
    if let Some(id) = one {
        return match allowed.iter().find(|(m, _)| m == id) {
            Some((m, p)) => Ok(axum::Json(entry(m, p)).into_response()),
            None => Err(ApiError::model_not_found(id)),
        };
    }
    let data: Vec<Value> = allowed.iter().map(|(m, p)| entry(m, p)).collect();
    let body = match shape {
        Shape::Anthropic => json!({
            "data": data,
            "has_more": false,
            "first_id": allowed.first().map(|m| m.0.clone()),
            "last_id": allowed.last().map(|m| m.0.clone()),
        }),
        _ => json!({"object": "list", "data": data}),
    };
    Ok(axum::Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(include_usage: bool, max: Option<(u64, &'static str)>, has_so: bool) -> Rewrite {
        Rewrite {
            model: None,
            include_usage,
            default_max_tokens: max,
            has_stream_options: has_so,
        }
    }

    #[test]
    fn splices_members_into_the_body_and_keeps_it_valid() {
        let body = Bytes::from_static(br#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#);
        let out = rw(true, Some((7, "max_completion_tokens")), false)
            .apply(&body)
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["max_completion_tokens"], 7);
        assert_eq!(v["model"], "gpt-4o-mini");
        let empty = rw(false, Some((5, "max_tokens")), false)
            .apply(&Bytes::from_static(b"{ }"))
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&empty).unwrap()["max_tokens"],
            5
        );
    }

    #[test]
    fn falls_back_to_a_real_rewrite_when_splicing_cannot_work() {
        let body =
            Bytes::from_static(br#"{"stream_options":{"include_usage":false},"stream":true}"#);
        assert!(rw(true, None, true).splice(&body).is_none());
        let out = rw(true, None, true).apply(&body).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let nested = rw(false, Some((9, "generationConfig.maxOutputTokens")), false);
        let out = nested
            .apply(&Bytes::from_static(
                br#"{"generationConfig":{"temperature":0}}"#,
            ))
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["generationConfig"]["maxOutputTokens"], 9);
        assert_eq!(v["generationConfig"]["temperature"], 0);
    }
}
