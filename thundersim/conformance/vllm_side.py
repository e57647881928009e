"""vLLM's own v1 Scheduler, traced iteration by iteration on request streams (the vLLM half of
the differential test; thundersim.conformance.sim_side is the other half).

It runs in the Python of the vLLM under test and imports nothing from thundersim (thundersim
need not be installed there): `thundersim conformance` writes the streams, runs this file with
that Python, and compares. To run it by hand:

    VLLM_PYTHON thundersim/conformance/vllm_side.py STREAMS.json TRACES.jsonl

It builds vLLM's `Scheduler` with its `KVCacheManager` as vLLM's own unit tests do
(tests/v1/core/utils.py, create_scheduler): no engine, no model weights, CPU only; feeds it each
stream and a fake model output per step (one sampled token per request whose prefill is
complete, none for a partial prefill chunk), and writes one JSON line per iteration: tokens
scheduled per request, admissions in order with their prefix-hit tokens, preemptions, finishes,
free and cached blocks, and the step's prefix-cache counters.

STREAMS.json: {"streams": {name: {"config": {...}, "events": [...]}}}. An event is
    {"request_id", "prompt_token_ids", "output_token_ids", "at_step"}        (timed), or
    {"request_id", "prompt_token_ids", "output_token_ids", "after", "delay_steps"}
a next turn, added `delay_steps` steps after the step that finished request `after` (its prompt
is given whole: the caller builds it from the predecessor's tokens). Config: num_gpu_blocks,
block_size, max_num_batched_tokens, max_num_seqs, max_model_len, model_config (a config.json
for ModelConfig; the shape is irrelevant to scheduling). Steps with nothing to do are skipped to
the next arrival and produce no line. Arrivals due at a step are added in this order: next
turns by due step, then in the order their predecessors finished; then timed events in the
order of the file.

vLLM 0.32 defaults this keeps (paths relative to site-packages/vllm), all of them the
scheduler's own behaviour, not re-implemented here:
- scheduler_reserve_full_isl=True (config/scheduler.py:190): a waiting request is admitted only
  if the blocks for its whole prompt fit (v1/core/kv_cache_manager.py:522-539);
- full blocks are hashed as soon as they are scheduled (allocate_slots -> cache_blocks,
  kv_cache_manager.py:608-616);
- hits are capped at num_tokens - 1, block-aligned (kv_cache_manager.py:295);
- block 0 is the null block (v1/core/block_pool.py:187);
- running requests are scheduled before waiting ones; a step that preempted admits nobody
  (v1/core/sched/scheduler.py:900); the fcfs victim is the last of `running`;
- prefix-cache counters count first admissions; re-admissions go to preempted_*
  (v1/metrics/stats.py:138-155);
- enable_chunked_prefill=True, long_prefill_token_threshold=0, watermark=0.0,
  enable_prefix_caching=True; synchronous scheduling, no speculative decoding.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # before vllm is imported


def build_scheduler(cfg: dict):
    """vLLM's Scheduler + KVCacheManager: a VllmConfig and a KVCacheConfig with one
    full-attention group of num_gpu_blocks blocks (tests/v1/core/utils.py create_scheduler)."""
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    bs, blocks, max_len = cfg["block_size"], cfg["num_gpu_blocks"], cfg["max_model_len"]
    model_config = dict(cfg["model_config"])
    model_config["max_position_embeddings"] = max(
        max_len, model_config.get("max_position_embeddings", 0)
    )
    folder = Path(tempfile.mkdtemp(prefix="thundersim_vllm_side_"))
    (folder / "config.json").write_text(json.dumps(model_config))
    model = ModelConfig(
        model=str(folder), skip_tokenizer_init=True, max_model_len=max_len, dtype="float16", seed=0
    )
    sched = SchedulerConfig(
        max_num_seqs=cfg["max_num_seqs"],
        max_model_len=max_len,
        max_num_batched_tokens=cfg["max_num_batched_tokens"],
        is_encoder_decoder=False,
    )
    cache = CacheConfig(block_size=bs, enable_prefix_caching=True)
    vllm_config = VllmConfig(model_config=model, cache_config=cache, scheduler_config=sched)
    cache.num_gpu_blocks = blocks
    spec = FullAttentionSpec(block_size=bs, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv_config = KVCacheConfig(
        num_blocks=blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)]
    )
    return Scheduler(
        vllm_config=vllm_config,
        kv_cache_config=kv_config,
        block_size=bs,
        structured_output_manager=StructuredOutputManager(vllm_config),
        log_stats=True,
    )


class Stream:
    """The events of one stream, turned into vLLM Requests when their step comes; block hashes
    as EngineCore computes them (v1/engine/core.py)."""

    def __init__(self, events: list[dict], block_size: int, hash_algo: str):
        from vllm.utils.hashing import get_hash_fn_by_name
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash

        hash_fn = get_hash_fn_by_name(hash_algo)
        init_none_hash(hash_fn)
        self.hasher = get_request_block_hasher(block_size, hash_fn)
        self.timed = sorted((e for e in events if "after" not in e), key=lambda e: e["at_step"])
        self.followers: dict[str, list[dict]] = {}
        for e in events:
            if "after" in e:
                self.followers.setdefault(e["after"], []).append(e)
        self.ready: list[tuple[int, int, dict]] = []  # (due step, order, event)
        self.order = 0
        self.outputs = {e["request_id"]: e["output_token_ids"] for e in events}

    def pending(self) -> bool:
        return bool(self.timed or self.ready)

    def next_step(self) -> int:
        steps = [d for d, _, _ in self.ready] + [e["at_step"] for e in self.timed[:1]]
        return min(steps)

    def due(self, step: int) -> list[dict]:
        now = sorted(r for r in self.ready if r[0] <= step)
        self.ready = [r for r in self.ready if r[0] > step]
        out = [e for _, _, e in now]
        while self.timed and self.timed[0]["at_step"] <= step:
            out.append(self.timed.pop(0))
        return out

    def make_request(self, event: dict, arrival: float):
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request

        params = SamplingParams(max_tokens=len(event["output_token_ids"]), ignore_eos=True)
        return Request(
            request_id=event["request_id"],
            prompt_token_ids=list(event["prompt_token_ids"]),
            sampling_params=params,
            pooling_params=None,
            arrival_time=arrival,
            block_hasher=self.hasher,
        )

    def finished(self, rid: str, step: int) -> None:
        for e in self.followers.pop(rid, []):
            self.ready.append((step + 1 + e.get("delay_steps", 0), self.order, e))
            self.order += 1


def fake_model_output(scheduler, sched_out, stream: Stream):
    """One sampled token for each scheduled request whose prompt is now fully computed, none for
    a partial prefill chunk: what tests/v1/core feeds update_from_output."""
    from vllm.v1.outputs import ModelRunnerOutput

    req_ids = list(sched_out.num_scheduled_tokens)
    sampled = []
    for rid in req_ids:
        req = scheduler.requests[rid]
        if req.num_computed_tokens >= req.num_tokens:
            sampled.append([stream.outputs[rid][req.num_output_tokens]])
        else:
            sampled.append([])
    return ModelRunnerOutput(
        req_ids=req_ids,
        req_id_to_index={r: i for i, r in enumerate(req_ids)},
        sampled_token_ids=sampled,
    )


def pool_state(scheduler) -> dict:
    """Free blocks (evictable cached ones included) and cached blocks (holding a block hash),
    the null block excluded."""
    pool = scheduler.kv_cache_manager.block_pool
    cached = [b for b in pool.blocks if b.block_hash is not None and not b.is_null]
    return {"free_blocks": pool.get_num_free_blocks(), "cached_blocks": len(cached)}


PREFIX_COUNTERS = (
    "requests",
    "queries",
    "hits",
    "preempted_requests",
    "preempted_queries",
    "preempted_hits",
)


def prefix_stats(engine_outputs: dict) -> dict:
    """This step's prefix-cache counters (make_stats drains them each step; the
    `vllm:prefix_cache_*` metrics are their running sums)."""
    stats = next((o.scheduler_stats for o in engine_outputs.values() if o.scheduler_stats), None)
    if stats is None or stats.prefix_cache_stats is None:
        return dict.fromkeys(PREFIX_COUNTERS, 0)
    return {n: getattr(stats.prefix_cache_stats, n) for n in PREFIX_COUNTERS}


def one_step(scheduler, stream: Stream, step: int) -> dict:
    for i, event in enumerate(stream.due(step)):
        scheduler.add_request(stream.make_request(event, arrival=step + i * 1e-6))
    running_before = {r.request_id for r in scheduler.running}
    out = scheduler.schedule()
    admitted = []
    for rid, n in out.num_scheduled_tokens.items():  # running first, then admissions in order
        if rid not in running_before:
            req = scheduler.requests[rid]
            admitted.append([rid, req.num_computed_tokens - n, req.num_preemptions > 0])
    preempted = sorted(out.preempted_req_ids or ())
    live = set(scheduler.requests)
    engine_outputs = scheduler.update_from_output(out, fake_model_output(scheduler, out, stream))
    finished = sorted(
        rid for rid in out.num_scheduled_tokens if rid in live - set(scheduler.requests)
    )
    for rid in finished:
        stream.finished(rid, step)
    return {
        "step": step,
        "scheduled": dict(sorted(out.num_scheduled_tokens.items())),
        "admitted": admitted,
        "preempted": preempted,
        "finished": finished,
        "running": len(scheduler.running),
        "waiting": len(scheduler.waiting),
        **pool_state(scheduler),
        "prefix_cache": prefix_stats(engine_outputs),
    }


def run_stream(events: list[dict], cfg: dict, max_steps: int = 1_000_000):
    """Yield one record per non-idle iteration until every request has finished."""
    scheduler = build_scheduler(cfg)
    stream = Stream(events, cfg["block_size"], scheduler.cache_config.prefix_caching_hash_algo)
    step = 0
    while stream.pending() or scheduler.has_unfinished_requests():
        if not scheduler.has_unfinished_requests():
            step = max(step, stream.next_step())  # idle: jump to the next arrival
        record = one_step(scheduler, stream, step)
        yield record
        if not record["scheduled"] and not scheduler.running and not stream.pending():
            head = scheduler.waiting.peek_request()
            raise RuntimeError(f"{head.request_id} ({head.num_tokens} tokens) can never run")
        step += 1
        if step > max_steps:
            raise RuntimeError(f"no progress after {max_steps} steps")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    streams = json.loads(Path(argv[0]).read_text())["streams"]
    import vllm

    with open(argv[1], "w") as out:
        out.write(json.dumps({"vllm": vllm.__version__}) + "\n")
        for name, s in streams.items():
            for record in run_stream(s["events"], s["config"]):
                out.write(json.dumps({"stream": name, **record}) + "\n")
            out.flush()
            print(f"vllm side: {name} done", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
