//! The process: graceful shutdown (in-flight streams finish, usage is
//! flushed, exit 0), restart on the same database, config validation.

mod common;

use std::process::Command;

use common::*;
use futures_util::StreamExt;
use mock_upstream::MockUpstream;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_streams_and_flushes_usage() {
    let mock = MockUpstream::start().await;
    let mut gw = Gateway::start(&mock).await;
    let (key_id, secret) = gw.open_key().await;

    // mock-slow: 200 ms between events; 5 words → 9 events → about 1.6 s.
    let text = "slow one two three four";
    let resp = gw
        .post(
            "/v1/chat/completions",
            &secret,
            &json!({"model": "mock-slow", "stream": true, "messages": [{"role": "user", "content": text}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(resp.headers());
    let mut stream = resp.bytes_stream();
    let mut body = Vec::new();
    // Wait for the first chunk: the request is in flight in the gateway.
    let first = stream.next().await.expect("a first chunk").expect("chunk");
    body.extend_from_slice(&first);

    gw.sigterm();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.expect("the stream broke during shutdown"));
    }
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "the stream was cut: {body}"
    );
    assert_eq!(chat_stream_text(&sse_json(&body)), format!("mock: {text}"));

    let status = gw.wait_exit().await;
    assert!(status.success(), "exit status {status}; log:\n{}", gw.log());

    // After a restart on the same database the request's row is there, and
    // the key still works.
    gw.spawn().await;
    let rows = gw.usage_rows("").await;
    let row = rows
        .iter()
        .find(|r| r["request_id"] == rid.as_str())
        .unwrap_or_else(|| panic!("the usage row was lost at shutdown: {rows:#?}"));
    let (p, c) = mock_chat_tokens(text);
    assert_eq!(row["key_id"], key_id.as_str());
    assert_eq!(row["status"], 200);
    assert_eq!(row["prompt_tokens"], p);
    assert_eq!(row["completion_tokens"], c);
    let (s, _, body) = gw.chat(&secret, "echo", "still here").await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_when_idle_exits_zero_and_keeps_state() {
    let mock = MockUpstream::start().await;
    let mut gw = Gateway::start(&mock).await;
    let (id, secret) = gw.create_key(json!({"name": "kept", "user": "zoe"})).await;
    let (s, h, _) = gw.chat(&secret, "echo", "before restart").await;
    assert_eq!(s, 200);
    let rid = request_id(&h);

    let status = gw.stop().await;
    assert!(status.success(), "{status}");
    gw.spawn().await;

    let (status, v) = gw.admin("GET", &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(v["user"], "zoe");
    assert!(v["spend_usd"].as_f64().unwrap() > 0.0, "{v}");
    gw.wait_usage(&rid).await;
    let (s, _, _) = gw.chat(&secret, "echo", "after restart").await;
    assert_eq!(s, 200);
    // The admin key is not bootstrapped twice.
    let rows = gw.audit_rows().await;
    assert_eq!(
        rows.iter()
            .filter(|r| r["action"] == "admin_key.bootstrap")
            .count(),
        1
    );
}

/// Run `bursar serve` with `config`; it must refuse to start.
async fn serve_refuses(config: &str) -> CliOutput {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(bin());
    scrub_env(&mut cmd);
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--database")
        .arg(format!("sqlite://{}", dir.path().join("x.db").display()))
        .env("BURSAR_ADMIN_KEY", ADMIN_KEY)
        .current_dir(dir.path());
    run_cli(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_exit_2_naming_the_field() {
    let out = serve_refuses(
        "[providers.x]\nkind = \"frobnicator\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-x-123456789\"\n",
    )
    .await;
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("providers.x.kind"), "{}", out.stderr);
    assert!(!out.stderr.contains("sk-x-123456789"), "{}", out.stderr);

    for (config, field) in [
        (
            "[[models]]\nname = \"m\"\nprovider = \"nowhere\"\n",
            "models[0].provider",
        ),
        (
            "[providers.onprem]\nkind = \"openai\"\n",
            "providers.onprem.base_url",
        ),
        ("max_body_bytes = 0\n", "max_body_bytes"),
        ("trusted_proxies = [\"not-a-cidr\"]\n", "trusted_proxies[0]"),
        ("surprise = 1\n", "surprise"),
        ("this is not toml", "TOML"),
    ] {
        let out = serve_refuses(config).await;
        assert_eq!(out.code, 2, "{config}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(field),
            "{config}: expected '{field}' in: {}",
            out.stderr
        );
    }
}
