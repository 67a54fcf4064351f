# The two commands a newcomer runs:  make demo  and  make test.
# Both set everything up themselves (Debian packages, .venv) and are idempotent.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= data/small

.PHONY: setup demo demo-ssl test test-slow lint clean

setup:
	@scripts/setup.sh

# The main job: corpus -> features -> units -> three unit LMs -> soft-label caches ->
# baseline, interp, aux and hier, 1 seed each -> the results table (configs/asr/demo.yaml).
# `make demo SEEDS=2` keeps those runs and adds a second seed of each (the README's table).
# Finished work is kept, so a second `make demo` only re-prints the table.
# `make demo QUICK=1`: a first look in minutes: the `quick` corpus (data/quick, 600
# training utterances), 1 seed, 80 updates, LMs on part of the text.
demo: setup
	$(BIN)/speechdistill demo $(if $(QUICK),--quick,--corpus $(DEMO_DIR)) $(if $(SEEDS),--seeds $(SEEDS))

# The SSL part: pre-train a small HuBERT-style teacher on the corpus, distil it into a
# DistilHuBERT and a FitHuBERT student, probe all three (PR, SID), print the comparison.
demo-ssl: setup
	$(BIN)/speechdistill demo --ssl --corpus $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) data/tiny
