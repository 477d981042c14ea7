"""`bursar env` prints the variables that point the SDKs at the gateway: with
them in the environment, `OpenAI()` and `Anthropic()` need no arguments."""

from __future__ import annotations

import os
import subprocess

from anthropic import Anthropic
from openai import OpenAI

from sdkutil import BURSAR_BIN, clean_env


def test_sdks_from_bursar_env(gateway, key, tmp_path, monkeypatch):
    out = subprocess.run(
        [str(BURSAR_BIN), "env", "--key", str(key), "--shell", "dotenv", "--no-file"],
        env=clean_env(BURSAR_URL=gateway.url),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "bursar.env").exists(), "--no-file wrote bursar.env"
    variables = {}
    for line in out.stdout.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            variables[name] = value
    assert variables["BURSAR_URL"] == gateway.url
    assert variables["OPENAI_BASE_URL"] == f"{gateway.url}/v1"
    assert variables["ANTHROPIC_BASE_URL"] == f"{gateway.url}/anthropic"
    assert variables["OPENAI_API_KEY"] == key
    assert variables["ANTHROPIC_API_KEY"] == key

    # Only what bursar env printed decides where the SDKs go.
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "ANTHROPIC_", "BURSAR_")):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    chat = OpenAI().chat.completions.create(model="echo", messages=[{"role": "user", "content": "env openai"}])
    assert chat.choices[0].message.content == "env openai"
    message = Anthropic().messages.create(
        model="claude-sonnet-4-5", max_tokens=32, messages=[{"role": "user", "content": "env anthropic"}]
    )
    assert message.content[0].text == "mock: env anthropic"

    rows = gateway.wait_usage(key.id, 2)
    assert sorted((r["provider"], r["endpoint"]) for r in rows) == [("anthropic", "messages"), ("echo", "chat")]
