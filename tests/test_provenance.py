"""Every constant of the simulator carries exactly one provenance class (thundersim.lab.provenance).

The repository-wide checks fail with file:line when a number in a covered module has no tag,
a tag is malformed, attaches to nothing or names an experiment spec that does not exist. The
scanner's rules are pinned on small sources, and docs/PROVENANCE.md must equal the generated
table so that it cannot go stale.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from thundersim.lab import provenance
from thundersim.lab.provenance_tags import CLASSES, FITTED, scan_source

ROOT = Path(__file__).resolve().parent.parent
SPECS = {p.stem for p in (ROOT / "experiments" / "specs").glob("*.toml")}


@pytest.fixture(scope="module")
def scanned():
    return provenance.scan()


def by_name(entries, qualname):
    found = [e for e in entries if e.qualname == qualname]
    assert len(found) == 1, f"{qualname}: {len(found)} entries"
    return found[0]


def scan(code: str):
    return scan_source(textwrap.dedent(code), "m", "m.py")


# --- the repository -----------------------------------------------------------------------------


def test_every_number_in_the_covered_modules_has_a_valid_provenance_tag(scanned):
    """No untagged number, malformed or orphan tag, or unknown spec anywhere in the covered
    modules; each problem is reported as file:line."""
    _, problems = scanned
    assert problems == [], "\n" + "\n".join(str(p) for p in problems)


def test_the_scan_covers_every_module_it_is_meant_to(scanned):
    """The workload generators, the catalog, sandbox, latency and engine models, the tool
    manager, the policy contract, every policy module and every router are scanned, and each
    of the constant-holding ones yields entries."""
    files = {p.relative_to(ROOT).as_posix() for p in provenance.covered_files()}
    for name in ("swe", "openhands", "toolorchestra", "science", "rollout"):
        assert f"thundersim/traces/workloads/{name}.py" in files
    for path in (
        "thundersim/sim/catalog.py",
        "thundersim/sim/sandbox.py",
        "thundersim/sim/latency.py",
        "thundersim/sim/engine.py",
        "thundersim/core/envs.py",
        "thundersim/core/policy.py",
        "policies/continuum.py",
        "policies/stp.py",
        "policies/routers/least_loaded.py",
        "policies/routers/cache_aware.py",
    ):
        assert path in files
    entries, _ = scanned
    modules = {e.module for e in entries}
    for module in (
        "thundersim.traces.workloads.openhands",
        "thundersim.sim.catalog",
        "thundersim.sim.sandbox",
        "thundersim.sim.latency",
        "thundersim.sim.engine",
        "thundersim.core.envs",
        "thundersim.core.policy",
        "thundersim.policies.continuum",
        "thundersim.policies.routers.least_loaded",
        "thundersim.policies.routers.cache_aware",
        "thundersim.policies.stp_fair",
        "thundersim.policies.stp_tool",
    ):
        assert module in modules, module


def test_each_entry_has_one_valid_class_a_source_and_real_specs(scanned):
    entries, _ = scanned
    assert len(entries) > 100
    for e in entries:
        assert e.cls in CLASSES, e
        assert e.source, e
        assert e.line > 0
        if e.cls == FITTED:
            assert all(s in SPECS for s in e.specs), e
        else:
            assert e.specs == (), e


def test_an_untagged_constant_added_to_a_covered_module_is_reported_at_its_line():
    """Appending an untagged constant to a real covered module's source makes the scan fail
    there, with that line."""
    path = ROOT / "thundersim" / "traces" / "workloads" / "swe.py"
    source = path.read_text()
    assert scan_source(source, "swe", "swe.py")[1] == []
    added = source + "\nNEW_SCALE = 1.7\n"
    line = added.count("\n")
    problems = scan_source(added, "swe", "thundersim/traces/workloads/swe.py")[1]
    assert [str(p) for p in problems] == [
        f"thundersim/traces/workloads/swe.py:{line}: untagged number in NEW_SCALE (add a provenance tag)"
    ]


def test_fitted_specs_name_the_figures_that_are_consistency_checks():
    """fig2c (preparation contention and the 29.9 s prep median), fig9 (tool tails) and the
    OpenHands figures (the observation scale tuned to Fig 5a/b's thrashing onset) depend on
    constants fitted to the paper; fig2b no longer does (the OpenHands sandbox is the paper's
    stated >10 GB floor plus an estimate, not read off Fig 2b), nor does the mini-SWE fig4a."""
    fitted = provenance.fitted_specs()
    assert {"fig2c", "fig9", "fig4b", "fig5b"} <= set(fitted)
    assert "fig2b" not in fitted and "fig4a" not in fitted
    assert "thundersim.sim.sandbox.PREP_A_S" in fitted["fig2c"]
    assert "thundersim.traces.workloads.swe.ENV_PREP_S_MEDIAN" in fitted["fig2c"]
    assert "thundersim.traces.workloads.toolorchestra.ANSWER_S" in fitted["fig9"]
    assert "thundersim.traces.workloads.science.BASH_S" in fitted["fig9"]
    assert "thundersim.traces.workloads.openhands.OBS_TOKENS" in fitted["fig5b"]
    assert list(fitted) == sorted(fitted)
    for names in fitted.values():
        assert names == sorted(names)


def test_the_honesty_fixes_of_issue_11_are_in_the_tags(scanned):
    """Continuum's threshold is its released code's 2 s; the OpenHands sandbox floor is a
    measured number; the paper's method settings are specs; every GPU's memory is measured."""
    entries, _ = scanned
    from thundersim.policies.continuum import Continuum

    assert Continuum.params["pin_threshold_s"] == 2.0
    pin = by_name(entries, "thundersim.policies.continuum.Continuum.params['pin_threshold_s']")
    assert pin.cls == "spec" and "FIXED_THRESHOLD_CONTINUUM" in pin.source
    floor = by_name(entries, "thundersim.traces.workloads.openhands.ENV_DISK_FLOOR_BYTES")
    assert floor.cls == "measured"
    excess = by_name(entries, "thundersim.traces.workloads.openhands.ENV_DISK_EXCESS_BYTES")
    assert excess.cls == "estimate"
    for name in ("tick_interval", "decay", "lambda_max", "lambda_min", "reserve_tokens"):
        assert by_name(entries, f"thundersim.core.policy.PolicyOptions.{name}").cls == "spec"
    for gpu in ("H100-SXM", "H200", "A100-80G", "RTX-5090"):
        memory = by_name(entries, f"thundersim.sim.catalog.GPUS['{gpu}'].memory_bytes")
        assert memory.cls == "measured" and "nvidia-smi" in memory.source


def test_router_weights_cite_the_published_systems_and_prefetch_sizing_is_named(scanned):
    """The routers' numbers are the published defaults they imitate (vLLM's DP balancer, sgl-router's
    launcher), each cited; the tool manager's prefetch cap and rate window are named estimates
    that EnvManager really uses."""
    entries, _ = scanned
    from thundersim.core import envs
    from thundersim.policies.routers import cache_aware, least_loaded

    weight = by_name(entries, "thundersim.policies.routers.least_loaded.WAITING_WEIGHT")
    assert weight.cls == "spec" and "waiting * 4 + running" in weight.source
    assert least_loaded.WAITING_WEIGHT == 4
    for name, value in (
        ("CACHE_THRESHOLD", 0.5),
        ("BALANCE_ABS_THRESHOLD", 32),
        ("BALANCE_REL_THRESHOLD", 1.0001),
    ):
        entry = by_name(entries, f"thundersim.policies.routers.cache_aware.{name}")
        assert entry.cls == "spec" and "sgl-router" in entry.source
        assert getattr(cache_aware, name) == value
    for name in ("MAX_PREFETCH", "RATE_WINDOW", "INITIAL_PREFETCH_DEPTH", "PREFETCH_SPARE"):
        assert by_name(entries, f"thundersim.core.envs.{name}").cls == "estimate"
    assert (envs.MAX_PREFETCH, envs.RATE_WINDOW) == (16, 16)
    default = inspect.signature(envs.EnvManager).parameters["max_prefetch"].default
    assert default == envs.MAX_PREFETCH


def test_committed_provenance_table_is_the_generated_one():
    """docs/PROVENANCE.md is `python -m thundersim.lab.provenance > docs/PROVENANCE.md`: regenerate
    it after changing a tag."""
    committed = (ROOT / "docs" / "PROVENANCE.md").read_text()
    assert committed == provenance.table_markdown(), (
        "docs/PROVENANCE.md is stale: run `python -m thundersim.lab.provenance > docs/PROVENANCE.md`"
    )


def test_module_entry_point_prints_the_table():
    out = subprocess.run(
        [sys.executable, "-m", "thundersim.lab.provenance"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == provenance.table_markdown()
    assert "| spec | fitted-to-paper constants it depends on |" in out


# --- the scanner's rules ------------------------------------------------------------------------


def test_trailing_and_preceding_tags_with_continued_text():
    entries, problems = scan(
        """
        A = 2.0  # provenance: measured — a cited measurement
        # An explanation that is not part of the tag.
        # provenance: fitted-to-paper [fig2c] — fitted to Fig 2c,
        # continued on this line
        B = 28.37
        """
    )
    assert problems == []
    a, b = entries
    assert (a.name, a.value, a.cls, a.source, a.line) == (
        "A",
        "2.0",
        "measured",
        "a cited measurement",
        2,
    )
    assert (b.name, b.cls, b.specs) == ("B", FITTED, ("fig2c",))
    assert b.source == "fitted to Fig 2c, continued on this line"


def test_dict_entries_keyword_arguments_and_elements_are_tagged_separately():
    """The innermost tag owns a number: a keyword's tag wins over its row's, a row's over
    nothing; a policy's params dict is tagged per key."""
    entries, problems = scan(
        """
        class P:
            params = {
                "a": 1.0,  # provenance: spec -- from a release
                # provenance: estimate -- a guess
                "b": 0.2,
            }
        ROWS = [
            Row(  # provenance: spec — a datasheet
                "x",
                mem=80 * GB,  # provenance: measured — nvidia-smi
                bw=3.35e12,
            ),
        ]
        """
    )
    assert problems == []
    got = {e.name: e.cls for e in entries}
    assert got == {
        "P.params['a']": "spec",
        "P.params['b']": "estimate",
        "ROWS['x']": "spec",
        "ROWS['x'].mem": "measured",
    }


def test_references_to_other_constants_need_no_tag_but_new_numbers_do():
    entries, problems = scan(
        """
        X = other.X
        Y = Lognormal(other.MEDIAN, other.SIGMA)
        Z = other.X + 300
        NAME = "label"
        FLAG = True
        """
    )
    assert entries == []
    assert [(p.line, p.message) for p in problems] == [
        (4, "untagged number in Z (add a provenance tag)")
    ]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("A = 1  # provenance: guessed — no such class\n", "unknown provenance class 'guessed'"),
        ("A = 1  # provenance: fitted-to-paper — no list\n", "needs the [spec, ...] list"),
        ("A = 1  # provenance: spec [fig9] — a spec with a list\n", "only fitted-to-paper"),
        ("A = 1  # provenance: spec\n", "tag has no source text"),
        ("# provenance: spec — orphan\n\nA = 1\n", "blank line between provenance tag and code"),
        ("def f():\n    x = 1  # provenance: spec — in a function\n", "attaches to nothing"),
        (
            "# provenance: spec — one\nA = 1  # provenance: estimate — two\n",
            "A has two provenance tags",
        ),
        ("A = (1, 2)  # provenance:spec—\n", "tag has no source text"),
    ],
)
def test_bad_tags_are_reported(code, message):
    _, problems = scan_source(code, "m", "m.py")
    assert any(message in p.message for p in problems), problems


def test_an_unknown_spec_name_is_reported(tmp_path):
    """A fitted tag that names a spec with no experiments/specs/<name>.toml fails the scan."""
    (tmp_path / "experiments" / "specs").mkdir(parents=True)
    (tmp_path / "experiments" / "specs" / "fig9.toml").write_text("name = 'fig9'\n")
    module = tmp_path / "policies" / "p.py"
    module.parent.mkdir()
    module.write_text("A = 1  # provenance: fitted-to-paper [fig9, fig99] — fitted\n")
    entries, problems = provenance.scan(
        {"thundersim.policies.p": module}, tmp_path / "experiments" / "specs"
    )
    assert [e.specs for e in entries] == [("fig9", "fig99")]
    assert [str(p) for p in problems] == [
        f"{module}:1: A: no experiment spec 'fig99' (experiments/specs/fig99.toml)"
    ]
