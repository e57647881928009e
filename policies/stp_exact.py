"""stp_exact: STP with the optimal victim set instead of greedy shortest-first.

The paper frames pausing as: minimise sum c_i^2 subject to sum c_i >= excess, and takes
shortest-first as its answer. That is a knapsack-like problem on which greedy can be far from
optimal (it may pause many programs where one mid-sized one covers the excess, or overshoot with
its last pick). This policy solves it exactly as a 0/1 integer program (scipy's HiGHS MILP),
keeping the paper's phase rule: victims come from acting programs when they can cover the
excess, and reasoning programs are added only for what acting ones cannot cover.
"""

from __future__ import annotations

import numpy as np

from thundersim.core.program import Phase, ProgramView
from thundersim.policies.registry import register
from thundersim.policies.stp import STP


def min_square_cover(sizes: list[float], need: float) -> list[int]:
    """Indices of a subset with sum >= need minimising the sum of squares (exact MILP). If the
    total falls short, everything."""
    if need <= 0:
        return []
    if sum(sizes) < need:
        return list(range(len(sizes)))
    c = np.asarray(sizes, dtype=float)
    # scipy (0.3-0.7 s to import) only once the solver is asked: the policy registry imports
    # this module for every run
    from scipy.optimize import Bounds, LinearConstraint, milp

    res = milp(
        c=c * c,
        constraints=LinearConstraint(c[None, :], lb=need, ub=np.inf),
        integrality=np.ones_like(c),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0},  # prove optimality, not HiGHS's default 1e-4 gap
    )
    if not res.success:  # HiGHS does not fail on a feasible 0/1 cover; keep a safe answer
        raise RuntimeError(f"victim selection failed: {res.message}")
    return [i for i, x in enumerate(res.x) if x > 0.5]


@register
class STPExact(STP):
    """STP with exact victims: min sum c^2 s.t. sum c >= excess (MILP), acting programs first."""

    name = "stp_exact"

    def victims(self, active: list[ProgramView], excess: float, now: float) -> list[ProgramView]:
        acting = [p for p in active if p.phase is Phase.ACTING]
        reasoning = [p for p in active if p.phase is not Phase.ACTING]
        acting_total = sum(self.cost(p, now) for p in acting)
        if acting_total >= excess:
            pick = min_square_cover([self.cost(p, now) for p in acting], excess)
            return [acting[i] for i in pick]
        rest = min_square_cover([self.cost(p, now) for p in reasoning], excess - acting_total)
        return acting + [reasoning[i] for i in rest]
