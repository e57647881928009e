"""Nothing lost, nothing stuck: `thundersim run` stopped by a signal (SIGINT, SIGTERM, SIGHUP;
one, or a storm of them, or one during the write) writes what it finished, and its --out
folder is always one whole run, never a partial one or a mix of two.

These start `thundersim run` as a real process and send it real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from thundersim.cli import app
from thundersim.metrics.results import RunResult

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CLI = [sys.executable, "-c", "from thundersim.cli import main; main()"]
SMALL = ["--concurrency", "4", "--kv-tokens", "150000"]
# A horizon run recycles its programs: it runs until a signal stops it.
ENDLESS = [*SMALL, "--horizon", "1e9"]
RUN_FILES = {"steps.parquet", "programs.parquet", "memory.parquet", "summary.json"}
ENV_FILES = {"env_usage.parquet", "env_preps.parquet"}  # with a tool manager (the default)
WAIT_S = 120  # generous: a loaded CI machine starts Python slowly


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    result = CliRunner().invoke(
        app, ["trace", "gen", "--workload", "swe", "--programs", "12", "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path_factory.mktemp("trace") / "swe12.jsonl"
    path.write_text(result.stdout)
    return path


def start(trace: Path, out: Path, *args: str, log: Path) -> subprocess.Popen:
    """`thundersim run` with a progress bar on stderr (into `log`), waited on until the bar
    shows: the run has begun (its signal handling is in place)."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*CLI, "run", "--trace", str(trace), "--out", str(out), "--json", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    deadline = time.monotonic() + WAIT_S
    while "sim-s" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not start: {log.read_text()}")
        time.sleep(0.05)
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        stdout, _ = proc.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the run did not stop") from None
    return proc.returncode, stdout


def assert_one_whole_run(out: Path) -> dict:
    """`out` holds exactly one run's files, consistent with each other; nothing of a
    temporary folder is left beside it."""
    assert {f.name for f in out.iterdir()} == RUN_FILES | ENV_FILES
    summary = json.loads((out / "summary.json").read_text())
    steps = pd.read_parquet(out / "steps.parquet")
    programs = pd.read_parquet(out / "programs.parquet")
    assert len(steps) == summary["steps_completed"]
    assert (programs.status == "DONE").sum() == summary["programs_completed"]
    assert [f.name for f in out.parent.iterdir() if f.name.startswith(f".{out.name}")] == []
    return summary


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)
def test_a_signal_stops_the_run_and_writes_what_it_finished(trace, tmp_path, sig, code):
    """SIGTERM and SIGHUP stop a run as Ctrl-C does: the run ends, its folder is written
    whole with `interrupted: true`, and the exit code is 128 + the signal's number."""
    out = tmp_path / "out"
    proc = start(trace, out, *ENDLESS, log=tmp_path / "err")
    proc.send_signal(sig)
    rc, stdout = finish(proc)
    assert rc == code, (tmp_path / "err").read_text()
    summary = assert_one_whole_run(out)
    assert summary["interrupted"] is True
    assert json.loads(stdout) == summary


def test_a_storm_of_signals_leaves_one_whole_run_in_place_of_the_old(trace, tmp_path):
    """Into an existing --out: a first signal, then more while the run's result is assembled
    and written. The folder ends as the new run, whole (not the new steps beside the old
    summary, not only some tables)."""
    out = tmp_path / "out"
    first = CliRunner().invoke(
        app, ["run", "--trace", str(trace), "--out", str(out), "--no-progress", *SMALL]
    )
    assert first.exit_code == 0, first.output
    old = assert_one_whole_run(out)
    assert old["interrupted"] is False
    proc = start(trace, out, *ENDLESS, "--seed", "7", log=tmp_path / "err")
    printed: list[str] = []  # the summary, printed once the folder is written
    reader = threading.Thread(target=lambda: printed.append(proc.stdout.readline()), daemon=True)
    reader.start()
    proc.send_signal(signal.SIGTERM)
    storm = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    for i in range(2000):
        if printed or proc.poll() is not None:
            break
        proc.send_signal(storm[i % 3])
        time.sleep(0.002)
    reader.join(WAIT_S)
    rc = proc.wait(WAIT_S)
    # 143 (SIGTERM first) unless one of the last signals landed after the command returned
    # and had put the default handlers back (then it ends the process): the folder is whole
    assert rc != 0, (tmp_path / "err").read_text()
    new = assert_one_whole_run(out)
    assert new["interrupted"] is True and new["seed"] == 7


# Writes the steps table, then signals its own process (SIGTERM, then Ctrl-C) before it writes
# the others: a second signal during the write, at the worst moment.
_SIGNAL_MID_WRITE = """
import json, os, signal, sys, time
import thundersim.metrics.results as results
from thundersim.cli import main
real = results.write_tables
def write_tables(out, summary, frames):
    frames = dict(frames)
    real(out, summary, {"steps": frames.pop("steps")})
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(summary))
results.write_tables = write_tables
sys.argv = ["thundersim", *sys.argv[1:]]
main()
"""


def test_signals_during_the_write_wait_until_the_folder_is_whole(trace, tmp_path):
    """A run that finished is being written over a previous run's folder when SIGTERM and
    Ctrl-C arrive: the write completes, the folder is the new run whole, the exit code is
    SIGTERM's."""
    out = tmp_path / "out"
    first = CliRunner().invoke(
        app, ["run", "--trace", str(trace), "--out", str(out), "--no-progress", *SMALL]
    )
    assert first.exit_code == 0, first.output
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_MID_WRITE, "run", "--trace", str(trace)]
        + ["--out", str(out), "--no-progress", "--seed", "5", *SMALL],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert proc.returncode == 143, proc.stderr
    summary = assert_one_whole_run(out)
    assert summary["seed"] == 5 and summary["interrupted"] is False  # it had finished


def test_out_holding_other_files_is_refused_before_the_run(trace, tmp_path):
    """A run replaces its --out folder whole, so a folder holding files that are not a
    run's is refused, up front, and left as it was."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("mine")
    r = CliRunner().invoke(
        app, ["run", "--trace", str(trace), "--out", str(out), "--no-progress", *SMALL]
    )
    assert r.exit_code == 2
    assert "not a run's" in r.output and "todo.txt" in r.output
    assert [f.name for f in out.iterdir()] == ["todo.txt"]


def test_writing_over_a_run_leaves_none_of_its_files(tmp_path):
    """RunResult.write replaces the folder: a table the previous run had and this one has
    not (env_usage) does not survive beside the new summary."""
    frame = pd.DataFrame({"t": [0.0], "x": [1]})
    with_env = RunResult({"run": 1}, frame, frame, frame, env_usage=frame, env_preps=frame)
    without = RunResult({"run": 2}, frame, frame, frame)
    out = tmp_path / "out"
    with_env.write(out)
    assert {f.name for f in out.iterdir()} == RUN_FILES | ENV_FILES
    without.write(out)
    assert {f.name for f in out.iterdir()} == RUN_FILES
    assert json.loads((out / "summary.json").read_text()) == {"run": 2}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out"]


def test_a_killed_writers_temporary_folder_is_removed_by_the_next(tmp_path):
    """A writer killed mid-write leaves `.NAME.tmp-PID-*` beside the folder (never read);
    the next write to that folder removes it once that process is gone."""
    stale = tmp_path / ".out.tmp-999999999-x"
    stale.mkdir()
    (stale / "steps.parquet").write_bytes(b"half")
    frame = pd.DataFrame({"t": [0.0]})
    RunResult({"run": 1}, frame, frame, frame).write(tmp_path / "out")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out"]
    assert os.path.isdir(tmp_path / "out")


# A live run on the in-process tiny engine (tests/tiny_engine.py, registered as "tiny") that
# signals itself (Ctrl-C) once its driving is over, as its final counters are read: the second
# Ctrl-C of a user who pressed it twice, at the worst moment.
_LIVE_SECOND_CTRL_C = """
import os, signal, sys
sys.path.insert(0, sys.argv.pop(1))
import thundersim.live.driver as driver
from thundersim.engine_adapters.registry import register_engine
from tests.tiny_engine import TinyBackend
from thundersim.cli import main
register_engine("tiny", TinyBackend)
real = driver._final_refresh
async def _final_refresh(backends):
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    return await real(backends)
driver._final_refresh = _final_refresh
sys.argv = ["thundersim", *sys.argv[1:]]
main()
"""
LIVE = ["--engine", "tiny", "--backends", "tiny://a", "--token-scale", "0.1"]
LIVE += ["--time-scale", "0.001", "--tool-manager", "none", *ENDLESS]


def test_a_second_ctrl_c_during_a_live_run_waits_for_its_output(trace, tmp_path):
    """Ctrl-C stops a live run; another Ctrl-C (and a SIGTERM) while its result is made used
    to raise KeyboardInterrupt there (asyncio's handler) and lose it: now they wait, the run
    prints its summary and writes its folder whole, and exits 130 (the first signal's)."""
    out, log = tmp_path / "out", tmp_path / "err"
    root = str(Path(__file__).resolve().parent.parent)
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LIVE_SECOND_CTRL_C, root, "run", "--trace", str(trace)]
            + ["--out", str(out), "--json", *LIVE],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    deadline = time.monotonic() + WAIT_S
    while "programs done" not in log.read_text():  # the trace is being driven
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the live run did not start: {log.read_text()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    rc, stdout = finish(proc)
    assert rc == 130, log.read_text()
    summary = json.loads(stdout)
    assert summary["interrupted"] is True and summary["setup"] == "live: tiny://a"
    assert summary["steps_completed"] > 0
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "steps.jsonl").exists()
    assert pd.read_parquet(out / "steps.parquet").shape[0] == summary["steps_completed"]
