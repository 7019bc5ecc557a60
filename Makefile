# `make test` sets everything up itself (idempotently) and runs every test; see README.md.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.vlmnb-installed
TORCH ?= torch==2.13.0
NBFLAGS ?=
# Tests never download: weights, tokenizers and datasets are built locally from the package.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test install sync nbtest pytest demo

test: install
	$(MAKE) --no-print-directory sync
	$(MAKE) --no-print-directory nbtest
	$(MAKE) --no-print-directory pytest

$(PY):
	python3 -m venv $(VENV)

# torch first, on its own, so that no other package pulls a different build of it.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH)
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Notebooks are the source: exporting and cleaning them must leave the tree as it is.
sync: install
	@state() { git status --porcelain 2>/dev/null; git diff 2>/dev/null; }; \
	before="$$(state)"; \
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean; \
	if [ "$$before" != "$$(state)" ]; then \
	  echo "nbdev-export / nbdev-clean changed these files: commit the notebooks and modules in sync."; \
	  git status --short; exit 1; \
	fi; echo "notebooks, modules and clean notebooks in sync"

nbtest: install
	$(BIN)/nbdev-test --n-workers 2 --timing $(if $(NBFLAGS),--flags "$(NBFLAGS)")

pytest: install
	$(PY) -m pytest -q

# The embedded demo: a tiny SmolVLM learns the colour of a shape on CPU; see README.md.
demo: install
	$(BIN)/vlmnb train --set output_dir=outputs/demo
