"""Real tool environments for live runs: the EnvProvider contract of thundersim.core.envs.

`LocalSandbox` makes, per environment:
- a directory under its root holding real files of the environment's disk size (x disk_scale, so a
  2 GB sandbox can be a few hundred KB on a laptop);
- a helper process that binds the environment's ports on 127.0.0.1 and holds them until it is
  stopped, or until its parent dies (it watches its stdin pipe);
- tool commands run inside that directory as processes (argv lists, never a shell: tool names
  come from traces and agents) with a timeout.
Teardown removes the directory, ends the helper by its PID and so frees its ports. `close()`
removes whatever is left, including preparations cut short by an interrupted run. A
preparation that fails (a directory in the way, a full disk, a port helper that does not start)
removes what it made and says why (`on_failed`); the tool manager gives up on one that has not
answered `prep_timeout_s` after its trace duration.

`DockerSandbox` is EXPERIMENTAL (no Docker engine is on the CI machines, so it is tested only
against a stand-in `docker` command): one container per environment, from an image that must
already be on the machine (`docker run --pull never`: a missing image fails at once, naming
it), its ports published on 127.0.0.1 and read back with `docker port`, a file of the
environment's scaled disk size written in it, tools run with `docker exec`; every docker
command is bounded by a timeout and killed at its end. `docker_available()` says whether an
engine is reachable. Selecting it logs a warning once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thundersim.traces.schema import EnvSpec

_CHUNK = 1 << 20  # provenance: definition — files are written in 1 MiB pieces
# provenance: estimate — how long past its trace duration a live preparation may take before the
# tool manager gives up on it: a local one writes a few MB and starts one helper process (well
# under a second), a `docker run` of an image already on the machine takes seconds; two minutes
# is far beyond either on a loaded machine, and short enough that a stuck one is noticed
PREP_TIMEOUT_S = 120.0

log = logging.getLogger(__name__)


@dataclass
class Sandbox:
    key: str
    path: Path
    helper: subprocess.Popen | None = None
    ports: list[int] = field(default_factory=list)
    disk_bytes: int = 0  # provenance: definition — nothing written yet
    made: bool = False  # its directory was created by it (teardown removes only that)


def _write_files(path: Path, total: int) -> None:
    """Real bytes on disk (written, not sparse): a file per 64 MiB, in `path` (made first)."""
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

    def __init__(
        self,
        root: Path,
        disk_scale: float = 1e-4,
        tool_timeout_margin_s: float = 30.0,
        prep_timeout_s: float | None = PREP_TIMEOUT_S,
    ):
        if disk_scale < 0:
            raise ValueError("disk_scale must be >= 0")
        self.prep_timeout_s = prep_timeout_s  # the EnvProvider bound the manager enforces
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.disk_scale = disk_scale
        self.margin = tool_timeout_margin_s
        self.live: dict[str, Sandbox] = {}
        self._tasks: set[asyncio.Task] = set()

    # ---- EnvProvider -------------------------------------------------------------------------
    def prepare(
        self,
        key: str,
        spec: EnvSpec,
        duration_s: float,
        on_ready: Callable[[Any], None],
        on_failed: Callable[[str], None],
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._prepare(key, spec, duration_s, on_ready, on_failed)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def teardown(self, handle: Sandbox) -> None:
        sb = self.live.pop(handle.key, None)
        if sb is not None:
            _remove(sb)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()  # each one, cut short, removes what it had made (see _prepare)
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
    async def _prepare(self, key, spec: EnvSpec, duration_s: float, on_ready, on_failed) -> None:
        t0 = time.monotonic()
        sb = Sandbox(key, self.root / key, disk_bytes=round(spec.disk_bytes * self.disk_scale))
        self.live[key] = sb  # registered first: close() cleans up a half-made one
        making = asyncio.ensure_future(asyncio.to_thread(_make, sb, spec.ports))
        try:
            await asyncio.shield(making)
        except asyncio.CancelledError:
            # cut short (close(), the run's end): the thread cannot be stopped, so it is waited
            # for, and what it made is removed after it rather than left behind
            while not making.done():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.shield(making)
            self.live.pop(key, None)
            _remove(sb)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is reported, with its reason
            self.teardown(sb)
            on_failed(f"local sandbox {sb.path}: {type(exc).__name__}: {exc}")
            return
        # the rest of the preparation (an image pull, a repository checkout) is a wait
        left = duration_s - (time.monotonic() - t0)
        if left > 0:
            await asyncio.sleep(left)
        on_ready(sb)


def _make(sb: Sandbox, ports: int) -> None:
    """Make the sandbox (in a thread): its directory, its files, its port helper; `sb` says
    how far it got, for `_remove`."""
    sb.path.mkdir(parents=True)
    sb.made = True
    _write_files(sb.path, sb.disk_bytes)
    if ports:
        sb.helper, sb.ports = _hold_ports(ports)


def _remove(sb: Sandbox) -> None:
    """Remove what was made of the sandbox: end its helper (freeing its ports), then its
    directory, never what was in its place before (a failed mkdir)."""
    if sb.helper is not None and sb.helper.poll() is None:
        sb.helper.terminate()
        try:
            sb.helper.wait(5)
        except subprocess.TimeoutExpired:
            sb.helper.kill()
            sb.helper.wait(5)
    if sb.made:
        shutil.rmtree(sb.path, ignore_errors=True)


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


# ---- Docker (experimental) ---------------------------------------------------------------------
# provenance: estimate — the bound on a docker command that only asks the engine something or
# removes a container (`info`, `port`, `rm -f`): well under a second on a healthy engine
DOCKER_CLI_TIMEOUT_S = 30.0
# provenance: definition — the first container port published; the container's process listens
# on none of them: the host ports are what an environment holds
CONTAINER_PORT = 8000
# provenance: definition — the container's process sleeps 2**31 - 1 s (about 68 years, the
# largest any `sleep` takes): it lives until it is removed
KEEP_ALIVE_S = 2_147_483_647

EXPERIMENTAL = (
    "the Docker sandbox is experimental: tested only against a stand-in `docker` command (no "
    "Docker engine on the CI machines); `--sandbox local` is the supported one"
)
_warned = False  # the experimental warning is logged once per process


class DockerFailed(RuntimeError):
    """A docker command failed or did not return in time; the message says which and why."""


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
            timeout=DOCKER_CLI_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"docker info failed: {exc}"
    if r.returncode != 0:
        return False, f"no Docker engine reachable: {r.stderr.strip()[:200]}"
    return True, f"Docker engine {r.stdout.strip()}"


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """End a docker command and anything it started (it runs in its own session)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _last_lines(text: bytes, n: int = 3) -> str:
    lines = [line.strip() for line in text.decode(errors="replace").splitlines() if line.strip()]
    return " / ".join(lines[-n:]) or "no message"


def _host_ports(text: str) -> list[int]:
    """Host ports of `docker port NAME` ("8000/tcp -> 127.0.0.1:49153" a line)."""
    ports = []
    for line in text.splitlines():
        if "->" in line:
            ports.append(int(line.rsplit(":", 1)[1]))
    return ports


@dataclass
class DockerBox:
    """One container: the handle DockerSandbox hands out."""

    key: str
    name: str
    ports: list[int] = field(default_factory=list)
    disk_bytes: int = 0  # provenance: definition — nothing written yet
    started: bool = False  # `docker run` made its container


class DockerSandbox:
    """EXPERIMENTAL (see the module docstring): one container per environment, from `image`
    (never pulled at run time), kept alive by a long `sleep`, its ports published on 127.0.0.1
    and read back, a file of its scaled disk size written in it, tools run with `docker exec`,
    removed with `docker rm -f`. Every docker command is bounded and killed at its end."""

    def __init__(
        self,
        image: str = "busybox",
        disk_scale: float = 1e-4,
        tool_timeout_margin_s: float = 30.0,
        prep_timeout_s: float | None = PREP_TIMEOUT_S,
    ):
        global _warned
        if not _warned:
            _warned = True
            log.warning(EXPERIMENTAL)
        if disk_scale < 0:
            raise ValueError("disk_scale must be >= 0")
        ok, why = docker_available()
        if not ok:
            raise RuntimeError(f"docker sandbox unavailable: {why} ({EXPERIMENTAL})")
        self.docker = shutil.which("docker")
        self.image = image
        self.disk_scale = disk_scale
        self.margin = tool_timeout_margin_s
        self.prep_timeout_s = prep_timeout_s  # the EnvProvider bound the manager enforces
        # the bound on `docker run` itself (its own, so that a stuck one is killed even when the
        # manager has no bound): the manager's, or the CLI's when there is none
        self.run_timeout_s = prep_timeout_s if prep_timeout_s is not None else PREP_TIMEOUT_S
        self.live: dict[str, DockerBox] = {}
        self._tasks: set[asyncio.Task] = set()
        self._procs: set[asyncio.subprocess.Process] = set()

    # ---- EnvProvider -------------------------------------------------------------------------
    def prepare(
        self,
        key: str,
        spec: EnvSpec,
        duration_s: float,
        on_ready: Callable[[Any], None],
        on_failed: Callable[[str], None],
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._prepare(key, spec, duration_s, on_ready, on_failed)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def teardown(self, handle: DockerBox) -> None:
        box = self.live.pop(handle.key, None)
        if box is not None:
            self._rm(box)

    def close(self) -> None:
        for proc in list(self._procs):
            _kill_group(proc)
        for task in list(self._tasks):
            task.cancel()
        for box in list(self.live.values()):
            self.teardown(box)

    async def run_tool(self, handle: DockerBox, tool: str, seconds: float) -> None:
        """The tool call as a process in the container; its name is data (an environment
        variable of the process), never part of a command line."""
        seconds = max(seconds, 0.0)
        argv = [self.docker, "exec", "--env", f"THUNDERSIM_TOOL={tool}", handle.name]
        await self._cli(
            [*argv, "sleep", f"{seconds:.3f}"],
            seconds + self.margin,
            f"tool {tool!r} in container {handle.name}",
        )

    # ---- internals ---------------------------------------------------------------------------
    def _rm(self, box: DockerBox) -> None:
        """`docker rm -f` its container, bounded; a failure is logged (one that never started
        has no container to remove: that is no failure)."""
        try:
            r = subprocess.run(
                [self.docker, "rm", "-f", box.name],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=DOCKER_CLI_TIMEOUT_S,
            )
            failed = f"exit {r.returncode}" if r.returncode != 0 and box.started else None
        except (OSError, subprocess.TimeoutExpired) as exc:
            failed = str(exc)
        if failed:
            log.warning("could not remove container %s (docker rm -f): %s", box.name, failed)

    async def _prepare(self, key, spec: EnvSpec, duration_s: float, on_ready, on_failed):
        t0 = time.monotonic()
        name = f"thundersim-{os.getpid()}-{key}"
        box = DockerBox(key, name, disk_bytes=round(spec.disk_bytes * self.disk_scale))
        self.live[key] = box  # registered first: close() removes a half-made one
        cmd = [self.docker, "run", "--detach", "--rm", "--pull", "never", "--name", name]
        for i in range(spec.ports):
            cmd += ["--publish", f"127.0.0.1::{CONTAINER_PORT + i}"]
        cmd += [self.image, "sleep", str(KEEP_ALIVE_S)]
        try:
            await self._cli(cmd, self.run_timeout_s, f"docker run of image {self.image!r}")
            box.started = True
            if spec.ports:
                out = await self._cli(
                    [self.docker, "port", name], DOCKER_CLI_TIMEOUT_S, f"docker port {name}"
                )
                box.ports = _host_ports(out)
                if len(box.ports) != spec.ports:
                    raise DockerFailed(
                        f"container {name} publishes {len(box.ports)} host ports, not "
                        f"{spec.ports}: {out.strip()!r}"
                    )
            if box.disk_bytes:
                # the size goes in as an argument ($0), never into the shell's text
                script = 'head -c "$0" /dev/urandom > /thundersim-disk'
                await self._cli(
                    [self.docker, "exec", name, "sh", "-c", script, str(box.disk_bytes)],
                    self.run_timeout_s,
                    f"writing {box.disk_bytes} bytes in container {name}",
                )
        except asyncio.CancelledError:
            # cut short (close(), the run's end): a `docker run` killed mid-way may still have
            # made its container, after close() removed what it knew of
            self.live.pop(key, None)
            self._rm(box)
            raise
        except (DockerFailed, OSError, ValueError) as exc:
            self.teardown(box)
            on_failed(str(exc))
            return
        left = duration_s - (time.monotonic() - t0)
        if left > 0:
            await asyncio.sleep(left)
        on_ready(box)

    async def _cli(self, argv: list[str], timeout_s: float, what: str) -> str:
        """Run one docker command to its end within timeout_s (else it is killed, with what
        it started): its stdout, or DockerFailed naming `what`, the exit status and the
        command's last words."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: killed whole
        )
        self._procs.add(proc)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            raise DockerFailed(
                f"{what}: `docker {argv[1]}` did not return within {timeout_s:.1f} s"
            ) from None
        finally:
            _kill_group(proc)
            self._procs.discard(proc)
        if proc.returncode != 0:
            hint = ""
            if argv[1] == "run":
                hint = (
                    f"; images are never pulled at run time (--pull never): "
                    f"`docker pull {self.image}` first if it is missing"
                )
            raise DockerFailed(f"{what} failed (exit {proc.returncode}): {_last_lines(err)}{hint}")
        return out.decode(errors="replace")
