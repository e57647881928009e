"""Declarative sweeps: specs, the grid, the cache (re-run only what changed, resume after an
interruption), the local and Ray executors, and `thundersim figures` on small specs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thundersim.cli import app
from thundersim.lab.points import point_key
from thundersim.lab.sweep import SpecError, load_spec, run_sweep
from thundersim.traces.loader import dump_trace

from .conftest import make_program

SPEC = """
name = "mini"
title = "Throughput vs programs (test)"
kind = "line"
keep = ["memory"]

[base]
trace = "{trace}"
kv_tokens = 6000
dt = 1.0

[grid]
policy = ["vllm", "stp"]
concurrency = [2, 4]

[reduced]
concurrency = [2]

[plot]
x = "concurrency"
series = "policy"
metrics = ["throughput_steps_per_min", "kv_hit_rate"]

[paper.throughput_steps_per_min]
vllm = [10, 12]
stp = [10, 20]
"""


@pytest.fixture
def spec_file(tmp_path):
    trace = tmp_path / "t.jsonl"
    with trace.open("w") as fp:
        dump_trace(
            [make_program(f"p{i}", [(300, 20, 2.0)] * 4, prefix=("sys", 200)) for i in range(8)],
            fp,
        )
    path = tmp_path / "mini.toml"
    path.write_text(SPEC.format(trace=trace))
    return path


def test_the_grid_is_the_product_and_reduced_replaces_lists(spec_file):
    spec = load_spec(spec_file)
    full = spec.points()
    assert [(p["policy"], p["concurrency"]) for p in full] == [
        ("vllm", 2),
        ("vllm", 4),
        ("stp", 2),
        ("stp", 4),
    ]
    assert all(p["kv_tokens"] == 6000 and p["router"] == "least_loaded" for p in full)
    assert [p["concurrency"] for p in spec.points(reduced=True)] == [2, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'name = "x"\nkind = "line"\n[grid]\nconcurency = [1]\n',
            "'concurency' is not a run parameter",
        ),
        ('name = "x"\nkind = "line"\n[grid]\npolicy = "stp"\n', "must be a non-empty list"),
        ('kind = "line"\n', "field 'name' must be a string"),
        ('name = "x"\nkind = "line"\nkeep = ["disk"]\n', "keep ['disk']"),
        ('name = "x"\nkind = \n', "mini.toml"),
    ],
)
def test_bad_specs_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "mini.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_spec(path)


def test_specs_and_traces_are_found_here_first_then_in_the_bundled_data(tmp_path, monkeypatch):
    """A relative path is looked up in the current directory, then in the data installed
    with thundersim (thundersim.lab.data); a spec also by its name; a miss names both."""
    from thundersim.lab import data

    monkeypatch.chdir(tmp_path)
    bundled = data.bundled_root()
    assert load_spec("fig4a").path == bundled / "experiments" / "specs" / "fig4a.toml"
    assert data.find("traces/swe.jsonl") == bundled / "traces" / "swe.jsonl"
    (tmp_path / "experiments" / "specs").mkdir(parents=True)
    (tmp_path / "experiments" / "specs" / "fig4a.toml").write_text('name = "mine"\nkind = "line"\n')
    assert load_spec("fig4a").name == "mine"  # the current directory's own copy first
    with pytest.raises(SpecError, match="not found") as err:
        load_spec("nothere")
    for where in (tmp_path, bundled):
        assert str(where / "experiments" / "specs" / "nothere.toml") in str(err.value)
    spec = tmp_path / "t.toml"
    spec.write_text('name = "t"\nkind = "line"\n[base]\ntrace = "traces/nothere.jsonl"\n')
    with pytest.raises(SpecError, match=r"t\.toml: trace 'traces/nothere.jsonl' not found"):
        run_sweep(load_spec(spec), tmp_path / "cache")


def test_points_are_cached_by_their_inputs_and_only_what_changed_reruns(spec_file, tmp_path):
    cache = tmp_path / "cache"
    spec = load_spec(spec_file)
    first = run_sweep(spec, cache, workers=2)
    assert (first.ran, first.cached) == (4, 0)
    assert len(first.table) == 4 and (first.table.throughput_steps_per_min > 0).all()
    again = run_sweep(spec, cache, workers=2)
    assert (again.ran, again.cached) == (0, 4)
    assert again.table.equals(first.table)
    # one input changes for half of the grid: only that half runs
    spec.grid["concurrency"] = [2, 3]
    changed = run_sweep(spec, cache, workers=2)
    assert (changed.ran, changed.cached) == (2, 2)
    # the trace's bytes are an input too
    key = point_key(spec.points()[0], spec.keep)
    trace = Path(spec.base["trace"])
    lines = trace.read_text().splitlines(keepends=True)
    trace.write_text("".join(lines[:-1]))  # one program fewer
    from thundersim.lab import points

    points._file_hash.cache_clear()
    assert point_key(spec.points()[0], spec.keep) != key


def test_an_interrupted_sweep_resumes_with_what_it_finished(spec_file, tmp_path):
    """A point is cached whole or not at all; the next run only does the missing ones."""
    cache = tmp_path / "cache"
    spec = load_spec(spec_file)
    partial = run_sweep(spec, cache, reduced=True, workers=1)  # as if stopped after two points
    assert partial.ran == 2
    stray = cache / "deadbeef.tmp123"  # a half-written point left by a kill
    stray.mkdir()
    rest = run_sweep(spec, cache, workers=2)
    assert (rest.ran, rest.cached) == (2, 2)
    assert len(rest.table) == 4
    for folder in rest.folders:
        assert (folder / "summary.json").exists() and (folder / "memory.parquet").exists()


def test_the_ray_executor_runs_the_same_points(spec_file, tmp_path):
    pytest.importorskip("ray")
    spec = load_spec(spec_file)
    local = run_sweep(spec, tmp_path / "a", reduced=True, workers=1)
    ray_run = run_sweep(spec, tmp_path / "b", reduced=True, executor="ray", workers=1)
    assert ray_run.ran == local.ran
    cols = ["policy", "concurrency", "throughput_steps_per_min", "kv_hit_rate", "preemptions"]
    assert ray_run.table[cols].equals(local.table[cols])  # deterministic under the seed


def test_cli_sweep_writes_one_table(spec_file, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        [
            "sweep",
            str(spec_file),
            "--cache",
            str(tmp_path / "c"),
            "--out",
            str(out),
            "--workers",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    import pandas as pd

    t = pd.read_parquet(out / "mini.parquet")
    assert len(t) == 4 and {"policy", "concurrency", "kv_hit_rate"} <= set(t.columns)
    bad = CliRunner().invoke(app, ["sweep", str(tmp_path / "nope.toml")])
    assert bad.exit_code == 2 and "nope.toml" in bad.output


def test_figures_draws_and_reports_against_the_paper(spec_file, tmp_path):
    from thundersim.lab import figures

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "mini.toml").write_text(spec_file.read_text())
    (specs / "gap.toml").write_text(
        'name = "gap"\ntitle = "Not modelled"\nkind = "unsupported"\nreason = "no CPU KV tier"\n'
    )
    out = tmp_path / "figs"
    results, timing = figures.regenerate(out, tmp_path / "cache", workers=2, spec_dir=specs)
    assert (out / "mini.png").stat().st_size > 0 and (out / "mini.pdf").exists()
    assert (out / "data" / "mini.csv").exists()
    report = (out / "REPORT.md").read_text()
    assert "## mini: Throughput vs programs (test)" in report
    assert "| throughput_steps_per_min | vllm | 2 |" in report
    assert "Not regenerated.** no CPU KV tier" in report
    mini = next(r for r in results if r.spec.name == "mini")
    assert len(mini.rows) == 4  # paper numbers for two series at two x values
    assert any("ordered as in the paper" in line for line in mini.reading)
    assert timing["points_run"] == 4
    _, again = figures.regenerate(out, tmp_path / "cache", workers=2, spec_dir=specs)
    assert again["points_run"] == 0 and again["points_cached"] == 4
    assert json.loads(json.dumps(again))  # plain data


# ---- nothing lost, nothing stuck: killed sweeps, shared caches, damaged entries ----------------
def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            kids.append(int(stat.parent.name))
    return kids


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended (its reaper may be slow)


_CLI = [sys.executable, "-c", "from thundersim.cli import main; main()"]
_SWEEP = """
import sys
from pathlib import Path
from thundersim.lab.sweep import load_spec, run_sweep
result = run_sweep(load_spec(sys.argv[1]), Path(sys.argv[2]), reduced=True, workers=2)
print(result.ran, result.cached)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_sweeps_workers_die_with_it(spec_file, tmp_path):
    """SIGKILL a sweep while its two workers compute: the workers end too (they used to live
    on for minutes, writing cache entries under a rerun's feet), and they write nothing."""
    endless = tmp_path / "endless.toml"  # a horizon run: its points run until killed
    endless.write_text(spec_file.read_text().replace("dt = 1.0", "dt = 1.0\nhorizon = 1e9"))
    cache = tmp_path / "cache"
    sweep = subprocess.Popen([sys.executable, "-c", _SWEEP, str(endless), str(cache)])
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 or not all(_cpu_s(w) > 0.5 for w in workers):
            assert sweep.poll() is None and time.monotonic() < deadline, "no busy workers"
            workers = _children(sweep.pid)
            time.sleep(0.1)
        sweep.kill()
        sweep.wait(60)
        deadline = time.monotonic() + 60
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(w) for w in workers), "a worker outlived its sweep"
        assert not cache.exists() or [f for f in cache.iterdir() if ".tmp" not in f.name] == []
    finally:
        sweep.kill()
        for w in workers:  # only the processes this test started
            if _running(w):
                os.kill(w, signal.SIGKILL)


def test_a_point_another_writer_finished_first_is_kept(spec_file, tmp_path):
    """Two writers of one point (a rerun while a killed sweep's worker finishes it, or two
    sweeps on one cache): the second used to crash renaming onto the first's folder
    (OSError: Directory not empty); now the first copy is kept and the second discarded."""
    from thundersim.lab.points import run_and_store
    from thundersim.lab.sweep import _trace_arg

    spec = load_spec(spec_file)
    point = spec.points(reduced=True)[0]
    folder = tmp_path / "cache" / point_key(point, spec.keep)
    row = run_and_store(point, spec.keep, str(folder), _trace_arg(point))
    first = (folder / "summary.json").stat().st_ino
    again = run_and_store(point, spec.keep, str(folder), _trace_arg(point))
    timing = ("wall_s", "sim_speed")
    assert {k: v for k, v in again.items() if k not in timing} == {
        k: v for k, v in row.items() if k not in timing
    }
    assert (folder / "summary.json").stat().st_ino == first  # theirs, kept
    from thundersim.lab.points import damaged

    assert damaged(folder, spec.keep) is None
    assert sorted(f.name for f in folder.parent.iterdir()) == [folder.name]  # nothing stray


def test_two_sweeps_on_one_cache_both_finish(spec_file, tmp_path):
    """Two sweeps of one spec at once on one cache both finish, and every entry is whole."""
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SWEEP, str(spec_file), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    from thundersim.lab.points import damaged

    spec = load_spec(spec_file)
    entries = sorted(f for f in cache.iterdir() if ".tmp" not in f.name)
    assert len(entries) == 2  # the reduced grid's two points, each once
    assert all(damaged(f, spec.keep) is None for f in entries)


def test_a_damaged_cache_entry_is_recomputed_with_a_warning(spec_file, tmp_path, caplog):
    """A truncated summary.json, a missing table, a truncated table: each entry is
    recomputed (with a warning naming it) instead of crashing the rerun."""
    cache = tmp_path / "cache"
    spec = load_spec(spec_file)
    first = run_sweep(spec, cache, workers=2)
    a, b, c, _ = first.folders
    summary = a / "summary.json"
    summary.write_text(summary.read_text()[:40])
    (b / "memory.parquet").unlink()
    table = c / "memory.parquet"
    table.write_bytes(table.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="thundersim.lab.sweep"):
        again = run_sweep(spec, cache, workers=2)
    assert (again.ran, again.cached) == (3, 1)
    cols = ["policy", "concurrency", "throughput_steps_per_min", "kv_hit_rate", "preemptions"]
    assert again.table[cols].equals(first.table[cols])  # the same points, deterministic
    from thundersim.lab.points import damaged

    warned = " ".join(r.getMessage() for r in caplog.records)
    for folder in (a, b, c):
        assert f"{folder} is damaged" in warned
        assert damaged(folder, spec.keep) is None


# ---- a worker that dies: its points run again, or the sweep stops naming the point -----------
def _dies_once(marks: str, i: int) -> int:
    """Job i of a pool_map: the first worker to take job 1 is SIGKILLed (a real kill, as the
    OOM killer does); any other attempt returns i."""
    if i == 1:
        try:
            os.close(os.open(Path(marks) / "killed", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return i
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def _always_dies(i: int) -> int:
    """Job i of a pool_map; the last job kills every worker that takes it."""
    if i == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def test_a_point_whose_worker_is_killed_runs_again_in_another(tmp_path):
    """A worker SIGKILLed under a point breaks the pool (BrokenProcessPool used to end the
    sweep with a traceback naming nothing): the points not finished run again in a new pool,
    and every result comes back once."""
    from thundersim.lab.compare import pool_map

    got: list[int] = []
    stopped = pool_map(
        _dies_once, [(str(tmp_path), i) for i in range(4)], 2, lambda i, v: got.append(v)
    )
    assert stopped is False
    assert (tmp_path / "killed").exists()  # the kill happened
    assert sorted(got) == [0, 1, 2, 3]


def test_a_point_that_kills_every_worker_stops_the_sweep_naming_it(tmp_path):
    """A point whose worker dies every time: after two breaks with nothing finished the
    points run one per pool, the others finish (kept), and the error names the point and how
    its worker ended."""
    from thundersim.lab.compare import WorkerDied, pool_map

    got: list[int] = []

    def name(i: int, exc: Exception) -> Exception:
        return SpecError(f"point {i}: {exc}") if isinstance(exc, WorkerDied) else exc

    with pytest.raises(SpecError, match=r"point 3: its worker process died .*SIGKILL"):
        pool_map(_always_dies, [(i,) for i in range(4)], 2, lambda i, v: got.append(v), name)
    assert sorted(got) == [0, 1, 2]


_KILL_FIRST_WORKER = """
import os, signal, sys, threading, time
from pathlib import Path
from thundersim.lab.sweep import load_spec, run_sweep
me = os.getpid()
def kill_the_first_worker():  # as soon as the pool has started one
    while True:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and stat.parent.name != str(me):
                os.kill(int(stat.parent.name), signal.SIGKILL)
                print("killed", stat.parent.name, flush=True)
                return
        time.sleep(0.001)
threading.Thread(target=kill_the_first_worker, daemon=True).start()
result = run_sweep(load_spec(sys.argv[1]), Path(sys.argv[2]), workers=2)
print(result.ran, result.cached, len(result.table))
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_sweep_whose_worker_is_killed_as_the_pool_starts_finishes(spec_file, tmp_path):
    """A worker SIGKILLed as the pool starts (before or under its first point): the sweep
    runs every point anyway and caches each whole."""
    cache = tmp_path / "cache"
    r = subprocess.run(
        [sys.executable, "-c", _KILL_FIRST_WORKER, str(spec_file), str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    killed, done = r.stdout.splitlines()
    assert killed.startswith("killed ")
    assert done == "4 0 4"
    assert "a worker process died (killed by SIGKILL)" in r.stderr
    from thundersim.lab.points import damaged

    spec = load_spec(spec_file)
    entries = [f for f in cache.iterdir() if ".tmp" not in f.name]
    assert len(entries) == 4 and all(damaged(f, spec.keep) is None for f in entries)


def test_temporaries_killed_writers_left_are_removed_and_never_read(spec_file, tmp_path):
    """A writer killed mid-write leaves KEY.tmpPID@HOST-* (a discard killed mid-delete,
    KEY.badPID@HOST-*): the next sweep removes those whose writer on this host is gone and
    any an hour old, keeps a live writer's, and never reads one as the point."""
    import socket

    cache = tmp_path / "cache"
    spec = load_spec(spec_file)
    key = point_key(spec.points(reduced=True)[0], spec.keep)
    host = socket.gethostname()
    cache.mkdir()

    def temporary(name: str, age_s: float = 0.0) -> Path:
        f = cache / name
        f.mkdir()
        (f / "summary.json").write_text('{"point": {}, "summary": {"throughput": -1}}')
        old = time.time() - age_s
        os.utime(f, (old, old))
        return f

    dead = 999_999_999  # above any pid_max: no such process
    gone = [
        temporary(f"{key}.tmp{dead}@{host}-abc123"),
        temporary(f"{key}.bad{dead}@{host}-77"),
        temporary(f"{key}.tmp{os.getpid()}@{host}-old", age_s=2 * 3600),
        temporary(f"{key}.tmp{dead}@elsewhere-old", age_s=2 * 3600),
        temporary(f"{key}.tmp{dead}-fromanolderversion", age_s=2 * 3600),
    ]
    kept = [
        temporary(f"{key}.tmp{os.getpid()}@{host}-mine"),  # a live writer, here
        temporary(f"{key}.tmp{dead}@elsewhere-fresh"),  # another host's: cannot be asked
    ]
    result = run_sweep(spec, cache, reduced=True, workers=1)
    assert (result.ran, result.cached) == (2, 0)  # the stray copies were not taken as the point
    assert len(result.table) == 2 and (result.table.throughput_steps_per_min > 0).all()
    assert not any(f.exists() for f in gone)
    assert all(f.exists() for f in kept)


# ---- a sweep stopped by a signal ---------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)
def test_a_signal_stops_a_sweep_keeping_and_writing_what_finished(spec_file, tmp_path, sig, code):
    """`thundersim sweep` sent SIGTERM, SIGHUP or SIGINT (to its own process only, as a job
    scheduler or `kill` sends it) while two points are done and two run endlessly: it kills
    its workers (Ctrl-C used to wait for their points, forever here; SIGTERM killed the sweep
    with no table), writes the table of the two finished points, exits 128 + the signal."""
    mixed = tmp_path / "mixed.toml"  # two points that finish and two that never do
    mixed.write_text(spec_file.read_text().replace("concurrency = [2, 4]", "horizon = [0.0, 1e9]"))
    cache, out = tmp_path / "cache", tmp_path / "out"
    sweep = subprocess.Popen(
        [*_CLI, "sweep", str(mixed), "--cache", str(cache), "--out", str(out), "--workers", "4"],
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while True:  # the two short points cached, the two endless ones computing
            assert sweep.poll() is None and time.monotonic() < deadline, "no such state"
            workers = _children(sweep.pid)
            entries = [f for f in cache.iterdir() if ".tmp" not in f.name] if cache.exists() else []
            if len(entries) == 2 and sum(_cpu_s(w) > 0.3 for w in workers if _running(w)) >= 2:
                break
            time.sleep(0.05)
        sweep.send_signal(sig)
        _, err = sweep.communicate(timeout=60)
        assert sweep.returncode == code, err
        assert "mini: 2 points (" in err  # the two finished (of four it ran)
        import pandas as pd

        table = pd.read_parquet(out / "mini.parquet")
        assert sorted(table.policy) == ["stp", "vllm"] and (table.horizon == 0).all()
        assert not any(_running(w) for w in workers), "a worker outlived its sweep"
    finally:
        sweep.kill()
        for w in workers:  # only the processes this test started
            if _running(w):
                os.kill(w, signal.SIGKILL)
