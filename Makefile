# The two commands a newcomer runs:  make demo  and  make test.
# Both set everything up themselves (Debian packages, .venv) and are idempotent.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= data/small

.PHONY: setup demo test test-slow lint clean

setup:
	@scripts/setup.sh

demo: setup
	$(BIN)/speechdistill corpus build --preset small --out $(DEMO_DIR)
	$(BIN)/speechdistill features compute $(DEMO_DIR)
	$(BIN)/speechdistill units build $(DEMO_DIR)
	$(BIN)/speechdistill corpus summary $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) data/tiny
