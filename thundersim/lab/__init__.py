"""The policy lab: many runs, side by side, measured the same way.

Reading guide:
- `compare.py`: policies x setups on one trace, one table;
- `sweep.py`: declarative specs (experiments/specs/*.toml) run as grids, cached;
- `figures.py`: every paper figure from its spec, and REPORT.md beside the paper's numbers;
- `readings.py`: the templated sentences REPORT.md reads off the tables;
- `provenance.py`: the provenance tag of every constant, collected (docs/PROVENANCE.md).
"""
