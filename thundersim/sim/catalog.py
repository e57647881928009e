"""Hardware and model catalog: the physical facts a replica's capacity and speed come from.

Every number here is tagged with its provenance (thundersim/lab/provenance.py): published specs
(datasheets, config.json, vLLM defaults), the memory each GPU actually reports (nvidia-smi, in
MiB: HBM is sized in GiB-class units, not the datasheet's round GB), and two named estimates.
Nothing is fitted to the paper's results. A `Setup` (GPU x model x TP x dtypes) gives a
replica's KV capacity:

    kv_capacity_tokens = (n_gpus * gpu_memory * utilization - weights - reserve) / kv_bytes_per_token

which is how vLLM sizes its block pool after its memory profiling run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GiB = 1024**3  # provenance: definition — IEC gibibyte
MiB = 1024**2  # provenance: definition — IEC mebibyte (nvidia-smi's "MiB")
GB = 1000**3  # provenance: definition — SI gigabyte (datasheets' "GB")

# provenance: spec — bytes per element of each number format (IEEE 754 fp32/fp16, bfloat16, OCP FP8,
# int8, int4; OCP Microscaling MXFP4: a 4-bit E2M1 element plus one 8-bit E8M0 scale per block of
# 32, 4.25 bits, the format gpt-oss ships its expert weights in)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5, "mxfp4": 0.53125}


@dataclass(frozen=True, slots=True)
class GPU:
    """One accelerator. Throughputs are dense (no sparsity) tensor-core peaks."""

    name: str
    memory_bytes: float
    hbm_bandwidth: float  # bytes/s
    bf16_flops: float  # FLOP/s
    fp8_flops: float | None  # None: no FP8 tensor cores (FP8 weights run at BF16 compute)
    source: str

    def flops_for(self, dtype: str) -> float:
        if dtype == "fp8" and self.fp8_flops is not None:
            return self.fp8_flops
        return self.bf16_flops


@dataclass(frozen=True, slots=True)
class Model:
    """A decoder-only transformer, dense or mixture-of-experts, from its published config.json.

    `expert_params` is the parameter count of ONE routed expert summed over all MoE layers, so
    that the bytes read per iteration can follow how many experts a batch touches.
    """

    name: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    total_params: float
    active_params: float
    n_experts: int = 0  # provenance: definition — routed experts per MoE layer (0 = dense)
    experts_per_token: int = 0  # provenance: definition — none for a dense model
    expert_params: float = 0.0  # provenance: definition — none for a dense model
    # provenance: estimate — a fallback window (Llama-3.1's 128K) for a model that gives none; every
    # catalogued model sets its own
    max_context: int = 131072
    source: str = ""

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def kv_bytes_per_token(self, kv_dtype: str) -> float:
        """2 (K and V) x layers x KV heads x head dim x bytes per element."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * DTYPE_BYTES[kv_dtype]

    @property
    def always_read_params(self) -> float:
        """Parameters read by every iteration whatever the batch: attention, dense/shared MLPs,
        embeddings. For a dense model this is everything."""
        return self.total_params - self.n_experts * self.expert_params


# --- GPUs -------------------------------------------------------------------------------------
# memory_bytes is the total memory the device reports (nvidia-smi's memory.total, in MiB), not
# the datasheet's "80 GB" / "141 GB": HBM and GDDR capacities are GiB-class, so 80 * 1e9 bytes
# undercounts an H100 by 6.9 %. vLLM sizes its pool from CUDA's own total (cudaMemGetInfo),
# which on Hopper is a further ≈0.4-0.5 GiB below nvidia-smi's figure (vLLM logs
# total_gpu_memory ≈79.1-79.3 GiB on 80 GB parts); DEFAULT_RUNTIME_RESERVE_BYTES, an estimate,
# covers that gap along with activations and CUDA graphs.
GPUS: dict[str, GPU] = {
    g.name: g
    for g in [
        GPU(  # provenance: spec — NVIDIA H100 Tensor Core GPU datasheet (SXM5)
            "H100-SXM",
            # provenance: measured — nvidia-smi reports 81,559 MiB on an H100 80GB HBM3
            # (NVIDIA/nccl#1264, modal-labs/modal-client#2797)
            memory_bytes=81_559 * MiB,
            hbm_bandwidth=3.35e12,
            bf16_flops=989e12,
            fp8_flops=1979e12,
            source="NVIDIA H100 Tensor Core GPU datasheet (SXM5: 80 GB HBM3, 3.35 TB/s, "
            "BF16 989 TFLOPS / FP8 1,979 TFLOPS dense); memory as nvidia-smi reports it, "
            "81,559 MiB (github.com/NVIDIA/nccl/issues/1264, "
            "github.com/modal-labs/modal-client/pull/2797)",
        ),
        GPU(  # provenance: spec — NVIDIA H200 Tensor Core GPU datasheet (SXM)
            "H200",
            # provenance: measured — nvidia-smi reports 143,771 MiB on an H200 (nvidia-smi output of
            # 8xH200 nodes published in many repositories, e.g. driver 570.158.01)
            memory_bytes=143_771 * MiB,
            hbm_bandwidth=4.8e12,
            bf16_flops=989e12,
            fp8_flops=1979e12,
            source="NVIDIA H200 Tensor Core GPU datasheet (SXM: 141 GB HBM3e, 4.8 TB/s, "
            "same Hopper compute as H100 SXM); memory as nvidia-smi reports it, 143,771 MiB "
            "(published nvidia-smi output of 8xH200 nodes, driver 570.158.01)",
        ),
        GPU(  # provenance: spec — NVIDIA A100 datasheet (80GB SXM)
            "A100-80G",
            # provenance: measured — nvidia-smi reports 81,920 MiB on an A100-SXM4-80GB
            # (modal-labs/modal-client#2797)
            memory_bytes=81_920 * MiB,
            hbm_bandwidth=2.039e12,
            bf16_flops=312e12,
            fp8_flops=None,
            source="NVIDIA A100 datasheet (80GB SXM: 2,039 GB/s, BF16 312 TFLOPS dense, no FP8); "
            "memory as nvidia-smi reports it, 81,920 MiB "
            "(github.com/modal-labs/modal-client/pull/2797)",
        ),
        # provenance: spec — NVIDIA RTX Blackwell GPU architecture whitepaper (GeForce RTX 5090)
        GPU(
            "RTX-5090",
            # provenance: measured — nvidia-smi reports 32,607 MiB on a GeForce RTX 5090
            # (noonghunna/club-3090#1107)
            memory_bytes=32_607 * MiB,
            hbm_bandwidth=1.792e12,
            bf16_flops=209.5e12,
            fp8_flops=419e12,
            source="NVIDIA RTX Blackwell GPU architecture whitepaper (GeForce RTX 5090: 32 GB "
            "GDDR7, 1,792 GB/s; dense FP16/BF16 209.5 TFLOPS and FP8 419 TFLOPS with FP32 "
            "accumulate); memory as nvidia-smi reports it, 32,607 MiB "
            "(github.com/noonghunna/club-3090/issues/1107)",
        ),
    ]
}


# --- Models (numbers from each model's config.json on its Hugging Face card) ------------------
MODELS: dict[str, Model] = {
    m.name: m
    for m in [
        Model(  # provenance: spec — zai-org/GLM-4.6 config.json and model card
            "GLM-4.6",
            n_layers=92,
            hidden=5120,
            n_heads=96,
            n_kv_heads=8,
            head_dim=128,
            total_params=355e9,
            active_params=32e9,
            n_experts=160,
            experts_per_token=8,
            # 3 x hidden x moe_intermediate(1536) x 89 MoE layers (first_k_dense_replace = 3)
            expert_params=3 * 5120 * 1536 * 89,
            max_context=202752,
            source="zai-org/GLM-4.6 config.json (92 layers, 96 heads, 8 KV heads, head_dim 128, "
            "160 routed experts, 8 per token, 1 shared, moe_intermediate 1536); 355B total / "
            "32B active per its model card",
        ),
        Model(  # provenance: spec — Qwen/Qwen3-235B-A22B config.json and model card
            "Qwen3-235B-A22B",
            n_layers=94,
            hidden=4096,
            n_heads=64,
            n_kv_heads=4,
            head_dim=128,
            total_params=235e9,
            active_params=22e9,
            n_experts=128,
            experts_per_token=8,
            expert_params=3 * 4096 * 1536 * 94,
            max_context=131072,
            source="Qwen/Qwen3-235B-A22B config.json (94 layers, 64 heads, 4 KV heads, head_dim "
            "128, 128 experts, 8 per token, moe_intermediate 1536)",
        ),
        Model(  # provenance: spec — Qwen/Qwen3-32B config.json and model card
            "Qwen3-32B",
            n_layers=64,
            hidden=5120,
            n_heads=64,
            n_kv_heads=8,
            head_dim=128,
            total_params=32.8e9,
            active_params=32.8e9,
            max_context=40960,
            source="Qwen/Qwen3-32B config.json (64 layers, hidden 5120, 64 heads, 8 KV heads, "
            "head_dim 128, intermediate 25600, max_position_embeddings 40960); 32.8B parameters "
            "per its model card",
        ),
        Model(  # provenance: spec — Qwen/Qwen3-Coder-30B-A3B-Instruct config.json and model card
            "Qwen3-Coder-30B-A3B-Instruct",
            n_layers=48,
            hidden=2048,
            n_heads=32,
            n_kv_heads=4,
            head_dim=128,
            total_params=30.5e9,
            active_params=3.3e9,
            n_experts=128,
            experts_per_token=8,
            # 3 x hidden x moe_intermediate(768) x 48 MoE layers (every layer is MoE)
            expert_params=3 * 2048 * 768 * 48,
            max_context=262144,
            source="Qwen/Qwen3-Coder-30B-A3B-Instruct config.json (48 layers, hidden 2048, 32 "
            "heads, 4 KV heads, head_dim 128, 128 experts, 8 per token, moe_intermediate 768, "
            "max_position_embeddings 262144); 30.5B total / 3.3B active per its model card",
        ),
        Model(  # provenance: spec — openai/gpt-oss-120b config.json and model card
            "gpt-oss-120b",
            n_layers=36,
            hidden=2880,
            n_heads=64,
            n_kv_heads=8,
            head_dim=64,
            total_params=116.8e9,
            active_params=5.1e9,
            n_experts=128,
            experts_per_token=4,
            # 3 x hidden x intermediate(2880) x 36 MoE layers (gate, up, down of one expert)
            expert_params=3 * 2880 * 2880 * 36,
            max_context=131072,
            source="openai/gpt-oss-120b config.json (36 layers, hidden 2880, 64 heads, 8 KV "
            "heads, head_dim 64, 128 local experts, 4 per token, intermediate 2880, "
            "max_position_embeddings 131072; experts in MXFP4, attention in BF16; every other "
            "layer a 128-token sliding window, which this catalog does not model: KV per token "
            "counts all 36 layers); 116.8B total / 5.1B active per its model card",
        ),
        Model(  # provenance: spec — Qwen/Qwen3-8B config.json and model card
            "Qwen3-8B",
            n_layers=36,
            hidden=4096,
            n_heads=32,
            n_kv_heads=8,
            head_dim=128,
            total_params=8.2e9,
            active_params=8.2e9,
            max_context=131072,
            source="Qwen/Qwen3-8B config.json (36 layers, 32 heads, 8 KV heads, head_dim 128); "
            "8.2B parameters per its model card",
        ),
        Model(  # provenance: spec — meta-llama/Llama-3.1-8B config.json
            "Llama-3.1-8B",
            n_layers=32,
            hidden=4096,
            n_heads=32,
            n_kv_heads=8,
            head_dim=128,
            total_params=8.03e9,
            active_params=8.03e9,
            max_context=131072,
            source="meta-llama/Llama-3.1-8B config.json (32 layers, 32 heads, 8 KV heads, "
            "head_dim 128)",
        ),
        Model(  # provenance: spec — meta-llama/Llama-3.1-70B config.json
            "Llama-3.1-70B",
            n_layers=80,
            hidden=8192,
            n_heads=64,
            n_kv_heads=8,
            head_dim=128,
            total_params=70.6e9,
            active_params=70.6e9,
            max_context=131072,
            source="meta-llama/Llama-3.1-70B config.json (80 layers, 64 heads, 8 KV heads, "
            "head_dim 128)",
        ),
    ]
}

# vLLM's default --gpu-memory-utilization (vllm/config/cache.py).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # provenance: spec — vLLM's default --gpu-memory-utilization
# Per-GPU memory vLLM's profiling run finds taken besides weights and KV: activations of the
# largest batch, CUDA graphs, NCCL buffers. An estimate (a few GiB on Hopper for large models,
# as vLLM's start-up log reports), replaceable by a calibrated profile.
# provenance: estimate — a few GiB per GPU for activations, CUDA graphs, NCCL buffers and the memory
# CUDA hides from nvidia-smi's total (vLLM start-up logs); --kv-tokens replaces it
DEFAULT_RUNTIME_RESERVE_BYTES = 4 * GiB


@dataclass(frozen=True, slots=True)
class Setup:
    """One replica: `tp` GPUs of one kind serving one model with tensor parallelism."""

    gpu: GPU
    model: Model
    tp: int = 8  # provenance: spec — the paper's replicas: TP8 on one 8-GPU node (PAPER.md Setups)
    weight_dtype: str = "fp8"
    kv_dtype: str = "fp8"
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    runtime_reserve_bytes: float = DEFAULT_RUNTIME_RESERVE_BYTES
    kv_capacity_override: int | None = field(default=None)

    def __post_init__(self) -> None:
        for dt in (self.weight_dtype, self.kv_dtype):
            if dt not in DTYPE_BYTES:
                raise ValueError(f"unknown dtype {dt!r}; valid: {', '.join(DTYPE_BYTES)}")
        if self.tp < 1:
            raise ValueError("tp must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.kv_capacity_override is not None and self.kv_capacity_override <= 0:
            raise ValueError(
                f"KV capacity override must be > 0 tokens, got {self.kv_capacity_override}"
            )
        if self.kv_capacity_tokens <= 0:
            raise ValueError(
                f"{self.model.name} in {self.weight_dtype} does not fit on {self.tp} x "
                f"{self.gpu.name}: weights {self.weight_bytes / GB:.0f} GB, usable "
                f"{self.usable_bytes / GB:.0f} GB"
            )

    @property
    def name(self) -> str:
        return f"{self.model.name}/{self.weight_dtype}/TP{self.tp}x{self.gpu.name}"

    @property
    def weight_bytes(self) -> float:
        return self.model.total_params * DTYPE_BYTES[self.weight_dtype]

    @property
    def usable_bytes(self) -> float:
        return self.tp * (
            self.gpu.memory_bytes * self.gpu_memory_utilization - self.runtime_reserve_bytes
        )

    @property
    def kv_bytes_per_token(self) -> float:
        return self.model.kv_bytes_per_token(self.kv_dtype)

    @property
    def kv_capacity_tokens(self) -> int:
        if self.kv_capacity_override is not None:
            return self.kv_capacity_override
        return int((self.usable_bytes - self.weight_bytes) // self.kv_bytes_per_token)

    @property
    def peak_flops(self) -> float:
        """Aggregate dense throughput of the TP group for the weights' dtype."""
        return self.tp * self.gpu.flops_for(self.weight_dtype)

    @property
    def bandwidth(self) -> float:
        return self.tp * self.gpu.hbm_bandwidth


def lookup(table: dict, name: str, what: str):
    """Case-insensitive catalog lookup with an error that lists the valid names."""
    for key, value in table.items():
        if key.lower() == name.lower():
            return value
    raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(table)}")


def make_setup(
    gpu: str = "H100-SXM",
    model: str = "GLM-4.6",
    tp: int = 8,
    weight_dtype: str = "fp8",
    kv_dtype: str = "fp8",
    **kwargs,
) -> Setup:
    """The paper's default: GLM-4.6, FP8 weights and KV cache, TP8 on one 8xH100 node."""
    return Setup(
        gpu=lookup(GPUS, gpu, "gpu"),
        model=lookup(MODELS, model, "model"),
        tp=tp,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        **kwargs,
    )
