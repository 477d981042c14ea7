"""The official `anthropic` SDK against bursar's native Anthropic surface
(`{gw}/anthropic`), unchanged but for base URL and key (sent as x-api-key)."""

from __future__ import annotations

import anthropic
import pytest
from anthropic import Anthropic

from sdkutil import ANTHROPIC_SECRET, TIMEOUT, assert_no_secret, assert_usage_row, words

SYSTEM = "You are terse."


def client(gateway, key, **kw) -> Anthropic:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", TIMEOUT)
    return Anthropic(base_url=f"{gateway.url}/anthropic", api_key=key, **kw)


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def mock_input_tokens(text: str) -> int:
    """What mock-upstream counts: words of the system prompt and messages, plus 7."""
    return words(SYSTEM) + words(text) + 7


def provider_of(model: str) -> str:
    return "echo" if model == "echo" else "anthropic"


def reply_of(model: str, text: str) -> str:
    return text if model == "echo" else f"mock: {text}"


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "echo"])
def test_messages_create(gateway, key, marker, model):
    text = f"hello claude {marker}"
    raw = client(gateway, key).messages.with_raw_response.create(
        model=model, max_tokens=256, system=SYSTEM, messages=msgs(text)
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.model == model
    assert message.content[0].type == "text"
    assert message.content[0].text == reply_of(model, text)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    if model != "echo":
        assert message.usage.input_tokens == mock_input_tokens(text)
        assert message.usage.output_tokens == words(reply_of(model, text))

    request_id = raw.headers.get("x-request-id")
    assert request_id
    row = gateway.usage_row(key.id, request_id)
    assert_usage_row(
        row, key=key, model=model, provider=provider_of(model), endpoint="messages",
        prompt=message.usage.input_tokens, completion=message.usage.output_tokens,
    )
    assert float(raw.headers["x-bursar-cost-usd"]) == pytest.approx(row["cost_usd"], rel=1e-6, abs=1e-8)

    if model != "echo":
        # Upstream got the real key as x-api-key, and no trace of the virtual one.
        (up,) = gateway.upstream_requests(marker)
        assert up["path"] == "/v1/messages"
        assert up["headers"].get("x-api-key") == ANTHROPIC_SECRET
        assert up["headers"].get("anthropic-version")
        assert str(key) not in str(up["headers"])


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "echo"])
def test_messages_stream(gateway, key, model):
    text = "stream a few words back"
    with client(gateway, key).messages.stream(
        model=model, max_tokens=256, system=SYSTEM, messages=msgs(text)
    ) as s:
        final_text = s.get_final_text()
        final = s.get_final_message()
    assert final_text == reply_of(model, text)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    if model != "echo":
        assert final.usage.input_tokens == mock_input_tokens(text)
        assert final.usage.output_tokens == words(reply_of(model, text))
    row = gateway.usage_row(key.id)
    assert_usage_row(
        row, key=key, model=model, provider=provider_of(model), endpoint="messages",
        prompt=final.usage.input_tokens, completion=final.usage.output_tokens,
    )


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "echo"])
def test_count_tokens_matches_messages(gateway, key, model):
    text = "how many tokens is this"
    c = client(gateway, key)
    counted = c.messages.count_tokens(model=model, system=SYSTEM, messages=msgs(text))
    assert counted.input_tokens > 0
    message = c.messages.create(model=model, max_tokens=64, system=SYSTEM, messages=msgs(text))
    assert counted.input_tokens == message.usage.input_tokens


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "echo"])
def test_count_tokens_is_not_billed(gateway, key, model):
    c = client(gateway, key)
    raw = c.messages.with_raw_response.count_tokens(model=model, system=SYSTEM, messages=msgs("free to count"))
    assert raw.parse().input_tokens > 0
    counted_id = raw.headers["x-request-id"]
    # A billed call after it, so the writer has surely flushed this key's rows.
    billed = c.messages.with_raw_response.create(model="echo", max_tokens=16, messages=msgs("flush"))
    billed_id = billed.headers["x-request-id"]
    rows = gateway.wait_usage(key.id, 1)
    assert billed_id in {r["request_id"] for r in rows}
    counted_rows = [r for r in rows if r["request_id"] == counted_id]
    assert all(r["cost_usd"] == 0 for r in counted_rows), counted_rows
    spend = gateway.admin.get(f"/admin/v1/keys/{key.id}").json()["spend_usd"]
    billed_cost = sum(r["cost_usd"] for r in rows if r["request_id"] == billed_id)
    assert spend == pytest.approx(billed_cost, rel=1e-9, abs=1e-12)


def test_stream_closed_before_message_delta_is_still_counted(gateway, key):
    text = "one two three four five"
    got = ""
    with client(gateway, key).messages.stream(model="mock-slow", max_tokens=64, messages=msgs(text)) as s:
        for event in s:
            if event.type == "text":
                got += event.text
            if event.type == "content_block_stop":
                break
    assert got == f"mock: {text}"  # the client has the whole answer
    row = gateway.usage_row(key.id)
    assert row["status"] == 499, row
    assert row["prompt_tokens"] == mock_input_tokens_no_system(text), row
    assert row["completion_tokens"] >= words(got), row


def mock_input_tokens_no_system(text: str) -> int:
    return words(text) + 7


def test_models_list_scoped_key(gateway, new_key):
    key = new_key(models=["claude-haiku-*", "echo"])
    ids = [m.id for m in client(gateway, key).models.list()]
    assert ids == ["claude-haiku-4-5"]


def test_request_id_reaches_the_sdk(gateway, key):
    raw = client(gateway, key).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=16, messages=msgs("which request")
    )
    message = raw.parse()
    assert message._request_id == raw.headers["x-request-id"]
    gateway.usage_row(key.id, message._request_id)


def test_beta_messages(gateway, key, marker):
    """`client.beta` sends `anthropic-beta`; it reaches the provider."""
    text = f"beta hello {marker}"
    message = client(gateway, key).beta.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=msgs(text), betas=["context-management-2025-06-27"]
    )
    assert message.content[0].text == f"mock: {text}"
    (up,) = gateway.upstream_requests(marker)
    assert up["path"] == "/v1/messages"
    assert up["headers"].get("anthropic-beta") == "context-management-2025-06-27"
    row = gateway.usage_row(key.id)
    assert_usage_row(
        row, key=key, model="claude-sonnet-4-5", provider="anthropic", endpoint="messages",
        prompt=message.usage.input_tokens, completion=message.usage.output_tokens,
    )


# ------------------------------------------------------------------- errors


def test_revoked_key_is_rejected(gateway, new_key):
    key = new_key()
    c = client(gateway, key)
    c.messages.create(model="echo", max_tokens=16, messages=msgs("still valid"))
    gateway.wait_usage(key.id, 1)  # see test_openai.py::test_revoke_while_key_in_use
    gateway.revoke(key.id)
    with pytest.raises(anthropic.AuthenticationError) as ei:
        c.messages.create(model="echo", max_tokens=16, messages=msgs("now revoked"))
    e = ei.value
    assert e.status_code == 401
    assert e.body["type"] == "error"
    assert e.body["error"]["type"] == "invalid_api_key"


def test_unknown_key_is_rejected(gateway):
    with pytest.raises(anthropic.AuthenticationError) as ei:
        client(gateway, "bsr_" + "B" * 36).messages.create(
            model="claude-sonnet-4-5", max_tokens=16, messages=msgs("who am i")
        )
    assert ei.value.body["error"]["type"] == "invalid_api_key"


def test_model_outside_scope(gateway, new_key):
    key = new_key(models=["echo", "claude-haiku-*"])
    c = client(gateway, key)
    with pytest.raises(anthropic.PermissionDeniedError) as ei:
        c.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=msgs("not allowed"))
    assert ei.value.status_code == 403
    assert ei.value.body["error"]["type"] == "permission_denied"
    # A model the glob allows goes through.
    ok = c.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=msgs("allowed"))
    assert ok.content[0].text == "mock: allowed"


def test_provider_outside_scope(gateway, new_key):
    key = new_key(providers=["openai", "echo"])
    c = client(gateway, key)
    assert c.messages.create(model="echo", max_tokens=16, messages=msgs("echo is fine")).content
    with pytest.raises(anthropic.PermissionDeniedError) as ei:
        c.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=msgs("not this provider"))
    assert ei.value.body["error"]["type"] == "permission_denied"


def test_max_tokens_above_key_limit(gateway, new_key):
    key = new_key(max_tokens_per_request=100)
    c = client(gateway, key)
    with pytest.raises(anthropic.BadRequestError) as ei:
        c.messages.create(model="claude-sonnet-4-5", max_tokens=101, messages=msgs("too many"))
    assert ei.value.body["error"]["type"] == "request_blocked"


def test_upstream_500_is_server_error_without_the_real_key(gateway, key, marker):
    c = client(gateway, key)
    with pytest.raises(anthropic.InternalServerError) as ei:
        c.messages.create(model="mock-error-500", max_tokens=16, messages=msgs(f"break {marker}"))
    e = ei.value
    assert e.status_code == 502
    assert e.body["error"]["type"] == "upstream_error"
    (up,) = gateway.upstream_requests(marker)
    assert up["headers"]["x-api-key"] == ANTHROPIC_SECRET
    assert_no_secret(e.message, e.body, e.response.text, dict(e.response.headers))


def test_upstream_500_while_streaming(gateway, key):
    with pytest.raises(anthropic.InternalServerError) as ei:
        with client(gateway, key).messages.stream(
            model="mock-error-500", max_tokens=16, messages=msgs("break")
        ) as s:
            s.get_final_text()
    assert ei.value.status_code == 502
    assert_no_secret(ei.value.message, ei.value.body, ei.value.response.text)


def test_rpm_limit_is_rate_limit_error(gateway, new_key):
    key = new_key(rpm=1)
    c = client(gateway, key)
    c.messages.create(model="echo", max_tokens=16, messages=msgs("tick"))
    with pytest.raises(anthropic.RateLimitError) as ei:
        c.messages.create(model="echo", max_tokens=16, messages=msgs("one too many"))
    assert ei.value.body["error"]["type"] == "rate_limit_exceeded"
    assert int(ei.value.response.headers["retry-after"]) >= 1


def test_upstream_429_is_rate_limit_error(gateway, key):
    with pytest.raises(anthropic.RateLimitError) as ei:
        client(gateway, key).messages.create(model="mock-error-429", max_tokens=16, messages=msgs("slow down"))
    assert ei.value.status_code == 429
    assert ei.value.response.headers.get("retry-after")
