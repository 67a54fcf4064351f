"""Depth versus width at constant parameters: SSL students of several shapes, one table.

    speechdistill ssl shapes configs/ssl/shapes.yaml

A shapes file names the distillation config every student starts from and the shapes
(``student.*`` keys), deep-thin to shallow-wide::

    distill: fithubert.yaml          # relative to this file
    teacher: exp/ssl/teacher/hf
    out_dir: exp/ssl/shapes
    shapes:
      12x64: {num_layers: 12, d_model: 64, ff_dim: 192}
      3x128: {num_layers: 3, d_model: 128, ff_dim: 384}

Before anything trains, every shape's parameter count (the upstream's: prediction heads
exist only for training and are not counted) must be within ``tolerance`` of the first
shape's, or the file is refused naming the shape. Each student is distilled into
``{out_dir}/{shape}`` and probed (content: PR; speaker: SID) as ``make demo-ssl`` probes;
finished students and probes are kept, so an interrupted run resumes. Results:
``shapes.md``, ``shapes.json`` and ``shapes.png`` (PR PER and SID accuracy against depth)
in ``out_dir``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from transformers import AutoConfig

from speechdistill.compare import compare, upstream_params
from speechdistill.config import ConfigError, finished_run, from_dict, load_config, read_yaml, to_dict
from speechdistill.distill.ssl_distill import DistillConfig, distill
from speechdistill.probe import ProbeConfig, probe_kept, probe_train_hours
from speechdistill.students.ssl import STUDENTS, StudentConfig
from speechdistill.utils import atomic_write_bytes, atomic_write_text


@dataclass
class ShapesConfig:
    distill: str  # the distillation config every shape starts from, relative to the shapes file
    teacher: str = "exp/ssl/teacher/hf"
    out_dir: str = "exp/ssl/shapes"
    shapes: dict = field(default_factory=dict)  # name -> {student key: value}
    tolerance: float = 0.1  # parameter counts within this fraction of the first shape's
    tasks: list[str] = field(default_factory=lambda: ["pr", "sid"])
    probe_epochs: int = 20
    probe_hours: float = 1.0  # the content probes' training audio; SID takes all of train

    def __post_init__(self):
        if len(self.shapes) < 2:
            raise ValueError(f"shapes: give at least two shapes to compare, got {list(self.shapes)}")


def shape_params(cfg: StudentConfig, teacher_dim: int, teacher_layers: int) -> int:
    """The parameter count of a student of this shape, built untrained (no teacher needed)."""
    student = STUDENTS[cfg.kind].from_meta(cfg, {"teacher_dim": teacher_dim, "targets": cfg.targets(teacher_layers)})
    return upstream_params(student)


def check_balance(counts: dict[str, int], tolerance: float) -> None:
    """Refuse shapes whose parameter count is off the first shape's by more than ``tolerance``."""
    (first, ref), *rest = counts.items()
    off = {name: n for name, n in rest if abs(n - ref) > tolerance * ref}
    if off:
        listed = ", ".join(f"{name}: {n / 1e3:.0f}k" for name, n in off.items())
        raise ConfigError(
            f"shapes must have about the same parameters (within {tolerance:.0%} of {first}'s "
            f"{ref / 1e3:.0f}k); off: {listed}. Change their d_model, ff_dim or num_layers"
        )


def run_shapes(path: str | Path, overrides: list[str] | None = None) -> list[dict]:
    path = Path(path)
    plan = from_dict(ShapesConfig, read_yaml(path))
    out = Path(plan.out_dir)
    teacher = AutoConfig.from_pretrained(plan.teacher, local_files_only=True)
    configs = {}
    for name, keys in plan.shapes.items():
        student_keys = [f"student.{k}={json.dumps(v)}" for k, v in keys.items()]
        configs[name] = load_config(
            DistillConfig,
            path.parent / plan.distill,
            [f"teacher={plan.teacher}", f"out_dir={out / name}", *student_keys, *(overrides or [])],
        )
    counts = {
        name: shape_params(c.student, teacher.hidden_size, teacher.num_hidden_layers) for name, c in configs.items()
    }
    check_balance(counts, plan.tolerance)
    for name, cfg in configs.items():
        if not finished_run(out / name, cfg, path):
            distill(cfg)
        for task in plan.tasks:
            hours = probe_train_hours(task, plan.probe_hours)
            probe_kept(out / name / "student", ProbeConfig(task, cfg.data.corpus, plan.probe_epochs, max_hours=hours))
    rows = compare(plan.teacher, [out / name / "student" for name in configs], tasks=plan.tasks)
    for row, (name, cfg) in zip(rows[1:], configs.items(), strict=True):
        row |= {"shape": name, "num_layers": cfg.student.num_layers, "d_model": cfg.student.d_model}
    atomic_write_text(out / "shapes.json", json.dumps({"plan": to_dict(plan), "rows": rows}, indent=1) + "\n")
    atomic_write_text(out / "shapes.md", markdown(rows[1:], plan.tasks))
    plot(rows[1:], plan.tasks, out / "shapes.png")
    return rows


def markdown(rows: list[dict], tasks: list[str]) -> str:
    names = {"pr": "PR PER", "sid": "SID acc", "asr": "ASR WER"}
    out = "| shape | blocks x width | params | CPU time ratio | " + " | ".join(names[t] for t in tasks) + " |\n"
    out += "|---" * (4 + len(tasks)) + "|\n"
    for r in rows:
        scores = " | ".join("-" if r.get(t) is None else f"{r[t]:.2f}" for t in tasks)
        out += (
            f"| {r['shape']} | {r['num_layers']} x {r['d_model']} | {r['params'] / 1e3:.0f}k "
            f"| {r['time_ratio']:.3f} | {scores} |\n"
        )
    return out


def plot(rows: list[dict], tasks: list[str], path: Path) -> None:
    """One panel per task: the score against depth (log scale), each point labelled."""
    fig = Figure(figsize=(4.5 * len(tasks), 3.6))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        pts = sorted((r["num_layers"], r[task], r["shape"]) for r in rows if r.get(task) is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("blocks (same parameters: deeper is thinner)")
        ax.set_ylabel({"pr": "PR PER (%)", "sid": "SID accuracy (%)", "asr": "ASR WER (%)"}[task])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
