"""`--cpus` for local engines: parsed, checked against the CPUs this process may use, and
handed to vLLM's own OpenMP binding (the live test in test_live.py checks the processes)."""

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thundersim.cli import app
from thundersim.engine_adapters.local import LocalEngines, parse_cpus


def test_cpu_lists_parse_as_ranges_and_ids():
    allowed = sorted(os.sched_getaffinity(0))
    first, last = allowed[0], allowed[-1]
    assert parse_cpus(str(first)) == {first}
    assert parse_cpus(f"{first}-{first}") == {first}
    if allowed == list(range(first, last + 1)):
        assert parse_cpus(f"{first}-{last}") == set(allowed)
    assert parse_cpus(",".join(map(str, allowed))) == set(allowed)


@pytest.mark.parametrize("text", ["", "a", "1-x", "0,,1"])
def test_a_malformed_list_says_what_was_expected(text):
    with pytest.raises(ValueError, match="expected CPU ids"):
        parse_cpus(text)


def test_a_cpu_this_machine_lacks_is_named():
    missing = max(os.sched_getaffinity(0)) + 1000
    with pytest.raises(ValueError, match=f"CPUs \\[{missing}\\] are not among"):
        parse_cpus(f"0,{missing}")


def test_local_engines_refuse_a_bad_list_when_made(tmp_path):
    with pytest.raises(ValueError, match="not among"):
        LocalEngines(workdir=tmp_path / "engines", cpus="9999")
    assert not (tmp_path / "engines").exists()


def test_engine_up_refuses_a_bad_list_before_starting_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["engine", "up", "--cpus", "9999"])
    assert result.exit_code == 2
    assert "--cpus '9999'" in result.output and "not among" in result.output
    assert not (tmp_path / ".thundersim-engines").exists()  # no server was started


def test_the_bound_cpus_reach_vllms_openmp_binding(tmp_path, monkeypatch):
    """LocalEngines starts the server with its affinity set and VLLM_CPU_OMP_THREADS_BIND the
    same list; a stand-in interpreter records both instead of running vLLM."""
    cpu = max(os.sched_getaffinity(0))
    record = tmp_path / "seen.txt"
    fake = tmp_path / "python"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"open({str(record)!r}, 'w').write("
        "repr((sorted(os.sched_getaffinity(0)), os.environ.get('VLLM_CPU_OMP_THREADS_BIND'))))\n"
        "sys.exit(3)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("THUNDERSIM_VLLM_PYTHON", str(fake))
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    engines = LocalEngines(port=8999, workdir=tmp_path / "engines", cpus=str(cpu))
    with pytest.raises(RuntimeError, match="exited \\(3\\)"):
        engines.start(timeout_s=30)
    assert eval(record.read_text()) == ([cpu], str(cpu))
    assert Path(tmp_path / "engines").exists()
