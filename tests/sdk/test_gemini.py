"""The official `google-genai` SDK against `{gw}/gemini` (Gemini API)."""

from __future__ import annotations

import pytest
from google import genai
from google.genai import errors, types

from sdkutil import NATIVE_SECRETS, assert_no_secret, assert_usage_row, words


def client(gateway, key) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=f"{gateway.url}/gemini", timeout=20_000))


def test_generate_plain(gateway, key, marker):
    text = f"hello gemini {marker}"
    c = client(gateway, key)  # the SDK closes its HTTP client when the Client is collected
    r = c.models.generate_content(model="gemini-2.5-flash", contents=text)
    assert r.text == f"mock: {text}"
    u = r.usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count) == (words(text), words(text) + 1)
    row = gateway.usage_row(key.id)
    assert_usage_row(row, key=key, model="gemini-2.5-flash", provider="gemini", endpoint="chat",
                     prompt=u.prompt_token_count, completion=u.candidates_token_count)
    (up,) = gateway.upstream_requests(marker)
    # google-genai asks for the API version it wants (v1 or v1beta): both pass through.
    assert up["path"].endswith("/models/gemini-2.5-flash:generateContent")
    assert up["headers"]["x-goog-api-key"] == NATIVE_SECRETS["gemini"]
    assert str(key) not in str(up)


def test_generate_stream(gateway, key, marker):
    text = f"stream gemini now {marker}"
    c = client(gateway, key)
    chunks = list(c.models.generate_content_stream(model="gemini-2.5-flash", contents=text))
    assert "".join(c.text for c in chunks) == f"mock: {text}"
    u = chunks[-1].usage_metadata
    row = gateway.usage_row(key.id)
    assert_usage_row(row, key=key, model="gemini-2.5-flash", provider="gemini", endpoint="chat",
                     prompt=u.prompt_token_count, completion=u.candidates_token_count)


def test_count_tokens_is_free(gateway, key):
    c = client(gateway, key)
    r = c.models.count_tokens(model="gemini-2.5-flash", contents="three little words")
    assert r.total_tokens == 3
    row = gateway.usage_row(key.id)
    assert row["endpoint"] == "count_tokens" and row["cost_usd"] == 0


def test_refused_raises_client_error(gateway, new_key):
    bad = client(gateway, "bsr_definitely_not_valid")
    with pytest.raises(errors.ClientError) as e:
        bad.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert e.value.code == 401 and e.value.status == "UNAUTHENTICATED"
    scoped = new_key(models=["gemini-2.5-pro"])
    narrow = client(gateway, scoped)
    with pytest.raises(errors.ClientError) as e:
        narrow.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert e.value.code == 403 and e.value.status == "PERMISSION_DENIED"
    assert e.value.details["error"]["type"] == "permission_denied"
    assert_no_secret(str(e.value.details))
