//! `bursar keys …`

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{CliError, CliResult, Client, Format, print_object, print_rows};

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a key; its secret is printed once.
    Create(KeyArgs),
    /// Mint a child of your own key (BURSAR_API_KEY), never wider than it: no admin needed.
    Derive {
        #[command(flatten)]
        fields: KeyArgs,
        /// The parent key (default: BURSAR_API_KEY).
        #[arg(long = "key", env = "BURSAR_API_KEY", hide_env_values = true)]
        parent: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        team: Option<String>,
        /// active, revoked or expired
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Follow next_cursor until every key is listed.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one key with its spend and limits.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Change a key's scope, limits, budget or metadata.
    Update {
        id: String,
        #[command(flatten)]
        fields: KeyArgs,
        /// Clear a field (repeatable): models, endpoints, rpm, budget, …
        #[arg(long = "clear", value_name = "FIELD")]
        clear: Vec<String>,
    },
    /// Revoke a key (and its children) now.
    Revoke {
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Give a key a new secret; --grace keeps the old one valid for a while.
    Rotate {
        id: String,
        /// How long the old secret stays valid: 0, 90s, 10m, 1h, …
        #[arg(long, default_value = "0s")]
        grace: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Args, Default)]
pub struct KeyArgs {
    /// A name for the key (required on create).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    team: Option<String>,
    #[arg(long)]
    purpose: Option<String>,
    #[arg(long)]
    environment: Option<String>,
    /// Allowed models, comma-separated globs: 'gpt-4o-mini,claude-*'
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Allowed endpoints: chat,completions,embeddings,responses,messages,…
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// Allowed provider entries: openai,anthropic,echo,…
    #[arg(long, value_delimiter = ',')]
    providers: Option<Vec<String>>,
    /// Allowed client addresses (CIDRs).
    #[arg(long = "ip-allow", value_delimiter = ',')]
    ip_allow: Option<Vec<String>>,
    /// Lifetime from now: 30d, 12h, 90m…
    #[arg(long)]
    ttl: Option<String>,
    /// Expiry time, RFC 3339: 2027-01-01T00:00:00Z
    #[arg(long)]
    expires_at: Option<String>,
    #[arg(long)]
    max_tokens_per_request: Option<u64>,
    #[arg(long)]
    rpm: Option<u64>,
    #[arg(long)]
    tpm: Option<u64>,
    #[arg(long)]
    max_concurrency: Option<u64>,
    /// Budget in USD.
    #[arg(long)]
    budget_usd: Option<f64>,
    /// daily, weekly, monthly (default) or total
    #[arg(long)]
    budget_period: Option<String>,
    /// Metadata entries, repeatable: --metadata cost_center=4711
    #[arg(long, value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Option<Format>,
}

impl KeyArgs {
    fn body(&self) -> Result<Map<String, Value>, CliError> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        for (k, v) in [
            ("name", &self.name),
            ("user", &self.user),
            ("team", &self.team),
            ("purpose", &self.purpose),
            ("environment", &self.environment),
            ("expires_at", &self.expires_at),
        ] {
            if let Some(v) = v {
                put(k, json!(v));
            }
        }
        for (k, v) in [
            ("models", &self.models),
            ("endpoints", &self.endpoints),
            ("providers", &self.providers),
            ("ip_allow", &self.ip_allow),
        ] {
            if let Some(v) = v {
                put(k, json!(v));
            }
        }
        for (k, v) in [
            ("max_tokens_per_request", self.max_tokens_per_request),
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrency", self.max_concurrency),
        ] {
            if let Some(v) = v {
                put(k, json!(v));
            }
        }
        if let Some(ttl) = &self.ttl {
            let d = humantime::parse_duration(ttl)
                .map_err(|e| CliError::Usage(format!("--ttl '{ttl}': {e}")))?;
            put("ttl_seconds", json!(d.as_secs()));
        }
        if let Some(b) = super::budget_json(self.budget_usd, &self.budget_period)? {
            put("budget", b);
        }
        if !self.metadata.is_empty() {
            let mut md = Map::new();
            for kv in &self.metadata {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("--metadata '{kv}': use KEY=VALUE")))?;
                md.insert(k.to_string(), json!(v));
            }
            put("metadata", Value::Object(md));
        }
        Ok(m)
    }
}

const LIST_COLUMNS: &[&str] = &[
    "id",
    "name",
    "prefix",
    "status",
    "user",
    "team",
    "purpose",
    "models",
    "expires_at",
    "spend_usd",
];

pub async fn run(c: &Client, cmd: KeysCmd) -> CliResult {
    match cmd {
        KeysCmd::Create(args) => {
            if args.name.is_none() {
                return Err(CliError::Usage("keys create needs --name".into()));
            }
            let format = args.format.unwrap_or(Format::Table);
            let v = c
                .admin_call(
                    Method::POST,
                    "/admin/v1/keys",
                    &[],
                    Some(Value::Object(args.body()?)),
                )
                .await?;
            if format == Format::Table {
                println!(
                    "Created key {} ({}).",
                    v["id"].as_str().unwrap_or(""),
                    v["name"].as_str().unwrap_or("")
                );
                println!(
                    "Secret (shown only now, store it safely):\n\n    {}\n",
                    v["key"].as_str().unwrap_or("")
                );
                let mut shown = v.clone();
                if let Some(o) = shown.as_object_mut() {
                    o.remove("key");
                }
                print_object(&shown, Format::Table);
            } else {
                print_object(&v, Format::Json);
            }
            Ok(0)
        }
        KeysCmd::Derive { fields, parent } => {
            let parent = parent.filter(|k| !k.is_empty()).ok_or_else(|| {
                CliError::Usage(
                    "keys derive needs the parent key in BURSAR_API_KEY or --key".into(),
                )
            })?;
            if fields.name.is_none() {
                return Err(CliError::Usage("keys derive needs --name".into()));
            }
            let format = fields.format.unwrap_or(Format::Table);
            let v = c
                .call(
                    Method::POST,
                    "/bursar/v1/keys",
                    &parent,
                    &[],
                    Some(Value::Object(fields.body()?)),
                )
                .await?;
            if format == Format::Table {
                println!(
                    "Created child key {} of {}.",
                    v["id"].as_str().unwrap_or(""),
                    v["parent_id"].as_str().unwrap_or("")
                );
                println!(
                    "Secret (shown only now):\n\n    {}\n",
                    v["key"].as_str().unwrap_or("")
                );
            } else {
                print_object(&v, format);
            }
            Ok(0)
        }
        KeysCmd::List {
            user,
            team,
            status,
            limit,
            all,
            format,
        } => {
            let mut rows = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = vec![("limit", limit.to_string())];
                for (k, v) in [
                    ("user", &user),
                    ("team", &team),
                    ("status", &status),
                    ("cursor", &cursor),
                ] {
                    if let Some(v) = v {
                        q.push((k, v.clone()));
                    }
                }
                let v = c
                    .admin_call(Method::GET, "/admin/v1/keys", &q, None)
                    .await?;
                rows.extend(v["data"].as_array().cloned().unwrap_or_default());
                cursor = v["next_cursor"].as_str().map(str::to_string);
                if !all || cursor.is_none() {
                    break;
                }
            }
            print_rows(&rows, LIST_COLUMNS, format)?;
            if let Some(cur) = cursor.filter(|_| format == Format::Table) {
                eprintln!("(more: --all, or the API with cursor={cur})");
            }
            Ok(0)
        }
        KeysCmd::Show { id, format } => {
            let v = c
                .admin_call(Method::GET, &format!("/admin/v1/keys/{id}"), &[], None)
                .await?;
            print_object(&v, format);
            Ok(0)
        }
        KeysCmd::Update { id, fields, clear } => {
            let format = fields.format.unwrap_or(Format::Table);
            let mut body = fields.body()?;
            for f in clear {
                body.insert(f, Value::Null);
            }
            if body.is_empty() {
                return Err(CliError::Usage(
                    "keys update: give at least one field to change".into(),
                ));
            }
            let v = c
                .admin_call(
                    Method::PATCH,
                    &format!("/admin/v1/keys/{id}"),
                    &[],
                    Some(Value::Object(body)),
                )
                .await?;
            print_object(&v, format);
            Ok(0)
        }
        KeysCmd::Revoke { id, format } => {
            let v = c
                .admin_call(
                    Method::POST,
                    &format!("/admin/v1/keys/{id}/revoke"),
                    &[],
                    None,
                )
                .await?;
            if format == Format::Table {
                println!(
                    "Revoked {} ({} key(s) revoked now).",
                    id,
                    v["revoked_ids"].as_array().map(Vec::len).unwrap_or(0)
                );
            } else {
                print_object(&v, format);
            }
            Ok(0)
        }
        KeysCmd::Rotate { id, grace, format } => {
            let g = humantime::parse_duration(&grace)
                .map_err(|e| CliError::Usage(format!("--grace '{grace}': {e}")))?;
            let v = c
                .admin_call(
                    Method::POST,
                    &format!("/admin/v1/keys/{id}/rotate"),
                    &[],
                    Some(json!({"grace_seconds": g.as_secs()})),
                )
                .await?;
            if format == Format::Table {
                println!(
                    "New secret for {id} (shown only now):\n\n    {}\n",
                    v["key"].as_str().unwrap_or("")
                );
                if g.as_secs() > 0 {
                    println!(
                        "The old secret stays valid until {}.",
                        v["rotation_grace_until"].as_str().unwrap_or("?")
                    );
                }
            } else {
                print_object(&v, format);
            }
            Ok(0)
        }
    }
}
