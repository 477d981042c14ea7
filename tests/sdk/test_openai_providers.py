"""The official `openai` SDK pointed at the Perplexity, AnyScale and Azure
OpenAI surfaces (`openai.AzureOpenAI` for Azure)."""

from __future__ import annotations

import openai
import pytest
from openai import AzureOpenAI, OpenAI

from sdkutil import NATIVE_SECRETS, TIMEOUT, assert_no_secret, assert_usage_row

SURFACES = [
    ("perplexity", "sonar", "/chat/completions"),
    ("anyscale", "meta-llama/Meta-Llama-3-8B-Instruct", "/v1/chat/completions"),
]


def azure(gateway, key) -> AzureOpenAI:
    return AzureOpenAI(azure_endpoint=f"{gateway.url}/azure", api_key=key, api_version="2024-10-21",
                       max_retries=0, timeout=TIMEOUT)


@pytest.mark.parametrize("entry,model,path", SURFACES)
def test_plain_and_stream(gateway, new_key, marker, entry, model, path):
    key = new_key()
    c = OpenAI(base_url=f"{gateway.url}/{entry}", api_key=key, max_retries=0, timeout=TIMEOUT)
    text = f"hello {entry} {marker}"
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    assert r.choices[0].message.content == f"mock: {text}"
    row = gateway.usage_row(key.id, r._request_id)
    assert_usage_row(row, key=key, model=model, provider=entry, endpoint="chat",
                     prompt=r.usage.prompt_tokens, completion=r.usage.completion_tokens)
    (up,) = gateway.upstream_requests(marker)
    assert up["path"] == path
    assert up["headers"]["authorization"] == f"Bearer {NATIVE_SECRETS[entry]}"

    stream = c.chat.completions.create(model=model, stream=True, messages=[{"role": "user", "content": text}])
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == f"mock: {text}"
    rows = gateway.wait_usage(key.id, 2)
    assert rows[1]["prompt_tokens"] == r.usage.prompt_tokens
    assert rows[1]["completion_tokens"] == r.usage.completion_tokens


@pytest.mark.parametrize("entry", ["perplexity", "anyscale"])
def test_refused(gateway, entry):
    c = OpenAI(base_url=f"{gateway.url}/{entry}", api_key="bsr_definitely_not_valid", max_retries=0, timeout=TIMEOUT)
    with pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "invalid_api_key"


def test_azure_plain_stream_and_refused(gateway, new_key, marker):
    key = new_key()
    text = f"hello azure {marker}"
    r = azure(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    assert r.choices[0].message.content == f"mock: {text}"
    row = gateway.usage_row(key.id, r._request_id)
    assert_usage_row(row, key=key, model="gpt-4o-mini", provider="azure", endpoint="chat",
                     prompt=r.usage.prompt_tokens, completion=r.usage.completion_tokens)
    (up,) = gateway.upstream_requests(marker)
    assert up["path"] == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert up["query"] == "api-version=2024-10-21"
    assert up["headers"]["api-key"] == NATIVE_SECRETS["azure"]
    assert "authorization" not in up["headers"]

    stream = azure(gateway, key).chat.completions.create(model="gpt-4o-mini", stream=True,
                                                          messages=[{"role": "user", "content": text}])
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == f"mock: {text}"
    rows = gateway.wait_usage(key.id, 2)
    assert rows[1]["completion_tokens"] == r.usage.completion_tokens and rows[1]["cost_usd"] > 0

    scoped = new_key(models=["gpt-4o"])
    with pytest.raises(openai.PermissionDeniedError) as e:
        azure(gateway, scoped).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "permission_denied"
    assert_no_secret(str(e.value.body))
