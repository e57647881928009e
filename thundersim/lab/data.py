"""Where the lab finds its inputs: specs, traces and results files named by relative paths.

A spec names its trace as `traces/swe.jsonl` and a validation spec its results as
`experiments/results/live_fidelity.json`: paths of the checkout's layout. Such a path is looked
up in the current directory first (a checkout, or a user's own experiment folder), then in the
data installed with thundersim, which keeps that layout:

- a wheel installs the checkout's `traces/`, `experiments/specs/` and `experiments/results/`
  under `thundersim/bundled/` (pyproject's package-dir maps them there);
- an editable install (`pip install -e`) has them in its source checkout, which the install
  records (PEP 610, `direct_url.json`).

Nothing here is computed from where this source file lies, so the same code works from a
checkout, an editable install and a wheel. A miss names every place it looked.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from urllib.parse import unquote, urlparse

SPECS = Path("experiments/specs")  # the experiment specs, in the checkout's layout


class DataNotFound(ValueError):
    """A path found neither in the current directory nor in the bundled data: an input error,
    like a bad spec (the CLI reports ValueErrors as such)."""


@cache
def bundled_root() -> Path | None:
    """The folder that holds thundersim's own traces/ and experiments/; None when there is
    none (a checkout run without an install, outside its folder)."""
    installed = Path(str(resources.files("thundersim"))) / "bundled"
    if installed.is_dir():
        return installed
    return _editable_source()


def _editable_source() -> Path | None:
    """The source folder of an editable install of thundersim (PEP 610). Every installed
    copy is asked: a checkout on sys.path also shows its own metadata (thundersim.egg-info),
    which records no source."""
    for dist in metadata.distributions(name="thundersim"):
        text = dist.read_text("direct_url.json")
        info = json.loads(text) if text else {}
        url = urlparse(info.get("url", ""))
        if info.get("dir_info", {}).get("editable") and url.scheme == "file":
            source = Path(unquote(url.path))
            if source.is_dir():
                return source
    return None


def candidates(path: str | Path) -> list[Path]:
    """Where a path is looked for, in order: itself when absolute; else the current directory,
    then the bundled data."""
    path = Path(path)
    if path.is_absolute():
        return [path]
    roots = [Path.cwd()]
    bundled = bundled_root()
    if bundled is not None and bundled not in roots:
        roots.append(bundled)
    return [root / path for root in roots]


def locate(path: str | Path) -> Path | None:
    """The first existing candidate of a path, or None."""
    return next((p for p in candidates(path) if p.exists()), None)


def find(path: str | Path, what: str = "file") -> Path:
    """The first existing candidate of a path; DataNotFound names every place looked in."""
    found = locate(path)
    if found is None:
        looked = ", ".join(str(p) for p in candidates(path))
        raise DataNotFound(f"{what} {str(path)!r} not found (looked for {looked})")
    return found


def spec_dir() -> Path:
    """The folder of experiment specs: ./experiments/specs, else the bundled one."""
    return find(SPECS, "spec folder")


def find_spec_file(name: str | Path) -> Path:
    """A spec by path (`experiments/specs/fig4a.toml`, `my.toml`) or by name (`fig4a`: a
    `.toml` of the spec folder)."""
    name = Path(name)
    if name.suffix or len(name.parts) > 1:
        return find(name, "spec")
    return find(SPECS / f"{name}.toml", "spec")
