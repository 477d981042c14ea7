//! The web console at `/console`: server-rendered pages (maud, escaped by
//! construction), a little vanilla JavaScript and CSS embedded in the binary,
//! inline-SVG charts drawn on the server. Accounts sign in with a password;
//! sessions live in HttpOnly SameSite=Strict cookies; every change carries
//! the session's CSRF token; a strict Content-Security-Policy allows only
//! this origin's script and styles.
//!
//! Key and usage logic is the admin API's (`crate::admin`), called with the
//! console account as the audit actor.

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod charts;
pub mod html;
pub mod keys;
pub mod store;
pub mod teams;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};

use crate::admin::{Admin, AdminError};
use crate::gateway::App;
use store::{ConsoleDb, ConsoleUser};

/// Largest form body the console accepts.
const MAX_FORM_BYTES: usize = 64 * 1024;

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// The console's state: the gateway's, its own tables and the sign-in limiter.
pub struct Console {
    pub app: Arc<App>,
    db: Option<ConsoleDb>,
    pub limiter: auth::Limiter,
}

impl Console {
    pub fn db(&self) -> Result<&ConsoleDb, PageError> {
        self.db.as_ref().ok_or_else(|| {
            PageError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The web console needs an SQL store (SQLite or PostgreSQL).",
            )
        })
    }
}

type Shared = Arc<Console>;

/// The console's routes, to be nested at `/console`.
pub fn router<S: Clone + Send + Sync + 'static>(app: Arc<App>) -> Router<S> {
    let db = match ConsoleDb::of(&app) {
        Ok(db) => Some(db),
        Err(e) => {
            tracing::warn!(error = %e, "web console disabled");
            None
        }
    };
    if let (Some(db), Ok(rt)) = (db.clone(), tokio::runtime::Handle::try_current()) {
        rt.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
            loop {
                tick.tick().await;
                if let Err(e) = db.delete_expired(crate::util::now_ms()).await {
                    tracing::debug!(error = %e, "console: pruning expired sessions failed");
                }
            }
        });
    }
    let console = Arc::new(Console {
        app,
        db,
        limiter: auth::Limiter::default(),
    });
    Router::new()
        .route("/", get(home))
        .route("/login", get(accounts::login_form).post(accounts::login))
        .route("/logout", post(accounts::logout))
        .route(
            "/invite/{token}",
            get(accounts::invite_form).post(accounts::invite_accept),
        )
        .route(
            "/password",
            get(accounts::password_form).post(accounts::password_change),
        )
        .route("/assets/{file}", get(asset))
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/new", get(keys::new_form))
        .route("/keys/{id}", get(keys::show))
        .route("/keys/{id}/edit", post(keys::edit))
        .route("/keys/{id}/revoke", post(keys::revoke))
        .route("/keys/{id}/rotate", post(keys::rotate))
        .route("/usage", get(usage::page))
        .route("/usage.csv", get(usage::csv))
        .route("/audit", get(audit::page))
        .route("/teams", get(teams::list).post(teams::create))
        .route("/teams/{name}", get(teams::show).post(teams::update))
        .route("/teams/{name}/members", post(teams::add_member))
        .route("/accounts", get(accounts::list).post(accounts::create))
        .route("/accounts/{name}/invite", post(accounts::reinvite))
        .route("/accounts/{name}/update", post(accounts::update))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::map_response(security_headers))
        .with_state(console)
}

/// Admin API routes for console accounts (`/admin/v1/console-users`), used
/// by `bursar console-user`.
pub fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/console-users",
            get(accounts::api_list).post(accounts::api_create),
        )
        .route(
            "/console-users/{name}",
            axum::routing::patch(accounts::api_update),
        )
        .route("/console-users/{name}/invite", post(accounts::api_invite))
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn home(session: Session) -> Response {
    let to = if session.user.role == "viewer" {
        "/console/usage"
    } else {
        "/console/keys"
    };
    Redirect::to(to).into_response()
}

async fn not_found(session: Option<Session>, uri: axum::http::Uri) -> Response {
    if uri.path() == "/" || uri.path() == "/console/" {
        return Redirect::to("/console").into_response();
    }
    let err = PageError::not_found("There is no such page.");
    match session {
        Some(s) => err.render_for(&s),
        None => err.into_response(),
    }
}

static APP_CSS: &str = include_str!("assets/app.css");
static APP_JS: &str = include_str!("assets/app.js");
static FAVICON: &str = include_str!("assets/favicon.svg");

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ctype) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return PageError::not_found("There is no such file.").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

// ---- errors -----------------------------------------------------------------

/// An error page: a status and a message that says what went wrong.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn forbidden(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::FORBIDDEN, message)
    }
    pub fn bad(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::BAD_REQUEST, message)
    }
    fn title(&self) -> &'static str {
        match self.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::UNAUTHORIZED => "Signed out",
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
            StatusCode::BAD_REQUEST => "Cannot do that",
            s if s.is_server_error() => "Something went wrong",
            _ => "Error",
        }
    }
    /// The error inside the signed-in layout.
    pub fn render_for(&self, s: &Session) -> Response {
        let body = html::error_body(self.title(), &self.message, true);
        (self.status, html::page(s, "", self.title(), body)).into_response()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html::error_body(self.title(), &self.message, false);
        (self.status, html::bare_page(self.title(), body)).into_response()
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %e, "console request failed");
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error; the gateway's log has the details.",
        )
    }
}

impl From<AdminError> for PageError {
    fn from(e: AdminError) -> Self {
        PageError::new(e.0.status, e.0.message)
    }
}

/// A handler's result: a page, or an error page inside the layout.
pub type PageResult = Result<Response, PageError>;

// ---- sessions ---------------------------------------------------------------

/// The caller's address (X-Forwarded-For only from trusted proxies).
pub fn client_ip(parts_ext: &http::Extensions, headers: &HeaderMap, app: &App) -> String {
    let peer = parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    crate::gateway::surface::client_ip(peer, headers, &app.trusted_proxies).to_string()
}

/// The caller's address as an extractor.
pub struct ClientIp(pub String);

impl FromRequestParts<Shared> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Shared,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(
            &parts.extensions,
            &parts.headers,
            &console.app,
        )))
    }
}

/// Whether the browser reached us over HTTPS (through a proxy).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A signed-in console account. Missing or expired: a page request is sent
/// to the sign-in form, a change is refused with 401.
pub struct Session {
    pub user: ConsoleUser,
    pub csrf: String,
    pub token_hash: String,
    pub ip: String,
    pub headers: HeaderMap,
    pub console: Shared,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.user.role == "admin"
    }
    pub fn is_member(&self) -> bool {
        self.user.role == "member"
    }
    /// The identity the admin-API logic records in the audit log.
    pub fn actor(&self) -> Admin {
        Admin {
            actor: format!("console:{}", self.user.name),
            ip: self.ip.clone(),
        }
    }
    pub fn app(&self) -> &App {
        &self.console.app
    }

    /// Every change must carry this session's CSRF token (form field
    /// `_csrf` or header `x-csrf-token`) and, when the browser sends an
    /// `Origin`, come from this origin.
    pub fn check_change(&self, form: &FormData) -> Result<(), PageError> {
        if let Some(origin) = self.headers.get(header::ORIGIN) {
            let host = self
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let origin = origin.to_str().unwrap_or("");
            let same = origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest == host);
            if !same {
                return Err(PageError::forbidden(
                    "This change came from another site and was refused.",
                ));
            }
        }
        let given = form
            .get("_csrf")
            .map(str::to_string)
            .or_else(|| {
                self.headers
                    .get("x-csrf-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        if auth::same_token(&self.csrf, &given) {
            Ok(())
        } else {
            Err(PageError::forbidden(
                "This form has expired or did not come from the console (missing CSRF token). Reload the page and try again.",
            ))
        }
    }

    /// Refuse anyone but an admin.
    pub fn require_admin(&self) -> Result<(), PageError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(PageError::forbidden(format!(
                "This page is for admins; your role is {}.",
                self.user.role
            )))
        }
    }
}

impl FromRequestParts<Shared> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Shared) -> Result<Self, Response> {
        let refuse = |parts: &Parts| -> Response {
            if parts.method == Method::GET || parts.method == Method::HEAD {
                // Nested under /console: the original URI has the full path.
                let uri = parts
                    .extensions
                    .get::<axum::extract::OriginalUri>()
                    .map(|o| o.0.clone())
                    .unwrap_or_else(|| parts.uri.clone());
                let next = uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default();
                let to = if next.starts_with("/console/") && next.len() < 2000 {
                    format!("/console/login?next={}", html::url_encode(&next))
                } else {
                    "/console/login".to_string()
                };
                Redirect::to(&to).into_response()
            } else {
                PageError::new(
                    StatusCode::UNAUTHORIZED,
                    "You are not signed in (or your session ended). Sign in and try again.",
                )
                .into_response()
            }
        };
        let Some(token) = auth::cookie(&parts.headers, auth::SESSION_COOKIE) else {
            return Err(refuse(parts));
        };
        if !auth::token_shaped(&token) {
            return Err(refuse(parts));
        }
        let db = console.db().map_err(IntoResponse::into_response)?;
        let hash = auth::token_hash(&token);
        let row = db
            .session(&hash, crate::util::now_ms())
            .await
            .map_err(|e| PageError::from(e).into_response())?;
        let Some(row) = row else {
            return Err(refuse(parts));
        };
        Ok(Session {
            ip: client_ip(&parts.extensions, &parts.headers, &console.app),
            user: row.user,
            csrf: row.csrf,
            token_hash: row.token_hash,
            headers: parts.headers.clone(),
            console: console.clone(),
        })
    }
}

impl axum::extract::OptionalFromRequestParts<Shared> for Session {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Shared,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Session as FromRequestParts<Shared>>::from_request_parts(parts, console)
                .await
                .ok(),
        )
    }
}

// ---- forms ------------------------------------------------------------------

/// A URL-encoded form as name/value pairs (repeated names kept, for checkbox
/// lists). Bounded by `MAX_FORM_BYTES`.
#[derive(Debug, Default, Clone)]
pub struct FormData(pub Vec<(String, String)>);

impl FormData {
    /// The first value of a field, trimmed; `None` when absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
    /// Every non-blank value of a repeated field.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match axum::Form::<Vec<(String, String)>>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(FormData(v)),
            Err(e) => {
                let status = e.status();
                let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    format!("The form is larger than {} KiB.", MAX_FORM_BYTES / 1024)
                } else {
                    "The form could not be read; reload the page and try again.".to_string()
                };
                Err(PageError::new(status, msg).into_response())
            }
        }
    }
}

/// Query strings as a map of non-blank values.
pub fn clean_query(
    q: std::collections::HashMap<String, String>,
) -> std::collections::HashMap<String, String> {
    q.into_iter()
        .map(|(k, v)| (k, v.trim().to_string()))
        .filter(|(_, v)| !v.is_empty() && v.len() <= 1000)
        .collect()
}

/// 303 to a console page after a change.
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The state extractor for handlers that only need the console.
pub type ConsoleState = State<Shared>;
