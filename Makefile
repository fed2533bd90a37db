# The two commands the README starts with:
#   make lab    JupyterLab opened on the chat notebook
#   make test   lint, type check (mypy) + the whole test suite
# Both create or refresh the virtual environment in .venv first.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nbchat-installed
PORT ?= 8888

.PHONY: lab test venv clean chromium proxy

venv: $(STAMP)

# torch first, pinned: 2.13.0 is the local CPU wheel; an unpinned torch pulls GBs of CUDA.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Jupyter refuses to run as root unless told; containers and CI machines often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(STAMP)
	$(BIN)/jupyter lab --ip 127.0.0.1 --port $(PORT) $(ROOT_FLAG) notebooks/chat.ipynb

# The browser tests drive Debian's Chromium; Playwright never downloads a browser of its own.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

chromium:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The hub tests need JupyterHub's proxy, an npm package.
proxy:
	@command -v configurable-http-proxy >/dev/null || $(SUDO) npm install -g --silent configurable-http-proxy

test: $(STAMP) chromium proxy
	$(BIN)/ruff check nbchat tests bench conftest.py
	$(BIN)/mypy
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
