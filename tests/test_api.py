"""The Python surface (thundersim/api.py): every function's docstring example runs, from a
folder that is no checkout (its traces come from the bundled data); `import thundersim` stays
cheap and gives the functions lazily; bad input is named."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

import thundersim
from thundersim import api
from thundersim.traces.schema import TraceError

EXAMPLES = {
    t.name.rsplit(".", 1)[-1]: t
    for t in doctest.DocTestFinder().find(api)
    if t.examples and t.name != api.__name__
}


def test_every_function_of_the_surface_has_an_example():
    assert set(api.__all__) == set(thundersim.__all__)
    assert set(EXAMPLES) == set(api.__all__)
    assert doctest.DocTestFinder().find(api)[0].examples, "the module's own example"


@pytest.mark.parametrize("name", [api.__name__, *sorted(EXAMPLES)])
def test_the_docstring_example_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative trace paths resolve to the bundled traces
    (test,) = [t for t in doctest.DocTestFinder().find(api) if t.name.endswith(name)]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    failures, tried = runner.run(test, out=lambda text: pytest.fail(text, pytrace=False))
    assert failures == 0 and tried == len(test.examples) > 0


def test_import_is_cheap_and_the_functions_load_on_first_use():
    code = (
        "import sys, thundersim;"
        "print(sorted(m for m in ('pandas', 'simpy', 'numpy', 'thundersim.api') if m in sys.modules));"
        "thundersim.load_trace; print('thundersim.api' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"]
    assert thundersim.simulate is api.simulate
    assert set(thundersim.__all__) <= set(dir(thundersim))
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        thundersim.simulat  # noqa: B018


def test_bad_input_is_named():
    with pytest.raises(TypeError, match=r"unknown run parameter concurency; valid: .*replicas"):
        api.simulate("traces/toolorchestra.jsonl", concurency=8)
    with pytest.raises(TraceError, match=r"trace 'traces/nope.jsonl' not found \(looked for "):
        api.load_trace("traces/nope.jsonl")
    with pytest.raises(FileNotFoundError, match="no summary.json, steps.parquet"):
        api.read_run(".")
