"""Constants and small helpers shared by the SDK tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
BURSAR_BIN = Path(os.environ.get("BURSAR_BIN") or _TARGET / "debug" / "bursar")
MOCK_BIN = Path(os.environ.get("MOCK_BIN") or _TARGET / "debug" / "mock-upstream")

ADMIN_KEY = "bsra_sdk_test_admin_key_0001"
OPENAI_SECRET = "sk-real-openai-secret-123456"
ANTHROPIC_SECRET = "sk-ant-real-secret-123456"
# The gateway's body limit in the suite's config (small, to test 413 cheaply).
MAX_BODY_BYTES = 1 << 20
# The other providers' real keys (tests/sdk/conftest.py configures them).
NATIVE_SECRETS = {
    "cohere": "co-real-cohere-secret-123456",
    "gemini": "AIza-real-gemini-secret-123456",
    "azure": "az-real-azure-secret-123456",
    "huggingface": "hf_real_huggingface_secret_123456",
    "perplexity": "pplx-real-perplexity-secret-123456",
    "anyscale": "esecret_real_anyscale_123456",
    "mistral": "real-mistral-secret-123456",
}
SECRET_FRAGMENTS = ("sk-real-openai-secret", "sk-ant-real-secret", *NATIVE_SECRETS.values())

# Built-in prices (USD per million tokens) of the models the tests use.
PRICES = {
    "gpt-4o-mini": (0.15, 0.60),
    "text-embedding-3-small": (0.02, 0.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "echo": (1.0, 2.0),
    "command-r-plus": (2.50, 10.0),
    "command-r": (0.15, 0.60),
    "gemini-2.5-flash": (0.30, 2.50),
    "sonar": (1.0, 1.0),
    "sonar-pro": (3.0, 15.0),
    "mistral-small-latest": (0.10, 0.30),
    "meta-llama/Meta-Llama-3-8B-Instruct": (0.15, 0.15),
}

# Every SDK call gives up quickly instead of hanging a CI run.
TIMEOUT = 20.0


def words(s: str) -> int:
    return len(s.split())


def expected_cost(model: str, prompt: int, completion: int) -> float:
    inp, out = PRICES[model]
    return (prompt * inp + completion * out) / 1_000_000


def as_text(obj) -> str:
    """Any SDK error body or object as text, for secret checks."""
    try:
        return json.dumps(obj, default=str)
    except (TypeError, ValueError):
        return str(obj)


def assert_no_secret(*texts) -> None:
    for t in texts:
        s = t if isinstance(t, str) else as_text(t)
        for frag in SECRET_FRAGMENTS:
            assert frag not in s, f"real provider key leaked: {s[:500]}"


def assert_usage_row(row: dict, *, key, model: str, provider: str, endpoint: str,
                     prompt: int, completion: int, status: int = 200) -> None:
    """A usage row names the key, model, provider and endpoint, carries the
    SDK-reported token counts and, for a priced model, the matching cost."""
    assert row["key_id"] == key.id, row
    assert row["model"] == model, row
    assert row["provider"] == provider, row
    assert row["endpoint"] == endpoint, row
    assert row["status"] == status, row
    assert row["prompt_tokens"] == prompt, row
    assert row["completion_tokens"] == completion, row
    assert row["latency_ms"] >= 0, row
    if model in PRICES and (prompt or completion):
        want = expected_cost(model, prompt, completion)
        assert row["cost_usd"] > 0, row
        assert abs(row["cost_usd"] - want) <= max(1e-12, want * 1e-6), (row, want)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no BURSAR_* and no provider
    variables leaking in from the caller's shell, plus `extra`."""
    drop = ("BURSAR_", "OPENAI_", "ANTHROPIC_", "CO_API", "COHERE_", "HF_", "GEMINI_", "GOOGLE_",
            "MISTRAL_", "PERPLEXITY", "PPLX_", "ANYSCALE_", "GROQ_", "AZURE_OPENAI_", "VECTARA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["NO_COLOR"] = "1"  # plain log files
    env.update(extra)
    return env
