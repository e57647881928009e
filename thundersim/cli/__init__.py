"""`thundersim` command line: the composition root that knows every part; one module per group
of commands.

thundersim run --policy stp --trace traces/swe.jsonl [--out DIR] [--json]
thundersim policies
thundersim trace gen --workload swe --programs 300 --seed 0 > traces/swe.jsonl
"""

from __future__ import annotations

# isort: off
from thundersim.cli.app import app

# importing a command module registers its commands on `app`, in this order in `--help`
from thundersim.cli import run, info, lab, traces, engines  # noqa: F401

# isort: on


def main() -> None:
    app()


__all__ = ["app", "main"]
