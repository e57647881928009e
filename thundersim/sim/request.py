"""EngineRequest: one call inside the simulated engine (vLLM's vllm/v1/request.py `Request`).

Its progress is one model, as in vLLM: `num_computed_tokens` of `num_tokens` (the prompt plus
the output generated so far); the rest of the engine reads nothing else. Skipping ahead
(thundersim.sim.decoding) is hidden behind it: a decoding request counts its computed tokens
from the decode group's clock, so a run of k pure-decode iterations advances every decoding
request by k without touching any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from thundersim.core.backend import Request, Usage


class DecodeClock(Protocol):
    """What a decoding request reads its progress from (thundersim.sim.decoding.DecodeGroup)."""

    iteration: int


class EngineRequest:
    """One request in the engine: the call, its callback, its KV identity and its progress."""

    __slots__ = (
        "_computed",
        "_decode_clock",
        "_num_tokens",
        "chain_key",
        "known_tokens",
        "num_scheduled_tokens",
        "on_done",
        "prefix_blocks",
        "prefix_key",
        "request",
        "request_id",
        "usage",
    )

    def __init__(
        self,
        request: Request,
        on_done: Callable[[Usage], None],
        request_id: int,
        block_size: int,
        now: float,
    ):
        self.request = request
        self.on_done = on_done
        self.request_id = request_id  # submission order on this replica (FCFS ties, heap ties)
        # KV identity: the shared system prompt's chain (its full blocks), then the program's.
        self.prefix_key = ("prefix", request.prefix_id) if request.prefix_id else None
        self.prefix_blocks = request.prefix_tokens // block_size if request.prefix_id else 0
        self.chain_key = request.chain_id
        # Tokens this program has computed before (earlier calls, or this one before a
        # preemption): computing them again is recompute, not new prefill.
        self.known_tokens = request.known_tokens
        self.usage = Usage(
            prompt_tokens=request.prompt_tokens,
            cached_tokens=-1,
            output_tokens=0,
            submit_time=now,
        )
        self.num_scheduled_tokens = 0  # tokens scheduled in the current iteration
        self._num_tokens = request.prompt_tokens  # stored while not decoding
        # Computed tokens; while decoding, counted from the decode clock's origin.
        self._computed = 0
        self._decode_clock: DecodeClock | None = None

    # ---- progress ------------------------------------------------------------------------
    @property
    def num_computed_tokens(self) -> int:
        """Tokens whose KV is computed."""
        clock = self._decode_clock
        return self._computed if clock is None else self._computed + clock.iteration

    @property
    def num_tokens(self) -> int:
        """Prompt plus output so far. A decoding request has computed all but its newest."""
        if self._decode_clock is None:
            return self._num_tokens
        return self.num_computed_tokens + 1

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.request.prompt_tokens

    @property
    def max_tokens(self) -> int:
        """Output tokens the call asks for: it finishes when it has generated them."""
        return self.request.output_tokens

    @property
    def is_decoding(self) -> bool:
        return self._decode_clock is not None

    def start_at(self, num_computed_tokens: int) -> None:
        """Admitted with this many tokens from the prefix cache (0 after a preemption's
        restart finds none)."""
        self._computed = num_computed_tokens

    def compute_scheduled(self) -> None:
        """The iteration computed the tokens scheduled for it."""
        self._computed += self.num_scheduled_tokens
        self.num_scheduled_tokens = 0

    def append_output_token(self) -> None:
        """A prefill finished: the iteration sampled a token."""
        self._num_tokens += 1

    def preempted(self) -> None:
        """Preempted by recompute: its KV is gone, its output tokens stay (to recompute)."""
        self._computed = 0
        self.num_scheduled_tokens = 0

    def join_decode(self, clock: DecodeClock) -> None:
        """From now on it grows by one token per iteration of `clock`."""
        self._computed -= clock.iteration
        self._decode_clock = clock

    def leave_decode(self) -> None:
        """Back to explicit counts (it finished or is preempted)."""
        computed = self.num_computed_tokens
        self._computed = computed
        self._num_tokens = computed + 1
        self._decode_clock = None
