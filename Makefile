# Every command a user or CI runs. `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama.cpp is compiled for a portable x86-64 baseline (AVX2/FMA) rather than -march=native:
# native builds enable AMX kernels that crash on virtual machines which advertise AMX but
# do not let processes use it.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: install serve test ui-test-deps lint format bench bench-gateway bench-stack bench-tokens clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/powertrain serve

test: install ui-test-deps
	$(BIN)/python -m pytest

# The browser test (tests/test_ui_browser.py) drives Debian's chromium with playwright-core
# from the npm registry; never a browser download. Idempotent: installs only what is missing.
ui-test-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y --no-install-recommends chromium >/dev/null \
	  || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }; \
	else echo "ui-test-deps: not root, so chromium is not installed (apt-get install chromium); the browser test will be skipped"; fi
	@if ! command -v npm >/dev/null; then echo "ui-test-deps: npm is missing; the browser test will be skipped"; \
	elif [ ! -d tests/ui/node_modules/playwright-core ] || [ tests/ui/package-lock.json -nt tests/ui/node_modules/.package-lock.json ]; then \
	  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/ui --no-audit --no-fund --loglevel=error; fi

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
