"""The simulated engine's accounting: its counters and what it reports from them.

vLLM keeps these in its scheduler's stats (vllm/v1/metrics/stats.py: SchedulerStats,
IterationStats, PrefixCacheStats) and exports them as the Prometheus metrics that EngineStats
is named after. Here: `EngineCounters` (what the scheduler and the engine loop count),
`engine_stats` (Backend.stats) and `kv_snapshot` (the KVIntrospection protocol: the pool by STP
cost term, in tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

from thundersim.core.backend import EngineStats, KVSnapshot
from thundersim.sim.kv_cache_manager import KVCacheManager
from thundersim.sim.request import EngineRequest


@dataclass(slots=True)
class EngineCounters:
    """Totals over the run (vLLM's /metrics names where it has one)."""

    # First admissions only, as vLLM's PrefixCacheStats (vllm/v1/metrics/stats.py) counts them:
    prefix_requests: int = 0
    prefix_queries: int = 0  # vllm:prefix_cache_queries_total (tokens)
    prefix_hits: int = 0  # vllm:prefix_cache_hits_total (tokens)
    # Re-admissions after a preemption (PrefixCacheStats.preempted_*; vLLM does not export them)
    preempted_prefix_requests: int = 0
    preempted_prefix_queries: int = 0
    preempted_prefix_hits: int = 0
    preemptions: int = 0  # vllm:num_preemptions_total
    recompute_tokens: int = 0  # tokens computed again that their program had computed before
    prompt_tokens: int = 0  # prefill tokens computed (recompute included)
    generation_tokens: int = 0  # vllm:generation_tokens_total
    iterations: int = 0  # engine steps (skipped-ahead ones included)
    busy_s: float = 0.0  # simulated seconds spent running iterations
    pins: int = 0  # TTL pins applied


def engine_stats(
    counters: EngineCounters, kv: KVCacheManager, running: int, waiting: int
) -> EngineStats:
    """Backend.stats: the gauges of the pool and the queues, the counters, and in `extra`
    what only the simulator knows (iterations, evictions, pins)."""
    B = kv.block_size
    pool = kv.pool
    return EngineStats(
        capacity_tokens=kv.capacity_tokens,
        block_size=B,
        used_tokens=pool.used * B,
        cached_tokens=pool.cached_free * B,
        running=running,
        waiting=waiting,
        prefix_queries=counters.prefix_queries,
        prefix_hits=counters.prefix_hits,
        preempted_prefix_queries=counters.preempted_prefix_queries,
        preempted_prefix_hits=counters.preempted_prefix_hits,
        preemptions=counters.preemptions,
        recompute_tokens=counters.recompute_tokens,
        prompt_tokens=counters.prompt_tokens,
        generation_tokens=counters.generation_tokens,
        extra={
            "iterations": counters.iterations,
            "evicted_blocks": pool.evicted,
            "pinned_tokens": pool.pinned_total * B,
            "pins": counters.pins,
        },
    )


def kv_snapshot(
    kv: KVCacheManager,
    prefilling: Collection[EngineRequest],
    running: int,
    waiting: Collection[EngineRequest],
    waiting_for_memory: bool,
    is_acting: Callable[[str], bool],
) -> KVSnapshot:
    """One sample of the pool by STP cost term, in tokens (blocks x block_size).
    `min_queued_tokens` is the smallest context in the waiting queue (an int, as the
    Recorder's column takes it; nan when the queue is empty)."""
    B = kv.block_size
    pool = kv.pool
    blocks = kv.breakdown(prefilling, is_acting)
    return KVSnapshot(
        used_tokens=pool.used * B,
        cached_tokens=pool.cached_free * B,
        running=running,
        waiting=len(waiting),
        decode=blocks["decode"] * B,
        prefill=blocks["prefill"] * B,
        recompute=blocks["recompute"] * B,
        cached_acting=blocks["cached_acting"] * B,
        cached_other=blocks["cached_other"] * B,
        empty=blocks["empty"] * B,
        waiting_for_memory=waiting_for_memory,
        min_queued_tokens=min((r.num_tokens for r in waiting), default=math.nan),
    )
