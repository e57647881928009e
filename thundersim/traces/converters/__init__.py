"""Converters from real agent logs into trace schema v1 (``thundersim trace convert``).

One module per format, each with ``convert(paths, ...) -> list[ProgramSpec]``:

- ``swe-agent``       SWE-agent ``.traj`` files, one program per file (swe_agent.py)
- ``mini-swe-agent``  mini-SWE-agent trajectory JSON, one program per file (mini_swe_agent.py)
- ``openai-chat``     OpenAI-style request/response JSONL, one record per LLM call (openai_chat.py)
- ``thundersim-live`` the per-step log of thundersim's live mode (thundersim_live.py)

Token counts come from the log's ``usage`` when it has one; otherwise from ``estimate_tokens``:
4 characters per token, OpenAI's published rule of thumb for English text (no tokenizer is
downloaded at run time, so estimates are approximate; code and non-English text run denser).
Shared prefixes get a stable id hashed from their text, so programs with the same system prompt
share it. Bad input raises ``TraceError`` as ``PATH:LINE: what is wrong (field NAME)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from thundersim.traces.converters import mini_swe_agent, openai_chat, swe_agent, thundersim_live
from thundersim.traces.converters._common import CHARS_PER_TOKEN, estimate_tokens, prefix_id_for
from thundersim.traces.schema import ProgramSpec

__all__ = [
    "CHARS_PER_TOKEN",
    "CONVERTERS",
    "convert",
    "estimate_tokens",
    "prefix_id_for",
]

CONVERTERS: dict[str, Callable[..., list[ProgramSpec]]] = {
    "swe-agent": swe_agent.convert,
    "mini-swe-agent": mini_swe_agent.convert,
    "openai-chat": openai_chat.convert,
    "thundersim-live": thundersim_live.convert,
}


def convert(fmt: str, paths: list[Path], **options) -> list[ProgramSpec]:
    """Run the converter for `fmt` on `paths`; options left as None take the format's default.

    Raises ValueError for an unknown format or an option the format has no use for, and
    TraceError (a ValueError too) for bad input.
    """
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}, expected one of {', '.join(CONVERTERS)}")
    if not paths:
        raise ValueError("no input files")
    fn = CONVERTERS[fmt]
    accepted = inspect.signature(fn).parameters
    kwargs = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in accepted:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} does not apply to --format {fmt}")
        kwargs[key] = value
    return fn([Path(p) for p in paths], **kwargs)
