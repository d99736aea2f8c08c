# Two commands do all the set-up on a fresh machine with Python 3.11 and pip:
#   make demo   the main job on the embedded default (local tiny models, CPU, nothing downloaded)
#   make test   the whole test suite (what .ci/run calls)
# Every pip call passes -c constraints.txt: torch stays the local CPU wheel.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PIP    := $(VENV)/bin/python -m pip install -q -c constraints.txt
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test env test-env bench-env bench clean

env: $(VENV)/.core-installed
test-env: $(VENV)/.test-installed

$(VENV)/.core-installed: pyproject.toml plugins/pyproject.toml agents/pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) torch==2.13.0
	$(PIP) -e . -e plugins -e agents
	touch $@

$(VENV)/.test-installed: $(VENV)/.core-installed tests/thirdparty_plugin/pyproject.toml
	$(PIP) -e ".[test,peft,tensorboard]" -e tests/thirdparty_plugin
	touch $@

# The benchmarks under bench/ also need TRL (the baseline they are compared with).
bench-env: $(VENV)/.bench-installed

$(VENV)/.bench-installed: $(VENV)/.test-installed
	$(PIP) -e ".[bench]"
	touch $@

# Each prints a table whose last line is its headline; each takes under 10 minutes on 2 cores.
bench: bench-env
	$(VENV)/bin/python bench/vs_trl.py
	$(VENV)/bin/python bench/memory_full_vocab.py
	$(VENV)/bin/python bench/compute_claim.py

demo: env
	$(VENV)/bin/opdplug demo --output-dir runs/demo

test: test-env
	$(VENV)/bin/python -m pytest -q tests plugins/tests agents/tests

clean:
	rm -rf $(VENV) runs
