"""The once-for-all check: a supernet's subnets against the same shapes distilled alone.

    speechdistill ssl ofa configs/ssl/ofa.yaml     # after `make demo-ssl` (its teacher)

An OFA file names the two stage configs (relative to itself) and the sizes to check::

    stage1: supernet-stage1.yaml   # the teacher distilled into the whole supernet
    stage2: supernet.yaml          # subnets trained from stage 1 (the sandwich rule)
    teacher: exp/ssl/teacher/hf
    out_dir: exp/ssl/ofa
    params: [0.25, 0.5, 1.0]       # ssl subnet --params of each size checked

For each size, ``ssl subnet --params`` cuts the largest uniform subnet under it out of the
trained supernet, and the same shape (width, heads, FFN, depth, the positional table's
width) is distilled alone by stage 1's recipe for the epochs of both stages together: the
supernet's whole budget. Every model is probed alike; ``ofa.md`` and ``ofa.json`` in
``out_dir`` give each subnet's score against its shape alone (#16: within 5% relative).
The steps go side by side, one torch thread each, as ``make demo-ssl``'s do, and a step
whose result exists is kept, so an interrupted check resumes (a finished run of other
settings is refused). Overrides name the file's keys (``out_dir=exp/ssl/ofa-s1``) or go to
every distillation (``seed=1``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig

from speechdistill.compare import upstream_params
from speechdistill.config import apply_override, finished_run, from_dict, load_config, read_yaml, to_dict
from speechdistill.distill.ssl_distill import DistillConfig, distill
from speechdistill.downstream import CLASSIFY, METRICS, TASKS
from speechdistill.parallel import Steps, call, run_jobs, usable_cpus
from speechdistill.probe import ProbeConfig, probe_kept, probe_result_path, probe_train_hours
from speechdistill.students.ssl import STUDENTS, load_student, save_student
from speechdistill.students.supernet import Subnet, extract, subnet_for_budget
from speechdistill.teachers.upstream import load_upstream
from speechdistill.utils import DataError, atomic_write_text


@dataclass
class OFAConfig:
    stage1: str = "supernet-stage1.yaml"  # relative to the OFA file
    stage2: str = "supernet.yaml"
    teacher: str = "exp/ssl/teacher/hf"
    out_dir: str = "exp/ssl/ofa"
    params: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    tasks: list[str] = field(default_factory=lambda: ["pr"])
    probe_epochs: int = 20
    probe_hours: float = 1.0  # the content probes' training audio; SID takes all of train

    def __post_init__(self):
        if not self.params or any(not 0 < p <= 1 for p in self.params):
            raise ValueError(f"params: fractions of the supernet's parameters in (0, 1], got {self.params}")
        if unknown := [t for t in self.tasks if t not in TASKS]:
            raise ValueError(f"tasks: {unknown} unknown; valid: {', '.join(TASKS)}")


PLAN_KEYS = {f.name for f in dataclasses.fields(OFAConfig)}


def cut_subnet(supernet: Path, fraction: float, out: Path) -> None:
    """``ssl subnet --params fraction``: the subnet saved as a standalone student."""
    net = load_student(supernet)
    save_student(extract(net, subnet_for_budget(net, fraction)), out, {"extracted_from": str(supernet)})


def alone_config(stage1: DistillConfig, stage2: DistillConfig, s: Subnet, head_dim: int, out_dir: Path):
    """Stage 1's recipe for subnet ``s``'s shape, with nothing elastic, for both stages' epochs."""
    student = dataclasses.replace(
        stage1.student,
        d_model=s.d_model,
        num_heads=max(s.heads),
        head_dim=head_dim,
        ff_dim=max(s.ff_dims),
        num_layers=s.num_layers,
        pos_dim=stage1.student.pos_dim or stage1.student.d_model,
        width_choices=[1.0],
        depth_choices=[1.0],
    )
    epochs = stage1.optim.max_epochs + stage2.optim.max_epochs
    return dataclasses.replace(
        stage1, out_dir=str(out_dir), student=student, optim=dataclasses.replace(stage1.optim, max_epochs=epochs)
    )


def run_ofa(path: str | Path, overrides: list[str] | None = None, jobs: int = 0) -> list[dict]:
    """Train (or keep) the supernet, cut each size out, distil each shape alone, probe all;
    -> one row per size."""
    path, data, extra = Path(path), read_yaml(path), []
    for o in overrides or []:  # the file's own keys (out_dir, params...) here; the rest to every distillation
        if o.partition("=")[0].strip() in PLAN_KEYS:
            apply_override(data, o)
        else:
            extra.append(o)
    plan = from_dict(OFAConfig, data)
    out, extra = Path(plan.out_dir), [f"teacher={plan.teacher}", *extra]
    stage1 = load_config(DistillConfig, path.parent / plan.stage1, [f"out_dir={out / 'stage1'}", *extra])
    stage2 = load_config(
        DistillConfig,
        path.parent / plan.stage2,
        [f"out_dir={out / 'supernet'}", f"init={out / 'stage1' / 'student'}", *extra],
    )
    if stage2.student.kind != "supernet" or not stage2.student.sample:
        raise DataError(f"{path}: stage2 ({plan.stage2}) must train a supernet's subnets (student.sample: true)")
    teacher = AutoConfig.from_pretrained(plan.teacher, local_files_only=True)
    meta = {"teacher_dim": teacher.hidden_size, "targets": stage2.student.targets(teacher.num_hidden_layers)}
    shape = STUDENTS["supernet"].from_meta(stage2.student, meta)  # untrained: its subnets' shapes only
    subnets = {p: subnet_for_budget(shape, p) for p in plan.params}

    steps, made = Steps(), {}
    step = steps.add

    def trained(cfg: DistillConfig, source: str, deps=()) -> int | None:
        return step(finished_run(cfg.out_dir, cfg, source), (distill, cfg), deps)

    supernet = trained(stage2, plan.stage2, (trained(stage1, plan.stage1),))
    for p, s in subnets.items():
        sub, alone = out / f"subnet{p:g}" / "student", out / f"alone{p:g}"
        made[sub] = step(
            sub.with_suffix(".json").exists(), (cut_subnet, out / "supernet" / "student", p, sub), (supernet,)
        )
        made[alone / "student"] = trained(alone_config(stage1, stage2, s, shape.head_dim, alone), plan.stage1)
    probes = {}
    for up, dep in made.items():
        for task in plan.tasks:
            cfg = ProbeConfig(
                task, stage1.data.corpus, plan.probe_epochs, max_hours=probe_train_hours(task, plan.probe_hours)
            )
            probes[up, task] = probe_result_path(up, task)
            step(probes[up, task].exists(), (probe_kept, up, cfg, False, False), (dep,))
    run_jobs(call, steps.calls, jobs or usable_cpus(), threads=1, after=steps.after)

    rows, teacher_params = [], upstream_params(load_upstream(plan.teacher))
    for p, s in subnets.items():
        sub, alone = out / f"subnet{p:g}" / "student", out / f"alone{p:g}" / "student"
        n_sub, n_alone = upstream_params(load_student(sub)), upstream_params(load_student(alone))
        if n_sub != n_alone:  # the check compares a shape with itself, or nothing
            raise DataError(f"{sub} has {n_sub} parameters but {alone}, its shape alone, {n_alone}")
        row = {"params": p, "subnet": s.to_dict(), "num_params": n_sub, "of_teacher": n_sub / teacher_params}
        for task in plan.tasks:
            a, b = (json.loads(probes[u, task].read_text()) for u in (sub, alone))
            sign = -1 if task in CLASSIFY else 1  # relative loss: PER up, accuracy down
            row[task] = {
                split: {"subnet": a[split], "alone": b[split], "relative": sign * (a[split] / b[split] - 1)}
                for split in ("test", "dev")
            }
        rows.append(row)
    atomic_write_text(out / "ofa.json", json.dumps({"plan": to_dict(plan), "rows": rows}, indent=1) + "\n")
    atomic_write_text(out / "ofa.md", markdown(rows, plan.tasks))
    return rows


def markdown(rows: list[dict], tasks: list[str]) -> str:
    """One line per size: its shape and, per task, subnet and alone, test (dev), and the
    subnet's relative loss."""
    out = "| `--params` | width, heads, FFN, layers | params (of the teacher's) |"
    out += "".join(f" {t.upper()} {METRICS[t]}, subnet | alone | relative loss |" for t in tasks) + "\n"
    out += "|---" * (3 + 3 * len(tasks)) + "|\n"
    for r in rows:
        s = r["subnet"]
        out += f"| {r['params']:g} | {s['d_model']}, {max(s['heads'])}, {max(s['ff_dims'])}, {len(s['heads'])} "
        out += f"| {r['num_params'] / 1e3:.0f}k ({r['of_teacher']:.3f}) |"
        for t in tasks:
            v = r[t]
            out += f" {v['test']['subnet']:.2f} ({v['dev']['subnet']:.2f}) | {v['test']['alone']:.2f} ({v['dev']['alone']:.2f}) |"
            out += f" {v['test']['relative']:+.1%} ({v['dev']['relative']:+.1%}) |"
        out += "\n"
    return out
