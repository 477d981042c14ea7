//! Console accounts: sign-in and sign-out, invite links, password change,
//! the admins' Accounts page, and `/admin/v1/console-users` for the CLI.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::auth::{self, FORM_COOKIE, SESSION_COOKIE};
use super::html::{self as h, FieldAttrs, csrf};
use super::store::{ConsoleDb, ConsoleUser};
use super::{ClientIp, Console, FormData, PageError, PageResult, Session, is_https};
use crate::admin::{Admin, AdminError, Body};
use crate::gateway::App;
use crate::gateway::error::ApiError;
use crate::util::{new_id, now_ms, rfc3339};

pub const ROLES: &[&str] = &["admin", "member", "viewer"];

fn valid_name(field: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!("{field}: 1 to 64 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(format!("{field}: only letters, digits and - _ . @"));
    }
    Ok(())
}

async fn hash_blocking(password: String) -> Result<String, PageError> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| PageError::from(anyhow::anyhow!("password hashing task: {e}")))?
        .map_err(PageError::from)
}

async fn verify_blocking(phc: Option<String>, password: String) -> bool {
    tokio::task::spawn_blocking(move || {
        let phc = phc.unwrap_or_else(|| auth::dummy_hash().to_string());
        auth::verify_password(&phc, &password)
    })
    .await
    .unwrap_or(false)
}

// ---- shared account logic (pages and admin API) ------------------------------

/// Create an account. With a password it can sign in at once; without, the
/// answer carries an invite token (shown once).
pub async fn create_account(
    app: &App,
    db: &ConsoleDb,
    actor: &Admin,
    name: &str,
    role: &str,
    team: Option<&str>,
    password: Option<&str>,
) -> Result<(ConsoleUser, Option<String>), PageError> {
    valid_name("name", name).map_err(PageError::bad)?;
    if !ROLES.contains(&role) {
        return Err(PageError::bad("role: must be admin, member or viewer"));
    }
    if let Some(t) = team {
        valid_name("team", t).map_err(PageError::bad)?;
    }
    if db.user_by_name(name).await?.is_some() {
        return Err(PageError::new(
            StatusCode::CONFLICT,
            format!("An account named '{name}' already exists."),
        ));
    }
    let password_hash = match password {
        Some(p) => {
            if let Some(problem) = auth::password_problem(p, name) {
                return Err(PageError::bad(problem));
            }
            Some(hash_blocking(p.to_string()).await?)
        }
        None => None,
    };
    let now = now_ms();
    let user = ConsoleUser {
        id: new_id("cu"),
        name: name.to_string(),
        role: role.to_string(),
        team: team.map(str::to_string),
        password_hash,
        status: "active".into(),
        created_at: now,
        updated_at: now,
        last_login_at: None,
    };
    db.insert_user(&user).await?;
    app.audit
        .record(
            &actor.actor,
            "console_user.create",
            Some(&user.name),
            Some(actor.ip.clone()),
            json!({"role": user.role, "team": user.team, "password_set": user.password_hash.is_some()}),
        )
        .await?;
    let invite = if user.password_hash.is_none() {
        Some(new_invite(app, db, actor, &user).await?)
    } else {
        None
    };
    Ok((user, invite))
}

/// A new invite link token for an account (replacing any open one).
pub async fn new_invite(
    app: &App,
    db: &ConsoleDb,
    actor: &Admin,
    user: &ConsoleUser,
) -> Result<String, PageError> {
    let token = auth::new_token();
    let now = now_ms();
    db.insert_invite(
        &auth::token_hash(&token),
        &user.id,
        now,
        now + auth::INVITE_TTL_MS,
    )
    .await?;
    app.audit
        .record(
            &actor.actor,
            "console_user.invite",
            Some(&user.name),
            Some(actor.ip.clone()),
            json!({"expires_at": rfc3339(now + auth::INVITE_TTL_MS)}),
        )
        .await?;
    Ok(token)
}

/// What to change of an account (`None`: keep).
#[derive(Default)]
pub struct AccountChange<'a> {
    pub role: Option<&'a str>,
    /// `Some(None)` removes the team.
    pub team: Option<Option<&'a str>>,
    pub status: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// Change an account's role, team, status or password; signs it out
/// everywhere when any of them changes.
pub async fn update_account(
    app: &App,
    db: &ConsoleDb,
    actor: &Admin,
    name: &str,
    change: AccountChange<'_>,
) -> Result<ConsoleUser, PageError> {
    let AccountChange {
        role,
        team,
        status,
        password,
    } = change;
    let mut user = db
        .user_by_name(name)
        .await?
        .ok_or_else(|| PageError::not_found(format!("No account named '{name}'.")))?;
    let mut changed = Vec::new();
    if let Some(r) = role {
        if !ROLES.contains(&r) {
            return Err(PageError::bad("role: must be admin, member or viewer"));
        }
        if r != user.role {
            user.role = r.to_string();
            changed.push("role");
        }
    }
    if let Some(t) = team {
        if let Some(t) = t {
            valid_name("team", t).map_err(PageError::bad)?;
        }
        if t != user.team.as_deref() {
            user.team = t.map(str::to_string);
            changed.push("team");
        }
    }
    if let Some(s) = status {
        if !["active", "disabled"].contains(&s) {
            return Err(PageError::bad("status: must be active or disabled"));
        }
        if s != user.status {
            user.status = s.to_string();
            changed.push("status");
        }
    }
    if let Some(p) = password {
        if let Some(problem) = auth::password_problem(p, &user.name) {
            return Err(PageError::bad(problem));
        }
        user.password_hash = Some(hash_blocking(p.to_string()).await?);
        changed.push("password");
    }
    if changed.is_empty() {
        return Ok(user);
    }
    user.updated_at = now_ms();
    db.update_user(&user).await?;
    db.delete_sessions_of(&user.id).await?;
    app.audit
        .record(
            &actor.actor,
            "console_user.update",
            Some(&user.name),
            Some(actor.ip.clone()),
            json!({"fields": changed, "role": user.role, "team": user.team, "status": user.status}),
        )
        .await?;
    Ok(user)
}

/// Sign an account in: a new session row and its cookie.
async fn start_session(
    console: &Console,
    user: &ConsoleUser,
    ip: &str,
    secure: bool,
) -> Result<String, PageError> {
    let db = console.db()?;
    let token = auth::new_token();
    let now = now_ms();
    db.insert_session(
        &auth::token_hash(&token),
        &user.id,
        &auth::new_token(),
        now,
        now + auth::SESSION_TTL_MS,
        ip,
    )
    .await?;
    db.set_last_login(&user.id, now).await?;
    Ok(auth::set_cookie(
        SESSION_COOKIE,
        &token,
        auth::SESSION_TTL_MS / 1000,
        secure,
    ))
}

/// Where to go after signing in: only a console page of this origin.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/console/")
                && !n.starts_with("/console/login")
                && !n.contains("//")
                && !n.contains('\\')
                && n.len() < 2000 =>
        {
            n.to_string()
        }
        _ => "/console".to_string(),
    }
}

// ---- sign-in -----------------------------------------------------------------

fn login_page(form_token: &str, name: &str, next: &str, error: Option<&str>) -> Markup {
    h::bare_page(
        "Sign in",
        html! {
            section.card.narrow {
                h1 { "Sign in" }
                p.muted { "The bursar console: API keys, usage and budgets." }
                @if let Some(e) = error { (h::notice("error", e)) }
                form.stack method="post" action="/console/login" {
                    input type="hidden" name="_form" value=(form_token);
                    input type="hidden" name="next" value=(next);
                    (h::field("Name", "name", name, None, FieldAttrs { required: true, autocomplete: Some("username"), maxlength: Some("64"), ..Default::default() }))
                    (h::field("Password", "password", "", None, FieldAttrs { kind: "password", required: true, autocomplete: Some("current-password"), maxlength: Some("256"), ..Default::default() }))
                    button.btn.btn-primary.btn-block type="submit" { "Sign in" }
                }
                p.small.muted { "No account yet? An admin creates one and sends you an invite link." }
            }
        },
    )
}

/// A page with a fresh form cookie (login CSRF protection).
fn with_form_cookie(
    status: StatusCode,
    headers: &HeaderMap,
    token: &str,
    page: Markup,
) -> Response {
    (
        status,
        [(
            header::SET_COOKIE,
            auth::set_cookie(FORM_COOKIE, token, 3600, is_https(headers)),
        )],
        page,
    )
        .into_response()
}

/// The form token of this browser: the one it has, else a new one (so two
/// open sign-in tabs both work).
fn form_token(headers: &HeaderMap) -> String {
    auth::cookie(headers, FORM_COOKIE)
        .filter(|t| auth::token_shaped(t))
        .unwrap_or_else(auth::new_token)
}

fn form_cookie_ok(headers: &HeaderMap, form: &FormData) -> bool {
    let cookie = auth::cookie(headers, FORM_COOKIE).unwrap_or_default();
    auth::same_token(&cookie, form.get("_form").unwrap_or(""))
}

pub async fn login_form(
    session: Option<Session>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(q.get("next").map(String::as_str));
    if session.is_some() {
        return Redirect::to(&next).into_response();
    }
    let token = form_token(&headers);
    with_form_cookie(
        StatusCode::OK,
        &headers,
        &token,
        login_page(&token, "", &next, None),
    )
}

pub async fn login(
    State(console): State<Arc<Console>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: FormData,
) -> Response {
    let next = safe_next(form.get("next"));
    let token = form_token(&headers);
    let again = |status: StatusCode, name: &str, msg: &str| {
        with_form_cookie(
            status,
            &headers,
            &token,
            login_page(&token, name, &next, Some(msg)),
        )
    };
    if !form_cookie_ok(&headers, &form) {
        return again(
            StatusCode::FORBIDDEN,
            "",
            "The sign-in form expired or came from another site. Try again.",
        );
    }
    let name = form.get("name").unwrap_or("").to_string();
    let password = form
        .0
        .iter()
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if name.is_empty()
        || name.len() > 64
        || password.is_empty()
        || password.len() > auth::MAX_PASSWORD_BYTES
    {
        return again(
            StatusCode::BAD_REQUEST,
            &name,
            "Enter your name and password.",
        );
    }
    let app = &console.app;
    let keys = auth::limiter_keys(&ip, &name);
    let now = now_ms();
    if let Some(wait) = console.limiter.retry_after(&keys, now) {
        app.audit.event(
            &format!("console:{name}"),
            "console.login_blocked",
            Some(&name),
            Some(ip.clone()),
            json!({"retry_after_seconds": wait}),
        );
        let mins = (wait + 59) / 60;
        let mut resp = again(
            StatusCode::TOO_MANY_REQUESTS,
            &name,
            &format!(
                "Too many failed sign-ins for this account or from this address. Try again in {mins} minute{}.",
                if mins == 1 { "" } else { "s" }
            ),
        );
        if let Ok(v) = wait.to_string().parse() {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let db = match console.db() {
        Ok(db) => db,
        Err(e) => return e.into_response(),
    };
    let user = match db.user_by_name(&name).await {
        Ok(u) => u,
        Err(e) => return PageError::from(e).into_response(),
    };
    let ok = verify_blocking(
        user.as_ref().and_then(|u| u.password_hash.clone()),
        password,
    )
    .await;
    let user = match user {
        Some(u) if ok && u.status == "active" => u,
        other => {
            console.limiter.failed(&keys, now);
            let reason = match &other {
                None => "unknown account",
                Some(u) if u.status != "active" => "account disabled",
                Some(u) if u.password_hash.is_none() => "invite not yet accepted",
                _ => "wrong password",
            };
            app.audit.event(
                &format!("console:{name}"),
                "console.login_failed",
                Some(&name),
                Some(ip),
                json!({"reason": reason}),
            );
            return again(StatusCode::UNAUTHORIZED, &name, "Wrong name or password.");
        }
    };
    console.limiter.succeeded(&keys[1]);
    let cookie = match start_session(&console, &user, &ip, is_https(&headers)).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    app.audit.event(
        &format!("console:{}", user.name),
        "console.login",
        Some(&user.name),
        Some(ip),
        json!({"role": user.role}),
    );
    let mut resp = Redirect::to(&next).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = cookie.parse() {
        h.append(header::SET_COOKIE, v);
    }
    if let Ok(v) = auth::set_cookie(FORM_COOKIE, "", 0, is_https(&headers)).parse() {
        h.append(header::SET_COOKIE, v);
    }
    resp
}

pub async fn logout(session: Session, form: FormData) -> PageResult {
    session.check_change(&form)?;
    session
        .console
        .db()?
        .delete_session(&session.token_hash)
        .await?;
    session.app().audit.event(
        &session.actor().actor,
        "console.logout",
        Some(&session.user.name),
        Some(session.ip.clone()),
        json!({}),
    );
    let mut resp = Redirect::to("/console/login").into_response();
    if let Ok(v) = auth::set_cookie(SESSION_COOKIE, "", 0, is_https(&session.headers)).parse() {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

// ---- invites -------------------------------------------------------------------

fn invite_page(form_token: &str, token: &str, user: &ConsoleUser, error: Option<&str>) -> Markup {
    h::bare_page(
        "Set your password",
        html! {
            section.card.narrow {
                h1 { "Welcome, " (user.name) }
                p.muted { "You were invited to the bursar console as " strong { (user.role) } @if let Some(t) = &user.team { " in team " strong { (t) } } ". Choose a password to finish." }
                @if let Some(e) = error { (h::notice("error", e)) }
                form.stack method="post" action={ "/console/invite/" (token) } {
                    input type="hidden" name="_form" value=(form_token);
                    input type="text" name="username" value=(user.name) autocomplete="username" hidden;
                    (h::field("New password", "password", "", Some("At least 10 characters; a passphrase is best."), FieldAttrs { kind: "password", required: true, autocomplete: Some("new-password"), maxlength: Some("256"), ..Default::default() }))
                    (h::field("Repeat it", "password2", "", None, FieldAttrs { kind: "password", required: true, autocomplete: Some("new-password"), maxlength: Some("256"), ..Default::default() }))
                    button.btn.btn-primary.btn-block type="submit" { "Set password and sign in" }
                }
            }
        },
    )
}

fn bad_invite() -> Response {
    PageError::not_found(
        "This invite link is not valid: it was already used, it expired, or it was replaced by a newer one. Ask an admin for a new link.",
    )
    .into_response()
}

pub async fn invite_form(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    if !auth::token_shaped(&token) {
        return bad_invite();
    }
    let db = match console.db() {
        Ok(db) => db,
        Err(e) => return e.into_response(),
    };
    match db.invite_user(&auth::token_hash(&token), now_ms()).await {
        Ok(Some(user)) => {
            let ft = form_token(&headers);
            with_form_cookie(
                StatusCode::OK,
                &headers,
                &ft,
                invite_page(&ft, &token, &user, None),
            )
        }
        Ok(None) => bad_invite(),
        Err(e) => PageError::from(e).into_response(),
    }
}

pub async fn invite_accept(
    State(console): State<Arc<Console>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(token): Path<String>,
    form: FormData,
) -> Response {
    if !auth::token_shaped(&token) {
        return bad_invite();
    }
    let db = match console.db() {
        Ok(db) => db,
        Err(e) => return e.into_response(),
    };
    let hash = auth::token_hash(&token);
    let user = match db.invite_user(&hash, now_ms()).await {
        Ok(Some(u)) => u,
        Ok(None) => return bad_invite(),
        Err(e) => return PageError::from(e).into_response(),
    };
    let ft = form_token(&headers);
    let again = |status, msg: &str| {
        with_form_cookie(
            status,
            &headers,
            &ft,
            invite_page(&ft, &token, &user, Some(msg)),
        )
    };
    if !form_cookie_ok(&headers, &form) {
        return again(
            StatusCode::FORBIDDEN,
            "The form expired or came from another site. Try again.",
        );
    }
    let p1 = form
        .0
        .iter()
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let p2 = form
        .0
        .iter()
        .find(|(k, _)| k == "password2")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if p1 != p2 {
        return again(StatusCode::BAD_REQUEST, "The two passwords differ.");
    }
    if let Some(problem) = auth::password_problem(p1, &user.name) {
        return again(StatusCode::BAD_REQUEST, &problem);
    }
    let app = &console.app;
    let result: Result<Response, PageError> = async {
        let phc = hash_blocking(p1.to_string()).await?;
        if !db.use_invite(&hash, now_ms()).await? {
            return Ok(bad_invite());
        }
        let mut u = user.clone();
        u.password_hash = Some(phc);
        u.status = "active".into();
        u.updated_at = now_ms();
        db.update_user(&u).await?;
        db.delete_sessions_of(&u.id).await?;
        app.audit
            .record(
                &format!("console:{}", u.name),
                "console_user.invite_accepted",
                Some(&u.name),
                Some(ip.clone()),
                json!({}),
            )
            .await?;
        let cookie = start_session(&console, &u, &ip, is_https(&headers)).await?;
        let mut resp = Redirect::to("/console").into_response();
        if let Ok(v) = cookie.parse() {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        Ok(resp)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

// ---- own password ----------------------------------------------------------------

fn password_page(s: &Session, error: Option<&str>) -> Markup {
    h::page(
        s,
        "",
        "Password",
        html! {
            (h::heading("Change your password", Some("Every other session of your account is signed out."), html! {}))
            section.card.narrow-left {
                @if let Some(e) = error { (h::notice("error", e)) }
                form.stack method="post" action="/console/password" {
                    (csrf(s))
                    input type="text" name="username" value=(s.user.name) autocomplete="username" hidden;
                    (h::field("Current password", "current", "", None, FieldAttrs { kind: "password", required: true, autocomplete: Some("current-password"), maxlength: Some("256"), ..Default::default() }))
                    (h::field("New password", "password", "", Some("At least 10 characters."), FieldAttrs { kind: "password", required: true, autocomplete: Some("new-password"), maxlength: Some("256"), ..Default::default() }))
                    (h::field("Repeat the new password", "password2", "", None, FieldAttrs { kind: "password", required: true, autocomplete: Some("new-password"), maxlength: Some("256"), ..Default::default() }))
                    button.btn.btn-primary type="submit" { "Change password" }
                }
            }
        },
    )
}

pub async fn password_form(s: Session) -> Response {
    password_page(&s, None).into_response()
}

pub async fn password_change(s: Session, form: FormData) -> PageResult {
    s.check_change(&form)?;
    let raw = |k: &str| {
        form.0
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (current, p1, p2) = (raw("current"), raw("password"), raw("password2"));
    let fail =
        |status: StatusCode, msg: &str| Ok((status, password_page(&s, Some(msg))).into_response());
    if current.len() > auth::MAX_PASSWORD_BYTES
        || !verify_blocking(s.user.password_hash.clone(), current).await
    {
        return fail(StatusCode::BAD_REQUEST, "The current password is wrong.");
    }
    if p1 != p2 {
        return fail(StatusCode::BAD_REQUEST, "The two new passwords differ.");
    }
    if let Some(problem) = auth::password_problem(&p1, &s.user.name) {
        return fail(StatusCode::BAD_REQUEST, &problem);
    }
    let db = s.console.db()?;
    let user = update_account(
        s.app(),
        db,
        &s.actor(),
        &s.user.name,
        AccountChange {
            password: Some(&p1),
            ..Default::default()
        },
    )
    .await?;
    let cookie = start_session(&s.console, &user, &s.ip, is_https(&s.headers)).await?;
    let mut resp = Redirect::to("/console?done=password").into_response();
    if let Ok(v) = cookie.parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

// ---- the Accounts page (admins) ----------------------------------------------------

fn invite_url(headers: &HeaderMap, token: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:8000");
    let scheme = if is_https(headers) { "https" } else { "http" };
    format!("{scheme}://{host}/console/invite/{token}")
}

async fn accounts_page(
    s: &Session,
    status: StatusCode,
    notice: Option<(&str, String)>,
    invite: Option<(&str, String)>,
) -> PageResult {
    s.require_admin()?;
    let db = s.console.db()?;
    let users = db.users().await?;
    let invited = db.open_invites(now_ms()).await?;
    let teams: Vec<String> = s
        .app()
        .store
        .list_owners(Some("team"))
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let now = now_ms();
    let body = html! {
        (h::heading("Accounts", Some("Who can sign in to this console, and with which role."), html! {}))
        @if let Some((kind, text)) = &notice { (h::notice(kind, text)) }
        @if let Some((name, url)) = &invite {
            section.card.secret-card {
                h2 { "Invite link for " (name) }
                p { "Send this link to " strong { (name) } " over a channel you trust. It works once, for 7 days, and is not shown again." }
                div.secret-row {
                    code.secret id="invite-link" { (url) }
                    button.btn type="button" data-copy="invite-link" { "Copy" }
                }
            }
        }
        section.card {
            h2 { "New account" }
            form.grid-form method="post" action="/console/accounts" {
                (csrf(s))
                (h::field("Name", "name", "", Some("Matches the 'user' of the keys this person owns."), FieldAttrs { required: true, maxlength: Some("64"), ..Default::default() }))
                (h::select("Role", "role", "member", &[("member", "member — own keys and usage"), ("viewer", "viewer — read-only usage"), ("admin", "admin — everything")], None))
                (h::field("Team", "team", "", Some("Members create keys within this team's limits."), FieldAttrs { list: Some("team-names"), maxlength: Some("64"), ..Default::default() }))
                (h::field("Password", "password", "", Some("Leave empty to get an invite link instead."), FieldAttrs { kind: "password", autocomplete: Some("new-password"), maxlength: Some("256"), ..Default::default() }))
                datalist id="team-names" { @for t in &teams { option value=(t) {} } }
                div.form-actions { button.btn.btn-primary type="submit" { "Create account" } }
            }
        }
        section.card {
            h2 { "All accounts" }
            @if users.is_empty() {
                (h::empty("No accounts yet", "Create the first one above, or run `bursar console-user create --name NAME --role admin` on the gateway's host.", None))
            } @else {
                div.table-wrap {
                    table {
                        thead { tr { th { "Name" } th { "Role" } th { "Team" } th { "Status" } th { "Last sign-in" } th { "Change" } } }
                        tbody {
                            @for u in &users {
                                @let status = if u.status != "active" { "disabled" } else if u.password_hash.is_none() || invited.contains(&u.id) && u.last_login_at.is_none() { "invited" } else { "active" };
                                tr {
                                    td data-label="Name" { strong { (u.name) } }
                                    td data-label="Role" { (u.role) }
                                    td data-label="Team" { (u.team.as_deref().unwrap_or("—")) }
                                    td data-label="Status" { (h::badge(status)) }
                                    td data-label="Last sign-in" { (h::ago(u.last_login_at, now)) }
                                    td data-label="Change" {
                                        form.inline-form method="post" action={ "/console/accounts/" (u.name) "/update" } {
                                            (csrf(s))
                                            select name="role" aria-label={ "Role of " (u.name) } {
                                                @for r in ROLES { option value=(r) selected[*r == u.role] { (r) } }
                                            }
                                            input type="text" name="team" value=(u.team.as_deref().unwrap_or("")) placeholder="team" aria-label={ "Team of " (u.name) } list="team-names" maxlength="64";
                                            select name="status" aria-label={ "Status of " (u.name) } {
                                                option value="active" selected[u.status == "active"] { "active" }
                                                option value="disabled" selected[u.status != "active"] { "disabled" }
                                            }
                                            button.btn.btn-small type="submit" { "Save" }
                                        }
                                        form.inline-form method="post" action={ "/console/accounts/" (u.name) "/invite" } data-confirm={ "Make a new invite link for " (u.name) "? Any older link stops working." } {
                                            (csrf(s))
                                            button.btn.btn-small type="submit" { "New invite link" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok((status, h::page(s, "accounts", "Accounts", body)).into_response())
}

pub async fn list(s: Session) -> PageResult {
    accounts_page(&s, StatusCode::OK, None, None).await
}

pub async fn create(s: Session, form: FormData) -> PageResult {
    s.check_change(&form)?;
    s.require_admin()?;
    let db = s.console.db()?;
    let name = form.get("name").unwrap_or("").to_string();
    let role = form.get("role").unwrap_or("member").to_string();
    let password = form
        .0
        .iter()
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty());
    match create_account(
        s.app(),
        db,
        &s.actor(),
        &name,
        &role,
        form.get("team"),
        password.as_deref(),
    )
    .await
    {
        Ok((user, invite)) => {
            let notice = format!("Account '{}' created as {}.", user.name, user.role);
            let invite = invite.map(|t| (user.name.as_str(), invite_url(&s.headers, &t)));
            accounts_page(&s, StatusCode::OK, Some(("ok", notice)), invite).await
        }
        Err(e) if e.status.is_client_error() => {
            accounts_page(&s, e.status, Some(("error", e.message)), None).await
        }
        Err(e) => Err(e),
    }
}

pub async fn reinvite(s: Session, Path(name): Path<String>, form: FormData) -> PageResult {
    s.check_change(&form)?;
    s.require_admin()?;
    let db = s.console.db()?;
    let user = db
        .user_by_name(&name)
        .await?
        .ok_or_else(|| PageError::not_found(format!("No account named '{name}'.")))?;
    let token = new_invite(s.app(), db, &s.actor(), &user).await?;
    let url = invite_url(&s.headers, &token);
    accounts_page(
        &s,
        StatusCode::OK,
        Some(("ok", format!("New invite link for '{name}'."))),
        Some((&name, url)),
    )
    .await
}

pub async fn update(s: Session, Path(name): Path<String>, form: FormData) -> PageResult {
    s.check_change(&form)?;
    s.require_admin()?;
    if name == s.user.name
        && (form.get("role") != Some("admin") || form.get("status") == Some("disabled"))
    {
        return accounts_page(
            &s,
            StatusCode::BAD_REQUEST,
            Some((
                "error",
                "You cannot demote or disable your own account; ask another admin.".into(),
            )),
            None,
        )
        .await;
    }
    let db = s.console.db()?;
    match update_account(
        s.app(),
        db,
        &s.actor(),
        &name,
        AccountChange {
            role: form.get("role"),
            team: Some(form.get("team")),
            status: form.get("status"),
            password: None,
        },
    )
    .await
    {
        Ok(u) => {
            accounts_page(
                &s,
                StatusCode::OK,
                Some(("ok", format!("Saved '{}'.", u.name))),
                None,
            )
            .await
        }
        Err(e) if e.status.is_client_error() => {
            accounts_page(&s, e.status, Some(("error", e.message)), None).await
        }
        Err(e) => Err(e),
    }
}

// ---- /admin/v1/console-users ------------------------------------------------------

fn api_err(e: PageError) -> AdminError {
    let kind = match e.status {
        StatusCode::NOT_FOUND => ApiError::not_found(e.message),
        StatusCode::CONFLICT => ApiError {
            status: StatusCode::CONFLICT,
            kind: "conflict",
            message: e.message,
            retry_after: None,
            upstream: None,
        },
        s if s.is_client_error() => ApiError::invalid_request(e.message),
        _ => ApiError {
            status: e.status,
            kind: "internal_error",
            message: e.message,
            retry_after: None,
            upstream: None,
        },
    };
    AdminError(kind)
}

fn user_json(u: &ConsoleUser) -> Value {
    json!({
        "name": u.name, "role": u.role, "team": u.team, "status": u.status,
        "password_set": u.password_hash.is_some(),
        "created_at": rfc3339(u.created_at),
        "last_login_at": u.last_login_at.map(rfc3339),
    })
}

fn str_field<'a>(body: &'a Value, k: &str) -> Result<Option<&'a str>, AdminError> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(AdminError(ApiError::invalid_request(format!(
            "{k}: must be a string"
        )))),
    }
}

pub async fn api_list(State(app): State<Arc<App>>, _admin: Admin) -> Result<Response, AdminError> {
    let db = ConsoleDb::of(&app)?;
    let users = db.users().await?;
    let data: Vec<Value> = users.iter().map(user_json).collect();
    Ok(Json(json!({"data": data, "next_cursor": null})).into_response())
}

pub async fn api_create(
    State(app): State<Arc<App>>,
    admin: Admin,
    Body(body): Body,
) -> Result<Response, AdminError> {
    if !body.is_object() {
        return Err(AdminError(ApiError::invalid_request(
            "the body must be a JSON object",
        )));
    }
    for k in body.as_object().into_iter().flat_map(|o| o.keys()) {
        if !["name", "role", "team", "password"].contains(&k.as_str()) {
            return Err(AdminError(ApiError::invalid_request(format!(
                "{k}: unknown field (name, role, team, password)"
            ))));
        }
    }
    let db = ConsoleDb::of(&app)?;
    let name = str_field(&body, "name")?
        .ok_or_else(|| AdminError(ApiError::invalid_request("name: required")))?;
    let role = str_field(&body, "role")?.unwrap_or("member");
    let (user, invite) = create_account(
        &app,
        &db,
        &admin,
        name,
        role,
        str_field(&body, "team")?,
        str_field(&body, "password")?,
    )
    .await
    .map_err(api_err)?;
    let mut v = user_json(&user);
    if let (Some(t), Some(o)) = (invite, v.as_object_mut()) {
        o.insert("invite_path".into(), json!(format!("/console/invite/{t}")));
        o.insert(
            "invite_expires_at".into(),
            json!(rfc3339(now_ms() + auth::INVITE_TTL_MS)),
        );
    }
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub async fn api_update(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(name): Path<String>,
    Body(body): Body,
) -> Result<Response, AdminError> {
    let Some(obj) = body.as_object() else {
        return Err(AdminError(ApiError::invalid_request(
            "the body must be a JSON object",
        )));
    };
    for k in obj.keys() {
        if !["role", "team", "status", "password"].contains(&k.as_str()) {
            return Err(AdminError(ApiError::invalid_request(format!(
                "{k}: unknown field (role, team, status, password)"
            ))));
        }
    }
    let db = ConsoleDb::of(&app)?;
    let team = if obj.contains_key("team") {
        Some(str_field(&body, "team")?)
    } else {
        None
    };
    let user = update_account(
        &app,
        &db,
        &admin,
        &name,
        AccountChange {
            role: str_field(&body, "role")?,
            team,
            status: str_field(&body, "status")?,
            password: str_field(&body, "password")?,
        },
    )
    .await
    .map_err(api_err)?;
    Ok(Json(user_json(&user)).into_response())
}

pub async fn api_invite(
    State(app): State<Arc<App>>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, AdminError> {
    let db = ConsoleDb::of(&app)?;
    let user = db.user_by_name(&name).await?.ok_or_else(|| {
        AdminError(ApiError::not_found(format!(
            "no console user named '{name}'"
        )))
    })?;
    let token = new_invite(&app, &db, &admin, &user)
        .await
        .map_err(api_err)?;
    Ok(Json(json!({
        "name": user.name,
        "invite_path": format!("/console/invite/{token}"),
        "invite_expires_at": rfc3339(now_ms() + auth::INVITE_TTL_MS),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_only_a_console_page() {
        assert_eq!(safe_next(Some("/console/usage?x=1")), "/console/usage?x=1");
        assert_eq!(safe_next(Some("https://evil.example/")), "/console");
        assert_eq!(safe_next(Some("/console//evil.example")), "/console");
        assert_eq!(safe_next(Some("/console/\\evil")), "/console");
        assert_eq!(safe_next(Some("/console/login")), "/console");
        assert_eq!(safe_next(None), "/console");
    }

    #[test]
    fn account_names() {
        assert!(valid_name("name", "alice.b@x").is_ok());
        assert!(valid_name("name", "").is_err());
        assert!(valid_name("name", "a b").is_err());
        assert!(valid_name("name", &"a".repeat(65)).is_err());
    }
}
