"""What `thundersim serve` accepts from an agent: the completion request it forwards (its
`program_id`, and checks that a program's call continues one context), the release request, and
the OpenAI-style error it answers a refused one with. No I/O here: the proxy (serve.py) reads
the bytes and hands them over."""

from __future__ import annotations

import json
import math

from aiohttp import web

from thundersim.traces.converters._common import estimate_tokens

# provenance: estimate — chat-template tokens per message (role markers) before the engine
# tokenizes the prompt; the program's context is corrected from the call's usage
MESSAGE_OVERHEAD = 4
# provenance: estimate — deeper than any real request (a tool's JSON schema nests a few tens of
# levels); a body nested deeper is refused before anything walks it recursively
MAX_JSON_DEPTH = 100
# provenance: definition — the largest int32: token ids and max_tokens above it are no real
# request (engines hold token ids as int32)
MAX_INT = 2**31 - 1
# sampling fields the proxy checks are numbers (null is the engine's default); NaN or an
# infinity anywhere in the body is refused with its field's path
NUMBER_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)
INTEGER_FIELDS = ("top_k", "seed")


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
                content = " ".join(str(part.get("text") or "") for part in content)
            n += estimate_tokens(content or "") + MESSAGE_OVERHEAD
        return max(n, 1)
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return max(estimate_tokens(prompt), 1)
    return max(len(prompt), 1)


def load_json(raw: bytes):
    """The parsed body, or BadRequest: not JSON, nested deeper than MAX_JSON_DEPTH, an integer
    longer than Python converts (4,300 digits), or NaN/an infinity (with the field's path)."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"body is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError; an over-long integer
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    _check_tree(body)
    return body


def _check_tree(body) -> None:
    """Walk the body without recursion: its depth, and no non-finite number anywhere (Python's
    json reads NaN, Infinity and 1e400; they are not JSON and no engine field takes them)."""
    if type(body) is not dict and type(body) is not list:
        return  # a bare value: the callers refuse anything but an object
    stack = [(body, None, 1)]  # (value, its path as (parent path, key), depth)
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            at = _path(where)
            at = at if len(at) <= 60 else at[:60] + "..."
            raise BadRequest(f"body is nested too deeply at {at} (at most {MAX_JSON_DEPTH} levels)")
        # json.loads makes exact dicts, lists and floats: `type(...) is` is the fast test
        items = value.items() if type(value) is dict else enumerate(value)
        for key, v in items:
            t = type(v)
            if t is dict or t is list:
                stack.append((v, (where, key), depth + 1))
            elif t is float and not math.isfinite(v):
                raise BadRequest(f"{_path((where, key))} must be a finite number, not {v}")


def _path(where) -> str:
    """`messages[0].content` from the walk's (parent, key) chain."""
    keys = []
    while where is not None:
        where, key = where
        keys.append(key)
    out = ""
    for key in reversed(keys):
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "the top level"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_program_id(program_id, max_program_id: int | None = None) -> None:
    """A program_id is a non-empty printable string: it goes back in a response header, where
    CR, LF or NUL would break the reply after the call had run."""
    if not isinstance(program_id, str) or not program_id:
        raise BadRequest("program_id must be a non-empty string")
    if max_program_id is not None and len(program_id) > max_program_id:
        raise BadRequest(f"program_id must be a non-empty string of at most {max_program_id} chars")
    if not program_id.isprintable():
        raise BadRequest("program_id must be printable: no control characters (CR, LF, NUL, ...)")


def _check_messages(msgs) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string role")
        content = m.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise BadRequest(
                f"messages[{i}].content must be a string, null or a list of content parts"
            )
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise BadRequest(
                    f'messages[{i}].content[{j}] must be a content part object (e.g. {{"type": '
                    f'"text", "text": "..."}}), not {type(part).__name__}'
                )


def parse_call(path: str, raw: bytes, max_program_id: int) -> tuple[str | None, dict]:
    """(program_id, body to forward) of a completion request, or BadRequest with the reason.
    Checks everything the proxy itself reads from the body, so that nothing fails once the
    program is created."""
    body = load_json(raw)
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
    if program_id is not None:
        check_program_id(program_id, max_program_id)
    if path.endswith("/chat/completions"):
        _check_messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        ok = (isinstance(prompt, str) and prompt) or (
            isinstance(prompt, list)
            and prompt
            and all(_is_int(t) and 0 <= t <= MAX_INT for t in prompt)
        )
        if not ok:
            raise BadRequest(
                "prompt must be one non-empty string or one list of token ids (a program's "
                "call has one prompt)"
            )
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (not _is_int(v) or not 1 <= v <= MAX_INT):
            raise BadRequest(f"{key} must be a positive integer (at most {MAX_INT})")
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise BadRequest("n must be 1 (a program's call continues one context)")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("stream must be true or false")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("stream_options must be an object")
        if not isinstance(options.get("include_usage", False), bool):
            raise BadRequest("stream_options.include_usage must be true or false")
    for key in NUMBER_FIELDS:
        v = body.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise BadRequest(f"{key} must be a number")
    for key in INTEGER_FIELDS:
        v = body.get(key)
        if v is not None and not _is_int(v):
            raise BadRequest(f"{key} must be an integer")
    return program_id, body


def parse_release(raw: bytes, query_id: str | None) -> str:
    """The program_id of a release request (`?program_id=` or a JSON body), or BadRequest."""
    program_id = query_id
    if program_id is None:
        body = load_json(raw or b"{}")
        program_id = body.get("program_id") if isinstance(body, dict) else None
    if not isinstance(program_id, str) or not program_id:
        raise BadRequest("release needs a program_id (JSON body or ?program_id=)")
    check_program_id(program_id)
    return program_id
