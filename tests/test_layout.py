"""What an install holds: pyproject's package list is the tree's, the installed tree nests
policies/ and engine_adapters/ inside thundersim (never top-level packages) and carries the
specs, traces and results the lab reads, and `thundersim sweep` / `figures` run from it in a
folder that is no checkout.

The installed tree is built the way a wheel is (setuptools' build_py over pyproject's package
list, package-dir and package-data: a wheel holds these files plus its metadata) from a copy of
the checkout's files, with the test environment's setuptools: no network, no build isolation.
(`pip wheel --no-build-isolation` cannot run here: pyproject asks for setuptools>=68, which
builds wheels by itself, and a fresh venv has an older one without the `wheel` package.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
CODE_FOLDERS = ("thundersim", "policies", "engine_adapters")


def _folder(package: str) -> Path:
    """The checkout folder of a package: its package-dir mapping (the longest that applies),
    else the dotted path."""
    mapping = SETUPTOOLS.get("package-dir", {})
    for name in sorted(mapping, key=len, reverse=True):
        if package == name or package.startswith(name + "."):
            rest = package[len(name) :].lstrip(".").split(".") if package != name else []
            return ROOT.joinpath(mapping[name], *[p for p in rest if p])
    return ROOT.joinpath(*package.split("."))


def _dotted(init: Path) -> str:
    parts = list(init.parent.relative_to(ROOT).parts)
    if parts[0] != "thundersim":  # policies/, engine_adapters/: inside the namespace
        parts.insert(0, "thundersim")
    return ".".join(parts)


def test_the_package_list_is_every_code_folder_and_the_data_folders():
    """Every folder with an __init__.py under thundersim/, policies/ and engine_adapters/ is a
    listed package (a missing one is left out of the wheel); every listed package is one of
    them or a data folder with package-data; nothing installs as a top-level `policies` or
    `engine_adapters`."""
    listed = set(SETUPTOOLS["packages"])
    code = {
        _dotted(init)
        for folder in CODE_FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    code_listed = {p for p in listed if (_folder(p) / "__init__.py").is_file()}
    assert code_listed == code, (
        f"missing: {sorted(code - listed)}, stale: {sorted(code_listed - code)}"
    )
    data = listed - code
    assert data == set(SETUPTOOLS.get("package-data", {})), "a data package without package-data"
    for package in data:
        patterns = SETUPTOOLS["package-data"][package]
        assert any(any(_folder(package).glob(p)) for p in patterns), f"{package}: no files"
    assert all(p.startswith("thundersim.") or p == "thundersim" for p in listed)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The installed tree of the checkout as it stands (tracked and new files, not ignored)."""
    tmp = tmp_path_factory.mktemp("layout")
    src, lib = tmp / "src", tmp / "lib"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():  # a file deleted in the working tree is not there
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    build = [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py"]
    subprocess.run([*build, "--build-lib", str(lib)], cwd=src, capture_output=True, check=True)
    return lib


def test_the_installed_tree_nests_the_checkout_folders_and_carries_the_lab_data(installed):
    top = {p.name for p in installed.iterdir()}
    assert top == {"thundersim"}, top  # no top-level policies/ or engine_adapters/
    package = installed / "thundersim"
    assert (package / "policies" / "stp.py").is_file()
    assert (package / "policies" / "routers" / "least_loaded.py").is_file()
    assert (package / "engine_adapters" / "vllm.py").is_file()
    assert (package / "cli" / "__init__.py").is_file()
    bundled = package / "bundled"
    for folder, pattern in (
        ("experiments/specs", "*.toml"),
        ("traces", "*.jsonl"),
        ("experiments/results", "*.json"),
    ):
        want = sorted(p.name for p in (ROOT / folder).glob(pattern))
        assert want, folder
        assert sorted(p.name for p in (bundled / folder).glob(pattern)) == want, folder


def test_sweep_and_figures_run_from_the_installed_tree_outside_a_checkout(installed, tmp_path):
    """In an empty folder, with only the installed tree on the path: the lab finds its bundled
    specs, traces and results; `thundersim sweep` runs a spec by name and one of the folder's
    own naming a bundled trace; `figures` draws the validation figure from the bundled
    results."""
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\nkind = "line"\n[base]\ntrace = "traces/toolorchestra.jsonl"\n'
        'horizon = 60.0\n[grid]\npolicy = ["vllm", "stp"]\nconcurrency = [4]\n'
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    cli = [sys.executable, "-c", "from thundersim.cli import main; main()"]

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    where = run(
        sys.executable,
        "-c",
        "import thundersim; from thundersim.lab import data, figures;"
        "print(thundersim.__file__); print(data.bundled_root()); print(len(figures.specs_in()))",
    ).split("\n")
    assert where[0] == str(installed / "thundersim" / "__init__.py")
    assert where[1] == str(installed / "thundersim" / "bundled")
    assert int(where[2]) == len(list((ROOT / "experiments" / "specs").glob("*.toml")))
    out = run(*cli, "sweep", "mine.toml", "--workers", "1", "--cache", "c", "--out", "o")
    assert "mine: 2 points (2 run, 0 cached)" in out
    out = run(*cli, "sweep", "fig2c", "--reduced", "--workers", "1", "--cache", "c", "--out", "o")
    assert "fig2c: 2 points" in out and (tmp_path / "o" / "fig2c.csv").is_file()
    run(*cli, "figures", "--only", "own_validation", "--cache", "c", "--out", "figs")
    report = (tmp_path / "figs" / "REPORT-partial.md").read_text()
    assert "## own_validation:" in report and "No measurement yet" not in report
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "traces").exists()
