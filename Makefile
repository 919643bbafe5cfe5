# Every command a user or CI runs. `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama.cpp is compiled for a portable x86-64 baseline (AVX2/FMA) rather than -march=native:
# native builds enable AMX kernels that crash on virtual machines which advertise AMX but
# do not let processes use it.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: install serve test lint format bench bench-gateway bench-stack bench-tokens clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/powertrain serve

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check powertrain tests bench examples
	$(BIN)/ruff format --check powertrain tests bench examples
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix powertrain tests bench examples
	$(BIN)/ruff format powertrain tests bench examples

bench: bench-gateway

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

bench-gateway: install
	$(BIN)/python -m bench.gateway $(ARGS)

bench-stack: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.gateway.stack

bench-tokens: install
	$(BIN)/python -m bench.gateway.tokens $(ARGS)
