"""Session fixtures for the SDK suite.

One `mock-upstream` and one `bursar serve` are started for the whole session
(on free loopback ports, state in a temporary directory) and stopped with
SIGTERM at the end. Tests make their own virtual keys (`new_key`), so the
usage rows of one test never mix with another's.

Binaries: $BURSAR_BIN and $MOCK_BIN, else target/debug/{bursar,mock-upstream}
(tests/sdk/run.sh builds them when they are missing).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sdkutil import ADMIN_KEY, ANTHROPIC_SECRET, BURSAR_BIN, MOCK_BIN, NATIVE_SECRETS, OPENAI_SECRET, MAX_BODY_BYTES, clean_env

START_TIMEOUT = 30.0
USAGE_TIMEOUT = 10.0

# The SDKs (httpx) honour HTTP(S)_PROXY; loopback must never go through one.
for _var in ("NO_PROXY", "no_proxy"):
    _have = [p for p in os.environ.get(_var, "").split(",") if p]
    os.environ[_var] = ",".join(_have + ["127.0.0.1", "localhost", "::1"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)


def _start(name: str, argv_for_port, env: dict[str, str], cwd: Path, health_path: str) -> Proc:
    """Start a server on a free port and wait until `health_path` answers 200.
    Retries on a fresh port if the process dies before it is healthy (a port
    taken between probing and binding)."""
    log = cwd / f"{name}.log"
    last_err = ""
    for _attempt in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv_for_port(port),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(name, popen, url, log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                last_err = f"{name} exited with {popen.returncode}"
                break
            try:
                r = httpx.get(url + health_path, timeout=1.0, trust_env=False)
                if r.status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            proc.stop()
            last_err = f"{name} did not answer {health_path} within {START_TIMEOUT:.0f} s"
    raise RuntimeError(f"{last_err}; log {log}:\n{_tail(log)}")


class VirtualKey(str):
    """A virtual key's secret (usable wherever the SDKs want an api_key)
    that also carries its `id` and the admin API's view of it."""

    id: str
    info: dict

    def __new__(cls, info: dict) -> "VirtualKey":
        obj = super().__new__(cls, info["key"])
        obj.id = info["id"]
        obj.info = info
        return obj


@dataclass
class Gateway:
    url: str
    mock_url: str
    tmp: Path
    admin: httpx.Client = field(repr=False)

    # -- admin API ---------------------------------------------------------
    def create_key(self, **fields) -> VirtualKey:
        fields.setdefault("name", f"sdk-test-{uuid.uuid4().hex[:8]}")
        r = self.admin.post("/admin/v1/keys", json=fields)
        assert r.status_code == 201, f"create key: {r.status_code} {r.text}"
        body = r.json()
        assert body["key"].startswith("bsr_")
        return VirtualKey(body)

    def revoke(self, key_id: str) -> dict:
        r = self.admin.post(f"/admin/v1/keys/{key_id}/revoke")
        assert r.status_code == 200, f"revoke: {r.status_code} {r.text}"
        return r.json()

    def usage(self, key_id: str) -> list[dict]:
        r = self.admin.get("/admin/v1/usage", params={"key_id": key_id, "limit": 1000})
        assert r.status_code == 200, f"usage: {r.status_code} {r.text}"
        body = r.json()
        assert isinstance(body.get("data"), list), body
        return body["data"]

    def wait_usage(self, key_id: str, count: int = 1, timeout: float = USAGE_TIMEOUT) -> list[dict]:
        """Poll until the key has at least `count` usage rows (the writer is
        asynchronous); answers them, oldest first."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = self.usage(key_id)
            if len(rows) >= count:
                # A short settle so a row that should not exist can show up.
                time.sleep(0.05)
                rows = self.usage(key_id)
                return sorted(rows, key=lambda r: (r["created_at"], r["request_id"]))
            time.sleep(0.05)
        raise AssertionError(f"expected {count} usage row(s) for {key_id} within {timeout} s, got {rows}")

    def usage_row(self, key_id: str, request_id: str | None = None, count: int = 1) -> dict:
        """The one usage row of a key (or the one with `request_id`)."""
        rows = self.wait_usage(key_id, count)
        if request_id is not None:
            matching = [r for r in rows if r["request_id"] == request_id]
            assert len(matching) == 1, f"no usage row with request_id {request_id}: {rows}"
            return matching[0]
        assert len(rows) == count == 1, f"expected exactly one usage row: {rows}"
        return rows[0]

    # -- mock upstream -----------------------------------------------------
    def upstream_requests(self, marker: str | None = None) -> list[dict]:
        """Requests the mock received (optionally only those whose body
        contains `marker`)."""
        r = httpx.get(self.mock_url + "/__mock/requests", timeout=5, trust_env=False)
        r.raise_for_status()
        reqs = r.json()
        if marker is not None:
            reqs = [q for q in reqs if marker in q["body"]]
        return reqs


@pytest.fixture(scope="session")
def gateway(request):
    for b in (BURSAR_BIN, MOCK_BIN):
        if not os.access(b, os.X_OK):
            pytest.exit(f"missing binary {b}: run `cargo build --workspace --bins` (or tests/sdk/run.sh)", returncode=2)
    tmp = Path(tempfile.mkdtemp(prefix="bursar-sdk-"))
    procs: list[Proc] = []
    try:
        mock = _start(
            "mock-upstream",
            lambda port: [str(MOCK_BIN), "--listen", f"127.0.0.1:{port}"],
            clean_env(),
            tmp,
            "/__mock/health",
        )
        procs.append(mock)
        config = tmp / "bursar.toml"
        config.write_text(
            f"""\
max_body_bytes = {MAX_BODY_BYTES}

[providers.openai]
base_url = "{mock.url}/v1"
api_key  = "{OPENAI_SECRET}"

[providers.anthropic]
base_url = "{mock.url}"
api_key  = "{ANTHROPIC_SECRET}"

[providers.cohere]
base_url = "{mock.url}"
api_key  = "{NATIVE_SECRETS['cohere']}"

[providers.gemini]
base_url = "{mock.url}"
api_key  = "{NATIVE_SECRETS['gemini']}"

[providers.azure]
base_url = "{mock.url}"
api_key  = "{NATIVE_SECRETS['azure']}"

[providers.huggingface]
base_url = "{mock.url}"
api_key  = "{NATIVE_SECRETS['huggingface']}"

[providers.perplexity]
base_url = "{mock.url}"
api_key  = "{NATIVE_SECRETS['perplexity']}"

[providers.anyscale]
base_url = "{mock.url}/v1"
api_key  = "{NATIVE_SECRETS['anyscale']}"

[providers.mistral]
base_url = "{mock.url}/v1"
api_key  = "{NATIVE_SECRETS['mistral']}"
"""
        )
        bursar = _start(
            "bursar",
            lambda port: [
                str(BURSAR_BIN),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--database",
                f"sqlite://{tmp}/b.db",
                "--config",
                str(config),
            ],
            clean_env(BURSAR_ADMIN_KEY=ADMIN_KEY),
            tmp,
            "/healthz",
        )
        procs.append(bursar)
        admin = httpx.Client(
            base_url=bursar.url,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
            trust_env=False,
        )
        gw = Gateway(url=bursar.url, mock_url=mock.url, tmp=tmp, admin=admin)
        _LOGS[:] = [p.log for p in procs]
        yield gw
        admin.close()
    finally:
        for p in reversed(procs):
            p.stop()
    # Keep the logs and database of a failed run for a look; else clean up.
    if request.session.testsfailed == 0:
        shutil.rmtree(tmp, ignore_errors=True)


_LOGS: list[Path] = []


@pytest.fixture
def new_key(gateway):
    """Factory: `new_key(models=[...], max_tokens_per_request=N, ...)` makes a
    fresh virtual key (unscoped by default) and answers a VirtualKey."""
    return gateway.create_key


@pytest.fixture
def key(new_key) -> VirtualKey:
    """A fresh unscoped virtual key: its secret (a str) with `.id`."""
    return new_key()


@pytest.fixture
def marker() -> str:
    """A word unique to the test, to find its requests at the mock."""
    return f"m{uuid.uuid4().hex[:12]}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """On failure, show the tail of the servers' logs."""
    if exitstatus in (0, 5) or not _LOGS:
        return
    for log in _LOGS:
        terminalreporter.write_sep("-", f"tail of {log}")
        terminalreporter.write_line(_tail(log, 40))

