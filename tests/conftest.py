"""Shared fixtures: the provider simulators and a real gateway process in front of them.

End-to-end tests talk to `turnout serve` as a user would: a separate process, a config file,
the official `openai` SDK with strict response validation. Every provider's base URL points at
the loopback simulators, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests import postgres
from tests.formats import MAPPINGS_ROOT, WIRES, Facts, facts, format_of
from tests.simulators import Simulator
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR, MappingRegistry
from turnout.server.config import env_prefix

pytest_plugins = ["tests.simulators.pytest_plugin"]

# The contract suite's postgresql:// scratch stores live on the test server (tests/postgres.py).
postgres.use_test_server()


def pytest_sessionstart(session: pytest.Session) -> None:
    postgres.sweep(mine=False)  # what killed runs left behind


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    postgres.sweep(mine=True)  # whatever a test of this run left behind


ROOT = Path(__file__).resolve().parents[1]
# The bundled mappings, or the folder $TURNOUT_TEST_MAPPINGS names (tests/formats.py).
MAPPED = MappingRegistry.load(MAPPINGS_ROOT).providers


@dataclass(frozen=True)
class Case:
    """One end-to-end target: the simulator queue it lands in, the model, the wire dialect."""

    label: str
    model: str
    dialect: str


_MODELS = {
    "gemini": "gemini/gemini-2.5-flash",
    "anthropic": "anthropic/claude-sonnet-4-5",
    "vertex_ai": "vertex_ai/gemini-2.5-flash",
    "bedrock": "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
}
CASES: dict[str, Case] = {
    # The format comes from the mapping's own `extends:` chain (tests/formats.py).
    pid: Case(pid, _MODELS.get(pid, f"{pid}/test-model"), format_of(pid))
    for pid in MAPPED
}
# A provider serving a model through a variant mapping counts as a target of its own.
CASES["vertex_ai_claude"] = Case(
    "vertex_ai", "vertex_ai/claude-sonnet-4-5@20250929", format_of("_variants/vertex_anthropic")
)
PROVIDERS = sorted(CASES)


def model_for(case: str) -> str:
    return CASES[case].model


def label_for(case: str) -> str:
    return CASES[case].label


def dialect(case: str) -> str:
    return CASES[case].dialect


def facts_of(case: str) -> Facts:
    """What the tests know about the case's wire format (tests/simulators/formats.yaml)."""
    return facts(CASES[case].dialect)


# Where each provider expects its base URL to end (the simulator accepts any prefix).
BASE_SUFFIX = {"openai": "/v1"}
AWS_TEST_KEYS = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "AWS_REGION": "us-east-1",
}
# Providers whose reads time out fast, for the timeout test.
SLOW_TIMEOUT_PROVIDER = "vllm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, api_key: str = "client-key-not-used-upstream", **kwargs: object) -> OpenAI:
        return OpenAI(
            base_url=f"{self.url}/v1",
            api_key=api_key,
            max_retries=0,
            timeout=30,
            _strict_response_validation=True,
            **kwargs,  # type: ignore[arg-type]
        )

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_gateway(
    config: Path,
    env: dict[str, str],
    log: Path,
    *,
    timeout_s: float = 20.0,
    args: tuple[str, ...] = (),
) -> Gateway:
    text = config.read_text(encoding="utf-8")
    if MAPPINGS_ROOT != DEFAULT_MAPPINGS_DIR and "mappings_dir:" not in text:
        # Every gateway a test starts serves the mappings the run is about.
        config.write_text(f"mappings_dir: '{MAPPINGS_ROOT}'\n{text}", encoding="utf-8")
    port = free_port()
    turnout = Path(sys.executable).parent / "turnout"
    command = [str(turnout)] if turnout.exists() else [sys.executable, "-m", "turnout.server.cli"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config), "--port", str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{log.read_text()}")
        try:
            # With --workers N, ready once the supervisor logged that all of them listen.
            if httpx.get(f"{url}/health", timeout=1).status_code == 200 and (
                not args or "ready on" in log.read_text(errors="replace")
            ):
                return Gateway(url, process, log)
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"gateway did not become healthy:\n{log.read_text()}")


def stop_gateway(gateway: Gateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()


def gateway_env(sim: Simulator, *, without_keys: tuple[str, ...] = ()) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_API_BASE")) and not k.startswith(("AWS_", "VERTEX_"))
    }
    env.update(AWS_TEST_KEYS)
    env["VERTEX_PROJECT"] = "turnout-test"
    env["VERTEX_LOCATION"] = "us-east5"
    env["VERTEX_ACCESS_TOKEN"] = "ya29.test-vertex-token-secret-0123456789"
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    for pid in MAPPED:
        prefix = env_prefix(pid)
        env[f"{prefix}_API_BASE"] = sim.base(pid) + BASE_SUFFIX.get(pid, "")
        if pid not in without_keys:
            env[f"{prefix}_API_KEY"] = f"sk-test-{pid}-secret-0123456789"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def gateway(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gateway")
    config = folder / "turnout.yaml"
    config.write_text(
        f"store: sqlite:///{folder / 'turnout.db'}\n"
        "providers:\n"
        f"  {SLOW_TIMEOUT_PROVIDER}: {{timeout_s: 1}}\n"
        "models:\n"
        "  claude:\n"
        "    deployments:\n"
        "      - {model: anthropic/claude-sonnet-4-5}\n"
    )
    env = gateway_env(provider_sim_session)
    gw = start_gateway(config, env, folder / "gateway.log")
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def provider_sim_session() -> Iterator[Simulator]:
    """The plugin's session simulator, also speaking the wire formats described as data."""
    with Simulator(wires=WIRES) as simulator:
        yield simulator


@pytest.fixture
def sim(provider_sim: Simulator) -> Simulator:
    return provider_sim


@pytest.fixture
def client(gateway: Gateway) -> Iterator[OpenAI]:
    with gateway.client() as c:
        yield c
