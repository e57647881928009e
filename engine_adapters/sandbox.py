"""Real tool environments for live runs: the EnvProvider contract of thundersim.core.envs.

`LocalSandbox` makes, per environment:
- a directory under its root holding real files of the environment's disk size (x disk_scale, so a
  2 GB sandbox can be a few hundred KB on a laptop);
- a helper process that binds the environment's ports on 127.0.0.1 and holds them until it is
  stopped, or until its parent dies (it watches its stdin pipe);
- tool commands run inside that directory as processes (argv lists, never a shell: tool names
  come from traces and agents) with a timeout.
Teardown removes the directory, ends the helper by its PID and so frees its ports. `close()`
removes whatever is left, including preparations cut short by an interrupted run.

`DockerSandbox` does the same with one container per environment where a Docker engine is
reachable; `docker_available()` says whether one is (none is on the CI machines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thundersim.traces.schema import EnvSpec

_CHUNK = 1 << 20  # provenance: definition — files are written in 1 MiB pieces


@dataclass
class Sandbox:
    key: str
    path: Path
    helper: subprocess.Popen | None = None
    ports: list[int] = field(default_factory=list)
    disk_bytes: int = 0  # provenance: definition — nothing written yet


def _write_files(path: Path, total: int) -> None:
    """Real bytes on disk (written, not sparse): a file per 64 MiB."""
    path.mkdir(parents=True)
    block = os.urandom(min(total, _CHUNK)) if total else b""
    n_file, left = 0, total
    while left > 0:
        with open(path / f"layer-{n_file}.bin", "wb") as fp:
            file_left = min(left, 64 * _CHUNK)
            left -= file_left
            while file_left > 0:
                piece = block[: min(file_left, len(block))]
                fp.write(piece)
                file_left -= len(piece)
        n_file += 1


class LocalSandbox:
    """EnvProvider on this machine: directories, ports and processes."""

    def __init__(self, root: Path, disk_scale: float = 1e-4, tool_timeout_margin_s: float = 30.0):
        if disk_scale < 0:
            raise ValueError("disk_scale must be >= 0")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.disk_scale = disk_scale
        self.margin = tool_timeout_margin_s
        self.live: dict[str, Sandbox] = {}
        self._tasks: set[asyncio.Task] = set()

    # ---- EnvProvider -------------------------------------------------------------------------
    def prepare(
        self, key: str, spec: EnvSpec, duration_s: float, on_ready: Callable[[Any], None]
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._prepare(key, spec, duration_s, on_ready)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def teardown(self, handle: Sandbox) -> None:
        sb = self.live.pop(handle.key, None)
        if sb is None:
            return
        if sb.helper is not None and sb.helper.poll() is None:
            sb.helper.terminate()
            try:
                sb.helper.wait(5)
            except subprocess.TimeoutExpired:
                sb.helper.kill()
                sb.helper.wait(5)
        shutil.rmtree(sb.path, ignore_errors=True)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for sb in list(self.live.values()):
            self.teardown(sb)

    async def run_tool(self, handle: Sandbox, tool: str, seconds: float) -> None:
        """The tool call as a process inside the sandbox directory. The tool's name is data
        (an environment variable), never part of a command line."""
        proc = await asyncio.create_subprocess_exec(
            "sleep",
            f"{max(seconds, 0.0):.3f}",
            cwd=handle.path,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "THUNDERSIM_TOOL": tool},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.wait_for(proc.wait(), timeout=seconds + self.margin)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
            raise

    # ---- internals ---------------------------------------------------------------------------
    async def _prepare(self, key, spec: EnvSpec, duration_s: float, on_ready) -> None:
        t0 = time.monotonic()
        sb = Sandbox(key, self.root / key, disk_bytes=round(spec.disk_bytes * self.disk_scale))
        self.live[key] = sb  # registered first: close() cleans up a half-made one
        await asyncio.to_thread(_write_files, sb.path, sb.disk_bytes)
        if spec.ports:
            sb.helper, sb.ports = await asyncio.to_thread(_hold_ports, spec.ports)
        # the rest of the preparation (an image pull, a repository checkout) is a wait
        left = duration_s - (time.monotonic() - t0)
        if left > 0:
            await asyncio.sleep(left)
        on_ready(sb)


def _hold_ports(n: int) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "thundersim.engine_adapters.port_holder", str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    line = proc.stdout.readline()
    try:
        ports = json.loads(line)["ports"]
    except (ValueError, KeyError):
        proc.kill()
        raise RuntimeError(f"port helper failed: {line!r}") from None
    return proc, ports


# ---- Docker ------------------------------------------------------------------------------------
def docker_available() -> tuple[bool, str]:
    """(reachable, why): a docker CLI that can talk to an engine."""
    exe = shutil.which("docker")
    if exe is None:
        return False, "no docker command on PATH"
    try:
        r = subprocess.run(
            [exe, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"docker info failed: {exc}"
    if r.returncode != 0:
        return False, f"no Docker engine reachable: {r.stderr.strip()[:200]}"
    return True, f"Docker engine {r.stdout.strip()}"


class DockerSandbox:
    """One container per environment (`image`, kept alive by `sleep`), its ports published on
    127.0.0.1, tools run with `docker exec`, removed with `docker rm -f`."""

    def __init__(self, image: str = "busybox"):
        ok, why = docker_available()
        if not ok:
            raise RuntimeError(f"docker sandbox unavailable: {why}")
        self.image = image
        self.live: dict[str, str] = {}

    def prepare(self, key, spec: EnvSpec, duration_s, on_ready) -> None:
        async def go():
            t0 = time.monotonic()
            name = f"thundersim-{os.getpid()}-{key}"
            self.live[key] = name
            cmd = ["docker", "run", "-d", "--rm", "--name", name]
            for _ in range(spec.ports):
                cmd += ["-p", "127.0.0.1::8000"]
            cmd += [self.image, "sleep", "infinity"]
            await asyncio.to_thread(subprocess.run, cmd, check=True, capture_output=True)
            left = duration_s - (time.monotonic() - t0)
            if left > 0:
                await asyncio.sleep(left)
            on_ready(key)

        asyncio.get_running_loop().create_task(go())

    def teardown(self, handle) -> None:
        name = self.live.pop(handle, None)
        if name:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)

    def close(self) -> None:
        for key in list(self.live):
            self.teardown(key)

    async def run_tool(self, handle, tool: str, seconds: float) -> None:
        proc = await asyncio.create_subprocess_exec(
            "docker",
            "exec",
            self.live[handle],
            "sleep",
            f"{seconds:.3f}",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await proc.wait()
