"""Hardware x model catalog: KV bytes per token, KV capacity as vLLM sizes it, validation."""

from __future__ import annotations

import dataclasses

import pytest

from thundersim.sim.catalog import GPUS, MODELS, GiB, MiB, Setup, make_setup

# What each GPU reports as its total memory (nvidia-smi memory.total, MiB), as cited in the
# catalog: H100 80GB HBM3 (NVIDIA/nccl#1264, modal-labs/modal-client#2797), H200 (published
# nvidia-smi output of 8xH200 nodes), A100-SXM4-80GB (modal-labs/modal-client#2797), GeForce
# RTX 5090 (noonghunna/club-3090#1107).
REPORTED_MIB = {"H100-SXM": 81_559, "H200": 143_771, "A100-80G": 81_920, "RTX-5090": 32_607}


def test_kv_bytes_per_token_is_k_and_v_times_layers_kv_heads_head_dim_and_dtype_bytes():
    """2 (K and V) x layers x KV heads x head dim x bytes per element: GLM-4.6 in FP8 is
    2 x 92 x 8 x 128 x 1 = 188416 bytes; Llama-3.1-8B in BF16 is 2 x 32 x 8 x 128 x 2 = 131072."""
    assert MODELS["GLM-4.6"].kv_bytes_per_token("fp8") == 188416
    assert MODELS["Llama-3.1-8B"].kv_bytes_per_token("bf16") == 131072
    for model in MODELS.values():
        expected = 2 * model.n_layers * model.n_kv_heads * model.head_dim
        assert model.kv_bytes_per_token("fp8") == expected
        assert model.kv_bytes_per_token("bf16") == 2 * expected


def test_default_setup_is_glm46_fp8_tp8_on_h100_with_kv_capacity_from_memory_budget():
    """make_setup() is the paper's replica: GLM-4.6, FP8 weights and KV, TP8 on H100-SXM. Its
    KV capacity is what is left of 8 x 81,559 MiB (the memory an H100 reports) x 0.9 after
    8 x 4 GiB of runtime reserve and 355 GB of FP8 weights, divided by 188416 bytes per token."""
    setup = make_setup()
    assert setup.gpu.name == "H100-SXM"
    assert setup.model.name == "GLM-4.6"
    assert setup.tp == 8
    assert setup.weight_dtype == "fp8" and setup.kv_dtype == "fp8"
    expected = int((8 * 81_559 * 2**20 * 0.9 - 8 * 4 * GiB - 355e9) // 188416)
    assert setup.kv_capacity_tokens == expected
    assert 1_150_000 < expected < 1_250_000  # about 1.2 million tokens on one 8xH100 node


@pytest.mark.parametrize("gpu", sorted(REPORTED_MIB))
def test_gpu_memory_is_what_the_device_reports_in_mib_with_its_citation(gpu):
    """HBM/GDDR capacities are GiB-class: each GPU's memory is the total nvidia-smi reports
    (MiB), not the datasheet's round GB, and its source names that figure."""
    entry = GPUS[gpu]
    assert entry.memory_bytes == REPORTED_MIB[gpu] * 2**20
    assert f"{REPORTED_MIB[gpu]:,} MiB" in entry.source


def test_h100_kv_pool_grows_by_the_reported_memory_over_the_datasheet_gb():
    """Against the old 80 x 1e9 bytes, the reported 81,559 MiB adds 0.9 x (81,559 MiB - 80 GB)
    per GPU to the KV pool: on GLM-4.6 FP8 TP8 that is 8 x 0.9 x 5.52 GB / 188416 B ≈ 211K
    tokens, a 21 % larger pool (the weights are a fixed cost, so the pool grows far more than
    the memory's 6.9 %)."""
    new = make_setup()
    old = Setup(gpu=dataclasses.replace(new.gpu, memory_bytes=80e9), model=new.model)
    extra_per_gpu = 81_559 * MiB - 80e9
    assert extra_per_gpu / 80e9 == pytest.approx(0.0690, abs=1e-4)
    gained = new.kv_capacity_tokens - old.kv_capacity_tokens
    assert gained == pytest.approx(8 * 0.9 * extra_per_gpu / 188416, abs=1)
    assert new.kv_capacity_tokens / old.kv_capacity_tokens == pytest.approx(1.213, abs=1e-3)


def test_kv_capacity_grows_with_memory_utilisation():
    """A larger --gpu-memory-utilization leaves more room for KV blocks."""
    caps = [make_setup(gpu_memory_utilization=u).kv_capacity_tokens for u in (0.8, 0.9, 0.95, 1.0)]
    assert caps == sorted(caps)
    assert len(set(caps)) == len(caps)


def test_h200_holds_more_kv_than_h100_for_the_same_model():
    """143,771 MiB per GPU instead of 81,559 MiB: the same weights leave far more KV room."""
    h100 = make_setup("H100-SXM").kv_capacity_tokens
    h200 = make_setup("H200").kv_capacity_tokens
    assert h200 > 2 * h100


def test_model_that_does_not_fit_raises_value_error_naming_the_model():
    """Llama-3.1-70B in BF16 (141 GB of weights) cannot fit on one 32 GB RTX 5090."""
    with pytest.raises(ValueError, match="Llama-3.1-70B"):
        make_setup("RTX-5090", "Llama-3.1-70B", tp=1, weight_dtype="bf16", kv_dtype="bf16")


@pytest.mark.parametrize(
    ("kwargs", "what", "valid"),
    [
        ({"gpu": "B200"}, "gpu", list(GPUS)),
        ({"model": "GPT-5"}, "model", list(MODELS)),
    ],
)
def test_unknown_catalog_names_raise_value_error_listing_valid_names(kwargs, what, valid):
    """A typo in --gpu or --model tells the user every name the catalog knows."""
    with pytest.raises(ValueError) as info:
        make_setup(**kwargs)
    message = str(info.value)
    assert f"unknown {what}" in message
    for name in valid:
        assert name in message


def test_catalog_lookup_is_case_insensitive():
    """`h200` and `glm-4.6` name the same entries as `H200` and `GLM-4.6`."""
    setup = make_setup("h200", "glm-4.6")
    assert setup.gpu is GPUS["H200"] and setup.model is MODELS["GLM-4.6"]


def test_a100_has_no_fp8_so_fp8_weights_run_at_bf16_peak():
    """Ampere has no FP8 tensor cores: FP8 weights are computed at the BF16 rate, while on
    Hopper they get the FP8 rate."""
    a100 = make_setup("A100-80G")
    assert GPUS["A100-80G"].fp8_flops is None
    assert a100.peak_flops == 8 * GPUS["A100-80G"].bf16_flops
    h100 = make_setup("H100-SXM")
    assert h100.peak_flops == 8 * GPUS["H100-SXM"].fp8_flops
    bf16 = make_setup("H100-SXM", weight_dtype="bf16", model="Llama-3.1-8B", tp=1)
    assert bf16.peak_flops == GPUS["H100-SXM"].bf16_flops


def test_kv_capacity_override_wins_over_the_hardware_estimate():
    """--kv-tokens replaces the computed capacity, whatever the hardware would give."""
    assert make_setup(kv_capacity_override=12345).kv_capacity_tokens == 12345
    assert make_setup("H200", kv_capacity_override=777).kv_capacity_tokens == 777


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tp": 0},
        {"gpu_memory_utilization": 0.0},
        {"gpu_memory_utilization": 1.5},
        {"weight_dtype": "fp7"},
        {"kv_dtype": "nf3"},
    ],
)
def test_invalid_setup_parameters_raise_value_error(kwargs):
    """Bad tensor-parallel degree, utilisation outside (0, 1] or an unknown dtype are refused."""
    with pytest.raises(ValueError):
        make_setup(**kwargs)


def test_every_catalog_entry_cites_its_source():
    """No number without a citation: every GPU and model names where its specs come from."""
    for entry in [*GPUS.values(), *MODELS.values()]:
        assert isinstance(entry.source, str) and entry.source.strip(), entry.name


def test_dense_models_read_all_parameters_and_moe_models_split_out_routed_experts():
    """A dense model streams every parameter each iteration; an MoE model's always-read part
    excludes its routed experts and is smaller than the total but larger than zero."""
    for model in MODELS.values():
        if model.is_moe:
            assert 0 < model.always_read_params < model.total_params
            assert model.experts_per_token <= model.n_experts
        else:
            assert model.always_read_params == model.total_params


def test_non_positive_kv_override_is_named_as_the_problem():
    """A negative or zero override is a bad option, not a model that does not fit."""
    import pytest

    from thundersim.sim.catalog import make_setup

    for bad in (0, -5):
        with pytest.raises(ValueError, match="KV capacity override must be > 0"):
            make_setup(kv_capacity_override=bad)


@pytest.mark.parametrize(
    ("name", "layers", "kv_heads", "head_dim", "experts", "per_token", "context"),
    [
        # each from its published config.json
        ("Qwen3-32B", 64, 8, 128, 0, 0, 40960),
        ("Qwen3-Coder-30B-A3B-Instruct", 48, 4, 128, 128, 8, 262144),
        ("gpt-oss-120b", 36, 8, 64, 128, 4, 131072),
        ("GLM-4.6", 92, 8, 128, 160, 8, 202752),
    ],
)
def test_agentic_models_carry_their_published_configs(
    name, layers, kv_heads, head_dim, experts, per_token, context
):
    """Layers, KV heads, head dim, routed experts, experts per token and context window as
    each model's config.json gives them; MoE models stream fewer parameters than they hold."""
    m = MODELS[name]
    assert (m.n_layers, m.n_kv_heads, m.head_dim) == (layers, kv_heads, head_dim)
    assert (m.n_experts, m.experts_per_token, m.max_context) == (experts, per_token, context)
    assert m.kv_bytes_per_token("bf16") == 2 * layers * kv_heads * head_dim * 2
    if experts:
        assert m.active_params < m.total_params
        assert 0 < m.always_read_params < m.total_params / 10  # the experts are the bulk


def test_gpt_oss_120b_in_its_mxfp4_checkpoint_fits_one_h100_and_not_in_fp8():
    """MXFP4 is 4.25 bits a weight (4-bit elements, one 8-bit scale per 32): 116.8B weights are
    62 GB, which one 80 GB H100 holds (as OpenAI states); in FP8 (117 GB) they do not."""
    from thundersim.sim.catalog import DTYPE_BYTES

    assert DTYPE_BYTES["mxfp4"] == 4.25 / 8
    setup = make_setup("H100-SXM", "gpt-oss-120b", tp=1, weight_dtype="mxfp4", kv_dtype="bf16")
    assert setup.weight_bytes == pytest.approx(62.05e9, rel=1e-3)
    assert setup.kv_capacity_tokens > 100_000
    with pytest.raises(ValueError, match="gpt-oss-120b"):
        make_setup("H100-SXM", "gpt-oss-120b", tp=1, weight_dtype="fp8")
