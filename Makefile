# The two commands a newcomer runs:  make demo  and  make test.
# Both set everything up themselves (Debian packages, .venv) and are idempotent.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= data/small

.PHONY: setup demo test test-slow lint clean

setup:
	@scripts/setup.sh

# The main job: corpus -> features -> units -> baseline acoustic model -> test WER/PER.
# Each step keeps finished work, so a second `make demo` only re-scores.
demo: setup
	$(BIN)/speechdistill corpus build --preset small --out $(DEMO_DIR)
	$(BIN)/speechdistill features compute $(DEMO_DIR)
	[ -f $(DEMO_DIR)/units/units.json ] || $(BIN)/speechdistill units build $(DEMO_DIR)
	$(BIN)/speechdistill corpus summary $(DEMO_DIR)
	[ -f exp/baseline/train_summary.json ] || $(BIN)/speechdistill train configs/baseline.yaml data.corpus=$(DEMO_DIR) progress=false
	$(BIN)/speechdistill evaluate exp/baseline/best --data $(DEMO_DIR) --split dev
	$(BIN)/speechdistill evaluate exp/baseline/best --data $(DEMO_DIR) --split test

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) data/tiny
