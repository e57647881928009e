"""The program: the paper's P = <ID, c, T, L, tau, s>, the unit the scheduler sees.

A program is one agent workflow: LLM call, tool call, LLM call ... Its context c grows with
every call; its KV cache lives on one backend L at a time; its phase tau says whether it is
reasoning (an LLM call is pending or running) or acting (a tool is running); its status s says
whether the scheduler lets it run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from thundersim.traces.schema import ProgramSpec


class Phase(IntEnum):
    REASONING = 0  # an LLM call is ready (perhaps withheld by the policy) or running
    ACTING = 1  # a tool call is running; the KV cache sits idle


class Status(IntEnum):
    """Ordered like vLLM's RequestStatus: everything >= DONE is final."""

    WAITING = 0  # arrived, not yet admitted by the policy
    ACTIVE = 1  # admitted: its requests go to its backend
    PAUSED = 2  # withheld by the policy; its KV is left to the engine's LRU eviction
    DONE = 3

    @property
    def is_finished(self) -> bool:
        return self >= Status.DONE


@dataclass(frozen=True, slots=True)
class Call:
    """One LLM call as the Cluster sends it: from the trace (replay) or from a client (serve)."""

    prompt_tokens: int  # context length once the call's new input is appended
    output_tokens: int  # tokens it generates (a served call: its max_tokens, or an estimate)
    tool: str = ""  # the tool run after it ("" = none: the final answer)
    epoch: int = 0  # context resets before it (a reset starts a new KV chain)
    # A client's OpenAI request that a live backend forwards as is (thundersim.core.backend.Forward);
    # None: the backend makes the prompt from the token counts.
    forward: Any = None


class Program:
    """Mutable state of one program. Only the Cluster and the Driver write it; policies read it
    through `ProgramView`. This one replays a trace's ProgramSpec; `OpenProgram` is a program
    whose calls come from a live agent."""

    __slots__ = (
        "acting_since",
        "arrival_seq",
        "arrival_time",
        "backend",
        "call_ready_time",
        "call_sent_time",
        "context_tokens",
        "envs",
        "finish_time",
        "first_response_time",
        "id",
        "in_flight",
        "index",
        "last_backend",
        "last_usage",
        "peak_context",
        "pending",
        "phase",
        "prefix_id",
        "prefix_tokens",
        "ready_time",
        "spec",
        "status",
        "step",
        "view",
        "workload",
    )

    def __init__(self, spec: ProgramSpec | None, index: int):
        self.spec = spec
        if spec is not None:
            self.id = spec.id
            self.workload = spec.workload
            self.prefix_id = spec.prefix_id
            self.prefix_tokens = spec.prefix_tokens
            self.peak_context = spec.peak_context
        self.index = index  # position in the trace (or arrival order): a stable tie-breaker
        # Order of arrival in its Cluster (set by Cluster.arrive): the order `ClusterView.programs`
        # lists programs in, so an index that is not kept in that order can be sorted back to it.
        self.arrival_seq = index
        self.context_tokens = self.prefix_tokens  # c: tokens of KV the program would hold
        self.backend: int | None = None  # L
        self.phase = Phase.REASONING
        self.status = Status.WAITING
        self.step = 0  # index of the next (or current) LLM call
        self.pending = False  # its next LLM call is ready and not yet sent to a backend
        self.in_flight = False  # an LLM call is running on its backend
        self.acting_since: float | None = None
        self.arrival_time: float | None = None
        self.ready_time: float | None = None  # environment prepared, first call ready
        self.first_response_time: float | None = None
        self.finish_time: float | None = None
        self.call_ready_time = 0.0  # when the current LLM call became ready
        self.call_sent_time = 0.0  # when the Cluster sent it to a backend (after any hold)
        self.last_usage = None  # Usage of the last finished call, until its tool is done
        self.last_backend: int | None = None  # where its KV was last computed
        self.envs: tuple = ()  # T: tool environments (the tool resource manager fills it)
        self.view = ProgramView(self)

    @property
    def n_steps(self) -> int | None:
        """Calls in the whole program (None: not known in advance, as for a live agent)."""
        return len(self.spec.steps)

    def has_call(self, i: int) -> bool:
        return i < len(self.spec.steps)

    def call(self, i: int) -> Call:
        spec = self.spec
        step = spec.steps[i]
        return Call(spec.prompt_tokens(i), step.output_tokens, step.tool, spec.epoch(i))

    # call(i)'s prompt length and epoch without building the Call (read on every event)
    def prompt_tokens_of(self, i: int) -> int:
        return self.spec.prompt_tokens(i)

    def epoch_of(self, i: int) -> int:
        return self.spec.epoch(i)

    def next_prompt_tokens(self) -> int:
        """Context length of the next LLM call (what it will hold once prefilled)."""
        return self.prompt_tokens_of(self.step) if self.has_call(self.step) else 0

    def __repr__(self) -> str:
        return (
            f"Program({self.id}, step {self.step}/{self.n_steps}, c={self.context_tokens}, "
            f"L={self.backend}, {self.phase.name}, {self.status.name})"
        )


class OpenProgram(Program):
    """A program whose calls arrive one at a time from a live agent (thundersim serve): nothing
    is known ahead, its context grows from what each call's usage reports."""

    __slots__ = ("_calls", "n_calls")

    def __init__(self, program_id: str, index: int, workload: str = "serve"):
        self.id = program_id
        self.workload = workload
        self.prefix_id = None
        self.prefix_tokens = 0
        self.peak_context = 0
        # Only the current call and the one before it are kept (the Cluster reads the previous
        # call's epoch, the Recorder its tool): an agent of 10,000 calls holds two requests'
        # bodies, not 10,000.
        self._calls: dict[int, Call] = {}
        self.n_calls = 0
        super().__init__(None, index)

    @property
    def n_steps(self) -> int | None:
        return None

    def has_call(self, i: int) -> bool:
        return i < self.n_calls

    def call(self, i: int) -> Call:
        return self._calls[i]

    def prompt_tokens_of(self, i: int) -> int:
        return self._calls[i].prompt_tokens

    def epoch_of(self, i: int) -> int:
        return self._calls[i].epoch

    def add_call(self, call: Call) -> None:
        """The agent's next call (the Cluster is told with `request`)."""
        if self.n_calls != self.step:
            raise RuntimeError(f"{self!r} already has call {self.step}")
        self._calls[self.n_calls] = call
        self._calls.pop(self.n_calls - 2, None)
        self.n_calls += 1


class ProgramView:
    """Read-only window on a Program for policies: attributes, no setters. Only what a live
    scheduler can know: not the number of calls a program will make (a live agent does not say
    in advance), nor the lengths of calls it has not yet sent."""

    __slots__ = ("_p",)

    def __init__(self, program: Program):
        self._p = program

    id = property(lambda s: s._p.id)
    index = property(lambda s: s._p.index)
    arrival_seq = property(lambda s: s._p.arrival_seq)  # position in `ClusterView.programs`
    workload = property(lambda s: s._p.workload)
    prefix_id = property(lambda s: s._p.prefix_id)
    prefix_tokens = property(lambda s: s._p.prefix_tokens)
    # The prompt of the call that is ready or running (0 otherwise: a scheduler cannot know a
    # call's new input before the agent has produced it).
    next_prompt_tokens = property(
        lambda s: s._p.next_prompt_tokens() if s._p.pending or s._p.in_flight else 0
    )
    last_backend = property(lambda s: s._p.last_backend)
    context_tokens = property(lambda s: s._p.context_tokens)
    backend = property(lambda s: s._p.backend)
    phase = property(lambda s: s._p.phase)
    status = property(lambda s: s._p.status)
    step = property(lambda s: s._p.step)
    pending = property(lambda s: s._p.pending)
    in_flight = property(lambda s: s._p.in_flight)
    acting_since = property(lambda s: s._p.acting_since)
    arrival_time = property(lambda s: s._p.arrival_time)
    first_response_time = property(lambda s: s._p.first_response_time)
    # Its tool environments are prepared (T): a program waiting for disk or ports is not.
    env_ready = property(lambda s: all(e.ready for e in s._p.envs))
    current_tool = property(
        lambda s: (
            s._p.call(s._p.step - 1).tool if s._p.phase is Phase.ACTING and s._p.step > 0 else None
        )
    )

    def __repr__(self) -> str:
        return f"View{self._p!r}"
