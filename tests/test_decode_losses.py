"""Loss terms against hand-computed values; CTC decoding of known logits; WER."""

from __future__ import annotations

import math

import pytest
import torch

from speechdistill.decode import beam_decode, error_rates, greedy_decode, prefix_beam_search
from speechdistill.distill.losses import IGNORE, ctc_feasible, ctc_loss, frame_ce


def test_ctc_loss_hand_computed():
    # T=2, V=2 (blank 0, "a" 1), target "a": paths (a,a), (a,-), (-,a).
    p = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    expected = -math.log(0.4 * 0.7 + 0.4 * 0.3 + 0.6 * 0.7)
    loss, ok = ctc_loss(p.log()[None], torch.tensor([2]), torch.tensor([[1]]), torch.tensor([1]))
    assert ok.tolist() == [True]
    assert float(loss) == pytest.approx(expected, rel=1e-5)  # divided by target length 1


def test_infeasible_utterances_are_skipped_not_nan():
    targets = torch.tensor([[1, 1, 2], [1, 2, 3]])
    assert ctc_feasible(torch.tensor([3, 3]), targets, torch.tensor([3, 3])).tolist() == [False, True]
    lp = torch.randn(2, 3, 4).log_softmax(-1)
    loss, ok = ctc_loss(lp, torch.tensor([3, 3]), targets, torch.tensor([3, 3]))
    assert ok.tolist() == [False, True] and torch.isfinite(loss)
    alone, _ = ctc_loss(lp[1:], torch.tensor([3]), targets[1:], torch.tensor([3]))
    assert float(loss) == pytest.approx(float(alone))
    none, ok = ctc_loss(lp[:1], torch.tensor([3]), targets[:1], torch.tensor([3]))
    assert float(none) == 0.0 and ok.tolist() == [False]


def test_frame_ce_hand_computed_and_ignores_padding():
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 1.0]]])  # frame 0: p(1) = 3/4
    labels = torch.tensor([[1, IGNORE]])
    assert float(frame_ce(logits, labels)) == pytest.approx(-math.log(0.75), rel=1e-6)


def test_greedy_merges_repeats_and_drops_blanks():
    # best path per frame: a a - a b b - (padding after T=6 ignored)
    path = [1, 1, 0, 1, 2, 2, 0, 3]
    lp = torch.full((1, 8, 4), -10.0)
    for t, k in enumerate(path):
        lp[0, t, k] = 0.0
    assert greedy_decode(lp, torch.tensor([6])) == [[1, 1, 2]]
    assert beam_decode(lp, torch.tensor([6]), beam=4) == [[1, 1, 2]]


def test_beam_search_finds_what_greedy_misses():
    # Two frames; greedy picks blank,blank (p=.36) -> ""; but "a" has total
    # probability .4*.4 + .4*.6 + .6*.4 = .64 > .36.
    p = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    assert greedy_decode(p.log()[None], torch.tensor([2])) == [[]]
    assert prefix_beam_search(p.log(), beam=4) == [1]


def test_error_rates_match_hand_counts():
    refs = ["the cat sat", "on the mat"]
    hyps = ["the cat sat down", "on mat"]  # 1 insertion + 1 deletion over 6 words
    assert error_rates(refs, hyps)["wer"] == pytest.approx(100 * 2 / 6)
    assert error_rates(["abc"], ["abd"])["cer"] == pytest.approx(100 / 3)
