"""The ablation command: every variant x every seed, one results table.

    speechdistill ablate configs/asr/ablation.yaml --seeds 3

An ablation file names a base config, the variants and where to write::

    base: baseline.yaml               # the training config, relative to this file
    out_dir: exp/ablation
    baseline: baseline                # the variant the others are compared with
    report: results                   # file stem of the table (default: results)
    overrides: ["optim.max_epochs=3"] # applied to every variant
    variants:
      baseline: []
      hier: [hier.yaml]               # a recipe file: its own keys are merged in
      aux_phone: ["model.taps=[{layer: 3, unit: phone, kd: {}, ce_weight: 0.0}]"]

A run's config is: the base, the variant's recipe files (their own keys, not their
``base``, ``name`` or ``out_dir``), the shared overrides, the variant's ``key=value``
overrides, the command line's, then seed, name and out_dir.

Each run trains into ``{out_dir}/{variant}/seed{n}`` and is scored on dev and
test (greedy decoding). A run whose ``result.json`` exists is not run again,
so an interrupted ablation resumes; if the run's config has changed since (its
``config.yaml``), the ablation stops and says which keys, rather than report an old
run. Results: ``{report}.md``, ``.csv`` and ``.png`` in ``out_dir`` (mean +- std over
seeds, change relative to the baseline).
Runs may go ``jobs`` at a time, each in its own process with ``threads`` torch threads
(``--jobs 2 --threads 1``; speechdistill/parallel.py says why that pays on a small CPU). A
run's result depends on its thread count, never on ``jobs``: the demo fixes one thread
per run, so its table does not depend on the core count. A run that distils from another run
of the file (``teacher.path`` into its out_dir) starts once that one has finished.
Two ablation files may share an ``out_dir`` (and so reuse each other's runs, e.g. a
control reusing the demo's baseline) as long as their ``report`` names differ.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from speechdistill.config import (
    ConfigError,
    apply_override,
    config_changes,
    from_dict,
    load_config,
    merge,
    read_yaml,
    to_dict,
)
from speechdistill.evaluate import evaluate
from speechdistill.parallel import call, run_jobs
from speechdistill.report import write_report
from speechdistill.train import TrainConfig, train
from speechdistill.utils import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class AblationConfig:
    base: str
    out_dir: str = "exp/ablation"
    baseline: str = "baseline"
    variants: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # applied to every variant
    report: str = "results"  # the table's file stem in out_dir

    def __post_init__(self):
        if not self.report or Path(self.report).name != self.report:
            raise ValueError(
                f"report={self.report!r} must be a plain file name (no directories); the table is written into out_dir"
            )
        if self.baseline not in self.variants:
            raise ValueError(f"baseline variant {self.baseline!r} is not among the variants {list(self.variants)}")
        for name, ovs in self.variants.items():
            if not isinstance(ovs, list) or not all(isinstance(o, str) for o in ovs):
                raise ValueError(f"variants.{name} must be a list of key=value strings")


def load_ablation(path: str | Path) -> AblationConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"ablation file {path} does not exist")
    abl = from_dict(AblationConfig, read_yaml(path))
    abl.base = str(path.parent / abl.base)  # files are named relative to the ablation file
    abl.variants = {
        v: [str(path.parent / i) if i.endswith(".yaml") else i for i in items] for v, items in abl.variants.items()
    }
    return abl


def run_config(abl: AblationConfig, variant: str, seed: int, extra: list[str] = ()):
    """The TrainConfig of one run (see the module docstring for the order)."""
    data = to_dict(load_config(TrainConfig, abl.base))
    items = abl.variants[variant]
    for recipe in (i for i in items if i.endswith(".yaml")):
        data = merge(data, {k: v for k, v in read_yaml(recipe).items() if k not in ("base", "name", "out_dir")})
    run = [f"seed={seed}", f"name={variant}", f"out_dir={Path(abl.out_dir) / variant / f'seed{seed}'}"]
    for o in [*abl.overrides, *(i for i in items if not i.endswith(".yaml")), *extra, *run]:
        apply_override(data, o)
    return from_dict(TrainConfig, data)


def run_one(abl: AblationConfig, variant: str, seed: int, extra: list[str] = ()) -> dict:
    cfg = run_config(abl, variant, seed, extra)
    out = Path(cfg.out_dir)
    result_path = out / "result.json"
    if result_path.exists():
        _check_unchanged(out, cfg)
        return json.loads(result_path.read_text())
    log.info("ablation: %s seed %d", variant, seed)
    summary = train(cfg, start="auto")
    result = {
        "variant": variant,
        "seed": seed,
        "params": summary["params_without_taps"],
        "params_with_taps": summary["params"],
        "train_seconds": summary["train_seconds_this_run"],
        "precision": summary["precision"],
        "epochs": summary["epochs"],
    }
    for split in ("dev", "test"):
        scores = evaluate(out / "best", cfg.data.corpus, split)
        result[f"{split}_wer"] = scores["wer"] if scores["words"] else None
        result[f"{split}_per"] = scores["per"]
    atomic_write_text(result_path, json.dumps(result, indent=1) + "\n")
    return result


def _check_unchanged(out: Path, cfg: TrainConfig) -> None:
    """A finished run is reused only under the config it was trained with: after a recipe
    changes (a new baseline.yaml, an edited variant), an old table must not come back
    as the new one's."""
    if not (out / "config.yaml").exists():
        return
    before = to_dict(from_dict(TrainConfig, read_yaml(out / "config.yaml")))  # later fields: defaults
    changed = config_changes(before, to_dict(cfg), ignore=("progress",))
    if changed:
        raise ConfigError(
            f"{out} holds a finished run made with another config ({'; '.join(changed)}); move it aside "
            "(or delete it) to run this variant again, or restore the config it was made with"
        )


def ablate(
    path: str | Path,
    seeds: int = 3,
    extra: list[str] = (),
    out_dir: str | Path | None = None,
    jobs: int = 1,
    threads: int = 0,
    first: Sequence[tuple] = (),
) -> list[dict]:
    """Run (or resume) every variant with seeds 0..seeds-1, ``jobs`` runs at a time with
    ``threads`` torch threads each (0: torch's default); write the report (into ``out_dir``
    when given, else the ablation file's). ``first``: ``(fn, *args)`` jobs that make what
    the runs with soft labels read (the demo's LMs and caches); they share the runs' pool,
    so runs without soft labels go beside them. A run whose ``teacher.path`` is another
    run's checkpoint starts once that run has finished."""
    abl = load_ablation(path)
    if out_dir is not None:
        abl.out_dir = str(out_dir)
    configs = {v: run_config(abl, v, 0, extra) for v in abl.variants}  # check all before any work
    runs = [(variant, seed) for variant in abl.variants for seed in range(seeds)]
    log.info("ablation: %d runs, %d at a time; torch threads per run: %s", len(runs), jobs, threads or "default")
    extra = [*extra, "progress=false"] if jobs > 1 else extra  # one terminal cannot show several bars
    calls = [*first, *((run_one, abl, variant, seed, extra) for variant, seed in runs)]
    after = [()] * len(first) + _waits_for(abl, configs, runs, len(first))
    results = run_jobs(call, calls, jobs, threads, after)[len(first) :]
    write_report(results, Path(abl.out_dir), abl.baseline, abl.report)
    return results


def _waits_for(abl: AblationConfig, configs: dict, runs: list[tuple], first: int) -> list[tuple[int, ...]]:
    """For each run, the jobs it must wait for (indices into ``first`` jobs + runs): the
    ``first`` jobs when it reads soft labels, and the run of this ablation whose checkpoint
    is its ``teacher.path`` (oracle.yaml's students), which must come before it."""
    where = {(Path(abl.out_dir) / v / f"seed{s}").resolve(): k for k, (v, s) in enumerate(runs)}
    waits = []
    for i, (variant, _) in enumerate(runs):
        cfg = configs[variant]
        k = where.get(Path(cfg.teacher.path).parent.resolve()) if cfg.teacher.path else None
        if k is not None and k >= i:
            raise ConfigError(
                f"variant {variant!r} distils from {cfg.teacher.path}, a run of variant {runs[k][0]!r} that comes "
                "after it: list the teacher's variant first in the ablation file"
            )
        waits.append((tuple(range(first)) if cfg.soft_labels else ()) + ((first + k,) if k is not None else ()))
    return waits


def report_path(path: str | Path) -> Path:
    """Where ``ablate(path)`` writes its Markdown table."""
    abl = load_ablation(path)
    return Path(abl.out_dir) / f"{abl.report}.md"
