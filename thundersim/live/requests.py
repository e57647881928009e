"""What `thundersim serve` accepts from an agent: the completion request it forwards (its
`program_id`, and checks that a program's call continues one context), the release request, and
the OpenAI-style error it answers a refused one with. No I/O here: the proxy (serve.py) reads
the bytes and hands them over."""

from __future__ import annotations

import json

from aiohttp import web

from thundersim.traces.converters._common import estimate_tokens

# provenance: estimate — chat-template tokens per message (role markers) before the engine
# tokenizes the prompt; the program's context is corrected from the call's usage
MESSAGE_OVERHEAD = 4


class BadRequest(Exception):
    """A request the proxy refuses: its HTTP status and the reason, sent as an OpenAI error."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def error_response(status: int, reason: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": reason, "type": kind, "code": status}}, status=status
    )


def estimate_prompt_tokens(path: str, body: dict) -> int:
    """The prompt's size before the engine tokenizes it: exact for token ids, else 4 characters
    a token plus a few per chat message. The program's context is corrected from usage."""
    if path.endswith("/chat/completions"):
        n = 0
        for m in body["messages"]:
            content = m.get("content")
            if isinstance(content, list):  # content parts: count their text
                content = " ".join(str(part.get("text", "")) for part in content)
            n += estimate_tokens(content or "") + MESSAGE_OVERHEAD
        return max(n, 1)
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return max(estimate_tokens(prompt), 1)
    return max(len(prompt), 1)


def parse_call(path: str, raw: bytes, max_program_id: int) -> tuple[str | None, dict]:
    """(program_id, body to forward) of a completion request, or BadRequest with the reason."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    program_id = body.pop("program_id", None)
    extra = body.pop("extra_body", None)
    if extra is not None:
        if not isinstance(extra, dict):
            raise BadRequest("extra_body must be an object")
        extra = dict(extra)
        if program_id is None:
            program_id = extra.pop("program_id", None)
        extra.pop("program_id", None)
        body.update(extra)  # as the OpenAI client would have merged it
    if program_id is not None and (
        not isinstance(program_id, str) or not 0 < len(program_id) <= max_program_id
    ):
        raise BadRequest(f"program_id must be a non-empty string of at most {max_program_id} chars")
    if path.endswith("/chat/completions"):
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("messages must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest(f"messages[{i}] must be an object with a string role")
    else:
        prompt = body.get("prompt")
        ok = (isinstance(prompt, str) and prompt) or (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
        )
        if not ok:
            raise BadRequest(
                "prompt must be one non-empty string or one list of token ids (a program's "
                "call has one prompt)"
            )
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise BadRequest(f"{key} must be a positive integer")
    if body.get("n", 1) != 1:
        raise BadRequest("n must be 1 (a program's call continues one context)")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("stream must be true or false")
    return program_id, body


def parse_release(raw: bytes, query_id: str | None) -> str:
    """The program_id of a release request (`?program_id=` or a JSON body), or BadRequest."""
    program_id = query_id
    if program_id is None:
        try:
            body = json.loads(raw or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        program_id = body.get("program_id") if isinstance(body, dict) else None
    if not isinstance(program_id, str) or not program_id:
        raise BadRequest("release needs a program_id (JSON body or ?program_id=)")
    return program_id
