//! The console's layout and small shared pieces. maud escapes every
//! interpolated value; `PreEscaped` is used only for markup built here.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::Session;

const ASSET_VERSION: &str = env!("CARGO_PKG_VERSION");

fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        meta name="referrer" content="same-origin";
        title { (title) " · bursar" }
        link rel="icon" href="/console/assets/favicon.svg" type="image/svg+xml";
        link rel="stylesheet" href={ "/console/assets/app.css?v=" (ASSET_VERSION) };
        script src={ "/console/assets/app.js?v=" (ASSET_VERSION) } defer {}
    }
}

fn logo() -> Markup {
    html! {
        span.logo aria-hidden="true" {
            (PreEscaped(r##"<svg viewBox="0 0 24 24" width="22" height="22"><rect x="2" y="6" width="20" height="13" rx="3" fill="currentColor" opacity=".25"/><rect x="2" y="3" width="20" height="13" rx="3" fill="currentColor"/><circle cx="17" cy="9.5" r="2" fill="#fff"/></svg>"##))
        }
    }
}

/// The sections of the sidebar and who sees them.
fn nav_items(role: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut v = Vec::new();
    if role != "viewer" {
        v.push(("keys", "API Keys", "/console/keys"));
    }
    v.push(("usage", "Usage", "/console/usage"));
    if role != "viewer" {
        v.push(("teams", "Teams", "/console/teams"));
    }
    if role == "admin" {
        v.push(("audit", "Audit", "/console/audit"));
        v.push(("accounts", "Accounts", "/console/accounts"));
    }
    v
}

/// A signed-in page: sidebar (a top bar on a phone), title, content.
pub fn page(s: &Session, active: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title)) }
            body {
                div.shell {
                    aside.side {
                        a.brand href="/console" { (logo()) span { "bursar" } }
                        nav.nav aria-label="Sections" {
                            @for (id, label, href) in nav_items(&s.user.role) {
                                a href=(href) class=@if id == active { "active" } aria-current=[(id == active).then_some("page")] { (label) }
                            }
                        }
                        div.me {
                            div.who {
                                span.avatar aria-hidden="true" { (initial(&s.user.name)) }
                                span {
                                    strong { (s.user.name) }
                                    br;
                                    small { (s.user.role) @if let Some(t) = &s.user.team { " · " (t) } }
                                }
                            }
                            div.me-actions {
                                a href="/console/password" { "Password" }
                                form method="post" action="/console/logout" {
                                    (csrf(s))
                                    button.linkish type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                    main.main {
                        (body)
                    }
                }
            }
        }
    }
}

fn initial(name: &str) -> String {
    name.chars()
        .next()
        .map(|c| c.to_uppercase().collect())
        .unwrap_or_default()
}

/// A page without the sidebar (sign-in, invite, errors before sign-in).
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title)) }
            body.bare {
                main.center {
                    a.brand.brand-lg href="/console" { (logo()) span { "bursar" } }
                    (body)
                }
            }
        }
    }
}

pub fn error_body(title: &str, message: &str, signed_in: bool) -> Markup {
    html! {
        section.card.narrow.error-card role="alert" {
            h1 { (title) }
            p { (message) }
            p {
                @if signed_in {
                    a.btn href="/console" { "Back to the console" }
                } @else {
                    a.btn href="/console/login" { "Sign in" }
                }
            }
        }
    }
}

/// The page heading with optional actions on the right.
pub fn heading(title: &str, subtitle: Option<&str>, actions: Markup) -> Markup {
    html! {
        header.page-head {
            div {
                h1 { (title) }
                @if let Some(sub) = subtitle { p.muted { (sub) } }
            }
            div.actions { (actions) }
        }
    }
}

/// The hidden CSRF field every form of a signed-in page carries.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="_csrf" value=(s.csrf); }
}

/// A message at the top of a page.
pub fn notice(kind: &str, text: &str) -> Markup {
    html! {
        div class={ "notice notice-" (kind) } role=(if kind == "error" { "alert" } else { "status" }) { (text) }
    }
}

/// An empty state: what is missing and what to do next.
pub fn empty(title: &str, text: &str, action: Option<(&str, &str)>) -> Markup {
    html! {
        div.empty {
            (PreEscaped(r##"<svg viewBox="0 0 48 48" width="44" height="44" aria-hidden="true"><rect x="6" y="10" width="36" height="28" rx="5" fill="none" stroke="currentColor" stroke-width="2.5"/><path d="M6 18h36" stroke="currentColor" stroke-width="2.5"/><circle cx="13" cy="14" r="1.6" fill="currentColor"/></svg>"##))
            h2 { (title) }
            p { (text) }
            @if let Some((label, href)) = action { a.btn.btn-primary href=(href) { (label) } }
        }
    }
}

/// A status badge.
pub fn badge(status: &str) -> Markup {
    let class = match status {
        "active" | "ok" => "badge badge-ok",
        "revoked" | "disabled" | "broken" => "badge badge-bad",
        "expired" | "invited" => "badge badge-warn",
        _ => "badge",
    };
    html! { span class=(class) { (status) } }
}

/// A spend bar against a budget (SVG: no inline styles under the CSP).
pub fn budget_bar(spent: f64, budget: Option<(f64, &str)>) -> Markup {
    match budget {
        None => html! { span.spend { (usd(spent)) } small.muted { " no budget" } },
        Some((limit, period)) => {
            let frac = if limit > 0.0 {
                (spent / limit).clamp(0.0, 1.0)
            } else {
                1.0
            };
            let class = if frac >= 1.0 {
                "bar-fill over"
            } else if frac >= 0.8 {
                "bar-fill warn"
            } else {
                "bar-fill"
            };
            let pct = (frac * 100.0).round();
            html! {
                div.budget title={ (usd(spent)) " of " (usd(limit)) " " (period) } {
                    div.budget-text { span.spend { (usd(spent)) } small.muted { " / " (usd(limit)) " " (period) } }
                    svg.bar viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label={ (pct) "% of the budget used" } {
                        rect.bar-track x="0" y="0" width="100" height="6" rx="3" {}
                        rect class=(class) x="0" y="0" width=(format!("{:.1}", frac * 100.0)) height="6" rx="3" {}
                    }
                }
            }
        }
    }
}

pub fn usd(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "$0.00".into()
    } else if a < 0.01 {
        format!("${v:.6}")
    } else if a < 1.0 {
        format!("${v:.4}")
    } else if a < 10_000.0 {
        format!("${v:.2}")
    } else {
        format!("${}", thousands(v.round() as i64))
    }
}

pub fn thousands(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Short counts for chart axes: 1.2k, 3.4M.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}B", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a == a.trunc() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `YYYY-MM-DD HH:MM` UTC.
pub fn when(ms: i64) -> String {
    let s = crate::util::rfc3339(ms);
    if s.len() >= 16 {
        format!("{} {}", &s[..10], &s[11..16])
    } else {
        s
    }
}

/// "3 min ago", "2 d ago"; "never" for none.
pub fn ago(ms: Option<i64>, now: i64) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let d = (now - t).max(0) / 1000;
            if d < 60 {
                "just now".into()
            } else if d < 3600 {
                format!("{} min ago", d / 60)
            } else if d < 86_400 {
                format!("{} h ago", d / 3600)
            } else {
                format!("{} d ago", d / 86_400)
            }
        }
    }
}

/// Percent-encode a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs, skipping empty values.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// A labelled text input (with its current value and optional hint).
pub fn field(
    label: &str,
    name: &str,
    value: &str,
    hint: Option<&str>,
    attrs: FieldAttrs,
) -> Markup {
    let id = format!("f-{name}");
    html! {
        div class=(if attrs.wide { "field wide" } else { "field" }) {
            label for=(id) { (label) @if attrs.required { span.req aria-hidden="true" { " *" } } }
            input id=(id) name=(name) type=(attrs.kind) value=(value)
                placeholder=[attrs.placeholder] required[attrs.required]
                min=[attrs.min] step=[attrs.step] maxlength=[attrs.maxlength]
                autocomplete=[attrs.autocomplete] list=[attrs.list]
                aria-describedby=[hint.map(|_| format!("{id}-hint"))];
            @if let Some(h) = hint { small.hint id={ (id) "-hint" } { (h) } }
        }
    }
}

/// Options of `field`.
#[derive(Clone, Copy)]
pub struct FieldAttrs {
    pub kind: &'static str,
    pub required: bool,
    pub wide: bool,
    pub placeholder: Option<&'static str>,
    pub min: Option<&'static str>,
    pub step: Option<&'static str>,
    pub maxlength: Option<&'static str>,
    pub autocomplete: Option<&'static str>,
    pub list: Option<&'static str>,
}

impl Default for FieldAttrs {
    fn default() -> Self {
        FieldAttrs {
            kind: "text",
            required: false,
            wide: false,
            placeholder: None,
            min: None,
            step: None,
            maxlength: Some("200"),
            autocomplete: Some("off"),
            list: None,
        }
    }
}

impl FieldAttrs {
    pub fn number() -> Self {
        FieldAttrs {
            kind: "number",
            min: Some("1"),
            step: Some("1"),
            maxlength: None,
            ..Default::default()
        }
    }
    pub fn text(placeholder: &'static str) -> Self {
        FieldAttrs {
            placeholder: Some(placeholder),
            ..Default::default()
        }
    }
}

/// A labelled select with (value, label) options.
pub fn select(
    label: &str,
    name: &str,
    current: &str,
    options: &[(&str, &str)],
    hint: Option<&str>,
) -> Markup {
    let id = format!("f-{name}");
    html! {
        div.field {
            label for=(id) { (label) }
            select id=(id) name=(name) {
                @for (v, l) in options {
                    option value=(v) selected[*v == current] { (l) }
                }
            }
            @if let Some(h) = hint { small.hint { (h) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(usd(0.000123), "$0.000123");
        assert_eq!(usd(0.5), "$0.5000");
        assert_eq!(usd(25.0), "$25.00");
        assert_eq!(usd(12345.4), "$12,345");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(compact(1500.0), "1.5k");
        assert_eq!(compact(3.0), "3");
        assert_eq!(when(0), "1970-01-01 00:00");
        assert_eq!(ago(None, 0), "never");
        assert_eq!(ago(Some(0), 7_200_000), "2 h ago");
        assert_eq!(url_encode("a b&c=/é"), "a%20b%26c%3D%2F%C3%A9");
        assert_eq!(
            query(&[("a", "1"), ("b", ""), ("c", "x y")]),
            "?a=1&c=x%20y"
        );
    }

    #[test]
    fn markup_is_escaped() {
        let m = notice("error", "<script>alert(1)</script>");
        let s = m.into_string();
        assert!(s.contains("&lt;script&gt;"), "{s}");
        assert!(!s.contains("<script>"));
        let f = field(
            "Name",
            "name",
            "\"><img src=x onerror=alert(1)>",
            None,
            FieldAttrs::default(),
        )
        .into_string();
        assert!(f.contains("&quot;&gt;&lt;img"), "{f}");
    }

    #[test]
    fn budget_bar_has_no_inline_style() {
        let s = budget_bar(9.0, Some((10.0, "monthly"))).into_string();
        assert!(!s.contains("style="), "{s}");
        assert!(s.contains("width=\"90.0\""), "{s}");
        assert!(s.contains("warn"));
    }
}
