"""The distribution as an operator gets it: build the sdist and the wheel, install the wheel into
a fresh venv, and run `turnout lint`, `turnout serve` and `turnout record` from a directory that
is not the repository.

The build works on a copy of the repository's files (what `git ls-files` lists, plus new files
not ignored), so nothing is written into the working tree and nothing ignored (a stale `build/`,
an `*.egg-info`, a local `.venv`) can slip into a release. `python -m build` builds the sdist,
then the wheel from the unpacked sdist, as pip does from PyPI: the sdist must be complete.
Everything after the build runs in the fresh venv's own interpreter, with the repository neither
the working directory nor on `PYTHONPATH`; only the provider simulator runs in this process.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from openai import OpenAI

from tests.conftest import ROOT, free_port, gateway_env
from tests.simulators import Simulator

# Building needs setuptools from the registry, the install every dependency (~1 min in all).
pytestmark = pytest.mark.timeout(900)

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NAME, VERSION = PROJECT["name"], PROJECT["version"]
# The top-level folders of the repository and the import package each one installs as.
PACKAGES = {"engine": "turnout/engine", "server": "turnout/server"}
DATA = {"mappings": "turnout/mappings", "schemas": "turnout/schemas"}
ANTHROPIC_KEY = "sk-ant-config-key-0123456789"
OPENAI_KEY = "sk-openai-config-key-0123456789"


@dataclass(frozen=True)
class Dists:
    source: Path  # the copy the distributions were built from
    wheel: Path
    sdist: Path


@dataclass(frozen=True)
class Venv:
    root: Path
    python: Path
    turnout: Path
    site_packages: Path


def _show(proc: subprocess.CompletedProcess[str]) -> str:
    return (
        f"$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    )


def _run(
    command: Sequence[str | Path],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            [str(c) for c in command],
            cwd=cwd,
            env=env if env is not None else _clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"timed out after {timeout} s: {' '.join(map(str, command))}\n"
            f"--- stdout ---\n{exc.stdout!r}\n--- stderr ---\n{exc.stderr!r}"
        ) from None
    if check:
        assert proc.returncode == 0, _show(proc)
    return proc


def _clean_env(base: dict[str, str] | None = None, venv: Venv | None = None) -> dict[str, str]:
    """The environment without anything that would put the repository (or this test run's own
    venv) on the child's import path."""
    env = dict(os.environ if base is None else base)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV"):
        env.pop(name, None)
    for name in [k for k in env if k.startswith("TURNOUT_")]:
        env.pop(name)
    env["PYTHONNOUSERSITE"] = "1"
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv.root)
        env["PATH"] = os.pathsep.join([str(venv.turnout.parent), env.get("PATH", "")])
    return env


def _source_files() -> list[str]:
    """The repository's files a fresh clone would have: tracked ones (still on disk) and new ones
    git does not ignore. Without git (an unpacked sdist), everything but the usual litter."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        litter = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}
        return [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file()
            and not litter.intersection(p.relative_to(ROOT).parts)
            and not any(part.endswith(".egg-info") for part in p.parts)
        ]
    return [name for name in dict.fromkeys(listed.split("\0")) if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    source = tmp_path_factory.mktemp("source") / NAME
    for name in _source_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    assert (source / "pyproject.toml").is_file(), "the copied source has no pyproject.toml"
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    # No --sdist/--wheel: the sdist first, then the wheel built from it (isolated from the
    # registry, as pip would build it).
    _run([sys.executable, "-m", "build", "--outdir", out, source], cwd=source, timeout=600)
    print(f"\nbuild: {time.monotonic() - started:.1f} s", file=sys.stderr)
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return Dists(source, wheels[0], sdists[0])


@pytest.fixture(scope="module")
def venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("venv") / "venv"
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", root], cwd=root.parent, timeout=300)
    bindir = root / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    # Every dependency from the registry: the wheel's metadata must be enough.
    _run(
        [python, "-m", "pip", "install", "--no-input", dists.wheel],
        cwd=root.parent,
        timeout=600,
    )
    print(f"\nvenv + pip install: {time.monotonic() - started:.1f} s", file=sys.stderr)
    site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=root.parent,
    ).stdout.strip()
    turnout = bindir / "turnout"
    assert turnout.is_file(), f"no `turnout` console script in {bindir}"
    return Venv(root, python, turnout, Path(site))


def test_wheel_and_sdist_hold_what_they_should(dists: Dists) -> None:
    src = dists.source
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
        dist_info = f"{NAME}-{VERSION}.dist-info"
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    listing = "\n".join(sorted(names))

    expected: set[str] = set()
    for folder, package in PACKAGES.items():
        expected |= {
            f"{package}/{p.relative_to(src / folder)}" for p in src.glob(f"{folder}/**/*.py")
        }
        expected.add(f"{package}/py.typed")
    for folder, package in DATA.items():
        expected.add(f"{package}/__init__.py")
        expected |= {f"{package}/{p.name}" for p in (src / folder).glob("*.yaml")}
    for shared in ("_dialects", "_variants"):
        found = {
            f"turnout/mappings/{shared}/{p.name}"
            for p in (src / "mappings" / shared).glob("*.yaml")
        }
        assert found, f"the repository has no mappings/{shared}/*.yaml"
        expected |= found
    expected |= {f"turnout/server/console/{name}" for name in _console_assets(src)}
    missing = sorted(expected - names)
    assert not missing, f"missing from {dists.wheel.name}: {missing}\n--- wheel ---\n{listing}"

    # Everything lives under the `turnout` namespace (no turnout/__init__.py: PEP 420) or in
    # the metadata; nothing of the repository's layout, no tests, no mapping cases.
    stray = sorted(n for n in names if not n.startswith(("turnout/", f"{dist_info}/")))
    assert not stray, f"entries outside turnout/ in the wheel: {stray}"
    assert "turnout/__init__.py" not in names, "turnout must stay a namespace package"
    for top in ("engine/", "server/", "mappings/", "schemas/", "tests/"):
        assert not any(n.startswith(top) for n in names), f"top-level {top} in the wheel"
    cases = sorted(n for n in names if "/cases/" in n or "/tests/" in n or "fixtures/" in n)
    assert not cases, f"cases or test data shipped in the wheel: {cases[:20]}"

    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert dict(scripts["console_scripts"]) == {"turnout": "turnout.server.cli:main"}, entry_points

    with tarfile.open(dists.sdist) as sdist:
        members = set(sdist.getnames())
    top = f"{NAME}-{VERSION}"
    sources = ["pyproject.toml", "README.md", "PKG-INFO"]
    for folder in (*PACKAGES, *DATA):
        sources += [str(p.relative_to(src)) for p in src.glob(f"{folder}/**/*.py")]
        sources += [str(p.relative_to(src)) for p in src.glob(f"{folder}/*.yaml")]
    sources += [str(p.relative_to(src)) for p in src.glob("mappings/_*/*.yaml")]
    sources += [f"server/console/{name}" for name in _console_assets(src)]
    missing = sorted(s for s in sources if f"{top}/{s}" not in members)
    assert not missing, f"missing from {dists.sdist.name}: {missing}\n" + "\n".join(sorted(members))


def _console_assets(src: Path) -> list[str]:
    """The admin console's templates and static files (package data), relative to its folder."""
    folder = src / "server" / "console"
    found = sorted(
        str(p.relative_to(folder))
        for pattern in ("templates/*.html", "static/*")
        for p in folder.glob(pattern)
    )
    assert any(n.startswith("templates/") for n in found) and "static/console.js" in found
    return found


def test_the_installed_wheel_renders_the_console_from_its_own_files(
    venv: Venv, tmp_path: Path
) -> None:
    """The console's templates and assets load from site-packages, not from the repository."""
    code = (
        "import json\n"
        "from turnout.server.console import render\n"
        "page = render.render('login.html', csrf=None, nav=None, title='t', login_token='x',\n"
        "                     error=None, next='/ui/spend')\n"
        "print(json.dumps({'file': render.__file__, 'page': page,\n"
        "  'assets': {n: len(render.asset(n).body) for n in render.STATIC_FILES}}))\n"
    )
    report = orjson.loads(_run([venv.python, "-c", code], cwd=tmp_path, env=_clean_env()).stdout)
    assert Path(report["file"]).is_relative_to(venv.site_packages), report["file"]
    assert 'action="/ui/login"' in report["page"] and "/ui/static/console.css?v=" in report["page"]
    assert all(size > 0 for size in report["assets"].values()), report["assets"]


def _python_report(venv: Venv, cwd: Path, env: dict[str, str]) -> dict[str, list[str]]:
    """What the venv's interpreter imports, run from `cwd`: sys.path, the `turnout` namespace's
    folders, the packages' files, and which top-level names (`engine`…) are importable."""
    code = (
        "import importlib.util, json, sys\n"
        "import turnout, turnout.engine, turnout.server, turnout.mappings, turnout.schemas\n"
        "print(json.dumps({'path': sys.path, 'turnout': list(turnout.__path__),\n"
        "  'files': [m.__file__ for m in (turnout.engine, turnout.server, turnout.mappings,\n"
        "            turnout.schemas)],\n"
        "  'top_level': [n for n in ('engine', 'server', 'mappings', 'schemas', 'tests')\n"
        "                if importlib.util.find_spec(n) is not None]}))\n"
    )
    report: dict[str, list[str]] = orjson.loads(
        _run([venv.python, "-c", code], cwd=cwd, env=env).stdout
    )
    return report


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"turnout serve exited with {process.returncode}:\n{log.read_text()}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"turnout serve not healthy after {timeout_s} s:\n{log.read_text()}")


@pytest.fixture
def served(
    venv: Venv, provider_sim: Simulator, tmp_path: Path
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """`turnout serve` from the installed wheel, in an empty directory, keys and base URLs of
    anthropic and openai from the config file (the rest from the environment)."""
    cwd = tmp_path / "operator"
    cwd.mkdir()
    env = _clean_env(gateway_env(provider_sim), venv)
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_API_BASE", "OPENAI_API_KEY", "OPENAI_API_BASE"):
        env.pop(name, None)
    config = cwd / "turnout.yaml"
    anthropic_base, openai_base = provider_sim.base("anthropic"), provider_sim.base("openai")
    config.write_text(
        "providers:\n"
        f"  anthropic: {{api_base: '{anthropic_base}', api_key: '{ANTHROPIC_KEY}'}}\n"
        f"  openai: {{api_base: '{openai_base}/v1', api_key: '{OPENAI_KEY}'}}\n"
        "models:\n"
        "  claude:\n"
        "    deployments:\n"
        "      - {model: anthropic/claude-sonnet-4-5}\n"
    )
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(venv.turnout), "serve", "--config", str(config), "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(process, url, log, timeout_s=60)
        yield url, cwd, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_the_installed_wheel_lints_serves_and_records(
    venv: Venv,
    served: tuple[str, Path, subprocess.Popen[bytes]],
    provider_sim: Simulator,
    tmp_path: Path,
) -> None:
    url, cwd, process = served
    assert ROOT not in cwd.parents and cwd != ROOT
    env = _clean_env(gateway_env(provider_sim), venv)

    # The installed copy is the one imported; the repository is nowhere on the path.
    report = _python_report(venv, cwd, env)
    for entry in [*report["path"], *report["turnout"], *report["files"]]:
        assert entry == "" or not Path(entry).resolve().is_relative_to(ROOT), (entry, report)
    for file in report["files"]:
        assert Path(file).is_relative_to(venv.site_packages), report
    assert report["top_level"] == [], f"top-level packages importable: {report['top_level']}"

    help_text = _run([venv.turnout, "--help"], cwd=cwd, env=env).stdout
    if "--version" in help_text:  # only once cli.py offers it
        shown = _run([venv.turnout, "--version"], cwd=cwd, env=env)
        assert VERSION in shown.stdout + shown.stderr, _show(shown)

    providers = [p for p in (ROOT / "mappings").glob("*.yaml") if not p.name.startswith("_")]
    lint = _run([venv.turnout, "lint"], cwd=cwd, env=env)
    assert lint.stdout.strip() == f"ok: {len(providers)} mappings", _show(lint)

    # -- serve: the official SDK, strict validation, through the config's providers ----------
    with OpenAI(
        base_url=f"{url}/v1",
        api_key="client-key-not-used-upstream",
        max_retries=0,
        timeout=30,
        _strict_response_validation=True,
    ) as client:
        first = client.responses.create(
            model="anthropic/claude-sonnet-4-5", input="Say hi to Ada", instructions="Be brief."
        )
        assert first.status == "completed" and first.output_text == "Say hi to Ada", first
        assert provider_sim.last.provider == "anthropic"
        assert provider_sim.last.headers["x-api-key"] == ANTHROPIC_KEY  # from the config file

        second = client.responses.create(
            model="openai/gpt-4o-mini", input="Hello from a wheel", previous_response_id=first.id
        )
        assert second.output_text == "Hello from a wheel", second
        assert provider_sim.last.provider == "openai"
        assert provider_sim.last.headers["authorization"] == f"Bearer {OPENAI_KEY}"
        assert "Say hi to Ada" in orjson.dumps(provider_sim.last.json).decode()  # the history

        text = "Stream me from site-packages 🦜"
        with client.responses.stream(model="claude", input=text) as stream:
            events = [event.type for event in stream]
            streamed = stream.get_final_response()
        assert events[0] == "response.created" and events[-1] == "response.completed", events
        assert "response.output_text.delta" in events, events
        assert streamed.output_text == text and streamed.model == "claude", streamed
        assert client.responses.retrieve(first.id).output_text == "Say hi to Ada"

    store = cwd / "turnout.db"
    assert store.is_file() and store.stat().st_size > 0, sorted(p.name for p in cwd.iterdir())

    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("turnout serve did not stop within 30 s of SIGTERM") from None
    log = (tmp_path / "serve.log").read_text(errors="replace")
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean end.
    assert code in (0, -signal.SIGTERM), f"turnout serve exited with {code} on SIGTERM:\n{log}"
    assert "Traceback" not in log, log
    # The store was closed (SQLite folds its WAL back in and removes it) and kept all three.
    leftovers = sorted(p.name for p in cwd.glob("turnout.db-*"))
    assert leftovers == [], f"the store was not closed cleanly: {leftovers}\n{log}"
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM responses")}
    assert {first.id, second.id, streamed.id} <= stored, stored

    # -- record: the default output folder is ./recorded/<provider>/, not site-packages ------
    secret = "sk-record-SECRET-0123456789abcdef"
    env["ANTHROPIC_API_KEY"] = env["GEMINI_API_KEY"] = secret
    runs = {
        "anthropic": ["--model", "anthropic/claude-sonnet-4-5", "--input", "Say hello"],
        "gemini": ["--model", "gemini/gemini-2.5-flash", "--input", "Stream it", "--stream"],
    }
    for provider, args in runs.items():
        proc = _run([venv.turnout, "record", "--name", "rec", *args], cwd=cwd, env=env)
        out = cwd / "recorded" / provider
        body = "rec.sse" if "--stream" in args else "rec.json"
        wanted = sorted(["rec.case.yaml", "rec.meta.json", "rec.request.json", body])
        assert out.is_dir() and sorted(p.name for p in out.iterdir()) == wanted, _show(proc)
        printed = [Path(line) for line in proc.stdout.splitlines() if line.strip()]
        assert printed and all(p.resolve().parent == out.resolve() for p in printed), _show(proc)
        assert provider_sim.last.provider == provider
        for path in out.iterdir():
            assert secret.encode() not in path.read_bytes(), path
    shipped = venv.site_packages / "turnout" / "mappings"
    assert shipped.is_dir() and not (shipped / "cases").exists(), "record wrote into site-packages"
