"""Local vLLM replicas for laptops and CI: a tiny generated model (config only, dummy weights,
nothing downloaded) served by real vLLM OpenAI servers, started and stopped by their PIDs.

The recipe is the one measured on these CPU machines (../shared/VLLM_CPU.md): start the server
as a module (`python -m vllm.entrypoints.openai.api_server`), `--load-format dummy`,
`--skip-tokenizer-init` so prompts are token ids (prefix caching is then exact),
`--enable-prefix-caching --enforce-eager`, `--num-gpu-blocks-override` to cap the KV pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# A 2-layer Llama small enough for 2 CPU cores (VLLM_CPU.md's measured configuration).
# provenance: measured — ../shared/VLLM_CPU.md, the configuration served on these CPU machines
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 2048,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}
TINY_VOCAB = TINY_LLAMA["vocab_size"]
TINY_MAX_LEN = 4096  # provenance: definition — TINY_LLAMA's max_position_embeddings
# provenance: measured — vLLM's CPU backend uses 128-token blocks (../shared/VLLM_CPU.md)
CPU_BLOCK_SIZE = 128


# A one-line template is enough for real agents' message lists; a model this small has no
# chat format of its own to imitate.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] if m['content'] is string "
    "else '' }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0/1/2, as in TINY_LLAMA


# The corpus's vocabulary, drawn in this order by _corpus (changing it changes the tokenizer).
_CORPUS_TEXT = (
    "def return import class self for in if else elif while try except with as from print "
    "open read write file path error test pytest assert git diff patch bash ls cd grep sed "
    "cat python json http get post user assistant system tool call result the a of to and is "
    "that it this value list dict str int none true false"
)
_CORPUS_WORDS = _CORPUS_TEXT.split()
_CORPUS_PUNCT = list("()[]{}:.,=+-*/_<>'\"#\n ")


def _corpus(n_lines: int = 4000):
    """Deterministic training text: code- and shell-like lines, the content agents send."""
    words, punct = _CORPUS_WORDS, _CORPUS_PUNCT
    state = 12345
    for _ in range(n_lines):
        line = []
        for _ in range(12):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            line.append(words[state % len(words)] if state % 3 else punct[state % len(punct)])
        yield " ".join(line)


def write_tiny_tokenizer(folder: Path) -> None:
    """A byte-level BPE with exactly TINY_VOCAB ids (so every id the model can generate
    decodes), pad/bos/eos at 0/1/2, and a chat template: what `/v1/chat/completions` needs.
    Built offline with `tokenizers`; nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    missing = TINY_VOCAB - tok.get_vocab_size()
    if missing > 0:  # a small corpus can run out of merges: fill the id space
        tok.add_tokens([f"<extra_{i}>" for i in range(missing)])
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "model_max_length": TINY_MAX_LEN,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_tiny_model(folder: Path, tokenizer: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA, indent=2))
    if tokenizer and not (folder / "tokenizer.json").exists():
        write_tiny_tokenizer(folder)
    return folder


def vllm_python() -> str:
    """The interpreter that has vllm: $THUNDERSIM_VLLM_PYTHON, the project's .venv-vllm, or this
    one (vLLM's pins are heavy, so `make` keeps it in a venv of its own)."""
    env = os.environ.get("THUNDERSIM_VLLM_PYTHON")
    if env:
        return env
    local = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


@dataclass
class Replica:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class LocalEngines:
    """Start N servers, wait until healthy, stop them by PID (also on failure)."""

    replicas: int = 1  # provenance: definition — one server unless asked
    port: int = 8100  # provenance: definition — the README's examples' first port
    kv_blocks: int | None = None
    model: Path | None = None
    # With a tokenizer in the model folder the servers also answer /v1/chat/completions (what
    # real agents call through `thundersim serve`); without one prompts must be token ids.
    chat: bool = False
    workdir: Path = field(default_factory=lambda: Path(".thundersim-engines"))
    extra_args: tuple[str, ...] = ()
    # The CPUs the servers run on (a list such as "1" or "2-7,9"), None = wherever the OS and
    # vLLM put them. vllm-cpu's worker busy-polls its shared-memory queue for 1 s after every
    # step (shm_broadcast.MessageQueue, busy_loop_s=1) and binds its OpenMP thread to a core of
    # its own, so a proxy or client sharing those cores waits for a CPU between the engine's
    # slices: `serve` in front of an unbound engine on 2 cores stalls for up to a second and
    # runs down to a fraction of direct calls' throughput, bound to one core it keeps up
    # (experiments/bench_serve_rotation.py, figures in experiments/results/serve_rotation.json).
    cpus: str | None = None
    started: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        # a bad CPU list is refused here, before anything is written or started
        self._bind = None if self.cpus is None else parse_cpus(self.cpus)

    @property
    def max_model_len(self) -> int:
        """vLLM refuses to start if one request of max length cannot fit in the KV pool."""
        if self.kv_blocks:
            return min(TINY_MAX_LEN, (self.kv_blocks - 1) * CPU_BLOCK_SIZE)  # one block spare
        return TINY_MAX_LEN

    def command(self, model: Path, port: int) -> list[str]:
        cmd = [
            vllm_python(),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load-format",
            "dummy",
            "--enable-prefix-caching",
            "--enforce-eager",
            "--max-model-len",
            str(self.max_model_len),
            "--dtype",
            "bfloat16",
            "--enable-prompt-tokens-details",
        ]
        if not self.chat:
            cmd.append("--skip-tokenizer-init")
        if self.kv_blocks:
            cmd += ["--num-gpu-blocks-override", str(self.kv_blocks)]
        return cmd + list(self.extra_args)

    def start(self, timeout_s: float = 240.0) -> list[Replica]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        model = self.model or write_tiny_model(
            self.workdir / ("tiny-llama-chat" if self.chat else "tiny-llama"), tokenizer=self.chat
        )
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_CACHE_ROOT", str((self.workdir / "cache").resolve()))
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str((self.workdir / "inductor").resolve()))
        bind = self._bind
        if self.cpus is not None:
            # vLLM binds its worker's OpenMP threads itself; give it the same CPUs, else its
            # "auto" binding reserves one of them for a scheduler that is already there
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", self.cpus)
        try:
            for i in range(self.replicas):
                port = self.port + i
                log = self.workdir / f"replica-{i}.log"
                proc = subprocess.Popen(
                    self.command(model, port),
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own process group: stop() reaches its workers
                    # every process it starts inherits the CPU set (API server, EngineCore,
                    # worker)
                    preexec_fn=None if bind is None else (lambda: os.sched_setaffinity(0, bind)),
                )
                self.started.append(Replica(f"http://127.0.0.1:{port}", proc, log))
            deadline = time.monotonic() + timeout_s
            for r in self.started:
                wait_healthy(r, deadline)
                warm_up(r)
        except BaseException:
            self.stop()
            raise
        return self.started

    def stop(self) -> None:
        for r in self.started:
            stop_process(r.process)
        self.started.clear()

    def __enter__(self) -> list[Replica]:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_cpus(text: str) -> set[int]:
    """CPU ids from a list such as "1", "0,2" or "2-5,8"; each must be one this process may
    use (else the engine would start on none of them, or fail inside vLLM's binding)."""
    ids: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            ids.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"--cpus {text!r}: expected CPU ids such as 1 or 0,2-3") from None
    allowed = os.sched_getaffinity(0)
    if not ids or not ids <= allowed:
        raise ValueError(
            f"--cpus {text!r}: CPUs {sorted(ids - allowed) or '(none)'} are not among this "
            f"machine's usable CPUs {sorted(allowed)}"
        )
    return ids


def wait_healthy(r: Replica, deadline: float) -> None:
    while time.monotonic() < deadline:
        if r.process.poll() is not None:
            tail = r.log.read_text()[-2000:]
            raise RuntimeError(f"vLLM at {r.url} exited ({r.process.returncode}):\n{tail}")
        try:
            if httpx.get(f"{r.url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"vLLM at {r.url} not healthy in time; log: {r.log}")


def warm_up(r: Replica) -> None:
    """One sampled request on a fresh server before anyone else's. Measured here (vllm-cpu
    0.32): when the first request a CPU server ever runs is a few-token prompt with sampling,
    its worker dies with SIGILL; after any longer first request every size works."""
    model = httpx.get(f"{r.url}/v1/models", timeout=10).json()["data"][0]["id"]
    body = {"model": model, "prompt": list(range(3, 259)), "max_tokens": 2, "ignore_eos": True}
    httpx.post(f"{r.url}/v1/completions", json=body, timeout=120).raise_for_status()


def stop_process(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the server's process group, SIGKILL after a grace period."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
