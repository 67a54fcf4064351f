"""Shared fixtures: the `tiny` built-in corpus, built once per test session."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def manifest_hash(corpus: Path) -> str:
    h = hashlib.sha256()
    # The corpus build's own manifests (later steps add *_cuts.jsonl beside them).
    paths = sorted(corpus.glob("*_recordings.jsonl")) + sorted(corpus.glob("*_supervisions.jsonl"))
    assert len(paths) == 6
    for path in paths + [corpus / "lm_text.txt"]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    from speechdistill.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("tiny")
    build_corpus("tiny", out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_units(tiny_corpus) -> Path:
    from speechdistill.data.features import compute_features
    from speechdistill.data.units import build_units
    from speechdistill.units.inventory import UnitsConfig

    compute_features(tiny_corpus, show_progress=False)
    build_units(tiny_corpus, UnitsConfig(vocab_size=128, num_senones=160, min_senone_frames=20), show_progress=False)
    return tiny_corpus / "units"
