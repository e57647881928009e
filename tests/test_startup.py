"""Start-up stays cheap: importing the CLI (what every `thundersim` command and `--help` pays
first) and the Python API loads none of the heavy libraries; each command imports what it
runs. Checked on sys.modules of a fresh interpreter, not timed (experiments/bench_startup.py
measures the times)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("scipy", "pandas", "aiohttp", "httpx", "matplotlib", "pyarrow")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY top-level modules in sys.modules after `code` runs in a fresh interpreter."""
    listing = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = f"{code}\nimport json, sys\n{listing}"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    return sorted(loaded & set(HEAVY))


@pytest.mark.parametrize(
    "code",
    [
        "import thundersim.cli",
        "import thundersim, thundersim.api",
        "from thundersim.cli import app; import typer.main; typer.main.get_command(app)",
    ],
)
def test_importing_loads_no_heavy_library(code):
    assert _loaded_after(code) == []


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: a module that does import one is caught."""
    assert "pandas" in _loaded_after("import pandas")


def test_the_help_still_lists_what_the_registries_hold():
    """The help texts that name a registry's entries fill them in when shown."""
    from typer.testing import CliRunner

    from thundersim.cli import app
    from thundersim.traces import converters, workloads

    runner = CliRunner()
    shown = runner.invoke(app, ["trace", "gen", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and all(w in shown.output for w in workloads.GENERATORS)
    shown = runner.invoke(app, ["trace", "convert", "--help"], env={"COLUMNS": "200"})
    assert all(f in shown.output for f in converters.CONVERTERS)
    shown = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "vllm" in shown.output and "{engines}" not in shown.output


def test_a_simulated_run_loads_no_live_client():
    """`thundersim run` on the simulator needs pandas (its tables) but no HTTP client."""
    code = (
        "from thundersim.cli import app\n"
        "app(['run', '--trace', 'traces/toolorchestra.jsonl', '--concurrency', '8',"
        " '--policy', 'vllm', '--json', '--no-progress'], standalone_mode=False)"
    )
    loaded = _loaded_after(code)
    assert "pandas" in loaded  # the run did run
    assert not {"aiohttp", "httpx", "matplotlib"} & set(loaded)


def test_the_api_defaults_are_the_point_defaults():
    import inspect

    from thundersim import api
    from thundersim.lab.points import POINT_DEFAULTS

    sig = inspect.signature(api.simulate).parameters
    assert sig["trace"].default == POINT_DEFAULTS["trace"]
    assert sig["policy"].default == POINT_DEFAULTS["policy"]
    assert sig["concurrency"].default == POINT_DEFAULTS["concurrency"]
    assert inspect.signature(api.compare).parameters["trace"].default == POINT_DEFAULTS["trace"]
