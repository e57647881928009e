"""`thundersim figures --reduced` on the real specs: what CI runs of the paper's figure set.
Every spec loads, every simulated figure is drawn from its table, and the report has every
figure with the paper's numbers beside the simulator's."""

from __future__ import annotations

import math

import pandas as pd

from thundersim.lab.figures import SIM_KINDS, regenerate, specs_in


def test_every_spec_loads_and_names_its_paper_source():
    specs = specs_in()
    names = {s.name for s in specs}
    paper = {
        "fig1",
        "fig2a",
        "fig2b",
        "fig2c",
        "fig6a",
        "fig6b_dt",
        "fig6b_decay",
        "table2",
        "fig7",
        "fig9",
        "fig10",
    }
    paper |= {f"fig{n}{p}" for n in (4, 5) for p in "abcdef"}
    assert paper <= names
    for s in specs:
        if s.kind in SIM_KINDS:
            assert s.points(reduced=True), s.name
            assert len(s.points(reduced=True)) <= 4, f"{s.name}: keep CI's grid small"


def test_reduced_figure_set_is_drawn_and_reported(tmp_path):
    out = tmp_path / "figures"
    results, timing = regenerate(out, tmp_path / "cache", reduced=True, workers=2)
    report = (out / "REPORT-reduced.md").read_text()
    for res in results:
        assert f"## {res.spec.name}:" in report
        if res.spec.kind in SIM_KINDS or res.spec.kind == "tool_cdf":
            assert any(f.suffix == ".png" and f.stat().st_size > 0 for f in res.files), (
                res.spec.name
            )
        if res.spec.kind in SIM_KINDS:
            table = pd.read_csv(out / "data" / f"{res.spec.name}.csv")
            assert len(table) == len(res.spec.points(reduced=True))
            assert (table.steps_completed > 0).all(), res.spec.name
    by_name = {r.spec.name: r for r in results}
    # numbers of the paper beside ours, with finite ratios, where the paper gives them
    assert any(not math.isnan(r.ratio) for r in by_name["fig4a"].rows)
    assert by_name["fig9"].rows, "tool tails compared with the paper's p95 / p99"
    assert "Not regenerated" in " ".join(by_name["fig7"].reading)
    assert timing["points_run"] > 0
