"""Where every constant of the simulator comes from: a scanner of provenance tags.

Every number that shapes a result (hardware and model facts, engine defaults, workload
generator parameters, policy defaults) carries a tag in a comment next to it:

    PIN_S = 2.0  # provenance: measured — Continuum's released code (FIXED_THRESHOLD_CONTINUUM)

    # Some explanation of the number, as long as it needs to be.
    # provenance: fitted-to-paper [fig2c] — least-squares fit to Fig 2c's four points;
    # a tag's text may continue on the comment lines below it, down to the code.
    PREP_A_S = 28.37

A tag is ``# provenance: <class> [<spec>, ...] — <source>``, written either at the end of the
first line of what it tags or in the comment block right above it (no blank line between).
The ``[...]`` list is required for ``fitted-to-paper`` (``[]`` when no figure compares the
number) and refused for the other classes; each name is an experiment spec,
``experiments/specs/<name>.toml``, whose compared metric depends on the constant by
construction: the figure compares the very quantity the constant was fitted to (Fig 9's tool
tails, Fig 2c's preparation times), or the phenomenon it was tuned to produce (an observation
scale tuned to where thrashing starts drives every throughput and hit rate of that workload). A
figure that only takes a fitted number as one input among many (fig4c's throughput on tool
tails fitted to Fig 9) is not listed; the tag's text says so where it matters. The separator
before the source text is an em dash or ``--``.

What a tag can attach to (its *unit*): a module- or class-level assignment; inside one, a
dict entry (``"key": value``, as in a policy's ``params``), a keyword argument of a call
(``memory_bytes=...``) or an element of a list or tuple. A tag belongs to the outermost unit
that starts on the line it is on (or on the line right after its comment block); a number
belongs to the innermost tagged unit around it. The coverage rule: every numeric literal in
a module- or class-level assignment of a covered module lies inside a tagged unit. A
reference to another constant (``X = swe.X``) holds no number of its own and inherits its
provenance from the constant it names, so only the original is tagged.

Classes:
- ``spec``: a published specification — a hardware datasheet, a model's config.json, a
  documented default of a published system (vLLM, the paper's published proxy), or a setting
  the paper publishes for its method (Δt = 5 s). Not a measurement.
- ``measured``: a published measurement, cited (a corpus statistic, an nvidia-smi reading, a
  property of the paper's setup such as its sandbox sizes).
- ``calibrated``: fitted to a live engine by ``thundersim calibrate``.
- ``estimate``: a named guess, with the reasoning.
- ``fitted-to-paper``: derived from a number the ThunderAgent paper reports as a result of its
  experiments (a value read off one of its figures), chosen so that it comes out; a figure whose
  compared metric depends on one is a consistency check, not a reproduction. (A property of the
  paper's setup that its text states, such as a sandbox size or a step limit, is ``measured``
  or ``spec`` instead.)
- ``definition``: not a modelling choice at all — a unit (GiB), a mathematical constant (a
  z-score), a label (a random stream id), a neutral default (scale 1.0, 0 experts = dense).

This module says which modules are covered and writes the table; the scanner of one module's
source is thundersim.lab.provenance_tags. The covered modules are found by import, so the scan
reads what Python runs: a checkout's files (editable install) or an installed wheel's, with the
same table either way:

    python -m thundersim.lab.provenance > docs/PROVENANCE.md
"""

from __future__ import annotations

import sys
from collections import Counter
from importlib.util import find_spec
from pathlib import Path

from thundersim.lab import data
from thundersim.lab.provenance_tags import CLASSES, FITTED, Entry, Problem, scan_source

# The modules whose constants must all be tagged: (package, file glob in it). Packages are
# found by import, so the scan reads the modules Python runs: a checkout's (editable install)
# or an installed wheel's.
COVERED = (
    ("thundersim.traces.workloads", "*.py"),
    ("thundersim.sim", "catalog.py"),
    ("thundersim.sim", "sandbox.py"),
    ("thundersim.sim", "latency.py"),
    ("thundersim.sim", "latency_measured.py"),
    ("thundersim.conformance", "workloads.py"),
    ("thundersim.sim", "engine.py"),
    ("thundersim.core", "envs.py"),
    ("thundersim.core", "policy.py"),
    ("thundersim.policies", "*.py"),
    ("thundersim.policies.routers", "*.py"),
)


def _package_dir(package: str) -> Path:
    return Path(find_spec(package).submodule_search_locations[0])


def covered_modules() -> dict[str, Path]:
    """Dotted module name -> file of every covered module, sorted by name."""
    found: dict[str, Path] = {}
    for package, pattern in COVERED:
        for f in _package_dir(package).glob(pattern):
            name = package if f.stem == "__init__" else f"{package}.{f.stem}"
            found[name] = f
    return dict(sorted(found.items()))


def covered_files() -> list[Path]:
    return list(covered_modules().values())


def _shown(path: Path) -> str:
    """A file as problems name it: relative to the folder holding the thundersim package (the
    checkout, or site-packages), as in `policies/stp.py` or `thundersim/sim/engine.py`."""
    top = _package_dir("thundersim").parent
    return path.relative_to(top).as_posix() if path.is_relative_to(top) else str(path)


def scan(
    modules: dict[str, Path] | None = None, spec_dir: Path | None = None
) -> tuple[list[Entry], list[Problem]]:
    """Entries and problems of the modules (default: the covered ones), their fitted tags
    checked against the specs of spec_dir (default: thundersim.lab.data's spec folder)."""
    entries: list[Entry] = []
    problems: list[Problem] = []
    spec_dir = data.spec_dir() if spec_dir is None else spec_dir
    spec_names = {p.stem for p in spec_dir.glob("*.toml")}
    for module, path in (covered_modules() if modules is None else modules).items():
        shown = _shown(path)
        found, bad = scan_source(path.read_text(), module, shown)
        entries += found
        problems += bad
        for e in found:
            for s in e.specs:
                if s not in spec_names:
                    message = f"{e.name}: no experiment spec {s!r} (experiments/specs/{s}.toml)"
                    problems.append(Problem(shown, e.line, message))
    return entries, problems


def entries() -> list[Entry]:
    """Every tagged constant of the covered modules, module by module, in source order."""
    return scan()[0]


def problems() -> list[Problem]:
    """Untagged numbers, malformed or orphan tags, unknown specs (empty when all is well)."""
    return scan()[1]


def fitted_specs() -> dict[str, list[str]]:
    """Spec name -> the fitted-to-paper constants its compared metric depends on (sorted)."""
    out: dict[str, set[str]] = {}
    for e in entries():
        if e.cls == FITTED:
            for s in e.specs:
                out.setdefault(s, set()).add(e.qualname)
    return {s: sorted(out[s]) for s in sorted(out)}


# --- the table ------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown() -> str:
    """The provenance of every constant as Markdown (what docs/PROVENANCE.md holds)."""
    found, bad = scan()
    counts = Counter(e.cls for e in found)
    out = [
        "# Provenance of every constant",
        "",
        "Generated by `python -m thundersim.lab.provenance > docs/PROVENANCE.md` from the",
        "`# provenance:` tags next to each constant (see `thundersim/lab/provenance.py` for the",
        "convention); a test keeps this file equal to the generated text. A constant that only",
        "refers to another one (`X = swe.X`) inherits that one's provenance and is not listed.",
        "No constant is `calibrated` by default: `thundersim calibrate` writes a latency",
        "profile that replaces the roofline estimates at run time.",
        "",
        "Classes: **spec** (a published specification or documented default), **measured**",
        "(a published measurement, cited), **calibrated** (fitted to a live engine by",
        "`thundersim calibrate`), **estimate** (a named guess), **fitted-to-paper** (derived",
        "from a value of one of the ThunderAgent paper's figures, so that it comes out),",
        "**definition** (a unit, a mathematical constant, a label: no modelling choice).",
        "",
        "| class | constants |",
        "|---|---|",
    ]
    out += [f"| {c} | {counts.get(c, 0)} |" for c in CLASSES]
    out += [
        "",
        "## Figures that are consistency checks, not reproductions",
        "",
        "Each of these experiment specs compares a metric that depends on a constant fitted to",
        "the paper; agreement there is by construction, at least in part.",
        "",
        "| spec | fitted-to-paper constants it depends on |",
        "|---|---|",
    ]
    fitted: dict[str, set[str]] = {}
    for e in found:
        if e.cls == FITTED:
            for s in e.specs:
                fitted.setdefault(s, set()).add(e.qualname)
    out += [f"| {s} | {', '.join(sorted(fitted[s]))} |" for s in sorted(fitted)]
    if bad:
        out += ["", "## Problems", ""]
        out += [f"- `{p}`" for p in bad]
    module = None
    for e in found:
        if e.module != module:
            module = e.module
            out += ["", f"## {module}", "", "| constant | value | class | source |"]
            out += ["|---|---|---|---|"]
        cls = e.cls + (f" [{', '.join(e.specs)}]" if e.cls == FITTED else "")
        # No line numbers: they move with every edit above a constant, and the committed table
        # would go stale for reasons that change no provenance.
        out.append(f"| `{_cell(e.name)}` | `{_cell(e.value)}` | {cls} | {_cell(e.source)} |")
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.write(table_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
