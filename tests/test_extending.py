"""docs/extending.md's worked examples, run: its code blocks form a plug-in module that
registers a unit type, a tap loss, an encoder block, an SSL student and an aligner
backend and defines an importer; the command line (``--plugin``) builds units, trains an
LM, caches soft labels, trains a model and aligns with all of them on a copy of the
tiny corpus."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(), re.S)
    assert len(blocks) == 6
    d = tmp_path_factory.mktemp("plugin")
    (d / "my_extensions.py").write_text("\n\n".join(blocks))
    return d


def _cli(plugin: Path, *args):
    env = os.environ | {"PYTHONPATH": f"{plugin}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "speechdistill.cli", "--plugin", "my_extensions", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_worked_examples_train_through_the_command_line(plugin, tiny_units, tmp_path):
    corpus = tmp_path / "c"
    shutil.copytree(tiny_units.parent, corpus, symlinks=True)
    _cli(plugin, "units", "build", corpus, "--vocab-size", 128, "--num-senones", 160, "--min-senone-frames", 20)
    letters = (corpus / "units" / "lm_text.letter.txt").read_text().splitlines()
    assert letters[0].replace(" ", "").replace("|", " ") == (corpus / "lm_text.txt").read_text().splitlines()[0]
    _cli(plugin, "lm", "train", corpus, "--unit", "letter", "--max-sentences", 300, "--d-model", 32, "--num-layers", 1)
    _cli(plugin, "teach", corpus, "--unit", "letter", "--top-k", 4)
    out = tmp_path / "run"
    taps = "[{layer: 1, unit: letter, kind: frame-rkl, kd: {top_k: 4}, ce_weight: 0.5}, {layer: 2, unit: phone}]"
    _cli(
        plugin,
        "train",
        "configs/asr/baseline.yaml",
        f"data.corpus={corpus}",
        f"out_dir={out}",
        "progress=false",
        "data.max_duration=30",
        "data.alignment=''",
        "model.main_unit=letter",
        f"model.taps={taps}",
        "model.encoder.kind=gru",
        "model.encoder.preset=null",
        "model.encoder.num_blocks=2",
        "model.encoder.d_model=32",
        "optim.max_steps=3",
        "log_every=1",
    )
    keys = {line.split(",")[1] for line in (out / "log.csv").read_text().splitlines()[1:]}
    assert {"letter-frame-rkl@1.rkl", "letter-frame-rkl@1.ce", "phone@2.ce", "dev_error"} <= keys
    _cli(plugin, "align", "run", corpus, "--backend", "uniform", "--split", "dev")
    table = _cli(plugin, "align", "score", corpus, "--ref", "synth", "--hyp", "uniform").stdout
    assert "| dev | 16 | 0 |" in table  # every dev utterance aligned, none failed
    scores = _cli(plugin, "evaluate", out / "best", "--data", corpus, "--split", "dev").stdout
    assert "WER" in scores
    rows = (out / "dev.hyp.tsv").read_text().splitlines()
    assert rows[0].split("\t")[1] in (corpus / "dev_supervisions.jsonl").read_text()  # letters decode to words


def test_the_worked_student_and_importer(plugin, tiny_units, tmp_path):
    rows = [json.loads(line) for line in (tiny_units.parent / "dev_supervisions.jsonl").read_text().splitlines()[:3]]
    recs = [json.loads(line) for line in (tiny_units.parent / "dev_recordings.jsonl").read_text().splitlines()]
    audio = {r["id"]: tiny_units.parent / r["sources"][0]["source"] for r in recs}
    tsv = tmp_path / "list.tsv"
    tsv.write_text("".join(f"{r['id']}\t{audio[r['id']]}\t{r['text'].lower()}\n" for r in rows))
    # in a process of its own: the registrations must not leak into the other tests
    script = f"""
import json, my_extensions
from speechdistill.data.corpus import load_split
from speechdistill.students.ssl import StudentConfig
report = my_extensions.import_tsv({str(tsv)!r}, {str(tmp_path / "imported")!r}, "dev")
texts = sorted(c.supervisions[0].text for c in load_split({str(tmp_path / "imported")!r}, "dev"))
print(json.dumps([StudentConfig(kind="distilhubert-last").targets(teacher_layers=6), report["kept"], texts]))
"""
    env = os.environ | {"PYTHONPATH": str(plugin)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    targets, kept, texts = json.loads(proc.stdout.splitlines()[-1])
    assert targets == [6] and kept == 3 and texts == sorted(r["text"] for r in rows)
