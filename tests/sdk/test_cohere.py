"""The official `cohere` SDK (v2 and v1 clients) against `{gw}/cohere`."""

from __future__ import annotations

import cohere
import pytest

from sdkutil import NATIVE_SECRETS, TIMEOUT, assert_no_secret, assert_usage_row, words


def v2(gateway, key) -> cohere.ClientV2:
    return cohere.ClientV2(api_key=key, base_url=f"{gateway.url}/cohere", timeout=TIMEOUT)


def test_chat_plain(gateway, key, marker):
    text = f"hello cohere {marker}"
    r = v2(gateway, key).chat(model="command-r", messages=[{"role": "user", "content": text}])
    assert r.message.content[0].text == f"mock: {text}"
    billed = r.usage.billed_units
    assert (billed.input_tokens, billed.output_tokens) == (words(text), words(text) + 1)
    row = gateway.usage_row(key.id)
    assert_usage_row(row, key=key, model="command-r", provider="cohere", endpoint="chat",
                     prompt=int(billed.input_tokens), completion=int(billed.output_tokens))
    (up,) = gateway.upstream_requests(marker)
    assert up["path"] == "/v2/chat"
    assert up["headers"]["authorization"] == f"Bearer {NATIVE_SECRETS['cohere']}"


def test_chat_stream(gateway, key, marker):
    text = f"stream cohere please {marker}"
    events = list(v2(gateway, key).chat_stream(model="command-r-plus", messages=[{"role": "user", "content": text}]))
    types = [e.type for e in events]
    assert types[0] == "message-start" and types[-1] == "message-end"
    got = "".join(e.delta.message.content.text for e in events if e.type == "content-delta")
    assert got == f"mock: {text}"
    billed = events[-1].delta.usage.billed_units
    row = gateway.usage_row(key.id)
    assert_usage_row(row, key=key, model="command-r-plus", provider="cohere", endpoint="chat",
                     prompt=int(billed.input_tokens), completion=int(billed.output_tokens))


def test_v1_embed(gateway, key):
    client = cohere.Client(api_key=key, base_url=f"{gateway.url}/cohere", timeout=TIMEOUT)
    r = client.embed(model="embed-english-v3.0", texts=["one two three"], input_type="search_document")
    assert len(r.embeddings) == 1
    row = gateway.usage_row(key.id)
    assert row["endpoint"] == "embeddings" and row["prompt_tokens"] == 3 and row["cost_usd"] > 0


def test_refused_raises_cohere_errors(gateway, new_key):
    with pytest.raises(cohere.errors.UnauthorizedError) as e:
        v2(gateway, "bsr_definitely_not_valid").chat(model="command-r", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "invalid_api_key"
    scoped = new_key(models=["command-r"])
    with pytest.raises(cohere.errors.ForbiddenError) as e:
        v2(gateway, scoped).chat(model="command-r-plus", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "permission_denied"
    assert_no_secret(str(e.value.body))
