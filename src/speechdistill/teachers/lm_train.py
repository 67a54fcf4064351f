"""Training and loading the unit LMs.

    speechdistill lm train data/small --unit senone --arch lstm --epochs 2
    >>> lm, meta = load_lm("data/small/lm/senone")

The training text is ``{corpus}/units/lm_text.{unit}.txt``; dev perplexity is
measured on the dev split's transcripts in the same unit (never in the LM
text). Saved as ``{corpus}/lm/{unit}.safetensors`` + ``.json``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from speechdistill.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from speechdistill.progress import progress
from speechdistill.teachers.lm import LMConfig, UnitLM, perplexity

log = logging.getLogger(__name__)


def unit_ids(units, unit: str, line: str) -> list[int]:
    """One line of ``lm_text.{unit}.txt`` -> ids."""
    toks = line.split()
    if unit == "subword":
        return [units.sp.piece_to_id(t) for t in toks]
    if unit == "phone":
        return [units.phone_index[t] for t in toks]
    return [int(t) for t in toks]


def _batches(seqs: list[list[int]], max_tokens: int, shuffle: bool, rng: random.Random):
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batches, cur, longest = [], [], 0
    for i in order:
        longest = max(longest, len(seqs[i]))
        if cur and longest * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, longest = [], len(seqs[i])
        cur.append(i)
    if cur:
        batches.append(cur)
    if shuffle:
        rng.shuffle(batches)
    for b in batches:
        lens = torch.tensor([len(seqs[i]) for i in b])
        ids = torch.zeros(len(b), int(lens.max()), dtype=torch.long)
        for j, i in enumerate(b):
            ids[j, : len(seqs[i])] = torch.tensor(seqs[i])
        yield ids, lens


@torch.no_grad()
def dev_perplexity(lm: UnitLM, seqs: list[list[int]], max_tokens: int = 8000) -> float:
    lm.eval()
    total, count = 0.0, 0
    torch.manual_seed(0)  # masked LMs draw their masks
    for ids, lens in _batches(seqs, max_tokens, False, random.Random(0)):
        n = int(lens.sum())
        total += float(lm.loss(ids, lens)) * n
        count += n
    return perplexity(total / max(1, count))


def train_lm(corpus: str | Path, unit: str, cfg: LMConfig | None = None, epochs: int = 1,
             max_tokens: int = 6000, lr: float = 2e-3, max_sentences: int = 0, seed: int = 0,
             show_progress: bool = True) -> dict:  # fmt: skip
    """Train the ``unit`` LM of ``corpus``; returns its JSON metadata (with dev perplexity)."""
    from speechdistill.data.corpus import load_split
    from speechdistill.units.inventory import Units

    cfg = cfg or LMConfig()
    corpus = Path(corpus)
    units = Units(corpus / "units")
    text = corpus / "units" / f"lm_text.{unit}.txt"
    if not text.exists():
        raise FileNotFoundError(f"{text} is missing: run `speechdistill units build {corpus}`")
    lines = text.read_text().splitlines()
    if max_sentences:
        lines = lines[:max_sentences]
    seqs = [s for s in (unit_ids(units, unit, line)[: cfg.max_len] for line in lines) if s]
    # dev transcripts, converted the way the LM text was
    dev = [units.encode(c.supervisions[0].text, unit)[: cfg.max_len] for c in load_split(corpus, "dev")]
    torch.manual_seed(seed)
    lm = UnitLM(cfg, units.vocab_size(unit))
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    start = time.time()
    history = []
    for epoch in range(epochs):
        lm.train()
        n_batches = sum(1 for _ in _batches(seqs, max_tokens, False, rng))
        for ids, lens in progress(_batches(seqs, max_tokens, True, rng), total=n_batches,
                                  desc=f"{unit} LM epoch {epoch}", enable=show_progress):  # fmt: skip
            loss = lm.loss(ids, lens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            opt.step()
        ppl = dev_perplexity(lm, dev)
        history.append({"epoch": epoch, "dev_perplexity": round(ppl, 3)})
        log.info("%s LM (%s) epoch %d: dev perplexity %.2f", unit, cfg.arch, epoch, ppl)
    meta = {"kind": "unit-lm", "unit": unit, "config": asdict(cfg), "vocab_size": units.vocab_size(unit),
            "dev_perplexity": history[-1]["dev_perplexity"], "history": history,
            "train_sentences": len(seqs), "max_sentences": max_sentences, "train_tokens": sum(map(len, seqs)),
            "train_seconds": round(time.time() - start, 1), "epochs": epochs, "lr": lr}  # fmt: skip
    save_checkpoint(corpus / "lm" / unit, {f"lm.{k}": v for k, v in lm.state_dict().items()}, meta)
    return meta


def load_lm(prefix: str | Path) -> tuple[UnitLM, dict]:
    from speechdistill.checkpoint import CheckpointError

    tensors, meta = load_checkpoint(prefix)
    if meta.get("kind") != "unit-lm":
        raise CheckpointError(f"{prefix} is not a unit LM checkpoint (kind={meta.get('kind')!r})")
    lm = UnitLM(LMConfig(**meta["config"]), meta["vocab_size"])
    load_model_state(lm, tensors, "lm.", prefix)
    return lm.eval(), meta


class HFCausalLMTeacher(torch.nn.Module):
    """A user's own subword LM in Hugging Face format (a local directory loaded with
    ``AutoModelForCausalLM``, never from the hub). Its token ids must be the corpus's
    SentencePiece ids, with one extra id (``vocab_size`` of the SentencePiece model, or
    the config's ``bos_token_id``) used as beginning of sentence."""

    def __init__(self, directory: str | Path, vocab_size: int):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).eval()
        n = self.model.config.vocab_size
        if n < vocab_size + 1:
            raise ValueError(f"{directory}: the LM's vocabulary ({n}) must hold the {vocab_size} "
                             "SentencePiece ids of the corpus plus a BOS id")  # fmt: skip
        bos = self.model.config.bos_token_id
        self.bos = bos if bos is not None and bos >= vocab_size else vocab_size
        self.vocab_size = vocab_size

    @torch.no_grad()
    def position_logits(self, ids: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """(N, U) -> (N, U, V) next-piece logits over the corpus's pieces only."""
        bos = torch.full((ids.shape[0], 1), self.bos, dtype=ids.dtype)
        x = torch.cat([bos, ids[:, :-1]], dim=1)
        return self.model(input_ids=x).logits[..., : self.vocab_size]


def load_teacher(path: str | Path, unit: str, units) -> tuple[torch.nn.Module, dict]:
    """A unit LM checkpoint prefix, or (subwords only) a Hugging Face model directory."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").exists():
        if unit != "subword":
            raise ValueError(f"{path}: Hugging Face LMs can teach subwords only, not {unit}")
        return HFCausalLMTeacher(path, units.vocab_size("subword")), {"unit": "subword", "kind": "hf"}
    return load_lm(path)
