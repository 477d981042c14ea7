//! `bursar console-user …`: accounts of the web console (through the admin
//! API, like every other command). Without a password, `create` prints a
//! one-time invite link.

use std::io::Read;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{CliError, CliResult, Client, Format, print_object, print_rows};

#[derive(Subcommand)]
pub enum ConsoleUserCmd {
    /// Create an account; prints an invite link unless --password-stdin is given.
    Create {
        /// The account name; it owns the keys whose user is this name.
        #[arg(long)]
        name: String,
        /// admin (everything), member (own keys and usage) or viewer (read-only usage).
        #[arg(long, default_value = "member")]
        role: String,
        /// The team whose limits bound the member's keys.
        #[arg(long)]
        team: Option<String>,
        /// Read the password from standard input instead of making an invite link.
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List accounts.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Make a new invite link for an account (replaces an unused one).
    Invite { name: String },
    /// Change an account's role, team, status or password.
    Update {
        name: String,
        #[arg(long)]
        role: Option<String>,
        /// A team name, or "" to remove it.
        #[arg(long)]
        team: Option<String>,
        /// active or disabled (disabling signs the account out everywhere).
        #[arg(long)]
        status: Option<String>,
        /// Read a new password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

fn read_password() -> Result<String, CliError> {
    let mut s = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut s)
        .map_err(|e| CliError::Usage(format!("--password-stdin: cannot read stdin: {e}")))?;
    let p = s.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        return Err(CliError::Usage("--password-stdin: stdin was empty".into()));
    }
    Ok(p)
}

fn print_invite(c: &Client, v: &Value) {
    if let Some(path) = v.get("invite_path").and_then(Value::as_str) {
        println!(
            "Invite link (works once, until {}; shown only now):\n\n    {}{}\n",
            v.get("invite_expires_at")
                .and_then(Value::as_str)
                .unwrap_or("7 days from now"),
            c.base,
            path
        );
    }
}

pub async fn run(c: &Client, cmd: ConsoleUserCmd) -> CliResult {
    const BASE: &str = "/admin/v1/console-users";
    match cmd {
        ConsoleUserCmd::Create {
            name,
            role,
            team,
            password_stdin,
            format,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("role".into(), json!(role));
            if let Some(t) = team {
                body.insert("team".into(), json!(t));
            }
            if password_stdin {
                body.insert("password".into(), json!(read_password()?));
            }
            let v = c
                .admin_call(Method::POST, BASE, &[], Some(Value::Object(body)))
                .await?;
            if format == Format::Json {
                let mut v = v.clone();
                let path = v
                    .get("invite_path")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if let (Some(o), Some(p)) = (v.as_object_mut(), path) {
                    o.insert("invite_url".into(), json!(format!("{}{p}", c.base)));
                }
                print_object(&v, format);
            } else {
                println!(
                    "created console account {} ({}{})",
                    name,
                    v["role"].as_str().unwrap_or(""),
                    v["team"]
                        .as_str()
                        .map(|t| format!(", team {t}"))
                        .unwrap_or_default()
                );
                print_invite(c, &v);
            }
        }
        ConsoleUserCmd::List { format } => {
            let v = c.admin_call(Method::GET, BASE, &[], None).await?;
            let rows = v["data"].as_array().cloned().unwrap_or_default();
            print_rows(
                &rows,
                &[
                    "name",
                    "role",
                    "team",
                    "status",
                    "password_set",
                    "last_login_at",
                ],
                format,
            )?;
        }
        ConsoleUserCmd::Invite { name } => {
            let v = c
                .admin_call(Method::POST, &format!("{BASE}/{name}/invite"), &[], None)
                .await?;
            print_invite(c, &v);
        }
        ConsoleUserCmd::Update {
            name,
            role,
            team,
            status,
            password_stdin,
            format,
        } => {
            let mut body = Map::new();
            if let Some(r) = role {
                body.insert("role".into(), json!(r));
            }
            if let Some(t) = team {
                body.insert(
                    "team".into(),
                    if t.is_empty() { Value::Null } else { json!(t) },
                );
            }
            if let Some(s) = status {
                body.insert("status".into(), json!(s));
            }
            if password_stdin {
                body.insert("password".into(), json!(read_password()?));
            }
            if body.is_empty() {
                return Err(CliError::Usage(
                    "console-user update: give at least one of --role, --team, --status, --password-stdin".into(),
                ));
            }
            let v = c
                .admin_call(
                    Method::PATCH,
                    &format!("{BASE}/{name}"),
                    &[],
                    Some(Value::Object(body)),
                )
                .await?;
            print_object(&v, format);
        }
    }
    Ok(0)
}
