# Two commands do all the set-up on a fresh machine with Python 3.11 and pip:
#   make demo   the main job on the embedded default (local tiny models, CPU, nothing downloaded),
#               then the route table's quick version (more SFT, RL, OPD, RL+OPD from one checkpoint)
#   make test   the whole test suite (what .ci/run calls; separate lanes: make test-multiprocess, make test-sglang)
# Every pip call passes -c constraints.txt: torch stays the local CPU wheel.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PIP    := $(VENV)/bin/python -m pip install -q -c constraints.txt
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-multiprocess test-sglang sglang-env env test-env bench-env bench clean

env: $(VENV)/.core-installed
test-env: $(VENV)/.test-installed

$(VENV)/.core-installed: pyproject.toml integrations/local/pyproject.toml plugins/pyproject.toml agents/pyproject.toml integrations/sglang/pyproject.toml drafters/pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) torch==2.13.0
	$(PIP) -e . -e integrations/local -e plugins -e agents -e integrations/sglang -e drafters
	touch $@

$(VENV)/.test-installed: $(VENV)/.core-installed tests/thirdparty_plugin/pyproject.toml agents/tests/thirdparty_env/pyproject.toml agents/tests/thirdparty_gym/pyproject.toml drafters/tests/thirdparty_drafter/pyproject.toml
	$(PIP) -e ".[test,peft,tensorboard]" -e tests/thirdparty_plugin -e agents/tests/thirdparty_env -e agents/tests/thirdparty_gym -e drafters/tests/thirdparty_drafter
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
	$(VENV)/bin/python bench/route_table.py --quick --out runs/demo

test: test-env
	$(VENV)/bin/python -m pytest -q tests integrations/local/tests plugins/tests agents/tests integrations/sglang/tests drafters/tests -m "not multiprocess and not sglang"

# Two processes under accelerate launch (gloo DDP on CPU) against one: 1-2 minutes.
test-multiprocess: test-env
	$(VENV)/bin/python -m pytest -q tests/opdplug/test_multiprocess.py drafters/tests/test_eagle3_multiprocess.py -m multiprocess

# A real SGLang server on 127.0.0.1. SGLang pins another torch, so it gets its own environment
# (.venv-sglang, about 3.4 GB, made once by the setup script); the lane is skipped, with the
# reason printed, only when SGLang cannot be installed at all (the script exits 3).
sglang-env:
	bash integrations/sglang/scripts/setup_sglang_env.sh .venv-sglang

test-sglang: test-env
	@rc=0; bash integrations/sglang/scripts/setup_sglang_env.sh .venv-sglang || rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "test-sglang: skipped (SGLang cannot be installed here, reason above)"; exit 0; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	$(VENV)/bin/python -m pytest -q integrations/sglang/tests drafters/tests agents/tests/test_llm_judge_sglang.py -m sglang

clean:
	rm -rf $(VENV) runs
