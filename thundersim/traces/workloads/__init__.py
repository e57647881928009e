"""Workload generators: synthetic traces parameterised from published statistics.

Each generator is ``generate(n_programs, seed) -> list[ProgramSpec]``, deterministic in the
seed; register it here once by name and the CLI picks it up.

Reading guide:
- `swe.py`: mini-SWE-agent on SWE-bench, the first workload, which the others cite;
- `openhands.py`, `science.py`: OpenHands on SWE-bench and on ScienceAgentBench, two sets of
  constants for the one agent loop of `codeact.py`;
- `toolorchestra.py`: an 8B orchestrator calling remote tools on HLE, no sandbox;
- `rollout.py`: RL rollout groups of mini-SWE-agent samples sharing their task's prefix;
- `distributions.py`: lognormals fitted to published quantiles and the sampling helpers.
"""

from __future__ import annotations

from collections.abc import Callable

from thundersim.traces.schema import ProgramSpec

from . import openhands, rollout, science, swe, toolorchestra

__all__ = ["GENERATORS", "generate"]

GENERATORS: dict[str, Callable[[int, int], list[ProgramSpec]]] = {
    "swe": swe.generate,
    "openhands": openhands.generate,
    "toolorchestra": toolorchestra.generate,
    "science": science.generate,
    "rollout": rollout.generate,
}


def generate(workload: str, n_programs: int, seed: int) -> list[ProgramSpec]:
    """Generate `n_programs` programs of the named workload."""
    try:
        generator = GENERATORS[workload]
    except KeyError:
        valid = ", ".join(sorted(GENERATORS))
        raise ValueError(f"unknown workload {workload!r}, valid: {valid}") from None
    return generator(n_programs, seed)
