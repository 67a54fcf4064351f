"""Unit LMs, soft labels and the distillation loss terms, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechdistill.data.layout import SoftLabelSpec
from speechdistill.distill.losses import interpolated_target, kd_kl
from speechdistill.distill.soft_labels import (
    SoftLabelCache,
    StaleCacheError,
    build_cache,
    reference_positions,
    spread_to_frames,
)
from speechdistill.teachers.lm import LMConfig, UnitLM, top_k_soft_labels


def test_kd_kl_with_temperature_matches_hand_computation():
    T = 2.0
    logits = torch.tensor([[[0.0, math.log(3.0), -1.0]]])  # (N=1, T=1, V=3)
    p = torch.tensor([[[0.7, 0.3]]])
    idx = torch.tensor([[[1, 0]]])
    z = [0.0 / T, math.log(3.0) / T, -1.0 / T]
    log_norm = math.log(sum(math.exp(v) for v in z))
    log_q = [v - log_norm for v in z]
    expected = T**2 * (0.7 * (math.log(0.7) - log_q[1]) + 0.3 * (math.log(0.3) - log_q[0]))
    got = kd_kl(logits, p, idx, torch.tensor([[True]]), T)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # masked frames do not count
    two = kd_kl(logits.repeat(1, 2, 1), p.repeat(1, 2, 1), idx.repeat(1, 2, 1), torch.tensor([[True, False]]), T)
    assert float(two) == pytest.approx(expected, rel=1e-6)


def test_interpolated_target_is_the_formula_and_sums_to_one():
    hard = torch.tensor([2, 0])
    values = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    indices = torch.tensor([[2, 3], [1, 0]])
    t = interpolated_target(hard, values, indices, num_classes=4, weight=0.3)
    assert torch.allclose(t.sum(-1), torch.ones(2))
    assert torch.allclose(t[0], torch.tensor([0.0, 0.0, 0.7 + 0.15, 0.15]))
    assert torch.allclose(t[1], torch.tensor([0.7 + 0.03, 0.27, 0.0, 0.0]))


def test_top_k_renormalises_the_softened_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    values, indices = top_k_soft_labels(logits, k=2, temperature=3.0)
    soft = (logits / 3.0).softmax(-1)
    assert indices.tolist() == [0, 1]
    assert torch.allclose(values, soft[:2] / soft[:2].sum())
    assert float(values.sum()) == pytest.approx(1.0)


def test_soft_labels_land_on_the_aligned_frames():
    spans = np.array([[0.10, 0.05], [0.15, 0.10], [0.40, 0.08]])  # positions 0, 1, 2
    owner = spread_to_frames(spans, frame_shift=0.04, num_frames=13)
    # frame centres: 0.02, 0.06, 0.10, 0.14, 0.18, 0.22, 0.26, 0.30, ..., 0.42, 0.46, 0.50
    assert owner.tolist() == [-1, -1, 0, 0, 1, 1, -1, -1, -1, -1, 2, 2, -1]
    # out of time order (the pass per position): the same frames for the same spans
    assert spread_to_frames(spans[[2, 0, 1]], 0.04, 13).tolist() == [-1, -1, 1, 1, 2, 2, -1, -1, -1, -1, 0, 0, -1]
    # a span of no length covers nothing, even one that starts inside the span before it (a
    # subword piece rounded to nothing, as float32 word spans give)
    spans = np.array([[0.09, 0.15], [0.2399, 0.0], [0.40, 0.08]], dtype=np.float32)
    assert spread_to_frames(spans, 0.04, 13).tolist() == [-1, -1, 0, 0, 0, 0, -1, -1, -1, -1, 2, 2, -1]


def test_spreading_in_time_order_agrees_with_a_pass_per_position():
    """The binary search (spans in time order) against the definition: the last position
    whose span covers a frame's centre; touching, overlapping and equal spans (the pieces
    of one word), float32 spans as the caches store them."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        starts = np.cumsum(rng.choice([0.0, 0.01, 0.05, 0.1], size=rng.integers(1, 30)))  # 0: equal starts
        ends = np.maximum.accumulate(starts + rng.choice([0.0, 0.01, 0.03, 0.2], size=len(starts)))
        spans = np.stack([starts, ends - starts], 1).astype(np.float32)
        centres = (np.arange(60) + 0.5) * 0.04
        want = np.full(60, -1)
        for p, (s, d) in enumerate(spans):
            want[(centres >= s) & (centres < s + d)] = p
        assert spread_to_frames(spans, 0.04, 60).tolist() == want.tolist()


@pytest.mark.parametrize("arch", ["lstm", "transformer", "masked"])
def test_lms_score_every_position_and_causal_ones_ignore_the_future(arch):
    torch.manual_seed(0)
    lm = UnitLM(LMConfig(arch=arch, d_model=32, num_layers=1, num_heads=2, dropout=0.0), vocab_size=10).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    logits = lm.position_logits(ids)
    assert logits.shape == (1, 5, 10)
    changed = ids.clone()
    changed[0, 4] = 9
    if arch != "masked":
        torch.testing.assert_close(lm.position_logits(changed)[0, :5], logits[0, :5])
    loss = lm.loss(ids, torch.tensor([5]))
    assert torch.isfinite(loss)


def test_lm_cache_round_trip_and_stale_cache_refused(tiny_units):
    from speechdistill.data.corpus import load_split
    from speechdistill.teachers.lm_train import load_lm, train_lm
    from speechdistill.units.inventory import Units

    corpus = tiny_units.parent
    meta = train_lm(
        corpus, "phone", LMConfig(d_model=32, num_layers=1), epochs=1, max_sentences=300, show_progress=False
    )
    assert 1.0 < meta["dev_perplexity"] < 40, "better than uniform over 40 phones"
    lm, _ = load_lm(corpus / "lm" / "phone")
    cache_meta = build_cache(corpus, SoftLabelSpec("phone", 4, 2.0), show_progress=False)
    assert cache_meta["utterances"] == 64 and cache_meta["bytes_per_hour_of_audio"] > 0
    prefix = corpus / "soft_labels" / "phone-k4-T2"
    cache = SoftLabelCache.open(prefix, corpus)
    cut = sorted(load_split(corpus, "train"), key=lambda c: c.id)[0]
    ids, spans = reference_positions(cut, "phone", Units(tiny_units))
    values, indices, mask = cache.frames(cut.id, frame_shift=0.01, num_frames=int(cut.duration * 100))
    assert values.shape[1] == 4 and torch.allclose(values[mask].sum(-1), torch.ones(int(mask.sum())), atol=1e-2)
    direct = top_k_soft_labels(lm.position_logits(torch.tensor([ids]))[0], 4, 2.0)
    first = int(np.argmax(mask.numpy()))
    assert indices[first].tolist() == direct[1][0].tolist()
    # retraining the LM makes the cache stale
    train_lm(
        corpus, "phone", LMConfig(d_model=32, num_layers=1), epochs=1, max_sentences=300, seed=1, show_progress=False
    )
    with pytest.raises(StaleCacheError, match="is stale.*rebuild it with `speechdistill teach`"):
        SoftLabelCache.open(prefix, corpus)


def test_ctc_viterbi_alignment():
    from speechdistill.distill.losses import ctc_viterbi

    # frames prefer: a a - b b ; targets [a, b] -> positions 0 0 -1 1 1
    best = [1, 1, 0, 2, 2]
    lp = torch.full((5, 3), -5.0)
    for t, k in enumerate(best):
        lp[t, k] = -0.1
    assert ctc_viterbi(lp, [1, 2]) == [0, 0, -1, 1, 1]
    # repeated labels need a blank between them, even if the frames prefer "a a a"
    lp = torch.full((3, 2), -5.0)
    lp[:, 1] = -0.1
    assert ctc_viterbi(lp, [1, 1]) == [0, -1, 1]


def test_hierarchical_taps_and_interpolation_train_end_to_end(tiny_units, tmp_path):
    from speechdistill.config import from_dict
    from speechdistill.teachers.lm_train import train_lm
    from speechdistill.train import TrainConfig, train

    corpus = tiny_units.parent
    for unit in ("senone", "phone", "subword"):
        train_lm(corpus, unit, LMConfig(d_model=32, num_layers=1), epochs=1, max_sentences=200, show_progress=False)
        build_cache(corpus, SoftLabelSpec(unit, 4, 2.0), show_progress=False)
    kd = {"kd": {"top_k": 4, "temperature": 2.0}, "ce_weight": 0.0}
    cfg = from_dict(
        TrainConfig,
        {
            "out_dir": str(tmp_path),
            "progress": False,
            "log_every": 1,
            "data": {"corpus": str(corpus), "max_duration": 30.0},
            "model": {
                "encoder": {"preset": None, "num_blocks": 3, "d_model": 32, "num_heads": 2, "ff_dim": 64},
                "taps": [
                    {"layer": 1, "unit": "senone"} | kd,
                    {"layer": 2, "unit": "phone"} | kd,
                    {"layer": 3, "unit": "subword"} | kd,
                ],
            },
            "interp": {"enabled": True, "weight": 0.3, "soft": {"top_k": 4, "temperature": 2.0}, "ramp_steps": 4},
            "optim": {"max_steps": 4, "warmup_steps": 2},
        },
    )
    summary = train(cfg)
    assert summary["steps"] == 4
    rows = [line.split(",") for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    keys = {r[1] for r in rows}
    assert {"senone@1.kd", "phone@2.kd", "subword@3.kd", "interp", "interp_weight"} <= keys
    assert {"senone@1", "dev_ctc"} <= keys
    # dev batches carry no soft labels: the KD-only taps computed nothing there, and log no 0
    assert not [k for k in keys if k.startswith("dev_") and "@" in k]
    weights = [float(r[2]) for r in rows if r[1] == "interp_weight"]
    assert weights == pytest.approx([0.0, 0.075, 0.15, 0.225])  # w * step / ramp_steps, before each update
    assert all(math.isfinite(float(r[2])) for r in rows)


def test_hugging_face_subword_teacher_from_a_local_directory(tiny_units, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from speechdistill.teachers.lm_train import load_lm_teacher
    from speechdistill.units.inventory import Units

    units = Units(tiny_units)
    V = units.vocab_size("subword")
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=V + 1, n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=V, eos_token_id=V)
    ).save_pretrained(tmp_path / "hf")
    teacher, meta = load_lm_teacher(tmp_path / "hf", "subword", units)
    ids = torch.tensor([[5, 9, 17, 3]])
    logits = teacher.position_logits(ids)
    assert logits.shape == (1, 4, V) and meta["kind"] == "hf"
    changed = ids.clone()
    changed[0, 3] = 40
    torch.testing.assert_close(teacher.position_logits(changed), logits)  # causal: position 3 ignores itself
    with pytest.raises(ValueError, match=r"teach word-piece units \(subwords\) only"):
        load_lm_teacher(tmp_path / "hf", "phone", units)
    GPT2LMHeadModel(GPT2Config(vocab_size=V - 5, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="must hold the .* SentencePiece ids"):
        load_lm_teacher(tmp_path / "small", "subword", units)
    meta = build_cache(
        tiny_units.parent, SoftLabelSpec("subword", 4, 1.0), lm_prefix=tmp_path / "hf", show_progress=False
    )
    assert meta["utterances"] == 64


def test_interpolation_loss_is_ce_to_the_interpolated_target():
    # (1 - w) CE(one_hot) + w CE(p_LM) == CE((1 - w) one_hot + w p_LM): the identity behind
    # training the main output with (1 - w) CTC + w CE(p_LM) on its Viterbi frames.
    torch.manual_seed(0)
    log_q = torch.randn(3, 6).log_softmax(-1)
    hard = torch.tensor([1, 4, 0])
    values = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])
    indices = torch.tensor([[1, 2], [3, 4], [5, 0]])
    w = 0.3
    target = interpolated_target(hard, values, indices, 6, w)
    lhs = (1 - w) * -log_q.gather(1, hard[:, None]).squeeze(1) + w * -(values * log_q.gather(1, indices)).sum(1)
    torch.testing.assert_close(-(target * log_q).sum(1), lhs)
