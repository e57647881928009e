"""`thundersim serve` in front of a real vLLM server (CPU build, tiny model with a tokenizer so
chat works, capped KV pool): real agents' requests through an OpenAI client, 4xx with reasons
for malformed requests, and no request reaching anything but the configured backend."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from thundersim.engine_adapters.local import LocalEngines
from thundersim.live.requests import BadRequest, estimate_prompt_tokens, parse_call

from .conftest import StubBackend

# Every test that starts a real vLLM runs in one xdist worker (`--dist loadgroup`, Makefile), one
# server at a time: two CPU engines side by side on 2 cores starve each other, and the timing
# tests (calibration) must not share the machine with a busy engine.
pytestmark = pytest.mark.xdist_group("vllm")

KV_BLOCKS = 24  # x 128 = 3,072 tokens: six programs' contexts do not all fit at once
ENGINE_PORT = 8271
PROXY_PORT = 8281
TOKEN_PROXY_PORT = 8282


# ---- request parsing (no server) ------------------------------------------------------------
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.mark.parametrize(
    ("path", "raw", "reason"),
    [
        (CHAT, b"{", "not valid JSON"),
        (CHAT, b"\xff\xfe", "not valid JSON"),
        (CHAT, b"[1, 2]", "JSON object"),
        (CHAT, b'{"messages": []}', "messages must be a non-empty list"),
        (CHAT, b'{"messages": [{"content": "x"}]}', "messages[0]"),
        (COMPLETIONS, b'{"prompt": ["a", "b"]}', "one non-empty string or one list of token ids"),
        (COMPLETIONS, b'{"prompt": [1, -2]}', "token ids"),
        (COMPLETIONS, b'{"prompt": [true]}', "token ids"),
        (COMPLETIONS, b'{"prompt": ""}', "prompt"),
        (COMPLETIONS, b'{"prompt": "x", "max_tokens": 0}', "max_tokens must be a positive"),
        (COMPLETIONS, b'{"prompt": "x", "max_tokens": "9"}', "max_tokens"),
        (COMPLETIONS, b'{"prompt": "x", "n": 2}', "n must be 1"),
        (COMPLETIONS, b'{"prompt": "x", "stream": "yes"}', "stream must be"),
        (COMPLETIONS, b'{"prompt": "x", "program_id": 7}', "program_id must be"),
        (COMPLETIONS, b'{"prompt": "x", "program_id": ""}', "program_id must be"),
        (COMPLETIONS, b'{"prompt": "x", "extra_body": 3}', "extra_body must be an object"),
    ],
)
def test_malformed_calls_are_refused_with_the_reason(path, raw, reason):
    with pytest.raises(BadRequest) as info:
        parse_call(path, raw, max_program_id=256)
    assert info.value.status == 400
    assert reason in info.value.reason


def test_program_id_comes_from_the_body_or_extra_body_and_is_not_forwarded():
    pid, body = parse_call(COMPLETIONS, b'{"prompt": "x", "program_id": "a"}', 256)
    assert pid == "a" and "program_id" not in body
    raw = json.dumps({"prompt": [1, 2], "extra_body": {"program_id": "b", "ignore_eos": True}})
    pid, body = parse_call(COMPLETIONS, raw.encode(), 256)
    assert pid == "b" and body == {"prompt": [1, 2], "ignore_eos": True}
    pid, body = parse_call(CHAT, b'{"messages": [{"role": "user", "content": "x"}]}', 256)
    assert pid is None  # an anonymous, one-call program


def test_prompt_size_is_exact_for_token_ids_and_estimated_for_text():
    assert estimate_prompt_tokens(COMPLETIONS, {"prompt": list(range(37))}) == 37
    assert estimate_prompt_tokens(COMPLETIONS, {"prompt": "x" * 40}) == 10
    msgs = [{"role": "system", "content": "y" * 8}, {"role": "user", "content": "z" * 4}]
    assert estimate_prompt_tokens(CHAT, {"messages": msgs}) == 2 + 4 + 1 + 4


# ---- a real engine behind a real proxy process ---------------------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engines = LocalEngines(
        replicas=1,
        port=ENGINE_PORT,
        kv_blocks=KV_BLOCKS,
        chat=True,
        workdir=tmp_path_factory.mktemp("engines"),
    )
    replicas = engines.start()
    yield replicas[0]
    engines.stop()


def start_proxy(engine_url: str, port: int, out: Path, *extra: str) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "thundersim"
    cmd = [str(exe), "serve", "--backends", engine_url, "--port", str(port), "--out", str(out)]
    proc = subprocess.Popen(
        cmd + ["--dt", "0.5", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    if not line.startswith("serving on"):
        proc.kill()
        raise RuntimeError(f"serve did not start: {line}{proc.stderr.read()}")
    return proc


def stop_proxy(proc: subprocess.Popen) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


@pytest.fixture(scope="module")
def proxy(engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-out")
    proc = start_proxy(engine.url, PROXY_PORT, out, "--policy", "stp")
    yield f"http://127.0.0.1:{PROXY_PORT}", proc, out
    if proc.poll() is None:
        proc.kill()


def engine_counter(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


async def agent(client: openai.AsyncOpenAI, pid: str, steps: list[tuple[int, int, float]], base):
    """A program as a real agent runs it: its whole context each call (token ids, so the
    engine's prefix cache sees the reuse), the engine's output appended, a tool wait between."""
    context = list(base)
    for i, (new, out, tool_s) in enumerate(steps):
        context += [
            (7 * i + 13 * len(context) + zlib.crc32(pid.encode()) % 97) % 2000 + 3
            for _ in range(new)
        ]
        r = await client.completions.create(
            model="tiny",
            prompt=context,
            max_tokens=out,
            extra_body={"program_id": pid, "ignore_eos": True, "return_token_ids": True},
        )
        assert r.usage.prompt_tokens == len(context)
        assert r.usage.completion_tokens == out
        context += r.choices[0].model_extra["token_ids"]
        await asyncio.sleep(tool_s)
    async with httpx.AsyncClient() as http:
        rel = await http.post(
            f"{client.base_url}".replace("/v1/", "/programs/release"), json={"program_id": pid}
        )
    assert rel.status_code == 200, rel.text
    return rel.json()


def test_every_program_completes_through_serve_with_an_openai_client(proxy):
    url, proc, out = proxy
    shared = [(5 * k) % 2000 + 3 for k in range(256)]  # a system prompt all programs share
    plans = {
        f"agent{i}": [(200 + 30 * i, 12, 0.2)]
        + [(80 + 10 * j, 10, 0.1 + 0.1 * j) for j in range(4)]
        for i in range(6)
    }

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        try:
            return await asyncio.gather(
                *(agent(client, pid, steps, shared) for pid, steps in plans.items())
            )
        finally:
            await client.close()

    released = asyncio.run(main())
    assert sorted(r["program_id"] for r in released) == sorted(plans)
    assert all(r["status"] == "DONE" and r["calls"] == 5 for r in released)
    # a chat program, streamed and not, through the same proxy
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    msgs = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": "ls"}]
    r = client.chat.completions.create(
        model="tiny",
        messages=msgs,
        max_tokens=6,
        extra_body={"program_id": "chat1", "ignore_eos": True},
    )
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"
    msgs += [{"role": "assistant", "content": r.choices[0].message.content}]
    msgs += [{"role": "user", "content": "tool output: 3 files"}]
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=msgs,
            max_tokens=5,
            stream=True,
            extra_body={"program_id": "chat1", "ignore_eos": True},
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # not asked for: the proxy's own usage is hidden
    programs = httpx.get(f"{url}/programs").json()["programs"]
    assert [p["program_id"] for p in programs] == ["chat1"]
    assert programs[0]["calls"] == 2 and programs[0]["phase"] == "ACTING"
    assert httpx.post(f"{url}/programs/release?program_id=chat1").status_code == 200
    metrics = httpx.get(f"{url}/metrics").text
    assert 'thundersim_programs{status="done"} 7.0' in metrics
    assert "thundersim_steps_completed 32.0" in metrics  # 6 x 5 + 2 steps
    stop_proxy(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["programs_completed"] == 7 and summary["steps_completed"] == 32
    assert summary["kv_hit_rate"] > 0.3  # the shared prefix and each program's history hit


@pytest.fixture(scope="module")
def guarded(engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-guarded")
    proc = start_proxy(
        engine.url,
        TOKEN_PROXY_PORT,
        out,
        "--token",
        "s3cret",
        "--max-body-mb",
        "0.01",
        "--policy",
        "vllm",
    )
    yield f"http://127.0.0.1:{TOKEN_PROXY_PORT}"
    stop_proxy(proc)


AUTH = {"Authorization": "Bearer s3cret"}


def test_bad_requests_get_4xx_with_a_reason(guarded):
    url = guarded
    ok = {"prompt": [5, 6, 7], "max_tokens": 2, "ignore_eos": True}
    cases = [
        ("POST", "/v1/completions", {}, json.dumps(ok), 401, "bearer token"),
        (
            "POST",
            "/v1/completions",
            {"Authorization": "Bearer wrong"},
            json.dumps(ok),
            401,
            "bearer",
        ),
        ("POST", "/v1/completions", AUTH, "{", 400, "not valid JSON"),
        ("POST", "/v1/completions", AUTH, json.dumps({"prompt": [1] * 5000}), 413, "size"),
        ("POST", "/v1/chat/completions", AUTH, json.dumps({"messages": "hi"}), 400, "messages"),
        ("POST", "/programs/release", AUTH, "{}", 400, "needs a program_id"),
        (
            "POST",
            "/programs/release",
            AUTH,
            json.dumps({"program_id": "nobody"}),
            404,
            "no program",
        ),
        ("GET", "/v1/completions", AUTH, None, 405, "Not Allowed"),
        ("GET", "/v1/nothing", AUTH, None, 404, "Not Found"),
    ]
    for method, path, headers, body, status, reason in cases:
        r = httpx.request(method, url + path, headers=headers, content=body, timeout=30)
        assert r.status_code == status, (path, body, r.text)
        assert reason in r.json()["error"]["message"], (path, r.text)
    # the engine's own refusal (prompt longer than its max_model_len) comes back as it was
    long = {"prompt": [5] * 3200, "max_tokens": 2, "program_id": "long"}
    r = httpx.post(url + "/v1/completions", headers=AUTH, content=json.dumps(long), timeout=30)
    assert r.status_code == 400 and "maximum context length" in r.text
    assert httpx.get(url + "/health").status_code == 200  # no token needed to probe health


class _HeldBackend(StubBackend):
    """A backend whose calls finish only when the test says so: the in-progress cases below
    must not depend on how fast an engine is."""

    def __init__(self):
        super().__init__("held", capacity_tokens=100_000)
        self.calls: list = []

    def submit(self, req, on_done, on_failure):
        self.calls.append((req, on_done))

    def finish_all(self):
        from thundersim.core.backend import Usage

        for req, on_done in self.calls:
            body = json.dumps({"usage": {"prompt_tokens": req.prompt_tokens}}).encode()
            on_done(Usage(req.prompt_tokens, 0, 1, response=body))
        self.calls.clear()


def test_a_program_has_one_call_at_a_time_and_a_released_id_is_not_reused():
    from aiohttp import web

    from thundersim.core.policy import PolicyOptions
    from thundersim.live.serve import Proxy, ServeConfig
    from thundersim.policies import make_policy

    async def main():
        backend = _HeldBackend()
        proxy = Proxy(make_policy("vllm", PolicyOptions()), [backend], ServeConfig(port=0))
        await proxy.start()
        runner = web.AppRunner(proxy.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        body = {"prompt": [5, 6, 7], "max_tokens": 4, "program_id": "twice"}
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                first = asyncio.create_task(c.post("/v1/completions", json=body))
                while not backend.calls:  # until the proxy has sent it to the backend
                    await asyncio.sleep(0.01)
                second = await c.post("/v1/completions", json=body)
                busy = await c.post("/programs/release", json={"program_id": "twice"})
                backend.finish_all()
                done = await first
                released = await c.post("/programs/release", json={"program_id": "twice"})
                again = await c.post("/v1/completions", json=body)
                twice = await c.post("/programs/release", json={"program_id": "twice"})
                return second, busy, done, released, again, twice
        finally:
            await runner.cleanup()
            await proxy.stop()

    second, busy, done, released, again, twice = asyncio.run(main())
    assert second.status_code == 409 and "in progress" in second.json()["error"]["message"]
    assert busy.status_code == 409 and "in progress" in busy.json()["error"]["message"]
    assert done.status_code == 200 and done.headers["x-thundersim-backend"] == "0"
    assert released.status_code == 200 and released.json()["status"] == "DONE"
    assert again.status_code == 409 and "released" in again.json()["error"]["message"]
    assert twice.status_code == 409 and "already released" in twice.json()["error"]["message"]


class _Canary(BaseHTTPRequestHandler):
    hits: list[str] = []

    def _hit(self):
        _Canary.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    do_GET = do_POST = _hit

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_proxy_forwards_only_to_its_configured_backend(guarded, engine):
    """Nothing a client sends (body fields, headers, path tricks) can point the proxy at
    another server: a canary listening on another port never hears from it."""
    port = _free_port()
    canary = HTTPServer(("127.0.0.1", port), _Canary)
    threading.Thread(target=canary.serve_forever, daemon=True).start()
    evil = f"http://127.0.0.1:{port}"
    try:
        before = engine_counter(engine.url, "vllm:prompt_tokens_total")
        body = {
            "prompt": [9, 10, 11, 12],
            "max_tokens": 2,
            "program_id": "p-canary",
            "model": evil,
            "base_url": evil,
            "url": evil + "/v1/completions",
            "backend": evil,
            "api_base": evil,
            "extra_body": {"base_url": evil},
        }
        headers = dict(AUTH, Host=f"127.0.0.1:{port}", **{"X-Forwarded-Host": f"127.0.0.1:{port}"})
        r = httpx.post(f"{guarded}/v1/completions", headers=headers, json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["x-thundersim-backend"] == "0"
        r = httpx.post(
            f"{guarded}//127.0.0.1:{port}/v1/completions", headers=AUTH, json=body, timeout=30
        )
        assert r.status_code in (404, 409)
        time.sleep(0.5)
        assert _Canary.hits == []
        # the request did reach the configured engine
        assert engine_counter(engine.url, "vllm:prompt_tokens_total") >= before + 4
    finally:
        canary.shutdown()
