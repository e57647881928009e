"""DecodeGroup: the decoding requests, advanced together (the engine's skip-ahead state).

vLLM has no counterpart: its scheduler (vllm/v1/core/sched/scheduler.py) walks every running
request each step. Here every decoding request computes exactly one token per iteration, so
the group keeps them relative to one clock (`iteration`) and aggregates what the engine needs
from them: how many there are, their context sum (the iteration's attention and KV read), the
new blocks their next k tokens need, and which finish when. A run of k pure-decode iterations
then costs O(block_size), not O(requests x k). Each request's own progress stays readable as
`EngineRequest.num_computed_tokens` (thundersim.sim.request).
"""

from __future__ import annotations

import heapq

from thundersim.sim.request import EngineRequest


class DecodeGroup:
    """The decoding requests, each holding exactly the blocks its computed tokens fill."""

    __slots__ = (
        "_finish_at",
        "_finish_queue",
        "_offset_sum",
        "_phase_counts",
        "block_size",
        "count",
        "iteration",
    )

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.iteration = 0  # the clock: iterations the engine has run
        self.count = 0  # decoding requests
        # Each member's computed tokens minus `iteration` (its offset): their sum, and how many
        # members have each offset mod block_size (which iterations fill a block for them).
        self._offset_sum = 0
        self._phase_counts = [0] * block_size
        # (finish iteration, request id, request); entries of requests that left stay until
        # popped, and `_finish_at` (request id -> finish iteration of members) tells them apart.
        self._finish_queue: list[tuple[int, int, EngineRequest]] = []
        self._finish_at: dict[int, int] = {}

    def context_tokens(self) -> int:
        """Sum of the members' computed tokens (each one's context this iteration)."""
        return self._offset_sum + self.count * self.iteration

    def add(self, req: EngineRequest) -> None:
        """req has computed all its tokens but the newest: it decodes from now on."""
        offset = req.num_computed_tokens - self.iteration
        finish = self.iteration + req.max_tokens - req.num_output_tokens
        req.join_decode(self)
        self.count += 1
        self._offset_sum += offset
        self._phase_counts[offset % self.block_size] += 1
        self._finish_at[req.request_id] = finish
        heapq.heappush(self._finish_queue, (finish, req.request_id, req))

    def remove(self, req: EngineRequest) -> None:
        """req stops decoding (it finished or is preempted)."""
        offset = req.num_computed_tokens - self.iteration
        req.leave_decode()
        self.count -= 1
        self._offset_sum -= offset
        self._phase_counts[offset % self.block_size] -= 1
        del self._finish_at[req.request_id]

    def new_blocks(self, iterations: int) -> int:
        """New blocks the members need to compute their next `iterations` tokens."""
        if iterations <= 0 or self.count == 0:
            return 0
        B = self.block_size
        if iterations == 1:
            # the common question (can the next iteration run?): only members whose last block
            # is full need one, those at phase (-iteration) mod B
            return self._phase_counts[-self.iteration % B]
        total = 0
        for phase, members in enumerate(self._phase_counts):
            if members:
                fill = (phase + self.iteration) % B  # computed tokens mod B; 0: block full
                total += members * ((fill + iterations - 1) // B + (1 if fill == 0 else 0))
        return total

    def fitting_iterations(self, free: int) -> int:
        """The most iterations whose new blocks fit in `free` blocks: the largest k with
        new_blocks(k) <= free (no bound when nobody decodes). In O(block_size): iteration j of
        a run needs one block for each member whose last block is then full, those at phase
        -(iteration + j) mod B, so the demand repeats every B iterations and each period needs
        one block per member (new_blocks(q*B + r) = q*count + the first r demands)."""
        count = self.count
        if count == 0:
            return 1 << 62
        B = self.block_size
        periods, rem = divmod(free, count)
        counts = self._phase_counts
        phase = -self.iteration
        r = 0  # rem < count, so some r < B overdraws it
        while True:
            rem -= counts[(phase - r) % B]
            if rem < 0:
                return periods * B + r
            r += 1

    def iterations_to_next_finish(self) -> int:
        """Iterations until the earliest finish in the queue. The queue's head may belong to a
        request that left (it is dropped when popped): the run it bounds just ends sooner."""
        return self._finish_queue[0][0] - self.iteration

    def pop_finished(self) -> list[EngineRequest]:
        """The members whose last token the clock has reached, in finish order (still in the
        group: the caller removes them)."""
        queue = self._finish_queue
        if not queue or queue[0][0] > self.iteration:
            return []  # the common case: nobody finishes at this iteration
        done: dict[int, EngineRequest] = {}
        while queue and queue[0][0] <= self.iteration:
            finish, request_id, req = heapq.heappop(queue)
            # a request that left and rejoined with the same finish iteration (preempted and
            # re-admitted meanwhile) has two equal entries: it finishes once
            if self._finish_at.get(request_id) == finish:
                done[request_id] = req
        return list(done.values())
