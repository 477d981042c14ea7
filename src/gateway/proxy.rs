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
use crate::providers::sse::Usage;
use crate::providers::{Kind, Provider, Route};

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
    if endpoint != "models"
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
    let endpoint = surface::endpoint_of(&surface.rest);
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
    let model = facts.model.clone();
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
            let rewrite = Rewrite {
                model: (model.is_some() && upstream_model != model_name).then_some(upstream_model),
                include_usage: provider.kind == Kind::OpenAi
                    && facts.stream
                    && matches!(endpoint, "chat" | "completions")
                    && !facts
                        .stream_options
                        .as_ref()
                        .is_some_and(|s| s.include_usage),
                default_max_tokens: default_max_tokens
                    .map(|n| (n, max_tokens_field(provider.kind, endpoint))),
            };
            forward(
                app, surface, &provider, key, parts, body, endpoint, rewrite, meter,
            )
            .await
        }
    }?;
    resp.headers_mut().extend(rate_headers);
    Ok(resp)
}

fn max_tokens_field(kind: Kind, endpoint: &str) -> &'static str {
    match (kind, endpoint) {
        (_, "responses") => "max_output_tokens",
        (Kind::OpenAi, "chat") => "max_completion_tokens",
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
    };
    let answer = echo::respond(shape, endpoint, model, &json);
    // Counting tokens is free, as at Anthropic.
    let usage = if endpoint == "count_tokens" {
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
}

impl Rewrite {
    fn needed(&self) -> bool {
        self.model.is_some() || self.include_usage || self.default_max_tokens.is_some()
    }

    fn apply(&self, body: &Bytes) -> Result<Bytes, ApiError> {
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
            obj.insert(field.into(), json!(n));
        }
        serde_json::to_vec(&v)
            .map(Bytes::from)
            .map_err(|e| ApiError::internal(e.to_string()))
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    app: &Arc<App>,
    surface: &Surface,
    provider: &Arc<Provider>,
    key: &CachedKey,
    parts: axum::http::request::Parts,
    body: Bytes,
    endpoint: &'static str,
    rewrite: Rewrite,
    meter: &mut Option<Meter>,
) -> Result<Response, ApiError> {
    let body = if rewrite.needed() {
        rewrite.apply(&body)?
    } else {
        body
    };
    let query = surface::strip_key_param(parts.uri.query());
    let url = provider.url(&surface.rest, query.as_deref());
    let headers = surface::upstream_request_headers(&parts.headers);
    let has_version = headers.contains_key("anthropic-version");
    let rb = provider
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body);
    let rb = provider.authorize(rb, has_version);
    let sent = tokio::time::timeout(provider.first_byte_timeout, rb.send()).await;
    let upstream = match sent {
        Err(_) => {
            return Err(ApiError::upstream_timeout(format!(
                "the provider '{}' did not answer within {} s",
                provider.name,
                provider.first_byte_timeout.as_secs()
            )));
        }
        Ok(Err(e)) if e.is_timeout() => {
            return Err(ApiError::upstream_timeout(format!(
                "the provider '{}' timed out",
                provider.name
            )));
        }
        Ok(Err(e)) => {
            tracing::warn!(provider = %provider.name, error = %app.registry.scrubber.scrub_str(&e.to_string()), "upstream request failed");
            return Err(ApiError::upstream_error(format!(
                "could not reach the provider '{}'{}",
                provider.name,
                if e.is_connect() {
                    " (connection failed)"
                } else {
                    ""
                }
            )));
        }
        Ok(Ok(r)) => r,
    };

    let status = upstream.status();
    let mut headers = surface::client_response_headers(app, upstream.headers());
    let is_sse = upstream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));

    if is_sse && status.is_success() {
        let Some(m) = meter.take() else {
            return Err(ApiError::internal("meter already settled"));
        };
        let stream = MeteredSse::new(
            upstream.bytes_stream().boxed(),
            rewrite.include_usage,
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

    if status.is_server_error() {
        let upstream_body = serde_json::from_slice::<Value>(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
        let mut e = ApiError::upstream_error(format!(
            "the provider '{}' failed with HTTP {}",
            provider.name,
            status.as_u16()
        ));
        e.upstream = Some(upstream_body);
        return Err(e);
    }

    let mut raw = raw;
    let mut usage = Usage::default();
    if status.is_success() {
        if endpoint == "models" && surface.native.is_some() {
            raw = filter_model_list(raw, |m| may_use(key, &provider.name, m));
        }
        if surface::is_metered(endpoint)
            && let Ok(v) = serde_json::from_slice::<Value>(&raw)
            && let Some(u) = Usage::from_json(&v)
        {
            usage = u;
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

/// Keep only the models a key may use in a provider's model list.
fn filter_model_list(raw: Bytes, allowed: impl Fn(&str) -> bool) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(&raw) else {
        return raw;
    };
    if let Some(data) = v.get_mut("data").and_then(Value::as_array_mut) {
        data.retain(|m| m.get("id").and_then(Value::as_str).is_some_and(&allowed));
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
        Shape::OpenAi => json!({"id": id, "object": "model", "created": 0, "owned_by": owner}),
        Shape::Anthropic => {
            json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"})
        }
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
        Shape::OpenAi => json!({"object": "list", "data": data}),
        Shape::Anthropic => json!({
            "data": data,
            "has_more": false,
            "first_id": allowed.first().map(|m| m.0.clone()),
            "last_id": allowed.last().map(|m| m.0.clone()),
        }),
    };
    Ok(axum::Json(body).into_response())
}
