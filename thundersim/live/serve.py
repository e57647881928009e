"""`thundersim serve`: an OpenAI-compatible proxy in front of live replicas, for real agents.

An agent sends its usual `/v1/chat/completions` or `/v1/completions` requests with a
`program_id` (in the body, or in `extra_body`, which the OpenAI client merges into the body)
and calls `POST /programs/release` when its workflow ends. Each program is an `OpenProgram`
in the same Cluster the simulator uses: the registered policy decides admission, pause,
restore and routing exactly as in simulation. A request of a paused or waiting program is
held here until the policy restores it; between two calls the program is ACTING (its agent is
running a tool), which is what STP's caching term and pause decisions are about.

Requests without a `program_id` are one-call programs (released when their call ends), so an
unmodified OpenAI client works too. The proxy forwards only to the backends it was started
with: nothing in a request can name another destination.

Also: `GET /programs` (their state), `GET /metrics` (Prometheus), `GET /v1/models`,
`GET /health`. Binds to 127.0.0.1 unless told otherwise; an optional bearer token (visible
ASCII; from `--token-file` or THUNDERSIM_TOKEN, so that `ps` does not show it) guards everything
but `/health`; bodies above `max_body_bytes` get 413 (at once, from the announced length). A
request is checked in full before its program is created (requests.py): a refused one gets a 4xx
with the reason and leaves nothing.

Nothing stuck (issue 14): every call ends with a response within a bounded time. A call is held
at most `max_hold_s` (whatever the policy and its settings: `--decay none` can starve a large
program for ever otherwise), and at most `down_grace_s` while no backend is up; then it gets a
503 with the reason, and its program can call again or be released. A held call whose client
has gone is dropped (499 in the tables' count), never sent later. A client must send its headers
within `header_timeout_s` and its body within `body_timeout_s`. Backends that go down are probed
and come back (engine_adapters/vllm.py).

Nothing lost, memory flat: steps, memory samples and released programs are written to a
journal folder as they come (thundersim.metrics.journal), not kept, so memory stays flat however
long the proxy serves and a proxy killed for memory leaves its tables; a released program is
forgotten but for its id (the last `max_released_ids`, so an id is not reused by mistake). On
SIGINT/SIGTERM, the last call of each open program is recorded and the run is `interrupted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import signal
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from thundersim.core.backend import Forward, Usage
from thundersim.core.cluster import Cluster
from thundersim.core.lifecycle import ProgramFeed, ProgramQueue, periodic
from thundersim.core.policy import Policy
from thundersim.core.program import Call, OpenProgram, Phase, Program
from thundersim.live.driver import LiveDriver, LoopClock
from thundersim.live.requests import (
    BadRequest,
    error_response,
    estimate_prompt_tokens,
    parse_call,
    parse_release,
)
from thundersim.live.serve_metrics import ServeMetrics
from thundersim.metrics.journal import Journal
from thundersim.metrics.recorder import MEMORY_COLUMNS, PROGRAM_COLUMNS, STEP_COLUMNS, Recorder
from thundersim.metrics.results import RunResult, result_of

log = logging.getLogger("thundersim.serve")

SERVED_TOOL = "agent"  # what a served program does between calls is its agent's business
# provenance: estimate — how often idle programs are looked for: a few seconds is nothing next
# to the default 30-minute idle release
REAP_EVERY_S = 5.0
# provenance: estimate — how often held calls are checked against their bound: a second is
# nothing next to bounds of tens of seconds
HOLD_CHECK_S = 1.0
# provenance: definition — nginx's status for "client closed request": a held call whose client
# left, counted among the failed calls
CLIENT_LEFT = 499
# provenance: estimate — released programs listed by `GET /programs?all` (the tables hold all)
RECENT_RELEASED = 1000
TOKEN_ENV = "THUNDERSIM_TOKEN"


def check_token(token: str) -> None:
    """A bearer token travels in an HTTP header: visible ASCII only (RFC 6750's b64token is a
    subset), so a client can send it and the comparison is byte for byte."""
    if not token:
        raise ValueError("the bearer token is empty")
    bad = next((i for i, ch in enumerate(token) if not "!" <= ch <= "~"), None)
    if bad is not None:
        raise ValueError(
            f"the bearer token must be visible ASCII characters without spaces (an HTTP header "
            f"carries it); character {bad + 1} of {len(token)} is not"
        )


def resolve_token(token: str | None, token_file: Path | str | None) -> str | None:
    """The bearer token from `--token-file` (its first line, trailing whitespace dropped) or
    from `--token`/THUNDERSIM_TOKEN; both at once is an error, neither means no token."""
    if token_file is not None:
        if token:
            raise ValueError(
                f"give the token once: --token-file, or --token / {TOKEN_ENV}, not both"
            )
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the token file {token_file}: {exc}") from None
        lines = text.splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"the token file {token_file} is empty")
    return token or None


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token every request but /health must carry
    max_body_bytes: int = 8 * 2**20
    max_program_id: int = 256
    default_output_tokens: int = 256  # a call's expected output when it sets no max_tokens
    idle_release_s: float = 1800.0  # release a program whose agent went silent (0: never)
    sample_dt: float = 0.5
    # provenance: estimate — a pause under memory pressure lasts a few of the paper's 5 s ticks
    # to minutes; ten minutes held means the policy will not place the call (starvation)
    max_hold_s: float = 600.0
    # provenance: estimate — a vLLM restart (model load) takes tens of seconds on a GPU; calls
    # wait that long for a backend to come back, then get 503
    down_grace_s: float = 30.0
    # provenance: estimate — the accept queue: 3,000 agents connecting at once overflow
    # aiohttp's default of 128 (issue 14: 192 of 12,000 calls reset); Linux caps it at
    # net.core.somaxconn (4096 since kernel 5.4)
    backlog: int = 4096
    # provenance: spec — nginx's client_header_timeout and client_body_timeout default, 60 s
    header_timeout_s: float = 60.0
    body_timeout_s: float = 60.0
    # provenance: estimate — ids of released programs remembered (~100 B each: ~10 MB), so an
    # agent that reuses one gets 409; beyond it the oldest ids may be used again
    max_released_ids: int = 100_000
    journal: Path | None = None  # folder the tables grow in (None: a temporary one)

    def __post_init__(self):
        if self.token is not None:
            check_token(self.token)
        for name in ("max_hold_s", "down_grace_s", "header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.backlog < 1 or self.max_released_ids < 0:
            raise ValueError("backlog must be >= 1 and max_released_ids >= 0")


class Proxy:
    """The HTTP front end of one Cluster of live backends. Built inside the running event loop
    (its clock is the loop's), with the backends connected."""

    def __init__(self, policy: Policy, backends: Sequence, config: ServeConfig):
        self.config = config
        self.policy = policy
        self.backends = list(backends)
        self._own_journal = config.journal is None
        folder = config.journal or Path(tempfile.mkdtemp(prefix="thundersim-serve-"))
        self.journal = Journal(
            folder, {"steps": STEP_COLUMNS, "programs": PROGRAM_COLUMNS, "memory": MEMORY_COLUMNS}
        )
        self.recorder = Recorder(self.backends, config.sample_dt, journal=self.journal)
        clock = LoopClock(asyncio.get_running_loop())
        self.cluster = Cluster(clock, self.backends, policy, observer=self.recorder)
        # Programs arrive from agents, not from a trace: the queue stays empty.
        self.feed = ProgramFeed(self.cluster, ProgramQueue([]), None)
        self.metrics_registry = ServeMetrics(self.cluster, self.recorder)
        self.model = self.backends[0].model or "thundersim"
        self._anon = itertools.count()
        self._released: dict[str, None] = {}  # ids of released programs, oldest first
        self._recent: deque[dict] = deque(maxlen=RECENT_RELEASED)
        self._all_down_since: float | None = None
        self._tasks: list[asyncio.Task] = []
        self._wall0 = time.perf_counter()

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start sampling, the policy's tick and the idle reaper."""
        cluster, recorder, driver = self.cluster, self.recorder, LiveDriver()

        def sample() -> None:
            recorder.sample(cluster.now, cluster.withheld)
            self.journal.flush()  # a killed proxy loses at most one sample period of rows

        loops = [periodic(self.config.sample_dt, sample), periodic(HOLD_CHECK_S, self._bound_holds)]
        ticker = self.feed.ticker()
        if ticker is not None:
            loops.append(ticker)
        if self.config.idle_release_s > 0:
            loops.append(periodic(REAP_EVERY_S, self._reap_idle))
        self._tasks = [asyncio.create_task(driver.drive(waits)) for waits in loops]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def runner(self, shutdown_timeout: float = 3.0) -> web.AppRunner:
        """The app's runner: a handler is cancelled when its client disconnects (so a held call
        of a departed client is dropped), and a connection that does not finish its headers
        within header_timeout_s is closed (aiohttp's keep-alive timer covers a half-sent one)."""
        return web.AppRunner(
            self.app(),
            access_log=None,
            shutdown_timeout=shutdown_timeout,
            handler_cancellation=True,
            keepalive_timeout=self.config.header_timeout_s,
        )

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[self._middleware]
        )
        app.router.add_post("/v1/chat/completions", self.completion)
        app.router.add_post("/v1/completions", self.completion)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/programs/release", self.release)
        app.router.add_get("/programs", self.programs)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        return app

    def result(self, interrupted: bool = True) -> RunResult:
        """The run's tables and summary, as `thundersim run` writes them. The last call of each
        open program is recorded as a step whose tool (its agent's turn) was cut at the stop."""
        now = self.cluster.now
        for p in list(self.cluster.unfinished.values()):
            if p.last_usage is not None and not p.pending and not p.in_flight:
                self.cluster.tool_done(p)
        self.recorder.finalize(now)
        meta = {
            "policy": self.policy.name,
            "trace": "serve",
            "concurrency": None,
            "replicas": len(self.backends),
            "seed": self.policy.options.seed,
            "setup": "serve: " + ", ".join(b.name for b in self.backends),
            "kv_capacity_tokens": min(b.capacity_tokens for b in self.backends),
        }
        wall = time.perf_counter() - self._wall0
        return result_of(meta, now, wall, interrupted, self.feed, self.recorder, self.backends)

    def close(self, remove: bool | None = None) -> None:
        """Close the journal; remove it (default: if it was a temporary one) once the result,
        which holds all of it, is written."""
        self.journal.close(remove=self._own_journal if remove is None else remove)

    def _reap_idle(self) -> None:
        now = self.cluster.now
        for p in list(self.cluster.unfinished.values()):
            if p.phase is Phase.ACTING and now - p.acting_since > self.config.idle_release_s:
                self._release(p)
            elif not p.has_call(0) and not p.pending and not p.in_flight:
                # never issued a call: a request failed between creating it and queuing its
                # call (a program gets its call in the same step it is created otherwise)
                self._release(p)

    def _bound_holds(self) -> None:
        """No call is held for ever: past max_hold_s, or past down_grace_s while no backend
        is up, a held call is answered 503 with the reason."""
        now = self.cluster.now
        config = self.config
        if any(b.alive for b in self.backends):
            self._all_down_since = None
        elif self._all_down_since is None:
            self._all_down_since = now
        down_for = now - self._all_down_since if self._all_down_since is not None else 0.0
        for p in list(self.cluster.unfinished.values()):
            if not p.pending:
                continue
            held = now - p.call_ready_time
            if held > config.max_hold_s:
                reason = (
                    f"held {held:.0f} s without a backend for it: the policy could not place the "
                    f"call within --max-hold-s {config.max_hold_s:g}; call again later"
                )
            elif down_for > config.down_grace_s and held > config.down_grace_s:
                reason = f"no backend has been up for {down_for:.0f} s; call again later"
            else:
                continue
            self._withdraw(p, 503, reason)

    def _withdraw(self, p: Program, status: int, reason: str) -> None:
        """Answer p's held call with `status` without running it."""
        call = p.call(p.step)
        body = json.dumps(
            {"error": {"message": reason, "type": "server_error", "code": status}}
        ).encode()
        if call.forward is not None and call.forward.sink is not None:
            call.forward.sink.put_nowait(None)  # the stream handler then answers the status
        self.cluster.withdraw(p, Usage(0, 0, 0, response=body, status=status))

    # ---- HTTP ----------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None else "unrouted"
        try:
            if self.config.token and request.path != "/health":
                # bytes, not str: compare_digest refuses non-ASCII str (a 500, not a 401)
                got = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
                if not hmac.compare_digest(got, f"Bearer {self.config.token}".encode()):
                    raise BadRequest("missing or wrong bearer token", status=401)
            response = await handler(request)
        except BadRequest as exc:
            response = error_response(exc.status, exc.reason)
        except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 (body too large)
            response = error_response(exc.status, exc.text or exc.reason)
        self.metrics_registry.requests.labels(endpoint, str(response.status)).inc()
        return response

    async def health(self, request: web.Request) -> web.Response:
        up = sum(b.alive for b in self.backends)
        return web.json_response({"backends_up": up}, status=200 if up else 503)

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": self.model, "object": "model", "owned_by": "thundersim"}]
        return web.json_response({"object": "list", "data": data})

    async def completion(self, request: web.Request) -> web.StreamResponse:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            # refused before a byte of it is read
            raise BadRequest(
                f"request body size {request.content_length} bytes is over the limit of {limit}",
                413,
            )
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                raw = await request.read()  # aiohttp answers 413 above client_max_size
        except TimeoutError:
            raise BadRequest(
                f"request body not received within {self.config.body_timeout_s:g} s", 408
            ) from None
        if not any(b.alive for b in self.backends):
            raise BadRequest("no backend is up", 503)
        path = request.path
        # Everything the call needs is read and checked before its program is created or
        # looked up: a refused request leaves no program behind.
        program_id, body = parse_call(path, raw, self.config.max_program_id)
        anonymous = program_id is None
        stream = body.get("stream", False)
        sink = asyncio.Queue() if stream else None
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        output = body.get("max_tokens") or body.get("max_completion_tokens")
        call = Call(
            prompt_tokens=estimate_prompt_tokens(path, body),
            output_tokens=output or self.config.default_output_tokens,
            tool=SERVED_TOOL,
            forward=Forward(path, body, sink, wants_usage),
        )
        p = self._program_for(program_id)
        p.add_call(call)
        step = p.step
        done: asyncio.Future = self.cluster.request(p)
        if anonymous:
            done.add_done_callback(lambda _: self._release(p))
        try:
            if not stream:
                return await self._answer(p, done)
            return await self._stream(request, p, done, sink)
        except asyncio.CancelledError:
            # the client went away (aiohttp cancels the handler): a call still held is dropped,
            # not sent later; its program may call again at once
            if p.pending and p.step == step and not p.status.is_finished:
                log.info("program %s: client left while its call was held; dropped", p.id)
                self._withdraw(p, CLIENT_LEFT, "the client closed the connection")
            raise

    async def release(self, request: web.Request) -> web.Response:
        raw = await request.read()
        program_id = parse_release(raw, request.query.get("program_id"))
        p = self.cluster.programs.get(program_id)
        if p is None:
            if program_id in self._released:
                raise BadRequest(f"program {program_id} was already released", 409)
            raise BadRequest(f"no program {program_id}", 404)
        if p.status.is_finished:
            raise BadRequest(f"program {program_id} was already released", 409)
        if p.pending or p.in_flight:
            raise BadRequest(f"program {program_id} has a call in progress", 409)
        self._release(p)
        return web.json_response(_program_json(p))

    async def programs(self, request: web.Request) -> web.Response:
        listed = [_program_json(p) for p in self.cluster.unfinished.values()]
        if request.query.get("all") is not None:  # and the latest released ones
            listed = list(self._recent) + listed
        return web.json_response({"programs": listed})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics_registry.exposition(), content_type="text/plain", charset="utf-8"
        )

    # ---- helpers -------------------------------------------------------------------------
    def _program_for(self, program_id: str | None) -> OpenProgram:
        """The program a call belongs to: a new one (an id never seen, or none: a one-call
        program), or one between calls (its agent is back, so its previous tool is done)."""
        cluster = self.cluster
        if program_id is None:
            program_id = f"anon-{next(self._anon)}"
            while program_id in cluster.programs or program_id in self._released:
                program_id = f"anon-{next(self._anon)}"
        elif program_id in self._released:
            raise BadRequest(f"program {program_id} was released; use a new program_id", 409)
        p = cluster.programs.get(program_id)
        if p is None:
            p = OpenProgram(program_id, self.feed.started)
            self.feed.arrive_open(p)
        elif p.status.is_finished:
            raise BadRequest(f"program {program_id} was released; use a new program_id", 409)
        elif p.pending or p.in_flight:
            raise BadRequest(f"program {program_id} has a call in progress", 409)
        elif p.last_usage is not None:
            cluster.tool_done(p)
        return p

    async def _answer(self, p: Program, done: asyncio.Future) -> web.Response:
        """A non-streamed call: the engine's response once the call has run."""
        usage: Usage = await done
        self.metrics_registry.hold.observe(p.call_sent_time - p.call_ready_time)
        if usage.status != 200:
            return _passthrough_error(usage)
        headers = _headers(p)
        # the time the engine took (sent upstream to last byte back): what a client sees
        # beyond it, less the hold, is the proxy's own cost
        headers["x-thundersim-engine-s"] = f"{usage.finish_time - usage.submit_time:.6f}"
        return web.Response(body=usage.response, content_type="application/json", headers=headers)

    async def _stream(
        self, request: web.Request, p: Program, done: asyncio.Future, sink: asyncio.Queue
    ) -> web.StreamResponse:
        """A streamed call: the engine's server-sent events as they come."""
        first = await sink.get()  # the call ran (after any hold) and its stream began
        self.metrics_registry.hold.observe(p.call_sent_time - p.call_ready_time)
        if first is None:  # refused before streaming: no events, only a status
            usage = await done
            if usage.status != 200:
                return _passthrough_error(usage)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        item = first
        while item is not None:
            await response.write(item)
            item = await sink.get()
        await response.write_eof()
        return response

    def _release(self, p: Program) -> None:
        if p.status.is_finished:
            return
        if p.last_usage is not None:
            self.cluster.tool_done(p)
        self.feed.finish(p)
        # forgotten but for its id: its record is in the journal now
        self.cluster.forget(p)
        self._recent.append(_program_json(p))
        if not p.id.startswith("anon-") and self.config.max_released_ids > 0:
            released = self._released
            released[p.id] = None
            if len(released) > self.config.max_released_ids:
                del released[next(iter(released))]


def _headers(p: Program) -> dict:
    return {
        "x-thundersim-program": p.id,
        "x-thundersim-backend": str(p.last_backend),
        "x-thundersim-hold-s": f"{p.call_sent_time - p.call_ready_time:.6f}",
    }


def _passthrough_error(usage: Usage) -> web.Response:
    """The engine refused the call: its status and reason go back to the client."""
    return web.Response(body=usage.response, status=usage.status, content_type="application/json")


def _program_json(p: Program) -> dict:
    return {
        "program_id": p.id,
        "status": p.status.name,
        "phase": p.phase.name,
        "backend": p.backend,
        "last_backend": p.last_backend,
        "calls": p.step,
        "context_tokens": p.context_tokens,
        "pending": p.pending,
        "in_flight": p.in_flight,
        "arrival_t": p.arrival_time,
        "finish_t": p.finish_time,
    }


async def serve_until_stopped(proxy: Proxy, on_ready=None) -> RunResult:
    """Serve on the configured address until SIGINT/SIGTERM; then return what was recorded
    (programs still open are kept in the tables as they were)."""
    config = proxy.config
    await proxy.start()
    # On SIGTERM, calls still held or running get a few seconds, not aiohttp's default minute.
    runner = proxy.runner(shutdown_timeout=3.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=config.backlog)
        await site.start()
        if on_ready is not None:
            on_ready()
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        await proxy.stop()
    # a proxy serves until it is stopped: its run is always interrupted, never drained
    result = proxy.result(interrupted=True)
    proxy.close()
    return result
