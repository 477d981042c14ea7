//! The admin API (`/admin/v1`): keys, usage, audit. Every route requires an
//! admin key; every change is written to the audit log before it answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::gateway::App;
use crate::gateway::error::{ApiError, Shape};
use crate::keys::spec::{KeyFields, KeySpec, OwnerFields, merge_patch};
use crate::keys::{self};
use crate::store::{GROUP_COLUMNS, KeyFilter, KeyRow, OwnerRow, UsageFilter};
use crate::util::{now_ms, parse_time, rfc3339};

const OPENAPI: &str = include_str!("openapi.json");

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route("/keys", post(create_key).get(list_keys))
        .route("/keys/{id}", get(show_key).patch(update_key))
        .route("/keys/{id}/revoke", post(revoke_key))
        .route("/keys/{id}/rotate", post(rotate_key))
        .route("/usage", get(usage))
        .route("/audit", get(audit))
        .route("/audit/verify", get(audit_verify))
        .route("/users", get(list_users).post(create_user))
        .route("/users/{name}", get(show_user).patch(update_user))
        .route("/teams", get(list_teams).post(create_team))
        .route("/teams/{name}", get(show_team).patch(update_team))
        .merge(crate::console::admin_routes())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY))
}

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// A JSON body read with errors in the contract's shape.
pub struct Body(pub Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = AdminError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| AdminError(ApiError::too_large(MAX_ADMIN_BODY)))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(Value::Null));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| bad(format!("the body is not valid JSON: {e}")))
    }
}

type AdminResult = Result<Response, AdminError>;

/// Admin errors are OpenAI-shaped.
pub struct AdminError(pub(crate) ApiError);

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        AdminError(e)
    }
}

impl From<anyhow::Error> for AdminError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %e, "admin request failed");
        AdminError(ApiError::internal("internal error; see the gateway's log"))
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        self.0.render(Shape::OpenAi)
    }
}

/// An authenticated admin: the display prefix of the admin key and the caller's address.
pub struct Admin {
    pub actor: String,
    pub ip: String,
}

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let ip = crate::gateway::surface::client_ip(peer, &parts.headers, &app.trusted_proxies)
            .to_string();
        let secret = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match secret.and_then(|s| app.keys.admin(s)) {
            Some(prefix) => Ok(Admin {
                actor: format!("admin:{prefix}"),
                ip,
            }),
            None => {
                app.audit.event(
                    "anonymous",
                    "admin.auth_failed",
                    None,
                    Some(ip),
                    json!({"reason": if secret.is_some() { "unknown admin key" } else { "missing admin key" }}),
                );
                Err(
                    ApiError::invalid_key("admin routes need 'Authorization: Bearer <admin key>'")
                        .into(),
                )
            }
        }
    }
}

fn bad(msg: impl Into<String>) -> AdminError {
    ApiError::invalid_request(msg).into()
}

fn parse_limit(q: &HashMap<String, String>, default: i64, max: i64) -> Result<i64, AdminError> {
    match q.get("limit") {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(format!(
                "limit: must be a whole number from 1 to {max}"
            ))),
        },
    }
}

fn parse_when(q: &HashMap<String, String>, field: &str) -> Result<Option<i64>, AdminError> {
    match q.get(field).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => parse_time(s, now_ms()).map(Some).ok_or_else(|| {
            bad(format!(
                "{field}: '{s}' is not a time (RFC 3339, YYYY-MM-DD, or a span like 7d)"
            ))
        }),
    }
}

/// Effective status of a stored key.
pub fn status_of(row: &KeyRow, now: i64) -> &'static str {
    if row.status == "revoked" {
        "revoked"
    } else if row.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

/// A key as the API shows it: its fields, never the secret.
pub fn key_view(row: &KeyRow) -> Value {
    let spec: KeySpec = serde_json::from_str(&row.spec).unwrap_or_default();
    json!({
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "status": status_of(row, now_ms()),
        "user": row.user,
        "team": row.team,
        "purpose": row.purpose,
        "environment": row.environment,
        "models": spec.models,
        "endpoints": spec.endpoints,
        "providers": spec.providers,
        "ip_allow": spec.ip_allow,
        "expires_at": row.expires_at.map(rfc3339),
        "max_tokens_per_request": spec.max_tokens_per_request,
        "rpm": spec.rpm,
        "tpm": spec.tpm,
        "max_concurrency": spec.max_concurrency,
        "budget": spec.budget,
        "guardrails": spec.guardrails,
        "metadata": spec.metadata,
        "log_bodies": spec.log_bodies,
        "parent_id": row.parent_id,
        "spend_usd": row.spend_usd,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
        "revoked_at": row.revoked_at.map(rfc3339),
        "last_used_at": row.last_used_at.map(rfc3339),
        "rotation_grace_until": row.old_key_hash.as_ref().and(row.old_key_expires_at).map(rfc3339),
    })
}

/// The editable fields of a stored key (without its expiry).
pub(crate) fn fields_of(row: &KeyRow) -> KeyFields {
    let spec: KeySpec = serde_json::from_str(&row.spec).unwrap_or_default();
    let opt = |v: Vec<String>| (!v.is_empty()).then_some(v);
    KeyFields {
        name: Some(row.name.clone()),
        user: row.user.clone(),
        team: row.team.clone(),
        purpose: row.purpose.clone(),
        environment: row.environment.clone(),
        models: opt(spec.models),
        endpoints: opt(spec.endpoints),
        providers: opt(spec.providers),
        ip_allow: opt(spec.ip_allow),
        expires_at: None,
        ttl_seconds: None,
        max_tokens_per_request: spec.max_tokens_per_request,
        rpm: spec.rpm,
        tpm: spec.tpm,
        max_concurrency: spec.max_concurrency,
        budget: spec.budget,
        guardrails: spec.guardrails,
        metadata: spec.metadata,
        log_bodies: spec.log_bodies.then_some(true),
    }
}

pub(crate) fn parse_fields(body: Value) -> Result<KeyFields, AdminError> {
    if !body.is_object() {
        return Err(bad("the body must be a JSON object"));
    }
    crate::keys::spec::from_json(body).map_err(bad)
}

async fn changed(app: &App) -> Result<(), AdminError> {
    app.keys_changed().await?;
    Ok(())
}

async fn create_key(State(app): State<Arc<App>>, admin: Admin, Body(body): Body) -> AdminResult {
    let fields = parse_fields(body)?;
    let (row, secret) = create_key_from(&app, &admin, fields).await?;
    let mut view = key_view(&row);
    if let Some(o) = view.as_object_mut() {
        o.insert("key".into(), Value::String(secret));
    }
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Validate and store a new key, audit it and refresh the cache; answers
/// the stored row and the secret (shown once, never stored).
pub(crate) async fn create_key_from(
    app: &App,
    admin: &Admin,
    fields: KeyFields,
) -> Result<(KeyRow, String), AdminError> {
    let now = now_ms();
    let expires_at = fields.validate(now).map_err(bad)?;
    let (row, secret) = fields.new_row(None, expires_at, now);
    app.store.insert_key(&row).await?;
    app.audit
        .record(
            &admin.actor,
            "key.create",
            Some(&row.id),
            Some(admin.ip.clone()),
            json!({"name": row.name, "prefix": row.prefix, "user": row.user, "team": row.team}),
        )
        .await?;
    changed(app).await?;
    Ok((row, secret))
}

async fn list_keys(
    State(app): State<Arc<App>>,
    _admin: Admin,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let limit = parse_limit(&q, 100, 1000)?;
    if let Some(s) = q.get("status")
        && !["active", "revoked", "expired"].contains(&s.as_str())
    {
        return Err(bad("status: must be active, revoked or expired"));
    }
    let filter = KeyFilter {
        user: q.get("user").cloned(),
        team: q.get("team").cloned(),
        status: q.get("status").cloned(),
        limit: limit + 1,
        cursor: q.get("cursor").cloned(),
    };
    let mut rows = app.store.list_keys(&filter, now_ms()).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    let data: Vec<Value> = rows.iter().map(key_view).collect();
    Ok(Json(json!({"data": data, "next_cursor": next})).into_response())
}

pub(crate) async fn load(app: &App, id: &str) -> Result<KeyRow, AdminError> {
    app.store
        .get_key(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no key with id '{id}'")).into())
}

async fn show_key(
    State(app): State<Arc<App>>,
    _admin: Admin,
    Path(id): Path<String>,
) -> AdminResult {
    let row = load(&app, &id).await?;
    Ok(Json(key_view(&row)).into_response())
}

async fn update_key(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(id): Path<String>,
    Body(body): Body,
) -> AdminResult {
    let patch: Map<String, Value> = match body {
        Value::Object(m) => m,
        _ => return Err(bad("the body must be a JSON object")),
    };
    let row = update_key_from(&app, &admin, &id, &patch).await?;
    Ok(Json(key_view(&row)).into_response())
}

/// Apply a merge patch to a key (validated like a create), audit it and
/// refresh the cache; answers the stored row.
pub(crate) async fn update_key_from(
    app: &App,
    admin: &Admin,
    id: &str,
    patch: &Map<String, Value>,
) -> Result<KeyRow, AdminError> {
    let mut row = load(app, id).await?;
    if row.status == "revoked" {
        return Err(bad("this key is revoked and cannot be changed"));
    }
    let mut fields = merge_patch(&fields_of(&row), patch).map_err(bad)?;
    let now = now_ms();
    let touches_expiry = patch.contains_key("expires_at") || patch.contains_key("ttl_seconds");
    if !touches_expiry {
        fields.expires_at = None;
        fields.ttl_seconds = None;
    }
    let expires = fields.validate(now).map_err(bad)?;
    if touches_expiry {
        row.expires_at = expires;
    }
    row.name = fields.name.clone().unwrap_or_default();
    row.user = fields.user.clone();
    row.team = fields.team.clone();
    row.purpose = fields.purpose.clone();
    row.environment = fields.environment.clone();
    row.spec = serde_json::to_string(&fields.spec()).map_err(anyhow::Error::from)?;
    row.updated_at = now;
    app.store.update_key(&row).await?;
    let changed_fields: Vec<&String> = patch.keys().collect();
    app.audit
        .record(
            &admin.actor,
            "key.update",
            Some(&row.id),
            Some(admin.ip.clone()),
            json!({"fields": changed_fields}),
        )
        .await?;
    changed(app).await?;
    load(app, id).await
}

async fn revoke_key(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(id): Path<String>,
) -> AdminResult {
    let (row, revoked) = revoke_key_by_id(&app, &admin, &id).await?;
    let mut view = key_view(&row);
    if let Some(o) = view.as_object_mut() {
        o.insert("revoked_ids".into(), json!(revoked));
    }
    Ok(Json(view).into_response())
}

/// Revoke a key and its descendants, audit it and refresh the cache;
/// answers the stored row and the ids revoked now.
pub(crate) async fn revoke_key_by_id(
    app: &App,
    admin: &Admin,
    id: &str,
) -> Result<(KeyRow, Vec<String>), AdminError> {
    load(app, id).await?;
    let revoked = app.store.revoke_cascade(id, now_ms()).await?;
    app.audit
        .record(
            &admin.actor,
            "key.revoke",
            Some(id),
            Some(admin.ip.clone()),
            json!({"revoked": revoked}),
        )
        .await?;
    changed(app).await?;
    let row = load(app, id).await?;
    Ok((row, revoked))
}

async fn rotate_key(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(id): Path<String>,
    Body(body): Body,
) -> AdminResult {
    let grace = match body.get("grace_seconds") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_i64() {
            Some(n) if (0..=30 * 86_400).contains(&n) => n,
            _ => {
                return Err(bad(
                    "grace_seconds: must be a whole number from 0 to 2592000 (30 days)",
                ));
            }
        },
    };
    let (row, secret) = rotate_key_by_id(&app, &admin, &id, grace).await?;
    let mut view = key_view(&row);
    if let Some(o) = view.as_object_mut() {
        o.insert("key".into(), Value::String(secret));
    }
    Ok(Json(view).into_response())
}

/// Longest rotation grace period, in seconds.
pub(crate) const MAX_GRACE_SECONDS: i64 = 30 * 86_400;

/// Give a key a new secret (the old one valid `grace` more seconds), audit
/// it and refresh the cache; answers the stored row and the new secret.
pub(crate) async fn rotate_key_by_id(
    app: &App,
    admin: &Admin,
    id: &str,
    grace: i64,
) -> Result<(KeyRow, String), AdminError> {
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(bad(
            "grace_seconds: must be a whole number from 0 to 2592000 (30 days)",
        ));
    }
    let mut row = load(app, id).await?;
    if status_of(&row, now_ms()) != "active" {
        return Err(bad(format!(
            "this key is {} and cannot be rotated",
            status_of(&row, now_ms())
        )));
    }
    let now = now_ms();
    let secret = keys::generate(keys::KEY_PREFIX);
    if grace > 0 {
        row.old_key_hash = Some(row.key_hash.clone());
        row.old_key_expires_at = Some(now + grace * 1000);
    } else {
        row.old_key_hash = None;
        row.old_key_expires_at = None;
    }
    row.key_hash = keys::hash_hex(&secret);
    row.prefix = keys::display_prefix(&secret);
    row.updated_at = now;
    app.store.update_key(&row).await?;
    app.audit
        .record(
            &admin.actor,
            "key.rotate",
            Some(id),
            Some(admin.ip.clone()),
            json!({"grace_seconds": grace, "prefix": row.prefix}),
        )
        .await?;
    changed(app).await?;
    Ok((row, secret))
}

async fn usage(
    State(app): State<Arc<App>>,
    _admin: Admin,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let limit = parse_limit(&q, 100, 10_000)?;
    let filter = usage_filter(&q, limit + 1)?;
    if let Some(g) = q.get("group_by").filter(|g| !g.is_empty()) {
        let cols = group_columns(g)?;
        let groups = app.store.group_usage(&filter, &cols).await?;
        let data: Vec<Value> = groups.into_iter().map(group_json).collect();
        return Ok(Json(json!({"data": data, "next_cursor": null})).into_response());
    }
    let mut rows = app.store.list_usage(&filter).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.request_id.clone())
    } else {
        None
    };
    let data: Vec<Value> = rows.into_iter().map(usage_json).collect();
    Ok(Json(json!({"data": data, "next_cursor": next})).into_response())
}

/// The usage filter of a query string (`key_id`, `user`, `team`, `model`,
/// `provider`, `since`, `until`, `cursor`), fetching `limit` rows.
pub(crate) fn usage_filter(
    q: &HashMap<String, String>,
    limit: i64,
) -> Result<UsageFilter, AdminError> {
    let field = |k: &str| q.get(k).cloned();
    Ok(UsageFilter {
        key_id: field("key_id"),
        user: field("user"),
        team: field("team"),
        model: field("model"),
        provider: field("provider"),
        since: parse_when(q, "since")?,
        until: parse_when(q, "until")?,
        limit,
        cursor: field("cursor"),
    })
}

/// The columns of a `group_by` value, each checked.
pub(crate) fn group_columns(g: &str) -> Result<Vec<String>, AdminError> {
    let cols: Vec<String> = g
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for c in &cols {
        if !GROUP_COLUMNS.contains(&c.as_str()) {
            return Err(bad(format!(
                "group_by: unknown column '{c}' (use {})",
                GROUP_COLUMNS.join(", ")
            )));
        }
    }
    Ok(cols)
}

/// One usage group as the API shows it.
pub(crate) fn group_json(g: crate::store::UsageGroup) -> Value {
    let mut o = Map::new();
    for (k, v) in g.fields {
        o.insert(k, v);
    }
    o.insert("requests".into(), json!(g.requests));
    o.insert("prompt_tokens".into(), json!(g.prompt_tokens));
    o.insert("completion_tokens".into(), json!(g.completion_tokens));
    o.insert("cost_usd".into(), json!(g.cost_usd));
    Value::Object(o)
}

/// One usage row as the API shows it.
pub(crate) fn usage_json(r: crate::store::UsageRow) -> Value {
    json!({
        "request_id": r.request_id, "key_id": r.key_id, "user": r.user, "team": r.team,
        "purpose": r.purpose, "provider": r.provider, "model": r.model, "endpoint": r.endpoint,
        "status": r.status, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
        "cost_usd": r.cost_usd, "latency_ms": r.latency_ms, "created_at": rfc3339(r.created_at),
        "flags": r.flags,
    })
}

async fn audit(
    State(app): State<Arc<App>>,
    _admin: Admin,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let limit = parse_limit(&q, 100, 1000)?;
    let cursor = match q.get("cursor") {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| bad("cursor: not a cursor from a previous answer"))?,
        ),
    };
    let mut rows = app
        .store
        .list_audit(
            parse_when(&q, "since")?,
            parse_when(&q, "until")?,
            limit + 1,
            cursor,
        )
        .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    let data: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "seq": r.seq, "ts": rfc3339(r.ts), "actor": r.actor, "action": r.action,
                "target": r.target, "ip": r.ip,
                "detail": serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
                "hash": r.hash,
            })
        })
        .collect();
    Ok(Json(json!({"data": data, "next_cursor": next})).into_response())
}

async fn audit_verify(State(app): State<Arc<App>>, _admin: Admin) -> AdminResult {
    let v = app.store.verify_audit().await?;
    Ok(Json(json!(v)).into_response())
}

// ---- users and teams ------------------------------------------------------

fn owner_view(o: &OwnerRow) -> Value {
    let mut v = serde_json::from_str::<Value>(&o.spec).unwrap_or_else(|_| json!({}));
    if let Some(m) = v.as_object_mut() {
        m.insert("name".into(), json!(o.name));
        if o.kind == "user" {
            m.insert("team".into(), json!(o.team));
        }
        m.insert("created_at".into(), json!(rfc3339(o.created_at)));
        m.insert("updated_at".into(), json!(rfc3339(o.updated_at)));
    }
    v
}

pub(crate) async fn owner_view_with_spend(app: &App, o: &OwnerRow) -> Result<Value, AdminError> {
    let mut v = owner_view(o);
    let fields: OwnerFields = serde_json::from_str(&o.spec).unwrap_or_default();
    let column = if o.kind == "user" {
        "user_name"
    } else {
        "team"
    };
    let now = now_ms();
    let period = fields
        .budget
        .as_ref()
        .map(|b| b.period.clone())
        .unwrap_or_else(|| "total".into());
    let since = crate::counters::period_start(&period, now);
    let spent = app.store.spend_since(column, &o.name, since).await?;
    if let Some(m) = v.as_object_mut() {
        m.insert("spend_usd".into(), json!(spent));
        m.insert("spend_period".into(), json!(period));
    }
    Ok(v)
}

async fn list_owners(app: &App, kind: &str) -> AdminResult {
    let rows = app.store.list_owners(Some(kind)).await?;
    let data: Vec<Value> = rows.iter().map(owner_view).collect();
    Ok(Json(json!({"data": data, "next_cursor": null})).into_response())
}

async fn create_owner(app: &App, admin: Admin, kind: &str, body: Value) -> AdminResult {
    let row = create_owner_row(app, &admin, kind, body).await?;
    Ok((StatusCode::CREATED, Json(owner_view(&row))).into_response())
}

/// Validate and store a new user or team, audit it and refresh the cache.
pub(crate) async fn create_owner_row(
    app: &App,
    admin: &Admin,
    kind: &str,
    body: Value,
) -> Result<OwnerRow, AdminError> {
    let fields: OwnerFields = crate::keys::spec::from_json(body).map_err(bad)?;
    fields.validate().map_err(bad)?;
    let name = fields.name.clone().unwrap_or_default();
    if app.store.get_owner(kind, &name).await?.is_some() {
        return Err(AdminError(ApiError {
            status: StatusCode::CONFLICT,
            kind: "conflict",
            message: format!("a {kind} named '{name}' already exists; PATCH it instead"),
            retry_after: None,
            upstream: None,
        }));
    }
    if kind == "team" && fields.team.is_some() {
        return Err(bad("team: a team has no team"));
    }
    let now = now_ms();
    let row = OwnerRow {
        kind: kind.into(),
        name: name.clone(),
        team: fields.team.clone(),
        spec: serde_json::to_string(&fields).map_err(anyhow::Error::from)?,
        created_at: now,
        updated_at: now,
    };
    app.store.upsert_owner(&row).await?;
    app.audit
        .record(
            &admin.actor,
            &format!("{kind}.create"),
            Some(&name),
            Some(admin.ip.clone()),
            json!({"fields": serde_json::to_value(&fields).unwrap_or(Value::Null)}),
        )
        .await?;
    changed(app).await?;
    Ok(row)
}

async fn show_owner(app: &App, kind: &str, name: &str) -> AdminResult {
    let row = app
        .store
        .get_owner(kind, name)
        .await?
        .ok_or_else(|| AdminError(ApiError::not_found(format!("no {kind} named '{name}'"))))?;
    Ok(Json(owner_view_with_spend(app, &row).await?).into_response())
}

async fn update_owner(app: &App, admin: Admin, kind: &str, name: &str, body: Value) -> AdminResult {
    let row = update_owner_row(app, &admin, kind, name, body).await?;
    Ok(Json(owner_view_with_spend(app, &row).await?).into_response())
}

/// Apply a merge patch to a user or team, audit it and refresh the cache.
pub(crate) async fn update_owner_row(
    app: &App,
    admin: &Admin,
    kind: &str,
    name: &str,
    body: Value,
) -> Result<OwnerRow, AdminError> {
    let Value::Object(patch) = body else {
        return Err(bad("the body must be a JSON object"));
    };
    if patch.get("name").is_some_and(|n| n.as_str() != Some(name)) {
        return Err(bad("name: cannot be changed"));
    }
    let mut row = app
        .store
        .get_owner(kind, name)
        .await?
        .ok_or_else(|| AdminError(ApiError::not_found(format!("no {kind} named '{name}'"))))?;
    let mut obj = serde_json::from_str::<Value>(&row.spec).unwrap_or_else(|_| json!({}));
    if let Some(o) = obj.as_object_mut() {
        for (k, v) in &patch {
            if v.is_null() {
                o.remove(k);
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    let fields: OwnerFields = crate::keys::spec::from_json(obj).map_err(bad)?;
    fields.validate().map_err(bad)?;
    row.team = fields.team.clone();
    row.spec = serde_json::to_string(&fields).map_err(anyhow::Error::from)?;
    row.updated_at = now_ms();
    app.store.upsert_owner(&row).await?;
    let changed_fields: Vec<&String> = patch.keys().collect();
    app.audit
        .record(
            &admin.actor,
            &format!("{kind}.update"),
            Some(name),
            Some(admin.ip.clone()),
            json!({"fields": changed_fields}),
        )
        .await?;
    changed(app).await?;
    Ok(row)
}

async fn list_users(State(app): State<Arc<App>>, _admin: Admin) -> AdminResult {
    list_owners(&app, "user").await
}
async fn create_user(State(app): State<Arc<App>>, admin: Admin, Body(body): Body) -> AdminResult {
    create_owner(&app, admin, "user", body).await
}
async fn show_user(
    State(app): State<Arc<App>>,
    _admin: Admin,
    Path(name): Path<String>,
) -> AdminResult {
    show_owner(&app, "user", &name).await
}
async fn update_user(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(name): Path<String>,
    Body(body): Body,
) -> AdminResult {
    update_owner(&app, admin, "user", &name, body).await
}
async fn list_teams(State(app): State<Arc<App>>, _admin: Admin) -> AdminResult {
    list_owners(&app, "team").await
}
async fn create_team(State(app): State<Arc<App>>, admin: Admin, Body(body): Body) -> AdminResult {
    create_owner(&app, admin, "team", body).await
}
async fn show_team(
    State(app): State<Arc<App>>,
    _admin: Admin,
    Path(name): Path<String>,
) -> AdminResult {
    show_owner(&app, "team", &name).await
}
async fn update_team(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(name): Path<String>,
    Body(body): Body,
) -> AdminResult {
    update_owner(&app, admin, "team", &name, body).await
}
