"""Bring other corpora into speechdistill's layout: Kaldi data directories,
lhotse manifests (so every lhotse recipe, LibriSpeech included, plugs in).

    >>> import_kaldi_dir("data/kaldi/train_clean_100", "data/libri", split="train")
    >>> import_lhotse("recordings.jsonl.gz", "supervisions.jsonl.gz", "data/libri", split="dev")
    >>> import_librispeech("/corpora/LibriSpeech", "data/libri")   # lhotse's recipe, local files

Every utterance is checked on the way in: audio that cannot be read, is empty
or holds NaN, an empty transcript and a duplicate id are skipped with a
message naming the utterance; stereo and non-16 kHz audio are kept and noted
(loading averages channels and resamples). The counts are returned and saved
in ``import_{split}.json``. The manifests keep the original audio paths
(absolute), so nothing is copied.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.recipes import prepare_librispeech
from lhotse.utils import fastcopy

from speechdistill.data.audio import SAMPLE_RATE, BadAudioError, check_regular_file, inspect_audio
from speechdistill.data.layout import CorpusDir
from speechdistill.data.text import normalize
from speechdistill.utils import DataError, atomic_write_text

log = logging.getLogger(__name__)


class ImportReport:
    """Counts of what an import kept, converted and skipped, with one message per skip."""

    def __init__(self) -> None:
        self.kept = 0
        self.notes: Counter[str] = Counter()
        self.skipped: dict[str, str] = {}

    def skip(self, utt: str, why: str) -> None:
        self.skipped[utt] = why
        log.warning("skipped %s: %s", utt, why)

    def to_dict(self) -> dict:
        return {
            "kept": self.kept,
            "converted": dict(self.notes),
            "skipped": len(self.skipped),
            "skipped_utterances": self.skipped,
        }


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file's content, without a leading byte-order mark. Refused, naming the
    line: a file that is not regular (a FIFO would hang), holds a NUL byte (binary) or is
    not UTF-8."""
    check_regular_file(path, what)
    data = path.read_bytes()
    if b"\0" in data:
        n = data[: data.index(b"\0")].count(b"\n") + 1
        raise DataError(f"{path}:{n}: holds a NUL byte: it is a binary file, not a {what}")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        n = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{n}: not UTF-8 (byte 0x{e.object[e.start]:02x}); convert the file, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name}`"
        ) from None


def _read_table(path: Path, required: bool = True, values: bool = True) -> dict[str, str]:
    """Kaldi ``key value...`` lines -> dict, read as Kaldi reads them: fields split on any
    whitespace (spaces or tabs), a line's leading and trailing whitespace (a CRLF line
    end's CR too) ignored, a UTF-8 byte-order mark at the start ignored. Refused, naming
    the line: a duplicate key, a key without a value where one is needed (``values``), a
    NUL byte or text that is not UTF-8."""
    if not path.exists():
        if required:
            raise FileNotFoundError(f"{path} is missing: a Kaldi data dir needs wav.scp and text")
        return {}
    content = read_text_file(path, "Kaldi table")
    table: dict[str, str] = {}
    for n, line in enumerate(content.split("\n"), 1):
        fields = line.split(None, 1)
        if not fields:
            continue
        key, value = fields[0], fields[1].strip() if len(fields) > 1 else ""
        if key in table:
            raise DataError(f"{path}:{n}: duplicate id {key!r}; ids must be unique")
        if values and not value:
            raise DataError(f"{path}:{n}: {key!r} has no value; each line is `ID VALUE`")
        table[key] = value
    return table


SEGMENT_OVERSHOOT = 0.5  # s past the recording's end that is cut off, not refused (Kaldi's extract-segments)


def _segment(utt: str, line: str, rec: Recording, path: Path) -> tuple[float, float] | str:
    """(start, end) of a ``segments`` entry ``REC START END`` checked against ``rec``,
    or why it cannot be used. An end of -1 means the recording's end (as in Kaldi)."""
    start, end = (float(x) for x in line.split()[1:])
    if start < 0:
        return f"utterance {utt}: segment starts at {start} s, before the recording ({path})"
    if end == -1:
        end = rec.duration
    if end <= start:
        return f"utterance {utt}: segment [{start}, {end}] ends before it starts ({path})"
    if end > rec.duration + SEGMENT_OVERSHOOT:
        return (
            f"utterance {utt}: segment ends at {end} s, past the end of recording {rec.id} "
            f"({rec.duration:.2f} s) by more than {SEGMENT_OVERSHOOT} s ({path})"
        )
    return start, min(end, rec.duration)


def _write(out: Path, split: str, recordings, supervisions, report: ImportReport, replace: bool = False) -> dict:
    """Write the split's manifests. A split already there with other content is refused
    unless ``replace``; then what was made from the old manifests is moved aside (never
    deleted) and named, so no stale features, alignments or caches are used."""
    corpus = CorpusDir(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        path: "".join(json.dumps(i.to_dict(), sort_keys=True) + "\n" for i in items)
        for path, items in (
            (corpus.recordings(split), RecordingSet.from_recordings(recordings)),
            (corpus.supervisions(split), SupervisionSet.from_segments(supervisions)),
        )
    }
    old = [p for p in texts if p.exists()]
    if old and any(not p.exists() or p.read_text() != t for p, t in texts.items()):
        stale = _made_from(corpus, split)
        if not replace:
            also = f"; what was made from them would be moved aside: {', '.join(map(str, stale))}" if stale else ""
            raise DataError(
                f"{out} already has a {split} split ({old[0].name}) with other utterances; import into another "
                f"directory, or add --replace to replace it{also}"
            )
        aside = out / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        for p in [*old, *stale]:
            dest = aside / p.relative_to(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
        log.warning("replaced the %s split of %s; the old manifests and %s moved to %s", split, out, stale, aside)
    for path, text in texts.items():
        atomic_write_text(path, text)
    summary = report.to_dict()
    atomic_write_text(corpus.import_report(split), json.dumps(summary, indent=1) + "\n")
    return summary


def _made_from(corpus: CorpusDir, split: str) -> list[Path]:
    """What later stages made from a split's manifests: its features and alignments, and
    for the training split the units, LMs and soft labels built on its transcripts."""
    paths = [corpus.cuts(split), corpus.features_archive(split), *corpus.root.glob(f"alignments/*/{split}.jsonl")]
    if split == "train":
        paths += [corpus.units, corpus.root / "lm", corpus.root / "soft_labels"]
    return [p for p in paths if p.exists()]


MAX_WORDS_PER_SECOND = 8.0  # fast read speech is ~4; more means transcript and audio do not match


def _transcript_fault(utt: str, transcript: str, seconds: float) -> str | None:
    """Why a normalised transcript cannot go with ``seconds`` of audio, or None."""
    if not transcript:
        return f"utterance {utt} has an empty transcript (nothing left after normalisation)"
    words = len(transcript.split())
    if words / seconds > MAX_WORDS_PER_SECOND:
        return (
            f"utterance {utt}: {words} words for {seconds:.2f} s of audio (more than "
            f"{MAX_WORDS_PER_SECOND:g} words/s); the transcript does not match the audio"
        )
    return None


def _recording(
    rec_id: str, path: str, report: ImportReport, check_samples: bool, segmented: bool = False
) -> Recording | None:
    try:
        info = inspect_audio(path, rec_id, check_samples, segmented=segmented)
    except BadAudioError as e:
        report.skip(rec_id, str(e))
        return None
    if info.num_channels > 1:
        report.notes["multi-channel, averaged to mono"] += 1
    if info.sampling_rate != SAMPLE_RATE:
        report.notes[f"{info.sampling_rate} Hz, resampled to {SAMPLE_RATE} Hz"] += 1
    for note in info.notes:
        log.warning("recording %s: %s", rec_id, note)
        if note.startswith("clipped"):
            report.notes["clipped (kept)"] += 1
    return Recording(
        id=rec_id,
        sampling_rate=info.sampling_rate,
        num_samples=info.num_samples,
        duration=info.num_samples / info.sampling_rate,
        sources=[AudioSource(type="file", channels=list(range(info.num_channels)), source=str(Path(path).resolve()))],
    )


def import_kaldi_dir(
    data_dir: str | Path, out: str | Path, split: str = "train", check_samples: bool = True, replace: bool = False
) -> dict:
    """Import ``wav.scp``, ``text`` and optional ``utt2spk`` and ``segments``. A recording
    that ``segments`` cuts into utterances may be of any length (only its spans are read)."""
    data_dir, out = Path(data_dir), Path(out)
    wav = _read_table(data_dir / "wav.scp")
    text = _read_table(data_dir / "text", values=False)
    utt2spk = _read_table(data_dir / "utt2spk", required=False)
    segments = _read_table(data_dir / "segments", required=False)
    for utt, line in segments.items():
        parts = line.split()
        try:
            if len(parts) != 3:
                raise ValueError
            float(parts[1]), float(parts[2])
        except ValueError:
            raise DataError(
                f"{data_dir / 'segments'}: the line of {utt!r} is not `UTT REC START END` (got {line!r})"
            ) from None
    segmented = {line.split()[0] for line in segments.values()}
    report = ImportReport()
    recordings: dict[str, Recording] = {}
    for rec_id, path in sorted(wav.items()):
        if path.endswith("|"):
            report.skip(
                rec_id,
                f"wav.scp entry is a pipe command ({path!r}); write the audio "
                "to files first (e.g. `wav-copy scp:wav.scp ark,scp:...`)",
            )
            continue
        rec = _recording(rec_id, path, report, check_samples, segmented=rec_id in segmented)
        if rec is not None:
            recordings[rec_id] = rec
    supervisions = []
    for utt, words in sorted(text.items()):
        if segments:
            if utt not in segments:
                report.skip(utt, f"utterance {utt} is in text but not in segments")
                continue
            rec_id = segments[utt].split()[0]
        else:
            rec_id = utt
        rec = recordings.get(rec_id)
        if rec is None:
            if rec_id not in report.skipped:
                report.skip(utt, f"utterance {utt}: recording {rec_id} is not in wav.scp")
            continue
        span = _segment(utt, segments[utt], rec, data_dir / "segments") if segments else (0.0, rec.duration)
        if isinstance(span, str):
            report.skip(utt, span)
            continue
        start, end = span
        transcript = normalize(words)
        fault = _transcript_fault(utt, transcript, end - start)
        if fault:
            report.skip(utt, f"{fault} ({data_dir / 'text'})")
            continue
        supervisions.append(
            SupervisionSegment(
                id=utt,
                recording_id=rec_id,
                start=start,
                duration=round(end - start, 6),
                channel=0,
                text=transcript,
                speaker=utt2spk.get(utt, utt),
                language="English",
            )
        )
        report.kept += 1
    used = {s.recording_id for s in supervisions}
    return _write(out, split, [r for r in recordings.values() if r.id in used], supervisions, report, replace)


def import_lhotse(
    recordings_path: str | Path,
    supervisions_path: str | Path,
    out: str | Path,
    split: str = "train",
    check_samples: bool = True,
    replace: bool = False,
) -> dict:
    """Import lhotse manifests (any format lhotse reads). Audio is checked the same way."""
    report = ImportReport()
    kept_recs: dict[str, Recording] = {}
    for rec in RecordingSet.from_file(recordings_path):
        if rec.id in kept_recs:
            report.skip(rec.id, f"duplicate recording id {rec.id} in {recordings_path}")
            continue
        src = rec.sources[0]
        if src.type == "file":
            fresh = _recording(rec.id, src.source, report, check_samples)
            if fresh is None:
                continue
        kept_recs[rec.id] = rec
    supervisions, seen = [], set()
    for sup in SupervisionSet.from_file(supervisions_path):
        if sup.id in seen:
            report.skip(sup.id, f"duplicate utterance id {sup.id} in {supervisions_path}")
            continue
        seen.add(sup.id)
        if sup.recording_id not in kept_recs:
            if sup.recording_id not in report.skipped:
                report.skip(sup.id, f"utterance {sup.id}: recording {sup.recording_id} is missing")
            continue
        transcript = normalize(sup.text or "")
        fault = _transcript_fault(sup.id, transcript, sup.duration)
        if fault:
            report.skip(sup.id, fault)
            continue
        supervisions.append(fastcopy(sup, text=transcript))
        report.kept += 1
    used = {s.recording_id for s in supervisions}
    return _write(Path(out), split, [r for r in kept_recs.values() if r.id in used], supervisions, report, replace)


def import_librispeech(
    corpus_dir: str | Path,
    out: str | Path,
    lm_text: str | Path | None = None,
    parts=("train-clean-100", "dev-clean", "test-clean"),
) -> dict:
    """LibriSpeech from local files via lhotse's recipe; parts map to train/dev/test."""
    out = Path(out)
    names = dict(zip(("train", "dev", "test"), parts, strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        manifests = prepare_librispeech(corpus_dir, dataset_parts=list(parts), output_dir=tmp)
        reports = {}
        for split, part in names.items():
            if part not in manifests:
                raise FileNotFoundError(f"LibriSpeech part {part} not found under {corpus_dir}")
            m = manifests[part]
            m["recordings"].to_file(f"{tmp}/r.jsonl")
            m["supervisions"].to_file(f"{tmp}/s.jsonl")
            reports[split] = import_lhotse(f"{tmp}/r.jsonl", f"{tmp}/s.jsonl", out, split)
    if lm_text is not None:
        reports["lm_text"] = import_lm_text(lm_text, out)
    return reports


def import_lm_text(path: str | Path, out: str | Path) -> dict:
    """Normalise a text-only corpus into ``out/lm_text.txt``, dropping every sentence
    that is a dev or test transcript (the LM must not have seen the test set). Empty or
    non-text input is refused; a different ``lm_text.txt`` already there is kept as
    ``lm_text.old-{time}.txt`` before the new one replaces it (atomically)."""
    path, corpus = Path(path), CorpusDir(out)
    content = read_text_file(path, "text file")
    held_out = set()
    for split in ("dev", "test"):
        p = corpus.supervisions(split)
        if p.exists():
            held_out |= {s.text for s in SupervisionSet.from_file(p)}
    kept, dropped = [], 0
    for line in content.splitlines():
        text = normalize(line)
        if not text:
            continue
        if text in held_out:
            dropped += 1
            continue
        kept.append(text + "\n")
    if not kept:
        raise DataError(
            f"{path} holds no sentence to train LMs on ({dropped} were dev/test transcripts); "
            f"{corpus.lm_text} was left as it was"
        )
    new = "".join(kept)
    backup = None
    if corpus.lm_text.exists() and corpus.lm_text.read_text(encoding="utf-8", errors="replace") != new:
        backup = corpus.root / f"lm_text.old-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        shutil.copy2(corpus.lm_text, backup)
        log.warning("%s replaced; the old text is kept as %s (LMs trained on it are now stale)", corpus.lm_text, backup)
    atomic_write_text(corpus.lm_text, new)
    return {"sentences": len(kept), "dropped_dev_test": dropped, "backup": str(backup) if backup else None}
