"""Comparing the two halves of the differential test, iteration by iteration, and running them.

`run_conformance` writes the workloads as streams, runs thundersim.conformance.vllm_side in the
Python of the vLLM under test (a subprocess: vLLM need not be importable here), replays the
same workloads on the simulator (thundersim.conformance.sim_side), and compares the records
step by step. A step diverges when any compared field differs; the report gives, per workload,
the steps compared, the divergent ones and the first divergence in full.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from thundersim.conformance import vllm_side
from thundersim.conformance.sim_side import replay
from thundersim.conformance.workloads import Workload, max_model_len, to_stream

# What must agree at every step (vllm_side's record keys).
FIELDS = (
    "step",
    "scheduled",  # tokens scheduled per request
    "admitted",  # admissions in order: request, prefix-hit tokens, resumed after preemption
    "preempted",
    "finished",
    "running",
    "waiting",
    "free_blocks",
    "cached_blocks",
    "prefix_cache",  # the step's PrefixCacheStats: requests/queries/hits, preempted_*
)


@dataclass
class WorkloadResult:
    name: str
    description: str
    steps_vllm: int
    steps_sim: int
    divergent: int
    first: dict | None = None  # the first divergent step: field -> (vllm, sim)
    totals: dict = field(default_factory=dict)  # summed counters of both sides

    @property
    def ok(self) -> bool:
        return self.divergent == 0 and self.steps_vllm == self.steps_sim


def compare(name: str, description: str, vllm: list[dict], sim: list[dict]) -> WorkloadResult:
    divergent, first = 0, None
    for v, s in zip(vllm, sim, strict=False):
        diff = {f: (v[f], s[f]) for f in FIELDS if v[f] != s[f]}
        if diff:
            divergent += 1
            if first is None:
                first = {"step": v["step"], **diff}
    divergent += abs(len(vllm) - len(sim))
    totals = {}
    for side, records in (("vllm", vllm), ("sim", sim)):
        for key in ("hits", "queries", "preempted_hits", "preempted_queries"):
            totals[f"{side}_{key}"] = sum(r["prefix_cache"][key] for r in records)
        totals[f"{side}_preemptions"] = sum(len(r["preempted"]) for r in records)
    return WorkloadResult(name, description, len(vllm), len(sim), divergent, first, totals)


def run_vllm_side(
    workloads: list[Workload], python: str, workdir: Path, model_config: dict
) -> dict[str, list[dict]]:
    """vllm_side in `python`; its records by workload, and the vLLM version as '__version__'.
    `model_config` is a config.json for vLLM's ModelConfig (its shape does not matter to
    scheduling: the CLI passes the live tests' tiny Llama)."""
    model = dict(model_config)
    streams = {w.name: to_stream(w, max_model_len(w), model) for w in workloads}
    src = workdir / "streams.json"
    out = workdir / "vllm_traces.jsonl"
    src.write_text(json.dumps({"streams": streams}))
    proc = subprocess.run(
        [python, vllm_side.__file__, str(src), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"vLLM's scheduler ({python}) failed:\n{tail}")
    records: dict[str, list[dict]] = {w.name: [] for w in workloads}
    lines = out.read_text().splitlines()
    version = json.loads(lines[0])["vllm"]
    for line in lines[1:]:
        r = json.loads(line)
        records[r.pop("stream")].append(r)
    records["__version__"] = version
    return records


def run_conformance(
    workloads: list[Workload], python: str, model_config: dict, workdir: Path | None = None
) -> tuple[str, list[WorkloadResult]]:
    """(vLLM version, one result per workload)."""
    with tempfile.TemporaryDirectory(prefix="thundersim_conformance_") as tmp:
        vllm = run_vllm_side(workloads, python, Path(workdir or tmp), model_config)
    version = vllm.pop("__version__")
    results = [compare(w.name, w.description, vllm[w.name], replay(w)) for w in workloads]
    return version, results


def to_frame(version: str, results: list[WorkloadResult]):
    """One row per workload: steps, divergent steps, both sides' hit and preemption totals."""
    import pandas as pd

    rows = [
        {
            "vllm": version,
            "workload": r.name,
            "steps": r.steps_vllm,
            "steps_sim": r.steps_sim,
            "divergent_steps": r.divergent,
            "identical": r.ok,
            **r.totals,
            "first_divergence": json.dumps(r.first) if r.first else "",
        }
        for r in results
    ]
    return pd.DataFrame(rows)


def default_vllm_python() -> str | None:
    """The vLLM that `make vllm` installs (.venv-vllm beside the checkout), if it is there."""
    root = Path(__file__).resolve().parents[2]
    candidate = root / ".venv-vllm" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def report(version: str, results: list[WorkloadResult]) -> str:
    lines = [
        f"# vLLM {version} scheduler vs thundersim's engine model, iteration by iteration",
        f"{'workload':24s} {'steps':>6s} {'divergent':>9s} {'hit tok':>8s} {'preempt':>7s}  result",
    ]
    for r in results:
        t = r.totals
        lines.append(
            f"{r.name:24s} {r.steps_vllm:6d} {r.divergent:9d} {t['vllm_hits']:8d} "
            f"{t['vllm_preemptions']:7d}  {'identical' if r.ok else 'DIVERGES'}"
        )
    for r in results:
        if not r.ok:
            lines.append(f"\n{r.name}: {r.description}")
            lines.append(f"  steps vllm {r.steps_vllm}, sim {r.steps_sim}; first divergence:")
            for k, v in (r.first or {}).items():
                lines.append(f"    {k}: {v}")
    return "\n".join(lines)
