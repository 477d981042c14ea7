//! The Usage page: filters, totals, charts over time, latency percentiles,
//! top keys and models, request history with paging, CSV export. Totals,
//! groups and rows come from the same store queries and filter parsing as
//! `GET /admin/v1/usage`, so the numbers are the same for the same filter.

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::charts::{self, Series};
use super::html as h;
use super::store::Sample;
use super::{PageError, PageResult, Session, clean_query};
use crate::admin;
use crate::store::{KeyFilter, UsageFilter, UsageGroup};
use crate::util::{now_ms, parse_time};

const HISTORY_PAGE: i64 = 50;
const SAMPLE_CAP: i64 = 50_000;
const CSV_CAP: i64 = 50_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

const RANGES: &[(&str, &str)] = &[
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("90d", "Last 90 days"),
    ("all", "All time"),
    ("custom", "Custom dates"),
];

/// The page's filter: what the form shows and the store filter it means.
struct Filter {
    q: HashMap<String, String>,
    range: String,
    /// The admin API query with the same meaning (without limit/cursor).
    api: Vec<(String, String)>,
    store: UsageFilter,
}

fn parse_filter(s: &Session, q: HashMap<String, String>, limit: i64) -> Result<Filter, PageError> {
    let mut q = clean_query(q);
    if !s.is_admin() && s.user.role != "viewer" {
        // Members see their own usage only.
        q.insert("user".into(), s.user.name.clone());
    }
    let range = q
        .get("range")
        .filter(|r| RANGES.iter().any(|(k, _)| k == r))
        .cloned()
        .unwrap_or_else(|| {
            if q.contains_key("since") || q.contains_key("until") {
                "custom".into()
            } else {
                "7d".into()
            }
        });
    let now = now_ms();
    let mut api: Vec<(String, String)> = Vec::new();
    for k in ["key_id", "user", "team", "model", "provider"] {
        if let Some(v) = q.get(k) {
            api.push((k.into(), v.clone()));
        }
    }
    match range.as_str() {
        "custom" => {
            if let Some(v) = q.get("since") {
                let ms = parse_time(v, now).ok_or_else(|| {
                    PageError::bad(format!("since: '{v}' is not a date like 2026-01-31"))
                })?;
                api.push(("since".into(), (ms / 1000).to_string()));
            }
            if let Some(v) = q.get("until") {
                let ms = parse_time(v, now).ok_or_else(|| {
                    PageError::bad(format!("until: '{v}' is not a date like 2026-01-31"))
                })?;
                // A date means the whole day.
                let end = if v.len() == 10 { ms + DAY } else { ms };
                api.push(("until".into(), (end / 1000).to_string()));
            }
        }
        "all" => {}
        span => {
            let start = parse_time(span, now).unwrap_or(now - 7 * DAY);
            api.push(("since".into(), (start / 1000).to_string()));
        }
    }
    let mut map: HashMap<String, String> = api.iter().cloned().collect();
    if let Some(c) = q.get("cursor") {
        map.insert("cursor".into(), c.clone());
    }
    let store = admin::usage_filter(&map, limit).map_err(PageError::from)?;
    Ok(Filter {
        q,
        range,
        api,
        store,
    })
}

impl Filter {
    fn get(&self, k: &str) -> &str {
        self.q.get(k).map(String::as_str).unwrap_or("")
    }
    /// This page's query with some parameters replaced.
    fn link(&self, path: &str, set: &[(&str, &str)]) -> String {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for k in [
            "key_id", "user", "team", "model", "provider", "range", "since", "until",
        ] {
            if set.iter().any(|(sk, _)| *sk == k) {
                continue;
            }
            let v = if k == "range" {
                self.range.as_str()
            } else {
                self.get(k)
            };
            pairs.push((k, v));
        }
        pairs.extend(set.iter().copied());
        format!("{path}{}", h::query(&pairs))
    }
    fn api_query(&self, extra: &str) -> String {
        let mut pairs: Vec<(&str, &str)> = self
            .api
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if !extra.is_empty() {
            pairs.push(("group_by", extra));
        }
        format!("/admin/v1/usage{}", h::query(&pairs))
    }
}

struct Bucket {
    start: i64,
    requests: f64,
    errors: f64,
    prompt: f64,
    completion: f64,
    cost: f64,
    latencies: Vec<i64>,
}

/// Time buckets from `start` to `end` of a size that gives at most ~120 bars.
fn bucketize(samples: &[Sample], start: i64, end: i64) -> (i64, Vec<Bucket>) {
    let span = (end - start).max(HOUR);
    let mut size = if span <= 2 * DAY {
        HOUR
    } else if span <= 120 * DAY {
        DAY
    } else {
        7 * DAY
    };
    while span / size > 120 {
        size *= 2;
    }
    let first = start.div_euclid(size) * size;
    let n = ((end - first) / size + 1).clamp(1, 400) as usize;
    let mut buckets: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            start: first + i as i64 * size,
            requests: 0.0,
            errors: 0.0,
            prompt: 0.0,
            completion: 0.0,
            cost: 0.0,
            latencies: Vec::new(),
        })
        .collect();
    for smp in samples {
        let i = (smp.created_at - first).div_euclid(size);
        if i < 0 || i as usize >= n {
            continue;
        }
        let b = &mut buckets[i as usize];
        b.requests += 1.0;
        if !smp.ok {
            b.errors += 1.0;
        }
        b.prompt += smp.prompt_tokens as f64;
        b.completion += smp.completion_tokens as f64;
        b.cost += smp.cost_usd;
        b.latencies.push(smp.latency_ms);
    }
    for b in &mut buckets {
        b.latencies.sort_unstable();
    }
    (size, buckets)
}

fn bucket_label(start: i64, size: i64) -> String {
    let t = h::when(start);
    if size < DAY {
        t[11..].to_string()
    } else {
        t[5..10].to_string()
    }
}

fn usd_axis(v: f64) -> String {
    if v == 0.0 {
        "$0".into()
    } else if v < 1.0 {
        let s = format!("{v:.4}");
        format!("${}", s.trim_end_matches('0'))
    } else {
        format!("${}", h::compact(v))
    }
}

fn ms_axis(v: f64) -> String {
    format!("{} ms", h::compact(v))
}

fn sum_groups(groups: &[UsageGroup]) -> (i64, i64, i64, f64) {
    groups.iter().fold((0, 0, 0, 0.0), |acc, g| {
        (
            acc.0 + g.requests,
            acc.1 + g.prompt_tokens,
            acc.2 + g.completion_tokens,
            acc.3 + g.cost_usd,
        )
    })
}

fn group_name(g: &UsageGroup) -> String {
    g.fields
        .first()
        .and_then(|(_, v)| v.as_str())
        .unwrap_or("(none)")
        .to_string()
}

fn share_bar(v: f64, max: f64) -> Markup {
    let w = if max > 0.0 {
        (v / max * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    html! {
        svg.bar.share viewBox="0 0 100 6" preserveAspectRatio="none" aria-hidden="true" {
            rect.bar-track x="0" y="0" width="100" height="6" rx="3" {}
            rect.bar-fill x="0" y="0" width=(format!("{w:.1}")) height="6" rx="3" {}
        }
    }
}

pub async fn page(s: Session, Query(q): Query<HashMap<String, String>>) -> PageResult {
    let f = parse_filter(&s, q, HISTORY_PAGE + 1)?;
    let app = s.app();
    let db = s.console.db()?;
    let now = now_ms();
    let mut totals_filter = f.store.clone();
    totals_filter.cursor = None;
    let by_model = app
        .store
        .group_usage(&totals_filter, &["model".to_string()])
        .await?;
    let mut by_key = app
        .store
        .group_usage(&totals_filter, &["key_id".to_string()])
        .await?;
    let (requests, prompt, completion, cost) = sum_groups(&by_model);
    let samples = db.usage_samples(&totals_filter, SAMPLE_CAP).await?;
    let mut history = app.store.list_usage(&f.store).await?;
    let next = if history.len() as i64 > HISTORY_PAGE {
        history.truncate(HISTORY_PAGE as usize);
        history.last().map(|r| r.request_id.clone())
    } else {
        None
    };
    // Key names for the tables.
    by_key.sort_by(|a, b| {
        b.cost_usd
            .total_cmp(&a.cost_usd)
            .then(b.requests.cmp(&a.requests))
    });
    let mut names: HashMap<String, String> = HashMap::new();
    let mut ids: Vec<String> = by_key.iter().take(10).map(group_name).collect();
    ids.extend(history.iter().map(|r| r.key_id.clone()));
    ids.sort();
    ids.dedup();
    for id in ids.iter().take(80) {
        if let Some(k) = app.store.get_key(id).await? {
            names.insert(id.clone(), k.name);
        }
    }
    let mut models = by_model.clone();
    models.sort_by(|a, b| {
        b.cost_usd
            .total_cmp(&a.cost_usd)
            .then(b.requests.cmp(&a.requests))
    });
    // Filter choices.
    let user_scope = (!s.is_admin() && s.user.role != "viewer").then_some(s.user.name.as_str());
    let model_choices = db.usage_values("model", user_scope).await?;
    let provider_choices = db.usage_values("provider", user_scope).await?;
    let key_choices = app
        .store
        .list_keys(
            &KeyFilter {
                user: user_scope.map(str::to_string),
                limit: 500,
                ..Default::default()
            },
            now,
        )
        .await?;
    // Time buckets.
    let start = f
        .store
        .since
        .or_else(|| samples.iter().map(|x| x.created_at).min())
        .unwrap_or(now - DAY);
    let end = f.store.until.unwrap_or(now).min(now.max(start + HOUR));
    let (size, buckets) = bucketize(&samples, start, end);
    let labels: Vec<String> = buckets
        .iter()
        .map(|b| bucket_label(b.start, size))
        .collect();
    let tips: Vec<String> = buckets
        .iter()
        .map(|b| format!("{} UTC", h::when(b.start)))
        .collect();
    let mut all_lat: Vec<i64> = samples.iter().map(|x| x.latency_ms).collect();
    all_lat.sort_unstable();
    let errors = samples.iter().filter(|x| !x.ok).count();
    let pct = |q: f64| {
        charts::quantile(&all_lat, q)
            .map(|v| format!("{v} ms"))
            .unwrap_or_else(|| "—".into())
    };
    // With nothing in range: is there anything at all for this account?
    let filtered_out = requests == 0 && {
        let any = UsageFilter {
            user: user_scope.map(str::to_string),
            limit: 1,
            ..Default::default()
        };
        !app.store.list_usage(&any).await?.is_empty()
    };
    let body = html! {
        (h::heading("Usage", Some(if user_scope.is_some() { "Requests made with your keys: volume, tokens, cost and latency." } else { "Requests through the gateway: volume, tokens, cost and latency." }), html! {
            a.btn href=(f.link("/console/usage.csv", &[])) download { "Export CSV" }
        }))
        form.filters.usage-filters method="get" action="/console/usage" {
            select name="key_id" aria-label="Key" {
                option value="" { "all keys" }
                @for k in &key_choices {
                    option value=(k.id) selected[f.get("key_id") == k.id] { (k.name) " (" (k.prefix) "…)" }
                }
                @if !f.get("key_id").is_empty() && !key_choices.iter().any(|k| k.id == f.get("key_id")) {
                    option value=(f.get("key_id")) selected { (f.get("key_id")) }
                }
            }
            @if user_scope.is_none() {
                input type="search" name="user" value=(f.get("user")) placeholder="user" aria-label="User" maxlength="200";
                input type="search" name="team" value=(f.get("team")) placeholder="team" aria-label="Team" maxlength="200";
            }
            select name="model" aria-label="Model" {
                option value="" { "all models" }
                @for m in &model_choices { option value=(m) selected[f.get("model") == m] { (m) } }
            }
            select name="provider" aria-label="Provider" {
                option value="" { "all providers" }
                @for p in &provider_choices { option value=(p) selected[f.get("provider") == p] { (p) } }
            }
            select id="range" name="range" aria-label="Time range" {
                @for (k, l) in RANGES { option value=(k) selected[f.range == *k] { (l) } }
            }
            span.custom-range data-show-when-range="custom" {
                input type="date" name="since" value=(f.get("since")) aria-label="From (UTC)";
                input type="date" name="until" value=(f.get("until")) aria-label="To (UTC, inclusive)";
            }
            button.btn.btn-primary type="submit" { "Apply" }
            a.btn.btn-ghost href="/console/usage" { "Reset" }
        }
        div.cards.kpis {
            section.card.stat { h2 { "Requests" } p.big data-testid="total-requests" { (h::thousands(requests)) } p.small.muted { (errors) " failed" } }
            section.card.stat { h2 { "Tokens" } p.big data-testid="total-tokens" { (h::thousands(prompt + completion)) } p.small.muted { (h::thousands(prompt)) " in · " (h::thousands(completion)) " out" } }
            section.card.stat { h2 { "Cost" } p.big data-testid="total-cost" { (h::usd(cost)) } p.small.muted { "USD at the configured prices" } }
            section.card.stat { h2 { "Latency" } p.big { "p50 " (pct(0.5)) } p.small.muted { "p95 " (pct(0.95)) " · p99 " (pct(0.99)) } }
        }
        @if requests == 0 {
            @if filtered_out {
                (h::empty("No requests in this range", "Nothing matches these filters. Widen the time range or clear a filter; requests appear here a moment after they are made.", Some(("Show all time", "/console/usage?range=all"))))
            } @else {
                (h::empty("No requests yet", "Create a key, point an SDK at the gateway (OPENAI_BASE_URL=http://HOST:8000/v1) and make a request: it shows up here with its tokens, cost and latency.", Some(("Create a key", "/console/keys/new"))))
            }
        } @else {
            @if samples.len() as i64 >= SAMPLE_CAP {
                (h::notice("info", &format!("The charts show the newest {} requests; totals and tables count all {}.", h::thousands(SAMPLE_CAP), h::thousands(requests))))
            }
            div.charts {
                (charts::bars("Requests", &labels, &tips, &[
                    Series { name: "succeeded", class: "s1", values: buckets.iter().map(|b| b.requests - b.errors).collect() },
                    Series { name: "failed", class: "s4", values: buckets.iter().map(|b| b.errors).collect() },
                ], h::compact, charts::exact))
                (charts::bars("Tokens", &labels, &tips, &[
                    Series { name: "prompt", class: "s1", values: buckets.iter().map(|b| b.prompt).collect() },
                    Series { name: "completion", class: "s2", values: buckets.iter().map(|b| b.completion).collect() },
                ], h::compact, charts::exact))
                (charts::bars("Cost (USD)", &labels, &tips, &[
                    Series { name: "cost", class: "s3", values: buckets.iter().map(|b| b.cost).collect() },
                ], usd_axis, h::usd))
                (charts::lines("Latency", &labels, &tips, &[
                    Series { name: "p50", class: "s1", values: buckets.iter().map(|b| charts::quantile(&b.latencies, 0.5).map_or(f64::NAN, |v| v as f64)).collect() },
                    Series { name: "p95", class: "s2", values: buckets.iter().map(|b| charts::quantile(&b.latencies, 0.95).map_or(f64::NAN, |v| v as f64)).collect() },
                ], ms_axis))
            }
            div.cards.two {
                section.card {
                    h2 { "Top keys" }
                    @let max = by_key.first().map(|g| g.cost_usd).unwrap_or(0.0);
                    table.compact {
                        thead { tr { th { "Key" } th.num { "Requests" } th.num.opt { "Tokens" } th.num { "Cost" } } }
                        tbody {
                            @for g in by_key.iter().take(10) {
                                @let id = group_name(g);
                                tr {
                                    td {
                                        a href=(f.link("/console/usage", &[("key_id", id.as_str())])) { (names.get(&id).cloned().unwrap_or_else(|| id.clone())) }
                                        (share_bar(g.cost_usd, max))
                                    }
                                    td.num { (h::thousands(g.requests)) }
                                    td.num.opt { (h::thousands(g.prompt_tokens + g.completion_tokens)) }
                                    td.num { (h::usd(g.cost_usd)) }
                                }
                            }
                        }
                    }
                }
                section.card {
                    h2 { "Top models" }
                    @let max = models.first().map(|g| g.cost_usd).unwrap_or(0.0);
                    table.compact {
                        thead { tr { th { "Model" } th.num { "Requests" } th.num.opt { "Tokens" } th.num { "Cost" } } }
                        tbody {
                            @for g in models.iter().take(10) {
                                @let m = group_name(g);
                                tr {
                                    td {
                                        a href=(f.link("/console/usage", &[("model", m.as_str())])) { (m) }
                                        (share_bar(g.cost_usd, max))
                                    }
                                    td.num { (h::thousands(g.requests)) }
                                    td.num.opt { (h::thousands(g.prompt_tokens + g.completion_tokens)) }
                                    td.num { (h::usd(g.cost_usd)) }
                                }
                            }
                        }
                    }
                }
            }
            section.card {
                h2 { "Request history" }
                div.table-wrap {
                    table.history {
                        thead { tr {
                            th { "Time (UTC)" } th { "Key" } th { "User" } th { "Model" } th { "Provider" } th { "Endpoint" } th { "Status" }
                            th.num { "Tokens in" } th.num { "Tokens out" } th.num { "Cost" } th.num { "Latency" }
                        } }
                        tbody {
                            @for r in &history {
                                tr data-request-id=(r.request_id) {
                                    td data-label="Time" { (h::when(r.created_at)) }
                                    td data-label="Key" { a href={ "/console/keys/" (r.key_id) } { (names.get(&r.key_id).cloned().unwrap_or_else(|| r.key_id.clone())) } }
                                    td data-label="User" { (r.user.as_deref().unwrap_or("—")) }
                                    td data-label="Model" { (r.model) }
                                    td data-label="Provider" { (r.provider) }
                                    td data-label="Endpoint" { (r.endpoint) }
                                    td data-label="Status" { span class=(if (200..400).contains(&r.status) { "status-ok" } else { "status-bad" }) { (r.status) } @if let Some(fl) = &r.flags { " " small.muted { (fl) } } }
                                    td.num data-label="Tokens in" { (h::thousands(r.prompt_tokens)) }
                                    td.num data-label="Tokens out" { (h::thousands(r.completion_tokens)) }
                                    td.num.cost data-label="Cost" { (format!("${:.6}", r.cost_usd)) }
                                    td.num data-label="Latency" { (r.latency_ms) " ms" }
                                }
                            }
                        }
                    }
                }
                nav.pager {
                    @if f.q.contains_key("cursor") { a.btn.btn-ghost href=(f.link("/console/usage", &[])) { "← Newest" } }
                    @if let Some(c) = &next { a.btn href=(f.link("/console/usage", &[("cursor", c.as_str())])) { "Older →" } }
                }
            }
            @if s.is_admin() {
                p.small.muted.api-hint { "The same numbers from the admin API: " code { "GET " (f.api_query("model")) } }
            }
        }
    };
    Ok(h::page(&s, "usage", "Usage", body).into_response())
}

pub async fn csv(
    s: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let mut q = q;
    q.remove("cursor");
    let f = parse_filter(&s, q, CSV_CAP)?;
    let rows = s.app().store.list_usage(&f.store).await?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let cols = [
        "request_id",
        "created_at",
        "key_id",
        "user",
        "team",
        "purpose",
        "provider",
        "model",
        "endpoint",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "flags",
    ];
    let write_err = |e: csv::Error| PageError::from(anyhow::anyhow!("csv: {e}"));
    w.write_record(cols).map_err(write_err)?;
    for r in rows {
        w.write_record([
            r.request_id,
            crate::util::rfc3339(r.created_at),
            r.key_id,
            r.user.unwrap_or_default(),
            r.team.unwrap_or_default(),
            r.purpose.unwrap_or_default(),
            r.provider,
            r.model,
            r.endpoint,
            r.status.to_string(),
            r.prompt_tokens.to_string(),
            r.completion_tokens.to_string(),
            format!("{}", r.cost_usd),
            r.latency_ms.to_string(),
            r.flags.unwrap_or_default(),
        ])
        .map_err(write_err)?;
    }
    let body = w
        .into_inner()
        .map_err(|e| PageError::from(anyhow::anyhow!("csv: {e}")))?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"bursar-usage.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smp(t: i64, lat: i64, ok: bool) -> Sample {
        Sample {
            created_at: t,
            latency_ms: lat,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: 0.5,
            ok,
        }
    }

    #[test]
    fn buckets_hourly_for_a_day_daily_for_a_month() {
        let start = 10 * DAY;
        let samples = vec![
            smp(start + 10, 100, true),
            smp(start + HOUR + 5, 300, false),
            smp(start + HOUR + 6, 200, true),
        ];
        let (size, b) = bucketize(&samples, start, start + DAY);
        assert_eq!(size, HOUR);
        assert_eq!(b.len(), 25);
        assert_eq!(b[0].requests, 1.0);
        assert_eq!(b[1].requests, 2.0);
        assert_eq!(b[1].errors, 1.0);
        assert_eq!(b[1].latencies, vec![200, 300]);
        assert_eq!(b[1].cost, 1.0);
        let (size, b) = bucketize(&samples, start, start + 30 * DAY);
        assert_eq!(size, DAY);
        assert_eq!(b[0].requests, 3.0);
        let (size, b) = bucketize(&[], 0, 3000 * DAY);
        assert!(size >= 7 * DAY && b.len() <= 130, "{size} {}", b.len());
        assert_eq!(bucket_label(start + HOUR, HOUR), "01:00");
        assert_eq!(bucket_label(start, DAY), "01-11");
        assert_eq!(usd_axis(0.025), "$0.025");
        assert_eq!(usd_axis(0.0001), "$0.0001");
        assert_eq!(usd_axis(20.0), "$20");
    }
}
