"""Benchmark: what `thundersim` costs before it simulates anything.

    python experiments/bench_startup.py [--repeat 5] [--trace traces/toolorchestra.jsonl]
        [--concurrency 8] [--make-run] [--before DIR]

Prints, best of --repeat, each in a fresh interpreter (wall clock of the whole process):
- `python -c pass`: the interpreter alone, the floor under every row;
- `import thundersim.cli`: what every command and every `--help` pays first;
- `thundersim --help` and `thundersim run --help`;
- `thundersim run` on a small trace: its start-up (process start to the simulation loop's first
  entry: the `python -c pass` floor plus the CLI's time to the loop, measured by wrapping the
  loop);
- `thundersim run` on a small trace, end to end, next to its in-loop simulation time (the run
  summary's wall_s: the simulation loop alone) and their difference (start-up + result tables
  + output); --make-run adds `make run`'s run (traces/swe.jsonl, stp, 96 programs; its tables
  not written: no --out);
and which heavy libraries each of `import thundersim.cli` and the run left in sys.modules; then,
for this checkout, who loads each heavy library in `run --help` and in the run (the first line of
thundersim/, policies/ or engine_adapters/ whose import brought it in) and what it cost there
(-X importtime, cumulative: a library's figure includes what it pulled in first, so they
overlap): where to look to make start-up cheaper still.

--before DIR times an earlier thundersim/ side by side: it goes first on sys.path, while
policies/ and engine_adapters/ still come from the installed checkout (the editable install maps
them), so DIR must work with them: e.g. this checkout's thundersim/ with the CLI of before the
lazy imports,
    git archive HEAD thundersim | tar -x -C DIR
    for f in thundersim/cli/*.py thundersim/api.py; do git show 383ca9b^:$f > DIR/$f; done

Measured on a 2-core machine shared with other jobs: read the ratios, not the third digit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "scipy",
    "pandas",
    "pyarrow",
    "numpy",
    "aiohttp",
    "httpx",
    "matplotlib",
    "simpy",
    "rich",
    "pydantic",
    "asyncio",
)
CLI = "from thundersim.cli import main; main()"
# The CLI, reporting on stderr when the simulation loop is first entered (seconds since this
# code began: add the `python -c pass` floor for the time since the process started). The
# loop's module is imported first to wrap it, which a run imports before its loop anyway.
CLI_TO_LOOP = """
import sys, time
t0 = time.perf_counter()
import thundersim.sim.simulate as _s
_loop = _s._run_until_done
def _entered(*a, **k):
    sys.stderr.write(f"LOOP_AT {time.perf_counter() - t0:.6f}\\n")
    sys.stderr.flush()
    return _loop(*a, **k)
_s._run_until_done = _entered
from thundersim.cli import main
main()
"""


def _env(tree: Path | None) -> dict:
    return dict(os.environ, COLUMNS="100")


def _code(code: str, tree: Path | None) -> str:
    """`code` for `python -c`, importing thundersim from `tree` when one is given (first on
    sys.path: `-c` puts the current directory, this checkout, before PYTHONPATH)."""
    return code if tree is None else f"import sys; sys.path.insert(0, {str(tree)!r})\n{code}"


def best_of(argv: list[str], repeat: int, tree: Path | None) -> tuple[float, str]:
    """Fastest wall time of `argv` (python -c CODE ...) in `repeat` fresh processes, and the
    last one's stdout."""
    argv = [argv[0], argv[1], _code(argv[2], tree), *argv[3:]]
    best, out = float("inf"), ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=_env(tree))
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
        best, out = min(best, wall), done.stdout
    return best, out


def loaded_after(code: str, tree: Path | None) -> list[str]:
    """Which HEAVY libraries are in sys.modules after `code` runs in a fresh interpreter."""
    listing = f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    probe = f"{_code(code, tree)}\nimport sys, json\n{listing}"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=_env(tree)
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


_FIRST_IMPORTER = """
import builtins, sys, traceback
_orig, _seen = builtins.__import__, {}
def _hook(name, *a, **k):
    top = name.split(".")[0]
    if top in HEAVY and top not in sys.modules and top not in _seen:
        stack = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith("<")]
        ours = [f for f in stack if f.filename.startswith(ROOT) and "-packages" not in f.filename]
        f = (ours or stack)[-1]
        _seen[top] = f"{f.filename.split('-packages/')[-1].removeprefix(ROOT + '/')}:{f.lineno}"
    return _orig(name, *a, **k)
builtins.__import__ = _hook
"""


def who_loads(code: str) -> dict[str, tuple[str, float]]:
    """heavy library -> (the line of ours whose import first loaded it, its import s)."""
    setup = f"HEAVY = {HEAVY!r}\nROOT = {str(ROOT)!r}\n{_FIRST_IMPORTER}"
    probe = f"{setup}\n{code}\nimport json\nprint(json.dumps(_seen))"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(None),
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    first = json.loads(done.stdout.strip().splitlines()[-1])
    cost = _import_costs(done.stderr)
    return {lib: (where, cost.get(lib, 0.0)) for lib, where in first.items()}


def _import_costs(importtime: str) -> dict[str, float]:
    """Seconds per top-level package from -X importtime's output: the cumulative time of each
    subtree of the package's modules that a module of another package (or nothing) imported."""
    entries = []  # (depth, top-level package, cumulative us), in output order (children first)
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line.split("|", 2)
        if not cum.strip().isdigit():
            continue  # the header
        depth = (len(name) - len(name.lstrip())) // 2
        entries.append((depth, name.strip().split(".")[0], int(cum)))
    cost: dict[str, float] = {}
    stack: list[tuple[int, str]] = []  # enclosing entries, read from the end (parents first)
    for depth, top, cum in reversed(entries):
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if not stack or stack[-1][1] != top:
            cost[top] = cost.get(top, 0.0) + cum / 1e6
        stack.append((depth, top))
    return cost


def to_loop(argv: list[str], repeat: int, tree: Path | None) -> float:
    """Least time from the start of `argv` (python -c CLI_TO_LOOP ...) to its loop, over
    `repeat` fresh processes (the interpreter's own start not included)."""
    argv = [argv[0], argv[1], _code(argv[2], tree), *argv[3:]]
    best = float("inf")
    for _ in range(repeat):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=_env(tree))
        marks = [line for line in done.stderr.splitlines() if line.startswith("LOOP_AT ")]
        if done.returncode != 0 or not marks:
            raise SystemExit(f"{' '.join(argv)} failed or never looped:\n{done.stderr[-2000:]}")
        best = min(best, float(marks[0].split()[1]))
    return best


def measure(tree: Path | None, args) -> dict:
    py = sys.executable
    run_args = ["run", "--trace", args.trace, "--concurrency", str(args.concurrency)]
    run_args += ["--policy", args.policy, "--json", "--no-progress"]
    rows = {}
    rows["python -c pass"], _ = best_of([py, "-c", "pass"], args.repeat, None)
    rows["import thundersim.cli"], _ = best_of(
        [py, "-c", "import thundersim.cli"], args.repeat, tree
    )
    rows["thundersim --help"], _ = best_of([py, "-c", CLI, "--help"], args.repeat, tree)
    rows["thundersim run --help"], _ = best_of([py, "-c", CLI, "run", "--help"], args.repeat, tree)
    runs = [("run", run_args)]
    if args.make_run:
        make = ["run", "--policy", "stp", "--trace", "traces/swe.jsonl", "--concurrency", "96"]
        runs.append(("make run", make + ["--json", "--no-progress"]))
    for name, argv in runs:
        e2e, out = best_of([py, "-c", CLI, *argv], args.repeat, tree)
        summary = json.loads(out)
        rows[f"thundersim {name}: end to end"] = e2e
        rows[f"thundersim {name}: start-up (process start to the loop)"] = rows[
            "python -c pass"
        ] + to_loop([py, "-c", CLI_TO_LOOP, *argv], args.repeat, tree)
        rows[f"thundersim {name}: in-loop simulation"] = summary["wall_s"]
        rows[f"thundersim {name}: all but the loop"] = e2e - summary["wall_s"]
        rows[f"thundersim {name}: simulated s"] = summary["simulated_s"]
    _, where = best_of([py, "-c", "import thundersim; print(thundersim.__file__)"], 1, tree)
    modules = {
        "import thundersim.cli": loaded_after("import thundersim.cli", tree),
        "thundersim run (sim)": loaded_after(
            f"from thundersim.cli import app\napp({run_args!r}, standalone_mode=False)",
            tree,
        ),
    }
    return {"times": rows, "modules": modules, "from": where.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="processes per row (best kept)")
    ap.add_argument("--trace", default="traces/toolorchestra.jsonl", help="the small run's trace")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--policy", default="stp")
    ap.add_argument("--make-run", action="store_true", help="also time `make run`'s run")
    ap.add_argument("--before", type=Path, help="an earlier checkout, timed side by side")
    args = ap.parse_args()

    trees = {"this checkout": None}
    if args.before is not None:
        trees = {f"before ({args.before})": args.before.resolve(), **trees}
    results = {name: measure(tree, args) for name, tree in trees.items()}

    names = list(results)
    rows = list(results[names[-1]]["times"])
    width = max(len(r) for r in rows) + 2
    print(f"best of {args.repeat} fresh processes, wall s; run: {args.policy} on {args.trace}")
    print(f"{'':{width}s}" + "".join(f"{n[:28]:>30s}" for n in names))
    for r in rows:
        cells = []
        for n in names:
            v = results[n]["times"].get(r)
            fmt = "{:30,.0f}" if r.endswith("simulated s") else "{:30.3f}"
            cells.append(f"{'-':>30s}" if v is None else fmt.format(v))
        print(f"{r:{width}s}" + "".join(cells))
    print("\nheavy libraries in sys.modules afterwards:")
    for n in names:
        print(f"  {n}: thundersim from {results[n]['from']}")
        for what, mods in results[n]["modules"].items():
            print(f"  {n}, {what}: {', '.join(mods) or 'none'}")
    run_args = ["run", "--trace", args.trace, "--concurrency", str(args.concurrency)]
    run_args += ["--policy", args.policy, "--json", "--no-progress"]
    probes = {
        "thundersim run --help": "from thundersim.cli import app\n"
        "try:\n    app(['run', '--help'], standalone_mode=False)\nexcept SystemExit:\n    pass",
        "thundersim run (sim)": f"from thundersim.cli import app\n"
        f"app({run_args!r}, standalone_mode=False)",
    }
    print("\nthis checkout: who loads them (first import of ours), and their import s there:")
    for what, code in probes.items():
        print(f"  {what}:")
        for lib, (where, secs) in who_loads(code).items():
            print(f"    {lib:10s} {secs:6.3f} s  from {where}")


if __name__ == "__main__":
    main()
