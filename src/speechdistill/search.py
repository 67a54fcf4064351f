"""Which subnet of a supernet to take: sizes, speeds and scores, and the Pareto front.

    speechdistill ssl search exp/ssl/supernet/student --corpus data/small --samples 24 --time-budget 0.5

Candidates are every uniform subnet (the same heads and FFN width in all layers) and
``samples`` drawn as in training. Each is cut out (``extract``) and measured side by side:
parameters, CPU seconds per second of audio (10 s of audio, median of ``repeats`` runs,
the candidates taking turns, one process) and its distillation loss on the dev split
(DistilHuBERT's L1 - log sigmoid(cos) against the teacher's layers: the objective it was
trained on, a cheap proxy for the probes). A candidate is on the front when no other is
both faster and better. ``--params-budget`` / ``--time-budget`` (fractions of the full
supernet's) keep only the candidates within them. Writes ``search.json``, ``search.md``
and ``search.png`` (loss against CPU time, the front joined) beside the supernet; probe
the front's members with ``ssl subnet`` then ``probe``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from matplotlib.figure import Figure

from speechdistill.compare import time_upstreams
from speechdistill.data.batching import WaveData, WaveDataset, load_wave_cuts, make_sampler
from speechdistill.distill.ssl_losses import align_frames, distilhubert_loss
from speechdistill.students.ssl import load_student
from speechdistill.students.supernet import Subnet, SupernetStudent, extract
from speechdistill.teachers.upstream import load_teacher
from speechdistill.utils import DataError, atomic_write_bytes, atomic_write_text


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, loss) that no other point beats on both (lower is
    better; a tie on both keeps the first), in order of cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


@torch.no_grad()
def dev_loss(student, teacher, batches) -> float:
    """Mean distillation loss of ``student`` (eval mode) over ``batches``."""
    total, n = 0.0, 0
    for _, wavs, lens in batches:
        t_states, t_lens = teacher(wavs, lens)
        preds, p_lens, _, _ = student.predict(wavs, lens)
        T = t_states[0].shape[1]
        aligned, mask = [], None
        for p in preds:
            a, mask = align_frames(p, p_lens, T, t_lens)
            aligned.append(a)
        loss, _ = distilhubert_loss(aligned, [t_states[k] for k in student.targets], mask, 1.0)
        total, n = total + float(loss) * len(wavs), n + len(wavs)
    return total / n


def search(
    supernet_path: str | Path,
    corpus: str | Path,
    teacher: str | Path | None = None,
    samples: int = 24,
    params_budget: float = 0.0,
    time_budget: float = 0.0,
    dev_hours: float = 0.1,
    repeats: int = 5,
    seed: int = 0,
) -> list[dict]:
    supernet = load_student(supernet_path)
    if not isinstance(supernet, SupernetStudent):
        raise DataError(f"{supernet_path} is a {supernet.cfg.kind!r} student, not a supernet")
    meta = json.loads(Path(supernet_path).with_suffix(".json").read_text())
    teacher = load_teacher(teacher or meta.get("teacher") or "")
    g = torch.Generator().manual_seed(seed)
    candidates = list(
        dict.fromkeys([*supernet.uniform_subnets(), *(supernet.sample_subnet(g) for _ in range(samples))])
    )
    full = supernet.largest
    if full not in candidates:
        candidates.append(full)
    cuts = load_wave_cuts(WaveData(corpus=str(corpus), split="dev", max_hours=dev_hours))
    batches = list(
        torch.utils.data.DataLoader(WaveDataset(), sampler=make_sampler(cuts, 60.0, False, 0), batch_size=None)
    )
    models = {i: extract(supernet, s) for i, s in enumerate(candidates)}
    secs = time_upstreams(models, repeats=repeats)
    full_i = candidates.index(full)
    rows = []
    for i, s in enumerate(candidates):
        rows.append(
            {
                "subnet": s.to_dict(),
                "params": supernet.subnet_params(s),
                "cpu_seconds_per_second": secs[i],
                "dev_loss": dev_loss(models[i], teacher, batches),
            }
        )
    for r in rows:
        r["params_ratio"] = r["params"] / rows[full_i]["params"]
        r["time_ratio"] = r["cpu_seconds_per_second"] / rows[full_i]["cpu_seconds_per_second"]
        r["within_budget"] = (not params_budget or r["params_ratio"] <= params_budget) and (
            not time_budget or r["time_ratio"] <= time_budget
        )
    kept = [i for i, r in enumerate(rows) if r["within_budget"]]
    for j in pareto_front([(rows[i]["cpu_seconds_per_second"], rows[i]["dev_loss"]) for i in kept]):
        rows[kept[j]]["front"] = True
    out = Path(supernet_path).parent
    atomic_write_text(out / "search.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(out / "search.md", markdown(rows))
    plot(rows, out / "search.png")
    return rows


def markdown(rows: list[dict]) -> str:
    out = "| subnet (width; heads; FFN per layer) | params ratio | time ratio | dev loss | front |\n|---|---|---|---|---|\n"
    for r in sorted(rows, key=lambda r: r["cpu_seconds_per_second"]):
        s = Subnet.from_dict(r["subnet"])
        shape = f"{s.d_model}; {'/'.join(map(str, s.heads))}; {'/'.join(map(str, s.ff_dims))}"
        mark = "yes" if r.get("front") else ("" if r["within_budget"] else "over budget")
        out += f"| {shape} | {r['params_ratio']:.3f} | {r['time_ratio']:.3f} | {r['dev_loss']:.4f} | {mark} |\n"
    return out


def plot(rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    t = [r["time_ratio"] for r in rows]
    ax.scatter(t, [r["dev_loss"] for r in rows], s=14, c="grey", label="candidates")
    front = sorted((r["time_ratio"], r["dev_loss"]) for r in rows if r.get("front"))
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="C0", label="Pareto front")
    ax.set_xlabel("CPU time, fraction of the full supernet's")
    ax.set_ylabel("distillation loss on dev")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
