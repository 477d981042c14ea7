"""The official `huggingface_hub` InferenceClient against `{gw}/huggingface`."""

from __future__ import annotations

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from sdkutil import NATIVE_SECRETS, assert_no_secret, assert_usage_row

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def client(gateway, key) -> InferenceClient:
    return InferenceClient(base_url=f"{gateway.url}/huggingface", api_key=key, timeout=20)


def test_chat_plain(gateway, key, marker):
    text = f"hello hf {marker}"
    r = client(gateway, key).chat_completion(model=MODEL, messages=[{"role": "user", "content": text}])
    assert r.choices[0].message.content == f"mock: {text}"
    row = gateway.usage_row(key.id)
    assert_usage_row(row, key=key, model=MODEL, provider="huggingface", endpoint="chat",
                     prompt=r.usage.prompt_tokens, completion=r.usage.completion_tokens)
    (up,) = gateway.upstream_requests(marker)
    assert up["path"] == "/v1/chat/completions"
    assert up["headers"]["authorization"] == f"Bearer {NATIVE_SECRETS['huggingface']}"


def test_chat_stream(gateway, key, marker):
    text = f"stream hf {marker}"
    c = client(gateway, key)
    out = c.chat_completion(model=MODEL, messages=[{"role": "user", "content": text}], stream=True)
    got = "".join(c.choices[0].delta.content or "" for c in out if c.choices)
    assert got == f"mock: {text}"
    row = gateway.usage_row(key.id)
    assert row["provider"] == "huggingface" and row["completion_tokens"] == 4 and row["prompt_tokens"] == 10


def test_feature_extraction(gateway, key):
    url = f"{gateway.url}/huggingface/hf-inference/models/BAAI/bge-small-en-v1.5/pipeline/feature-extraction"
    c = InferenceClient(model=url, api_key=key, timeout=20)
    v = c.feature_extraction("embed me please")
    assert len(v) == 8
    row = gateway.usage_row(key.id)
    assert row["endpoint"] == "embeddings" and row["model"] == "BAAI/bge-small-en-v1.5" and row["prompt_tokens"] > 0


def test_refused_raises_hf_error(gateway):
    with pytest.raises(HfHubHTTPError) as e:
        client(gateway, "bsr_definitely_not_valid").chat_completion(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert e.value.response.status_code == 401
    assert e.value.response.json()["error"]["type"] == "invalid_api_key"
    assert_no_secret(e.value.response.text)
