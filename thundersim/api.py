"""thundersim from Python (a notebook, a script): six functions over what the CLI runs.

    >>> import thundersim
    >>> result = thundersim.simulate("traces/toolorchestra.jsonl", policy="stp", concurrency=8)
    >>> result.summary["programs_completed"], type(result.steps).__name__
    (200, 'DataFrame')

- `simulate`: one run, a RunResult (its `summary` dict; `steps`, `programs`, `memory`,
  `env_usage`, `env_preps` DataFrames), as `thundersim run`;
- `compare`: policies x concurrency x routers in parallel, one DataFrame, as `thundersim
  compare`;
- `load_trace`, `generate`: a trace's programs, from a file or a workload generator;
- `read_run`: a RunResult back from the folder `thundersim run --out` (or `result.write`)
  wrote;
- `policy_names`: the registered policies, out-of-tree ones included.

A relative trace path is looked up in the current directory, then in the traces installed with
thundersim (thundersim.lab.data), so the examples run anywhere. Run parameters are those of a
sweep point, `thundersim run`'s options by the names a spec uses (POINT_DEFAULTS below).
Nothing here simulates on its own: each function calls the code the CLI and the lab run.

Importing this module is cheap (no pandas, no SimPy, no numpy): each function imports what it
runs. The defaults of `simulate` and `compare` are POINT_DEFAULTS' (tests/test_startup.py
checks they agree).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from thundersim.metrics.results import RunResult
    from thundersim.traces.schema import ProgramSpec

# thundersim.lab.points.POINT_DEFAULTS' trace, policy and concurrency, spelled out so that the
# signatures need no import (tests/test_startup.py checks they agree)
_DEFAULT_TRACE = "traces/swe.jsonl"
_DEFAULT_POLICY = "stp"
_DEFAULT_CONCURRENCY = 96

__all__ = [
    "compare",
    "generate",
    "load_trace",
    "policy_names",
    "read_run",
    "simulate",
]


def load_trace(path: str | Path) -> list[ProgramSpec]:
    """A trace's programs (JSONL, schema v1), validated; TraceError names the file and line of
    a bad one, or every place a missing file was looked for.

    >>> programs = load_trace("traces/toolorchestra.jsonl")
    >>> len(programs), programs[0].id
    (200, 'toolorchestra-0000')
    """
    from thundersim.traces.loader import load_trace as load

    return load(_trace_file(path))


def generate(workload: str, programs: int, seed: int = 0) -> list[ProgramSpec]:
    """`programs` programs of a synthetic workload (swe, openhands, toolorchestra, science,
    rollout), deterministic in the seed, as `thundersim trace gen`.

    >>> batch = generate("swe", 3, seed=0)
    >>> len(batch), batch == generate("swe", 3, seed=0)
    (3, True)
    """
    from thundersim.lab.points import programs_of

    return programs_of(f"gen:{workload}:{programs}:{seed}")


def simulate(
    trace: str | Path | Sequence[ProgramSpec] = _DEFAULT_TRACE,
    policy: str = _DEFAULT_POLICY,
    concurrency: int = _DEFAULT_CONCURRENCY,
    **options,
) -> RunResult:
    """Simulate a trace under a policy; the RunResult.

    `trace`: a path, "gen:WORKLOAD:N:SEED", or programs (load_trace, generate). `concurrency`:
    programs in the system at once (0: arrive at their trace times). `options`: any other
    run parameter of POINT_DEFAULTS (replicas, router, params as ["key=value"] or a dict,
    kv_tokens, horizon, warmup, seed, dt, decay, gpu, model, tp, ...).

    >>> result = simulate("traces/toolorchestra.jsonl", policy="vllm", concurrency=8)
    >>> result.summary["policy"], result.summary["programs_completed"]
    ('vllm', 200)
    >>> int(result.steps.groupby("program").size().sum()) == result.summary["steps_completed"]
    True
    >>> two = simulate(generate("swe", 6), concurrency=4, replicas=2, params={"sticky": 1})
    >>> sorted(two.memory.backend.unique().tolist())
    [0, 1]
    """
    from thundersim.lab.points import programs_of, simulate_point

    if not isinstance(trace, str | Path):  # programs
        return simulate_point(_point("", policy, concurrency, options), list(trace))
    point = _point(str(trace), policy, concurrency, options)
    generated = point["trace"].startswith("gen:")
    return simulate_point(
        point, programs_of(point["trace"], None if generated else _trace_file(trace))
    )


def compare(
    trace: str | Path = _DEFAULT_TRACE,
    policies: Sequence[str] = ("vllm", "stp"),
    concurrency: Sequence[int] = (24, 48, 72, 96),
    routers: Sequence[str] = ("least_loaded",),
    workers: int | None = None,
    **options,
) -> pd.DataFrame:
    """Every policy x concurrency x router on one trace file, in `workers` processes (default:
    one per core), measured the same way: one row per run, in grid order (the table `thundersim
    compare` writes). `options`: the other run parameters, as for `simulate`.

    >>> table = compare("traces/toolorchestra.jsonl", ["vllm", "stp"], [8, 16], workers=2)
    >>> table[["policy", "concurrency"]].values.tolist()
    [['vllm', 8], ['vllm', 16], ['stp', 8], ['stp', 16]]
    >>> bool((table.throughput_steps_per_min > 0).all())
    True
    """
    from thundersim.lab.compare import grid, run_grid
    from thundersim.lab.points import build_point

    file = _trace_file(trace)
    policy_options, config = build_point(_point(str(trace), policies[0], 0, options))
    points = grid(list(policies), list(concurrency), list(routers))
    table, _ = run_grid(str(file), points, config, policy_options, workers)
    return table


def read_run(folder: str | Path) -> RunResult:
    """The RunResult of a run's folder (`thundersim run --out DIR`, `RunResult.write`): its
    summary.json and its Parquet tables as DataFrames.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     simulate("traces/toolorchestra.jsonl", concurrency=8).write(folder)
    ...     run = read_run(folder)
    >>> run.summary["policy"], len(run.programs), run.env_preps is not None
    ('stp', 200, True)
    """
    import pandas as pd

    from thundersim.metrics.results import RunResult

    folder = Path(folder)
    needed = ["summary.json", "steps.parquet", "programs.parquet", "memory.parquet"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no {', '.join(missing)} (not a run's folder)")

    def table(name: str) -> pd.DataFrame | None:
        path = folder / f"{name}.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    return RunResult(
        json.loads((folder / "summary.json").read_text()),
        steps=table("steps"),
        programs=table("programs"),
        memory=table("memory"),
        env_usage=table("env_usage"),
        env_preps=table("env_preps"),
    )


def policy_names() -> list[str]:
    """The registered policies: the built-ins and those of installed packages (entry-point
    group `thundersim.policies`), as `thundersim policies` lists them.

    >>> {"vllm", "stp", "continuum"} <= set(policy_names())
    True
    """
    from thundersim.policies import names

    return names()


def _trace_file(path: str | Path) -> Path:
    from thundersim.lab import data
    from thundersim.traces.schema import TraceError

    try:
        return data.find(path, "trace")
    except data.DataNotFound as exc:
        raise TraceError(str(exc)) from None


def _point(trace: str, policy: str, concurrency: int, options: dict) -> dict:
    """A sweep point of these parameters; TypeError names an unknown one with the valid."""
    from thundersim.lab.points import POINT_DEFAULTS

    unknown = sorted(set(options) - set(POINT_DEFAULTS))
    if unknown:
        valid = ", ".join(k for k in POINT_DEFAULTS if k not in ("trace", "policy", "concurrency"))
        raise TypeError(f"unknown run parameter {', '.join(unknown)}; valid: {valid}")
    params = options.get("params", [])
    if isinstance(params, dict):
        options = {**options, "params": [f"{k}={v}" for k, v in params.items()]}
    return {
        **POINT_DEFAULTS,
        **options,
        "trace": trace,
        "policy": policy,
        "concurrency": concurrency,
    }
