"""Decoding and scoring a trained acoustic model on any corpus the importers read.

    speechdistill evaluate exp/baseline/best --data data/small --split test
    speechdistill evaluate exp/baseline/best --data data/kaldi/test_clean --beam 8

Writes ``{out}/{split}.hyp.tsv`` (id, reference, hypothesis) and
``{out}/{split}.scores.json``. Subword models: WER and CER, and a PER computed
on the lexicon pronunciations (CMUdict, else G2P) of the reference and
hypothesised words. Phone models: PER against the aligned phones when the
corpus has alignments, else the lexicon pronunciation.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from speechdistill.data.batching import AsrDataset, make_sampler
from speechdistill.data.corpus import load_split
from speechdistill.data.importers import import_kaldi_dir
from speechdistill.data.layout import CorpusDir
from speechdistill.decode import beam_decode, error_rates, greedy_decode
from speechdistill.students.model import load_inference_model
from speechdistill.units.inventory import Units
from speechdistill.units.lexicon import UnpronounceableWordError
from speechdistill.units.phones import UnknownPhoneError
from speechdistill.utils import DataError, atomic_write_text, check_split_name


@torch.no_grad()
def decode_cuts(model, dataset, cuts, unit: str, units: Units, max_duration: float = 200.0, beam: int = 0) -> dict:
    """Decode ``cuts`` with an InferenceModel, on the device its weights are on; returns
    scores and per-utterance rows."""
    model.eval()
    rows = []
    device = next(model.parameters()).device
    for cut_batch in make_sampler(cuts, max_duration, shuffle=False, seed=0):
        batch = dataset[cut_batch]
        refs = batch.targets[unit]
        feats, feat_lens = batch.feats.to(device), batch.feat_lens.to(device)
        if getattr(model, "needs_targets", False):  # an oracle teacher reads the answer too
            log_probs, lens = model(feats, feat_lens, *(r.to(device) for r in refs))
        else:
            log_probs, lens = model(feats, feat_lens)
        rows += decoded_rows(batch, log_probs, lens, unit, units, beam)
    return score_rows(rows, unit, units)


def decoded_rows(batch, log_probs, lens, unit: str, units: Units, beam: int = 0) -> list[tuple[str, str, str]]:
    """(id, reference text, hypothesis text) of each utterance of ``batch`` from the
    model's (N, T, V) log-probs over ``unit``; greedy, or a prefix beam when ``beam > 1``."""
    ut = units[unit]
    refs, ref_lens = (t.cpu() for t in batch.targets[unit])  # read back per utterance below
    log_probs, lens = log_probs.float().cpu(), lens.cpu()
    hyps = beam_decode(log_probs, lens, beam) if beam > 1 else greedy_decode(log_probs, lens)
    return [
        (
            utt,
            ut.to_text([j - ut.offset for j in refs[i, : ref_lens[i]].tolist()]),
            ut.to_text([j - ut.offset for j in hyps[i]]),
        )
        for i, utt in enumerate(batch.ids)
    ]


def score_rows(rows: list[tuple[str, str, str]], unit: str, units: Units) -> dict:
    """Corpus-level WER, CER and PER of decoded rows (in any order; sorted by id here)."""
    rows = sorted(rows)
    scores = error_rates([r[1] for r in rows], [r[2] for r in rows])
    words = units[unit].words
    result = {
        "error_rate": scores["wer"],
        "wer": scores["wer"],
        "cer": scores["cer"],
        "rows": rows,
        "num_utterances": len(rows),
        "words": words,
    }
    if words:  # PER on the lexicon pronunciations of reference and hypothesis words
        result["per"] = error_rates([_phones(r[1], units) for r in rows], [_phones(r[2], units) for r in rows])["wer"]
    else:
        result["per"] = result["wer"]
    return result


def _phones(text: str, units: Units) -> str:
    """Word text -> lexicon phones (CMUdict, else G2P); a word G2P cannot say is dropped
    (hypotheses can hold any string of pieces; scoring must not stop on one)."""
    out = []
    for w in text.split():
        try:
            out += units.lexicon.pronounce(w)
        except (UnpronounceableWordError, UnknownPhoneError):
            continue
    return " ".join(out)


def check_units(units: Units, unit: str, meta: dict, ckpt) -> None:
    """Refuse to decode ``ckpt`` with an inventory other than the one it was trained on
    (its ids would map to other pieces: wrong words, and no error anywhere else)."""
    want = meta.get("units")
    have = units.digest(unit) if unit in units.names() else "(none)"
    size = units.vocab_size(unit) if unit in units.names() else 0
    if (want and want != have) or size != meta["vocab"].get(unit):
        raise DataError(
            f"{ckpt} was trained on other {unit} units than {units.root} holds (fingerprint "
            f"{str(want)[:12]}, vocabulary {meta['vocab'].get(unit)}; there: {have[:12]}, {size}): its ids would "
            f"decode into wrong words. Pass --units the inventory it was trained with "
            f"({CorpusDir(meta['config']['data']['corpus']).units})"
        )


def evaluate(
    ckpt: str | Path,
    data: str | Path,
    split: str = "test",
    beam: int = 0,
    units_dir: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
) -> dict:
    """Score a checkpoint on ``data``: a corpus directory (with ``split``), a Kaldi data
    dir (``wav.scp`` + ``text``) or a lhotse supervision manifest beside its recordings.
    ``device``: where the model runs ("auto": a GPU if there is one)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta = load_inference_model(ckpt)
    model.to(device)
    main_unit = meta["config"]["model"]["main_unit"]
    data = Path(data)
    check_split_name(split)
    units = Units(units_dir or CorpusDir(meta["config"]["data"]["corpus"]).units)
    check_units(units, main_unit, meta, ckpt)
    dataset = AsrDataset(units, main_unit, frames_fn=lambda t: t, on_the_fly=True)
    # a Kaldi dir is imported into a temporary corpus (its converted audio too), removed after
    with tempfile.TemporaryDirectory(prefix="speechdistill-eval-") as tmp:
        if (data / "wav.scp").exists():
            import_kaldi_dir(data, tmp, split=split)
            result = decode_cuts(model, dataset, load_split(tmp, split), main_unit, units, beam=beam)
        else:
            result = decode_cuts(model, dataset, load_split(data, split), main_unit, units, beam=beam)
    out = Path(out or Path(ckpt).parent)
    atomic_write_text(out / f"{split}.hyp.tsv", "".join(f"{u}\t{r}\t{h}\n" for u, r, h in result["rows"]))
    scores = {k: v for k, v in result.items() if k != "rows"} | {
        "checkpoint": str(ckpt),
        "data": str(data),
        "split": split,
        "unit": main_unit,
        "decoder": f"beam{beam}" if beam > 1 else "greedy",
    }
    atomic_write_text(out / f"{split}.scores.json", json.dumps(scores, indent=1) + "\n")
    return scores
