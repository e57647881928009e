"""VLLMBackend: the Backend contract over HTTP to one real vLLM OpenAI-compatible server.

- Capacity from `vllm:cache_config_info` (block_size x num_gpu_blocks), engine stats from
  `/metrics` (KV usage, running, waiting, prefix hits/queries, preemptions), polled.
- Each call sends the program's whole context as token ids (`/v1/completions` with a token-id
  prompt, `max_tokens` = the step's output, `ignore_eos`), so the engine's prefix cache sees
  exactly the trace's sharing: the shared prefix has the same ids in every program, a program's
  own tokens are stable per (chain, position), and the ids the engine generated are sent back in
  the next call, as an agent's context would be (`TokenBook`, engine_adapters/tokens.py).
- Calls stream (server-sent events) so the first token's time is observed, not only the
  finish; usage comes in the stream's last chunk (`stream_options.include_usage`).
- A call that carries a client's request (`Request.forward`, from `thundersim serve`) is sent
  on as is, with its events relayed to the client as they arrive.
- Per-request usage with cached tokens (`--enable-prompt-tokens-details`).
- Faults (issue 14): upstream timeouts per phase (`UpstreamTimeouts`: connect, first byte,
  between chunks: a long stream is not a failure, a silent one is); connection errors and 5xx
  are retried with exponential backoff, and when a call still fails the replica's `/health`
  decides whose fault it was. Healthy: the call alone failed and ends with an error status
  (502 / 504 / the engine's 5xx), the backend stays up. Unhealthy: the backend is marked down
  (`alive = False`) and the call is handed back to the Cluster to run elsewhere, unless part of
  its stream already reached a client (that client gets an error event instead: a stream is
  never re-run behind its back). A backend that is down is probed until it answers again; then
  `alive` is True and its `on_up` hook (set by the Cluster) re-offers the withheld calls.
- aiohttp, not httpx: the proxy's added latency per call is what this client costs.
- Pins (Continuum's TTL) cannot be expressed to a stock vLLM: they and their early releases are
  counted and ignored.
- Registered as the engine "vllm" (thundersim.engine_adapters.registry), the CLI's default.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from thundersim.core.backend import EngineStats, Forward, Request, Usage
from thundersim.engine_adapters.prometheus import metric_sum, parse_metrics
from thundersim.engine_adapters.registry import register_engine
from thundersim.engine_adapters.tokens import TokenBook


class BackendDown(RuntimeError):
    """The replica failed every retry of a call."""


class UpstreamRejected(RuntimeError):
    """The server answered 4xx: the request is wrong, retrying will not help."""

    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class _CallFailed(Exception):
    """A call that could not be completed: the status its client gets, and whether the
    replica itself may be at fault (a connection or timeout failure: ask its /health)."""

    def __init__(self, status: int, message: str, suspect: bool, body: bytes | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.suspect = suspect
        self.body = body  # the engine's own error body (a 5xx), passed on as is


_RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)
# a broken answer: cut, truncated, or not the JSON the API promises
_BROKEN = (ValueError, KeyError, IndexError, TypeError)


@dataclass(frozen=True)
class UpstreamTimeouts:
    """How long a call may wait for each phase of its answer. A non-streamed vLLM answer sends
    nothing until the whole generation is done, so `first_byte_s` bounds a whole call; a stream
    may last any time as long as its events keep coming."""

    # provenance: estimate — a replica on the same network accepts a connection in ms; seconds
    # of silence mean a dead host or a full accept queue
    connect_s: float = 10.0
    # provenance: estimate — a non-streamed call of 16K tokens at ~30 tokens/s on a loaded GPU
    # replica takes ~9 minutes; 15 minutes is no real call
    first_byte_s: float = 900.0
    # provenance: estimate — a decode step under the heaviest prefill stalls for seconds, not
    # minutes; two minutes without an event is a stuck stream
    between_chunks_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_byte_s", "between_chunks_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"upstream timeout {name} must be > 0")


# provenance: estimate — a restarting vLLM takes tens of seconds to come back (model load): a
# probe every 1 s, backing off to 5 s, notices it within seconds at negligible cost
PROBE_S, PROBE_MAX_S = 1.0, 5.0
# provenance: estimate — /health answers in ms on a live replica, even under load
HEALTH_TIMEOUT_S = 5.0

OnFailure = Callable[[Request, Exception], None]


class VLLMBackend:
    """One vLLM OpenAI-compatible server (see the module docstring)."""

    def __init__(
        self,
        index: int,
        url: str,
        book: TokenBook | None = None,
        timeouts: UpstreamTimeouts | None = None,
        retries: int = 3,
        poll_s: float = 0.5,
        stream: bool = True,
    ):
        self.index = index
        self.url = url.rstrip("/")
        self.name = self.url
        self.book = book
        self.timeouts = timeouts or UpstreamTimeouts()
        self.retries = retries
        self.poll_s = poll_s
        self.stream = stream  # stream replayed calls, to observe their first token
        self.alive = True
        self.block_size = 0
        self.num_gpu_blocks = 0  # vllm:cache_config_info num_gpu_blocks (the null block included)
        self.model = ""
        self.pins_ignored = 0
        self.unpins_ignored = 0
        self.failed_calls = 0  # calls handed back because this replica could not serve them
        self.rejected_calls = 0  # calls the engine answered with 4xx
        self.errored_calls = 0  # calls that failed on a healthy replica: answered with 5xx
        self.in_flight = 0
        self.revivals = 0  # times the replica came back after being marked down
        self.on_up: Callable[[], None] | None = None  # the Cluster's hook: re-offer held calls
        self._session: aiohttp.ClientSession | None = None
        self._metrics: dict = {}
        self._base: dict[str, float] = {}
        self._carry: dict[str, float] = {}  # counters of the replica's earlier lives (restarts)
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        self._reviver: asyncio.Task | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    async def connect(self) -> None:
        """Health check, model name, capacity and counter baselines; starts the stats poller."""
        self._session = aiohttp.ClientSession(
            # per phase, not in total: a long stream is fine, a silent one is not (_call)
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.timeouts.connect_s, sock_connect=self.timeouts.connect_s
            ),
            # no pool limit: the engine, not the client, decides how many calls run at once
            connector=aiohttp.TCPConnector(limit=0),
        )
        await self._get("/health")
        models = json.loads(await self._get("/v1/models"))
        self.model = models["data"][0]["id"]
        metrics = parse_metrics((await self._get("/metrics")).decode())
        info = metrics.get("vllm:cache_config_info")
        if not info:
            raise RuntimeError(f"{self.url}: /metrics has no vllm:cache_config_info")
        labels = info[0][0]
        self.block_size = int(labels["block_size"])
        self.num_gpu_blocks = int(labels["num_gpu_blocks"])
        self._metrics = metrics
        self._base = self._counters(metrics)
        self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
        if self._reviver:
            self._reviver.cancel()
        for t in list(self._tasks):
            t.cancel()
        if self._session:
            await self._session.close()

    # ---- Backend contract ----------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        """KV tokens requests can hold: vLLM reserves block 0 as its null block
        (vllm/v1/core/block_pool.py; get_usage divides by num_gpu_blocks - 1 too)."""
        return self.block_size * max(0, self.num_gpu_blocks - 1)

    def submit(
        self,
        request: Request,
        on_done: Callable[[Usage], None],
        on_failure: OnFailure,
    ) -> None:
        """Queue the call; exactly one of `on_done(usage)` and `on_failure(request, exc)` runs
        once it ends (a call the engine refuses with 4xx is done, with its status)."""
        task = asyncio.get_running_loop().create_task(self._call(request, on_done, on_failure))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pin(self, program_id: str, ttl_s: float) -> None:
        self.pins_ignored += 1  # stock vLLM has no API to protect a request's cached blocks

    def unpin(self, program_id: str) -> None:
        self.unpins_ignored += 1  # nothing was pinned (see pin)

    def stats(self) -> EngineStats:
        m = self._metrics
        c = self._counters(m)
        base = self._base
        carry = self._carry
        c = {k: v + carry.get(k, 0.0) for k, v in c.items()}
        return EngineStats(
            capacity_tokens=self.capacity_tokens,
            block_size=self.block_size,
            used_tokens=int(metric_sum(m, "vllm:kv_cache_usage_perc") * self.capacity_tokens),
            running=int(metric_sum(m, "vllm:num_requests_running")),
            waiting=int(metric_sum(m, "vllm:num_requests_waiting")),
            prefix_queries=int(c["queries"] - base.get("queries", 0)),
            prefix_hits=int(c["hits"] - base.get("hits", 0)),
            preemptions=int(c["preemptions"] - base.get("preemptions", 0)),
            prompt_tokens=int(c["prompt"] - base.get("prompt", 0)),
            generation_tokens=int(c["generation"] - base.get("generation", 0)),
            extra={
                "pins": 0,
                "pins_ignored": self.pins_ignored,
                "unpins_ignored": self.unpins_ignored,
                "iterations": 0,
                "rejected_calls": self.rejected_calls,
                "errored_calls": self.errored_calls,
                "failed_calls": self.failed_calls,
                "revivals": self.revivals,
            },
        )

    # ---- internals -----------------------------------------------------------------------
    @staticmethod
    def _counters(m: dict) -> dict[str, float]:
        return {
            "queries": metric_sum(m, "vllm:prefix_cache_queries_total"),
            "hits": metric_sum(m, "vllm:prefix_cache_hits_total"),
            "preemptions": metric_sum(m, "vllm:num_preemptions_total"),
            "prompt": metric_sum(m, "vllm:prompt_tokens_total"),
            "generation": metric_sum(m, "vllm:generation_tokens_total"),
        }

    async def refresh(self) -> None:
        self._metrics = parse_metrics((await self._get("/metrics")).decode())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if not self.alive:
                continue  # the reviver probes a replica that is down
            try:
                await self.refresh()
            except (TimeoutError, aiohttp.ClientError, BackendDown):
                # A failed scrape alone is not fatal; a replica that fails its health check too
                # is down (nothing else would notice while no call is running on it).
                if not await self._healthy():
                    self._mark_down()

    async def _get(self, path: str) -> bytes:
        resp = await self._open("GET", path)
        async with resp:
            return await resp.read()

    async def _open(self, method: str, path: str, body: dict | None = None):
        """The response of a GET whose status is < 500 (its body not yet read), retrying
        connection errors and 5xx with exponential backoff."""
        delay = 0.2
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                async with asyncio.timeout(self.timeouts.first_byte_s):
                    resp = await self._session.request(method, self.url + path, json=body)
                if resp.status < 400:
                    return resp
                data = await resp.read()
                resp.release()
                if resp.status < 500:
                    raise UpstreamRejected(resp.status, data)
                last = RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
            except _RETRYABLE as exc:
                last = exc
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        raise BackendDown(f"{self.url}{path}: {last!r}")

    async def _send(self, path: str, body: dict):
        """The response of a call (status < 400, body not yet read). Connection errors and 5xx
        are retried with exponential backoff; 4xx raises UpstreamRejected; a call that still
        fails, or sees no first byte in time, raises _CallFailed."""
        delay = 0.2
        last = ""
        answered: tuple[int, bytes] | None = None
        wait = self.timeouts.first_byte_s
        for attempt in range(self.retries + 1):
            try:
                async with asyncio.timeout(wait):
                    resp = await self._session.post(self.url + path, json=body)
                if resp.status < 400:
                    return resp
                data = await resp.read()
                resp.release()
                if resp.status < 500:
                    raise UpstreamRejected(resp.status, data)
                answered, last = (resp.status, data), f"HTTP {resp.status}: {data[:200]!r}"
            except aiohttp.ConnectionTimeoutError as exc:
                # not connected in time (a full accept queue): the engine never saw the call,
                # so it is retried like any connection error
                answered, last = None, repr(exc)
            except TimeoutError:
                # not retried: the engine may be busy with it; a second try would double that
                raise _CallFailed(
                    504, f"{self.url} sent no answer within {wait:g} s", True
                ) from None
            except aiohttp.ClientConnectionError as exc:
                answered, last = None, repr(exc)
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        if answered is not None:
            status, data = answered
            raise _CallFailed(status, f"{self.url} answered {last}", True, body=data)
        raise _CallFailed(502, f"cannot reach {self.url}: {last}", True)

    def _body(self, req: Request) -> tuple[str, dict, Forward | None]:
        fwd = req.forward
        if fwd is not None:
            body = dict(fwd.body, model=self.model)
            if fwd.sink is not None:
                # usage always comes back (for the scheduler); dropped later if not asked for
                body["stream_options"] = dict(body.get("stream_options") or {}, include_usage=True)
            return fwd.path, body, fwd
        body = {
            "model": self.model,
            "prompt": self.book.prompt(req),
            "max_tokens": req.output_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "return_token_ids": True,
        }
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return "/v1/completions", body, None

    async def _call(
        self, req: Request, on_done: Callable[[Usage], None], on_failure: OnFailure
    ) -> None:
        path, body, fwd = self._body(req)
        start = time.monotonic()
        self.in_flight += 1
        try:
            resp = await self._send(path, body)
            async with resp:
                raw = None
                if body.get("stream"):
                    data, first = await self._read_stream(resp, fwd)
                else:
                    raw = await self._read_body(resp)
                    data, first = _json_answer(raw), None
            if fwd is None:
                ids = data.get("token_ids")
                if ids is None:
                    ids = data["choices"][0].get("token_ids") or []
                self.book.add_output(req, [int(i) for i in ids][: req.output_tokens])
        except UpstreamRejected as exc:
            # The engine refused the request (e.g. longer than max_model_len): the call is done,
            # with nothing computed; a client gets the engine's status and reason.
            self.in_flight -= 1
            self.rejected_calls += 1
            _end_stream(fwd)
            on_done(_usage(req, {}, start, None, exc.status, exc.body))
            return
        except (_CallFailed, *_RETRYABLE, aiohttp.ClientError, *_BROKEN) as exc:
            self.in_flight -= 1
            await self._settle(req, fwd, _failure(exc, self.url), start, on_done, on_failure)
            return
        self.in_flight -= 1
        # a client's non-streamed answer goes back as the engine's bytes (no re-encoding)
        on_done(_usage(req, data, start, first, 200, raw if fwd is not None else None))

    async def _settle(
        self,
        req: Request,
        fwd: Forward | None,
        failure: _CallFailed,
        start: float,
        on_done: Callable[[Usage], None],
        on_failure: OnFailure,
    ) -> None:
        """End a call that failed: handed back to run elsewhere if the replica is down and no
        client has seen part of the answer; otherwise answered with the failure's status."""
        if failure.suspect and not await self._healthy():
            self._mark_down()
            if fwd is None or not fwd.started:
                self.failed_calls += 1
                on_failure(req, failure)
                return
        self.errored_calls += 1
        if fwd is not None and fwd.sink is not None:
            if fwd.started:  # the client has part of the stream: tell it, in the stream
                fwd.sink.put_nowait(_event(_error_json(failure.status, failure.message)))
            fwd.sink.put_nowait(None)
        body = failure.body or json.dumps(_error_json(failure.status, failure.message)).encode()
        on_done(_usage(req, {}, start, None, failure.status, body))

    async def _read_body(self, resp) -> bytes:
        """A non-streamed answer, each read within the between-chunks timeout."""
        parts = []
        between = self.timeouts.between_chunks_s
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(between) as deadline:
            async for part in resp.content.iter_any():
                parts.append(part)
                deadline.reschedule(loop.time() + between)
        return b"".join(parts)

    async def _read_stream(self, resp, fwd: Forward | None) -> tuple[dict, float | None]:
        """Read server-sent events; relay them to a client's sink. Returns the final usage (and
        for a replayed call the generated ids) and the time of the first token. Each event
        must come within the between-chunks timeout."""
        first: float | None = None
        usage: dict = {}
        ids: list[int] = []
        sink = fwd.sink if fwd is not None else None
        between = self.timeouts.between_chunks_s
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(between) as deadline:
            async for line in resp.content:
                deadline.reschedule(loop.time() + between)
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    if sink is not None:
                        sink.put_nowait(b"data: [DONE]\n\n")
                    break
                chunk = json.loads(payload)
                if chunk.get("usage") and not chunk.get("choices"):
                    usage = chunk["usage"]
                    if sink is not None and not fwd.client_wants_usage:
                        continue
                elif first is None:
                    first = time.monotonic()
                if sink is not None:
                    fwd.started = True
                    sink.put_nowait(b"data: " + payload + b"\n\n")
                elif chunk.get("choices"):
                    ids.extend(chunk["choices"][0].get("token_ids") or ())
            else:
                # EOF without [DONE]: a server killed mid-answer can close the stream cleanly
                raise aiohttp.ClientPayloadError("stream ended before [DONE]")
        if sink is not None:
            sink.put_nowait(None)
        return {"usage": usage, "token_ids": ids}, first

    async def _healthy(self) -> bool:
        """One quick /health: does the replica answer at all?"""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                async with self._session.get(self.url + "/health") as resp:
                    await resp.read()
                    return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _mark_down(self) -> None:
        """Down until a probe finds it answering again (_revive)."""
        self.alive = False
        if self._reviver is None or self._reviver.done():
            self._reviver = asyncio.get_running_loop().create_task(self._revive())

    async def _revive(self) -> None:
        delay = PROBE_S
        while True:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(HEALTH_TIMEOUT_S):
                    async with self._session.get(self.url + "/health") as resp:
                        await resp.read()
                        ok = resp.status == 200
                    async with self._session.get(self.url + "/metrics") as resp:
                        text = (await resp.read()).decode()
            except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
                ok = False
            if not ok:
                delay = min(2 * delay, PROBE_MAX_S)
                continue
            metrics = parse_metrics(text)
            now = self._counters(metrics)
            before = self._counters(self._metrics)
            if any(now[k] < before[k] for k in now):
                # a restarted engine counts from zero: keep what its earlier life counted
                self._carry = {
                    k: self._carry.get(k, 0.0) + before[k] - self._base.get(k, 0.0) for k in now
                }
                self._base = now
            self._metrics = metrics
            self.alive = True
            self.revivals += 1
            if self.on_up is not None:
                self.on_up()
            return


def _failure(exc: Exception, url: str) -> _CallFailed:
    """What a failed call's client is told, and whether the replica is suspect."""
    if isinstance(exc, _CallFailed):
        return exc
    if isinstance(exc, TimeoutError):
        return _CallFailed(504, f"{url} went silent mid-answer", True)
    if isinstance(exc, _BROKEN):
        return _CallFailed(502, f"{url} sent an answer that is not valid JSON: {exc}", False)
    return _CallFailed(502, f"{url} broke off its answer: {exc!r}", True)


def _json_answer(raw: bytes) -> dict:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    return data


def _end_stream(fwd: Forward | None) -> None:
    if fwd is not None and fwd.sink is not None:
        fwd.sink.put_nowait(None)


def _error_json(status: int, message: str) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": status}}


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _usage(
    req: Request, data: dict, start: float, first: float | None, status: int, response
) -> Usage:
    """Usage in the Cluster's clock (submit time + elapsed wall seconds)."""
    usage = data.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    elapsed = time.monotonic() - start
    finish = req.submit_time + elapsed
    first_t = req.submit_time + (first - start) if first is not None else finish
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens", 0 if status != 200 else req.prompt_tokens)),
        cached_tokens=int(details.get("cached_tokens") or 0),
        output_tokens=int(
            usage.get("completion_tokens", 0 if status != 200 else req.output_tokens)
        ),
        submit_time=req.submit_time,
        schedule_time=req.submit_time,  # not exposed per request without tracing
        first_token_time=first_t,
        finish_time=finish,
        response=response,
        status=status,
    )


register_engine("vllm", VLLMBackend, help="a vLLM OpenAI-compatible server (HTTP)")
