//! Every provider natively (Cohere, Gemini, Vertex AI, Azure OpenAI, Hugging
//! Face, Vectara, OpenAI-compatible built-ins), with key rotation, failover
//! and fallbacks, against the mock upstream.

mod common;

use common::*;
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

const CO_KEY: &str = "co-real-cohere-secret-123456";
const GEMINI_KEY: &str = "AIza-real-gemini-secret-123456";
const AZURE_KEY: &str = "az-real-azure-secret-123456";
const HF_KEY: &str = "hf_real_huggingface_secret_123456";
const PPLX_KEY: &str = "pplx-real-perplexity-secret-123456";
const VECTARA_KEY: &str = "zqt_real_vectara_secret_123456";
const GOOD_KEY: &str = "sk-good-second-key-123456";
const ALL_KEYS: [&str; 7] = [
    CO_KEY,
    GEMINI_KEY,
    AZURE_KEY,
    HF_KEY,
    PPLX_KEY,
    VECTARA_KEY,
    GOOD_KEY,
];

fn config(mock: &str) -> String {
    format!(
        r#"{std}
[providers.cohere]
base_url = "{mock}"
api_key = "{CO_KEY}"

[providers.gemini]
base_url = "{mock}"
api_key = "{GEMINI_KEY}"

[providers.azure]
base_url = "{mock}"
api_key = "{AZURE_KEY}"

[providers.huggingface]
base_url = "{mock}"
api_key = "{HF_KEY}"

[providers.perplexity]
base_url = "{mock}"
api_key = "{PPLX_KEY}"

[providers.vectara]
base_url = "{mock}"
api_key = "{VECTARA_KEY}"

[providers.flaky]
kind = "openai"
base_url = "{mock}/v1"
api_keys = ["sk-mock-fail-429-aaaaaaaa", "{GOOD_KEY}"]

[providers.revoked]
kind = "openai"
base_url = "{mock}/v1"
api_keys = ["sk-mock-fail-401-cccccccc", "sk-mock-fail-401-dddddddd"]
max_auth_failures = 2

[providers.broken]
kind = "openai"
base_url = "{mock}/v1"
api_key = "sk-mock-fail-500-eeeeeeee"

[[models]]
name = "resilient"
provider = "broken"
model = "gpt-4o-mini"
fallbacks = ["flaky/gpt-4o-mini"]
"#,
        std = standard_config(mock)
    )
}

async fn start(mock: &MockUpstream) -> Gateway {
    GatewayBuilder::from_config(config(&mock.url()))
        .start()
        .await
}

fn no_leak(text: &str, what: &str) {
    assert_no_real_key(text, what);
    for k in ALL_KEYS {
        assert!(!text.contains(k), "{what} leaks {k}: {text}");
    }
}

async fn send(gw: &Gateway, path: &str, header: (&str, &str), body: &Value) -> reqwest::Response {
    gw.http
        .post(gw.url(path))
        .header(header.0, header.1)
        .json(body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn cohere_v2_chat_plain_streamed_and_refused() {
    let mock = MockUpstream::start().await;
    let gw = start(&mock).await;
    let (_, key) = gw.open_key().await;
    let body = json!({"model": "command-r-08-2024", "messages": [{"role": "user", "content": "hello cohere friend"}]});
    let resp = gw.post("/cohere/v2/chat", &key, &body).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let cost = cost_header(resp.headers()).expect("cost header");
    let v = body_json(resp).await;
    assert_eq!(
        v["message"]["content"][0]["text"],
        "mock: hello cohere friend"
    );
    let row = gw.wait_usage(&rid).await;
    assert_eq!(row["provider"], "cohere");
    assert_eq!(row["endpoint"], "chat");
    assert_eq!(row["model"], "command-r-08-2024");
    assert_eq!(row["prompt_tokens"], 3);
    assert_eq!(row["completion_tokens"], 4);
    assert_close(cost, (3.0 * 0.15 + 4.0 * 0.60) / 1e6, "cohere cost");
    let up = mock_requests(&mock, "/v2/chat");
    assert_eq!(
        header_values(&up[0], "authorization"),
        vec![format!("Bearer {CO_KEY}").as_str()]
    );

    // Streamed: events pass through, usage comes from message-end.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let resp = gw.post("/cohere/v2/chat", &key, &sbody).await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let text = read_stream(resp).await;
    let events = parse_sse(&text);
    assert_eq!(
        events.first().and_then(|e| e.0.as_deref()),
        Some("message-start")
    );
    assert_eq!(
        events.last().and_then(|e| e.0.as_deref()),
        Some("message-end")
    );
    let row = gw.wait_usage(&rid).await;
    assert_eq!(
        (
            row["prompt_tokens"].as_i64(),
            row["completion_tokens"].as_i64()
        ),
        (Some(3), Some(4))
    );

    // Refused in Cohere's shape, with a stable type.
    let resp = gw.post("/cohere/v2/chat", "bsr_not_a_key", &body).await;
    assert_eq!(resp.status(), 401);
    let v = body_json(resp).await;
    assert_eq!(v["type"], "invalid_api_key");
    assert!(v["message"].is_string());

    // An upstream error naming the credential is scrubbed.
    let resp = gw
        .post(
            "/cohere/v2/chat",
            &key,
            &json!({"model": "mock-error-500", "messages": []}),
        )
        .await;
    assert_eq!(resp.status(), 502);
    let t = resp.text().await.unwrap();
    assert!(t.contains("upstream_error"), "{t}");
    no_leak(&t, "cohere 502");
    no_leak(&gw.log(), "gateway log");
}

#[tokio::test]
async fn cohere_v1_chat_stream_embed_and_rerank() {
    let mock = MockUpstream::start().await;
    let gw = start(&mock).await;
    let (_, key) = gw.open_key().await;
    let resp = gw
        .post(
            "/cohere/v1/chat",
            &key,
            &json!({"model": "command-r-plus", "message": "one two", "stream": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let text = read_stream(resp).await;
    assert_eq!(text.lines().count(), 5, "{text}");
    let row = gw.wait_usage(&rid).await;
    assert_eq!(
        (
            row["prompt_tokens"].as_i64(),
            row["completion_tokens"].as_i64()
        ),
        (Some(2), Some(3))
    );
    assert!(row["cost_usd"].as_f64().unwrap() > 0.0);

    let resp = gw
        .post("/cohere/v2/embed", &key, &json!({"model": "embed-v4.0", "texts": ["a b c", "d"], "input_type": "search_document", "embedding_types": ["float"]}))
        .await;
    assert_eq!(resp.status(), 200);
    let row = gw.wait_usage(&request_id(resp.headers())).await;
    assert_eq!(row["endpoint"], "embeddings");
    assert_eq!(row["prompt_tokens"], 4);

    let resp = gw
        .post(
            "/cohere/v2/rerank",
            &key,
            &json!({"model": "rerank-v3.5", "query": "q", "documents": ["x", "y"]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let row = gw.wait_usage(&request_id(resp.headers())).await;
    assert_eq!(row["endpoint"], "rerank");
}

#[tokio::test]
async fn gemini_generate_stream_count_embed_and_scope() {
    let mock = MockUpstream::start().await;
    let gw = start(&mock).await;
    let (_, key) = gw
        .create_key(json!({"name": "g", "models": ["gemini-2.5-flash"]}))
        .await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi there gemini"}]}]});
    let resp = send(
        &gw,
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        ("x-goog-api-key", &key),
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let v = body_json(resp).await;
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"],
        "mock: hi there gemini"
    );
    let row = gw.wait_usage(&rid).await;
    assert_eq!(row["provider"], "gemini");
    assert_eq!(row["model"], "gemini-2.5-flash");
    assert_eq!(
        (
            row["prompt_tokens"].as_i64(),
            row["completion_tokens"].as_i64()
        ),
        (Some(3), Some(4))
    );
    assert_close(
        row["cost_usd"].as_f64().unwrap(),
        (3.0 * 0.30 + 4.0 * 2.50) / 1e6,
        "gemini cost",
    );
    let up = mock_requests(&mock, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(header_values(&up[0], "x-goog-api-key"), vec![GEMINI_KEY]);

    // ?key= and streaming with alt=sse; the client key never goes upstream.
    let resp = gw
        .http
        .post(gw.url(&format!(
            "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={key}"
        )))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let events = sse_json(&read_stream(resp).await);
    assert_eq!(events.len(), 4);
    let row = gw.wait_usage(&rid).await;
    assert_eq!(
        (
            row["prompt_tokens"].as_i64(),
            row["completion_tokens"].as_i64()
        ),
        (Some(3), Some(4))
    );
    let up = mock_requests(
        &mock,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    );
    assert_eq!(up[0].query.as_deref(), Some("alt=sse"));
    assert!(!mock_text(&mock).contains(&key));

    // countTokens is free; embeddings are metered by the input's tokens.
    let resp = send(
        &gw,
        "/gemini/v1beta/models/gemini-2.5-flash:countTokens",
        ("x-goog-api-key", &key),
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await["totalTokens"], 3);

    // The path's model is the one scoped: another model is refused, Google-shaped.
    let resp = send(
        &gw,
        "/gemini/v1beta/models/gemini-2.5-pro:generateContent",
        ("x-goog-api-key", &key),
        &body,
    )
    .await;
    assert_eq!(resp.status(), 403);
    let v = body_json(resp).await;
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(v["error"]["code"], 403);
    assert_eq!(v["error"]["type"], "permission_denied");
    let resp = send(
        &gw,
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        ("x-goog-api-key", "bsr_nope"),
        &body,
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(body_json(resp).await["error"]["status"], "UNAUTHENTICATED");

    let (_, open) = gw.open_key().await;
    let resp = send(
        &gw,
        "/gemini/v1beta/models/gemini-embedding-001:batchEmbedContents",
        ("x-goog-api-key", &open),
        &json!({"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "embed these words"}]}}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let row = gw.wait_usage(&request_id(resp.headers())).await;
    assert_eq!(row["endpoint"], "embeddings");
    assert!(row["prompt_tokens"].as_i64().unwrap() >= 3, "{row}");
    no_leak(&gw.log(), "gateway log");
}

#[tokio::test]
async fn azure_huggingface_perplexity_and_vectara() {
    let mock = MockUpstream::start().await;
    let gw = start(&mock).await;
    let (_, key) = gw.open_key().await;

    // Azure: deployment in the path is the model; api-key both ways.
    let resp = send(
        &gw,
        "/azure/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
        ("api-key", &key),
        &json!({"messages": [{"role": "user", "content": "hello azure"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let row = gw.wait_usage(&request_id(resp.headers())).await;
    assert_eq!(
        (row["provider"].as_str(), row["model"].as_str()),
        (Some("azure"), Some("gpt-4o-mini"))
    );
    let (p, c) = mock_chat_tokens("hello azure");
    assert_close(
        row["cost_usd"].as_f64().unwrap(),
        (p as f64 * 0.15 + c as f64 * 0.60) / 1e6,
        "azure cost",
    );
    let up = mock_requests(&mock, "/openai/deployments/gpt-4o-mini/chat/completions");
    assert_eq!(header_values(&up[0], "api-key"), vec![AZURE_KEY]);
    assert_eq!(up[0].query.as_deref(), Some("api-version=2024-10-21"));

    // Hugging Face: OpenAI-compatible router and feature extraction.
    let resp = gw
        .post("/huggingface/v1/chat/completions", &key, &json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [{"role": "user", "content": "hi hf"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    let row = gw.wait_usage(&request_id(resp.headers())).await;
    assert_eq!(row["provider"], "huggingface");
    let resp = gw
        .post(
            "/huggingface/hf-inference/models/BAAI/bge-small-en-v1.5/pipeline/feature-extraction",
            &key,
            &json!({"inputs": "some words to embed"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let row = gw.wait_usage(&request_id(resp.headers())).await;
    assert_eq!(
        (row["endpoint"].as_str(), row["model"].as_str()),
        (Some("embeddings"), Some("BAAI/bge-small-en-v1.5"))
    );
    assert!(row["prompt_tokens"].as_i64().unwrap() > 0);
    let up = mock_requests(
        &mock,
        "/hf-inference/models/BAAI/bge-small-en-v1.5/pipeline/feature-extraction",
    );
    assert_eq!(
        header_values(&up[0], "authorization"),
        vec![format!("Bearer {HF_KEY}").as_str()]
    );

    // Perplexity: natively, and on the OpenAI surface by model name.
    let resp = gw
        .post(
            "/perplexity/chat/completions",
            &key,
            &json!({"model": "sonar", "messages": [{"role": "user", "content": "q"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let (status, headers, _) = gw.chat(&key, "sonar-pro", "routed by name").await;
    assert_eq!(status, 200);
    let row = gw.wait_usage(&request_id(&headers)).await;
    assert_eq!(row["provider"], "perplexity");
    let (p, c) = mock_chat_tokens("routed by name");
    assert_close(
        row["cost_usd"].as_f64().unwrap(),
        (p as f64 * 3.0 + c as f64 * 15.0) / 1e6,
        "sonar-pro cost",
    );
    let up = mock_requests(&mock, "/chat/completions");
    assert!(
        up.iter()
            .all(|r| header_values(r, "authorization")
                == vec![format!("Bearer {PPLX_KEY}").as_str()])
    );

    // Vectara: x-api-key, query endpoint.
    let resp = send(
        &gw,
        "/vectara/v2/query",
        ("x-api-key", &key),
        &json!({"query": "what is bursar"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await["summary"], "mock: what is bursar");
    let up = mock_requests(&mock, "/v2/query");
    assert_eq!(header_values(&up[0], "x-api-key"), vec![VECTARA_KEY]);
    let (_, scoped) = gw
        .create_key(json!({"name": "s", "providers": ["openai"]}))
        .await;
    let resp = send(
        &gw,
        "/vectara/v2/query",
        ("x-api-key", &scoped),
        &json!({"query": "x"}),
    )
    .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(body_json(resp).await["type"], "permission_denied");
    no_leak(&gw.log(), "gateway log");
}

#[tokio::test]
async fn failover_to_another_key_then_to_a_fallback_model() {
    let mock = MockUpstream::start().await;
    let gw = start(&mock).await;
    let (_, key) = gw.open_key().await;
    // The flaky entry's first key answers 429; bursar retries on the second.
    for i in 0..3 {
        let (status, _, v) = gw
            .chat(&key, "flaky/gpt-4o-mini", &format!("retry {i}"))
            .await;
        assert_eq!(status, 200, "{v}");
    }
    let creds: Vec<String> = mock_requests(&mock, "/v1/chat/completions")
        .iter()
        .flat_map(|r| {
            header_values(r, "authorization")
                .into_iter()
                .map(str::to_owned)
        })
        .collect();
    assert!(creds.iter().any(|c| c.contains("mock-fail-429")));
    assert!(creds.iter().filter(|c| c.contains(GOOD_KEY)).count() >= 3);

    // The primary model's provider fails with 500: its fallback answers.
    mock.clear();
    let (status, headers, v) = gw.chat(&key, "resilient", "fall back please").await;
    assert_eq!(status, 200, "{v}");
    let row = gw.wait_usage(&request_id(&headers)).await;
    assert_eq!(row["provider"], "flaky");
    assert_eq!(row["model"], "flaky/gpt-4o-mini");
    let paths: Vec<String> = mock.requests().iter().map(|r| r.path.clone()).collect();
    assert!(paths.len() >= 2, "{paths:?}");
    no_leak(&gw.log(), "gateway log");
}

#[tokio::test]
async fn keys_failing_with_401_leave_the_rotation_and_are_reported() {
    let mock = MockUpstream::start().await;
    let gw = start(&mock).await;
    let (_, key) = gw.open_key().await;
    // Each request tries both keys; after two rounds both are out. The
    // client's own key is fine, so it sees 502, never 401.
    for _ in 0..2 {
        let (status, _, v) = gw.chat(&key, "revoked/gpt-4o-mini", "x").await;
        assert_eq!(status, 502, "{v}");
        assert_eq!(v["error"]["type"], "upstream_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("refused the gateway's credentials")
        );
    }
    let ev = gw
        .wait_audit("provider.key_disabled", |r| {
            r["action"] == "provider.key_disabled"
        })
        .await;
    assert_eq!(ev["target"], "revoked");
    // Both keys are out: bursar stops calling the upstream.
    mock.clear();
    let (status, _, v) = gw.chat(&key, "revoked/gpt-4o-mini", "x").await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["type"], "upstream_error");
    assert!(mock.requests().is_empty());
    let audit = serde_json::to_string(&gw.audit_rows().await).unwrap();
    assert!(
        !audit.contains("mock-fail-401-cccc"),
        "audit names a key: {audit}"
    );
    assert!(!gw.log().contains("mock-fail-401-cccc"), "log names a key");
}

#[tokio::test]
async fn vertex_mints_and_caches_access_tokens() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
    let private_key = std::fs::read_to_string(&pem).unwrap();
    let sa = json!({
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": "kid-1",
        "private_key": private_key,
        "client_email": "bursar@proj.iam.gserviceaccount.com",
        "token_uri": format!("{}/token", mock.url()),
    });
    let sa_path = dir.path().join("sa.json");
    std::fs::write(&sa_path, sa.to_string()).unwrap();
    let cfg = format!(
        "{}\n[providers.vertex]\nbase_url = \"{}\"\ncredentials_file = \"{}\"\n",
        standard_config(&mock.url()),
        mock.url(),
        sa_path.display()
    );
    let gw = GatewayBuilder::from_config(cfg).start().await;
    let (_, key) = gw.open_key().await;
    let path = "/vertex/v1/projects/proj/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent";
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello vertex"}]}]});
    for _ in 0..2 {
        let resp = gw.post(path, &key, &body).await;
        assert_eq!(resp.status(), 200);
        let row = gw.wait_usage(&request_id(resp.headers())).await;
        assert_eq!(
            (row["provider"].as_str(), row["model"].as_str()),
            (Some("vertex"), Some("gemini-2.5-flash"))
        );
        assert_eq!(row["prompt_tokens"], 2);
    }
    // An upstream that echoes the minted access token back: it never
    // reaches the client.
    let echoing = "/vertex/v1/projects/proj/locations/us-central1/publishers/google/models/mock-error-500:generateContent";
    let resp = gw.post(echoing, &key, &body).await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("ya29.mock-token"), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
    // One token minted, used three times.
    let minted = mock_requests(&mock, "/token");
    assert_eq!(minted.len(), 1);
    let calls = mock_requests(&mock, &path["/vertex".len()..]);
    assert_eq!(calls.len(), 2);
    assert_eq!(mock_requests(&mock, &echoing["/vertex".len()..]).len(), 1);
    for c in &calls {
        let auth = header_values(c, "authorization");
        assert_eq!(auth.len(), 1);
        assert!(auth[0].starts_with("Bearer ya29.mock-token-"), "{auth:?}");
    }

    // The assertion is an RS256 JWT signed by the service account's key.
    let form = String::from_utf8_lossy(&minted[0].body).to_string();
    let assertion = form
        .split('&')
        .find_map(|kv| kv.strip_prefix("assertion="))
        .unwrap();
    let parts: Vec<&str> = assertion.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "kid-1");
    assert_eq!(claims["iss"], "bursar@proj.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], format!("{}/token", mock.url()));
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    std::fs::write(
        dir.path().join("signed"),
        format!("{}.{}", parts[0], parts[1]),
    )
    .unwrap();
    std::fs::write(dir.path().join("sig"), b64.decode(parts[2]).unwrap()).unwrap();
    let pubkey = dir.path().join("pub.pem");
    assert!(
        std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&pubkey)
            .status()
            .unwrap()
            .success()
    );
    let verified = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pubkey)
        .arg("-signature")
        .arg(dir.path().join("sig"))
        .arg(dir.path().join("signed"))
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    assert!(!gw.log().contains("BEGIN PRIVATE KEY"));
}

#[tokio::test]
async fn vertex_refreshes_a_token_close_to_expiry() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    assert!(
        std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-out"])
            .arg(&pem)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    // Tokens that live 60 s are inside the 5-minute refresh margin: each
    // request mints a new one.
    let sa = json!({
        "private_key": std::fs::read_to_string(&pem).unwrap(),
        "client_email": "b@p.iam.gserviceaccount.com",
        "token_uri": format!("{}/token?expires_in=60", mock.url()),
    });
    let sa_path = dir.path().join("sa.json");
    std::fs::write(&sa_path, sa.to_string()).unwrap();
    let cfg = format!(
        "[providers.vertex]\nbase_url = \"{}\"\ncredentials_file = \"{}\"\n",
        mock.url(),
        sa_path.display()
    );
    let gw = GatewayBuilder::from_config(cfg).start().await;
    let (_, key) = gw.open_key().await;
    let path = "/vertex/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-pro:generateContent";
    let body = json!({"contents": [{"parts": [{"text": "x"}]}]});
    for _ in 0..2 {
        assert_eq!(gw.post(path, &key, &body).await.status(), 200);
    }
    assert_eq!(mock_requests(&mock, "/token").len(), 2);
}
