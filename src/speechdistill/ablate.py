"""The ablation command: every variant x every seed, one results table.

    speechdistill ablate configs/ablation.yaml --seeds 3

An ablation file names a base config, the variants (each a list of dotted
overrides) and where to write::

    base: configs/baseline.yaml
    out_dir: exp/ablation
    baseline: baseline                # the variant the others are compared with
    report: results                   # file stem of the table (default: results)
    variants:
      baseline: []
      hier: ["model.taps=[{layer: 2, unit: senone, kd: true, ce_weight: 0.0}]"]

Each run trains into ``{out_dir}/{variant}/seed{n}`` and is scored on dev and
test (greedy decoding). A run whose ``result.json`` exists is not run again,
so an interrupted ablation resumes. Results: ``{report}.md``, ``.csv`` and
``.png`` in ``out_dir`` (mean +- std over seeds, change relative to the baseline).
Two ablation files may share an ``out_dir`` (and so reuse each other's runs, e.g. a
control reusing the demo's baseline) as long as their ``report`` names differ.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from speechdistill.config import ConfigError, apply_override, from_dict, load_config, to_dict
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
            raise ValueError(f"report={self.report!r} must be a plain file name (no directories); "
                             "the table is written into out_dir")  # fmt: skip
        if self.baseline not in self.variants:
            raise ValueError(f"baseline variant {self.baseline!r} is not among the variants "
                             f"{list(self.variants)}")  # fmt: skip
        for name, ovs in self.variants.items():
            if not isinstance(ovs, list) or not all(isinstance(o, str) for o in ovs):
                raise ValueError(f"variants.{name} must be a list of key=value strings")


def load_ablation(path: str | Path) -> AblationConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"ablation file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    return from_dict(AblationConfig, data)


def run_config(abl: AblationConfig, variant: str, seed: int, extra: list[str] = ()):
    """The TrainConfig of one run: base + shared overrides + variant overrides + seed."""
    from speechdistill.train import TrainConfig

    base = to_dict(load_config(TrainConfig, abl.base))
    for o in [*abl.overrides, *abl.variants[variant], *extra,
              f"seed={seed}", f"name={variant}", f"out_dir={Path(abl.out_dir) / variant / f'seed{seed}'}"]:  # fmt: skip
        apply_override(base, o)
    return from_dict(TrainConfig, base)


def run_one(abl: AblationConfig, variant: str, seed: int, extra: list[str] = ()) -> dict:
    from speechdistill.evaluate import evaluate
    from speechdistill.train import train

    cfg = run_config(abl, variant, seed, extra)
    out = Path(cfg.out_dir)
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    summary = train(cfg, resume=True)
    result = {"variant": variant, "seed": seed, "params": summary["params_without_taps"],
              "params_with_taps": summary["params"], "train_seconds": summary["train_seconds_this_run"],
              "epochs": summary["epochs"]}  # fmt: skip
    for split in ("dev", "test"):
        scores = evaluate(out / "best", cfg.data.corpus, split)
        result[f"{split}_wer"] = scores["wer"] if scores["unit"] == "subword" else None
        result[f"{split}_per"] = scores["per"]
    atomic_write_text(result_path, json.dumps(result, indent=1) + "\n")
    return result


def ablate(path: str | Path, seeds: int = 3, extra: list[str] = (), out_dir: str | Path | None = None) -> list[dict]:
    """Run (or resume) every variant with seeds 0..seeds-1; write the report (into
    ``out_dir`` when given, else the ablation file's)."""
    from speechdistill.report import write_report

    abl = load_ablation(path)
    if out_dir is not None:
        abl.out_dir = str(out_dir)
    for variant in abl.variants:  # check every config before any work starts
        run_config(abl, variant, 0, extra)
    results = []
    for variant in abl.variants:
        for seed in range(seeds):
            log.info("ablation: %s seed %d", variant, seed)
            results.append(run_one(abl, variant, seed, extra))
    write_report(results, Path(abl.out_dir), abl.baseline, abl.report)
    return results


def report_path(path: str | Path) -> Path:
    """Where ``ablate(path)`` writes its Markdown table."""
    abl = load_ablation(path)
    return Path(abl.out_dir) / f"{abl.report}.md"
