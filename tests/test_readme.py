"""The README is true: every YAML block is a complete config that loads, and the Python quick
start runs, as printed, against the gateway and the provider simulators.

A user copies these blocks first; a block that does not load, an alias it names but does not
define, or a model id no provider knows (its cost would silently be null) fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Gateway
from tests.paths import ROOT
from turnout.server.app import create_app
from turnout.server.config import load_config
from turnout.server.pricing import PriceBook, UsageCounts

README = ROOT / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_VARIABLE = re.compile(r"\$\{(\w+)\}")


def _blocks(language: str) -> list[str]:
    return [body for lang, body in _BLOCK.findall(README.read_text("utf-8")) if lang == language]


YAML_BLOCKS = _blocks("yaml")
PYTHON_BLOCKS = _blocks("python")


def test_the_readme_has_the_blocks_these_tests_read() -> None:
    assert len(YAML_BLOCKS) >= 5
    assert len(PYTHON_BLOCKS) == 1


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[f"yaml{i}" for i in range(len(YAML_BLOCKS))])
def test_yaml_block_is_a_config_that_loads(block: str, tmp_path: Path) -> None:
    # Every `${VAR}` the block reads is set, as the user would have it; nothing else is.
    env = {name: f"value-of-{name.lower()}" for name in _VARIABLE.findall(block)}
    config = tmp_path / "turnout.yaml"
    config.write_text(block, encoding="utf-8")
    settings = load_config(str(config), env)
    create_app(settings)  # mappings compiled, sinks built: what `turnout serve` does first
    book = PriceBook(settings.pricing)
    usage = UsageCounts(input_tokens=1000, output_tokens=100)
    for alias, spec in settings.models.items():
        for deployment in spec.deployments:
            price = book.cost(
                deployment.provider,
                deployment.provider_model,
                usage,
                alias=alias,
                deployment_pricing=deployment.pricing,
            )
            assert price is not None, f"{deployment.model} (alias {alias}): no such model priced"


def test_python_quick_start_runs_as_printed(gateway: Gateway, tmp_path: Path) -> None:
    (code,) = PYTHON_BLOCKS
    printed_url = "http://127.0.0.1:4000/v1"
    assert printed_url in code
    script = tmp_path / "quick_start.py"
    script.write_text(code.replace(printed_url, f"{gateway.url}/v1"), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 5, run.stdout
    first, streamed, status, items, background = lines
    assert first.strip() and streamed.strip()
    assert status == "completed"
    # The second turn's input items: the first turn's input and answer, then the new question.
    assert re.fullmatch(r"[1-9]\d* input items", items), items
    assert background.startswith("completed "), background
