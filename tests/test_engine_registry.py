"""Live engines by name (thundersim.engine_adapters.registry): the Backend protocol is complete
on every implementation, the CLI's `--engine` choices come from the registry, and an engine
registered in-process or installed through the `thundersim.engines` entry point is built by
name and runs a trace through `thundersim run`."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import simpy
from typer.testing import CliRunner

from thundersim.cli import app
from thundersim.cli.app import engine_choices
from thundersim.core.backend import Backend
from thundersim.engine_adapters import registry
from thundersim.engine_adapters.tokens import TokenBook
from thundersim.engine_adapters.vllm import VLLMBackend
from thundersim.sim.engine import SimBackend
from thundersim.sim.latency import LatencyModel, LatencyProfile
from thundersim.traces.loader import load_trace

from .tiny_engine import TinyBackend

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

FLAT = LatencyProfile(
    overhead_s=1e-3, c_token=1e-6, c_pair=0.0, m_const=0.0, m_expert=0.0, m_kv=0.0
)
# A live run of the 12-program trace that fits the tiny engine and takes about a second.
LIVE_RUN = ["--concurrency", "4", "--token-scale", "0.1", "--time-scale", "0.001"]
LIVE_RUN += ["--tool-manager", "none", "--no-progress", "--json"]


def _protocol_members() -> tuple[list[str], list[str]]:
    """(attributes, methods and properties) of the Backend protocol."""
    attributes = list(Backend.__annotations__)
    members = [k for k in vars(Backend) if not k.startswith("_")]
    return attributes, members


def _instances():
    book = TokenBook(vocab=1000)
    return {
        "VLLMBackend": VLLMBackend(0, "http://127.0.0.1:1", book),
        "SimBackend": SimBackend(simpy.Environment(), 0, 4096, LatencyModel(FLAT)),
        "TinyBackend": TinyBackend(0, "tiny://0", book),
    }


def _shape(fn) -> list[tuple[str, inspect._ParameterKind]]:
    """Parameter names and kinds past `self` (defaults and annotations aside)."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return [(p.name, p.kind) for p in params]


@pytest.mark.parametrize("impl", ["VLLMBackend", "SimBackend", "TinyBackend"])
def test_every_backend_implements_the_whole_protocol_with_its_signatures(impl):
    backend = _instances()[impl]
    cls = type(backend)
    attributes, members = _protocol_members()
    assert attributes == ["index", "name", "model", "alive"]
    assert {"submit", "stats", "pin", "unpin", "connect", "refresh", "close"} <= set(members)
    for attr in attributes:
        assert hasattr(backend, attr), f"{impl} has no attribute {attr}"
    assert isinstance(backend.model, str) and backend.alive is True
    for name in members:
        want = vars(Backend)[name]
        have = inspect.getattr_static(cls, name, None)
        assert have is not None, f"{impl} has no {name}"
        if isinstance(want, property):
            assert isinstance(have, property), f"{impl}.{name} is not a property"
            assert isinstance(getattr(backend, name), int)
            continue
        assert _shape(have) == _shape(want), f"{impl}.{name}{inspect.signature(have)}"
        assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(want), (
            f"{impl}.{name}: async in the protocol and here must agree"
        )


def test_the_vllm_adapter_is_registered_and_built_by_name_per_url():
    assert "vllm" in registry.engine_names()
    assert registry.resolve("vllm").factory is VLLMBackend
    book = TokenBook(vocab=1000)
    urls = ["http://127.0.0.1:8100", "http://127.0.0.1:8101/"]
    backends = registry.make_backends("vllm", urls, book)
    assert [type(b) for b in backends] == [VLLMBackend, VLLMBackend]
    assert [b.index for b in backends] == [0, 1]
    assert [b.name for b in backends] == ["http://127.0.0.1:8100", "http://127.0.0.1:8101"]
    assert all(b.book is book for b in backends)  # one book per run: same ids on any replica


def test_an_unknown_engine_is_refused_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown engine 'sglang'; valid: .*vllm"):
        registry.resolve("sglang")
    result = runner.invoke(app, ["run", "--engine", "sglang", "--backends", "http://x"])
    assert result.exit_code == 2
    assert "unknown engine 'sglang'; valid: sim," in " ".join(result.output.split())
    result = runner.invoke(app, ["serve", "--engine", "sim", "--backends", "http://x"])
    assert result.exit_code == 2 and "unknown engine 'sim'" in result.output


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_engine("vllm", TinyBackend)
    registry.register_engine("vllm", VLLMBackend)  # the same factory again is no conflict


@pytest.fixture
def tiny():
    registry.register_engine("tiny", TinyBackend)
    yield "tiny"
    del registry.ENGINES["tiny"]


@pytest.fixture(scope="module")
def trace12(tmp_path_factory) -> Path:
    result = runner.invoke(
        app, ["trace", "gen", "--workload", "swe", "--programs", "12", "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path_factory.mktemp("trace") / "swe12.jsonl"
    path.write_text(result.stdout)
    return path


def test_a_registered_engine_is_a_cli_choice_and_runs_a_trace_by_name(tiny, trace12):
    assert registry.resolve(tiny).help == "An in-process engine: fixed time per token, a " + (
        "prefix cache per chain."
    )
    assert tiny in engine_choices() and engine_choices(sim=True)[0] == "sim"
    args = ["run", "--trace", str(trace12), "--engine", tiny, "--backends", "tiny://a,tiny://b"]
    result = runner.invoke(app, args + ["--replicas", "2"] + LIVE_RUN)
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["setup"] == "live: tiny://a, tiny://b"
    assert s["programs_completed"] == 12
    assert s["steps_completed"] == sum(len(p.steps) for p in load_trace(trace12))
    assert s["kv_hit_rate"] > 0.5  # each call after the first hits its chain's last context


def test_an_installed_entry_point_engine_is_listed_and_runs(tmp_path, trace12):
    """An out-of-tree package declares `[project.entry-points."thundersim.engines"]`; here its
    installed metadata (a dist-info folder on the path) names the tiny engine's factory."""
    dist = tmp_path / "tiny_engine_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-engine-plugin\n")
    (dist / "entry_points.txt").write_text(
        "[thundersim.engines]\ntiny-ep = tests.tiny_engine:TinyBackend\n"
    )
    paths = os.pathsep.join([str(tmp_path), str(ROOT)])
    env = dict(os.environ, PYTHONPATH=paths, COLUMNS="200")  # no wrapping inside a name
    cli = [sys.executable, "-c", "from thundersim.cli import main; main()"]
    shown = subprocess.run(
        cli + ["run", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert "tiny-ep" in shown.stdout and "vllm" in shown.stdout
    args = ["run", "--trace", str(trace12), "--engine", "tiny-ep", "--backends", "tiny://x"]
    done = subprocess.run(
        cli + args + LIVE_RUN, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["setup"] == "live: tiny://x" and s["programs_completed"] == 12
