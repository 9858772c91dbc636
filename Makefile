# bandpo developer commands. `make test` sets itself up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned: 2.13.0 is a CPU wheel that installs in seconds; an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
EXTRAS ?= theory,train,figures,notebooks,dev,trl,verl
# verl's own metadata pulls ray[default], wandb, tensorboard and more: install it alone, its import-time needs come
# with the verl extra above (bandpo/integrations, docs/integrations.md).
VERL   ?= verl==0.9.1
# OpenRLHF's own dependencies (flash-attn, a CUDA build; another transformers pin) cannot share this venv: the
# package alone lets tests/test_integration_openrlhf.py run its loss code (the test skips if this line failed).
OPENRLHF ?= openrlhf==0.11.2

.PHONY: venv test test-slow bench clean reproduce

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps "$(VERL)"
	-$(PY) -m pip install --quiet --no-deps "$(OPENRLHF)"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -m "not slow"

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) benchmarks/band_speed.py

# Every paper figure into paper_figures/out/, running the training runs / bandit / benchmark / testbed grid whose data
# is missing.
# TESTBED_JOBS=N splits the testbed grid (when its runs are missing) over N processes.
TESTBED_JOBS ?= 1
reproduce: venv
	$(PY) paper_figures/reproduce.py --testbed-jobs $(TESTBED_JOBS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
