# `make demo` installs the package with [eval] (FID, sweeps, plots, digits data) into .venv, `make test` (and
# bench, lint) with [dev] (eval + quant + test tools); each only when missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEV := $(VENV)/.installed
EVAL := $(VENV)/.installed-eval
INSTALL = (test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)) && $(BIN)/python -m pip install -q --upgrade pip \
	&& $(BIN)/python -m pip install -q -e

.PHONY: demo test bench lint

$(DEV): pyproject.toml
	$(INSTALL) '.[dev]'
	touch $(EVAL) $(DEV)

$(EVAL): pyproject.toml  # [dev] includes [eval]: an up-to-date [dev] install serves the demo too
	[ $(DEV) -nt pyproject.toml ] || { $(INSTALL) '.[eval]'; }
	touch $(EVAL)

demo: $(EVAL)
	$(BIN)/python -m diffusers_ext demo

test: $(DEV)
	$(BIN)/python -m pytest -q

bench: $(DEV)
	$(BIN)/python bench/gmm_accuracy.py
	$(BIN)/python bench/step_cost.py

lint: $(DEV)
	$(BIN)/ruff check diffusers_ext tests bench
