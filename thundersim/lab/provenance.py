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

    python -m thundersim.lab.provenance > docs/PROVENANCE.md
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CLASSES = ("spec", "measured", "calibrated", "estimate", "fitted-to-paper", "definition")
FITTED = "fitted-to-paper"

ROOT = Path(__file__).resolve().parents[2]  # the checkout: thundersim/lab/provenance.py
SPECS_DIR = ROOT / "experiments" / "specs"

# The modules whose constants must all be tagged, as globs relative to the repository root.
COVERED = (
    "thundersim/traces/workloads/*.py",
    "thundersim/sim/catalog.py",
    "thundersim/sim/sandbox.py",
    "thundersim/sim/latency.py",
    "thundersim/sim/engine.py",
    "thundersim/core/envs.py",
    "thundersim/core/policy.py",
    "policies/*.py",
    "policies/routers/*.py",
)

_TAG = re.compile(
    r"provenance:\s*(?P<cls>[A-Za-z]+(?:-[A-Za-z]+)*)\s*"
    r"(?:\[(?P<specs>[^\]]*)\])?\s*"
    r"(?:(?:—|--)\s*(?P<text>.*?))?\s*$"
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One tagged constant (or group of constants: a dict entry, a catalog row)."""

    module: str  # dotted, e.g. thundersim.traces.workloads.openhands
    name: str  # e.g. OBS_TOKENS, GPUS['H100-SXM'].memory_bytes, Continuum.params['ema_alpha']
    value: str  # the source text of the value, on one line
    cls: str
    source: str
    line: int
    specs: tuple[str, ...] = ()

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the scanner refuses: an untagged number, a bad or orphan tag."""

    path: str  # relative to the repository root
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class _Tag:
    cls: str
    specs: tuple[str, ...]
    text: str
    line: int


@dataclass(eq=False)
class _Unit:
    name: str
    node: ast.AST  # the value node (for the value text)
    start: int
    end: int
    depth: int
    parent: _Unit | None
    tag: _Tag | None = None
    literals: list[int] = field(default_factory=list)  # lines of numbers it directly owns


# --- parsing -------------------------------------------------------------------------------


def _comments(source: str) -> list[tuple[int, bool, str]]:
    """(line, whole-line?, text) of every comment."""
    out = []
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            whole = not lines[row - 1][:col].strip()
            out.append((row, whole, tok.string))
    return out


def _is_number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float, complex)


def _label(node: ast.AST, index: int) -> str:
    """A readable key for a list/tuple element: the string its call starts with, or its index."""
    if (
        isinstance(node, ast.Call)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return repr(node.args[0].value)
    return str(index)


def _walk(node: ast.AST, unit: _Unit, units: list[_Unit]) -> None:
    """Find sub-units (dict entries, keyword arguments, sequence elements) and numbers."""
    if _is_number(node):
        unit.literals.append(node.lineno)
        return
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:  # {**other}: a reference, nothing of its own
                _walk(v, unit, units)
                continue
            key = repr(k.value) if isinstance(k, ast.Constant) else ast.unparse(k)
            sub = _sub(unit, f"[{key}]", v, k.lineno, v.end_lineno, units)
            _walk(k, sub, units)
            _walk(v, sub, units)
        return
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        for i, e in enumerate(node.elts):
            sub = _sub(unit, f"[{_label(e, i)}]", e, e.lineno, e.end_lineno, units)
            _walk(e, sub, units)
        return
    if isinstance(node, ast.Call):
        _walk(node.func, unit, units)
        for a in node.args:
            _walk(a, unit, units)
        for kw in node.keywords:
            if kw.arg is None:
                _walk(kw.value, unit, units)
                continue
            sub = _sub(unit, f".{kw.arg}", kw.value, kw.lineno, kw.value.end_lineno, units)
            _walk(kw.value, sub, units)
        return
    for child in ast.iter_child_nodes(node):
        _walk(child, unit, units)


def _sub(parent: _Unit, suffix: str, node, start: int, end: int, units: list[_Unit]) -> _Unit:
    unit = _Unit(parent.name + suffix, node, start, end, parent.depth + 1, parent)
    units.append(unit)
    return unit


def _statements(tree: ast.Module):
    """(qualified prefix, statement) of every module-level and class-level assignment."""
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
            yield "", stmt
        elif isinstance(stmt, ast.ClassDef):
            for inner in stmt.body:
                if isinstance(inner, ast.Assign | ast.AnnAssign | ast.AugAssign):
                    yield f"{stmt.name}.", inner


def _targets(stmt) -> str:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return ", ".join(ast.unparse(t) for t in targets)


def _one_line(node: ast.AST, source: str, limit: int = 90) -> str:
    text = ast.get_source_segment(source, node)
    if text is None or "\n" in text:  # several lines may hold comments: use the code alone
        text = ast.unparse(node)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_tag(text: str) -> _Tag | str:
    """A tag from the text after '#', or the reason it is malformed."""
    m = _TAG.search(text)
    if m is None or text.find("provenance:") != m.start():
        return "malformed provenance tag"
    cls = m.group("cls")
    if cls not in CLASSES:
        return f"unknown provenance class {cls!r}; valid: {', '.join(CLASSES)}"
    specs_text = m.group("specs")
    specs = tuple(s.strip() for s in (specs_text or "").split(",") if s.strip())
    if cls == FITTED and specs_text is None:
        return f"a {FITTED} tag needs the [spec, ...] list it affects ([] if none)"
    if cls != FITTED and specs_text is not None:
        return f"only {FITTED} tags name specs, not {cls}"
    return _Tag(cls, specs, (m.group("text") or "").strip(), 0)


def scan_source(source: str, module: str, path: str) -> tuple[list[Entry], list[Problem]]:
    """Entries and problems of one module's source."""
    tree = ast.parse(source)
    lines = source.splitlines()
    units: list[_Unit] = []
    for prefix, stmt in _statements(tree):
        if stmt.value is None:  # a bare annotation
            continue
        top = _Unit(prefix + _targets(stmt), stmt.value, stmt.lineno, stmt.end_lineno, 0, None)
        units.append(top)
        _walk(stmt.value, top, units)

    starting: dict[int, list[_Unit]] = {}
    for u in units:
        starting.setdefault(u.start, []).append(u)

    problems: list[Problem] = []

    def attach(line: int, tag: _Tag, target_line: int) -> None:
        candidates = starting.get(target_line, [])
        if not candidates:
            problems.append(Problem(path, line, "provenance tag attaches to nothing"))
            return
        depth = min(u.depth for u in candidates)
        outer = [u for u in candidates if u.depth == depth]
        if len(outer) > 1:
            names = ", ".join(u.name for u in outer)
            problems.append(Problem(path, line, f"provenance tag is ambiguous ({names})"))
            return
        unit = outer[0]
        if unit.tag is not None:
            problems.append(Problem(path, line, f"{unit.name} has two provenance tags"))
            return
        unit.tag = _Tag(tag.cls, tag.specs, tag.text, line)

    comments = _comments(source)
    whole_lines = {row: text for row, whole, text in comments if whole}
    for row, whole, text in comments:
        if "provenance:" not in text:
            continue
        parsed = _parse_tag(text.lstrip("#").strip())
        if isinstance(parsed, str):
            problems.append(Problem(path, row, parsed))
            continue
        if not whole:
            attach(row, parsed, row)
            continue
        # In a comment block: the text runs on over the following comment lines, and the
        # tag belongs to what starts right after the block.
        end, more = row, []
        while end + 1 in whole_lines and "provenance:" not in whole_lines[end + 1]:
            end += 1
            more.append(whole_lines[end].lstrip("#").strip())
        if end + 1 in whole_lines:  # the next tag of the block starts here
            problems.append(Problem(path, row, "provenance tag is followed by another tag"))
            continue
        if end < len(lines) and not lines[end].strip():
            problems.append(Problem(path, row, "blank line between provenance tag and code"))
            continue
        text_all = " ".join([parsed.text, *more]).strip()
        attach(row, _Tag(parsed.cls, parsed.specs, text_all, row), end + 1)

    entries: list[Entry] = []
    for u in units:
        if u.tag is not None:
            if not u.tag.text:
                problems.append(Problem(path, u.tag.line, f"{u.name}: tag has no source text"))
            entries.append(
                Entry(
                    module,
                    u.name,
                    _one_line(u.node, source),
                    u.tag.cls,
                    u.tag.text,
                    u.start,
                    u.tag.specs,
                )
            )
        if u.literals:
            owner = u
            while owner is not None and owner.tag is None:
                owner = owner.parent
            if owner is None:
                problems.append(
                    Problem(
                        path, u.literals[0], f"untagged number in {u.name} (add a provenance tag)"
                    )
                )
    entries.sort(key=lambda e: e.line)
    problems.sort(key=lambda p: (p.line, p.message))
    return entries, problems


# --- the covered modules ------------------------------------------------------------------


def covered_files(root: Path = ROOT) -> list[Path]:
    files: set[Path] = set()
    for pattern in COVERED:
        files.update(root.glob(pattern))
    return sorted(files)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] in ("policies", "engine_adapters"):  # installed inside the thundersim namespace
        parts.insert(0, "thundersim")
    return ".".join(parts)


def scan(root: Path = ROOT) -> tuple[list[Entry], list[Problem]]:
    entries: list[Entry] = []
    problems: list[Problem] = []
    spec_names = {p.stem for p in (root / "experiments" / "specs").glob("*.toml")}
    for path in covered_files(root):
        rel = path.relative_to(root).as_posix()
        found, bad = scan_source(path.read_text(), _module_name(path, root), rel)
        entries += found
        problems += bad
        for e in found:
            for s in e.specs:
                if s not in spec_names:
                    problems.append(
                        Problem(
                            rel,
                            e.line,
                            f"{e.name}: no experiment spec {s!r} (experiments/specs/{s}.toml)",
                        )
                    )
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
