# Two commands on a fresh machine: `make demo` and `make test` (both run `make setup` first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCHREC_VERSION := 1.8.0

.PHONY: setup demo test test-all test-slow lint format bench clean

setup: $(STAMP)

# Rebuilt whenever the pins or the project metadata change ("stale").
$(STAMP): requirements-cpu.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	$(PY) -m pip install -q --no-deps torchrec==$(TORCHREC_VERSION)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import fbgemm_gpu, torchrec, torchrec_lhf; print('torchrec_lhf environment ready')"
	touch $@

demo: $(STAMP)
	$(PY) -m apps.pipeline --out_dir runs/demo --results_json docs/demo.json --plot docs/demo.png

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
