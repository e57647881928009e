"""Iteration-by-iteration trace of vLLM's own v1 Scheduler on a request stream (issue 13, part 1).

What it is for: the vLLM half of a differential test. It builds vLLM's v1 `Scheduler` with its
`KVCacheManager` directly (no engine, no model weights, CPU only), feeds it a request stream and
a fake model output per step (one sampled token per request whose prefill is complete, none for
a partial prefill chunk), and writes one JSON line per iteration: tokens scheduled per request,
admissions in order with their prefix-hit tokens, preemptions, finishes, free / cached blocks and
the prefix-cache counters. The SimBackend side replays the same stream and compares line by line.

How to run (with the vLLM venv's python, i.e. the vLLM under test):
    .venv-vllm/bin/python experiments/vllm_scheduler_trace.py --demo
    .venv-vllm/bin/python experiments/vllm_scheduler_trace.py STREAM.json [--out TRACE.jsonl]
    .venv-vllm/bin/python experiments/vllm_scheduler_trace.py --dump-demo DIR   # the demo inputs

A stream file is a list of events, or {"config": {...}, "events": [...]}:
    {"at_step": k, "request_id": "r0", "prompt_token_ids": [...], "max_tokens": n}
added before scheduling step k (steps count from 0). Optional keys: "output_token_ids" (what the
fake model samples; default: a stable per-request sequence, see fake_token), and "after": "r0"
(a next turn: added the step after r0 finishes, its prompt is r0's prompt + r0's outputs +
prompt_token_ids; at_step is then ignored). "config" keys (CLI flags override): num_gpu_blocks,
block_size, max_num_batched_tokens, max_num_seqs, max_model_len. Idle steps (nothing queued or
running) are skipped to the next event's step and produce no line.

vLLM 0.32 scheduler defaults this keeps (paths relative to site-packages/vllm):
- scheduler_reserve_full_isl=True (config/scheduler.py:190): admission passes
  full_sequence_must_fit (v1/core/sched/scheduler.py:1270), so a waiting request is admitted
  only if the blocks for its whole prompt (less its prefix hit; evictable hit blocks count as
  taken) are free (v1/core/kv_cache_manager.py:522-539), not just its first chunk's.
- Full blocks are cached as soon as they are scheduled: allocate_slots ends with
  coordinator.cache_blocks(request, computed + new tokens) (v1/core/kv_cache_manager.py:608-616)
  -> block_pool.cache_full_blocks (v1/core/single_type_kv_cache_manager.py:523), so a sharer
  admitted on a later step hits them while their owner still runs. Full attention caches full
  blocks only (partial hash hits need Mamba "align": v1/core/kv_cache_coordinator.py:684).
- The lookup hits at most num_tokens - 1 tokens, block-aligned (v1/core/kv_cache_manager.py:295).
- Block 0 is the null block, never handed out: usable blocks = num_gpu_blocks - 1
  (v1/core/block_pool.py:187).
- Running requests are scheduled (and their decode blocks allocated) before any waiting one is
  admitted (v1/core/sched/scheduler.py:657 then :899); a step that preempted admits nobody
  (:900). The victim is the last of `running` under fcfs (:802; policy default config/scheduler.py:159),
  it is freed and put at the front of `waiting` with num_computed_tokens=0 (:1571-1614).
- Prefix-cache counters: first admissions go to requests/queries/hits, re-admissions after a
  preemption to preempted_requests/queries/hits (v1/metrics/stats.py:138-155), recorded at
  admission only (v1/core/sched/scheduler.py:1314; kv_cache_manager.py:253).
- enable_chunked_prefill=True (config/scheduler.py:134), long_prefill_token_threshold=0 (:79),
  watermark=0.0 (:196), enable_prefix_caching=True (config/cache.py:141), hash sha256 (:143).
- Synchronous scheduling (async_scheduling resolves to False here, on CPU) and no spec decode.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # before vllm is imported
DEFAULTS = {
    "num_gpu_blocks": 64,
    "block_size": 16,
    "max_num_batched_tokens": 256,
    "max_num_seqs": 16,
    "max_model_len": None,
}
FIRST_TOKEN_ID = 3  # ids 0/1/2 are pad/bos/eos in the tiny model's vocabulary
VOCAB = 2048


def fake_token(request_id: str, index: int) -> int:
    """The token the fake model samples as output number `index` of a request (stable across
    runs and processes, never a special id)."""
    return FIRST_TOKEN_ID + (zlib.crc32(request_id.encode()) + index) % (VOCAB - FIRST_TOKEN_ID)


def tiny_model_dir(max_model_len: int) -> str:
    """A model directory with only config.json, for ModelConfig: the live tests' tiny Llama
    (engine_adapters/local.py) with room for max_model_len positions. That module is loaded
    from the checkout by its path: this script runs in vLLM's venv, where thundersim is not
    installed (and `import engine_adapters` would be the checkout folder as a top-level
    package, which tests/test_architecture.py refuses)."""
    path = Path(__file__).resolve().parents[1] / "engine_adapters" / "local.py"
    spec = importlib.util.spec_from_file_location("_thundersim_local_engines", path)
    local = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = local  # its dataclasses look their module up while being made
    spec.loader.exec_module(local)
    config = dict(local.TINY_LLAMA)
    config["max_position_embeddings"] = max(max_model_len, config.get("max_position_embeddings", 0))
    folder = Path(tempfile.mkdtemp(prefix="vllm_trace_model_"))
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def build_scheduler(cfg: dict):
    """vLLM's Scheduler + KVCacheManager as its unit tests build them (tests/v1/core/utils.py
    create_scheduler): a VllmConfig, and a KVCacheConfig with one full-attention group of
    num_gpu_blocks blocks; the layer shape is irrelevant to scheduling."""
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    bs, blocks, max_len = cfg["block_size"], cfg["num_gpu_blocks"], cfg["max_model_len"]
    model = ModelConfig(
        model=tiny_model_dir(max_len),
        skip_tokenizer_init=True,
        max_model_len=max_len,
        dtype="float16",
        seed=0,
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
    """The events of one stream, turned into vLLM Requests when their step (or their
    predecessor's finish) comes; hashing as EngineCore does (v1/engine/core.py:232-240)."""

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
        self.ready: list[dict] = []  # next turns whose predecessor finished
        self.events = {e["request_id"]: e for e in events}
        self.tokens: dict[str, list[int]] = {}  # request id -> its full prompt

    def pending(self) -> bool:
        return bool(self.timed or self.ready)

    def next_step(self) -> int | None:
        return self.timed[0]["at_step"] if self.timed else None

    def due(self, step: int) -> list[dict]:
        out, self.ready = self.ready, []
        while self.timed and self.timed[0]["at_step"] <= step:
            out.append(self.timed.pop(0))
        return out

    def make_request(self, event: dict, arrival: float):
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request

        rid = event["request_id"]
        prompt = list(event["prompt_token_ids"])
        if "after" in event:
            prev = event["after"]
            prompt = self.tokens[prev] + self.outputs(prev) + prompt
        self.tokens[rid] = prompt
        params = SamplingParams(max_tokens=event["max_tokens"], ignore_eos=True)
        return Request(
            request_id=rid,
            prompt_token_ids=prompt,
            sampling_params=params,
            pooling_params=None,
            arrival_time=arrival,
            block_hasher=self.hasher,
        )

    def outputs(self, rid: str) -> list[int]:
        n = self.events[rid]["max_tokens"]
        given = self.events[rid].get("output_token_ids")
        return list(given[:n]) if given else [fake_token(rid, i) for i in range(n)]

    def finished(self, rid: str) -> None:
        self.ready.extend(self.followers.pop(rid, []))


def fake_model_output(scheduler, sched_out, stream: Stream):
    """One sampled token for each scheduled request whose prompt is now fully computed (its
    num_computed_tokens was advanced by schedule(): scheduler.py:1616), none for a partial
    prefill chunk: what tests/v1/core feeds update_from_output."""
    from vllm.v1.outputs import ModelRunnerOutput

    req_ids = list(sched_out.num_scheduled_tokens)
    sampled = []
    for rid in req_ids:
        req = scheduler.requests[rid]
        if req.num_computed_tokens >= req.num_tokens:
            sampled.append([stream.outputs(rid)[req.num_output_tokens]])
        else:
            sampled.append([])
    return ModelRunnerOutput(
        req_ids=req_ids,
        req_id_to_index={r: i for i, r in enumerate(req_ids)},
        sampled_token_ids=sampled,
    )


def pool_state(scheduler) -> dict:
    """Free blocks (including evictable cached ones) and cached blocks (holding a block hash),
    the null block excluded."""
    pool = scheduler.kv_cache_manager.block_pool
    cached = [b for b in pool.blocks if b.block_hash is not None and not b.is_null]
    return {
        "free_blocks": pool.get_num_free_blocks(),
        "cached_blocks": len(cached),
        "cached_free_blocks": sum(1 for b in cached if b.ref_cnt == 0),
    }


def prefix_stats(engine_outputs: dict) -> dict | None:
    """This step's prefix-cache counters, from the SchedulerStats that update_from_output
    returns (make_stats drains the manager's counters each step: scheduler.py:2409, :2925);
    the `vllm:prefix_cache_*` metrics are their running sums."""
    stats = next((o.scheduler_stats for o in engine_outputs.values() if o.scheduler_stats), None)
    if stats is None or stats.prefix_cache_stats is None:
        return None
    names = (
        "requests",
        "queries",
        "hits",
        "preempted_requests",
        "preempted_queries",
        "preempted_hits",
    )
    return {n: getattr(stats.prefix_cache_stats, n) for n in names}


def one_step(scheduler, stream: Stream, step: int) -> dict:
    """Schedule one iteration, feed it a fake model output, and describe what happened."""
    for i, event in enumerate(stream.due(step)):
        scheduler.add_request(stream.make_request(event, arrival=step + i * 1e-6))
    running_before = {r.request_id for r in scheduler.running}
    out = scheduler.schedule()
    admitted = []
    for rid, n in out.num_scheduled_tokens.items():  # running first, then admissions in order
        if rid not in running_before:
            req = scheduler.requests[rid]
            admitted.append(
                {
                    "request_id": rid,
                    "prefix_hit_tokens": req.num_computed_tokens - n,
                    "resumed": req.num_preemptions > 0,
                }
            )
    preempted = sorted(out.preempted_req_ids or ())
    live = set(scheduler.requests)
    engine_outputs = scheduler.update_from_output(out, fake_model_output(scheduler, out, stream))
    finished = [rid for rid in out.num_scheduled_tokens if rid in live - set(scheduler.requests)]
    for rid in finished:
        stream.finished(rid)
    return {
        "step": step,
        "num_scheduled_tokens": dict(out.num_scheduled_tokens),
        "admitted": admitted,
        "preempted": preempted,
        "finished": finished,
        "num_running": len(scheduler.running),
        "num_waiting": len(scheduler.waiting),
        **pool_state(scheduler),
        "prefix_cache": prefix_stats(engine_outputs),
    }


def resolve_config(stream_config: dict, overrides: dict, events: list[dict]) -> dict:
    cfg = {**DEFAULTS, **stream_config, **{k: v for k, v in overrides.items() if v is not None}}
    if cfg["max_model_len"] is None:  # the longest chain of turns, and a block to spare
        # (so that max_model_len never caps a request before its max_tokens does)
        need = {}
        for e in events:
            base = need.get(e.get("after"), 0)
            need[e["request_id"]] = base + len(e["prompt_token_ids"]) + e["max_tokens"]
        bs = cfg["block_size"]
        cfg["max_model_len"] = (-(-max(need.values()) // bs) + 1) * bs
    return cfg


def run_stream(events: list[dict], cfg: dict, max_steps: int = 100_000):
    """Yield one record per non-idle iteration until every request has finished."""
    scheduler = build_scheduler(cfg)
    stream = Stream(events, cfg["block_size"], scheduler.cache_config.prefix_caching_hash_algo)
    step = 0
    while stream.pending() or scheduler.has_unfinished_requests():
        if not scheduler.has_unfinished_requests() and not stream.ready:
            step = max(step, stream.next_step())  # idle: jump to the next arrival
        record = one_step(scheduler, stream, step)
        yield record
        if not record["num_scheduled_tokens"] and not scheduler.running and not stream.pending():
            head = scheduler.waiting.peek_request()  # vLLM would wait for it forever
            raise RuntimeError(
                f"{head.request_id} ({head.num_tokens} tokens) can never be "
                f"admitted: {cfg['num_gpu_blocks'] - 1} usable blocks of "
                f"{cfg['block_size']}"
            )
        step += 1
        if step > max_steps:
            raise RuntimeError(f"no progress after {max_steps} steps")


def demo_streams() -> dict[str, dict]:
    """Three small streams: a shared system prompt, a tight pool, a prompt over the budget."""
    system = list(range(100, 164))  # 64 tokens = 4 blocks of 16
    shared = [
        {
            "at_step": i,
            "request_id": f"a{i}",
            "max_tokens": 8,
            "prompt_token_ids": system + [1000 + 50 * i + j for j in range(20)],
        }
        for i in range(4)
    ]
    shared.append(
        {
            "after": "a0",
            "request_id": "a0.turn2",
            "max_tokens": 8,
            "prompt_token_ids": list(range(1500, 1530)),
        }
    )
    tight = [
        {
            "at_step": 0,
            "request_id": f"p{i}",
            "max_tokens": 40,
            "prompt_token_ids": [200 + 40 * i + j for j in range(40)],
        }
        for i in range(4)
    ]
    long_prompt = [
        {
            "at_step": 0,
            "request_id": f"d{i}",
            "max_tokens": 24,
            "prompt_token_ids": [300 + 32 * i + j for j in range(32)],
        }
        for i in range(2)
    ]
    long_prompt.append(
        {
            "at_step": 1,
            "request_id": "long",
            "max_tokens": 8,
            "prompt_token_ids": [500 + j for j in range(300)],
        }
    )
    return {
        "shared_system_prompt": {
            "config": {"num_gpu_blocks": 64, "max_num_batched_tokens": 256, "max_num_seqs": 8},
            "events": shared,
        },
        "tight_pool_preemption": {
            "config": {"num_gpu_blocks": 13, "max_num_batched_tokens": 256, "max_num_seqs": 8},
            "events": tight,
        },
        "prompt_over_budget": {
            "config": {"num_gpu_blocks": 25, "max_num_batched_tokens": 128, "max_num_seqs": 4},
            "events": long_prompt,
        },
    }


def summarize(name: str, cfg: dict, records: list[dict]) -> str:
    """A few readable lines: admissions with hits, preemptions, finishes, pool low point."""
    keys = ("num_gpu_blocks", "block_size", "max_num_batched_tokens", "max_num_seqs")
    lines = [f"== {name}: " + ", ".join(f"{k}={cfg[k]}" for k in keys) + f", {len(records)} steps"]
    adm = [
        f"{a['request_id']}@{r['step']}(hit {a['prefix_hit_tokens']}"
        + (", resumed)" if a["resumed"] else ")")
        for r in records
        for a in r["admitted"]
    ]
    lines.append("  admitted: " + " ".join(adm))
    pre = [f"{p}@{r['step']}" for r in records for p in r["preempted"]]
    lines.append("  preempted: " + (" ".join(pre) if pre else "none"))
    lines.append(
        "  finished: " + " ".join(f"{f}@{r['step']}" for r in records for f in r["finished"])
    )
    chunks = [
        f"{r['step']}:{r['num_scheduled_tokens']}"
        for r in records
        if any(n > 1 for n in r["num_scheduled_tokens"].values())
    ]
    lines.append("  steps with prefill: " + "; ".join(chunks))
    stats = [r["prefix_cache"] for r in records if r["prefix_cache"]]
    tot = {k: sum(s[k] for s in stats) for k in stats[0]} if stats else {}
    lines.append(f"  prefix cache: {tot}")
    lines.append(
        f"  min free blocks {min(r['free_blocks'] for r in records)}; at the end "
        f"free {records[-1]['free_blocks']}, cached {records[-1]['cached_blocks']}"
    )
    return "\n".join(lines)


def load_stream(path: str) -> tuple[list[dict], dict]:
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):
        return data, {}
    return data["events"], data.get("config", {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stream", nargs="?", help="a stream JSON file")
    ap.add_argument("--demo", action="store_true", help="run the three built-in streams")
    ap.add_argument("--dump-demo", metavar="DIR", help="write the demo streams as JSON files")
    ap.add_argument("--out", help="JSONL trace file (default stdout; with --demo, a folder)")
    for key in DEFAULTS:
        ap.add_argument("--" + key.replace("_", "-"), type=int, dest=key)
    args = ap.parse_args(argv)
    overrides = {k: getattr(args, k) for k in DEFAULTS}
    if args.dump_demo:
        Path(args.dump_demo).mkdir(parents=True, exist_ok=True)
        for name, s in demo_streams().items():
            Path(args.dump_demo, name + ".json").write_text(json.dumps(s, indent=1))
        return 0
    if args.demo:
        for name, s in demo_streams().items():
            cfg = resolve_config(s["config"], overrides, s["events"])
            records = list(run_stream(s["events"], cfg))
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                write_trace(Path(args.out, name + ".jsonl"), cfg, records)
            print(summarize(name, cfg, records), flush=True)
        return 0
    if not args.stream:
        ap.error("give a stream file, --demo or --dump-demo")
    events, stream_cfg = load_stream(args.stream)
    cfg = resolve_config(stream_cfg, overrides, events)
    records = list(run_stream(events, cfg))
    write_trace(Path(args.out) if args.out else None, cfg, records)
    return 0


def write_trace(path: Path | None, cfg: dict, records: list[dict]) -> None:
    """The config as a first line, then one line per iteration."""
    lines = [json.dumps({"config": cfg})] + [json.dumps(r) for r in records]
    text = "\n".join(lines) + "\n"
    if path is None:
        sys.stdout.write(text)
    else:
        path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
