"""VLLMBackend against a fake OpenAI-compatible server that breaks its answers the ways a dying
engine does: every call ends (answered with an error status, or handed back when the replica is
down), none is left in flight forever. The replica here stays healthy (its /health answers), so a
broken answer is that call's failure, not the backend's (issue 14: one failing request must not
take a backend down)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from thundersim.core.backend import Request
from thundersim.engine_adapters.tokens import TokenBook
from thundersim.engine_adapters.vllm import VLLMBackend

CHUNK = json.dumps({"choices": [{"index": 0, "text": "", "token_ids": [7]}]}).encode()


def _app(mode: str) -> web.Application:
    async def health(request):
        return web.Response(text="ok")

    async def models(request):
        return web.json_response({"data": [{"id": "fake"}]})

    async def metrics(request):
        text = 'vllm:cache_config_info{block_size="16",num_gpu_blocks="64"} 1.0\n'
        return web.Response(text=text)

    async def completions(request):
        body = await request.json()
        if mode == "not-json":
            return web.Response(text="<html>proxy error</html>", content_type="text/html")
        assert body["stream"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + CHUNK + b"\n\n")
        if mode == "truncated":  # killed in the middle of writing an event
            await resp.write(b"data: " + CHUNK[: len(CHUNK) // 2])
        # "no-done": the stream closes cleanly with neither usage nor [DONE]
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/completions", completions)
    return app


@pytest.mark.parametrize("mode", ["truncated", "no-done", "not-json"])
def test_a_broken_answer_from_a_healthy_replica_ends_the_call_with_502(mode):
    async def main():
        runner, url = await _serve(mode)
        answered: asyncio.Future = asyncio.get_running_loop().create_future()
        failed: list = []
        backend = VLLMBackend(
            0,
            url,
            TokenBook(1000),
            retries=0,
            stream=mode != "not-json",
        )
        try:
            await backend.connect()
            req = Request("p", 0, prompt_tokens=20, output_tokens=4)
            backend.submit(req, answered.set_result, lambda req, exc: failed.append(exc))
            usage = await asyncio.wait_for(answered, 10)
            return usage, failed, backend
        finally:
            await backend.close()
            await runner.cleanup()

    usage, failed, backend = asyncio.run(main())
    assert usage.status == 502 and not failed  # answered, not handed back to run again
    assert backend.alive  # the replica answers its health check: the call failed, not it
    assert backend.errored_calls == 1 and backend.failed_calls == 0 and backend.in_flight == 0
    reason = json.loads(usage.response)["error"]["message"]
    assert ("[DONE]" in reason) if mode == "no-done" else reason


def _serve(mode: str):
    """The fake server on a free port: (runner, url)."""

    async def start():
        runner = web.AppRunner(_app(mode))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    return start()


def test_pins_and_unpins_are_counted_and_ignored_and_stats_carry_the_block_size():
    async def main():
        runner, url = await _serve("no-done")
        backend = VLLMBackend(0, url, TokenBook(1000))
        try:
            await backend.connect()
            backend.pin("p", 30.0)
            backend.unpin("p")
            backend.unpin("q")  # never pinned: a no-op all the same
            return backend.model, backend.stats()
        finally:
            await backend.close()
            await runner.cleanup()

    model, stats = asyncio.run(main())
    # 64 blocks of 16, one of them vLLM's null block
    assert model == "fake" and stats.capacity_tokens == 16 * (64 - 1)
    assert stats.extra["pins"] == 0  # nothing is pinned on a stock vLLM
    assert stats.extra["pins_ignored"] == 1 and stats.extra["unpins_ignored"] == 2
    assert stats.block_size == 16
