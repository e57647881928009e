"""A tiny engine adapter for the registry tests: a real implementation of the Backend protocol
that serves calls in-process on the asyncio loop, as an out-of-tree engine package would ship
one (tests install it through the `thundersim.engines` entry point, or register it directly).

Each call takes a fixed time per token; the prefix cache keeps each chain's last context (no
eviction), so a program's next call hits what its previous one left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from thundersim.core.backend import EngineStats, Request, Usage
from thundersim.engine_adapters.tokens import TokenBook

CAPACITY_TOKENS = 200_000  # provenance: definition — above the test traces' largest context
# A call of 1,000 tokens takes 2 ms: the tests run in about a second.
SECONDS_PER_TOKEN = 2e-6  # provenance: definition — a test engine's speed
BLOCK_SIZE = 16  # provenance: definition — vLLM's GPU default, reported in stats


class TinyBackend:
    """An in-process engine: fixed time per token, a prefix cache per chain."""

    def __init__(self, index: int, url: str, book: TokenBook):
        self.index = index
        self.name = url
        self.model = ""
        self.alive = True
        self.book = book
        self.connected = False
        self.pins = 0
        self.unpins = 0
        self._cached: dict[str, int] = {}  # chain -> tokens of it in the cache
        self._pending: set[asyncio.TimerHandle] = set()
        self._counts = dict(queries=0, hits=0, prompt=0, generation=0)

    @property
    def capacity_tokens(self) -> int:
        return CAPACITY_TOKENS

    def submit(
        self,
        request: Request,
        on_done: Callable[[Usage], None],
        on_failure: Callable[[Request, Exception], None],
    ) -> None:
        """Serve the call after its time; this engine never fails one (no `on_failure`)."""
        loop = asyncio.get_running_loop()
        self.book.prompt(request)  # the ids an HTTP engine would be sent
        cached = min(self._cached.get(request.chain_id, 0), request.prompt_tokens)
        new = request.prompt_tokens - cached
        c = self._counts
        c["queries"] += request.prompt_tokens
        c["hits"] += cached
        c["prompt"] += new
        c["generation"] += request.output_tokens
        prefill_s = new * SECONDS_PER_TOKEN
        total_s = prefill_s + request.output_tokens * SECONDS_PER_TOKEN

        def finish() -> None:
            self._pending.discard(handle)
            self.book.add_output(request, [self.book.reserved] * request.output_tokens)
            self._cached[request.chain_id] = request.prompt_tokens + request.output_tokens
            t = request.submit_time
            on_done(
                Usage(
                    prompt_tokens=request.prompt_tokens,
                    cached_tokens=cached,
                    output_tokens=request.output_tokens,
                    submit_time=t,
                    schedule_time=t,
                    first_token_time=t + prefill_s,
                    finish_time=t + total_s,
                )
            )

        handle = loop.call_later(total_s, finish)
        self._pending.add(handle)

    def stats(self) -> EngineStats:
        c = self._counts
        return EngineStats(
            capacity_tokens=CAPACITY_TOKENS,
            block_size=BLOCK_SIZE,
            used_tokens=0,
            cached_tokens=sum(self._cached.values()),
            running=len(self._pending),
            prefix_queries=c["queries"],
            prefix_hits=c["hits"],
            prompt_tokens=c["prompt"],
            generation_tokens=c["generation"],
            extra={"pins": self.pins},
        )

    def pin(self, program_id: str, ttl_s: float) -> None:
        self.pins += 1  # nothing is ever evicted here, so a pin changes nothing

    def unpin(self, program_id: str) -> None:
        self.unpins += 1

    async def connect(self) -> None:
        self.connected = True
        self.model = f"tiny-model@{self.name}"

    async def refresh(self) -> None:
        """Counters are kept in-process: nothing to scrape."""

    async def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
