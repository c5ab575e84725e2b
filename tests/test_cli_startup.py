"""What `turnout serve` says, checked from outside as an operator sees it: real processes.

The ready line (once, after the socket listens, with URL, store, counts and auth), `--version`,
`serve --help` naming the environment variables, `--log-level`, the opt-in access log, config
mistakes that stop start-up (exit 2, `file:line:col`, did-you-mean), missing-credential
warnings, and relative paths resolved against the config file's folder.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from litestar import Litestar

from tests.conftest import MAPPED, ROOT, gateway_env
from tests.simulators import Simulator
from turnout.engine.registry import MappingRegistry
from turnout.server import cli
from turnout.server.access_log import AccessLog
from turnout.server.config import env_prefix

VERSION = importlib.metadata.version("turnout")
# uvicorn re-raises the SIGTERM it handled once shut down: a clean stop ends "killed by SIGTERM".
STOPPED = (0, -signal.SIGTERM)
READY = re.compile(
    r"turnout (?P<version>\S+) ready on (?P<url>http://\S+) · store (?P<store>\S+) · "
    r"(?P<providers>\d+) providers?, (?P<aliases>\d+) alias(?:es)? · auth: (?P<auth>.+)$"
)
ACCESS = re.compile(
    r"turnout\.access: (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d+|-) model=(?P<model>\S+) "
    r"deployment=(?P<deployment>\S+) duration_ms=(?P<ms>\d+) response_id=(?P<id>\S+)$"
)


def _command() -> list[str]:
    script = Path(sys.executable).parent / "turnout"
    return [str(script)] if script.exists() else [sys.executable, "-m", "turnout.server.cli"]


class Serve:
    """A `turnout serve` process whose stderr is read line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [*_command(), "serve", *args],
            cwd=cwd,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    found = pattern.search(line)
                    if found is not None:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {pattern.pattern!r} in:\n{self.text()}")
                self._changed.wait(min(left, 0.2))

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Serve] = []

    def start(args: list[str], env: dict[str, str], cwd: Path | None = None) -> Serve:
        proc = Serve(args, env, cwd or tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Any:
    return subprocess.run(
        [*_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def _env(sim: Simulator, **extra: str) -> dict[str, str]:
    env = gateway_env(sim)
    env.update(extra)
    return env


CLAUDE = "models:\n  claude:\n    deployments:\n      - {model: anthropic/claude-sonnet-4-5}\n"


# -- --version, --help ----------------------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    run = _run("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"turnout {VERSION}\n"
    assert cli.version() == VERSION


def _declared_env_names() -> set[str]:
    """Every environment variable the bundled mappings declare (api_key_env, credentials,
    settings) that the `<PROVIDER>_API_KEY` convention does not already cover."""
    names: set[str] = set()
    registry = MappingRegistry.load()
    for pid in registry.providers:
        mapping = registry.get(pid)
        assert mapping is not None
        variants = [mapping, *(registry.resolve(pid, m) for m in ("claude-x", "gemini-x"))]
        for m in variants:
            assert m is not None
            defaults = m.defaults
            keys = defaults.get("api_key_env") or []
            names.update([keys] if isinstance(keys, str) else keys)
            for section in ("credentials", "settings"):
                for spec in (defaults.get(section) or {}).values():
                    found = spec.get("env") or []
                    names.update([found] if isinstance(found, str) else found)
    return {n for n in names if n not in {f"{env_prefix(p)}_API_KEY" for p in MAPPED}}


def test_serve_help_lists_the_environment_variables_it_reads() -> None:
    run = _run("serve", "--help")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    for text in ("<PROVIDER>_API_KEY", "<PROVIDER>_API_BASE", "${VAR}", "--log-level",
                 "--access-log", "GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS"):  # fmt: skip
        assert text in out, text
    declared = _declared_env_names()
    assert {"AWS_ACCESS_KEY_ID", "VERTEX_PROJECT", "AZURE_OPENAI_API_KEY"} <= declared
    missing = sorted(n for n in declared if n not in out)
    assert not missing, f"serve --help does not name {missing}"
    # Only variables the code reads: no TURNOUT_* variable is read by `turnout serve`.
    assert not re.search(r"^\s+TURNOUT_", out, re.M)


# -- the ready line -------------------------------------------------------------------------------


def test_ready_line_once_after_the_socket_listens(
    serve: Any, provider_sim_session: Simulator, tmp_path: Path
) -> None:
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    config = config_dir / "turnout.yaml"
    config.write_text(
        "store: sqlite:///state.db\n"
        "auth: {master_key: '${TURNOUT_MASTER_KEY}'}\n" + CLAUDE + "  fast:\n    deployments:\n"
        "      - {model: groq/llama-3.3-70b}\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(provider_sim_session, TURNOUT_MASTER_KEY="tm-ready-line-master-key")
    proc = serve(["--config", str(config), "--port", "0"], env, elsewhere)
    found = proc.wait_for(READY)
    # Printed only once the socket listens: a request sent the moment it appears is answered.
    assert httpx.get(f"{found['url']}/health", timeout=5).json()["status"] == "ok"
    assert found["version"] == VERSION
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", found["url"]) and not found["url"].endswith(
        ":0"
    )
    # The relative store path is the config file's folder's, not the working directory's.
    assert found["store"] == f"sqlite:///{config_dir.resolve() / 'state.db'}"
    assert (config_dir / "state.db").exists() and not (elsewhere / "state.db").exists()
    assert int(found["providers"]) == len(MAPPED)
    assert int(found["aliases"]) == 2
    assert found["auth"] == "master key"
    ready_at = next(i for i, line in enumerate(proc.lines) if "ready on" in line)
    assert "INFO turnout:" in proc.lines[ready_at]
    # More requests, then a clean stop: still exactly one ready line, and no secret in it all.
    key = {"authorization": "Bearer tm-ready-line-master-key"}
    for _ in range(3):
        assert httpx.get(f"{found['url']}/v1/models", headers=key, timeout=5).status_code == 200
    assert proc.stop() in STOPPED
    text = proc.text()
    assert text.count("ready on") == 1, text
    assert "tm-ready-line-master-key" not in text and "secret-0123456789" not in text
    assert "Traceback" not in text


def test_ready_line_without_config_or_master_key(serve: Any, tmp_path: Path) -> None:
    proc = serve(["--port", "0"], {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    found = proc.wait_for(READY)
    assert found["store"] == "sqlite:///turnout.db"  # the default: the working directory's
    assert found["aliases"] == "0" and found["auth"] == "none (no master_key set)"
    assert proc.stop() in STOPPED
    assert (tmp_path / "turnout.db").exists()
    assert "WARNING" not in proc.text()  # no aliases: nothing to warn about


def test_no_ready_line_when_the_port_is_taken(serve: Any, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve(["--port", str(port)], {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.process.wait(timeout=60) != 0
    proc.stop()
    assert "ready on" not in proc.text()


def test_log_level_warning_hides_the_ready_line(serve: Any, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    port = _free_port()
    proc = serve(["--port", str(port), "--log-level", "warning"], env)
    _wait_healthy(f"http://127.0.0.1:{port}", proc)
    assert proc.stop() in STOPPED
    assert "ready on" not in proc.text()
    bad = _run("serve", "--log-level", "loud")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_mask_store_url() -> None:
    assert cli.mask_store_url("sqlite:////srv/t.db?synchronous=normal") == (
        "sqlite:////srv/t.db?synchronous=normal"
    )
    assert cli.mask_store_url("postgres://app:s3cr3t-pw@db:5432/turnout") == (
        "postgres://app:***@db:5432/turnout"
    )
    masked = cli.mask_store_url("redis://h/0?password=hunter22&db=1&api_token=t0k")
    assert masked == "redis://h/0?password=***&db=1&api_token=***"
    line = cli.ready_line("http://127.0.0.1:1", "x://u:pw-value@h/", 1, 1, False)
    assert "pw-value" not in line and "1 provider, 1 alias" in line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, proc: Serve) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.process.poll() is None, proc.text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"not healthy:\n{proc.text()}")


# -- the access log -------------------------------------------------------------------------------


def _access_lines(proc: Serve, count: int) -> list[re.Match[str]]:
    deadline = time.monotonic() + 15
    while True:
        found = [m for m in map(ACCESS.search, list(proc.lines)) if m is not None]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["flag", "config"])
def test_access_log_one_line_per_request(
    serve: Any, provider_sim: Simulator, tmp_path: Path, how: str
) -> None:
    config = tmp_path / "turnout.yaml"
    server = "server: {access_log: true}\n" if how == "config" else ""
    config.write_text(f"store: memory://\n{server}{CLAUDE}", encoding="utf-8")
    args = ["--config", str(config), "--port", "0"] + (["--access-log"] if how == "flag" else [])
    proc = serve(args, _env(provider_sim))
    url = proc.wait_for(READY)["url"]
    headers = {"content-type": "application/json"}
    made = httpx.post(
        f"{url}/v1/responses",
        content=orjson.dumps({"model": "claude", "input": "hi"}),
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 200, made.text
    response_id = made.json()["id"]
    with httpx.stream(
        "POST",
        f"{url}/v1/responses",
        content=orjson.dumps({"model": "groq/llama-3.3-70b", "input": "hi", "stream": True}),
        headers=headers,
        timeout=30,
    ) as streamed:
        body = b"".join(streamed.iter_bytes())
    stream_id = re.search(rb'"id":"(resp_[^"]+)"', body)
    assert stream_id is not None
    assert httpx.get(f"{url}/v1/responses/{response_id}", timeout=10).status_code == 200
    refused = httpx.post(
        f"{url}/v1/responses",
        content=orjson.dumps({"model": "nope/x", "input": "hi"}),
        headers=headers,
        timeout=10,
    )
    assert refused.status_code == 400
    lines = _access_lines(proc, 4)
    assert len(lines) == 4, proc.text()
    create, stream, get, error = lines
    assert (create["method"], create["path"], create["status"]) == ("POST", "/v1/responses", "200")
    assert create["model"] == "claude"
    assert create["deployment"] == "anthropic/claude-sonnet-4-5"
    assert create["deployment"] == made.headers["x-turnout-deployment"]
    assert create["id"] == response_id
    assert (stream["status"], stream["model"]) == ("200", "groq/llama-3.3-70b")
    assert stream["deployment"] == "groq/llama-3.3-70b"
    assert stream["id"] == stream_id.group(1).decode()
    assert (get["method"], get["path"], get["status"]) == (
        "GET",
        f"/v1/responses/{response_id}",
        "200",
    )
    assert get["id"] == response_id
    assert (error["status"], error["model"], error["id"]) == ("400", "nope/x", "-")
    assert all(int(m["ms"]) < 30_000 for m in lines)
    assert proc.stop() in STOPPED


def test_no_access_log_by_default(serve: Any, provider_sim: Simulator, tmp_path: Path) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text(f"store: memory://\n{CLAUDE}", encoding="utf-8")
    proc = serve(["--config", str(config), "--port", "0"], _env(provider_sim))
    url = proc.wait_for(READY)["url"]
    made = httpx.post(
        f"{url}/v1/responses",
        content=orjson.dumps({"model": "claude", "input": "hi"}),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert made.status_code == 200
    assert proc.stop() in STOPPED
    assert "turnout.access" not in proc.text() and "POST /v1/responses" not in proc.text()


class _FakeServer:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.started = True

    def run(self) -> None:
        pass


@pytest.mark.parametrize("on", [False, True])
def test_access_log_off_means_no_wrapper(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, on: bool
) -> None:
    """Off, uvicorn gets the Litestar app itself: the request path has nothing added."""
    seen: list[Any] = []

    def fake_server(config: Any, app: Any, ready: Any = None) -> _FakeServer:
        seen.append(config.app)
        return _FakeServer(config)

    monkeypatch.setattr(cli, "_server", fake_server)
    monkeypatch.setattr(cli, "_settle_heap", lambda: None)
    config = tmp_path / "turnout.yaml"
    config.write_text("store: memory://\n", encoding="utf-8")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("turnout").level)
    try:
        args = ["serve", "--config", str(config)] + (["--access-log"] if on else [])
        assert cli.main(args) == 0
    finally:
        root.handlers[:], level, turnout_level = saved
        root.setLevel(level)
        logging.getLogger("turnout").setLevel(turnout_level)
        logging.getLogger(AccessLog.LOGGER).setLevel(logging.NOTSET)
    (app,) = seen
    if on:
        assert isinstance(app, AccessLog) and isinstance(app.app, Litestar)
    else:
        assert isinstance(app, Litestar)


# -- config mistakes stop start-up ----------------------------------------------------------------


def test_unknown_provider_stops_start_up_with_its_position(
    provider_sim_session: Simulator, tmp_path: Path
) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text(
        "store: memory://\n"
        "models:\n"
        "  claude:\n"
        "    deployments:\n"
        "      - {model: anthropic/claude-sonnet-4-5}\n"
        "      - model: antropic/claude-sonnet-4-5\n"
        "        weight: 2\n",
        encoding="utf-8",
    )
    run = _run("serve", "--config", str(config), "--port", "1", env=_env(provider_sim_session))
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [
        f"{config}:6:9: models.claude.deployments[1].model: unknown provider 'antropic' in "
        "model 'antropic/claude-sonnet-4-5' (did you mean 'anthropic'?)"
    ]
    assert "Traceback" not in run.stderr and "ready on" not in run.stderr


def test_unknown_provider_key_stops_start_up(
    provider_sim_session: Simulator, tmp_path: Path
) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text("store: memory://\nproviders:\n  gemnii: {timeout_s: 3}\n", encoding="utf-8")
    run = _run("serve", "--config", str(config), "--port", "1", env=_env(provider_sim_session))
    assert run.returncode == 2, run.stderr
    assert f"{config}:3:3: providers.gemnii: unknown provider 'gemnii'" in run.stderr
    assert "did you mean 'gemini'?" in run.stderr and "Traceback" not in run.stderr


def test_missing_credentials_warn_naming_the_variable(
    serve: Any, provider_sim_session: Simulator, tmp_path: Path
) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text(
        f"store: memory://\n{CLAUDE}"
        "  keyed:\n    deployments:\n"
        "      - {model: mistral/small, api_key: inline-key-value-123}\n"
        "  local:\n    deployments:\n      - {model: ollama/llama3}\n"
        "  gem:\n    deployments:\n      - {model: gemini/gemini-2.5-flash}\n",
        encoding="utf-8",
    )
    env = gateway_env(provider_sim_session, without_keys=("anthropic", "mistral", "ollama"))
    proc = serve(["--config", str(config), "--port", "0"], env)
    proc.wait_for(READY)  # a warning, not an error: the server starts
    assert proc.stop() in STOPPED
    warnings = [line for line in proc.lines if " WARNING " in line]
    assert len(warnings) == 1, proc.text()
    (warning,) = warnings
    assert f"{config}:5:10: models.claude.deployments[0].model:" in warning
    assert "ANTHROPIC_API_KEY" in warning and "anthropic/claude-sonnet-4-5" in warning
    text = proc.text()
    assert "inline-key-value-123" not in text and "secret-0123456789" not in text
    # The warning comes before the ready line.
    assert proc.lines.index(warning) < next(
        i for i, line in enumerate(proc.lines) if "ready on" in line
    )


def test_relative_mappings_dir_and_store_follow_the_config_file(
    serve: Any, provider_sim_session: Simulator, tmp_path: Path
) -> None:
    """`mappings_dir` and a relative sqlite store path: both from the config file's folder,
    whatever the working directory."""
    config_dir = tmp_path / "deploy"
    maps = config_dir / "maps"
    shutil.copytree(ROOT / "mappings" / "_dialects", maps / "_dialects")
    for pid in ("anthropic", "groq"):
        shutil.copy(ROOT / "mappings" / f"{pid}.yaml", maps / f"{pid}.yaml")
    config = config_dir / "turnout.yaml"
    config.write_text(
        f"store: sqlite:///db/t.db?synchronous=normal\nmappings_dir: maps\n{CLAUDE}",
        encoding="utf-8",
    )
    (config_dir / "db").mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = serve(["--config", "../deploy/turnout.yaml", "--port", "0"],
                 _env(provider_sim_session), cwd)  # fmt: skip
    found = proc.wait_for(READY)
    assert found["providers"] == "2"
    assert found["store"] == f"sqlite:///{config_dir.resolve() / 'db' / 't.db'}?synchronous=normal"
    made = httpx.post(
        f"{found['url']}/v1/responses",
        content=orjson.dumps({"model": "claude", "input": "hi"}),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert made.status_code == 200, made.text
    assert proc.stop() in STOPPED
    assert (config_dir / "db" / "t.db").exists()
    assert not (cwd / "db").exists()
