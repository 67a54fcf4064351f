"""Losses for compressing self-supervised speech models, and the one function that
puts a student's frames on the teacher's time axis.

    >>> pred, mask = align_frames(student_out, student_lens, teacher_T, teacher_lens)
    >>> loss, terms = distilhubert_loss([pred], [teacher_layer], mask)

Legend: N batch, T frames, C channels. Every loss averages over the real
(unpadded) frames given by ``mask`` (N, T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def align_frames(x: torch.Tensor, x_lens: torch.Tensor, target_T: int, target_lens: torch.Tensor):
    """Put a student's frames (N, Ts, C) on a teacher's axis of ``target_T`` frames.

    The rate ratio r = round(max(target_lens) / max(x_lens)) (2 for 40 ms students of 20 ms
    teachers) is applied by repeating each student frame r times; the result is then cut
    or padded (with its last real frame) to ``target_T``. Odd lengths: a 1 s utterance has
    49 teacher frames at 20 ms and 24 at 40 ms; the 48 repeated frames are completed by
    repeating the 24th. Returns the aligned (N, target_T, C) tensor and the teacher's
    frame mask (N, target_T).
    """
    ratio = max(1, round(int(target_lens.max()) / max(1, int(x_lens.max()))))
    if ratio > 1:
        x = x.repeat_interleave(ratio, dim=1)
        x_lens = x_lens * ratio
    N, T, C = x.shape
    if T < target_T:
        x = torch.cat([x, x.new_zeros(N, target_T - T, C)], dim=1)
    x = x[:, :target_T]
    # frames past the student's own length (but inside the teacher's) copy its last frame
    idx = torch.arange(target_T, device=x.device)[None, :].expand(N, -1)
    last = (x_lens.clamp(min=1, max=target_T) - 1)[:, None]
    x = torch.gather(x, 1, torch.minimum(idx, last)[..., None].expand(-1, -1, C))
    mask = idx < target_lens[:, None]
    return x, mask


def _masked_mean(per_frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(per_frame.dtype)
    return (per_frame * m).sum() / m.sum().clamp(min=1.0)


def distilhubert_loss(
    preds: list[torch.Tensor],
    targets: list[torch.Tensor],
    mask: torch.Tensor,
    cos_weight: float = 1.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """DistilHuBERT (Chang et al. 2022): for each predicted layer,
    mean over frames of [ (1/C) |h - t|_1  -  lambda * log sigmoid(cos(h, t)) ], summed over
    layers (each layer's times ``weights[i]`` when given: learned weights)."""
    total = preds[0].new_zeros(())
    terms = {}
    for i, (h, t) in enumerate(zip(preds, targets, strict=True)):
        l1 = _masked_mean((h - t).abs().mean(-1), mask)
        cos = _masked_mean(-F.logsigmoid(F.cosine_similarity(h, t, dim=-1)), mask)
        if weights is None:
            total = total + l1 + cos_weight * cos
        else:
            total = total + weights[i] * (l1 + cos_weight * cos)
        terms[f"l1.{i}"], terms[f"cos.{i}"] = float(l1.detach()), float(cos.detach())
    return total, terms


def hint_loss(
    preds: list[torch.Tensor], targets: list[torch.Tensor], mask: torch.Tensor, weights: list[float]
) -> tuple[torch.Tensor, dict]:
    """FitHuBERT's layer-to-layer hints (Lee et al. 2022): sum_l w_l * mean over frames of the
    squared error (1/C) |h_l - t_l|^2 (w = 0.1 on intermediate layers, 1.0 on the last)."""
    total = preds[0].new_zeros(())
    terms = {}
    for i, (h, t, w) in enumerate(zip(preds, targets, weights, strict=True)):
        mse = _masked_mean((h - t).pow(2).mean(-1), mask)
        total = total + w * mse
        terms[f"hint.{i}"] = float(mse.detach())
    return total, terms


def attention_map_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Attention transfer (TinyBERT, Jiao et al. 2020; in MiniLM's KL form, Wang et al. 2020)
    for maps of equal frame rate: (N, H, T, T) attention probabilities, averaged over heads
    (the counts may differ); KL(teacher row || student row) averaged over real query frames.
    KL rather than TinyBERT's squared error because probability rows of long utterances
    are ~1/T small, which leaves a squared error with no scale."""
    s, t = student.mean(1), teacher.mean(1)
    kl = (t * (t.clamp(min=eps).log() - s.clamp(min=eps).log())).sum(-1)  # (N, T)
    return _masked_mean(kl, mask)
