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
- Per-request usage with cached tokens (`--enable-prompt-tokens-details`), timeouts, retries
  with exponential backoff on connection errors and 5xx; after repeated failures the backend
  is marked down (`alive = False`) and its failed calls are handed back to the Cluster.
- aiohttp, not httpx: the proxy's added latency per call is what this client costs.
- Pins (Continuum's TTL) cannot be expressed to a stock vLLM: they and their early releases are
  counted and ignored.
- Registered as the engine "vllm" (thundersim.engine_adapters.registry), the CLI's default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

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


_RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


OnFailure = Callable[[Request, Exception], None]


class VLLMBackend:
    """One vLLM OpenAI-compatible server (see the module docstring)."""

    def __init__(
        self,
        index: int,
        url: str,
        book: TokenBook | None = None,
        timeout_s: float = 300.0,
        retries: int = 3,
        poll_s: float = 0.5,
        stream: bool = True,
    ):
        self.index = index
        self.url = url.rstrip("/")
        self.name = self.url
        self.book = book
        self.timeout_s = timeout_s
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
        self.in_flight = 0
        self._session: aiohttp.ClientSession | None = None
        self._metrics: dict = {}
        self._base: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    async def connect(self) -> None:
        """Health check, model name, capacity and counter baselines; starts the stats poller."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
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
            # A failed scrape is not fatal: a failing call is what marks the backend down.
            with contextlib.suppress(aiohttp.ClientError, BackendDown, asyncio.TimeoutError):
                await self.refresh()

    async def _get(self, path: str) -> bytes:
        resp = await self._open("GET", path)
        async with resp:
            return await resp.read()

    async def _open(self, method: str, path: str, body: dict | None = None):
        """The response of a request whose status is < 500 (its body not yet read), retrying
        connection errors and 5xx with exponential backoff."""
        delay = 0.2
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
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
            resp = await self._open("POST", path, body)
        except UpstreamRejected as exc:
            # The engine refused the request (e.g. longer than max_model_len): the call is done,
            # with nothing computed; a client gets the engine's status and reason.
            self.in_flight -= 1
            self.rejected_calls += 1
            if fwd is not None and fwd.sink is not None:
                fwd.sink.put_nowait(None)
            on_done(_usage(req, {}, start, None, exc.status, exc.body))
            return
        except BackendDown as exc:
            self.in_flight -= 1
            self._down(req, exc, on_failure)
            return
        try:
            async with resp:
                raw = None
                if body.get("stream"):
                    data, first = await self._read_stream(resp, fwd)
                else:
                    raw = await resp.read()
                    data, first = json.loads(raw), None
        except _RETRYABLE + (aiohttp.ClientError, ValueError, KeyError, IndexError) as exc:
            # Broken mid-response (cut, truncated, or not the JSON the API promises): hand the
            # call back (a client stream gets an error event). Uncaught, the call's task would
            # end without an answer and its program would wait forever.
            if fwd is not None and fwd.sink is not None:
                fwd.sink.put_nowait(_event({"error": {"message": f"upstream failed: {exc!r}"}}))
                fwd.sink.put_nowait(None)
            self._down(req, exc, on_failure)
            return
        finally:
            self.in_flight -= 1
        if fwd is None:
            ids = data.get("token_ids")
            if ids is None:
                ids = data["choices"][0].get("token_ids") or []
            self.book.add_output(req, [int(i) for i in ids][: req.output_tokens])
        # a client's non-streamed answer goes back as the engine's bytes (no re-encoding)
        on_done(_usage(req, data, start, first, 200, raw if fwd is not None else None))

    async def _read_stream(self, resp, fwd: Forward | None) -> tuple[dict, float | None]:
        """Read server-sent events; relay them to a client's sink. Returns the final usage (and
        for a replayed call the generated ids) and the time of the first token."""
        first: float | None = None
        usage: dict = {}
        ids: list[int] = []
        sink = fwd.sink if fwd is not None else None
        async for line in resp.content:
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
                sink.put_nowait(b"data: " + payload + b"\n\n")
            elif chunk.get("choices"):
                ids.extend(chunk["choices"][0].get("token_ids") or ())
        else:
            # EOF without [DONE]: a server killed mid-answer can close the stream cleanly
            raise aiohttp.ClientPayloadError("stream ended before [DONE]")
        if sink is not None:
            sink.put_nowait(None)
        return {"usage": usage, "token_ids": ids}, first

    def _down(self, req: Request, exc: Exception, on_failure: OnFailure) -> None:
        self.alive = False
        self.failed_calls += 1
        on_failure(req, exc)


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
