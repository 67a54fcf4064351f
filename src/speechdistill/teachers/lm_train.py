"""Training and loading the unit LMs.

    speechdistill lm train data/small --unit senone --arch lstm --epochs 2
    >>> lm, meta = load_lm("data/small/lm/senone")

The training text is ``{corpus}/units/lm_text.{unit}.txt``; dev perplexity is
measured on the dev split's transcripts in the same unit (never in the LM
text). Saved as ``{corpus}/lm/{unit}.safetensors`` + ``.json``. The loop is the
engine's (``LMTask``): AdamW, gradient clipping at 1, a constant learning rate.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from speechdistill.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from speechdistill.data.corpus import load_split
from speechdistill.data.layout import CorpusDir
from speechdistill.engine import Engine, EngineConfig, OptimConfig, Task
from speechdistill.teachers.lm import LMConfig, UnitLM, perplexity
from speechdistill.units.inventory import Units
from speechdistill.utils import DataError

log = logging.getLogger(__name__)


def _buckets(seqs: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Sentence indices in batches of at most ``max_tokens`` padded tokens, by length."""
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
    return batches


def _batches(seqs: list[list[int]], max_tokens: int, shuffle: bool, rng: random.Random):
    batches = _buckets(seqs, max_tokens)
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
    device = next(lm.parameters()).device
    torch.manual_seed(0)  # masked LMs draw their masks
    for ids, lens in _batches(seqs, max_tokens, False, random.Random(0)):
        n = int(lens.sum())
        total += float(lm.loss(ids.to(device), lens.to(device))) * n
        count += n
    return perplexity(total / max(1, count))


class LMTask(Task):
    """Next-unit (or masked-unit) prediction on the LM text in one unit, dev perplexity per epoch."""

    kind = "unit-lm"
    forward_methods = ("loss",)

    def __init__(
        self, seqs: list[list[int]], dev: list[list[int]], model: UnitLM, max_tokens: int, seed: int, engine: Engine
    ):
        self.seqs, self.dev, self.model, self.max_tokens, self.engine = seqs, dev, model, max_tokens, engine
        self.rng = random.Random(seed)

    def batches(self, epoch: int, skip: int):
        return _batches(self.seqs, self.max_tokens, True, self.rng)

    def num_batches(self) -> int:
        return len(_buckets(self.seqs, self.max_tokens))

    def step(self, model, batch):
        loss = model.loss(*(t.to(self.engine.fabric.device) for t in batch))
        return loss, {"loss": float(loss.detach())}

    def validate(self, model) -> dict[str, float]:
        return {"dev_perplexity": round(dev_perplexity(self.model, self.dev), 3)}


def train_lm(
    corpus: str | Path | CorpusDir,
    unit: str,
    cfg: LMConfig | None = None,
    epochs: int = 1,
    max_tokens: int = 6000,
    lr: float = 2e-3,
    max_sentences: int = 0,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Train the ``unit`` LM of ``corpus``; returns its JSON metadata (with dev perplexity)."""
    cfg = cfg or LMConfig()
    corpus = CorpusDir(corpus)
    units = Units(corpus.units)
    text = corpus.lm_text_in(unit)
    if not text.exists():
        raise FileNotFoundError(f"{text} is missing: run `speechdistill units build {corpus}`")
    lines = text.read_text().splitlines()
    if max_sentences:
        lines = lines[:max_sentences]
    ut = units[unit]
    seqs = [s for s in ([ut.token_id(t) for t in line.split()][: cfg.max_len] for line in lines) if s]
    # dev transcripts, converted the way the LM text was
    dev = [ut.encode(c.supervisions[0].text)[: cfg.max_len] for c in load_split(corpus, "dev")]
    engine = Engine(
        EngineConfig(
            out_dir="",
            seed=seed,
            progress=show_progress,
            optim=OptimConfig(
                lr=lr, weight_decay=0.01, warmup_steps=0, grad_clip=1.0, max_epochs=epochs, schedule="constant"
            ),
        )
    )
    torch.manual_seed(seed)
    lm = UnitLM(cfg, ut.vocab_size)
    st = engine.fit(LMTask(seqs, dev, lm, max_tokens, seed, engine))
    history = [{"epoch": h["epoch"], "dev_perplexity": h["dev_perplexity"]} for h in st["history"]]
    for h in history:
        log.info("%s LM (%s) epoch %d: dev perplexity %.2f", unit, cfg.arch, h["epoch"], h["dev_perplexity"])
    meta = {
        "kind": "unit-lm",
        "unit": unit,
        "config": asdict(cfg),
        "vocab_size": ut.vocab_size,
        "dev_perplexity": history[-1]["dev_perplexity"],
        "history": history,
        "train_sentences": len(seqs),
        "max_sentences": max_sentences,
        "train_tokens": sum(map(len, seqs)),
        "train_seconds": st["seconds_this_run"],
        "epochs": epochs,
        "lr": lr,
        "units": units.digest(),
    }
    save_checkpoint(corpus.lm(unit), {f"lm.{k}": v for k, v in lm.state_dict().items()}, meta)
    return meta


def load_lm(prefix: str | Path) -> tuple[UnitLM, dict]:
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
        self.model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).eval()
        n = self.model.config.vocab_size
        if n < vocab_size + 1:
            raise DataError(
                f"{directory}: the LM's vocabulary ({n}) must hold the {vocab_size} "
                "SentencePiece ids of the corpus plus a BOS id"
            )
        bos = self.model.config.bos_token_id
        self.bos = bos if bos is not None and bos >= vocab_size else vocab_size
        self.vocab_size = vocab_size

    @torch.no_grad()
    def position_logits(self, ids: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """(N, U) -> (N, U, V) next-piece logits over the corpus's pieces only."""
        bos = torch.full((ids.shape[0], 1), self.bos, dtype=ids.dtype)
        x = torch.cat([bos, ids[:, :-1]], dim=1)
        return self.model(input_ids=x).logits[..., : self.vocab_size]


def load_lm_teacher(path: str | Path, unit: str, units: Units) -> tuple[torch.nn.Module, dict]:
    """A unit LM checkpoint prefix, or (subwords only) a Hugging Face model directory."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").exists():
        if not units[unit].words:
            raise DataError(f"{path}: Hugging Face LMs can teach word-piece units (subwords) only, not {unit}")
        return HFCausalLMTeacher(path, units.vocab_size(unit)), {"unit": unit, "kind": "hf"}
    return load_lm(path)
