"""`thundersim serve` refuses what it cannot run with a 4xx and the reason, before it creates a
program: no stub program is left behind by a refused request (issue 14). A stub backend that
answers at once stands in for the engine; no vLLM here."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager

import httpx
import pytest
from typer.testing import CliRunner

from thundersim.cli import app
from thundersim.core.backend import Usage
from thundersim.core.policy import PolicyOptions
from thundersim.core.program import OpenProgram
from thundersim.live.requests import BadRequest, parse_call, parse_release
from thundersim.live.serve import Proxy, ServeConfig, resolve_token
from thundersim.policies import make_policy

from .conftest import StubBackend

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
OK_CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
OK_PROMPT = {"prompt": [5, 6, 7], "max_tokens": 2}


class _EchoBackend(StubBackend):
    """Answers every call on the next loop turn, and remembers what it was sent."""

    def __init__(self):
        super().__init__("echo", capacity_tokens=100_000)
        self.calls: list = []

    def submit(self, req, on_done, on_failure):
        self.calls.append(req)
        body = json.dumps({"usage": {"prompt_tokens": req.prompt_tokens}}).encode()
        usage = Usage(req.prompt_tokens, 0, 1, response=body)
        asyncio.get_running_loop().call_soon(on_done, usage)


@asynccontextmanager
async def serving(config: ServeConfig | None = None):
    """A Proxy on a free port in front of one _EchoBackend: (client, proxy, backend)."""
    from aiohttp import web

    backend = _EchoBackend()
    proxy = Proxy(make_policy("vllm", PolicyOptions()), [backend], config or ServeConfig(port=0))
    await proxy.start()
    runner = web.AppRunner(proxy.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client, proxy, backend
    finally:
        await runner.cleanup()
        await proxy.stop()


def chat(**fields) -> bytes:
    return json.dumps(dict(OK_CHAT, **fields)).encode()


def completion(**fields) -> bytes:
    return json.dumps(dict(OK_PROMPT, **fields)).encode()


DEEP = b'{"messages": [{"role": "user", "content": "x"}], "x": ' + b"[" * 100_000 + b"]" * 100_000
# (path, raw body, a phrase of the reason): each of these was a 500 (or was forwarded) before
BAD = [
    (CHAT, json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "content"),
    (CHAT, json.dumps({"messages": [{"role": "user", "content": {"a": 1}}]}).encode(), "content"),
    (
        CHAT,
        json.dumps({"messages": [{"role": "user", "content": ["hi", "there"]}]}).encode(),
        "messages[0].content[0] must be a content part object",
    ),
    (CHAT, chat(stream=True, stream_options="yes"), "stream_options must be an object"),
    (CHAT, chat(stream=True, stream_options=[1]), "stream_options must be an object"),
    (CHAT, chat(stream=True, stream_options={"include_usage": "y"}), "include_usage"),
    (CHAT, DEEP, "nested too deeply"),
    (CHAT, b'{"messages": ' + b"[" * 150 + b"]" * 150 + b"}", "nested too deeply"),
    (COMPLETIONS, b'{"prompt": "x", "max_tokens": ' + b"7" * 5000 + b"}", "not valid JSON"),
    (COMPLETIONS, b'{"prompt": [' + b"9" * 5000 + b"]}", "not valid JSON"),
    (COMPLETIONS, completion(max_tokens=10**40), "max_tokens must be a positive integer"),
    (COMPLETIONS, completion(prompt=[1, 2**40]), "token ids"),
    (COMPLETIONS, completion(program_id="a\r\nSet-Cookie: x=1"), "program_id must be printable"),
    (COMPLETIONS, completion(program_id="a\nb"), "program_id must be printable"),
    (COMPLETIONS, completion(program_id="a\x00b"), "program_id must be printable"),
    (COMPLETIONS, completion(extra_body={"program_id": "a\rb"}), "program_id must be printable"),
    (COMPLETIONS, completion(n=True), "n must be 1"),
    (COMPLETIONS, completion(n=1.0), "n must be 1"),
    (COMPLETIONS, b'{"prompt": "x", "temperature": NaN}', "temperature must be a finite number"),
    (COMPLETIONS, b'{"prompt": "x", "top_p": Infinity}', "top_p must be a finite number"),
    (COMPLETIONS, b'{"prompt": "x", "temperature": 1e400}', "temperature must be a finite"),
    (COMPLETIONS, b'{"prompt": "x", "max_tokens": NaN}', "max_tokens must be a finite number"),
    (COMPLETIONS, b'{"prompt": "x", "logit_bias": {"5": -Infinity}}', "logit_bias.5 must be"),
    (CHAT, b'{"messages": [{"role": "user", "content": [{"x": NaN}]}]}', "content[0].x must"),
    (COMPLETIONS, completion(max_tokens=True), "max_tokens must be a positive integer"),
    (COMPLETIONS, completion(max_completion_tokens=False), "max_completion_tokens must be"),
    (COMPLETIONS, completion(temperature=True), "temperature must be a number"),
    (COMPLETIONS, completion(temperature="0.5"), "temperature must be a number"),
    (COMPLETIONS, completion(top_k=1.5), "top_k must be an integer"),
    (COMPLETIONS, completion(seed=True), "seed must be an integer"),
]


@pytest.mark.parametrize(("path", "raw", "reason"), BAD)
def test_inputs_that_were_500s_are_refused_with_the_field(path, raw, reason):
    with pytest.raises(BadRequest) as info:
        parse_call(path, raw, max_program_id=256)
    assert info.value.status == 400
    assert reason in info.value.reason, info.value.reason


def test_well_formed_requests_still_parse():
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]
    body = {"messages": [{"role": "user", "content": parts}, {"role": "assistant"}]}
    raw = json.dumps(dict(body, n=1, temperature=0, top_p=0.9, seed=3, stream_options=None))
    pid, parsed = parse_call(CHAT, raw.encode(), 256)
    assert pid is None and parsed["n"] == 1
    raw = completion(program_id="agent 7 · é", stream=True, stream_options={"include_usage": True})
    pid, parsed = parse_call(COMPLETIONS, raw, 256)
    assert pid == "agent 7 · é" and parsed["stream_options"] == {"include_usage": True}
    # a tool's JSON schema nests well within the limit
    schema: dict = {"type": "string"}
    for _ in range(30):
        schema = {"type": "object", "properties": {"a": schema}}
    parse_call(CHAT, chat(tools=[{"type": "function", "function": {"parameters": schema}}]), 256)
    assert parse_release(b'{"program_id": "a"}', None) == "a"
    with pytest.raises(BadRequest, match="printable"):
        parse_release(b"", "a\r\nb")
    with pytest.raises(BadRequest, match="nested too deeply"):
        parse_release(b"[" * 100_000, None)


def test_a_refused_request_leaves_no_program_and_reaches_no_backend():
    """Each BAD body through the running proxy: 400 with an OpenAI-style error, no program
    (20,000 such stubs, never reaped, slowed every later call 15x), nothing sent on; then a
    good request still runs."""

    async def main():
        async with serving() as (client, proxy, backend):
            answers = []
            for path, raw, _ in BAD:
                r = await client.post(path, content=raw)
                answers.append((path, raw[:60], r.status_code, r.json()))
            # a known program between calls is not touched by its refused call either
            ok = await client.post(COMPLETIONS, content=completion(program_id="p1"))
            refused = await client.post(COMPLETIONS, content=completion(program_id="p1", n=True))
            listed = (await client.get("/programs", params={"all": "1"})).json()["programs"]
            again = await client.post(COMPLETIONS, content=completion(program_id="p1"))
            return answers, ok, refused, listed, again, len(backend.calls)

    answers, ok, refused, listed, again, sent = asyncio.run(main())
    for path, raw, status, body in answers:
        assert status == 400, (path, raw, body)
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == 400
        assert body["error"]["message"]
    assert ok.status_code == 200 and refused.status_code == 400
    assert [(p["program_id"], p["calls"]) for p in listed] == [("p1", 1)]
    assert again.status_code == 200 and sent == 2  # only the good calls ran


def test_a_program_that_never_got_its_call_is_reaped():
    """The safety net: a program created without its call being queued is released by the
    reaper, not left WAITING forever."""

    async def main():
        async with serving() as (client, proxy, backend):
            p = OpenProgram("orphan", len(proxy.cluster.programs))
            proxy.feed.arrive_open(p)
            r = await client.post(COMPLETIONS, content=completion(program_id="busy"))
            assert r.status_code == 200
            proxy._reap_idle()
            return dict(proxy.cluster.unfinished), p.status.name

    unfinished, status = asyncio.run(main())
    assert "orphan" not in unfinished and status == "DONE"
    assert "busy" in unfinished  # between calls (ACTING), not idle long enough to release


def test_a_program_id_with_cr_lf_is_refused_before_the_call_runs():
    async def main():
        async with serving() as (client, proxy, backend):
            r = await client.post(COMPLETIONS, content=completion(program_id="evil\r\nX-A: b"))
            return r, len(backend.calls), list(proxy.cluster.programs)

    r, sent, programs = asyncio.run(main())
    assert r.status_code == 400 and "printable" in r.json()["error"]["message"]
    assert sent == 0 and programs == []


def test_a_non_ascii_authorization_header_gets_401():
    async def main():
        async with serving(ServeConfig(port=0, token="s3cret")) as (client, proxy, backend):
            out = []
            for value in ("Bearer sécret".encode(), b"Bearer \xff\xfe", b"Bearer s3cret"):
                r = await client.post(
                    COMPLETIONS, content=completion(), headers={"Authorization": value}
                )
                out.append((r.status_code, r.json()))
            return out

    (s1, b1), (s2, b2), (s3, _) = asyncio.run(main())
    assert s1 == 401 and "bearer token" in b1["error"]["message"]
    assert s2 == 401 and "bearer token" in b2["error"]["message"]
    assert s3 == 200


@pytest.mark.parametrize("token", ["sécret", "two words", "tab\tbed", "\u2028"])
def test_a_token_no_client_can_send_is_refused_at_start_up(token):
    with pytest.raises(ValueError, match="visible ASCII"):
        ServeConfig(token=token)
    result = CliRunner().invoke(
        app, ["serve", "--backends", "http://127.0.0.1:9", "--token", token, "--port", "0"]
    )
    assert result.exit_code == 2
    assert "visible ASCII" in result.output and token not in result.output


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    f = tmp_path / "token"
    f.write_text("s3cret-from-file\n")
    assert resolve_token("", f) == "s3cret-from-file"
    assert resolve_token("inline", None) == "inline"
    assert resolve_token("", None) is None
    with pytest.raises(ValueError, match="not both"):
        resolve_token("inline", f)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        resolve_token("", tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot read"):
        resolve_token("", tmp_path / "missing")
    # the CLI: a bad token from the file or the environment is refused the same way
    bad = tmp_path / "bad"
    bad.write_text("pässword\n")
    args = ["serve", "--backends", "http://127.0.0.1:9", "--port", "0"]
    result = CliRunner().invoke(app, [*args, "--token-file", str(bad)])
    assert result.exit_code == 2 and "visible ASCII" in result.output
    monkeypatch.setenv("THUNDERSIM_TOKEN", "pässword")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "visible ASCII" in result.output
    result = CliRunner().invoke(app, [*args, "--token-file", str(f)])
    assert result.exit_code == 2 and "not both" in result.output


def test_help_says_to_keep_the_token_out_of_ps():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--token-file" in text and "THUNDERSIM_TOKEN" in text and "ps" in text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
