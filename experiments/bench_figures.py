"""Benchmark: the whole figure set from a cold cache, as `thundersim figures` makes it.

    python experiments/bench_figures.py [--reduced] [--workers 2]

Prints the wall time of the simulations and of the whole command (target: the full set within
15 minutes on a 2-core machine). Figures and the report go to a temporary folder, so the
committed figures/ is left as it is.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from thundersim.lab.figures import regenerate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reduced", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        results, timing = regenerate(
            Path(tmp) / "figures",
            Path(tmp) / "cache",
            reduced=args.reduced,
            workers=args.workers or None,
        )
        wall = time.perf_counter() - t0
    print(
        f"{len(results)} figures/tables, {timing['points_run']} points simulated"
        f"{' (reduced grids)' if args.reduced else ''}: simulations {timing['simulate_s']:.0f} s, "
        f"whole command {wall:.0f} s ({wall / 60:.1f} min; target 15 min)"
    )


if __name__ == "__main__":
    main()
