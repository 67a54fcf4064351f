"""SIGKILL at random points during every long stage (issue #15), on the tiny corpus.

Each stage runs as the user runs it (the CLI, in its own process group) and is killed
at a time drawn from a seeded RNG; then the same command runs again. A chain of kills
goes on until a run completes, and the completed result must equal an uninterrupted
run's: the same bytes (manifests, features, alignments, caches), the same weights
(training, to 1e-6). After every kill, each final output that exists must already be
the uninterrupted run's (complete and right, never a partial file that reads as whole).

    make test-slow                                   # all of them
    KILL_TRIALS=20 pytest -m slow tests/test_faults.py

The counts are in docs/reliability.md. Full-disk faults are in the default suite
(test_reliability.py), being quick.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_align import TINY_ALIGNER

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("KILL_TRIALS", "20"))  # kills per stage
ROOT = Path(__file__).parent.parent


def _start(args, cwd=ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "speechdistill.cli", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill reaches its workers too
    )


def _run(args) -> float:
    t = time.time()
    proc = _start(args)
    _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return time.time() - t


def _digest(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of each file there (hidden ones, a stage's own partial files, left out), with
    the corpus directory's own path (manifests name their audio by it) made neutral."""
    out = {}
    for p in paths:
        if p.exists() and p.name[0] != ".":
            data = p.read_bytes()
            for root in (p.parent, p.parent.parent):  # the deeper first
                data = data.replace(str(root.resolve()).encode(), b"<DIR>")
            out[p.name] = hashlib.sha256(data).hexdigest()
    return out


def kill_chain(
    command, outputs, reference: dict[str, str], duration: float, rng: random.Random, kills: int, stats, growing=()
):
    """Kill ``command`` (a function: () -> argv for the next start) ``kills`` times at random
    points of its ``duration``, restarting it each time, then let it finish. After each kill
    every output present must equal ``reference``, except the ``growing`` ones: records a
    stage rewrites (whole, atomically) as it finishes each part, e.g. features.json."""
    for _ in range(kills):
        proc = _start(command())
        delay = rng.uniform(0.3, duration)
        try:
            proc.wait(timeout=delay)
            stats["finished_before_kill"] += 1  # it outran the kill: not counted as a trial
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            break
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            stats["kills"] += 1
        present = _digest(outputs())
        wrong = {k for k, v in present.items() if reference.get(k) != v and k not in growing}
        assert not wrong, f"after a kill at {delay:.2f} s, {sorted(wrong)} exist but differ from a complete run"
    _run(command())
    assert _digest(outputs()) == reference


def _chains(name, command_for, outputs_for, prepare, reference, duration, seed, growing=()):
    """Fresh copies (``prepare(dir)``), each killed a few times, until TRIALS kills."""
    rng = random.Random(seed)
    stats = {"kills": 0, "finished_before_kill": 0, "chains": 0}
    base = Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"kill-{name}-{os.getpid()}"
    try:
        while stats["kills"] < TRIALS:
            d = base / str(stats["chains"])
            prepare(d)
            kill_chain(
                lambda d=d: command_for(d), lambda d=d: outputs_for(d), reference, duration, rng, 5, stats, growing
            )
            stats["chains"] += 1
            shutil.rmtree(d)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{name}: {stats}")
    _record(name, stats)
    return stats


def _record(name: str, stats: dict) -> None:
    """The counts, for docs/reliability.md (tests/.kill_trials.json, not committed)."""
    path = Path(__file__).parent / ".kill_trials.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = stats | {"trials_asked": TRIALS}
    path.write_text(json.dumps(data, indent=1) + "\n")


def test_killed_corpus_builds_resume_to_the_same_corpus(tmp_path):
    ref = tmp_path / "ref"
    duration = _run(["corpus", "build", "--preset", "tiny", "--out", ref])

    def outputs(d):
        return sorted(d.glob("*_recordings.jsonl")) + sorted(d.glob("*_supervisions.jsonl")) + [d / "lm_text.txt"]

    _chains(
        "corpus build",
        lambda d: ["corpus", "build", "--preset", "tiny", "--out", d],
        outputs,
        lambda d: None,
        _digest(outputs(ref)),
        duration,
        seed=1,
    )


def _copy(src: Path, skip=()):
    def prepare(d: Path):
        shutil.copytree(src, d, symlinks=True, ignore=shutil.ignore_patterns(*skip))

    return prepare


def test_killed_feature_extraction_resumes_to_the_same_features(tiny_corpus, tmp_path):
    src = tmp_path / "src"
    _copy(tiny_corpus, skip=("feats", "*_cuts.jsonl", "features.json", "units", "lm", "soft_labels", "alignments"))(src)
    ref = tmp_path / "ref"
    _copy(src)(ref)
    duration = _run(["features", "compute", ref])

    def outputs(d):
        return [*sorted(d.glob("*_cuts.jsonl")), *sorted((d / "feats").glob("[!.]*.lca")), d / "features.json"]

    command = lambda d: ["features", "compute", d]  # noqa: E731
    _chains("features", command, outputs, _copy(src), _digest(outputs(ref)), duration, 2, growing=["features.json"])


def test_killed_teaching_resumes_to_the_same_cache(tiny_units, tmp_path):
    from speechdistill.teachers.lm import LMConfig
    from speechdistill.teachers.lm_train import train_lm

    src = tmp_path / "src"
    _copy(tiny_units.parent, skip=("soft_labels",))(src)
    train_lm(src, "phone", LMConfig(d_model=16, num_layers=1), max_sentences=50, show_progress=False)
    ref = tmp_path / "ref"
    _copy(src)(ref)
    args = ["--unit", "phone", "--top-k", "4", "--temperature", "2"]
    duration = _run(["teach", ref, *args])

    def outputs(d):
        return sorted((d / "soft_labels").glob("*"))

    _chains("teach", lambda d: ["teach", d, *args], outputs, _copy(src), _digest(outputs(ref)), duration, 3)


ALIGNER = [*TINY_ALIGNER, "rounds=1", "optim.max_epochs=2", "gmm_iterations=4"]  # the later override wins


def test_killed_alignment_resumes_to_the_same_alignment(tiny_units, tmp_path):
    src = tmp_path / "src"
    _copy(tiny_units.parent, skip=("alignments", "lm", "soft_labels"))(src)
    ref = tmp_path / "ref"
    _copy(src)(ref)
    duration = _run(["align", "run", ref, "--backend", "own", *ALIGNER])

    def outputs(d):
        return sorted((d / "alignments" / "own").glob("*.json*"))

    ref_digest = _digest(outputs(ref))
    assert len(ref_digest) == 6  # 3 splits: alignments and failures
    _chains(
        "alignment",
        lambda d: ["align", "run", d, "--backend", "own", *ALIGNER],
        outputs,
        _copy(src),
        ref_digest,
        duration,
        4,
    )


def test_killed_training_resumes_to_the_same_weights(tiny_units, tmp_path):
    from speechdistill.config import save_config
    from test_train import tiny_config

    cfg_path = tmp_path / "cfg.yaml"
    save_config(tiny_config(tiny_units.parent, "run", max_steps=24), cfg_path)
    ref = tmp_path / "ref"
    ref.mkdir()
    duration = _run(["train", cfg_path, f"out_dir={ref / 'run'}"])
    want = load_file(ref / "run" / "last.safetensors")
    rng = random.Random(5)
    stats = {"kills": 0, "finished_before_kill": 0, "chains": 0}
    while stats["kills"] < TRIALS:
        out = tmp_path / f"chain{stats['chains']}" / "run"

        def command(out=out):  # continue what is there; a run killed before its first checkpoint starts again
            return ["train", cfg_path, f"out_dir={out}", "--resume" if (out / "last.json").exists() else "--overwrite"]

        def outputs(out=out):
            return [out / "last.safetensors"] if (out / "last.json").exists() else []

        for _ in range(5):
            proc = _start(command())
            try:
                proc.wait(timeout=rng.uniform(0.3, duration))
                stats["finished_before_kill"] += 1
                break
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                stats["kills"] += 1
            for path in outputs():  # a checkpoint there must load whole (its JSON holds its SHA-256)
                from speechdistill.checkpoint import load_checkpoint

                load_checkpoint(path.with_suffix(""))
        _run(command())
        got = load_file(out / "last.safetensors")
        for k in want:
            if k.startswith("model."):
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=f"{k}, chain {stats['chains']}")
        stats["chains"] += 1
    print(f"\ntraining: {stats}")
    _record("training", stats)
