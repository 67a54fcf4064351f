"""The demo: the whole cross-modal distillation study on the built-in corpus.

    speechdistill demo            # `small` corpus, 4 methods x 1 seed (what `make demo` runs)
    speechdistill demo --seeds 2  # the same runs and a second seed of each (the README's table)
    speechdistill demo --quick    # a first look: `quick` corpus (data/quick), 1 seed, 80 updates

Steps, each kept when already done (so a second run only re-prints the table):
corpus -> features -> units -> one LM per unit -> soft-label caches ->
``configs/asr/demo.yaml`` (baseline, interp, aux, hier) through the ablation command.
The SSL demo: the own alignment, the PBERT teacher's pre-training, three students, probes,
comparison, the steps side by side.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from speechdistill.ablate import ablate
from speechdistill.align.run import align_corpus
from speechdistill.compare import compare, markdown, write_report
from speechdistill.config import finished_run, load_config
from speechdistill.data.corpus import build_corpus
from speechdistill.data.features import compute_features
from speechdistill.data.layout import CorpusDir, SoftLabelSpec
from speechdistill.data.units import build_units
from speechdistill.distill.soft_labels import SoftLabelCache, StaleCacheError, build_cache
from speechdistill.distill.ssl_distill import DistillConfig, distill
from speechdistill.parallel import Steps, call, run_jobs, usable_cpus
from speechdistill.probe import ProbeConfig, probe_kept, probe_result_path, probe_train_hours
from speechdistill.teachers.lm_train import train_lm
from speechdistill.teachers.pretrain import PretrainConfig, pretrain
from speechdistill.units.inventory import Units

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    preset: str = "small"  # the built-in corpus's preset
    corpus: str = "data/small"  # its directory unless the command names one
    ablation: str = "configs/asr/demo.yaml"
    out_dir: str = "exp/demo"
    # One seed per method by default: the 45-minute budget (#14) on a 2-core CPU. A run of
    # configs/asr/demo.yaml's 4 epochs is 9-10 min with bf16 (29.5 min in all), and about
    # 14 min estimated on a CPU without native bf16 (about 44 min in all; README).
    # `--seeds 2` (`make demo SEEDS=2`) keeps these runs and adds the second seed, the
    # README's table: a difference between methods is read against the seed spread.
    seeds: int = 1
    # LM sentences per unit (0: all). Senone sequences are 3x longer than phone ones and the
    # senone LM is the slowest teacher (279 s for all 59,729 sentences on 2 cores); its
    # perplexity is ~1.8 either way, so the demo trains it on part of the text.
    lm_sentences: tuple[tuple[str, int], ...] = (("senone", 20000), ("phone", 0), ("subword", 0))
    soft_labels: tuple[int, float] = (8, 3.0)  # top-k, temperature: what configs/asr/demo.yaml's methods use
    # The alignment that feeds the senone tree, the soft labels and the taps: the project's
    # own aligner, trained on the corpus's transcripts (never the synthesiser's timings);
    # the ablation file names the same one (data.alignment).
    alignment: str = "own"
    aligner: tuple[str, ...] = ()  # its options (align/own.py AlignerConfig), key=value
    overrides: tuple[str, ...] = ()
    # torch threads of each LM and run, whatever the machine: a result depends on it (the
    # order of float sums), so the table does not depend on the core count (it still may on
    # the CPU model: docs/findings.md 0b); the LMs and runs go side by side, one per CPU
    # (speechdistill/parallel.py)
    threads: int = 1


FULL = DemoPlan()
# A first look in minutes: the whole pipeline on the `quick` preset (600 training
# utterances of the same voices), the aligner on 0.15 h, LMs on part of the text, 80
# updates of 20 s batches (0.6 of an epoch, warm-up 40; the demo's 150-step warm-up is
# longer than such a run). It shows that every stage runs, not what the methods do: at
# this budget every run is still on CTC's plateau (docs/notes.md, eighth session).
QUICK = DemoPlan(
    preset="quick",
    corpus="data/quick",
    out_dir="exp/demo-quick",
    seeds=1,
    lm_sentences=(("senone", 1000), ("phone", 2500), ("subword", 2500)),
    aligner=("train_hours=0.15",),
    overrides=("optim.max_epochs=1", "optim.max_steps=80", "data.max_duration=20", "optim.warmup_steps=40"),
)


def _cache_usable(corpus: CorpusDir, spec: SoftLabelSpec) -> bool:
    if not corpus.soft_labels(spec).with_suffix(".json").exists():
        return False
    try:
        SoftLabelCache.open_for(corpus, spec)
    except StaleCacheError as e:
        log.warning("%s; rebuilding it", e)
        return False
    return True


def prepare(corpus: str | Path, plan: DemoPlan, show_progress: bool = True) -> list[tuple]:
    """Corpus, features, alignment and units (``prepare_corpus``), then the jobs that make
    the LMs and soft-label caches still missing, as ``(fn, *args)``."""
    corpus = CorpusDir(corpus)
    prepare_corpus(corpus, plan)
    units_digest = Units(corpus.units).digest()
    todo = []
    for unit, sentences in plan.lm_sentences:
        meta_path = corpus.lm(unit).with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if meta and (meta.get("max_sentences", 0), meta.get("units")) != (sentences, units_digest):
            log.info("%s LM was trained on other text or units than this demo plan; retraining", unit)
            meta_path.unlink()
        spec = SoftLabelSpec(unit, *plan.soft_labels, alignment=plan.alignment)
        if not meta_path.exists() or not _cache_usable(corpus, spec):
            todo.append((_lm_and_cache, str(corpus.root), spec, sentences, show_progress))
    return todo


def prepare_corpus(corpus: CorpusDir, plan: DemoPlan) -> None:
    """The plan's corpus, its features, the own alignment and the units on it: whatever is
    missing (both demos share them)."""
    build_corpus(plan.preset, corpus.root)
    compute_features(corpus)
    if plan.alignment:
        align_corpus(corpus, "own", plan.alignment, overrides=list(plan.aligner), jobs=2)
    info = corpus.units / "units.json"
    if not info.exists() or json.loads(info.read_text()).get("alignment", "") != plan.alignment:
        build_units(corpus, alignment=plan.alignment)


def _lm_and_cache(corpus: str, spec: SoftLabelSpec, sentences: int, show_progress: bool) -> None:
    """One unit's LM (unless trained) and its soft-label cache: one job of the demo's pool,
    at the plan's thread count like the runs (the cache's values depend on it too)."""
    corpus = CorpusDir(corpus)
    if not corpus.lm(spec.unit).with_suffix(".json").exists():
        meta = train_lm(corpus.root, spec.unit, max_sentences=sentences, show_progress=show_progress)
        log.info("%s LM: dev perplexity %.2f (%d s)", spec.unit, meta["dev_perplexity"], meta["train_seconds"])
    build_cache(corpus, spec, show_progress=show_progress)


def run_demo(
    corpus: str | Path | None = None, quick: bool = False, seeds: int | None = None, jobs: int | None = None
) -> Path:
    """Prepare everything, run the methods over seeds; returns the results table (Markdown).
    ``corpus``: its directory (default: the plan's, data/small or data/quick); ``jobs``: LMs
    and runs side by side (default: one per usable CPU), each with ``plan.threads`` threads:
    the LMs and caches go first and the baseline runs beside them; the runs that read soft
    labels start once all of them are made."""
    plan = QUICK if quick else FULL
    corpus = corpus or plan.corpus
    jobs = jobs or max(1, usable_cpus() // plan.threads)
    lms = prepare(corpus, plan, show_progress=jobs == 1)
    extra = [f"data.corpus={corpus}", *plan.overrides]
    ablate(plan.ablation, seeds or plan.seeds, extra, plan.out_dir, jobs, plan.threads, first=lms)
    return Path(plan.out_dir) / "results.md"


# The SSL demo's teacher: PBERT on the own alignment (the LM demo's) with an MFCC codebook
# beside it, the long recipe's teacher at the demo's hour and 4 epochs; the MFCC-only
# HuBERT teacher (configs/ssl/pretrain.yaml) was no better than the filterbank there.
SSL_TEACHER = "configs/ssl/pretrain-pbert.yaml"
# configs/ssl/{name}.yaml and the demo's overrides. The cut DistilHuBERT distils on all of
# train: at 3 epochs on 1 h it lost 10.6% PR to this teacher, on all 2.76 h 5.2% (dev 7.3%
# and 1.7%: findings 6f); plain DistilHuBERT, slower than the 30% bound, made room for it.
# FitHuBERT starts its CNN from the teacher's (same shape here): 57.78 dev PR against 76.62
# learnt afresh (findings 6g; fithubert.yaml keeps FitHuBERT's own, which a black-box
# teacher needs).
SSL_STUDENTS = {"distilhubert-cut": ("data.max_hours=0",), "fithubert": ("student.cnn_from_teacher=true",)}
SSL_PROBES = ("pr", "sid")
# The teacher pre-trains first and alone: on two threads its step is 1.66x faster than on
# one (bench/pretrain_step.py), and nothing but the filterbank's two short probes could run
# beside it (on one thread it left a core idle for 5.7 of its 8.4 minutes: findings 6f).
# A fixed count, not the machine's, so that the teacher is the same on every CPU.
SSL_TEACHER_THREADS = 2


def run_ssl_demo(
    corpus: str | Path = "data/small",
    out: str | Path = "exp/ssl",
    probe_epochs: int = 20,
    probe_hours: float = 1.0,
    jobs: int | None = None,
) -> str:
    """Align the corpus (the LM demo's own alignment, kept when made), pre-train the small
    teacher (``SSL_TEACHER``), distil it into each student of ``SSL_STUDENTS``, probe them,
    the teacher and the filterbank (the reference), compare.
    Every step is skipped when its result exists; returns the comparison table (Markdown).
    Probes train on ``probe_hours`` of the training split, drawn across its voices (SID on
    all of it, for its 80/10/10 split: ``probe_train_hours``), and score PR on the full
    dev and test splits. The teacher pre-trains first, alone, on ``SSL_TEACHER_THREADS``
    threads; the other steps then go ``jobs`` at a time (default: one per usable CPU), each
    with one torch thread, as the LM demo's runs do: the table does not depend on the core
    count, and one-thread jobs side by side do more on a small CPU (speechdistill/parallel.py)."""
    corpus, out = CorpusDir(corpus), Path(out)
    prepare_corpus(corpus, FULL)  # the alignment: the teacher's targets; the units: the PR probe's phones
    jobs = jobs or usable_cpus()
    calls, after, upstreams = ssl_demo_steps(corpus, out, probe_epochs, probe_hours, show_progress=jobs == 1)
    if calls and calls[0][0] is pretrain:  # every other step reads the teacher or waits for a core
        log.info("SSL demo: pre-training the teacher alone, on %d torch threads", SSL_TEACHER_THREADS)
        run_jobs(call, calls[:1], 1, threads=SSL_TEACHER_THREADS)
        calls, after = calls[1:], after_first(after)
    log.info("SSL demo: %d steps to run, %d at a time, one torch thread each", len(calls), jobs)
    run_jobs(call, calls, jobs, threads=1, after=after)
    rows = compare(upstreams[0], upstreams[1:], tasks=SSL_PROBES)
    write_report(rows, out)
    return markdown(rows)


def ssl_demo_steps(
    corpus: CorpusDir, out: Path, probe_epochs: int, probe_hours: float, show_progress: bool = True
) -> tuple[list[tuple], list[tuple[int, ...]], list[Path]]:
    """The SSL demo's steps still to run, as ``run_jobs`` calls of ``parallel.call`` with
    what each must wait for, and the upstreams to compare (the teacher first, the
    filterbank last). A step whose result exists is left out, and so is a wait on it."""
    common = [f"data.corpus={corpus}", f"progress={str(show_progress).lower()}"]
    steps = Steps()
    step = steps.add

    def run(fn, config_cls, path: str, run_dir: Path, overrides: list[str], deps=()) -> int | None:
        cfg = load_config(config_cls, path, [*common, *overrides, f"out_dir={run_dir}"])
        return step(finished_run(run_dir, cfg, path), (fn, cfg), deps)

    teacher = out / "teacher" / "hf"
    trained = {teacher: run(pretrain, PretrainConfig, SSL_TEACHER, teacher.parent, [])}  # upstream -> its step
    for kind, extra in SSL_STUDENTS.items():
        d = out / kind
        trained[d / "student"] = run(
            distill, DistillConfig, f"configs/ssl/{kind}.yaml", d, [f"teacher={teacher}", *extra], (trained[teacher],)
        )
    trained[out / "fbank"] = None  # the reference: probes on the filterbank itself
    upstreams = list(trained)
    for up in upstreams:
        for task in SSL_PROBES:
            cfg = ProbeConfig(task, str(corpus), probe_epochs, max_hours=probe_train_hours(task, probe_hours))
            kept = probe_result_path(up, task, cfg.rate_name, cfg.tune_name, cfg.head_name).exists()
            step(kept, (probe_kept, up, cfg, False, show_progress), (trained[up],))
    return steps.calls, steps.after, upstreams


def after_first(after: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """``run_jobs``'s waits for the calls after the first, once that one has run: the waits
    on it dropped, the other indices one less."""
    return [tuple(j - 1 for j in a if j > 0) for a in after[1:]]
