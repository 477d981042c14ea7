//! The CLI as a client of a running gateway: keys, usage, env, exec, whoami,
//! and its exit codes (0 ok, 1 refused, 2 bad usage).

mod common;

use std::process::Command;

use common::*;
use mock_upstream::MockUpstream;
use serde_json::Value;

/// Every well-shaped `bsr_` key in `text`.
fn keys_in(text: &str) -> Vec<String> {
    text.match_indices("bsr_")
        .filter_map(|(i, _)| text.get(i..i + 40))
        .filter(|k| is_key_format(k))
        .map(str::to_string)
        .collect()
}

fn ok(out: &CliOutput, what: &str) {
    assert_eq!(
        out.code, 0,
        "{what}: exit {}\nstdout:\n{}\nstderr:\n{}",
        out.code, out.stdout, out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_list_show_update_rotate_revoke() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;

    let out = gw
        .cli(
            &[
                "keys", "create", "--name", "x", "--models", "echo", "--ttl", "30d", "--user",
                "cli-user",
            ],
            &[],
            None,
        )
        .await;
    ok(&out, "keys create");
    let found = keys_in(&out.stdout);
    assert_eq!(found.len(), 1, "the secret is printed once: {}", out.stdout);
    let secret = found[0].clone();
    let (s, _, body) = gw.chat(&secret, "echo", "from the cli").await;
    assert_eq!(s, 200, "{body}");
    let (s, _, _) = gw.chat(&secret, "gpt-4o-mini", "outside the models").await;
    assert_eq!(s, 403);

    // JSON output of create carries the key too.
    let out = gw
        .cli(
            &[
                "keys", "create", "--name", "y", "--team", "ops", "--format", "json",
            ],
            &[],
            None,
        )
        .await;
    ok(&out, "keys create --format json");
    let created: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert!(is_key_format(created["key"].as_str().unwrap()));
    let y_id = created["id"].as_str().unwrap().to_string();

    let out = gw
        .cli(&["keys", "list", "--format", "json"], &[], None)
        .await;
    ok(&out, "keys list");
    let list: Value = serde_json::from_str(&out.stdout).expect("JSON list");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        keys_in(&out.stdout).is_empty(),
        "keys list printed a secret"
    );
    let x = list.iter().find(|k| k["name"] == "x").unwrap();
    assert_eq!(x["models"], serde_json::json!(["echo"]));
    assert_eq!(x["user"], "cli-user");
    let x_id = x["id"].as_str().unwrap().to_string();
    // 30 days from now.
    let (_, shown) = gw
        .admin("GET", &format!("/admin/v1/keys/{x_id}"), None)
        .await;
    assert!(shown["expires_at"].as_str().unwrap() > "2000", "{shown}");

    let out = gw
        .cli(
            &["keys", "list", "--team", "ops", "--format", "csv"],
            &[],
            None,
        )
        .await;
    ok(&out, "keys list csv");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("id,name,prefix,status"),
        "{}",
        out.stdout
    );
    assert_eq!(lines.len(), 2, "{}", out.stdout);

    let out = gw.cli(&["keys", "list"], &[], None).await;
    ok(&out, "keys list table");
    assert!(
        out.stdout.contains(&x_id) && out.stdout.contains(&y_id),
        "{}",
        out.stdout
    );

    let out = gw
        .cli(&["keys", "show", &x_id, "--format", "json"], &[], None)
        .await;
    ok(&out, "keys show");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["id"], x_id.as_str());
    assert!(keys_in(&out.stdout).is_empty());

    let out = gw
        .cli(
            &["keys", "update", &x_id, "--rpm", "7", "--clear", "user"],
            &[],
            None,
        )
        .await;
    ok(&out, "keys update");
    let (_, shown) = gw
        .admin("GET", &format!("/admin/v1/keys/{x_id}"), None)
        .await;
    assert_eq!(shown["rpm"], 7);
    assert_eq!(shown["user"], Value::Null);

    let out = gw
        .cli(&["keys", "rotate", &x_id, "--grace", "1m"], &[], None)
        .await;
    ok(&out, "keys rotate");
    let new = keys_in(&out.stdout);
    assert_eq!(new.len(), 1, "{}", out.stdout);
    assert_ne!(new[0], secret);
    for k in [&secret, &new[0]] {
        assert_eq!(gw.whoami_status(k).await, 200);
    }

    let out = gw.cli(&["keys", "revoke", &x_id], &[], None).await;
    ok(&out, "keys revoke");
    assert_eq!(gw.whoami_status(&new[0]).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_formats() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (key_id, secret) = gw.open_key().await;
    let mut rids = Vec::new();
    for (model, text) in [("echo", "a b c"), ("echo", "d e"), ("gpt-4o-mini", "f")] {
        let (s, h, _) = gw.chat(&secret, model, text).await;
        assert_eq!(s, 200);
        rids.push(request_id(&h));
    }
    for r in &rids {
        gw.wait_usage(r).await;
    }

    let out = gw.cli(&["usage", "--format", "csv"], &[], None).await;
    ok(&out, "usage csv");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "created_at,request_id,key_id,user,team,provider,model,endpoint,status,prompt_tokens,completion_tokens,cost_usd,latency_ms"
    );
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    for r in &rids {
        assert!(out.stdout.contains(r.as_str()), "{}", out.stdout);
    }

    let out = gw
        .cli(
            &[
                "usage", "--format", "json", "--key", &key_id, "--model", "echo",
            ],
            &[],
            None,
        )
        .await;
    ok(&out, "usage json");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    let out = gw
        .cli(
            &["usage", "--group-by", "model", "--format", "csv"],
            &[],
            None,
        )
        .await;
    ok(&out, "usage group-by csv");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "model,requests,prompt_tokens,completion_tokens,cost_usd"
    );
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines.iter().any(|l| l.starts_with("echo,2,")),
        "{}",
        out.stdout
    );

    let out = gw
        .cli(
            &["usage", "--since", "2999-01-01", "--format", "csv"],
            &[],
            None,
        )
        .await;
    ok(&out, "usage since");
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);

    let out = gw.cli(&["usage"], &[], None).await;
    ok(&out, "usage table");
    assert!(out.stdout.contains("3 request(s)"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_prints_every_shell_and_writes_bursar_env() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;
    let base = gw.base();
    let cwd = tempfile::tempdir().unwrap();

    let expect = [
        (
            "bash",
            format!("export OPENAI_BASE_URL='{base}/v1'"),
            format!("export OPENAI_API_KEY='{secret}'"),
        ),
        (
            "fish",
            format!("set -gx OPENAI_BASE_URL '{base}/v1'"),
            format!("set -gx ANTHROPIC_API_KEY '{secret}'"),
        ),
        (
            "powershell",
            format!("$env:OPENAI_BASE_URL = '{base}/v1'"),
            format!("$env:ANTHROPIC_BASE_URL = '{base}/anthropic'"),
        ),
        (
            "dotenv",
            format!("OPENAI_BASE_URL={base}/v1"),
            format!("ANTHROPIC_API_KEY={secret}"),
        ),
    ];
    for (shell, a, b) in &expect {
        let out = gw
            .cli(
                &["env", "--key", &secret, "--shell", shell],
                &[],
                Some(cwd.path()),
            )
            .await;
        ok(&out, shell);
        assert!(
            out.stdout.contains(a.as_str()),
            "{shell}: no '{a}' in:\n{}",
            out.stdout
        );
        assert!(
            out.stdout.contains(b.as_str()),
            "{shell}: no '{b}' in:\n{}",
            out.stdout
        );
    }

    // bursar.env: dotenv lines, readable only by its owner.
    let path = cwd.path().join("bursar.env");
    let file = std::fs::read_to_string(&path).expect("bursar.env written");
    assert!(
        file.contains(&format!("OPENAI_BASE_URL={base}/v1\n")),
        "{file}"
    );
    assert!(
        file.contains(&format!("OPENAI_API_KEY={secret}\n")),
        "{file}"
    );
    assert!(
        file.contains(&format!("ANTHROPIC_BASE_URL={base}/anthropic\n")),
        "{file}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "bursar.env mode {mode:o}");
    }

    // The key from BURSAR_API_KEY; --no-file writes nothing.
    let other = tempfile::tempdir().unwrap();
    let out = gw
        .cli(
            &["env", "--no-file"],
            &[("BURSAR_API_KEY", secret.as_str())],
            Some(other.path()),
        )
        .await;
    ok(&out, "env from BURSAR_API_KEY");
    assert!(out.stdout.contains(&secret));
    assert!(!other.path().join("bursar.env").exists());

    // What env prints works: the SDK variables reach the gateway.
    let out = gw
        .cli(
            &[
                "exec",
                "--key",
                &secret,
                "--",
                "sh",
                "-c",
                "echo $OPENAI_BASE_URL; echo $ANTHROPIC_BASE_URL; echo $OPENAI_API_KEY",
            ],
            &[],
            None,
        )
        .await;
    ok(&out, "exec");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{base}/v1"),
            format!("{base}/anthropic"),
            secret.clone()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_the_command_with_the_variables() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (_, secret) = gw.open_key().await;

    let out = gw
        .cli(
            &[
                "exec",
                "--key",
                &secret,
                "--",
                "sh",
                "-c",
                "echo $OPENAI_BASE_URL",
            ],
            &[],
            None,
        )
        .await;
    ok(&out, "exec");
    assert_eq!(out.stdout.trim(), format!("{}/v1", gw.base()));

    // The command's exit code is passed on.
    let out = gw
        .cli(
            &["exec", "--key", &secret, "--", "sh", "-c", "exit 3"],
            &[],
            None,
        )
        .await;
    assert_eq!(out.code, 3);

    // A real client call through the variables: curl-free, with the CLI itself.
    let out = gw
        .cli(
            &[
                "exec",
                "--key",
                &secret,
                "--",
                bin(),
                "whoami",
                "--format",
                "json",
            ],
            &[],
            None,
        )
        .await;
    ok(&out, "exec whoami");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["name"], "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_shows_the_key() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;
    let (id, secret) = gw
        .create_key(serde_json::json!({
            "name": "me", "user": "uma", "models": ["echo", "gpt-4o-mini"],
            "budget": {"usd": 10.0, "period": "monthly"}
        }))
        .await;

    let out = gw
        .cli(&["whoami"], &[("BURSAR_API_KEY", secret.as_str())], None)
        .await;
    ok(&out, "whoami");
    assert!(
        out.stdout.contains("me") && out.stdout.contains(&id),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("uma"), "{}", out.stdout);
    assert!(
        out.stdout.contains("echo") && out.stdout.contains("gpt-4o-mini"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&secret), "whoami printed the secret");

    let out = gw
        .cli(
            &["whoami", "--format", "json"],
            &[("BURSAR_API_KEY", secret.as_str())],
            None,
        )
        .await;
    ok(&out, "whoami json");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["id"], id.as_str());
    let mut models: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    models.sort();
    assert_eq!(models, ["echo", "gpt-4o-mini"]);
    assert!(
        v.to_string().contains("remaining"),
        "no remaining budget in whoami: {v}"
    );

    // A refused key: exit 1; no key at all: exit 2.
    let out = gw
        .cli(&["whoami"], &[("BURSAR_API_KEY", "bsr_unknown")], None)
        .await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let out = gw.cli(&["whoami"], &[], None).await;
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock).await;

    // 2: bad usage.
    for args in [
        vec!["frobnicate"],
        vec!["keys"],
        vec!["keys", "create"],
        vec!["keys", "create", "--name", "x", "--ttl", "soon"],
        vec!["keys", "list", "--format", "yaml"],
        vec!["keys", "update", "key_x"],
        vec!["env", "--shell", "tcsh", "--key", "bsr_x"],
        vec!["exec", "--key", "bsr_x"],
        vec!["usage", "--format", "xml"],
    ] {
        let out = gw.cli(&args, &[], None).await;
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
    // 2: an admin command without an admin key.
    let mut cmd = Command::new(bin());
    scrub_env(&mut cmd);
    cmd.args(["keys", "list"]).env("BURSAR_URL", gw.base());
    let out = run_cli(cmd).await;
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);

    // 1: the gateway refused.
    let out = gw
        .cli(&["keys", "revoke", "key_does_not_exist"], &[], None)
        .await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("404") || out.stderr.contains("no key"),
        "{}",
        out.stderr
    );
    let out = gw
        .cli(
            &["keys", "list"],
            &[("BURSAR_ADMIN_KEY", "bsra_wrong_admin_key_0000")],
            None,
        )
        .await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let out = gw
        .cli(
            &["keys", "create", "--name", "x", "--endpoints", "telepathy"],
            &[],
            None,
        )
        .await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("endpoints[0]"), "{}", out.stderr);
    let out = gw.cli(&["usage", "--group-by", "colour"], &[], None).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);

    // 1: no gateway there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = gw
        .cli(
            &["keys", "list"],
            &[("BURSAR_URL", &format!("http://127.0.0.1:{dead}"))],
            None,
        )
        .await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);

    // 0: help.
    let out = gw.cli(&["--help"], &[], None).await;
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("serve"));
}
