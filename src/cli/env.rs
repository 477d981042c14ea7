//! `bursar env`, `bursar exec`, `bursar whoami`: pointing SDKs at the gateway.

use std::io::Write;

use clap::{Args, ValueEnum};
use reqwest::Method;

use super::{CliError, CliResult, Client, Format, print_object};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShellKind {
    Bash,
    Fish,
    Powershell,
    Dotenv,
}

#[derive(Args)]
pub struct EnvArgs {
    /// The virtual key to hand to the SDKs (default: BURSAR_API_KEY).
    #[arg(long, env = "BURSAR_API_KEY", hide_env_values = true)]
    key: Option<String>,
    #[arg(long, value_enum, default_value = "bash")]
    shell: ShellKind,
    /// Do not write bursar.env.
    #[arg(long)]
    no_file: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    #[arg(long, env = "BURSAR_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The command and its arguments (after --).
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct WhoamiArgs {
    #[arg(long, env = "BURSAR_API_KEY", hide_env_values = true)]
    key: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// The variables every supported SDK reads for its base URL and key (as
/// read by the SDKs' own source): `openai` OPENAI_BASE_URL/OPENAI_API_KEY;
/// `openai.AzureOpenAI` AZURE_OPENAI_ENDPOINT/AZURE_OPENAI_API_KEY;
/// `anthropic` ANTHROPIC_BASE_URL/ANTHROPIC_API_KEY; `cohere` CO_API_URL/
/// CO_API_KEY; `google-genai` GOOGLE_GEMINI_BASE_URL (and
/// GOOGLE_VERTEX_BASE_URL)/GEMINI_API_KEY; `huggingface_hub` HF_TOKEN (its
/// InferenceClient takes the gateway as `base_url=`; HF_ENDPOINT would move
/// Hub downloads too, so it is not set); `mistralai` MISTRAL_API_KEY (the
/// server is `server_url=`, exported as MISTRAL_SERVER_URL for scripts).
pub fn variables(base: &str, key: &str) -> Vec<(&'static str, String)> {
    let k = || key.to_string();
    vec![
        ("BURSAR_URL", base.to_string()),
        ("BURSAR_API_KEY", k()),
        ("OPENAI_BASE_URL", format!("{base}/v1")),
        ("OPENAI_API_KEY", k()),
        ("ANTHROPIC_BASE_URL", format!("{base}/anthropic")),
        ("ANTHROPIC_API_KEY", k()),
        ("AZURE_OPENAI_ENDPOINT", format!("{base}/azure")),
        ("AZURE_OPENAI_API_KEY", k()),
        ("CO_API_URL", format!("{base}/cohere")),
        ("CO_API_KEY", k()),
        ("GOOGLE_GEMINI_BASE_URL", format!("{base}/gemini")),
        ("GEMINI_API_KEY", k()),
        ("GOOGLE_API_KEY", k()),
        ("GOOGLE_VERTEX_BASE_URL", format!("{base}/vertex")),
        ("HF_TOKEN", k()),
        ("HF_INFERENCE_ENDPOINT", format!("{base}/huggingface")),
        ("MISTRAL_API_KEY", k()),
        ("MISTRAL_SERVER_URL", format!("{base}/mistral")),
        ("PERPLEXITY_BASE_URL", format!("{base}/perplexity")),
        ("PERPLEXITYAI_API_KEY", k()),
        ("PPLX_API_KEY", k()),
        ("GROQ_BASE_URL", format!("{base}/groq")),
        ("GROQ_API_KEY", k()),
        ("VECTARA_BASE_URL", format!("{base}/vectara")),
        ("VECTARA_API_KEY", k()),
    ]
}

fn quote_sh(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

pub fn render(vars: &[(&str, String)], shell: ShellKind) -> String {
    vars.iter()
        .map(|(k, v)| match shell {
            ShellKind::Bash => format!("export {k}={}\n", quote_sh(v)),
            ShellKind::Fish => format!("set -gx {k} {}\n", quote_sh(v)),
            ShellKind::Powershell => format!("$env:{k} = '{}'\n", v.replace('\'', "''")),
            ShellKind::Dotenv => format!("{k}={v}\n"),
        })
        .collect()
}

fn need_key(key: Option<String>) -> Result<String, CliError> {
    key.filter(|k| !k.is_empty())
        .ok_or_else(|| CliError::Usage("give a virtual key with --key or BURSAR_API_KEY".into()))
}

pub fn env(c: &Client, a: EnvArgs) -> CliResult {
    let key = need_key(a.key)?;
    let vars = variables(&c.base, &key);
    print!("{}", render(&vars, a.shell));
    if !a.no_file {
        write_env_file(&vars)
            .map_err(|e| CliError::Refused(format!("cannot write bursar.env: {e}")))?;
        eprintln!("bursar: wrote bursar.env");
    }
    Ok(0)
}

fn write_env_file(vars: &[(&str, String)]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open("bursar.env")?;
    f.write_all(render(vars, ShellKind::Dotenv).as_bytes())
}

pub async fn exec(c: &Client, a: ExecArgs) -> CliResult {
    let key = need_key(a.key)?;
    let (prog, args) = a
        .command
        .split_first()
        .ok_or_else(|| CliError::Usage("exec needs a command after --".into()))?;
    let status = tokio::process::Command::new(prog)
        .args(args)
        .envs(variables(&c.base, &key))
        .status()
        .await
        .map_err(|e| CliError::Refused(format!("cannot run {prog}: {e}")))?;
    Ok(status.code().unwrap_or(super::EXIT_REFUSED))
}

pub async fn whoami(c: &Client, a: WhoamiArgs) -> CliResult {
    let key = need_key(a.key)?;
    let v = c
        .call(Method::GET, "/bursar/v1/whoami", &key, &[], None)
        .await?;
    if a.format == Format::Table {
        println!(
            "{} ({}), key {}",
            v["name"].as_str().unwrap_or(""),
            v["id"].as_str().unwrap_or(""),
            v["prefix"].as_str().unwrap_or("")
        );
        for f in ["user", "team", "purpose", "environment", "expires_at"] {
            if let Some(s) = v[f].as_str() {
                println!("  {f:12} {s}");
            }
        }
        println!("  scope        {}", v["scope"]);
        println!("  limits       {}", v["limits"]);
        if !v["budget"].is_null() {
            println!("  budget       {}", v["budget"]);
        }
        println!("  spend_usd    {}", v["spend_usd"]);
        let models: Vec<&str> = v["models"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        println!("  models       {}", models.join(", "));
    } else {
        print_object(&v, a.format);
    }
    Ok(0)
}

/// `bursar models`: the models a key can reach, with their prices.
pub async fn models(c: &Client, a: WhoamiArgs) -> CliResult {
    let key = need_key(a.key)?;
    let v = c
        .call(Method::GET, "/bursar/v1/whoami", &key, &[], None)
        .await?;
    let rows: Vec<serde_json::Value> = v["models"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "model": m["id"],
                "provider": m["provider"],
                "input_per_mtok": m["price"]["input_per_mtok"],
                "output_per_mtok": m["price"]["output_per_mtok"],
            })
        })
        .collect();
    super::print_rows(
        &rows,
        &["model", "provider", "input_per_mtok", "output_per_mtok"],
        a.format,
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_shell() {
        let vars = variables("http://h:1", "bsr_x'y");
        assert!(render(&vars, ShellKind::Bash).contains("export OPENAI_BASE_URL='http://h:1/v1'"));
        assert!(render(&vars, ShellKind::Bash).contains("export OPENAI_API_KEY='bsr_x'\\''y'"));
        assert!(
            render(&vars, ShellKind::Fish)
                .contains("set -gx ANTHROPIC_BASE_URL 'http://h:1/anthropic'")
        );
        assert!(render(&vars, ShellKind::Powershell).contains("$env:OPENAI_API_KEY = 'bsr_x''y'"));
        assert!(render(&vars, ShellKind::Dotenv).contains("OPENAI_BASE_URL=http://h:1/v1\n"));
        let d = render(&vars, ShellKind::Dotenv);
        for line in [
            "CO_API_URL=http://h:1/cohere\n",
            "GOOGLE_GEMINI_BASE_URL=http://h:1/gemini\n",
            "AZURE_OPENAI_ENDPOINT=http://h:1/azure\n",
            "HF_TOKEN=bsr_x'y\n",
            "MISTRAL_API_KEY=bsr_x'y\n",
        ] {
            assert!(d.contains(line), "{line}");
        }
    }
}
