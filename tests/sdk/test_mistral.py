"""The official `mistralai` SDK against `{gw}/mistral` (an OpenAI-compatible
built-in entry)."""

from __future__ import annotations

import pytest
from mistralai.client import Mistral, errors

from sdkutil import NATIVE_SECRETS, assert_no_secret, assert_usage_row


def client(gateway, key) -> Mistral:
    return Mistral(api_key=key, server_url=f"{gateway.url}/mistral", timeout_ms=20_000)


def test_chat_plain(gateway, key, marker):
    text = f"hello mistral {marker}"
    r = client(gateway, key).chat.complete(model="mistral-small-latest", messages=[{"role": "user", "content": text}])
    assert r.choices[0].message.content == f"mock: {text}"
    row = gateway.usage_row(key.id)
    assert_usage_row(row, key=key, model="mistral-small-latest", provider="mistral", endpoint="chat",
                     prompt=r.usage.prompt_tokens, completion=r.usage.completion_tokens)
    (up,) = gateway.upstream_requests(marker)
    assert up["path"] == "/v1/chat/completions"
    assert up["headers"]["authorization"] == f"Bearer {NATIVE_SECRETS['mistral']}"


def test_chat_stream(gateway, key, marker):
    text = f"stream mistral {marker}"
    got = ""
    for ev in client(gateway, key).chat.stream(model="mistral-small-latest", messages=[{"role": "user", "content": text}]):
        if ev.data.choices:
            got += ev.data.choices[0].delta.content or ""
    assert got == f"mock: {text}"
    row = gateway.usage_row(key.id)
    assert row["provider"] == "mistral" and row["prompt_tokens"] == 10 and row["completion_tokens"] == 4
    assert row["cost_usd"] > 0


def test_refused_raises_sdk_error(gateway):
    with pytest.raises(errors.SDKError) as e:
        client(gateway, "bsr_definitely_not_valid").chat.complete(model="mistral-small-latest", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401
    assert "invalid_api_key" in e.value.body
    assert_no_secret(e.value.body)
