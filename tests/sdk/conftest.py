"""Fixtures for lowbit's SDK end-to-end tests: the real `lowbit serve` binary on a free port.

`server` is one shared default server for the whole session; `server_factory` starts servers
with extra flags for the tests that need them (each is stopped with SIGTERM at the test's end,
and the test fails unless it exits 0). Every server's stderr goes to a file whose content is
shown when something goes wrong.

Environment: LOWBIT_BIN (default target/release/lowbit), LOWBIT_TEST_MODEL (default
models/SmolLM2-135M-Instruct.Q4_1.gguf).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LOWBIT_BIN", ROOT / "target" / "release" / "lowbit"))
MODEL_PATH = Path(
    os.environ.get("LOWBIT_TEST_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
)
# The served model id is the file's stem unless --served-model-name says otherwise.
MODEL = MODEL_PATH.stem

READY_TIMEOUT_S = 30.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# How long a server may take to exit after SIGTERM (its drain included).
EXIT_TIMEOUT_S = 40.0


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies, so that a killed pytest run
    (a global timeout, Ctrl-C twice) leaves no server behind. Linux only; harmless elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0):
    """(status, headers, body text) of a GET, whatever the status."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {"name{labels}": value} (label text kept as the server wrote it)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+?(?:\{.*\})?)\s+(\S+)(?:\s+\d+)?$", line)
        assert m, f"unparsable metrics line: {line!r}"
        out[m.group(1)] = float(m.group(2))
    return out


class Server:
    """One running `lowbit serve`."""

    def __init__(self, flags: list[str], env: dict[str, str] | None = None):
        self.flags = list(flags)
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.url = ""
        self._log = tempfile.NamedTemporaryFile(prefix="lowbit-serve-", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "Server":
        assert BIN.exists(), f"{BIN} is missing: cargo build --release --bin lowbit"
        assert MODEL_PATH.exists(), f"{MODEL_PATH} is missing: ./scripts/fetch-model.sh"
        # The server must see only the flags the test gives it, not LOWBIT_* of the caller.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOWBIT_")}
        env.update(self.extra_env)
        for attempt in range(3):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            args = [
                str(BIN), "serve",
                "--model", str(MODEL_PATH),
                "--host", "127.0.0.1",
                "--port", str(self.port),
                *self.flags,
            ]  # fmt: skip
            self._log.write(f"$ {' '.join(args)}\n".encode())
            self._log.flush()
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                env=env,
                preexec_fn=_die_with_parent,
            )
            if self._wait_ready():
                return self
            # Lost the race for the port to another process: try another one.
            if self.proc.poll() is not None and "in use" in self.stderr().lower() and attempt < 2:
                continue
            self.kill()
            pytest.fail(f"lowbit serve did not become ready in {READY_TIMEOUT_S}s:\n{self.stderr()}")
        raise AssertionError("unreachable")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, _, _ = http_get(f"{self.url}/ready", timeout=2)
                if status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def terminate(self) -> None:
        """Sends SIGTERM (the start of a graceful drain)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        """SIGTERM, then the exit code (the process is killed if it does not exit in time)."""
        self.terminate()
        try:
            return self.wait()
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"lowbit serve did not exit within {EXIT_TIMEOUT_S}s of SIGTERM:\n{self.stderr()}"
            ) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop_and_check(self) -> None:
        code = self.stop()
        assert code == 0, f"lowbit serve exited with {code} after SIGTERM:\n{self.stderr()}"

    def stderr(self) -> str:
        """What the server printed (stdout and stderr), without terminal colour codes."""
        self._log.flush()
        return ANSI.sub("", self.log_path.read_text(errors="replace"))

    def cleanup(self) -> None:
        self._log.close()
        self.log_path.unlink(missing_ok=True)

    # -- helpers ---------------------------------------------------------------------------------
    def get(self, path: str, headers: dict[str, str] | None = None):
        return http_get(f"{self.url}{path}", headers=headers)

    def metrics(self, headers: dict[str, str] | None = None) -> dict[str, float]:
        status, _, body = self.get("/metrics", headers=headers)
        assert status == 200, f"/metrics: {status} {body}"
        return parse_metrics(body)

    def post_json(self, path: str, body: dict, headers: dict[str, str] | None = None):
        """(status, headers, parsed JSON or text) of a POST, whatever the status."""
        data = json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, hdrs, text = r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            status, hdrs, text = e.code, dict(e.headers), e.read().decode()
        try:
            return status, hdrs, json.loads(text)
        except ValueError:
            return status, hdrs, text


def _stop_all(servers: list[Server]) -> None:
    """Stops every server; fails (after stopping them all) if one did not exit 0."""
    problems = []
    for s in servers:
        if s.proc is None:
            continue
        try:
            if s.proc.poll() is None:
                code = s.stop()
            else:
                code = s.proc.returncode
            if code != 0:
                problems.append(f"{s.url} {s.flags}: exit code {code}\n{s.stderr()}")
        except AssertionError as e:
            problems.append(str(e))
    for s in servers:
        if not problems:
            s.cleanup()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def client_for(server: Server, api_key: str = "none", timeout: float = 60, **kw) -> OpenAI:
    """The official SDK pointed at `server`. max_retries=0: a 429 or a 5xx must reach the test,
    not be retried by the SDK."""
    return OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def server():
    """The shared default server (no extra flags)."""
    s = Server([]).start()
    yield s
    _stop_all([s])


@pytest.fixture(scope="session")
def keyed_server():
    """A shared server with two API keys, k1 and k2."""
    s = Server(["--api-key", "k1", "--api-key", "k2"]).start()
    yield s
    _stop_all([s])


def wait_idle(server: Server, timeout: float = 10.0) -> dict[str, float] | None:
    """The metrics once nothing runs or waits (None if that does not happen in time)."""
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        if m["lowbit:num_requests_running"] == 0 and m["lowbit:num_requests_waiting"] == 0:
            return m
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _default_server_idle(request):
    """Tests on the shared server compare its metrics before and after their own requests: each
    starts on an idle server and must leave it idle (nothing still running in the background)."""
    if "server" not in request.fixturenames:
        yield
        return
    s: Server = request.getfixturevalue("server")
    assert wait_idle(s), f"the shared server is busy before the test: {s.metrics()}"
    yield
    assert wait_idle(s), f"the test left requests running on the shared server: {s.metrics()}"


@pytest.fixture
def server_factory():
    """start(*flags, env=None) -> a started Server; each is stopped and checked at teardown."""
    started: list[Server] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> Server:
        s = Server(list(flags), env=env)
        started.append(s)
        return s.start()

    yield start
    _stop_all(started)
