# One entry point for a fresh machine: `make book` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= default
FMNIST_DIR := $(or $(ORANDNET_FASHION_MNIST),/usr/share/datasets/fashion-mnist)

.PHONY: install fashion-mnist data notebooks widgets-js book test bench clean heldout

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@echo "== installing into $(VENV) (torch is large: a few minutes on a fresh machine)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The embedded benchmark's objects. Debian's package when apt is usable, else say how to get them.
fashion-mnist:
	@if ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
	  echo "== Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ -z "$(ORANDNET_FASHION_MNIST)" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "== installing Debian's dataset-fashion-mnist"; \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	else \
	  echo "Fashion-MNIST not found in $(FMNIST_DIR)."; \
	  echo "Install Debian's package (sudo apt-get install dataset-fashion-mnist), or download the four"; \
	  echo "IDX files from the Fashion-MNIST project and set ORANDNET_FASHION_MNIST=/path/to/folder."; \
	  exit 1; \
	fi

data: install fashion-mnist
	$(BIN)/orandnet generate --profile $(PROFILE)

notebooks: data
	$(BIN)/orandnet run --profile $(PROFILE)

# The widget manager's JavaScript, served with the book so that its widgets work offline
# (installed from npm at build time, never committed).
WIDGETS_JS := _static/widgets/embed-amd.js
$(WIDGETS_JS):
	@command -v npm >/dev/null || { echo "npm is needed for the book's widgets (apt-get install npm)"; exit 1; }
	npm install --silent --no-audit --no-fund --prefix .cache/npm @jupyter-widgets/html-manager@1.0.15 requirejs@2.3.8
	mkdir -p _static/widgets
	cp .cache/npm/node_modules/requirejs/require.js _static/widgets/require.js
	cd .cache/npm/node_modules/@jupyter-widgets/html-manager/dist && \
	  cp $$(ls | grep -v '\.map$$' | grep -v '^embed\.js' | grep -v '^libembed') $(CURDIR)/_static/widgets/
	for d in book/executed/@jupyter-widgets/html-manager/dist book/executed/@jupyter-widgets; do \
	  mkdir -p .cache/html_extra/$$d && cp _static/widgets/*.woff* _static/widgets/*.ttf _static/widgets/*.eot \
	    _static/widgets/*.svg .cache/html_extra/$$d/; done

widgets-js: $(WIDGETS_JS)

book: notebooks widgets-js
	$(BIN)/orandnet pages --profile $(PROFILE) $(if $(COMPARE),--compare $(COMPARE))
	$(BIN)/jupyter-book build --all . $(if $(wildcard _config.online.yml),--config _config.online.yml) 2>&1 | tail -n 4
	@test -f _build/html/index.html && echo "== book: _build/html/index.html"

# Two pytest-xdist workers of one thread each (tests/conftest.py): a serial run keeps one of the two
# cores idle through notebook starts, the book build and the browser (measured: 392 s of wall for 380 s of user CPU).
TEST_WORKERS ?= 2
test: install fashion-mnist
	@$(MAKE) --no-print-directory widgets-js || echo "== no npm: the real-browser test of the book will be skipped"
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15

# Stages of the default run (if present) and every hot kernel against a naive reference;
# writes bench/results.json. Takes a few minutes; run it with nothing else on the machine.
# COMPILE=1 also times each training step under torch.compile against eager (minutes of compiling).
bench: install fashion-mnist
	$(BIN)/python -m orandnet_lib.bench --profile $(PROFILE) $(if $(COMPILE),--compile)

clean:
	rm -rf _build book/executed runs

# Issue 24's held-out domain: other objects on other photographs (orandnet_lib/data/heldout.py), written
# once into data/heldout-shapes, and the default profile run on it as a user's own VOC folder (one
# whole-pipeline replicate; about 35 minutes on two cores). Never tuned on: make bench reports it.
HELDOUT_DIR := data/heldout-shapes
heldout: install fashion-mnist
	test -d $(HELDOUT_DIR) || $(BIN)/python -m orandnet_lib.data.heldout $(HELDOUT_DIR)
	$(BIN)/orandnet run --profile default --data-root $(HELDOUT_DIR) --run-dir runs/heldout -p replicates=1
