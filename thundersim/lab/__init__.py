"""The policy lab: many runs, side by side, measured the same way.

Reading guide:
- `compare.py`: policies x setups on one trace, one table;
- `sweep.py`: declarative specs (experiments/specs/*.toml) run as grids, on local processes or
  Ray; `points.py`: one point of a grid (its run, its cache key, its folder);
- `figures.py`: every paper figure from its spec; `draw.py`: how each kind of figure is drawn;
  `report.py`: REPORT.md, each figure beside the paper's numbers;
- `readings.py`: the templated sentences REPORT.md reads off the tables, with
  `placeholders.py` (their syntax), `run_values.py` (what they select) and `formats.py` (how
  numbers print);
- `provenance.py`: the provenance tag of every constant, collected (docs/PROVENANCE.md);
  `provenance_tags.py`: the scanner of one module's tags;
- `data.py`: where specs, traces and results files are found (the current directory, then the
  data installed with thundersim), so the lab runs from a checkout or an installed package.
"""
