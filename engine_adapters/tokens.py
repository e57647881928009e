"""The token ids a live run sends: one book per run, shared by every replica, so that a
program moved to another replica sends the same ids and a shared prefix has the same ids in
every program (the engines' prefix caches then see exactly the trace's sharing)."""

from __future__ import annotations

import zlib

import numpy as np

from thundersim.core.backend import Request

# Token ids are drawn per chunk of positions, so a context can be extended lazily.
_CHUNK = 256  # provenance: definition — any size gives the same ids for a given chunking


class TokenBook:
    """Token ids of every context, shared by all backends of a run: deterministic ids for trace
    input tokens, the engine's own ids for generated ones."""

    def __init__(self, vocab: int, seed: int = 0, reserved: int = 3):
        self.vocab = vocab
        self.seed = seed
        self.reserved = reserved  # pad / bos / eos stay out of prompts
        self._chains: dict[str, list[int]] = {}
        self._prefixes: dict[str, list[int]] = {}

    def _ids(self, key: str, start: int, n: int) -> list[int]:
        crc = zlib.crc32(key.encode())
        out: list[int] = []
        pos = start
        while len(out) < n:
            chunk, offset = divmod(pos, _CHUNK)
            rng = np.random.default_rng([self.seed, crc, chunk])
            ids = rng.integers(self.reserved, self.vocab, size=_CHUNK)
            take = ids[offset : offset + n - len(out)]
            out.extend(int(i) for i in take)
            pos += len(take)
        return out

    def prompt(self, req: Request) -> list[int]:
        prefix: list[int] = []
        if req.prefix_id and req.prefix_tokens:
            prefix = self._prefixes.setdefault(
                req.prefix_id, self._ids(f"prefix:{req.prefix_id}", 0, req.prefix_tokens)
            )[: req.prefix_tokens]
        chain = self._chains.setdefault(req.chain_id, [])
        need = req.prompt_tokens - len(prefix)
        if len(chain) < need:
            chain.extend(self._ids(f"chain:{req.chain_id}", len(chain), need - len(chain)))
        return prefix + chain[:need]

    def add_output(self, req: Request, ids: list[int]) -> None:
        """The engine's generated ids become part of the program's context."""
        chain = self._chains[req.chain_id]
        del chain[req.prompt_tokens - req.prefix_tokens :]
        chain.extend(ids)
