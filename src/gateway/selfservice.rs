//! `/bursar/v1`: what a key may do for itself — `whoami`, minting narrower
//! child keys — and the unauthenticated leak report.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::App;
use super::admit;
use super::cache::CachedKey;
use super::error::{ApiError, Shape};
use super::proxy::{authenticate, may_use};
use super::surface;
use crate::counters::{Counters, period_start};
use crate::keys::spec::{Budget, KeyFields};
use crate::keys::{self, glob_covered};
use crate::util::{now_ms, rfc3339};

const MAX_BODY: usize = 1024 * 1024;

fn caller(
    app: &Arc<App>,
    peer: SocketAddr,
    req: &Request,
) -> Result<(Arc<CachedKey>, std::net::IpAddr), ApiError> {
    let ip = surface::client_ip(peer, req.headers(), &app.trusted_proxies);
    let key = authenticate(
        app,
        surface::credential(req.headers(), req.uri().query()),
        ip,
    )?;
    Ok((key, ip))
}

/// `GET /bursar/v1/whoami`: the calling key's scope, effective limits, what
/// remains of each budget and rate window, and the models it can reach.
pub async fn whoami(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (key, ip) = match caller(&app, peer, &req) {
        Ok(k) => k,
        Err(e) => return e.render(Shape::OpenAi),
    };
    let now = now_ms();
    let mut limits = Vec::new();
    for level in admit::levels(&app, &key) {
        let mut windows = [None, None];
        for (slot, (what, limit)) in windows
            .iter_mut()
            .zip([("rpm", level.rpm), ("tpm", level.tpm)])
        {
            if let Some(l) = limit {
                let s = app
                    .counters
                    .peek(&format!("{what}:{}", level.scope), l, now)
                    .await;
                *slot = Some(json!({"limit": l, "remaining": s.remaining, "reset_ms": s.reset_ms}));
            }
        }
        let [rpm, tpm] = windows;
        let budget = match &level.budget {
            Some(b) => {
                let start = period_start(&b.period, now);
                let spent = level.spent_since(&app, start).await.unwrap_or(0.0);
                let reserved = app
                    .counters
                    .budget_peek(&format!("budget:{}", level.scope), start, b.usd)
                    .await
                    .reserved_usd;
                Some(json!({
                    "usd": b.usd, "period": b.period, "period_start": rfc3339(start),
                    "spent_usd": spent, "reserved_usd": reserved, "remaining_usd": (b.usd - spent - reserved).max(0.0),
                }))
            }
            None => None,
        };
        limits.push(json!({
            "scope": level.scope,
            "rpm": rpm,
            "tpm": tpm,
            "max_concurrency": level.max_concurrency,
            "budget": budget,
        }));
    }
    let spend = match app.store.get_key(&key.row.id).await {
        Ok(Some(r)) => r.spend_usd,
        _ => key.row.spend_usd,
    };
    let models: Vec<Value> = app
        .registry
        .known_models()
        .into_iter()
        .filter(|(m, p)| may_use(&key, p, m))
        .map(|(m, p)| {
            let price = app.prices.price(&m, &m).map(|pr| json!({"input_per_mtok": pr.input_per_mtok, "output_per_mtok": pr.output_per_mtok}));
            json!({"id": m, "provider": p, "price": price})
        })
        .collect();
    let s = &key.spec;
    axum::Json(json!({
        "id": key.row.id,
        "name": key.row.name,
        "prefix": key.row.prefix,
        "parent_id": key.row.parent_id,
        "user": key.row.user,
        "team": key.row.team,
        "purpose": key.row.purpose,
        "environment": key.row.environment,
        "status": "active",
        "expires_at": key.row.expires_at.map(rfc3339),
        "scope": {"models": s.models, "endpoints": s.endpoints, "providers": s.providers, "ip_allow": s.ip_allow},
        "max_tokens_per_request": admit::max_tokens_limit(&app, &key),
        "limits": limits,
        "spend_usd": spend,
        "models": models,
        "client_ip": ip.to_string(),
    }))
    .into_response()
}

fn narrower_list(
    field: &str,
    parent: &[String],
    child: Option<&Vec<String>>,
    covered: impl Fn(&[String], &str) -> bool,
) -> Result<Vec<String>, ApiError> {
    match child {
        None => Ok(parent.to_vec()),
        Some(c) if c.is_empty() && !parent.is_empty() => Err(ApiError::denied(format!(
            "{field}: a child key cannot be unrestricted where its parent is restricted"
        ))),
        Some(c) => {
            for v in c {
                if !covered(parent, v) {
                    return Err(ApiError::denied(format!(
                        "{field}: '{v}' is wider than the parent key allows"
                    )));
                }
            }
            Ok(c.clone())
        }
    }
}

fn narrower_limit(
    field: &str,
    parent: Option<u64>,
    child: Option<u64>,
) -> Result<Option<u64>, ApiError> {
    match (parent, child) {
        (Some(p), Some(c)) if c > p => Err(ApiError::denied(format!(
            "{field}: {c} is above the parent key's {p}"
        ))),
        (p, None) => Ok(p),
        (_, c) => Ok(c),
    }
}

fn same_or_inherit(
    field: &str,
    parent: &Option<String>,
    child: &Option<String>,
) -> Result<Option<String>, ApiError> {
    match (parent, child) {
        (Some(p), Some(c)) if p != c => Err(ApiError::denied(format!(
            "{field}: a child key keeps its parent's {field} '{p}'"
        ))),
        (p, None) => Ok(p.clone()),
        (_, c) => Ok(c.clone()),
    }
}

/// The child's fields, each equal to or narrower than the parent's.
pub fn narrow(
    parent: &CachedKey,
    child: &KeyFields,
    child_expires: Option<i64>,
    parent_budget_remaining: Option<f64>,
    now: i64,
) -> Result<KeyFields, ApiError> {
    let p = &parent.spec;
    let mut out = child.clone();
    out.models = Some(narrower_list(
        "models",
        &p.models,
        child.models.as_ref(),
        glob_covered,
    )?);
    out.endpoints = Some(narrower_list(
        "endpoints",
        &p.endpoints,
        child.endpoints.as_ref(),
        |ps, v| ps.is_empty() || ps.iter().any(|x| x == v),
    )?);
    out.providers = Some(narrower_list(
        "providers",
        &p.providers,
        child.providers.as_ref(),
        |ps, v| ps.is_empty() || ps.iter().any(|x| x == v),
    )?);
    out.ip_allow = Some(narrower_list(
        "ip_allow",
        &p.ip_allow,
        child.ip_allow.as_ref(),
        |ps, v| {
            ps.is_empty()
                || match crate::config::parse_cidr(v) {
                    Ok(c) => ps
                        .iter()
                        .filter_map(|x| crate::config::parse_cidr(x).ok())
                        .any(|pn| pn.contains(&c)),
                    Err(_) => false,
                }
        },
    )?);
    for v in [
        &mut out.models,
        &mut out.endpoints,
        &mut out.providers,
        &mut out.ip_allow,
    ] {
        if v.as_ref().is_some_and(Vec::is_empty) {
            *v = None;
        }
    }
    out.max_tokens_per_request = narrower_limit(
        "max_tokens_per_request",
        p.max_tokens_per_request,
        child.max_tokens_per_request,
    )?;
    out.rpm = narrower_limit("rpm", p.rpm, child.rpm)?;
    out.tpm = narrower_limit("tpm", p.tpm, child.tpm)?;
    out.max_concurrency =
        narrower_limit("max_concurrency", p.max_concurrency, child.max_concurrency)?;
    out.user = same_or_inherit("user", &parent.row.user, &child.user)?;
    out.team = same_or_inherit("team", &parent.row.team, &child.team)?;
    out.purpose = same_or_inherit("purpose", &parent.row.purpose, &child.purpose)?;
    out.environment = same_or_inherit("environment", &parent.row.environment, &child.environment)?;
    match (&p.guardrails, &child.guardrails) {
        (Some(pg), Some(cg)) if pg != cg => {
            return Err(ApiError::denied(
                "guardrails: a child key keeps its parent's guardrails",
            ));
        }
        (pg, _) => out.guardrails = pg.clone().or_else(|| child.guardrails.clone()),
    }
    if let Some(pe) = parent.row.expires_at
        && child_expires.is_some_and(|c| c > pe)
    {
        return Err(ApiError::denied(format!(
            "expires_at: a child key cannot outlive its parent (until {})",
            rfc3339(pe)
        )));
    }
    let _ = now;
    out.budget = match (parent_budget_remaining, &p.budget, &child.budget) {
        (Some(rem), Some(pb), None) => Some(Budget {
            usd: rem,
            period: pb.period.clone(),
        }),
        (Some(rem), Some(_), Some(cb)) if cb.usd > rem + 1e-12 => {
            return Err(ApiError::denied(format!(
                "budget.usd: {} is above what remains of the parent's budget ({rem:.4})",
                cb.usd
            )));
        }
        (_, _, c) => c.clone(),
    };
    out.log_bodies = match (p.log_bodies, child.log_bodies) {
        (false, Some(true)) => {
            return Err(ApiError::denied(
                "log_bodies: the parent key does not log bodies",
            ));
        }
        (pl, c) => c.or(pl.then_some(true)),
    };
    Ok(out)
}

/// `POST /bursar/v1/keys`: mint a child of the calling key, never wider.
pub async fn mint_child(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    match mint(&app, peer, req).await {
        Ok(r) => r,
        Err(e) => e.render(Shape::OpenAi),
    }
}

async fn mint(app: &Arc<App>, peer: SocketAddr, req: Request) -> Result<Response, ApiError> {
    let (parent, ip) = caller(app, peer, &req)?;
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_request(format!("the body is not valid JSON: {e}")))?;
    let fields: KeyFields =
        crate::keys::spec::from_json(json).map_err(ApiError::invalid_request)?;
    let now = now_ms();
    let mut fields = fields;
    // A child without a lifetime lives as long as its parent.
    let expires = fields.validate(now).map_err(ApiError::invalid_request)?;
    let expires = expires.or(parent.row.expires_at);
    let remaining = match &parent.spec.budget {
        Some(b) => {
            let start = period_start(&b.period, now);
            let spent = app
                .store
                .spend_since_keys(&app.keys.subtree(&parent.row.id), start)
                .await
                .map_err(|_| ApiError::internal("the parent's budget could not be read"))?;
            Some((b.usd - spent).max(0.0))
        }
        None => None,
    };
    fields = narrow(&parent, &fields, expires, remaining, now)?;
    fields.validate(now).map_err(ApiError::invalid_request)?;
    let (row, secret) = fields.new_row(Some(parent.row.id.clone()), expires, now);
    let stored = async {
        app.store.insert_key(&row).await?;
        app.audit
            .record(
                &format!("key:{}", parent.row.id),
                "key.derive",
                Some(&row.id),
                Some(ip.to_string()),
                json!({"parent_id": parent.row.id, "prefix": row.prefix, "name": row.name}),
            )
            .await?;
        app.keys_changed().await
    };
    stored.await.map_err(|e| {
        tracing::error!(error = %e, "minting a child key failed");
        ApiError::internal("the key could not be stored")
    })?;
    let mut view = crate::admin::key_view(&row);
    if let Some(o) = view.as_object_mut() {
        o.insert("key".into(), Value::String(secret));
    }
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

/// `POST /bursar/v1/report-leak`: text that contains leaked `bsr_` keys; each
/// real one is revoked at once (with its children). No authentication: holding
/// the key is the proof. The answer says how many were revoked, not which.
pub async fn report_leak(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let ip = surface::client_ip(peer, req.headers(), &app.trusted_proxies).to_string();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return ApiError::too_large(MAX_BODY).render(Shape::OpenAi),
    };
    let text = String::from_utf8_lossy(&body);
    let found = keys::find_keys(&text);
    let now = now_ms();
    let mut revoked = 0usize;
    for secret in &found {
        if let super::cache::Lookup::Found(k) | super::cache::Lookup::Rotated(k) =
            app.keys.lookup(secret, now)
        {
            match app.store.revoke_cascade(&k.row.id, now).await {
                Ok(ids) => {
                    revoked += ids.len();
                    app.audit.event(
                        "leak-report",
                        "key.leak_revoked",
                        Some(&k.row.id),
                        Some(ip.clone()),
                        json!({"prefix": keys::display_prefix(secret), "revoked": ids}),
                    );
                }
                Err(e) => tracing::error!(error = %e, "leak report: revoke failed"),
            }
        }
    }
    if revoked > 0 && app.keys_changed().await.is_err() {
        tracing::error!("leak report: key cache reload failed");
    }
    axum::Json(json!({"checked": found.len(), "revoked": revoked})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::spec::KeySpec;
    use crate::store::KeyRow;
    use proptest::prelude::*;

    fn key(spec: KeySpec, expires: Option<i64>) -> CachedKey {
        CachedKey::from_row(KeyRow {
            id: "key_p".into(),
            name: "p".into(),
            user: Some("alice".into()),
            team: None,
            purpose: None,
            environment: None,
            prefix: "bsr_x".into(),
            key_hash: String::new(),
            old_key_hash: None,
            old_key_expires_at: None,
            status: "active".into(),
            parent_id: None,
            expires_at: expires,
            spec: serde_json::to_string(&spec).unwrap(),
            spend_usd: 0.0,
            created_at: 0,
            updated_at: 0,
            revoked_at: None,
            last_used_at: None,
        })
    }

    const MODELS: &[&str] = &[
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-*",
        "g?t-*",
        "g*t-*",
        "claude-*",
        "claude-sonnet-4-5",
        "echo",
        "*",
    ];
    const ENDPOINTS: &[&str] = &["chat", "embeddings", "responses", "messages"];

    fn subset(pool: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<String>>> {
        prop::option::of(
            prop::sample::subsequence(pool, 0..=pool.len())
                .prop_map(|v| v.into_iter().map(String::from).collect()),
        )
    }

    fn child_fields() -> impl Strategy<Value = KeyFields> {
        (
            subset(MODELS),
            subset(ENDPOINTS),
            prop::option::of(1u64..200),
            prop::option::of(1u64..10),
            prop::option::of(0.0f64..50.0),
        )
            .prop_map(|(models, endpoints, rpm, conc, usd)| KeyFields {
                name: Some("c".into()),
                models,
                endpoints,
                rpm,
                max_concurrency: conc,
                budget: usd.map(|u| Budget {
                    usd: u,
                    period: "monthly".into(),
                }),
                ..Default::default()
            })
    }

    /// Every name the child may reach, the parent may reach too.
    fn model_scope_within(parent: &KeySpec, child: &KeySpec) -> bool {
        let probes = [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-5",
            "gxxt-4",
            "got-1",
            "claude-sonnet-4-5",
            "claude-opus-4",
            "echo",
            "llama3",
            "x",
        ];
        probes.iter().all(|m| {
            !crate::keys::matches_any(&child.models, m)
                || crate::keys::matches_any(&parent.models, m)
        })
    }

    fn limit_within(p: Option<u64>, c: Option<u64>) -> bool {
        match (p, c) {
            (Some(p), Some(c)) => c <= p,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    proptest! {
        /// No sequence of derivations widens a scope.
        #[test]
        fn derivation_never_widens(chain in prop::collection::vec(child_fields(), 1..5), root_models in subset(MODELS), root_rpm in prop::option::of(1u64..100)) {
            let root = KeyFields { name: Some("root".into()), models: root_models, rpm: root_rpm, budget: Some(Budget { usd: 20.0, period: "monthly".into() }), ..Default::default() };
            let mut parent = key(root.spec(), Some(10_000));
            for req in chain {
                let remaining = parent.spec.budget.as_ref().map(|b| b.usd);
                match narrow(&parent, &req, Some(5_000), remaining, 0) {
                    Err(e) => prop_assert_eq!(e.status, StatusCode::FORBIDDEN),
                    Ok(child) => {
                        let cs = child.spec();
                        prop_assert!(model_scope_within(&parent.spec, &cs), "models widened: {:?} -> {:?}", parent.spec.models, cs.models);
                        prop_assert!(parent.spec.endpoints.is_empty() || cs.endpoints.iter().all(|e| parent.spec.endpoints.contains(e)));
                        prop_assert!(limit_within(parent.spec.rpm, cs.rpm));
                        prop_assert!(limit_within(parent.spec.max_concurrency, cs.max_concurrency));
                        if let (Some(pb), Some(cb)) = (&parent.spec.budget, &cs.budget) {
                            prop_assert!(cb.usd <= pb.usd + 1e-9);
                        }
                        prop_assert!(parent.spec.budget.is_none() || cs.budget.is_some());
                        prop_assert_eq!(child.user.as_deref(), Some("alice"));
                        parent = key(cs, Some(5_000));
                    }
                }
            }
        }
    }

    #[test]
    fn wider_requests_are_refused() {
        let parent = key(
            KeyFields {
                name: Some("p".into()),
                models: Some(vec!["gpt-4o-mini".into()]),
                rpm: Some(10),
                ..Default::default()
            }
            .spec(),
            Some(1000),
        );
        let wide = KeyFields {
            name: Some("c".into()),
            models: Some(vec!["gpt-*".into()]),
            ..Default::default()
        };
        assert_eq!(
            narrow(&parent, &wide, None, None, 0).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        let faster = KeyFields {
            name: Some("c".into()),
            rpm: Some(11),
            ..Default::default()
        };
        assert!(narrow(&parent, &faster, None, None, 0).is_err());
        let longer = KeyFields {
            name: Some("c".into()),
            ..Default::default()
        };
        assert!(narrow(&parent, &longer, Some(2000), None, 0).is_err());
        let other_user = KeyFields {
            name: Some("c".into()),
            user: Some("bob".into()),
            ..Default::default()
        };
        assert!(narrow(&parent, &other_user, None, None, 0).is_err());
        let ok = narrow(&parent, &longer, Some(500), None, 0).unwrap();
        assert_eq!(ok.models, Some(vec!["gpt-4o-mini".to_string()]));
        assert_eq!(ok.rpm, Some(10));
    }
}
