//! The Teams page: each team's budget (spend in the period), limits,
//! guardrails and members (users and console accounts). Admins create and
//! edit teams and add members; a member sees their own team.

use std::collections::HashMap;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde_json::{Map, Value, json};

use super::html::{self as h, FieldAttrs, csrf};
use super::{FormData, PageError, PageResult, Session, see_other};
use crate::admin;
use crate::keys::spec::{BUDGET_PERIODS, OwnerFields};
use crate::store::{KeyFilter, OwnerRow};
use crate::util::now_ms;

struct TeamView {
    row: OwnerRow,
    fields: OwnerFields,
    spend: f64,
    users: Vec<OwnerRow>,
    accounts: Vec<(String, String)>,
    active_keys: usize,
}

async fn team_view(s: &Session, row: OwnerRow, users: &[OwnerRow]) -> Result<TeamView, PageError> {
    let app = s.app();
    let v = admin::owner_view_with_spend(app, &row).await?;
    let spend = v.get("spend_usd").and_then(Value::as_f64).unwrap_or(0.0);
    let fields: OwnerFields = serde_json::from_str(&row.spec).unwrap_or_default();
    let accounts = s
        .console
        .db()?
        .users()
        .await?
        .into_iter()
        .filter(|u| u.team.as_deref() == Some(row.name.as_str()))
        .map(|u| (u.name, u.role))
        .collect();
    let active_keys = app
        .store
        .list_keys(
            &KeyFilter {
                team: Some(row.name.clone()),
                status: Some("active".into()),
                limit: 10_000,
                ..Default::default()
            },
            now_ms(),
        )
        .await?
        .len();
    let members = users
        .iter()
        .filter(|u| u.team.as_deref() == Some(row.name.as_str()))
        .cloned()
        .collect();
    Ok(TeamView {
        row,
        fields,
        spend,
        users: members,
        accounts,
        active_keys,
    })
}

fn limits_line(f: &OwnerFields) -> String {
    let mut parts = Vec::new();
    if let Some(r) = f.rpm {
        parts.push(format!("{r} rpm"));
    }
    if let Some(t) = f.tpm {
        parts.push(format!("{} tpm", h::thousands(t as i64)));
    }
    if let Some(c) = f.max_concurrency {
        parts.push(format!("{c} concurrent"));
    }
    if let Some(m) = f.max_tokens_per_request {
        parts.push(format!("≤{} tokens/request", h::thousands(m as i64)));
    }
    if parts.is_empty() {
        "no rate limits".into()
    } else {
        parts.join(" · ")
    }
}

fn guard_line(f: &OwnerFields) -> String {
    match &f.guardrails {
        Some(Value::Object(m)) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" · "),
        _ => "no guardrails".into(),
    }
}

fn team_card(t: &TeamView) -> Markup {
    let f = &t.fields;
    html! {
        section.card.team {
            header.team-head {
                h2 { a href={ "/console/teams/" (t.row.name) } { (t.row.name) } }
                span.muted.small { (t.active_keys) " active key" @if t.active_keys != 1 { "s" } }
            }
            (h::budget_bar(t.spend, f.budget.as_ref().map(|b| (b.usd, b.period.as_str()))))
            p.small { (limits_line(f)) }
            p.small.muted { (guard_line(f)) }
            @let names: Vec<&str> = t.users.iter().map(|u| u.name.as_str()).chain(t.accounts.iter().map(|(n, _)| n.as_str())).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            p.small {
                strong { "Members: " }
                @if names.is_empty() { span.muted { "none yet" } } @else { (names.join(", ")) }
            }
        }
    }
}

fn team_form(
    s: &Session,
    action: &str,
    name: Option<&str>,
    v: &HashMap<String, String>,
    submit: &str,
) -> Markup {
    let get = |k: &str| v.get(k).map(String::as_str).unwrap_or("");
    let periods: Vec<(&str, &str)> = BUDGET_PERIODS.iter().map(|p| (*p, *p)).collect();
    html! {
        form.grid-form method="post" action=(action) novalidate {
            (csrf(s))
            @if name.is_none() {
                (h::field("Name", "name", get("name"), Some("Letters, digits and - _ . @"), FieldAttrs { required: true, maxlength: Some("64"), ..Default::default() }))
            }
            (h::field("Budget (USD)", "budget_usd", get("budget_usd"), Some("Shared by every key of the team."), FieldAttrs { kind: "number", min: Some("0"), step: Some("0.01"), maxlength: None, ..Default::default() }))
            (h::select("Budget period", "budget_period", if get("budget_period").is_empty() { "monthly" } else { get("budget_period") }, &periods, None))
            (h::field("Requests per minute", "rpm", get("rpm"), None, FieldAttrs::number()))
            (h::field("Tokens per minute", "tpm", get("tpm"), None, FieldAttrs::number()))
            (h::field("Concurrent requests", "max_concurrency", get("max_concurrency"), None, FieldAttrs::number()))
            (h::field("Max tokens per request", "max_tokens_per_request", get("max_tokens_per_request"), None, FieldAttrs::number()))
            (h::select("Data-loss prevention", "dlp", get("dlp"), &[("", "none"), ("off", "off"), ("log", "log"), ("redact", "redact"), ("block", "block")], None))
            (h::select("Anomaly detection", "anomaly", get("anomaly"), &[("", "none"), ("off", "off"), ("log", "log"), ("flag", "flag"), ("block", "block")], None))
            div.form-actions { button.btn.btn-primary type="submit" { (submit) } }
        }
    }
}

/// The owner fields of the team form (blank: none), as a JSON object.
fn form_owner_json(form: &FormData, with_name: bool) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    if with_name {
        m.insert("name".into(), json!(form.get("name").unwrap_or("")));
    }
    for k in ["rpm", "tpm", "max_concurrency", "max_tokens_per_request"] {
        m.insert(
            k.into(),
            match form.get(k) {
                None => Value::Null,
                Some(v) => json!(
                    v.parse::<u64>()
                        .map_err(|_| format!("{k}: '{v}' is not a whole number"))?
                ),
            },
        );
    }
    m.insert(
        "budget".into(),
        match form.get("budget_usd") {
            None => Value::Null,
            Some(v) => {
                let usd: f64 = v
                    .parse()
                    .map_err(|_| format!("budget.usd: '{v}' is not a number of dollars"))?;
                json!({"usd": usd, "period": form.get("budget_period").unwrap_or("monthly")})
            }
        },
    );
    let mut g = Map::new();
    for k in ["dlp", "anomaly"] {
        if let Some(v) = form.get(k) {
            g.insert(k.into(), json!(v));
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
    Ok(m)
}

fn values_of(f: &OwnerFields) -> HashMap<String, String> {
    let mut v = HashMap::new();
    for (k, n) in [
        ("rpm", f.rpm),
        ("tpm", f.tpm),
        ("max_concurrency", f.max_concurrency),
        ("max_tokens_per_request", f.max_tokens_per_request),
    ] {
        if let Some(n) = n {
            v.insert(k.to_string(), n.to_string());
        }
    }
    if let Some(b) = &f.budget {
        v.insert("budget_usd".into(), b.usd.to_string());
        v.insert("budget_period".into(), b.period.clone());
    }
    if let Some(Value::Object(g)) = &f.guardrails {
        for (k, val) in g {
            if let Some(s) = val.as_str() {
                v.insert(k.clone(), s.to_string());
            }
        }
    }
    v
}

async fn list_page(
    s: &Session,
    notice: Option<(&str, String)>,
    form: Option<&FormData>,
    status: StatusCode,
) -> PageResult {
    if s.user.role == "viewer" {
        return Err(PageError::forbidden("Viewers can see usage only."));
    }
    let app = s.app();
    let users = app.store.list_owners(Some("user")).await?;
    let mut teams = app.store.list_owners(Some("team")).await?;
    if !s.is_admin() {
        teams.retain(|t| Some(t.name.as_str()) == s.user.team.as_deref());
    }
    let mut views = Vec::with_capacity(teams.len());
    for t in teams {
        views.push(team_view(s, t, &users).await?);
    }
    let values: HashMap<String, String> = form
        .map(|f| {
            f.0.iter()
                .map(|(k, v)| (k.clone(), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let body = html! {
        (h::heading("Teams", Some("Teams share budgets and limits: the tightest of key, user and team applies."), html! {}))
        @if let Some((kind, text)) = &notice { (h::notice(kind, text)) }
        @if views.is_empty() {
            @if s.is_admin() {
                (h::empty("No teams yet", "Create a team to give a group of people a shared budget and limits; then set the team on their keys and accounts.", None))
            } @else {
                (h::empty("You are not in a team", "Your keys are limited only by their own settings. Ask an admin to add you to a team.", None))
            }
        } @else {
            div.cards.teams { @for t in &views { (team_card(t)) } }
        }
        @if s.is_admin() {
            details.card.collapsible open[form.is_some() || views.is_empty()] {
                summary { h2 { "New team" } }
                (team_form(s, "/console/teams", None, &values, "Create team"))
            }
        }
    };
    Ok((status, h::page(s, "teams", "Teams", body)).into_response())
}

pub async fn list(s: Session) -> PageResult {
    list_page(&s, None, None, StatusCode::OK).await
}

pub async fn create(s: Session, form: FormData) -> PageResult {
    s.check_change(&form)?;
    s.require_admin()?;
    let body = match form_owner_json(&form, true) {
        Ok(mut m) => {
            m.retain(|_, v| !v.is_null());
            Value::Object(m)
        }
        Err(e) => {
            return list_page(&s, Some(("error", e)), Some(&form), StatusCode::BAD_REQUEST).await;
        }
    };
    match admin::create_owner_row(s.app(), &s.actor(), "team", body).await {
        Ok(row) => Ok(see_other(&format!(
            "/console/teams/{}?done=created",
            h::url_encode(&row.name)
        ))),
        Err(e) if e.0.status.is_client_error() => {
            list_page(&s, Some(("error", e.0.message)), Some(&form), e.0.status).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn team_page(
    s: &Session,
    name: &str,
    notice: Option<(&str, String)>,
    form: Option<&FormData>,
    status: StatusCode,
) -> PageResult {
    if s.user.role == "viewer" || (!s.is_admin() && s.user.team.as_deref() != Some(name)) {
        return Err(PageError::not_found(format!("No team named '{name}'.")));
    }
    let app = s.app();
    let row = app
        .store
        .get_owner("team", name)
        .await?
        .ok_or_else(|| PageError::not_found(format!("No team named '{name}'.")))?;
    let users = app.store.list_owners(Some("user")).await?;
    let t = team_view(s, row, &users).await?;
    let member_names: Vec<String> = t
        .users
        .iter()
        .map(|u| u.name.clone())
        .chain(t.accounts.iter().map(|(n, _)| n.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let values = match form {
        Some(f) => {
            f.0.iter()
                .map(|(k, v)| (k.clone(), v.trim().to_string()))
                .collect()
        }
        None => values_of(&t.fields),
    };
    let body = html! {
        (h::heading(&format!("Team {name}"), Some("Budget, limits and members."), html! {
            a.btn href={ "/console/usage?team=" (h::url_encode(name)) } { "Usage" }
            a.btn href={ "/console/keys?team=" (h::url_encode(name)) } { "Keys" }
            a.btn.btn-ghost href="/console/teams" { "All teams" }
        }))
        @if let Some((kind, text)) = &notice { (h::notice(kind, text)) }
        (team_card(&t))
        section.card {
            h2 { "Members" }
            @if t.users.is_empty() && t.accounts.is_empty() {
                p.muted { "No members yet." @if s.is_admin() { " Add one below, and set the team on their keys." } }
            } @else {
                div.table-wrap {
                    table {
                        thead { tr { th { "Name" } th { "Console role" } th { "Own limits" } th { "Own budget" } } }
                        tbody {
                            @for n in &member_names {
                                @let spec: Option<OwnerFields> = t.users.iter().find(|u| &u.name == n).map(|u| serde_json::from_str(&u.spec).unwrap_or_default());
                                tr {
                                    td data-label="Name" { strong { (n) } }
                                    td data-label="Console role" { (t.accounts.iter().find(|(a, _)| a == n).map(|(_, r)| r.as_str()).unwrap_or("no account")) }
                                    td data-label="Own limits" { (spec.as_ref().map(limits_line).unwrap_or_else(|| "—".into())) }
                                    td data-label="Own budget" { (spec.as_ref().and_then(|f| f.budget.as_ref()).map(|b| format!("{} {}", h::usd(b.usd), b.period)).unwrap_or_else(|| "—".into())) }
                                }
                            }
                        }
                    }
                }
            }
            @if s.is_admin() {
                form.inline-form method="post" action={ "/console/teams/" (name) "/members" } {
                    (csrf(s))
                    label for="member-name" { "Add a user" }
                    input id="member-name" type="text" name="user" required maxlength="64" placeholder="user name";
                    button.btn type="submit" { "Add to team" }
                }
            }
        }
        @if s.is_admin() {
            section.card {
                h2 { "Budget and limits" }
                (team_form(s, &format!("/console/teams/{name}"), Some(name), &values, "Save changes"))
            }
        }
    };
    Ok((status, h::page(s, "teams", &format!("Team {name}"), body)).into_response())
}

pub async fn show(
    s: Session,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> PageResult {
    let notice = match q.get("done").map(String::as_str) {
        Some("created") => Some(("ok", "Team created.".to_string())),
        Some("saved") => Some(("ok", "Changes saved.".to_string())),
        Some("member") => Some(("ok", "Member added.".to_string())),
        _ => None,
    };
    team_page(&s, &name, notice, None, StatusCode::OK).await
}

pub async fn update(s: Session, Path(name): Path<String>, form: FormData) -> PageResult {
    s.check_change(&form)?;
    s.require_admin()?;
    let body = match form_owner_json(&form, false) {
        Ok(m) => Value::Object(m),
        Err(e) => {
            return team_page(
                &s,
                &name,
                Some(("error", e)),
                Some(&form),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    match admin::update_owner_row(s.app(), &s.actor(), "team", &name, body).await {
        Ok(_) => Ok(see_other(&format!(
            "/console/teams/{}?done=saved",
            h::url_encode(&name)
        ))),
        Err(e) if e.0.status.is_client_error() => {
            team_page(
                &s,
                &name,
                Some(("error", e.0.message)),
                Some(&form),
                e.0.status,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn add_member(s: Session, Path(name): Path<String>, form: FormData) -> PageResult {
    s.check_change(&form)?;
    s.require_admin()?;
    let user = form.get("user").unwrap_or("").to_string();
    let app = s.app();
    if app.store.get_owner("team", &name).await?.is_none() {
        return Err(PageError::not_found(format!("No team named '{name}'.")));
    }
    let result = if app.store.get_owner("user", &user).await?.is_some() {
        admin::update_owner_row(app, &s.actor(), "user", &user, json!({"team": name})).await
    } else {
        admin::create_owner_row(app, &s.actor(), "user", json!({"name": user, "team": name})).await
    };
    match result {
        Ok(_) => Ok(see_other(&format!(
            "/console/teams/{}?done=member",
            h::url_encode(&name)
        ))),
        Err(e) if e.0.status.is_client_error() => {
            team_page(&s, &name, Some(("error", e.0.message)), None, e.0.status).await
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_form_to_owner_fields() {
        let f = FormData(vec![
            ("name".into(), "research".into()),
            ("rpm".into(), "120".into()),
            ("tpm".into(), "".into()),
            ("budget_usd".into(), "500".into()),
            ("budget_period".into(), "monthly".into()),
            ("dlp".into(), "redact".into()),
        ]);
        let mut m = form_owner_json(&f, true).unwrap();
        assert_eq!(m.get("tpm"), Some(&Value::Null));
        m.retain(|_, v| !v.is_null());
        let o: OwnerFields = serde_json::from_value(Value::Object(m)).unwrap();
        o.validate().unwrap();
        assert_eq!(o.rpm, Some(120));
        assert_eq!(o.budget.unwrap().usd, 500.0);
        assert_eq!(o.guardrails, Some(json!({"dlp": "redact"})));
        let bad = FormData(vec![("rpm".into(), "x".into())]);
        assert!(form_owner_json(&bad, false).unwrap_err().starts_with("rpm"));
    }
}
