"""The simulator's scheduler budget is vLLM's own default for the GPU it simulates.

vLLM 0.32 (the version the live tests run) picks max_num_batched_tokens and max_num_seqs in
EngineArgs.get_batch_defaults (vllm/engine/arg_utils.py) by usage context and by the device's
total memory as NVML reports it: for the OpenAI API server, 16384 / 1024 from 160 GiB up, 8192 /
1024 from 70 GiB up unless the device is an A100, 2048 / 256 otherwise. A run that sets neither
gets that; a run that sets one keeps it. Where the vLLM of .venv-vllm is installed, its function
itself is called (with the GPU it asks about faked, as no GPU is here) and must agree.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from thundersim.sim.catalog import GPUS, GiB, make_setup
from thundersim.sim.engine import (
    DEFAULT_MAX_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
    SimBackend,
    vllm_default_budget,
)
from thundersim.sim.simulate import RunConfig, build_run

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

# The name each catalogued GPU reports to NVML (what vLLM's get_device_name returns on CUDA).
DEVICE_NAMES = {
    "H100-SXM": "NVIDIA H100 80GB HBM3",
    "H200": "NVIDIA H200",
    "A100-80G": "NVIDIA A100-SXM4-80GB",
    "RTX-5090": "NVIDIA GeForce RTX 5090",
}
EXPECTED = {
    "H100-SXM": (8192, 1024),
    "H200": (8192, 1024),
    "A100-80G": (2048, 256),
    "RTX-5090": (2048, 256),
}


def gpu_with(memory_bytes: float, name: str = "X"):
    return dataclasses.replace(GPUS["H100-SXM"], name=name, memory_bytes=memory_bytes)


# Devices around each of vLLM's thresholds, as (total bytes, device name).
EDGES = [
    (70 * GiB, "edge-70"),
    (70 * GiB - 1, "edge-below-70"),
    (160 * GiB, "B200-class"),
    (160 * GiB - 1, "edge-below-160"),
    (180 * GiB, "NVIDIA A100 imaginary 180GB"),  # the largest tier has no A100 exception
]


def test_each_catalogued_gpu_gets_vllms_api_server_default():
    assert set(EXPECTED) == set(GPUS), "a new GPU needs its expected budget here"
    assert {name: vllm_default_budget(g) for name, g in GPUS.items()} == EXPECTED


def test_the_thresholds_are_vllms():
    """>= 70 GiB (not an A100) is the H100/H200 tier, >= 160 GiB the largest, below 70 GiB the
    smallest; an A100 of any memory under 160 GiB is in the smallest tier."""
    assert vllm_default_budget(gpu_with(70 * GiB)) == (8192, 1024)
    assert vllm_default_budget(gpu_with(70 * GiB - 1)) == (2048, 256)
    assert vllm_default_budget(gpu_with(160 * GiB)) == (16384, 1024)
    assert vllm_default_budget(gpu_with(159 * GiB, "A100-159G")) == (2048, 256)


def test_a_simbackend_built_without_a_gpu_gets_the_h100_tier():
    assert (DEFAULT_MAX_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS) == (8192, 1024)
    assert vllm_default_budget(GPUS["H100-SXM"]) == (8192, 1024)
    params = inspect.signature(SimBackend).parameters
    assert params["max_batched_tokens"].default == DEFAULT_MAX_BATCHED_TOKENS
    assert params["max_num_seqs"].default == DEFAULT_MAX_NUM_SEQS


@pytest.mark.parametrize("gpu", sorted(EXPECTED))
def test_a_run_that_sets_no_budget_gets_its_gpus_default(gpu):
    config = RunConfig(setup=make_setup(gpu, kv_capacity_override=50_000))
    assert (config.max_batched_tokens, config.max_num_seqs) == EXPECTED[gpu]


def test_explicit_budgets_are_kept_and_checked():
    setup = make_setup("RTX-5090", kv_capacity_override=50_000)
    config = RunConfig(setup=setup, max_batched_tokens=8192)
    assert (config.max_batched_tokens, config.max_num_seqs) == (8192, 256)
    config = RunConfig(setup=setup, max_num_seqs=64)
    assert (config.max_batched_tokens, config.max_num_seqs) == (2048, 64)
    assert RunConfig(max_batched_tokens=512, max_num_seqs=8).max_batched_tokens == 512
    with pytest.raises(ValueError, match="token budget"):
        RunConfig(max_batched_tokens=0)


def test_build_run_leaves_the_budget_to_the_gpu_unless_given():
    common = dict(
        router="round_robin",
        params=None,
        dt=5.0,
        decay="none",
        seed=0,
        gpu="A100-80G",
        model="GLM-4.6",
        tp=8,
        weight_dtype="fp8",
        kv_dtype="fp8",
        kv_tokens=50_000,
        latency_profile=None,
    )
    _, config = build_run(**common)
    assert (config.max_batched_tokens, config.max_num_seqs) == (2048, 256)
    _, config = build_run(**common, max_batched_tokens=None, max_num_seqs=None)
    assert (config.max_batched_tokens, config.max_num_seqs) == (2048, 256)
    _, config = build_run(**common, max_batched_tokens=4096, max_num_seqs=128)
    assert (config.max_batched_tokens, config.max_num_seqs) == (4096, 128)


# --- against the installed vLLM ------------------------------------------------------------------

_PROBE = textwrap.dedent(
    """
    import json, sys
    import vllm.engine.arg_utils as arg_utils
    from vllm.usage.usage_lib import UsageContext

    class Device:  # the GPU vLLM asks about, as its CUDA platform would describe it
        def __init__(self, memory, name):
            self.memory, self.name = memory, name
        def get_device_total_memory(self, device_id=0):
            return self.memory
        def get_device_name(self, device_id=0):
            return self.name
        def is_tpu(self):
            return False
        def is_cpu(self):
            return False

    out = []
    for memory, name in json.load(sys.stdin):
        arg_utils.current_platform = Device(memory, name)
        tokens, seqs = arg_utils.EngineArgs.get_batch_defaults(world_size=8)
        server = UsageContext.OPENAI_API_SERVER
        out.append([tokens[server], seqs[server]])
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def vllm_budgets():
    """What vLLM's get_batch_defaults returns for each catalogued GPU and each edge device."""
    if not VLLM_PYTHON.exists():
        pytest.skip("no .venv-vllm here (the live extras are not installed)")
    devices = [(int(g.memory_bytes), DEVICE_NAMES[name]) for name, g in sorted(GPUS.items())]
    devices += EDGES
    done = subprocess.run(
        [str(VLLM_PYTHON), "-c", _PROBE],
        input=json.dumps(devices),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if done.returncode != 0:
        pytest.skip(f"vLLM could not be imported: {done.stderr.strip()[-300:]}")
    budgets = [tuple(b) for b in json.loads(done.stdout)]
    return dict(zip([name for _, name in devices], budgets, strict=True))


def test_the_budget_agrees_with_the_installed_vllms_own_function(vllm_budgets):
    assert set(DEVICE_NAMES) == set(GPUS), "a new GPU needs its NVML device name here"
    for name, gpu in GPUS.items():
        assert vllm_default_budget(gpu) == vllm_budgets[DEVICE_NAMES[name]], name
    for memory, name in EDGES:
        assert vllm_default_budget(gpu_with(memory, name)) == vllm_budgets[name], name
