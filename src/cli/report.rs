//! `bursar usage` and `bursar audit`.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::{CliResult, Client, Format, print_object, print_rows};

#[derive(Args)]
pub struct UsageArgs {
    /// Only this key id.
    #[arg(long = "key")]
    key_id: Option<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    team: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    provider: Option<String>,
    /// Start: a span back from now (7d, 24h) or a time (RFC 3339 / YYYY-MM-DD).
    #[arg(long, default_value = "7d")]
    since: String,
    #[arg(long)]
    until: Option<String>,
    /// Aggregate by columns: model,key_id,user,team,day,provider,purpose,endpoint
    #[arg(long = "group-by")]
    group_by: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

const ROW_COLUMNS: &[&str] = &[
    "created_at",
    "request_id",
    "key_id",
    "user",
    "team",
    "provider",
    "model",
    "endpoint",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
];

pub async fn usage(c: &Client, a: UsageArgs) -> CliResult {
    let mut q = vec![("since", a.since.clone()), ("limit", a.limit.to_string())];
    for (k, v) in [
        ("key_id", &a.key_id),
        ("user", &a.user),
        ("team", &a.team),
        ("model", &a.model),
        ("provider", &a.provider),
        ("until", &a.until),
        ("group_by", &a.group_by),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    let v = c
        .admin_call(Method::GET, "/admin/v1/usage", &q, None)
        .await?;
    let rows = v["data"].as_array().cloned().unwrap_or_default();
    match &a.group_by {
        Some(g) => {
            let mut cols: Vec<&str> = g
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            cols.extend(["requests", "prompt_tokens", "completion_tokens", "cost_usd"]);
            print_rows(&rows, &cols, a.format)?;
        }
        None => print_rows(&rows, ROW_COLUMNS, a.format)?,
    }
    if a.format == Format::Table && !rows.is_empty() && a.group_by.is_none() {
        let total: f64 = rows.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
        println!("{} request(s), ${total:.6}", rows.len());
    }
    Ok(0)
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    cmd: Option<AuditCmd>,
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the audit log's hash chain; exit 1 when it is broken.
    Verify {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

pub async fn audit(c: &Client, a: AuditArgs) -> CliResult {
    if let Some(AuditCmd::Verify { format }) = a.cmd {
        let v = c
            .admin_call(Method::GET, "/admin/v1/audit/verify", &[], None)
            .await?;
        let ok = v["ok"].as_bool().unwrap_or(false);
        if format == Format::Table {
            if ok {
                println!("audit chain intact: {} entries verified", v["checked"]);
            } else {
                println!(
                    "audit chain BROKEN at entry {}: {}",
                    v["first_bad_seq"],
                    v["reason"].as_str().unwrap_or("?")
                );
            }
        } else {
            print_object(&v, format);
        }
        return Ok(if ok { 0 } else { super::EXIT_REFUSED });
    }
    let mut q = vec![("limit", a.limit.to_string())];
    for (k, v) in [("since", &a.since), ("until", &a.until)] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    let v = c
        .admin_call(Method::GET, "/admin/v1/audit", &q, None)
        .await?;
    let mut rows = v["data"].as_array().cloned().unwrap_or_default();
    if a.format != Format::Json {
        for r in &mut rows {
            if let Some(o) = r.as_object_mut() {
                let d = o.get("detail").map(Value::to_string).unwrap_or_default();
                o.insert("detail".into(), Value::String(d));
            }
        }
    }
    print_rows(
        &rows,
        &["seq", "ts", "actor", "action", "target", "ip", "detail"],
        a.format,
    )?;
    Ok(0)
}
