"""Loss terms as pure functions. Each returns a scalar (mean over utterances or
labelled frames) and takes masks/lengths explicitly.

    >>> loss, ok = ctc_loss(log_probs, lens, targets, target_lens)
    >>> ce = frame_ce(logits, labels)             # labels: IGNORE (-100) where unlabelled

The total the trainer minimises (see ``train.compute_loss``)::

    L = (1 - sum of CTC-tap weights) * L_ctc(main) + sum_taps weight_t * L_t

so with CTC taps only it is intermediate CTC (Lee & Watanabe 2021,
(1 - w) * CTC_final + w * mean CTC_intermediate, when the taps share w),
and frame taps add their terms on top.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from speechdistill.masks import padding_mask

IGNORE = -100


def ctc_feasible(input_lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor) -> torch.Tensor:
    """(N,) bool: CTC can align the target: T >= U + number of adjacent repeats
    (each repeat needs a blank between). Infeasible utterances give inf loss."""
    U = targets.shape[1]
    valid = ~padding_mask(target_lens, U)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & valid[:, 1:]).sum(1) if U > 1 else 0
    return input_lens >= target_lens + repeats


def ctc_loss(
    log_probs: torch.Tensor, input_lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T, V) log-probs (blank = 0), (N,), (N, U), (N,) -> (mean over feasible
    utterances of the CTC loss divided by target length, (N,) feasible mask).
    Infeasible utterances are excluded, not turned into NaN."""
    ok = ctc_feasible(input_lens, targets, target_lens) & (target_lens > 0)
    if not ok.any():
        return log_probs.sum() * 0.0, ok
    losses = F.ctc_loss(
        log_probs[ok].transpose(0, 1).float(),
        targets[ok],
        input_lens[ok],
        target_lens[ok],
        blank=0,
        reduction="none",
        zero_infinity=False,
    )
    return (losses / target_lens[ok]).mean(), ok


def frame_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, T, K) logits, (N, T) labels with IGNORE -> mean CE over labelled frames."""
    T = min(logits.shape[1], labels.shape[1])
    logits, labels = logits[:, :T], labels[:, :T]
    if (labels != IGNORE).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE)


def kd_kl(
    logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Distillation from top-k soft labels (Hinton et al. 2015):

        T^2 * KL(p || softmax(z / T)) = T^2 * sum_k p_k (log p_k - log softmax(z / T)[i_k])

    averaged over frames where ``mask`` is true. ``logits`` (N, T, V); ``values``
    (N, T, k) teacher probabilities (already softened with T and renormalised),
    ``indices`` (N, T, k) their unit ids, ``mask`` (N, T). The T^2 factor keeps
    the gradient scale independent of T.
    """
    Tn = min(logits.shape[1], values.shape[1])
    logits, values, indices, mask = logits[:, :Tn], values[:, :Tn], indices[:, :Tn], mask[:, :Tn]
    if not mask.any():
        return logits.sum() * 0.0
    log_q = (logits.float() / temperature).log_softmax(-1).gather(-1, indices)  # (N, T, k)
    p = values.float()
    kl = (p * (p.clamp(min=1e-12).log() - log_q)).sum(-1)  # (N, T)
    return temperature**2 * kl[mask].mean()


def teacher_kd(student: torch.Tensor, teacher: torch.Tensor, lens: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(t / T) || softmax(s / T)) averaged over the real frames; ``student``
    and ``teacher`` (N, T', V) log-probs, ``lens`` (N,)."""
    mask = ~padding_mask(lens, student.shape[1])
    p = (teacher.float() / temperature).log_softmax(-1)
    q = (student.float() / temperature).log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1)
    return temperature**2 * kl[mask].mean()


def interpolated_target(
    hard: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, num_classes: int, weight: float
) -> torch.Tensor:
    """Label interpolation (Bai et al. 2019; Futami et al. 2020):
    (1 - w) * one_hot(hard) + w * p_LM, with p_LM given sparsely (top-k).
    ``hard`` (...,), ``values``/``indices`` (..., k) -> (..., num_classes), rows sum to one."""
    target = (1.0 - weight) * F.one_hot(hard, num_classes).float()
    return target.scatter_add(-1, indices, weight * values.float())


def ctc_viterbi(log_probs: torch.Tensor, targets: list[int]) -> list[int]:
    """Most probable CTC alignment of ``targets`` to (T, V) log-probs (blank = 0).
    Returns, per frame, the index of the target position it emits, or -1 for blank.
    Written by hand: torchaudio's ``forced_align`` cannot be installed beside torch 2.13.
    NumPy over the S = 2U + 1 states, one vector step per frame; the emissions and the
    skip mask are computed once (bench/viterbi.py times it against the first version)."""
    T, U = log_probs.shape[0], len(targets)
    S = 2 * U + 1  # blank, y1, blank, y2, ..., yU, blank
    labels = np.zeros(S, dtype=np.int64)
    labels[1::2] = targets
    emit = log_probs.detach().float().cpu().numpy()[:, labels]  # (T, S)
    # a skip over a blank is allowed only between different labels
    allowed = np.zeros(S, dtype=bool)
    allowed[3::2] = labels[3::2] != labels[1:-2:2]
    neg = -np.inf
    score = np.full(S, neg)
    score[0] = emit[0, 0]
    if S > 1:
        score[1] = emit[0, 1]
    back = np.zeros((T, S), dtype=np.int64)
    cands = np.full((3, S), neg)
    cols = np.arange(S)
    for t in range(1, T):
        cands[0] = score
        cands[1, 1:] = score[:-1]
        cands[2, 2:] = np.where(allowed[2:], score[:-2], neg)
        arg = cands.argmax(0)
        score = cands[arg, cols] + emit[t]
        back[t] = arg
    end = S - 1 if S == 1 or score[S - 1] >= score[S - 2] else S - 2
    path = [0] * T
    s = end
    for t in range(T - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    return [p // 2 if p % 2 == 1 else -1 for p in path]
