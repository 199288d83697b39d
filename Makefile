# One entry point for a fresh machine: `make book` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= default
FMNIST_DIR := $(or $(ORANDNET_FASHION_MNIST),/usr/share/datasets/fashion-mnist)

.PHONY: install fashion-mnist data notebooks book test bench clean

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

book: notebooks
	$(BIN)/jupyter-book build --all . 2>&1 | tail -n 4
	@test -f _build/html/index.html && echo "== book: _build/html/index.html"

test: install fashion-mnist
	$(BIN)/python -m pytest -q

clean:
	rm -rf _build book/executed runs
