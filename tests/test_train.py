"""End-to-end training on the tiny corpus: a real run, resume after a kill, DDP,
evaluation, export, and checkpoint faults."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from speechdistill.checkpoint import CheckpointError, load_checkpoint
from speechdistill.config import from_dict, to_dict
from speechdistill.evaluate import decode_cuts
from speechdistill.train import TrainConfig, setup, train

TESTS = Path(__file__).parent


def tiny_config(corpus, out, **optim) -> TrainConfig:
    return from_dict(
        TrainConfig,
        {
            "out_dir": str(out),
            "progress": False,
            "checkpoint_every": 4,
            "log_every": 2,
            "data": {"corpus": str(corpus), "max_duration": 30.0},
            "model": {
                "encoder": {"preset": None, "num_blocks": 3, "d_model": 48, "num_heads": 4, "ff_dim": 96},
                "taps": [{"layer": 1, "unit": "senone"}, {"layer": 2, "unit": "phone", "kind": "ctc"}],
            },
            "optim": {"lr": 0.003, "warmup_steps": 5, "max_epochs": 3} | optim,
        },
    )


@pytest.fixture(scope="module")
def trained(tiny_units, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = train(tiny_config(tiny_units.parent, out, max_steps=16))
    return out, summary


def _cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "speechdistill.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_training_runs_logs_every_term_and_learns(trained):
    out, summary = trained
    assert summary["steps"] == 16 and summary["skipped_utterances"] == 0
    rows = [line.split(",") for line in (out / "log.csv").read_text().splitlines()[1:]]
    keys = {r[1] for r in rows}
    assert {"ctc", "senone@1", "phone-ctc@2", "total", "lr", "dev_total", "dev_error"} <= keys
    totals = [float(r[2]) for r in rows if r[1] == "total"]
    assert totals[-1] < totals[0], "the loss should fall over 16 steps"
    for name in ("best", "last"):
        tensors, meta = load_checkpoint(out / name)
        assert meta["kind"] == "acoustic-model" and "model.main.weight" in tensors


def test_killed_run_resumes_to_the_same_weights(trained, tiny_units, tmp_path):
    out, _ = trained
    killed = tmp_path / "killed"
    cfg = tiny_config(tiny_units.parent, killed, max_steps=16)
    from speechdistill.config import save_config

    save_config(cfg, tmp_path / "cfg.yaml")
    kill = random.Random().randint(5, 15)  # a different step each run; the property holds for all
    proc = _cli("train", tmp_path / "cfg.yaml", f"debug_kill_at_step={kill}", check=False)
    assert proc.returncode == -9, f"the run should have been killed at step {kill}"
    state = json.loads((killed / "last.json").read_text())["state"]
    assert kill - 4 <= state["step"] <= kill, f"killed at {kill}: a checkpoint every 4 steps, got {state['step']}"
    _cli("train", tmp_path / "cfg.yaml", "--resume")
    a = load_file(out / "last.safetensors")
    b = load_file(killed / "last.safetensors")
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{k} (killed at step {kill})")


def test_a_run_killed_at_its_last_step_does_not_take_one_more(trained, tiny_units, tmp_path):
    """Killed right after the checkpoint at max_steps (before the end of its epoch was
    saved): the resumed run validates and stops, it does not train a step past max_steps."""
    out, _ = trained
    killed = tmp_path / "killed"
    from speechdistill.config import save_config

    save_config(tiny_config(tiny_units.parent, killed, max_steps=16), tmp_path / "cfg.yaml")
    proc = _cli("train", tmp_path / "cfg.yaml", "debug_kill_at_step=16", check=False)
    assert proc.returncode == -9
    _cli("train", tmp_path / "cfg.yaml", "--resume")
    assert json.loads((killed / "last.json").read_text())["state"]["step"] == 16
    a, b = load_file(out / "last.safetensors"), load_file(killed / "last.safetensors")
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_a_run_stopped_at_max_steps_continues_to_a_longer_runs_weights(trained, tiny_units, tmp_path):
    """Stopped by max_steps inside an epoch, a run keeps its place there (not the next
    epoch's start): resumed with a larger max_steps (noam schedule, which max_steps does not
    shape), it reaches the weights of a run given that budget from the start."""
    from speechdistill.config import save_config

    out, _ = trained
    short = tmp_path / "short"
    save_config(tiny_config(tiny_units.parent, short, max_steps=6), tmp_path / "cfg.yaml")
    _cli("train", tmp_path / "cfg.yaml")
    state = json.loads((short / "last.json").read_text())["state"]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 0, 6), state
    assert [h["step"] for h in state["history"]] == [6]  # validated where it stopped
    proc = _cli("train", tmp_path / "cfg.yaml", "optim.max_steps=16", "--resume")
    assert "optim.max_steps:" in proc.stderr  # the resumed run says what changed
    assert json.loads((short / "last.json").read_text())["state"]["step"] == 16
    a, b = load_file(out / "last.safetensors"), load_file(short / "last.safetensors")
    for k in a:
        if k.startswith("model."):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_ddp_two_processes_match_one(tiny_units, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    subprocess.run([sys.executable, TESTS / "ddp_step.py", tiny_units.parent, one], check=True, capture_output=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29533",
            TESTS / "ddp_step.py",
            tiny_units.parent,
            two,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads((one / "loss.json").read_text()), json.loads((two / "loss.json").read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    ga, gb = load_file(one / "grads.safetensors"), load_file(two / "grads.safetensors")
    assert ga.keys() == gb.keys() and len(ga) > 10
    for k in ga:
        # float32 sums in another order: tolerance relative to the tensor's largest gradient
        # (a missing or doubled all-reduce is off by 2x, a wrong batch split by far more)
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-3, atol=1e-4 * float(ga[k].abs().max()), msg=k)
    # dev: two ranks, each decoding half of the batches, score what one process scores
    d1 = json.loads((one / "dev0.json").read_text())
    d2 = [json.loads((two / f"dev{r}.json").read_text()) for r in (0, 1)]
    assert d2[0] == d2[1], "every rank must hold the same dev totals (best epoch, early stop)"
    ids = [r[0] for r in d1["rows"]]
    assert len(ids) == len(set(ids)) > 2 and [r[0] for r in d2[0]["rows"]] == ids
    assert [r[1] for r in d2[0]["rows"]] == [r[1] for r in d1["rows"]]
    assert d2[0]["scores"]["dev_error"] == pytest.approx(d1["scores"]["dev_error"], abs=1e-6)
    assert d2[0]["scores"]["dev_ctc"] == pytest.approx(d1["scores"]["dev_ctc"], rel=0.05)


def test_evaluate_writes_hypotheses(trained, tiny_units):
    out, _ = trained
    proc = _cli("evaluate", out / "best", "--data", tiny_units.parent, "--split", "test")
    assert "WER" in proc.stdout
    rows = (out / "test.hyp.tsv").read_text().splitlines()
    assert len(rows) == 16 and all(len(r.split("\t")) == 3 for r in rows)
    scores = json.loads((out / "test.scores.json").read_text())
    assert scores["num_utterances"] == 16 and scores["wer"] >= 0


def test_dev_scoring_in_the_loss_pass_equals_decoding_the_checkpoint(trained, tiny_units, tmp_path):
    """validate() decodes the main output of its loss pass; it must score exactly what the
    separate decode of the inference model (what `evaluate` runs) scores."""
    out, _ = trained
    shutil.copytree(out, tmp_path / "run")
    cfg = tiny_config(tiny_units.parent, tmp_path / "run", max_steps=16)
    engine, task = setup(cfg, "resume")
    try:
        assert engine.state.step == 16
        with torch.no_grad():  # 16 steps leave the output on blank: push it off, so that
            task.model.main.bias[0] -= 20.0  # every frame's argmax is a piece, near ties included
        scores = task.validate(engine.model)
        alone = decode_cuts(
            task.model.without_taps(),
            task.dev_dataset,
            task.dev_cuts,
            "subword",
            task.units,
            max_duration=cfg.data.max_duration,
        )
    finally:
        engine.close()
    assert len(task.dev_rows) == len(task.dev_cuts) == alone["num_utterances"] > 0
    assert task.dev_rows == alone["rows"]
    assert all(hyp for _, _, hyp in alone["rows"])
    assert scores["dev_error"] == alone["error_rate"]
    assert {"dev_ctc", "dev_total"} <= scores.keys() and task.model.training


def test_export_onnx_matches_pytorch(trained, tmp_path):
    import onnxruntime as ort

    from speechdistill.export import export
    from speechdistill.students.model import load_inference_model

    out, _ = trained
    written = export(out / "best", tmp_path)
    model, _ = load_inference_model(out / "best")
    feats, lens = torch.randn(3, 177, 80), torch.tensor([177, 120, 64])
    with torch.no_grad():
        ref, ref_lens = model(feats, lens)
    sess = ort.InferenceSession(str(written["onnx"]), providers=["CPUExecutionProvider"])
    got, got_lens = sess.run(None, {"feats": feats.numpy(), "feat_lens": lens.numpy()})
    assert got_lens.tolist() == ref_lens.tolist()
    for i, t in enumerate(ref_lens.tolist()):
        np.testing.assert_allclose(got[i, :t], ref[i, :t].numpy(), atol=1e-3)
    scripted = torch.jit.load(str(written["torchscript"]))
    ts, ts_lens = scripted(feats, lens)
    assert ts_lens.tolist() == ref_lens.tolist()
    torch.testing.assert_close(ts[0, : ref_lens[0]], ref[0, : ref_lens[0]], atol=1e-4, rtol=1e-4)


def test_truncated_or_foreign_checkpoints_are_named(trained, tmp_path):
    out, _ = trained
    for ext in ("safetensors", "json"):
        shutil.copy(out / f"best.{ext}", tmp_path / f"cut.{ext}")
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors is truncated"):
        load_checkpoint(tmp_path / "cut")
    from speechdistill.checkpoint import load_model_state
    from speechdistill.students.model import AcousticModel, ModelConfig

    tensors, meta = load_checkpoint(out / "best")
    other = AcousticModel(ModelConfig(), meta["vocab"])
    with pytest.raises(CheckpointError, match="is from another model"):
        load_model_state(other, tensors, "model.", out / "best")
    proc = _cli("evaluate", tmp_path / "cut", "--data", "x", check=False)
    assert proc.returncode == 1 and "truncated" in proc.stderr and "Traceback" not in proc.stderr


def test_nan_loss_stops_with_step_and_utterances(trained, tiny_units, tmp_path):
    from lhotse import CutSet

    from speechdistill.engine import NonFiniteLossError
    from speechdistill.train import setup

    engine, task = setup(tiny_config(tiny_units.parent, tmp_path / "nan", max_steps=4))
    cuts = sorted(task.train_cuts, key=lambda c: c.id)[:3]
    batch = task.dataset[CutSet.from_cuts(cuts)]
    batch.feats[1, 5, 3] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 0 .*on utterances \['espeak-"):
        engine.forward_backward(batch)
    assert not (tmp_path / "nan" / "last.safetensors").exists(), "nothing is saved from a NaN step"


def test_learning_rate_schedules_hand_computed():
    from speechdistill.engine import lr_lambda

    noam = lr_lambda(4)
    assert [noam(s) for s in (0, 2, 3, 15)] == pytest.approx([0.25, 0.75, 1.0, 0.5])
    # warmup 4 steps, then a straight line from 1 (step 4) to 0.1 (step 12), held after
    lin = lr_lambda(4, "linear", total_steps=12, final=0.1)
    assert [lin(s) for s in (0, 3, 7, 11, 30)] == pytest.approx([0.25, 1.0, 0.55, 0.1, 0.1])
    con = lr_lambda(4, "constant")
    assert [con(s) for s in (0, 3, 100)] == pytest.approx([0.25, 1.0, 1.0])
    with pytest.raises(ValueError, match="schedule must be"):
        from_dict(TrainConfig, {"optim": {"schedule": "cosine"}})


def test_adamw_takes_its_second_moment_decay_from_the_config(tiny_units, tmp_path):
    from speechdistill.train import setup

    engine, _ = setup(tiny_config(tiny_units.parent, tmp_path / "b2", max_steps=1, beta2=0.98))
    try:
        assert [g["betas"] for g in engine.optimizer.param_groups] == [(0.9, 0.98)] * len(engine.optimizer.param_groups)
    finally:
        engine.close()
    assert from_dict(TrainConfig, {}).optim.beta2 == 0.999  # torch's default unless a recipe says otherwise
    with pytest.raises(ValueError, match=r"beta2=1.0 must be in \(0, 1\)"):
        from_dict(TrainConfig, {"optim": {"beta2": 1.0}})


def test_fused_adamw_is_used_when_asked_learns_the_same_and_resumes_identically(trained, tiny_units, tmp_path):
    """optim.fused: torch's fused kernel, not the loop (its weights differ in the last bits
    from the loop's run, and only there), and a killed fused run resumes to the weights of
    an uninterrupted fused one."""
    from speechdistill.config import save_config
    from speechdistill.train import setup

    engine, _ = setup(tiny_config(tiny_units.parent, tmp_path / "probe", max_steps=1, fused=True))
    try:
        assert [g["fused"] for g in engine.optimizer.param_groups] == [True] * len(engine.optimizer.param_groups)
    finally:
        engine.close()
    assert not from_dict(TrainConfig, {}).optim.fused  # the loop stays the default: the README's tables used it
    loop, _ = trained
    ref = tmp_path / "fused"
    train(tiny_config(tiny_units.parent, ref, max_steps=16, fused=True))
    a, b = load_file(loop / "last.safetensors"), load_file(ref / "last.safetensors")
    keys = [k for k in a if k.startswith("model.") and a[k].is_floating_point()]
    assert any(not torch.equal(a[k], b[k]) for k in keys), "optim.fused gave the loop's bits: was it used?"
    for k in keys:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-3, msg=f"{k}: fused and loop AdamW drift apart")
    killed = tmp_path / "killed"
    save_config(tiny_config(tiny_units.parent, killed, max_steps=16, fused=True), tmp_path / "cfg.yaml")
    assert _cli("train", tmp_path / "cfg.yaml", "debug_kill_at_step=10", check=False).returncode == -9
    _cli("train", tmp_path / "cfg.yaml", "--resume")
    c = load_file(killed / "last.safetensors")
    for k in keys:
        torch.testing.assert_close(b[k], c[k], rtol=0, atol=1e-6, msg=f"{k}: a fused run resumes identically")


def test_precision_auto_follows_the_cpu(tmp_path):
    """bf16 autocast only on a CPU with native bf16; fp32 on an AVX2-only one (where bf16
    is emulated and 8x slower); an explicit precision is kept."""
    from speechdistill.engine import cpu_flags, resolve_precision

    epyc_avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    epyc_bf16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    graviton = "processor\t: 0\nFeatures\t: fp asimd sve bf16\n"
    flags = {}
    for name, text in (("avx2", epyc_avx2), ("bf16", epyc_bf16), ("arm", graviton)):
        (tmp_path / name).write_text(text)
        flags[name] = cpu_flags(str(tmp_path / name))
    assert "avx2" in flags["avx2"] and "avx512_bf16" in flags["bf16"]
    assert cpu_flags(str(tmp_path / "absent")) == set()
    assert resolve_precision("auto", "cpu", flags["avx2"])[0] == "32-true"
    assert resolve_precision("auto", "cpu", flags["bf16"]) == ("bf16-mixed", "the CPU has native bf16 (avx512_bf16)")
    assert resolve_precision("auto", "cpu", flags["arm"])[0] == "bf16-mixed"
    assert resolve_precision("auto", "cpu", set())[0] == "32-true"
    assert resolve_precision("bf16-mixed", "cpu", flags["avx2"]) == ("bf16-mixed", "set in the config")
    with pytest.raises(ValueError, match="precision='bf16'; valid: auto, 32-true"):
        from_dict(TrainConfig, {"precision": "bf16"})


def test_acoustic_model_is_an_upstream(trained):
    from speechdistill.teachers.ssl import AcousticModelUpstream
    from speechdistill.teachers.upstream import load_teacher

    out, _ = trained
    teacher = load_teacher(out / "best")
    assert isinstance(teacher.upstream, AcousticModelUpstream) and teacher.frame_shift == pytest.approx(0.04)
    wavs = torch.randn(2, 16000) * 0.1
    states, lens = teacher(wavs, torch.tensor([16000, 8000]))
    # 100 and 50 fbank frames; two stride-2 convs: (100 - 1) // 2 = 49 -> 24, 50 -> 24 -> 11
    assert len(states) == 3 + 1 and lens.tolist() == [24, 11]
    assert all(s.shape == (2, 24, 48) for s in states)


def test_learned_loss_weights_start_at_the_hand_weights_and_stay_positive(tiny_units, tmp_path):
    """model.loss_weighting=uncertainty: the log's total is sum_i w_i L_i - log(w_i) / 2 at
    every step (w_i = exp(-s_i), from the log), the first step's weights are the hand
    weights (main 1 - 0.3 for the phone CTC tap at weight 0.3, senone 0.3), the weights move,
    stay positive, their shares sum to 1, and the decodable model does not carry them."""
    from speechdistill.students.model import load_inference_model

    cfg = tiny_config(tiny_units.parent, tmp_path, max_steps=6)
    cfg = from_dict(
        TrainConfig, to_dict(cfg) | {"log_every": 1, "model": to_dict(cfg.model) | {"loss_weighting": "uncertainty"}}
    )
    train(cfg)
    rows = [line.split(",") for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    by_step: dict[str, dict[str, float]] = {}
    for r in rows:
        by_step.setdefault(r[3], {})[r[1]] = float(r[2])
    steps = [s for s in by_step if "w_main" in by_step[s]]
    assert len(steps) == 6
    names = ["main", "senone@1", "phone-ctc@2"]
    losses = {"main": "ctc", "senone@1": "senone@1", "phone-ctc@2": "phone-ctc@2"}
    for s in steps:
        t = by_step[s]
        w = {n: t[f"w_{n}"] for n in names}
        assert all(v > 0 for v in w.values())
        assert sum(t[f"share_{n}"] for n in names) == pytest.approx(1.0, abs=1e-5)
        expected = sum(w[n] * t[losses[n]] - 0.5 * np.log(w[n]) for n in names)
        assert t["total"] == pytest.approx(expected, rel=1e-4)
    first, last = by_step[steps[0]], by_step[steps[-1]]
    hand = {n: t.weight for n, t in zip(names[1:], cfg.model.taps, strict=True)}
    assert first["w_main"] == pytest.approx(1 - hand["phone-ctc@2"], rel=1e-5)
    assert first["w_senone@1"] == pytest.approx(hand["senone@1"], rel=1e-5)
    assert any(abs(last[f"w_{n}"] - first[f"w_{n}"]) > 1e-4 for n in names)
    model, _ = load_inference_model(tmp_path / "best")
    assert not any("loss_log_vars" in n for n, _ in model.named_parameters())


def test_oracle_teacher_reads_the_labels_and_its_student_does_not(tiny_units, tmp_path):
    """model.oracle=labels: the main output changes when the target sequence does; the
    null control (same parameters) and an ordinary model do not take it; a student
    trained with teacher.path logs the KD term, whose value is T^2 KL by hand."""
    from speechdistill.distill.losses import teacher_kd
    from speechdistill.students.model import AcousticModel, ModelConfig, load_acoustic_model

    base = tiny_config(tiny_units.parent, tmp_path / "t", max_steps=3)
    oracle = from_dict(TrainConfig, to_dict(base) | {"model": to_dict(base.model) | {"oracle": "labels"}})
    train(oracle)
    teacher, _ = load_acoustic_model(tmp_path / "t" / "best")
    feats, lens = torch.randn(2, 120, 80), torch.tensor([120, 100])
    a, b = torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([[7, 6, 5], [9, 8, 0]])
    tl = torch.tensor([3, 2])
    with torch.no_grad():
        assert not torch.allclose(teacher(feats, lens, a, tl).main, teacher(feats, lens, b, tl).main)
        with pytest.raises(ValueError, match="needs the target sequence"):
            teacher(feats, lens)
        null = AcousticModel(ModelConfig(**(vars(teacher.cfg) | {"oracle": "blind"})), teacher.vocab).eval()
        torch.testing.assert_close(null(feats, lens, a, tl).main, null(feats, lens, b, tl).main)
        assert null.num_params() == teacher.num_params()  # the control has the same size
    # the student: no oracle block, distilled from the teacher's frames
    student = from_dict(
        TrainConfig, to_dict(base) | {"out_dir": str(tmp_path / "s"), "teacher": {"path": str(tmp_path / "t" / "best")}}
    )
    train(student)
    rows = [line.split(",") for line in (tmp_path / "s" / "log.csv").read_text().splitlines()[1:]]
    assert any(r[1] == "teacher_kd" and float(r[2]) > 0 for r in rows)
    s, _ = load_acoustic_model(tmp_path / "s" / "best")
    assert not hasattr(s, "oracle")
    # T^2 KL(p || q) by hand on one frame: p = (0.5, 0.5), q = (0.25, 0.75), T = 1
    p, q = torch.tensor([[[0.5, 0.5]]]).log(), torch.tensor([[[0.25, 0.75]]]).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(teacher_kd(q, p, torch.tensor([1]), 1.0)) == pytest.approx(expected, rel=1e-5)
    mismatch = from_dict(
        TrainConfig,
        to_dict(student) | {"out_dir": str(tmp_path / "m"), "model": to_dict(base.model) | {"main_unit": "phone"}},
    )
    with pytest.raises(ValueError, match="predicts subword .* this model phone"):
        train(mismatch)
