"""The Backend contract: what the Cluster needs from one serving replica, sim or live.

A backend serves one LLM call of a program at a time per program: the prompt is the program's
whole context (so prefix caching sees exactly what a real engine would), the output length is
the step's. It reports usage and timings per call and engine-wide stats, like vLLM's
per-request `usage` and its `/metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable


@dataclass(slots=True)
class Forward:
    """A client's OpenAI request that a live backend sends on as is (thundersim serve): the
    endpoint path, the JSON body (the backend sets `model`), and for a streamed call a sink
    that receives each server-sent event's bytes, then None at the end of the stream."""

    path: str  # "/v1/completions" or "/v1/chat/completions"
    body: dict
    sink: Any = None  # asyncio.Queue[bytes | None] when the client asked for a stream
    client_wants_usage: bool = True  # else the usage-only chunk the backend asked for is dropped
    started: bool = False  # part of the answer reached the client: the call cannot be re-run


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


class Gauges(NamedTuple):
    """The three engine gauges a router reads (as in `EngineStats`), which a backend may give
    alone through an optional `gauges()` method, without building its whole stats."""

    used_tokens: int
    running: int
    waiting: int


@dataclass(slots=True)
class EngineStats:
    """Engine-wide counters and gauges, named after vLLM's Prometheus metrics."""

    capacity_tokens: int
    block_size: int  # the KV pool's granularity (vllm:cache_config_info block_size)
    used_tokens: int  # KV held by running requests (vllm:kv_cache_usage_perc x capacity)
    cached_tokens: int = 0  # KV of finished requests still cached (evictable)
    running: int = 0
    waiting: int = 0
    prefix_queries: int = 0  # vllm:prefix_cache_queries_total (tokens)
    prefix_hits: int = 0  # vllm:prefix_cache_hits_total (tokens)
    # Re-admissions after a preemption: vLLM's PrefixCacheStats.preempted_queries / _hits
    # (not on /metrics: a live vLLM reports 0; the hit rate above excludes them, as vLLM's does)
    preempted_prefix_queries: int = 0
    preempted_prefix_hits: int = 0
    preemptions: int = 0  # vllm:num_preemptions_total
    recompute_tokens: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """One replica: everything the Cluster, the drivers, the Recorder and `serve` use of it.

    `submit` queues a call and returns at once; the backend calls `on_done(usage)` when the call
    has finished, or `on_failure(request, exc)` when the replica could not serve it (it died, it
    answered garbage): exactly one of the two, once. The Cluster then hands the program back to
    the policy. A call that ends without an answer (the engine refused or failed it) is done,
    with `Usage.status` not 200: it is not a completed step. (Both callbacks come with the call, so nothing is wired in after construction.)
    The async lifecycle (`connect`, `refresh`, `close`) is a no-op for a simulated replica.
    Implementations: thundersim.sim.engine.SimBackend, thundersim.engine_adapters.vllm.VLLMBackend
    (registered by name in thundersim.engine_adapters.registry)."""

    index: int
    name: str  # where it is: "sim0", a server URL
    model: str  # the model it serves ("" until connected)
    alive: bool  # False once the replica is down: policies must not place programs on it

    @property
    def capacity_tokens(self) -> int:
        """The same number as `stats().capacity_tokens`: the Cluster's backend views read it
        here, so a policy that needs only capacities never makes the engine build its stats."""
        ...

    def submit(
        self,
        request: Request,
        on_done: Callable[[Usage], None],
        on_failure: Callable[[Request, Exception], None],
    ) -> None: ...

    def stats(self) -> EngineStats: ...

    def pin(self, program_id: str, ttl_s: float) -> None:
        """Keep the program's cached KV unevictable for ttl_s (best effort: a backend that
        cannot pin ignores it and reports that in its stats)."""

    def unpin(self, program_id: str) -> None:
        """Release a pin early (the program finished); a no-op if there is none."""

    async def connect(self) -> None:
        """Health check, model name, capacity and counter baselines."""

    async def refresh(self) -> None:
        """Bring `stats()` up to date (a live engine's counters are scraped, not pushed)."""

    async def close(self) -> None: ...


@runtime_checkable
class Revivable(Protocol):
    """An optional protocol: a replica that can come back after being down (a live engine
    restarted). It calls `on_up()` once `alive` is True again; the Cluster sets the hook, so
    that the calls it withheld while no replica could take them are offered to the policy."""

    on_up: Callable[[], None] | None


@dataclass(slots=True)
class KVSnapshot:
    """One sample of a replica's KV pool, in tokens: what it holds and for whom, in the STP
    model's terms (thundersim.metrics.recorder.KV_CATEGORIES)."""

    used_tokens: int  # held by requests in the engine
    cached_tokens: int  # free but still cached (evictable prefix-cache blocks)
    running: int
    waiting: int
    decode: int  # held by decoding requests (and shared prompts in use)
    prefill: int  # held by prompts being computed for the first time
    recompute: int  # held by prompts computed again (after eviction or preemption)
    cached_acting: int  # cached KV of programs in a tool call
    cached_other: int  # the rest of the evictable cache
    empty: int
    # the queue's head cannot get its blocks (a queue waiting only for the token budget leaves
    # free memory idle, not unused)
    waiting_for_memory: bool
    min_queued_tokens: float  # the smallest context queued in the engine (nan when none)


@runtime_checkable
class KVIntrospection(Protocol):
    """The optional second protocol: a replica that can show its block pool (the simulated
    one). The Recorder splits its KV into the STP cost terms from it; a replica without it
    (a live vLLM exposes only KV in use) is sampled from `stats()`."""

    def kv_snapshot(self, is_acting: Callable[[str], bool]) -> KVSnapshot:
        """`is_acting(chain_key)`: whether the program owning that cached chain is in a tool
        call."""
        ...
