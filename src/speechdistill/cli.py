"""The ``speechdistill`` command: a thin layer over library calls.

    speechdistill corpus build --preset small --out data/small
    speechdistill features compute data/small
    speechdistill units build data/small --vocab-size 256 --num-senones 500
    speechdistill corpus summary data/small
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from speechdistill.utils import atomic_write_text

console = Console()
log = logging.getLogger("speechdistill")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="corpus directory to write")
    p.add_argument("--split", choices=("train", "dev", "test"), default="train")
    p.add_argument("--check-samples", action=argparse.BooleanOptionalAction, default=True,
                   help="read every file to detect NaN samples (slower)")  # fmt: skip


def _config_args(p: argparse.ArgumentParser, example: str, override: str) -> None:
    """A YAML config and dotted overrides, as every training command takes them."""
    p.add_argument("config", type=Path, help=f"YAML ({example})")
    p.add_argument("overrides", nargs="*", help=f"key=value, e.g. {override}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speechdistill", formatter_class=_Formatter,
        description="Knowledge distillation for speech recognisers.\n\n"
        "Start with:  speechdistill corpus build --preset tiny --out data/tiny",
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    corpus = sub.add_parser("corpus", help="build, import and summarise corpora",
                            formatter_class=_Formatter,
                            description="Build the built-in synthetic corpus or import another.")  # fmt: skip
    csub = corpus.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = csub.add_parser("build", formatter_class=_Formatter,
                        help="synthesise the built-in corpus (resumes if interrupted)",
                        description="Speak public-domain English sentences with many voices; "
                        "write lhotse manifests with phone alignments.\n\n"
                        "  speechdistill corpus build --preset small --out data/small")  # fmt: skip
    b.add_argument("--preset", choices=("tiny", "small", "medium"), default="small",
                   help="tiny: tests, <1 min; small: >=3 h, 20 voices; medium: ~15 h")  # fmt: skip
    b.add_argument("--out", type=Path, required=True, help="corpus directory")
    b.add_argument("--text", default="kjv",
                   help="'kjv' (Debian bible-kjv), 'web' (sword-text-web) or a UTF-8 text file")  # fmt: skip
    b.add_argument("--seed", type=int, default=0, help="selects sentences and voices")
    b.add_argument("--jobs", type=int, default=2, help="synthesis processes")

    k = csub.add_parser("import-kaldi", formatter_class=_Formatter,
                        help="import a Kaldi data dir (wav.scp, text, [utt2spk], [segments])",
                        description="  speechdistill corpus import-kaldi data/train --out data/mine --split train")  # fmt: skip
    k.add_argument("data_dir", type=Path)
    _import_options(k)

    m = csub.add_parser("import-lhotse", formatter_class=_Formatter,
                        help="import lhotse recording + supervision manifests",
                        description="  speechdistill corpus import-lhotse rec.jsonl.gz sup.jsonl.gz --out data/mine")  # fmt: skip
    m.add_argument("recordings", type=Path)
    m.add_argument("supervisions", type=Path)
    _import_options(m)

    ls = csub.add_parser("import-librispeech", formatter_class=_Formatter,
                         help="LibriSpeech from local files (lhotse's recipe)",
                         description="  speechdistill corpus import-librispeech /corpora/LibriSpeech "
                         "--out data/libri --lm-text librispeech-lm-norm.txt")  # fmt: skip
    ls.add_argument("corpus_dir", type=Path)
    ls.add_argument("--out", type=Path, required=True)
    ls.add_argument("--lm-text", type=Path, default=None, help="text-only corpus for the LMs")
    ls.add_argument("--parts", nargs=3, default=["train-clean-100", "dev-clean", "test-clean"],
                    metavar=("TRAIN", "DEV", "TEST"))  # fmt: skip

    t = csub.add_parser("import-lm-text", formatter_class=_Formatter,
                        help="set a corpus's text-only corpus (drops dev/test sentences)")
    t.add_argument("text", type=Path)
    t.add_argument("--out", type=Path, required=True)

    s = csub.add_parser("summary", help="print a corpus summary", formatter_class=_Formatter)
    s.add_argument("corpus", type=Path)

    feats = sub.add_parser("features", help="compute and store log-mel filterbanks",
                           formatter_class=_Formatter)  # fmt: skip
    fsub = feats.add_subparsers(dest="action", required=True, metavar="ACTION")
    fc = fsub.add_parser("compute", formatter_class=_Formatter,
                         help="80-dim fbank for every split, stored as lilcom archives",
                         description="  speechdistill features compute data/small --extractor kaldi-native")  # fmt: skip
    fc.add_argument("corpus", type=Path)
    fc.add_argument("--extractor", choices=("kaldi-native", "lhotse"), default="kaldi-native")
    fc.add_argument("--num-mel-bins", type=int, default=80)

    units = sub.add_parser("units", help="build the subword, phone and senone inventories",
                           formatter_class=_Formatter)  # fmt: skip
    usub = units.add_subparsers(dest="action", required=True, metavar="ACTION")
    ub = usub.add_parser("build", formatter_class=_Formatter,
                         help="SentencePiece + lexicon + senone tree; converts the LM text",
                         description="  speechdistill units build data/small --vocab-size 256")  # fmt: skip
    ub.add_argument("corpus", type=Path)
    ub.add_argument("--vocab-size", type=int, default=256, help="SentencePiece vocabulary")
    ub.add_argument("--subword-type", choices=("unigram", "bpe"), default="unigram")
    ub.add_argument("--num-senones", type=int, default=500, help="tied states in the inventory")
    ub.add_argument("--states-per-phone", type=int, default=3)
    ub.add_argument("--min-senone-frames", type=float, default=50.0,
                    help="fewest training frames a tied state may have")  # fmt: skip
    ub.add_argument("--g2p", action=argparse.BooleanOptionalAction, default=True,
                    help="pronounce words missing from CMUdict with eSpeak's rules")  # fmt: skip
    lm = sub.add_parser("lm", help="train the unit language models (teachers)", formatter_class=_Formatter)
    lsub = lm.add_subparsers(dest="action", required=True, metavar="ACTION")
    lt = lsub.add_parser("train", formatter_class=_Formatter, help="train one unit's LM; prints dev perplexity",
                         description="  speechdistill lm train data/small --unit phone --arch lstm")  # fmt: skip
    lt.add_argument("corpus", type=Path)
    lt.add_argument("--unit", choices=("subword", "phone", "senone"), required=True)
    lt.add_argument("--arch", choices=("lstm", "transformer", "masked"), default="lstm",
                    help="causal LSTM, causal Transformer, or bidirectional masked Transformer")  # fmt: skip
    lt.add_argument("--d-model", type=int, default=256)
    lt.add_argument("--num-layers", type=int, default=2)
    lt.add_argument("--epochs", type=int, default=1)
    lt.add_argument("--lr", type=float, default=2e-3)
    lt.add_argument("--max-tokens", type=int, default=6000, help="tokens per batch")
    lt.add_argument("--max-sentences", type=int, default=0, help="use the first N sentences (0: all)")

    te = sub.add_parser("teach", formatter_class=_Formatter, help="cache an LM's soft labels for training",
                        description="  speechdistill teach data/small --unit phone --top-k 8 --temperature 3")  # fmt: skip
    te.add_argument("corpus", type=Path)
    te.add_argument("--unit", choices=("subword", "phone", "senone"), required=True)
    te.add_argument("--top-k", type=int, default=8)
    te.add_argument("--temperature", type=float, default=3.0)
    te.add_argument("--lm", type=Path, default=None, help="LM checkpoint (default: CORPUS/lm/UNIT)")

    ab = sub.add_parser("ablate", formatter_class=_Formatter, help="run every variant x seed; write the table",
                        description="  speechdistill ablate configs/ablation.yaml --seeds 3\n"
                        "Finished runs are not run again.")  # fmt: skip
    ab.add_argument("ablation", type=Path, help="ablation YAML (base config + variants)")
    ab.add_argument("overrides", nargs="*", help="key=value applied to every run")
    ab.add_argument("--seeds", type=int, default=3)

    de = sub.add_parser("demo", formatter_class=_Formatter, help="the whole distillation study on the built-in corpus",
                        description="  speechdistill demo            # what `make demo` runs (about 40 min on 2 cores)\n"
                        "  speechdistill demo --quick    # 1 seed, 2 epochs: a first look\n"
                        "Builds what is missing (corpus, features, units, LMs, soft labels), then runs\n"
                        "configs/demo.yaml (baseline, interp, aux, hier) and prints the table.")  # fmt: skip
    de.add_argument("--corpus", type=Path, default=Path("data/small"))
    de.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, LMs on part of the text")
    de.add_argument("--seeds", type=int, default=None, help="seeds per method (default 2; 1 with --quick)")
    de.add_argument("--ssl", action="store_true", help="the SSL part instead: pre-train a teacher, distil "
                    "DistilHuBERT and FitHuBERT students, probe all three, compare (make demo-ssl)")  # fmt: skip

    pt = sub.add_parser("pretrain", formatter_class=_Formatter, help="pre-train a small HuBERT-style SSL teacher",
                        description="HuBERT iteration 1 on the corpus: MFCC k-means labels, masked prediction.\n\n"
                        "  speechdistill pretrain configs/ssl/pretrain.yaml data.corpus=data/small\n"
                        "Writes {out_dir}/hf, a Hugging Face HubertModel directory; resumes from {out_dir}/last.")  # fmt: skip
    _config_args(pt, "configs/ssl/pretrain.yaml", "optim.epochs=2")
    ds = sub.add_parser("distill-ssl", formatter_class=_Formatter, help="distil an SSL teacher into a small student",
                        description="  speechdistill distill-ssl configs/ssl/distilhubert.yaml teacher=exp/ssl/teacher/hf\n"
                        "  speechdistill distill-ssl configs/ssl/fithubert.yaml\n"
                        "Writes {out_dir}/student (safetensors + JSON; distilhubert also student.hf).")  # fmt: skip
    _config_args(ds, "configs/ssl/distilhubert.yaml or fithubert.yaml", "student.num_layers=4")
    pr = sub.add_parser("probe", formatter_class=_Formatter, help="SUPERB-style probe of a frozen upstream",
                        description="  speechdistill probe --upstream exp/ssl/teacher/hf --task pr --corpus data/small\n"
                        "Writes {upstream}.probe-{task}.json beside the upstream (read by `compare`).")  # fmt: skip
    pr.add_argument("--upstream", type=Path, required=True,
                    help="HF directory (HuBERT/wav2vec 2.0/WavLM), SSL student or acoustic-model checkpoint; "
                    "`fbank` (or DIR/fbank) probes the filterbank itself, the reference")  # fmt: skip
    pr.add_argument("--lstm-dim", type=int, default=256, help="BiLSTM width of the asr head")
    pr.add_argument("--task", choices=("pr", "asr", "sid"), required=True)
    pr.add_argument("--corpus", default="data/small")
    pr.add_argument("--epochs", type=int, default=20)
    pr.add_argument("--lr", type=float, default=5e-3)
    pr.add_argument("--max-hours", type=float, default=0.0, help="cap on the training audio (0: all)")
    cp = sub.add_parser("compare", formatter_class=_Formatter, help="teacher vs students: size, speed, probes",
                        description="  speechdistill compare exp/ssl/teacher/hf exp/ssl/distilhubert/student "
                        "exp/ssl/fithubert/student --out exp/ssl")  # fmt: skip
    cp.add_argument("teacher", type=Path)
    cp.add_argument("students", type=Path, nargs="+")
    cp.add_argument("--out", type=Path, default=None, help="also write compare.md and compare.json here")
    cp.add_argument("--repeats", type=int, default=7, help="timed runs per upstream (median)")

    tr = sub.add_parser("train", formatter_class=_Formatter, help="train an acoustic model",
                        description="Train from a YAML config with dotted overrides.\n\n"
                        "  speechdistill train configs/baseline.yaml optim.lr=1e-3 out_dir=exp/b2\n"
                        "  torchrun --nproc-per-node 2 -m speechdistill.cli train configs/baseline.yaml "
                        "strategy=ddp devices=2")  # fmt: skip
    _config_args(tr, "see configs/", "model.encoder.preset=s")
    tr.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                    help="continue from {out_dir}/last if it exists")  # fmt: skip

    ev = sub.add_parser("evaluate", formatter_class=_Formatter, help="decode and score a checkpoint",
                        description="  speechdistill evaluate exp/baseline/best --data data/small --split test")  # fmt: skip
    ev.add_argument("checkpoint", type=Path, help="checkpoint prefix (e.g. exp/baseline/best)")
    ev.add_argument("--data", type=Path, required=True, help="corpus dir or Kaldi data dir")
    ev.add_argument("--split", default="test")
    ev.add_argument("--beam", type=int, default=0, help="beam size; 0 or 1: greedy")
    ev.add_argument("--units", type=Path, default=None, help="unit inventory (default: the training corpus's)")

    ex = sub.add_parser("export", formatter_class=_Formatter, help="export without taps (TorchScript, ONNX)",
                        description="  speechdistill export exp/baseline/best --out exp/baseline/export")  # fmt: skip
    ex.add_argument("checkpoint", type=Path)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True)
    ex.add_argument("--torchscript", action=argparse.BooleanOptionalAction, default=True)
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


def _run(args: argparse.Namespace) -> None:
    # Markdown tables go out with plain print(): rich would wrap them at 80 columns
    # when stdout is not a terminal (a log file, `make demo > log`).
    if args.command == "train":
        from speechdistill.config import load_config
        from speechdistill.train import TrainConfig, train

        summary = train(load_config(TrainConfig, args.config, args.overrides), resume=args.resume)
        console.print_json(data=summary)
    elif args.command == "ablate":
        from speechdistill.ablate import ablate, report_path

        ablate(args.ablation, args.seeds, args.overrides)
        print(report_path(args.ablation).read_text())
    elif args.command == "pretrain":
        from speechdistill.config import load_config
        from speechdistill.ssl_train import PretrainConfig, pretrain

        summary = pretrain(load_config(PretrainConfig, args.config, args.overrides))
        last = summary["history"][-1]
        console.print(f"teacher: {summary['params'] / 1e6:.2f}M parameters, {summary['hours']} h of audio; "
                      f"final epoch loss {last['loss']:.3f}, masked accuracy {100 * last['masked_accuracy']:.1f}%")  # fmt: skip
    elif args.command == "distill-ssl":
        from speechdistill.config import load_config
        from speechdistill.ssl_train import DistillConfig, distill

        summary = distill(load_config(DistillConfig, args.config, args.overrides))
        console.print_json(data={k: v for k, v in summary.items() if k != "history"}
                           | {"final_epoch": summary["history"][-1]})  # fmt: skip
    elif args.command == "probe":
        from speechdistill.compare import probe_result_path
        from speechdistill.probe import ProbeConfig, plot_layer_weights, probe

        cfg = ProbeConfig(args.task, args.corpus, args.epochs, args.lr, lstm_dim=args.lstm_dim, max_hours=args.max_hours)
        r = probe(args.upstream, cfg)
        path = probe_result_path(args.upstream, args.task)
        atomic_write_text(path, json.dumps(r, indent=1) + "\n")
        plot_layer_weights(r, path.with_suffix(".png"))
        console.print(f"{args.upstream} {args.task}: test {r['metric']} {r['test']:.2f}% (dev {r['dev']:.2f}%)")
    elif args.command == "compare":
        from speechdistill.compare import compare, markdown, write_report

        rows = compare(args.teacher, args.students, repeats=args.repeats)
        if args.out:
            write_report(rows, args.out)
        print(markdown(rows))
    elif args.command == "demo":
        from speechdistill.demo import run_demo, run_ssl_demo

        if args.ssl:
            print(run_ssl_demo(args.corpus))
        else:
            print(run_demo(args.corpus, args.quick, args.seeds).read_text())
    elif args.command == "lm":
        from speechdistill.teachers.lm import LMConfig
        from speechdistill.teachers.lm_train import train_lm

        meta = train_lm(args.corpus, args.unit, LMConfig(args.arch, args.d_model, args.num_layers),
                        args.epochs, args.max_tokens, args.lr, args.max_sentences)  # fmt: skip
        console.print(f"{args.unit} LM ({args.arch}): dev perplexity {meta['dev_perplexity']:.2f} "
                      f"({meta['train_tokens']} training tokens, {meta['train_seconds']} s)")  # fmt: skip
    elif args.command == "teach":
        from speechdistill.distill.soft_labels import build_cache

        meta = build_cache(args.corpus, args.unit, args.top_k, args.temperature, args.lm)
        console.print(f"{args.unit} soft labels: {meta['utterances']} utterances, {meta['positions']} "
                      f"positions, {meta['bytes'] / 1e6:.1f} MB "
                      f"({meta['bytes_per_hour_of_audio'] / 1e6:.1f} MB per hour of audio)")  # fmt: skip
    elif args.command == "evaluate":
        from speechdistill.evaluate import evaluate

        scores = evaluate(args.checkpoint, args.data, args.split, args.beam, args.units)
        words = f"WER {scores['wer']:.2f}%  CER {scores['cer']:.2f}%  " if scores["unit"] == "subword" else ""
        console.print(f"{args.split}: {words}PER {scores['per']:.2f}%  "
                      f"({scores['num_utterances']} utterances, {scores['decoder']})")  # fmt: skip
    elif args.command == "export":
        from speechdistill.export import export

        for kind, path in export(args.checkpoint, args.out, args.torchscript, args.onnx).items():
            console.print(f"{kind}: {path}")
    elif args.command == "corpus":
        if args.action == "build":
            from speechdistill.data.corpus import build_corpus

            print_summary(build_corpus(args.preset, args.out, args.text, args.seed, args.jobs),
                          f"{args.out} ({args.preset})")  # fmt: skip
        elif args.action == "summary":
            path = args.corpus / "summary.json"
            if not path.exists():
                sys.exit(f"error: {path} is missing; build the corpus first")
            print_summary(json.loads(path.read_text()), str(args.corpus))
        elif args.action == "import-kaldi":
            from speechdistill.data.importers import import_kaldi_dir

            console.print_json(data=import_kaldi_dir(args.data_dir, args.out, args.split, args.check_samples))
        elif args.action == "import-lhotse":
            from speechdistill.data.importers import import_lhotse

            console.print_json(data=import_lhotse(args.recordings, args.supervisions, args.out,
                                                  args.split, args.check_samples))  # fmt: skip
        elif args.action == "import-librispeech":
            from speechdistill.data.importers import import_librispeech

            console.print_json(data=import_librispeech(args.corpus_dir, args.out, args.lm_text, args.parts))
        elif args.action == "import-lm-text":
            from speechdistill.data.importers import import_lm_text

            console.print_json(data=import_lm_text(args.text, args.out))
    elif args.command == "features":
        from speechdistill.data.features import FbankExtractor, compute_features

        for split, path in compute_features(args.corpus, extractor=FbankExtractor(
                args.extractor, args.num_mel_bins)).items():  # fmt: skip
            console.print(f"{split}: {path}")
    elif args.command == "units":
        from speechdistill.units.inventory import UnitsConfig, build_units

        cfg = UnitsConfig(args.vocab_size, args.subword_type, args.num_senones,
                          args.states_per_phone, args.min_senone_frames, args.g2p)  # fmt: skip
        info = build_units(args.corpus, cfg)
        console.print_json(data={k: v for k, v in info.items() if k != "unpronounceable_words"}
                           | {"unpronounceable_words": len(info["unpronounceable_words"])})  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])  # fmt: skip
    try:
        _run(args)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as e:
        # Expected faults (bad input, missing packages) get one clear line, not a traceback.
        log.debug("traceback", exc_info=True)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
