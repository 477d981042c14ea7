//! `bursar users …` and `bursar teams …`: owners of keys with their own limits.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{CliError, CliResult, Client, Format, print_object, print_rows};

#[derive(Subcommand)]
pub enum OwnersCmd {
    /// List them.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Create one.
    Create(OwnerArgs),
    /// Show one with its spend in the budget period.
    Show {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Change limits or budget (--clear FIELD removes one).
    Update {
        #[command(flatten)]
        fields: OwnerArgs,
        #[arg(long = "clear", value_name = "FIELD")]
        clear: Vec<String>,
    },
}

#[derive(Args)]
pub struct OwnerArgs {
    /// The user's or team's name.
    name: String,
    /// A user's team.
    #[arg(long)]
    team: Option<String>,
    #[arg(long)]
    email: Option<String>,
    #[arg(long)]
    rpm: Option<u64>,
    #[arg(long)]
    tpm: Option<u64>,
    #[arg(long)]
    max_concurrency: Option<u64>,
    #[arg(long)]
    max_tokens_per_request: Option<u64>,
    #[arg(long)]
    budget_usd: Option<f64>,
    /// daily, weekly, monthly (default) or total
    #[arg(long)]
    budget_period: Option<String>,
    /// Guardrails as JSON: '{"dlp":"redact","anomaly":"flag"}'
    #[arg(long)]
    guardrails: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

impl OwnerArgs {
    fn body(&self) -> Result<Map<String, Value>, CliError> {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        for (k, v) in [("team", &self.team), ("email", &self.email)] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        for (k, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrency", self.max_concurrency),
            ("max_tokens_per_request", self.max_tokens_per_request),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        if let Some(b) = super::budget_json(self.budget_usd, &self.budget_period)? {
            m.insert("budget".into(), b);
        }
        if let Some(g) = &self.guardrails {
            let v: Value = serde_json::from_str(g)
                .map_err(|e| CliError::Usage(format!("--guardrails: not JSON: {e}")))?;
            m.insert("guardrails".into(), v);
        }
        Ok(m)
    }
}

const COLUMNS: &[&str] = &[
    "name",
    "team",
    "email",
    "rpm",
    "tpm",
    "max_concurrency",
    "budget",
    "updated_at",
];

pub async fn run(c: &Client, kind: &str, cmd: OwnersCmd) -> CliResult {
    let base = format!("/admin/v1/{kind}s");
    match cmd {
        OwnersCmd::List { format } => {
            let v = c.admin_call(Method::GET, &base, &[], None).await?;
            let rows: Vec<Value> = v["data"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut r| {
                    if format != Format::Json
                        && let Some(o) = r.as_object_mut()
                        && let Some(b) = o.get("budget").filter(|b| b.is_object()).cloned()
                    {
                        o.insert(
                            "budget".into(),
                            json!(format!(
                                "${} {}",
                                b["usd"],
                                b["period"].as_str().unwrap_or("")
                            )),
                        );
                    }
                    r
                })
                .collect();
            print_rows(&rows, COLUMNS, format)?;
        }
        OwnersCmd::Create(a) => {
            let v = c
                .admin_call(Method::POST, &base, &[], Some(Value::Object(a.body()?)))
                .await?;
            print_object(&v, a.format);
        }
        OwnersCmd::Show { name, format } => {
            let v = c
                .admin_call(Method::GET, &format!("{base}/{name}"), &[], None)
                .await?;
            print_object(&v, format);
        }
        OwnersCmd::Update { fields, clear } => {
            let mut body = fields.body()?;
            body.remove("name");
            for f in clear {
                body.insert(f, Value::Null);
            }
            if body.is_empty() {
                return Err(CliError::Usage(format!(
                    "{kind}s update: give at least one field to change"
                )));
            }
            let v = c
                .admin_call(
                    Method::PATCH,
                    &format!("{base}/{}", fields.name),
                    &[],
                    Some(Value::Object(body)),
                )
                .await?;
            print_object(&v, fields.format);
        }
    }
    Ok(0)
}
