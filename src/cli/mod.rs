//! The command line: `serve` runs the gateway; every other command is a
//! client of a running gateway's HTTP API (`BURSAR_URL`, `BURSAR_ADMIN_KEY`).

mod console;
mod db;
mod env;
mod keys;
mod owners;
mod report;

use clap::{Parser, Subcommand};
use serde_json::Value;

/// Exit codes: 0 success, 1 the gateway refused the request, 2 bad usage.
pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser)]
#[command(
    name = "bursar",
    version,
    about = "LLM API key gateway: scoped virtual keys in front of real provider keys"
)]
pub struct Cli {
    /// The gateway to talk to (commands other than serve).
    #[arg(
        long,
        global = true,
        env = "BURSAR_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    url: String,
    /// Admin key for admin commands.
    #[arg(long, global = true, env = "BURSAR_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "BURSAR_CONFIG")]
        config: Option<String>,
        /// Address to listen on (overrides the config's `listen`).
        #[arg(long)]
        listen: Option<String>,
        /// Database URL: sqlite://FILE or postgres://… (overrides `database`).
        #[arg(long)]
        database: Option<String>,
    },
    /// Create, list, show, update, revoke and rotate virtual keys.
    #[command(subcommand)]
    Keys(Box<keys::KeysCmd>),
    /// Users: owners of keys, with their own limits and budgets.
    #[command(subcommand)]
    Users(owners::OwnersCmd),
    /// Teams: groups of users, with their own limits and budgets.
    #[command(subcommand)]
    Teams(owners::OwnersCmd),
    /// Database schema and moving an installation (SQLite → PostgreSQL).
    #[command(subcommand)]
    Db(db::DbCmd),
    /// Usage and cost, per request or grouped.
    Usage(report::UsageArgs),
    /// The audit log; `bursar audit verify` checks its hash chain.
    Audit(report::AuditArgs),
    /// Print the variables that point every supported SDK at this gateway (and write bursar.env).
    Env(env::EnvArgs),
    /// Run a command with those variables set: bursar exec --key K -- CMD ...
    Exec(env::ExecArgs),
    /// The models a key (BURSAR_API_KEY) can reach, with prices in USD per million tokens.
    Models(env::WhoamiArgs),
    /// Show the scope, limits, budget and models of a key (BURSAR_API_KEY).
    Whoami(env::WhoamiArgs),
    /// Accounts of the web console (/console): create (with an invite link), list, invite, update.
    #[command(subcommand)]
    ConsoleUser(console::ConsoleUserCmd),
}

pub fn main() -> i32 {
    // One TLS crypto provider for every HTTP client (ring: no C toolchain surprises).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bursar: cannot start the runtime: {e}");
            return EXIT_REFUSED;
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> i32 {
    let client = Client {
        base: cli.url.trim_end_matches('/').to_string(),
        admin_key: cli.admin_key.clone(),
        http: reqwest::Client::new(),
    };
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            database,
        } => return serve(config, listen, database).await,
        Command::Keys(cmd) => keys::run(&client, *cmd).await,
        Command::Users(cmd) => owners::run(&client, "user", cmd).await,
        Command::Teams(cmd) => owners::run(&client, "team", cmd).await,
        Command::Db(cmd) => db::run(cmd).await,
        Command::Usage(a) => report::usage(&client, a).await,
        Command::Audit(a) => report::audit(&client, a).await,
        Command::Env(a) => env::env(&client, a),
        Command::Exec(a) => env::exec(&client, a).await,
        Command::Whoami(a) => env::whoami(&client, a).await,
        Command::Models(a) => env::models(&client, a).await,
        Command::ConsoleUser(cmd) => console::run(&client, cmd).await,
    };
    match result {
        Ok(code) => code,
        Err(CliError::Usage(m)) => {
            eprintln!("bursar: {m}");
            EXIT_USAGE
        }
        Err(CliError::Refused(m)) => {
            eprintln!("bursar: {m}");
            EXIT_REFUSED
        }
    }
}

async fn serve(config: Option<String>, listen: Option<String>, database: Option<String>) -> i32 {
    let mut cfg = match crate::config::Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bursar: {e:#}");
            return EXIT_USAGE;
        }
    };
    init_tracing(cfg.log_format.as_deref() == Some("json"));
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(d) = database {
        cfg.database = if d.contains("://") || d.starts_with("sqlite:") {
            d
        } else {
            format!("sqlite://{d}")
        };
    }
    if let Err(e) = cfg.validate() {
        eprintln!("bursar: {e:#}");
        return EXIT_USAGE;
    }
    match crate::gateway::serve(cfg).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bursar: {e:#}");
            EXIT_REFUSED
        }
    }
}

fn init_tracing(json_from_config: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("BURSAR_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = json_from_config || std::env::var("BURSAR_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

pub enum CliError {
    Usage(String),
    Refused(String),
}

pub type CliResult = Result<i32, CliError>;

pub struct Client {
    pub base: String,
    pub admin_key: Option<String>,
    pub http: reqwest::Client,
}

impl Client {
    fn admin(&self) -> Result<&str, CliError> {
        self.admin_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                CliError::Usage("set BURSAR_ADMIN_KEY (or --admin-key) to an admin key".into())
            })
    }

    /// Call the gateway; a non-2xx answer becomes `Refused` with its message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{}", self.base, path);
        let mut rb = self
            .http
            .request(method, &url)
            .bearer_auth(bearer)
            .query(query);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.map_err(|e| {
            CliError::Refused(format!("cannot reach the gateway at {}: {e}", self.base))
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if !status.is_success() {
            let msg = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or(text);
            return Err(CliError::Refused(format!("{} ({})", msg, status.as_u16())));
        }
        Ok(v)
    }

    pub async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let key = self.admin()?.to_string();
        self.call(method, path, &key, query, body).await
    }
}

/// `--budget-usd` / `--budget-period` as the API's `budget` object.
fn budget_json(usd: Option<f64>, period: &Option<String>) -> Result<Option<Value>, CliError> {
    if usd.is_none() && period.is_none() {
        return Ok(None);
    }
    let usd = usd.ok_or_else(|| CliError::Usage("--budget-period needs --budget-usd".into()))?;
    let period = period.clone().unwrap_or_else(|| "monthly".into());
    Ok(Some(serde_json::json!({"usd": usd, "period": period})))
}

/// Output formats for people and scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.6}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Print rows (JSON objects) as a table, JSON or CSV.
pub fn print_rows(rows: &[Value], columns: &[&str], format: Format) -> Result<(), CliError> {
    match format {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&Value::Array(rows.to_vec())).unwrap_or_default()
            );
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            w.write_record(columns)
                .map_err(|e| CliError::Refused(e.to_string()))?;
            for r in rows {
                w.write_record(
                    columns
                        .iter()
                        .map(|c| cell(r.get(*c).unwrap_or(&Value::Null))),
                )
                .map_err(|e| CliError::Refused(e.to_string()))?;
            }
            w.flush().map_err(|e| CliError::Refused(e.to_string()))?;
        }
        Format::Table => {
            if rows.is_empty() {
                println!("(nothing)");
                return Ok(());
            }
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
            t.set_header(columns.to_vec());
            for r in rows {
                t.add_row(
                    columns
                        .iter()
                        .map(|c| cell(r.get(*c).unwrap_or(&Value::Null))),
                );
            }
            println!("{t}");
        }
    }
    Ok(())
}

/// Print one object as `field: value` lines or JSON.
pub fn print_object(v: &Value, format: Format) {
    if format == Format::Table
        && let Some(o) = v.as_object()
    {
        let width = o.keys().map(String::len).max().unwrap_or(0);
        for (k, val) in o {
            if val.is_null() {
                continue;
            }
            let shown = match val {
                Value::Object(_) => val.to_string(),
                other => cell(other),
            };
            println!("{k:width$}  {shown}");
        }
        return;
    }
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
