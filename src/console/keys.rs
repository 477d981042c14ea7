//! The API Keys pages: list, create (secret shown once), detail with edit,
//! rotate and revoke. The key logic is the admin API's; a member sees and
//! changes only keys whose `user` is their account name, within their
//! team's (and their user's) limits.

use std::collections::HashMap;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde_json::{Map, Value, json};

use super::html::{self as h, FieldAttrs, csrf};
use super::{FormData, PageError, PageResult, Session, clean_query, see_other};
use crate::admin::{self, status_of};
use crate::counters::period_start;
use crate::keys::spec::{BUDGET_PERIODS, Budget, ENDPOINTS, KeyFields, KeySpec, OwnerFields};
use crate::store::{KeyFilter, KeyRow, UsageFilter};
use crate::util::now_ms;

const PAGE_SIZE: i64 = 50;

const TTL_CHOICES: &[(&str, &str)] = &[
    ("", "Never"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "7 days"),
    ("2592000", "30 days"),
    ("7776000", "90 days"),
    ("31536000", "1 year"),
];

const GRACE_CHOICES: &[(&str, &str)] = &[
    ("0", "none — the old secret stops now"),
    ("300", "5 minutes"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "7 days"),
];

const DLP_CHOICES: &[(&str, &str)] = &[
    ("", "inherit (user, then team)"),
    ("off", "off"),
    ("log", "log"),
    ("redact", "redact"),
    ("block", "block"),
];

const ANOMALY_CHOICES: &[(&str, &str)] = &[
    ("", "inherit (user, then team)"),
    ("off", "off"),
    ("log", "log"),
    ("flag", "flag"),
    ("block", "block"),
];

fn no_viewers(s: &Session) -> Result<(), PageError> {
    if s.user.role == "viewer" {
        Err(PageError::forbidden(
            "Viewers can see usage only. Ask an admin for the member role to manage keys.",
        ))
    } else {
        Ok(())
    }
}

fn spec_of(row: &KeyRow) -> KeySpec {
    serde_json::from_str(&row.spec).unwrap_or_default()
}

/// A short description of what a key may do.
pub fn scope_summary(row: &KeyRow, spec: &KeySpec) -> String {
    let mut parts = Vec::new();
    parts.push(if spec.models.is_empty() {
        "all models".to_string()
    } else {
        spec.models.join(", ")
    });
    if !spec.endpoints.is_empty() {
        parts.push(spec.endpoints.join(", "));
    }
    if !spec.providers.is_empty() {
        parts.push(format!("via {}", spec.providers.join(", ")));
    }
    if !spec.ip_allow.is_empty() {
        parts.push(format!("{} IP range(s)", spec.ip_allow.len()));
    }
    if let Some(r) = spec.rpm {
        parts.push(format!("{r} rpm"));
    }
    if let Some(t) = spec.tpm {
        parts.push(format!("{} tpm", h::thousands(t as i64)));
    }
    if let Some(c) = spec.max_concurrency {
        parts.push(format!("{c} concurrent"));
    }
    if let Some(m) = spec.max_tokens_per_request {
        parts.push(format!("≤{} tokens/request", h::thousands(m as i64)));
    }
    if let Some(e) = row.expires_at {
        parts.push(format!("expires {}", h::when(e)));
    }
    parts.join(" · ")
}

/// Spend in the budget's current period (total spend without a budget).
async fn period_spend(s: &Session, row: &KeyRow, spec: &KeySpec) -> Result<f64, PageError> {
    Ok(match &spec.budget {
        Some(b) => {
            s.app()
                .store
                .spend_since("key_id", &row.id, period_start(&b.period, now_ms()))
                .await?
        }
        None => row.spend_usd,
    })
}

/// A key the caller may see: any for an admin, own keys for a member;
/// everything else is "not found" (no hint that it exists).
async fn visible_key(s: &Session, id: &str) -> Result<KeyRow, PageError> {
    no_viewers(s)?;
    let missing = || PageError::not_found(format!("No key with id '{id}'."));
    if id.len() > 100 {
        return Err(missing());
    }
    let row = s.app().store.get_key(id).await?.ok_or_else(missing)?;
    if s.is_admin() || row.user.as_deref() == Some(s.user.name.as_str()) {
        Ok(row)
    } else {
        Err(missing())
    }
}

// ---- list -------------------------------------------------------------------

pub async fn list(s: Session, Query(q): Query<HashMap<String, String>>) -> PageResult {
    no_viewers(&s)?;
    let q = clean_query(q);
    let app = s.app();
    let status = q
        .get("status")
        .filter(|v| ["active", "revoked", "expired"].contains(&v.as_str()))
        .cloned();
    let filter = KeyFilter {
        user: if s.is_admin() {
            q.get("user").cloned()
        } else {
            Some(s.user.name.clone())
        },
        team: if s.is_admin() {
            q.get("team").cloned()
        } else {
            None
        },
        status: status.clone(),
        limit: PAGE_SIZE + 1,
        cursor: q.get("cursor").cloned(),
    };
    let mut rows = app.store.list_keys(&filter, now_ms()).await?;
    let next = if rows.len() as i64 > PAGE_SIZE {
        rows.truncate(PAGE_SIZE as usize);
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    let now = now_ms();
    let mut spends = Vec::with_capacity(rows.len());
    for r in &rows {
        let spec = spec_of(r);
        spends.push((period_spend(&s, r, &spec).await?, spec));
    }
    let filtered = q.contains_key("user")
        || q.contains_key("team")
        || status.is_some()
        || q.contains_key("cursor");
    let base_q = |cursor: &str| {
        h::query(&[
            ("user", q.get("user").map(String::as_str).unwrap_or("")),
            ("team", q.get("team").map(String::as_str).unwrap_or("")),
            ("status", status.as_deref().unwrap_or("")),
            ("cursor", cursor),
        ])
    };
    let done = q.get("done").map(String::as_str);
    let body = html! {
        (h::heading(
            "API Keys",
            Some(if s.is_admin() { "Every virtual key: who owns it, what it may do, what it spent." } else { "Your virtual keys: what each may do and what it spent." }),
            html! { a.btn.btn-primary href="/console/keys/new" { "Create key" } },
        ))
        @if done == Some("revoked") { (h::notice("ok", "The key was revoked; requests with it now get 401.")) }
        form.filters method="get" action="/console/keys" {
            @if s.is_admin() {
                input type="search" name="user" value=(q.get("user").map(String::as_str).unwrap_or("")) placeholder="user" aria-label="Filter by user" maxlength="200";
                input type="search" name="team" value=(q.get("team").map(String::as_str).unwrap_or("")) placeholder="team" aria-label="Filter by team" maxlength="200";
            }
            select name="status" aria-label="Filter by status" {
                option value="" selected[status.is_none()] { "any status" }
                @for st in ["active", "revoked", "expired"] {
                    option value=(st) selected[status.as_deref() == Some(st)] { (st) }
                }
            }
            button.btn type="submit" { "Filter" }
            @if filtered { a.btn.btn-ghost href="/console/keys" { "Clear" } }
        }
        @if rows.is_empty() {
            @if filtered {
                (h::empty("No keys match", "Nothing matches these filters. Clear them to see every key.", Some(("Clear filters", "/console/keys"))))
            } @else {
                (h::empty("No API keys yet", "Create a key for each person, app or purpose. Its secret is shown once; bursar keeps only its hash.", Some(("Create your first key", "/console/keys/new"))))
            }
        } @else {
            div.table-wrap {
                table.keys {
                    thead { tr {
                        th { "Name" } th { "Status" } th { "Owner" } th { "Scope" } th { "Spend / budget" } th { "Last used" }
                    } }
                    tbody {
                        @for (r, (spent, spec)) in rows.iter().zip(spends.iter()) {
                            tr {
                                td data-label="Name" {
                                    a.key-name href={ "/console/keys/" (r.id) } { (r.name) }
                                    br; code.muted { (r.prefix) "…" }
                                }
                                td data-label="Status" { (h::badge(status_of(r, now))) }
                                td data-label="Owner" {
                                    (r.user.as_deref().unwrap_or("—"))
                                    @if let Some(t) = &r.team { br; small.muted { "team " (t) } }
                                }
                                td.scope data-label="Scope" { (scope_summary(r, spec)) }
                                td data-label="Spend / budget" { (h::budget_bar(*spent, spec.budget.as_ref().map(|b| (b.usd, b.period.as_str())))) }
                                td data-label="Last used" { (h::ago(r.last_used_at, now)) }
                            }
                        }
                    }
                }
            }
            @if let Some(c) = &next {
                nav.pager { a.btn href={ "/console/keys" (base_q(c)) } { "Next page →" } }
            }
        }
    };
    Ok(h::page(&s, "keys", "API Keys", body).into_response())
}

// ---- the form ----------------------------------------------------------------

/// Current values of the key form, as strings.
#[derive(Default, Clone)]
struct FormValues {
    v: HashMap<String, String>,
    endpoints: Vec<String>,
    providers: Vec<String>,
    log_bodies: bool,
}

impl FormValues {
    fn get(&self, k: &str) -> &str {
        self.v.get(k).map(String::as_str).unwrap_or("")
    }
    fn from_form(f: &FormData) -> FormValues {
        let mut v = HashMap::new();
        for (k, val) in &f.0 {
            if k != "endpoints" && k != "providers" {
                v.entry(k.clone()).or_insert_with(|| val.trim().to_string());
            }
        }
        FormValues {
            v,
            endpoints: f.all("endpoints"),
            providers: f.all("providers"),
            log_bodies: f.get("log_bodies").is_some(),
        }
    }
    fn from_row(row: &KeyRow) -> FormValues {
        let spec = spec_of(row);
        let mut v = HashMap::new();
        let mut put = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.insert(k.to_string(), val);
            }
        };
        put("name", Some(row.name.clone()));
        put("user", row.user.clone());
        put("team", row.team.clone());
        put("purpose", row.purpose.clone());
        put("environment", row.environment.clone());
        put("models", Some(spec.models.join(", ")));
        put("ip_allow", Some(spec.ip_allow.join(", ")));
        put(
            "max_tokens_per_request",
            spec.max_tokens_per_request.map(|n| n.to_string()),
        );
        put("rpm", spec.rpm.map(|n| n.to_string()));
        put("tpm", spec.tpm.map(|n| n.to_string()));
        put(
            "max_concurrency",
            spec.max_concurrency.map(|n| n.to_string()),
        );
        if let Some(b) = &spec.budget {
            put("budget_usd", Some(b.usd.to_string()));
            put("budget_period", Some(b.period.clone()));
        }
        if let Some(g) = &spec.guardrails {
            put(
                "dlp",
                g.get("dlp").and_then(Value::as_str).map(str::to_string),
            );
            put(
                "anomaly",
                g.get("anomaly").and_then(Value::as_str).map(str::to_string),
            );
        }
        if let Some(m) = &spec.metadata {
            let lines: Vec<String> = m
                .iter()
                .map(|(k, val)| match val {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            put("metadata", Some(lines.join("\n")));
        }
        FormValues {
            v,
            endpoints: spec.endpoints.clone(),
            providers: spec.providers.clone(),
            log_bodies: spec.log_bodies,
        }
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split([',', '\n', ' '])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_count(field: &str, s: &str) -> Result<Option<u64>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("{field}: '{s}' is not a whole number"))
}

fn parse_metadata(s: &str) -> Result<Option<Map<String, Value>>, String> {
    let mut m = Map::new();
    for (i, line) in s.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("metadata: line {} must look like key=value", i + 1));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("metadata: line {} has no key", i + 1));
        }
        m.insert(k.to_string(), Value::String(v.trim().to_string()));
    }
    Ok((!m.is_empty()).then_some(m))
}

/// `datetime-local` (or a full RFC 3339 time) as RFC 3339, read as UTC.
fn expires_at_value(s: &str) -> String {
    if s.len() == 16 && s.as_bytes().get(10) == Some(&b'T') {
        format!("{s}:00Z")
    } else if s.len() == 19 && s.as_bytes().get(10) == Some(&b'T') {
        format!("{s}Z")
    } else {
        s.to_string()
    }
}

/// The JSON fields of the key form (only those the form carries; blank ones
/// as `null` so an edit clears them). `admin` decides which fields count.
fn form_json(
    f: &FormValues,
    raw: &FormData,
    admin: bool,
    create: bool,
) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    let text = |m: &mut Map<String, Value>, k: &str| {
        if raw.has(k) {
            let v = f.get(k);
            m.insert(k.into(), if v.is_empty() { Value::Null } else { json!(v) });
        }
    };
    text(&mut m, "name");
    text(&mut m, "purpose");
    text(&mut m, "environment");
    if admin {
        text(&mut m, "user");
        text(&mut m, "team");
    }
    for k in ["models", "ip_allow"] {
        if raw.has(k) {
            let l = split_list(f.get(k));
            m.insert(k.into(), if l.is_empty() { Value::Null } else { json!(l) });
        }
    }
    if raw.has("endpoints_shown") {
        m.insert(
            "endpoints".into(),
            if f.endpoints.is_empty() {
                Value::Null
            } else {
                json!(f.endpoints)
            },
        );
    }
    if raw.has("providers_shown") {
        m.insert(
            "providers".into(),
            if f.providers.is_empty() {
                Value::Null
            } else {
                json!(f.providers)
            },
        );
    }
    for k in ["max_tokens_per_request", "rpm", "tpm", "max_concurrency"] {
        if raw.has(k) {
            m.insert(
                k.into(),
                match parse_count(k, f.get(k))? {
                    Some(n) => json!(n),
                    None => Value::Null,
                },
            );
        }
    }
    if raw.has("budget_usd") {
        let usd = f.get("budget_usd");
        if usd.is_empty() {
            m.insert("budget".into(), Value::Null);
        } else {
            let n: f64 = usd
                .parse()
                .map_err(|_| format!("budget.usd: '{usd}' is not a number of dollars"))?;
            let period = match f.get("budget_period") {
                "" => "monthly",
                p => p,
            };
            m.insert("budget".into(), json!({"usd": n, "period": period}));
        }
    }
    if admin && (raw.has("dlp") || raw.has("anomaly")) {
        let mut g = Map::new();
        for k in ["dlp", "anomaly"] {
            if !f.get(k).is_empty() {
                g.insert(k.into(), json!(f.get(k)));
            }
        }
        m.insert(
            "guardrails".into(),
            if g.is_empty() {
                Value::Null
            } else {
                Value::Object(g)
            },
        );
    }
    if raw.has("metadata") {
        m.insert(
            "metadata".into(),
            match parse_metadata(f.get("metadata"))? {
                Some(md) => Value::Object(md),
                None => Value::Null,
            },
        );
    }
    if admin && raw.has("log_bodies_shown") {
        m.insert(
            "log_bodies".into(),
            if f.log_bodies {
                json!(true)
            } else {
                Value::Null
            },
        );
    }
    // Expiry: a preset lifetime or a date (edit: blank keeps the current one).
    let ttl = f.get("ttl");
    let at = f.get("expires_at");
    match (ttl, at) {
        ("never", "") => {
            m.insert("expires_at".into(), Value::Null);
        }
        ("", "") => {}
        (t, "") => {
            let secs: i64 = t
                .parse()
                .map_err(|_| format!("ttl_seconds: '{t}' is not a number of seconds"))?;
            m.insert("ttl_seconds".into(), json!(secs));
        }
        ("" | "never", a) => {
            m.insert("expires_at".into(), json!(expires_at_value(a)));
        }
        (_, _) => {
            return Err("expires_at: give either a lifetime or a date, not both".into());
        }
    }
    if create {
        m.retain(|_, v| !v.is_null());
    }
    Ok(m)
}

/// The limits that bound a member's keys: their team's and their user's.
async fn ceilings(s: &Session) -> Result<Vec<(String, OwnerFields)>, PageError> {
    let mut out = Vec::new();
    let store = &s.app().store;
    if let Some(t) = &s.user.team
        && let Some(row) = store.get_owner("team", t).await?
    {
        out.push((
            format!("team {t}"),
            serde_json::from_str(&row.spec).unwrap_or_default(),
        ));
    }
    if let Some(row) = store.get_owner("user", &s.user.name).await? {
        out.push((
            format!("user {}", s.user.name),
            serde_json::from_str(&row.spec).unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// Keep a member's key within the team's (and user's) limits: a limit above
/// a ceiling is refused; a limit left empty takes the ceiling.
pub fn within_ceilings(
    fields: &mut KeyFields,
    levels: &[(String, OwnerFields)],
) -> Result<(), String> {
    for (label, o) in levels {
        for (name, ceiling, value) in [
            (
                "max_tokens_per_request",
                o.max_tokens_per_request,
                &mut fields.max_tokens_per_request,
            ),
            ("rpm", o.rpm, &mut fields.rpm),
            ("tpm", o.tpm, &mut fields.tpm),
            (
                "max_concurrency",
                o.max_concurrency,
                &mut fields.max_concurrency,
            ),
        ] {
            if let Some(c) = ceiling {
                match value {
                    Some(v) if *v > c => {
                        return Err(format!("{name}: at most {c} (the limit of {label})"));
                    }
                    Some(_) => {}
                    None => *value = Some(c),
                }
            }
        }
        if let Some(b) = &o.budget {
            match &fields.budget {
                Some(kb) if kb.usd > b.usd => {
                    return Err(format!(
                        "budget.usd: at most {} (the {} budget of {label})",
                        b.usd, b.period
                    ));
                }
                Some(_) => {}
                None => {
                    fields.budget = Some(Budget {
                        usd: b.usd,
                        period: b.period.clone(),
                    })
                }
            }
        }
    }
    Ok(())
}

fn checkbox_list(
    name: &str,
    legend: &str,
    options: &[String],
    checked: &[String],
    hint: &str,
) -> Markup {
    html! {
        fieldset.field.wide.checks {
            legend { (legend) }
            input type="hidden" name={ (name) "_shown" } value="1";
            div.check-grid {
                @for o in options {
                    label.check {
                        input type="checkbox" name=(name) value=(o) checked[checked.contains(o)];
                        span { (o) }
                    }
                }
            }
            small.hint { (hint) }
        }
    }
}

/// The key form's fields (create and edit share it).
fn key_fields(s: &Session, v: &FormValues, create: bool, suggestions: &Suggestions) -> Markup {
    let admin = s.is_admin();
    let providers: Vec<String> = {
        let mut p: Vec<String> = s.app().registry.providers.keys().cloned().collect();
        if !p.iter().any(|x| x == "echo") {
            p.push("echo".into());
        }
        for extra in &v.providers {
            if !p.contains(extra) {
                p.push(extra.clone());
            }
        }
        p.sort();
        p
    };
    let endpoints: Vec<String> = ENDPOINTS.iter().map(|e| e.to_string()).collect();
    let periods: Vec<(&str, &str)> = BUDGET_PERIODS.iter().map(|p| (*p, *p)).collect();
    html! {
        fieldset.group {
            legend { "Who and what for" }
            div.grid-form {
                (h::field("Name", "name", v.get("name"), Some("Something you will recognise: my-vscode-plugin, ci-nightly."), FieldAttrs { required: true, ..Default::default() }))
                @if admin {
                    (h::field("User", "user", v.get("user"), Some("The person who owns the key (their console account name)."), FieldAttrs { list: Some("user-names"), ..Default::default() }))
                    (h::field("Team", "team", v.get("team"), Some("The team whose limits and budget also apply."), FieldAttrs { list: Some("team-names"), ..Default::default() }))
                } @else {
                    div.field {
                        span.label { "Owner" }
                        p.static { (s.user.name) @if let Some(t) = &s.user.team { " · team " (t) } }
                        small.hint { "Your keys are yours; limits of your team apply." }
                    }
                }
                (h::field("Purpose", "purpose", v.get("purpose"), Some("summarization, ci, evaluation…"), FieldAttrs::default()))
                (h::field("Environment", "environment", v.get("environment"), None, FieldAttrs { list: Some("environments"), placeholder: Some("production"), ..Default::default() }))
                datalist id="environments" { option value="production" {} option value="staging" {} option value="development" {} }
                datalist id="user-names" { @for u in &suggestions.users { option value=(u) {} } }
                datalist id="team-names" { @for t in &suggestions.teams { option value=(t) {} } }
            }
        }
        fieldset.group {
            legend { "Scope" }
            div.grid-form {
                (h::field("Models", "models", v.get("models"), Some("Comma-separated; globs like claude-* work. Empty: every model."), FieldAttrs { wide: true, placeholder: Some("gpt-4o-mini, claude-*"), maxlength: Some("4000"), ..Default::default() }))
                (checkbox_list("endpoints", "Endpoints", &endpoints, &v.endpoints, "None ticked: every endpoint."))
                (checkbox_list("providers", "Providers", &providers, &v.providers, "None ticked: every provider entry."))
                (h::field("Allowed IP ranges", "ip_allow", v.get("ip_allow"), Some("Comma-separated addresses or CIDRs. Empty: from anywhere."), FieldAttrs { wide: true, placeholder: Some("10.0.0.0/8, 127.0.0.1/32"), maxlength: Some("4000"), ..Default::default() }))
            }
        }
        fieldset.group {
            legend { "Limits and budget" }
            @if s.is_member() { p.hint { "Your team's limits are the ceiling: an empty field takes the team's value." } }
            div.grid-form {
                (h::field("Requests per minute", "rpm", v.get("rpm"), None, FieldAttrs::number()))
                (h::field("Tokens per minute", "tpm", v.get("tpm"), None, FieldAttrs::number()))
                (h::field("Concurrent requests", "max_concurrency", v.get("max_concurrency"), None, FieldAttrs::number()))
                (h::field("Max tokens per request", "max_tokens_per_request", v.get("max_tokens_per_request"), None, FieldAttrs::number()))
                (h::field("Budget (USD)", "budget_usd", v.get("budget_usd"), Some("Requests get 429 budget_exceeded when it is spent."), FieldAttrs { kind: "number", min: Some("0"), step: Some("0.01"), maxlength: None, ..Default::default() }))
                (h::select("Budget period", "budget_period", if v.get("budget_period").is_empty() { "monthly" } else { v.get("budget_period") }, &periods, Some("UTC periods.")))
            }
        }
        fieldset.group {
            legend { "Lifetime" }
            div.grid-form {
                @let ttl_opts: Vec<(&str, &str)> = if create { TTL_CHOICES.to_vec() } else {
                    let mut o = vec![("", "keep the current expiry"), ("never", "never expire")];
                    o.extend(TTL_CHOICES.iter().skip(1).map(|(a, b)| (*a, *b)));
                    o
                };
                (h::select(if create { "Expires after" } else { "New lifetime from now" }, "ttl", v.get("ttl"), &ttl_opts, None))
                (h::field("…or expires at (UTC)", "expires_at", v.get("expires_at"), Some("A date and time; leave empty to use the choice on the left."), FieldAttrs { kind: "datetime-local", maxlength: None, ..Default::default() }))
            }
        }
        @if admin {
            fieldset.group {
                legend { "Guardrails" }
                div.grid-form {
                    (h::select("Data-loss prevention", "dlp", v.get("dlp"), DLP_CHOICES, Some("Scan prompts for cards, SSNs, keys…")))
                    (h::select("Anomaly detection", "anomaly", v.get("anomaly"), ANOMALY_CHOICES, Some("Compare each request with the key's baseline.")))
                    div.field {
                        input type="hidden" name="log_bodies_shown" value="1";
                        label.check { input type="checkbox" name="log_bodies" value="1" checked[v.log_bodies]; span { "Log request and response bodies" } }
                        small.hint { "Off by default; prompts are not stored otherwise." }
                    }
                }
            }
        }
        fieldset.group {
            legend { "Metadata" }
            div.field.wide {
                label for="f-metadata" { "Metadata" }
                textarea id="f-metadata" name="metadata" rows="3" maxlength="8000" placeholder="cost_center=4711" { (v.get("metadata")) }
                small.hint { "One key=value per line." }
            }
        }
    }
}

#[derive(Default)]
struct Suggestions {
    users: Vec<String>,
    teams: Vec<String>,
}

async fn suggestions(s: &Session) -> Result<Suggestions, PageError> {
    if !s.is_admin() {
        return Ok(Suggestions::default());
    }
    let mut users: Vec<String> = s
        .app()
        .store
        .list_owners(Some("user"))
        .await?
        .into_iter()
        .map(|o| o.name)
        .collect();
    if let Ok(db) = s.console.db() {
        for u in db.users().await? {
            if !users.contains(&u.name) {
                users.push(u.name);
            }
        }
    }
    users.sort();
    let teams = s
        .app()
        .store
        .list_owners(Some("team"))
        .await?
        .into_iter()
        .map(|o| o.name)
        .collect();
    Ok(Suggestions { users, teams })
}

async fn new_page(
    s: &Session,
    v: &FormValues,
    error: Option<&str>,
    status: StatusCode,
) -> PageResult {
    no_viewers(s)?;
    let sugg = suggestions(s).await?;
    let body = html! {
        (h::heading("Create key", Some("The secret is shown once, right after you create the key."), html! { a.btn.btn-ghost href="/console/keys" { "Cancel" } }))
        @if let Some(e) = error { (h::notice("error", e)) }
        form.card.key-form method="post" action="/console/keys" novalidate {
            (csrf(s))
            (key_fields(s, v, true, &sugg))
            div.form-actions {
                button.btn.btn-primary type="submit" { "Create key" }
                a.btn.btn-ghost href="/console/keys" { "Cancel" }
            }
        }
    };
    Ok((status, h::page(s, "keys", "Create key", body)).into_response())
}

pub async fn new_form(s: Session) -> PageResult {
    new_page(&s, &FormValues::default(), None, StatusCode::OK).await
}

pub async fn create(s: Session, form: FormData) -> PageResult {
    s.check_change(&form)?;
    no_viewers(&s)?;
    let values = FormValues::from_form(&form);
    let s = &s;
    let values = &values;
    let fail =
        |msg: String| async move { new_page(s, values, Some(&msg), StatusCode::BAD_REQUEST).await };
    let mut m = match form_json(values, &form, s.is_admin(), true) {
        Ok(m) => m,
        Err(e) => return fail(e).await,
    };
    if !s.is_admin() {
        m.insert("user".into(), json!(s.user.name));
        if let Some(t) = &s.user.team {
            m.insert("team".into(), json!(t));
        }
    }
    let mut fields = match admin::parse_fields(Value::Object(m)) {
        Ok(f) => f,
        Err(e) => return fail(e.0.message).await,
    };
    if !s.is_admin() {
        let levels = ceilings(s).await?;
        if let Err(e) = within_ceilings(&mut fields, &levels) {
            return fail(e).await;
        }
    }
    let (row, secret) = match admin::create_key_from(s.app(), &s.actor(), fields).await {
        Ok(x) => x,
        Err(e) if e.0.status.is_client_error() => return fail(e.0.message).await,
        Err(e) => return Err(e.into()),
    };
    Ok((
        StatusCode::CREATED,
        secret_page(s, &row, &secret, "Key created"),
    )
        .into_response())
}

/// The one page that shows a secret.
fn secret_page(s: &Session, row: &KeyRow, secret: &str, title: &str) -> Markup {
    let host = s
        .headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:8000");
    let scheme = if super::is_https(&s.headers) {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{host}");
    let body = html! {
        (h::heading(title, Some(&format!("{} · {}", row.name, row.id)), html! {}))
        section.card.secret-card {
            div.notice.notice-warn role="alert" {
                strong { "Copy this secret now. " }
                "It is shown only this once: bursar stores only its SHA-256 hash and cannot show it again. If you lose it, rotate the key."
            }
            div.secret-row {
                code.secret id="secret" data-testid="secret" { (secret) }
                button.btn.btn-primary type="button" data-copy="secret" { "Copy" }
            }
            h2 { "Use it" }
            p { "Only the base URL and the key change; the providers' own SDKs work as they are." }
            pre.snippet { code {
                "export OPENAI_BASE_URL=" (base) "/v1\n"
                "export OPENAI_API_KEY=" (secret) "\n"
                "export ANTHROPIC_BASE_URL=" (base) "/anthropic\n"
                "export ANTHROPIC_API_KEY=" (secret)
            } }
            p.actions {
                a.btn href={ "/console/keys/" (row.id) } { "Open the key" }
                a.btn.btn-ghost href="/console/keys" { "Back to all keys" }
            }
        }
    };
    h::page(s, "keys", title, body)
}

// ---- detail -------------------------------------------------------------------

async fn detail_page(
    s: &Session,
    row: &KeyRow,
    notice: Option<(&str, String)>,
    edit_values: Option<&FormValues>,
    status: StatusCode,
) -> PageResult {
    let app = s.app();
    let spec = spec_of(row);
    let now = now_ms();
    let state = status_of(row, now);
    let spent = period_spend(s, row, &spec).await?;
    let recent = app
        .store
        .list_usage(&UsageFilter {
            key_id: Some(row.id.clone()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    let sugg = suggestions(s).await?;
    let values = edit_values
        .cloned()
        .unwrap_or_else(|| FormValues::from_row(row));
    let dash = |o: Option<String>| o.unwrap_or_else(|| "—".into());
    let guard = spec
        .guardrails
        .as_ref()
        .map(|g| g.to_string())
        .unwrap_or_else(|| "inherited".into());
    let body = html! {
        (h::heading(&row.name, Some(&format!("{} · {}…", row.id, row.prefix)), html! {
            a.btn href={ "/console/usage?key_id=" (h::url_encode(&row.id)) } { "Usage" }
            a.btn.btn-ghost href="/console/keys" { "All keys" }
        }))
        @if let Some((kind, text)) = &notice { (h::notice(kind, text)) }
        div.cards {
            section.card.stat {
                h2 { "Status" }
                p.big { (h::badge(state)) }
                @if let Some(until) = row.old_key_hash.as_ref().and(row.old_key_expires_at).filter(|t| *t > now) {
                    p.small.muted { "Previous secret valid until " (h::when(until)) " UTC" }
                }
            }
            section.card.stat {
                h2 { @if spec.budget.is_some() { "Spend this period" } @else { "Spend" } }
                (h::budget_bar(spent, spec.budget.as_ref().map(|b| (b.usd, b.period.as_str()))))
                p.small.muted { (h::usd(row.spend_usd)) " in total" }
            }
            section.card.stat {
                h2 { "Last used" }
                p.big { (h::ago(row.last_used_at, now)) }
                p.small.muted { "created " (h::when(row.created_at)) " UTC" }
            }
        }
        section.card {
            h2 { "Scope and limits" }
            dl.props {
                dt { "Owner" } dd { (dash(row.user.clone())) @if let Some(t) = &row.team { " · team " (t) } }
                dt { "Purpose" } dd { (dash(row.purpose.clone())) }
                dt { "Environment" } dd { (dash(row.environment.clone())) }
                dt { "Models" } dd { @if spec.models.is_empty() { "all" } @else { (spec.models.join(", ")) } }
                dt { "Endpoints" } dd { @if spec.endpoints.is_empty() { "all" } @else { (spec.endpoints.join(", ")) } }
                dt { "Providers" } dd { @if spec.providers.is_empty() { "all" } @else { (spec.providers.join(", ")) } }
                dt { "IP ranges" } dd { @if spec.ip_allow.is_empty() { "anywhere" } @else { (spec.ip_allow.join(", ")) } }
                dt { "Rate limits" } dd {
                    (spec.rpm.map(|n| format!("{n} rpm")).unwrap_or_else(|| "no rpm limit".into())) " · "
                    (spec.tpm.map(|n| format!("{} tpm", h::thousands(n as i64))).unwrap_or_else(|| "no tpm limit".into())) " · "
                    (spec.max_concurrency.map(|n| format!("{n} concurrent")).unwrap_or_else(|| "no concurrency limit".into()))
                }
                dt { "Max tokens" } dd { (spec.max_tokens_per_request.map(|n| h::thousands(n as i64)).unwrap_or_else(|| "no limit".into())) }
                dt { "Budget" } dd { (spec.budget.as_ref().map(|b| format!("{} {}", h::usd(b.usd), b.period)).unwrap_or_else(|| "none".into())) }
                dt { "Expires" } dd { (row.expires_at.map(|e| format!("{} UTC", h::when(e))).unwrap_or_else(|| "never".into())) }
                dt { "Guardrails" } dd { (guard) }
                @if let Some(p) = &row.parent_id { dt { "Parent key" } dd { a href={ "/console/keys/" (p) } { (p) } } }
                @if let Some(m) = &spec.metadata { dt { "Metadata" } dd { code { (Value::Object(m.clone()).to_string()) } } }
            }
        }
        section.card {
            h2 { "Recent requests" }
            @if recent.is_empty() {
                p.muted { "No requests yet. Use the key with any SDK; each request appears here and on the Usage page." }
            } @else {
                div.table-wrap {
                    table {
                        thead { tr { th { "Time (UTC)" } th { "Model" } th { "Status" } th.num { "Tokens" } th.num { "Cost" } th.num { "Latency" } } }
                        tbody {
                            @for r in &recent {
                                tr {
                                    td data-label="Time" { (h::when(r.created_at)) }
                                    td data-label="Model" { (r.model) }
                                    td data-label="Status" { (r.status) }
                                    td.num data-label="Tokens" { (h::thousands(r.prompt_tokens)) " + " (h::thousands(r.completion_tokens)) }
                                    td.num data-label="Cost" { (h::usd(r.cost_usd)) }
                                    td.num data-label="Latency" { (r.latency_ms) " ms" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if state != "revoked" {
            details.card.collapsible open[edit_values.is_some()] {
                summary { h2 { "Edit scope and limits" } }
                form.key-form method="post" action={ "/console/keys/" (row.id) "/edit" } novalidate {
                    (csrf(s))
                    (key_fields(s, &values, false, &sugg))
                    div.form-actions { button.btn.btn-primary type="submit" { "Save changes" } }
                }
            }
        }
        @if state == "active" {
            section.card {
                h2 { "Rotate" }
                p { "Make a new secret. During the grace period the old one keeps working, so clients can switch without downtime." }
                form.inline-form method="post" action={ "/console/keys/" (row.id) "/rotate" } {
                    (csrf(s))
                    label for="grace" { "Old secret valid for" }
                    select id="grace" name="grace_seconds" {
                        @for (v, l) in GRACE_CHOICES { option value=(v) { (l) } }
                    }
                    button.btn type="submit" { "Rotate secret" }
                }
            }
        }
        @if state != "revoked" {
            section.card.danger-zone {
                h2 { "Revoke" }
                p { "Requests with this key (and every child key minted from it) get 401 at once. This cannot be undone." }
                form method="post" action={ "/console/keys/" (row.id) "/revoke" } data-confirm={ "Revoke " (row.name) "? Requests with it fail at once." } {
                    (csrf(s))
                    button.btn.btn-danger type="submit" { "Revoke key" }
                }
            }
        }
    };
    Ok((status, h::page(s, "keys", &row.name, body)).into_response())
}

pub async fn show(
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> PageResult {
    let row = visible_key(&s, &id).await?;
    let notice = match q.get("done").map(String::as_str) {
        Some("saved") => Some(("ok", "Changes saved.".to_string())),
        _ => None,
    };
    detail_page(&s, &row, notice, None, StatusCode::OK).await
}

pub async fn edit(s: Session, Path(id): Path<String>, form: FormData) -> PageResult {
    s.check_change(&form)?;
    let row = visible_key(&s, &id).await?;
    let values = FormValues::from_form(&form);
    let fail = |msg: String| {
        let values = values.clone();
        let row = row.clone();
        let s = &s;
        async move {
            detail_page(
                s,
                &row,
                Some(("error", msg)),
                Some(&values),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    };
    let patch = match form_json(&values, &form, s.is_admin(), false) {
        Ok(p) => p,
        Err(e) => return fail(e).await,
    };
    if !s.is_admin() {
        // The result must stay within the member's ceilings.
        let mut merged = match crate::keys::spec::merge_patch(&admin::fields_of(&row), &patch) {
            Ok(f) => f,
            Err(e) => return fail(e).await,
        };
        let levels = ceilings(&s).await?;
        if let Err(e) = within_ceilings(&mut merged, &levels) {
            return fail(e).await;
        }
    }
    match admin::update_key_from(s.app(), &s.actor(), &row.id, &patch).await {
        Ok(_) => Ok(see_other(&format!("/console/keys/{}?done=saved", row.id))),
        Err(e) if e.0.status.is_client_error() => fail(e.0.message).await,
        Err(e) => Err(e.into()),
    }
}

pub async fn revoke(s: Session, Path(id): Path<String>, form: FormData) -> PageResult {
    s.check_change(&form)?;
    let row = visible_key(&s, &id).await?;
    admin::revoke_key_by_id(s.app(), &s.actor(), &row.id).await?;
    Ok(see_other("/console/keys?done=revoked"))
}

pub async fn rotate(s: Session, Path(id): Path<String>, form: FormData) -> PageResult {
    s.check_change(&form)?;
    let row = visible_key(&s, &id).await?;
    let grace: i64 = match form.get("grace_seconds").unwrap_or("0").parse() {
        Ok(g) if (0..=admin::MAX_GRACE_SECONDS).contains(&g) => g,
        _ => {
            return detail_page(
                &s,
                &row,
                Some((
                    "error",
                    "grace_seconds: must be a whole number from 0 to 2592000 (30 days)".into(),
                )),
                None,
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    let (row, secret) = admin::rotate_key_by_id(s.app(), &s.actor(), &row.id, grace).await?;
    let title = if grace > 0 {
        format!(
            "New secret (old one valid until {} UTC)",
            h::when(now_ms() + grace * 1000)
        )
    } else {
        "New secret".to_string()
    };
    Ok(secret_page(&s, &row, &secret, &title).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(v: Value) -> OwnerFields {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn member_keys_stay_within_the_team() {
        let levels = vec![(
            "team research".to_string(),
            owner(
                json!({"name": "research", "rpm": 100, "budget": {"usd": 50.0, "period": "monthly"}}),
            ),
        )];
        let mut f = KeyFields {
            name: Some("k".into()),
            rpm: Some(10),
            ..Default::default()
        };
        within_ceilings(&mut f, &levels).unwrap();
        assert_eq!(f.rpm, Some(10));
        assert_eq!(f.budget.as_ref().map(|b| b.usd), Some(50.0));
        let mut wide = KeyFields {
            name: Some("k".into()),
            rpm: Some(1000),
            ..Default::default()
        };
        assert!(
            within_ceilings(&mut wide, &levels)
                .unwrap_err()
                .starts_with("rpm: at most 100")
        );
        let mut rich = KeyFields {
            name: Some("k".into()),
            budget: Some(Budget {
                usd: 80.0,
                period: "monthly".into(),
            }),
            ..Default::default()
        };
        assert!(
            within_ceilings(&mut rich, &levels)
                .unwrap_err()
                .starts_with("budget.usd")
        );
        let mut unset = KeyFields {
            name: Some("k".into()),
            ..Default::default()
        };
        within_ceilings(&mut unset, &levels).unwrap();
        assert_eq!(unset.rpm, Some(100));
    }

    #[test]
    fn form_fields_become_key_json() {
        let raw = FormData(vec![
            ("name".into(), "ci".into()),
            ("models".into(), "gpt-4o-mini, claude-*".into()),
            ("endpoints_shown".into(), "1".into()),
            ("endpoints".into(), "chat".into()),
            ("rpm".into(), "60".into()),
            ("tpm".into(), "".into()),
            ("budget_usd".into(), "25".into()),
            ("budget_period".into(), "daily".into()),
            ("metadata".into(), "cost_center=4711\n\n team = a ".into()),
            ("ttl".into(), "86400".into()),
            ("expires_at".into(), "".into()),
        ]);
        let v = FormValues::from_form(&raw);
        let m = form_json(&v, &raw, true, true).unwrap();
        let f: KeyFields = serde_json::from_value(Value::Object(m)).unwrap();
        assert_eq!(
            f.models,
            Some(vec!["gpt-4o-mini".into(), "claude-*".into()])
        );
        assert_eq!(f.endpoints, Some(vec!["chat".into()]));
        assert_eq!(f.rpm, Some(60));
        assert_eq!(f.tpm, None);
        assert_eq!(f.ttl_seconds, Some(86400));
        assert_eq!(
            f.budget,
            Some(Budget {
                usd: 25.0,
                period: "daily".into()
            })
        );
        assert_eq!(f.metadata.unwrap().get("team"), Some(&json!("a")));
        // Edits clear blank fields.
        let edit = form_json(&v, &raw, true, false).unwrap();
        assert_eq!(edit.get("tpm"), Some(&Value::Null));
        // Bad input names the field.
        let bad = FormData(vec![("rpm".into(), "lots".into())]);
        assert!(
            form_json(&FormValues::from_form(&bad), &bad, true, true)
                .unwrap_err()
                .starts_with("rpm")
        );
        let bad = FormData(vec![("metadata".into(), "novalue".into())]);
        assert!(
            form_json(&FormValues::from_form(&bad), &bad, true, true)
                .unwrap_err()
                .starts_with("metadata")
        );
        assert_eq!(expires_at_value("2027-01-01T10:30"), "2027-01-01T10:30:00Z");
    }

    #[test]
    fn members_cannot_set_owner_or_guardrails() {
        let raw = FormData(vec![
            ("name".into(), "x".into()),
            ("user".into(), "mallory".into()),
            ("team".into(), "other".into()),
            ("dlp".into(), "off".into()),
            ("log_bodies_shown".into(), "1".into()),
            ("log_bodies".into(), "1".into()),
        ]);
        let m = form_json(&FormValues::from_form(&raw), &raw, false, true).unwrap();
        assert!(!m.contains_key("user") && !m.contains_key("team"));
        assert!(!m.contains_key("guardrails") && !m.contains_key("log_bodies"));
    }
}
