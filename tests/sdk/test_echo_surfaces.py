"""The built-in `echo` model through the official `cohere` (v2 and v1
clients) and `google-genai` SDKs: plain and streamed calls echo the last user
message, and the usage rows carry the SDK-reported token counts."""

from __future__ import annotations

import cohere
import pytest
from google import genai
from google.genai import errors, types

from sdkutil import TIMEOUT, assert_usage_row


def v2(gateway, key) -> cohere.ClientV2:
    return cohere.ClientV2(api_key=key, base_url=f"{gateway.url}/cohere", timeout=TIMEOUT)


def v1(gateway, key) -> cohere.Client:
    return cohere.Client(api_key=key, base_url=f"{gateway.url}/cohere", timeout=TIMEOUT)


def gemini(gateway, key) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=f"{gateway.url}/gemini", timeout=20_000))


def echo_row(gateway, key, prompt, completion, endpoint="chat"):
    row = gateway.usage_row(key.id)
    assert_usage_row(row, key=key, model="echo", provider="echo", endpoint=endpoint,
                     prompt=int(prompt), completion=int(completion))
    return row


def test_cohere_v2_chat(gateway, key, marker):
    text = f"echo cohere v2 {marker}"
    r = v2(gateway, key).chat(model="echo", messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": text},
    ])
    assert r.message.content[0].text == text
    assert r.finish_reason == "COMPLETE"
    billed = r.usage.billed_units
    assert billed.input_tokens > 0 and billed.output_tokens > 0
    assert r.usage.tokens.output_tokens == billed.output_tokens
    echo_row(gateway, key, billed.input_tokens, billed.output_tokens)
    assert gateway.upstream_requests(marker) == []


def test_cohere_v2_chat_stream(gateway, key, marker):
    text = f"echo cohere v2 streamed word by word {marker}"
    events = list(v2(gateway, key).chat_stream(model="echo", messages=[{"role": "user", "content": text}]))
    types_ = [e.type for e in events]
    assert types_[:2] == ["message-start", "content-start"]
    assert types_[-2:] == ["content-end", "message-end"]
    deltas = [e.delta.message.content.text for e in events if e.type == "content-delta"]
    assert len(deltas) == len(text.split())
    assert "".join(deltas) == text
    end = events[-1].delta
    assert end.finish_reason == "COMPLETE"
    billed = end.usage.billed_units
    assert end.usage.tokens.input_tokens == billed.input_tokens
    echo_row(gateway, key, billed.input_tokens, billed.output_tokens)
    assert gateway.upstream_requests(marker) == []


def test_cohere_v1_chat(gateway, key, marker):
    text = f"echo cohere v1 {marker}"
    r = v1(gateway, key).chat(model="echo", message=text, preamble="be brief",
                              chat_history=[{"role": "USER", "message": "before"},
                                            {"role": "CHATBOT", "message": "reply"}])
    assert r.text == text
    assert r.generation_id
    assert r.finish_reason == "COMPLETE"
    billed = r.meta.billed_units
    assert billed.input_tokens > 0 and billed.output_tokens > 0
    echo_row(gateway, key, billed.input_tokens, billed.output_tokens)
    assert gateway.upstream_requests(marker) == []


def test_cohere_v1_chat_stream(gateway, key, marker):
    text = f"echo cohere v1 streamed please {marker}"
    events = list(v1(gateway, key).chat_stream(model="echo", message=text))
    kinds = [e.event_type for e in events]
    assert kinds[0] == "stream-start" and kinds[-1] == "stream-end"
    assert "".join(e.text for e in events if e.event_type == "text-generation") == text
    end = events[-1]
    assert end.finish_reason == "COMPLETE"
    assert end.response.text == text
    billed = end.response.meta.billed_units
    echo_row(gateway, key, billed.input_tokens, billed.output_tokens)
    assert gateway.upstream_requests(marker) == []


def test_gemini_generate_content(gateway, key, marker):
    text = f"echo gemini {marker}"
    c = gemini(gateway, key)
    r = c.models.generate_content(
        model="echo",
        contents=[
            types.Content(role="user", parts=[types.Part(text="earlier")]),
            types.Content(role="model", parts=[types.Part(text="answer")]),
            types.Content(role="user", parts=[types.Part(text=text)]),
        ],
        config=types.GenerateContentConfig(system_instruction="be brief"),
    )
    assert r.text == text
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.model_version == "echo"
    u = r.usage_metadata
    assert u.prompt_token_count > 0 and u.candidates_token_count > 0
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count
    echo_row(gateway, key, u.prompt_token_count, u.candidates_token_count)
    assert gateway.upstream_requests(marker) == []


def test_gemini_generate_content_stream(gateway, key, marker):
    text = f"echo gemini streamed in pieces {marker}"
    c = gemini(gateway, key)
    chunks = list(c.models.generate_content_stream(model="echo", contents=text))
    assert len(chunks) == len(text.split())
    assert "".join(ch.text for ch in chunks) == text
    assert all(ch.usage_metadata is not None for ch in chunks)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    u = chunks[-1].usage_metadata
    echo_row(gateway, key, u.prompt_token_count, u.candidates_token_count)
    assert gateway.upstream_requests(marker) == []


def test_gemini_count_tokens_is_free(gateway, key, marker):
    text = f"count these echo words {marker}"
    c = gemini(gateway, key)
    r = c.models.count_tokens(model="echo", contents=text)
    assert r.total_tokens > 0
    # The same prompt costs the same count in generate_content.
    g = c.models.generate_content(model="echo", contents=text)
    assert g.usage_metadata.prompt_token_count == r.total_tokens
    rows = gateway.wait_usage(key.id, 2)
    counted = [row for row in rows if row["endpoint"] == "count_tokens"]
    assert len(counted) == 1
    assert counted[0]["provider"] == "echo"
    assert counted[0]["prompt_tokens"] == 0 and counted[0]["cost_usd"] == 0
    assert gateway.upstream_requests(marker) == []


def test_unsupported_echo_paths_raise_sdk_errors(gateway, key):
    with pytest.raises(cohere.errors.NotFoundError) as e:
        v2(gateway, key).embed(model="echo", texts=["x"], input_type="search_document",
                               embedding_types=["float"])
    assert "echo" in e.value.body["message"]
    c = gemini(gateway, key)
    with pytest.raises(errors.ClientError) as e:
        c.models.embed_content(model="echo", contents="x")
    assert e.value.code == 404 and e.value.status == "NOT_FOUND"
