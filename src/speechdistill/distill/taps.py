"""How an auxiliary output layer ("tap") learns: one registered class per tap ``kind``.

    model:
      taps:
        - {layer: 2, unit: senone, kind: frame, kd: {top_k: 8, temperature: 3.0}, ce_weight: 0.0}
        - {layer: 3, unit: subword, kind: ctc, weight: 0.3}

* ``frame``: a per-frame classifier over the unit: cross-entropy to the aligned truth
  (``ce_weight``) plus, with ``kd``, distillation of the unit LM's soft labels
  (T^2-scaled KL, ``losses.kd_kl``). Auxiliary-layer and hierarchical distillation.
* ``ctc``: CTC over the unit's sequence (intermediate CTC, Lee & Watanabe 2021); its
  weight is taken from the main output's: (1 - w) CTC_main + w CTC_tap.

A tap loss says what the batch must carry for it (``sequence``: the unit's CTC targets;
``frames``: aligned frame labels; ``tap.kd``: soft labels spread over frames) and maps
``(tap, output, lengths, batch)`` to its term and named sub-terms. A new kind is one class
with ``@TAP_LOSSES.register("name")``: see docs/extending.md.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from speechdistill.distill.losses import ctc_loss, frame_ce, kd_kl
from speechdistill.registry import Registry
from speechdistill.units.types import UNIT_TYPES

TAP_LOSSES: Registry[type[TapLoss]] = Registry("tap kind")


class TapLoss:
    name: ClassVar[str]
    log_probs: ClassVar[bool] = False  # the model gives the tap log-softmax outputs, not logits
    takes_main_weight: ClassVar[bool] = False  # the tap's weight comes off the main CTC loss
    sequence: ClassVar[bool] = False  # needs batch.targets[tap.unit]
    frames: ClassVar[bool] = False  # needs batch.frame_targets[tap.name]
    soft_labels: ClassVar[bool] = False  # may distil soft labels (tap.kd)

    @classmethod
    def check(cls, tap) -> None:
        """Raise ValueError when ``tap`` cannot be trained this way."""
        if tap.kd is not None and not cls.soft_labels:
            raise ValueError(f"tap {tap.name}: kd applies to taps that learn soft labels, not kind={cls.name!r}")

    @classmethod
    def needs_frame_targets(cls, tap) -> bool:
        """Whether a batch must carry ``frame_targets[tap.name]`` for ``loss``."""
        return cls.frames

    @classmethod
    def loss(cls, tap, output: torch.Tensor, lens: torch.Tensor, batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


@TAP_LOSSES.register("frame")
class FrameTap(TapLoss):
    frames = True
    soft_labels = True

    @classmethod
    def needs_frame_targets(cls, tap) -> bool:
        return tap.ce_weight > 0  # KD alone (hier, aux) reads the soft labels, not the truth

    @classmethod
    def loss(cls, tap, output, lens, batch):
        """ce_weight * CE(aligned truth) + KD(soft labels); the soft labels exist for training batches only."""
        term, terms = output.sum() * 0.0, {}
        if tap.ce_weight > 0:
            ce = frame_ce(output, batch.frame_targets[tap.name])
            term = term + tap.ce_weight * ce
            terms[f"{tap.name}.ce"] = float(ce.detach())
        if tap.kd is not None and tap.kd in batch.soft_frames:
            kd = kd_kl(output, *batch.soft_frames[tap.kd], tap.kd.temperature)
            term = term + kd
            terms[f"{tap.name}.kd"] = float(kd.detach())
        return term, terms


@TAP_LOSSES.register("ctc")
class CtcTap(TapLoss):
    log_probs = True
    takes_main_weight = True
    sequence = True

    @classmethod
    def check(cls, tap) -> None:
        super().check(tap)
        if not UNIT_TYPES[tap.unit].ctc:
            raise ValueError(f"a CTC tap over {tap.unit}s makes no sense ({tap.unit}s are frame units)")

    @classmethod
    def loss(cls, tap, output, lens, batch):
        term, _ = ctc_loss(output, lens, *batch.targets[tap.unit])
        return term, {}
