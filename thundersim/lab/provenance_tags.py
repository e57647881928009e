"""The provenance-tag scanner of one module's source: which constants a `# provenance:` tag
covers, and which numbers no tag covers. The convention (classes, where a tag goes, what it
attaches to) is thundersim.lab.provenance's docstring."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field

CLASSES = ("spec", "measured", "calibrated", "estimate", "fitted-to-paper", "definition")
FITTED = "fitted-to-paper"

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
    """Entries and problems of one module's source (`module`: its dotted name; `path`: the
    file as problems name it)."""
    units = _units(ast.parse(source))
    problems: list[Problem] = []
    _attach_tags(source, units, path, problems)
    entries = _entries(units, source, module, path, problems)
    entries.sort(key=lambda e: e.line)
    problems.sort(key=lambda p: (p.line, p.message))
    return entries, problems


def _units(tree: ast.Module) -> list[_Unit]:
    """Every unit a tag can attach to: the module- and class-level assignments, and inside
    them the dict entries, keyword arguments and sequence elements."""
    units: list[_Unit] = []
    for prefix, stmt in _statements(tree):
        if stmt.value is None:  # a bare annotation
            continue
        top = _Unit(prefix + _targets(stmt), stmt.value, stmt.lineno, stmt.end_lineno, 0, None)
        units.append(top)
        _walk(stmt.value, top, units)
    return units


def _attach_tags(source: str, units: list[_Unit], path: str, problems: list[Problem]) -> None:
    """Give each unit the tag at the end of its first line or in the comment block above it."""
    starting: dict[int, list[_Unit]] = {}
    for u in units:
        starting.setdefault(u.start, []).append(u)
    lines = source.splitlines()
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
            _attach(starting, _Tag(parsed.cls, parsed.specs, parsed.text, row), row, path, problems)
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
        _attach(starting, _Tag(parsed.cls, parsed.specs, text_all, row), end + 1, path, problems)


def _attach(
    starting: dict[int, list[_Unit]], tag: _Tag, target_line: int, path: str, problems: list
) -> None:
    """The tag goes to the outermost unit starting on target_line."""
    candidates = starting.get(target_line, [])
    if not candidates:
        problems.append(Problem(path, tag.line, "provenance tag attaches to nothing"))
        return
    depth = min(u.depth for u in candidates)
    outer = [u for u in candidates if u.depth == depth]
    if len(outer) > 1:
        names = ", ".join(u.name for u in outer)
        problems.append(Problem(path, tag.line, f"provenance tag is ambiguous ({names})"))
        return
    unit = outer[0]
    if unit.tag is not None:
        problems.append(Problem(path, tag.line, f"{unit.name} has two provenance tags"))
        return
    unit.tag = tag


def _entries(
    units: list[_Unit], source: str, module: str, path: str, problems: list[Problem]
) -> list[Entry]:
    """An entry per tagged unit; a problem per unit holding a number that no tag covers."""
    entries: list[Entry] = []
    for u in units:
        if u.tag is not None:
            if not u.tag.text:
                problems.append(Problem(path, u.tag.line, f"{u.name}: tag has no source text"))
            value = _one_line(u.node, source)
            entries.append(
                Entry(module, u.name, value, u.tag.cls, u.tag.text, u.start, u.tag.specs)
            )
        if u.literals:
            owner = u
            while owner is not None and owner.tag is None:
                owner = owner.parent
            if owner is None:
                message = f"untagged number in {u.name} (add a provenance tag)"
                problems.append(Problem(path, u.literals[0], message))
    return entries
