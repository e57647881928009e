"""The house's rules, checked on the source: which package may import which. The core owns
the interfaces; metrics, the SimPy model, the live path, traces, policies and engines depend on
it, never the other way round; the lab and the CLI compose them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package (folder in the checkout) -> thundersim sub-packages it must never import, even lazily
FORBIDDEN = {
    "thundersim/core": (
        "sim",
        "live",
        "lab",
        "cli",
        "metrics",
        "policies",
        "engine_adapters",
        "conformance",
    ),
    "thundersim/metrics": (
        "sim",
        "live",
        "lab",
        "cli",
        "policies",
        "engine_adapters",
        "conformance",
    ),
    "thundersim/traces": (
        "sim",
        "live",
        "lab",
        "cli",
        "metrics",
        "policies",
        "engine_adapters",
        "conformance",
    ),
    "thundersim/sim": ("live", "lab", "cli", "policies", "engine_adapters", "conformance"),
    # the differential test against vLLM's scheduler checks the engine model alone: no policy,
    # no live engine (its vLLM half runs in vLLM's own Python and imports nothing of ours)
    "thundersim/conformance": ("live", "cli", "policies", "engine_adapters", "metrics"),
    # the live path runs real engines: it must not need the SimPy runner (calibrate.py, which
    # validates the simulator against a live engine, is the one that composes both)
    "thundersim/live/driver.py": ("sim", "lab", "cli"),
    "thundersim/live/serve.py": ("sim", "lab", "cli"),
    "policies": ("sim", "live", "lab", "cli", "engine_adapters", "metrics", "traces"),
    "engine_adapters": ("sim", "live", "lab", "cli", "policies", "metrics"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _files(where: str) -> list[Path]:
    p = ROOT / where
    return [p] if p.suffix == ".py" else sorted(p.rglob("*.py"))


@pytest.mark.parametrize("where", sorted(FORBIDDEN))
def test_no_package_imports_what_depends_on_it(where):
    banned = tuple(f"thundersim.{name}" for name in FORBIDDEN[where])
    bad = [
        f"{f.relative_to(ROOT)}:{line}: imports {module}"
        for f in _files(where)
        for line, module in _imports(f)
        if any(module == b or module.startswith(b + ".") for b in banned)
    ]
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_checkout_folders_as_top_level_packages():
    """policies/ and engine_adapters/ install inside the thundersim namespace: an `import
    policies` would work in the checkout and break (or import someone else's package) once
    installed."""
    bad = [
        f"{f.relative_to(ROOT)}:{line}: imports {module}"
        for where in ("thundersim", "policies", "engine_adapters", "tests", "experiments")
        for f in _files(where)
        for line, module in _imports(f)
        if module.split(".")[0] in ("policies", "engine_adapters")
    ]
    assert not bad, "\n".join(bad)


def test_the_rules_see_every_package():
    """A new sub-package gets a rule, or this fails: the table above is the architecture."""
    packages = {
        p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("thundersim/*/__init__.py")
    }
    ruled = {w for w in FORBIDDEN if w.count("/") == 1 and not w.endswith(".py")}
    composers = {"thundersim/lab", "thundersim/cli", "thundersim/live"}  # they compose the rest
    assert packages - composers == ruled, (packages - composers) ^ ruled
