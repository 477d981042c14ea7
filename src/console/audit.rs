//! The Audit page (admins): admin actions and security events, newest first,
//! with filters, and the hash chain's verification status.

use std::collections::HashMap;

use axum::extract::Query;
use axum::response::IntoResponse;
use maud::html;

use super::html as h;
use super::store::AuditQuery;
use super::{PageError, PageResult, Session, clean_query};
use crate::util::{now_ms, parse_time};

const PAGE: i64 = 100;
const DAY: i64 = 86_400_000;

pub async fn page(s: Session, Query(q): Query<HashMap<String, String>>) -> PageResult {
    s.require_admin()?;
    let q = clean_query(q);
    let now = now_ms();
    let date = |k: &str| -> Result<Option<i64>, PageError> {
        match q.get(k) {
            None => Ok(None),
            Some(v) => parse_time(v, now)
                .map(|ms| {
                    Some(if k == "until" && v.len() == 10 {
                        ms + DAY
                    } else {
                        ms
                    })
                })
                .ok_or_else(|| PageError::bad(format!("{k}: '{v}' is not a date like 2026-01-31"))),
        }
    };
    let before = match q.get("before") {
        None => None,
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| PageError::bad("before: not a sequence number"))?,
        ),
    };
    let query = AuditQuery {
        since: date("since")?,
        until: date("until")?,
        actor: q.get("actor").cloned(),
        action: q.get("action").cloned(),
        before,
        limit: PAGE + 1,
    };
    let db = s.console.db()?;
    let mut rows = db.audit(&query).await?;
    let next = if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| r.seq)
    } else {
        None
    };
    let verdict = s.app().store.verify_audit().await?;
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let filtered = ["since", "until", "actor", "action", "before"]
        .iter()
        .any(|k| q.contains_key(*k));
    let body = html! {
        (h::heading("Audit log", Some("Every admin action and security event, in a tamper-evident hash chain."), html! {}))
        @if verdict.ok {
            div.notice.notice-ok.chain role="status" data-testid="chain-status" {
                strong { "Chain intact. " }
                (h::thousands(verdict.checked)) " entries verified: none was edited or deleted."
            }
        } @else {
            div.notice.notice-error.chain role="alert" data-testid="chain-status" {
                strong { "Chain broken" }
                @if let Some(seq) = verdict.first_bad_seq { " at entry #" (seq) }
                ": " (verdict.reason.as_deref().unwrap_or("unknown reason")) ". Restore the database from a backup and investigate who had write access."
            }
        }
        form.filters method="get" action="/console/audit" {
            input type="search" name="actor" value=(get("actor")) placeholder="actor (e.g. console:alice)" aria-label="Actor contains" maxlength="200";
            select name="action" aria-label="Action" {
                @for (v, l) in [("", "all actions"), ("key.", "keys"), ("console.", "console sign-ins"), ("console_user.", "console accounts"), ("team.", "teams"), ("user.", "users"), ("admin", "admin keys"), ("auth.", "refused keys"), ("scope.", "scope denials"), ("guardrail.", "guardrails"), ("budget.", "budgets")] {
                    option value=(v) selected[get("action") == v] { (l) }
                }
            }
            input type="date" name="since" value=(get("since")) aria-label="From (UTC)";
            input type="date" name="until" value=(get("until")) aria-label="To (UTC, inclusive)";
            button.btn.btn-primary type="submit" { "Filter" }
            @if filtered { a.btn.btn-ghost href="/console/audit" { "Clear" } }
        }
        @if rows.is_empty() {
            (h::empty("No entries", if filtered { "Nothing matches these filters; clear them to see the whole log." } else { "Admin actions (key changes, sign-ins, account changes) are recorded here as they happen." }, filtered.then_some(("Clear filters", "/console/audit"))))
        } @else {
            section.card {
                div.table-wrap {
                    table.audit {
                        thead { tr { th.num { "#" } th { "Time (UTC)" } th { "Actor" } th { "Action" } th { "Target" } th { "IP" } th { "Detail" } } }
                        tbody {
                            @for r in &rows {
                                @let detail = if r.detail.len() > 300 { format!("{}…", r.detail.chars().take(300).collect::<String>()) } else { r.detail.clone() };
                                tr {
                                    td.num data-label="#" { (r.seq) }
                                    td data-label="Time" { (h::when(r.ts)) }
                                    td data-label="Actor" { (r.actor) }
                                    td data-label="Action" { code { (r.action) } }
                                    td data-label="Target" {
                                        @match r.target.as_deref() {
                                            Some(t) if t.starts_with("key_") => a href={ "/console/keys/" (t) } { (t) },
                                            Some(t) => (t),
                                            None => "—",
                                        }
                                    }
                                    td data-label="IP" { (r.ip.as_deref().unwrap_or("—")) }
                                    td.detail data-label="Detail" { code { (detail) } }
                                }
                            }
                        }
                    }
                }
                nav.pager {
                    @if before.is_some() {
                        a.btn.btn-ghost href={ "/console/audit" (h::query(&[("actor", get("actor")), ("action", get("action")), ("since", get("since")), ("until", get("until"))])) } { "← Newest" }
                    }
                    @if let Some(n) = next {
                        a.btn href={ "/console/audit" (h::query(&[("actor", get("actor")), ("action", get("action")), ("since", get("since")), ("until", get("until")), ("before", &n.to_string())])) } { "Older →" }
                    }
                }
            }
        }
    };
    Ok(h::page(&s, "audit", "Audit", body).into_response())
}
