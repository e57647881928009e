"""A stand-in vLLM server with fault switches, for fault-injection tests and proxy benchmarks.

It speaks the part of vLLM's OpenAI server that thundersim uses (`/health`, `/v1/models`,
`/metrics` with `vllm:cache_config_info`, `/v1/completions` and `/v1/chat/completions`, streamed
or not, with usage) but runs no model: a call "generates" `max_tokens` tokens, each after
`token_s` seconds. `POST /fault` switches how the next calls are answered:

    {"mode": "ok" | "5xx" | "non_json" | "hang" | "cut", "count": N, "status": 503,
     "after_chunks": 2, "delay_s": 0.0, "token_s": 0.0}

- `5xx`: an error status (default 500) with an OpenAI error body;
- `non_json`: status 200 with a body that is not JSON (a broken gateway in between);
- `hang`: the call is never answered (the connection stays open);
- `cut`: a stream is closed after `after_chunks` events, without [DONE]; a non-streamed answer
  is cut in the middle of its body;
- `count`: how many of the next calls get the fault (-1: all of them), then `ok` again.
`delay_s` (before the first byte) and `token_s` (between tokens) apply to every later call.
"Death and return" is a real one: kill the process, start it again on the same port.
`GET /stats` counts the completion calls that reached it.

    python -m thundersim.live.fake_engine --port 8300 [--token-s 0.001]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

MODES = ("ok", "5xx", "non_json", "hang", "cut")
MODEL = "fake-engine"
# provenance: definition — the tiny CPU engine's window (VLLM_CPU.md), so clients' guards match
MAX_MODEL_LEN = 4096
# provenance: definition — a KV pool far above any test's contexts (the fake holds nothing)
NUM_GPU_BLOCKS = 100_000
BLOCK_SIZE = 16  # provenance: spec — vLLM's default block size on GPUs


class FakeEngine:
    def __init__(self, token_s: float = 0.0, delay_s: float = 0.0, kv_blocks: int = NUM_GPU_BLOCKS):
        self.kv_blocks = kv_blocks
        self.token_s = token_s
        self.delay_s = delay_s
        self.mode = "ok"
        self.count = 0
        self.status = 500
        self.after_chunks = 2
        self.calls = 0  # completion calls received
        self.running = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self._hung: list[asyncio.Future] = []

    # ---- switches ------------------------------------------------------------------------
    async def fault(self, request: web.Request) -> web.Response:
        spec = await request.json()
        mode = spec.get("mode", "ok")
        if mode not in MODES:
            return web.json_response({"error": f"mode must be one of {MODES}"}, status=400)
        self.mode = mode
        self.count = int(spec.get("count", -1))
        self.status = int(spec.get("status", 500))
        self.after_chunks = int(spec.get("after_chunks", 2))
        self.delay_s = float(spec.get("delay_s", self.delay_s))
        self.token_s = float(spec.get("token_s", self.token_s))
        return web.json_response({"mode": self.mode, "count": self.count})

    def _take_fault(self) -> str:
        if self.mode == "ok" or self.count == 0:
            return "ok"
        mode = self.mode
        if self.count > 0:
            self.count -= 1
            if self.count == 0:
                self.mode = "ok"
        return mode

    # ---- the API -------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": MODEL, "object": "model", "max_model_len": MAX_MODEL_LEN}]
        return web.json_response({"object": "list", "data": data})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": self.calls, "running": self.running})

    async def metrics(self, request: web.Request) -> web.Response:
        labels = f'block_size="{BLOCK_SIZE}",num_gpu_blocks="{self.kv_blocks}"'
        text = (
            f"vllm:cache_config_info{{{labels}}} 1.0\n"
            f'vllm:kv_cache_usage_perc{{engine="0"}} 0.0\n'
            f'vllm:num_requests_running{{engine="0"}} {self.running}.0\n'
            f'vllm:num_requests_waiting{{engine="0"}} 0.0\n'
            f'vllm:prefix_cache_queries_total{{engine="0"}} {self.prompt_tokens}.0\n'
            f'vllm:prefix_cache_hits_total{{engine="0"}} 0.0\n'
            f'vllm:prompt_tokens_total{{engine="0"}} {self.prompt_tokens}.0\n'
            f'vllm:generation_tokens_total{{engine="0"}} {self.generation_tokens}.0\n'
        )
        return web.Response(text=text)

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        fault = self._take_fault()
        if fault == "hang":
            waiter = asyncio.get_running_loop().create_future()
            self._hung.append(waiter)
            await waiter  # never set: the call stays unanswered until the process dies
        if fault == "5xx":
            err = {"error": {"message": "injected failure", "type": "server_error"}}
            return web.json_response(err, status=self.status)
        if fault == "non_json":
            return web.Response(text="<html>bad gateway</html>", content_type="text/html")
        chat = request.path.endswith("/chat/completions")
        prompt = _prompt_tokens(body, chat)
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        self.running += 1
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if body.get("stream"):
                return await self._stream(request, body, chat, prompt, n, fault == "cut")
            for _ in range(n):
                if self.token_s:
                    await asyncio.sleep(self.token_s)
            payload = json.dumps(_answer(chat, prompt, n)).encode()
            if fault == "cut":
                response = web.StreamResponse(headers={"Content-Type": "application/json"})
                response.content_length = len(payload)
                await response.prepare(request)
                await response.write(payload[: len(payload) // 2])
                request.transport.abort()
                return response
            self._count(prompt, n)
            return web.Response(body=payload, content_type="application/json")
        finally:
            self.running -= 1

    async def _stream(self, request, body, chat, prompt, n, cut) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(n):
            if cut and i >= self.after_chunks:
                request.transport.abort()
                return response
            if self.token_s:
                await asyncio.sleep(self.token_s)
            delta = {"delta": {"content": "x"}} if chat else {"text": "x"}
            chunk = {"id": "fake", "object": "chunk", "choices": [{"index": 0, **delta}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk = {"id": "fake", "object": "chunk", "choices": [], "usage": usage}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self._count(prompt, n)
        return response

    def _count(self, prompt: int, n: int) -> None:
        self.prompt_tokens += prompt
        self.generation_tokens += n

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/fault", self.fault)
        app.router.add_post("/v1/completions", self.completion)
        app.router.add_post("/v1/chat/completions", self.completion)
        return app


def _prompt_tokens(body: dict, chat: bool) -> int:
    """Token ids count exactly; text at 4 characters a token (as the proxy estimates)."""
    if chat:
        text = "".join(str(m.get("content") or "") for m in body.get("messages") or [])
        return max(1, len(text) // 4)
    prompt = body.get("prompt")
    return len(prompt) if isinstance(prompt, list) else max(1, len(str(prompt or "")) // 4)


def _answer(chat: bool, prompt: int, n: int) -> dict:
    usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": "x" * n}}
    else:
        choice = {"index": 0, "text": "x" * n, "token_ids": [7] * n}
    return {
        "id": "fake",
        "object": "completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{**choice, "finish_reason": "length"}],
        "usage": usage,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token-s", type=float, default=0.0, help="seconds per generated token")
    ap.add_argument("--delay-s", type=float, default=0.0, help="seconds before the first byte")
    ap.add_argument("--kv-blocks", type=int, default=NUM_GPU_BLOCKS, help="KV pool it reports")
    args = ap.parse_args()
    engine = FakeEngine(token_s=args.token_s, delay_s=args.delay_s, kv_blocks=args.kv_blocks)
    web.run_app(
        engine.app(), host=args.host, port=args.port, access_log=None, print=None, backlog=4096
    )


if __name__ == "__main__":
    main()
