//! `bursar db migrate` and `bursar db copy`: schema and moving an installation.

use clap::Subcommand;

use super::{CliError, CliResult};
use crate::store::{SqlStore, Store, redact};

#[derive(Subcommand)]
pub enum DbCmd {
    /// Create or update the schema of a database.
    Migrate {
        /// sqlite://FILE or postgres://… (default: the config's `database`).
        #[arg(long, env = "BURSAR_DATABASE")]
        database: Option<String>,
    },
    /// Copy every row of one database into another (e.g. SQLite → PostgreSQL);
    /// rows already in the target are kept, so a copy can be re-run.
    Copy {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
}

fn normalize(url: &str) -> String {
    if url.contains("://") || url.starts_with("sqlite:") {
        url.to_string()
    } else {
        format!("sqlite://{url}")
    }
}

async fn open(url: &str) -> Result<SqlStore, CliError> {
    let store = SqlStore::connect(&normalize(url))
        .await
        .map_err(|e| CliError::Refused(format!("{e:#}")))?;
    store
        .migrate()
        .await
        .map_err(|e| CliError::Refused(format!("{}: {e:#}", redact(url))))?;
    Ok(store)
}

pub async fn run(cmd: DbCmd) -> CliResult {
    match cmd {
        DbCmd::Migrate { database } => {
            let url = database.unwrap_or_else(|| "sqlite://bursar.db".into());
            open(&url).await?;
            println!("{}: schema up to date", redact(&url));
        }
        DbCmd::Copy { from, to } => {
            if normalize(&from) == normalize(&to) {
                return Err(CliError::Usage(
                    "--from and --to are the same database".into(),
                ));
            }
            let src = open(&from).await?;
            let dst = open(&to).await?;
            let copied = src
                .copy_into(&dst)
                .await
                .map_err(|e| CliError::Refused(format!("copy failed: {e:#}")))?;
            let have = src
                .table_counts()
                .await
                .map_err(|e| CliError::Refused(e.to_string()))?;
            let now = dst
                .table_counts()
                .await
                .map_err(|e| CliError::Refused(e.to_string()))?;
            let mut short = Vec::new();
            for ((table, n), ((_, c), (_, m))) in have.iter().zip(copied.iter().zip(now.iter())) {
                println!("{table:12} {n:>10} rows, {c:>10} copied now, {m:>10} in the target");
                if m < n {
                    short.push(table.clone());
                }
            }
            if !short.is_empty() {
                return Err(CliError::Refused(format!(
                    "the target has fewer rows than the source in: {}",
                    short.join(", ")
                )));
            }
            println!("copied {} → {}", redact(&from), redact(&to));
        }
    }
    Ok(0)
}
