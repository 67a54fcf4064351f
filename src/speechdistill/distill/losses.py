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

import torch
import torch.nn.functional as F

IGNORE = -100


def ctc_feasible(input_lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor) -> torch.Tensor:
    """(N,) bool: CTC can align the target: T >= U + number of adjacent repeats
    (each repeat needs a blank between). Infeasible utterances give inf loss."""
    U = targets.shape[1]
    valid = torch.arange(U, device=targets.device)[None, :] < target_lens[:, None]
    repeats = ((targets[:, 1:] == targets[:, :-1]) & valid[:, 1:]).sum(1) if U > 1 else 0
    return input_lens >= target_lens + repeats


def ctc_loss(log_probs: torch.Tensor, input_lens: torch.Tensor, targets: torch.Tensor,
             target_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(N, T, V) log-probs (blank = 0), (N,), (N, U), (N,) -> (mean over feasible
    utterances of the CTC loss divided by target length, (N,) feasible mask).
    Infeasible utterances are excluded, not turned into NaN."""
    ok = ctc_feasible(input_lens, targets, target_lens) & (target_lens > 0)
    if not ok.any():
        return log_probs.sum() * 0.0, ok
    losses = F.ctc_loss(log_probs[ok].transpose(0, 1).float(), targets[ok], input_lens[ok],
                        target_lens[ok], blank=0, reduction="none", zero_infinity=False)  # fmt: skip
    return (losses / target_lens[ok]).mean(), ok


def frame_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, T, K) logits, (N, T) labels with IGNORE -> mean CE over labelled frames."""
    T = min(logits.shape[1], labels.shape[1])
    logits, labels = logits[:, :T], labels[:, :T]
    if (labels != IGNORE).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE)  # fmt: skip
