"""Unit language models: the text-only teachers of cross-modal distillation.

    speechdistill lm train data/small --unit phone --arch lstm
    >>> lm, meta = load_lm("data/small/lm/phone")
    >>> logits = lm.position_logits(ids)      # (N, U, V): the LM's guess at each position

One LM per unit (subword, phone, senone), trained on the corpus's LM text
converted to that unit. ``arch``: a causal LSTM, a causal Transformer, or a
bidirectional masked Transformer (``masked``: it sees both sides, as BERT
does). For every architecture ``position_logits(ids)[:, i]`` is the teacher's
distribution for position i of the reference sequence: from the prefix
``ids[:i]`` (causal) or from everything but position i (masked).

Token ids: the unit's ids, then BOS = V and (masked LMs) MASK = V + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ARCHS = ("lstm", "transformer", "masked")


@dataclass
class LMConfig:
    arch: str = "lstm"
    d_model: int = 256
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    max_len: int = 512

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r}; valid: {', '.join(ARCHS)}")
        if self.d_model <= 0 or self.num_layers <= 0:
            raise ValueError("d_model and num_layers must be positive")


class UnitLM(nn.Module):
    def __init__(self, cfg: LMConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.bos, self.mask = vocab_size, vocab_size + 1
        self.embed = nn.Embedding(vocab_size + 2, cfg.d_model)
        if cfg.arch == "lstm":
            self.body = nn.LSTM(
                cfg.d_model,
                cfg.d_model,
                cfg.num_layers,
                batch_first=True,
                dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            )
        else:
            self.pos = nn.Embedding(cfg.max_len + 1, cfg.d_model)
            layer = nn.TransformerEncoderLayer(
                cfg.d_model, cfg.num_heads, 4 * cfg.d_model, cfg.dropout, batch_first=True, norm_first=True
            )
            self.body = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.d_model, vocab_size)

    def _encode(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """(N, L) token ids -> (N, L, C) hidden states."""
        h = self.drop(self.embed(x))
        if self.cfg.arch == "lstm":
            return self.body(h)[0]
        L = x.shape[1]
        if L > self.cfg.max_len + 1:
            raise ValueError(f"sequence of {L} units is longer than the LM's max_len {self.cfg.max_len}")
        h = h + self.pos(torch.arange(L, device=x.device))
        causal = None
        if self.cfg.arch == "transformer":
            causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), 1)
        return self.body(h, mask=causal, src_key_padding_mask=pad)

    def position_logits(self, ids: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """(N, U) reference ids -> (N, U, V) logits of the teacher for each position."""
        N, U = ids.shape
        pad = None if lens is None else torch.arange(U, device=ids.device)[None] >= lens[:, None]
        if self.cfg.arch == "masked":
            # One pass per position would be exact BERT scoring; masking every
            # position in turn is O(U) passes, so positions are masked in 8 interleaved
            # groups: each position is predicted with its group masked.
            out = torch.zeros(N, U, self.vocab_size, device=ids.device)
            for g in range(min(8, U)):
                x = ids.clone()
                x[:, g::8] = self.mask
                out[:, g::8] = self.out(self._encode(x, pad))[:, g::8]
            return out
        bos = torch.full((N, 1), self.bos, dtype=ids.dtype, device=ids.device)
        x = torch.cat([bos, ids[:, :-1]], dim=1)  # (N, U): prefix shifted right
        p = None if pad is None else torch.cat([torch.zeros_like(pad[:, :1]), pad[:, :-1]], 1)
        return self.out(self._encode(x, p))

    def loss(self, ids: torch.Tensor, lens: torch.Tensor, mask_prob: float = 0.15) -> torch.Tensor:
        """Mean cross-entropy per predicted token (next unit, or masked units)."""
        U = ids.shape[1]
        valid = torch.arange(U, device=ids.device)[None] < lens[:, None]
        if self.cfg.arch == "masked":
            chosen = (torch.rand(ids.shape, device=ids.device) < mask_prob) & valid
            # every sequence predicts at least one unit (short ones may draw none)
            pos = (torch.rand(ids.shape[0], device=ids.device) * lens).long().clamp(max=U - 1)
            none = ~chosen.any(1)
            chosen[none, pos[none]] = True
            x = ids.masked_fill(chosen, self.mask)
            logits = self.out(self._encode(x, ~valid))
            target = ids.masked_fill(~chosen, -100)
        else:
            logits = self.position_logits(ids, lens)
            target = ids.masked_fill(~valid, -100)
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size), target.reshape(-1), ignore_index=-100)


def top_k_soft_labels(logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) logits -> (..., k) probabilities and indices: softmax(logits / T),
    truncated to the k most probable units and renormalised to sum to one."""
    probs = (logits.float() / temperature).softmax(-1)
    values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return values / values.sum(-1, keepdim=True), indices


def perplexity(mean_ce: float) -> float:
    return math.exp(min(mean_ce, 50.0))
