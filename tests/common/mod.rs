//! Shared helpers for the integration tests: a real `bursar serve` process
//! against the in-process mock upstream, in its own temp dir and port.
//!
//! Every test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mock_upstream::{MockUpstream, RecordedRequest};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The first admin credential (`BURSAR_ADMIN_KEY`).
pub const ADMIN_KEY: &str = "bsra_integration_test_admin_key_0001";
/// Real provider keys the gateway holds; none may ever reach a client or a log.
pub const OPENAI_KEY: &str = "sk-real-openai-secret-123456";
pub const ANTHROPIC_KEY: &str = "sk-ant-real-secret-123456";
/// The mock refuses requests without a credential, so the on-prem entry gets
/// one too (a keyless upstream would get the mock's own 401).
pub const ONPREM_KEY: &str = "sk-onprem-real-secret-123456";
pub const REAL_KEYS: [&str; 3] = [OPENAI_KEY, ANTHROPIC_KEY, ONPREM_KEY];

/// How long to wait for something asynchronous (usage rows, audit events,
/// start-up, exit) before failing. Generous: only reached on failure.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A pause after start-up that once hid a key-cache reload race (fixed:
/// reloads are serialized; `keys::key_cache_never_goes_stale` guards it).
pub const STARTUP_SETTLE: Duration = Duration::ZERO;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bursar")
}

/// The standard configuration pointing every provider at the mock.
pub fn standard_config(mock_url: &str) -> String {
    format!(
        r#"[providers.openai]
base_url = "{mock_url}/v1"
api_key = "{OPENAI_KEY}"

[providers.anthropic]
base_url = "{mock_url}"
api_key = "{ANTHROPIC_KEY}"

[providers.onprem]
kind = "openai"
base_url = "{mock_url}/v1"
api_key = "{ONPREM_KEY}"

[[models]]
name = "summarizer"
provider = "onprem"
model = "llama3.1:8b"
input_per_mtok = 1.0
output_per_mtok = 1.0
"#
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn client() -> reqwest::Client {
    // reqwest is built without a default TLS provider; the tests speak plain
    // HTTP, but building a client still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// Remove every variable from the parent environment that bursar or the SDK
/// helpers read, so a developer's shell cannot change a test's outcome.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        let upper = k.to_ascii_uppercase();
        if upper.starts_with("BURSAR_")
            || upper.starts_with("OPENAI_")
            || upper.starts_with("ANTHROPIC_")
            || upper == "CO_API_KEY"
            || upper == "HF_TOKEN"
            || [
                "COHERE_API_KEY",
                "GEMINI_API_KEY",
                "GOOGLE_API_KEY",
                "HUGGING_FACE_HUB_TOKEN",
                "VECTARA_API_KEY",
                "PERPLEXITYAI_API_KEY",
                "PPLX_API_KEY",
                "ANYSCALE_API_KEY",
                "MISTRAL_API_KEY",
                "GROQ_API_KEY",
                "AZURE_OPENAI_API_KEY",
                "AZURE_OPENAI_ENDPOINT",
            ]
            .contains(&upper.as_str())
            || upper == "RUST_LOG"
        {
            cmd.env_remove(&k);
        }
    }
}

pub struct GatewayBuilder {
    config: String,
    env: Vec<(String, String)>,
    settle: bool,
    database: Option<String>,
}

impl GatewayBuilder {
    /// A builder for a configuration file's text.
    pub fn from_config(config: String) -> Self {
        GatewayBuilder {
            config,
            env: Vec::new(),
            settle: true,
            database: None,
        }
    }

    /// Add top-level TOML (e.g. `max_body_bytes = 2048`) before the tables.
    pub fn top_level(mut self, toml: &str) -> Self {
        self.config = format!("{toml}\n{}", self.config);
        self
    }

    /// Replace the whole configuration file.
    pub fn config(mut self, toml: String) -> Self {
        self.config = toml;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Use this database URL (e.g. `postgres://…`) instead of the temp
    /// dir's SQLite file.
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.to_string());
        self
    }

    /// Start without the settle pause (see [`STARTUP_SETTLE`]).
    pub fn no_settle(mut self) -> Self {
        self.settle = false;
        self
    }

    pub async fn start(self) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("bursar.toml");
        std::fs::write(&config_path, &self.config).expect("write config");
        let mut gw = Gateway {
            db_path: dir.path().join("bursar.db"),
            log_path: dir.path().join("gateway.log"),
            config_path,
            dir,
            port: 0,
            child: None,
            http: client(),
            env: self.env,
            settle: self.settle,
            database: self.database,
        };
        gw.spawn().await;
        gw
    }
}

/// A running `bursar serve`, killed when dropped.
pub struct Gateway {
    pub dir: TempDir,
    pub port: u16,
    pub config_path: PathBuf,
    pub db_path: PathBuf,
    /// stdout and stderr of every run of the process, appended.
    pub log_path: PathBuf,
    pub http: reqwest::Client,
    child: Option<Child>,
    env: Vec<(String, String)>,
    settle: bool,
    /// The database URL when it is not the temp dir's SQLite file.
    pub database: Option<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Gateway {
    pub fn builder(mock: &MockUpstream) -> GatewayBuilder {
        GatewayBuilder::from_config(standard_config(&mock.url()))
    }

    /// A gateway with the standard configuration.
    pub async fn start(mock: &MockUpstream) -> Gateway {
        Self::builder(mock).start().await
    }

    /// `serve` arguments for this gateway's files on `port`.
    pub fn serve_command(&self, port: u16) -> Command {
        let mut cmd = Command::new(bin());
        scrub_env(&mut cmd);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database")
            .arg(
                self.database
                    .clone()
                    .unwrap_or_else(|| format!("sqlite://{}", self.db_path.display())),
            )
            .arg("--config")
            .arg(&self.config_path)
            .env("BURSAR_ADMIN_KEY", ADMIN_KEY)
            .current_dir(self.dir.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Start the process (on a new free port) and wait until `/healthz` answers.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "gateway already running");
        for _attempt in 0..5 {
            let port = free_port();
            let log = File::options()
                .create(true)
                .append(true)
                .open(&self.log_path)
                .expect("open log");
            let mut cmd = self.serve_command(port);
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log);
            let child = cmd.spawn().expect("spawn bursar serve");
            self.port = port;
            self.child = Some(child);
            match self.wait_healthy().await {
                Ok(()) => {
                    if self.settle {
                        tokio::time::sleep(STARTUP_SETTLE).await;
                    }
                    return;
                }
                Err(status) => {
                    self.child = None;
                    let log = self.log();
                    if log.contains("cannot listen") {
                        continue; // the port was taken in between: try another
                    }
                    panic!("bursar serve exited with {status} before it was healthy; log:\n{log}");
                }
            }
        }
        panic!("could not start bursar serve; log:\n{}", self.log());
    }

    async fn wait_healthy(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(status);
            }
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "bursar serve did not become healthy; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway running").id()
    }

    /// Send SIGTERM (without waiting).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Wait for the process to exit on its own.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let child = self.child.as_mut().expect("gateway running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "bursar serve did not exit; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit().await
    }

    /// Everything the process has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Call the admin API; answers the status and the JSON body (or the text
    /// as a JSON string when it is not JSON).
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("admin request");
        let status = resp.status().as_u16();
        (status, body_json(resp).await)
    }

    /// Create a key; answers (id, secret).
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let (status, v) = self.admin("POST", "/admin/v1/keys", Some(body)).await;
        assert_eq!(status, 201, "create key: {v}");
        let id = v["id"].as_str().expect("id").to_string();
        let secret = v["key"].as_str().expect("key").to_string();
        (id, secret)
    }

    /// A key without restrictions.
    pub async fn open_key(&self) -> (String, String) {
        self.create_key(json!({"name": "open"})).await
    }

    /// POST JSON with `Authorization: Bearer <key>`.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// POST JSON on the Anthropic surface with `x-api-key: <key>`.
    pub async fn post_anthropic(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// A one-message chat completion; answers (status, headers, body).
    pub async fn chat(&self, key: &str, model: &str, text: &str) -> (u16, HeaderMap, Value) {
        let resp = self
            .post(
                "/v1/chat/completions",
                key,
                &json!({"model": model, "messages": [{"role": "user", "content": text}]}),
            )
            .await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, body_json(resp).await)
    }

    /// [`Gateway::chat`], then wait until its usage row is written (when it
    /// has one), so that spend and usage are final before the next step.
    pub async fn chat_settled(
        &self,
        key: &str,
        model: &str,
        text: &str,
    ) -> (u16, HeaderMap, Value) {
        let (status, headers, body) = self.chat(key, model, text).await;
        if status != 401 {
            self.wait_usage(&request_id(&headers)).await;
        }
        (status, headers, body)
    }

    /// Every usage row (newest first), at most 10 000.
    pub async fn usage_rows(&self, query: &str) -> Vec<Value> {
        let sep = if query.is_empty() { "" } else { "&" };
        let (status, v) = self
            .admin(
                "GET",
                &format!("/admin/v1/usage?limit=10000{sep}{query}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "usage: {v}");
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// Poll the usage API until the row of `request_id` is written.
    pub async fn wait_usage(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rows = self.usage_rows("").await;
            if let Some(r) = rows.iter().find(|r| r["request_id"] == request_id) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no usage row for {request_id}; rows: {rows:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll the usage API until at least `n` rows match `query`.
    pub async fn wait_usage_count(&self, query: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rows = self.usage_rows(query).await;
            if rows.len() >= n {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} usage rows for '{query}', have {}: {rows:#?}",
                rows.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every audit row, oldest first.
    pub async fn audit_rows(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/admin/v1/audit?limit=1000&cursor={c}"),
                None => "/admin/v1/audit?limit=1000".to_string(),
            };
            let (status, v) = self.admin("GET", &path, None).await;
            assert_eq!(status, 200, "audit: {v}");
            out.extend(v["data"].as_array().cloned().unwrap_or_default());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    /// Poll the audit log until some row satisfies `pred`.
    pub async fn wait_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rows = self.audit_rows().await;
            if let Some(r) = rows.iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no audit row for {what}; rows: {rows:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Status of `GET /bursar/v1/whoami` with `key` (authenticates the key
    /// without writing a usage row).
    pub async fn whoami_status(&self, key: &str) -> u16 {
        self.http
            .get(self.url("/bursar/v1/whoami"))
            .bearer_auth(key)
            .send()
            .await
            .expect("whoami")
            .status()
            .as_u16()
    }

    /// Poll until `key` authenticates with `status` (expiry and grace periods
    /// end on the gateway's clock).
    pub async fn wait_status(&self, key: &str, status: u16) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.whoami_status(key).await;
            if s == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "key never got {status}; last {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run the CLI against this gateway (BURSAR_URL and BURSAR_ADMIN_KEY set)
    /// in `cwd` (default: the gateway's temp dir).
    pub async fn cli(&self, args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> CliOutput {
        let mut cmd = Command::new(bin());
        scrub_env(&mut cmd);
        cmd.args(args)
            .env("BURSAR_URL", self.base())
            .env("BURSAR_ADMIN_KEY", ADMIN_KEY)
            .current_dir(cwd.unwrap_or(self.dir.path()))
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_cli(cmd).await
    }
}

pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run a CLI command without blocking the runtime (the mock lives on it).
pub async fn run_cli(cmd: Command) -> CliOutput {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("CLI did not finish within 60 s")
        .expect("run the CLI");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The body as JSON, or as a JSON string when it is not JSON.
pub async fn body_json(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("response body");
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The `x-request-id` of a response.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id header")
        .to_string()
}

/// The `x-bursar-cost-usd` of a response, parsed.
pub fn cost_header(headers: &HeaderMap) -> Option<f64> {
    headers
        .get("x-bursar-cost-usd")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// All headers rendered as `name: value` lines (for leak checks).
pub fn headers_text(headers: &HeaderMap) -> String {
    headers
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

/// Parse an SSE body into (event name, data) pairs.
pub fn parse_sse(body: &str) -> Vec<(Option<String>, String)> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            (event, data)
        })
        .collect()
}

/// The JSON payloads of an SSE body (skipping `[DONE]`).
pub fn sse_json(body: &str) -> Vec<Value> {
    parse_sse(body)
        .into_iter()
        .filter_map(|(_, d)| serde_json::from_str(&d).ok())
        .collect()
}

/// Read a streamed body to its end; answers the text.
pub async fn read_stream(resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("stream chunk"));
    }
    String::from_utf8(out).expect("utf-8 stream")
}

/// Concatenated `choices[0].delta.content` of an OpenAI chat stream.
pub fn chat_stream_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| {
            e.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}

/// Concatenated text deltas of an Anthropic message stream.
pub fn anthropic_stream_text(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str))
        .collect()
}

/// Requests the mock received on `path`.
pub fn mock_requests(mock: &MockUpstream, path: &str) -> Vec<RecordedRequest> {
    mock.requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
}

/// Every value of header `name` on a recorded request.
pub fn header_values<'a>(r: &'a RecordedRequest, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Everything the mock received, as text (for leak checks).
pub fn mock_text(mock: &MockUpstream) -> String {
    mock.requests()
        .iter()
        .map(|r| {
            let h: String = r
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}\n"))
                .collect();
            format!(
                "{} {} {:?}\n{h}\n{}\n",
                r.method,
                r.path,
                r.query,
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect()
}

/// The mock's token counts for a chat with one user message `text`:
/// prompt = words + 7, completion = words of "mock: <text>".
pub fn mock_chat_tokens(text: &str) -> (i64, i64) {
    let w = text.split_whitespace().count() as i64;
    (w + 7, w + 1)
}

/// Assert `a` and `b` are equal to within floating-point noise.
pub fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9 + b.abs() * 1e-6, "{what}: {a} != {b}");
}

/// Assert no text in `haystack` contains a real provider key.
pub fn assert_no_real_key(haystack: &str, what: &str) {
    for k in REAL_KEYS {
        assert!(
            !haystack.contains(k),
            "{what} contains the real key {k}:\n{haystack}"
        );
    }
}

/// `bsr_` + 36 base62 characters.
pub fn is_key_format(s: &str) -> bool {
    s.strip_prefix("bsr_")
        .is_some_and(|b| b.len() == 36 && b.bytes().all(|c| c.is_ascii_alphanumeric()))
}

/// Open the gateway's SQLite file directly (only while it is stopped).
pub async fn open_db(db_path: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .expect("open the gateway's database")
}

/// Run one SQL statement on the gateway's database (only while it is stopped).
pub async fn exec_sql(db_path: &Path, sql: &str) -> u64 {
    use sqlx::Connection;
    let mut db = open_db(db_path).await;
    let done = sqlx::query(sql).execute(&mut db).await.expect("run SQL");
    db.close().await.expect("close the database");
    done.rows_affected()
}

// ---------------------------------------------------------------------------
// Scale-out helpers: each test's own PostgreSQL database and Redis key
// prefix on the machine's shared services, and a private redis-server a
// test may kill and restart.

/// The machine's PostgreSQL (trust auth, database `test`): only used to
/// create and drop each test's own database.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The machine's shared Redis. Never flushed: every test uses its own prefix.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// `bursar_t_` + 12 random lowercase letters and digits: a database name
/// and a Redis prefix no other test uses.
pub fn unique_name() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..12)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("bursar_t_{tail}")
}

/// A PostgreSQL database of the test's own, dropped (best effort) on drop.
pub struct PgDb {
    pub name: String,
    /// `postgres://postgres@127.0.0.1:5432/<name>`
    pub url: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        use sqlx::Connection;
        let name = unique_name();
        let mut last = String::new();
        for _ in 0..5 {
            let mut c = sqlx::PgConnection::connect(PG_ADMIN_URL)
                .await
                .unwrap_or_else(|e| panic!("connect to PostgreSQL at {PG_ADMIN_URL}: {e}"));
            let done = sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await;
            let _ = c.close().await;
            match done {
                Ok(_) => {
                    return PgDb {
                        url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                        name,
                    };
                }
                // Concurrent CREATE DATABASE can collide on the template.
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("CREATE DATABASE {name}: {last}");
    }

    /// The database's URL through another port (a proxy in front of PostgreSQL).
    pub fn url_on_port(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.name)
    }

    /// A direct connection to the database (not through any proxy).
    pub async fn connect(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async work on a
        // thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// A Redis key prefix of the test's own (`bursar_t_…:`); its keys are
/// deleted (best effort) on drop.
pub struct RedisPrefix {
    pub prefix: String,
}

impl RedisPrefix {
    pub fn new() -> RedisPrefix {
        RedisPrefix {
            prefix: format!("{}:", unique_name()),
        }
    }

    /// The keys under this prefix on the shared Redis.
    pub fn keys(&self) -> Vec<String> {
        redis_keys(REDIS_URL, &self.prefix).unwrap_or_default()
    }
}

impl Default for RedisPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let Ok(keys) = redis_keys(REDIS_URL, &self.prefix) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        if let Ok(mut c) = redis::Client::open(REDIS_URL)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        {
            for chunk in keys.chunks(500) {
                let _ = redis::cmd("DEL").arg(chunk).query::<i64>(&mut c);
            }
        }
    }
}

/// Every key under `prefix` (SCAN, never KEYS).
pub fn redis_keys(url: &str, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let mut c = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut c)?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// A private `redis-server` (no persistence) a test may kill and restart on
/// the same port. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Start on a free port and wait until it answers.
    pub async fn start() -> RedisServer {
        let mut s = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        s.spawn().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start again on the same port (after [`RedisServer::kill`]).
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("open redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while !redis_answers(self.port).await {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let mut log = String::new();
                let _ = File::open(self.dir.path().join("redis.log"))
                    .and_then(|mut f| f.read_to_string(&mut log));
                panic!("redis-server exited with {status}:\n{log}");
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Freeze the server (SIGSTOP): connections stay open but nothing
    /// answers, like a network partition; its data survives.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Let a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Kill the server (SIGKILL: like a crash) and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused server too.
        self.kill();
    }
}

/// Whether a Redis server answers PING on 127.0.0.1:`port`.
pub async fn redis_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ping = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await?;
        Ok::<bool, std::io::Error>(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), ping).await,
        Ok(Ok(true))
    )
}

/// A TCP proxy in front of a service (PostgreSQL, Redis) that a test can
/// cut (listener and every connection dropped: the port refuses
/// connections, like a stopped server or a partition) and restore on the
/// same port.
pub struct TcpProxy {
    pub port: u16,
    target: std::net::SocketAddr,
    tasks: Option<(tokio::task::JoinHandle<()>, Conns)>,
}

/// The proxy's open connections.
type Conns = std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;

impl TcpProxy {
    pub async fn start(target: std::net::SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut p = TcpProxy {
            port: listener.local_addr().unwrap().port(),
            target,
            tasks: None,
        };
        p.serve(listener);
        p
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let conns: Conns = std::sync::Arc::default();
        let target = self.target;
        let held = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(conn);
            }
        });
        self.tasks = Some((accept, conns));
    }

    /// Drop the listener and every connection.
    pub async fn cut(&mut self) {
        let (accept, conns) = self.tasks.take().expect("proxy running");
        accept.abort();
        let _ = accept.await;
        let conns = std::mem::take(&mut *conns.lock().unwrap());
        for c in conns {
            c.abort();
            let _ = c.await;
        }
    }

    /// Listen on the same port again.
    pub async fn restore(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        let listener = loop {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            match socket
                .bind(std::net::SocketAddr::from(([127, 0, 0, 1], self.port)))
                .and_then(|()| socket.listen(1024))
            {
                Ok(l) => break l,
                Err(e) => assert!(Instant::now() < deadline, "cannot listen again: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.serve(listener);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some((accept, conns)) = self.tasks.take() {
            accept.abort();
            for c in conns.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }
}
