"""Out-of-tree policies and routers: an installed package registers them through the
entry-point groups `thundersim.policies` and `thundersim.routers` (policies/registry.py).

The registry's rules are pinned in-process on entry points made here; then a tiny policy
package is built and pip-installed into a fresh virtual environment that sees this one's
packages, and there `thundersim policies` lists it, `thundersim run` runs it, and the
conformance suite (tests/test_conformance.py, the command the README gives plugin authors)
passes on it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from thundersim.core.policy import Policy, Router
from thundersim.policies import registry
from thundersim.traces.loader import dump_trace

from .conftest import make_program

ROOT = Path(__file__).resolve().parent.parent


# ---- the registry's rules, on entry points made here ------------------------------------------
class Quiet(Policy):
    """Admits nobody (a plugin for the registry's tests)."""

    name = "quiet"


class First(Router):
    """The first live backend (a plugin for the registry's tests)."""

    name = "first"

    def route(self, view, program):
        return next((b.index for b in view.backends() if b.alive), None)


class Misnamed(Policy):
    """Registered under another name than its entry point's."""

    name = "something_else"


def broken():
    """Not a class."""


@pytest.fixture
def entry_points(monkeypatch):
    """Replace the installed entry points with the given ones, on a registry of the built-ins
    only (restored afterwards)."""
    registry.discover()
    for table in ("REGISTRY", "ROUTERS", "ALIASES", "ORIGINS"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    monkeypatch.setattr(registry, "_plugins_loaded", False)

    def install(*eps: tuple[str, str, str]) -> None:
        made = [metadata.EntryPoint(name, value, group) for group, name, value in eps]
        monkeypatch.setattr(registry, "_entry_points", lambda g: [e for e in made if e.group == g])

    return install


def test_an_entry_point_registers_a_policy_and_a_router_like_the_built_ins(entry_points):
    entry_points(
        (registry.POLICY_GROUP, "quiet", f"{__name__}:Quiet"),
        (registry.ROUTER_GROUP, "first", f"{__name__}:First"),
    )
    assert "quiet" in registry.names() and "stp" in registry.names()
    assert "first" in registry.router_names()
    assert isinstance(registry.make_policy("quiet"), Quiet)
    assert isinstance(registry.make_router("first"), First)
    assert registry.origin(Quiet) == f"{__name__}:Quiet"  # no distribution: the entry point
    assert registry.origin(registry.REGISTRY["stp"]) == "built-in"


@pytest.mark.parametrize(
    ("group", "name", "value", "message"),
    [
        (registry.POLICY_GROUP, "nope", "no_such_module_here:X", "cannot load: ModuleNotFound"),
        (registry.POLICY_GROUP, "broken", f"{__name__}:broken", "is not a subclass of Policy"),
        (registry.POLICY_GROUP, "quiet", f"{__name__}:First", "is not a subclass of Policy"),
        (registry.ROUTER_GROUP, "quiet", f"{__name__}:Quiet", "is not a subclass of Router"),
        (registry.POLICY_GROUP, "misnamed", f"{__name__}:Misnamed", "name the entry point"),
        (registry.POLICY_GROUP, "stp", f"{__name__}:Quiet", "the class is named 'quiet'"),
    ],
)
def test_a_bad_entry_point_fails_the_lookup_naming_it(entry_points, group, name, value, message):
    entry_points((group, name, value))
    with pytest.raises(registry.PluginError, match=message) as err:
        registry.names()
    assert f"entry point {name} = {value} ({group}" in str(err.value)


def test_a_plugin_cannot_take_a_built_in_name(entry_points, monkeypatch):
    monkeypatch.setattr(Quiet, "name", "stp")
    entry_points((registry.POLICY_GROUP, "stp", f"{__name__}:Quiet"))
    with pytest.raises(registry.PluginError, match="the name 'stp' is taken by built-in"):
        registry.resolve("stp")


# ---- a real package, installed --------------------------------------------------------------
PYPROJECT = """
[build-system]
requires = []
build-backend = "tiny_build"
backend-path = ["."]

[project]
name = "thundersim-tinyfifo"
version = "0.1"

[project.entry-points."thundersim.policies"]
tinyfifo = "tinyfifo:TinyFifo"

[project.entry-points."thundersim.routers"]
tinyfirst = "tinyfifo:TinyFirst"
"""

POLICY = '''
"""An out-of-tree policy and router, written only against thundersim.core.policy."""

from thundersim.core.policy import Policy, Restore, Router
from thundersim.core.program import Status


class TinyFifo(Policy):
    """Arrival order, at most max_active programs per replica, never pauses (a plugin)."""

    name = "tinyfifo"
    params = {"max_active": 3.0}
    tick_interval = 1.0

    def on_request(self, view, program):
        return self._admit(view)

    def on_finish(self, view, program):
        return self._admit(view)

    def on_tick(self, view):
        return self._admit(view)

    def _admit(self, view):
        active = [0] * view.n_backends
        for p in view.programs.values():
            if p.status is Status.ACTIVE and p.backend is not None:
                active[p.backend] += 1
        room = [b for b in view.backends() if b.alive and b.used_tokens < b.capacity_tokens]
        waiting = sorted(
            (p for p in view.programs.values() if p.status is Status.WAITING and p.pending),
            key=lambda p: p.index,
        )
        decisions = []
        for p in waiting:
            b = min(room, key=lambda b: (active[b.index], b.index), default=None)
            if b is None or active[b.index] >= self.settings["max_active"]:
                break
            decisions.append(Restore(p.id, b.index))
            active[b.index] += 1
        return decisions


class TinyFirst(Router):
    """The first live replica (a plugin)."""

    name = "tinyfirst"

    def route(self, view, program):
        return next((b.index for b in view.backends() if b.alive), None)
'''

# A PEP 517 backend with no dependencies: the install runs with no network and no build
# isolation, in an environment whose setuptools may be too old to build a wheel on its own.
BACKEND = """
import base64, hashlib, tomllib, zipfile
from pathlib import Path


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    dist = f"{project['name'].replace('-', '_')}-{project['version']}"
    info = f"{dist}.dist-info"
    files = {p.name: p.read_bytes() for p in Path(".").glob("*.py") if p.name != "tiny_build.py"}
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\\nName: {project['name']}\\nVersion: {project['version']}\\n"
    ).encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    files[f"{info}/entry_points.txt"] = "".join(
        f"[{group}]\\n" + "".join(f"{k} = {v}\\n" for k, v in table.items())
        for group, table in project["entry-points"].items()
    ).encode()

    def digest(data):
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = [f"{name},sha256={digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = "\\n".join([*record, f"{info}/RECORD,,", ""]).encode()
    wheel = f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel
"""


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory) -> Path:
    """The python of a fresh venv that sees this environment's packages (thundersim included)
    through a .pth file, with the tiny plugin package pip-installed into it."""
    tmp = tmp_path_factory.mktemp("plugin")
    package = tmp / "thundersim-tinyfifo"
    package.mkdir()
    (package / "pyproject.toml").write_text(PYPROJECT)
    (package / "tinyfifo.py").write_text(textwrap.dedent(POLICY))
    (package / "tiny_build.py").write_text(textwrap.dedent(BACKEND))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    here = sysconfig.get_paths()["purelib"]  # site.addsitedir also runs its .pth files
    (Path(purelib.strip()) / "thundersim_dev.pth").write_text(
        f"import site; site.addsitedir({here!r})\n"
    )
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", str(package))  # fmt: skip
    return python


def _run(python: Path, *args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _cli(python: Path, *args: str, cwd: Path = ROOT) -> str:
    return _run(python, "-c", "from thundersim.cli import main; main()", *args, cwd=cwd)


def test_thundersim_policies_lists_the_installed_plugins(plugin_python):
    out = _cli(plugin_python, "policies")
    assert re.search(r"^tinyfifo\s+Arrival order, at most max_active", out, re.M), out
    assert "--param max_active=3" in out
    assert re.search(r"^tinyfirst\s+The first live replica", out, re.M), out
    assert "tinyfifo" not in registry.names()  # installed there, not here


def test_thundersim_run_runs_the_installed_policy_and_router(plugin_python, tmp_path):
    trace = tmp_path / "tiny.jsonl"
    with trace.open("w") as fp:
        dump_trace([make_program(f"p{i}", [(200, 20, 1.0)] * 3) for i in range(6)], fp)
    common = ("--trace", str(trace), "--kv-tokens", "20000", "--json", "--no-progress")
    summary = json.loads(
        _cli(plugin_python, "run", "--policy", "tinyfifo", "--param", "max_active=2", *common)
    )
    assert summary["policy"] == "tinyfifo"
    assert (summary["programs_completed"], summary["steps_completed"]) == (6, 18)
    routed = json.loads(
        _cli(
            plugin_python,
            "run",
            "--policy",
            "vllm",
            "--router",
            "tinyfirst",
            "--replicas",
            "2",
            *common,
        )  # fmt: skip
    )
    assert routed["programs_completed"] == 6


def test_the_conformance_suite_runs_on_the_installed_policy(plugin_python):
    """The README's command for plugin authors, run from the checkout in the plugin's
    environment: every conformance test of the policy passes."""
    out = _run(
        plugin_python,
        "-m",
        "pytest",
        "-v",
        "-p",
        "no:xdist",
        "-p",
        "no:cacheprovider",
        "tests/test_conformance.py",
        "-k",
        "tinyfifo",
    )
    ran = [line for line in out.splitlines() if "[tinyfifo" in line]
    assert len(ran) >= 4 and all("PASSED" in line for line in ran), out
