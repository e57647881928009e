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
`GET /health`. Binds to 127.0.0.1 unless told otherwise; an optional bearer token guards
everything but `/health`; bodies above `max_body_bytes` get 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from thundersim.core.backend import Forward, Usage
from thundersim.core.cluster import Cluster
from thundersim.core.lifecycle import ProgramFeed
from thundersim.core.policy import Policy
from thundersim.core.program import Call, OpenProgram, Phase, Status
from thundersim.live.driver import LoopClock
from thundersim.metrics.recorder import Recorder
from thundersim.metrics.results import RunResult, result_of
from thundersim.traces.converters._common import estimate_tokens

MESSAGE_OVERHEAD = 4  # chat-template tokens per message (role markers), an estimate
SERVED_TOOL = "agent"  # what a served program does between calls is its agent's business
PROXY_FIELDS = ("program_id", "extra_body")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token every request but /health must carry
    max_body_bytes: int = 8 * 2**20
    max_program_id: int = 256
    default_output_tokens: int = 256  # a call's expected output when it sets no max_tokens
    idle_release_s: float = 1800.0  # release a program whose agent went silent (0: never)
    sample_dt: float = 0.5


class BadRequest(Exception):
    """A request the proxy refuses: its HTTP status and the reason, sent as an OpenAI error."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _error_response(status: int, reason: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": reason, "type": kind, "code": status}}, status=status
    )


def estimate_prompt_tokens(path: str, body: dict) -> int:
    """The prompt's size before the engine tokenizes it: exact for token ids, else 4 characters
    a token plus a few per chat message. The program's context is corrected from usage."""
    if path.endswith("/chat/completions"):
        n = 0
        for m in body["messages"]:
            content = m.get("content")
            if isinstance(content, list):  # content parts: count their text
                content = " ".join(str(part.get("text", "")) for part in content)
            n += estimate_tokens(content or "") + MESSAGE_OVERHEAD
        return max(n, 1)
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return max(estimate_tokens(prompt), 1)
    return max(len(prompt), 1)


def parse_call(path: str, raw: bytes, max_program_id: int) -> tuple[str | None, dict]:
    """(program_id, body to forward) of a completion request, or BadRequest with the reason."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    program_id = body.pop("program_id", None)
    extra = body.pop("extra_body", None)
    if extra is not None:
        if not isinstance(extra, dict):
            raise BadRequest("extra_body must be an object")
        extra = dict(extra)
        if program_id is None:
            program_id = extra.pop("program_id", None)
        extra.pop("program_id", None)
        body.update(extra)  # as the OpenAI client would have merged it
    if program_id is not None and (
        not isinstance(program_id, str) or not 0 < len(program_id) <= max_program_id
    ):
        raise BadRequest(f"program_id must be a non-empty string of at most {max_program_id} chars")
    if path.endswith("/chat/completions"):
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("messages must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest(f"messages[{i}] must be an object with a string role")
    else:
        prompt = body.get("prompt")
        ok = (isinstance(prompt, str) and prompt) or (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
        )
        if not ok:
            raise BadRequest(
                "prompt must be one non-empty string or one list of token ids (a program's "
                "call has one prompt)"
            )
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise BadRequest(f"{key} must be a positive integer")
    if body.get("n", 1) != 1:
        raise BadRequest("n must be 1 (a program's call continues one context)")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("stream must be true or false")
    return program_id, body


class Proxy:
    """The HTTP front end of one Cluster of live backends."""

    def __init__(self, policy: Policy, backends: Sequence, config: ServeConfig):
        self.config = config
        self.policy = policy
        self.backends = list(backends)
        self.cluster: Cluster | None = None
        self.recorder: Recorder | None = None
        self.feed: ProgramFeed | None = None
        self.model = ""
        self._anon = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._wall0 = time.perf_counter()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "thundersim_requests",
            "HTTP requests served, by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.hold = Histogram(
            "thundersim_hold_seconds",
            "Time a call was held by the policy before it went to a backend",
            buckets=(0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.registry.register(_ClusterCollector(self))

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the Cluster to the running loop (the backends must be connected)."""
        loop = asyncio.get_running_loop()
        self.cluster = Cluster(LoopClock(loop), self.backends, self.policy)
        self.recorder = Recorder(self.cluster.programs, self.backends, self.config.sample_dt)
        self.recorder.held = lambda: self.cluster.held
        self.cluster.observer = self.recorder
        self.feed = ProgramFeed(self.cluster, [], None)
        for b in self.backends:
            b.on_failure = lambda req, exc: self.cluster.call_failed(req.program_id)
        self.model = getattr(self.backends[0], "model", "") or "thundersim"
        self._tasks = [asyncio.create_task(self._every(self.config.sample_dt, self._sample))]
        if self.policy.tick_interval:
            self._tasks.append(
                asyncio.create_task(self._every(self.policy.tick_interval, self.cluster.tick))
            )
        if self.config.idle_release_s > 0:
            self._tasks.append(asyncio.create_task(self._every(5.0, self._reap_idle)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

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
        """The run's tables and summary, as `thundersim run` writes them."""
        now = self.cluster.now
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

    async def _every(self, interval: float, fn) -> None:
        while True:
            await asyncio.sleep(interval)
            fn()

    def _sample(self) -> None:
        self.recorder.sample(self.cluster.now)

    def _reap_idle(self) -> None:
        now = self.cluster.now
        for p in list(self.cluster.live.values()):
            if p.phase is Phase.ACTING and now - p.acting_since > self.config.idle_release_s:
                self._release(p)

    # ---- HTTP ----------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None else "unrouted"
        try:
            if self.config.token and request.path != "/health":
                got = request.headers.get("Authorization", "")
                if not hmac.compare_digest(got, f"Bearer {self.config.token}"):
                    raise BadRequest("missing or wrong bearer token", status=401)
            response = await handler(request)
        except BadRequest as exc:
            response = _error_response(exc.status, exc.reason)
        except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 (body too large)
            response = _error_response(exc.status, exc.text or exc.reason)
        self.requests.labels(endpoint, str(response.status)).inc()
        return response

    async def health(self, request: web.Request) -> web.Response:
        up = sum(b.alive for b in self.backends)
        return web.json_response({"backends_up": up}, status=200 if up else 503)

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": self.model, "object": "model", "owned_by": "thundersim"}]
        return web.json_response({"object": "list", "data": data})

    async def completion(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # aiohttp answers 413 above client_max_size
        if not any(b.alive for b in self.backends):
            raise BadRequest("no backend is up", 503)
        path = request.path
        program_id, body = parse_call(path, raw, self.config.max_program_id)
        cluster = self.cluster
        anonymous = program_id is None
        if anonymous:
            program_id = f"anon-{next(self._anon)}"
            while program_id in cluster.programs:
                program_id = f"anon-{next(self._anon)}"
        p = cluster.programs.get(program_id)
        if p is None:
            p = OpenProgram(program_id, len(cluster.programs))
            cluster.arrive(p)
            p.ready_time = cluster.now
            self.feed.started += 1
        elif p.status.is_finished:
            raise BadRequest(f"program {program_id} was released; use a new program_id", 409)
        elif p.pending or p.in_flight:
            raise BadRequest(f"program {program_id} has a call in progress", 409)
        elif p.last_usage is not None:
            cluster.tool_done(p)  # its agent is back: the previous step's tool is done
        stream = body.get("stream", False)
        sink = asyncio.Queue() if stream else None
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        output = body.get("max_tokens") or body.get("max_completion_tokens")
        p.add_call(
            Call(
                prompt_tokens=estimate_prompt_tokens(path, body),
                output_tokens=output or self.config.default_output_tokens,
                tool=SERVED_TOOL,
                forward=Forward(path, body, sink, wants_usage),
            )
        )
        done: asyncio.Future = cluster.request(p)
        if anonymous:
            done.add_done_callback(lambda _: self._release(p))
        if not stream:
            usage: Usage = await done
            self.hold.observe(p.call_sent_time - p.call_ready_time)
            if usage.status != 200:
                return _passthrough_error(usage)
            return web.Response(
                body=usage.response,
                content_type="application/json",
                headers=self._headers(p, usage),
            )
        first = await sink.get()  # the call ran (after any hold) and its stream began
        self.hold.observe(p.call_sent_time - p.call_ready_time)
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

    async def release(self, request: web.Request) -> web.Response:
        raw = await request.read()
        program_id = request.query.get("program_id")
        if program_id is None:
            try:
                body = json.loads(raw or b"{}")
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BadRequest(f"body is not valid JSON: {exc}") from None
            program_id = body.get("program_id") if isinstance(body, dict) else None
        if not isinstance(program_id, str) or not program_id:
            raise BadRequest("release needs a program_id (JSON body or ?program_id=)")
        p = self.cluster.programs.get(program_id)
        if p is None:
            raise BadRequest(f"no program {program_id}", 404)
        if p.status.is_finished:
            raise BadRequest(f"program {program_id} was already released", 409)
        if p.pending or p.in_flight:
            raise BadRequest(f"program {program_id} has a call in progress", 409)
        self._release(p)
        return web.json_response(_program_json(p))

    async def programs(self, request: web.Request) -> web.Response:
        live = request.query.get("all") is None
        progs = self.cluster.live.values() if live else self.cluster.programs.values()
        return web.json_response({"programs": [_program_json(p) for p in progs]})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    # ---- helpers -------------------------------------------------------------------------
    def _release(self, p) -> None:
        if p.status.is_finished:
            return
        if p.last_usage is not None:
            self.cluster.tool_done(p)
        self.feed._finished(p)

    @staticmethod
    def _headers(p, usage: Usage) -> dict:
        return {
            "x-thundersim-program": p.id,
            "x-thundersim-backend": str(p.last_backend),
            "x-thundersim-hold-s": f"{p.call_sent_time - p.call_ready_time:.6f}",
        }


def _passthrough_error(usage: Usage) -> web.Response:
    """The engine refused the call: its status and reason go back to the client."""
    return web.Response(body=usage.response, status=usage.status, content_type="application/json")


def _program_json(p) -> dict:
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


class _ClusterCollector:
    """Cluster and backend state, read at scrape time."""

    def __init__(self, proxy: Proxy):
        self.proxy = proxy

    def describe(self):
        return []

    def collect(self):
        proxy = self.proxy
        cluster = proxy.cluster
        if cluster is None:
            return
        programs = GaugeMetricFamily("thundersim_programs", "Programs by status", labels=["status"])
        counts = dict.fromkeys(Status, 0)
        for p in cluster.programs.values():
            counts[p.status] += 1
        for status, n in counts.items():
            programs.add_metric([status.name.lower()], n)
        yield programs
        yield GaugeMetricFamily(
            "thundersim_programs_acting",
            "Live programs whose agent is between calls (running a tool)",
            value=sum(p.phase is Phase.ACTING for p in cluster.live.values()),
        )
        yield GaugeMetricFamily(
            "thundersim_held_calls", "Ready calls the policy withholds", value=cluster.held
        )
        yield GaugeMetricFamily(
            "thundersim_steps_completed",
            "Completed steps (call + tool)",
            value=len(proxy.recorder.steps),
        )
        yield GaugeMetricFamily(
            "thundersim_decisions_applied",
            "Policy decisions applied",
            value=cluster.decisions_applied,
        )
        up = GaugeMetricFamily(
            "thundersim_backend_up", "1 if the backend is alive", labels=["backend"]
        )
        used = GaugeMetricFamily(
            "thundersim_backend_kv_used_tokens",
            "KV tokens held by running requests",
            labels=["backend"],
        )
        cap = GaugeMetricFamily(
            "thundersim_backend_kv_capacity_tokens", "KV pool size in tokens", labels=["backend"]
        )
        for v in cluster.backend_views():
            up.add_metric([v.name], float(v.alive))
            used.add_metric([v.name], v.used_tokens)
            cap.add_metric([v.name], v.capacity_tokens)
        yield up
        yield used
        yield cap


async def serve_until_stopped(proxy: Proxy, on_ready=None) -> RunResult:
    """Serve on the configured address until SIGINT/SIGTERM; then return what was recorded
    (programs still open are kept in the tables as they were)."""
    config = proxy.config
    await proxy.start()
    # On SIGTERM, calls still held or running get a few seconds, not aiohttp's default minute.
    runner = web.AppRunner(proxy.app(), access_log=None, shutdown_timeout=3.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        if on_ready is not None:
            on_ready()
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        await proxy.stop()
    return proxy.result(interrupted=False)
