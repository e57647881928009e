"""The Backend contract: what the Cluster needs from one serving replica, sim or live.

A backend serves one LLM call of a program at a time per program: the prompt is the program's
whole context (so prefix caching sees exactly what a real engine would), the output length is
the step's. It reports usage and timings per call and engine-wide stats, like vLLM's
per-request `usage` and its `/metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Forward:
    """A client's OpenAI request that a live backend sends on as is (thundersim serve): the
    endpoint path, the JSON body (the backend sets `model`), and for a streamed call a sink
    that receives each server-sent event's bytes, then None at the end of the stream."""

    path: str  # "/v1/completions" or "/v1/chat/completions"
    body: dict
    sink: Any = None  # asyncio.Queue[bytes | None] when the client asked for a stream
    client_wants_usage: bool = True  # else the usage-only chunk the backend asked for is dropped


@dataclass(slots=True)
class Request:
    """One LLM call. Token identity is (prefix_id, program_id, position): positions below
    `prefix_tokens` are the shared system prompt, the rest belong to the program."""

    program_id: str
    step: int
    prompt_tokens: int
    output_tokens: int
    prefix_id: str | None = None
    prefix_tokens: int = 0
    submit_time: float = 0.0
    # Tokens of this prompt the program computed in earlier calls (on any backend): computing
    # them again is recompute (the STP model's thrashing term), not new prefill.
    known_tokens: int = 0
    # Identity of the program's own token sequence: the program id, plus an epoch after each
    # context reset (new content, so nothing of the old chain can be a prefix hit).
    chain_id: str = ""
    forward: Forward | None = None  # a proxied client request (live backends only)

    def __post_init__(self) -> None:
        if not self.chain_id:
            self.chain_id = self.program_id


@dataclass(slots=True)
class Usage:
    """What came back from one call: usage (as in the OpenAI API) plus timings."""

    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the prefix cache at first scheduling
    output_tokens: int
    recompute_tokens: int = 0  # tokens computed again that this program had computed before
    preemptions: int = 0
    submit_time: float = 0.0
    schedule_time: float = 0.0  # first scheduled by the engine
    first_token_time: float = 0.0
    finish_time: float = 0.0
    response: Any = None  # a forwarded call's response bytes (non-streaming), or error body
    status: int = 200  # a forwarded call the engine refused keeps its HTTP status

    @property
    def queue_s(self) -> float:
        return self.schedule_time - self.submit_time

    @property
    def prefill_s(self) -> float:
        return self.first_token_time - self.schedule_time

    @property
    def decode_s(self) -> float:
        return self.finish_time - self.first_token_time


@dataclass(slots=True)
class EngineStats:
    """Engine-wide counters and gauges, named after vLLM's Prometheus metrics."""

    capacity_tokens: int
    used_tokens: int  # KV held by running requests (vllm:kv_cache_usage_perc x capacity)
    cached_tokens: int = 0  # KV of finished requests still cached (evictable)
    running: int = 0
    waiting: int = 0
    prefix_queries: int = 0  # vllm:prefix_cache_queries_total (tokens)
    prefix_hits: int = 0  # vllm:prefix_cache_hits_total (tokens)
    preemptions: int = 0  # vllm:num_preemptions_total
    recompute_tokens: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """One replica. `submit` queues a call and returns at once; the backend calls
    `on_done(usage)` when the call has finished. Implementations: thundersim.sim.engine.SimBackend,
    thundersim.engine_adapters.vllm.VLLMBackend."""

    index: int
    name: str
    alive: bool  # False once the replica is down: policies must not place programs on it

    @property
    def capacity_tokens(self) -> int: ...

    def submit(self, request: Request, on_done: Callable[[Usage], None]) -> None: ...

    def stats(self) -> EngineStats: ...

    def pin(self, program_id: str, ttl_s: float) -> None:
        """Keep the program's cached KV unevictable for ttl_s (best effort: a backend that
        cannot pin ignores it and reports that in its stats)."""
